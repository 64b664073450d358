"""The frozen diffusion decoders (``nextgpt.decoders``) on deterministic tiny random components.

The central check is parity (DESIGN 7): a decoder driven with ``encode_captions([caption])`` as its
conditioning produces exactly what the bare diffusers pipeline produces from ``prompt=caption`` with
the same seed, steps and guidance. That proves the conditioning contract the output projectors are
trained against (stage-2 targets) and that ``generate`` drives the pipeline as its authors intended.
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from nextgpt.config import (
    DECODER_CONFIGS,
    AudioLDMDecoderConfig,
    DecoderConfig,
    StableDiffusionDecoderConfig,
    ZeroscopeDecoderConfig,
)
from nextgpt.decoders import (
    DECODERS,
    AudioLDMDecoder,
    Decoder,
    StableDiffusionDecoder,
    ZeroscopeDecoder,
    build_decoder,
    decoder_class,
)
from nextgpt.decoders.tiny import (
    tiny_clip_tokenizer,
    tiny_roberta_tokenizer,
    tiny_stable_diffusion_components,
)
from nextgpt.errors import CheckpointError, ConfigError

KINDS = ("stable_diffusion", "audioldm", "zeroscope")
CAPTION = "a red square"
STEPS, GUIDANCE = 2, 7.5

# Tiny decoders' configs: conditioning [8, 32] (image, video) and [1, 32] (audio); small media.
SPECS = {
    "stable_diffusion": {"cond_tokens": 8, "cond_dim": 32, "height": 32, "width": 32},
    "audioldm": {"cond_tokens": 1, "cond_dim": 32, "audio_length_in_s": 0.5},
    "zeroscope": {"cond_tokens": 8, "cond_dim": 32, "height": 32, "width": 32, "num_frames": 4},
}
#: Decoder arguments that are not configuration.
RUNTIME = ("device", "seed", "progress_bar", "load_kwargs", "config_key")
# Media arguments of the bare pipelines matching SPECS.
PIPE_MEDIA = {
    "stable_diffusion": {"height": 32, "width": 32, "output_type": "np"},
    "audioldm": {"audio_length_in_s": 0.5, "output_type": "np"},
    "zeroscope": {"height": 32, "width": 32, "num_frames": 4, "output_type": "np"},
}


def make(kind: str, **overrides) -> Decoder:
    """A ``kind`` decoder on the CPU from its SPECS config; ``overrides`` are config fields or
    :data:`RUNTIME` arguments."""
    cls = DECODERS[kind]
    fields = {"num_inference_steps": STEPS, "guidance_scale": GUIDANCE, **SPECS[kind]}
    runtime = {"device": "cpu"}
    for name, value in overrides.items():
        (runtime if name in RUNTIME else fields)[name] = value
    return cls(cls.config_class(**fields), **runtime)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny pipelines are dominated by per-op overhead: one intra-op thread runs them many times
    faster than two (and does not stall when other processes share the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def decoders() -> dict[str, Decoder]:
    """One loaded decoder per kind, shared by the read-only tests of this module."""
    return {kind: make(kind) for kind in KINDS}


def as_array(kind: str, output) -> np.ndarray:
    """Our decoder's output for one item as a float array in the pipeline's 'np' value range."""
    if kind == "stable_diffusion":
        return np.asarray(output, dtype=np.float32) / 255.0
    if kind == "zeroscope":
        return output.astype(np.float32) / 255.0
    return output


def pipe_array(kind: str, out) -> np.ndarray:
    """The bare pipeline's 'np' output for item 0, quantised to 8 bits like ours for image/video."""
    if kind == "stable_diffusion":
        return (out.images[0] * 255).round() / 255.0
    if kind == "zeroscope":
        return (out.frames[0] * 255).round() / 255.0
    return out.audios[0]


def pipe_call(decoder: Decoder, seed: int = 0, **kwargs):
    generator = torch.Generator("cpu").manual_seed(seed)
    return decoder.pipeline(
        num_inference_steps=STEPS,
        guidance_scale=GUIDANCE,
        generator=generator,
        **PIPE_MEDIA[decoder.kind],
        **kwargs,
    )


