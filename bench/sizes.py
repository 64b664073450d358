"""The benchmark sizes (``--size``) as config overlays on the presets, and model assembly.

A size is a list of dotted overrides (the ``key=value`` strings ``nextgpt train --override`` takes)
applied to a preset with ``NextGPTConfig.from_preset(preset).with_overrides(...)``, a workload
(batch shapes, token counts) and the diffusers architecture its decoders get:

* ``full``  — the preset's own shapes (``nextgpt-7b``: a Vicuna-7B-shaped LLaMA with LoRA r32,
  ImageBind huge, the paper's grouping input projector, the transformer output projectors) with
  RANDOM weights (no download) and the preset's own decoder settings (9 s AudioLDM clips;
  ``--audio-seconds`` changes that only when given). Decoders get
  the ``real`` entries of :data:`nextgpt.decoders.tiny.ARCHITECTURES` (SD 1.5, AudioLDM l-full,
  Zeroscope v2 576w). Random weights cost the same compute and memory as trained ones
  (ENVIRONMENT.md "GPU measurements"). Meant for a GPU.
* ``small`` — the same architecture at a mid size that runs on a CPU in seconds to minutes.
* ``smoke`` — tiny (the test suite runs every benchmark at this size); decoders are the library's
  own tiny random components.

Every size also gets :data:`RANDOM_WEIGHTS` (every weight path null) and the run's dtypes.
:func:`build_model` builds :class:`nextgpt.NextGPT` from that config (the random LLM is built
directly in its configured dtype) and installs the size's decoder components
(:func:`bench.components.install_decoder_components`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import yaml

from bench.hardware import Dtypes

SIZES = ("smoke", "small", "full")
MEDIA = ("image", "audio", "video")

#: Every size: no weight is read from disk (all random) and no training data is needed.
RANDOM_WEIGHTS: tuple[str, ...] = (
    "model.encoder.checkpoint=null",
    "model.llm.path=null",
    "model.llm.gguf_file=null",
    "training.data_dir=null",
    *(f"model.outputs.{m}.decoder.path=null" for m in MEDIA),
)


def _each_output(section: str, **values: Any) -> tuple[str, ...]:
    """The same ``model.outputs.<m>.<section>.<key>=<value>`` overrides for image, audio and video."""
    return tuple(f"model.outputs.{m}.{section}.{k}={v}" for m in MEDIA for k, v in values.items())


def _output(m: str, cond_tokens: int, cond_dim: int, steps: int, **media: Any) -> tuple[str, ...]:
    """One decoder's conditioning shape, steps and media geometry; the projector emits
    ``cond_tokens`` queries."""
    decoder = {"cond_tokens": cond_tokens, "cond_dim": cond_dim, "num_inference_steps": steps, **media}
    return (
        f"model.outputs.{m}.projector.num_queries={cond_tokens}",
        *(f"model.outputs.{m}.decoder.{k}={v}" for k, v in decoder.items()),
    )


@dataclass(frozen=True)
class Size:
    name: str
    #: Dotted overrides of the preset (its structure stays: nextgpt-7b or nextgpt-7b-legacy).
    overlay: tuple[str, ...]
    #: Diffusers architecture of the decoders: ``real`` (the true shapes), ``small`` (bench's mid
    #: size, :data:`bench.components.SMALL`) or ``None`` (the library's tiny components).
    components: str | None
    # Workload shapes.
    stage3_batch: int
    stage3_len: int
    stage1_batch: int
    stage1_len: int
    decode_tokens: int
    text_tokens: int  # text tokens before the signal run in generate_latency / memory


SIZE_SPECS: dict[str, Size] = {
    # The shapes of the preset itself (nextgpt/presets/nextgpt-7b.yaml); workload = paper Table 7
    # (stage-3 batch 4 x 512 tokens, stage-1 batch 18) and the preset's legacy demo defaults (50
    # steps, 512x512 images, 24 frames of 320x576 video, 9 s AudioLDM clips).
    "full": Size(
        name="full",
        overlay=(),
        components="real",
        stage3_batch=4,
        stage3_len=512,
        stage1_batch=18,
        stage1_len=64,
        decode_tokens=128,
        text_tokens=32,
    ),
    # A CPU-sized model of the same architecture (about 50M LLM parameters, a 4-block ViT).
    "small": Size(
        name="small",
        overlay=(
            "model.encoder.out_embed_dim=256",
            "model.encoder.vision={embed_dim: 256, num_blocks: 4, num_heads: 4}",
            "model.encoder.text={embed_dim: 32, num_blocks: 1, num_heads: 2}",
            "model.encoder.audio={embed_dim: 128, num_blocks: 4, num_heads: 4}",
            "model.encoder.depth={embed_dim: 16, num_blocks: 1, num_heads: 2}",
            "model.encoder.thermal={embed_dim: 16, num_blocks: 1, num_heads: 2}",
            "model.encoder.imu={embed_dim: 16, num_blocks: 1, num_heads: 2}",
            "model.input_projector.grouping.hidden_dim=128",
            "model.input_projector.grouping.depths=[2, 1, 1]",
            "model.input_projector.grouping.num_heads=4",
            "model.input_projector.grouping.num_group_tokens=[64, 8, 0]",
            "model.input_projector.grouping.num_output_groups=[64, 8]",
            "model.input_projector.grouping.mlp_ratio=4.0",
            "model.llm.hidden_size=512",
            "model.llm.num_layers=8",
            "model.llm.num_heads=8",
            "model.llm.num_kv_heads=8",
            "model.llm.intermediate_size=1376",
            "model.llm.vocab_size=32000",
            "model.llm.lora.r=16",
            "model.llm.lora.alpha=16",
            *_each_output(
                "projector",
                hidden_dim=128,
                num_heads=4,
                num_encoder_layers=2,
                num_decoder_layers=2,
                ff_dim=512,
            ),
            *_output("image", 16, 64, 4, height=64, width=64),
            *_output("audio", 1, 64, 4, audio_length_in_s=1.0),
            *_output("video", 16, 64, 4, height=64, width=64, num_frames=8),
        ),
        components="small",
        stage3_batch=2,
        stage3_len=256,
        stage1_batch=4,
        stage1_len=48,
        decode_tokens=64,
        text_tokens=16,
    ),
    # About the tiny preset's sizes: seconds on a CPU (tests).
    "smoke": Size(
        name="smoke",
        overlay=(
            "model.encoder.out_embed_dim=32",
            "model.encoder.vision={embed_dim: 32, num_blocks: 1, num_heads: 2}",
            "model.encoder.text={embed_dim: 32, num_blocks: 1, num_heads: 2}",
            "model.encoder.audio={embed_dim: 32, num_blocks: 1, num_heads: 2}",
            "model.encoder.depth={embed_dim: 16, num_blocks: 1, num_heads: 2}",
            "model.encoder.thermal={embed_dim: 16, num_blocks: 1, num_heads: 2}",
            "model.encoder.imu={embed_dim: 16, num_blocks: 1, num_heads: 2}",
            "model.input_projector.grouping.hidden_dim=32",
            "model.input_projector.grouping.depths=[1, 1]",
            "model.input_projector.grouping.num_heads=4",
            "model.input_projector.grouping.num_group_tokens=[8, 0]",
            "model.input_projector.grouping.num_output_groups=[4]",
            "model.input_projector.grouping.mlp_ratio=2.0",
            "model.llm.hidden_size=64",
            "model.llm.num_layers=2",
            "model.llm.num_heads=4",
            "model.llm.num_kv_heads=4",
            "model.llm.intermediate_size=128",
            "model.llm.vocab_size=260",
            "model.llm.lora.r=4",
            "model.llm.lora.alpha=8",
            *_each_output(
                "projector", hidden_dim=32, num_heads=2, num_encoder_layers=1, num_decoder_layers=1, ff_dim=64
            ),
            *_output("image", 8, 32, 2, height=32, width=32),
            *_output("audio", 1, 32, 2, audio_length_in_s=0.08),
            *_output("video", 8, 32, 2, height=32, width=32, num_frames=4),
        ),
        components=None,
        stage3_batch=2,
        stage3_len=48,
        stage1_batch=2,
        stage1_len=32,
        decode_tokens=8,
        text_tokens=4,
    ),
}


def _yaml(value: Any) -> str:
    """``value`` as YAML that reads back as itself (``1e-05`` alone would read as a string)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def dtype_overrides(dtypes: Dtypes) -> tuple[str, ...]:
    """The run's weight dtypes: LLM, encoder and every decoder."""
    return (
        f"model.llm.dtype={dtypes.llm}",
        f"model.encoder.dtype={dtypes.media}",
        *_each_output("decoder", dtype=dtypes.media),
    )


