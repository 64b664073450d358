"""Importing the official NExT-GPT checkpoint layout (REFERENCE.md 1.3) on a legacy-shaped tiny model.

The synthetic checkpoint below is written from the documented key names with tiny shapes, built
independently of nextgpt's own modules (plain ``nn.Transformer`` for the projector keys), so the test
checks our key map against the documented layout rather than against itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from nextgpt import NextGPT
from nextgpt.errors import CheckpointError
from nextgpt.modality import Modality

LEGACY_OVERRIDES = [
    "model.input_projector.kind=linear",
    "model.input_projector.sum_items=true",
    "model.llm.template=vicuna_v0",
    "model.llm.media_wrappers=true",
    "model.llm.trainable_embeddings=full",
]
PREFIX = {
    "image": "gen_text_hidden_fcs.0.",
    "video": "gen_text_hidden_fcs_video.0.",
    "audio": "gen_text_hidden_fcs_audio.0.",
}


def synthetic_legacy_state(cfg) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).half()  # the release is fp16

    llm = cfg.model.llm
    H, r = llm.hidden_size, llm.lora.r
    kv = llm.num_kv_heads * (H // llm.num_heads)
    n_added = 2 + sum(o.num_signal_tokens for o in cfg.model.outputs.values())  # <Img></Img> + signals
    state = {"llama_proj.weight": rnd(H, cfg.model.encoder.out_embed_dim), "llama_proj.bias": rnd(H)}
    for i in range(llm.num_layers):
        for p, out in (("q", H), ("k", kv), ("v", kv), ("o", H)):
            base = f"llama_model.base_model.model.model.layers.{i}.self_attn.{p}_proj."
            state[base + "lora_A.default.weight"] = rnd(r, H)
            state[base + "lora_B.default.weight"] = rnd(out, r)
    state["llama_model.base_model.model.model.embed_tokens.weight"] = rnd(llm.vocab_size + n_added, H)
    state["llama_model.base_model.model.lm_head.weight"] = rnd(llm.vocab_size + n_added, H)
    for name, out in cfg.model.outputs.items():
        pc = out.projector
        tfm = nn.Transformer(
            d_model=pc.hidden_dim,
            nhead=pc.num_heads,
            num_encoder_layers=pc.num_encoder_layers,
            num_decoder_layers=pc.num_decoder_layers,
            dim_feedforward=pc.ff_dim,
            batch_first=True,
            norm_first=True,
        )
        pre = PREFIX[name.value]
        state.update({pre + "tfm." + k: rnd(*v.shape) for k, v in tfm.state_dict().items()})
        state[pre + "fc.weight"], state[pre + "fc.bias"] = rnd(pc.hidden_dim, H), rnd(pc.hidden_dim)
        state[pre + "model.weight"] = rnd(out.decoder.cond_dim, pc.hidden_dim)
        state[pre + "model.bias"] = rnd(out.decoder.cond_dim)
        state[pre + "query_embs"] = rnd(1, pc.num_queries, pc.hidden_dim)
    return state


@pytest.fixture(scope="module")
def legacy_file(tmp_path_factory):
    from nextgpt import NextGPTConfig

    cfg = NextGPTConfig.from_preset("tiny").with_overrides(LEGACY_OVERRIDES)
    state = synthetic_legacy_state(cfg)
    path = tmp_path_factory.mktemp("legacy") / "pytorch_model.pt"
    torch.save(state, path)
    return path, state


def test_legacy_token_order_matches_the_release() -> None:
    model = NextGPT.from_preset("tiny", LEGACY_OVERRIDES)
    layout, V = model.llm.layout, model.llm.layout.base_vocab
    # <Img>=V, </Img>=V+1, [IMG0..3]=V+2.., [VID0..23], [AUD0..7], then our placeholders
    assert layout.wrapper_ids == (V, V + 1)
    assert layout.signal_ids[Modality.IMAGE] == tuple(range(V + 2, V + 6))
    assert layout.signal_ids[Modality.VIDEO] == tuple(range(V + 6, V + 30))
    assert layout.signal_ids[Modality.AUDIO] == tuple(range(V + 30, V + 38))
    assert min(layout.placeholder_ids.values()) == V + 38
    assert model.llm.tokenizer.convert_tokens_to_ids(["<Img>", "[IMG0]", "[AUD7]"]) == [V, V + 2, V + 37]


def test_import_puts_every_tensor_where_it_belongs(legacy_file) -> None:
    path, state = legacy_file
    model = NextGPT.from_legacy_checkpoint(path, preset="tiny", overrides=LEGACY_OVERRIDES)
    V = model.llm.layout.base_vocab
    f = lambda k: state[k].float()  # noqa: E731
    torch.testing.assert_close(model.input_projector.proj.weight, f("llama_proj.weight"))
    lora_a = model.llm.model.base_model.model.model.layers[1].self_attn.k_proj.lora_A["default"].weight
    torch.testing.assert_close(
        lora_a, f("llama_model.base_model.model.model.layers.1.self_attn.k_proj.lora_A.default.weight")
    )
    emb = f("llama_model.base_model.model.model.embed_tokens.weight")
    torch.testing.assert_close(model.llm._causal_lm().get_input_embeddings().weight, emb[:V])
    torch.testing.assert_close(model.llm.new_embeddings[:38], emb[V:])
    head = f("llama_model.base_model.model.lm_head.weight")
    torch.testing.assert_close(model.llm.new_lm_head[:38], head[V:])
    vid = model.output_projectors["video"]
    torch.testing.assert_close(vid.query_embs, f("gen_text_hidden_fcs_video.0.query_embs"))
    torch.testing.assert_close(
        vid.tfm.decoder.layers[0].multihead_attn.in_proj_weight,
        f("gen_text_hidden_fcs_video.0.tfm.decoder.layers.0.multihead_attn.in_proj_weight"),
    )
    # The imported model runs: the legacy template with <Img> wrappers and one summed token per slot.
    out = model.generate("hello", modalities=["text", "image"], max_new_tokens=3, seed=0)
    assert len(out.images) == 1


def test_missing_and_extra_keys_are_named(legacy_file, tmp_path) -> None:
    _, state = legacy_file
    broken = dict(state)
    del broken["gen_text_hidden_fcs_audio.0.query_embs"]
    broken["llama_model.base_model.model.model.layers.0.mlp.gate_proj.lora_A.default.weight"] = torch.zeros(1)
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(CheckpointError) as err:
        NextGPT.from_legacy_checkpoint(tmp_path / "broken.pt", preset="tiny", overrides=LEGACY_OVERRIDES)
    assert "missing key(s): gen_text_hidden_fcs_audio.0.query_embs" in str(err.value)
    assert "unexpected key(s): llama_model.base_model.model.model.layers.0.mlp.gate_proj" in str(err.value)


def test_early_release_with_extra_token_rows_is_rejected(legacy_file, tmp_path) -> None:
    _, state = legacy_file
    bigger = dict(state)
    key = "llama_model.base_model.model.model.embed_tokens.weight"
    bigger[key] = torch.cat([state[key], state[key][:4]])  # <Vid></Vid><Aud></Aud>: 4 more rows
    torch.save(bigger, tmp_path / "early.pt")
    with pytest.raises(CheckpointError, match="shape mismatch.*embed_tokens"):
        NextGPT.from_legacy_checkpoint(tmp_path / "early.pt", preset="tiny", overrides=LEGACY_OVERRIDES)


class _Payload:
    def __reduce__(self):
        return (exec, ("raise SystemExit('pwned')",))


def test_malicious_pickle_is_refused(tmp_path) -> None:
    torch.save({"llama_proj.weight": torch.zeros(1), "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="unsafe"):
        NextGPT.from_legacy_checkpoint(tmp_path / "evil.pt", preset="tiny", overrides=LEGACY_OVERRIDES)


def test_non_legacy_model_cannot_import(legacy_file) -> None:
    path, _ = legacy_file
    with pytest.raises(CheckpointError, match="legacy-shaped model"):
        NextGPT.from_legacy_checkpoint(path, preset="tiny")
