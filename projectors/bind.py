"""ImageBind-LLM's input path: the bind network and its zero-gated injection into every LLM layer.

The bind network (ImageBind-LLM, section 3.2.1 and Fig. 3) maps a pooled ImageBind embedding ``F``
(``[N, 1024]``) into the LLM's width: ``F0 = F W0`` (a linear layer with bias), then three blocks
``F_{i+1} = F_i + (n(F_i) W2 * SiLU(n(F_i) W1)) W3`` with ``n`` RMSNorm (the paper; the code's
"legacy bridge" uses LayerNorm: ``norm: layer``), ``W1, W2: [H, hidden]``, ``W3: [hidden, H]``,
``hidden = hidden_mult * H`` (4H). At H = 4096 that is 608.2M parameters. (The released code names
them ``image_bind_proj`` and ``image_bind_{norm,f1,f2,f3}_k``; its ``legacy_bridge`` uses LayerNorm and
biased linears.)

Injection (eq. 2): the bound feature ``T`` is added to every word token at the input of every
transformer layer, scaled by ``tanh(g)``; ``g`` is one learnable scalar per layer and attention head
(``gates [num_layers, num_heads]``, each head's scale covering its ``head_dim`` channels), initialised
at zero, so training starts from the unchanged LLM. Nothing is attended: no token enters the prompt
(``num_tokens`` is 0). :class:`nextgpt.llm.LanguageModel` adds ``scales()[l] * T`` to the hidden states
entering layer ``l`` through forward pre-hooks (no copy of the transformers modeling file), so it works
on any LLaMA-family model, with LoRA, and with the KV-cache decoding loop (each new token gets its
row's ``T``).

``injection: prefix`` is the released code's variant: in layer ``l`` the adapter
``T + prefix_query[l]`` goes through the layer's value projection and, times ``tanh(g)`` per head,
is added to the attention output before the output projection (with one adapter token the
attention over it is the identity, so no key is needed). It is attention-based injection without
prompt tokens; the paper describes ``add``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from nextgpt.config import InputProjectorConfig

__all__ = ["BindBlock", "BindInputProjector", "bind_parameter_count"]


class BindBlock(nn.Module):
    """``x + (n(x) W2 * SiLU(n(x) W1)) W3`` (a LLaMA FFN with a residual, on a normalised input)."""

    def __init__(self, dim: int, hidden: int, norm: str = "rms") -> None:
        super().__init__()
        bias = norm != "rms"  # the code's LayerNorm "legacy bridge" has biased linears too
        self.norm = nn.RMSNorm(dim, eps=1e-6) if norm == "rms" else nn.LayerNorm(dim)
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        n = self.norm(x)
        return x + self.w3(self.w2(n) * nn.functional.silu(self.w1(n)))


def bind_parameter_count(
    in_dim: int, dim: int, num_blocks: int = 3, hidden_mult: int = 4, norm: str = "rms"
) -> int:
    """Parameters of the bind network (gates not counted): ``in_dim*dim + dim`` for ``W0`` and its bias,
    then per block ``3 * dim * hidden`` and the RMSNorm's ``dim``; with LayerNorm, its ``2 dim`` and
    the linears' biases ``2 hidden + dim``."""
    hidden = hidden_mult * dim
    block = 3 * dim * hidden + (dim if norm == "rms" else 2 * dim + 2 * hidden + dim)
    return in_dim * dim + dim + num_blocks * block


class BindInputProjector(nn.Module):
    """Pooled ImageBind embeddings ``[N, in_dim]`` -> bound features ``[N, out_dim]``, and the
    per-layer, per-head injection gates.

    Args:
        in_dim: ImageBind width (1024).
        out_dim: the LLM's hidden size ``H``.
        num_layers, num_heads: the LLM's layers and attention heads (the gates' shape).
        num_blocks, hidden_mult, norm: the blocks (see the module docstring).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        *,
        num_layers: int,
        num_heads: int,
        num_blocks: int = 3,
        hidden_mult: int = 4,
        norm: str = "rms",
        injection: str = "add",
    ) -> None:
        super().__init__()
        if out_dim % num_heads:
            raise ValueError(f"hidden size {out_dim} is not a multiple of {num_heads} heads")
        self.in_dim, self.out_dim = in_dim, out_dim
        self.proj = nn.Linear(in_dim, out_dim)
        self.blocks = nn.ModuleList(
            BindBlock(out_dim, hidden_mult * out_dim, norm) for _ in range(num_blocks)
        )
        self.gates = nn.Parameter(torch.zeros(num_layers, num_heads))
        self.injection = injection
        # the released code's per-layer query (an nn.Embedding there: N(0, 1) at the start)
        self.prefix_query = nn.Parameter(torch.randn(num_layers, out_dim)) if injection == "prefix" else None

    @classmethod
    def from_config(
        cls,
        cfg: InputProjectorConfig,
        in_dim: int | None = None,
        out_dim: int | None = None,
        *,
        num_layers: int,
        num_heads: int,
    ) -> BindInputProjector:
        """Build from an ``InputProjectorConfig`` (its ``bind`` node); dims default to its derived ones."""
        in_dim = cfg.in_dim if in_dim is None else in_dim
        out_dim = cfg.out_dim if out_dim is None else out_dim
        if in_dim is None or out_dim is None:
            raise ValueError("in_dim/out_dim not derived: build through NextGPTConfig or pass them")
        b = cfg.bind
        return cls(
            in_dim,
            out_dim,
            num_layers=num_layers,
            num_heads=num_heads,
            num_blocks=b.num_blocks,
            hidden_mult=b.hidden_mult,
            norm=b.norm,
            injection=b.injection,
        )

    @property
    def num_tokens(self) -> int:
        """Prompt tokens per media item: none (the feature is injected into the layers)."""
        return 0

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[N, in_dim]`` pooled embeddings -> ``[N, out_dim]`` bound features."""
        if features.dim() != 2 or features.shape[-1] != self.in_dim:
            raise ValueError(
                f"the bind network expects pooled embeddings [N, {self.in_dim}], got {tuple(features.shape)}"
            )
        x = self.proj(features.to(self.proj.weight.dtype))
        for block in self.blocks:
            x = block(x)
        return x

    def scales(self) -> torch.Tensor:
        """``[num_layers, out_dim]``: ``tanh(gate)`` of each layer's heads, each over its channels."""
        head_dim = self.out_dim // self.gates.shape[1]
        return torch.tanh(self.gates).repeat_interleave(head_dim, dim=1)
