"""Small deterministic media and upstream-format files for the data-layer tests.

Everything is generated from closed-form patterns (no random streams), so the expected values are the
same on every machine. Writers return the bytes or paths they created.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from nextgpt.modality import Modality
from nextgpt.stages.data import (
    ConversationRecord,
    MediaBlob,
    PairRecord,
    RecordTurn,
    encode_audio,
    encode_image,
    encode_video,
)


def image_array(h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [H, W, 3] with gradients and a seed-dependent offset."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [(x * 7 + seed * 31) % 256, (y * 9 + seed * 17) % 256, ((x + y) * 5 + seed) % 256], -1
    ).astype(np.uint8)


def smooth_image(h: int = 48, w: int = 64) -> np.ndarray:
    """A smooth uint8 image (JPEG keeps it close)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], -1).astype(np.uint8)


def waveform(n: int = 1600, channels: int = 1, seed: int = 0) -> np.ndarray:
    """float32 [C, N] on the 16-bit grid (so a PCM_16 wav round trip is exact)."""
    t = np.arange(n)
    rows = [
        np.round(0.3 * np.sin(2 * np.pi * (220 + 110 * (c + seed)) * t / 16000) * 32767) / 32768
        for c in range(channels)
    ]
    return np.stack(rows).astype(np.float32)


def video_frames(t: int = 8, h: int = 48, w: int = 64) -> np.ndarray:
    """Smooth moving gradients, uint8 [T, H, W, 3]."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack(
        [
            np.stack([(x * 2 + i * 8) % 256, (y * 3) % 256, np.full_like(x, 100 + i * 10)], -1)
            for i in range(t)
        ]
    ).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    return encode_image(Image.fromarray(arr), "png")


def jpg_bytes(arr: np.ndarray) -> bytes:
    return encode_image(Image.fromarray(arr), "jpg", quality=95)


def wav_bytes(wave: np.ndarray, rate: int = 16000) -> bytes:
    return encode_audio(wave, rate, "wav", subtype="PCM_16")


def mp4_bytes(frames: np.ndarray, fps: float = 8.0) -> bytes:
    return encode_video(frames, fps, crf=18)


def text_conversation(i: int) -> ConversationRecord:
    return ConversationRecord(
        f"conv{i}",
        [RecordTurn("user", [f"question {i}"]), RecordTurn("assistant", [f"answer {i}"])],
        source="t",
    )


def image_pair(i: int) -> PairRecord:
    blob = MediaBlob(Modality.IMAGE, png_bytes(image_array(seed=i)), "png")
    return PairRecord(f"img{i}", f"Caption number {i}", blob, source="t")


def write_raw_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    """A tar with exactly these members, in this order (for hand-made and broken shards)."""
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def dump_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path
