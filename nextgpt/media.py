"""Media input wrappers: :class:`Audio` and :class:`Video`.

Images are passed as ``PIL.Image.Image`` objects or paths. Audio and video need a wrapper because a
bare array says nothing about its sample rate or frame rate, and a bare path is ambiguous for
containers that hold both (an mp4 with a sound track is a video here unless wrapped in ``Audio``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextgpt.errors import InputError

PathLike = str | os.PathLike


@dataclass(frozen=True, eq=False)
class Audio:
    """An audio input: a file path, or a waveform with its sample rate.

    Args:
        source: path to a sound file (wav, flac, ogg, mp3, ... anything soundfile reads; mp4/m4a
            sound tracks through PyAV), or a float waveform shaped ``[N]`` (mono) or ``[C, N]``.
        sample_rate: required with an array, ignored with a path.
    """

    source: PathLike | np.ndarray
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, np.ndarray):
            if self.sample_rate is None or int(self.sample_rate) <= 0:
                raise InputError("Audio from an array needs a positive sample_rate")
            if self.source.ndim not in (1, 2):
                raise InputError(f"Audio array must be [N] or [C, N], got shape {tuple(self.source.shape)}")
        elif not isinstance(self.source, (str, os.PathLike)):
            raise InputError(
                f"Audio source must be a path or a numpy array, got {type(self.source).__name__}"
            )

    @property
    def path(self) -> Path | None:
        """The file path, or ``None`` for an in-memory waveform."""
        return None if isinstance(self.source, np.ndarray) else Path(self.source)

    def __repr__(self) -> str:
        if isinstance(self.source, np.ndarray):
            return f"Audio(array{tuple(self.source.shape)}, sample_rate={self.sample_rate})"
        return f"Audio({str(self.source)!r})"


@dataclass(frozen=True, eq=False)
class Video:
    """A video input: a file path, or uint8 frames ``[T, H, W, 3]`` with their frame rate.

    Args:
        source: path to a video file (mp4, webm, avi, mov, mkv, gif), or an RGB uint8 array.
        fps: required with an array, ignored with a path.
    """

    source: PathLike | np.ndarray
    fps: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, np.ndarray):
            if self.fps is None or float(self.fps) <= 0:
                raise InputError("Video from an array needs a positive fps")
            if self.source.ndim != 4 or self.source.shape[-1] != 3:
                raise InputError(f"Video array must be [T, H, W, 3], got shape {tuple(self.source.shape)}")
            if self.source.shape[0] == 0:
                raise InputError("Video array has no frames")
        elif not isinstance(self.source, (str, os.PathLike)):
            raise InputError(
                f"Video source must be a path or a numpy array, got {type(self.source).__name__}"
            )

    @property
    def path(self) -> Path | None:
        """The file path, or ``None`` for in-memory frames."""
        return None if isinstance(self.source, np.ndarray) else Path(self.source)

    def __repr__(self) -> str:
        if isinstance(self.source, np.ndarray):
            return f"Video(array{tuple(self.source.shape)}, fps={self.fps})"
        return f"Video({str(self.source)!r})"
