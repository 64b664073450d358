"""What :meth:`nextgpt.NextGPT.generate` returns, and how it is written to disk."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class GenerationOutput:
    """Text and media produced by one ``generate`` call.

    Attributes:
        text: the answer, without signal, placeholder or wrapper tokens.
        images: PIL images.
        audios: float32 mono waveforms ``[N]`` at ``audio_sample_rate``.
        videos: uint8 frames ``[T, H, W, 3]`` at ``video_fps``.
        token_ids: the generated token ids (signal tokens included), for inspection.
    """

    text: str = ""
    images: list = field(default_factory=list)
    audios: list[np.ndarray] = field(default_factory=list)
    videos: list[np.ndarray] = field(default_factory=list)
    audio_sample_rate: int | None = None
    video_fps: float | None = None
    token_ids: list[int] = field(default_factory=list)

    def save(self, directory: str | os.PathLike, prefix: str = "output") -> list[Path]:
        """Write the text (``.txt``), images (PNG), audio (16-bit WAV) and videos (H.264 MP4) into
        ``directory``; returns the paths written, in that order."""
        import soundfile

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        if self.text:
            p = out / f"{prefix}.txt"
            p.write_text(self.text + "\n", encoding="utf-8")
            paths.append(p)
        for i, image in enumerate(self.images):
            p = out / f"{prefix}_image{i}.png"
            image.save(p)
            paths.append(p)
        for i, wave in enumerate(self.audios):
            p = out / f"{prefix}_audio{i}.wav"
            soundfile.write(
                p,
                np.clip(np.asarray(wave, dtype=np.float32), -1.0, 1.0),
                int(self.audio_sample_rate or 16000),
            )
            paths.append(p)
        for i, frames in enumerate(self.videos):
            p = out / f"{prefix}_video{i}.mp4"
            write_mp4(p, frames, self.video_fps or 8)
            paths.append(p)
        return paths


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode uint8 ``[T, H, W, 3]`` frames as H.264 (yuv420p; odd sizes are padded by one pixel)."""
    import av

    frames = np.asarray(frames, dtype=np.uint8)
    T, H, W, _ = frames.shape
    h2, w2 = H + H % 2, W + W % 2
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        for t in range(T):
            frame = np.pad(frames[t], ((0, h2 - H), (0, w2 - W), (0, 0)), mode="edge")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
