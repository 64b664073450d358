"""Media input wrappers: :class:`Audio` and :class:`Video`.

Images are passed as ``PIL.Image.Image`` objects or paths. Audio and video need a wrapper because a
bare array says nothing about its sample rate or frame rate, and a bare path is ambiguous for
containers that hold both (an mp4 with a sound track is a video here unless wrapped in ``Audio``).
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nextgpt.errors import InputError

PathLike = str | os.PathLike

#: Highest sample rate accepted (Hz): the top of the PCM rates in use (768 kHz, 16 x 48 kHz).
MAX_SAMPLE_RATE = 768_000
#: Highest frame rate accepted (frames per second); high-speed camera footage stays below.
MAX_FPS = 1000.0


def _check_numeric(array: np.ndarray, what: str) -> None:
    if array.dtype.kind not in "iuf":
        raise InputError(
            f"{what} array must hold real numbers (integer or floating point), got dtype {array.dtype}"
        )


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _as_float(value: numbers.Real) -> float:
    try:
        return float(value)
    except (OverflowError, ValueError):  # e.g. a Fraction too large for a float
        return math.inf


def check_sample_rate(value: object, what: str = "sample_rate") -> int:
    """``value`` as an integer sample rate in ``1 .. MAX_SAMPLE_RATE`` Hz.

    Integers (Python or numpy) and integral floats are accepted; booleans, non-integral values, NaN,
    infinities, strings and out-of-range values are an :class:`InputError` naming ``what`` and the
    valid range.
    """
    valid = f"a positive integer up to {MAX_SAMPLE_RATE} Hz"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be {valid}, got {_show(value)} ({type(value).__name__})")
    if isinstance(value, numbers.Integral):
        rate = int(value)
    else:
        number = _as_float(value)
        rate = int(number) if math.isfinite(number) and number.is_integer() else 0
    if not 1 <= rate <= MAX_SAMPLE_RATE:
        raise InputError(f"{what} must be {valid}, got {_show(value)}")
    return rate


def check_fps(value: object, what: str = "fps") -> float:
    """``value`` as a frame rate: a finite number in ``(0, MAX_FPS]`` (else an :class:`InputError`)."""
    valid = f"a finite number of frames per second in (0, {MAX_FPS:g}]"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise InputError(f"{what} must be {valid}, got {_show(value)} ({type(value).__name__})")
    number = _as_float(value)
    if not (math.isfinite(number) and 0.0 < number <= MAX_FPS):
        raise InputError(f"{what} must be {valid}, got {_show(value)}")
    return number


@dataclass(frozen=True, eq=False)
class Audio:
    """An audio input: a file path, or a waveform with its sample rate.

    Args:
        source: path to a sound file (wav, flac, ogg, mp3, ... anything soundfile reads; mp4/m4a
            sound tracks through PyAV), or a float waveform shaped ``[N]`` (mono) or ``[C, N]``.
        sample_rate: required with an array (an integer in 1 .. :data:`MAX_SAMPLE_RATE` Hz; an
            integral float is converted to ``int``), ignored with a path.

    Raises:
        InputError: a bad source type, array shape or non-numeric dtype, or a missing or invalid
            sample rate. Sample values (floating point, finite) and the duration are checked when the
            audio is loaded (:func:`nextgpt.encoders.load_audio`).
    """

    source: PathLike | np.ndarray
    sample_rate: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, np.ndarray):
            if self.sample_rate is None:
                raise InputError("Audio from an array needs a sample_rate")
            object.__setattr__(self, "sample_rate", check_sample_rate(self.sample_rate, "Audio sample_rate"))
            _check_numeric(self.source, "Audio")
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
        fps: required with an array (finite, in (0, :data:`MAX_FPS`]), ignored with a path.

    Raises:
        InputError: a bad source type, array shape or non-numeric dtype, no frames, or a missing or
            invalid fps. The dtype (uint8) and the size limits are checked by
            :func:`nextgpt.encoders.preprocess_video`.
    """

    source: PathLike | np.ndarray
    fps: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.source, np.ndarray):
            if self.fps is None:
                raise InputError("Video from an array needs an fps")
            check_fps(self.fps, "Video fps")
            _check_numeric(self.source, "Video")
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
