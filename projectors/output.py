"""Transformer output projector: LLM signal-token states -> diffusion decoder conditioning.

This is the legacy NExT-GPT ``TextFcLayer`` in its ``transformer`` mode, with the same attribute names
so that the released checkpoint's keys load after dropping a per-modality prefix
(:data:`LEGACY_PREFIX`):

    x [B, S, in_dim] -> fc -> [B, S, 512]
    -> nn.Transformer(d_model=512, nhead=4, 4 encoder + 4 decoder layers, feed-forward 2048,
       dropout 0, batch_first, norm_first; ReLU) with src = x and tgt = learned queries [B, Q, 512],
       no masks
    -> model -> [B, Q, out_dim]

Caller contract: ``x`` is, for each of the ``S`` signal tokens of one output run, the LLM's
final-layer hidden state (after the final norm) at the position whose INPUT is that signal token,
PLUS the input embedding of that token; the caller adds the two (the legacy code does the addition
inside the layer; here it is the caller's job so that this module is a plain tensor map).

Sizes in NExT-GPT (Vicuna-7B, in_dim 4096): image Q=77, out 768 (SD 1.5 CLIP-L); video Q=77,
out 1024 (Zeroscope OpenCLIP-H); audio Q=1, out 512 (AudioLDM CLAP ``text_embeds``, used as
``[B, 512]``: see :func:`squeeze_single`).

References: Wu et al., "NExT-GPT" (ICML 2024); the legacy code ``NExT-GPT-Lagacy/code/model/layers.py``
(facts only); Vaswani et al. (2017) / PyTorch ``nn.Transformer`` for the transformer itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from nextgpt.config import OutputProjectorConfig

__all__ = ["LEGACY_PREFIX", "TransformerOutputProjector", "squeeze_single"]

#: Modality name -> prefix of that modality's output projector keys in the legacy checkpoint.
#: ``Modality`` is a ``str`` enum, so ``LEGACY_PREFIX[Modality.IMAGE]`` works too.
LEGACY_PREFIX: dict[str, str] = {
    "image": "gen_text_hidden_fcs.0.",
    "video": "gen_text_hidden_fcs_video.0.",
    "audio": "gen_text_hidden_fcs_audio.0.",
}


class TransformerOutputProjector(nn.Module):
    """Signal-token states ``[B, S, in_dim]`` -> decoder conditioning ``[B, Q, out_dim]``.

    Built from its config node, as transformers' LLaVA projector is: the transformer's sizes
    (legacy: d_model 512, 4 heads, 4 + 4 layers, feed-forward 2048, dropout 0) and the query count
    are read from ``cfg`` and were checked there, once
    (:meth:`nextgpt.config.OutputProjectorConfig._validate`); this module does not re-check them.

    Args:
        cfg: the output projector section.
        in_dim: LLM hidden size (Vicuna-7B: 4096).
        out_dim: decoder conditioning width, the decoder's ``cond_dim`` (SD 1.5: 768, Zeroscope: 1024,
            AudioLDM: 512).
        num_queries: learned queries ``Q`` = conditioning tokens produced; default ``cfg.num_queries``
            (which a ``ModelConfig`` defaults to the decoder's ``cond_tokens``: image/video 77, audio 1).
    """

    def __init__(
        self, cfg: OutputProjectorConfig, in_dim: int, out_dim: int, num_queries: int | None = None
    ) -> None:
        super().__init__()
        num_queries = num_queries if num_queries is not None else cfg.num_queries
        if num_queries is None:
            from nextgpt.errors import ConfigError

            raise ConfigError(
                "output projector: num_queries is unknown; pass it or set projector.num_queries "
                "(a ModelConfig defaults it to the decoder's cond_tokens)"
            )
        self.config = cfg
        self.in_dim = in_dim
        self.out_dim = out_dim
        d = cfg.hidden_dim
        self.fc = nn.Linear(in_dim, d)
        # The encoder is built here only to switch off the nested-tensor fast path, which pre-norm
        # layers cannot use anyway (nn.Transformer would warn); its structure and keys are those
        # nn.Transformer builds itself, and nn.Transformer re-initialises it the same way.
        encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                d, cfg.num_heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True
            ),
            cfg.num_encoder_layers,
            norm=nn.LayerNorm(d),
            enable_nested_tensor=False,
        )
        self.tfm = nn.Transformer(
            d_model=d,
            nhead=cfg.num_heads,
            num_encoder_layers=cfg.num_encoder_layers,
            num_decoder_layers=cfg.num_decoder_layers,
            dim_feedforward=cfg.ff_dim,
            dropout=cfg.dropout,
            batch_first=True,
            norm_first=True,
            custom_encoder=encoder,
        )
        self.model = nn.Linear(d, out_dim)
        self.query_embs = nn.Parameter(torch.randn(1, num_queries, d))  # legacy init: N(0, 1)

    @classmethod
    def from_config(
        cls,
        cfg: OutputProjectorConfig,
        in_dim: int | None = None,
        out_tokens: int | None = None,
        out_dim: int | None = None,
    ) -> TransformerOutputProjector:
        """The registry's builder: ``in_dim``/``out_tokens``/``out_dim`` default to ``cfg``'s derived
        ``in_dim``, ``num_queries`` and ``out_dim``."""
        from nextgpt.errors import ConfigError

        in_dim = in_dim if in_dim is not None else cfg.in_dim
        out_tokens = out_tokens if out_tokens is not None else cfg.num_queries
        out_dim = out_dim if out_dim is not None else cfg.out_dim
        if in_dim is None or out_tokens is None or out_dim is None:
            raise ConfigError(
                "output projector: in_dim/num_queries/out_dim are unknown; pass them explicitly or use a "
                "config whose derived values are set (built inside a ModelConfig)"
            )
        return cls(cfg, int(in_dim), int(out_dim), int(out_tokens))

    @property
    def num_queries(self) -> int:
        """Conditioning tokens produced per sample (``Q``)."""
        return self.query_embs.shape[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x [B, S, in_dim]`` (hidden states + input embeddings of the signal tokens) -> ``[B, Q, out_dim]``.

        ``x`` is cast to the weight dtype.
        """
        if x.dim() != 3 or x.shape[-1] != self.in_dim or x.shape[1] == 0:
            raise ValueError(
                f"TransformerOutputProjector expects signal-token states of shape [B, S>0, {self.in_dim}], "
                f"got {tuple(x.shape)}"
            )
        h = self.fc(x.to(self.fc.weight.dtype))  # (B, S, D)
        queries = self.query_embs.repeat(h.shape[0], 1, 1)  # (B, Q, D)
        h = self.tfm(src=h, tgt=queries)  # (B, Q, D)
        return self.model(h)  # (B, Q, out_dim)


def squeeze_single(cond: torch.Tensor) -> torch.Tensor:
    """``[B, 1, D]`` -> ``[B, D]`` (AudioLDM takes one CLAP embedding per sample); ValueError otherwise."""
    if cond.dim() != 3 or cond.shape[1] != 1:
        raise ValueError(f"squeeze_single expects conditioning of shape [B, 1, D], got {tuple(cond.shape)}")
    return cond[:, 0]
