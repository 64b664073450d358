"""Deterministic tensors shared by the ImageBind reference generator and the parity test.

Values come from an integer hash (no RNG), so the same numbers appear under any torch version:
the generator (run with upstream ImageBind in a throwaway environment) and our test fill the same
keys with the same values and compare outputs. Only this formula and the resulting outputs are
stored; no upstream code or weights.
"""

from __future__ import annotations

import math

import torch

# Small dims for the parity check: (embed_dim, num_blocks, num_heads) per trunk, and the output width.
TINY_TRUNKS = {
    "vision": (32, 2, 4),
    "text": (32, 2, 4),
    "audio": (24, 2, 3),
    "depth": (16, 1, 2),
    "thermal": (16, 2, 2),
    "imu": (16, 1, 2),
}
TINY_OUT = 24


def det_tensor(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> torch.Tensor:
    """Pseudo-random values in ``[-scale, scale)`` from an integer hash of (flat index, seed).

    Integer arithmetic only (all products stay below 2**63), so every torch version produces the
    same bits; the hash has no linear structure, so weight matrices are full rank.
    """
    m = 2**31
    i = torch.arange(math.prod(shape), dtype=torch.int64)
    h = (i * 1103515245 + seed * 12345 + 12345) % m
    h = h ^ (h >> 13)
    h = (h * 1103515245 + 12345) % m
    h = h ^ (h >> 16)
    return ((h.to(torch.float64) / m * 2.0 - 1.0) * scale).to(torch.float32).reshape(shape)


def det_state(keys_and_shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Values for every parameter key, in sorted-key order (seed = position in that order).

    LayerNorm scales are near 1, matrices are scaled by 1/sqrt(fan-in), everything else is small,
    so activations stay well scaled through the trunks.
    """
    out = {}
    for seed, (key, shape) in enumerate(sorted(keys_and_shapes)):
        shape = tuple(shape)
        if _is_norm_weight(key, shape):
            out[key] = 1.0 + det_tensor(shape, seed, scale=0.1)
        elif key.endswith("weight") and len(shape) >= 2:
            out[key] = det_tensor(shape, seed, scale=math.sqrt(3.0 / math.prod(shape[1:])))
        else:
            out[key] = det_tensor(shape, seed, scale=0.1)
    return out


def _is_norm_weight(key: str, shape: tuple[int, ...]) -> bool:
    # Linear and conv weights are >= 2-D; the only 1-D ".weight" tensors are LayerNorm scales.
    return key.endswith(".weight") and len(shape) == 1


def det_inputs() -> dict[str, torch.Tensor]:
    """Inputs per trunk; video and audio have several clips (they are averaged over clips)."""
    text = torch.zeros(2, 77, dtype=torch.long)
    text[0, :5] = torch.tensor([49406, 320, 1929, 1142, 49407])
    text[1, :9] = torch.tensor([49406, 320, 1125, 539, 550, 18376, 7315, 269, 49407])
    return {
        "vision": det_tensor((2, 3, 224, 224), 1001, scale=2.0),
        "vision_clips": det_tensor((1, 2, 3, 2, 224, 224), 1002, scale=2.0),
        "text": text,
        "audio": det_tensor((2, 3, 1, 128, 204), 1003, scale=3.0),
        "depth": det_tensor((2, 1, 224, 224), 1004),
        "thermal": det_tensor((2, 1, 224, 224), 1005),
        "imu": det_tensor((2, 6, 2000), 1006),
    }
