"""Audio loading and the ImageBind audio preprocessing, in torch + numpy only.

Reproduces upstream ImageBind ``load_and_transform_audio_data`` / ``waveform2melspec`` without
torchaudio, with the same numerics:

- :func:`resample` is the band-limited windowed-sinc resampler of ``torchaudio.functional.resample``
  with its defaults (Hann window, 6 zero crossings, rolloff 0.99): both rates are reduced by their gcd,
  one filter per output phase is evaluated in the waveform's dtype, the signal is zero-padded by the
  filter half-width on the left and half-width + ``orig`` on the right, convolved with stride ``orig``,
  and cut to ``ceil(new * N / orig)`` samples;
- :func:`kaldi_fbank` is ``torchaudio.compliance.kaldi.fbank`` with the ImageBind settings (htk_compat,
  no energy term, Hann window, no dither): channel 0 only, frames of 25 ms every 10 ms that fit
  entirely in the signal, per-frame DC removal, pre-emphasis 0.97 (the first sample repeats itself),
  a symmetric Hann window, zero padding to the next power of two, power spectrum, Kaldi's triangular
  mel filters (20 Hz to Nyquist, mel = 1127 ln(1 + f/700)) and ``log(max(x, float32 eps))``;
- :func:`preprocess_audio` resamples the whole file to 16 kHz, cuts 3 clips of 2 s placed by
  :func:`nextgpt.encoders.clips.clip_timepoints` (sample range ``int(start*sr):int(end*sr)``), and for
  each clip subtracts the clip mean **in place on a view of the whole waveform** (a quirk of upstream:
  overlapping clips see the edits of earlier clips, and the mean runs over all channels), computes the
  fbank, transposes to ``[128, frames]``, zero-pads or crops to 204 frames and normalises with
  ``(x - (-4.268)) / 9.138``.

One deliberate difference: a clip shorter than one 25 ms frame (400 samples), which only happens
when the whole file is that short, makes upstream fail (an assertion in torchaudio, then a division
by zero); here it yields zero frames, i.e. an all-zero spectrogram before normalisation. Audio with
no samples at all is an :class:`InputError`.
"""

from __future__ import annotations

import logging
import math
import os
import typing
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from nextgpt.errors import InputError
from nextgpt.media import Audio

from ._io import existing_file, reason
from .clips import clip_timepoints

logger = logging.getLogger(__name__)

#: Containers whose sound track soundfile cannot read; they are decoded with PyAV instead.
AV_AUDIO_EXTENSIONS = frozenset({".mp4", ".m4a", ".aac", ".webm", ".mov", ".mkv", ".opus", ".wma"})

#: ImageBind audio normalisation constants.
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138

_EPS = torch.finfo(torch.float32).eps


# --------------------------------------------------------------------------------------------------
# loading