def model_overrides(size: str, dtypes: Dtypes, *, audio_seconds: float | None = None) -> list[str]:
    """Every override a size applies to the preset: random weights, the size's overlay, the dtypes
    and (``audio_seconds``) the AudioLDM clip length."""
    ov = [*RANDOM_WEIGHTS, *SIZE_SPECS[size].overlay, *dtype_overrides(dtypes)]
    if audio_seconds is not None:
        ov.append(f"model.outputs.audio.decoder.audio_length_in_s={_yaml(float(audio_seconds))}")
    return ov


def build_config(
    size: str,
    dtypes: Dtypes,
    extra: Mapping[str, Any] | Sequence[str] | None = None,
    *,
    preset: str = "nextgpt-7b",
    **kw,
):
    """The ``preset`` (``nextgpt-7b`` or ``nextgpt-7b-legacy``: their structure) at ``size``;
    ``extra``: further overrides (a mapping of dotted keys to values, or ``key=value`` strings)."""
    from nextgpt import NextGPTConfig

    cfg = NextGPTConfig.from_preset(preset).with_overrides(model_overrides(size, dtypes, **kw))
    return cfg.with_overrides(extra) if extra else cfg


def build_model(
    size: str,
    device: torch.device,
    dtypes: Dtypes,
    *,
    extra: Mapping[str, Any] | Sequence[str] | None = None,
    audio_seconds: float | None = None,
    preset: str = "nextgpt-7b",
):
    """``NextGPT`` of the given size on ``device`` with the size's random decoders installed."""
    import logging

    from bench.components import install_decoder_components
    from nextgpt import NextGPT

    cfg = build_config(size, dtypes, extra, audio_seconds=audio_seconds, preset=preset)
    previous = logging.getLogger("nextgpt").level
    logging.getLogger("nextgpt").setLevel(logging.ERROR)  # "RANDOM weights" warnings are expected here
    try:
        model = NextGPT(cfg, device=device)
    finally:
        logging.getLogger("nextgpt").setLevel(previous)
    install_decoder_components(model, size)
    return model


def suppress_eos(model) -> None:
    """Make decoding run to ``max_new_tokens``: random weights may emit EOS at any step."""
    import dataclasses

    model.llm.layout = dataclasses.replace(model.llm.layout, eos_ids=())
