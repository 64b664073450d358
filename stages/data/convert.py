"""Converters from the upstream NExT-GPT data formats (REFERENCE.md 1.5) to nextgpt shards.

``convert(format, input_path, media_dir, out_dir)`` reads one upstream JSON (or JSON-lines) file, finds
each record's media, checks that it decodes, and writes pair or conversation samples
(:mod:`.schema`) with :func:`.shards.write_samples`. Per-record problems never stop a conversion: the
record is skipped and counted in the :class:`ConvertReport` as *missing media* (the file is not
there), *unreadable media* (it is there but does not decode, or its extension is not a known media
type), or *malformed* (a required field is missing or has the wrong type), with example ids. A missing
input file or an input that is not a JSON list is an :class:`~nextgpt.errors.InputError`; an unknown
format is a :class:`~nextgpt.errors.ConfigError`.

Formats (field names as in the upstream repository):

* ``cc3m`` ``[{caption, id, image_name}]``, ``webvid`` ``[{caption, id, video_name}]``, ``audiocap``
  ``[{audio_id, audio_name, caption}]`` -> pairs.
* ``t2m`` (``{image,video,audio}_t2x.json``): ``{conversation: [{from, value, input_modality} |
  {from: "gpt", value, caption, output_modality}], mm_name, source_data}`` -> conversations whose gpt
  turns produce ``mm_name`` with that caption (the legacy T2M loader keys its caption embedding by
  ``mm_name``). The upstream construction script names the field ``image_name``; the 2024 files use
  ``conversations`` and ``<mod>_caption_embeddings``: both are accepted. The output sits at an
  ``<image>``/``<video>``/``<audio>`` placeholder in the reply, else at its end.
* ``mosit``: ``{image_list|video_list|audio_list: [{<mod>_name, data_source, caption}], conversation:
  [{from, value}]}`` with media inline as ``<Image>name</Image>``, ``<Video>..``, ``<Audio>..``; media
  of human turns are inputs, media of gpt turns outputs captioned from the lists.
* ``llava``: ``[{id, image, conversations: [{from, value}]}]``, the image at the ``<image>``
  placeholder (at the start of the first human turn when there is none).
* ``alpaca``: ``[{instruction, input, output}]`` -> text-only conversations (instruction and input
  joined by a blank line; the legacy code glued them without a separator).
* ``videochat`` (VideoChat ``videochat_instruct_11k.json``; also VideoChat2-IT video files):
  ``[{video, QA: [{i, q, a}]}]`` -> conversations: the video first in the first user turn, then one
  user turn (instruction and/or question) and one assistant turn (the answer) per QA item.

Output media files are optional (T2M and MosIT ship captions for their outputs, not always the media):
a missing output file gives a caption-only output, counted as ``outputs_without_media``; pass
``require_output_media=True`` to treat it as missing media instead.

Media lookup for a name ``n`` of modality ``m``: ``media_dir/n``, then ``media_dir/<data_source>/n``
(MosIT), then ``media_dir/{images|videos|audios}/n``; VideoChat names that are not found that way are
tried by their base name (flat download layout). ``media_dir`` defaults to the input file's folder.
Names that are absolute or contain ``..`` are refused (malformed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import MEDIA_MODALITIES, Modality

from .schema import (
    MEDIA_EXTENSIONS,
    BadSample,
    ConversationRecord,
    MediaBlob,
    PairRecord,
    RecordTurn,
    record_members,
)
from .shards import decode_audio, decode_image, decode_video, write_samples

logger = logging.getLogger(__name__)

MISSING = "missing_media"
UNREADABLE = "unreadable_media"
MALFORMED = "malformed"
PROBLEMS = (MISSING, UNREADABLE, MALFORMED)

_SUBDIRS = {Modality.IMAGE: ("images",), Modality.VIDEO: ("videos",), Modality.AUDIO: ("audios", "audio")}
_HUMAN = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class _Problem(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass
class ConvertReport:
    """What a conversion did. ``examples`` maps a problem to up to ``max_examples`` ``"id: reason"``."""

    format: str
    input_path: str
    out_dir: str
    records: int = 0
    written: int = 0
    missing_media: int = 0
    unreadable_media: int = 0
    malformed: int = 0
    outputs_without_media: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def skipped(self) -> int:
        """Records not written: missing or unreadable media, or malformed."""
        return self.missing_media + self.unreadable_media + self.malformed

    def summary(self) -> str:
        """A few lines for the command line."""
        lines = [
            f"{self.format}: {self.written} of {self.records} records written to {len(self.shards)} shard(s) "
            f"in {self.out_dir} ({self.seconds:.1f} s)",
            f"  missing media: {self.missing_media}, unreadable media: {self.unreadable_media}, "
            f"malformed: {self.malformed}, outputs without media (caption only): {self.outputs_without_media}",
        ]
        for problem, items in self.examples.items():
            lines.append(f"  e.g. {problem}: " + "; ".join(items[:3]))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Every field, as a JSON-ready dict."""
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# media lookup


