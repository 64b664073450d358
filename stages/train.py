"""Run one training stage: ``train(stage, preset=..., data=..., out=...)`` (``make stage1/2/3``).

A run folder ``<out>/stage<N>/`` holds ``checkpoints/last.ckpt`` (trainable parameters + optimiser
state + the resolved config, written atomically) and ``checkpoints/previous.ckpt`` (the one before,
the fallback when ``last.ckpt`` cannot be read), ``logs/version_<k>/metrics.csv`` (one per attempt:
a resumed run writes the next version; each row is written when it is logged; TensorBoard events too
when it is installed) and, when the stage finishes, ``model/`` (``NextGPT.save_pretrained``: one
atomic folder with a manifest, what the next stage and ``NextGPT.from_pretrained`` load). Running the same command again resumes from ``last.ckpt``.
Stage N > 1 starts from ``<out>/stage<N-1>/model`` when it exists (or ``init_from``), loading its
trained parameters with strict key accounting.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from nextgpt.config import NextGPTConfig, resolve_path
from nextgpt.errors import CheckpointError, UnsafeCheckpointError

logger = logging.getLogger(__name__)


#: The checkpoint before ``last.ckpt``, kept until the next one is complete (a fallback for resume).
PREVIOUS_CHECKPOINT = "previous.ckpt"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file, flush it to disk and rename it into place (a crash
    mid-save leaves the previous checkpoint intact); keep the checkpoint it replaces as
    ``previous.ckpt`` (a hard link: no second copy on disk) until the next save, so a ``last.ckpt``
    damaged afterwards (a full disk, a partial copy) still leaves one to resume from; read them
    without unpickling arbitrary objects."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        """Write ``checkpoint`` to ``path`` atomically, keeping the file it replaces as ``previous.ckpt``
        (``storage_options`` is unused)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if path.is_file():
            previous = path.with_name(PREVIOUS_CHECKPOINT)
            link = previous.with_name(previous.name + ".tmp")
            link.unlink(missing_ok=True)
            try:
                os.link(path, link)
                os.replace(link, previous)
            except OSError:  # no hard links here: move it (resume also looks for previous.ckpt alone)
                os.replace(path, previous)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        """Read the checkpoint at ``path`` without unpickling arbitrary objects (onto the CPU;
        ``map_location`` and ``weights_only`` are ignored)."""
        from nextgpt.stages.modules import safe_load_checkpoint

        return safe_load_checkpoint(path)


def _durable_csv_logger(save_dir: Path, name: str):
    """Lightning's ``CSVLogger`` made crash-safe: every logged row is written at once (its default
    keeps up to 100 rows in memory, lost on kill -9), and the file, rewritten whole when a new column
    appears, is replaced atomically instead of truncated and refilled in place."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter
    from lightning.pytorch.loggers.logger import rank_zero_experiment

    class DurableWriter(ExperimentWriter):
        def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
            import csv

            with open(self.metrics_file_path, newline="") as f:
                rows = list(csv.DictReader(f))
            tmp = self.metrics_file_path + ".tmp"
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.metrics_file_path)

    class DurableCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                self._fs.makedirs(self.root_dir, exist_ok=True)
                self._experiment = DurableWriter(log_dir=self.log_dir)
            return self._experiment

    return DurableCSVLogger(save_dir, name=name, flush_logs_every_n_steps=1)


def resume_checkpoint(checkpoint_dir: Path) -> Path | None:
    """The checkpoint a rerun resumes from: ``last.ckpt``; if that cannot be read (truncated or
    damaged), ``previous.ckpt`` with a warning; ``None`` when there is neither.

    Raises:
        CheckpointError: a checkpoint that would need unsafe unpickling, or no readable checkpoint
            where one was written; the message says what to do.
    """
    from nextgpt.stages.modules import safe_load_checkpoint

    last, previous = checkpoint_dir / "last.ckpt", checkpoint_dir / PREVIOUS_CHECKPOINT
    problems = []
    for path in (last, previous):
        if not path.is_file():
            continue
        try:
            safe_load_checkpoint(path)  # memory-mapped: opening it reads the index, not the tensors
        except UnsafeCheckpointError:  # a file that wants to run code is never skipped over
            raise
        except CheckpointError as exc:
            problems.append(str(exc))
            logger.warning("%s", exc)
            continue
        if problems:
            logger.warning(
                "%s cannot be read; resuming from the checkpoint before it, %s (the steps since are "
                "trained again)",
                last,
                path,
            )
        return path
    if not problems:
        return None
    raise CheckpointError(
        f"cannot resume from '{checkpoint_dir}': no checkpoint there can be read ({'; '.join(problems)}). "
        f"Delete '{checkpoint_dir}' to start the stage over, or train with resume=False"
    )


def stage_config(
    stage: int,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    init_from: str | os.PathLike | None = None,
) -> NextGPTConfig:
    """The config of a stage run: the previous stage's config (when chaining) or the preset, plus
    ``overrides`` and ``training.stage=<stage>``."""
    if init_from is not None:
        base = NextGPTConfig.from_yaml(Path(init_from) / "config.yaml")
    else:
        base = NextGPTConfig.from_preset(preset)
    return base.with_overrides([*overrides, f"training.stage={stage}"])


def precision_settings(precision: str, accelerator: str) -> tuple[str | None, list]:
    """``(precision, plugins)`` for the Trainer. Lightning turns ``16-mixed`` on the CPU into
    ``bf16-mixed`` (with a warning); a CPU run asked for fp16 gets it: fp16 autocast with
    ``torch.amp.GradScaler("cpu")``, the path a GPU run takes, through an explicit plugin."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if precision == "16-mixed" and on_cpu:
        from lightning.pytorch.plugins.precision import MixedPrecision

        return None, [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]
    return precision, []


