"""The training-sample schema: what a shard sample holds, how it is validated, and how the stage turns
it into chat turns.

Shards are webdataset tar files; one sample is the set of members that share a key (the member name up
to the first dot of its base name; the rest of the name is the *field*: ``000017.jpg`` -> key
``000017``, field ``jpg``; ``000017.m0.wav`` -> field ``m0.wav``). Fields are compared in lower case.
Two kinds of sample exist (``docs/DATA.md`` has the full description and examples):

**pair** (stages 1 and 2) — ``json`` = ``{"kind": "pair", "modality": "image" | "audio" | "video",
"caption": str, "id": str, "source": str}`` plus one media member under its natural extension
(image ``jpg``/``jpeg``/``png``/``webp``/...; audio ``wav``/``flac``/``mp3``/``ogg``/...; video
``mp4``/``webm``/...). Optional ``"name"``: the original file name of the media. Shards written by
img2dataset/video2dataset-style tools (``jpg`` or ``mp4`` + ``txt`` caption + optional ``json``
without ``"kind"``) are pairs too: the modality comes from the media extension, the caption from
``json["caption"]`` or ``txt``, the id from ``json["id"]``/``json["key"]`` or the sample key.

**conversation** (stage 3) — ``json`` = ``{"kind": "conversation", "id": str, "source": str,
"turns": [{"role": "user" | "assistant", "parts": [part, ...]}]}`` where a part is ``{"text": str}``
or ``{"media": field | null, "modality": "image" | "audio" | "video", "caption": str | null,
"name": str (optional)}``. ``media`` names a member of the same sample (``"m0.jpg"``). Media in
assistant turns are *outputs*: their ``caption`` (required, non-empty) is the alignment target text.
An output may have ``"media": null`` — a caption-only target (upstream instruction data such as T2M
ships caption embeddings, not the generated media). Input media need a member. A conversation needs
at least one assistant turn.

A conversation may carry **target masks** (LLMBind ``<seg>`` training, refCOCO-style data): ``"masks":
[field, ...]`` names one PNG member per ``<seg>`` written in its assistant text, in order (a field may
repeat), each the size of the image it segments: ``"mask_image"`` (a field), by default the first input
image. A mask pixel is foreground where its value is non-zero (any PNG mode).

How the stage builds turns from a pair (legacy NExT-GPT, REFERENCE.md 1.2) — see :func:`pair_turns`:

* stage 1 (X -> text): user ``[media, "generate a caption"]``, assistant ``[clean caption]``;
* stage 2 (text -> X): user ``[clean caption]``, assistant ``[clean caption, media as output]``;
* stage 3: conversations as stored; pairs as in stage 2.

``output_captions`` holds the caption of every output media part, in order. They are the raw captions
(only surrounding whitespace removed) because the legacy caption-embedding cache was computed from raw
captions (REFERENCE.md 1.5); pass ``clean_output_captions=True`` to clean them like the LM targets.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from nextgpt.errors import ConfigError
from nextgpt.modality import MEDIA_MODALITIES, Modality
from nextgpt.processor import MediaItem, Turn
from nextgpt.tokens import SEG_TOKEN

PAIR = "pair"
CONVERSATION = "conversation"
KINDS = (PAIR, CONVERSATION)
ROLES = ("user", "assistant")
STAGES = (1, 2, 3)

#: The stage-1 instruction of the legacy code (REFERENCE.md 1.2).
STAGE1_PROMPT = "generate a caption"

#: Field extensions that hold media, per modality (lower case, no dot).
MEDIA_EXTENSIONS: dict[Modality, tuple[str, ...]] = {
    Modality.IMAGE: ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"),
    Modality.AUDIO: ("wav", "flac", "mp3", "ogg", "opus", "m4a", "aac"),
    Modality.VIDEO: ("mp4", "webm", "avi", "mov", "mkv", "m4v"),
}
_EXT_TO_MODALITY = {ext: m for m, exts in MEDIA_EXTENSIONS.items() for ext in exts}
#: When a tool-written sample holds several media members, the first modality here wins.
_PAIR_PRIORITY = (Modality.VIDEO, Modality.IMAGE, Modality.AUDIO)

_CAPTION_CHARS = re.compile(r"[\"()*#:;~]")
_WHITESPACE = re.compile(r"\s+")
_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class BadSample(Exception):
    """A sample that cannot be used; the message is the reason (caught, logged and counted)."""


def clean_caption(text: str) -> str:
    """Clean a caption the legacy way: lower-case, ``"()*#:;~`` become spaces, whitespace collapsed.

    Legacy ``process_caption`` collapses only runs of two or more whitespace characters; here every run
    becomes one space (a lone newline or tab inside a caption would otherwise reach the prompt).
    """
    return _WHITESPACE.sub(" ", _CAPTION_CHARS.sub(" ", text.lower())).strip()


def modality_of_field(name: str) -> Modality | None:
    """The modality of a sample field (``"jpg"``, ``"m0.wav"``) from its last extension, or ``None``."""
    ext = name.rsplit(".", 1)[-1].lower()
    return _EXT_TO_MODALITY.get(ext)


def safe_key(text: str, max_len: int = 80) -> str:
    """A webdataset-safe key fragment: no dots or slashes (the key ends at the first dot)."""
    return _KEY_UNSAFE.sub("_", str(text)).strip("_")[:max_len] or "x"


def check_stage(stage: int) -> int:
    """``stage`` as an int; raise ``ConfigError`` unless it is a training stage (1, 2 or 3)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; valid: 1, 2, 3")
    return int(stage)


