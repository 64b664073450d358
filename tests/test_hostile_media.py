"""Hostile media: tiny files that used to cost gigabytes, absurd headers, invalid wrapper arguments.

Memory bound (checked in a child process, see :func:`test_coprime_rates_resample_in_bounded_memory`):
resampling a 244-byte 44101 Hz WAV, one second of 44101 Hz audio and 999983 Hz <-> 16 kHz signals
peaks below ``CHILD_MAX_RSS`` (1 GiB, of which importing torch is about 0.25 GiB); the old resampler
built a 2.6 GiB filter table for 44101 Hz (13.5 GB peak) and a 64 GB one for 999983 Hz. The child runs
under an address-space limit (``RLIMIT_AS``: its size after the imports + 1.5 GiB), so code that still
builds such tables fails there with an allocation error instead of eating the machine's memory.

Video files that exceed a limit are refused from the container header before decord even opens them:
``decord.VideoReader`` is replaced by a stub that records the call and fails.
"""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from media_fixtures import (
    PREPROCESS_REFS,
    SYNTH_LANDSCAPE_MP4,
    synthetic_audio,
    tone,
    write_audio_only_mp4,
    write_mp4,
    write_wav,
)

from nextgpt.encoders import audio as audio_mod
from nextgpt.encoders.audio import load_audio, preprocess_audio, resample
from nextgpt.encoders.video import preprocess_video
from nextgpt.errors import InputError
from nextgpt.media import Audio, Video

CHILD_MAX_RSS = 1 << 30
#: Rate pairs of the torchaudio references (tests/reference/preprocess_refs.npz).
REFERENCE_PAIRS = [(44100, 16000), (22050, 16000), (11025, 16000), (8000, 16000), (48000, 16000)]
#: The float32 table of torchaudio rounds the kernel argument before scaling it by ``base_freq``; the
#: exact (float64) evaluation differs from it by that rounding (measured 1.4e-5 at 11025 Hz).
TORCHAUDIO_ROUNDING_ATOL = 2e-5


def pcm16_wav(rate: int, samples: int = 100, channels: int = 1) -> bytes:
    """A PCM-16 WAV file: a 44-byte header declaring ``rate`` and ``samples`` zero samples."""
    block = 2 * channels
    fmt = struct.pack("<HHIIHH", 1, channels, rate, (rate * block) & 0xFFFFFFFF, block, 16)
    data = bytes(samples * block)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


@pytest.fixture
def no_decord(monkeypatch):
    """Replace ``decord.VideoReader`` by a stub that records its calls and fails."""
    import decord

    calls: list[str] = []

    def reader(path, *args, **kwargs):
        calls.append(str(path))
        raise AssertionError(f"decord opened {path}")

    monkeypatch.setattr(decord, "VideoReader", reader)
    return calls