def decode_audio_av(source: os.PathLike | str | typing.BinaryIO) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of a container (a path or a binary file object) with PyAV ->
    (float32 ``[C, N]``, rate)."""
    import av  # lazy: only needed for container formats

    chunks: list[np.ndarray] = []
    with av.open(source if hasattr(source, "read") else os.fspath(source)) as container:
        if not container.streams.audio:
            raise ValueError("the file has no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate or 0)
        # Only the sample format changes (planar float32); rate and layout stay as decoded.
        resampler = av.AudioResampler(format="fltp")
        for frame in container.decode(stream):
            rate = rate or int(frame.sample_rate)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray())  # [C, n] float32
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray())
    if rate <= 0:
        raise ValueError("the audio stream has no sample rate")
    if not chunks:
        return np.zeros((1, 0), dtype=np.float32), rate
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def _read_file(path: os.PathLike) -> tuple[np.ndarray, int]:
    import soundfile as sf

    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in AV_AUDIO_EXTENSIONS:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)  # [N, C]
        return np.ascontiguousarray(data.T), int(rate)
    try:
        data, rate = sf.read(os.fspath(path), dtype="float32", always_2d=True)
        return np.ascontiguousarray(data.T), int(rate)
    except Exception:
        return decode_audio_av(path)


def load_audio(src: Audio | str | os.PathLike) -> tuple[torch.Tensor, int]:
    """Read audio as float32 ``[C, N]`` (samples in [-1, 1] for PCM files) and its sample rate.

    Files are read with soundfile (wav, flac, ogg, mp3, ...); sound tracks of mp4/m4a/aac/webm/mov/mkv
    are decoded with PyAV. An in-memory :class:`~nextgpt.media.Audio` array is copied (``[N]`` becomes
    ``[1, N]``), so later in-place steps never touch the caller's data.

    Raises:
        InputError: missing or undecodable file, non-float array, no samples, non-finite samples.
    """
    if isinstance(src, (str, os.PathLike)):
        src = Audio(src)
    if not isinstance(src, Audio):
        raise InputError(f"audio must be a nextgpt.Audio or a path, got {type(src).__name__}")

    if src.path is None:
        arr = np.asarray(src.source)
        name = repr(src)
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(
                f"{name}: audio arrays must be floating point in [-1, 1], got {arr.dtype} "
                "(divide 16-bit PCM by 32768)"
            )
        data = np.array(arr, dtype=np.float32, order="C", copy=True)  # own copy: later steps work in place
        if data.ndim == 1:
            data = data.reshape(1, -1)  # [N] -> [1, N]
        rate = int(src.sample_rate)  # validated by Audio
    else:
        path = existing_file(src.path, "audio")
        name = f"'{path}'"
        try:
            data, rate = _read_file(path)
        except Exception as exc:
            raise InputError(f"cannot decode audio {name}: {reason(exc)}") from exc

    if data.shape[1] == 0:
        raise InputError(f"audio {name} has no samples")
    if not np.isfinite(data).all():
        raise InputError(f"audio {name} contains NaN or infinite samples")
    return torch.from_numpy(data), rate


# --------------------------------------------------------------------------------------------------
# resampling


@lru_cache(maxsize=16)
def _sinc_kernel(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filters ``[new, 1, 2 * width + orig]`` for gcd-reduced rates."""
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    # Input sample positions (in units of the input period) relative to each output phase.
    positions = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig  # [1, 1, K]
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + positions  # [new, 1, K]
    t = t * base_freq
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    scale = base_freq / orig
    kernel = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernel = kernel * (window * scale)
    return kernel, width


def resample(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
) -> torch.Tensor:
    """Band-limited resampling of ``waveform [..., N]`` (float) from ``orig_freq`` to ``new_freq`` Hz.

    Same filter and output length as ``torchaudio.functional.resample`` with its default
    ``sinc_interp_hann`` method; returns the input itself when the rates are equal.
    """
    if orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_freq} -> {new_freq}")
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq:
        raise ValueError(f"sample rates must be integers, got {orig_freq} -> {new_freq}")
    if not waveform.is_floating_point():
        raise TypeError(f"resample needs a floating-point waveform, got {waveform.dtype}")
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(int(orig_freq), int(new_freq))
    orig, new = int(orig_freq) // g, int(new_freq) // g
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, float(rolloff), waveform.dtype)
    kernel = kernel.to(waveform.device)

    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])  # [B, N]
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))  # [B, width + N + width + orig]
    out = F.conv1d(padded[:, None], kernel, stride=orig)  # [B, new, L]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # [B, L * new], phases interleaved
    target = int(torch.ceil(torch.as_tensor(new * length / orig)))
    out = out[..., :target]
    return out.reshape(shape[:-1] + out.shape[-1:])


# --------------------------------------------------------------------------------------------------
# Kaldi filter bank


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(
    num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float = 20.0
) -> torch.Tensor:
    """Kaldi triangular mel filters ``[num_bins, padded_window_size // 2 + 1]`` (float32, a new tensor).

    Filters are evenly spaced on the mel scale from ``low_freq`` to Nyquist; the last FFT bin
    (Nyquist) gets a zero weight, as in Kaldi.
    """
    return _mel_banks(num_bins, padded_window_size, float(sample_rate), float(low_freq)).clone()


@lru_cache(maxsize=8)
def _mel_banks(num_bins: int, padded_window_size: int, sample_rate: float, low_freq: float) -> torch.Tensor:
    """Cached filters; never modified in place (only read by ``torch.mm``)."""
    num_fft_bins = padded_window_size // 2
    nyquist = 0.5 * sample_rate
    if not (0.0 <= low_freq < nyquist):
        raise ValueError(f"low_freq {low_freq} must be in [0, {nyquist})")
    fft_bin_width = sample_rate / padded_window_size
    mel_low = _mel(low_freq)
    mel_high = _mel(nyquist)
    delta = (mel_high - mel_low) / (num_bins + 1)

    b = torch.arange(num_bins, dtype=torch.float32).unsqueeze(1)  # [bins, 1]
    left = mel_low + b * delta
    center = mel_low + (b + 1.0) * delta
    right = mel_low + (b + 2.0) * delta
    mel = _mel(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float32)).unsqueeze(0)  # [1, fft]
    up = (mel - left) / (center - left)
    down = (right - mel) / (right - center)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)  # [bins, fft]
    return F.pad(banks, (0, 1), value=0.0)  # [bins, fft + 1]


