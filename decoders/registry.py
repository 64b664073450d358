"""The decoder registry: ``DecoderConfig.kind`` -> decoder class.

Kinds are resolved through this explicit, read-only table (never class paths from YAML).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch

from nextgpt.decoders.audioldm import AudioLDMDecoder
from nextgpt.decoders.base import Decoder
from nextgpt.decoders.stable_diffusion import StableDiffusionDecoder
from nextgpt.decoders.zeroscope import ZeroscopeDecoder
from nextgpt.errors import ConfigError

if TYPE_CHECKING:
    from nextgpt.config import DecoderConfig

__all__ = ["DECODERS", "build_decoder", "decoder_class"]

#: Decoder kind -> class (read-only).
DECODERS: Mapping[str, type[Decoder]] = MappingProxyType(
    {cls.kind: cls for cls in (StableDiffusionDecoder, AudioLDMDecoder, ZeroscopeDecoder)}
)


def decoder_class(kind: str) -> type[Decoder]:
    """The decoder class registered for ``kind``.

    Raises:
        ConfigError: ``kind`` is unknown; the message lists the valid kinds.
    """
    try:
        return DECODERS[kind]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown decoder kind {kind!r}; valid kinds: {', '.join(DECODERS)}") from None


def build_decoder(cfg: DecoderConfig, *, device: str | torch.device | None = None, seed: int = 0) -> Decoder:
    """The decoder ``cfg`` describes (lazy: its pipeline loads on first use)."""
    return decoder_class(cfg.kind).from_config(cfg, device=device, seed=seed)
