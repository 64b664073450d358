"""Templates and labels with a real SentencePiece LLaMA tokenizer, token by token.

Goldens: FastChat's ``vicuna_v1.1`` (``SeparatorStyle.ADD_COLON_TWO``: ``SYS USER: q ASSISTANT:
a</s>USER: ...``, tokenised in one call with the BOS id first) and the legacy NExT-GPT code
(``build_one_instance_stage_3`` and ``prompt_wrap``: one tokenizer call per piece under transformers
4.29's slow LlamaTokenizer, which strips the whitespace beside added tokens and gives every text
chunk the dummy prefix; the demo's inference prompt with a BOS per text segment). ``*`` marks a
labelled token: exactly the assistant's reply, its signal run and its end marker.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from sp_fixtures import V15_TOKENIZER_CONFIG, make_llama_folder, overrides

from nextgpt import NextGPT
from nextgpt.errors import InputError
from nextgpt.modality import Modality
from nextgpt.processor import MediaItem, parse_inputs

SYSTEM = (
    "▁A ▁chat ▁between ▁a ▁curious ▁user ▁and ▁an ▁artificial ▁intelligence ▁assistant . ▁The ▁assistant "
    "▁gives ▁helpful , ▁detailed , ▁and ▁polite ▁answers ▁to ▁the ▁user ' s ▁questions ."
).split()
IMAGE_SLOT = ["<image>"] * 4
RUN = ["[IMG0]*", "[IMG1]*", "[IMG2]*", "[IMG3]*"]

V1_TRAIN = [
    "<s>", *SYSTEM, "▁US", "ER", ":", "▁", *IMAGE_SLOT, "<0x0A>", "what", "▁is", "▁it", "?",
    "▁ASS", "IST", "ANT", ":", "▁a*", "▁red*", "▁square*", *RUN, "</s>*",
    "USER", ":", "▁and", "▁now", "?", "▁ASS", "IST", "ANT", ":", "▁a*", "▁cat*", "</s>*",
]  # fmt: skip
V1_PROMPT = ["<s>", *SYSTEM, "▁US", "ER", ":", "▁hi", "▁ASS", "IST", "ANT", ":"]

V0_TRAIN = [
    "<s>", "▁###", "▁Human", ":", "<Img>", *IMAGE_SLOT, "</Img>", "▁what", "▁is", "▁it", "?", "<0x0A>",
    "###", "▁Assistant", ":", "▁", "▁a*", "▁red*", "▁square*", *RUN, "▁###*",
    "▁Human", ":", "▁and", "▁now", "?", "<0x0A>", "###", "▁Assistant", ":", "▁", "▁a*", "▁cat*",
    "<0x0A>*", "###*",
]  # fmt: skip
V0_PROMPT = [
    "<s>", "▁###", "▁Human", ":", "<Img>", *IMAGE_SLOT, "</Img>", "<s>", "▁what", "▁is", "▁it", "?",
    "<0x0A>", "###", "▁Assistant", ":", "▁a", "▁red", "▁square", "<0x0A>", "###", "▁Human", ":", "▁▁",
    "and", "▁now", "?", "<0x0A>", "###", "▁Assistant", ":",
]  # fmt: skip


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vicuna")
    return {
        "vicuna_v1": make_llama_folder(root / "vicuna-v1.5", tokenizer_config=V15_TOKENIZER_CONFIG),
        "vicuna_v0": make_llama_folder(root / "vicuna-v0", tokenizer_config=None),  # tokenizer.model only
    }


@pytest.fixture(scope="module")
def models(folders) -> dict[str, NextGPT]:
    return {t: NextGPT.from_preset("tiny", overrides(folder, t)) for t, folder in folders.items()}


def _chat():
    red = Image.new("RGB", (8, 8), (255, 0, 0))
    return [
        {"role": "user", "content": [red, "what is it?"]},
        {"role": "assistant", "content": ["a red square", MediaItem(Modality.IMAGE, None)]},
        {"role": "user", "content": "and now?"},
        {"role": "assistant", "content": "a cat"},
    ]


def _tokens(model: NextGPT, enc) -> list[str]:
    toks = model.llm.tokenizer.convert_ids_to_tokens(enc.input_ids.tolist())
    return [t + ("*" if lab != -100 else "") for t, lab in zip(toks, enc.labels.tolist())]


@pytest.mark.parametrize("template, golden", [("vicuna_v1", V1_TRAIN), ("vicuna_v0", V0_TRAIN)])
def test_training_tokens_and_labels_are_exact(models, template: str, golden: list[str]) -> None:
    model = models[template]
    assert len(model.llm.tokenizer) >= 32000 and model.llm.tokenizer.bos_token_id == 1
    enc = model.processor.encode(parse_inputs(_chat()), add_generation_prompt=False)
    assert _tokens(model, enc) == golden


@pytest.mark.parametrize("template, golden", [("vicuna_v1", V1_PROMPT), ("vicuna_v0", V0_PROMPT)])
def test_inference_prompts_are_exact(models, template: str, golden: list[str]) -> None:
    model = models[template]
    inputs = "hi" if template == "vicuna_v1" else parse_inputs(_chat()[:3])
    assert _tokens(model, model.processor.encode(inputs, add_generation_prompt=True)) == golden


def test_v1_renders_fastchat_separators(models) -> None:
    text, spans = models["vicuna_v1"].processor.render(parse_inputs(_chat()[2:]), add_generation_prompt=False)
    system = "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    assert (
        text
        == f"<s>{system}helpful, detailed, and polite answers to the user's questions. USER: and now? ASSISTANT: a cat</s>"
    )
    assert [text[a:b] for a, b in spans] == ["a cat</s>"]
    two = models["vicuna_v1"].processor.render(parse_inputs(_chat()), add_generation_prompt=False)[0]
    assert "</s>USER: and now? ASSISTANT:" in two  # FastChat: no space after </s>


def test_a_tokenizer_model_only_folder_keeps_the_dummy_prefix(folders) -> None:
    from nextgpt.llm import load_tokenizer

    tok = load_tokenizer(folders["vicuna_v0"])
    assert tok.convert_ids_to_tokens(tok("### Human:", add_special_tokens=False).input_ids) == [
        "▁###",
        "▁Human",
        ":",
    ]


@pytest.mark.parametrize("text", ["draw [IMG0] now", "<Img> hi", "a </s> b", "<image>", "[VID3]"])
def test_added_and_special_token_strings_in_text_are_refused(models, text: str) -> None:
    for model in models.values():
        with pytest.raises(InputError, match="reserved token"):
            model.processor.encode(text)
        turns = parse_inputs([{"role": "user", "content": "hi"}, {"role": "assistant", "content": text}])
        with pytest.raises(InputError, match="reserved token"):
            model.processor.encode(turns, add_generation_prompt=False)  # training data too
