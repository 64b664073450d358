"""The any-to-any model: encoder -> input projector -> LLM -> output projectors -> decoders.

:class:`NextGPT` owns one instance of every part (DESIGN.md section 2):

* ``encoder`` — frozen ImageBind with its preprocessing (:class:`~nextgpt.encoders.ImageBindEncoder`);
* ``input_projector`` — linear (one token per item) or grouping (a fixed number per item);
* ``llm`` — :class:`~nextgpt.llm.LanguageModel` with the signal tokens, LoRA and the token-row policy;
* ``output_projectors`` — one per output modality, ``ModuleDict`` keyed by the modality name;
* ``decoders`` — one lazily loaded frozen diffusion pipeline per output modality (plain objects, not
  modules: they are never trained and load only when their modality is first produced).

Media are spliced into ``inputs_embeds`` at placeholder tokens with a count check; the output
projectors read the final-layer hidden states at the positions whose *input* is a signal token, plus
those tokens' input embeddings (REFERENCE.md 1.2), collected by our own decoding loop.
"""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from nextgpt.checkpoint import (
    check_keys,
    check_values,
    read_model_folder,
    read_state_dict,
    write_model_folder,
)
from nextgpt.config import NextGPTConfig
from nextgpt.errors import CheckpointError, ConfigError, InputError
from nextgpt.generation import GenerationMixin
from nextgpt.modality import Modality
from nextgpt.processor import MediaItem, Processor
from nextgpt.records import SignalRun, SignalTarget

#: One row's ``<seg>`` targets in :meth:`NextGPT.compute_losses`: ``None``, one ``(SAM inputs, masks
#: [N, H, W])`` pair, or a list of them (a packed row).
SegTargets = None | tuple[dict, torch.Tensor] | list[tuple[dict, torch.Tensor]]

logger = logging.getLogger(__name__)


def resolve_template(template: str, tokenizer) -> str:
    """``auto``: the tokenizer's own chat template when it has one, else ``vicuna_v1``."""
    if template != "auto":
        return template
    return "chat_template" if getattr(tokenizer, "chat_template", None) else "vicuna_v1"


