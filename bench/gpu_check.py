"""GPU check (``make gpu-check``): does the real run work on this machine?

At the true shapes with random weights (``--size full``; ``smoke`` runs the same items at tiny size on
a CPU, which is what the test suite does):

* ``train <preset> stage N`` — for ``nextgpt-7b`` (bf16 LLM, fp16 encoder, ``bf16-mixed``) and
  ``nextgpt-7b-legacy`` (fp16 LLM, full token matrices, ``16-mixed``): two optimiser steps of each
  stage through the real ``StageModule`` and a Lightning ``Trainer`` in the preset's precision and
  gradient clipping (fused Adam where legal), on batches of the stage's structure (paper batch sizes
  at ``full``: 18 / 8 / 4 rows); the encoder runs in the step (no cache). Checks: finite loss,
  trainable tensors float32 and updated, frozen ones untouched. Reports the second step's time and
  the peak device memory.
* ``ddp stage 3`` — the stage-3 step under ``strategy: ddp`` over every visible GPU (two CPU
  processes at ``smoke``), launched by Lightning as ``make stage3 OVERRIDES="training.devices=N"``
  would; checks that every rank finished with the same weights.
* ``generate`` — one ``nextgpt-7b`` model answering an image + audio + video prompt with text,
  image, audio and video; every decoder component must be on the model's device.

Prints one line per item (pass/fail, step time, peak memory) and exits non-zero if any failed. Runs in
under 10 minutes on one H100 at ``--size full``.

    python -m bench.gpu_check --size full --json out/gpu_check.json      (make gpu-check)
    python -m bench.gpu_check --size smoke --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from bench.cli import base_parser, cli_main, setup
from bench.hardware import Dtypes, env_info, gib
from bench.inputs import RowSpec, synthetic_batch
from bench.report import Report
from bench.sizes import SIZE_SPECS, build_model

#: The repository root: subprocesses run ``python -m bench.gpu_check`` from there.
ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("nextgpt-7b", "nextgpt-7b-legacy")
#: Optimiser steps of an fp16 (16-mixed) item: room for the GradScaler's first overflow skips.
FP16_STEPS = 8
#: Rows per stage: stage 1 X -> caption, stage 2 caption -> X, stage 3 a mix.
STAGE_ROWS = {
    1: (("image", None), ("audio", None), ("video", None)),
    2: ((None, "image"), (None, "audio"), (None, "video")),
    3: (("image", "image"), ("audio", "audio"), ("video", "video"), ("image", None)),
}


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.set_defaults(size="full")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets to train")
    ap.add_argument("--skip-ddp", action="store_true", help="leave out the multi-process item")
    ap.add_argument("--steps", type=int, default=None, help="diffusion steps in generate (default 4)")
    ap.add_argument("--item", default=None, help=argparse.SUPPRESS)  # internal: one DDP rank
    ap.add_argument("--item-out", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def preset_dtypes(preset: str) -> tuple[Dtypes, str]:
    """The preset's own weight dtypes and training precision."""
    from nextgpt import NextGPTConfig

    cfg = NextGPTConfig.from_preset(preset)
    precision = cfg.training.precision
    autocast = {"bf16-mixed": "bfloat16", "16-mixed": "float16"}.get(precision)
    return Dtypes(cfg.model.llm.dtype, cfg.model.encoder.dtype, autocast), precision


