"""The real LLM path: stop sequences, LoRA state that never corrupts the frozen base, and a tiny model
with the real SentencePiece tokenizer that trains stage 3 and answers with the v0 and v1 templates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sp_fixtures import V15_TOKENIZER_CONFIG, make_llama_folder, overrides

from nextgpt import NextGPT
from nextgpt.errors import InputError
from nextgpt.modality import Modality


def _randomise_lora(model: NextGPT, seed: int = 0) -> None:
    """Non-zero LoRA B (peft starts it at zero, which would make every merge a no-op)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _base(model: NextGPT) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().clone() for n, p in model.llm.named_parameters() if "lora_" not in n and "new_" not in n
    }


def _logits(model: NextGPT) -> torch.Tensor:
    ids = torch.tensor([[1, 40, 50, 60, 70, 2]])
    with torch.no_grad():
        return model.llm(model.llm.embed(ids)).logits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generate_train_cycles_leave_the_base_bit_identical(dtype: str) -> None:
    model = NextGPT.from_preset("tiny", [f"model.llm.dtype={dtype}"])
    _randomise_lora(model)
    base = _base(model)
    for _ in range(10):
        model.generate("hi", modalities=["text"], max_new_tokens=2)  # merges LoRA into the base
        model.train()  # unmerges
        model.eval()
    after = _base(model)
    changed = [n for n in base if not torch.equal(base[n], after[n])]
    assert not changed, changed[:3]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generate_then_load_gives_what_a_fresh_model_gives(dtype: str, tmp_path: Path) -> None:
    """Loading trained weights into a model that has generated (LoRA merged) must equal loading them
    into a fresh one: the new adapters never land on a shifted base."""
    ov = [f"model.llm.dtype={dtype}"]
    source = NextGPT.from_preset("tiny", ov)
    _randomise_lora(source, seed=1)
    source.save_pretrained(tmp_path / "trained")
    used = NextGPT.from_preset("tiny", ov)
    _randomise_lora(used, seed=2)
    used.generate("hello", modalities=["text"], max_new_tokens=3)  # merged with its own adapters
    used.load_trainable_state(NextGPT.from_pretrained(tmp_path / "trained").trainable_state_dict(), what="t")
    fresh = NextGPT.from_pretrained(tmp_path / "trained")
    torch.testing.assert_close(_logits(used), _logits(fresh), rtol=0, atol=0)  # unmerged
    a = used.generate("a question", modalities=["text"], max_new_tokens=6)
    b = fresh.generate("a question", modalities=["text"], max_new_tokens=6)
    assert a.token_ids == b.token_ids
    used.eval(), fresh.eval()
    torch.testing.assert_close(_logits(used), _logits(fresh), rtol=0, atol=0)  # both merged


def test_legacy_import_after_generate_keeps_the_base(tmp_path: Path) -> None:
    from test_legacy import LEGACY_OVERRIDES

    from nextgpt.legacy import import_legacy_state, legacy_key_map

    model = NextGPT.from_preset("tiny", LEGACY_OVERRIDES)
    _randomise_lora(model)
    base = {n: v for n, v in _base(model).items() if "embed_tokens" not in n and "lm_head" not in n}
    model.generate("hi", modalities=["text"], max_new_tokens=2)
    mapping, shapes = legacy_key_map(model)
    state = {k: torch.zeros(s) for k, s in shapes.items()}
    import_legacy_state(model, state, what="synthetic legacy")
    after = _base(model)
    assert all(torch.equal(base[n], after[n]) for n in base)


# ------------------------------------------------------------------ stop sequences


class _Scripted:
    """Replace the model's token choice by a fixed sequence (what a trained model would write)."""

    def __init__(self, model: NextGPT, ids: list[int]) -> None:
        self.ids, self.model = list(ids), model

    def __enter__(self):
        it = iter(self.ids)
        self.model._pick = lambda logits, banned, sampling: next(it, 2)
        return self

    def __exit__(self, *exc):
        del self.model._pick


@pytest.fixture(scope="module")
def sp_models(tmp_path_factory) -> dict[str, NextGPT]:
    root = tmp_path_factory.mktemp("sp")
    v15 = make_llama_folder(root / "v15", tokenizer_config=V15_TOKENIZER_CONFIG)
    v0 = make_llama_folder(root / "v0", tokenizer_config=None)
    return {
        "vicuna_v1": NextGPT.from_preset("tiny", overrides(v15, "vicuna_v1")),
        "vicuna_v0": NextGPT.from_preset("tiny", overrides(v0, "vicuna_v0")),
    }


def test_v0_stops_at_the_legacy_separator_before_an_invented_turn(sp_models) -> None:
    """The legacy code stops on ``###``: the answer ends there, and the invented next turn (with its
    image signal run) produces nothing."""
    model = sp_models["vicuna_v0"]
    tok, layout = model.llm.tokenizer, model.llm.layout
    answer = tok("a red cube", add_special_tokens=False).input_ids
    invented = tok("\n### Human: draw", add_special_tokens=False).input_ids + [
        layout.signal_ids[Modality.IMAGE][0]
    ]
    with _Scripted(model, answer + invented):
        out = model.generate("what is this?", max_new_tokens=40)
    assert out.text == "a red cube" and out.images == []
    # generation ended at the stop: what came before "###" (the newline) is kept, nothing after it
    stop_at = next(i for i, t in enumerate(invented) if "###" in tok.convert_ids_to_tokens(t))
    assert out.token_ids == answer + invented[:stop_at]


def test_v1_stops_at_eos_and_user_stop_strings_are_not_returned(sp_models) -> None:
    model = sp_models["vicuna_v1"]
    tok = model.llm.tokenizer
    reply = tok("Sure. The answer is 42. Anything else?", add_special_tokens=False).input_ids
    with _Scripted(model, [*reply, tok.eos_token_id, *reply]):
        assert (
            model.generate("q", modalities=["text"], max_new_tokens=60).text
            == "Sure. The answer is 42. Anything else?"
        )
    with _Scripted(model, reply):
        out = model.generate("q", modalities=["text"], max_new_tokens=60, stop=["42"])
    assert out.text == "Sure. The answer is"
    with pytest.raises(InputError, match="stop strings"):
        model.generate("q", stop=[""])


# ------------------------------------------------------------------ trains and answers


@pytest.mark.slow
@pytest.mark.parametrize("template", ["vicuna_v0", "vicuna_v1"])
def test_sentencepiece_model_trains_stage3_and_answers(sp_models, template: str, tmp_path: Path) -> None:
    from nextgpt.stages.data import build_demo_dataset
    from nextgpt.stages.train import train

    data = tmp_path / "demo"
    build_demo_dataset(data, seed=0, conversations=8)
    cfg_over = [o for o in overrides(Path(sp_models[template].config.model.llm.path), template)]
    model_dir = train(
        3,
        "tiny",
        data,
        tmp_path / "run",
        [*cfg_over, "training.num_workers=0", "training.log_every_n_steps=1", "training.max_steps=3"],
    )
    model = NextGPT.from_pretrained(model_dir)
    out = model.generate("Describe a sunny day.", modalities=["text", "image"], max_new_tokens=6, seed=0)
    assert len(out.images) == 1 and isinstance(out.text, str)
    assert "###" not in out.text and "</s>" not in out.text
