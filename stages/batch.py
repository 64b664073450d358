"""Collation: decoded samples -> one padded training batch.

The collator runs in DataLoader workers, so everything CPU-heavy happens there: rendering the
template, tokenising, and preprocessing media into encoder inputs (or reading cached encoder
features). A sample that cannot be used (corrupt media found while preprocessing, a prompt longer
than ``max_length``, a template error) is dropped from the batch and counted in ``Batch.skipped``;
it never stops the run.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

import torch

from nextgpt.errors import InputError
from nextgpt.modality import Modality
from nextgpt.processor import IGNORE_INDEX, Processor

logger = logging.getLogger(__name__)


@dataclass
class Batch:
    """One training batch.

    Attributes:
        keys: sample keys, one per row.
        input_ids, attention_mask, labels: ``[B, L]`` (right padded; labels ``-100`` off target).
        slot_modalities: per input media slot (placeholder order over the batch) the modality of each
            of its items.
        media: preprocessed encoder inputs per modality (items in slot order), or ``None`` when
            ``features`` come from the encoder cache.
        features: cached encoder features per modality, or ``None``.
        output_modalities, output_captions: per row, per output (signal run) its modality and the
            caption whose decoder conditioning is the alignment target.
        targets: cached alignment targets per row and run, or ``None`` (computed online).
        skipped: samples dropped while collating this batch.
    """

    keys: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    slot_modalities: list[list[Modality]]
    media: dict[Modality, torch.Tensor] | None
    features: dict[Modality, torch.Tensor] | None
    output_modalities: list[list[Modality]]
    output_captions: list[list[str | None]]
    targets: list[list[torch.Tensor | None]] | None = None
    output_media: list[list[object | None]] = field(default_factory=list)
    skipped: int = 0
    skipped_keys: list[str] = field(default_factory=list)

    def to(self, device: torch.device | str) -> Batch:
        """A copy with the tensors (ids, masks, media/features, targets) on ``device``; media objects
        (output media, captions) are shared."""

        def move(x):
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            if isinstance(x, list):
                return [move(v) for v in x]
            return x

        names = ("input_ids", "attention_mask", "labels", "media", "features", "targets")
        return dataclasses.replace(self, **{name: move(getattr(self, name)) for name in names})


class Collator:
    """Callable ``list[Sample] -> Batch | None`` (``None`` when every sample was dropped).

    Args:
        processor: the model's processor (template + tokenizer + token layout).
        max_length: longest allowed sequence; longer samples are dropped and counted.
        pad_id: id used to pad ``input_ids``.
        feature_cache: optional :class:`~nextgpt.stages.cache.FeatureCache` of encoder features.
        caption_cache: optional :class:`~nextgpt.stages.cache.FeatureCache` of alignment targets.
    """

    def __init__(
        self, processor: Processor, max_length: int, pad_id: int, *, feature_cache=None, caption_cache=None
    ):
        self.processor = processor
        self.max_length = max_length
        self.pad_id = pad_id
        self.feature_cache = feature_cache
        self.caption_cache = caption_cache

    def _prepare(self, sample):
        from nextgpt.encoders.encoder import ImageBindEncoder

        enc = self.processor.encode(sample.turns, add_generation_prompt=False)
        if enc.input_ids.numel() > self.max_length:
            raise InputError(f"{enc.input_ids.numel()} tokens > max_length {self.max_length}")
        if len(enc.outputs) != len(sample.output_captions):
            raise InputError(f"{len(enc.outputs)} output media but {len(sample.output_captions)} captions")
        items: list[tuple[Modality, torch.Tensor | None, int]] = []
        for s, slot in enumerate(enc.slots):
            for item in slot:
                if self.feature_cache is not None:
                    items.append((item.modality, self.feature_cache.get(sample.key, len(items)), s))
                else:
                    items.append(
                        (item.modality, ImageBindEncoder.preprocess_item(item.modality, item.value), s)
                    )
        targets = None
        if self.caption_cache is not None:
            targets = [self.caption_cache.get(sample.key, i) for i in range(len(enc.outputs))]
        return enc, items, targets

    def __call__(self, samples) -> Batch | None:
        rows, skipped_keys = [], []
        for sample in samples:
            try:
                rows.append((sample, *self._prepare(sample)))
            except (InputError, KeyError, ValueError) as exc:
                logger.warning("skipping sample %s: %s", getattr(sample, "key", "?"), exc)
                skipped_keys.append(getattr(sample, "key", "?"))
        if not rows:
            return None
        L = max(enc.input_ids.numel() for _, enc, _, _ in rows)
        B = len(rows)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        slot_modalities: list[list[Modality]] = []
        per_mod: dict[Modality, list[torch.Tensor]] = {}
        for b, (_, enc, items, _) in enumerate(rows):
            n = enc.input_ids.numel()
            input_ids[b, :n], attention_mask[b, :n], labels[b, :n] = enc.input_ids, 1, enc.labels
            slot_modalities += [[item.modality for item in slot] for slot in enc.slots]
            for m, tensor, _ in items:
                per_mod.setdefault(m, []).append(tensor)
        stacked = {m: torch.stack(ts) for m, ts in per_mod.items()}
        cached = self.feature_cache is not None
        targets = [t for *_, t in rows] if self.caption_cache is not None else None
        return Batch(
            keys=[s.key for s, *_ in rows],
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            slot_modalities=slot_modalities,
            media=None if cached else stacked,
            features=stacked if cached else None,
            output_modalities=[[slot[0].modality for slot in enc.outputs] for _, enc, _, _ in rows],
            output_captions=[list(s.output_captions) for s, *_ in rows],
            targets=targets,
            output_media=[[slot[0].value for slot in enc.outputs] for _, enc, _, _ in rows],
            skipped=len(skipped_keys),
            skipped_keys=skipped_keys,
        )