def _peak(device: torch.device) -> float | None:
    return gib(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _batches(model, stage: int, size: str, n: int) -> list:
    spec = SIZE_SPECS[size]
    rows_per = {1: spec.stage1_batch, 2: max(3, spec.stage3_batch * 2), 3: spec.stage3_batch}[stage]
    seq = spec.stage1_len if stage == 1 else spec.stage3_len
    pattern = STAGE_ROWS[stage]
    rows = [RowSpec(*pattern[i % len(pattern)]) for i in range(rows_per)]
    return [
        synthetic_batch(model, rows, seq, cached=False, with_targets=stage >= 2, seed=i) for i in range(n)
    ]


class _StepTimer:
    """Lightning callback: wall time of each training batch (device synchronised)."""

    def __init__(self, device: torch.device) -> None:
        import lightning as L

        class CB(L.Callback):
            def on_train_batch_start(cb, trainer, *a):  # noqa: N805
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                cb.t0 = time.perf_counter()

            def on_train_batch_end(cb, trainer, module, outputs, *a):  # noqa: N805
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                self.times.append(time.perf_counter() - cb.t0)
                self.losses.append(float(outputs["loss"]))

        self.times: list[float] = []
        self.losses: list[float] = []
        self.callback = CB()


def _trainer(
    device: torch.device, precision: str, clip, callbacks, *, steps: int, strategy="auto", devices=1
):
    import lightning as L

    from nextgpt.stages.train import precision_settings

    accel = "gpu" if device.type == "cuda" else "cpu"
    prec, plugins = precision_settings(precision, accel)
    return L.Trainer(
        accelerator=accel,
        devices=devices,
        strategy=strategy,
        precision=prec,
        plugins=plugins,
        max_steps=steps,
        gradient_clip_val=clip,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )


def train_items(size: str, device: torch.device, preset: str) -> list[dict]:
    from nextgpt.stages.modules import StageModule

    dtypes, precision = preset_dtypes(preset)
    rows = []
    t0 = time.perf_counter()
    model = build_model(size, device, dtypes, preset=preset)
    build_s = time.perf_counter() - t0
    for stage in (1, 2, 3):
        name = f"train {preset} stage {stage} ({precision})"
        row = {"item": name, "build_s": build_s if stage == 1 else None}
        try:
            module = StageModule(model.config, stage, model)
            trainable = set(module.trainable_names)
            before = {k: v.detach().clone() for k, v in model.named_parameters() if k in trainable}
            frozen = {
                k: float(v.detach().float().sum()) for k, v in model.named_parameters() if k not in trainable
            }
            timer = _StepTimer(device)
            # fp16: GradScaler starts at 2**16 and skips the steps whose gradients overflow (halving
            # its scale each time), so give it room to reach a real update, as a run's first steps do.
            steps = FP16_STEPS if precision == "16-mixed" else 2
            batches = _batches(model, stage, size, steps)
            loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
            _reset_peak(device)
            trainer = _trainer(
                device, precision, model.config.training.gradient_clip_val, [timer.callback], steps=steps
            )
            trainer.fit(module, train_dataloaders=loader)
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            params = dict(model.named_parameters())
            problems = []
            if not all(v == v and abs(v) != float("inf") for v in timer.losses):
                problems.append(f"loss {timer.losses}")
            if any(params[k].dtype != torch.float32 for k in trainable):
                problems.append("trainable tensors not float32")
            if not any(not torch.equal(params[k].detach().cpu(), before[k].cpu()) for k in trainable):
                problems.append("no trainable tensor changed")
            moved = [k for k, s in frozen.items() if float(params[k].detach().float().sum()) != s]
            if moved:
                problems.append(f"frozen tensors changed: {moved[:2]}")
            row.update(
                ok=not problems,
                step_s=timer.times[-1],
                peak_gib=_peak(device),
                loss=timer.losses[-1],
                note="; ".join(problems)
                or f"{len(batches[0].keys)} rows, {steps} steps"
                + (f", GradScaler scale {scaler.get_scale():g}" if scaler is not None else ""),
            )
        except Exception as exc:  # report and go on: the other items still tell something
            row.update(ok=False, note=f"{type(exc).__name__}: {exc}"[:300])
            traceback.print_exc()
        rows.append(row)
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def ddp_item(args, device: torch.device) -> dict:
    """Launch this script as ``--item ddp`` in a subprocess: Lightning's launcher starts the ranks
    (as ``python -m bench.gpu_check ...`` again, from the repository root)."""
    out = Path(args.json or "gpu_check.json").with_suffix(".ddp.json").resolve()
    out.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "bench.gpu_check", "--size", args.size, "--device", args.device]
    cmd += ["--item", "ddp", "--item-out", str(out)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    row = {"item": "ddp stage 3", "wall_s": time.perf_counter() - t0}
    if res.returncode != 0 or not out.is_file():
        row.update(ok=False, note=(res.stderr or res.stdout)[-300:])
        return row
    ranks = [json.loads(line) for line in out.read_text().splitlines()]
    same = len({r["digest"] for r in ranks}) == 1
    row.update(
        ok=same and len(ranks) == ranks[0]["world_size"],
        step_s=max(r["step_s"] for r in ranks),
        peak_gib=max((r["peak_gib"] or 0) for r in ranks) or None,
        note=f"{len(ranks)} rank(s)" + ("" if same else ": ranks hold different weights"),
    )
    return row


def run_ddp_rank(args) -> None:
    """One rank of the DDP item (Lightning re-runs this command for every other rank)."""
    import hashlib

    from nextgpt.stages.modules import StageModule
    from nextgpt.stages.parallel import build_strategy

    device, _ = setup(args)
    dtypes, precision = preset_dtypes("nextgpt-7b")
    devices = torch.cuda.device_count() if device.type == "cuda" else 2
    if device.type == "cuda":  # each rank builds on its own GPU (Lightning sets LOCAL_RANK)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    model = build_model(args.size, device, dtypes)
    module = StageModule(model.config, 3, model)
    timer = _StepTimer(device)
    batches = _batches(model, 3, args.size, 2)
    loader = torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda b: b)
    trainer = _trainer(
        device,
        precision,
        model.config.training.gradient_clip_val,
        [timer.callback],
        steps=2,
        strategy=build_strategy("ddp", devices=devices),
        devices=devices,
    )
    trainer.fit(module, train_dataloaders=loader)
    digest = hashlib.sha256()
    for k, v in sorted(model.trainable_state_dict().items()):
        digest.update(k.encode() + v.detach().float().cpu().numpy().tobytes())
    row = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "step_s": timer.times[-1],
        "peak_gib": _peak(trainer.strategy.root_device),
        "digest": digest.hexdigest(),
    }
    with open(args.item_out, "a") as f:
        f.write(json.dumps(row) + "\n")


