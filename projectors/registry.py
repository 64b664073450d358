"""Explicit registries from config ``kind`` strings to projector classes, and builders.

The model builds its projectors only through :func:`build_input_projector` and
:func:`build_output_projector`; configs name a component by ``kind`` (never a class path). An unknown
kind raises :class:`nextgpt.errors.ConfigError` listing the valid kinds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from nextgpt.errors import ConfigError

from .bind import BindInputProjector
from .grouping import GroupingInputProjector
from .linear import LinearInputProjector
from .output import TransformerOutputProjector

if TYPE_CHECKING:
    from nextgpt.config import InputProjectorConfig, OutputProjectorConfig

__all__ = ["INPUT_PROJECTORS", "OUTPUT_PROJECTORS", "build_input_projector", "build_output_projector"]

#: ``InputProjectorConfig.kind`` -> class (each has ``from_config(cfg, in_dim, out_dim)``).
INPUT_PROJECTORS: dict[str, type[nn.Module]] = {
    "linear": LinearInputProjector,
    "grouping": GroupingInputProjector,
    "bind": BindInputProjector,
}

#: ``OutputProjectorConfig.kind`` -> class (each has ``from_config(cfg, in_dim, out_tokens, out_dim)``).
OUTPUT_PROJECTORS: dict[str, type[nn.Module]] = {
    "transformer": TransformerOutputProjector,
}


def _lookup(registry: dict[str, type[nn.Module]], kind: object, what: str) -> type[nn.Module]:
    try:
        return registry[kind]  # type: ignore[index]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(registry))
        raise ConfigError(f"{what}.kind: unknown kind {kind!r}; valid kinds: {valid}") from None


def build_input_projector(
    cfg: InputProjectorConfig,
    in_dim: int | None = None,
    llm_hidden: int | None = None,
    *,
    num_layers: int | None = None,
    num_heads: int | None = None,
) -> nn.Module:
    """Build the input projector ``cfg.kind`` names: encoder width ``in_dim`` -> LLM width ``llm_hidden``.

    The dims default to the config's derived ``in_dim``/``out_dim``. The module has ``num_tokens``
    (LLM tokens per item) and maps ``[N, in_dim]`` (linear: pooled) or ``[N, L, in_dim]`` (grouping:
    patch tokens) to ``[N, num_tokens, llm_hidden]``. ``bind`` (ImageBind-LLM) maps pooled embeddings
    to ``[N, llm_hidden]`` bound features injected into the layers, and needs the LLM's
    ``num_layers`` and ``num_heads`` (its gates' shape).
    """
    kind = getattr(cfg, "kind", None)
    cls = _lookup(INPUT_PROJECTORS, kind, "input_projector")
    if kind == "bind":
        if num_layers is None or num_heads is None:
            raise ConfigError(
                "input_projector.kind=bind: the builder needs the LLM's num_layers and num_heads"
            )
        return cls.from_config(cfg, in_dim, llm_hidden, num_layers=num_layers, num_heads=num_heads)  # type: ignore[attr-defined]
    return cls.from_config(cfg, in_dim, llm_hidden)  # type: ignore[attr-defined]


def build_output_projector(
    cfg: OutputProjectorConfig,
    llm_hidden: int | None = None,
    out_tokens: int | None = None,
    out_dim: int | None = None,
) -> nn.Module:
    """Build the output projector ``cfg.kind`` names: ``[B, S, llm_hidden]`` -> ``[B, out_tokens, out_dim]``.

    ``llm_hidden``/``out_tokens``/``out_dim`` default to the config's ``in_dim``, ``num_queries`` and
    ``out_dim`` (the decoder's ``cond_dim``).
    """
    cls = _lookup(OUTPUT_PROJECTORS, getattr(cfg, "kind", None), "projector")
    return cls.from_config(cfg, llm_hidden, out_tokens, out_dim)  # type: ignore[attr-defined]
