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
frozen parts are rebuilt from the config, which is stored in the checkpoint as well.
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from nextgpt.config import NextGPTConfig
from nextgpt.errors import CheckpointError

logger = logging.getLogger(__name__)

#: What each stage trains. "token_rows": the added rows (and, with the legacy "full" policy, the
#: whole embed_tokens/lm_head); "token_rows_if_full": only with the "full" policy.
TRAINABLE: dict[int, tuple[str, ...]] = {
    1: ("input_projector", "token_rows_if_full"),
    2: ("output_projectors", "token_rows"),
    3: ("input_projector", "output_projectors", "token_rows", "lora"),
}


def select_trainable(model, stage: int) -> dict[str, torch.nn.Parameter]:
    """Set ``requires_grad`` on exactly the stage's trainable set; return it by parameter name."""
    if stage not in TRAINABLE:
        raise ValueError(f"unknown stage {stage}; valid: 1, 2, 3")
    groups = TRAINABLE[stage]
    full = model.config.model.llm.trainable_embeddings == "full"
    llm_trainable = model.llm.trainable_state_dict()  # rows, lora, (full) base matrices
    chosen: dict[str, torch.nn.Parameter] = {}
    for name, p in model.named_parameters():
        take = False
        if name.startswith("input_projector."):
            take = "input_projector" in groups
        elif name.startswith("output_projectors."):
            take = "output_projectors" in groups
        elif name.startswith("llm.") and name.removeprefix("llm.") in llm_trainable:
            local = name.removeprefix("llm.")
            if "lora_" in local:
                take = "lora" in groups
            else:  # added rows, or the full matrices under the legacy policy
                take = "token_rows" in groups or ("token_rows_if_full" in groups and full)
        p.requires_grad_(take)
        if take:
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
        n = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        logger.info(
            "stage %d: training %.2fM of %.1fM parameters (%.2f%%)",
            self.stage,
            n / 1e6,
            total / 1e6,
            100 * n / total,
        )

    # ------------------------------------------------------------------ steps

    def transfer_batch_to_device(self, batch, device, dataloader_idx: int):
        # Our Batch holds media objects (frozen dataclasses) Lightning's generic mover cannot copy.
        return None if batch is None else batch.to(device)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        model = self.model
        features = (
            batch.features
            if batch.features is not None
            else {m: model.media_features(m, x) for m, x in batch.media.items()}
        )
        media_tokens = model.project_slots(batch.slot_modalities, features)
        targets = None
        if self.stage >= 2:
            targets = batch.targets if batch.targets is not None else self._caption_targets(batch)
        training = self.config.training
        denoise = None
        if training.denoising_loss and self.stage >= 2:
            denoise = [
                [
                    None if v is None else model.decoders[m].prepare_target(v).to(self.device)
                    for m, v in zip(mods, vals)
                ]
                for mods, vals in zip(batch.output_modalities, batch.output_media)
            ]
        losses = model.compute_losses(
            batch.input_ids,
            batch.attention_mask,
            batch.labels,
            media_tokens,
            targets,
            alignment_weights={m: training.alignment_weight(m, self.stage) for m in model.output_modalities},
            lm_weight=training.lm_loss_weight,
            denoise_media=denoise,
            denoise_weight=training.denoising_loss_weight,
        )
        return losses

    def _caption_targets(self, batch) -> list[list[torch.Tensor | None]]:
        """Decoder conditioning of each output caption, computed online with the frozen text encoders
        (one call per modality for the whole batch)."""
        jobs: dict = {}
        for r, (mods, caps) in enumerate(zip(batch.output_modalities, batch.output_captions)):
            for i, (m, cap) in enumerate(zip(mods, caps)):
                if cap is not None:
                    jobs.setdefault(m, []).append((r, i, cap))
        out: list[list[torch.Tensor | None]] = [[None] * len(mods) for mods in batch.output_modalities]
        with torch.no_grad():
            for m, items in jobs.items():
                conds = self.model.decoders[m].encode_captions([cap for _, _, cap in items])  # (N, Q, C)
                for (r, i, _), cond in zip(items, conds):
                    out[r][i] = cond.to(self.device)
        return out

    def training_step(self, batch, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every sample of this batch was dropped (counted by the collator)
            return None
        losses = self(batch)
        B = batch.input_ids.shape[0]
        for k, v in losses.items():
            if k != "loss" and v.ndim == 0:
                self.log(f"train/{k}", v.float(), batch_size=B, on_step=True, prog_bar=k == "lm_loss")
        self.log("train/loss", losses["loss"], batch_size=B, on_step=True, prog_bar=True)
        if batch.skipped:
            self.log(
                "train/skipped_samples", float(batch.skipped), batch_size=B, on_step=True, reduce_fx="sum"
            )
        return losses["loss"]

    def validation_step(self, batch, batch_idx: int) -> None:
        if batch is None:
            return
        losses = self(batch)
        self.log("val/loss", losses["loss"], batch_size=batch.input_ids.shape[0], sync_dist=True)

    # ------------------------------------------------------------------ optimisation

    def configure_optimizers(self):
        cfg = self.stage_cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        kwargs = dict(lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
        if torch.cuda.is_available():
            kwargs["fused"] = True
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        optimizer = opt_cls(params, **kwargs)
        total = self._total_steps()
        warmup = int(round(cfg.warmup_ratio * total))

        def factor(step: int) -> float:
            if cfg.schedule == "constant":
                return min(1.0, (step + 1) / warmup) if warmup else 1.0
            if warmup and step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            if cfg.schedule == "cosine":
                return 0.5 * (1.0 + math.cos(math.pi * progress))
            return max(0.0, 1.0 - progress)  # linear

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _total_steps(self) -> int:
        trainer = self.trainer
        if trainer.max_steps and trainer.max_steps > 0:
            return int(trainer.max_steps)
        steps = trainer.estimated_stepping_batches
        if math.isfinite(steps):
            return int(steps)
        return 1000  # unknown length and no max_steps: the schedule only shapes warmup/decay

    # ------------------------------------------------------------------ lean checkpoints

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["nextgpt_rng"] = _rng_state()
        trainable = set(self.trainable_names)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k.removeprefix("model.") in trainable
        }
        checkpoint["nextgpt_config"] = self.config.to_dict()
        checkpoint["nextgpt_stage"] = self.stage

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        from nextgpt.checkpoint import check_keys

        own = {
            f"model.{k}": p.shape for k, p in self.model.named_parameters() if k in set(self.trainable_names)
        }
        if checkpoint.get("nextgpt_stage", self.stage) != self.stage:
            raise CheckpointError(
                f"checkpoint is from stage {checkpoint.get('nextgpt_stage')}, this run is stage {self.stage}"
            )
        check_keys(own, checkpoint["state_dict"], what="training checkpoint")
        self._pending_rng = checkpoint.get("nextgpt_rng")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # Restore the random state where the interrupted run left it, at the first batch after the
        # restart (after the data loader was rebuilt), so stochastic layers (Gumbel noise, dropout)
        # draw what they would have drawn without the interruption.
        if getattr(self, "_pending_rng", None) is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None


def _rng_state() -> dict:
    import random

    import numpy as np

    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