def generate_item(size: str, device: torch.device, steps: int) -> dict:
    from nextgpt import Audio, Video

    dtypes, _ = preset_dtypes("nextgpt-7b")
    row = {"item": "generate text+image+audio+video"}
    try:
        model = build_model(size, device, dtypes)
        import numpy as np
        from PIL import Image

        image = Image.fromarray(np.full((256, 256, 3), 120, np.uint8))
        audio = Audio(np.sin(np.arange(32000) / 10.0).astype(np.float32)[None], 16000)
        video = Video(np.full((16, 128, 128, 3), 90, np.uint8), fps=8)
        _reset_peak(device)
        t0 = time.perf_counter()
        out = model.generate(
            [image, audio, video, "Describe these, then draw, play and film them."],
            modalities=["text", "image", "audio", "video"],
            max_new_tokens=16,
            seed=0,
            num_inference_steps=steps,
        )
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
        misplaced = [
            f"{m.value}.{name}"
            for m, d in model.decoders.items()
            for name, comp in d.pipeline.components.items()
            if isinstance(comp, torch.nn.Module)
            for p in list(comp.parameters())[:1]
            if p.device.type != device.type
        ]
        got = (len(out.images), len(out.audios), len(out.videos))
        ok = got == (1, 1, 1) and not misplaced
        note = f"{steps} diffusion steps; media {got}" + (f"; off-device: {misplaced}" if misplaced else "")
        row.update(ok=ok, step_s=wall, peak_gib=_peak(device), note=note)
        del model
    except Exception as exc:
        row.update(ok=False, note=f"{type(exc).__name__}: {exc}"[:300])
        traceback.print_exc()
    return row


def run(args) -> Report:
    device, _ = setup(args)
    rows: list[dict] = []
    for preset in [p for p in args.presets.split(",") if p]:
        if preset not in PRESETS:
            raise SystemExit(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
        rows += train_items(args.size, device, preset)
    if not args.skip_ddp:
        rows.append(ddp_item(args, device))
    rows.append(generate_item(args.size, device, args.steps or (4 if args.size == "full" else 2)))
    failed = [r["item"] for r in rows if not r.get("ok")]
    return Report(
        benchmark="gpu_check",
        size=args.size,
        env=env_info(device),
        columns=[
            ("item", "item"),
            ("ok", "pass"),
            ("step_s", "step / call (s)"),
            ("peak_gib", "peak mem (GiB)"),
            ("note", "note"),
        ],
        rows=rows,
        summary={"passed": len(rows) - len(failed), "failed": len(failed)},
        notes=[f"FAILED: {', '.join(failed)}"] if failed else [],
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.item == "ddp":
        run_ddp_rank(args)
        return {}
    data = cli_main(lambda _: args, run, argv)
    return data


if __name__ == "__main__":
    result = main()
    if result and result["summary"]["failed"]:
        sys.exit(1)
