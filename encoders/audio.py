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

Loading (:func:`load_audio`, :func:`decode_audio_av`) is :mod:`nextgpt.mediaio.audio`, the library's
one audio decoder. Hostile input is bounded: sample rates must be 1 ..
:data:`~nextgpt.media.MAX_SAMPLE_RATE` Hz and audio at most ``max_seconds`` long (default
:data:`DEFAULT_MAX_AUDIO_SECONDS`), both read from the header before any sample is decoded;
:func:`resample` costs memory proportional to the signal for any pair of rates (a bounded filter table,
or none).
"""

from __future__ import annotations

import logging
import math
import os
import threading
import typing
from collections import OrderedDict
from functools import lru_cache

import torch
import torch.nn.functional as F

from nextgpt.media import Audio
from nextgpt.mediaio.audio import (
    AV_AUDIO_EXTENSIONS,
    DEFAULT_MAX_AUDIO_SAMPLES,
    DEFAULT_MAX_AUDIO_SECONDS,
    decode_audio_av,
    read_audio,
)

from .clips import clip_timepoints

logger = logging.getLogger(__name__)

#: ImageBind audio normalisation constants.
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138

_EPS = torch.finfo(torch.float32).eps

__all__ = [
    "AUDIO_MEAN",
    "AUDIO_STD",
    "AV_AUDIO_EXTENSIONS",
    "DEFAULT_MAX_AUDIO_SAMPLES",
    "DEFAULT_MAX_AUDIO_SECONDS",
    "KERNEL_CACHE_BYTES",
    "MAX_KERNEL_ELEMENTS",
    "decode_audio_av",
    "kaldi_fbank",
    "kaldi_mel_banks",
    "load_audio",
    "preprocess_audio",
    "resample",
]


# --------------------------------------------------------------------------------------------------
# loading


def load_audio(
    src: Audio | str | os.PathLike | bytes,
    *,
    max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    max_samples: int | None = DEFAULT_MAX_AUDIO_SAMPLES,
) -> tuple[torch.Tensor, int]:
    """Read audio as float32 ``[C, N]`` (samples in [-1, 1] for PCM files) and its sample rate.

    :func:`nextgpt.mediaio.audio.read_audio` as a torch tensor: files are read with soundfile (wav,
    flac, ogg, mp3, ...); sound tracks of mp4/m4a/aac/webm/mov/mkv are decoded with PyAV. An in-memory
    :class:`~nextgpt.media.Audio` array is copied (``[N]`` becomes ``[1, N]``), so later in-place steps
    never touch the caller's data.

    Args:
        src: a :class:`~nextgpt.media.Audio` (file or in-memory waveform), a path, or the bytes of a
            wav/flac/ogg/mp3 file.
        max_seconds: refuse audio longer than this. For files it is checked from the header (soundfile's
            frame count, PyAV's stream duration) before any sample is decoded, and again on what is
            decoded (which never reads more than one sample past the limit); for arrays on their length.
            ``None``: no limit.
        max_samples: refuse audio holding more sample values (frames x channels) than this, checked
            the same way (the memory the decoded float32 waveform takes is 4 bytes per value).
            ``None``: no limit.

    Raises:
        InputError: missing or undecodable file, non-float array, no samples, non-finite samples, a
            sample rate outside 1 .. :data:`~nextgpt.media.MAX_SAMPLE_RATE` Hz, longer than
            ``max_seconds`` or larger than ``max_samples``. The message names the file (and the measured
            value and the limit).
    """
    data, rate = read_audio(src, max_seconds=max_seconds, max_samples=max_samples)
    return torch.from_numpy(data), rate


# --------------------------------------------------------------------------------------------------
# resampling


#: Largest polyphase filter table :func:`resample` builds, in elements: ``new * (2 * width + orig)`` for
#: the gcd-reduced rates (1 Mi elements: 4 MiB in float32). Every common rate pair (8, 11.025, 16, 22.05,
#: 24, 32, 44.1, 48, 88.2, 96, 176.4, 192 kHz to or from 16 kHz) fits; a pair whose table would not
#: (e.g. 44101 Hz -> 16 kHz: 16000 x 44135 elements, 2.6 GiB) is resampled without a table.
MAX_KERNEL_ELEMENTS = 1 << 20
#: Total size of the filter tables kept between calls (least recently used ones are dropped first).
KERNEL_CACHE_BYTES = 32 << 20
#: Elements of one block of the table-free path (``channels x outputs x taps``), about 16 MiB of
#: float64 per temporary.
_DIRECT_BLOCK_ELEMENTS = 1 << 21


class _KernelCache:
    """A thread-safe LRU cache of filter tables bounded by their total size in bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple, tuple[torch.Tensor, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self, key: tuple, build: typing.Callable[[], tuple[torch.Tensor, int]]
    ) -> tuple[torch.Tensor, int]:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = build()
        size = value[0].element_size() * value[0].nelement()
        with self._lock:
            if key not in self._items and size <= self.max_bytes:
                self._items[key] = value
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, (old, _) = self._items.popitem(last=False)
                    self.nbytes -= old.element_size() * old.nelement()
        return value

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


_KERNELS = _KernelCache(KERNEL_CACHE_BYTES)


def _filter_width(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> tuple[float, int]:
    """``(base_freq, width)``: the filter's cutoff (in units of the reduced rates) and its half-width in
    input samples, as torchaudio computes them."""
    base_freq = min(orig, new) * rolloff
    return base_freq, math.ceil(lowpass_filter_width * orig / base_freq)


def _build_sinc_kernel(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    base_freq, width = _filter_width(orig, new, lowpass_filter_width, rolloff)
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


def _sinc_kernel(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc filters ``[new, 1, 2 * width + orig]`` for gcd-reduced rates (cached,
    never modified in place)."""
    key = (orig, new, lowpass_filter_width, rolloff, dtype)
    return _KERNELS.get(key, lambda: _build_sinc_kernel(*key))


def _kernel_elements(orig: int, new: int, lowpass_filter_width: int, rolloff: float) -> int:
    """Elements of the table :func:`_sinc_kernel` would build."""
    _, width = _filter_width(orig, new, lowpass_filter_width, rolloff)
    return new * (2 * width + orig)


def _output_length(orig: int, new: int, length: int) -> int:
    """``ceil(new * length / orig)`` computed as torchaudio does (through a float32 tensor)."""
    return int(torch.ceil(torch.as_tensor(new * length / orig)))


def _resample_table(flat: torch.Tensor, orig: int, new: int, lowpass_filter_width: int, rolloff: float):
    """Torchaudio's own scheme: one strided convolution with the cached ``[new, 1, K]`` table."""
    kernel, width = _sinc_kernel(orig, new, lowpass_filter_width, rolloff, flat.dtype)
    kernel = kernel.to(flat.device)
    length = flat.shape[-1]
    padded = F.pad(flat, (width, width + orig))  # [B, width + N + width + orig]
    out = F.conv1d(padded[:, None], kernel, stride=orig)  # [B, new, L]
    out = out.transpose(1, 2).reshape(flat.shape[0], -1)  # [B, L * new], phases interleaved
    return out[..., : _output_length(orig, new, length)]


def _resample_direct(flat: torch.Tensor, orig: int, new: int, lowpass_filter_width: int, rolloff: float):
    """The same filter evaluated per output sample (float64), in blocks of bounded size.

    Output ``m`` sits at input position ``m * orig / new = c + f`` (``c`` an integer, ``0 <= f < 1``,
    both exact in integer arithmetic); its weights are the torchaudio kernel at the taps
    ``i = c - width .. c + width`` (which hold the whole support of the filter, ``|i - c - f| <=
    lowpass_filter_width * orig / base_freq <= width``), restricted to the signal (the zero padding
    contributes nothing). With ``T = min(2 * width + 1, N)`` taps a block holds at most
    ``max(_DIRECT_BLOCK_ELEMENTS, B * T)`` elements per temporary, so memory is the input, the output
    and a few blocks whatever the rates.
    """
    batch, length = flat.shape
    base_freq, width = _filter_width(orig, new, lowpass_filter_width, rolloff)
    scale = base_freq / orig
    target = _output_length(orig, new, length)
    out = torch.empty((batch, target), dtype=flat.dtype, device=flat.device)
    if target == 0 or length == 0:
        return out.zero_()
    taps = min(2 * width + 1, length)
    block = max(1, _DIRECT_BLOCK_ELEMENTS // (taps * batch))
    block = max(1, min(block, (1 << 62) // orig))  # keeps k * orig below in int64
    offsets = torch.arange(taps, device=flat.device)  # [T]
    for m0 in range(0, target, block):
        count = min(block, target - m0)
        # m * orig = m0 * orig + k * orig; its quotient and remainder by new, exactly.
        q0, r0 = divmod(m0 * orig, new)
        step = r0 + torch.arange(count, dtype=torch.int64, device=flat.device) * orig
        centre = q0 + torch.div(step, new, rounding_mode="floor")  # c, [M]
        frac = torch.remainder(step, new).to(torch.float64) / new  # f, [M]
        first = torch.clamp(centre - width, 0, length - taps)  # [M]
        index = first[:, None] + offsets  # [M, T], inside [0, N)
        t = ((index - centre[:, None]).to(torch.float64) - frac[:, None]) * scale
        t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
        window = torch.cos(t * (math.pi / lowpass_filter_width / 2)) ** 2
        t = t * math.pi
        weight = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * (window * scale)  # [M, T]
        values = flat[:, index].to(torch.float64)  # [B, M, T]
        out[:, m0 : m0 + count] = torch.einsum("bmt,mt->bm", values, weight).to(flat.dtype)
    return out


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
    ``sinc_interp_hann`` method, at the exact rates (no rational approximation); returns the input
    itself when the rates are equal.

    Two evaluations of that filter, by the size of torchaudio's table ``new * (2 * width + orig)``
    (rates reduced by their gcd, ``width = ceil(lowpass_filter_width * orig / base_freq)``):

    - up to :data:`MAX_KERNEL_ELEMENTS` (every common rate): torchaudio's own scheme (a cached table
      and one strided convolution) with the same float operations, so the output is unchanged (bit for
      bit the earlier output; 0 difference from the torchaudio references);
    - above (a rate with a large gcd-reduced part, e.g. 44101 Hz): the same kernel formula at the same
      exact rates, evaluated per output sample in float64 over its ``2 * width + 1`` taps, summed in
      float64 and rounded once to the waveform's dtype. No rate is approximated: on float64 input it
      equals the table scheme to 1e-12 (measured 3e-14; ``tests/test_hostile_media.py``). Against
      torchaudio's float32 table the difference is that table's own rounding (its kernel argument is
      rounded to float32 before being scaled by ``base_freq``): up to 2e-5 for samples in [-1, 1] on the
      reference rates forced through this path (measured 1.4e-5 at 11025 Hz -> 16 kHz). Taps outside
      the filter's support, where torchaudio's clamped kernel is about 1e-22, are left out.

    Memory is proportional to the signal for any pair of rates: the table is at most
    :data:`MAX_KERNEL_ELEMENTS` elements and the cached ones :data:`KERNEL_CACHE_BYTES` bytes in all;
    the table-free path holds the input, the output and blocks of at most
    ``max(2**21, channels * min(2 * width + 1, N))`` elements. Time is about ``2 * width + 1``
    multiply-adds per output sample (``12 * max(1, orig_freq / new_freq)``).
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
    rolloff = float(rolloff)

    shape = waveform.shape
    flat = waveform.reshape(-1, shape[-1])  # [B, N]
    if _kernel_elements(orig, new, lowpass_filter_width, rolloff) <= MAX_KERNEL_ELEMENTS:
        out = _resample_table(flat, orig, new, lowpass_filter_width, rolloff)
    else:
        out = _resample_direct(flat, orig, new, lowpass_filter_width, rolloff)
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
    max_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
    max_samples: int | None = DEFAULT_MAX_AUDIO_SAMPLES,
) -> torch.Tensor:
    """ImageBind audio input for one sound: float32 ``[clips_per_video, 1, num_mel_bins, target_length]``.

    ``max_seconds`` and ``max_samples`` are the limits of :func:`load_audio` (``None``: no limit); resampling costs
    memory proportional to the signal at any rate (see :func:`resample`).

    Raises:
        InputError: the audio cannot be read, has no samples or has non-finite samples, has an invalid
            sample rate or is longer than ``max_seconds``.
    """
    waveform, rate = load_audio(src, max_seconds=max_seconds, max_samples=max_samples)
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
