"""LoRA Mixture-of-Experts in the LLM's FFN linears (LLMBind, section 3.2; REFERENCE.md section 3).

Each chosen linear ``o = W0 x`` becomes

    o = W0 x + (alpha / r) * sum_i w_i(x) B_i A_i x,   w = top-k of softmax(x Wg), renormalised,

with ``N`` low-rank experts ``A_i [r, in]``, ``B_i [out, r]`` and the router ``Wg [in, N]``; ``W0``
stays frozen. Only the ``top_k`` experts of a token get a nonzero weight, so the others receive
exactly zero gradient from it. The experts are computed as one ``[tokens, N * r]`` product (the
weights scale each expert's rank-r activations), never as ``N`` full-width outputs.

Each layer also records the load-balancing loss of its last forward (LLMBind eq. 10-12, the Switch
Transformer's form): ``aux = alpha_aux * N * sum_i f_i P_i``, ``f_i`` the fraction of the ``T``
tokens whose most probable expert is ``i`` (the argmax, as the paper writes it, also with top-2
routing), ``P_i`` the mean router probability of expert ``i``. ``T`` counts every position of the
batch, padding included (the linear does not see the attention mask).

The parameters are named ``lora_moe_A``, ``lora_moe_B`` and ``lora_moe_router``: they are LoRA
weights to the rest of the library (``LanguageModel.trainable_parameters``), so they train, save and
load with the existing LoRA. They are not merged into ``W0`` for inference: the routing depends on
each token, so there is no single matrix to fold in.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from nextgpt.errors import ConfigError

if TYPE_CHECKING:
    from nextgpt.config import LoRAMoEConfig


class LoraMoELinear(nn.Module):
    """A frozen linear plus ``experts`` LoRA experts mixed per token by a top-k router.

    Args:
        base: the frozen ``nn.Linear`` (its weight and bias are used as they are).
        r: rank of each expert.
        alpha: LoRA scale numerator (output scale ``alpha / r``).
        experts: number of experts ``N``.
        top_k: experts mixed per token.
        aux_alpha: the coefficient ``alpha`` of the load-balancing loss.
    """

    def __init__(
        self, base: nn.Linear, *, r: int, alpha: float, experts: int, top_k: int, aux_alpha: float
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= experts:
            raise ConfigError(f"model.llm.moe.top_k must be in [1, experts={experts}], got {top_k}")
        self.base = base
        self.r, self.experts, self.top_k = r, experts, top_k
        self.scaling = alpha / r
        self.aux_alpha = aux_alpha
        # float32 master weights (the frozen base may be bf16); A as LoRA initialises it (Kaiming
        # uniform), B zero, so a fresh layer computes exactly W0 x; the router small and random
        self.lora_moe_A = nn.Parameter(torch.empty(experts, r, base.in_features, device=base.weight.device))
        self.lora_moe_B = nn.Parameter(torch.zeros(experts, base.out_features, r, device=base.weight.device))
        self.lora_moe_router = nn.Parameter(torch.empty(base.in_features, experts, device=base.weight.device))
        for e in range(experts):
            nn.init.kaiming_uniform_(self.lora_moe_A.data[e], a=math.sqrt(5))
        nn.init.normal_(self.lora_moe_router, std=base.in_features**-0.5)
        self.last_aux: torch.Tensor | None = None

    @property
    def in_features(self) -> int:
        """The base linear's input width."""
        return self.base.in_features

    @property
    def out_features(self) -> int:
        """The base linear's output width."""
        return self.base.out_features

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Router probabilities ``[..., N]`` (float32) and the mixing weights ``[..., N]``: the top-k
        probabilities renormalised to sum to 1, zero elsewhere."""
        probs = (x.to(self.lora_moe_router.dtype) @ self.lora_moe_router).float().softmax(dim=-1)
        top_w, top_i = probs.topk(self.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(-1, top_i, top_w / top_w.sum(dim=-1, keepdim=True))
        return probs, weights

    def balance_loss(self, probs: torch.Tensor) -> torch.Tensor:
        """``aux_alpha * N * sum_i f_i P_i`` over every position of ``probs [..., N]``."""
        flat = probs.reshape(-1, self.experts)
        f = nn.functional.one_hot(flat.argmax(dim=-1), self.experts).float().mean(dim=0)
        p = flat.mean(dim=0)
        return self.aux_alpha * self.experts * (f * p).sum()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``W0 x + (alpha / r) sum_i w_i B_i A_i x``; records :attr:`last_aux`."""
        out = self.base(x)
        probs, weights = self.route(x)
        self.last_aux = self.balance_loss(probs)
        h = x.to(self.lora_moe_A.dtype)
        low = torch.einsum("...i,eri->...er", h, self.lora_moe_A)  # [..., N, r]
        mixed = (low * weights.to(low.dtype).unsqueeze(-1)).flatten(-2)  # [..., N * r]
        b = self.lora_moe_B.permute(1, 0, 2).reshape(self.out_features, self.experts * self.r)  # [out, N*r]
        return out + (self.scaling * (mixed @ b.T)).to(out.dtype)


def add_lora_moe(layers: nn.ModuleList, cfg: LoRAMoEConfig, *, seed: int = 0) -> list[str]:
    """Replace the ``cfg.target_modules`` linears of the decoder layers ``cfg.layers`` with
    :class:`LoraMoELinear` (seeded); returns the replaced module names (``"<layer>.<path>"``).

    Raises:
        ConfigError: a layer index out of range, or a target missing / not a linear in a layer.
    """
    replaced: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        for idx in cfg.layers:
            if not 0 <= idx < len(layers):
                raise ConfigError(
                    f"model.llm.moe.layers: {idx} is not a layer index (the LLM has {len(layers)})"
                )
            layer = layers[idx]
            for target in cfg.target_modules:
                found = [
                    (name, m) for name, m in layer.named_modules() if name.split(".")[-1] == target and name
                ]
                if not found or not all(isinstance(m, nn.Linear) for _, m in found):
                    raise ConfigError(
                        f"model.llm.moe.target_modules: no linear '{target}' in layer {idx} "
                        f"({type(layer).__name__}); FFN linears are e.g. gate_proj, up_proj, down_proj"
                    )
                for name, module in found:
                    parent = layer.get_submodule(name.rsplit(".", 1)[0]) if "." in name else layer
                    moe = LoraMoELinear(
                        module,
                        r=cfg.r,
                        alpha=cfg.alpha,
                        experts=cfg.experts,
                        top_k=cfg.top_k,
                        aux_alpha=cfg.aux_alpha,
                    )
                    setattr(parent, name.rsplit(".", 1)[-1], moe)
                    replaced.append(f"{idx}.{name}")
    return replaced


def moe_layers(module: nn.Module) -> list[LoraMoELinear]:
    """Every :class:`LoraMoELinear` inside ``module``, in module order."""
    return [m for m in module.modules() if isinstance(m, LoraMoELinear)]


def moe_aux_loss(module: nn.Module) -> torch.Tensor | None:
    """The sum over MoE layers of the balance loss of their last forward (``None``: no MoE layer)."""
    losses = [m.last_aux for m in moe_layers(module) if m.last_aux is not None]
    return torch.stack(losses).sum() if losses else None
