"""ImageBind-LLM's input path (``input_projector.kind: bind``): the bind network's shapes and counts,
zero-gated injection into every layer (gate 0 is the plain LLM, exactly), gradients reaching the gates,
the KV-cache loop against a full recompute, embedding arithmetic, and both training stages on tiny."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt import Audio, NextGPT, NextGPTConfig
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.projectors import BindInputProjector, bind_parameter_count

BIND = ["model.input_projector.kind=bind", "model.llm.media_wrappers=false"]


@pytest.fixture(scope="module")
def model():
    return NextGPT.from_preset("tiny", BIND)


def _image(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_bind_network_shapes_and_the_7b_parameter_count():
    with torch.device("meta"):
        net = BindInputProjector(1024, 4096, num_layers=32, num_heads=32)
    count = sum(p.numel() for n, p in net.named_parameters() if n != "gates")
    # W0 1024x4096 + bias, 3 blocks of W1, W2 (4096 x 16384), W3 (16384 x 4096) and an RMSNorm
    assert count == bind_parameter_count(1024, 4096) == 1024 * 4096 + 4096 + 3 * (3 * 4096 * 16384 + 4096)
    with torch.device("meta"):
        legacy = BindInputProjector(1024, 4096, num_layers=32, num_heads=32, norm="layer")
    assert sum(p.numel() for n, p in legacy.named_parameters() if n != "gates") == bind_parameter_count(
        1024, 4096, norm="layer"
    )
    assert round(count / 1e6, 1) == 608.2  # the paper's "about 0.6B"
    assert net.gates.shape == (32, 32) and net.num_tokens == 0
    layer = BindInputProjector(8, 16, num_layers=2, num_heads=4, norm="layer", num_blocks=1)
    assert isinstance(layer.blocks[0].norm, torch.nn.LayerNorm) and layer(torch.randn(3, 8)).shape == (3, 16)
    with torch.no_grad():
        layer.gates.copy_(torch.tensor([[0.0, 1.0, -1.0, 2.0], [0.5, 0.0, 0.0, 0.0]]))
    scales = layer.scales()
    assert scales.shape == (2, 16)
    torch.testing.assert_close(scales[0, 4:8], torch.full((4,), float(np.tanh(1.0))))  # head 1's channels
    with pytest.raises(ValueError, match="pooled embeddings"):
        layer(torch.randn(3, 2, 8))


def test_a_bind_model_puts_no_media_token_in_the_prompt(model, tmp_path):
    ids = model.processor.encode([_image(tmp_path / "a.png"), "what is this"], add_generation_prompt=True)
    placeholders = set(model.llm.layout.placeholder_ids.values())
    assert not placeholders & set(ids.input_ids.tolist()) and len(ids.slots) == 1


@pytest.mark.parametrize("mode", ["add", "prefix"])
def test_at_gate_zero_the_model_is_the_plain_llm_exactly(mode, tmp_path):
    model = NextGPT.from_preset("tiny", [*BIND, f"model.input_projector.bind.injection={mode}"])
    ids = torch.tensor([[1, 40, 50, 60, 70]])
    embeds = model.llm.embed(ids)
    injection = torch.randn(1, 1, model.llm.hidden_size) * 10
    with torch.no_grad():
        plain = model.llm(embeds).logits
        gated = model.llm(embeds, injection=injection).logits
    assert torch.equal(plain, gated)
    image = _image(tmp_path / "b.png")
    with_image = model.generate([image, "hello there"], modalities=["text"], max_new_tokens=8)
    text_only = model.generate("hello there", modalities=["text"], max_new_tokens=8)
    assert with_image.token_ids == text_only.token_ids  # the image changes nothing until a gate opens


@pytest.mark.parametrize("mode", ["add", "prefix"])
def test_the_injection_adds_exactly_its_formula_in_the_first_layer(mode):
    """``add``: layer 0's input gets ``tanh(g_0) * T``; ``prefix``: the attention output entering
    layer 0's o_proj gets ``tanh(g_0) * v_proj(T + prefix_query[0])`` (per head)."""
    model = NextGPT.from_preset("tiny", [*BIND, f"model.input_projector.bind.injection={mode}"])
    proj = model.input_projector
    assert (proj.prefix_query is not None) == (mode == "prefix")
    with torch.no_grad():
        proj.gates.normal_(std=1.0)
    layer = model.llm.decoder_layers[0]
    target = layer if mode == "add" else layer.self_attn.o_proj
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs=None):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.detach().clone())

    if mode == "add":
        handle = target.register_forward_pre_hook(lambda m, a, k: record(m, a, k), with_kwargs=True)
    else:
        handle = target.register_forward_pre_hook(lambda m, a: record(m, a))
    ids = torch.tensor([[1, 40, 50, 60]])
    feature = torch.randn(1, 1, model.llm.hidden_size)
    with torch.no_grad():
        model.llm(model.llm.embed(ids))
        model.llm(model.llm.embed(ids), injection=feature)
        scale = proj.scales()[0]
        if mode == "add":
            want = scale * feature
        else:
            values = layer.self_attn.v_proj(feature + proj.prefix_query[0])  # [1, 1, kv_heads * head_dim]
            cfg = model.llm._causal_lm().config
            group = cfg.num_attention_heads // cfg.num_key_value_heads  # tiny: grouped-query attention
            values = values.view(1, 1, cfg.num_key_value_heads, -1).repeat_interleave(group, dim=2)
            want = scale * values.reshape(1, 1, -1)
    handle.remove()
    plain, injected = seen
    torch.testing.assert_close(injected - plain, want.expand_as(plain), rtol=1e-5, atol=1e-5)


