"""Deterministic, randomly initialised components for the three diffusion decoders.

The tiny pipelines have the same classes and data flow as the real ones (Stable Diffusion 1.5,
AudioLDM, Zeroscope / TextToVideoSD) at toy sizes, so the decoder wrappers, the parity tests and the
CPU demos exercise the real diffusers code without any weights. Their outputs are noise by design.

The architectures are data (:data:`ARCHITECTURES`: per decoder kind, the constructor kwargs of each
component, a ``tiny`` and a ``real`` entry) built by one function, :func:`build_components`. The
tiny sizes follow the ``get_dummy_components()`` helpers of diffusers' own pipeline tests
(``tests/pipelines/stable_diffusion/test_stable_diffusion.py``, ``.../audioldm/test_audioldm.py``,
``.../text_to_video_synthesis/test_text_to_video.py``); the real ones are the published configs of
SD 1.5, AudioLDM l-full and Zeroscope v2 576w (random weights of the true shapes, for the
benchmarks in ``bench/``). The conditioning shape comes from the decoder config: the text encoder
emits ``[cond_tokens, cond_dim]`` (CLIP) or ``[cond_dim]`` (CLAP).

Every builder is a pure function of its arguments: weights are drawn from ``torch.manual_seed(seed)``
inside :func:`torch.random.fork_rng`, so the caller's random state is left untouched.

Tokenizers: transformers 5 ignores ``vocab_file=``/``merges_file=`` in the tokenizer constructors,
so the tiny vocabularies are passed as ``vocab=`` / ``merges=`` objects. They hold every byte (so any
text tokenises) plus whole-word merges for a short list of common caption words. The real-shaped
components use them too (only the empty negative prompt is ever tokenised there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "ARCHITECTURES",
    "TINY_WORDS",
    "build_components",
    "tiny_audioldm_components",
    "tiny_clip_tokenizer",
    "tiny_roberta_tokenizer",
    "tiny_stable_diffusion_components",
    "tiny_zeroscope_components",
]

#: Words that the tiny tokenizers keep whole (everything else falls back to single bytes).
TINY_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "with", "and", "is", "red", "green", "blue", "square",
    "circle", "photo", "picture", "image", "video", "sound", "audio", "music", "dog", "cat",
    "bird", "car", "rain", "water", "man", "woman", "playing", "running", "barking", "loud",
)  # fmt: skip

#: Tiny AudioLDM vocoder: 16 mel bins and a hop of 160 samples (10 ms at 16 kHz), like the real one.
TINY_MEL_BINS = 16
TINY_VOCODER_UPSAMPLE_RATES = (10, 16)


def _byte_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the byte values 0..255.

    Printable Latin-1 bytes stand for themselves; the others are shifted to code points from 256 on.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    alphabet, shifted = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + shifted))
            shifted += 1
    return alphabet


def _apply_merges(pieces: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Byte-pair encoding of one word: repeatedly join the adjacent pair with the best (lowest) rank."""
    while len(pieces) > 1:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(pieces, pieces[1:])) if pair in ranks]
        if not candidates:
            break
        _, i = min(candidates)
        pieces = [*pieces[:i], pieces[i] + pieces[i + 1], *pieces[i + 2 :]]
    return pieces