def build_trainer(
    cfg: NextGPTConfig, run_dir: Path, *, max_steps: int | None = None, callbacks=(), **kwargs
) -> L.Trainer:
    """The Lightning ``Trainer`` for ``cfg``'s stage, writing into ``run_dir``: its strategy and
    precision, a CSV logger (and TensorBoard's when installed), a ``last.ckpt`` every
    ``training.checkpoint_every_n_steps`` steps through :class:`AtomicCheckpointIO`, plus ``callbacks``;
    ``max_steps`` overrides ``training.max_steps`` and ``kwargs`` go to ``Trainer``."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from nextgpt.stages.parallel import build_strategy

    t = cfg.training
    stage_cfg = t.stage_config(t.stage)
    strategy = build_strategy(
        t.strategy, devices=t.devices, num_nodes=t.num_nodes, accelerator=t.accelerator, precision=t.precision
    )
    # One CSV per attempt (logs/version_N/metrics.csv): a resumed run appends a new version.
    loggers = [_durable_csv_logger(run_dir, "logs")]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(run_dir, name="tensorboard"))
    except ImportError:
        pass
    ckpt = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=t.checkpoint_every_n_steps,
    )
    steps = max_steps if max_steps is not None else (t.max_steps if t.max_steps is not None else -1)
    precision, plugins = precision_settings(t.precision, t.accelerator)
    return L.Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=stage_cfg.epochs,
        max_steps=steps,
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps,
        logger=loggers,
        callbacks=[ckpt, *callbacks],
        plugins=[AtomicCheckpointIO(), *plugins],
        default_root_dir=run_dir,
        num_sanity_val_steps=0,
        **kwargs,
    )


def train(
    stage: int,
    preset: str = "tiny",
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    init_from: str | os.PathLike | None = None,
    resume: bool = True,
    *,
    max_steps: int | None = None,
    callbacks=(),
    trainer_kwargs: dict | None = None,
) -> Path:
    """Train ``stage`` and return the folder of the saved model (``<out>/stage<N>/model``)."""
    from nextgpt.model import NextGPT
    from nextgpt.stages.cache import open_caches
    from nextgpt.stages.datamodule import NextGPTDataModule
    from nextgpt.stages.modules import StageModule
    from nextgpt.stages.parallel import gathered_trainable_state, is_sharded

    root = Path(out) if out is not None else None
    if (
        init_from is None
        and stage > 1
        and root is not None
        and (root / f"stage{stage - 1}" / "model").is_dir()
    ):
        init_from = root / f"stage{stage - 1}" / "model"
    init_state = None
    if init_from is not None:
        from nextgpt.checkpoint import read_model_folder

        # The previous stage's folder must be one complete save (manifest checked) before its config
        # is used.
        _, init_state = read_model_folder(init_from)
    cfg = stage_config(stage, preset, overrides, init_from)
    if root is None:
        root = resolve_path(cfg.training.output_dir, "training.output_dir") or Path("runs") / cfg.name
    run_dir = root / f"stage{stage}"
    L.seed_everything(cfg.training.seed, workers=True)

    model = NextGPT(cfg)
    if init_state is not None:
        logger.info("stage %d starts from %s", stage, init_from)
        before = NextGPTConfig.from_yaml(Path(init_from) / "config.yaml").training
        model.load_trainable_state(
            init_state, what=f"previous stage '{init_from}'", norms_frozen=not before.trains_norms
        )
        del init_state
    module = StageModule(cfg, stage, model)
    dm = NextGPTDataModule(cfg, stage, model.processor, data, seg_processor=module.seg_processor)
    shards = dm.shards()  # a missing dataset is an error before anything else runs
    # A cache that does not cover every shard of this stage is an error here, before step 1.
    dm.feature_cache, dm.caption_cache = open_caches(cfg, stage, model, dm.data_dir, shards)
    trainer = build_trainer(cfg, run_dir, max_steps=max_steps, callbacks=callbacks, **(trainer_kwargs or {}))
    found = resume_checkpoint(run_dir / "checkpoints") if resume else None
    ckpt_path = str(found) if found is not None else None
    if ckpt_path:
        logger.info("resuming stage %d from %s", stage, ckpt_path)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    state = None
    if is_sharded(trainer.strategy):  # gather the shards (a collective: every rank takes part)
        state = gathered_trainable_state(model)
    if trainer.global_rank == 0:
        model.save_pretrained(run_dir / "model", state=state)
    return run_dir / "model"
