"""LLMBind's task prompts: span parsing (closed, unclosed at the budget, several tasks) and the
pipelines behind them: loaded once from a folder, swapped by path, and instruction editing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt.errors import ConfigError, InputError
from nextgpt.task_prompts import EditPipeline, PromptPipeline, TaskSpan, parse_task_spans, strip_task_tags


def test_spans_closed_and_in_order():
    text = "Sure: <gen> a red fox in snow </gen> and a sound <aud_cap>rain on a roof</aud_cap>."
    assert parse_task_spans(text) == [
        TaskSpan("image", "a red fox in snow", True),
        TaskSpan("audio", "rain on a roof", True),
    ]
    assert strip_task_tags(text) == "Sure: a red fox in snow and a sound rain on a roof."


def test_a_span_left_open_runs_to_the_end_or_the_next_tag():
    assert parse_task_spans("Here: <vid_cap> a dog running on the beach") == [
        TaskSpan("video", "a dog running on the beach", False)
    ]
    assert parse_task_spans("<gen> a cat <edit> make it blue </edit>") == [
        TaskSpan("image", "a cat", False),
        TaskSpan("edit", "make it blue", True),
    ]
    assert parse_task_spans("no tags </gen> here") == []


def _save_sd(folder, seed=0, instruct=False):
    from diffusers import (
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )

    from nextgpt.decoders.tiny import ARCHITECTURES, build_components

    parts = build_components("stable_diffusion", "tiny", 16, 32, seed=seed)
    if instruct:  # InstructPix2Pix: the UNet also reads the input image's latents (4 + 4 channels)
        spec = dict(ARCHITECTURES["stable_diffusion"]["tiny"]["unet"], in_channels=8)
        torch.manual_seed(seed)
        parts["unet"] = UNet2DConditionModel(**spec, cross_attention_dim=32)
        StableDiffusionInstructPix2PixPipeline(**parts).save_pretrained(folder)
    else:
        StableDiffusionPipeline(**parts).save_pretrained(folder)
    return folder


def test_pipeline_loads_once_and_renders_seeded_prompts(tmp_path):
    pipe = PromptPipeline(_save_sd(tmp_path / "sd"), "image")
    kw = {"num_inference_steps": 2, "height": 32, "width": 32}
    first = pipe.render(["a red fox", "a blue bird"], seed=3, **kw)
    again = pipe.render(["a red fox", "a blue bird"], seed=3, **kw)
    assert pipe.loads == 1 and len(first) == 2 and first[0].size == (32, 32)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))  # seeded
    lone = pipe.render(["a blue bird"], seed=4, **kw)[0]  # prompt i uses seed + i
    # a batch of one and a batch of two differ only by float rounding (batch-shaped CPU kernels)
    assert np.abs(np.asarray(lone, dtype=int) - np.asarray(first[1], dtype=int)).max() <= 2
    other = pipe.render(["a blue bird"], seed=5, **kw)[0]
    assert np.abs(np.asarray(other, dtype=int) - np.asarray(first[1], dtype=int)).max() > 2


def test_swapping_the_pipeline_is_a_path_change(tmp_path):
    kw = {"num_inference_steps": 2, "height": 32, "width": 32}
    a = PromptPipeline(_save_sd(tmp_path / "a", seed=0), "image").render(["a red fox"], seed=0, **kw)[0]
    b = PromptPipeline(_save_sd(tmp_path / "b", seed=7), "image").render(["a red fox"], seed=0, **kw)[0]
    assert a.size == b.size and not np.array_equal(np.asarray(a), np.asarray(b))  # another decoder drew it


def test_edit_pipeline_edits_the_input_image(tmp_path):
    pipe = EditPipeline(_save_sd(tmp_path / "ip2p", instruct=True))
    image = Image.fromarray(np.full((32, 32, 3), 128, dtype=np.uint8))
    out = pipe.edit(image, "make it red", seed=0, num_inference_steps=2)
    assert out.size == (32, 32)
    with pytest.raises(InputError, match="instruction"):
        pipe.edit(image, "  ")


def test_pipeline_errors(tmp_path):
    with pytest.raises(ConfigError, match="no diffusers pipeline folder"):
        PromptPipeline(tmp_path / "none", "image").render(["x"])
    with pytest.raises(ConfigError, match="modality"):
        PromptPipeline(tmp_path, "smell")
    with pytest.raises(InputError, match="non-empty list"):
        PromptPipeline(tmp_path, "image").render([])