def _add_word(pieces: list[str], vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """Append merges that make BPE turn ``pieces`` into one token.

    The word is first split by the merges already there (which take precedence); the new merges
    join what remains left to right. Earlier words stay single tokens: their own merges outrank
    every later one.
    """
    ranks = {pair: rank for rank, pair in enumerate(merges)}
    pieces = _apply_merges(list(pieces), ranks)
    while len(pieces) > 1:
        pair = (pieces[0], pieces[1])
        merges.append(pair)
        vocab.setdefault(pair[0] + pair[1], len(vocab))
        pieces = [pair[0] + pair[1], *pieces[2:]]


def tiny_clip_tokenizer(model_max_length: int) -> Any:
    """A CLIP BPE tokenizer with a ~600-token vocabulary (bytes, bytes + ``</w>``, a few words).

    Lower-cases like CLIP; ``<|startoftext|>`` / ``<|endoftext|>`` are the last two ids and the
    end token pads, as in the OpenAI vocabulary.
    """
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for ch in alphabet:
        vocab.setdefault(ch, len(vocab))
    for ch in alphabet:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        if len(word) > 1:
            _add_word([*word[:-1], word[-1] + "</w>"], vocab, merges)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


def tiny_roberta_tokenizer(model_max_length: int) -> Any:
    """A RoBERTa (GPT-2 byte-level BPE) tokenizer with a small vocabulary, as CLAP uses.

    Special ids follow roberta-base: ``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3.
    """
    from transformers import RobertaTokenizer

    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for ch in _byte_alphabet():
        vocab.setdefault(ch, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in TINY_WORDS:
        for form in (word, "\u0120" + word):  # "Ġ" marks a preceding space in byte-level BPE
            if len(form) > 1:
                _add_word(list(form), vocab, merges)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)


# --------------------------------------------------------------------------------------------------
# Architectures as data
# --------------------------------------------------------------------------------------------------
#
# One entry per decoder kind and size: the constructor kwargs of each component. The conditioning
# shape is not in the table: :func:`build_components` adds it (``cross_attention_dim`` of the UNet,
# the text encoder's width and positions, the CLAP projection). Keys beyond the constructors':
# ``text.ffn_mult`` (intermediate size = ffn_mult x hidden size), ``vocoder.pytorch_init`` (re-draw
# the vocoder's convolutions with PyTorch's default init), ``tokenizer_max_length`` (the CLAP
# tokenizer's length when the caller gives none) and ``scheduler`` (``(kind, kwargs)``, kind
# ``ddim`` or ``pndm``).

#: The SD-family noise schedule (scaled linear 0.00085..0.012), as in diffusers' dummy components
#: and the Zeroscope scheduler config.
_SD_DDIM: tuple[str, dict[str, Any]] = (
    "ddim",
    {
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "set_alpha_to_one": False,
        "steps_offset": 1,
    },
)

# Tiny: the sizes of diffusers' own get_dummy_components() (see the module docstring).
_TINY_RGB_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (4, 8),
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "norm_num_groups": 2,
    "sample_size": 32,
}
_TINY_CLIP_TEXT = {"ffn_mult": 2, "num_hidden_layers": 2, "num_attention_heads": 2, "layer_norm_eps": 1e-5}

# Real: Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5 unet/vae/text_encoder config.json; the
# same numbers are in diffusers' scripts/convert_original_stable_diffusion_to_diffusers.py for the v1
# yaml): UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M; PNDM (skip_prk_steps) scheduler.
_SD15_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "sample_size": 512,
}

ARCHITECTURES: dict[str, dict[str, dict[str, Any]]] = {
    "stable_diffusion": {
        "tiny": {
            "unet": {
                "sample_size": 16,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": (4, 8),
                "layers_per_block": 1,
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "norm_num_groups": 2,
            },
            "vae": _TINY_RGB_VAE,
            "text": _TINY_CLIP_TEXT,
            "scheduler": _SD_DDIM,
        },
        "real": {
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
            "vae": _SD15_VAE,
            "text": {
                "vocab_size": 49408,
                "intermediate_size": 3072,
                "num_hidden_layers": 12,
                "num_attention_heads": 12,
                "hidden_act": "quick_gelu",
            },
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
        },
    },
    # Real: Zeroscope v2 576w (cerspense/zeroscope_v2_576w, a fine-tune of
    # damo-vilab/text-to-video-ms-1.7b with the same configs): UNet3DConditionModel unet/config.json
    # (attention_head_dim 64, cross 1024, blocks 320/640/1280/1280), the SD VAE, the OpenCLIP-H text
    # tower as CLIPTextModel (hidden 1024, 23 layers, 16 heads, FFN 4096, gelu;
    # text_encoder/config.json), DDIM scheduler.
    "zeroscope": {
        "tiny": {
            "unet": {
                "sample_size": 16,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": (8, 8),
                "layers_per_block": 1,
                "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
                "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
                "attention_head_dim": 4,
                "norm_num_groups": 2,
            },
            "vae": _TINY_RGB_VAE,
            "text": _TINY_CLIP_TEXT,
            "scheduler": _SD_DDIM,
        },
        "real": {
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
            "vae": _SD15_VAE,
            "text": {
                "vocab_size": 49408,
                "intermediate_size": 4096,
                "num_hidden_layers": 23,
                "num_attention_heads": 16,
                "hidden_act": "gelu",
            },
            "scheduler": _SD_DDIM,
        },
    },
    # Tiny: the UNet takes the CLAP embedding as a class label and no text context; 16 mel bins and a
    # hop of 160 samples (10 ms at 16 kHz) like the real vocoder.
    # Real: AudioLDM l-full (cvssp/audioldm-l-full; diffusers
    # scripts/convert_original_audioldm_to_diffusers.py maps the original config: model_channels x
    # channel_mult [1, 2, 3, 5], 2 res blocks, attention at downsampling 2/4/8, FiLM class embedding of
    # the 512-d CLAP embedding concatenated to the time embedding, 8 latent channels. "l" has twice the
    # channels of "s" (128 -> 256; the model card), so block_out_channels (256, 512, 768, 1280);
    # cross-attention attends to the block's own features (cross_attention_dim = block_out_channels).
    # VAE ch 128 x [1, 2, 4], 8 latent channels, 1 input channel (64 mel bins). Text: CLAP
    # (laion/clap-htsat-unfused) RoBERTa-base text tower + 512-d projection. Vocoder: HiFi-GAN, 64
    # mels, upsample 5x4x2x2x2 (160 = 10 ms at 16 kHz), initial channel 1024, kernels 16/16/8/4/4,
    # resblocks 3/7/11. Scheduler: DDIM, betas 0.0015..0.0195.
    "audioldm": {
        "tiny": {
            "unet": {
                "sample_size": 16,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": (8, 16),
                "layers_per_block": 1,
                "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
                "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
                "norm_num_groups": 8,
            },
            "vae": {
                "in_channels": 1,
                "out_channels": 1,
                "block_out_channels": (8, 16),
                "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
                "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
                "latent_channels": 4,
                "norm_num_groups": 8,
            },
            "text": {"ffn_mult": 2, "num_hidden_layers": 1, "num_attention_heads": 2, "layer_norm_eps": 1e-5},
            "vocoder": {
                "model_in_dim": TINY_MEL_BINS,
                "upsample_initial_channel": 16,
                "upsample_rates": list(TINY_VOCODER_UPSAMPLE_RATES),
                "upsample_kernel_sizes": [2 * r for r in TINY_VOCODER_UPSAMPLE_RATES],
                "resblock_kernel_sizes": [3, 7],
                "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5]],
                # transformers initialises the vocoder's convolutions with std 0.01, which makes a
                # random tiny vocoder output ~1e-5; PyTorch's default init gives audible-scale
                # (~1e-2) noise.
                "pytorch_init": True,
            },
            "tokenizer_max_length": 16,
            "scheduler": _SD_DDIM,
        },
        "real": {
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
            # Only the empty negative prompt is ever tokenised: a CLIP-like length is plenty.
            "tokenizer_max_length": 77,
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
        },
    },
}


