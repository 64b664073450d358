"""The ImageBind-compatible encoder: official key layout, parity with upstream, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from nextgpt.config import EncoderConfig, TrunkConfig
from nextgpt.encoders.imagebind import TRUNKS, ImageBind
from nextgpt.encoders.loading import build_imagebind, load_imagebind
from nextgpt.errors import CheckpointError

REF = Path(__file__).parent / "reference"
import sys  # noqa: E402

sys.path.insert(0, str(REF))
from imagebind_det import TINY_OUT, TINY_TRUNKS, det_inputs, det_state  # noqa: E402

TINY = EncoderConfig(out_embed_dim=TINY_OUT, **{k: TrunkConfig(*v) for k, v in TINY_TRUNKS.items()})


def _tiny_state(model: ImageBind) -> dict[str, torch.Tensor]:
    """Parameters from the shared formula, buffers (causal mask, fixed logit scales) as built."""
    state = det_state([(k, tuple(p.shape)) for k, p in model.named_parameters()])
    state.update({k: b.clone() for k, b in model.named_buffers()})
    return state


@pytest.fixture(scope="module")
def tiny_model() -> ImageBind:
    model = ImageBind(TINY).eval()
    model.load_state_dict(_tiny_state(model), strict=True)
    return model


def test_huge_state_dict_matches_official_keys_and_shapes() -> None:
    official = json.loads((REF / "imagebind_huge_keys.json").read_text())
    with torch.device("meta"):
        model = ImageBind(EncoderConfig())  # the config defaults: ImageBind huge
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(official) - set(ours)) == []
    assert sorted(set(ours) - set(official)) == []
    assert {k: v for k, v in ours.items() if official[k] != v} == {}
    assert sum(int(np.prod(s)) for s in ours.values()) == 1_200_786_990


def test_parity_with_upstream_imagebind_on_tiny_weights(tiny_model: ImageBind) -> None:
    """Outputs equal upstream ImageBind's (times the logit scale it applies) on the same weights."""
    ref = np.load(REF / "imagebind_tiny_ref.npz")
    with torch.no_grad():
        for name, x in det_inputs().items():
            trunk = "vision" if name.startswith("vision") else name
            ours = tiny_model.encode(trunk, x).embeds * tiny_model.logit_scale(trunk)
            np.testing.assert_allclose(ours.numpy(), ref[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_embeddings_are_unit_per_clip_and_averaged_over_clips(tiny_model: ImageBind) -> None:
    video = det_inputs()["vision_clips"]  # (1, 2, 3, 2, 224, 224)
    with torch.no_grad():
        both = tiny_model.encode("vision", video, return_tokens=True)
        one = [tiny_model.encode("vision", video[:, s], return_tokens=True) for s in range(2)]
    for o in one:
        torch.testing.assert_close(o.embeds.norm(dim=-1), torch.ones(1))
    torch.testing.assert_close(both.embeds, (one[0].embeds + one[1].embeds) / 2)
    torch.testing.assert_close(both.tokens, (one[0].tokens + one[1].tokens) / 2)
    assert both.embeds.norm() < 1.0  # a mean of two different unit vectors


def test_patch_token_shapes(tiny_model: ImageBind) -> None:
    x = det_inputs()
    with torch.no_grad():
        image = tiny_model.encode("vision", x["vision"], return_tokens=True)
        audio = tiny_model.encode("audio", x["audio"], return_tokens=True)
        imu = tiny_model.encode("imu", x["imu"], return_tokens=True)
        text = tiny_model.encode("text", x["text"])
    assert image.tokens.shape == (2, 256, TINY_OUT) and image.embeds.shape == (2, TINY_OUT)
    assert audio.tokens.shape == (2, 228, TINY_OUT)
    assert imu.tokens.shape == (2, 250, TINY_OUT)
    assert text.tokens is None and text.embeds.shape == (2, TINY_OUT)
    # The CLS token through the same norm + projection is the pooled embedding before normalisation.
    assert not torch.allclose(image.tokens[:, 0], image.tokens[:, 1])


def test_images_are_two_frame_clips(tiny_model: ImageBind) -> None:
    image = det_inputs()["vision"][:1]
    clip = image.unsqueeze(2).repeat(1, 1, 2, 1, 1)  # (1, 3, 2, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_model.encode("vision", image).embeds, tiny_model.encode("vision", clip).embeds
        )


def test_bad_input_shape_is_rejected(tiny_model: ImageBind) -> None:
    with pytest.raises(ValueError, match="expects inputs shaped"):
        tiny_model.encode("vision", torch.zeros(1, 3, 112, 112))
    with pytest.raises(ValueError, match="unknown trunk"):
        tiny_model.encode("smell", torch.zeros(1, 3))


def test_bf16_inference_close_to_fp32(tiny_model: ImageBind) -> None:
    x = det_inputs()["audio"]
    half = ImageBind(TINY).eval()
    half.load_state_dict(tiny_model.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        ref = tiny_model.encode("audio", x).embeds
        got = half.encode("audio", x).embeds.float()
    assert torch.nn.functional.cosine_similarity(ref, got).min() > 0.99


# ------------------------------------------------------------------ checkpoint loading


@pytest.fixture()
def tiny_ckpt(tmp_path: Path, tiny_model: ImageBind) -> Path:
    """A synthetic checkpoint with the official key names (asserted above) and tiny shapes."""
    path = tmp_path / "imagebind_tiny.pth"
    torch.save(dict(tiny_model.state_dict()), path)
    return path


def test_synthetic_official_checkpoint_loads_strictly(tiny_ckpt: Path, tiny_model: ImageBind) -> None:
    model = load_imagebind(tiny_ckpt, TINY)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    assert all(p.device.type == "cpu" for p in model.parameters())
    x = det_inputs()["thermal"]
    with torch.no_grad():
        torch.testing.assert_close(model.encode("thermal", x).embeds, tiny_model.encode("thermal", x).embeds)


def test_safetensors_checkpoint_loads(tmp_path: Path, tiny_model: ImageBind) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "ib.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    model = load_imagebind(path, TINY, dtype=torch.bfloat16)
    assert model.modality_heads["vision"][2].weight.dtype == torch.bfloat16


def test_renamed_key_names_both_sides(tmp_path: Path, tiny_model: ImageBind) -> None:
    state = dict(tiny_model.state_dict())
    state["modality_trunks.audio.blocks.0.attn.bias_key"] = state.pop(
        "modality_trunks.audio.blocks.0.attn.bias_k"
    )
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(CheckpointError) as err:
        load_imagebind(tmp_path / "renamed.pth", TINY)
    msg = str(err.value)
    assert "1 missing key(s): modality_trunks.audio.blocks.0.attn.bias_k" in msg
    assert "1 unexpected key(s): modality_trunks.audio.blocks.0.attn.bias_key" in msg


def test_missing_key_and_shape_mismatch(tmp_path: Path, tiny_model: ImageBind) -> None:
    state = dict(tiny_model.state_dict())
    del state["modality_preprocessors.text.mask"]
    state["modality_heads.vision.2.weight"] = torch.zeros(7, 32)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_imagebind(tmp_path / "bad.pth", TINY)
    assert "modality_preprocessors.text.mask" in str(err.value)
    assert "modality_heads.vision.2.weight (checkpoint (7, 32), model (24, 32))" in str(err.value)


def test_huge_dims_reject_a_tiny_checkpoint(tiny_ckpt: Path) -> None:
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_imagebind(tiny_ckpt)  # default dims: huge


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_unsafe_pickle_garbage_and_missing_files(tmp_path: Path) -> None:
    evil = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "y": _Evil()}, evil)
    with pytest.raises(CheckpointError, match="unsafe unpickling"):
        load_imagebind(evil, TINY)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_imagebind(junk, TINY)
    with pytest.raises(CheckpointError, match="not found"):
        load_imagebind(tmp_path / "absent.pth", TINY)
    nested = tmp_path / "nested.pth"
    torch.save({"model": {"a": torch.zeros(1)}}, nested)
    with pytest.raises(CheckpointError, match="not a flat state dict"):
        load_imagebind(nested, TINY)


def test_build_random_is_seeded() -> None:
    a = build_imagebind(TINY, seed=3)
    b = build_imagebind(TINY, seed=3)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka
    assert set(TRUNKS) == set(a.modality_trunks.keys())
