"""Any transformers causal LM: tiny random Llama, Qwen2, Mistral and Gemma build, match their plain
transformers model, train one stage-3 step and generate; LoRA targets resolve per architecture;
``kind: auto`` loads a real GGUF with its own chat template; mismatches are explicit errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nextgpt import NextGPT
from nextgpt.errors import ConfigError

KINDS = ("llama", "qwen2", "mistral", "gemma")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory) -> Path:
    from nextgpt.stages.data import build_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out, seed=0, conversations=6)
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_architecture_builds_matches_transformers_trains_and_generates(kind: str, demo_data: Path) -> None:
    import lightning as L

    from nextgpt.stages.datamodule import NextGPTDataModule
    from nextgpt.stages.modules import StageModule

    model = NextGPT.from_preset("tiny", [f"model.llm.kind={kind}", "model.llm.lora.target_modules=[auto]"])
    causal = model.llm._causal_lm()
    assert causal.config.model_type == kind
    targets = {n.split(".lora_A")[0].rsplit(".", 1)[-1] for n, _ in model.named_parameters() if "lora_A" in n}
    assert targets == {"q_proj", "k_proj", "v_proj", "o_proj"}  # auto: the attention's linears
    # with LoRA still zero, our forward (added rows, our logits) equals the plain transformers model's
    ids = torch.tensor([[1, 30, 40, 50, 60, 2]])
    with torch.no_grad():
        ours = model.llm(model.llm.embed(ids)).logits[..., : model.llm.layout.base_vocab]
        plain = causal(input_ids=ids).logits
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)

    module = StageModule(model.config, 3, model)
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False
    )
    trainer.fit(module, datamodule=NextGPTDataModule(model.config, 3, model.processor, demo_data, shuffle=0))
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if n in lora)
    out = model.generate("draw a cat", modalities=["text", "image"], max_new_tokens=4, seed=0)
    assert out.token_ids and len(out.images) == 1


def test_gemma2_logit_softcapping_is_applied() -> None:
    """Gemma 2/3 squash their logits in their own forward; our logits (which add the new rows) must too."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(
        "gemma2", vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0,
    )  # fmt: skip
    causal = AutoModelForCausalLM.from_config(cfg)
    from nextgpt.llm import LanguageModel
    from nextgpt.tiny_tokenizer import build_tiny_tokenizer
    from nextgpt.tokens import TokenLayout

    layout = TokenLayout.build(260, {}, False)
    llm = LanguageModel(causal, build_tiny_tokenizer(260), layout, "new_rows")
    ids = torch.tensor([[1, 30, 40, 2]])
    with torch.no_grad():
        ours = llm(llm.embed(ids)).logits
        plain = causal(input_ids=ids).logits
    assert float(ours.abs().max()) <= 2.0
    torch.testing.assert_close(ours[..., :260], plain, rtol=1e-5, atol=1e-5)


def test_unknown_lora_targets_name_the_available_linears() -> None:
    with pytest.raises(ConfigError, match=r"c_attn not in .*its linear layers: .*q_proj"):
        NextGPT.from_preset("tiny", ["model.llm.kind=qwen2", "model.llm.lora.target_modules=[c_attn]"])


def test_kind_auto_needs_a_folder_and_a_loaded_kind_must_match(tmp_path: Path) -> None:
    from sp_fixtures import V15_TOKENIZER_CONFIG, make_llama_folder, overrides

    with pytest.raises(ConfigError, match="auto needs a model folder"):
        NextGPT.from_preset("tiny", ["model.llm.kind=auto"])
    folder = make_llama_folder(tmp_path / "llama", tokenizer_config=V15_TOKENIZER_CONFIG)
    with pytest.raises(ConfigError, match="kind='qwen2' but .* holds a 'llama' model"):
        NextGPT.from_preset("tiny", [*overrides(folder, "vicuna_v1"), "model.llm.kind=qwen2"])
    model = NextGPT.from_preset("tiny", [*overrides(folder, "auto"), "model.llm.kind=auto"])
    assert model.processor.template == "vicuna_v1"  # no chat template in a Vicuna tokenizer


@pytest.mark.slow
def test_kind_auto_loads_the_real_smollm2_gguf_with_its_chat_template() -> None:
    model = NextGPT.from_preset("small", ["model.llm.kind=auto", "model.llm.template=auto"])
    assert model.processor.template == "chat_template"
    out = model.generate("What is the capital of France?", modalities=["text"], max_new_tokens=12)
    assert "Paris" in out.text