# --------------------------------------------------------------------------------------------------
# decoded samples (what the reader yields)

#: Why a sample was not trained on (the slugs the training loop counts and logs): the shard member
#: could not be read or decoded; media preprocessing failed; the feature cache has no entry; longer
#: than ``max_length`` under ``training.overlength: skip``; nothing left to learn after truncation;
#: the template/tokenizer refused the text.
DROP_REASONS = ("decode", "preprocess", "cache_miss", "overlength", "no_target", "template")
#: Not a sample: filler that gives every rank and worker the same number of items (never counted bad).
PADDING = "padding"


@dataclass(frozen=True)
class DroppedSample:
    """Stands in for a raw sample that cannot be used, so that balanced readers keep their exact length.

    Attributes:
        key: the sample key (or ``<shard>#<index>`` when the shard ended early).
        url: the shard.
        reason: one of :data:`DROP_REASONS`, or :data:`PADDING`.
        detail: the human-readable cause (logged).
    """

    key: str
    url: str
    reason: str
    detail: str = ""

    @property
    def is_padding(self) -> bool:
        """Whether this is filler (:data:`PADDING`) rather than a sample that could not be used."""
        return self.reason == PADDING


@dataclass
class Sample:
    """One decoded training sample.

    Attributes:
        key: the webdataset key (unique within the shards).
        kind: ``"pair"`` or ``"conversation"``.
        turns: chat turns; media parts are :class:`~nextgpt.processor.MediaItem` whose ``value`` is a
            ``PIL.Image.Image`` (RGB), :class:`nextgpt.Audio` (float32 ``[C, N]``) or
            :class:`nextgpt.Video` (uint8 ``[T, H, W, 3]``). Output media (assistant turns) may have
            ``value=None``: caption-only targets, or output decoding switched off.
        output_captions: the caption of every output media part, in order (alignment targets).
        id: the sample id from the json (the source dataset's id); used to key caches.
        source: the source dataset name.
        url: the shard the sample came from.
        output_names: the original file name of every output media part (``None`` when unknown); the
            legacy caption-embedding cache is keyed by it.
        masks: the target mask of every ``<seg>`` in the assistant text, in order (bool ``[H, W]``
            arrays the size of ``mask_image``); empty without masks.
        mask_image: the image the masks segment (a PIL image), or ``None``.
    """

    key: str
    kind: str
    turns: list[Turn]
    output_captions: list[str]
    id: str = ""
    source: str = ""
    url: str = ""
    output_names: list[str | None] = field(default_factory=list)
    masks: list = field(default_factory=list)
    mask_image: object | None = None

    def outputs(self) -> list[MediaItem]:
        """Media parts of assistant turns, in order (parallel to ``output_captions``)."""
        return [p for t in self.turns if t.role == "assistant" for p in t.media()]


