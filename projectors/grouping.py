"""GroupViT-style grouping input projector (NExT-GPT 2024 design; 8 LLM tokens per media item).

The encoder's patch tokens (ImageBind, CLS dropped: image ``[N, 256, 1024]``, audio ``[N, 228, 1024]``)
are narrowed by ``in_fc`` and then pass through a few *stages*. A stage appends learnable group
("concept") tokens to its input tokens and runs pre-norm transformer layers over the concatenation;
a grouping block then merges the input tokens into a smaller set of new tokens:

1. the group tokens are normalised and mixed along the token axis by an MLP that maps
   ``num_group_tokens[i]`` tokens onto ``num_output_groups[i]`` tokens (then a norm);
2. these attend to the (normalised) input tokens in a cross-attention block (post-norm);
3. every input token is assigned to one group: ``A = softmax((q k^T * scale + G) / tau)`` over the
   groups, with ``q``/``k`` linear maps of the normalised group/input tokens, ``G`` Gumbel noise
   (training only) and a learnable temperature ``tau``. With hard assignment the forward value is the
   one-hot argmax and gradients flow through the soft ``A`` (straight-through: ``hard + A - sg(A)``);
4. each group takes the assignment-weighted average of the (projected) input tokens; the result plus
   the group token goes through a residual MLP and becomes the next stage's input.

Later stages' group tokens also receive a token-mixing projection of the previous stage's group
tokens (as in GroupViT). The last stage has no group tokens and only runs transformer layers over the
tokens of the previous grouping. A final norm and ``out_fc`` map to the LLM width.

Departure from GroupViT: the assignment temperature is a learned parameter per grouping block (stored
as ``log_tau``, clamped to ``[TAU_MIN, inf)``), as the NExT-GPT paper describes; GroupViT fixes it.
The temperature scales the soft assignment in training and eval alike; with hard assignment it only
shapes the gradients (the argmax does not depend on it).

References: Xu et al., "GroupViT: Semantic Segmentation Emerges from Text Supervision" (CVPR 2022) and
its public code (``NVlabs/GroupViT``, ``models/group_vit.py``); Wu et al., "NExT-GPT" (ICML 2024),
App. C.1 and Table 5; the upstream 2024 ``GroupProjector``. Written from the papers and the facts of
those sources, not copied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .linear import _dims, sum_items

if TYPE_CHECKING:
    from nextgpt.config import GroupingConfig, InputProjectorConfig

__all__ = ["TAU_MIN", "GroupingBlock", "GroupingInputProjector", "GroupingStage", "assignment"]

#: Lower bound of the learnable assignment temperature.
TAU_MIN: float = 1e-2


class _Mlp(nn.Module):
    """Linear -> GELU -> Linear on the last dimension."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _TokenMlp(_Mlp):
    """An :class:`_Mlp` over the token axis: ``[B, S_in, C]`` -> ``[B, S_out, C]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, S_in, C) -> (B, C, S_in) -> (B, C, S_out) -> (B, S_out, C)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    b, t, c = x.shape
    return x.view(b, t, num_heads, c // num_heads).transpose(1, 2)  # (B, nh, T, C/nh)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, nh, t, hd = x.shape
    return x.transpose(1, 2).reshape(b, t, nh * hd)  # (B, T, C)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (scaled dot-product attention)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        # (B, T, 3C) -> (B, T, 3, nh, C/nh) -> (3, B, nh, T, C/nh)
        qkv = self.qkv(x).view(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])  # (B, nh, T, C/nh)
        return self.proj(_merge_heads(out))  # (B, T, C)


class _CrossAttention(nn.Module):
    """Multi-head attention of ``query`` tokens to ``key`` tokens (scaled dot-product attention)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        q = _split_heads(self.q_proj(query), self.num_heads)  # (B, nh, S, C/nh)
        k = _split_heads(self.k_proj(key), self.num_heads)  # (B, nh, L, C/nh)
        v = _split_heads(self.v_proj(key), self.num_heads)  # (B, nh, L, C/nh)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, nh, S, C/nh)
        return self.proj(_merge_heads(out))  # (B, S, C)


class _TransformerLayer(nn.Module):
    """Pre-norm transformer layer: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _SelfAttention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _CrossAttentionLayer(nn.Module):
    """Post-norm cross-attention layer: ``norm_post(y + mlp(norm2(y)))`` with ``y = q + attn(q, k)``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.attn = _CrossAttention(dim, num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), dim)
        self.norm_post = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, key)  # (B, S, C)
        x = x + self.mlp(self.norm2(x))
        return self.norm_post(x)


