"""Shared parts of the real-scale benchmarks (``bench/*.py``).

Every benchmark runs at three sizes (``--size``):

* ``full``  — the true shapes of ``nextgpt-7b`` with RANDOM weights (no download): a Vicuna-7B-shaped
  LLaMA (hidden 4096, 32 layers, 32 heads, FFN 11008, vocab 32000) with LoRA r32, ImageBind huge,
  the paper's grouping input projector, the legacy transformer output projectors, and diffusers
  components of the true SD 1.5 / AudioLDM l-full / Zeroscope v2 576w shapes (:data:`SD15`,
  :data:`AUDIOLDM_L_FULL`, :data:`ZEROSCOPE_V2_576W`). Random weights cost the same compute and
  memory as trained ones (ENVIRONMENT.md "GPU measurements"). Meant for a GPU.
* ``small`` — the same architecture at a mid size that runs on a CPU in seconds to minutes.
* ``smoke`` — tiny (the test suite runs every benchmark at this size); decoders are the library's
  own tiny random components.

The model is always assembled by the library: :func:`build_model` applies :func:`model_overrides`
(dotted overrides of the ``nextgpt-7b`` preset, every weight path set to null) and builds
:class:`nextgpt.NextGPT` (the random LLM is built directly in its configured dtype).
:func:`install_decoder_components` makes each decoder's lazy ``load()`` build real-shaped random
components instead of the tiny ones (``Decoder.use_random_components``), so
``load()``/``unload()``/``cpu_offload`` behave exactly as with weights from disk.

Also here: device tables (bf16 dense peak, HBM bandwidth), CPU stand-ins (measured matmul throughput
and copy bandwidth), FLOP formulas, timing with device synchronisation, phase timers that wrap
methods, synthetic batches and media, and the JSON / markdown output every script writes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import functools
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

SIZES = ("smoke", "small", "full")
MEDIA = ("image", "audio", "video")

# --------------------------------------------------------------------------------------------------
# Size presets
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLMDims:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    lora_r: int
    lora_alpha: int


@dataclass(frozen=True)
class DecoderSize:
    """Conditioning shape and media geometry of one decoder at one benchmark size."""

    cond_tokens: int
    cond_dim: int
    steps: int
    media: dict[str, Any]  # height/width (image, video), num_frames (video), audio_length_in_s (audio)


@dataclass(frozen=True)
class SizeSpec:
    name: str
    llm: LLMDims
    #: ImageBind trunks (width, blocks, heads) and the shared embedding width.
    encoder: dict[str, tuple[int, int, int]]
    encoder_out: int
    #: Grouping input projector section (``model.input_projector.grouping``).
    grouping: dict[str, Any]
    #: Output projector fields (hidden_dim, num_heads, layers, ff_dim).
    out_proj: dict[str, Any]
    decoders: dict[str, DecoderSize]
    #: Component architecture key per media modality (``None``: the library's tiny components).
    components: dict[str, str | None]
    # Workload shapes.
    stage3_batch: int
    stage3_len: int
    stage1_batch: int
    stage1_len: int
    decode_tokens: int
    text_tokens: int  # text tokens before the signal run in generate_latency / memory


_HUGE = {
    "vision": (1280, 32, 16),
    "text": (1024, 24, 16),
    "audio": (768, 12, 12),
    "depth": (384, 12, 8),
    "thermal": (768, 12, 12),
    "imu": (512, 6, 8),
}

SIZE_SPECS: dict[str, SizeSpec] = {
    # Shapes of nextgpt-7b (nextgpt/presets/nextgpt-7b.yaml); workload = paper Table 7 (stage-3 batch
    # 4 x 512 tokens, stage-1 batch 18) and the legacy demo defaults (50 steps, 512x512 images, 24
    # frames of 320x576 video); AudioLDM clips of 5 s (the benchmark setting; the demo
    # default is 9 s).
    "full": SizeSpec(
        name="full",
        llm=LLMDims(4096, 32, 32, 32, 11008, 32000, lora_r=32, lora_alpha=32),
        encoder=_HUGE,
        encoder_out=1024,
        grouping={
            "hidden_dim": 512,
            "depths": [6, 3, 3],
            "num_heads": 8,
            "num_group_tokens": [64, 8, 0],
            "num_output_groups": [64, 8],
            "mlp_ratio": 4.0,
        },
        out_proj={
            "hidden_dim": 512,
            "num_heads": 4,
            "num_encoder_layers": 4,
            "num_decoder_layers": 4,
            "ff_dim": 2048,
        },
        decoders={
            "image": DecoderSize(77, 768, 50, {"height": 512, "width": 512}),
            "audio": DecoderSize(1, 512, 50, {"audio_length_in_s": 5.0}),
            "video": DecoderSize(77, 1024, 50, {"height": 320, "width": 576, "num_frames": 24}),
        },
        components={"image": "sd15", "audio": "audioldm_l_full", "video": "zeroscope_v2_576w"},
        stage3_batch=4,
        stage3_len=512,
        stage1_batch=18,
        stage1_len=64,
        decode_tokens=128,
        text_tokens=32,
    ),
    # A CPU-sized model of the same architecture (about 50M LLM parameters, a 6-block ViT).
    "small": SizeSpec(
        name="small",
        llm=LLMDims(512, 8, 8, 8, 1376, 32000, lora_r=16, lora_alpha=16),
        encoder={
            "vision": (256, 4, 4),
            "text": (32, 1, 2),
            "audio": (128, 4, 4),
            "depth": (16, 1, 2),
            "thermal": (16, 1, 2),
            "imu": (16, 1, 2),
        },
        encoder_out=256,
        grouping={
            "hidden_dim": 128,
            "depths": [2, 1, 1],
            "num_heads": 4,
            "num_group_tokens": [64, 8, 0],
            "num_output_groups": [64, 8],
            "mlp_ratio": 4.0,
        },
        out_proj={
            "hidden_dim": 128,
            "num_heads": 4,
            "num_encoder_layers": 2,
            "num_decoder_layers": 2,
            "ff_dim": 512,
        },
        decoders={
            "image": DecoderSize(16, 64, 4, {"height": 64, "width": 64}),
            "audio": DecoderSize(1, 64, 4, {"audio_length_in_s": 1.0}),
            "video": DecoderSize(16, 64, 4, {"height": 64, "width": 64, "num_frames": 8}),
        },
        components={"image": "sd_small", "audio": "audioldm_small", "video": "zeroscope_small"},
        stage3_batch=2,
        stage3_len=256,
        stage1_batch=4,
        stage1_len=48,
        decode_tokens=64,
        text_tokens=16,
    ),
    # The tiny preset's sizes: seconds on a CPU (tests).
    "smoke": SizeSpec(
        name="smoke",
        llm=LLMDims(64, 2, 4, 4, 128, 260, lora_r=4, lora_alpha=8),
        encoder={
            "vision": (32, 1, 2),
            "text": (32, 1, 2),
            "audio": (32, 1, 2),
            "depth": (16, 1, 2),
            "thermal": (16, 1, 2),
            "imu": (16, 1, 2),
        },
        encoder_out=32,
        grouping={
            "hidden_dim": 32,
            "depths": [1, 1],
            "num_heads": 4,
            "num_group_tokens": [8, 0],
            "num_output_groups": [4],
            "mlp_ratio": 2.0,
        },
        out_proj={
            "hidden_dim": 32,
            "num_heads": 2,
            "num_encoder_layers": 1,
            "num_decoder_layers": 1,
            "ff_dim": 64,
        },
        decoders={
            "image": DecoderSize(8, 32, 2, {"height": 32, "width": 32}),
            "audio": DecoderSize(1, 32, 2, {"audio_length_in_s": 0.08}),
            "video": DecoderSize(8, 32, 2, {"height": 32, "width": 32, "num_frames": 4}),
        },
        components={"image": None, "audio": None, "video": None},
        stage3_batch=2,
        stage3_len=48,
        stage1_batch=2,
        stage1_len=32,
        decode_tokens=8,
        text_tokens=4,
    ),
}


# --------------------------------------------------------------------------------------------------
# Devices and dtypes
# --------------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    return dev


@dataclass(frozen=True)
class Dtypes:
    """``llm``: LLM weights; ``media``: encoder and decoder weights; ``autocast``: compute dtype of
    the training step (``None``: plain float32)."""

    llm: str
    media: str
    autocast: str | None

    def autocast_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.autocast))


def resolve_dtypes(name: str, device: torch.device) -> Dtypes:
    """``auto``: the nextgpt-7b settings on CUDA (LLM bf16, encoder/decoders fp16, bf16-mixed
    training); float32 everywhere on CPU. An explicit dtype applies to every component."""
    if name == "auto":
        if device.type == "cuda":
            return Dtypes("bfloat16", "float16", "bfloat16")
        return Dtypes("float32", "float32", None)
    if name not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"unknown --dtype {name!r}")
    return Dtypes(name, name, None if name == "float32" else name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Dense (no sparsity) bf16 tensor-core peak per GPU, FLOP/s (NVIDIA datasheets). First match wins.
BF16_PEAK_FLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h200",), 989e12, "H200 SXM"),
    (("h100", "pcie"), 756e12, "H100 PCIe"),
    (("h100", "nvl"), 835e12, "H100 NVL"),
    (("h100",), 989e12, "H100 SXM"),
    (("a100",), 312e12, "A100"),
    (("l40s",), 362e12, "L40S"),
)
#: HBM bandwidth per GPU, bytes/s (NVIDIA datasheets). First match wins.
HBM_BANDWIDTH: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h200",), 4.8e12, "H200 SXM"),
    (("h100", "pcie"), 2.0e12, "H100 PCIe"),
    (("h100", "nvl"), 3.9e12, "H100 NVL"),
    (("h100",), 3.35e12, "H100 SXM"),
    (("a100", "80gb"), 2.0e12, "A100 80GB"),
    (("a100",), 1.555e12, "A100 40GB"),
    (("l40s",), 0.864e12, "L40S"),
)


def lookup(table, device_name: str) -> tuple[float, str] | None:
    """``(value, label)`` of the first row whose substrings all occur in ``device_name``."""
    name = device_name.lower()
    for keys, value, label in table:
        if all(k in name for k in keys):
            return value, label
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """Achieved FLOP/s of a square matmul (the CPU stand-in for a datasheet peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measured_copy_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Bytes/s of a large tensor copy, counting read + write (STREAM "copy" convention)."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


def peak_flops(
    device: torch.device, dtype: str | None, override_tflops: float | None = None
) -> tuple[float, str]:
    """(FLOP/s, source) the MFU divides by: ``--peak-tflops``, the GPU table, or on CPU a measured
    matmul in the step's dtype."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        hit = lookup(BF16_PEAK_FLOPS, device_name(device))
        if hit:
            return hit[0], f"datasheet dense bf16 peak, {hit[1]}"
        return measured_matmul_flops(
            device, torch.bfloat16, 4096
        ), "measured bf16 matmul (GPU not in the table)"
    dt = getattr(torch, dtype or "float32")
    return measured_matmul_flops(device, dt), f"measured {dt} matmul on this CPU (stand-in for a peak)"


def memory_bandwidth(device: torch.device, override_gbs: float | None = None) -> tuple[float, str]:
    """(bytes/s, source): ``--bandwidth-gbs``, the GPU table, or a measured copy bandwidth."""
    if override_gbs:
        return override_gbs * 1e9, "--bandwidth-gbs"
    if device.type == "cuda":
        hit = lookup(HBM_BANDWIDTH, device_name(device))
        if hit:
            return hit[0], f"datasheet HBM bandwidth, {hit[1]}"
        return measured_copy_bandwidth(device, 1024), "measured device copy bandwidth (GPU not in the table)"
    source = "measured memcpy bandwidth of this CPU (read+write bytes, 256 MiB copy)"
    return measured_copy_bandwidth(device), source


# --------------------------------------------------------------------------------------------------
# Model assembly
# --------------------------------------------------------------------------------------------------


def model_overrides(size: str, dtypes: Dtypes, *, audio_seconds: float | None = None) -> dict[str, Any]:
    """Dotted overrides of the ``nextgpt-7b`` preset for a benchmark size (every path null)."""
    spec = SIZE_SPECS[size]
    llm = spec.llm
    ov: dict[str, Any] = {
        "model.encoder.checkpoint": None,
        "model.encoder.out_embed_dim": spec.encoder_out,
        "model.encoder.dtype": dtypes.media,
        "model.llm.path": None,
        "model.llm.gguf_file": None,
        "model.llm.hidden_size": llm.hidden,
        "model.llm.num_layers": llm.layers,
        "model.llm.num_heads": llm.heads,
        "model.llm.num_kv_heads": llm.kv_heads,
        "model.llm.intermediate_size": llm.ffn,
        "model.llm.vocab_size": llm.vocab,
        "model.llm.dtype": dtypes.llm,
        "model.llm.lora.r": llm.lora_r,
        "model.llm.lora.alpha": llm.lora_alpha,
        "training.data_dir": None,
    }
    for trunk, (width, blocks, heads) in spec.encoder.items():
        ov[f"model.encoder.{trunk}"] = {"embed_dim": width, "num_blocks": blocks, "num_heads": heads}
    for key, value in spec.grouping.items():
        ov[f"model.input_projector.grouping.{key}"] = value
    for m in MEDIA:
        dec = spec.decoders[m]
        prefix = f"model.outputs.{m}"
        for key, value in spec.out_proj.items():
            ov[f"{prefix}.projector.{key}"] = value
        ov[f"{prefix}.projector.num_queries"] = dec.cond_tokens
        ov[f"{prefix}.decoder.path"] = None
        ov[f"{prefix}.decoder.dtype"] = dtypes.media
        ov[f"{prefix}.decoder.cond_tokens"] = dec.cond_tokens
        ov[f"{prefix}.decoder.cond_dim"] = dec.cond_dim
        ov[f"{prefix}.decoder.num_inference_steps"] = dec.steps
        for key, value in dec.media.items():
            ov[f"{prefix}.decoder.{key}"] = value
    if audio_seconds is not None:
        ov["model.outputs.audio.decoder.audio_length_in_s"] = float(audio_seconds)
    return ov


def build_config(
    size: str, dtypes: Dtypes, extra: dict[str, Any] | None = None, *, preset: str = "nextgpt-7b", **kw
):
    """The ``preset`` (``nextgpt-7b`` or ``nextgpt-7b-legacy``: their structure) at ``size``."""
    from nextgpt import NextGPTConfig

    ov = model_overrides(size, dtypes, **kw)
    ov.update(extra or {})
    return NextGPTConfig.from_preset(preset).with_overrides(ov)


def build_model(
    size: str,
    device: torch.device,
    dtypes: Dtypes,
    *,
    extra: dict[str, Any] | None = None,
    audio_seconds: float | None = None,
    preset: str = "nextgpt-7b",
):
    """``NextGPT`` of the given size on ``device`` with real-shaped random decoders installed."""
    import logging

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


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --------------------------------------------------------------------------------------------------
# Real-shaped diffusion components (random weights)
# --------------------------------------------------------------------------------------------------

# Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5 unet/vae/text_encoder config.json; the same
# numbers are in diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py for v1 yaml):
# UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M.
SD15: dict[str, Any] = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    "text": {
        "vocab_size": 49408,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "hidden_act": "quick_gelu",
    },
    # PNDM (skip_prk_steps), scaled-linear betas 0.00085..0.012: the SD 1.5 scheduler config.
    "scheduler": (
        "pndm",
        {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "skip_prk_steps": True,
            "steps_offset": 1,
            "set_alpha_to_one": False,
        },
    ),
}

# Zeroscope v2 576w (cerspense/zeroscope_v2_576w, a fine-tune of damo-vilab/text-to-video-ms-1.7b with
# the same configs): UNet3DConditionModel unet/config.json (attention_head_dim 64, cross 1024,
# blocks 320/640/1280/1280), the SD VAE, the OpenCLIP-H text tower as CLIPTextModel (hidden 1024,
# 23 layers, 16 heads, FFN 4096, gelu; text_encoder/config.json), DDIM scheduler.
ZEROSCOPE_V2_576W: dict[str, Any] = {
    "unet": {
        "sample_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "layers_per_block": 2,
        "block_out_channels": (320, 640, 1280, 1280),
        "down_block_types": ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
        "up_block_types": ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
        "attention_head_dim": 64,
        "norm_num_groups": 32,
    },
    "vae": SD15["vae"],
    "text": {
        "vocab_size": 49408,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "hidden_act": "gelu",
    },
    "scheduler": (
        "ddim",
        {
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
        },
    ),
}

# AudioLDM l-full (cvssp/audioldm-l-full; diffusers scripts/convert_original_audioldm_to_diffusers.py
# maps the original config: model_channels x channel_mult [1, 2, 3, 5], 2 res blocks, attention at
# downsampling 2/4/8, FiLM class embedding of the 512-d CLAP embedding concatenated to the time
# embedding, 8 latent channels. "l" has twice the channels of "s" (128 -> 256; the model card), so
# block_out_channels (256, 512, 768, 1280); cross-attention attends to the block's own features
# (cross_attention_dim = block_out_channels). VAE ch 128 x [1, 2, 4], 8 latent channels, 1 input
# channel (64 mel bins). Text: CLAP (laion/clap-htsat-unfused) RoBERTa-base text tower + 512-d
# projection. Vocoder: HiFi-GAN, 64 mels, upsample 5x4x2x2x2 (160 = 10 ms at 16 kHz), initial
# channel 1024, kernels 16/16/8/4/4, resblocks 3/7/11. Scheduler: DDIM, betas 0.0015..0.0195.
AUDIOLDM_L_FULL: dict[str, Any] = {
    "unet": {
        "sample_size": 128,
        "in_channels": 8,
        "out_channels": 8,
        "layers_per_block": 2,
        "block_out_channels": (256, 512, 768, 1280),
        "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
        "up_block_types": ("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    "vae": {
        "in_channels": 1,
        "out_channels": 1,
        "latent_channels": 8,
        "block_out_channels": (128, 256, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 3,
        "up_block_types": ("UpDecoderBlock2D",) * 3,
        "layers_per_block": 2,
        "sample_size": 512,
    },
    "text": {
        "vocab_size": 50265,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 514,
        "type_vocab_size": 1,
        "projection_hidden_act": "relu",
    },
    "vocoder": {
        "model_in_dim": 64,
        "upsample_initial_channel": 1024,
        "upsample_rates": [5, 4, 2, 2, 2],
        "upsample_kernel_sizes": [16, 16, 8, 4, 4],
        "resblock_kernel_sizes": [3, 7, 11],
        "resblock_dilation_sizes": [[1, 3, 5]] * 3,
    },
    "scheduler": (
        "ddim",
        {
            "beta_start": 0.0015,
            "beta_end": 0.0195,
            "beta_schedule": "scaled_linear",
            "clip_sample": False,
            "set_alpha_to_one": False,
            "steps_offset": 1,
        },
    ),
}

_SMALL_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 2,
    "up_block_types": ("UpDecoderBlock2D",) * 2,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
_SMALL_TEXT = {
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_act": "quick_gelu",
}

COMPONENT_ARCHS: dict[str, dict[str, Any]] = {
    "sd15": SD15,
    "zeroscope_v2_576w": ZEROSCOPE_V2_576W,
    "audioldm_l_full": AUDIOLDM_L_FULL,
    "sd_small": {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": _SMALL_VAE,
        "text": _SMALL_TEXT,
        "scheduler": SD15["scheduler"],
    },
    "zeroscope_small": {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
            "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": _SMALL_VAE,
        "text": _SMALL_TEXT,
        "scheduler": ZEROSCOPE_V2_576W["scheduler"],
    },
    "audioldm_small": {
        "unet": {
            "sample_size": 32,
            "in_channels": 4,
            "out_channels": 4,
            "layers_per_block": 1,
            "block_out_channels": (32, 64),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "attention_head_dim": 8,
            "norm_num_groups": 8,
        },
        "vae": {**_SMALL_VAE, "in_channels": 1, "out_channels": 1},
        "text": {
            "vocab_size": 512,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 130,
            "type_vocab_size": 1,
            "projection_hidden_act": "relu",
        },
        "vocoder": {
            "model_in_dim": 16,
            "upsample_initial_channel": 16,
            "upsample_rates": [10, 16],
            "upsample_kernel_sizes": [20, 32],
            "resblock_kernel_sizes": [3, 7],
            "resblock_dilation_sizes": [[1, 3, 5]] * 2,
        },
        "scheduler": AUDIOLDM_L_FULL["scheduler"],
    },
}


@contextlib.contextmanager
def _construct_on(device: torch.device, dtype: torch.dtype, seed: int) -> Iterator[None]:
    """Construct modules on ``device`` in ``dtype`` with seeded weights (no float32 detour)."""
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(seed)
        torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _scheduler(spec: tuple[str, dict[str, Any]]):
    from diffusers import DDIMScheduler, PNDMScheduler

    kind, kwargs = spec
    return (PNDMScheduler if kind == "pndm" else DDIMScheduler)(**kwargs)


def _clip_components(arch, cond_tokens, cond_dim, device, dtype, seed, unet_cls):
    from transformers import CLIPTextConfig, CLIPTextModel

    from nextgpt.decoders.tiny import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer(cond_tokens)
    with _construct_on(device, dtype, seed):
        unet = unet_cls(**arch["unet"], cross_attention_dim=cond_dim)
        vae = _vae(arch["vae"])
        text = dict(arch["text"])
        vocab = max(text.pop("vocab_size", 0), len(tokenizer))
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **text,
                vocab_size=vocab,
                hidden_size=cond_dim,
                max_position_embeddings=cond_tokens,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": _scheduler(arch["scheduler"]),
    }


def _vae(kwargs):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**kwargs)


def stable_diffusion_components(arch, cond_tokens, cond_dim, *, device, dtype, seed=0) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel

    parts = _clip_components(arch, cond_tokens, cond_dim, device, dtype, seed, UNet2DConditionModel)
    return {
        **parts,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def zeroscope_components(arch, cond_tokens, cond_dim, *, device, dtype, seed=0) -> dict[str, Any]:
    from diffusers import UNet3DConditionModel

    return _clip_components(arch, cond_tokens, cond_dim, device, dtype, seed, UNet3DConditionModel)


def audioldm_components(arch, cond_dim, *, sample_rate, device, dtype, seed=0) -> dict[str, Any]:
    from diffusers import UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    from nextgpt.decoders.tiny import tiny_roberta_tokenizer

    tokenizer = tiny_roberta_tokenizer(77)
    unet_kwargs = dict(arch["unet"])
    with _construct_on(device, dtype, seed):
        unet = UNet2DConditionModel(
            **unet_kwargs,
            cross_attention_dim=unet_kwargs["block_out_channels"],
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=cond_dim,
            class_embeddings_concat=True,
        )
        vae = _vae(arch["vae"])
        text = dict(arch["text"])
        # The pipeline pads the empty negative prompt to cond_dim tokens: positions must cover it.
        text["max_position_embeddings"] = max(text["max_position_embeddings"], cond_dim + 2)
        text_encoder = ClapTextModelWithProjection(
            ClapTextConfig(
                **text,
                projection_dim=cond_dim,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        vocoder = SpeechT5HifiGan(
            SpeechT5HifiGanConfig(**arch["vocoder"], sampling_rate=sample_rate, normalize_before=False)
        )
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "vocoder": vocoder,
        "scheduler": _scheduler(arch["scheduler"]),
    }


def install_decoder_components(model, size: str) -> None:
    """Make every decoder's lazy ``load()`` build random components of the size's true shapes.

    Uses ``Decoder.use_random_components`` (``path=None`` decoders build their pipeline from it); ``load()`` then freezes, checks and places the pipeline (or enables CPU
    offload) exactly as for weights read from disk. Components are constructed on the decoder's
    device in its dtype, or on the CPU in float32 when the decoder offloads to the CPU (as a
    ``from_pretrained`` load would), so that construction never inflates device memory.
    At ``smoke`` size nothing is installed: the library's tiny components are used.
    """
    from nextgpt.modality import Modality

    spec = SIZE_SPECS[size]
    for m in MEDIA:
        key = spec.components[m]
        if key is None:
            continue
        arch = COMPONENT_ARCHS[key]
        decoder = model.decoders[Modality(m)]

        def factory(decoder=decoder, arch=arch, m=m):
            offload = decoder.cpu_offload and decoder.device.type == "cuda"
            device = torch.device("cpu") if offload else decoder.device
            dtype = torch.float32 if offload else decoder.dtype
            if m == "image":
                return stable_diffusion_components(
                    arch, decoder.cond_tokens, decoder.cond_dim, device=device, dtype=dtype, seed=decoder.seed
                )
            if m == "video":
                return zeroscope_components(
                    arch, decoder.cond_tokens, decoder.cond_dim, device=device, dtype=dtype, seed=decoder.seed
                )
            return audioldm_components(
                arch,
                decoder.cond_dim,
                sample_rate=decoder.sample_rate,
                device=device,
                dtype=dtype,
                seed=decoder.seed,
            )

        decoder.use_random_components(factory, f"{size}-size real-shaped")


def pipeline_parameters(decoder) -> dict[str, int]:
    """Parameter counts of a loaded decoder's torch components."""
    pipe = decoder.load()
    return {
        name: count_parameters(comp)
        for name, comp in pipe.components.items()
        if isinstance(comp, torch.nn.Module)
    }


# --------------------------------------------------------------------------------------------------
# FLOP and byte formulas
# --------------------------------------------------------------------------------------------------


def llama_matmul_params(hidden: int, layers: int, heads: int, kv_heads: int, ffn: int, vocab: int) -> int:
    """Weights that multiply every token in a LLaMA forward: per layer q, o (d x d), k, v
    (d x d_kv), gate/up/down (3 d x ffn), plus the LM head (vocab x d). The input embedding is a
    lookup (no FLOPs) and the norms are negligible."""
    kv = hidden // heads * kv_heads
    return layers * (2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * ffn) + vocab * hidden


def llm_matmul_params(llm) -> tuple[int, int]:
    """``(frozen, trainable)`` weights of ``nn.Linear`` layers in a built ``LanguageModel`` (LoRA
    adapters count as trainable; the embedding table is excluded)."""
    frozen = trainable = 0
    for name, module in llm.named_modules():
        if isinstance(module, torch.nn.Linear):
            if "lora_" in name:
                trainable += module.weight.numel()
            else:
                frozen += module.weight.numel()
    return frozen, trainable


def train_step_flops(
    *, frozen: int, trainable: int, layers: int, hidden: int, batch: int, seq: int, recompute: bool
) -> dict[str, float]:
    """FLOPs of one training step of the LLM on ``batch x seq`` tokens.

    ``T = batch * seq``. Each weight does 2 FLOPs per token forward (multiply + add); backward
    needs the activation gradient (2 per token per weight, for every layer the gradient passes:
    all of them, since the input projector below the LLM trains) and, only for trainable weights,
    the weight gradient (2 more). Attention scores (QK^T and AV, counted over the full S x S matrix
    as PaLM / Megatron do) cost 4 * L * d * S per token forward and twice that backward.

    * ``model`` (reported MFU): ``(2 + 2) * N_frozen * T + (2 + 2 + 2) * N_trainable * T + 12 * L * d * S * T``
      — LoRA with a frozen base: no weight gradients for the frozen matrices.
    * ``six_n``: the full fine-tuning convention ``6 * N * T + 12 * L * d * S * T`` (N = all
      weights), which over-counts a LoRA step by ``2 * N_frozen * T``.
    * ``hardware``: ``model`` + the forward recomputed under gradient checkpointing
      (``2 * N * T + 4 * L * d * S * T``) when ``recompute``.
    """
    T = batch * seq
    attn_fwd = 4 * layers * hidden * seq * T
    model = 4 * frozen * T + 6 * trainable * T + 3 * attn_fwd
    six_n = 6 * (frozen + trainable) * T + 3 * attn_fwd
    hardware = model + ((2 * (frozen + trainable) * T + attn_fwd) if recompute else 0)
    return {"model": float(model), "six_n": float(six_n), "hardware": float(hardware), "tokens": float(T)}


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


def timeit(
    fn: Callable[[], Any], *, device: torch.device, repeats: int, warmup: int = 1
) -> tuple[dict[str, float], Any]:
    """Run ``fn`` ``warmup`` times, then time ``repeats`` runs (device-synchronised)."""
    result = None
    for _ in range(warmup):
        result = fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        t = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "runs": len(times),
    }, result