def test_gradients_reach_the_gates_then_the_bind_network(model):
    from nextgpt.stages.modules import select_trainable

    chosen = select_trainable(model, 1)
    assert "input_projector.gates" in chosen and any(n.startswith("input_projector.blocks.") for n in chosen)
    feats = {Modality.IMAGE: torch.randn(2, 32)}
    ids = torch.tensor([[1, 40, 50, 60], [1, 41, 51, 61]])

    def backward():
        model.zero_grad(set_to_none=True)
        bound = model.bind_features([[Modality.IMAGE], [Modality.IMAGE]], feats, [0, 1], 2)
        injection = model.injection_tensor(bound, [(0, 0, 4), (1, 0, 4)], (2, 4))
        losses = model.compute_losses(ids, torch.ones_like(ids), ids.clone(), [], injection=injection)
        losses["loss"].backward()

    backward()
    gates = model.input_projector.gates
    assert gates.grad is not None and gates.grad.abs().sum() > 0
    w1 = model.input_projector.blocks[0].w1.weight
    assert w1.grad is None or w1.grad.abs().sum() == 0  # tanh(0) = 0: nothing flows through yet
    with torch.no_grad():
        gates.fill_(0.3)
    backward()
    assert w1.grad.abs().sum() > 0
    with torch.no_grad():
        gates.zero_()


@pytest.mark.parametrize("mode", ["add", "prefix"])
def test_the_kv_cache_loop_matches_a_full_recompute_with_open_gates(mode, tmp_path):
    model = NextGPT.from_preset("tiny", [*BIND, f"model.input_projector.bind.injection={mode}"])
    with torch.no_grad():
        model.input_projector.gates.normal_(std=2.0)
    image = _image(tmp_path / "c.png", seed=3)
    out = model.generate([image, "describe it"], modalities=["text"], max_new_tokens=6)
    req = model.prepare_request([image, "describe it"], ["text"], max_new_tokens=6)
    model.eval()
    bound = model.bind_row(req.slots)
    ids = req.input_ids.tolist()
    base = model.llm.layout.base_vocab
    with torch.no_grad():
        for _ in range(len(out.token_ids)):
            x = torch.tensor([ids])
            logits = model.llm(model.llm.embed(x), injection=bound.expand(1, x.shape[1], -1)).logits[0, -1]
            logits[base:] = -float("inf")  # the added tokens are banned for a text answer
            ids.append(int(logits.argmax()))
    assert ids[len(req.input_ids) :] == out.token_ids
    plain = NextGPT.from_preset("tiny", [*BIND, f"model.input_projector.bind.injection={mode}"]).generate(
        [image, "describe it"], modalities=["text"], max_new_tokens=6
    )
    assert plain.token_ids != out.token_ids  # open gates do change the answer