class _MediaFinder:
    def __init__(self, media_dir: Path, verify: bool) -> None:
        self.media_dir = media_dir
        self.verify = verify

    def find(self, name: str, modality: Modality, extra_dirs: tuple[str | None, ...] = ()) -> Path | None:
        rel = PurePosixPath(name.replace("\\", "/"))
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise _Problem(MALFORMED, f"unsafe media path {name!r}")
        dirs = [self.media_dir]
        dirs += [self.media_dir / d for d in extra_dirs if d and ".." not in d and not os.path.isabs(d)]
        dirs += [self.media_dir / d for d in _SUBDIRS[modality]]
        for d in dirs:
            p = d.joinpath(*rel.parts)
            if p.is_file():
                return p
        return None

    def load(
        self,
        name: object,
        modality: Modality,
        *,
        caption: str | None = None,
        required: bool = True,
        extra_dirs: tuple[str | None, ...] = (),
    ) -> MediaBlob | None:
        """The media as a blob; ``None`` when absent and not required; else raise :class:`_Problem`."""
        if not isinstance(name, str) or not name.strip():
            raise _Problem(MALFORMED, f"media name must be a non-empty string, got {name!r}")
        name = name.strip()
        path = self.find(name, modality, extra_dirs)
        if path is None:
            if required:
                raise _Problem(MISSING, f"{modality.value} file {name!r} not found under {self.media_dir}")
            return None
        ext = path.suffix.lower().lstrip(".")
        if ext not in MEDIA_EXTENSIONS[modality]:
            raise _Problem(
                UNREADABLE, f"{path.name}: extension {ext!r} is not a known {modality.value} format"
            )
        try:
            data = path.read_bytes()
            if not data:
                raise ValueError("empty file")
            if self.verify:
                if modality is Modality.IMAGE:
                    decode_image(data)
                elif modality is Modality.AUDIO:
                    decode_audio(data, ext)
                else:
                    decode_video(data, first_frame_only=True)
        except Exception as exc:
            raise _Problem(UNREADABLE, f"{path}: {type(exc).__name__}: {exc}") from None
        return MediaBlob(modality, data, ext, caption=caption, name=PurePosixPath(name).name)


def _caption_only(modality: Modality, name: str | None, caption: str) -> MediaBlob:
    return MediaBlob(modality, None, None, caption=caption, name=PurePosixPath(name).name if name else None)


# --------------------------------------------------------------------------------------------------
# per-format record builders: (item, index, ctx) -> record; raise _Problem


@dataclass
class _Ctx:
    media: _MediaFinder
    require_output_media: bool
    fmt: str


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _Problem(MALFORMED, f"{what} must be a string, got {type(value).__name__}")
    return value


def _nonempty(value: object, what: str) -> str:
    text = _text(value, what).strip()
    if not text:
        raise _Problem(MALFORMED, f"{what} is empty")
    return text


def _dict(item: object) -> dict:
    if not isinstance(item, dict):
        raise _Problem(MALFORMED, f"record must be an object, got {type(item).__name__}")
    return item


def _pair_builder(name_key: str, id_key: str, modality: Modality) -> Callable:
    def build(item: object, index: int, ctx: _Ctx) -> PairRecord:
        item = _dict(item)
        caption = _nonempty(item.get("caption"), "'caption'")
        name = item.get(name_key)
        if not isinstance(name, str) or not name.strip():
            raise _Problem(MALFORMED, f"missing '{name_key}'")
        rid = item.get(id_key)
        rid = str(rid) if rid not in (None, "") else PurePosixPath(name).stem
        return PairRecord(rid, caption, ctx.media.load(name, modality), source=ctx.fmt)

    return build