class PhaseTimer:
    """Accumulates wall time of wrapped methods by phase (device-synchronised around each call).

    ``wrap(obj, "method", "phase")`` replaces the bound method on the instance by a timing wrapper
    (``functools.wraps`` keeps its signature visible to ``inspect.signature``); :meth:`restore`
    removes the wrappers. Library code is not changed.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.totals: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._wrapped: list[tuple[object, str]] = []

    def wrap(self, obj: object, name: str, phase: str) -> None:
        original = getattr(obj, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            sync(self.device)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                sync(self.device)
                self.totals[phase] = self.totals.get(phase, 0.0) + time.perf_counter() - t
                self.calls[phase] = self.calls.get(phase, 0) + 1

        setattr(obj, name, timed)
        self._wrapped.append((obj, name))

    def reset(self) -> None:
        self.totals.clear()
        self.calls.clear()

    def restore(self) -> None:
        for obj, name in reversed(self._wrapped):
            delattr(obj, name)
        self._wrapped.clear()


# --------------------------------------------------------------------------------------------------
# Synthetic inputs
# --------------------------------------------------------------------------------------------------

#: Preprocessed encoder input shape per item (fixed by ImageBind's geometry at every size).
MEDIA_SHAPES = {"image": (3, 224, 224), "audio": (3, 1, 128, 204), "video": (15, 3, 2, 224, 224)}


def synthetic_media(modality: str, n: int, *, seed: int = 0) -> torch.Tensor:
    """A batch of preprocessed encoder inputs (normalised noise), float32 on the CPU, as the
    collator delivers them."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n, *MEDIA_SHAPES[modality]), generator=g)