def random_cond(decoder: Decoder, batch: int = 1, seed: int = 0) -> torch.Tensor:
    """Random conditioning of the decoder's shape, unit-norm per token like CLAP embeddings."""
    cond = torch.randn(batch, *decoder.cond_shape, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(cond, dim=-1) * (
        decoder.cond_dim**0.5 if decoder.cond_tokens > 1 else 1.0
    )


def max_diff(a, b) -> float:
    """Max abs difference relative to the peak of ``b`` (images/videos peak near 1; tiny audio lower)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ------------------------------------------------------------------------------------------------
# Parity with the bare pipelines
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_generate_from_caption_embedding_matches_pipeline_prompt(decoders, kind: str) -> None:
    decoder = decoders[kind]
    cond = decoder.encode_captions([CAPTION])
    assert cond.shape == (1, *decoder.cond_shape)
    ours = as_array(kind, decoder.generate(cond, seed=0)[0])
    theirs = pipe_array(kind, pipe_call(decoder, prompt=CAPTION))
    assert ours.shape == theirs.shape
    assert max_diff(ours, theirs) <= 1e-5, f"{kind}: max abs diff {max_diff(ours, theirs)}"
    # Other conditioning gives another output (the conditioning is used). Random rather than another
    # caption: a random tiny text encoder maps all captions to nearly the same embedding.
    other = as_array(kind, decoder.generate(random_cond(decoder, seed=4), seed=0)[0])
    assert max_diff(ours, other) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
def test_encode_captions_equals_pipeline_prompt_embeds(decoders, kind: str, caplog) -> None:
    decoder = decoders[kind]
    pipe = decoder.pipeline
    captions = [CAPTION, "a dog barking loudly in the rain"]  # CLIP kinds: the second is cut to 8 tokens
    with caplog.at_level(logging.WARNING, logger="nextgpt.decoders.base"):
        ours = decoder.encode_captions(captions)
    assert ("1 of 2 captions are longer than 8 tokens" in caplog.text) == (kind != "audioldm")
    assert ours.shape == (2, *decoder.cond_shape) and not ours.requires_grad
    if kind == "audioldm":
        theirs = pipe._encode_prompt(captions, torch.device("cpu"), 1, False)[:, None, :]  # (B, 1, dim)
        torch.testing.assert_close(ours.norm(dim=-1), torch.ones(2, 1))  # CLAP embeddings L2-normalised
    else:
        theirs, _ = pipe.encode_prompt(captions, torch.device("cpu"), 1, False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert not torch.allclose(ours[0], ours[1])


@pytest.mark.parametrize("kind", KINDS)
def test_negative_defaults_to_empty_prompt_embedding(decoders, kind: str) -> None:
    decoder = decoders[kind]
    pipe = decoder.pipeline
    negative = decoder.negative_conditioning(2)
    assert negative.shape == (2, *decoder.cond_shape)
    if kind == "audioldm":
        both = pipe._encode_prompt([CAPTION], torch.device("cpu"), 1, True)  # cat([negative, positive])
        theirs = both[:1, None, :]
    else:
        _, theirs = pipe.encode_prompt([CAPTION], torch.device("cpu"), 1, True)
    torch.testing.assert_close(negative, theirs.expand(2, -1, -1), rtol=0, atol=0)
    # Generation: default negative == pipeline with negative_prompt="" ; another negative differs.
    cond = decoder.encode_captions([CAPTION])
    ours = as_array(kind, decoder.generate(cond, seed=3)[0])
    theirs_out = pipe_array(kind, pipe_call(decoder, seed=3, prompt=CAPTION, negative_prompt=""))
    assert max_diff(ours, theirs_out) <= 1e-5
    changed = as_array(kind, decoder.generate(cond, negative=random_cond(decoder, seed=5), seed=3)[0])
    assert max_diff(ours, changed) > 1e-3


# ------------------------------------------------------------------------------------------------
# Conditioning checks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_conditioning_shape_raises_naming_shapes(decoders, kind: str) -> None:
    decoder = decoders[kind]
    tokens, dim = decoder.cond_shape
    with pytest.raises(ValueError, match=rf"\[B, {tokens}, {dim}\].*\[1, {tokens}, {dim + 1}\]"):
        decoder.generate(torch.zeros(1, tokens, dim + 1), seed=0)
    with pytest.raises(ValueError, match=rf"got \[1, {tokens + 1}, {dim}\]"):
        decoder.generate(torch.zeros(1, tokens + 1, dim), seed=0)
    with pytest.raises(ValueError, match="got \\[2, 3, 4, 5\\]"):
        decoder.prepare_conditioning(torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="negative has batch 2 but cond has batch 3"):
        decoder.generate(torch.zeros(3, tokens, dim), negative=torch.zeros(2, tokens, dim), seed=0)
    with pytest.raises(ValueError, match=r"\[B, "):
        decoder.denoising_loss(torch.zeros(1, tokens, dim + 1), latents=torch.zeros(1, 4, 4, 4))


def test_image_conditioning_shorter_than_tokens_is_zero_padded(decoders) -> None:
    decoder = decoders["stable_diffusion"]
    short = torch.randn(2, 3, 32, generator=torch.Generator().manual_seed(0))
    padded = decoder.prepare_conditioning(short)
    assert padded.shape == (2, 8, 32)
    torch.testing.assert_close(padded[:, :3], short)
    assert torch.count_nonzero(padded[:, 3:]) == 0
    full = torch.cat([short, torch.zeros(2, 5, 32)], dim=1)
    a = decoder.generate(short[:1], seed=0)[0]
    b = decoder.generate(full[:1], seed=0)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_audio_accepts_flat_embeddings_and_requires_one_token(decoders) -> None:
    decoder = decoders["audioldm"]
    cond = decoder.encode_captions([CAPTION])
    a = decoder.generate(cond, seed=0)[0]
    b = decoder.generate(cond[:, 0, :], seed=0)[0]  # [B, 512] as cached by upstream
    assert np.array_equal(a, b)
    with pytest.raises(ConfigError, match="cond_tokens: must be 1"):
        AudioLDMDecoderConfig(cond_tokens=2, cond_dim=32)


# ------------------------------------------------------------------------------------------------
# Outputs and seeds
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_seeds_reproduce_and_differ(decoders, kind: str) -> None:
    decoder = decoders[kind]
    cond = torch.randn(1, *decoder.cond_shape, generator=torch.Generator().manual_seed(1))
    first = as_array(kind, decoder.generate(cond, seed=7)[0])
    again = as_array(kind, decoder.generate(cond, seed=7)[0])
    other = as_array(kind, decoder.generate(cond, seed=8)[0])
    assert max_diff(first, again) == 0.0
    assert max_diff(first, other) > 1e-3


def test_image_outputs_are_rgb_pil_of_requested_size(decoders) -> None:
    decoder = decoders["stable_diffusion"]
    images = decoder.generate(torch.randn(2, 8, 32), seed=0, height=32, width=48)
    assert len(images) == 2
    for image in images:
        assert isinstance(image, PIL.Image.Image) and image.mode == "RGB" and image.size == (48, 32)


def test_audio_outputs_are_float32_mono_at_sample_rate(decoders) -> None:
    decoder = decoders["audioldm"]
    assert decoder.sample_rate == 16000
    audios = decoder.generate(torch.randn(2, 1, 32), seed=0, audio_length_in_s=0.3)
    assert len(audios) == 2
    for audio in audios:
        assert isinstance(audio, np.ndarray) and audio.dtype == np.float32
        assert audio.shape == (int(0.3 * 16000),) and np.isfinite(audio).all()


def test_video_outputs_are_uint8_frames_with_fps(decoders) -> None:
    decoder = decoders["zeroscope"]
    assert decoder.fps == 8
    videos = decoder.generate(torch.randn(2, 8, 32), seed=0, num_frames=3, height=24, width=32)
    assert len(videos) == 2
    for video in videos:
        assert isinstance(video, np.ndarray) and video.dtype == np.uint8 and video.shape == (3, 24, 32, 3)
        assert video.std() > 0  # not blank


@pytest.mark.parametrize("kind", KINDS)
def test_progress_callback_sees_every_step(decoders, kind: str) -> None:
    decoder = decoders[kind]
    calls: list[tuple[int, int]] = []
    decoder.generate(
        torch.randn(1, *decoder.cond_shape),
        seed=0,
        num_inference_steps=2,
        callback=lambda *a: calls.append(a),
    )
    assert calls == [(1, 2), (2, 2)]


# ------------------------------------------------------------------------------------------------
# Lazy loading, saving and loading
# ------------------------------------------------------------------------------------------------


def test_pipeline_is_built_lazily_once_and_unloads() -> None:
    decoder = make("stable_diffusion")
    builds: list[int] = []
    original = decoder.tiny_components

    def counting() -> dict:
        builds.append(1)
        return original()

    decoder.tiny_components = counting  # type: ignore[method-assign]
    assert not decoder.is_loaded and builds == []
    assert "RANDOM tiny components" in decoder.describe()
    cond = torch.randn(1, 8, 32)
    decoder.generate(cond, seed=0)
    assert decoder.is_loaded and len(builds) == 1
    pipe = decoder.pipeline
    decoder.generate(cond, seed=0)
    decoder.encode_captions([CAPTION])
    assert decoder.load() is pipe and len(builds) == 1
    assert all(not p.requires_grad for p in pipe.unet.parameters())
    assert not pipe.text_encoder.training
    decoder.unload()
    assert not decoder.is_loaded
    decoder.generate(cond, seed=0)
    assert len(builds) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_loads_saved_pipeline_directory_with_identical_outputs(
    decoders, kind: str, tmp_path, monkeypatch
) -> None:
    memory = decoders[kind]
    memory.pipeline.save_pretrained(tmp_path / "pipe")
    monkeypatch.setenv("NEXTGPT_TEST_DECODER_DIR", str(tmp_path))
    loaded = make(kind, path="${env:NEXTGPT_TEST_DECODER_DIR}/pipe")
    assert not loaded.is_loaded
    description = loaded.describe()
    assert str(tmp_path / "pipe") in description and "RANDOM" not in description
    cond = memory.encode_captions([CAPTION])
    torch.testing.assert_close(loaded.encode_captions([CAPTION]), cond, rtol=0, atol=0)
    a = as_array(kind, memory.generate(cond, seed=0)[0])
    b = as_array(kind, loaded.generate(cond, seed=0)[0])
    assert max_diff(a, b) == 0.0
    assert loaded.caption_fingerprint() == memory.caption_fingerprint()


def test_missing_or_invalid_directory_raises_checkpoint_error(tmp_path, monkeypatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=rf"{missing}.*model_index\.json"):
        make("stable_diffusion", path=missing).load()
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="has no model_index.json"):
        make("zeroscope", path=tmp_path / "empty").generate(torch.zeros(1, 8, 32))
    monkeypatch.delenv("NEXTGPT_UNSET_DECODER_DIR", raising=False)
    with pytest.raises(ConfigError, match="NEXTGPT_UNSET_DECODER_DIR"):
        make("audioldm", path="${env:NEXTGPT_UNSET_DECODER_DIR}").load()


def test_loaded_pipeline_with_other_conditioning_shape_is_rejected(tmp_path) -> None:
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline(**tiny_stable_diffusion_components(8, 32)).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="hidden_size.*32.*cond_dim=16"):
        make("stable_diffusion", path=tmp_path, cond_dim=16).load()
    with pytest.raises(ConfigError, match="model_max_length.*8.*cond_tokens=77"):
        make("stable_diffusion", path=tmp_path, cond_tokens=77).load()


def test_cpu_offload_without_cuda_is_logged(caplog) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: offload would be used, not refused")
    decoder = make("audioldm", cpu_offload=True)
    with caplog.at_level(logging.WARNING, logger="nextgpt.decoders.base"):
        decoder.load()
    assert "cpu_offload needs a CUDA device" in caplog.text
    assert decoder.pipeline.device.type == "cpu"


# ------------------------------------------------------------------------------------------------
# Denoising loss through the frozen UNet
# ------------------------------------------------------------------------------------------------

MEDIA = {
    "stable_diffusion": lambda g: torch.rand(2, 3, 16, 16, generator=g) * 2 - 1,
    "audioldm": lambda g: torch.randn(2, 1, 12, 16, generator=g),  # log-mel [B, 1, T, mel bins]
    "zeroscope": lambda g: torch.rand(2, 3, 2, 16, 16, generator=g) * 2 - 1,
}
LATENT_SHAPES = {
    "stable_diffusion": (2, 4, 8, 8),
    "audioldm": (2, 4, 6, 8),
    "zeroscope": (2, 4, 2, 8, 8),
}


@pytest.mark.parametrize("kind", KINDS)
def test_denoising_loss_trains_the_conditioning_not_the_unet(decoders, kind: str) -> None:
    decoder = decoders[kind]
    media = MEDIA[kind](torch.Generator().manual_seed(0))
    latents = decoder.encode_media_to_latents(media, generator=torch.Generator().manual_seed(0))
    assert latents.shape == LATENT_SHAPES[kind] and not latents.requires_grad
    cond = torch.randn(2, *decoder.cond_shape, generator=torch.Generator().manual_seed(1)).requires_grad_()
    loss = decoder.denoising_loss(cond, media=media, generator=torch.Generator().manual_seed(5))
    assert loss.ndim == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in decoder.pipeline.unet.parameters())
    with torch.no_grad():
        same = decoder.denoising_loss(cond, media=media, generator=torch.Generator().manual_seed(5))
        other = decoder.denoising_loss(cond, media=media, generator=torch.Generator().manual_seed(6))
    assert same.item() == loss.item()
    assert other.item() != loss.item()
    with pytest.raises(ValueError, match="exactly one of latents= or media="):
        decoder.denoising_loss(cond, latents=latents, media=media)


def test_denoising_loss_is_the_epsilon_mse_at_given_timesteps(decoders) -> None:
    decoder = decoders["stable_diffusion"]
    pipe = decoder.pipeline
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1))
    timesteps = torch.tensor([10, 900])
    loss = decoder.denoising_loss(
        cond, latents=latents, timesteps=timesteps, generator=torch.Generator().manual_seed(2)
    )
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    alpha = pipe.scheduler.alphas_cumprod[timesteps].view(2, 1, 1, 1)
    noisy = alpha.sqrt() * latents + (1 - alpha).sqrt() * noise
    with torch.no_grad():
        expected = torch.mean((pipe.unet(noisy, timesteps, encoder_hidden_states=cond).sample - noise) ** 2)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_denoising_loss_uses_velocity_target_for_v_prediction() -> None:
    from diffusers import DDPMScheduler

    decoder = make("stable_diffusion")
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = torch.randn(1, 8, 32)
    t = torch.tensor([500])
    eps = decoder.denoising_loss(
        cond, latents=latents, timesteps=t, generator=torch.Generator().manual_seed(2)
    )
    v_scheduler = DDPMScheduler.from_config(decoder.pipeline.scheduler.config, prediction_type="v_prediction")
    assert v_scheduler.config.prediction_type == "v_prediction"
    decoder._train_scheduler = v_scheduler
    v = decoder.denoising_loss(cond, latents=latents, timesteps=t, generator=torch.Generator().manual_seed(2))
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(2))
    noisy = v_scheduler.add_noise(latents, noise, t)
    with torch.no_grad():
        pred = decoder.pipeline.unet(noisy, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(v, torch.mean((pred - v_scheduler.get_velocity(latents, noise, t)) ** 2))
    assert v.item() != eps.item()


@pytest.mark.parametrize("kind", KINDS)
def test_encode_media_rejects_wrong_layout(decoders, kind: str) -> None:
    with pytest.raises(ValueError, match="media must be"):
        decoders[kind].encode_media_to_latents(torch.zeros(1, 2, 16, 16))


# ------------------------------------------------------------------------------------------------
# Registry, config, tiny components
# ------------------------------------------------------------------------------------------------


def test_registry_knows_the_three_kinds_and_rejects_others() -> None:
    assert dict(DECODERS) == {
        "stable_diffusion": StableDiffusionDecoder,
        "audioldm": AudioLDMDecoder,
        "zeroscope": ZeroscopeDecoder,
    }
    with pytest.raises(
        ConfigError, match="unknown decoder kind 'dalle'.*stable_diffusion, audioldm, zeroscope"
    ):
        decoder_class("dalle")
    with pytest.raises(TypeError):
        DECODERS["mine"] = StableDiffusionDecoder  # type: ignore[index]
    # Each class implements its config's kind, and takes its kind and modality from it.
    assert {kind: cls.config_class for kind, cls in DECODERS.items()} == DECODER_CONFIGS
    for kind, cls in DECODERS.items():
        assert (cls.kind, cls.modality) == (kind, DECODER_CONFIGS[kind].modality)


def test_decoder_configs_are_a_tagged_union_on_kind() -> None:
    from nextgpt.config import NextGPTConfig

    # One class per kind, each with its media-shape fields, defaults and rules.
    assert {kind: cls.media_fields() for kind, cls in DECODER_CONFIGS.items()} == {
        "stable_diffusion": ("height", "width"),
        "audioldm": ("audio_length_in_s", "sample_rate"),
        "zeroscope": ("height", "width", "num_frames", "fps"),
    }
    video = DecoderConfig.from_dict({"kind": "zeroscope", "cond_tokens": 77, "cond_dim": 1024})
    assert type(video) is ZeroscopeDecoderConfig and video.media() == {
        "height": 320,
        "width": 576,
        "num_frames": 24,
        "fps": 8,
    }
    assert AudioLDMDecoderConfig(cond_tokens=1, cond_dim=512).media() == {
        "audio_length_in_s": 9.0,
        "sample_rate": 16000,
    }
    assert StableDiffusionDecoderConfig(cond_tokens=77, cond_dim=768).to_dict() == {
        "kind": "stable_diffusion",
        "cond_tokens": 77,
        "cond_dim": 768,
        "path": None,
        "dtype": "float32",
        "cpu_offload": False,
        "num_inference_steps": 50,
        "guidance_scale": 7.5,
        "height": 512,
        "width": 512,
    }
    with pytest.raises(TypeError, match="base of the per-kind decoder configs"):
        DecoderConfig(kind="zeroscope", cond_tokens=77, cond_dim=1024)
    with pytest.raises(
        ConfigError, match="kind: unknown kind 'dalle'; valid kinds: stable_diffusion, audioldm, zeroscope"
    ):
        DecoderConfig.from_dict({"kind": "dalle", "cond_tokens": 1, "cond_dim": 2})
    with pytest.raises(ConfigError, match="height: must be a multiple of 8, got 12"):
        StableDiffusionDecoderConfig(cond_tokens=77, cond_dim=768, height=12)
    with pytest.raises(ConfigError, match="num_frames: must be positive, got 0"):
        ZeroscopeDecoderConfig(cond_tokens=77, cond_dim=1024, num_frames=0)
    # Dotted overrides keep their keys; a field of another kind names the kind's valid fields.
    tiny = NextGPTConfig.from_preset("tiny")
    assert (
        tiny.with_overrides(["model.outputs.video.decoder.fps=12"]).model.outputs["video"].decoder.fps == 12
    )
    with pytest.raises(ConfigError) as info:
        tiny.with_overrides(["model.outputs.image.decoder.num_frames=4"])
    assert str(info.value) == (
        "model.outputs.image.decoder.num_frames: is not used by stable_diffusion (only by zeroscope); "
        "valid keys for stable_diffusion: kind, cond_tokens, cond_dim, path, dtype, cpu_offload, "
        "num_inference_steps, guidance_scale, height, width; remove it"
    )
    with pytest.raises(ConfigError, match="model.outputs.audio.decoder.cond_tokens: must be 1"):
        tiny.with_overrides(["model.outputs.audio.decoder.cond_tokens=2"])


def test_build_decoder_from_config_is_lazy_and_carries_the_fields() -> None:
    from nextgpt.config import NextGPTConfig

    outputs = NextGPTConfig.from_preset("tiny").model.outputs
    built = {modality.value: build_decoder(out.decoder, device="cpu") for modality, out in outputs.items()}
    assert {m: type(d) for m, d in built.items()} == {
        "image": StableDiffusionDecoder,
        "audio": AudioLDMDecoder,
        "video": ZeroscopeDecoder,
    }
    for modality, decoder in built.items():
        assert decoder.modality.value == modality and not decoder.is_loaded
        cfg = outputs[decoder.modality].decoder
        assert decoder.cond_shape == (cfg.cond_tokens, cfg.cond_dim)
        assert (
            decoder.num_inference_steps == cfg.num_inference_steps
            and decoder.guidance_scale == cfg.guidance_scale
        )
        # Every setting is read from the config node: the common ones and the kind's media shape.
        assert decoder.config is cfg and decoder.path == cfg.path and decoder.cpu_offload == cfg.cpu_offload
        assert {name: getattr(decoder, name) for name in cfg.media_fields()} == cfg.media()
    video = built["video"]
    assert (video.height, video.width, video.num_frames, video.fps) == (32, 32, 4, 8)
    with pytest.raises(AttributeError):
        video.height = 64  # type: ignore[misc]
    # The defaults are the config's (SD 1.5 at 512 x 512).
    image = StableDiffusionDecoder(StableDiffusionDecoderConfig(cond_tokens=77, cond_dim=768), device="cpu")
    assert (image.cond_shape, image.height, image.width, image.num_inference_steps) == (
        (77, 768),
        512,
        512,
        50,
    )
    with pytest.raises(ConfigError, match="builds 'audioldm' decoders"):
        AudioLDMDecoder.from_config(ZeroscopeDecoderConfig(cond_tokens=8, cond_dim=32))
    with pytest.raises(ConfigError, match="builds 'zeroscope' decoders"):
        ZeroscopeDecoder(DecoderConfig.from_dict({"kind": "audioldm", "cond_tokens": 1, "cond_dim": 32}))


def test_tiny_components_are_deterministic_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = tiny_stable_diffusion_components(8, 32, seed=0)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = tiny_stable_diffusion_components(8, 32, seed=0)
    c = tiny_stable_diffusion_components(8, 32, seed=1)
    for name in ("unet", "vae", "text_encoder"):
        sa, sb, sc = (x[name].state_dict() for x in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_tiny_tokenizers_tokenise_words_and_bytes() -> None:
    clip = tiny_clip_tokenizer(8)
    ids = clip(["A red square", ""], padding="max_length", max_length=8).input_ids
    tokens = clip.convert_ids_to_tokens(ids[0])
    assert tokens[:5] == ["<|startoftext|>", "a</w>", "red</w>", "square</w>", "<|endoftext|>"]
    assert ids[1] == [clip.bos_token_id] + [clip.eos_token_id] * 7
    assert len(clip("zebra!").input_ids) == 2 + 6  # unknown word: one token per byte
    roberta = tiny_roberta_tokenizer(16)
    tokens = roberta.convert_ids_to_tokens(roberta("a red square").input_ids)
    assert tokens == ["<s>", "a", "\u0120red", "\u0120square", "</s>"]


def test_caption_fingerprint_tracks_the_text_encoder(decoders) -> None:
    decoder = decoders["stable_diffusion"]
    assert decoder.caption_fingerprint() == make("stable_diffusion").caption_fingerprint()
    assert decoder.caption_fingerprint() != make("stable_diffusion", seed=1).caption_fingerprint()


def test_tiny_tokenizers_keep_every_listed_word_whole() -> None:
    from nextgpt.decoders.tiny import TINY_WORDS

    clip, roberta = tiny_clip_tokenizer(77), tiny_roberta_tokenizer(77)
    text = " ".join(TINY_WORDS)
    assert len(clip(text).input_ids) == len(TINY_WORDS) + 2
    assert len(roberta(text).input_ids) == len(TINY_WORDS) + 2
