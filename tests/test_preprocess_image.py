"""ImageBind image preprocessing: parity with upstream torchvision transforms, exact geometry, errors.

Reference tolerance: exact (atol 0). Both sides resize with the same PIL call and normalise with the
same float32 arithmetic; the references were produced by upstream ``load_and_transform_vision_data``
(torchvision 0.29.1) with ``tests/reference/make_preprocess_refs.py``.
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from media_fixtures import PREPROCESS_REFS, skimage_image, synthetic_image
from PIL import Image

from nextgpt.encoders.image import (
    CLIP_MEAN,
    CLIP_STD,
    center_crop,
    load_image,
    normalize,
    preprocess_image,
    resize_short_side,
)
from nextgpt.errors import InputError

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


@pytest.fixture(scope="module")
def refs():
    return np.load(PREPROCESS_REFS)


def unnormalize_u8(x: torch.Tensor) -> torch.Tensor:
    return torch.round((x * STD + MEAN) * 255).clamp(0, 255).to(torch.uint8)


def column_coded(width: int, height: int) -> Image.Image:
    """R = column % 256, G = row % 256, B = 7."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[..., 0] = np.arange(width)[None, :] % 256
    arr[..., 1] = np.arange(height)[:, None] % 256
    arr[..., 2] = 7
    return Image.fromarray(arr)


# ----------------------------------------------------------------------------------- parity


def _check_parity(out: torch.Tensor, refs, key: str) -> None:
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    expected = normalize(
        torch.from_numpy(refs[f"image_{key}_u8"]).to(torch.float32).div(255), CLIP_MEAN, CLIP_STD
    )
    assert torch.equal(out, expected)
    assert torch.equal(out[:, :4], torch.from_numpy(refs[f"image_{key}_rows"]))


def test_parity_synthetic(refs, tmp_path):
    path = tmp_path / "synth.png"
    Image.fromarray(synthetic_image(301, 200)).save(path)
    _check_parity(preprocess_image(path), refs, "synth")
    # A PIL image gives the same result as its file.
    _check_parity(preprocess_image(Image.open(path)), refs, "synth")


@pytest.mark.parametrize("name", ["astronaut.png", "chelsea.png", "camera.png"])
def test_parity_skimage(refs, name):
    path = skimage_image(name)
    if path is None:
        pytest.skip("scikit-image (shipping the sample images) is not installed")
    _check_parity(preprocess_image(path), refs, name.split(".")[0])


# ----------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((301, 200), (337, 224)),  # int(224 * 301 / 200) = int(337.12)
        ((200, 301), (224, 337)),
        ((512, 512), (224, 224)),
        ((451, 300), (336, 224)),  # int(336.74...): truncated, not rounded
        ((100, 50), (448, 224)),  # upscaling
    ],
)
def test_resize_short_side_rule(size, expected):
    assert resize_short_side(Image.new("RGB", size), 224).size == expected


def test_resize_is_skipped_at_target_size():
    img = column_coded(300, 224)
    assert resize_short_side(img, 224) is img


@pytest.mark.parametrize(
    ("width", "height", "left", "top"),
    [
        (225, 224, 0, 0),  # round(0.5) = 0 (half to even)
        (227, 224, 2, 0),  # round(1.5) = 2
        (337, 224, 56, 0),  # round(56.5) = 56
        (339, 224, 58, 0),  # round(57.5) = 58
        (224, 230, 0, 3),
        (224, 224, 0, 0),
    ],
)
def test_center_crop_offsets(width, height, left, top):
    out = preprocess_image(column_coded(width, height))  # short side already 224: no resampling
    u8 = unnormalize_u8(out)
    assert torch.equal(u8[0, 0], (torch.arange(224) + left).to(torch.uint8))  # columns
    assert torch.equal(u8[1, :, 0], (torch.arange(224) + top).to(torch.uint8))  # rows
    assert torch.all(u8[2] == 7)
    # Direct crop helper agrees.
    cropped = np.asarray(center_crop(column_coded(width, height), 224))
    assert cropped[0, 0, 0] == left and cropped[0, 0, 1] == top