def test_each_batched_row_keeps_its_own_feature_as_rows_leave(tmp_path):
    model = NextGPT.from_preset("tiny", BIND)
    with torch.no_grad():
        model.input_projector.gates.normal_(std=2.0)
    a, b = _image(tmp_path / "r0.png", seed=5), _image(tmp_path / "r1.png", seed=6)
    requests = [
        model.prepare_request([a, "first"], ["text"], max_new_tokens=2),  # leaves the batch early
        model.prepare_request([b, "second one"], ["text"], max_new_tokens=7),
    ]
    batched = model.run_requests(requests)
    alone = [
        model.generate([a, "first"], modalities=["text"], max_new_tokens=2),
        model.generate([b, "second one"], modalities=["text"], max_new_tokens=7),
    ]
    assert [o.token_ids for o in batched] == [o.token_ids for o in alone]
    assert len(alone[1].token_ids) > len(alone[0].token_ids)


def test_embedding_arithmetic_weights_the_inputs_before_the_bind_network(model, tmp_path):
    image = _image(tmp_path / "d.png")
    sound = Audio(np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32) * 0.1, 16000)
    slots = model.prepare_request([sound, image, "mix"], ["text"]).slots
    feats = {}
    for slot in slots:
        item = slot[0]
        feats[item.modality] = model.media_features(
            item.modality, model.encoder.preprocess(item.modality, [item.value])
        )[0]
    feats = {m: f / f.norm() for m, f in feats.items()}  # each embedding is L2-normalised first
    with torch.no_grad():
        mixed = model.bind_row(slots, [0.5, 1.5])  # divided by their sum: 0.25 and 0.75
        want = model.input_projector((0.25 * feats[Modality.AUDIO] + 0.75 * feats[Modality.IMAGE])[None])[0]
        torch.testing.assert_close(mixed, want)
        equal = model.bind_row(slots)  # combine: equal -> 1/2 each
        torch.testing.assert_close(
            equal, model.input_projector((0.5 * feats[Modality.AUDIO] + 0.5 * feats[Modality.IMAGE])[None])[0]
        )
        empty = model.bind_features([], {}, [], 1)  # a text-only sample: the zero embedding
        torch.testing.assert_close(empty[0], model.input_projector(torch.zeros(1, 32))[0])
    out = model.generate(
        [sound, image, "mix"], modalities=["text"], max_new_tokens=2, modality_weights=[0.5, 0.5]
    )
    assert len(out.token_ids) >= 1
    with pytest.raises(InputError, match="2 weights for 3|has 1 weights for 2"):
        model.generate([sound, image, "mix"], modalities=["text"], modality_weights=[1.0])
    with pytest.raises(InputError, match="must not cancel"):
        model.bind_row(slots, [1.0, -1.0])
    with pytest.raises(InputError, match="input_projector.kind: bind"):
        NextGPT.from_preset("tiny").generate([image, "x"], modalities=["text"], modality_weights=[1.0])


def test_unknown_trainable_groups_are_a_config_error():
    from nextgpt.config import TRAINABLE_GROUPS
    from nextgpt.stages.modules import TRAINABLE

    assert all(g in TRAINABLE_GROUPS for groups in TRAINABLE.values() for g in groups)
    for group in TRAINABLE_GROUPS:  # the config accepts exactly these
        NextGPTConfig.from_preset("tiny").with_overrides([f"training.stages.3.trains=[{group}]"])
    with pytest.raises(ConfigError, match="unknown groups"):
        NextGPTConfig.from_preset("tiny").with_overrides(["training.stages.3.trains=[lora, gates]"])