def raw_media(modality: str, *, seed: int = 0):
    """One raw input item for ``generate``: a PIL image, 3 s of audio or 2 s of 8 fps video."""
    import numpy as np
    from PIL import Image

    from nextgpt import Audio, Video

    rng = np.random.default_rng(seed)
    if modality == "image":
        return Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    if modality == "audio":
        return Audio(rng.standard_normal(48000).astype(np.float32) * 0.1, sample_rate=16000)
    return Video(rng.integers(0, 256, (16, 240, 320, 3), dtype=np.uint8), fps=8.0)


@dataclass
class RowSpec:
    """One synthetic training row: an input media item (or none) and an output signal run (or none)."""

    input: str | None
    output: str | None = None


def encoder_features(model, modality: str, n: int, *, seed: int = 0) -> torch.Tensor:
    """What the encoder cache would hold for ``n`` items: ``media_features`` on synthetic media,
    float32 on the CPU."""
    from nextgpt.modality import Modality

    with torch.no_grad():
        feats = model.media_features(Modality(modality), synthetic_media(modality, n, seed=seed))
    return feats.float().cpu()


def synthetic_batch(
    model,
    rows: Sequence[RowSpec],
    seq_len: int,
    *,
    cached: bool,
    with_targets: bool,
    seed: int = 0,
    features: dict[str, torch.Tensor] | None = None,
):
    """A :class:`~nextgpt.stages.batch.Batch` of random token ids with the real structure.

    Each row: BOS, random text, the input's placeholder tokens, random text; the second half is the
    assistant reply (labelled) and ends with the output's signal-token run. ``cached``: encoder
    features (computed once by the encoder, or taken from ``features``) instead of preprocessed media.
    ``with_targets``: one random alignment target per signal run, shaped like the output projector's
    output. Everything is on the CPU (move it with :func:`batch_to`).
    """
    from nextgpt.modality import Modality
    from nextgpt.processor import IGNORE_INDEX
    from nextgpt.stages.batch import Batch

    layout = model.llm.layout
    T = model.input_projector.num_tokens
    g = torch.Generator().manual_seed(seed)
    B, L = len(rows), seq_len
    ids = torch.randint(4, layout.base_vocab, (B, L), generator=g)
    bos = model.llm.tokenizer.bos_token_id
    ids[:, 0] = bos if bos is not None else 1
    labels = torch.full((B, L), IGNORE_INDEX, dtype=torch.long)
    labels[:, L // 2 :] = ids[:, L // 2 :]
    slot_modalities: list[list[Modality]] = []
    counts: dict[str, int] = {}
    targets: list[list[torch.Tensor | None]] = []
    out_mods: list[list[Modality]] = []
    for b, row in enumerate(rows):
        if row.input is not None:
            if 1 + T > L // 2:
                raise ValueError(f"seq_len {L} too short for {T} media tokens")
            ids[b, 1 : 1 + T] = layout.placeholder_ids[Modality(row.input)]
            slot_modalities.append([Modality(row.input)])
            counts[row.input] = counts.get(row.input, 0) + 1
        row_targets: list[torch.Tensor | None] = []
        row_out: list[Modality] = []
        if row.output is not None:
            m = Modality(row.output)
            run = torch.tensor(layout.signal_ids[m])
            start = L - len(run) - 2
            if start <= 1 + T:
                raise ValueError(f"seq_len {L} too short for a {row.output} signal run")
            ids[b, start : start + len(run)] = run
            labels[b, start : start + len(run)] = run
            row_out.append(m)
            if with_targets:
                pcfg = model.config.model.outputs[m].projector
                row_targets.append(torch.randn(pcfg.num_queries, pcfg.out_dim, generator=g))
        targets.append(row_targets)
        out_mods.append(row_out)
    media = feats = None
    if cached:
        feats = {}
        for m, n in counts.items():
            source = (
                features[m][:n] if features and m in features else encoder_features(model, m, n, seed=seed)
            )
            feats[Modality(m)] = source
    else:
        media = {Modality(m): synthetic_media(m, n, seed=seed) for m, n in counts.items()}
    return Batch(
        keys=[f"sample{b}" for b in range(B)],
        input_ids=ids,
        attention_mask=torch.ones(B, L, dtype=torch.long),
        labels=labels,
        slot_modalities=slot_modalities,
        media=media,
        features=feats,
        output_modalities=out_mods,
        output_captions=[[None] * len(r) for r in out_mods],
        targets=targets if with_targets else None,
    )


def batch_to(batch, device: torch.device):
    """The batch with every tensor on ``device`` (what the stage module's batch transfer does)."""
    return batch.to(device)


def base_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=SIZES, default="small", help="model/workload size (default: small)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: LLM bf16 + encoder/decoders fp16 + bf16 autocast on CUDA, float32 on CPU",
    )
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return ap


