"""Collation: decoded samples -> one padded training batch.

The collator runs in DataLoader workers, so everything CPU-heavy happens there: rendering the
template, tokenising, and preprocessing media into encoder inputs (or reading cached encoder
features). A sample that cannot be used is dropped from the batch and counted by reason in
``Batch.drops`` (the slugs of :data:`~nextgpt.stages.data.schema.DROP_REASONS`): undecodable in the
shard (it arrives as a :class:`~nextgpt.stages.data.schema.DroppedSample`), media preprocessing
failed, no feature-cache entry, a template/tokenizer error, or nothing left to learn after
truncation. A sample longer than ``max_length`` is truncated (``overlength="truncate"``): the cut never
splits a media placeholder span or a signal run, and the media and outputs past it are dropped with
it; ``overlength="skip"`` drops the sample instead. The training loop sums the counts over all ranks
and stops the run past ``training.max_bad_fraction``.

A batch whose samples were all dropped is still a batch (:meth:`Batch.empty`: one unlabelled row):
every rank must run the same steps under DDP/FSDP, so it trains with a zero loss instead of skipping.

Packing (``packing=True``, ``training.stages.N.packing``): the batch's samples are laid out several per
row (:func:`pack_rows`: balanced rows of at most ``pack_length`` tokens, the layout with the fewest
tokens) instead of one per row padded to the longest. A batch still holds the same samples, so a
packed run takes the very steps an unpacked one takes, on fewer tokens. Each sample keeps its own
positions (``position_ids`` restart at 0), its labels (the first token of a sample is never a target,
as in its own row), its media placeholders and its signal runs; the LLM confines attention to each
sample from the restarting positions (transformers' packed-sequence masks: a block-diagonal mask for
SDPA and eager attention, variable-length kernels for flash attention). The losses are then those of
the unpacked batch (``tests/test_packing.py``).
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from nextgpt.errors import InputError
from nextgpt.modality import Modality
from nextgpt.model import SignalTarget
from nextgpt.processor import IGNORE_INDEX, Encoded, Processor
from nextgpt.segmentation import prepare_image
from nextgpt.stages.data.schema import DroppedSample

logger = logging.getLogger(__name__)


@dataclass(init=False)
class Batch:
    """One training batch.

    Attributes:
        keys: sample keys in row order (one per row; several per row when packed).
        input_ids, attention_mask, labels: ``[B, L]`` (right padded; labels ``-100`` off target;
            ``attention_mask`` is 1 on every sample token, packed or not).
        position_ids: ``[B, L]`` positions restarting at 0 for each sample of a packed batch, else
            ``None`` (one sample per row, positions from the attention mask).
        slot_modalities: per input media slot (placeholder order over the batch) the modality of each
            of its items.
        media: preprocessed encoder inputs per modality (items in slot order), or ``None`` when
            ``features`` come from the encoder cache.
        features: cached encoder features per modality, or ``None``.
        outputs: per row, one :class:`~nextgpt.model.SignalTarget` per output (signal run), in
            order: its modality, the caption whose decoder conditioning is the alignment target, that
            conditioning when the caption cache holds it (else ``None``: computed online), and the
            decoded target media (denoising loss) or ``None``.
        slot_groups: per input media slot, the index of its sample (samples numbered in row order).
        sample_spans: per sample, ``(row, start, end)``: where its tokens are (ImageBind-LLM injects
            each sample's bound feature there).
        seg_targets: per row, the ``<seg>`` targets of its samples in order (LLMBind masks): ``(SAM
            inputs of the image, target masks [N, H, W])`` per sample with masks; empty lists when none
            (or the model has no segmentation).
        num_samples: samples this batch stands for (rows + dropped; padding not counted).
        drops: dropped samples by reason.
        skipped_keys: keys of the dropped samples.
        is_empty: every sample was dropped; the one row is unlabelled filler (:meth:`empty`).

    ``output_modalities`` and ``output_captions`` are read-only views of ``outputs``; ``outputs``
    defaults to no output in every row.
    """

    keys: list[str]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    slot_modalities: list[list[Modality]]
    media: dict[Modality, torch.Tensor] | None
    features: dict[Modality, torch.Tensor] | None
    outputs: list[list[SignalTarget]]
    position_ids: torch.Tensor | None = None
    seg_targets: list[list[tuple[dict, torch.Tensor]]] = field(default_factory=list)
    slot_groups: list[int] = field(default_factory=list)
    sample_spans: list[tuple[int, int, int]] = field(default_factory=list)
    num_samples: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    skipped_keys: list[str] = field(default_factory=list)
    is_empty: bool = False

    def __init__(
        self,
        keys: list[str],
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor,
        slot_modalities: list[list[Modality]],
        media: dict[Modality, torch.Tensor] | None,
        features: dict[Modality, torch.Tensor] | None,
        outputs: list[list[SignalTarget]] | None = None,
        position_ids: torch.Tensor | None = None,
        seg_targets: list[list[tuple[dict, torch.Tensor]]] | None = None,
        slot_groups: list[int] | None = None,
        sample_spans: list[tuple[int, int, int]] | None = None,
        num_samples: int = 0,
        drops: dict[str, int] | None = None,
        skipped_keys: list[str] | None = None,
        is_empty: bool = False,
    ) -> None:
        if outputs is None:
            outputs = [[] for _ in range(input_ids.shape[0])]
        self.keys = keys
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.labels = labels
        self.slot_modalities = slot_modalities
        self.media = media
        self.features = features
        self.outputs = [list(row) for row in outputs]
        self.position_ids = position_ids
        self.seg_targets = (
            [list(row) for row in seg_targets] if seg_targets is not None else [[] for _ in outputs]
        )
        self.slot_groups = list(slot_groups or [])
        self.sample_spans = list(sample_spans or [])
        self.num_samples = num_samples
        self.drops = dict(drops or {})
        self.skipped_keys = list(skipped_keys or [])
        self.is_empty = is_empty

    @property
    def output_modalities(self) -> list[list[Modality]]:
        """Per row, the modality of each output (a view of :attr:`outputs`)."""
        return [[t.modality for t in row] for row in self.outputs]

    @property
    def output_captions(self) -> list[list[str | None]]:
        """Per row, the caption of each output (a view of :attr:`outputs`)."""
        return [[t.caption for t in row] for row in self.outputs]

    @property
    def packed(self) -> bool:
        """Several samples may share a row (``position_ids`` restart per sample)."""
        return self.position_ids is not None

    @property
    def num_rows(self) -> int:
        """Rows of the batch (``input_ids.shape[0]``)."""
        return int(self.input_ids.shape[0])

    @property
    def num_tokens(self) -> int:
        """Sample tokens in the batch: the rows' tokens less the padding."""
        return 0 if self.is_empty else int(self.attention_mask.sum())

    @property
    def skipped(self) -> int:
        """Samples dropped while making this batch."""
        return sum(self.drops.values())

    @classmethod
    def empty(cls, pad_id: int, *, num_samples: int = 0, drops=None, skipped_keys=()) -> Batch:
        """A one-token, unlabelled batch standing for a batch whose samples were all dropped."""
        return cls(
            keys=[],
            input_ids=torch.full((1, 1), pad_id, dtype=torch.long),
            attention_mask=torch.ones((1, 1), dtype=torch.long),
            labels=torch.full((1, 1), IGNORE_INDEX, dtype=torch.long),
            slot_modalities=[],
            media=None,
            features=None,
            outputs=[[]],
            num_samples=num_samples,
            drops=dict(drops or {}),
            skipped_keys=list(skipped_keys),
            is_empty=True,
        )

    def to(self, device: torch.device | str) -> Batch:
        """A copy with the tensors (ids, masks, media/features, cached alignment targets) on
        ``device``; media objects (output media, captions) are shared."""

        def move(x):
            if isinstance(x, torch.Tensor):
                return x.to(device, non_blocking=True)
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            if isinstance(x, list):
                return [move(v) for v in x]
            return x

        names = ("input_ids", "attention_mask", "labels", "position_ids", "media", "features")
        moved = {name: move(getattr(self, name)) for name in names}
        outputs = [[t.to(device) for t in row] for row in self.outputs]
        seg = [
            [({**inputs, "pixel_values": move(inputs["pixel_values"])}, move(masks)) for inputs, masks in row]
            for row in self.seg_targets
        ]  # the sizes stay on the host: SAM's post-processing reads them as numbers
        return dataclasses.replace(self, **moved, outputs=outputs, seg_targets=seg)


class _Drop(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


OVERLENGTH = ("truncate", "skip")


def _atomic_spans(enc: Encoded, processor: Processor) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """``(input slot spans, output run spans)`` as ``[start, end)`` token positions, in order: the
    placeholder tokens of each input media slot (with their wrappers) and each signal run."""
    ids = enc.input_ids.tolist()
    layout = processor.layout
    per = processor.tokens_per_item
    ph = set(layout.placeholder_ids.values())
    pos = [i for i, t in enumerate(ids) if t in ph]
    wrappers = layout.wrapper_ids
    slots = []
    for k in range(0, len(pos), per) if per else ():  # per 0 (bind): media hold no tokens
        a, b = pos[k], pos[min(k + per, len(pos)) - 1] + 1
        if wrappers and a > 0 and ids[a - 1] == wrappers[0]:
            a -= 1
        if wrappers and b < len(ids) and ids[b] == wrappers[1]:
            b += 1
        slots.append((a, b))
    firsts = {run[0]: len(run) for run in layout.signal_ids.values()}
    runs = [(i, i + firsts[t]) for i, t in enumerate(ids) if t in firsts]
    return slots, runs


def truncate_encoded(enc: Encoded, max_length: int, processor: Processor) -> tuple[Encoded, int]:
    """``enc`` cut to at most ``max_length`` tokens without splitting a media slot or a signal run.

    The cut moves back to the start of a span it would split; input slots and outputs past the cut
    are dropped with their tokens. Returns the truncated encoding and how many outputs it keeps.
    """
    slots, runs = _atomic_spans(enc, processor)
    cut = max_length
    for a, b in slots + runs:
        if a < cut < b:
            cut = a
    kept_in = sum(1 for _, b in slots if b <= cut) if processor.tokens_per_item else len(enc.slots)
    kept_out = sum(1 for _, b in runs if b <= cut)
    out = Encoded(
        enc.input_ids[:cut].clone(), enc.labels[:cut].clone(), enc.slots[:kept_in], enc.outputs[:kept_out]
    )
    return out, kept_out


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Sample indices per row for a packed batch: the layout with the fewest tokens (rows x longest
    row) whose rows hold at most ``capacity`` tokens, ties going to more, shorter rows.

    For each row count from ``ceil(sum / capacity)`` up to one row per sample, the samples are placed
    longest first, each on the row with the fewest tokens so far (the LPT rule: the longest row is at
    most 4/3 of the best possible, Graham 1969); the best row count wins. One sample per row (the
    padded layout) is among the candidates, so packing never costs more tokens than padding. A sample
    longer than ``capacity`` can only have a row of its own, which then sets the row length.
    Deterministic (ties keep the input order); within a row, and across rows by their first sample,
    the input order is kept.
    """
    n = len(lengths)
    if n == 0:
        return []
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    longest_sample = max(lengths)
    cap = max(capacity, longest_sample)
    best: tuple[int, list[list[int]]] | None = None  # (tokens, rows)
    for count in range(max(1, -(-sum(lengths) // cap)), n + 1):
        if best is not None and count * longest_sample > best[0]:
            break  # every row is at least the longest sample: more rows can only cost more
        rows: list[list[int]] = [[] for _ in range(count)]
        heap = [(0, r) for r in range(count)]  # (tokens so far, row): the emptiest row first
        for i in order:
            load, r = heapq.heappop(heap)
            rows[r].append(i)
            heapq.heappush(heap, (load + lengths[i], r))
        longest = max(load for load, _ in heap)
        if longest > cap:
            continue
        if best is None or count * longest <= best[0]:
            best = (count * longest, rows)
        if longest == longest_sample:  # more rows cannot be shorter
            break
    assert best is not None  # one sample per row always fits
    return sorted((sorted(row) for row in best[1]), key=lambda row: row[0])


class Collator:
    """Callable ``list[Sample | DroppedSample] -> Batch`` (never ``None``; see the module docstring).

    Args:
        processor: the model's processor (template + tokenizer + token layout).
        max_length: longest sequence; longer samples are truncated or skipped (``overlength``).
        pad_id: id used to pad ``input_ids``.
        feature_cache: optional :class:`~nextgpt.stages.cache.FeatureCache` of encoder features.
        caption_cache: optional :class:`~nextgpt.stages.cache.FeatureCache` of alignment targets.
        overlength: ``"truncate"`` (default) or ``"skip"``.
        packing: lay several samples out per row (module docstring) instead of one per row.
        pack_length: tokens per packed row (default ``max_length``). With flash attention a longer
            row costs nothing extra; SDPA and eager attention compute the whole block-diagonal
            ``pack_length``-square mask, so on those a shorter row can be faster.
        seg_processor: the model's ``SamImageProcessor`` (``model.segmentation.processor``) when it
            has LLMBind segmentation: a sample's target masks then become ``Batch.seg_targets``, one
            per ``<seg>`` token kept after truncation. Without it, masks are not read (a warning says
            so once) and ``<seg>`` is plain text.
    """

    def __init__(
        self,
        processor: Processor,
        max_length: int,
        pad_id: int,
        *,
        feature_cache=None,
        caption_cache=None,
        overlength: str = "truncate",
        packing: bool = False,
        pack_length: int | None = None,
        seg_processor=None,
    ):
        if overlength not in OVERLENGTH:
            raise InputError(f"unknown overlength policy {overlength!r}; valid: {', '.join(OVERLENGTH)}")
        if pack_length is not None and pack_length < 1:
            raise InputError(f"pack_length must be a positive number of tokens, got {pack_length}")
        self.packing = bool(packing)
        self.pack_length = int(pack_length) if pack_length is not None else int(max_length)
        self.processor = processor
        self.max_length = max_length
        self.pad_id = pad_id
        self.feature_cache = feature_cache
        self.caption_cache = caption_cache
        self.overlength = overlength
        self.seg_processor = seg_processor
        if seg_processor is not None and processor.layout.seg_id is None:
            raise InputError("seg_processor given, but the processor's token layout has no <seg> token")
        self._warned_masks = False

    def length(self, sample) -> int:
        """Tokens ``sample`` takes in a batch (its encoding, at most ``max_length``); 0 for a dropped
        sample or one whose template fails (the collator drops it)."""
        if isinstance(sample, DroppedSample):
            return 0
        try:
            n = self.processor.encode(sample.turns, add_generation_prompt=False).input_ids.numel()
        except (InputError, ValueError):
            return 0
        return min(int(n), self.max_length)

    def _prepare(self, sample):
        from nextgpt.encoders.encoder import ImageBindEncoder

        try:
            enc = self.processor.encode(sample.turns, add_generation_prompt=False)
        except (InputError, ValueError) as exc:
            raise _Drop("template", str(exc)) from None
        if len(enc.outputs) != len(sample.output_captions):
            raise _Drop(
                "template", f"{len(enc.outputs)} output media but {len(sample.output_captions)} captions"
            )
        captions = list(sample.output_captions)
        if enc.input_ids.numel() > self.max_length:
            n = enc.input_ids.numel()
            if self.overlength == "skip":
                raise _Drop("overlength", f"{n} tokens > max_length {self.max_length}")
            enc, kept = truncate_encoded(enc, self.max_length, self.processor)
            captions = captions[:kept]
            logger.debug("sample %s truncated from %d to %d tokens", sample.key, n, enc.input_ids.numel())
        if not bool((enc.labels != IGNORE_INDEX).any()):
            raise _Drop("no_target", f"no target token within max_length {self.max_length}")
        items: list[tuple[Modality, torch.Tensor | None]] = []
        for slot in enc.slots:
            for item in slot:
                if self.feature_cache is not None:
                    try:
                        value = self.feature_cache.get(sample.url, sample.key, len(items))
                    except KeyError as exc:
                        raise _Drop("cache_miss", str(exc)) from None
                else:
                    try:
                        value = ImageBindEncoder.preprocess_item(item.modality, item.value)
                    except (InputError, ValueError, RuntimeError, OSError) as exc:
                        raise _Drop("preprocess", f"{item.modality.value}: {exc}") from None
                items.append((item.modality, value))
        conds: list[torch.Tensor | None] = [None] * len(enc.outputs)
        if self.caption_cache is not None:
            try:
                conds = [self.caption_cache.get(sample.url, sample.key, i) for i in range(len(enc.outputs))]
            except KeyError as exc:
                raise _Drop("cache_miss", str(exc)) from None
        try:
            outputs = [
                SignalTarget(slot[0].modality, caption=caption, cond=cond, media=slot[0].value)
                for slot, caption, cond in zip(enc.outputs, captions, conds)
            ]
        except InputError as exc:
            raise _Drop("template", str(exc)) from None
        return sample, enc, items, outputs, self._seg_target(sample, enc)

    def _seg_target(self, sample, enc: Encoded) -> tuple[dict, torch.Tensor] | None:
        """``(SAM inputs, masks)`` for the ``<seg>`` tokens ``enc`` keeps, or ``None``."""
        masks = getattr(sample, "masks", None)
        if not masks:
            return None
        if self.seg_processor is None:
            if not self._warned_masks:
                logger.warning(
                    "sample %s has target masks but the model has no segmentation (model.segmentation.sam):"
                    " masks are not trained",
                    sample.key,
                )
                self._warned_masks = True
            return None
        kept = int((enc.input_ids == self.processor.layout.seg_id).sum())
        if kept > len(masks):
            raise _Drop("template", f"{kept} <seg> tokens but {len(masks)} target masks")
        if kept == 0:  # truncation cut every <seg>
            return None
        try:
            inputs = prepare_image(self.seg_processor, sample.mask_image)
        except (ValueError, RuntimeError, OSError) as exc:
            raise _Drop("preprocess", f"segmentation image: {exc}") from None
        return inputs, torch.from_numpy(np.stack(masks[:kept])).float()

    def __call__(self, samples) -> Batch:
        """Collate the usable ``samples`` into one padded :class:`Batch`; dropped and unusable ones are
        counted in ``drops`` and ``skipped_keys`` (padding entries are not counted)."""
        rows, drops, skipped_keys, seen = [], {}, [], 0
        for sample in samples:
            if isinstance(sample, DroppedSample):
                if sample.is_padding:
                    continue
                seen += 1
                drops[sample.reason] = drops.get(sample.reason, 0) + 1
                skipped_keys.append(sample.key)
                continue
            seen += 1
            try:
                rows.append(self._prepare(sample))
            except _Drop as exc:
                logger.warning("dropping sample %s (%s): %s", getattr(sample, "key", "?"), exc.reason, exc)
                drops[exc.reason] = drops.get(exc.reason, 0) + 1
                skipped_keys.append(getattr(sample, "key", "?"))
        if not rows:
            return Batch.empty(self.pad_id, num_samples=seen, drops=drops, skipped_keys=skipped_keys)
        lengths = [enc.input_ids.numel() for _, enc, *_ in rows]
        seg_targets: list[list[tuple[dict, torch.Tensor]]] = []
        slot_groups: list[int] = []
        sample_spans: list[tuple[int, int, int]] = []
        layout = pack_rows(lengths, self.pack_length) if self.packing else [[i] for i in range(len(rows))]
        L = max(sum(lengths[i] for i in row) for row in layout)
        B = len(layout)
        input_ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((B, L), dtype=torch.long)
        labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((B, L), dtype=torch.long) if self.packing else None
        slot_modalities: list[list[Modality]] = []
        per_mod: dict[Modality, list[torch.Tensor]] = {}
        keys: list[str] = []
        outputs: list[list[SignalTarget]] = []
        for b, row in enumerate(layout):
            start, row_outputs, row_seg = 0, [], []
            for i in row:  # media, slots and outputs in placeholder order over the batch (row-major)
                sample, enc, items, sample_outputs, seg = rows[i]
                if seg is not None:
                    row_seg.append(seg)
                n = lengths[i]
                input_ids[b, start : start + n] = enc.input_ids
                attention_mask[b, start : start + n] = 1
                labels[b, start : start + n] = enc.labels
                if position_ids is not None:
                    position_ids[b, start : start + n] = torch.arange(n)
                    labels[b, start] = IGNORE_INDEX  # predicted from the previous sample: never a target
                slot_modalities += [[item.modality for item in slot] for slot in enc.slots]
                slot_groups += [len(sample_spans)] * len(enc.slots)
                sample_spans.append((b, start, start + n))
                for m, tensor in items:
                    per_mod.setdefault(m, []).append(tensor)
                keys.append(sample.key)
                row_outputs += sample_outputs
                start += n
            if position_ids is not None:  # the padding after the row's samples: a segment of its own
                position_ids[b, start:] = torch.arange(L - start)
            outputs.append(row_outputs)
            seg_targets.append(row_seg)
        stacked = {m: torch.stack(ts) for m, ts in per_mod.items()}
        cached = self.feature_cache is not None
        return Batch(
            keys=keys,
            input_ids=input_ids,
            attention_mask=attention_mask,
            labels=labels,
            slot_modalities=slot_modalities,
            media=None if cached else stacked,
            features=stacked if cached else None,
            outputs=outputs,
            position_ids=position_ids,
            seg_targets=seg_targets,
            slot_groups=slot_groups,
            sample_spans=sample_spans,
            num_samples=seen,
            drops=drops,
            skipped_keys=skipped_keys,
        )
