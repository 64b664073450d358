"""Running a conversion: the registry of formats (:data:`FORMATS`), reading the upstream file,
converting its records (in threads, in order) and writing them as shards, and the
:class:`ConvertReport` of what was written and skipped. See :mod:`nextgpt.stages.data.convert`."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality

from ..schema import BadSample, ConversationRecord, MediaBlob, PairRecord, record_members
from ..shards import write_samples
from .alpaca import _alpaca
from .common import MALFORMED, _Ctx, _MediaFinder, _Problem
from .llava import _llava
from .llmbind import _llmbind
from .mosit import _mosit
from .pairs import _pair_builder
from .refcoco import _refcoco, load_refcoco
from .t2m import _t2m
from .videochat import _videochat

logger = logging.getLogger(__package__)  # records keep the name nextgpt.stages.data.convert


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


# the record builder of every format: (item, index, ctx) -> record; raises _Problem
_BUILDERS: dict[str, Callable] = {
    "cc3m": _pair_builder("image_name", "id", Modality.IMAGE),
    "webvid": _pair_builder("video_name", "id", Modality.VIDEO),
    "audiocap": _pair_builder("audio_name", "audio_id", Modality.AUDIO),
    "t2m": _t2m,
    "mosit": _mosit,
    "llava": _llava,
    "alpaca": _alpaca,
    "videochat": _videochat,
    "llmbind": _llmbind,
    "refcoco": _refcoco,
}
#: Formats whose input is not one JSON list of records: their reader (path, split) -> records.
_READERS: dict[str, Callable] = {"refcoco": load_refcoco}
#: Supported upstream formats.
FORMATS: tuple[str, ...] = tuple(_BUILDERS)


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
    split: str | None = None,
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
        split: the split to convert, for formats that hold several (``refcoco``: default ``train``).

    Raises:
        ConfigError: unknown format. InputError: missing or unparsable input file, existing shards.
    """
    fmt = str(format).lower()
    if fmt not in _BUILDERS:
        raise ConfigError(f"unknown data format {format!r}; valid: {', '.join(FORMATS)}")
    start = time.perf_counter()
    input_path = Path(input_path)
    if split is not None and fmt not in _READERS:
        raise ConfigError(f"format {fmt!r} has no splits; --split applies to: {', '.join(_READERS)}")
    items = _READERS[fmt](input_path, split) if fmt in _READERS else _load_records(input_path)
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
