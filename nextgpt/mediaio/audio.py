"""Audio: decode (from a path, encoded bytes or an :class:`~nextgpt.media.Audio`) and encode / write.

Every reader of the library decodes sound here: the ImageBind preprocessing
(:func:`nextgpt.encoders.load_audio`), the training shards (:func:`nextgpt.stages.data.decode_audio`)
and the web demo's upload check. soundfile reads wav, flac, ogg, mp3, ...; the sound track of a
container it cannot read (:data:`AV_AUDIO_EXTENSIONS`: mp4, m4a, aac, webm, mov, mkv, opus, wma) is
decoded with PyAV. Results are float32 ``[C, N]`` numpy arrays (samples in [-1, 1] for PCM data) and the
sample rate; torch is not needed here.

Hostile input is bounded: sample rates must be 1 .. :data:`~nextgpt.media.MAX_SAMPLE_RATE` Hz, and the
duration (:data:`DEFAULT_MAX_AUDIO_SECONDS`) and the number of sample values
(:data:`DEFAULT_MAX_AUDIO_SAMPLES`) are read from the header before any sample is decoded, then checked
again on what is decoded (which never reads more than one sample past the duration limit).
"""

from __future__ import annotations

import math
import os
import typing
from pathlib import Path

import numpy as np

from nextgpt.errors import InputError
from nextgpt.media import MAX_SAMPLE_RATE, Audio, check_sample_rate

from ._files import BYTES_TYPES, existing_file, memory_file, reason

#: Containers whose sound track soundfile cannot read; they are decoded with PyAV instead (after a
#: soundfile attempt, which some builds of libsndfile pass for Ogg Opus).
AV_AUDIO_EXTENSIONS = frozenset({".mp4", ".m4a", ".aac", ".webm", ".mov", ".mkv", ".opus", ".wma"})

#: Longest audio (seconds) decoded by default, at any sample rate; ``max_seconds=None`` lifts it.
DEFAULT_MAX_AUDIO_SECONDS = 600.0

#: Most sample values (frames x channels) one decode may hold by default: 2**26, 256 MiB of float32
#: (10 minutes of 48 kHz stereo is 57.6 M); ``max_samples=None`` lifts it. The duration limit alone
#: would allow 1.8 GB per channel at 768 kHz, times any number of channels.
DEFAULT_MAX_AUDIO_SAMPLES = 1 << 26

#: Formats :func:`encode_audio` writes (extension -> soundfile format).
AUDIO_ENCODINGS = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}


# --------------------------------------------------------------------------------------------------
# limits


def _check_rate(rate: object, name: str) -> int:
    """A file's sample rate as an int in ``1 .. MAX_SAMPLE_RATE`` Hz, else an :class:`InputError`."""
    try:
        return check_sample_rate(rate)
    except InputError:
        raise InputError(
            f"audio {name} has a sample rate of {rate} Hz, outside the valid range 1..{MAX_SAMPLE_RATE} Hz"
        ) from None


def _check_length(
    samples: float, rate: int, name: str, max_seconds: float | None, *, claimed: bool = False
) -> None:
    """Refuse ``samples`` at ``rate`` Hz above ``max_seconds`` (``claimed``: the number is the header's)."""
    if max_seconds is not None and samples > max_seconds * rate:
        what = "its header says it is" if claimed else "it is"
        raise InputError(
            f"audio {name} is too long: {what} {samples / rate:.1f} s, above the limit of {max_seconds:g} s "
            "(pass a larger max_seconds to accept it)"
        )


def _check_values(
    frames: float, channels: int, name: str, max_samples: int | None, *, claimed: bool = False
) -> None:
    """Refuse ``frames x channels`` sample values above ``max_samples``."""
    if max_samples is not None and frames * channels > max_samples:
        what = "its header says it holds" if claimed else "it holds"
        raise InputError(
            f"audio {name} is too large: {what} {int(frames)} frames x {channels} channel(s) = "
            f"{int(frames * channels)} samples, above the limit of {max_samples} "
            f"({max_samples * 4 / 2**20:.0f} MiB of float32; pass a larger max_samples to accept it)"
        )


def _max_samples(rate: int, max_seconds: float | None) -> int | None:
    return None if max_seconds is None else math.floor(max_seconds * rate)


# --------------------------------------------------------------------------------------------------
# decoding