# --------------------------------------------------------------------------------------------------
# The builder
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int, device: Any = None, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Draw weights from ``torch.manual_seed(seed)`` without touching the caller's CPU random state;
    with ``device`` / ``dtype``, modules are constructed there directly (no float32 detour)."""
    previous = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]), contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        torch.manual_seed(seed)
        if dtype is not None:
            torch.set_default_dtype(dtype)
        try:
            yield
        finally:
            torch.set_default_dtype(previous)


def _scheduler(spec: tuple[str, Mapping[str, Any]]) -> Any:
    from diffusers import DDIMScheduler, PNDMScheduler

    kind, kwargs = spec
    return {"ddim": DDIMScheduler, "pndm": PNDMScheduler}[kind](**kwargs)


def _text_kwargs(spec: Mapping[str, Any], tokenizer: Any, hidden: int) -> dict[str, Any]:
    """Text-encoder config kwargs of width ``hidden``: ``ffn_mult`` resolved, the vocabulary covering
    the tokenizer, its special ids."""
    kwargs = dict(spec, hidden_size=hidden)
    ffn_mult = kwargs.pop("ffn_mult", None)
    if ffn_mult is not None:
        kwargs["intermediate_size"] = ffn_mult * hidden
    kwargs["vocab_size"] = max(kwargs.pop("vocab_size", 0), len(tokenizer))
    kwargs.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return kwargs


def build_components(
    kind: str,
    arch: str | Mapping[str, Any],
    cond_tokens: int,
    cond_dim: int,
    *,
    sample_rate: int = 16000,
    tokenizer_max_length: int | None = None,
    seed: int = 0,
    device: Any = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Random components for the pipeline of decoder ``kind`` (``stable_diffusion``, ``zeroscope``,
    ``audioldm``) of architecture ``arch``: a name in ``ARCHITECTURES[kind]`` (``tiny``, ``real``)
    or an entry of the same form.

    The text encoder emits the conditioning: ``[cond_tokens, cond_dim]`` (CLIP: hidden size
    ``cond_dim``, ``cond_tokens`` positions) or ``[cond_dim]`` (CLAP projection; ``cond_tokens`` is
    unused). Weights are drawn inside :func:`torch.random.fork_rng`: the UNet from ``seed``, the VAE
    from ``seed + 1``, the text encoder from ``seed + 2``, the vocoder from ``seed + 3``. ``device``
    and ``dtype``: construct there directly (default: the CPU in float32).
    """
    if kind not in ARCHITECTURES:
        raise ValueError(f"unknown decoder kind {kind!r}; valid: {', '.join(ARCHITECTURES)}")
    spec = ARCHITECTURES[kind][arch] if isinstance(arch, str) else arch
    if kind == "audioldm":
        return _audioldm(spec, cond_dim, sample_rate, tokenizer_max_length, seed, device, dtype)
    from diffusers import AutoencoderKL, UNet2DConditionModel, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet_cls = UNet3DConditionModel if kind == "zeroscope" else UNet2DConditionModel
    tokenizer = tiny_clip_tokenizer(cond_tokens)
    with _seeded(seed, device, dtype):
        unet = unet_cls(**spec["unet"], cross_attention_dim=cond_dim)
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**spec["vae"])
        torch.manual_seed(seed + 2)
        text = _text_kwargs(spec["text"], tokenizer, cond_dim)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text, max_position_embeddings=cond_tokens))
    parts = {
        "unet": unet,
        "scheduler": _scheduler(spec["scheduler"]),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }
    if kind == "stable_diffusion":  # no safety checker
        parts.update(safety_checker=None, feature_extractor=None, image_encoder=None)
        parts["requires_safety_checker"] = False
    return parts