def _gumbel_like(x: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel noise shaped like ``x`` (uniform clamped away from 0 and 1: no infinities)."""
    u = torch.rand_like(x).clamp_(min=torch.finfo(x.dtype).tiny, max=1.0 - torch.finfo(x.dtype).eps)
    return -torch.log(-torch.log(u))


def assignment(
    logits: torch.Tensor, tau: torch.Tensor | float, *, hard: bool, gumbel: bool, dim: int = -2
) -> torch.Tensor:
    """Softmax assignment over ``dim`` (the groups), optionally with Gumbel noise and straight-through.

    Returns ``softmax((logits + G) / tau)`` (``G`` = 0 without ``gumbel``); with ``hard`` the forward
    value is its one-hot argmax along ``dim`` while the gradient is that of the soft value.
    Computed in float32 and returned in ``logits.dtype``.
    """
    z = logits.float()
    if gumbel:
        z = z + _gumbel_like(z)
    soft = torch.softmax(z / tau, dim=dim)
    if not hard:
        return soft.to(logits.dtype)
    index = soft.argmax(dim=dim, keepdim=True)
    one_hot = torch.zeros_like(soft).scatter_(dim, index, 1.0)
    # one_hot + (soft - sg(soft)): the bracket is exactly 0, so the forward value is exactly one-hot
    return (one_hot + (soft - soft.detach())).to(logits.dtype)


class _AssignAttention(nn.Module):
    """Single-head attention whose weights are the group assignment of the input tokens.

    Each input token is assigned to the groups (softmax over groups, see :func:`assignment`); each
    group then averages the value-projected tokens assigned to it (weights divided by their sum plus
    ``assign_eps``, as GroupViT does), and a linear map follows.
    """

    def __init__(
        self, dim: int, *, hard: bool, gumbel: bool, tau_init: float, assign_eps: float = 1.0
    ) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.hard = hard
        self.gumbel = gumbel
        self.assign_eps = assign_eps
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        # Shape (1,), not a scalar: FSDP2 shards only parameters with at least one dimension.
        self.log_tau = nn.Parameter(torch.full((1,), math.log(max(tau_init, TAU_MIN))))

    @property
    def tau(self) -> torch.Tensor:
        """The current temperature, ``exp(log_tau)`` clamped to at least :data:`TAU_MIN`."""
        return self.log_tau.exp().clamp(min=TAU_MIN)

    def attention(self, groups: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Assignment weights ``[B, S, L]`` of ``L`` tokens to ``S`` groups (columns sum to 1)."""
        q = self.q_proj(groups)  # (B, S, C)
        k = self.k_proj(x)  # (B, L, C)
        logits = torch.bmm(q, k.transpose(1, 2)) * self.scale  # (B, S, L)
        return assignment(logits, self.tau, hard=self.hard, gumbel=self.gumbel and self.training, dim=1)

    def forward(self, groups: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        attn = self.attention(groups, x)  # (B, S, L)
        attn = attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps)  # average per group
        return self.proj(torch.bmm(attn, self.v_proj(x)))  # (B, S, C)


class GroupingBlock(nn.Module):
    """Merge ``L`` tokens into ``num_output_groups`` new tokens guided by ``num_group_tokens`` tokens.

    Args:
        dim: token width.
        num_heads: heads of the cross-attention of group tokens to input tokens.
        num_group_tokens: group tokens coming in (``S_1``).
        num_output_groups: tokens going out (``S_2``).
        hard, gumbel, tau_init: assignment settings (see :func:`assignment`).
        mlp_ratio: hidden width of the channel MLPs relative to ``dim``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_group_tokens: int,
        num_output_groups: int,
        *,
        hard: bool,
        gumbel: bool,
        tau_init: float,
        mlp_ratio: float,
    ) -> None:
        super().__init__()
        self.num_group_tokens = num_group_tokens
        self.num_output_groups = num_output_groups
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        # Token-mixing MLP S_1 -> S_2 through dim/2 hidden tokens (GroupViT's choice).
        self.mlp_inter = _TokenMlp(num_group_tokens, max(1, dim // 2), num_output_groups)
        self.norm_post_tokens = nn.LayerNorm(dim)
        self.pre_assign_attn = _CrossAttentionLayer(dim, num_heads, mlp_ratio)
        self.assign = _AssignAttention(dim, hard=hard, gumbel=gumbel, tau_init=tau_init)
        self.norm_new_x = nn.LayerNorm(dim)
        self.mlp_channels = _Mlp(dim, int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> torch.Tensor:
        """``x [B, L, C]``, ``group_tokens [B, S_1, C]`` -> new tokens ``[B, S_2, C]``."""
        group_tokens = self.norm_tokens(group_tokens)  # (B, S_1, C)
        x = self.norm_x(x)  # (B, L, C)
        groups = self.norm_post_tokens(self.mlp_inter(group_tokens))  # (B, S_2, C)
        groups = self.pre_assign_attn(groups, x)  # (B, S_2, C)
        new_x = self.assign(groups, x) + groups  # (B, S_2, C)
        return new_x + self.mlp_channels(self.norm_new_x(new_x))

    def assignment_weights(self, x: torch.Tensor, group_tokens: torch.Tensor) -> torch.Tensor:
        """The assignment ``[B, S_2, L]`` that :meth:`forward` uses (same noise rules; for inspection)."""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        groups = self.pre_assign_attn(self.norm_post_tokens(self.mlp_inter(group_tokens)), x)
        return self.assign.attention(groups, x)


class GroupingStage(nn.Module):
    """One stage: [group tokens ++ tokens] -> ``depth`` transformer layers -> optional grouping.

    Args:
        dim, depth, num_heads, mlp_ratio, qkv_bias: the transformer layers.
        num_group_tokens: learnable group tokens of this stage (0: no grouping, the last stage).
        num_output_groups: tokens the grouping block outputs (ignored without group tokens).
        prev_group_tokens: group tokens of the previous stage (0 if none); when both this and
            ``num_group_tokens`` are positive, a token-mixing MLP of the previous group tokens is added
            to this stage's (then zero-initialised) group tokens.
        hard, gumbel, tau_init: assignment settings.

    The values are not checked here: :class:`GroupingInputProjector` passes those of a
    :class:`~nextgpt.config.GroupingConfig`, which checks them.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        num_group_tokens: int,
        num_output_groups: int,
        *,
        prev_group_tokens: int = 0,
        mlp_ratio: float,
        qkv_bias: bool,
        hard: bool,
        gumbel: bool,
        tau_init: float,
    ) -> None:
        super().__init__()
        self.num_group_tokens = num_group_tokens
        self.layers = nn.ModuleList(
            [_TransformerLayer(dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth)]
        )
        self.group_token: nn.Parameter | None = None
        self.group_projector: nn.Module | None = None
        self.grouping: GroupingBlock | None = None
        if num_group_tokens > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_tokens, dim))
            if prev_group_tokens > 0:
                self.group_projector = nn.Sequential(
                    nn.LayerNorm(dim), _TokenMlp(prev_group_tokens, max(1, dim // 2), num_group_tokens)
                )
            else:  # no projection to lean on: start from small random tokens
                nn.init.trunc_normal_(self.group_token, std=0.02)
            self.grouping = GroupingBlock(
                dim,
                num_heads,
                num_group_tokens,
                num_output_groups,
                hard=hard,
                gumbel=gumbel,
                tau_init=tau_init,
                mlp_ratio=mlp_ratio,
            )

    def forward(
        self, x: torch.Tensor, prev_group_tokens: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x [B, L, C]`` -> (next tokens ``[B, S_2, C]`` or ``[B, L, C]``, group tokens ``[B, S_1, C]`` or None)."""
        b, n = x.shape[0], x.shape[1]
        if self.group_token is None:
            for layer in self.layers:
                x = layer(x)  # (B, L, C)
            return x, None
        groups = self.group_token.expand(b, -1, -1)  # (B, S_1, C)
        if self.group_projector is not None and prev_group_tokens is not None:
            groups = groups + self.group_projector(prev_group_tokens)  # (B, S_1, C)
        h = torch.cat([x, groups], dim=1)  # (B, L + S_1, C)
        for layer in self.layers:
            h = layer(h)
        x, groups = h[:, :n], h[:, n:]  # (B, L, C), (B, S_1, C)
        assert self.grouping is not None
        return self.grouping(x, groups), groups  # (B, S_2, C), (B, S_1, C)


class GroupingInputProjector(nn.Module):
    """Encoder patch tokens ``[N_items, L, in_dim]`` -> ``[N_items, T, out_dim]``, T = num_output_groups[-1].

    Built from its config node, as transformers' LLaVA projector is: every structural fact (width,
    stage lists, heads, assignment settings, tokens per item) is read from ``cfg`` and was checked
    there, once (:meth:`nextgpt.config.GroupingConfig._validate`); this module does not re-check it.

    Args:
        cfg: the grouping section (paper: width 512, depths 6/3/3, 8 heads, group tokens 64/8/0,
            output groups 64/8; hard Gumbel assignment).
        in_dim: encoder token width (the encoder's ``out_embed_dim``; ImageBind huge: 1024).
        out_dim: LLM hidden size (Vicuna-7B: 4096).
        qkv_bias: bias on the self-attention qkv projection (False as in the upstream 2024 projector).
    """

    def __init__(self, cfg: GroupingConfig, in_dim: int, out_dim: int, *, qkv_bias: bool = False) -> None:
        super().__init__()
        self.config = cfg
        self.in_dim = in_dim
        self.out_dim = out_dim
        depths, group_tokens, output_groups = cfg.depths, cfg.num_group_tokens, cfg.num_output_groups

        self.in_fc = nn.Linear(in_dim, cfg.hidden_dim)
        self.stages = nn.ModuleList(
            GroupingStage(
                cfg.hidden_dim,
                depth,
                cfg.num_heads,
                group_tokens[i],
                output_groups[i] if i < len(output_groups) else 0,  # the last stage does no grouping
                prev_group_tokens=group_tokens[i - 1] if i > 0 else 0,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=qkv_bias,
                hard=cfg.hard_assignment,
                gumbel=cfg.gumbel,
                tau_init=cfg.tau_init,
            )
            for i, depth in enumerate(depths)
        )
        self.norm = nn.LayerNorm(cfg.hidden_dim)
        self.out_fc = nn.Linear(cfg.hidden_dim, out_dim)
        self.apply(_init_linear)

    @classmethod
    def from_config(
        cls, cfg: InputProjectorConfig, in_dim: int | None = None, out_dim: int | None = None
    ) -> GroupingInputProjector:
        """The registry's builder: ``cfg.grouping``, with ``in_dim``/``out_dim`` defaulting to the
        ``InputProjectorConfig``'s derived values."""
        in_dim, out_dim = _dims(cfg, in_dim, out_dim)
        return cls(cfg.grouping, in_dim, out_dim)

    @property
    def num_tokens(self) -> int:
        """LLM tokens per media item (the config's ``tokens_per_item``: the last stage's output groups)."""
        return self.config.tokens_per_item

    @property
    def taus(self) -> list[torch.Tensor]:
        """The current assignment temperature of each grouping block."""
        return [s.grouping.assign.tau for s in self.stages if s.grouping is not None]

    def forward(
        self, tokens: torch.Tensor, group_ids: torch.Tensor | Sequence[int] | None = None
    ) -> torch.Tensor:
        """Project patch tokens; with ``group_ids``, sum the output tokens per group (see ``sum_items``).

        Args:
            tokens: ``[N_items, L, in_dim]`` encoder patch tokens, CLS dropped (cast to the weight dtype).
            group_ids: optional, one group id per item.

        Returns:
            ``[N_items, num_tokens, out_dim]`` (or ``[G, num_tokens, out_dim]`` with ``group_ids``).
        """
        if tokens.dim() != 3 or tokens.shape[-1] != self.in_dim or tokens.shape[1] == 0:
            raise ValueError(
                f"GroupingInputProjector expects encoder patch tokens of shape [N_items, L>0, {self.in_dim}], "
                f"got {tuple(tokens.shape)}"
            )
        x = self.in_fc(tokens.to(self.in_fc.weight.dtype))  # (N, L, D)
        groups: torch.Tensor | None = None
        for stage in self.stages:
            # stage i: (N, L_i, D) -> (N, num_output_groups[i], D); the last keeps its token count
            x, groups = stage(x, groups)
        out = self.out_fc(self.norm(x))  # (N, T, out_dim)
        if group_ids is not None:
            out = sum_items(out, group_ids)  # (G, T, out_dim)
        return out


def _init_linear(module: nn.Module) -> None:
    """GroupViT-style init: truncated normal (std 0.02) Linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