def pair_turns(
    stage: int, modality: Modality, caption: str, media: object, *, clean_output_captions: bool = False
) -> tuple[list[Turn], list[str]]:
    """Turns and output captions for a caption pair in ``stage`` (see the module docstring)."""
    stage = check_stage(stage)
    target = clean_caption(caption)
    item = MediaItem(modality, media)
    if stage == 1:
        return [Turn("user", [item, STAGE1_PROMPT]), Turn("assistant", [target])], []
    out_caption = target if clean_output_captions else caption.strip()
    return [Turn("user", [target]), Turn("assistant", [target, item])], [out_caption]


# --------------------------------------------------------------------------------------------------
# sample metadata validation (shared by the reader and the writer)


@dataclass(frozen=True)
class PartSpec:
    """A validated conversation part: text, or a media reference."""

    text: str | None = None
    media: str | None = None  # field name (lower case) or None for a caption-only output
    modality: Modality | None = None
    caption: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class TurnSpec:
    """A validated conversation turn: ``"user"`` or ``"assistant"`` and its parts."""

    role: str
    parts: tuple[PartSpec, ...]


def parse_json_member(data: bytes) -> dict:
    """Decode the ``json`` member; raise :class:`BadSample` unless it is a JSON object."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadSample(f"invalid json member: {exc}") from None
    if not isinstance(meta, dict):
        raise BadSample(f"json member must be an object, got {type(meta).__name__}")
    return meta


def _modality(value: object, where: str) -> Modality:
    if not isinstance(value, str):
        raise BadSample(f"{where}: modality must be a string, got {value!r}")
    try:
        m = Modality(value.strip().lower())
    except ValueError:
        m = None
    if m not in MEDIA_MODALITIES:
        valid = ", ".join(x.value for x in MEDIA_MODALITIES)
        raise BadSample(f"{where}: unknown media modality {value!r}; valid: {valid}")
    return m


def _opt_str(value: object, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadSample(f"{what} must be a string or null, got {type(value).__name__}")


def parse_conversation(meta: dict, fields: set[str] | None) -> list[TurnSpec]:
    """Validate a conversation's ``turns``.

    Args:
        meta: the sample json.
        fields: lower-case fields present in the sample, checked against media references; ``None``
            skips that check (used by the writer before members exist).

    Raises:
        BadSample: with the first problem found.
    """
    turns = meta.get("turns")
    if not isinstance(turns, list) or not turns:
        raise BadSample("conversation needs a non-empty 'turns' list")
    out: list[TurnSpec] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise BadSample(f"turn {i} must be an object")
        role = turn.get("role")
        if role not in ROLES:
            raise BadSample(f"turn {i}: role must be 'user' or 'assistant', got {role!r}")
        parts = turn.get("parts")
        if not isinstance(parts, list) or not parts:
            raise BadSample(f"turn {i}: needs a non-empty 'parts' list")
        specs = []
        for j, part in enumerate(parts):
            where = f"turn {i} part {j}"
            if not isinstance(part, dict):
                raise BadSample(f"{where} must be an object")
            if "text" in part:
                if "media" in part or not isinstance(part["text"], str):
                    raise BadSample(f"{where}: a text part is {{'text': str}} only")
                specs.append(PartSpec(text=part["text"]))
                continue
            if "media" not in part:
                raise BadSample(f"{where}: a part needs 'text' or 'media'")
            modality = _modality(part.get("modality"), where)
            media = _opt_str(part["media"], f"{where}: 'media'")
            caption = _opt_str(part.get("caption"), f"{where}: 'caption'")
            name = _opt_str(part.get("name"), f"{where}: 'name'")
            if media is not None:
                media = media.lower()
                if modality_of_field(media) != modality:
                    raise BadSample(f"{where}: member {media!r} is not a {modality.value} file extension")
                if fields is not None and media not in fields:
                    raise BadSample(f"{where}: references member {media!r} which is not in the sample")
            if role == "assistant" and not (caption and caption.strip()):
                raise BadSample(f"{where}: output {modality.value} needs a non-empty caption")
            if role == "user" and media is None:
                raise BadSample(f"{where}: input {modality.value} needs a member ('media' is null)")
            specs.append(PartSpec(media=media, modality=modality, caption=caption, name=name))
        out.append(TurnSpec(role, tuple(specs)))
    if not any(t.role == "assistant" for t in out):
        raise BadSample("conversation has no assistant turn (nothing to learn)")
    return out


#: The extension of a target-mask member.
MASK_EXTENSION = "png"


def parse_masks(meta: dict, specs: list[TurnSpec], fields: set[str] | None) -> tuple[list[str], str | None]:
    """Validate a conversation's ``masks`` and ``mask_image``: ``(mask fields, image field)``, or
    ``([], None)`` when it has none.

    Raises:
        BadSample: ``masks`` is not a list of PNG member names present in the sample, their count is not
            the number of ``<seg>`` in the assistant text, or there is no input image to segment.
    """
    masks = meta.get("masks")
    if masks is None:
        return [], None
    if not isinstance(masks, list) or not masks or not all(isinstance(m, str) for m in masks):
        raise BadSample("'masks' must be a non-empty list of member names")
    masks = [m.lower() for m in masks]
    for m in masks:
        if m.rsplit(".", 1)[-1] != MASK_EXTENSION:
            raise BadSample(f"mask member {m!r} must be a .{MASK_EXTENSION} file")
        if fields is not None and m not in fields:
            raise BadSample(f"'masks' references member {m!r} which is not in the sample")
    segs = sum((p.text or "").count(SEG_TOKEN) for t in specs if t.role == "assistant" for p in t.parts)
    if segs != len(masks):
        raise BadSample(f"{len(masks)} masks but {segs} {SEG_TOKEN} in the assistant text")
    inputs = [p.media for t in specs if t.role == "user" for p in t.parts if p.modality is Modality.IMAGE]
    image = meta.get("mask_image", inputs[0] if inputs else None)
    if image is None:
        raise BadSample("masks need an input image to segment (no image in a user turn)")
    if not isinstance(image, str) or image.lower() not in inputs:
        raise BadSample(f"'mask_image' {image!r} is not an input image of the conversation")
    return masks, image.lower()


def find_pair_media(meta: dict, fields: set[str]) -> tuple[str, Modality]:
    """Pick the media member of a pair sample: by the json modality when given, else by priority."""
    declared = meta.get("modality")
    if declared is not None:
        m = _modality(declared, "pair")
        for ext in MEDIA_EXTENSIONS[m]:
            if ext in fields:
                return ext, m
        raise BadSample(
            f"pair declares modality {m.value} but has no {m.value} member; fields: {sorted(fields)}"
        )
    for m in _PAIR_PRIORITY:
        for ext in MEDIA_EXTENSIONS[m]:
            if ext in fields:
                return ext, m
    raise BadSample(f"pair has no media member; fields: {sorted(fields)}")


def pair_caption(meta: dict, fields: dict[str, bytes]) -> str:
    """The caption of a pair: ``json["caption"]`` or the ``txt`` member."""
    caption = meta.get("caption")
    if caption is None and "txt" in fields:
        try:
            caption = fields["txt"].decode("utf-8")
        except UnicodeDecodeError:
            raise BadSample("txt member is not UTF-8") from None
    if not isinstance(caption, str) or not caption.strip():
        raise BadSample("pair has no caption (json 'caption' or a txt member)")
    return caption


# --------------------------------------------------------------------------------------------------
# records to write


@dataclass(frozen=True)
class MediaBlob:
    """Encoded media to store in a shard.

    Attributes:
        modality: what it is.
        data: the file bytes; ``None`` for a caption-only output.
        ext: the member extension (``"jpg"``, ``"wav"``, ``"mp4"``, ...); ``None`` with ``data=None``.
        caption: the caption (required for outputs; optional for inputs).
        name: the original file name, kept for cache compatibility.
    """

    modality: Modality
    data: bytes | None
    ext: str | None
    caption: str | None = None
    name: str | None = None


@dataclass
class PairRecord:
    """A caption pair to write."""

    id: str
    caption: str
    media: MediaBlob
    source: str = ""


@dataclass
class RecordTurn:
    """A turn of a :class:`ConversationRecord`: ``"user"`` or ``"assistant"``, and its text and media
    parts in order."""

    role: str
    parts: list[str | MediaBlob]


@dataclass
class ConversationRecord:
    """A conversation to write. Media parts of assistant turns are outputs (caption required).

    ``masks``: PNG bytes of the target mask of each ``<seg>`` in the assistant text, in order, each the
    size of the first input image (the module docstring)."""

    id: str
    turns: list[RecordTurn]
    source: str = ""
    masks: list[bytes] = field(default_factory=list)


def record_members(record: PairRecord | ConversationRecord) -> dict[str, bytes]:
    """The tar members of a record, by field (``{"json": ..., "jpg": ...}``), validated.

    Raises:
        BadSample: the record would not read back (unknown extension, output without caption, ...).
    """
    if isinstance(record, PairRecord):
        blob = record.media
        ext = (blob.ext or "").lower()
        if blob.data is None or _EXT_TO_MODALITY.get(ext) != blob.modality:
            raise BadSample(f"pair {record.id}: needs {blob.modality.value} bytes with a matching extension")
        if not record.caption.strip():
            raise BadSample(f"pair {record.id}: empty caption")
        meta = {
            "kind": PAIR,
            "modality": blob.modality.value,
            "caption": record.caption,
            "id": str(record.id),
            "source": record.source,
        }
        if blob.name:
            meta["name"] = blob.name
        return {"json": _dumps(meta), ext: blob.data}
    if not isinstance(record, ConversationRecord):
        raise TypeError(f"expected PairRecord or ConversationRecord, got {type(record).__name__}")
    members: dict[str, bytes] = {}
    turns = []
    for turn in record.turns:
        parts = []
        for part in turn.parts:
            if isinstance(part, str):
                parts.append({"text": part})
                continue
            entry: dict = {"media": None, "modality": part.modality.value, "caption": part.caption}
            if part.data is not None:
                ext = (part.ext or "").lower()
                fname = f"m{len(members)}.{ext}"
                entry["media"] = fname
                members[fname] = part.data
            if part.name:
                entry["name"] = part.name
            parts.append(entry)
        turns.append({"role": turn.role, "parts": parts})
    meta = {"kind": CONVERSATION, "id": str(record.id), "source": record.source, "turns": turns}
    if record.masks:
        meta["masks"] = []
        for data in record.masks:
            fname = f"s{len(meta['masks'])}.{MASK_EXTENSION}"
            meta["masks"].append(fname)
            members[fname] = data
    specs = parse_conversation(meta, set(members))  # the same checks the reader applies
    parse_masks(meta, specs, set(members))
    members["json"] = _dumps(meta)
    return members


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=False).encode("utf-8")
