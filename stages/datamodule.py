"""The LightningDataModule: webdataset shards of a stage -> collated batches.

Which shards a stage reads (:func:`stage_shards`): for every dataset name of the stage's config
(``training.stages[N].datasets``, e.g. ``cc3m``), ``<data_dir>/<name>/**/*.tar``. A listed dataset
without shards is an error (``make data-demo`` writes ``pairs/`` and ``conversations/``, the names
the ``tiny`` and ``small`` presets list).

Exact length: the reader is balanced (:class:`~nextgpt.stages.data.ShardDataset`): every rank and
worker yields the same, known number of items per epoch (unusable samples stand in as
:class:`~nextgpt.stages.data.schema.DroppedSample`, counted by the collator), so the loader has an
exact ``len`` (what Lightning's ``estimated_stepping_batches`` and the LR schedule use) and every rank
runs the same steps.

Resuming mid-epoch: the shard order is a function of the seed, so after a restart the loader skips
the batches the restored loop already completed and the run continues with the very batches an
uninterrupted run would have seen.

Padding: a stage with ``packing`` (on for stages 1 and 2) collates its batches several samples per row
(:mod:`nextgpt.stages.batch`); one with ``group_by_length`` instead reorders each worker's samples
(:class:`LengthGroupedDataset`) so that a batch holds samples of similar length. Neither changes how
many samples a batch holds nor the epoch's length, and both are deterministic, so resuming stays
exact.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader, IterableDataset

from nextgpt.errors import ConfigError
from nextgpt.stages.batch import Collator

logger = logging.getLogger(__name__)


def stage_shards(data_dir: str | Path, stage: int, names: list[str]) -> list[str]:
    """Sorted shard paths of ``stage`` under ``data_dir``: ``<data_dir>/<name>/**/*.tar`` per name.

    Raises:
        ConfigError: no dataset is listed, or a listed one has no shards (naming what is there).
    """
    root = Path(data_dir)
    key = f"training.stages.{stage}.datasets"
    if not names:
        raise ConfigError(f"{key} is empty: list the dataset folders under {root} the stage reads")
    found: list[Path] = []
    missing = []
    for name in dict.fromkeys(names):
        shards = sorted((root / name).glob("**/*.tar"))
        if not shards:
            missing.append(name)
        found += shards
    if missing:
        present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise ConfigError(
            f"{key}: no .tar shards for {', '.join(repr(m) for m in missing)} under {root} "
            f"(folders there: {', '.join(present) or 'none'}); convert the data with `nextgpt data convert` "
            f"or `make data-demo`, or set {key}=[...] to the datasets you have"
        )
    return [str(p) for p in found]


class LengthGroupedDataset(IterableDataset):
    """``dataset``'s items in an order where each run of ``batch_size`` consecutive items (what one
    DataLoader worker makes a batch of) holds items of similar length.

    Each worker's stream is cut into windows of ``window_batches * batch_size`` items; a window is
    sorted by ``length`` (ties keep the stream order), cut into batches, and its full batches are
    yielded in a random order drawn from ``seed``, the epoch and the worker, so the order is the same
    on every run (exact resume). Only the stream's last window can hold a short batch; it comes last,
    so every batch boundary stays where the DataLoader draws it. The number of items per worker is
    the dataset's, so the epoch's length is unchanged. Memory: one window of decoded samples.

    Args:
        dataset: a :class:`~nextgpt.stages.data.ShardDataset` (its ``set_epoch``,
            ``worker_position`` and ``batches_per_rank`` are used).
        length: item -> tokens (e.g. :meth:`~nextgpt.stages.batch.Collator.length`).
        batch_size: the DataLoader's batch size.
        window_batches: batches per sorting window.
        seed: seed of the batch order.
    """

    def __init__(
        self, dataset, length: Callable[[object], int], batch_size: int, window_batches: int, seed: int
    ) -> None:
        super().__init__()
        self.dataset = dataset
        self.length = length
        self.batch_size = int(batch_size)
        self.window = int(window_batches) * self.batch_size
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (the dataset's order and the batch order follow it)."""
        self.epoch = int(epoch)
        self.dataset.set_epoch(epoch)

    def batches_per_rank(self, batch_size: int, num_workers: int) -> int:
        """The dataset's batches per rank: grouping keeps every worker's item count."""
        return self.dataset.batches_per_rank(batch_size, num_workers)

    def __iter__(self):
        g, total = self.dataset.worker_position()
        rng = random.Random(f"length-groups:{self.seed}:{self.epoch}:{g}:{total}")
        window: list = []
        for item in self.dataset:
            window.append(item)
            if len(window) == self.window:
                yield from self._grouped(window, rng)
                window = []
        yield from self._grouped(window, rng)

    def _grouped(self, items: list, rng: random.Random):
        lengths = [self.length(item) for item in items]
        order = sorted(range(len(items)), key=lambda i: (lengths[i], i))
        bs = self.batch_size
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        full = [b for b in batches if len(b) == bs]
        rng.shuffle(full)
        for batch in full + [b for b in batches if len(b) < bs]:
            for i in batch:
                yield items[i]


