"""Peak memory of full any-to-any inference: decoders resident vs lazy vs CPU-offloaded.

Scenario (one model, three calls): image + text -> text + image, audio + text -> text + audio,
video + text -> text + video (``NextGPT.generate`` with a media input, so the encoder runs too).
The LLM, encoder and projectors stay on the device in every mode; the decoders differ:

* ``resident``: all three pipelines loaded up front and kept;
* ``lazy``: each pipeline loads on first use and is unloaded (``Decoder.unload``) after its call;
* ``offload``: ``cpu_offload=True`` in each DecoderConfig (``enable_model_cpu_offload``: weights on
  the host, each model moved to the GPU only while it runs). CUDA only.

Each mode runs in a fresh process. On CUDA the figure is ``torch.cuda.max_memory_allocated`` from
the end of model construction to the end of the scenario (plus the reserved peak, what the driver
sees). On a CPU there is no device memory: the stand-in is the child process's peak resident set
size (``VmHWM``, construction included), clearly labelled, at the given size. Peak memory does not
depend on the number of denoising steps, so the scenario uses ``--steps 2`` by default; media sizes
are the true ones at ``--size full`` (512x512 images, 24x320x576 video, 5 s audio). Target at full
size: < 24 GB with lazy loading or offload.

    python -m bench.memory --size full --device cuda --json memory.json
    python -m bench.memory --size small --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import base_parser, cli_main, setup
from bench.hardware import env_info, resolve_device, resolve_dtypes, sync
from bench.inputs import raw_media
from bench.report import Report
from bench.sizes import MEDIA, build_model, suppress_eos

MODES = ("resident", "lazy", "offload")
#: The repository root: each mode runs as ``python -m bench.memory --child MODE`` from there.
ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument(
        "--modes", nargs="+", choices=MODES, default=None, help="default: all on CUDA; resident, lazy on CPU"
    )
    ap.add_argument(
        "--steps", type=int, default=2, help="denoising steps per call (peak memory does not depend on it)"
    )
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--audio-seconds", type=float, default=None)
    ap.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)  # one mode, in-process
    return ap.parse_args(argv)


def _proc_status(field: str) -> int:
    """Bytes of a ``/proc/self/status`` memory field (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def decoder_bytes(decoder) -> tuple[int, int]:
    """Bytes of a loaded decoder's weights: all torch components of its pipeline, and the largest
    one (what model CPU offload puts on the device at a time)."""
    import torch

    sizes = [
        sum(p.numel() * p.element_size() for p in comp.parameters())
        for comp in decoder.load().components.values()
        if isinstance(comp, torch.nn.Module)
    ]
    return sum(sizes), max(sizes)


def child(args) -> dict:
    """One mode in this process; returns the measurement."""
    import torch

    from nextgpt.modality import Modality

    device, dtypes = setup(args)
    extra = {}
    if args.child == "offload":
        extra = {f"model.outputs.{m}.decoder.cpu_offload": True for m in MEDIA}
    t0 = time.perf_counter()
    model = build_model(args.size, device, dtypes, extra=extra, audio_seconds=args.audio_seconds)
    model.eval()
    suppress_eos(model)
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        baseline = _proc_status("VmRSS")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    if args.child == "resident":
        for m in MEDIA:
            model.decoders[Modality(m)].load()
    weights: dict[str, tuple[int, int]] = {}
    for i, m in enumerate(MEDIA):
        out = model.generate(
            [raw_media(m, seed=i), "Describe this, then make something like it."],
            modalities=["text", m],
            max_new_tokens=args.max_new_tokens,
            num_inference_steps=args.steps,
            seed=i,
        )
        assert getattr(out, {"image": "images", "audio": "audios", "video": "videos"}[m]), m
        weights[m] = decoder_bytes(model.decoders[Modality(m)])
        if args.child == "lazy":
            model.decoders[Modality(m)].unload()
    sync(device)
    result = {
        "mode": args.child,
        "baseline_gib": baseline / 2**30,
        "scenario_s": time.perf_counter() - t0,
        "build_s": build_s,
        "decoders_loaded_at_end": sum(d.is_loaded for d in model.decoders.values()),
        "decoder_weights_gib": {m: total / 2**30 for m, (total, _) in weights.items()},
        # Decoder weights on the device at the same time: all pipelines (resident), the largest
        # pipeline (lazy), the largest single component (offload).
        "decoder_weights_on_device_gib": {
            "resident": sum(total for total, _ in weights.values()),
            "lazy": max(total for total, _ in weights.values()),
            "offload": max(largest for _, largest in weights.values()),
        }[args.child]
        / 2**30,
    }
    if device.type == "cuda":
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        result["metric"] = "torch.cuda.max_memory_allocated after model construction"
    else:
        result["peak_gib"] = _proc_status("VmHWM") / 2**30
        result["metric"] = "peak RSS of the process (VmHWM), CPU stand-in"
    return result


def run(args) -> Report:
    import torch

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # only for the report: the children set their own
    modes = args.modes or (list(MODES) if device.type == "cuda" else ["resident", "lazy"])
    if device.type != "cuda" and "offload" in modes:
        raise SystemExit(
            "--modes offload needs CUDA (enable_model_cpu_offload moves models to the GPU on use)"
        )
    forwarded = [
        "--size",
        args.size,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--steps",
        str(args.steps),
    ]
    forwarded += ["--max-new-tokens", str(args.max_new_tokens)]
    if args.threads:
        forwarded += ["--threads", str(args.threads)]
    if args.audio_seconds is not None:
        forwarded += ["--audio-seconds", str(args.audio_seconds)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            out = Path(tmp) / f"{mode}.json"
            cmd = [
                sys.executable,
                "-m",
                "bench.memory",
                *forwarded,
                "--child",
                mode,
                "--json",
                str(out),
            ]
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if proc.returncode != 0:
                raise RuntimeError(f"memory benchmark, mode {mode} failed:\n{proc.stderr[-4000:]}")
            rows.append(json.loads(out.read_text()))
    dtypes = resolve_dtypes(args.dtype, device)
    cuda = device.type == "cuda"
    summary = {f"peak_gib_{r['mode']}": r["peak_gib"] for r in rows}
    if cuda:
        summary["target_lt_24gb_met"] = any(
            r["peak_gib"] * 2**30 < 24e9 for r in rows if r["mode"] != "resident"
        )
    report = Report(
        benchmark="memory",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("mode", "decoders"),
            ("baseline_gib", "after build (GiB)"),
            ("peak_gib", "peak (GiB)"),
        ]
        + ([("peak_reserved_gib", "peak reserved (GiB)")] if cuda else [])
        + [
            ("decoder_weights_on_device_gib", "decoder weights on device at once (GiB)"),
            ("decoders_loaded_at_end", "loaded at end"),
            ("scenario_s", "scenario (s)"),
        ],
        rows=rows,
        summary=summary,
        config={
            "steps": args.steps,
            "max_new_tokens": args.max_new_tokens,
            "metric": rows[0]["metric"] if rows else "",
        },
        notes=[
            "CUDA: max_memory_allocated from the end of model construction (LLM + encoder resident) to the end"
            if cuda
            else "CPU stand-in: peak resident set size (VmHWM) of a fresh process per mode, construction included; "
            "no device memory is measured",
        ],
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.child:
        result = child(args)
        Path(args.json).write_text(json.dumps(result))
        return result
    return cli_main(lambda _: args, run, argv)


if __name__ == "__main__":
    main()