@pytest.fixture(scope="module")
def square_8k_mp4(tmp_path_factory):
    """An 8192 x 8192, 3-frame mp4 (flat MJPEG frames, about 1 MB; 67 MP a frame, 8K UHD is 33 MP)."""
    import av

    path = tmp_path_factory.mktemp("hostile") / "square8k.mp4"
    with av.open(os.fspath(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=1)
        stream.width = stream.height = 8192
        stream.pix_fmt = "yuvj420p"
        frame = av.VideoFrame(8192, 8192, "yuvj420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for i in range(3):
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


# ----------------------------------------------------------------------------------- resampling

_CHILD = """
import json, os, resource, sys
import numpy as np
import torch

torch.set_num_threads(1)
from nextgpt.encoders.audio import preprocess_audio, resample

def vm_size():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024

_, hard = resource.getrlimit(resource.RLIMIT_AS)
resource.setrlimit(resource.RLIMIT_AS, (vm_size() + (3 << 29), hard))
tiny, second = sys.argv[1], sys.argv[2]
shapes = [list(preprocess_audio(tiny).shape), list(preprocess_audio(second).shape)]
x = torch.from_numpy(np.random.default_rng(0).uniform(-1, 1, (2, 250_000)).astype(np.float32))
shapes.append(list(resample(x, 999983, 16000).shape))
shapes.append(list(resample(x[:, :20_000], 16000, 999983).shape))
# VmHWM: this process image's own peak (ru_maxrss would also count the forked copy of the parent
# that existed before exec, which is large inside a full test session).
with open("/proc/self/status") as status:
    rss = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print(json.dumps({"shapes": shapes, "max_rss": rss}))
"""


def test_coprime_rates_resample_in_bounded_memory(tmp_path):
    """44101 Hz (a 244-byte WAV and one second of audio) and 999983 Hz <-> 16 kHz, peak RSS < 1 GiB."""
    tiny = tmp_path / "tiny44101.wav"
    tiny.write_bytes(pcm16_wav(44101))
    assert tiny.stat().st_size == 244
    second = write_wav(tmp_path / "second44101.wav", synthetic_audio(44101, 1.0, 2), 44101)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), os.fspath(tiny), os.fspath(second)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["shapes"] == [[3, 1, 128, 204], [3, 1, 128, 204], [2, 4001], [2, 1249979]]
    assert result["max_rss"] < CHILD_MAX_RSS, f"peak RSS {result['max_rss'] / 2**20:.0f} MiB"
    print(f"child peak RSS {result['max_rss'] / 2**20:.0f} MiB")


def test_filter_tables_and_cache_are_bounded():
    """Every table is at most MAX_KERNEL_ELEMENTS; the cache holds at most KERNEL_CACHE_BYTES in all."""
    audio_mod._KERNELS.clear()
    x = torch.zeros(1, 64)
    for orig in (44100, 22050, 11025, 88200, 176400, 32000, 24000, 12000, 96000, 192000, 8000):
        for new in (16000, 44100, 48000):
            g = math.gcd(orig, new)
            elements = audio_mod._kernel_elements(orig // g, new // g, 6, 0.99)
            assert elements <= audio_mod.MAX_KERNEL_ELEMENTS  # the common rates keep torchaudio's scheme
            resample(x, orig, new)
    # 12 distinct pairs with tables near the bound (3.1-3.3 MiB each, 38 MiB in all).
    for orig in range(20020, 20500, 40):
        resample(x, orig, 16000)
    assert audio_mod.KERNEL_CACHE_BYTES <= 64 << 20
    assert 0.75 * audio_mod.KERNEL_CACHE_BYTES < audio_mod._KERNELS.nbytes <= audio_mod.KERNEL_CACHE_BYTES
    # A coprime pair never builds a table.
    before = len(audio_mod._KERNELS)
    assert audio_mod._kernel_elements(44101, 16000, 6, 0.99) > audio_mod.MAX_KERNEL_ELEMENTS
    y = resample(torch.from_numpy(tone(44101, 0.1, 1000.0)), 44101, 16000)
    assert y.shape == (1, math.ceil(16000 * 4410 / 44101)) and len(audio_mod._KERNELS) == before


@pytest.mark.parametrize(("orig", "new"), [*REFERENCE_PAIRS, (16000, 44100), (16000, 48000)])
def test_table_free_path_is_the_same_filter(orig, new):
    """In float64 the table-free evaluation equals torchaudio's table scheme to rounding (no rate is
    approximated)."""
    x = torch.from_numpy(synthetic_audio(orig, 0.5, 2)).double()
    g = math.gcd(orig, new)
    direct = audio_mod._resample_direct(x, orig // g, new // g, 6, 0.99)
    table = audio_mod._resample_table(x, orig // g, new // g, 6, 0.99)
    assert direct.shape == table.shape == (2, math.ceil(new * x.shape[1] / orig))
    torch.testing.assert_close(direct, table, atol=1e-12, rtol=0)


@pytest.mark.parametrize(("orig", "new"), REFERENCE_PAIRS)
def test_table_free_path_matches_torchaudio_references(monkeypatch, orig, new):
    """Forced through the table-free path, the reference rates stay within the float32 rounding of
    torchaudio's table; through the default path they match the references as before."""
    refs = np.load(PREPROCESS_REFS)
    key = f"resample_{orig}_{new}"
    x = torch.from_numpy(synthetic_audio(orig, 0.75, 2))
    ordinary = resample(x, orig, new)
    torch.testing.assert_close(ordinary[:, :1000], torch.from_numpy(refs[f"{key}_head"]), atol=1e-6, rtol=0)
    monkeypatch.setattr(audio_mod, "MAX_KERNEL_ELEMENTS", 0)
    forced = resample(x, orig, new)
    assert forced.shape == ordinary.shape == (2, int(refs[f"{key}_len"]))
    for part, y in (("head", forced[:, :1000]), ("tail", forced[:, -1000:])):
        torch.testing.assert_close(
            y, torch.from_numpy(refs[f"{key}_{part}"]), atol=TORCHAUDIO_ROUNDING_ATOL, rtol=0
        )


# ----------------------------------------------------------------------------------- audio limits


def test_wav_headers_with_absurd_rates(tmp_path):
    for rate in (10**9, 999983, 768001, 0):
        path = tmp_path / f"rate{rate}.wav"
        path.write_bytes(pcm16_wav(rate))
        # rate 0: libsndfile itself refuses the header.
        match = f"rate{rate}.wav.*(sample rate of {rate} Hz.*768000 Hz|SF_INFO)"
        with pytest.raises(InputError, match=match):
            load_audio(path)
    path = tmp_path / "no_frames.wav"
    path.write_bytes(pcm16_wav(16000, samples=0))
    with pytest.raises(InputError, match="no_frames.wav.*no samples"):
        preprocess_audio(path)
    # The top of the valid range still loads.
    path = tmp_path / "rate768000.wav"
    path.write_bytes(pcm16_wav(768000))
    assert load_audio(path)[1] == 768000


def test_audio_duration_limit_from_the_header(tmp_path, monkeypatch):
    """601 s of 8-bit 1 kHz audio (0.6 MB) is refused by default from the header, before any sample is
    read; a smaller explicit limit refuses a short file; ``None`` lifts the limit."""
    import soundfile as sf

    long = write_wav(tmp_path / "long.wav", np.zeros((1, 601_000), np.float32), 1000, subtype="PCM_U8")
    reads: list[int] = []
    real_read = sf.SoundFile.read

    def read(self, *args, **kwargs):
        reads.append(1)
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    with pytest.raises(InputError, match=r"long.wav.*601\.0 s.*limit of 600 s"):
        load_audio(long)
    assert reads == []
    with pytest.raises(InputError, match=r"long.wav.*601\.0 s.*limit of 600 s"):
        preprocess_audio(long)
    assert load_audio(long, max_seconds=None)[0].shape == (1, 601_000)

    short = write_wav(tmp_path / "short.wav", tone(16000, 2.0, 440.0), 16000)
    with pytest.raises(InputError, match=r"short.wav.*2\.0 s.*limit of 1\.5 s"):
        preprocess_audio(short, max_seconds=1.5)
    assert preprocess_audio(short, max_seconds=2.0).shape == (3, 1, 128, 204)


def test_audio_duration_limit_in_memory():
    """601 samples at 1 Hz are 601 s: refused by default, accepted with ``max_seconds=None``."""
    with pytest.raises(InputError, match=r"Audio\(array\(601,\), sample_rate=1\).*601\.0 s.*600 s"):
        load_audio(Audio(np.zeros(601, np.float32), 1))
    with pytest.raises(InputError, match=r"3\.0 s.*limit of 2\.5 s"):
        preprocess_audio(Audio(np.zeros((2, 48000), np.float32), 16000), max_seconds=2.5)
    wave, rate = load_audio(Audio(np.zeros(601, np.float32), 1), max_seconds=None)
    assert rate == 1 and wave.shape == (1, 601)


def test_audio_duration_limit_in_containers(tmp_path):
    """The PyAV path (m4a sound track, and bytes as the data shards decode them) has the same limit."""
    import io

    path = write_audio_only_mp4(tmp_path / "tone.m4a", tone(16000, 1.0, 1000.0), 16000)
    with pytest.raises(InputError, match=r"tone.m4a.*s, above the limit of 0\.5 s"):
        load_audio(path, max_seconds=0.5)
    with pytest.raises(InputError, match=r"audio stream.*limit of 0\.5 s"):
        audio_mod.decode_audio_av(io.BytesIO(path.read_bytes()), max_seconds=0.5)
    wave, rate = load_audio(path, max_seconds=2.0)
    assert rate == 16000 and wave.shape[1] >= 16000


def test_audio_sample_budget_counts_every_channel(tmp_path):
    """The duration limit alone allows 1.8 GB per channel at 768 kHz, for any number of channels:
    ``max_samples`` bounds frames x channels, from the header before decoding (soundfile and PyAV)
    and on arrays. The default is 2**26 values (256 MiB of float32)."""
    import io

    import soundfile as sf

    assert audio_mod.DEFAULT_MAX_AUDIO_SAMPLES == 1 << 26
    path = tmp_path / "wide.wav"
    sf.write(path, np.zeros((1000, 8), np.float32), 8000)  # 8 channels x 1000 frames
    with pytest.raises(
        InputError, match=r"wide\.wav.*header says it holds 1000 frames x 8 channel.*8000 samples"
    ):
        load_audio(path, max_samples=7999)
    assert load_audio(path, max_samples=8000)[0].shape == (8, 1000)
    m4a = write_audio_only_mp4(tmp_path / "tone.m4a", tone(16000, 1.0, 1000.0), 16000)
    with pytest.raises(InputError, match=r"above the limit of 1000 "):
        audio_mod.decode_audio_av(io.BytesIO(m4a.read_bytes()), max_samples=1000)
    with pytest.raises(InputError, match=r"2 channel\(s\) = 4000 samples"):
        preprocess_audio(Audio(np.zeros((2, 2000), np.float32), 16000), max_samples=3999)


# ----------------------------------------------------------------------------------- video limits


def test_8k_square_video_refused_from_the_header(square_8k_mp4, no_decord):
    """The default frame limit (36 MP) refuses 8192 x 8192 before decord opens the file."""
    with pytest.raises(InputError, match=r"square8k.mp4.*8192x8192 = 67108864 pixels.*limit of 36000000"):
        preprocess_video(square_8k_mp4)
    assert no_decord == []


def test_video_limits_passed_explicitly(no_decord):
    """160 x 96 and 3.7 s: a smaller frame or duration limit refuses the file from its header."""
    with pytest.raises(InputError, match=r"synthetic_landscape.mp4.*160x96 = 15360 pixels.*limit of 15000"):
        preprocess_video(SYNTH_LANDSCAPE_MP4, max_pixels=15000)
    with pytest.raises(InputError, match=r"synthetic_landscape.mp4.*3\.7 s.*limit of 3 s"):
        preprocess_video(SYNTH_LANDSCAPE_MP4, max_seconds=3)
    assert no_decord == []


def test_decoded_pixels_limit(monkeypatch):
    """10 frames of 160 x 96 = 153600 pixels: refused before any frame is decoded."""
    import decord

    batches: list[list[int]] = []
    real = decord.VideoReader.get_batch

    def get_batch(self, indices):
        batches.append(list(indices))
        return real(self, indices)

    monkeypatch.setattr(decord.VideoReader, "get_batch", get_batch)
    with pytest.raises(
        InputError, match=r"synthetic_landscape.mp4.*10 frames of 160x96.*153600.*limit of 150000"
    ):
        preprocess_video(SYNTH_LANDSCAPE_MP4, max_decoded_pixels=150_000)
    assert batches == []
    assert preprocess_video(SYNTH_LANDSCAPE_MP4, max_decoded_pixels=153_600).shape == (15, 3, 2, 224, 224)
    with pytest.raises(
        InputError, match=r"Video\(array.*4 frames of 300x200 means 240000 pixels.*limit of 200000"
    ):
        preprocess_video(Video(np.zeros((4, 200, 300, 3), np.uint8), fps=1), max_decoded_pixels=200_000)


def test_long_and_fast_videos(tmp_path, no_decord):
    """Default duration limit (600 s) from the header; frame rates above 1000 fps are refused."""
    long = write_mp4(tmp_path / "long.mp4", np.zeros((601, 16, 16, 3), np.uint8), fps=1)
    with pytest.raises(InputError, match=r"long.mp4.*601\.0 s.*limit of 600 s"):
        preprocess_video(long)
    assert no_decord == []
    with pytest.raises(InputError, match=r"601 frames at 1\.000 fps = 601\.0 s.*limit of 600 s"):
        preprocess_video(Video(np.zeros((601, 4, 4, 3), np.uint8), fps=1))
    assert preprocess_video(Video(np.zeros((601, 4, 4, 3), np.uint8), fps=1), max_seconds=None).shape[0] == 15


def test_video_with_absurd_frame_rate(tmp_path):
    fast = write_mp4(tmp_path / "fast.mp4", np.zeros((3, 16, 16, 3), np.uint8), fps=5000)
    with pytest.raises(InputError, match=r"fast.mp4.*frame rate 5000\.0.*\(0, 1000\]"):
        preprocess_video(fast)


def test_web_upload_check_gets_the_limits(tmp_path, square_8k_mp4, no_decord):
    """nextgpt.web.check_upload calls load_audio / preprocess_video with their default limits."""
    from nextgpt.web import check_upload

    with pytest.raises(InputError, match=r"square8k.mp4: .*8192x8192.*limit of 36000000"):
        check_upload(square_8k_mp4)
    assert no_decord == []
    wav = tmp_path / "fast.wav"
    wav.write_bytes(pcm16_wav(999983))
    with pytest.raises(InputError, match=r"fast.wav: .*999983 Hz.*768000 Hz"):
        check_upload(wav)


# ----------------------------------------------------------------------------------- wrappers


@pytest.mark.parametrize(
    "rate", [float("nan"), float("inf"), -float("inf"), 0, -16000, 16000.5, True, 10**9, 768001, "16000"]
)
def test_audio_wrapper_refuses_bad_sample_rates(rate):
    with pytest.raises(InputError, match=r"sample_rate must be a positive integer up to 768000 Hz"):
        Audio(np.zeros(100, np.float32), rate)


@pytest.mark.parametrize("fps", [float("nan"), float("inf"), 0, -1.0, 1000.5, 1e9, True, "30"])
def test_video_wrapper_refuses_bad_fps(fps):
    with pytest.raises(InputError, match=r"fps must be a finite number of frames per second in \(0, 1000\]"):
        Video(np.zeros((2, 4, 4, 3), np.uint8), fps)


def test_wrappers_accept_valid_values_and_refuse_non_numeric_arrays():
    audio = Audio(np.zeros(100, np.float32), np.int64(16000))
    assert audio.sample_rate == 16000 and type(audio.sample_rate) is int
    assert Audio(np.zeros(100, np.float32), 44100.0).sample_rate == 44100
    assert Audio(np.zeros(100, np.float32), 768000).sample_rate == 768000
    assert Video(np.zeros((2, 4, 4, 3), np.uint8), np.float32(29.97)).fps == np.float32(29.97)
    assert Video(np.zeros((2, 4, 4, 3), np.uint8), 1000).fps == 1000
    for bad in (np.array(["a", "b"]), np.zeros(4, complex), np.zeros(4, bool), np.array([None, 1.0])):
        with pytest.raises(InputError, match="Audio array must hold real numbers"):
            Audio(bad, 16000)
    with pytest.raises(InputError, match="Video array must hold real numbers"):
        Video(np.zeros((2, 4, 4, 3), object), 10)
    with pytest.raises(InputError, match="needs a sample_rate"):
        Audio(np.zeros(4, np.float32))
    nan = np.zeros(1000, np.float32)
    nan[3] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        load_audio(Audio(nan, 16000))
