"""Lightning modules of the three NExT-GPT training stages.

One base (:class:`StageModule`: optimiser, schedule, logging, trainable-set policy, lean checkpoints)
and three stages that differ in what they train and which losses they take (REFERENCE.md 1.2, paper
Table 7):

=======  ================================  ============================================================
stage    task                              trainable set (:data:`TRAINABLE`)
=======  ================================  ============================================================
1        encoding alignment: X -> caption  input projector (+ full token matrices, legacy policy)
2        decoding alignment: caption -> X  output projectors + added token rows
3        instruction tuning (MosIT)        LoRA + input projector + output projectors + added rows
=======  ================================  ============================================================

Losses: next-token cross-entropy (all stages); from stage 2 on, the caption-alignment loss between
projected signal states and the decoder's text-encoder embedding of the caption, weighted per
modality; optionally the conditional latent denoising loss through the frozen UNet
(``training.denoising_loss``).

Checkpoints hold only the trainable parameters and the optimiser state (:meth:`on_save_checkpoint`);
frozen parts are rebuilt from the config, which is stored in the checkpoint as well, with every
rank's random state and sample counts. They are read back without unpickling arbitrary objects
(:func:`safe_load_checkpoint`).

At real scale (several processes, mixed precision, a full epoch):

* every trainable tensor is float32 (the LLM wrapper's rows, LoRA, projectors), whatever the frozen
  weights' dtype; fused Adam only where Lightning allows it (not with ``16-mixed`` + gradient clipping);
* the LR schedule spans the epoch's exact number of optimiser steps (the data module's length); an
  unknown length is an error, never a guess;
* every rank runs the same steps: a batch whose samples were all dropped trains with a zero loss, and
  idle projectors run zero-weighted, so DDP/FSDP collectives always match;
* dropped samples are counted by reason over all ranks, logged at each epoch's end (metrics CSV:
  ``data/*``) and stop the run past ``training.max_bad_fraction``;
* each rank draws from its own random stream derived from ``training.seed`` and resumes its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import pickle
import random
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch

from nextgpt.config import NextGPTConfig
from nextgpt.errors import CheckpointError, ConfigError, InputError, UnsafeCheckpointError
from nextgpt.llm import is_norm_parameter
from nextgpt.segmentation import trains as seg_trains
from nextgpt.stages.data.schema import DROP_REASONS

if TYPE_CHECKING:
    from nextgpt.model import SignalTarget

logger = logging.getLogger(__name__)

#: What each stage trains. "token_rows": the added rows (and, with the legacy "full" policy, the
#: whole embed_tokens/lm_head); "token_rows_if_full": only with the "full" policy.
TRAINABLE: dict[int, tuple[str, ...]] = {
    1: ("input_projector", "token_rows_if_full"),
    2: ("output_projectors", "token_rows"),
    3: ("input_projector", "output_projectors", "token_rows", "lora", "segmentation"),
}


def stage_groups(config, stage: int) -> tuple[str, ...]:
    """The groups stage ``stage`` trains: ``training.stages.N.trains``, else :data:`TRAINABLE`."""
    trains = config.training.stage_config(stage).trains
    return TRAINABLE[stage] if trains is None else tuple(trains)


def select_trainable(model, stage: int) -> dict[str, torch.nn.Parameter]:
    """Set ``requires_grad`` on exactly the stage's trainable set; return it by parameter name.

    Every chosen tensor becomes a float32 master copy, whatever dtype the frozen weights have
    (the legacy full token matrices of an fp16 LLM): autocast and ``GradScaler`` need float32
    parameters, and an fp16/bf16 Adam update loses small steps. The model casts them to its compute
    dtype where they are used."""
    if stage not in TRAINABLE:
        raise ValueError(f"unknown stage {stage}; valid: 1, 2, 3")
    groups = stage_groups(model.config, stage)
    full = model.config.model.llm.trainable_embeddings == "full"
    # The LLM's one trainable-policy rule: local name -> TrainableTensor(kind "lora" or "token_rows").
    llm_trainable = model.llm.trainable_parameters()
    chosen: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        take = False
        if name.startswith("input_projector."):
            take = "input_projector" in groups
        elif name.startswith("output_projectors."):
            take = "output_projectors" in groups
        elif name.startswith("segmentation."):  # LLMBind <seg>: the MLP and SAM's mask decoder
            take = "segmentation" in groups and seg_trains(name.removeprefix("segmentation."))
        elif name.startswith("llm.") and (tensor := llm_trainable.get(name.removeprefix("llm."))) is not None:
            if tensor.kind == "lora":
                take = "lora" in groups
            else:  # "token_rows": added rows, or the full matrices under the legacy policy
                take = "token_rows" in groups or ("token_rows_if_full" in groups and full)
        elif name.startswith("llm.") and is_norm_parameter(name):
            take = "norms" in groups  # RMSNorm / LayerNorm weights of the LLM
        p.requires_grad_(take)
        if take:
            if p.dtype != torch.float32:
                p.data = p.data.float()
            chosen[name] = p
    return chosen


class StageModule(L.LightningModule):
    """Shared training logic; ``stage`` picks the trainable set and the losses.

    Args:
        config: the resolved config (``config.training.stage`` is ignored in favour of ``stage``).
        stage: 1, 2 or 3.
        model: an existing :class:`~nextgpt.NextGPT` (default: built from ``config``).
    """

    def __init__(self, config: NextGPTConfig, stage: int, model=None) -> None:
        super().__init__()
        from nextgpt.model import NextGPT

        self.config = config
        self.stage = int(stage)
        self.stage_cfg = config.training.stage_config(self.stage)
        self.model = model if model is not None else NextGPT(config)
        self.trainable_names = sorted(select_trainable(self.model, self.stage))
        self.strict_loading = False  # frozen parts are not in our checkpoints; we check keys ourselves
        self.data_counts = DataCounts()
        self._pending_rng = None
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "stage %d: training %.2fM of %.1fM parameters (%.2f%%)",
            self.stage,
            n / 1e6,
            total / 1e6,
            100 * n / total,
        )

    # ------------------------------------------------------------------ distributed set-up

    def configure_model(self) -> None:
        """Shard the model under ``training.strategy=fsdp`` (Lightning calls this on every rank)."""
        from nextgpt.stages.parallel import shard_model

        if self._sharded() and not getattr(self, "_is_sharded", False):
            shard_model(self.model, self.device_mesh["data_parallel"])
            self._is_sharded = True

    def on_fit_start(self) -> None:
        """Seed this rank's own random streams from ``training.seed`` (:func:`seed_rank`).

        Dropout, Gumbel noise and worker seeds differ per rank: identical noise on every rank would make
        the ranks' gradients correlated copies. A resumed run restores each rank's own state at its
        first batch (:meth:`on_train_batch_start`).
        """
        seed_rank(self.config.training.seed, self.global_rank)

    # ------------------------------------------------------------------ steps

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        """``batch.to(device)``: our Batch holds media objects (frozen dataclasses) Lightning's generic
        mover cannot copy."""
        return batch.to(device)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        """The batch's losses (:meth:`~nextgpt.NextGPT.compute_losses`): the media features (cached,
        else from the frozen encoders) projected into the LLM inputs, the signal targets from stage 2
        on (:meth:`signal_targets`), weighted as ``training`` says (per-modality alignment, LM and
        denoising weights)."""
        model = self.model
        features = (
            batch.features
            if batch.features is not None
            else {m: model.media_features(m, x) for m, x in (batch.media or {}).items()}
        )
        injection = None
        if model.is_bind:  # ImageBind-LLM: one bound feature per sample, injected at its tokens
            bound = model.bind_features(
                batch.slot_modalities, features, batch.slot_groups, max(1, len(batch.sample_spans))
            )
            spans = batch.sample_spans or [(0, 0, batch.input_ids.shape[1])]  # an empty batch's filler row
            injection = model.injection_tensor(bound, spans, tuple(batch.input_ids.shape))
            media_tokens, idle = [], torch.zeros((), device=model.device)
        else:
            media_tokens, idle = model.project_inputs(batch.slot_modalities, features, every_modality=True)
        training = self.config.training
        return model.compute_losses(
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            media_tokens,
            self.signal_targets(batch) if self.stage >= 2 else None,
            alignment_weights={m: training.alignment_weight(m, self.stage) for m in model.output_modalities},
            lm_weight=training.lm_loss_weight,
            denoise_weight=training.denoising_loss_weight,
            input_idle=idle,
            position_ids=batch.position_ids,
            seg_targets=batch.seg_targets if self.trains_segmentation else None,
            injection=injection,
        )

    @property
    def trains_segmentation(self) -> bool:
        """The model has LLMBind segmentation and this stage trains it (its masks are losses)."""
        return self.model.segmentation is not None and "segmentation" in stage_groups(self.config, self.stage)

    @property
    def seg_processor(self):
        """The SAM image processor the collator prepares mask images with, when the stage trains
        segmentation; else ``None`` (masks are not read)."""
        return self.model.segmentation.processor if self.trains_segmentation else None

    def signal_targets(self, batch) -> list[list[SignalTarget]]:
        """The batch's signal targets as :meth:`~nextgpt.NextGPT.compute_losses` takes them: each
        output's ``cond`` (from the caption cache, else computed online from its caption, see
        :meth:`_caption_targets`) and, with ``training.denoising_loss``, its ``media`` prepared by
        the decoder (``Decoder.prepare_target``); without it, no target media."""
        conds = self._caption_targets(batch)
        denoise = bool(self.config.training.denoising_loss)
        decoders = self.model.decoders
        return [
            [
                dataclasses.replace(
                    t,
                    cond=cond,
                    media=(
                        decoders[t.modality].prepare_target(t.media).to(self.device)
                        if denoise and t.media is not None
                        else None
                    ),
                )
                for t, cond in zip(row, row_conds)
            ]
            for row, row_conds in zip(batch.outputs, conds)
        ]

    def _caption_targets(self, batch) -> list[list[torch.Tensor | None]]:
        """Per row and output, the decoder conditioning of its caption: the cached one the batch
        carries, else computed online with the frozen text encoders (one call per modality for the
        whole batch); ``None`` for an output without either."""
        jobs: dict = {}
        out: list[list[torch.Tensor | None]] = [[t.cond for t in row] for row in batch.outputs]
        for r, row in enumerate(batch.outputs):
            for i, t in enumerate(row):
                if t.cond is None and t.caption is not None:
                    jobs.setdefault(t.modality, []).append((r, i, t.caption))
        with torch.no_grad():
            for m, items in jobs.items():
                conds = self.model.decoders[m].encode_captions([cap for _, _, cap in items])  # (N, Q, C)
                for (r, i, _), cond in zip(items, conds):
                    out[r][i] = cond.to(self.device)
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        """Count the batch's samples and drops, and return its total ``loss``.

        Logs ``train/loss`` and every other scalar of the losses (``lm_loss``, ``align_*``,
        ``denoise_loss``, ``runs``) as ``train/<name>`` each step; ``loss`` and ``lm_loss`` go to the
        progress bar. A batch whose samples were all dropped logs nothing.
        """
        self.data_counts.add(batch)
        # A batch whose samples were all dropped still runs (one unlabelled row: a zero loss whose graph
        # reaches every trainable tensor), so that every rank takes the same steps.
        losses = self(batch)
        if not batch.is_empty:
            B = len(batch.keys)  # samples (a packed row holds several)
            for k, v in losses.items():
                if k != "loss" and v.ndim == 0:
                    self.log(f"train/{k}", v.float(), batch_size=B, on_step=True, prog_bar=k == "lm_loss")
            self.log("train/loss", losses["loss"], batch_size=B, on_step=True, prog_bar=True)
        return losses["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        """Log the batch's total loss as ``val/loss`` (synced over ranks); nothing for a batch whose
        samples were all dropped."""
        losses = self(batch)
        if not batch.is_empty:
            self.log("val/loss", losses["loss"], batch_size=len(batch.keys), sync_dist=True)

    # ------------------------------------------------------------------ dropped samples

    def _global_counts(self, vector: torch.Tensor) -> torch.Tensor:
        """Sum over ranks (a collective: every rank calls it at the same point)."""
        if self.trainer.world_size > 1:
            vector = self.trainer.strategy.reduce(vector.to(self.device), reduce_op="sum")
        return vector.cpu()

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Log the epoch's running sample counts over all ranks (``data/seen_so_far``,
        ``data/dropped_so_far``, rank 0, each step) and stop the run past ``training.max_bad_fraction``.

        Raises:
            InputError: the fraction of samples dropped so far is above ``training.max_bad_fraction``
                (checked once ``training.min_samples_before_check`` samples were seen).
        """
        totals = self._global_counts(self.data_counts.totals())
        # Running totals of this epoch over all ranks, exact in every row (the last row of an epoch is
        # its total; the column is never to be summed). Per-reason totals are logged at epoch end.
        self.log("data/seen_so_far", float(totals[0]), on_step=True, on_epoch=False, rank_zero_only=True)
        self.log("data/dropped_so_far", float(totals[1]), on_step=True, on_epoch=False, rank_zero_only=True)
        self._check_dropped(int(totals[0]), int(totals[1]), None)

    def on_train_epoch_end(self) -> None:
        """Log the epoch's sample counts over all ranks (``data/seen``, ``data/dropped``,
        ``data/dropped_fraction``, ``data/dropped_<reason>``; rank 0 also writes them to the log),
        check them against ``training.max_bad_fraction`` and reset the counts for the next epoch.

        Raises:
            InputError: the fraction of samples dropped is above ``training.max_bad_fraction``.
        """
        counts = self._global_counts(self.data_counts.by_reason())
        seen, per_reason = int(counts[0]), dict(zip(DROP_REASONS, counts[1:].tolist()))
        dropped = sum(per_reason.values())
        self.log("data/seen", float(seen), on_epoch=True, rank_zero_only=True)
        self.log("data/dropped", float(dropped), on_epoch=True, rank_zero_only=True)
        self.log("data/dropped_fraction", dropped / max(seen, 1), on_epoch=True, rank_zero_only=True)
        for reason, n in per_reason.items():
            self.log(f"data/dropped_{reason}", float(n), on_epoch=True, rank_zero_only=True)
        if self.global_rank == 0:
            detail = ", ".join(f"{r} {int(n)}" for r, n in per_reason.items() if n) or "none"
            logger.info(
                "stage %d epoch %d: %d samples, %d dropped (%.2f%%): %s",
                self.stage,
                self.current_epoch,
                seen,
                dropped,
                100 * dropped / max(seen, 1),
                detail,
            )
        self._check_dropped(seen, dropped, per_reason)
        self.data_counts = DataCounts()

    def _check_dropped(self, seen: int, dropped: int, per_reason: dict | None) -> None:
        t = self.config.training
        if seen < max(1, t.min_samples_before_check) or dropped / seen <= t.max_bad_fraction:
            return
        if per_reason is None:
            counts = self._global_counts(self.data_counts.by_reason())
            per_reason = dict(zip(DROP_REASONS, counts[1:].tolist()))
        detail = ", ".join(f"{r} {int(n)}" for r, n in per_reason.items() if n)
        raise InputError(
            f"stage {self.stage}: {dropped} of {seen} samples dropped ({dropped / seen:.1%}), above "
            f"training.max_bad_fraction={t.max_bad_fraction:.1%} (by reason: {detail}; the warnings above "
            "name the samples); fix the data or raise training.max_bad_fraction"
        )

    # ------------------------------------------------------------------ optimisation

    def _sharded(self) -> bool:
        from nextgpt.stages.parallel import is_sharded

        return self._trainer is not None and is_sharded(self.trainer.strategy)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Under FSDP, average the gradients of the replicated (unsharded) trainable tensors over the
        ranks; otherwise nothing."""
        if self._sharded():  # the unsharded trainable tensors: average their gradients over the ranks
            from nextgpt.stages.parallel import all_reduce_replicated_grads

            params = [p for g in optimizer.param_groups for p in g["params"]]
            all_reduce_replicated_grads(params, self.trainer.world_size)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """Under FSDP with a ``gradient_clip_val``, clip the total L2 norm of the sharded and whole
        gradients together to it; otherwise Lightning's own clipping (:meth:`clip_gradients`)."""
        if self._sharded() and gradient_clip_val:
            from nextgpt.stages.parallel import clip_grad_norm

            clip_grad_norm([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        """The stage's Adam or AdamW (fused where :func:`fused_allowed`) over the trainable parameters,
        with its :func:`lr_factor` schedule stepped per optimiser step (warm-up: ``warmup_ratio`` of the
        run's steps).

        Raises:
            ConfigError: a trainable parameter is not float32, or the run's length is unknown.
        """
        cfg = self.stage_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        wrong = sorted({str(p.dtype) for p in params if p.dtype != torch.float32})
        if wrong:
            raise ConfigError(
                f"trainable parameters must be float32 master weights, found {', '.join(wrong)}"
            )
        kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        if fused_allowed(params, self.config.training):
            kwargs["fused"] = True
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, **kwargs)
        total = self._total_steps()
        warmup = int(round(cfg.warmup_ratio * total))
        logger.info(
            "stage %d: %d optimiser steps (%d warm-up), %s schedule", self.stage, total, warmup, cfg.schedule
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg.schedule, warmup, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        """Optimiser steps of the run: the epochs' exact length (capped by ``max_steps``)."""
        steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(steps) or steps <= 0:
            raise ConfigError(
                "the length of the training run is unknown (the data loader has no length), so the LR "
                "schedule cannot be laid out; set training.max_steps"
            )
        return int(steps)

    # ------------------------------------------------------------------ lean checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Make the checkpoint lean: only the trainable parameters in ``state_dict``, plus the config
        (``nextgpt_config``), the stage (``nextgpt_stage``) and every rank's random state and sample
        counts (``nextgpt_rng``, ``nextgpt_data_counts``).

        Called on every rank before rank 0 writes (gathering the ranks' states is a collective).
        """
        checkpoint["nextgpt_rng"] = self._all_ranks(_rng_state())
        checkpoint["nextgpt_data_counts"] = self._all_ranks(self.data_counts.by_reason())
        trainable = set(self.trainable_names)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k.removeprefix("model.") in trainable
        }
        checkpoint["nextgpt_config"] = self.config.to_dict()
        checkpoint["nextgpt_stage"] = self.stage

    def _all_ranks(self, obj) -> list:
        if self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [obj]
        gathered = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def check_checkpoint(self, checkpoint: dict) -> None:
        """Strict accounting of a training checkpoint against this run (stage, trainable keys)."""
        from nextgpt.checkpoint import check_keys

        if checkpoint.get("nextgpt_stage", self.stage) != self.stage:
            raise CheckpointError(
                f"checkpoint is from stage {checkpoint.get('nextgpt_stage')}, this run is stage {self.stage}"
            )
        names = set(self.trainable_names)
        own = {f"model.{k}": p.shape for k, p in self.model.named_parameters() if k in names}
        check_keys(own, checkpoint["state_dict"], what="training checkpoint")

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Check the checkpoint (:meth:`check_checkpoint`) and take this rank's random state (restored
        at the first batch) and sample counts, each when the checkpoint holds one per rank of this run;
        otherwise the random streams start fresh (with a warning) and the counts are left as they are.

        Raises:
            CheckpointError: the checkpoint is from another stage, or its trainable keys or shapes differ.
        """
        self.check_checkpoint(checkpoint)
        rank, world = self.global_rank, self.trainer.world_size if self._trainer is not None else 1
        rngs = checkpoint.get("nextgpt_rng") or []
        counts = checkpoint.get("nextgpt_data_counts") or []
        if len(rngs) == world:
            self._pending_rng = rngs[rank]
        else:
            logger.warning(
                "checkpoint holds the random state of %d rank(s), this run has %d: ranks start fresh streams",
                len(rngs),
                world,
            )
        if len(counts) == world:
            self.data_counts = DataCounts.from_vector(counts[rank])

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Restore the random state where the interrupted run left it, at the first batch after the
        restart (after the data loader was rebuilt), so stochastic layers (Gumbel noise, dropout)
        draw what they would have drawn without the interruption; nothing otherwise."""
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None


class DataCounts:
    """Samples seen and dropped (by reason) on this rank since the epoch began."""

    def __init__(self) -> None:
        self.seen = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)

    def add(self, batch) -> None:
        """Count the samples ``batch`` stands for and its drops by reason."""
        self.seen += batch.num_samples
        for reason, n in batch.drops.items():
            self.dropped[reason] = self.dropped.get(reason, 0) + n

    def totals(self) -> torch.Tensor:
        """``[seen, dropped]`` (float64, exact for counts < 2**53)."""
        return torch.tensor([self.seen, sum(self.dropped.values())], dtype=torch.float64)

    def by_reason(self) -> torch.Tensor:
        """``[seen, dropped per reason in DROP_REASONS order]`` (float64, exact for counts < 2**53)."""
        return torch.tensor([self.seen, *(self.dropped.get(r, 0) for r in DROP_REASONS)], dtype=torch.float64)

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> DataCounts:
        """The counts back from a :meth:`by_reason` vector."""
        out = cls()
        values = [int(v) for v in vector.tolist()]
        out.seen, out.dropped = values[0], dict(zip(DROP_REASONS, values[1:]))
        return out


def lr_factor(schedule: str, warmup: int, total: int):
    """``step -> LR multiplier``: linear warm-up over ``warmup`` steps, then constant, cosine or linear
    decay reaching 0 at step ``total`` (the step after the last optimiser step)."""

    def factor(step: int) -> float:
        if schedule == "constant":
            return min(1.0, (step + 1) / warmup) if warmup else 1.0
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)  # linear

    return factor


def fused_allowed(params, training) -> bool:
    """Fused Adam where it is legal: every parameter on CUDA, and not ``16-mixed`` with gradient
    clipping (the fused step unscales inside the optimiser, so Lightning cannot clip unscaled
    gradients first and refuses the combination)."""
    if not params or not all(p.device.type == "cuda" for p in params):
        return False
    return not (training.precision == "16-mixed" and training.gradient_clip_val)


# ------------------------------------------------------------------ random state


def rank_seed(seed: int, rank: int) -> int:
    """A 32-bit seed for ``rank`` derived from ``seed`` (different ranks, unrelated streams)."""
    return int.from_bytes(hashlib.sha256(f"nextgpt:{seed}:{rank}".encode()).digest()[:4], "little")


def seed_rank(seed: int, rank: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and every CUDA device) global generators with
    :func:`rank_seed`."""
    s = rank_seed(seed, rank)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)  # CPU and every CUDA device


def _rng_state() -> dict:
    """This process's random state, in tensors and plain containers (loadable with weights_only)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ safe checkpoint reading


def safe_load_checkpoint(path: str | Path) -> dict:
    """Read a training checkpoint with ``torch.load(weights_only=True)``: tensors and plain containers
    only, so a replaced ``last.ckpt`` cannot run code.

    Raises:
        CheckpointError: the file is not a checkpoint, or holds objects other than tensors/containers.
    """
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpointError(
            f"refusing to load training checkpoint '{path}': it holds objects other than tensors and plain "
            f"containers (a checkpoint nextgpt wrote never does; it may have been replaced): {exc}"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        raise CheckpointError(f"cannot read training checkpoint '{path}': {exc}") from None