def _target_of(fn) -> tuple[torch.device, torch.dtype | None]:
    """The device an ``nn.Module._apply`` function moves tensors to, and the floating dtype it casts
    them to (``None``: dtypes are kept), read off two empty probes (float32 and float16)."""
    p32, p16 = fn(torch.empty(0)), fn(torch.empty(0, dtype=torch.float16))
    dtype = None if (p32.dtype, p16.dtype) == (torch.float32, torch.float16) else p16.dtype
    return p32.device, dtype


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class NextGPT(GenerationMixin, nn.Module):
    """NExT-GPT-style any-to-any model. Build with :meth:`from_preset`, :meth:`from_config`,
    :meth:`from_pretrained` or :meth:`from_legacy_checkpoint`."""

    def __init__(self, config: NextGPTConfig, *, device: str | torch.device = "cpu") -> None:
        super().__init__()
        from nextgpt.decoders import build_decoder
        from nextgpt.decoders.residency import DecoderResidency
        from nextgpt.encoders import ImageBindEncoder
        from nextgpt.llm import LanguageModel
        from nextgpt.projectors import build_input_projector, build_output_projector

        self.config = config
        mcfg = config.model
        seed = mcfg.seed
        self.encoder = ImageBindEncoder.from_config(mcfg.encoder, seed=seed)
        counts = {m: o.num_signal_tokens for m, o in mcfg.outputs.items()}
        seg = mcfg.segmentation.sam is not None
        self.llm = LanguageModel.from_config(
            mcfg.llm, counts, seed=seed, task_tags=mcfg.task_prompts.tasks, seg=seg
        )
        hf = self.llm._causal_lm().config
        self.input_projector = _seeded(
            seed + 10,
            lambda: build_input_projector(
                mcfg.input_projector, num_layers=hf.num_hidden_layers, num_heads=hf.num_attention_heads
            ),
        )
        if self.is_bind:  # ImageBind-LLM: the bound feature goes into every layer, gated
            proj = self.input_projector
            prefix = (lambda: proj.prefix_query) if proj.prefix_query is not None else None
            self.llm.install_injection(proj.scales, prefix=prefix)
        self.output_projectors = nn.ModuleDict(
            {
                m.value: _seeded(seed + 20 + i, lambda o=o: build_output_projector(o.projector))
                for i, (m, o) in enumerate(mcfg.outputs.items())
            }
        )
        self.segmentation = None
        if seg:  # LLMBind <seg>: the MLP and SAM's mask decoder train, SAM's encoders are frozen
            from nextgpt.config import resolve_path
            from nextgpt.segmentation import SegmentationHead

            sam_path = resolve_path(mcfg.segmentation.sam, "model.segmentation.sam")
            assert sam_path is not None
            self.segmentation = _seeded(
                seed + 30, lambda: SegmentationHead.from_pretrained(sam_path, self.llm.hidden_size)
            )
        self.to(device)
        # Decoders start where the model is and follow its moves and casts (see _apply).
        self.decoders = {
            m: build_decoder(o.decoder, device=device, seed=seed) for m, o in mcfg.outputs.items()
        }
        # Which pipelines stay loaded (model.decoder_memory): generation acquires each before use.
        self.residency = DecoderResidency(self.decoders, mcfg.decoder_memory)
        self.processor = Processor(
            self.llm.tokenizer,
            self.llm.layout,
            resolve_template(mcfg.llm.template, self.llm.tokenizer),
            self.input_projector.num_tokens,
            media_wrappers=mcfg.llm.media_wrappers,
            sum_items=mcfg.input_projector.sum_items,
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: NextGPTConfig, *, device: str | torch.device = "cpu") -> NextGPT:
        """Build the model a config describes (the same as ``NextGPT(config)``)."""
        return cls(config, device=device)

    @classmethod
    def from_preset(
        cls, name: str, overrides: Sequence[str] = (), *, device: str | torch.device = "cpu"
    ) -> NextGPT:
        """Build a preset (``tiny``, ``small``, ``nextgpt-7b``, ``nextgpt-7b-legacy``) with optional
        dotted overrides such as ``["model.llm.lora.r=64"]``."""
        cfg = NextGPTConfig.from_preset(name)
        return cls(cfg.with_overrides(list(overrides)) if overrides else cfg, device=device)

    @property
    def device(self) -> torch.device:
        """Where the model's trainable tensors are (the LLM's added token rows)."""
        return self.llm.new_embeddings.device

    def _apply(self, fn, recurse: bool = True):
        # Every module move/cast (.to(device), .to(dtype), .cuda(), .half(), Lightning moving the module,
        # .to_empty(device="meta"), ...) reaches the decoders too: they are plain objects outside the
        # module tree (never trained, loaded lazily), so nn.Module would leave them where they were
        # built. A loaded pipeline moves now; an unloaded one loads where the model is.
        out = super()._apply(fn, recurse)
        decoders = self.__dict__.get("decoders")
        if decoders:
            device, dtype = _target_of(fn)
            for decoder in decoders.values():
                decoder.to(device=device, dtype=dtype)
        return out

    @property
    def output_modalities(self) -> tuple[Modality, ...]:
        """The media modalities this model can produce (one output projector and decoder each)."""
        return tuple(self.config.model.outputs)

    # ------------------------------------------------------------------ input side

    @property
    def is_bind(self) -> bool:
        """ImageBind-LLM's input path (``input_projector.kind: bind``): media are not prompt tokens; one
        bound feature per sample is injected into every LLM layer (:mod:`nextgpt.projectors.bind`)."""
        return self.config.model.input_projector.kind == "bind"

    def bind_features(
        self,
        slot_modalities: Sequence[Sequence[Modality]],
        features: dict[Modality, torch.Tensor],
        slot_groups: Sequence[int],
        num_groups: int,
        weights: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """ImageBind-LLM: one bound feature ``[G, H]`` per group (a sample, a request).

        Each group's pooled media embeddings (items in slot order over the groups, per modality in
        ``features``), each L2-normalised, are combined before the bind network (embedding
        arithmetic): with ``weights`` (one per item, in order) divided by their sum within the group
        (as the released code does), else by ``input_projector.bind.combine`` (``equal``: each
        ``1/n``; ``sum``). A group without media gets a zero embedding (the paper's zero image for
        text-only samples)."""
        in_dim = typing.cast(int, self.config.model.input_projector.in_dim)
        combined = torch.zeros(num_groups, in_dim, device=self.device)
        cursor = dict.fromkeys(features, 0)
        items: list[tuple[int, torch.Tensor]] = []
        for group, mods in zip(slot_groups, slot_modalities, strict=True):
            for m in mods:
                if m not in features or cursor[m] >= features[m].shape[0]:
                    raise InputError(f"fewer {m.value} features than {m.value} items")
                feature = features[m][cursor[m]].to(self.device).float()
                items.append((group, feature / feature.norm().clamp(min=1e-12)))
                cursor[m] += 1
        for m, used in cursor.items():
            if used != features[m].shape[0]:
                raise InputError(f"{features[m].shape[0]} {m.value} features for {used} {m.value} items")
        if weights is not None and len(weights) != len(items):
            raise InputError(f"{len(weights)} weights for {len(items)} media items")
        counts, totals = [0] * num_groups, [0.0] * num_groups
        for k, (group, _) in enumerate(items):
            counts[group] += 1
            totals[group] += float(weights[k]) if weights is not None else 0.0
        equal = self.config.model.input_projector.bind.combine == "equal"
        for k, (group, feature) in enumerate(items):
            if weights is not None:
                if abs(totals[group]) < 1e-6:
                    raise InputError(
                        f"the media weights of a request sum to {totals[group]:g}: they must not cancel"
                    )
                w = float(weights[k]) / totals[group]
            else:
                w = 1.0 / counts[group] if equal else 1.0
            combined[group] = combined[group] + w * feature
        return self.input_projector(combined)

    def bind_row(
        self, slots: Sequence[Sequence[MediaItem]], weights: Sequence[float] | None = None
    ) -> torch.Tensor:
        """The bound feature ``[H]`` of one request's media slots (:meth:`bind_features`)."""
        values: dict[Modality, list[object]] = {}
        for slot in slots:
            for item in slot:
                values.setdefault(item.modality, []).append(item.value)
        features = {m: self.media_features(m, self.encoder.preprocess(m, v)) for m, v in values.items()}
        cache = self.visual_cache
        if cache is not None:  # ImageBind-LLM's cache-enhanced inference
            wanted = {Modality.parse(m) for m in self.config.model.visual_cache.modalities}
            features = {m: cache.enhance(f) if m in wanted else f for m, f in features.items()}
        mods = [[item.modality for item in slot] for slot in slots]
        return self.bind_features(mods, features, [0] * len(mods), 1, weights)[0]

    @property
    def visual_cache(self):
        """The :class:`~nextgpt.visual_cache.VisualCache` of ``model.visual_cache.path`` (loaded on
        first use), or ``None`` without one."""
        from nextgpt.config import resolve_path

        cfg = self.config.model.visual_cache
        path = resolve_path(cfg.path, "model.visual_cache.path")
        if path is None:
            return None
        cached = self.__dict__.get("_visual_cache")
        if cached is None or cached[0] != path:
            from nextgpt.visual_cache import VisualCache

            cache = VisualCache.load(path, top_k=cfg.top_k, temperature=cfg.temperature, alpha=cfg.alpha)
            width = self.config.model.encoder.out_embed_dim
            if cache.dim != width:
                raise ConfigError(
                    f"model.visual_cache.path '{path}' holds {cache.dim}-d embeddings; this model's encoder "
                    f"gives {width}-d ones: rebuild it with `nextgpt cache index` for this encoder"
                )
            self.__dict__["_visual_cache"] = cached = (path, cache)
        return cached[1]

    @staticmethod
    def injection_tensor(
        bound: torch.Tensor, spans: Sequence[tuple[int, int, int]], shape: tuple[int, int]
    ) -> torch.Tensor:
        """``[B, L, H]``: group ``g``'s bound feature over the positions ``spans[g] = (row, start, end)``
        (zero elsewhere: padding)."""
        out = bound.new_zeros(shape[0], shape[1], bound.shape[-1])
        for g, (row, start, end) in enumerate(spans):
            out[row, start:end] = bound[g]
        return out

    def encode_media(self, slots: Sequence[Sequence[MediaItem]]) -> list[torch.Tensor]:
        """Projected tokens ``[T, H]`` for each media slot, in order. Items of one modality are
        encoded as one batch; a slot with several items sums their projected tokens (legacy)."""
        items: dict[Modality, list[object]] = {}
        for slot in slots:
            for item in slot:
                items.setdefault(item.modality, []).append(item.value)
        features = {
            m: self.media_features(m, self.encoder.preprocess(m, values)) for m, values in items.items()
        }
        return self.project_slots([[item.modality for item in slot] for slot in slots], features)

    def media_features(self, modality: Modality, batch: torch.Tensor) -> torch.Tensor:
        """What the input projector consumes for a preprocessed batch: pooled ``[N, D]`` (linear) or
        patch tokens ``[N, L, D]`` (grouping). This is what the encoder feature cache stores."""
        patch = self.config.model.input_projector.uses_patch_tokens
        enc = self.encoder(modality, batch, return_tokens=patch)
        return enc.tokens if patch else enc.embeds

    def project_slots(
        self, slot_modalities: Sequence[Sequence[Modality]], features: dict[Modality, torch.Tensor]
    ) -> list[torch.Tensor]:
        """Input projector over per-modality features (items in slot order) -> per slot ``[T, H]``."""
        return self.project_inputs(slot_modalities, features)[0]

    def project_inputs(
        self,
        slot_modalities: Sequence[Sequence[Modality]],
        features: dict[Modality, torch.Tensor],
        *,
        every_modality: bool = False,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """:meth:`project_slots`, plus a zero scalar.

        With ``every_modality`` (training) the projector runs once per input modality in a fixed
        order, on a zero item for a modality this batch lacks, and the zero scalar carries those calls'
        graph (weight 0). DDP without ``find_unused_parameters`` needs a gradient for every trainable
        tensor in every step, and FSDP needs every sharded module to run the same forwards in the same
        order on every rank (each is a collective). Adding the exact zero changes no value."""
        idle = torch.zeros((), device=self.device)
        if every_modality:
            cfg = self.config.model.input_projector
            in_dim = typing.cast(int, cfg.in_dim)  # derived when the config is validated
            shape = (1, 1, in_dim) if cfg.uses_patch_tokens else (1, in_dim)
            order = list(self.llm.layout.placeholder_ids)
            unknown = [m for m in features if m not in order]
            if unknown:
                raise InputError(f"no input placeholder for {', '.join(m.value for m in unknown)} features")
            projected = {}
            for m in order:
                if m in features:
                    projected[m] = self.input_projector(features[m].to(self.device))  # (N, T, H)
                else:
                    idle = idle + 0.0 * self.input_projector(torch.zeros(shape, device=self.device)).sum()
        else:
            projected = {m: self.input_projector(f.to(self.device)) for m, f in features.items()}  # (N, T, H)
        cursor = dict.fromkeys(projected, 0)
        out = []
        for mods in slot_modalities:
            tokens = []
            for m in mods:
                tokens.append(projected[m][cursor[m]])
                cursor[m] += 1
            out.append(torch.stack(tokens).sum(0))
        for m, used in cursor.items():
            if used != projected[m].shape[0]:
                raise InputError(f"{projected[m].shape[0]} {m.value} features for {used} {m.value} items")
        return out, idle

    def embed_inputs(self, input_ids: torch.Tensor, media_tokens: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token embeddings ``[B, L, H]`` with media tokens scattered at the placeholder positions.

        ``media_tokens``: per slot ``[T, H]``, in placeholder order over the whole batch (row-major).

        Raises:
            InputError: when the number of placeholder positions and media tokens disagree.
        """
        embeds = self.llm.embed(input_ids)
        ph = torch.tensor(sorted(self.llm.layout.placeholder_ids.values()), device=input_ids.device)
        mask = torch.isin(input_ids, ph)
        n_pos = int(mask.sum())
        feats = torch.cat(list(media_tokens)) if media_tokens else embeds.new_zeros(0, embeds.shape[-1])
        if n_pos != feats.shape[0]:
            raise InputError(
                f"{n_pos} media placeholder positions in the prompt but {feats.shape[0]} media tokens "
                f"({len(media_tokens)} items x {self.input_projector.num_tokens} tokens)"
            )
        if n_pos == 0:
            return embeds
        return embeds.masked_scatter(mask.unsqueeze(-1), feats.to(embeds.dtype))

    # ------------------------------------------------------------------ output side

    def signal_runs(
        self, hidden: torch.Tensor, input_ids: torch.Tensor, input_embeds: torch.Tensor
    ) -> list[list[SignalRun]]:
        """Per batch row, the complete signal runs in order: for every position whose input is the
        first signal token of a modality, the next ``n`` positions' hidden states + input embeddings.

        Raises:
            InputError: a run that is cut short or out of order (a malformed training target).
        """
        found: list[list[tuple[int, SignalRun]]] = [[] for _ in range(input_ids.shape[0])]
        for m, ids in self.llm.layout.signal_ids.items():
            n = len(ids)
            want = torch.tensor(ids, device=input_ids.device)
            for b, p in (input_ids == ids[0]).nonzero().tolist():
                if p + n > input_ids.shape[1] or not torch.equal(input_ids[b, p : p + n], want):
                    raise InputError(f"row {b}: incomplete {m.value} signal run at position {p}")
                found[b].append((p, SignalRun(m, hidden[b, p : p + n] + input_embeds[b, p : p + n])))
        return [[run for _, run in sorted(row, key=lambda x: x[0])] for row in found]

    def project_outputs(self, modality: Modality, states: torch.Tensor) -> torch.Tensor:
        """Output projector: ``[N, n, H]`` signal states -> ``[N, Q, C]`` decoder conditioning."""
        return self.output_projectors[modality.value](states)

    # ------------------------------------------------------------------ training

    def compute_losses(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        media_tokens: Sequence[torch.Tensor],
        targets: Sequence[Sequence[SignalTarget]] | None = None,
        *,
        alignment_weights: dict[Modality, float] | None = None,
        lm_weight: float = 1.0,
        denoise_weight: float = 1.0,
        generator: torch.Generator | None = None,
        input_idle: torch.Tensor | None = None,
        seg_targets: Sequence[SegTargets] | None = None,
        position_ids: torch.Tensor | None = None,
        injection: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The NExT-GPT training losses for one batch.

        Args:
            input_ids: token ids ``[B, L]``.
            attention_mask: ``[B, L]``, 1 on real tokens (not given to the LLM when the batch is
                packed: ``position_ids`` say where each sample starts).
            labels: ``[B, L]``, ``-100`` where no loss is taken.
            media_tokens: projected input-media tokens per slot ``[T, H]``, in placeholder order.
            targets: per row, one :class:`SignalTarget` per signal run, in order, of the run's
                modality: its ``cond`` is the decoder conditioning the run must match (``[Q, C]``,
                e.g. the caption's CLIP ``last_hidden_state``; ``None``: no alignment loss on the
                run), its ``media`` the target media prepared by the decoder
                (``Decoder.prepare_target``) for the conditional latent denoising loss through the
                frozen UNet (paper; ``None``: none on the run). ``None`` skips both altogether
                (stage 1).
            alignment_weights: per-modality weight (default 1.0; upstream stage 3 uses 2.0 for video).
            lm_weight: scales the language-modelling loss.
            denoise_weight: scales the denoising loss.
            generator: the random stream of the denoising loss's noise and timesteps.
            input_idle: the zero scalar of :meth:`project_inputs` (training), added to the loss so
                that the idle projector calls are part of the graph.
            position_ids: ``[B, L]`` for a packed batch (several samples per row): positions that
                restart at 0 where a sample starts. Attention stays within each sample
                (transformers builds the block-diagonal mask, or the variable-length flash-attention
                call, from them); the first label of each sample must be ``-100``.
            seg_targets: LLMBind ``<seg>`` training, per row ``(SAM inputs of its image, target masks
                [N, H, W])``, a list of them for a packed row (its samples' in order), or ``None``: no
                mask in that row. The row's ``<seg>`` tokens prompt the masks in order; the loss
                (``mask_loss``) is added with ``model.segmentation.loss_weight``. In training mode a
                batch without masks adds the head's zero :meth:`~nextgpt.segmentation.
                SegmentationHead.idle` instead, so that DDP sees every trained tensor.

            injection: ImageBind-LLM (``input_projector.kind: bind``): the bound feature of each
                position ``[B, L, H]`` (:meth:`injection_tensor`), added to every layer's input.

        Returns:
            ``loss`` (weighted total), ``lm_loss`` (next-token cross-entropy on labelled positions),
            ``align_loss`` and ``align_<modality>`` (mean over conditioning tokens of the per-token
            Euclidean distance, REFERENCE.md 1.2) for the modalities present, ``denoise_loss`` when
            denoising targets were given, and ``runs`` (count).

        Raises:
            InputError: ``targets`` do not match the signal runs (rows, count per row, modality), a
                denoising target is not a tensor, or an alignment target's shape differs from the
                projector's output.
        """
        embeds = self.embed_inputs(input_ids, media_tokens)
        if position_ids is not None:
            out = self.llm(embeds, None, position_ids=position_ids, compute_logits=False, injection=injection)
        else:
            out = self.llm(embeds, attention_mask, compute_logits=False, injection=injection)
        # Logits only where a label is: the LM head over the whole batch would cost ~20% of a small
        # model's step (and B x L x V floats) for positions no loss reads. Same loss, same gradients.
        shifted = labels[:, 1:]
        target = shifted != -100
        logits = self.llm.logits(out.hidden[:, :-1][target]).float()  # (N, V)
        ce_sum = nn.functional.cross_entropy(logits, shifted[target], reduction="sum")
        lm_loss = ce_sum / target.sum().clamp(min=1)  # mean over labelled tokens; 0 if none
        losses: dict[str, torch.Tensor] = {"lm_loss": lm_loss}
        total = lm_weight * lm_loss
        moe_aux = self.llm.moe_aux_loss()
        if moe_aux is not None:  # LoRA-MoE load balancing (LLMBind eq. 10), per its config weight
            losses["moe_aux_loss"] = moe_aux
            total = total + self.config.model.llm.moe.aux_weight * moe_aux
        if seg_targets is not None:
            mask, seg_idle = self._seg_loss(input_ids, out.hidden, seg_targets)
            total = total + seg_idle
            if mask is not None:
                losses["mask_loss"] = mask
                total = total + self.config.model.segmentation.loss_weight * mask
        if input_idle is not None:
            total = total + input_idle
        if targets is not None:
            runs = self.signal_runs(out.hidden, input_ids, embeds)
            weights = alignment_weights or {}
            # per modality: (states, target) of every run with an alignment or a denoising target
            per_mod = self._targets_by_modality(runs, targets)
            align_total = embeds.new_zeros(())
            denoise_terms: list[torch.Tensor] = []
            idle = embeds.new_zeros((), dtype=torch.float32)
            # Every output projector runs once, in a fixed order (see project_inputs): on this batch's
            # runs, or on a zero run weighted by zero.
            for m in self.output_modalities:
                entries = per_mod.get(m)
                if not entries:
                    n = len(self.llm.layout.signal_ids[m])
                    dummy = torch.zeros(1, n, self.llm.hidden_size, device=self.device)
                    idle = idle + 0.0 * self.project_outputs(m, dummy).float().sum()
                    continue
                pred = self.project_outputs(m, torch.stack([states for states, _ in entries]))  # (N, Q, C)
                aligned = [(i, t.cond) for i, (_, t) in enumerate(entries) if t.cond is not None]
                if aligned:
                    p = pred[[i for i, _ in aligned]]
                    tgt = torch.stack(
                        [t.to(p) for _, t in aligned]
                    )  # (N, Q', C); cast first (fp16 targets, bf16 autocast)
                    if tgt.ndim == 2:  # (N, C): single-token conditioning (AudioLDM)
                        tgt = tgt.unsqueeze(1)
                    if tgt.shape != p.shape:
                        raise InputError(
                            f"{m.value} alignment target {tuple(tgt.shape)} != projector output {tuple(p.shape)}"
                        )
                    dist = (p.float() - tgt.float()).pow(2).sum(-1).sqrt().mean()
                    losses[f"align_{m.value}"] = dist
                    align_total = align_total + weights.get(m, 1.0) * dist
                for i, (_, t) in enumerate(entries):
                    if t.media is not None:
                        loss = self.decoders[m].denoising_loss(
                            pred[i : i + 1],
                            media=typing.cast(torch.Tensor, t.media).unsqueeze(0),  # checked: a tensor
                            generator=generator,
                        )
                        denoise_terms.append(loss)
            losses["align_loss"] = align_total
            total = total + align_total + idle
            if denoise_terms:
                losses["denoise_loss"] = torch.stack(denoise_terms).mean()
                total = total + denoise_weight * losses["denoise_loss"]
            losses["runs"] = torch.tensor(sum(len(r) for r in runs))
        losses["loss"] = total
        return losses

    @staticmethod
    def _targets_by_modality(
        runs: Sequence[Sequence[SignalRun]], targets: Sequence[Sequence[SignalTarget]]
    ) -> dict[Modality, list[tuple[torch.Tensor, SignalTarget]]]:
        """Pair each signal run with its target, checked; keep the pairs with an alignment or a
        denoising target, per modality in batch order."""
        if len(targets) != len(runs):
            raise InputError(f"{len(runs)} batch rows but signal targets for {len(targets)} rows")
        per_mod: dict[Modality, list[tuple[torch.Tensor, SignalTarget]]] = {}
        for b, (row_runs, row_targets) in enumerate(zip(runs, targets)):
            if len(row_runs) != len(row_targets):
                raise InputError(
                    f"row {b}: {len(row_runs)} signal runs but {len(row_targets)} alignment targets"
                )
            for i, (run, target) in enumerate(zip(row_runs, row_targets)):
                if not isinstance(target, SignalTarget):
                    raise InputError(
                        f"row {b}: the target of signal run {i} must be a SignalTarget, got {type(target).__name__}"
                    )
                if target.modality is not run.modality:
                    raise InputError(
                        f"row {b}: signal run {i} is {run.modality.value} but its target is "
                        f"{target.modality.value}"
                    )
                if target.media is not None and not isinstance(target.media, torch.Tensor):
                    raise InputError(
                        f"row {b}: the denoising target of signal run {i} ({run.modality.value}) must be "
                        f"a tensor prepared by Decoder.prepare_target, got {type(target.media).__name__}"
                    )
                if target.cond is not None or target.media is not None:
                    per_mod.setdefault(run.modality, []).append((run.states, target))
        return per_mod

    # ------------------------------------------------------------------ persistence

    def _seg_loss(
        self,
        input_ids: torch.Tensor,
        hidden: torch.Tensor,
        seg_targets: Sequence[SegTargets],
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """LLMBind's mask loss: each row's ``<seg>`` hidden states through the SAM head against its
        target masks. A row's entry is ``None``, one ``(SAM inputs, masks [N, H, W])`` or a list of them
        (a packed row: its samples' in order), whose masks take the row's ``<seg>`` tokens in order.
        Returns ``(the mean mask loss over images, or None without any; the head's idle zero)``."""
        from nextgpt.segmentation import mask_loss

        if self.segmentation is None or self.llm.layout.seg_id is None:
            raise InputError("seg_targets given, but the model has no segmentation (model.segmentation.sam)")
        if len(seg_targets) != input_ids.shape[0]:
            raise InputError(f"seg_targets has {len(seg_targets)} rows for a batch of {input_ids.shape[0]}")
        cfg = self.config.model.segmentation
        terms = []
        for b, entry in enumerate(seg_targets):
            entries = [] if entry is None else [entry] if isinstance(entry, tuple) else list(entry)
            if not entries:
                continue
            positions = (input_ids[b] == self.llm.layout.seg_id).nonzero().flatten()
            wanted = sum(int(masks.shape[0]) for _, masks in entries)
            if len(positions) != wanted:
                raise InputError(f"row {b}: {len(positions)} <seg> tokens for {wanted} target masks")
            start = 0
            for inputs, masks in entries:
                at = positions[start : start + masks.shape[0]]
                start += masks.shape[0]
                logits = self.segmentation(hidden[b, at].float(), inputs)
                terms.append(
                    mask_loss(
                        logits,
                        masks.to(logits.device),
                        bce_weight=cfg.bce_weight,
                        dice_weight=cfg.dice_weight,
                    )["mask_loss"]
                )
        idle = (
            self.segmentation.idle()
            if self.training and not terms
            else hidden.new_zeros((), dtype=torch.float32)
        )
        return (torch.stack(terms).mean() if terms else None), idle

    @property
    def trains_norms(self) -> bool:
        """Some stage trains the LLM's normalisation weights (``training.stages.N.trains: [norms]``):
        they are then part of the trainable state."""
        return self.config.training.trains_norms

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Every parameter training may change: projectors, LoRA, added token rows (and, with the
        legacy "full" policy, the base embedding matrices). The frozen encoder, base LLM and
        decoders are not included: they come from their configured paths or the recorded seed."""
        state = {f"input_projector.{k}": v for k, v in self.input_projector.state_dict().items()}
        state.update({f"output_projectors.{k}": v for k, v in self.output_projectors.state_dict().items()})
        state.update({f"llm.{k}": v.detach() for k, v in self.llm.trainable_state_dict().items()})
        if self.trains_norms:  # ImageBind-LLM's bias-norm tuning: the LLM's norm weights
            from nextgpt.llm import is_norm_parameter

            for k, v in self.llm.named_parameters():
                if is_norm_parameter(k):
                    state[f"llm.{k}"] = v.detach()
        if self.segmentation is not None:  # the <seg> MLP and SAM's mask decoder
            for k, v in self.segmentation.named_parameters():
                if k.startswith(("projection.", "sam.mask_decoder.")):
                    state[f"segmentation.{k}"] = v.detach()
        return state

    def save_pretrained(
        self, directory: str | os.PathLike, *, state: dict[str, torch.Tensor] | None = None
    ) -> Path:
        """Write ``config.yaml`` (the resolved config), ``trainable.safetensors`` and ``nextgpt.json``
        (a manifest: each file's size and SHA-256) into ``directory``, as one unit.

        The folder is written next to ``directory`` and then replaces it whole (atomically on Linux),
        so a crash never leaves one save's config with another's weights; see
        :func:`nextgpt.checkpoint.write_model_folder`. An existing folder holding other files is
        refused.

        ``state``: the trainable tensors to write instead of :meth:`trainable_state_dict` (a sharded
        model passes the gathered whole tensors, see ``nextgpt.stages.parallel``)."""
        import nextgpt

        if state is None:
            state = self.trainable_state_dict()
        meta = {"nextgpt_version": nextgpt.__version__, "keys": len(state)}
        return write_model_folder(directory, self.config.to_yaml, state, meta)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> NextGPT:
        """Load a directory written by :meth:`save_pretrained`: its files must match their manifest
        (one save), every key and shape must match (strict accounting) and every value be finite."""
        config_path, state = read_model_folder(directory)
        model = cls(NextGPTConfig.from_yaml(config_path), device=device)
        model.load_trainable_state(state, what=f"nextgpt model '{directory}'")
        return model

    def load_trainable_state(
        self, state: dict[str, torch.Tensor], *, what: str, norms_frozen: bool = False
    ) -> None:
        """Load exactly the keys of :meth:`trainable_state_dict` (all present, none extra, same shapes,
        floating and finite values; a refused state changes nothing).

        ``norms_frozen``: ``state`` comes from a model none of whose stages trained the LLM's norms
        (an earlier stage's save, whose config did not name ``norms`` yet), so it has no norm weights:
        this model keeps its own, which are the same base LLM's."""
        self.llm.set_lora_merged(False)  # new LoRA weights must never land on a merged base
        own = self.trainable_state_dict()
        if norms_frozen and self.trains_norms:
            from nextgpt.llm import is_norm_parameter

            norms = {k: v for k, v in own.items() if k.startswith("llm.") and is_norm_parameter(k[4:])}
            state = {**norms, **state}
        check_keys({k: v.shape for k, v in own.items()}, state, what=what)
        check_values(own, state, what=what)
        params = dict(self.named_parameters(remove_duplicate=False))
        buffers = dict(self.named_buffers())
        missing = [k for k in state if k not in params and k not in buffers]
        if missing:  # a state-dict-only entry (e.g. projector buffers)
            raise CheckpointError(f"{what}: key(s) {', '.join(missing)} have no parameter in the model")
        with torch.no_grad():
            for k, v in state.items():
                target = params[k] if k in params else buffers[k]
                target.copy_(v.to(target.dtype))

    @classmethod
    def from_legacy_checkpoint(
        cls,
        path: str | os.PathLike,
        preset: str = "nextgpt-7b-legacy",
        overrides: Sequence[str] = (),
        *,
        device: str | torch.device = "cpu",
    ) -> NextGPT:
        """Import the official NExT-GPT ``pytorch_model.pt`` (see :mod:`nextgpt.legacy`)."""
        from nextgpt.legacy import import_legacy_state

        state = read_state_dict(path)  # a missing or unsafe file fails before the model is built
        model = cls.from_preset(preset, overrides, device=device)
        import_legacy_state(model, state, what=f"legacy checkpoint '{path}'")
        return model


__all__ = ["NextGPT", "SignalRun", "SignalTarget"]
