"""Run one training stage: ``train(stage, preset=..., data=..., out=...)`` (``make stage1/2/3``).

A run folder ``<out>/stage<N>/`` holds ``checkpoints/last.ckpt`` (trainable parameters + optimiser
state + the resolved config, written atomically), ``logs/version_<k>/metrics.csv`` (one per attempt:
a resumed run writes the next version; TensorBoard events too when it is installed)
and, when the stage finishes, ``model/`` (``NextGPT.save_pretrained``: what the next stage and
``NextGPT.from_pretrained`` load). Running the same command again resumes from ``last.ckpt``.
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

logger = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temporary file and rename it into place (a crash mid-save leaves the
    previous checkpoint intact); read them without unpickling arbitrary objects."""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        from nextgpt.stages.modules import safe_load_checkpoint

        return safe_load_checkpoint(path)


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
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from nextgpt.stages.parallel import build_strategy

    t = cfg.training
    stage_cfg = t.stage_config(t.stage)
    strategy = build_strategy(
        t.strategy, devices=t.devices, num_nodes=t.num_nodes, accelerator=t.accelerator, precision=t.precision
    )
    # One CSV per attempt (logs/version_N/metrics.csv): a resumed run appends a new version.
    loggers = [CSVLogger(run_dir, name="logs")]
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
    cfg = stage_config(stage, preset, overrides, init_from)
    if root is None:
        root = resolve_path(cfg.training.output_dir, "training.output_dir") or Path("runs") / cfg.name
    run_dir = root / f"stage{stage}"
    L.seed_everything(cfg.training.seed, workers=True)

    model = NextGPT(cfg)
    if init_from is not None:
        from nextgpt.checkpoint import read_state_dict

        logger.info("stage %d starts from %s", stage, init_from)
        model.load_trainable_state(
            read_state_dict(Path(init_from) / "trainable.safetensors"), what=f"previous stage '{init_from}'"
        )
    module = StageModule(cfg, stage, model)
    dm = NextGPTDataModule(cfg, stage, model.processor, data)
    shards = dm.shards()  # a missing dataset is an error before anything else runs
    # A cache that does not cover every shard of this stage is an error here, before step 1.
    dm.feature_cache, dm.caption_cache = open_caches(cfg, stage, model, dm.data_dir, shards)
    trainer = build_trainer(cfg, run_dir, max_steps=max_steps, callbacks=callbacks, **(trainer_kwargs or {}))
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    if ckpt_path:
        logger.info("resuming stage %d from %s", stage, ckpt_path)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
    state = None
    if is_sharded(trainer.strategy):  # gather the shards (a collective: every rank takes part)
        state = gathered_trainable_state(model)
    if trainer.global_rank == 0:
        model.save_pretrained(run_dir / "model", state=state)
    return run_dir / "model"
