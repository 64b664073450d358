"""Target media -> the tensors each decoder's denoising loss consumes (``Decoder.prepare_target``).

* image (Stable Diffusion): RGB resized to the decoder's ``height x width`` (bicubic), ``[3, H, W]``
  in ``[-1, 1]``.
* video (Zeroscope): ``num_frames`` frames picked evenly over the clip, each resized (bilinear),
  ``[3, F, H, W]`` in ``[-1, 1]``.
* audio (AudioLDM): the log-mel spectrogram AudioLDM's VAE was trained on, ``[1, T, M]``: the
  waveform is mixed to mono, resampled to 16 kHz, centred and peak-normalised to 0.5; STFT with a
  1024-sample Hann window, hop 160 (10 ms), centred with reflection padding; magnitude (not power)
  through a Slaney-style mel filterbank (0-8 kHz, area-normalised triangles); ``log(max(x, 1e-5))``;
  ``T`` = the decoder's clip length in 10 ms frames rounded down to a multiple of the VAE factor
  (zero-padded or cut), ``M`` = the vocoder's mel bins.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from nextgpt.errors import InputError

AUDIO_SR, N_FFT, HOP = 16000, 1024, 160


def image_target(image, height: int, width: int) -> torch.Tensor:
    """``image`` (a PIL image, a path or the bytes of an image file) as RGB resized to
    ``height x width`` (bicubic), ``[3, H, W]`` in ``[-1, 1]``."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        from nextgpt.encoders.image import load_image

        image = load_image(image)
    image = image.convert("RGB").resize((width, height), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0
    return x  # (3, H, W)


def video_target(video, height: int, width: int, num_frames: int) -> torch.Tensor:
    """``num_frames`` frames picked evenly over ``video`` (a Video holding uint8 frames
    ``[T, H, W, 3]``, or the array itself), each resized to ``height x width`` (bilinear),
    ``[3, F, H, W]`` in ``[-1, 1]``.

    Raises:
        InputError: ``video`` holds no 4-D frame array.
    """
    frames = getattr(video, "source", video)
    if not isinstance(frames, np.ndarray) or frames.ndim != 4:
        raise InputError("video target must be a Video holding uint8 frames [T, H, W, 3]")
    idx = np.linspace(0, frames.shape[0] - 1, num_frames).round().astype(int)
    x = torch.from_numpy(frames[idx].astype(np.float32)).permute(0, 3, 1, 2)  # (F, 3, h, w)
    x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return (x / 127.5 - 1.0).clamp(-1, 1).permute(1, 0, 2, 3)  # (3, F, H, W)


def _slaney_mel(hz: np.ndarray) -> np.ndarray:
    hz = np.asarray(hz, dtype=np.float64)
    lin = hz * 3.0 / 200.0
    log = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log, lin)


def _slaney_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    lin = mel * 200.0 / 3.0
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log, lin)


@lru_cache(maxsize=8)
def mel_filterbank(
    n_mels: int, sr: int = AUDIO_SR, n_fft: int = N_FFT, fmin: float = 0.0, fmax: float = 8000.0
) -> torch.Tensor:
    """``[n_mels, n_fft // 2 + 1]`` Slaney-scale, area-normalised triangular filters."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _slaney_hz(np.linspace(_slaney_mel(fmin), _slaney_mel(fmax), n_mels + 2))
    weights = np.zeros((n_mels, freqs.size))
    for i in range(n_mels):
        lo, mid, hi = edges[i], edges[i + 1], edges[i + 2]
        rising = (freqs - lo) / (mid - lo)
        falling = (hi - freqs) / (hi - mid)
        weights[i] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (hi - lo))
    return torch.from_numpy(weights.astype(np.float32))


def audio_target(audio, n_mels: int, length_s: float, frame_multiple: int) -> torch.Tensor:
    """AudioLDM's log-mel spectrogram of ``audio`` (anything
    :func:`~nextgpt.encoders.audio.load_audio` reads), ``[1, T, n_mels]`` as the module docstring
    describes: ``T`` = ``length_s`` in 10 ms frames rounded down to a multiple of ``frame_multiple``,
    the spectrogram padded with silence (``log(1e-5)``) or cut to it."""
    from nextgpt.encoders.audio import load_audio, resample

    wave, sr = load_audio(audio)  # (C, N)
    wave = wave.mean(0, keepdim=True)
    if sr != AUDIO_SR:
        wave = resample(wave, sr, AUDIO_SR)
    wave = wave[0] - wave[0].mean()
    peak = wave.abs().max()
    wave = wave / peak * 0.5 if peak > 0 else wave
    spec = torch.stft(
        wave,
        N_FFT,
        hop_length=HOP,
        win_length=N_FFT,
        window=torch.hann_window(N_FFT),
        center=True,
        pad_mode="reflect",
        return_complex=True,
    ).abs()  # (n_fft/2 + 1, T)
    mel = torch.log(torch.clamp(mel_filterbank(n_mels) @ spec, min=1e-5)).T  # (T, M)
    frames = int(length_s * 100) // frame_multiple * frame_multiple
    if mel.shape[0] < frames:
        mel = F.pad(mel, (0, 0, 0, frames - mel.shape[0]), value=math.log(1e-5))
    return mel[:frames].unsqueeze(0)  # (1, T, M)
