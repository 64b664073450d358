"""LoRA Mixture-of-Experts (LLMBind section 3.2): the layer against a hand computation, its balance
loss, its gradients, and the layer inside the tiny model (trains, saves, loads)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nextgpt.errors import ConfigError
from nextgpt.moe import LoraMoELinear, moe_aux_loss, moe_layers


def _layer(experts=3, top_k=2, r=2, alpha=4.0, aux_alpha=0.5, seed=0):
    torch.manual_seed(seed)
    base = nn.Linear(4, 5, bias=True)
    base.requires_grad_(False)
    layer = LoraMoELinear(base, r=r, alpha=alpha, experts=experts, top_k=top_k, aux_alpha=aux_alpha)
    with torch.no_grad():  # B is zero at init: give it values so the experts contribute
        layer.lora_moe_B.normal_()
    return layer


def test_output_equals_a_hand_computation():
    layer = _layer()
    x = torch.randn(2, 3, 4)
    got = layer(x)
    w0, b0 = layer.base.weight, layer.base.bias
    expected = torch.empty(2, 3, 5)
    for i in range(2):
        for t in range(3):
            v = x[i, t]
            logits = torch.stack([v @ layer.lora_moe_router[:, e] for e in range(3)])
            p = [math.exp(z) / sum(math.exp(q) for q in logits.tolist()) for z in logits.tolist()]
            chosen = sorted(range(3), key=lambda e: -p[e])[:2]
            norm = sum(p[e] for e in chosen)
            o = w0 @ v + b0
            for e in chosen:  # (alpha / r) * w_e * B_e A_e x
                o = o + (4.0 / 2) * (p[e] / norm) * (layer.lora_moe_B[e] @ (layer.lora_moe_A[e] @ v))
            expected[i, t] = o
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_fresh_layer_is_the_base_linear():
    torch.manual_seed(1)
    base = nn.Linear(6, 7)
    layer = LoraMoELinear(base, r=2, alpha=4, experts=4, top_k=2, aux_alpha=0.01)
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), base(x))  # B starts at zero, as LoRA's


def test_balance_loss_equals_its_definition():
    layer = _layer(experts=4, top_k=2, aux_alpha=0.5)
    x = torch.randn(10, 4)
    layer(x)
    probs = (x @ layer.lora_moe_router).softmax(-1)
    # f_i: fraction of the 10 tokens whose argmax is i; P_i: mean probability of i
    f = torch.tensor([(probs.argmax(-1) == i).float().mean() for i in range(4)])
    p = probs.mean(0)
    assert layer.last_aux.detach().item() == pytest.approx(0.5 * 4 * float((f * p).sum()), rel=1e-6)
    # a perfectly balanced router gives the minimum alpha * N * sum (1/N)(1/N) = alpha
    uniform = torch.full((8, 4), 0.25)
    uniform[torch.arange(8), torch.arange(8) % 4] += 1e-3  # argmax spread evenly over the experts
    assert layer.balance_loss(uniform / uniform.sum(-1, keepdim=True)).item() == pytest.approx(0.5, rel=1e-2)


def test_gradients_reach_only_the_chosen_experts():
    layer = _layer(experts=4, top_k=2)
    x = torch.randn(1, 4)
    _, weights = layer.route(x)
    chosen = set(torch.nonzero(weights[0]).flatten().tolist())
    assert len(chosen) == 2
    layer(x).sum().backward()
    for e in range(4):
        grad_a = layer.lora_moe_A.grad[e].abs().sum().item()
        grad_b = layer.lora_moe_B.grad[e].abs().sum().item()
        if e in chosen:
            assert grad_a > 0 and grad_b > 0
        else:
            assert grad_a == 0 and grad_b == 0
    assert layer.lora_moe_router.grad.abs().sum() > 0  # the router learns through the weights
    assert layer.base.weight.grad is None  # W0 frozen


def test_bad_top_k_is_a_config_error():
    with pytest.raises(ConfigError, match="top_k"):
        LoraMoELinear(nn.Linear(2, 2), r=1, alpha=1, experts=2, top_k=3, aux_alpha=0.01)


MOE = [
    "model.llm.moe.enabled=true",
    "model.llm.moe.layers=[0]",
    "model.llm.moe.experts=3",
    "model.llm.moe.top_k=2",
    "model.llm.moe.r=2",
]


def test_tiny_model_with_moe_trains_saves_and_loads(tmp_path):
    from nextgpt import NextGPT

    model = NextGPT.from_preset("tiny", MOE)
    layers = moe_layers(model.llm)
    assert len(layers) == 3  # gate_proj, up_proj, down_proj of layer 0
    names = [n for n in model.trainable_state_dict() if "lora_moe_" in n]
    assert len(names) == 9  # A, B, router of each
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    labels = ids.clone()
    losses = model.compute_losses(ids, torch.ones_like(ids), labels, [])
    assert "moe_aux_loss" in losses and losses["moe_aux_loss"].item() > 0
    assert losses["loss"].item() == pytest.approx(
        (losses["lm_loss"] + model.config.model.llm.moe.aux_weight * losses["moe_aux_loss"]).item(), rel=1e-6
    )
    losses["loss"].backward()
    assert all(p.grad is not None for p in (layers[0].lora_moe_A, layers[0].lora_moe_router))
    with torch.no_grad():
        for m in layers:
            m.lora_moe_B.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = NextGPT.from_pretrained(tmp_path / "m")
    for a, b in zip(layers, moe_layers(loaded.llm)):
        torch.testing.assert_close(a.lora_moe_B, b.lora_moe_B)
    x = model.llm.embed(ids)
    torch.testing.assert_close(model.llm(x).hidden, loaded.llm(loaded.llm.embed(ids)).hidden)
    assert moe_aux_loss(loaded.llm) is not None


def test_moe_config_errors():
    from nextgpt import NextGPT

    with pytest.raises(ConfigError, match="layers"):
        NextGPT.from_preset("tiny", ["model.llm.moe.enabled=true", "model.llm.moe.layers=[]"])
    with pytest.raises(ConfigError, match="layer index|layers"):
        NextGPT.from_preset("tiny", ["model.llm.moe.enabled=true", "model.llm.moe.layers=[99]"])
    with pytest.raises(ConfigError, match="top_k"):
        NextGPT.from_preset("tiny", [*MOE, "model.llm.moe.top_k=4"])


FAST = ["training.num_workers=0", "training.log_every_n_steps=1", "training.checkpoint_every_n_steps=10"]


def test_stage3_trains_the_experts_and_stage2_leaves_them(demo_data, tmp_path):
    import csv

    from nextgpt import NextGPT
    from nextgpt.stages.modules import select_trainable
    from nextgpt.stages.train import train

    model = NextGPT.from_preset("tiny", MOE)
    moe_names = {n for n in model.trainable_state_dict() if "lora_moe_" in n}
    assert moe_names <= set(select_trainable(model, 3))  # trained with LoRA (stage 3) ...
    assert not moe_names & set(select_trainable(NextGPT.from_preset("tiny", MOE), 2))  # ... not in stage 2
    before = {n: t.clone() for n, t in model.trainable_state_dict().items() if n in moe_names}
    out = train(3, "tiny", demo_data, tmp_path, [*FAST, *MOE, "training.stages.3.lr=1e-2"], max_steps=3)
    trained = NextGPT.from_pretrained(out)
    after = trained.trainable_state_dict()
    changed = [n for n in moe_names if not torch.equal(before[n], after[n].to(before[n]))]
    assert any("lora_moe_B" in n for n in changed) and any("lora_moe_router" in n for n in changed)
    attention_lora = [n for n in after if "lora_A" in n and "lora_moe" not in n]
    assert attention_lora  # the attention LoRA is there beside the experts
    rows = list(csv.DictReader(open(next((tmp_path / "stage3" / "logs").glob("version_*/metrics.csv")))))
    assert any(r.get("train/moe_aux_loss") for r in rows)


def test_generate_with_experts_and_merged_attention_lora():
    from nextgpt import NextGPT

    model = NextGPT.from_preset("tiny", MOE)
    with torch.no_grad():
        for m in moe_layers(model.llm):
            m.lora_moe_B.normal_(std=0.5)  # experts that change the answer
    ids = torch.tensor([[1, 5, 9, 13]])
    unmerged = model.llm(model.llm.embed(ids)).logits
    model.llm.set_lora_merged(True)  # the attention LoRA merges; the experts stay per token
    torch.testing.assert_close(model.llm(model.llm.embed(ids)).logits, unmerged, rtol=1e-4, atol=1e-4)
    model.llm.set_lora_merged(False)
    out = model.generate("hi", modalities=["text"], max_new_tokens=4)
    assert len(out.token_ids) >= 1


def test_bf16_llm_with_experts_under_autocast():
    from nextgpt import NextGPT

    model = NextGPT.from_preset("tiny", [*MOE, "model.llm.dtype=bfloat16"])
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.compute_losses(ids, torch.ones_like(ids), ids.clone(), [])
    assert torch.isfinite(losses["loss"]) and torch.isfinite(losses["moe_aux_loss"])
    losses["loss"].backward()
    layer = moe_layers(model.llm)[0]
    assert layer.lora_moe_A.dtype == torch.float32 and layer.lora_moe_router.grad is not None