def _audioldm(spec, cond_dim, sample_rate, tokenizer_max_length, seed, device, dtype) -> dict[str, Any]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    length = tokenizer_max_length or spec["tokenizer_max_length"]
    unet_kwargs = dict(spec["unet"])
    vocoder_kwargs = dict(spec["vocoder"])
    pytorch_init = vocoder_kwargs.pop("pytorch_init", False)
    with _seeded(seed, device, dtype):
        unet = UNet2DConditionModel(
            **unet_kwargs,
            # No text context: the "cross" attention attends to the block's own features.
            cross_attention_dim=unet_kwargs["block_out_channels"],
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=cond_dim,
            class_embeddings_concat=True,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**spec["vae"])
        torch.manual_seed(seed + 2)
        tokenizer = tiny_roberta_tokenizer(length)
        text = _text_kwargs(spec["text"], tokenizer, spec["text"].get("hidden_size", cond_dim))
        # AudioLDMPipeline pads the empty negative prompt to ``cond_dim`` tokens (it reuses the
        # embedding width as a length), so positions must cover that too (+2: RoBERTa's offset).
        text["max_position_embeddings"] = max(
            text.get("max_position_embeddings", 0), length + 2, cond_dim + 2
        )
        text_encoder = ClapTextModelWithProjection(ClapTextConfig(**text, projection_dim=cond_dim))
        torch.manual_seed(seed + 3)
        vocoder = SpeechT5HifiGan(
            SpeechT5HifiGanConfig(**vocoder_kwargs, sampling_rate=sample_rate, normalize_before=False)
        )
        if pytorch_init:
            for module in vocoder.modules():
                if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                    module.reset_parameters()
    return {
        "unet": unet,
        "scheduler": _scheduler(spec["scheduler"]),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "vocoder": vocoder,
    }


# --------------------------------------------------------------------------------------------------
# The library's tiny components (decoders with path=None)
# --------------------------------------------------------------------------------------------------


def tiny_stable_diffusion_components(cond_tokens: int, cond_dim: int, *, seed: int = 0) -> dict[str, Any]:
    """Components for a tiny ``StableDiffusionPipeline`` conditioned on ``[cond_tokens, cond_dim]``.

    UNet (4, 8) channels, 2-block VAE (scale factor 2), 2-layer CLIP text encoder, DDIM scheduler;
    no safety checker.
    """
    return build_components("stable_diffusion", "tiny", cond_tokens, cond_dim, seed=seed)


def tiny_zeroscope_components(cond_tokens: int, cond_dim: int, *, seed: int = 0) -> dict[str, Any]:
    """Components for a tiny ``TextToVideoSDPipeline`` (Zeroscope's class) on ``[cond_tokens, cond_dim]``.

    3-D UNet (8, 8) channels, 2-block VAE (scale factor 2) applied per frame, CLIP text encoder, DDIM.
    """
    return build_components("zeroscope", "tiny", cond_tokens, cond_dim, seed=seed)


def tiny_audioldm_components(
    cond_dim: int, *, sample_rate: int = 16000, tokenizer_max_length: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Components for a tiny ``AudioLDMPipeline`` whose CLAP ``text_embeds`` are ``cond_dim`` wide.

    The UNet takes the text embedding as a class label (``class_embed_type="simple_projection"``,
    concatenated to the time embedding) and no cross-attention context, like AudioLDM. The mel VAE
    has one input channel (scale factor 2); the HiFi-GAN vocoder reads 16 mel bins and upsamples by
    160 (one mel frame per 10 ms at 16 kHz, as the real vocoder).
    """
    return build_components(
        "audioldm",
        "tiny",
        1,
        cond_dim,
        sample_rate=sample_rate,
        tokenizer_max_length=tokenizer_max_length,
        seed=seed,
    )
