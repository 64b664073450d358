"""Tests of nextgpt.projectors: legacy linear and transformer projectors, grouping projector, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from nextgpt.config import GroupingConfig, InputProjectorConfig, OutputProjectorConfig
from nextgpt.errors import ConfigError
from nextgpt.projectors import (
    INPUT_PROJECTORS,
    LEGACY_KEYS,
    LEGACY_PREFIX,
    OUTPUT_PROJECTORS,
    GroupingInputProjector,
    LinearInputProjector,
    TransformerOutputProjector,
    assignment,
    build_input_projector,
    build_output_projector,
    squeeze_single,
    sum_items,
)

# ----------------------------------------------------------------------------------------------
# Output projector (legacy TextFcLayer, transformer mode)
# ----------------------------------------------------------------------------------------------

SMALL_OUT_CFG = OutputProjectorConfig(
    hidden_dim=16, num_heads=4, num_encoder_layers=2, num_decoder_layers=2, ff_dim=32, num_queries=5
)


def _small_output() -> TransformerOutputProjector:
    """in 24 -> 5 queries x 6."""
    return TransformerOutputProjector(SMALL_OUT_CFG, in_dim=24, out_dim=6)


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Random values for every parameter, norms included, so that pre/post-norm differ visibly."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def _layer_norm(x: torch.Tensor, ln: nn.LayerNorm) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _mha(q_in: torch.Tensor, kv_in: torch.Tensor, attn: nn.MultiheadAttention) -> torch.Tensor:
    d = q_in.shape[-1]
    h = attn.num_heads
    wq, wk, wv = attn.in_proj_weight.split(d)
    bq, bk, bv = attn.in_proj_bias.split(d)
    b, tq, tk = q_in.shape[0], q_in.shape[1], kv_in.shape[1]
    q = (q_in @ wq.T + bq).view(b, tq, h, d // h).transpose(1, 2)
    k = (kv_in @ wk.T + bk).view(b, tk, h, d // h).transpose(1, 2)
    v = (kv_in @ wv.T + bv).view(b, tk, h, d // h).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // h)
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, tq, d)
    return out @ attn.out_proj.weight.T + attn.out_proj.bias


def _ffn(x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    hidden = torch.clamp(x @ layer.linear1.weight.T + layer.linear1.bias, min=0.0)  # ReLU
    return hidden @ layer.linear2.weight.T + layer.linear2.bias


def _manual_encoder_layer(x: torch.Tensor, layer: nn.TransformerEncoderLayer) -> torch.Tensor:
    h = _layer_norm(x, layer.norm1)
    x = x + _mha(h, h, layer.self_attn)
    return x + _ffn(_layer_norm(x, layer.norm2), layer)


def _manual_decoder_layer(
    t: torch.Tensor, mem: torch.Tensor, layer: nn.TransformerDecoderLayer
) -> torch.Tensor:
    h = _layer_norm(t, layer.norm1)
    t = t + _mha(h, h, layer.self_attn)
    t = t + _mha(_layer_norm(t, layer.norm2), mem, layer.multihead_attn)
    return t + _ffn(_layer_norm(t, layer.norm3), layer)


def _manual_projector(proj: TransformerOutputProjector, x: torch.Tensor) -> torch.Tensor:
    h = x @ proj.fc.weight.T + proj.fc.bias
    for layer in proj.tfm.encoder.layers:
        h = _manual_encoder_layer(h, layer)
    mem = _layer_norm(h, proj.tfm.encoder.norm)
    t = proj.query_embs.expand(x.shape[0], -1, -1)
    for layer in proj.tfm.decoder.layers:
        t = _manual_decoder_layer(t, mem, layer)
    t = _layer_norm(t, proj.tfm.decoder.norm)
    return t @ proj.model.weight.T + proj.model.bias


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])  # no_grad may take torch's fast path
def test_output_projector_matches_manual_pre_norm_computation(grad: bool) -> None:
    proj = _small_output().eval()
    _randomise(proj)
    x = torch.randn(3, 4, 24)
    with torch.set_grad_enabled(grad):
        out = proj(x)
        expected = _manual_projector(proj, x)
    assert out.shape == (3, 5, 6)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_output_projector_encoder_layer_is_pre_norm_relu() -> None:
    proj = _small_output()
    _randomise(proj, seed=1)
    layer = proj.tfm.encoder.layers[0]
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x), _manual_encoder_layer(x, layer), atol=1e-5, rtol=1e-4)
    # The manual computation is sensitive to the choice: a post-norm or GELU layer would not match it.
    post = nn.TransformerEncoderLayer(16, 4, 32, 0.0, batch_first=True, norm_first=False)
    gelu = nn.TransformerEncoderLayer(16, 4, 32, 0.0, activation="gelu", batch_first=True, norm_first=True)
    for other in (post, gelu):
        other.load_state_dict(layer.state_dict())
        assert not torch.allclose(other(x), _manual_encoder_layer(x, layer), atol=1e-3)


@pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")  # the plain nn.Transformer warns
def test_output_projector_equals_plain_transformer_with_same_weights() -> None:
    proj = _small_output()
    _randomise(proj, seed=2)
    fc, model = nn.Linear(24, 16), nn.Linear(16, 6)
    tfm = nn.Transformer(
        d_model=16,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=32,
        dropout=0.0,
        batch_first=True,
        norm_first=True,
    )
    fc.load_state_dict(proj.fc.state_dict())
    model.load_state_dict(proj.model.state_dict())
    tfm.load_state_dict(proj.tfm.state_dict())
    x = torch.randn(2, 3, 24)
    expected = model(tfm(fc(x), proj.query_embs.detach().repeat(2, 1, 1)))
    torch.testing.assert_close(proj(x), expected)


def _reference_keys() -> set[str]:
    """The output-projector keys a legacy checkpoint holds per modality (REFERENCE 1.3), unprefixed."""
    keys = {"fc.weight", "fc.bias", "model.weight", "model.bias", "query_embs"}
    attn = ["in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"]
    wb = ["weight", "bias"]
    for i in range(4):
        e = f"tfm.encoder.layers.{i}."
        keys |= {e + "self_attn." + a for a in attn}
        keys |= {e + m + "." + p for m in ("linear1", "linear2", "norm1", "norm2") for p in wb}
        d = f"tfm.decoder.layers.{i}."
        keys |= {d + s + "." + a for s in ("self_attn", "multihead_attn") for a in attn}
        keys |= {d + m + "." + p for m in ("linear1", "linear2", "norm1", "norm2", "norm3") for p in wb}
    keys |= {
        "tfm.encoder.norm.weight",
        "tfm.encoder.norm.bias",
        "tfm.decoder.norm.weight",
        "tfm.decoder.norm.bias",
    }
    return keys


# Exact parameter counts at NExT-GPT 7B sizes (REFERENCE 1.2: "about 31.9M each").
EXPECTED_PARAMS = {
    "image": (77, 768, 31_958_784),
    "video": (77, 1024, 32_090_112),
    "audio": (1, 512, 31_788_544),
}


@pytest.mark.parametrize("modality", ["image", "video", "audio"])
def test_output_projector_legacy_keys_shapes_and_size(modality: str) -> None:
    q, out_dim, n_params = EXPECTED_PARAMS[modality]
    proj = TransformerOutputProjector(OutputProjectorConfig(num_queries=q), in_dim=4096, out_dim=out_dim)
    state = proj.state_dict()
    assert set(state) == _reference_keys()
    assert state["fc.weight"].shape == (512, 4096)
    assert state["tfm.encoder.layers.0.self_attn.in_proj_weight"].shape == (1536, 512)
    assert state["tfm.decoder.layers.3.linear1.weight"].shape == (2048, 512)
    assert state["model.weight"].shape == (out_dim, 512)
    assert state["query_embs"].shape == (1, q, 512)
    total = sum(p.numel() for p in proj.parameters())
    assert total == n_params
    assert abs(total - 31.9e6) / 31.9e6 < 0.01
    # A legacy-prefixed state dict loads strictly after dropping the prefix.
    prefix = LEGACY_PREFIX[modality]
    legacy = {prefix + k: torch.full_like(v, 0.5) for k, v in state.items()}
    proj.load_state_dict(
        {k[len(prefix) :]: v for k, v in legacy.items() if k.startswith(prefix)}, strict=True
    )
    assert torch.all(proj.query_embs == 0.5)
    with torch.no_grad():
        out = proj(torch.randn(2, 4, 4096))
    assert out.shape == (2, q, out_dim)
    if q == 1:
        assert squeeze_single(out).shape == (2, out_dim)


def test_output_projector_bad_inputs() -> None:
    proj = _small_output()
    for bad in (torch.randn(4, 24), torch.randn(2, 3, 25), torch.randn(2, 0, 24)):
        with pytest.raises(ValueError, match=r"\[B, S>0, 24\]"):
            proj(bad)
    with pytest.raises(ConfigError, match="divisible"):  # the rule lives in the config
        OutputProjectorConfig(hidden_dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"\[B, 1, D\]"):
        squeeze_single(torch.randn(2, 3, 4))


def test_output_projector_from_config_and_registry() -> None:
    cfg = OutputProjectorConfig(
        hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ff_dim=8, num_queries=3
    )
    proj = build_output_projector(cfg, 24, None, 10)  # out_tokens from cfg.num_queries
    assert isinstance(proj, TransformerOutputProjector)
    assert proj.num_queries == 3
    assert proj(torch.randn(2, 4, 24)).shape == (2, 3, 10)
    assert proj.tfm.encoder.layers[0].linear1.out_features == 8
    with pytest.raises(ConfigError, match="out_dim"):
        TransformerOutputProjector.from_config(
            cfg, in_dim=24
        )  # cfg.out_dim is not derived outside a ModelConfig


# ----------------------------------------------------------------------------------------------
# Linear input projector
# ----------------------------------------------------------------------------------------------


def test_linear_projector_shapes_and_legacy_keys() -> None:
    proj = LinearInputProjector(in_dim=8, out_dim=12)
    assert proj.num_tokens == 1
    assert set(proj.state_dict()) == set(LEGACY_KEYS.values())
    legacy = {"llama_proj.weight": torch.randn(12, 8), "llama_proj.bias": torch.randn(12)}
    proj.load_state_dict({LEGACY_KEYS[k]: v for k, v in legacy.items()}, strict=True)
    x = torch.randn(3, 8)
    out = proj(x)
    assert out.shape == (3, 1, 12)
    torch.testing.assert_close(out[:, 0], x @ legacy["llama_proj.weight"].T + legacy["llama_proj.bias"])
    assert LinearInputProjector().proj.weight.shape == (4096, 1024)  # legacy llama_proj [4096, 1024]
    for bad in (torch.randn(3, 9), torch.randn(3, 1, 8), torch.randn(8)):
        with pytest.raises(ValueError, match=r"\[N_items, 8\]"):
            proj(bad)


def test_linear_projector_sums_items_after_projection() -> None:
    proj = LinearInputProjector(in_dim=8, out_dim=12)
    with torch.no_grad():
        proj.proj.bias.fill_(1.0)
    x = torch.randn(3, 8)
    out = proj(x, group_ids=[0, 1, 0])
    assert out.shape == (2, 1, 12)
    single = proj(x)
    torch.testing.assert_close(out[0], single[0] + single[2])  # legacy: each item keeps its bias
    torch.testing.assert_close(out[1], single[1])
    summed_first = proj(x[[0]] + x[[2]])[0]
    torch.testing.assert_close(out[0] - summed_first, torch.ones(1, 12))  # differs by one extra bias
    torch.testing.assert_close(
        sum_items(torch.arange(4.0), torch.tensor([1, 0, 1, 1])), torch.tensor([1.0, 5.0])
    )
    for bad in ([0, 2, 0], [0, 1], [-1, 0, 0], [0.0, 1.0, 0.0]):
        with pytest.raises(ValueError, match="group_ids"):
            proj(x, group_ids=bad)


# ----------------------------------------------------------------------------------------------
# Grouping input projector
# ----------------------------------------------------------------------------------------------

SMALL_GROUP = dict(
    hidden_dim=32,
    depths=[1, 1, 1],
    num_heads=4,
    num_group_tokens=[8, 4, 0],
    num_output_groups=[8, 4],
)


def _small_grouping(seed: int = 0, **overrides: object) -> GroupingInputProjector:
    """in 32 -> 4 tokens x 48; ``overrides`` are GroupingConfig fields."""
    torch.manual_seed(seed)
    return GroupingInputProjector(GroupingConfig(**{**SMALL_GROUP, **overrides}), in_dim=32, out_dim=48)


@pytest.mark.parametrize("length", [256, 228], ids=["image", "audio"])
def test_grouping_output_shape(length: int) -> None:
    proj = _small_grouping().eval()
    assert proj.num_tokens == 4
    out = proj(torch.randn(3, length, 32))
    assert out.shape == (3, 4, 48)
    assert torch.isfinite(out).all()
    summed = proj(torch.randn(3, length, 32), group_ids=[0, 0, 1])
    assert summed.shape == (2, 4, 48)


def test_grouping_paper_stage_layout_gives_8_tokens() -> None:
    # Paper stage lists (depths 6/3/3, group tokens 64/8/0, output groups 64/8) at a narrow width.
    torch.manual_seed(0)
    proj = GroupingInputProjector(GroupingConfig(hidden_dim=32, num_heads=8), in_dim=1024, out_dim=64).eval()
    assert proj.num_tokens == 8
    with torch.no_grad():
        assert proj(torch.randn(2, 256, 1024)).shape == (2, 8, 64)
    assert [s.group_token.shape[1] if s.group_token is not None else 0 for s in proj.stages] == [64, 8, 0]


def _capture_assignments(proj: GroupingInputProjector) -> list[torch.Tensor]:
    """Record the assignment weights each grouping block computes during forward."""
    seen: list[torch.Tensor] = []
    for stage in proj.stages:
        if stage.grouping is None:
            continue
        assign = stage.grouping.assign
        original = assign.attention

        def wrapped(groups: torch.Tensor, x: torch.Tensor, _orig=original) -> torch.Tensor:
            a = _orig(groups, x)
            seen.append(a.detach())
            return a

        assign.attention = wrapped  # instance attribute shadows the method
    return seen


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_grouping_hard_assignment_is_one_hot(train: bool) -> None:
    proj = _small_grouping().train(train)
    seen = _capture_assignments(proj)
    proj(torch.randn(2, 20, 32))
    assert [a.shape for a in seen] == [(2, 8, 20), (2, 4, 8)]  # (B, groups, tokens) per block
    for a in seen:
        assert set(a.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(a.sum(dim=1), torch.ones(a.shape[0], a.shape[2]))  # one group per token
    soft = _small_grouping(hard_assignment=False).train(train)
    seen = _capture_assignments(soft)
    soft(torch.randn(2, 20, 32))
    for a in seen:
        torch.testing.assert_close(a.sum(dim=1), torch.ones(a.shape[0], a.shape[2]))
        assert ((a > 0) & (a < 1)).any()


def test_assignment_function_straight_through() -> None:
    logits = torch.randn(2, 5, 7, requires_grad=True)
    tau = torch.tensor(0.7, requires_grad=True)
    hard = assignment(logits, tau, hard=True, gumbel=False, dim=1)
    soft = assignment(logits, tau, hard=False, gumbel=False, dim=1)
    torch.testing.assert_close(soft, torch.softmax(logits / tau, dim=1))
    expected = torch.zeros_like(soft).scatter_(1, logits.argmax(1, keepdim=True), 1.0)
    torch.testing.assert_close(hard, expected)
    weights = torch.randn(2, 5, 7)
    (g_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    (g_soft,) = torch.autograd.grad((soft * weights).sum(), logits)
    torch.testing.assert_close(g_hard, g_soft)  # straight-through: the soft gradient
    assert g_hard.abs().sum() > 0


def test_grouping_gradients_reach_every_trainable_part() -> None:
    proj = _small_grouping().train()
    out = proj(torch.randn(2, 20, 32))
    ((out - torch.randn_like(out)) ** 2).mean().backward()

    def nonzero(p: torch.Tensor) -> bool:
        return p.grad is not None and p.grad.abs().sum().item() > 0

    assert nonzero(proj.in_fc.weight)
    assert nonzero(proj.out_fc.weight)
    assert nonzero(proj.stages[0].group_token)
    assert nonzero(proj.stages[1].group_token)
    for stage in proj.stages[:2]:
        assign = stage.grouping.assign
        assert nonzero(assign.log_tau)  # learnable temperature
        assert nonzero(assign.q_proj.weight)  # only reachable through the straight-through estimator
        assert nonzero(assign.k_proj.weight)
    assert all(0 < t.item() for t in proj.taus)


def test_grouping_eval_is_deterministic_train_is_noisy() -> None:
    proj = _small_grouping()
    x = torch.randn(2, 30, 32)
    proj.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        a = proj(x)
        torch.manual_seed(1)
        b = proj(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    proj.train()
    with torch.no_grad():
        torch.manual_seed(0)
        c = proj(x)
        torch.manual_seed(1)
        d = proj(x)
        torch.manual_seed(0)
        e = proj(x)
    assert not torch.allclose(c, d)
    torch.testing.assert_close(c, e, rtol=0, atol=0)
    quiet = _small_grouping(gumbel=False).train()
    with torch.no_grad():
        torch.manual_seed(0)
        f = quiet(x)
        torch.manual_seed(1)
        torch.testing.assert_close(quiet(x), f, rtol=0, atol=0)


def test_grouping_trains_end_to_end() -> None:
    proj = _small_grouping(seed=3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 24, 32, generator=g)
    target = torch.randn(4, 4, 48, generator=g)

    def eval_loss() -> float:
        proj.eval()
        with torch.no_grad():
            return torch.nn.functional.mse_loss(proj(x), target).item()

    before = eval_loss()
    log_taus = [s.grouping.assign.log_tau.detach().clone() for s in proj.stages[:2]]
    opt = torch.optim.Adam(proj.parameters(), lr=3e-3)
    proj.train()
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.mse_loss(proj(x), target).backward()
        opt.step()
    after = eval_loss()
    assert after < 0.5 * before, (before, after)
    assert any(not torch.equal(t, s.grouping.assign.log_tau) for t, s in zip(log_taus, proj.stages[:2]))


def test_grouping_bad_inputs_and_structure() -> None:
    proj = _small_grouping()
    for bad in (torch.randn(2, 32), torch.randn(2, 10, 31), torch.randn(2, 0, 32), torch.randn(1, 2, 10, 32)):
        with pytest.raises(ValueError, match=r"\[N_items, L>0, 32\]"):
            proj(bad)
    # The structure rules live in the config (GroupingConfig._validate), checked once when it is built.
    with pytest.raises(ConfigError, match="num_group_tokens"):
        GroupingConfig(**{**SMALL_GROUP, "num_group_tokens": [8, 4, 2]})
    with pytest.raises(ConfigError, match="num_output_groups"):
        GroupingConfig(**{**SMALL_GROUP, "num_output_groups": [8]})
    with pytest.raises(ConfigError, match="divisible"):
        GroupingConfig(**{**SMALL_GROUP, "num_heads": 5})
    with pytest.raises(ConfigError, match="depths"):
        GroupingConfig(**{**SMALL_GROUP, "depths": [1], "num_group_tokens": [0], "num_output_groups": []})


def test_grouping_from_config() -> None:
    gcfg = GroupingConfig(
        hidden_dim=16,
        depths=[1, 2],
        num_heads=2,
        num_group_tokens=[6, 0],
        num_output_groups=[3],
        hard_assignment=False,
        gumbel=False,
        tau_init=0.5,
        mlp_ratio=2.0,
    )
    cfg = InputProjectorConfig(kind="grouping", grouping=gcfg)
    proj = build_input_projector(cfg, 10, 20)
    assert isinstance(proj, GroupingInputProjector)
    assert proj.num_tokens == cfg.tokens_per_item == 3
    assert len(proj.stages[1].layers) == 2
    assert proj.stages[0].layers[0].mlp.fc1.out_features == 32
    block = proj.stages[0].grouping
    assert block.assign.hard is False and block.assign.gumbel is False
    assert math.isclose(block.assign.tau.item(), 0.5, rel_tol=1e-6)
    assert proj(torch.randn(2, 9, 10)).shape == (2, 3, 20)
    assert GroupingInputProjector(gcfg, 10, 20).num_tokens == 3
    with pytest.raises(ConfigError, match="in_dim"):
        GroupingInputProjector.from_config(cfg)  # derived dims unset outside a ModelConfig


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------


def test_registry_kinds_and_unknown_kind() -> None:
    assert set(INPUT_PROJECTORS) == {"linear", "grouping", "bind"}
    assert set(OUTPUT_PROJECTORS) == {"transformer"}
    linear = build_input_projector(InputProjectorConfig(kind="linear"), 8, 12)
    assert isinstance(linear, LinearInputProjector) and linear.num_tokens == 1
    cfg = InputProjectorConfig(kind="linear")
    cfg.kind = "qformer"  # type: ignore[assignment]  # bypasses config validation on purpose
    with pytest.raises(ConfigError, match="qformer") as err:
        build_input_projector(cfg, 8, 12)
    assert "grouping" in str(err.value) and "linear" in str(err.value)
    out_cfg = OutputProjectorConfig(num_queries=2)
    out_cfg.kind = "mlp"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="valid kinds: transformer"):
        build_output_projector(out_cfg, 8, 2, 4)