def kaldi_fbank(
    waveform: torch.Tensor,
    sample_rate: float,
    num_mel_bins: int = 128,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    *,
    preemphasis: float = 0.97,
    low_freq: float = 20.0,
) -> torch.Tensor:
    """Log mel filter-bank features of channel 0 of ``waveform [C, N]`` -> ``[frames, num_mel_bins]``.

    Matches ``torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, use_energy=False,
    window_type="hanning", dither=0.0, num_mel_bins=..., frame_length=..., frame_shift=...,
    sample_frequency=...)``. A signal shorter than one frame gives zero frames (torchaudio raises).
    """
    if waveform.dim() != 2 or waveform.shape[0] < 1:
        raise ValueError(f"kaldi_fbank expects [C, N], got {tuple(waveform.shape)}")
    dtype = waveform.dtype
    signal = waveform[0]  # channel 0 only, as torchaudio with channel=-1
    shift = int(sample_rate * frame_shift_ms * 0.001)
    size = int(sample_rate * frame_length_ms * 0.001)
    if size < 2 or shift < 1:
        raise ValueError(f"frame length {size} / shift {shift} samples too small")
    padded = 1 if size == 0 else 2 ** (size - 1).bit_length()  # next power of two
    n = signal.shape[0]
    if n < size:
        return torch.zeros((0, num_mel_bins), dtype=dtype, device=waveform.device)

    frames = signal.unfold(0, size, shift)  # [m, size]; m = 1 + (n - size) // shift ("snip edges")
    frames = frames - frames.mean(dim=1, keepdim=True)  # remove DC per frame
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)  # [m, size], first sample repeated
    frames = frames - preemphasis * previous
    window = torch.hann_window(size, periodic=False, dtype=dtype, device=waveform.device)
    frames = frames * window.unsqueeze(0)
    frames = F.pad(frames, (0, padded - size))  # [m, padded]
    power = torch.fft.rfft(frames).abs().pow(2.0)  # [m, padded // 2 + 1]
    banks = _mel_banks(num_mel_bins, padded, float(sample_rate), float(low_freq)).to(power)
    energies = torch.mm(power, banks.T)  # [m, bins]
    return torch.max(energies, torch.tensor(_EPS, dtype=dtype, device=waveform.device)).log()


# --------------------------------------------------------------------------------------------------
# ImageBind audio input


def preprocess_audio(
    src: Audio | str | os.PathLike,
    *,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    target_length: int = 204,
    clip_duration: float = 2.0,
    clips_per_video: int = 3,
    mean: float = AUDIO_MEAN,
    std: float = AUDIO_STD,
) -> torch.Tensor:
    """ImageBind audio input for one sound: float32 ``[clips_per_video, 1, num_mel_bins, target_length]``.

    Raises:
        InputError: the audio cannot be read, has no samples or has non-finite samples.
    """
    waveform, rate = load_audio(src)
    if rate != sample_rate:
        waveform = resample(waveform, rate, sample_rate)
    n = waveform.shape[1]
    clips = clip_timepoints(n / sample_rate, clip_duration, clips_per_video)

    specs = []
    for start, end in clips:
        clip = waveform[:, int(start * sample_rate) : int(end * sample_rate)]  # a view, on purpose
        if clip.numel() > 0:
            clip -= clip.mean()  # in place: later overlapping clips see this edit (upstream quirk)
        fbank = kaldi_fbank(clip, sample_rate, num_mel_bins).transpose(0, 1)  # [bins, frames]
        frames = fbank.shape[1]
        if frames == 0 or abs(target_length - frames) / frames > 0.2:
            logger.debug("audio clip has %d frames for a target of %d", frames, target_length)
        if frames < target_length:
            fbank = F.pad(fbank, (0, target_length - frames), value=0.0)
        else:
            fbank = fbank[:, :target_length]
        specs.append(fbank.unsqueeze(0))  # [1, bins, target]
    out = torch.stack(specs, dim=0)  # [clips, 1, bins, target]
    m = torch.as_tensor(mean, dtype=out.dtype)
    s = torch.as_tensor(std, dtype=out.dtype)
    return (out - m) / s