class _SkipFirst:
    """Iterate a DataLoader, skipping the batches the (restored) fit loop already completed."""

    def __init__(self, loader: DataLoader, trainer: L.Trainer | None) -> None:
        self.loader = loader
        self.trainer = trainer

    def __iter__(self):
        done = 0
        if self.trainer is not None:
            self.loader.dataset.set_epoch(int(self.trainer.current_epoch))
            # "processed": batches whose step ran (a checkpoint written in on_train_batch_end counts
            # its batch as processed but not yet completed).
            done = int(self.trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        it = iter(self.loader)
        for _ in range(done):
            next(it, None)
        if done:
            logger.info("resumed: skipped %d batches already trained on", done)
        yield from it

    def __len__(self) -> int:
        # Exact: each worker of this rank yields ceil(items_per_worker / batch_size) batches.
        return self.loader.dataset.batches_per_rank(self.loader.batch_size, self.loader.num_workers)


class NextGPTDataModule(L.LightningDataModule):
    """Shards -> :class:`~nextgpt.stages.batch.Batch` for one stage.

    Args:
        config: the run's config (batch size, max length, workers, seed, datasets of the stage).
        stage: 1, 2 or 3.
        processor: the model's processor.
        data_dir: folder of shards (default ``config.training.data_dir``).
        feature_cache / caption_cache: optional caches (see :mod:`nextgpt.stages.cache`).
        seg_processor: the model's SAM image processor when it has LLMBind segmentation
            (``model.segmentation.processor``): samples' target masks then train ``<seg>``.
    """

    def __init__(
        self,
        config,
        stage: int,
        processor,
        data_dir: str | Path | None = None,
        *,
        feature_cache=None,
        caption_cache=None,
        shuffle: int | None = None,
        seg_processor=None,
    ) -> None:
        super().__init__()
        from nextgpt.config import resolve_path

        self.config = config
        self.stage = stage
        self.stage_cfg = config.training.stage_config(stage)
        self.processor = processor
        root = (
            data_dir if data_dir is not None else resolve_path(config.training.data_dir, "training.data_dir")
        )
        if root is None:
            raise ConfigError("no data: pass data_dir or set training.data_dir")
        self.data_dir = Path(root)
        self.feature_cache = feature_cache
        self.caption_cache = caption_cache
        self.seg_processor = seg_processor
        self.shuffle = config.training.shuffle_buffer if shuffle is None else int(shuffle)
        self.dataset = None

    def shards(self) -> list[str]:
        """The shard paths this stage reads."""
        return stage_shards(self.data_dir, self.stage, list(self.stage_cfg.datasets))

    def setup(self, stage: str | None = None) -> None:
        """Open the stage's shards as a balanced :class:`~nextgpt.stages.data.ShardDataset`, split over
        the trainer's ranks when it runs distributed (Lightning's ``stage`` argument is unused)."""
        from nextgpt.stages.data import ShardDataset

        urls = self.shards()
        trainer = self.trainer if self._trainer_attached() else None
        distributed = trainer is not None and trainer.world_size > 1
        self.dataset = ShardDataset(
            urls,
            self.stage,
            shuffle=self.shuffle,
            seed=self.config.training.seed,
            decode_output_media=bool(self.config.training.denoising_loss),
            # Exact, equal lengths on every rank (module docstring); bad samples are counted by the
            # training loop over all ranks, not per worker.
            balanced=True,
            rank=trainer.global_rank if distributed else 0,
            world_size=trainer.world_size if distributed else 1,
        )
        logger.info(
            "stage %d data: %d shard(s), %d samples from %s",
            self.stage,
            len(urls),
            self.dataset.num_samples(),
            self.data_dir,
        )

    def _trainer_attached(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def collator(self) -> Collator:
        """The :class:`Collator` for this stage: its max length, the tokenizer's pad id (else EOS, else
        0), the feature caches, ``training.overlength``, packing and the SAM processor."""
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return Collator(
            self.processor,
            self.stage_cfg.max_length,
            pad,
            feature_cache=self.feature_cache,
            caption_cache=self.caption_cache,
            overlength=self.config.training.overlength,
            packing=self.stage_cfg.packing,
            pack_length=self.stage_cfg.pack_length,
            seg_processor=self.seg_processor,
        )

    def train_dataloader(self):
        """The training DataLoader (set up first if needed); on resume it skips the batches the fit loop
        already completed. With the stage's ``group_by_length`` the samples come through a
        :class:`LengthGroupedDataset`."""
        if self.dataset is None:
            self.setup()
        collator = self.collator()
        dataset = self.dataset
        if self.stage_cfg.group_by_length:
            dataset = LengthGroupedDataset(
                self.dataset,
                collator.length,
                self.stage_cfg.batch_size,
                self.config.training.length_group_batches,
                self.config.training.seed,
            )
        loader = DataLoader(
            dataset,
            batch_size=self.stage_cfg.batch_size,
            collate_fn=collator,
            num_workers=self.config.training.num_workers,
            persistent_workers=False,
        )
        return _SkipFirst(loader, self.trainer if self._trainer_attached() else None)
