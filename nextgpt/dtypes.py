"""Config dtype names -> ``torch.dtype`` (one table for the encoder, the LLM and the decoders)."""

from __future__ import annotations

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