def cli_main(
    parse_args: Callable[[Any], Any], run: Callable[[Any], Report], argv: Sequence[str] | None
) -> dict[str, Any]:
    """Parse ``argv``, run, print the table, write ``--json``; the caller's torch thread count is
    restored afterwards (``--threads`` changes a process-wide setting)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return run(args).emit(args.json)
    finally:
        torch.set_num_threads(threads)


def setup(args) -> tuple[torch.device, Dtypes]:
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = resolve_device(args.device)
    return device, resolve_dtypes(args.dtype, device)


def env_info(device: torch.device, dtypes: Dtypes | None = None) -> dict[str, Any]:
    import diffusers
    import peft
    import transformers

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    if dtypes is not None:
        info["dtypes"] = {"llm": dtypes.llm, "media": dtypes.media, "autocast": dtypes.autocast}
    return info


@dataclass
class Report:
    """What a benchmark prints and writes: rows for a markdown table plus headline numbers."""

    benchmark: str
    size: str
    env: dict[str, Any]
    columns: list[tuple[str, str]]  # (key, header)
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "size": self.size,
            "env": self.env,
            "config": self.config,
            "results": self.rows,
            "summary": self.summary,
            "notes": self.notes,
        }

    def markdown(self) -> str:
        env = self.env
        lines = [
            f"# {self.benchmark} --size {self.size}: {env['device_name']} ({env['device']}), torch {env['torch']}, "
            f"threads {env['torch_threads']}, {env['date']}",
            "",
            "| " + " | ".join(h for _, h in self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        for row in self.rows:
            lines.append("| " + " | ".join(_fmt(row.get(k)) for k, _ in self.columns) + " |")
        if self.summary:
            lines.append("")
            lines += [f"- {k}: {_fmt(v)}" for k, v in self.summary.items()]
        lines += [f"- note: {n}" for n in self.notes]
        return "\n".join(lines)

    def emit(self, json_path: str | None) -> dict[str, Any]:
        print(self.markdown(), flush=True)
        data = self.to_dict()
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(data, indent=1, default=str))
        return data


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10000 else str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def gib(n: float) -> float:
    return n / 2**30