def test_exact_normalisation_of_a_flat_colour():
    out = preprocess_image(Image.new("RGB", (300, 260), (255, 0, 128)))
    rgb = torch.tensor([255, 0, 128], dtype=torch.float32).div(255).view(3, 1, 1)
    expected = ((rgb - MEAN) / STD).expand(3, 224, 224)
    assert torch.equal(out, expected)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA", "I;16", "CMYK"])
def test_modes_are_converted_to_rgb(mode):
    base = Image.fromarray(synthetic_image(240, 230))
    img = base.convert(mode) if mode != "I;16" else base.convert("L").convert("I;16")
    out = preprocess_image(img)
    assert out.shape == (3, 224, 224) and torch.isfinite(out).all()
    if mode == "L":  # grey replicated to three channels
        u8 = unnormalize_u8(out)
        assert torch.equal(u8[0], u8[1]) and torch.equal(u8[1], u8[2])


def test_rgba_alpha_is_dropped_not_composited():
    img = Image.new("RGBA", (224, 224), (200, 100, 50, 0))  # fully transparent
    u8 = unnormalize_u8(preprocess_image(img))
    assert u8[:, 0, 0].tolist() == [200, 100, 50]


def test_load_image_returns_rgb(tmp_path):
    path = tmp_path / "g.png"
    Image.new("L", (10, 12), 99).save(path)
    img = load_image(path)
    assert img.mode == "RGB" and img.size == (10, 12)


def test_no_torchvision_or_torchaudio_imported():
    code = (
        "import sys; import nextgpt.encoders.image, nextgpt.encoders.audio, nextgpt.encoders.video, "
        "nextgpt.encoders.clips; bad = [m for m in ('torchvision', 'torchaudio', 'pytorchvideo', 'decord', 'av') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------- errors


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (with one tiny IDAT): cheap bomb stand-in."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


def _encoded(fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(synthetic_image(256, 256)).save(buf, format=fmt)
    return buf.getvalue()


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found.*nope.png"):
        preprocess_image(tmp_path / "nope.png")


def test_directory(tmp_path):
    with pytest.raises(InputError, match="directory"):
        preprocess_image(tmp_path)


@pytest.mark.parametrize("name", ["garbage.png", "garbage.jpg", "notes.txt", "weird.xyz"])
def test_unknown_or_undecodable_format(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"this is not an image at all " * 20)
    with pytest.raises(InputError, match=f"cannot decode image.*{name}.*unknown"):
        preprocess_image(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        preprocess_image(path)


@pytest.mark.parametrize(("fmt", "ext"), [("PNG", "png"), ("JPEG", "jpg")])
def test_truncated_file(tmp_path, fmt, ext):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=f"cannot decode image.*cut.{ext}"):
        preprocess_image(path)


def test_decompression_bomb_by_header(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))  # 1e10 pixels claimed, 60 bytes on disk
    with pytest.raises(InputError, match="bomb.png"):
        load_image(path)
    # Without a limit of ours, PIL's own check (an error above twice its limit) is still turned into ours.
    with pytest.raises(InputError, match="bomb"):
        load_image(path, max_pixels=None)


def test_over_our_limit_but_under_pils(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(10_000, 10_000))  # 1e8: above our default, below PIL's error level
    with pytest.raises(InputError, match=r"10000x10000 = 100000000 pixels, above the limit"):
        load_image(path)


def test_lowered_pixel_limit(tmp_path):
    path = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(path)
    assert load_image(path, max_pixels=1200).size == (40, 30)
    with pytest.raises(InputError, match="above the limit of 1199"):
        load_image(path, max_pixels=1199)
    with pytest.raises(InputError, match="above the limit"):
        preprocess_image(Image.new("RGB", (40, 30)), max_pixels=100)


def test_empty_and_extreme_images():
    with pytest.raises(InputError, match="empty"):
        preprocess_image(Image.new("RGB", (0, 5)))
    with pytest.raises(InputError, match="aspect ratio"):
        preprocess_image(Image.new("RGB", (1, 400_000)))  # would resize to 224 x 89.6M


def test_wrong_type():
    with pytest.raises(InputError, match="PIL image or a path"):
        preprocess_image(np.zeros((4, 4, 3), np.uint8))
