"""LLMBind's prompt mode inside the model: task tags are added tokens, ``generate`` renders each
tagged span through the configured pipeline, the pipeline is swapped by path with no retraining,
and training text with tags is learned as those tokens."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_task_prompts import _save_sd

from nextgpt import NextGPT
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.task_prompts import TASK_TAGS

KW = {"max_new_tokens": 6, "num_inference_steps": 2, "height": 32, "width": 32}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {
        "a": _save_sd(root / "sd-a", seed=0),
        "b": _save_sd(root / "sd-b", seed=7),
        "ip2p": _save_sd(root / "ip2p", instruct=True),
    }


def _model(pipelines, key="a", edit=False):
    overrides = ["model.outputs.image=null", f"model.task_prompts.image={pipelines[key]}"]
    if edit:
        overrides.append(f"model.task_prompts.edit={pipelines['ip2p']}")
    return NextGPT.from_preset("tiny", overrides)


def test_tags_are_added_tokens_after_the_placeholders(pipelines):
    model = _model(pipelines, edit=True)
    layout = model.llm.layout
    assert set(layout.tag_ids) == {"image", "edit"}
    open_id, close_id = layout.tag_ids["image"]
    assert open_id > max(layout.placeholder_ids.values())  # legacy ids keep their places
    assert model.llm.tokenizer.convert_ids_to_tokens([open_id, close_id]) == list(TASK_TAGS["image"])
    assert (
        Modality.IMAGE not in model.output_modalities
        and Modality.IMAGE in model.config.model.prompt_modalities
    )


def test_a_forced_image_is_rendered_from_the_written_prompt(pipelines):
    model = _model(pipelines)
    out = model.generate("draw a fox", modalities=["text", "image"], seed=0, **KW)
    assert len(out.images) == 1 and out.images[0].size == (32, 32)
    (span,) = out.prompts
    assert span.task == "image"
    open_id, close_id = model.llm.layout.tag_ids["image"]
    assert open_id in out.token_ids and out.token_ids[-1] == close_id  # closed at max_prompt_tokens at most
    assert "<gen>" not in out.text and "</gen>" not in out.text


def test_a_prompt_modality_not_asked_for_is_never_opened(pipelines):
    model = _model(pipelines)
    out = model.generate("draw a fox", modalities=["text"], seed=0, **KW)
    assert out.images == [] and out.prompts == []
    assert model.llm.layout.tag_ids["image"][0] not in out.token_ids


def test_swapping_the_pipeline_of_a_trained_model_needs_no_retraining(pipelines, tmp_path):
    model = _model(pipelines, "a")
    with torch.no_grad():  # stand-in for training: the new tag rows change
        model.llm.new_embeddings.add_(0.01)
    first = model.generate("draw a fox", modalities=["image"], seed=1, **KW)
    swapped = NextGPT.from_pretrained(model.save_pretrained(tmp_path / "m"))
    swapped.set_task_pipeline("image", pipelines["b"])
    for name, tensor in model.trainable_state_dict().items():
        torch.testing.assert_close(swapped.trainable_state_dict()[name], tensor)  # the same weights
    second = swapped.generate("draw a fox", modalities=["image"], seed=1, **KW)
    assert [s.text for s in second.prompts] == [s.text for s in first.prompts]  # the same prompt ...
    assert not np.array_equal(
        np.asarray(first.images[0]), np.asarray(second.images[0])
    )  # ... another decoder


def test_edit_renders_the_input_image_with_the_instruction(pipelines, tmp_path):
    model = _model(pipelines, edit=True)
    image = tmp_path / "in.png"
    Image.fromarray(np.full((32, 32, 3), 100, dtype=np.uint8)).save(image)
    edit_open, edit_close = model.llm.layout.tag_ids["edit"]
    real = model.llm.logits

    def writes_an_edit(hidden):  # the LLM answers "<edit> x </edit>" (a tiny model would not)
        logits = real(hidden)
        step = len(calls)
        calls.append(1)
        target = [edit_open, 80, edit_close][step] if step < 3 else None
        if target is not None:
            logits[..., :] = -1e9
            logits[..., target] = 1e9
        return logits

    calls: list[int] = []
    model.llm.logits = writes_an_edit
    out = model.generate([image, "make it red"], seed=0, max_new_tokens=4, num_inference_steps=2)
    assert [s.task for s in out.prompts] == ["edit"] and out.prompts[0].closed
    assert len(out.images) == 1 and out.images[0].size == (32, 32)


def test_training_text_with_tags_uses_the_tag_tokens(pipelines):
    model = _model(pipelines)
    conv = [
        {"role": "user", "content": "draw a fox"},
        {"role": "assistant", "content": "Sure: <gen> a red fox in snow </gen>"},
    ]
    enc = model.processor.encode(conv)
    ids = enc.input_ids.tolist()
    open_id, close_id = model.llm.layout.tag_ids["image"]
    assert open_id in ids and close_id in ids
    with pytest.raises(InputError, match="reserved token"):  # a user may not type the tag
        model.processor.encode([{"role": "user", "content": "say <gen> x </gen>"}])


def test_a_modality_cannot_be_soft_and_prompted(pipelines):
    with pytest.raises(ConfigError, match="model.outputs.image=null"):
        NextGPT.from_preset("tiny", [f"model.task_prompts.image={pipelines['a']}"])


def test_llmbind_7b_preset_holds_the_papers_numbers():
    from nextgpt.config import NextGPTConfig

    cfg = NextGPTConfig.from_preset("llmbind-7b")
    moe = cfg.model.llm.moe
    assert (moe.enabled, moe.r, moe.experts, moe.top_k) == (True, 8, 4, 2)
    assert len(moe.layers) == 16 and cfg.model.llm.num_layers == 32  # 16 of 32 layers
    assert cfg.model.output_modalities == () and cfg.model.task_prompts.tasks == (
        "image",
        "video",
        "audio",
        "edit",
    )
    stage = cfg.training.stages[3]
    assert (stage.optimizer, stage.lr, stage.weight_decay, stage.batch_size) == ("adamw", 3e-4, 0.0, 2)
    assert cfg.training.max_steps == 15000 and cfg.training.accumulate_grad_batches == 10
    assert round(stage.warmup_ratio * cfg.training.max_steps) == 100  # 100 warm-up steps


def test_converted_llmbind_dialogues_train_a_prompt_mode_model_with_experts(pipelines, tmp_path):
    """The LLMBind path end to end on tiny: upstream-format dialogues -> `convert llmbind` -> stage 3
    (LoRA + LoRA-MoE + the tag rows) -> a saved model whose tags and experts changed."""
    import csv
    import json

    from nextgpt.stages.data.convert.driver import convert
    from nextgpt.stages.train import train

    records = [
        {
            "conversations": [
                {"from": "human", "value": f"Please draw thing number {i}."},
                {"from": "gpt", "value": f"Sure: <gen> a small red fox number {i} in the snow </gen>"},
            ]
        }
        for i in range(8)
    ]
    (tmp_path / "dialogues.json").write_text(json.dumps(records))
    report = convert(
        "llmbind", tmp_path / "dialogues.json", tmp_path, tmp_path / "data" / "llmbind", progress=False
    )
    assert report.written == 8
    overrides = [
        "model.outputs.image=null",
        f"model.task_prompts.image={pipelines['a']}",
        "model.llm.moe.enabled=true",
        "model.llm.moe.layers=[0]",
        "training.stages.3.datasets=[llmbind]",
        "training.stages.3.lr=1e-2",
        "training.num_workers=0",
        "training.log_every_n_steps=1",
    ]
    before = NextGPT.from_preset("tiny", overrides[:4])
    out = train(3, "tiny", tmp_path / "data", tmp_path / "run", overrides, max_steps=3)
    trained = NextGPT.from_pretrained(out)
    open_id, _ = trained.llm.layout.tag_ids["image"]
    rows = open_id - trained.llm.layout.base_vocab
    assert not torch.equal(
        trained.llm.new_embeddings[rows], before.llm.new_embeddings[rows]
    )  # the tag learned
    moe_b = [n for n in trained.trainable_state_dict() if "lora_moe_B" in n]
    assert moe_b and any(trained.trainable_state_dict()[n].abs().sum() > 0 for n in moe_b)  # experts trained
    metrics = next((tmp_path / "run" / "stage3" / "logs").glob("version_*/metrics.csv"))
    assert any(r.get("train/moe_aux_loss") for r in csv.DictReader(open(metrics)))
    assert trained.generate("draw a fox", modalities=["image"], seed=0, **KW).images
