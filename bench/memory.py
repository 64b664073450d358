"""Peak memory of one any-to-any session under the library's decoder memory policy.

Scenario (one model, four ``NextGPT.generate`` calls, nothing else): text -> text, then image + text
-> text + image, audio + text -> text + audio, video + text -> text + video (a media input each, so
the encoder runs too). The LLM, encoder and projectors stay on the device in every mode; the
decoders are managed by the model itself (``model.decoder_memory``, ``model.residency``), never by
this script:

* ``default``: no budget (``budget_mb: null``): each pipeline loads on first use and stays loaded;
* ``budget``: ``budget_mb`` set so that about one pipeline fits (the largest pipeline measured by
  the ``default`` run, + 5%; or ``--budget-mb``): the least recently used idle pipeline is unloaded
  before the next one loads;
* ``offload``: the same budget + ``offload_idle: true``: evicted pipelines are parked in CPU memory
  instead of unloaded. CUDA only (on a CPU parking frees nothing; the library refuses it).

Each mode runs in a fresh process. On CUDA the figure is ``torch.cuda.max_memory_allocated`` from
the end of model construction to the end of the scenario (plus the reserved peak, what the driver
sees). On a CPU there is no device memory: the stand-in is the child process's peak resident set
size during the scenario (``VmHWM``, reset after construction through ``/proc/self/clear_refs``;
where that is refused, the peak since the process started, and the row says so), clearly
labelled, at the given size. Peak memory does not depend on the number of denoising steps, so the
scenario uses ``--steps 2`` by default; media sizes are the true ones at ``--size full`` (512x512
images, 24x320x576 video, 9 s audio: the preset's defaults). Target at full size: < 24 GB with a budget.

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

MODES = ("default", "budget", "offload")
#: The repository root: each mode runs as ``python -m bench.memory --child MODE`` from there.
ROOT = Path(__file__).resolve().parents[1]
#: ``budget`` and ``offload`` keep this much more than the largest pipeline, so that one fits.
BUDGET_MARGIN = 1.05
_FIELD = {"image": "images", "audio": "audios", "video": "videos"}


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument(
        "--modes", nargs="+", choices=MODES, default=None, help="default: all on CUDA; default, budget on CPU"
    )
    ap.add_argument(
        "--budget-mb",
        type=float,
        default=None,
        help="decoder_memory.budget_mb of the budget and offload modes "
        f"(default: {BUDGET_MARGIN} x the largest pipeline the default mode measured)",
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


def _reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _overrides(mode: str, budget_mb: float | None) -> dict[str, object]:
    if mode == "default":
        return {}
    if budget_mb is None:
        raise SystemExit(f"--child {mode} needs --budget-mb")
    out: dict[str, object] = {"model.decoder_memory.budget_mb": budget_mb}
    if mode == "offload":
        out["model.decoder_memory.offload_idle"] = True
    return out


def child(args) -> dict:
    """One mode in this process; returns the measurement."""
    import torch

    device, dtypes = setup(args)
    t0 = time.perf_counter()
    model = build_model(
        args.size,
        device,
        dtypes,
        extra=_overrides(args.child, args.budget_mb),
        audio_seconds=args.audio_seconds,
    )
    model.eval()
    suppress_eos(model)
    sync(device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        peak_from = "the end of model construction"
    else:
        baseline = _proc_status("VmRSS")
        peak_from = "the end of model construction" if _reset_peak_rss() else "process start (reset refused)"
    build_s = time.perf_counter() - t0

    # Watch (not steer) the policy: the decoder weights held while each decode runs.
    residency = model.residency
    acquire = residency.acquire
    held: list[int] = []

    def watched(modality):
        decoder = acquire(modality)
        held.append(sum(residency.resident_bytes().values()))
        return decoder

    residency.acquire = watched

    t0 = time.perf_counter()
    steps: list[dict] = []
    calls = [("text", ["Say something about the sea."], ["text"])] + [
        (m, [raw_media(m, seed=i), "Describe this, then make something like it."], ["text", m])
        for i, m in enumerate(MEDIA)
    ]
    for i, (m, inputs, modalities) in enumerate(calls):
        out = model.generate(
            inputs,
            modalities=modalities,
            max_new_tokens=args.max_new_tokens,
            num_inference_steps=args.steps,
            seed=i,
        )
        assert m == "text" or getattr(out, _FIELD[m]), m
        steps.append({"after": m, "decoders": residency.describe()})
    sync(device)
    scenario_s = time.perf_counter() - t0
    stats = residency.stats
    result = {
        "mode": args.child,
        "budget_mb": args.budget_mb if args.child != "default" else None,
        "baseline_gib": baseline / 2**30,
        "scenario_s": scenario_s,
        "build_s": build_s,
        "decoders_loaded_at_end": sum(d.is_loaded and not d.is_offloaded for d in model.decoders.values()),
        "decoders_offloaded_at_end": sum(d.is_offloaded for d in model.decoders.values()),
        # Measured by the library (parameters + buffers of each pipeline's torch modules).
        "pipeline_mib": {
            m.value: n / 2**20
            for m, n in {**residency.resident_bytes(), **residency.offloaded_bytes()}.items()
        },
        "decoder_weights_held_mib": max(held, default=0) / 2**20,
        "loads": stats["loads"],
        "evictions": stats["unloads"] + stats["offloads"],
        "restores": stats["restores"],
        "steps": steps,
    }
    if device.type == "cuda":
        result["end_gib"] = torch.cuda.memory_allocated(device) / 2**30
        result["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        result["peak_reserved_gib"] = torch.cuda.max_memory_reserved(device) / 2**30
        result["metric"] = f"torch.cuda.max_memory_allocated from {peak_from}"
    else:
        result["end_gib"] = _proc_status("VmRSS") / 2**30
        result["peak_gib"] = _proc_status("VmHWM") / 2**30
        result["metric"] = f"peak RSS of the process (VmHWM) from {peak_from}, CPU stand-in"
    return result


def _run_child(mode: str, forwarded: list[str], tmp: str) -> dict:
    out = Path(tmp) / f"{mode}.json"
    cmd = [sys.executable, "-m", "bench.memory", *forwarded, "--child", mode, "--json", str(out)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"memory benchmark, mode {mode} failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def run(args) -> Report:
    import torch

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)  # only for the report: the children set their own
    modes = list(args.modes or (MODES if device.type == "cuda" else ("default", "budget")))
    if device.type != "cuda" and "offload" in modes:
        raise SystemExit(
            "--modes offload needs CUDA (parking idle pipelines in CPU memory frees nothing on a CPU)"
        )
    needs_sizes = args.budget_mb is None and any(m != "default" for m in modes)
    if needs_sizes and "default" not in modes:
        modes.insert(0, "default")  # it measures the pipelines the budget is set from
    modes.sort(key=MODES.index)
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
    rows: list[dict] = []
    budget_mb = args.budget_mb
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            extra = [] if mode == "default" else ["--budget-mb", repr(budget_mb)]
            rows.append(_run_child(mode, forwarded + extra, tmp))
            if mode == "default" and budget_mb is None:
                budget_mb = BUDGET_MARGIN * max(rows[-1]["pipeline_mib"].values())
    dtypes = resolve_dtypes(args.dtype, device)
    cuda = device.type == "cuda"
    summary: dict[str, object] = {f"peak_gib_{r['mode']}": r["peak_gib"] for r in rows}
    if budget_mb is not None:
        summary["budget_mb"] = budget_mb
    if cuda:
        summary["target_lt_24gb_met"] = any(
            r["peak_gib"] * 2**30 < 24e9 for r in rows if r["mode"] != "default"
        )
    report = Report(
        benchmark="memory",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("mode", "decoder memory"),
            ("budget_mb", "budget (MiB)"),
            ("baseline_gib", "after build (GiB)"),
            ("peak_gib", "peak (GiB)"),
            ("end_gib", "at end (GiB)"),
        ]
        + ([("peak_reserved_gib", "peak reserved (GiB)")] if cuda else [])
        + [
            ("decoder_weights_held_mib", "decoder weights held while decoding, max (MiB)"),
            ("decoders_loaded_at_end", "loaded at end"),
            ("loads", "pipeline loads"),
            ("evictions", "evictions"),
            ("scenario_s", "scenario (s)"),
        ],
        rows=rows,
        summary=summary,
        config={
            "steps": args.steps,
            "max_new_tokens": args.max_new_tokens,
            "scenario": "text -> image -> audio -> video, one NextGPT.generate call each",
            "metric": rows[0]["metric"] if rows else "",
            "pipeline_mib": rows[0]["pipeline_mib"] if rows else {},
        },
        notes=[
            "CUDA: max_memory_allocated from the end of model construction (LLM + encoder resident) to the end"
            if cuda
            else "CPU stand-in: peak resident set size (VmHWM) of a fresh process per mode, from the end of "
            "model construction; no device memory is measured",
            "decoders are managed by the library (model.decoder_memory); the script never loads or unloads one",
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
