"""Deterministic, randomly initialised tiny components for the three diffusion decoders.

The tiny pipelines have the same classes and data flow as the real ones (Stable Diffusion 1.5,
AudioLDM, Zeroscope / TextToVideoSD) at toy sizes, so the decoder wrappers, the parity tests and the
CPU demos exercise the real diffusers code without any weights. Their outputs are noise by design.

Sizes follow the ``get_dummy_components()`` helpers of diffusers' own pipeline tests
(``tests/pipelines/stable_diffusion/test_stable_diffusion.py``, ``.../audioldm/test_audioldm.py``,
``.../text_to_video_synthesis/test_text_to_video.py``), with the conditioning shape taken from the
decoder config: the text encoder emits ``[cond_tokens, cond_dim]`` (CLIP) or ``[cond_dim]`` (CLAP).

Every builder is a pure function of its arguments: weights are drawn from ``torch.manual_seed(seed)``
inside :func:`torch.random.fork_rng`, so the caller's random state is left untouched.

Tokenizers: transformers 5 ignores ``vocab_file=``/``merges_file=`` in the tokenizer constructors,
so the tiny vocabularies are passed as ``vocab=`` / ``merges=`` objects. They hold every byte (so any
text tokenises) plus whole-word merges for a short list of common caption words.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = [
    "TINY_WORDS",
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


def _ddim_scheduler() -> Any:
    from diffusers import DDIMScheduler

    # The SD-family noise schedule (scaled linear 0.00085..0.012), as in diffusers' dummy components.
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def _clip_text_encoder(tokenizer: Any, cond_tokens: int, cond_dim: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=cond_dim,
        intermediate_size=2 * cond_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=cond_tokens,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def _image_vae_and_clip_text(seed: int, cond_tokens: int, cond_dim: int) -> tuple[Any, Any, Any]:
    """The RGB VAE (2 blocks, scale factor 2) and CLIP tokenizer + text encoder shared by the tiny SD
    and Zeroscope components (seeded with ``seed + 1`` and ``seed + 2``; call inside ``fork_rng``)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )
    torch.manual_seed(seed + 2)
    tokenizer = tiny_clip_tokenizer(cond_tokens)
    return vae, tokenizer, _clip_text_encoder(tokenizer, cond_tokens, cond_dim)


def tiny_stable_diffusion_components(cond_tokens: int, cond_dim: int, *, seed: int = 0) -> dict[str, Any]:
    """Components for a tiny ``StableDiffusionPipeline`` conditioned on ``[cond_tokens, cond_dim]``.

    UNet (4, 8) channels, 2-block VAE (scale factor 2), 2-layer CLIP text encoder, DDIM scheduler;
    no safety checker.
    """
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(4, 8),
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=cond_dim,
            norm_num_groups=2,
        )
        vae, tokenizer, text_encoder = _image_vae_and_clip_text(seed, cond_tokens, cond_dim)
    return {
        "unet": unet,
        "scheduler": _ddim_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def tiny_zeroscope_components(cond_tokens: int, cond_dim: int, *, seed: int = 0) -> dict[str, Any]:
    """Components for a tiny ``TextToVideoSDPipeline`` (Zeroscope's class) on ``[cond_tokens, cond_dim]``.

    3-D UNet (8, 8) channels, 2-block VAE (scale factor 2) applied per frame, CLIP text encoder, DDIM.
    """
    from diffusers import UNet3DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(8, 8),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
            cross_attention_dim=cond_dim,
            attention_head_dim=4,
            norm_num_groups=2,
        )
        vae, tokenizer, text_encoder = _image_vae_and_clip_text(seed, cond_tokens, cond_dim)
    return {
        "unet": unet,
        "scheduler": _ddim_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
    }


def tiny_audioldm_components(
    cond_dim: int, *, sample_rate: int = 16000, tokenizer_max_length: int = 16, seed: int = 0
) -> dict[str, Any]:
    """Components for a tiny ``AudioLDMPipeline`` whose CLAP ``text_embeds`` are ``cond_dim`` wide.

    The UNet takes the text embedding as a class label (``class_embed_type="simple_projection"``,
    concatenated to the time embedding) and no cross-attention context, like AudioLDM. The mel VAE
    has one input channel (scale factor 2); the HiFi-GAN vocoder reads 16 mel bins and upsamples by
    160 (one mel frame per 10 ms at 16 kHz, as the real vocoder).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        ClapTextConfig,
        ClapTextModelWithProjection,
        SpeechT5HifiGan,
        SpeechT5HifiGanConfig,
    )

    channels = (8, 16)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=channels,
            layers_per_block=1,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            # No text context: the "cross" attention attends to the block's own features.
            cross_attention_dim=channels,
            norm_num_groups=8,
            class_embed_type="simple_projection",
            projection_class_embeddings_input_dim=cond_dim,
            class_embeddings_concat=True,
        )
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(
            in_channels=1,
            out_channels=1,
            block_out_channels=channels,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            latent_channels=4,
            norm_num_groups=8,
        )
        torch.manual_seed(seed + 2)
        tokenizer = tiny_roberta_tokenizer(tokenizer_max_length)
        # AudioLDMPipeline pads the empty negative prompt to ``cond_dim`` tokens (it reuses the
        # embedding width as a length), so positions must cover that too (+2: RoBERTa's offset).
        text_config = ClapTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=cond_dim,
            intermediate_size=2 * cond_dim,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=max(tokenizer_max_length, cond_dim) + 2,
            projection_dim=cond_dim,
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        text_encoder = ClapTextModelWithProjection(text_config)
        torch.manual_seed(seed + 3)
        vocoder = SpeechT5HifiGan(
            SpeechT5HifiGanConfig(
                model_in_dim=TINY_MEL_BINS,
                sampling_rate=sample_rate,
                upsample_initial_channel=16,
                upsample_rates=list(TINY_VOCODER_UPSAMPLE_RATES),
                upsample_kernel_sizes=[2 * r for r in TINY_VOCODER_UPSAMPLE_RATES],
                resblock_kernel_sizes=[3, 7],
                resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5]],
                normalize_before=False,
            )
        )
        # transformers initialises the vocoder's convolutions with std 0.01, which makes a random
        # tiny vocoder output ~1e-5; PyTorch's default init gives audible-scale (~1e-2) noise.
        for module in vocoder.modules():
            if isinstance(module, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                module.reset_parameters()
    return {
        "unet": unet,
        "scheduler": _ddim_scheduler(),
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "vocoder": vocoder,
    }
