"""Build and load the frozen ImageBind encoder."""

from __future__ import annotations

import logging
import os

import torch

from nextgpt.checkpoint import load_strict, read_state_dict
from nextgpt.config import EncoderConfig
from nextgpt.encoders.imagebind import ImageBind

logger = logging.getLogger(__name__)


def load_imagebind(
    path: str | os.PathLike,
    dims: EncoderConfig | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    freeze: bool = True,
) -> ImageBind:
    """Load an ImageBind checkpoint (e.g. the official ``imagebind_huge.pth``) with strict accounting.

    The model is built on the ``meta`` device and takes the checkpoint's tensors directly, so the
    1.2B-parameter huge model costs one copy of its weights, not two.

    Args:
        path: ``.pth``/``.pt`` (read with ``torch.load(weights_only=True)``) or ``.safetensors``.
        dims: the encoder's config node (its trunk sizes); default ImageBind huge (``EncoderConfig()``).
        dtype: cast floating-point weights to this dtype (e.g. ``torch.float16`` for inference).
        device: where to put the model.
        freeze: put the model in eval mode with ``requires_grad=False`` (the NExT-GPT setting).

    Raises:
        CheckpointError: unreadable or unsafe file, or any missing, unexpected or mis-shaped key
            (all of them are named).
    """
    state = read_state_dict(path)
    with torch.device("meta"):
        model = ImageBind(dims)
    load_strict(model, state, what=f"ImageBind checkpoint '{path}'", assign=True)
    model.to(device=device)
    if dtype is not None:
        model.to(dtype=dtype)
    if freeze:
        model.requires_grad_(False).eval()
    n = sum(p.numel() for p in model.parameters())
    logger.info("loaded ImageBind (%.1fM parameters) from %s", n / 1e6, path)
    return model


def build_imagebind(
    dims: EncoderConfig | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    freeze: bool = True,
    seed: int | None = None,
) -> ImageBind:
    """Load ``checkpoint`` if given, else build a randomly initialised model (tests, benchmarks)."""
    if checkpoint is not None:
        return load_imagebind(checkpoint, dims, dtype=dtype, device=device, freeze=freeze)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = ImageBind(dims)
    else:
        model = ImageBind(dims)
    model.to(device=device, dtype=dtype)
    if freeze:
        model.requires_grad_(False).eval()
    return model
