"""Config dtype names -> ``torch.dtype`` (one table for the encoder, the LLM and the decoders)."""

from __future__ import annotations

import contextlib

import torch

from nextgpt.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


def torch_dtype(dtype: str | torch.dtype, what: str = "dtype") -> torch.dtype:
    """``"float32"`` / ``"float16"`` / ``"bfloat16"`` (or one of those ``torch.dtype``) -> ``torch.dtype``."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"unsupported {what} {dtype}; valid: {', '.join(DTYPES)}")
        return dtype
    try:
        return DTYPES[str(dtype)]
    except KeyError:
        raise ConfigError(f"unknown {what} {dtype!r}; valid: {', '.join(DTYPES)}") from None


def no_autocast(device: torch.device | str):
    """A context that turns autocast off on ``device``: frozen feature extractors (the encoder, the
    decoders' text encoders) run in their own configured dtype inside a mixed-precision training step,
    exactly as when their features are cached outside it."""
    kind = torch.device(device).type
    if kind not in ("cpu", "cuda", "xpu", "mps"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=kind, enabled=False)
