"""The LightningDataModule: webdataset shards of a stage -> collated batches.

Which shards a stage reads (:func:`stage_shards`): for every dataset name of the stage's config
(``training.stages[N].datasets``, e.g. ``cc3m``), ``<data_dir>/<name>/**/*.tar``; plus the generic
folders the converters and ``make data-demo`` write: ``pairs/`` for stages 1 and 2,
``conversations/`` for stage 3.

Resuming mid-epoch: the shard order is a function of the seed, so after a restart the loader skips
the batches the restored loop already completed and the run continues with the very batches an
uninterrupted run would have seen.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from torch.utils.data import DataLoader

from nextgpt.errors import ConfigError
from nextgpt.stages.batch import Collator

logger = logging.getLogger(__name__)

GENERIC_FOLDERS = {1: ("pairs",), 2: ("pairs",), 3: ("conversations",)}


def stage_shards(data_dir: str | Path, stage: int, names: list[str]) -> list[str]:
    """Sorted shard paths of ``stage`` under ``data_dir`` (see module docstring)."""
    root = Path(data_dir)
    folders = [*names, *GENERIC_FOLDERS[stage]]
    found: list[Path] = []
    for folder in dict.fromkeys(folders):
        found += sorted((root / folder).glob("**/*.tar"))
    if not found:
        searched = ", ".join(str(root / f) for f in dict.fromkeys(folders))
        raise ConfigError(
            f"no .tar shards for stage {stage} under {searched} (build them with `make data-demo` or `nextgpt data convert`)"
        )
    return [str(p) for p in found]


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
        return len(self.loader)


class NextGPTDataModule(L.LightningDataModule):
    """Shards -> :class:`~nextgpt.stages.batch.Batch` for one stage.

    Args:
        config: the run's config (batch size, max length, workers, seed, datasets of the stage).
        stage: 1, 2 or 3.
        processor: the model's processor.
        data_dir: folder of shards (default ``config.training.data_dir``).
        feature_cache / caption_cache: optional caches (see :mod:`nextgpt.stages.cache`).
        max_bad_fraction: corrupt-sample fraction past which the run stops with an error.
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
        max_bad_fraction: float = 0.01,
        shuffle: int = 64,
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
        self.max_bad_fraction = max_bad_fraction
        self.shuffle = shuffle
        self.dataset = None

    def setup(self, stage: str | None = None) -> None:
        from nextgpt.stages.data import ShardDataset

        urls = stage_shards(self.data_dir, self.stage, list(self.stage_cfg.datasets))
        trainer = self.trainer if self._trainer_attached() else None
        distributed = trainer is not None and trainer.world_size > 1
        self.dataset = ShardDataset(
            urls,
            self.stage,
            shuffle=self.shuffle,
            seed=self.config.training.seed,
            max_bad_fraction=self.max_bad_fraction,
            decode_output_media=bool(self.config.training.denoising_loss),
            # Every rank must see the same number of batches, or DDP's collectives hang at the end:
            # "balanced" caps every worker at the smallest per-worker sample count of the epoch.
            balanced=distributed,
            rank=trainer.global_rank if distributed else None,
            world_size=trainer.world_size if distributed else None,
        )
        logger.info("stage %d data: %d shard(s) from %s", self.stage, len(urls), self.data_dir)

    def _trainer_attached(self) -> bool:
        try:
            return self.trainer is not None
        except RuntimeError:
            return False

    def collator(self) -> Collator:
        tok = self.processor.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        return Collator(
            self.processor,
            self.stage_cfg.max_length,
            pad,
            feature_cache=self.feature_cache,
            caption_cache=self.caption_cache,
        )

    def train_dataloader(self):
        if self.dataset is None:
            self.setup()
        loader = DataLoader(
            self.dataset,
            batch_size=self.stage_cfg.batch_size,
            collate_fn=self.collator(),
            num_workers=self.config.training.num_workers,
            persistent_workers=False,
        )
        return _SkipFirst(loader, self.trainer if self._trainer_attached() else None)
