"""ImageBind -> image without training: SD unCLIP (tiny random components) conditioned on ImageBind
embeddings of any input: audio -> image, text -> image, weighted mixtures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt import Audio, NextGPT
from nextgpt.decoders.unclip import UnCLIPDecoder, save_tiny_unclip
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality

KW = {"num_inference_steps": 2, "height": 32, "width": 32, "seed": 0}


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    return save_tiny_unclip(tmp_path_factory.mktemp("unclip") / "tiny-unclip", 32)  # tiny ImageBind: 32-d


@pytest.fixture(scope="module")
def model(unclip_dir):
    return NextGPT.from_preset("tiny", ["model.input_projector.kind=bind", f"model.unclip.path={unclip_dir}"])


def _sound(seed):
    return Audio(np.random.default_rng(seed).standard_normal((1, 16000)).astype(np.float32) * 0.1, 16000)


def _pixels(image):
    return np.asarray(image, dtype=np.int16)


def _unit(x):
    return x / x.norm(dim=-1, keepdim=True)


def test_audio_to_image_is_the_unclip_image_of_the_audio_embedding(model, unclip_dir):
    sound = _sound(0)
    out = model.embed_to_image(sound, **KW)
    assert len(out.images) == 1 and out.images[0].size == (32, 32) and out.text == ""
    embed = model.encoder(Modality.AUDIO, model.encoder.preprocess(Modality.AUDIO, [sound])).embeds
    direct = UnCLIPDecoder(unclip_dir).render(_unit(embed.float()), guidance_scale=10.0, **KW)[0]
    assert np.array_equal(_pixels(out.images[0]), _pixels(direct))
    again = model.embed_to_image(sound, **KW)
    assert np.array_equal(_pixels(again.images[0]), _pixels(out.images[0]))  # seeded
    other = model.embed_to_image(_sound(1), **KW)
    assert not np.array_equal(_pixels(other.images[0]), _pixels(out.images[0]))  # the embedding matters
    assert model._unclip().loads == 1  # loaded once, reused


def test_text_and_weighted_mixtures(model, unclip_dir, tmp_path):
    text = model.embed_to_image("a dog barking in the rain", **KW)
    assert text.images[0].size == (32, 32)
    picture = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(picture)
    sound = _sound(3)
    mixed = model.embed_to_image([sound, picture], modality_weights=[1.0, 3.0], **KW)
    a = _unit(model.encoder(Modality.AUDIO, model.encoder.preprocess(Modality.AUDIO, [sound])).embeds.float())
    i = _unit(
        model.encoder(Modality.IMAGE, model.encoder.preprocess(Modality.IMAGE, [picture])).embeds.float()
    )
    want = UnCLIPDecoder(unclip_dir).render(_unit(0.25 * a + 0.75 * i), **KW)[0]
    assert np.array_equal(_pixels(mixed.images[0]), _pixels(want))
    with pytest.raises(InputError, match="1 weights for 2 inputs"):
        model.embed_to_image([sound, picture], modality_weights=[1.0], **KW)
    with pytest.raises(InputError, match="must not cancel"):
        model.embed_to_image([sound, picture], modality_weights=[1.0, -1.0], **KW)


def test_unclip_options_and_errors(model, unclip_dir, tmp_path):
    quiet = model.embed_to_image(_sound(0), **KW)
    noisy = model.embed_to_image(_sound(0), noise_level=500, **KW)
    assert not np.array_equal(_pixels(quiet.images[0]), _pixels(noisy.images[0]))
    with pytest.raises(InputError, match="noise_level"):
        model.embed_to_image(_sound(0), noise_level=1000, **KW)
    with pytest.raises(ConfigError, match="model.unclip.path"):
        NextGPT.from_preset("tiny").embed_to_image(_sound(0), **KW)
    with pytest.raises(ConfigError, match="unCLIP folder not found"):
        UnCLIPDecoder(tmp_path / "missing")
    wide = UnCLIPDecoder(save_tiny_unclip(tmp_path / "wide", 48))
    with pytest.raises(InputError, match=r"embeddings \[N, 48\]"):
        wide.render(torch.zeros(1, 32), **KW)