def decode_audio_av(
    source: os.PathLike | str | typing.BinaryIO,
    *,
    max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    max_samples: int | None = DEFAULT_MAX_AUDIO_SAMPLES,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of a container (a path or a binary file object) with PyAV ->
    (float32 ``[C, N]``, rate).

    The sample rate (1 .. :data:`~nextgpt.media.MAX_SAMPLE_RATE` Hz) and the stream's duration from the
    header are checked before decoding; decoding stops with an :class:`InputError` as soon as more than
    ``max_seconds`` of samples, or more than ``max_samples`` values over all channels, came out,
    whatever the header said (``None``: no limit).
    """
    import av  # lazy: only needed for container formats

    if name is None:
        name = f"'{os.fspath(source)}'" if not hasattr(source, "read") else "(audio stream)"
    chunks: list[np.ndarray] = []
    total = 0
    with av.open(source if hasattr(source, "read") else os.fspath(source), mode="r") as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        if rate:
            rate = _check_rate(rate, name)
            if stream.duration is not None and stream.time_base is not None:
                seconds = float(stream.duration * stream.time_base)
            else:
                seconds = container.duration / 1e6 if container.duration else 0.0
            _check_length(seconds * rate, rate, name, max_seconds, claimed=True)
            channels = int(getattr(stream.codec_context, "channels", 0) or 0)
            _check_values(seconds * rate, max(channels, 1), name, max_samples, claimed=True)
        # Only the sample format changes (planar float32); rate and layout stay as decoded.
        resampler = av.AudioResampler(format="fltp")
        for frame in container.decode(stream):
            if not rate:
                rate = _check_rate(int(frame.sample_rate), name)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())  # [C, n] float32
                total += chunks[-1].shape[1]
            _check_length(total, rate, name, max_seconds)
            if chunks:
                _check_values(total, chunks[-1].shape[0], name, max_samples)
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
            total += chunks[-1].shape[1]
    if rate <= 0:
        raise ValueError("the audio stream has no sample rate")
    _check_length(total, rate, name, max_seconds)
    if chunks:
        _check_values(total, chunks[-1].shape[0], name, max_samples)
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def _read_soundfile(
    source: os.PathLike | typing.BinaryIO, name: str, max_seconds: float | None, max_samples: int | None
) -> tuple[np.ndarray, int]:
    """Read with soundfile, with the rate and the header's frame and channel counts checked first, reading at
    most one sample more than ``max_seconds`` allows."""
    import soundfile as sf

    with sf.SoundFile(source if hasattr(source, "read") else os.fspath(source)) as f:
        rate = _check_rate(f.samplerate, name)
        frames = int(f.frames)
        _check_length(frames, rate, name, max_seconds, claimed=True)
        _check_values(frames, int(f.channels), name, max_samples, claimed=True)
        limit = _max_samples(rate, max_seconds)
        data = f.read(
            frames=frames if limit is None else min(frames, limit + 1), dtype="float32", always_2d=True
        )
    _check_length(data.shape[0], rate, name, max_seconds)
    return np.ascontiguousarray(data.T), rate  # [N, C] -> [C, N]


def _read_encoded(
    open_source: typing.Callable[[], os.PathLike | typing.BinaryIO],
    ext: str,
    name: str,
    max_seconds: float | None,
    max_samples: int | None,
) -> tuple[np.ndarray, int]:
    """soundfile, then PyAV for the containers of :data:`AV_AUDIO_EXTENSIONS` (``open_source`` gives
    a fresh path or stream per attempt)."""
    if ext not in AV_AUDIO_EXTENSIONS:
        return _read_soundfile(open_source(), name, max_seconds, max_samples)
    try:
        return _read_soundfile(open_source(), name, max_seconds, max_samples)
    except InputError:
        raise
    except Exception:
        return decode_audio_av(open_source(), max_seconds=max_seconds, max_samples=max_samples, name=name)


def _extension(ext: str | None) -> str:
    ext = (ext or "").lower()
    return ext if not ext or ext.startswith(".") else f".{ext}"


def read_audio(
    src: Audio | str | os.PathLike | bytes,
    *,
    ext: str | None = None,
    max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    max_samples: int | None = DEFAULT_MAX_AUDIO_SAMPLES,
    name: str | None = None,
) -> tuple[np.ndarray, int]:
    """Read audio as float32 ``[C, N]`` numpy (samples in [-1, 1] for PCM data) and its sample rate.

    Args:
        src: a :class:`~nextgpt.media.Audio` (file or in-memory waveform), a path, or the bytes of an
            encoded file. An in-memory array is copied (``[N]`` becomes ``[1, N]``), so later in-place
            steps never touch the caller's data.
        ext: the format of ``src`` bytes, as a file extension (``"wav"``, ``".m4a"``, ...); for paths
            the file's own extension is used.
        max_seconds: refuse audio longer than this. For files and bytes it is checked from the header
            (soundfile's frame count, PyAV's stream duration) before any sample is decoded, and again on
            what is decoded; for arrays on their length. ``None``: no limit.
        max_samples: refuse audio holding more sample values (frames x channels) than this, checked
            the same way (4 bytes of float32 per value). ``None``: no limit.
        name: how messages name the audio (default: the quoted path, ``(audio data)`` for bytes).

    Raises:
        InputError: missing or undecodable file, non-float array, no samples, non-finite samples, a
            sample rate outside 1 .. :data:`~nextgpt.media.MAX_SAMPLE_RATE` Hz, longer than
            ``max_seconds`` or larger than ``max_samples``. The message names the file (and the
            measured value and the limit).
    """
    if isinstance(src, BYTES_TYPES):
        label = name or "(audio data)"
        data_bytes = bytes(src)
        if not data_bytes:
            raise InputError(f"cannot decode audio {label}: the data is empty")
        try:
            data, rate = _read_encoded(
                lambda: memory_file(data_bytes, "audio", label),
                _extension(ext),
                label,
                max_seconds,
                max_samples,
            )
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"cannot decode audio {label}: {reason(exc)}") from exc
        return _checked(data, rate, label)

    if isinstance(src, (str, os.PathLike)):
        src = Audio(src)
    if not isinstance(src, Audio):
        raise InputError(
            f"audio must be a nextgpt.Audio or a path (or the bytes of a sound file), got {type(src).__name__}"
        )

    if src.path is None:
        arr = np.asarray(src.source)
        name = name or repr(src)
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(
                f"{name}: audio arrays must be floating point in [-1, 1], got {arr.dtype} "
                "(divide 16-bit PCM by 32768)"
            )
        rate = check_sample_rate(src.sample_rate)  # already validated by Audio: the same int
        _check_length(arr.shape[-1], rate, name, max_seconds)
        _check_values(arr.shape[-1], arr.shape[0] if arr.ndim == 2 else 1, name, max_samples)
        data = np.array(arr, dtype=np.float32, order="C", copy=True)  # own copy: later steps work in place
        if data.ndim == 1:
            data = data.reshape(1, -1)  # [N] -> [1, N]
        return _checked(data, rate, name)

    path = existing_file(src.path, "audio")
    name = name or f"'{path}'"
    try:
        data, rate = _read_encoded(lambda: path, path.suffix.lower(), name, max_seconds, max_samples)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"cannot decode audio {name}: {reason(exc)}") from exc
    return _checked(data, rate, name)


def _checked(data: np.ndarray, rate: int, name: str) -> tuple[np.ndarray, int]:
    if data.shape[1] == 0:
        raise InputError(f"audio {name} has no samples")
    if not np.isfinite(data).all():
        raise InputError(f"audio {name} contains NaN or infinite samples")
    return data, rate


def decode_audio(
    data: bytes,
    ext: str = "wav",
    *,
    max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    max_samples: int | None = DEFAULT_MAX_AUDIO_SAMPLES,
) -> Audio:
    """Decode encoded audio bytes (``ext``: their format) to :class:`nextgpt.Audio` holding a float32
    ``[C, N]`` waveform (:func:`read_audio` on bytes, with the same limits).

    Raises:
        InputError: (a ``ValueError``) see :func:`read_audio`.
    """
    wave, rate = read_audio(bytes(data), ext=ext, max_seconds=max_seconds, max_samples=max_samples)
    return Audio(wave, sample_rate=int(rate))


# --------------------------------------------------------------------------------------------------
# encoding


def encode_audio(
    waveform: np.ndarray, sample_rate: int, fmt: str = "wav", *, subtype: str | None = None
) -> bytes:
    """Encode a float waveform ``[C, N]`` or ``[N]`` with soundfile (``fmt``: wav, flac, ogg, mp3;
    ``subtype``: soundfile's, e.g. ``"PCM_16"``; default: the format's default)."""
    import io

    import soundfile as sf

    wave = np.asarray(waveform, dtype=np.float32)
    wave = wave.reshape(1, -1) if wave.ndim == 1 else wave
    fmt = fmt.lower().lstrip(".")
    if fmt not in AUDIO_ENCODINGS:
        raise ValueError(f"cannot encode audio as {fmt!r}; use one of {sorted(AUDIO_ENCODINGS)}")
    buf = io.BytesIO()
    sf.write(buf, wave.T, int(sample_rate), format=AUDIO_ENCODINGS[fmt], subtype=subtype)
    return buf.getvalue()


def write_wav(path: str | os.PathLike, waveform: np.ndarray, sample_rate: int) -> Path:
    """Write a waveform ``[N]`` or ``[C, N]`` as 16-bit PCM WAV, clipped to [-1, 1] (what
    :meth:`nextgpt.GenerationOutput.save` writes for audio)."""
    p = Path(os.fspath(path))
    wave = np.clip(np.asarray(waveform, dtype=np.float32), -1.0, 1.0)
    p.write_bytes(encode_audio(wave, int(sample_rate), "wav", subtype="PCM_16"))
    return p
