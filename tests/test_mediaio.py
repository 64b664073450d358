"""nextgpt.mediaio: the one media I/O of the library (decode from paths and bytes, sniff and probe,
encode and write), its single pixel limit and its single H.264 writer (odd sizes padded with edge
pixels), and that every caller goes through it."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import (
    SYNTH_LANDSCAPE_MP4,
    synthetic_audio,
    synthetic_image,
    synthetic_video_frames,
    tone,
    write_audio_only_mp4,
    write_wav,
)
from PIL import Image

from nextgpt.errors import InputError
from nextgpt.media import Audio, Video
from nextgpt.mediaio import audio as maudio
from nextgpt.mediaio import image as mimage
from nextgpt.mediaio import sniff as msniff
from nextgpt.mediaio import video as mvideo
from nextgpt.modality import Modality

ROOT = Path(__file__).resolve().parents[1]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00"))
        + chunk(b"IEND", b"")
    )


# ----------------------------------------------------------------------------------- one source


def test_pixel_limit_is_defined_once():
    from nextgpt.encoders import image as enc_image
    from nextgpt.stages.data import shards

    assert mimage.DEFAULT_MAX_IMAGE_PIXELS == 89_478_485
    assert enc_image.DEFAULT_MAX_IMAGE_PIXELS is mimage.DEFAULT_MAX_IMAGE_PIXELS
    assert shards.MAX_IMAGE_PIXELS is mimage.DEFAULT_MAX_IMAGE_PIXELS
    sources = [
        p
        for folder in ("nextgpt", "encoders", "stages", "decoders", "projectors")
        for p in (ROOT / folder).rglob("*.py")
        if "89_478_485" in p.read_text(encoding="utf-8") or "89478485" in p.read_text(encoding="utf-8")
    ]
    assert [p.relative_to(ROOT).as_posix() for p in sources] == ["nextgpt/mediaio/image.py"]


def test_callers_use_the_shared_functions():
    from nextgpt.encoders import audio as enc_audio
    from nextgpt.encoders import image as enc_image
    from nextgpt.encoders import video as enc_video
    from nextgpt.stages import data
    from nextgpt.stages.data import shards
    from nextgpt.web import uploads

    assert enc_image.load_image is mimage.load_image
    assert enc_audio.decode_audio_av is maudio.decode_audio_av
    assert enc_audio.DEFAULT_MAX_AUDIO_SAMPLES is maudio.DEFAULT_MAX_AUDIO_SAMPLES
    assert enc_video.VIDEO_EXTENSIONS is mvideo.VIDEO_EXTENSIONS
    assert enc_video.DEFAULT_MAX_VIDEO_PIXELS is mvideo.DEFAULT_MAX_VIDEO_PIXELS
    for name, module in [
        ("decode_image", mimage),
        ("encode_image", mimage),
        ("decode_audio", maudio),
        ("encode_audio", maudio),
        ("decode_video", mvideo),
        ("encode_video", mvideo),
    ]:
        assert getattr(shards, name) is getattr(module, name), name
        assert getattr(data, name) is getattr(module, name), name
    assert uploads.sniff_media is msniff.sniff_media
    import nextgpt.mediaio as mediaio

    assert mediaio.write_mp4 is mvideo.write_mp4 and mediaio.probe_container is msniff.probe_container
    with pytest.raises(AttributeError):
        mediaio.nothing_here  # noqa: B018


def test_importing_mediaio_loads_no_torch_or_decoders():
    code = (
        "import sys; import nextgpt.mediaio.image, nextgpt.mediaio.audio, nextgpt.mediaio.video, "
        "nextgpt.mediaio.sniff, nextgpt.web.uploads; "
        "bad = [m for m in ('torch', 'av', 'decord', 'soundfile') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


# ----------------------------------------------------------------------------------- images


def test_image_from_path_bytes_and_pil_agree(tmp_path):
    arr = synthetic_image(40, 30)
    data = _png(arr)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for img in (
        mimage.load_image(path),
        mimage.load_image(data),
        mimage.decode_image(data),
        mimage.load_image(Image.fromarray(arr).convert("RGBA")),
    ):
        assert img.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(img), arr)


def test_image_errors_from_bytes():
    with pytest.raises(InputError, match=r"\(image data\).*empty"):
        mimage.load_image(b"")
    with pytest.raises(InputError, match=r"cannot decode image \(image data\): unknown"):
        mimage.decode_image(b"not an image at all" * 10)
    with pytest.raises(InputError, match="above the limit of 89478485"):
        mimage.decode_image(_png_header_only(10_000, 10_000))  # 1e8 pixels claimed, checked from the header
    with pytest.raises(InputError, match="above the limit of 100"):
        mimage.load_image(_png(synthetic_image(20, 20)), max_pixels=100, name="'mine'")
    with pytest.raises(InputError, match="must be a PIL image or a path"):
        mimage.load_image(3)


def test_image_encode_and_write_round_trip(tmp_path):
    arr = synthetic_image(24, 16)
    img = Image.fromarray(arr)
    np.testing.assert_array_equal(np.asarray(mimage.decode_image(mimage.encode_image(img, "png"))), arr)
    for fmt in ("jpg", "webp"):
        back = np.asarray(mimage.decode_image(mimage.encode_image(img, fmt, quality=95)), dtype=np.int16)
        assert back.shape == arr.shape and np.abs(back - arr).mean() < 12
    path = mimage.write_image(tmp_path / "w.png", img)
    np.testing.assert_array_equal(np.asarray(mimage.load_image(path)), arr)
    with pytest.raises(ValueError, match="use jpg, png or webp"):
        mimage.encode_image(img, "bmp")


# ----------------------------------------------------------------------------------- audio


def test_audio_from_path_bytes_and_array_agree(tmp_path):
    wave = synthetic_audio(16000, 0.5, channels=2)
    path = write_wav(tmp_path / "a.wav", wave, 16000)
    a, ra = maudio.read_audio(path)
    b, rb = maudio.read_audio(path.read_bytes(), ext="wav")
    c, rc = maudio.read_audio(Audio(wave, sample_rate=16000))
    assert ra == rb == rc == 16000 and a.dtype == np.float32 and a.shape == (2, 8000)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    decoded = maudio.decode_audio(path.read_bytes(), "wav")
    assert isinstance(decoded, Audio) and decoded.sample_rate == 16000
    np.testing.assert_array_equal(decoded.source, a)


def test_audio_container_bytes_go_through_pyav(tmp_path):
    m4a = write_audio_only_mp4(tmp_path / "a.m4a", tone(16000, 1.0, 440.0), 16000)
    from_path, rate = maudio.read_audio(m4a)
    from_bytes, rate_b = maudio.read_audio(m4a.read_bytes(), ext=".m4a")
    assert rate == rate_b == 16000 and from_path.shape[0] == 1 and from_path.shape[1] > 15000
    np.testing.assert_array_equal(from_path, from_bytes)
    with pytest.raises(InputError, match=r"\(audio data\) is too long"):
        maudio.read_audio(m4a.read_bytes(), ext="m4a", max_seconds=0.5)


def test_audio_limits_and_errors_from_bytes(tmp_path):
    data = maudio.encode_audio(tone(16000, 2.0, 220.0), 16000, "wav", subtype="PCM_16")
    with pytest.raises(InputError, match="header says it is 2.0 s, above the limit of 1 s"):
        maudio.decode_audio(data, "wav", max_seconds=1.0)
    with pytest.raises(InputError, match="above the limit of 1000"):
        maudio.read_audio(data, ext="wav", max_samples=1000)
    assert maudio.decode_audio(data, "wav", max_seconds=None).source.shape == (1, 32000)
    with pytest.raises(InputError, match=r"\(audio data\).*empty"):
        maudio.read_audio(b"", ext="wav")
    with pytest.raises(InputError, match=r"cannot decode audio \(audio data\)"):
        maudio.decode_audio(b"\x00\x01 not a sound" * 20, "wav")
    nan = maudio.encode_audio(np.full((1, 100), np.nan, np.float32), 16000, "wav", subtype="FLOAT")
    with pytest.raises(InputError, match="NaN or infinite"):
        maudio.decode_audio(nan, "wav")


def test_write_wav_clips_to_pcm16(tmp_path):
    wave = np.array([0.0, 0.5, -0.5, 2.0, -2.0], np.float32)
    path = maudio.write_wav(tmp_path / "o.wav", wave, 8000)
    back, rate = maudio.read_audio(path)
    assert rate == 8000
    np.testing.assert_allclose(back[0], [0.0, 0.5, -0.5, 32767 / 32768, -1.0], atol=1 / 32768)


# ----------------------------------------------------------------------------------- sniff / probe


def test_sniff_and_probe(tmp_path):
    png = tmp_path / "i.png"
    png.write_bytes(_png(synthetic_image(8, 8)))
    assert msniff.sniff_file(png) == (Modality.IMAGE, "PNG")
    assert msniff.sniff_file(SYNTH_LANDSCAPE_MP4) == (None, "container")
    info = msniff.probe_container(SYNTH_LANDSCAPE_MP4)
    assert info.modality is Modality.VIDEO and info.width > info.height > 0
    assert info.duration is not None and info.video_duration is not None and info.duration > 0
    assert msniff.probe_container(io.BytesIO(SYNTH_LANDSCAPE_MP4.read_bytes())) == info
    m4a = write_audio_only_mp4(tmp_path / "a.m4a", tone(16000, 1.0, 440.0), 16000)
    audio_info = msniff.probe_container(m4a)
    assert audio_info.modality is Modality.AUDIO and (audio_info.width, audio_info.height) == (0, 0)
    assert abs(msniff.header_duration(m4a, Modality.AUDIO) - 1.0) < 0.1
    wav = write_wav(tmp_path / "a.wav", tone(8000, 0.5, 300.0), 8000)
    assert msniff.header_duration(wav, Modality.AUDIO) == 0.5
    assert msniff.header_duration(png, Modality.VIDEO) is None


# ----------------------------------------------------------------------------------- video


def test_open_frames_reads_arrays_and_files():
    frames = synthetic_video_frames(6, 20, 30)
    reader = mvideo.open_frames(Video(frames, fps=3))
    assert (reader.num_frames, reader.fps, reader.width, reader.height) == (6, 3.0, 30, 20)
    np.testing.assert_array_equal(reader.get([1, 4]), frames[[1, 4]])
    files = mvideo.open_frames(SYNTH_LANDSCAPE_MP4)
    assert files.get([0, 2]).shape == (2, files.height, files.width, 3)
    with pytest.raises(InputError, match="above the limit of 100 per frame"):
        mvideo.open_frames(SYNTH_LANDSCAPE_MP4, max_pixels=100)
    with pytest.raises(InputError, match="too long"):
        mvideo.open_frames(Video(frames, fps=3), max_seconds=1.0)


def test_h264_round_trip_and_determinism(tmp_path):
    frames = synthetic_video_frames(8, 48, 64)
    data = mvideo.encode_video(frames, 8.0, crf=18)
    assert data == mvideo.encode_video(frames, 8.0, crf=18)  # reproducible bytes
    path = mvideo.write_mp4(tmp_path / "v.mp4", frames, 8.0, crf=18)
    assert path.read_bytes() == data
    assert mvideo.write_mp4(tmp_path / "d.mp4", frames, 8.0).read_bytes() == mvideo.encode_video(frames, 8.0)
    video = mvideo.decode_video(data)
    assert video.fps == 8.0 and video.source.shape == frames.shape
    assert np.abs(video.source.astype(np.int16) - frames).mean() < 4
    assert mvideo.decode_video(path).source.shape == frames.shape
    assert mvideo.decode_video(data, first_frame_only=True).source.shape[0] == 1
    sub = mvideo.decode_video(data, max_frames=4)
    assert sub.source.shape[0] == 4 and sub.fps == 4.0


@pytest.mark.parametrize("height, width", [(47, 64), (48, 63), (31, 45)])
def test_odd_sizes_are_padded_with_edge_pixels(height, width):
    frames = synthetic_video_frames(4, height, width)
    video = mvideo.decode_video(mvideo.encode_video(frames, 10, crf=10))
    h2, w2 = height + height % 2, width + width % 2
    assert video.source.shape == (4, h2, w2, 3)  # nothing cropped: one pixel more where odd
    decoded = video.source.astype(np.int16)
    assert np.abs(decoded[:, :height, :width] - frames).mean() < 8  # lossy (yuv420p chroma)
    expected = mvideo.pad_to_even(frames).astype(np.int16)
    assert expected.shape == video.source.shape
    if h2 > height:
        np.testing.assert_array_equal(expected[:, -1], expected[:, -2])
        assert np.abs(decoded[:, -1] - expected[:, -1]).mean() < 10  # the repeated bottom row
    if w2 > width:
        np.testing.assert_array_equal(expected[:, :, -1], expected[:, :, -2])
        assert np.abs(decoded[:, :, -1] - expected[:, :, -1]).mean() < 10  # the repeated right column


def test_pad_to_even_leaves_even_frames_alone():
    frames = synthetic_video_frames(2, 8, 10)
    assert mvideo.pad_to_even(frames) is frames


def test_writer_keeps_fractional_frame_rates():
    frames = synthetic_video_frames(6, 16, 16)
    assert mvideo.decode_video(mvideo.encode_video(frames, 7.5)).fps == 7.5
    ntsc = mvideo.decode_video(mvideo.encode_video(frames, 30000 / 1001)).fps
    assert abs(ntsc - 30000 / 1001) < 1e-6


def test_writer_refuses_bad_frames_and_rates():
    frames = synthetic_video_frames(2, 8, 8)
    as_int = mvideo.decode_video(mvideo.encode_video(frames.astype(np.int64), 5)).source
    assert as_int.shape == frames.shape  # integers in 0..255 are accepted
    with pytest.raises(ValueError, match="uint8"):
        mvideo.encode_video(frames.astype(np.float32) / 255, 5)
    with pytest.raises(ValueError, match="uint8"):
        mvideo.encode_video(frames.astype(np.int64) + 300, 5)
    with pytest.raises(ValueError, match="uint8"):
        mvideo.encode_video(frames[..., :2], 5)
    with pytest.raises(ValueError, match="T, H, W > 0"):
        mvideo.encode_video(frames[:0], 5)
    for fps in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="fps"):
            mvideo.encode_video(frames, fps)


def test_decode_video_errors():
    with pytest.raises(InputError, match=r"\(video data\).*empty"):
        mvideo.decode_video(b"")
    with pytest.raises(InputError, match=r"cannot decode video \(video data\)"):
        mvideo.decode_video(b"\x00\x00\x00\x18ftypjunk" + b"not a video" * 50)
    with pytest.raises(InputError, match="not found"):
        mvideo.decode_video(ROOT / "missing.mp4")


def test_read_segments_scales_to_even_height(tmp_path):
    path = mvideo.write_mp4(tmp_path / "s.mp4", synthetic_video_frames(20, 48, 64), 10)
    segments, fps = mvideo.read_segments(path, [(0.0, 0.5), (1.0, 1.5)], width=32)
    assert fps == 10.0 and [len(s) for s in segments] == [5, 5]
    assert segments[0][0].shape == (24, 32, 3) and segments[0][0].dtype == np.uint8


def test_shards_store_odd_videos_padded(tmp_path):
    from nextgpt.stages.data import MediaBlob, PairRecord, iter_samples, write_samples

    frames = synthetic_video_frames(4, 33, 47)
    blob = MediaBlob(Modality.VIDEO, mvideo.encode_video(frames, 8), "mp4")
    write_samples(tmp_path, [PairRecord("odd", "an odd clip", blob)], prefix="v")
    (sample,) = iter_samples(tmp_path, 1)
    assert sample.turns[0].parts[0].value.source.shape == (4, 34, 48, 3)
