"""Synthetic inputs: preprocessed media, raw media items for ``generate``, and training batches of
the real structure (placeholder runs, signal runs, alignment targets)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: Preprocessed encoder input shape per item (fixed by ImageBind's geometry at every size).
MEDIA_SHAPES = {"image": (3, 224, 224), "audio": (3, 1, 128, 204), "video": (15, 3, 2, 224, 224)}


def synthetic_media(modality: str, n: int, *, seed: int = 0) -> torch.Tensor:
    """A batch of preprocessed encoder inputs (normalised noise), float32 on the CPU, as the
    collator delivers them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *MEDIA_SHAPES[modality]), generator=g)


def raw_media(modality: str, *, seed: int = 0):
    """One raw input item for ``generate``: a PIL image, 3 s of audio or 2 s of 8 fps video."""
    import numpy as np
    from PIL import Image

    from nextgpt import Audio, Video

    rng = np.random.default_rng(seed)
    if modality == "image":
        return Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    if modality == "audio":
        return Audio(rng.standard_normal(48000).astype(np.float32) * 0.1, sample_rate=16000)
    return Video(rng.integers(0, 256, (16, 240, 320, 3), dtype=np.uint8), fps=8.0)


@dataclass
class RowSpec:
    """One synthetic training row: an input media item (or none) and an output signal run (or none)."""

    input: str | None
    output: str | None = None


def encoder_features(model, modality: str, n: int, *, seed: int = 0) -> torch.Tensor:
    """What the encoder cache would hold for ``n`` items: ``media_features`` on synthetic media,
    float32 on the CPU."""
    from nextgpt.modality import Modality

    with torch.no_grad():
        feats = model.media_features(Modality(modality), synthetic_media(modality, n, seed=seed))
    return feats.float().cpu()


def synthetic_batch(
    model,
    rows: Sequence[RowSpec],
    seq_len: int,
    *,
    cached: bool,
    with_targets: bool,
    seed: int = 0,
    features: dict[str, torch.Tensor] | None = None,
):
    """A :class:`~nextgpt.stages.batch.Batch` of random token ids with the real structure.

    Each row: BOS, random text, the input's placeholder tokens, random text; the second half is the
    assistant reply (labelled) and ends with the output's signal-token run. ``cached``: encoder
    features (computed once by the encoder, or taken from ``features``) instead of preprocessed media.
    ``with_targets``: one random alignment target per signal run, shaped like the output projector's
    output (the :class:`~nextgpt.model.SignalTarget`'s ``cond``; no caption, no target media).
    Everything is on the CPU (move it with :func:`batch_to`).
    """
    from nextgpt.modality import Modality
    from nextgpt.model import SignalTarget
    from nextgpt.processor import IGNORE_INDEX
    from nextgpt.stages.batch import Batch

    layout = model.llm.layout
    T = model.input_projector.num_tokens
    g = torch.Generator().manual_seed(seed)
    B, L = len(rows), seq_len
    ids = torch.randint(4, layout.base_vocab, (B, L), generator=g)
    bos = model.llm.tokenizer.bos_token_id
    ids[:, 0] = bos if bos is not None else 1
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    labels[:, L // 2 :] = ids[:, L // 2 :]
    slot_modalities: list[list[Modality]] = []
    counts: dict[str, int] = {}
    outputs: list[list[SignalTarget]] = []
    for b, row in enumerate(rows):
        if row.input is not None:
            if 1 + T > L // 2:
                raise ValueError(f"seq_len {L} too short for {T} media tokens")
            ids[b, 1 : 1 + T] = layout.placeholder_ids[Modality(row.input)]
            slot_modalities.append([Modality(row.input)])
            counts[row.input] = counts.get(row.input, 0) + 1
        row_out: list[SignalTarget] = []
        if row.output is not None:
            m = Modality(row.output)
            run = torch.tensor(layout.signal_ids[m])
            start = L - len(run) - 2
            if start <= 1 + T:
                raise ValueError(f"seq_len {L} too short for a {row.output} signal run")
            ids[b, start : start + len(run)] = run
            labels[b, start : start + len(run)] = run
            cond = None
            if with_targets:
                pcfg = model.config.model.outputs[m].projector
                cond = torch.randn(pcfg.num_queries, pcfg.out_dim, generator=g)
            row_out.append(SignalTarget(m, cond=cond))
        outputs.append(row_out)
    media = feats = None
    if cached:
        feats = {}
        for m, n in counts.items():
            source = (
                features[m][:n] if features and m in features else encoder_features(model, m, n, seed=seed)
            )
            feats[Modality(m)] = source
    else:
        media = {Modality(m): synthetic_media(m, n, seed=seed) for m, n in counts.items()}
    return Batch(
        keys=[f"sample{b}" for b in range(B)],
        input_ids=ids,
        attention_mask=torch.ones(B, L, dtype=torch.long),
        labels=labels,
        slot_modalities=slot_modalities,
        media=media,
        features=feats,
        outputs=outputs,
    )


def batch_to(batch, device: torch.device):
    """The batch with every tensor on ``device`` (what the stage module's batch transfer does)."""
    return batch.to(device)