def test_both_imagebind_llm_stages_train_on_tiny_and_the_model_generates(demo_data, tmp_path):
    """Stage 1 (image-text pairs): the bind network and gates train, the LLM stays. Stage 3 (the
    paper's instruction tuning, `trains: [lora, norms]`, text-only samples with the zero embedding):
    LoRA and the norms train, the bind network stays. The saved model then answers about an image."""
    from nextgpt.stages.train import train

    common = [
        *BIND,
        "model.outputs.image=null",
        "model.outputs.audio=null",
        "model.outputs.video=null",
        "training.num_workers=0",
        "training.log_every_n_steps=1",
        "training.stages.1.lr=1e-2",
        "training.stages.3.lr=1e-2",
    ]
    norms = ["training.stages.3.trains=[lora, norms]"]  # named only when stage 3 runs, as a user would
    base = NextGPT.from_preset("tiny", [*common, *norms]).trainable_state_dict()
    assert any(".input_layernorm." in k for k in base)  # norms are part of the state when trained
    one = train(1, "tiny", demo_data, tmp_path / "run", common, max_steps=2)
    s1 = NextGPT.from_pretrained(one).trainable_state_dict()
    assert not any("layernorm" in k for k in s1)  # stage 1's model does not train them: not saved
    s1 = {**{k: v for k, v in base.items() if "norm" in k and k.startswith("llm.")}, **s1}
    changed = {k for k in base if not torch.equal(base[k], s1[k])}
    assert "input_projector.gates" in changed and any(
        k.startswith("input_projector.blocks.") for k in changed
    )
    assert not any("lora_" in k or "layernorm" in k for k in changed)
    three = train(3, "tiny", demo_data, tmp_path / "run", [*common, *norms], max_steps=2, init_from=one)
    trained = NextGPT.from_pretrained(three)
    s3 = trained.trainable_state_dict()
    changed3 = {k for k in s1 if not torch.equal(s1[k], s3[k])}
    assert any("lora_" in k for k in changed3) and any(".input_layernorm." in k for k in changed3)
    assert not any(k.startswith("input_projector.") for k in changed3)
    out = trained.generate([_image(tmp_path / "e.png"), "what is it?"], modalities=["text"], max_new_tokens=4)
    assert out.token_ids


@pytest.mark.parametrize("stage", [1, 3])
def test_a_packed_bind_batch_gives_the_padded_losses_and_gradients(stage, demo_data):
    """Each sample of a packed row gets its own bound feature over its own tokens (open gates)."""
    from test_packing import F32, NO_NOISE, _collators, _losses_and_grads, _samples

    from nextgpt.stages.modules import StageModule

    cfg = NextGPTConfig.from_preset("tiny").with_overrides([*NO_NOISE, *BIND])
    model = NextGPT(cfg)
    with torch.no_grad():
        model.input_projector.gates.normal_(std=1.0)
    module = StageModule(cfg, stage, model).train()
    padded_collator, packed_collator = _collators(model, stage, pack_length=1024)
    samples = _samples(demo_data, stage, 8)
    padded, packed = padded_collator(samples), packed_collator(samples)
    assert packed.num_rows < padded.num_rows and len(packed.sample_spans) == 8
    want, want_grads = _losses_and_grads(module, padded)
    got, got_grads = _losses_and_grads(module, packed)
    for k in want:
        torch.testing.assert_close(got[k], want[k], **F32)
    assert "model.input_projector.gates" in want_grads
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], **F32)


@pytest.mark.slow
def test_imagebind_llm_7b_preset_holds_the_papers_numbers_and_builds_on_meta():
    from nextgpt.llm import LanguageModel, is_norm_parameter
    from nextgpt.projectors import build_input_projector

    cfg = NextGPTConfig.from_preset("imagebind-llm-7b")
    m, t = cfg.model, cfg.training
    assert m.input_projector.kind == "bind" and m.input_projector.bind.norm == "rms" and not m.outputs
    assert (m.llm.hidden_size, m.llm.num_layers, m.llm.num_heads) == (4096, 32, 32)
    assert m.llm.lora.r == 16 and len(m.llm.lora.target_modules) == 7
    assert (m.visual_cache.top_k, m.visual_cache.temperature, m.visual_cache.alpha) == (10, 20.0, 0.5)
    s1, s3 = t.stages[1], t.stages[3]
    assert (s1.lr, s1.epochs, s1.batch_size * 32, s1.trains) == (4e-4, 3, 1024, ["input_projector"])
    assert (s3.lr, s3.epochs, s3.batch_size * 8, s3.warmup_ratio, s3.trains) == (
        1.25e-4,
        4,
        32,
        0.25,
        ["lora", "norms"],
    )
    off = ["model.llm.path=null"]
    cfg = cfg.with_overrides(off)
    with torch.device("meta"):
        bind = build_input_projector(cfg.model.input_projector, num_layers=32, num_heads=32)
        llm = LanguageModel.from_config(cfg.model.llm, {}, seed=0)
    assert sum(p.numel() for n, p in bind.named_parameters() if n != "gates") == 608_190_464  # ~0.6B
    assert bind.gates.numel() == 32 * 32
    lora = sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)
    assert lora == 32 * 16 * (4 * (4096 + 4096) + 2 * (4096 + 11008) + (11008 + 4096))  # r16 on 7 linears
    assert sum(p.numel() for n, p in llm.named_parameters() if is_norm_parameter(n)) == 65 * 4096
