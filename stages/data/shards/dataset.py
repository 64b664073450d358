"""The training reader: :class:`ShardDataset` (the epoch's order, the split between ranks and
DataLoader workers, shuffling, balanced reading, the bad-sample checks), :func:`iter_samples` and
:func:`collate_samples`. See :mod:`nextgpt.stages.data.shards`."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterator

import torch
from torch.utils.data import IterableDataset, get_worker_info

from nextgpt.errors import InputError

from ..schema import PADDING, BadSample, DroppedSample, Sample, check_stage
from .decode import DataStats, decode_sample
from .tars import count_samples, expand_urls, iter_raw

logger = logging.getLogger(__package__)  # records keep the name nextgpt.stages.data.shards

SPLITS = ("auto", "shard", "sample")


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
        split: ``"auto"``, ``"shard"`` or ``"sample"`` (see :mod:`nextgpt.stages.data.shards`).
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
