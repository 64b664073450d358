"""Reading and writing webdataset shards of training samples (schema in :mod:`.schema`).

Reading (:class:`ShardDataset`, :func:`iter_samples`) goes shard -> raw samples (members grouped by key)
-> optional shuffle buffer -> decode + validate -> :class:`~.schema.Sample`. Anything wrong with one
sample (undecodable media, bad json, a missing field or member, a corrupt or truncated tar) skips that
sample: a warning names the key and the reason, and :class:`DataStats` counts it. Once
``min_samples_before_check`` samples were seen, a bad fraction above ``max_bad_fraction`` raises
:class:`~nextgpt.errors.InputError`: a few broken files are normal in web-scale data, a large fraction
means the wrong data or a broken pipeline.

Splitting (no sample twice per epoch). Every DataLoader worker of every rank is one *global worker*
``g = rank * num_workers + worker_id`` out of ``G = world_size * num_workers``. The shard list is put in
the same order on every rank (shuffled with ``(seed, epoch)`` when ``shuffle > 0``), then:

* ``split="shard"``: global worker ``g`` reads shards ``g, g + G, g + 2G, ...``;
* ``split="sample"``: every worker reads every shard and keeps raw samples ``g, g + G, ...`` (more
  reading, but balanced to within one sample; for fewer shards than workers);
* ``split="auto"`` (default): ``shard`` when there are at least ``G`` shards, else ``sample``.

Rank and world size come from ``torch.distributed`` when it is initialised, else from the ``RANK`` and
``WORLD_SIZE`` environment variables, else 0 and 1; pass ``rank``/``world_size`` (or call
:meth:`ShardDataset.set_distributed`) to fix them explicitly. The order is a pure function of
``(urls, seed, epoch, rank, world_size, num_workers)``: exact resume replays an epoch with ``skip``.

Writing (:func:`write_samples`) uses webdataset's ``ShardWriter`` with fixed member times, so the same
records give byte-identical shards.

Media members are decoded and encoded by :mod:`nextgpt.mediaio`, the library's one media I/O
(:func:`decode_image`, :func:`decode_audio`, :func:`decode_video`, :func:`encode_image`,
:func:`encode_audio`, :func:`encode_video` are its functions): images are refused above
:data:`MAX_IMAGE_PIXELS` (the library's one pixel limit), audio above the reader's duration / sample
limits, and the H.264 writer pads odd frame sizes with edge pixels.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import IterableDataset, get_worker_info

from nextgpt.errors import InputError
from nextgpt.mediaio.audio import decode_audio, encode_audio
from nextgpt.mediaio.image import DEFAULT_MAX_IMAGE_PIXELS, decode_image, encode_image
from nextgpt.mediaio.video import decode_video, encode_video
from nextgpt.modality import Modality
from nextgpt.processor import MediaItem, Turn

from .schema import (
    CONVERSATION,
    PADDING,
    PAIR,
    BadSample,
    ConversationRecord,
    DroppedSample,
    PairRecord,
    Sample,
    check_stage,
    clean_caption,
    find_pair_media,
    pair_caption,
    pair_turns,
    parse_conversation,
    parse_json_member,
    record_members,
    safe_key,
)

logger = logging.getLogger(__name__)

#: Images with more pixels than this are refused: the library's one image limit
#: (:data:`nextgpt.mediaio.image.DEFAULT_MAX_IMAGE_PIXELS`, PIL's decompression-bomb warning threshold).
MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
#: How many bad keys :class:`DataStats` remembers.
MAX_BAD_KEYS = 100
SPLITS = ("auto", "shard", "sample")

__all__ = [
    "MAX_BAD_KEYS",
    "MAX_IMAGE_PIXELS",
    "SPLITS",
    "DataStats",
    "ShardDataset",
    "collate_samples",
    "count_samples",
    "decode_audio",
    "decode_image",
    "decode_media",
    "decode_sample",
    "decode_video",
    "encode_audio",
    "encode_image",
    "encode_video",
    "expand_urls",
    "iter_raw",
    "iter_samples",
    "write_samples",
]


# --------------------------------------------------------------------------------------------------
# media codecs (bytes <-> python objects): nextgpt.mediaio, the library's one media I/O.
# decode_image / decode_audio / decode_video / encode_image / encode_audio / encode_video are its
# functions, re-exported here (and from nextgpt.stages.data).


def _ext(field_name: str) -> str:
    return field_name.rsplit(".", 1)[-1].lower()


def decode_media(field_name: str, data: bytes, modality: Modality, *, max_video_frames: int | None = None):
    """Decode one media member to the value a :class:`~nextgpt.processor.MediaItem` holds: an RGB PIL
    image (at most :data:`MAX_IMAGE_PIXELS`), an :class:`~nextgpt.media.Audio` or a
    :class:`~nextgpt.media.Video` (the limits of :mod:`nextgpt.mediaio`). Raises ``ValueError``
    (:class:`~nextgpt.errors.InputError`) or a decoder error for unusable data."""
    if modality is Modality.IMAGE:
        return decode_image(data, max_pixels=MAX_IMAGE_PIXELS)
    if modality is Modality.AUDIO:
        return decode_audio(data, _ext(field_name))
    if modality is Modality.VIDEO:
        return decode_video(data, max_frames=max_video_frames)
    raise ValueError(f"cannot decode modality {modality}")


# --------------------------------------------------------------------------------------------------
# writing


def write_samples(
    out_dir: str | os.PathLike,
    samples: Iterable[PairRecord | ConversationRecord],
    *,
    prefix: str,
    max_count_per_shard: int = 1000,
    max_size_per_shard: float = 1e9,
    overwrite: bool = False,
    on_written: Callable[[PairRecord | ConversationRecord, str], None] | None = None,
) -> list[Path]:
    """Write records into ``out_dir/<prefix>-000000.tar, ...`` and return the shard paths.

    Keys are ``<8-digit index>_<id>`` (made webdataset-safe). A record that would not read back
    (:class:`~.schema.BadSample`) raises ``InputError`` — callers validate their records first.

    Args:
        out_dir: the folder to write to (created if missing).
        samples: the records to write, in order.
        prefix: shard file name prefix (letters, digits, ``_`` or ``-``).
        max_count_per_shard: records per shard at most.
        max_size_per_shard: a new shard starts once a shard holds this many bytes.
        overwrite: remove existing ``<prefix>-*.tar`` first; otherwise existing shards are an error
            (stale shards of an earlier, longer run would be read as part of the dataset).
        on_written: called with each record and its key after it is written.
    """
    import webdataset as wds

    if max_count_per_shard < 1:
        raise InputError(f"max_count_per_shard must be >= 1, got {max_count_per_shard}")
    if not prefix or safe_key(prefix) != prefix:
        raise InputError(f"shard prefix must be letters, digits, '_' or '-', got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing:
        if not overwrite:
            raise InputError(
                f"{out} already holds {len(existing)} shard(s) named {prefix}-*.tar; "
                "pass overwrite=True or choose another output folder/prefix"
            )
        for p in existing:
            p.unlink()
    pattern = str(out / f"{prefix}-%06d.tar")
    writer = None
    n = 0
    try:
        for record in samples:
            try:
                members = record_members(record)
            except BadSample as exc:
                raise InputError(f"record {getattr(record, 'id', '?')!r} cannot be written: {exc}") from None
            key = f"{n:08d}_{safe_key(record.id)}"
            if writer is None:
                writer = wds.ShardWriter(
                    pattern,
                    maxcount=max_count_per_shard,
                    maxsize=max_size_per_shard,
                    verbose=0,
                    encoder=False,
                    mtime=0.0,
                )
            writer.write({"__key__": key, **members})
            n += 1
            if on_written is not None:
                on_written(record, key)
    finally:
        if writer is not None:
            writer.close()
    paths = sorted(out.glob(f"{prefix}-*.tar"))
    logger.info("wrote %d samples into %d shard(s) under %s", n, len(paths), out)
    return paths


# --------------------------------------------------------------------------------------------------
# shard lists


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard list from a directory (its ``*.tar``, sorted), a glob, a brace pattern
    (``pairs-{000000..000009}.tar``), ``::``-separated patterns, or a list of those.

    Raises:
        InputError: a local shard that does not exist, or no shards at all.
    """
    from webdataset.shardlists import expand_urls as wds_expand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if _is_remote(text):
            out.extend(wds_expand(text))
            continue
        for pat in wds_expand(text):
            if os.path.isdir(pat):
                found = sorted(
                    glob.glob(os.path.join(pat, "*.tar")) + glob.glob(os.path.join(pat, "*.tar.gz"))
                )
                if not found:
                    raise InputError(f"shard folder '{pat}' holds no .tar files")
                out.extend(found)
            elif glob.has_magic(pat):
                found = sorted(glob.glob(pat))
                if not found:
                    raise InputError(f"no shards match '{pat}'")
                out.extend(found)
            else:
                out.append(pat)
    if not out:
        raise InputError("empty shard list")
    missing = [u for u in out if not _is_remote(u) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InputError(f"{len(missing)} shard(s) not found: {', '.join(missing[:3])}{more}")
    return out


def _open(url: str):
    if _is_remote(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _split_name(name: str) -> tuple[str | None, str | None]:
    """Split a tar member name by webdataset's rule: key = path up to the first dot of the base name,
    field = the rest."""
    head, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None, None
    stem, _, rest = base.partition(".")
    return (f"{head}/{stem}" if head else stem), rest.lower()


def _members(tar: tarfile.TarFile, size: int | None) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """``(member, key, field)`` of the sample members of an open tar, in order (directories, names
    without a field and ``__x__`` keys skipped). Raises ``tarfile.ReadError`` at the end when the file
    (``size`` bytes, if known) is shorter than its archive: tarfile takes a header cut short for the
    end (a complete tar ends with two zero blocks after the last member)."""
    for info in tar:
        if not info.isreg():
            continue
        key, fld = _split_name(info.name)
        if key is None or (key.startswith("__") and key.endswith("__")):
            continue
        yield info, key, fld
    if size is not None and size < tar.offset + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError("the archive ends before its end-of-archive blocks")


def iter_raw(url: str) -> Iterator[dict]:
    """Raw samples of one shard: ``{"__key__", "__url__", field: bytes, ...}``. A read error ends the
    shard with one ``{"__error__": reason}`` item (the partial sample it interrupted is dropped)."""
    current: dict | None = None
    last_key = "<start>"
    size = os.path.getsize(url) if not _is_remote(url) and url.endswith(".tar") else None
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info, key, fld in _members(tar, size):
                data = tar.extractfile(info).read()
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                    last_key = key
                if fld in current:
                    current["__error__"] = f"duplicate member {info.name!r}"
                current[fld] = data
        if current is not None:
            yield current
    except Exception as exc:  # corrupt/truncated tar, unreadable stream
        yield {
            "__key__": f"{url}#{last_key}",
            "__url__": url,
            "__error__": f"corrupt or truncated shard ({type(exc).__name__}: {exc})",
        }


def _count_local_tar(url: str) -> int:
    """Samples in a local uncompressed tar, from its headers (``tarfile`` seeks over member data).

    The count equals what :func:`iter_raw` yields for the file: the same key grouping and skipped
    names; a truncated or corrupt archive falls back to reading it (its readable samples plus the one
    error item :func:`iter_raw` ends with)."""
    try:
        n, last = 0, None
        with tarfile.open(url, mode="r:") as tar:
            for _, key, _ in _members(tar, os.path.getsize(url)):
                if key != last:
                    n, last = n + 1, key
        return n
    except (tarfile.TarError, OSError, EOFError) as exc:
        logger.warning("shard %s cannot be listed (%s): counting it by reading", url, exc)
        return sum(1 for _ in iter_raw(url))


def count_samples(urls, *, per_shard: bool = False) -> int | dict[str, int]:
    """Number of raw items :func:`iter_raw` yields for the shards (samples, bad ones included, plus one
    error item for a corrupt or truncated shard). Local uncompressed shards are counted from their tar
    headers; others are read."""
    counts: dict[str, int] = {}
    for url in expand_urls(urls):
        if not _is_remote(url) and url.endswith(".tar"):
            counts[url] = _count_local_tar(url)
        else:
            counts[url] = sum(1 for _ in iter_raw(url))
    return counts if per_shard else sum(counts.values())


# --------------------------------------------------------------------------------------------------
# decoding


@dataclass
class DataStats:
    """Counters of one reader (one per DataLoader worker)."""

    seen: int = 0
    bad: int = 0
    bad_keys: list[str] = field(default_factory=list)
    reasons: Counter = field(default_factory=Counter)

    @property
    def bad_fraction(self) -> float:
        """Bad samples over samples seen (0.0 before any)."""
        return self.bad / self.seen if self.seen else 0.0

    def record_bad(self, key: str, reason: str) -> None:
        """Count one bad sample: keep its key (the first :data:`MAX_BAD_KEYS`) and tally its reason up
        to the first colon, parenthesis or quote."""
        self.bad += 1
        if len(self.bad_keys) < MAX_BAD_KEYS:
            self.bad_keys.append(key)
        self.reasons[re.split(r"[:(\'\"]", reason, maxsplit=1)[0].strip()] += 1


def decode_sample(
    raw: dict,
    stage: int,
    *,
    decode_output_media: bool = True,
    max_video_frames: int | None = None,
    clean_output_captions: bool = False,
) -> Sample:
    """Validate and decode one raw sample; raise :class:`~.schema.BadSample` with the reason."""
    if "__error__" in raw:
        raise BadSample(raw["__error__"])
    key, url = raw["__key__"], raw.get("__url__", "")
    fields = {k: v for k, v in raw.items() if not k.startswith("__")}
    meta = parse_json_member(fields["json"]) if "json" in fields else {}
    kind = meta.get("kind", PAIR)
    sid = str(meta.get("id") or meta.get("key") or key)
    source = str(meta.get("source") or "")

    def media(fld: str, modality: Modality):
        try:
            return decode_media(fld, fields[fld], modality, max_video_frames=max_video_frames)
        except Exception as exc:
            # The media readers' InputError already says what is wrong; other errors get their type.
            why = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            raise BadSample(f"cannot decode {modality.value} member {fld!r}: {why}") from None

    if kind == PAIR:
        fld, modality = find_pair_media(meta, set(fields))
        caption = pair_caption(meta, fields)
        as_output = stage != 1
        value = media(fld, modality) if (decode_output_media or not as_output) else None
        turns, captions = pair_turns(
            stage, modality, caption, value, clean_output_captions=clean_output_captions
        )
        names = [meta.get("name") if isinstance(meta.get("name"), str) else None] if captions else []
        return Sample(key, PAIR, turns, captions, id=sid, source=source, url=url, output_names=names)
    if kind != CONVERSATION:
        raise BadSample(f"unknown sample kind {kind!r}; valid: pair, conversation")

    specs = parse_conversation(meta, set(fields))
    decoded: dict[str, object] = {}
    turns, captions, names = [], [], []
    for spec in specs:
        parts: list[str | MediaItem] = []
        for p in spec.parts:
            if p.text is not None:
                parts.append(p.text)
                continue
            value = None
            if p.media is not None and (spec.role == "user" or decode_output_media):
                if p.media not in decoded:
                    decoded[p.media] = media(p.media, p.modality)
                value = decoded[p.media]
            parts.append(MediaItem(p.modality, value))
            if spec.role == "assistant":
                cap = p.caption.strip()
                captions.append(clean_caption(cap) if clean_output_captions else cap)
                names.append(p.name)
        turns.append(Turn(spec.role, parts))
    return Sample(key, CONVERSATION, turns, captions, id=sid, source=source, url=url, output_names=names)


# --------------------------------------------------------------------------------------------------
# the dataset


def _dist_info() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return 0, 1


def _shuffled(items: Iterator[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A shuffle buffer: hold ``size`` items, emit a random one as each new item arrives."""
    buf: list[dict] = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        buf[i], item = item, buf[i]
        yield item
    rng.shuffle(buf)
    yield from buf


class ShardDataset(IterableDataset):
    """Decoded samples from webdataset shards for a training stage.

    Args:
        urls: shard paths/patterns/folders (see :func:`expand_urls`).
        stage: 1, 2 or 3; decides how pairs become turns (:func:`~.schema.pair_turns`).
        shuffle: shuffle-buffer size in samples; ``> 0`` also shuffles the shard order. 0: file order.
        seed: seed of every shuffle (with the epoch, the rank and the worker).
        max_bad_fraction: tolerated fraction of bad samples per worker.
        min_samples_before_check: samples a worker sees before the fraction is checked.
        rank, world_size: fix the distributed position (default: from torch.distributed / env).
        split: ``"auto"``, ``"shard"`` or ``"sample"`` (module docstring).
        epoch: the epoch (changes the shuffles); see :meth:`set_epoch`.
        skip: samples each worker drops at the start of the epoch (resume inside an epoch).
        max_samples_per_worker: stop each worker after this many samples.
        balanced: exact, equal-length reading for training (DDP/FSDP need every rank to run the same
            number of steps, and the LR schedule needs the epoch's length). The epoch's samples (shard
            counts from the tar headers, read once here) are split into contiguous ranges, one per
            global worker, differing by at most one sample; every worker yields exactly
            :meth:`items_per_worker` items: a sample that cannot be used is yielded as a
            :class:`~.schema.DroppedSample` (never skipped), and a worker whose range is one sample
            shorter adds one padding item. Nothing is lost and the bad-sample checks are left to the
            caller (the training loop counts drops over all ranks). ``split`` is ignored.
        decode_output_media: decode the media of assistant turns (off: ``value=None``, only captions).
        max_video_frames: subsample decoded videos to at most this many frames (``None``: all).
        clean_output_captions: clean output captions like the LM targets (default: raw captions).

    Attributes:
        stats: :class:`DataStats` of the iteration in this process (each worker has its own copy).
    """

    def __init__(
        self,
        urls,
        stage: int,
        *,
        shuffle: int = 0,
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        min_samples_before_check: int = 100,
        rank: int | None = None,
        world_size: int | None = None,
        split: str = "auto",
        epoch: int = 0,
        skip: int = 0,
        max_samples_per_worker: int | None = None,
        balanced: bool = False,
        decode_output_media: bool = True,
        max_video_frames: int | None = None,
        clean_output_captions: bool = False,
    ) -> None:
        super().__init__()
        self.urls = expand_urls(urls)
        self.stage = check_stage(stage)
        if split not in SPLITS:
            raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if not 0.0 <= max_bad_fraction <= 1.0:
            raise InputError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
        self.shuffle = int(shuffle)
        self.seed = int(seed)
        self.max_bad_fraction = float(max_bad_fraction)
        self.min_samples_before_check = int(min_samples_before_check)
        self.rank = self.world_size = None
        if rank is not None or world_size is not None:
            if rank is None or world_size is None:
                raise InputError("pass rank and world_size together")
            self.set_distributed(rank, world_size)
        self.split = split
        self.epoch = int(epoch)
        self.skip = int(skip)
        self.max_samples_per_worker = max_samples_per_worker
        self.balanced = bool(balanced)
        self.shard_counts: dict[str, int] | None = (
            count_samples(self.urls, per_shard=True) if balanced else None
        )
        self.decode_output_media = decode_output_media
        self.max_video_frames = max_video_frames
        self.clean_output_captions = clean_output_captions
        self.stats = DataStats()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration follows (call before each epoch)."""
        self.epoch = int(epoch)

    def set_distributed(self, rank: int, world_size: int) -> None:
        """Fix the rank and world size (e.g. from a LightningDataModule's ``setup``)."""
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is outside world size {world_size}")
        self.rank, self.world_size = int(rank), int(world_size)

    def worker_position(self) -> tuple[int, int]:
        """``(global worker index, number of global workers)`` of the calling process."""
        rank, world = (self.rank, self.world_size) if self.rank is not None else _dist_info()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * nw + wid, world * nw

    def _plan(self, total: int) -> tuple[str, list[str]]:
        """This epoch's split mode and shard order (the same on every rank and worker)."""
        urls = list(self.urls)
        if self.shuffle > 0:
            random.Random(f"shards:{self.seed}:{self.epoch}").shuffle(urls)
        mode = "range" if self.balanced else self.split
        if mode == "auto":
            mode = "shard" if len(urls) >= total else "sample"
        return mode, urls

    def num_samples(self) -> int:
        """Raw samples in the shards (what one epoch of a balanced reader covers)."""
        if self.shard_counts is None:
            self.shard_counts = count_samples(self.urls, per_shard=True)
        return sum(self.shard_counts.values())

    def items_per_worker(self, total: int) -> int:
        """Items every one of ``total`` global workers yields per epoch when ``balanced``:
        ``ceil(num_samples / total)`` (capped by ``max_samples_per_worker``)."""
        quota = -(-self.num_samples() // total)
        if self.max_samples_per_worker is not None:
            quota = min(quota, int(self.max_samples_per_worker))
        return max(0, quota)

    def batches_per_rank(self, batch_size: int, num_workers: int) -> int:
        """Batches one rank's DataLoader yields per epoch when ``balanced``: each of its
        ``max(1, num_workers)`` workers makes ``ceil(items_per_worker / batch_size)`` batches."""
        rank, world = (self.rank, self.world_size) if self.rank is not None else _dist_info()
        nw = max(1, int(num_workers))
        return nw * -(-self.items_per_worker(world * nw) // int(batch_size))

    def balanced_length(self, total: int) -> int:
        """Items each of ``total`` global workers yields per epoch (see :meth:`items_per_worker`)."""
        return self.items_per_worker(total)

    def _range_raw(self, g: int, total: int, urls: list[str]) -> Iterator[dict]:
        """Worker ``g``'s contiguous range of the epoch's sample sequence, padded to the quota.

        The range is ``[g * N // total, (g + 1) * N // total)``; shards overlapping it are read from
        their start and cut at the range end. A shard that ends early (changed or broken since it was
        counted) is filled with error items, so the worker's length never changes."""
        counts = self.shard_counts if self.shard_counts is not None else {}
        n = self.num_samples()
        lo, hi = g * n // total, (g + 1) * n // total
        quota = self.items_per_worker(total)
        emitted, offset = 0, 0
        for url in urls:
            c = counts[url]
            a, b = max(lo, offset) - offset, min(hi, offset + c) - offset  # local [a, b) of this shard
            offset += c
            if a >= b:
                continue
            i, reason = 0, "shard ended before its counted samples"
            for raw in iter_raw(url):
                if "__error__" in raw and raw["__key__"].startswith(f"{url}#"):
                    reason = raw["__error__"]  # a read error ends the shard: fill the rest below
                    if i >= a:
                        break
                if i >= b or emitted >= quota:
                    break
                if i >= a:
                    yield raw
                    emitted += 1
                i += 1
            while i < b and emitted < quota:  # the shard ended early
                if i >= a:
                    yield {"__key__": f"{url}#{i}", "__url__": url, "__error__": reason}
                    emitted += 1
                i += 1
            if emitted >= quota:
                return
        for k in range(quota - emitted):  # one sample fewer than the longest range: pad
            yield {"__key__": f"__padding__{g}_{k}", "__url__": "", "__padding__": True}

    def _raw(self, g: int, total: int) -> Iterator[dict]:
        mode, urls = self._plan(total)
        if mode == "range":
            yield from self._range_raw(g, total, urls)
            return
        if mode == "shard":
            for url in urls[g::total]:
                yield from iter_raw(url)
            return
        i = 0
        for url in urls:
            for raw in iter_raw(url):
                if i % total == g:
                    yield raw
                i += 1

    def __iter__(self) -> Iterator[Sample | DroppedSample]:
        self.stats = DataStats()
        return self._iterate(self.stats)

    def _iterate(self, stats: DataStats) -> Iterator[Sample | DroppedSample]:
        g, total = self.worker_position()
        raws = self._raw(g, total)
        if self.shuffle > 0:
            raws = _shuffled(
                raws, self.shuffle, random.Random(f"samples:{self.seed}:{self.epoch}:{g}:{total}")
            )
        if self.balanced:
            yield from self._iterate_balanced(raws, stats)
            return
        cap = self.max_samples_per_worker
        if cap is not None and cap <= 0:
            return
        yielded = skipped = 0
        for raw in raws:
            stats.seen += 1
            sample = self._decode(raw, stats)
            self._check(stats)
            if sample is None:
                continue
            if skipped < self.skip:
                skipped += 1
                continue
            yield sample
            yielded += 1
            if cap is not None and yielded >= cap:
                return
        # All bad: an error, unless this is one of several workers that saw only a handful of samples
        # (a tiny dataset with one broken shard must not fail on the worker that drew the broken part).
        if stats.seen and stats.bad == stats.seen and (total == 1 or stats.seen >= 10):
            raise InputError(
                f"none of the {stats.seen} samples read by this worker could be used; "
                f"first bad keys: {', '.join(stats.bad_keys[:5])}; reasons: {dict(stats.reasons)}"
            )

    def _iterate_balanced(self, raws: Iterator[dict], stats: DataStats) -> Iterator[Sample | DroppedSample]:
        """One item per raw item: the sample, or a :class:`DroppedSample` saying why not."""
        for raw in raws:
            if raw.get("__padding__"):
                yield DroppedSample(raw["__key__"], "", PADDING)
                continue
            stats.seen += 1
            detail = []
            sample = self._decode(raw, stats, detail)
            yield (
                sample
                if sample is not None
                else DroppedSample(raw["__key__"], raw.get("__url__", ""), "decode", detail[0])
            )

    def _decode(self, raw: dict, stats: DataStats, detail: list[str] | None = None) -> Sample | None:
        try:
            return decode_sample(
                raw,
                self.stage,
                decode_output_media=self.decode_output_media,
                max_video_frames=self.max_video_frames,
                clean_output_captions=self.clean_output_captions,
            )
        except BadSample as exc:
            stats.record_bad(raw["__key__"], str(exc))
            logger.warning("skipping sample %s (%s): %s", raw["__key__"], raw.get("__url__", ""), exc)
            if detail is not None:
                detail.append(str(exc))
            return None

    def _check(self, stats: DataStats) -> None:
        if stats.seen < self.min_samples_before_check or stats.bad_fraction <= self.max_bad_fraction:
            return
        raise InputError(
            f"too many bad samples: {stats.bad} of {stats.seen} ({stats.bad_fraction:.1%}) exceed "
            f"max_bad_fraction={self.max_bad_fraction:.1%}; first bad keys: {', '.join(stats.bad_keys[:5])}; "
            f"reasons: {dict(stats.reasons)}"
        )


def iter_samples(urls, stage: int = 3, *, stats: DataStats | None = None, **kwargs) -> Iterator[Sample]:
    """Iterate decoded samples in this process (no DataLoader). ``kwargs`` go to :class:`ShardDataset`;
    pass ``stats`` to watch the counters while iterating."""
    ds = ShardDataset(urls, stage, **kwargs)
    yield from ds._iterate(stats if stats is not None else DataStats())


def collate_samples(batch: list[Sample]) -> list[Sample]:
    """DataLoader ``collate_fn`` that keeps decoded samples as a list (tokenisation happens later)."""
    return list(batch)