def _role(turn: dict, i: int) -> str:
    role = _HUMAN.get(str(turn.get("from", turn.get("role", ""))).lower())
    if role is None:
        raise _Problem(MALFORMED, f"turn {i}: 'from' must be human or gpt, got {turn.get('from')!r}")
    return role


def _turn_list(item: dict, *keys: str) -> list[dict]:
    for key in keys:
        if key in item:
            turns = item[key]
            if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
                raise _Problem(MALFORMED, f"'{key}' must be a non-empty list of turn objects")
            return turns
    raise _Problem(MALFORMED, f"missing '{keys[0]}'")


def _split_at(text: str, pattern: re.Pattern, blobs: list) -> list[str | MediaBlob]:
    """Text pieces and blobs, the i-th blob at the i-th match of ``pattern`` (surplus blobs appended)."""
    parts: list[str | MediaBlob] = []
    pos, k = 0, 0
    for m in pattern.finditer(text):
        if k >= len(blobs):
            break
        piece = text[pos : m.start()].strip()
        if piece:
            parts.append(piece)
        parts.append(blobs[k])
        k += 1
        pos = m.end()
    tail = text[pos:].strip()
    if tail:
        parts.append(tail)
    parts.extend(blobs[k:])
    return parts


_T2M_TAG = {m: re.compile(rf"<{m.value}>", re.I) for m in MEDIA_MODALITIES}


