"""The any-to-any model on the tiny preset: splice, signal runs, generate semantics, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt import Audio, NextGPT
from nextgpt.decoding import Row, decode_rows
from nextgpt.errors import CheckpointError, ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.processor import Processor, parse_inputs


@pytest.fixture(scope="module")
def model(tiny_model: NextGPT) -> NextGPT:
    return tiny_model


@pytest.fixture()
def red() -> Image.Image:
    return Image.new("RGB", (64, 48), (200, 30, 30))


def _boost(model: NextGPT, monkeypatch, token_id: int, amount: float = 1e4) -> None:
    """Make the LLM prefer ``token_id`` whenever it is allowed (to drive the signal-token logic)."""
    original = model.llm.logits

    def logits(hidden):
        out = original(hidden)
        out[..., token_id] += amount
        return out

    monkeypatch.setattr(model.llm, "logits", logits)


# ------------------------------------------------------------------ input side


def test_placeholders_are_real_tokens_and_media_is_spliced(model: NextGPT, red) -> None:
    enc = model.processor.encode([red, "what is this?"])
    ph = model.llm.layout.placeholder_ids[Modality.IMAGE]
    T = model.input_projector.num_tokens
    assert int((enc.input_ids == ph).sum()) == T and (enc.input_ids >= 0).all()
    ids = enc.input_ids.unsqueeze(0)
    tokens = model.encode_media(enc.slots)
    assert [t.shape for t in tokens] == [(T, model.llm.hidden_size)]
    embeds = model.embed_inputs(ids, tokens)
    pos = (ids[0] == ph).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, pos], tokens[0])
    others = (ids[0] != ph).nonzero().squeeze(1)
    torch.testing.assert_close(embeds[0, others], model.llm.embed(ids)[0, others])


def test_placeholder_count_mismatch_raises(model: NextGPT, red) -> None:
    enc = model.processor.encode([red, red, "two pictures"])
    tokens = model.encode_media(enc.slots)
    with pytest.raises(InputError, match=r"placeholder positions .* media tokens"):
        model.embed_inputs(enc.input_ids.unsqueeze(0), tokens[:1])


def test_reserved_token_in_text_is_rejected(model: NextGPT) -> None:
    with pytest.raises(InputError, match="reserved token '<image>'"):
        model.processor.encode("look: <image>")


def test_string_paths_are_text_not_files(model: NextGPT, tmp_path) -> None:
    turns = parse_inputs(f"describe {tmp_path / 'cat.png'}")
    assert turns[0].media() == []  # a typed path is never opened
    with pytest.raises(InputError, match="modality of"):
        parse_inputs(tmp_path / "notes.xyz")


# ------------------------------------------------------------------ LLM parity


def test_llm_wrapper_with_zero_lora_equals_plain_transformers(model: NextGPT) -> None:
    from transformers import LlamaForCausalLM

    base = model.llm.model.get_base_model()
    plain = LlamaForCausalLM(base.config)
    # The plain model gets the base weights (LoRA layers excluded): peft names them ".base_layer.".
    state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
    plain.load_state_dict(state)
    plain.eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        ours = model.llm(model.llm.embed(ids)).logits
        ref = plain(input_ids=ids).logits
    V = model.llm.layout.base_vocab
    assert ours.shape[-1] == V + model.llm.layout.num_new
    torch.testing.assert_close(ours[..., :V], ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ signal runs and generate


def test_signal_states_match_a_teacher_forced_pass(model: NextGPT, red, monkeypatch) -> None:
    """States collected while decoding with the KV cache equal a plain full forward's states at the
    positions whose input is a signal token (hidden after the final norm + input embedding)."""
    _boost(model, monkeypatch, model.llm.layout.signal_ids[Modality.IMAGE][0])
    enc = model.processor.encode([red, "hi"])
    ids = enc.input_ids.unsqueeze(0)
    request = model.prepare_request([red, "hi"], max_new_tokens=3)
    request.allowed = {Modality.IMAGE}
    row = Row(model, request, None, 0)
    with torch.no_grad():
        embeds = model.embed_inputs(ids, model.encode_media(enc.slots))
        decode_rows(model, [embeds[0]], [row])
        tokens, runs = row.tokens, row.runs
        full_ids = torch.cat([ids, torch.tensor([tokens])], dim=1)
        full_embeds = torch.cat([embeds, model.llm.embed(torch.tensor([tokens]))], dim=1)
        hidden = model.llm(full_embeds, compute_logits=False).hidden
        ref = model.signal_runs(hidden, full_ids, full_embeds)[0]
    assert [r.modality for r in runs] == [Modality.IMAGE] == [r.modality for r in ref]
    torch.testing.assert_close(runs[0].states, ref[0].states, rtol=1e-4, atol=1e-5)


def test_llm_decides_and_half_emitted_run_is_completed(model: NextGPT, monkeypatch) -> None:
    layout = model.llm.layout
    img = layout.signal_ids[Modality.IMAGE]
    _boost(model, monkeypatch, img[0])  # only [IMG0] is boosted; the rest of the run is forced
    out = model.generate("paint", max_new_tokens=1, seed=0)
    assert out.token_ids == list(img)  # budget 1, yet the run completes: 4 tokens
    assert len(out.images) == 1 and out.images[0].size == (32, 32)
    assert "[IMG" not in out.text and out.text == ""


def test_unlisted_modality_is_suppressed(model: NextGPT, monkeypatch) -> None:
    layout = model.llm.layout
    _boost(model, monkeypatch, layout.signal_ids[Modality.IMAGE][0])
    out = model.generate("paint", modalities=["text"], max_new_tokens=5, seed=0)
    assert not set(out.token_ids) & layout.special_ids()
    assert out.images == [] and len(out.token_ids) <= 5


def test_listed_modality_is_forced_and_text_is_clean(model: NextGPT, monkeypatch) -> None:
    layout = model.llm.layout
    out = model.generate("a sound please", modalities=["text", "audio"], max_new_tokens=6, seed=0)
    aud = list(layout.signal_ids[Modality.AUDIO])
    assert out.token_ids[-len(aud) :] == aud
    assert len(out.audios) == 1 and out.audios[0].dtype.name == "float32" and out.audios[0].ndim == 1
    assert out.audio_sample_rate == 16000 and out.images == [] and out.videos == []
    for tok in ("[AUD", "<image>", "<audio>"):
        assert tok not in out.text


def test_media_only_request_skips_text(model: NextGPT) -> None:
    out = model.generate("a clip", modalities=["video"], seed=1)
    assert out.text == "" and len(out.videos) == 1
    assert (
        out.videos[0].dtype.name == "uint8" and out.videos[0].shape == (4, 32, 32, 3) and out.video_fps == 8
    )


def test_unknown_or_unavailable_modality(model: NextGPT) -> None:
    with pytest.raises(ConfigError, match="unknown modality"):
        model.generate("x", modalities=["smell"])


def test_generate_is_reproducible_with_seed_and_sampling(model: NextGPT, red) -> None:
    kw = dict(modalities=["text", "image"], max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9)
    a = model.generate([red, "describe"], seed=3, **kw)
    b = model.generate([red, "describe"], seed=3, **kw)
    c = model.generate([red, "describe"], seed=4, **kw)
    assert a.token_ids == b.token_ids
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    assert a.token_ids != c.token_ids or not np.array_equal(np.asarray(a.images[0]), np.asarray(c.images[0]))


def test_chat_messages_and_audio_input(model: NextGPT, tmp_path) -> None:
    wave = np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32)
    msgs = [
        {"role": "user", "content": [Audio(wave, sample_rate=16000), "what is this?"]},
        {"role": "assistant", "content": "a tone"},
        {"role": "user", "content": "and now?"},
    ]
    out = model.generate(msgs, modalities=["text"], max_new_tokens=3, seed=0)
    assert isinstance(out.text, str) and len(out.token_ids) <= 3
    # the whole history is in the prompt: the audio slot of turn 1, the assistant's answer, turn 2
    enc = model.processor.encode(parse_inputs(msgs))
    ph = model.llm.layout.placeholder_ids[Modality.AUDIO]
    assert int((enc.input_ids == ph).sum()) == model.input_projector.num_tokens
    text = model.llm.tokenizer.decode(enc.input_ids.tolist())
    assert text.index("what is this?") < text.index("a tone") < text.index("and now?")


def test_output_save_writes_every_file(model: NextGPT, tmp_path) -> None:
    import soundfile

    out = model.generate(
        "all of it", modalities=["text", "image", "audio", "video"], max_new_tokens=2, seed=0
    )
    paths = out.save(tmp_path)
    expected = ["output_image0.png", "output_audio0.wav", "output_video0.mp4"]
    assert [p.name for p in paths] == (["output.txt"] if out.text else []) + expected
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    assert Image.open(tmp_path / "output_image0.png").size == (32, 32)
    data, sr = soundfile.read(tmp_path / "output_audio0.wav")
    assert sr == 16000 and data.shape == out.audios[0].shape
    from nextgpt.encoders.video import preprocess_video

    assert preprocess_video(tmp_path / "output_video0.mp4").shape == (15, 3, 2, 224, 224)


# ------------------------------------------------------------------ trainable sets and persistence


def test_trainable_state_is_projectors_lora_and_new_rows(model: NextGPT) -> None:
    keys = set(model.trainable_state_dict())
    assert {k for k in keys if k.startswith("llm.") and "lora_" not in k} == {
        "llm.new_embeddings",
        "llm.new_lm_head",
    }
    assert any("lora_A" in k for k in keys) and any(k.startswith("input_projector.") for k in keys)
    assert {k.split(".")[1] for k in keys if k.startswith("output_projectors.")} == {
        "image",
        "audio",
        "video",
    }
    assert not any(k.startswith("encoder.") for k in keys)
    assert model.llm.new_embeddings.shape == (model.llm.layout.num_new, model.llm.hidden_size)


def test_save_and_load_round_trip_reproduces_outputs(model: NextGPT, red, tmp_path) -> None:
    trained = NextGPT.from_preset("tiny")
    with torch.no_grad():  # pretend training moved every trainable tensor
        g = torch.Generator().manual_seed(0)
        for v in trained.trainable_state_dict().values():
            if v.is_floating_point():
                v.add_(torch.randn(v.shape, generator=g) * 0.05)
    trained.save_pretrained(tmp_path / "m")
    loaded = NextGPT.from_pretrained(tmp_path / "m")
    for k, v in trained.trainable_state_dict().items():
        assert torch.equal(v, loaded.trainable_state_dict()[k]), k
    kw = dict(modalities=["text", "image"], max_new_tokens=5, seed=0)
    a, b = trained.generate([red, "hi"], **kw), loaded.generate([red, "hi"], **kw)
    assert a.token_ids == b.token_ids
    assert np.array_equal(np.asarray(a.images[0]), np.asarray(b.images[0]))
    fresh = NextGPT.from_preset("tiny").generate([red, "hi"], **kw)
    assert fresh.token_ids != a.token_ids or not np.array_equal(
        np.asarray(fresh.images[0]), np.asarray(a.images[0])
    )


def test_from_pretrained_rejects_foreign_keys(tmp_path, model: NextGPT) -> None:
    from safetensors.torch import load_file, save_file

    model.save_pretrained(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "trainable.safetensors"))
    state["llm.extra"] = torch.zeros(1)
    del state["llm.new_embeddings"]
    save_file(state, str(tmp_path / "m" / "trainable.safetensors"))
    with pytest.raises(CheckpointError, match="do not come from one save"):  # the manifest catches it
        NextGPT.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "nextgpt.json").unlink()  # a folder of an older nextgpt: keys are still checked
    with pytest.raises(
        CheckpointError, match=r"missing key\(s\): llm.new_embeddings.*unexpected key\(s\): llm.extra"
    ):
        NextGPT.from_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointError, match="not a saved nextgpt model"):
        NextGPT.from_pretrained(tmp_path / "nothing")


def test_processor_templates_render_roles(model: NextGPT, red) -> None:
    layout = model.llm.layout
    for template in ("vicuna_v0", "vicuna_v1", "chat_template"):
        p = Processor(model.llm.tokenizer, layout, template, 4)
        enc = p.encode(
            [{"role": "user", "content": [red, "q"]}, {"role": "assistant", "content": ["a", red]}],
            add_generation_prompt=False,
        )
        labelled = enc.input_ids[enc.labels != -100].tolist()
        # the assistant target ends with the image signal run (+ the template's end marker)
        run = list(layout.signal_ids[Modality.IMAGE])
        assert any(labelled[i : i + 4] == run for i in range(len(labelled))), template
        assert layout.placeholder_ids[Modality.IMAGE] not in labelled, template
        assert len(enc.outputs) == 1 and len(enc.slots) == 1


def test_lora_merge_for_generation_keeps_outputs_and_training_unmerges(model: NextGPT, red) -> None:
    """generate() folds LoRA into the base weights; train() takes it out again; results agree."""
    trained = NextGPT.from_preset("tiny")
    with torch.no_grad():  # non-zero adapters, so merging changes the base weights
        for n, p in trained.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    q = trained.llm.model.get_base_model().model.layers[0].self_attn.q_proj
    before = q.base_layer.weight.detach().clone()
    trained.llm.set_lora_merged(False)
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        unmerged = trained.llm(trained.llm.embed(ids)).logits
    out = trained.generate([red, "hi"], modalities=["text"], max_new_tokens=3)
    assert not torch.equal(q.base_layer.weight, before)  # merged while generating
    with torch.no_grad():
        merged = trained.llm(trained.llm.embed(ids)).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    trained.train()
    assert torch.allclose(q.base_layer.weight, before, atol=1e-6)  # unmerged for optimisation
    assert out.token_ids == trained.generate([red, "hi"], modalities=["text"], max_new_tokens=3).token_ids