def _t2m(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    turns = _turn_list(item, "conversation", "conversations")
    mm_name = item.get("mm_name") or item.get("image_name")
    if not mm_name:
        for m in MEDIA_MODALITIES:
            embs = item.get(f"{m.value}_caption_embeddings")
            if isinstance(embs, list) and embs and isinstance(embs[0], str):
                mm_name = embs[0][: -len(".npy")] if embs[0].endswith(".npy") else embs[0]
                break
    out: list[RecordTurn] = []
    for i, turn in enumerate(turns):
        role = _role(turn, i)
        value = _text(turn.get("value", ""), f"turn {i} 'value'")
        if role == "user":
            if str(turn.get("input_modality", "text")).lower() != "text":
                raise _Problem(
                    MALFORMED, f"turn {i}: T2M user turns are text, got {turn.get('input_modality')!r}"
                )
            parts: list = [value.strip()] if value.strip() else []
        else:
            om = str(turn.get("output_modality") or "text").lower()
            if om == "text":
                parts = [value.strip()] if value.strip() else []
            else:
                try:
                    modality = Modality(om)
                except ValueError:
                    modality = None
                if modality not in MEDIA_MODALITIES:
                    raise _Problem(MALFORMED, f"turn {i}: unknown output_modality {om!r}")
                caption = _nonempty(turn.get("caption"), f"turn {i} 'caption'")
                if not isinstance(mm_name, str) or not mm_name.strip():
                    raise _Problem(MALFORMED, "missing 'mm_name' (the output media name)")
                blob = ctx.media.load(mm_name, modality, caption=caption, required=ctx.require_output_media)
                parts = _split_at(
                    value, _T2M_TAG[modality], [blob or _caption_only(modality, mm_name, caption)]
                )
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    rid = str(mm_name) if mm_name else f"t2m_{index}"
    return ConversationRecord(rid, out, source=str(item.get("source_data") or "t2m"))


_MOSIT_TAG = re.compile(r"<(image|video|audio)>\s*(.*?)\s*</\1>", re.I | re.S)


def _mosit(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    listed: dict[tuple[Modality, str], dict] = {}
    for m in MEDIA_MODALITIES:
        entries = item.get(f"{m.value}_list") or []
        if not isinstance(entries, list):
            raise _Problem(MALFORMED, f"'{m.value}_list' must be a list")
        for e in entries:
            if isinstance(e, dict):
                name = e.get(f"{m.value}_name") or e.get("name")
                if isinstance(name, str):
                    listed[(m, name.strip())] = e
    out: list[RecordTurn] = []
    for i, turn in enumerate(_turn_list(item, "conversation", "conversations")):
        role = _role(turn, i)
        value = _text(turn.get("value", ""), f"turn {i} 'value'")
        blobs = []
        for match in _MOSIT_TAG.finditer(value):
            modality, name = Modality(match.group(1).lower()), match.group(2)
            entry = listed.get((modality, name), {})
            caption = entry.get("caption") if isinstance(entry.get("caption"), str) else None
            extra = (entry.get("data_source") if isinstance(entry.get("data_source"), str) else None,)
            if role == "user":
                blobs.append(ctx.media.load(name, modality, caption=caption, extra_dirs=extra))
                continue
            if not caption or not caption.strip():
                raise _Problem(
                    MALFORMED, f"turn {i}: output {modality.value} {name!r} has no caption in the lists"
                )
            blob = ctx.media.load(
                name, modality, caption=caption, required=ctx.require_output_media, extra_dirs=extra
            )
            blobs.append(blob or _caption_only(modality, name, caption))
        parts = _split_at(value, _MOSIT_TAG, blobs)
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    return ConversationRecord(str(item.get("id") or f"mosit_{index}"), out, source="mosit")


_LLAVA_TAG = re.compile(r"<image>")


def _llava(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    turns = _turn_list(item, "conversations", "conversation")
    images = item.get("image")
    images = [] if images in (None, "") else images if isinstance(images, list) else [images]
    roles = [_role(t, i) for i, t in enumerate(turns)]
    values = [_text(t.get("value", ""), f"turn {i} 'value'") for i, t in enumerate(turns)]
    n_tags = sum(len(_LLAVA_TAG.findall(v)) for v, r in zip(values, roles) if r == "user")
    if images and n_tags == 0:
        first = roles.index("user") if "user" in roles else None
        if first is None:
            raise _Problem(MALFORMED, "an image but no human turn")
        values[first] = "<image>" * len(images) + "\n" + values[first]
        n_tags = len(images)
    if n_tags != len(images):
        raise _Problem(MALFORMED, f"{n_tags} <image> placeholder(s) for {len(images)} image(s)")
    blobs = [ctx.media.load(name, Modality.IMAGE) for name in images]
    out: list[RecordTurn] = []
    k = 0
    for i, (role, value) in enumerate(zip(roles, values)):
        if role == "user":
            n = len(_LLAVA_TAG.findall(value))
            parts = _split_at(value, _LLAVA_TAG, blobs[k : k + n])
            k += n
        else:
            parts = [value.strip()] if value.strip() else []
        if not parts:
            raise _Problem(MALFORMED, f"turn {i} is empty")
        out.append(RecordTurn(role, parts))
    return ConversationRecord(str(item.get("id") or f"llava_{index}"), out, source="llava")


def _alpaca(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    item = _dict(item)
    instruction = _nonempty(item.get("instruction"), "'instruction'")
    extra = _text(item.get("input") or "", "'input'").strip()
    output = _nonempty(item.get("output"), "'output'")
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    turns = [RecordTurn("user", [prompt]), RecordTurn("assistant", [output])]
    return ConversationRecord(str(item.get("id") or f"alpaca_{index}"), turns, source="alpaca")


def _videochat(item: object, index: int, ctx: _Ctx) -> ConversationRecord:
    """A VideoChat instruction record -> a conversation about its video.

    Format facts (read from public sources, nothing copied):

    * OpenGVLab/Ask-Anything ``video_chat/scripts/config_7b_stage2.py`` trains on
      ``videochat_instruct_11k.json`` with the WebVid-10M folder as media root and media type video;
      ``video_chat/dataset/it_dataset.py`` reads each record's ``video`` (a path relative to that
      root) and its ``QA`` list, and from every QA item the question ``q`` and the answer ``a``; the
      video goes in a human turn before the first question.
    * OpenGVLab/InternVideo issue #63 (maintainer answer) and third-party WebVid download scripts that
      parse this file: ``video`` is ``"<WebVid page dir>/<videoid>.mp4"`` (e.g.
      ``000001_000050/1066682446.mp4``); those scripts also save the videos flat as ``<videoid>.mp4``.
    * OpenGVLab/Ask-Anything ``video_chat2/dataset/it_dataset.py`` (the VideoChat2-IT files, which
      NExT-GPT's ``data/DATA_README.md`` points to for its videochat data) adds an optional
      instruction ``i`` to QA items, used once per record from the first item, and allows an empty
      ``q`` (caption data: the answer follows the video directly).
      ``video_chat2/configs/instruction_data.py`` lists those files with the same ``video`` layout.
    * Neither loader reads a record id: the id here is the video's base name without extension.

    Turns: user ``[video, i, q]`` (empty strings left out), assistant ``[a]``, then per further QA item
    user ``[i, q]`` and assistant ``[a]``. An instruction equal to the last one given is not repeated
    (VideoChat2 gives the record's instruction once). ``a`` must be a non-empty string; ``i`` and ``q``
    are strings when present (``null`` counts as absent); a QA item after the first needs an instruction or a question.
    VideoChat2 clip bounds (``start``/``end``) are not applied: the whole file is stored.
    """
    item = _dict(item)
    video = item.get("video")
    if not isinstance(video, str) or not video.strip():
        raise _Problem(MALFORMED, "missing 'video'")
    name = video.strip()
    base = PurePosixPath(name.replace("\\", "/")).name
    if base != name and ctx.media.find(name, Modality.VIDEO) is None:
        if ctx.media.find(base, Modality.VIDEO) is not None:
            name = base
    qa = _turn_list(item, "QA", "qa")
    turns: list[RecordTurn] = []
    last_instruction = ""
    for k, entry in enumerate(qa):
        instruction, question = (
            _text(entry.get(key) if entry.get(key) is not None else "", f"QA {k} '{key}'").strip()
            for key in ("i", "q")
        )
        answer = _nonempty(entry.get("a"), f"QA {k} 'a'")
        parts: list[str | MediaBlob] = []
        if instruction and instruction != last_instruction:
            parts.append(instruction)
            last_instruction = instruction
        if question:
            parts.append(question)
        if k > 0 and not parts:
            raise _Problem(MALFORMED, f"QA {k} has neither an instruction 'i' nor a question 'q'")
        turns.append(RecordTurn("user", parts))
        turns.append(RecordTurn("assistant", [answer]))
    turns[0].parts.insert(0, ctx.media.load(name, Modality.VIDEO))
    rid = item.get("id")
    rid = str(rid) if rid not in (None, "") else PurePosixPath(base).stem
    return ConversationRecord(rid, turns, source="videochat")


_BUILDERS: dict[str, Callable] = {
    "cc3m": _pair_builder("image_name", "id", Modality.IMAGE),
    "webvid": _pair_builder("video_name", "id", Modality.VIDEO),
    "audiocap": _pair_builder("audio_name", "audio_id", Modality.AUDIO),
    "t2m": _t2m,
    "mosit": _mosit,
    "llava": _llava,
    "alpaca": _alpaca,
    "videochat": _videochat,
}
#: Supported upstream formats.
FORMATS: tuple[str, ...] = tuple(_BUILDERS)


# --------------------------------------------------------------------------------------------------
# driver


def _load_records(path: Path) -> list:
    if not path.is_file():
        raise InputError(f"input file not found: '{path}'")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot parse '{path}' as JSON: {exc}") from None
    if not isinstance(records, list):
        raise InputError(f"'{path}' must hold a JSON list of records, got {type(records).__name__}")
    return records


def _record_id(item: object, index: int) -> str:
    if isinstance(item, dict):
        for k in ("id", "audio_id", "mm_name", "image_name", "video_name", "audio_name", "image", "video"):
            if isinstance(item.get(k), (str, int)) and str(item.get(k)):
                return str(item[k])
    return f"#{index}"


def convert(
    format: str,
    input_path: str | os.PathLike,
    media_dir: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    *,
    max_per_shard: int = 1000,
    progress: bool = True,
    prefix: str | None = None,
    verify: bool = True,
    require_output_media: bool = False,
    num_workers: int = 1,
    overwrite: bool = False,
    max_examples: int = 10,
) -> ConvertReport:
    """Convert an upstream data file to shards ``out_dir/<prefix>-000000.tar, ...``.

    Args:
        format: one of :data:`FORMATS`.
        input_path: the upstream JSON (``.json``) or JSON-lines (``.jsonl``) file.
        media_dir: where the media files are (``None``: the input file's folder).
        out_dir: output folder; a ``<prefix>-report.json`` with the report is written next to the shards.
        max_per_shard: samples per shard.
        progress: show a tqdm progress bar.
        prefix: shard name prefix (default: the format name).
        verify: decode every media file (first frame of videos) before writing it.
        require_output_media: a missing output media file skips the record (else caption-only output).
        num_workers: threads reading and verifying media (output order does not depend on it).
        overwrite: replace existing ``<prefix>-*.tar`` in ``out_dir``.
        max_examples: example ids kept per problem.

    Raises:
        ConfigError: unknown format. InputError: missing or unparsable input file, existing shards.
    """
    fmt = str(format).lower()
    if fmt not in _BUILDERS:
        raise ConfigError(f"unknown data format {format!r}; valid: {', '.join(FORMATS)}")
    start = time.perf_counter()
    input_path = Path(input_path)
    items = _load_records(input_path)
    media_root = Path(media_dir) if media_dir is not None else input_path.parent
    if media_dir is not None and not media_root.is_dir():
        raise InputError(f"media folder not found: '{media_root}'")
    ctx = _Ctx(_MediaFinder(media_root, verify), require_output_media, fmt)
    build = _BUILDERS[fmt]
    report = ConvertReport(fmt, str(input_path), str(out_dir), records=len(items))

    def attempt(job: tuple[int, object]):
        index, item = job
        try:
            record = build(item, index, ctx)
            record_members(record)  # everything the reader checks
            return record, None
        except _Problem as exc:
            return None, (exc.kind, str(exc))
        except BadSample as exc:
            return None, (MALFORMED, str(exc))

    def outcomes() -> Iterator[tuple[int, object, tuple]]:
        jobs = enumerate(items)
        if num_workers <= 1:
            for job in jobs:
                yield job[0], *attempt(job)
            return
        chunk = max(1, num_workers * 8)
        with ThreadPoolExecutor(num_workers) as pool:
            batch = []
            for job in jobs:
                batch.append(job)
                if len(batch) == chunk:
                    for j, res in zip(batch, pool.map(attempt, batch)):
                        yield j[0], *res
                    batch = []
            for j, res in zip(batch, pool.map(attempt, batch)):
                yield j[0], *res

    def records():
        from tqdm.auto import tqdm

        with tqdm(total=len(items), desc=f"convert {fmt}", unit="rec", disable=not progress) as bar:
            for index, record, problem in outcomes():
                bar.update(1)
                if problem is not None:
                    kind, reason = problem
                    setattr(report, kind, getattr(report, kind) + 1)
                    examples = report.examples.setdefault(kind, [])
                    rid = _record_id(items[index], index)
                    if len(examples) < max_examples:
                        examples.append(f"{rid}: {reason}")
                    logger.debug("skipping %s record %s: %s", fmt, rid, reason)
                    continue
                report.outputs_without_media += _caption_only_outputs(record)
                yield record

    def on_written(record, key):
        report.written += 1

    shards = write_samples(
        out_dir,
        records(),
        prefix=prefix or fmt,
        max_count_per_shard=max_per_shard,
        overwrite=overwrite,
        on_written=on_written,
    )
    report.shards = [str(p) for p in shards]
    report.seconds = round(time.perf_counter() - start, 3)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / f"{prefix or fmt}-report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if report.skipped:
        logger.warning(
            "%s: skipped %d of %d records (missing media %d, unreadable %d, malformed %d)",
            fmt,
            report.skipped,
            report.records,
            report.missing_media,
            report.unreadable_media,
            report.malformed,
        )
    if report.records and not report.written:
        logger.error("%s: no record of '%s' could be converted; see the report examples", fmt, input_path)
    logger.info("%s", report.summary())
    return report


def _caption_only_outputs(record: PairRecord | ConversationRecord) -> int:
    if not isinstance(record, ConversationRecord):
        return 0
    return sum(
        1
        for t in record.turns
        if t.role == "assistant"
        for p in t.parts
        if isinstance(p, MediaBlob) and p.data is None
    )
