"""Training steps through the library's own Lightning loop: samples/s, useful tokens/s and MFU.

Each variant (stage x feature caches on/off x packing on/off) is one ``Trainer.fit`` of the real
``StageModule`` on a ``NextGPTDataModule`` over real shards (default: the demo dataset, repeated
until the epoch is longer than the run), built as ``nextgpt train`` builds them
(``nextgpt.stages.train.build_trainer``): the DataLoader with the library's collator (template,
tokenisation, packing, media preprocessing or cache reads) in its worker processes, the transfer to
the device, forward (LM loss, alignment losses), backward, gradient clipping, the optimiser and LR
scheduler step, logging. A callback times every step: ``step`` is ``on_train_batch_start`` ->
``on_train_batch_end`` (device-synchronised), ``data`` the wait for the next batch between steps;
rates are over ``step + data``, after ``--warmup`` untimed steps.

Not included: process start-up, building the model, building the caches (``nextgpt cache``, once
per dataset), checkpoint writes (every ``training.checkpoint_every_n_steps`` steps in a real run;
set beyond this run here) and the first steps.

``--preset small`` trains the preset's own model (SmolLM2-135M with its real tokenizer); ``--size``
(default) a random model of the benchmark sizes (``full``: nextgpt-7b's shapes, for a GPU; the
random LLM has the byte-level tokenizer, so its samples are ~4x longer in tokens than with
Vicuna's).

Useful tokens: the samples' tokens (padding excluded); processed tokens: rows x row length. Model
FLOPs per step (MFU) are counted on the useful tokens, per sample (``bench.flops.sample_flops``):
the frozen LLM's weights 4 FLOPs per token (forward + activation gradient), LoRA weights 6, the LM
head only at labelled positions (where the library computes logits), attention ``12 L d n^2`` per
sample of ``n`` tokens. HFU counts what the hardware runs: every processed token, attention over
each whole row (SDPA's masks) and gradient checkpointing's recomputed forward.

    python -m bench.train_step --preset small --stages 1 2 --packing both --cache on
    python -m bench.train_step --size full --device cuda --stages 3 --json train_step.json
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

from bench.cli import base_parser, cli_main, setup
from bench.flops import llm_matmul_params, sample_flops
from bench.hardware import env_info, peak_flops
from bench.report import Report
from bench.sizes import build_model


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument(
        "--preset", default=None, help="train this preset's own model (e.g. small) instead of --size"
    )
    ap.add_argument("--stages", nargs="+", type=int, choices=(1, 2, 3), default=[3])
    ap.add_argument("--packing", choices=("on", "off", "both", "preset"), default="both")
    ap.add_argument("--cache", choices=("on", "off", "both"), default="on", help="feature caches")
    ap.add_argument("--data", default=None, help="shard folder (default: the demo dataset in a temp folder)")
    ap.add_argument("--batch-size", type=int, default=None, help="samples per step (default: the preset's)")
    ap.add_argument(
        "--pack-length", type=int, default=None, help="tokens per packed row (default: the preset's)"
    )
    ap.add_argument(
        "--num-workers", type=int, default=None, help="DataLoader workers (default: the preset's)"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps (default: smoke 2, small 6, full 10)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    ap.add_argument(
        "--gradient-checkpointing",
        choices=("preset", "on", "off"),
        default="preset",
        help="LLM activation checkpointing (preset: as the model's config says)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak to divide by (unknown GPUs)")
    return ap.parse_args(argv)


def _sample_lengths(batch) -> list[int]:
    """Tokens of each sample in the batch (from the packed positions, else the attention mask)."""
    if batch.is_empty:
        return []
    if batch.position_ids is None:
        return [int(n) for n in batch.attention_mask.sum(1).tolist()]
    out = []
    for pos, mask in zip(batch.position_ids.tolist(), batch.attention_mask.tolist()):
        starts = [i for i, (p, m) in enumerate(zip(pos, mask)) if p == 0 and m]
        ends = [*starts[1:], sum(mask)]
        out += [b - a for a, b in zip(starts, ends)]
    return out


class StepTimer(L.Callback):
    """Per-step compute time (``on_train_batch_start`` -> ``on_train_batch_end``, synchronised), the
    data wait before each step, and each batch's shape."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.step_s: list[float] = []
        self.data_s: list[float] = []
        self.batches: list[dict] = []
        self.last_end: float | None = None
        self.t0 = 0.0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.t0 = self._now()
        self.data_s.append(self.t0 - self.last_end if self.last_end is not None else math.nan)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.last_end = self._now()
        self.step_s.append(self.last_end - self.t0)
        self.batches.append(
            {
                "samples": len(batch.keys),
                "lengths": _sample_lengths(batch),
                "rows": batch.num_rows,
                "row_len": int(batch.input_ids.shape[1]),
                "labelled": int((batch.labels[:, 1:] != -100).sum()),
            }
        )


def _demo_data(root: Path, samples_needed: int) -> Path:
    """The demo dataset, its shards repeated (as more files) until every stage has ``samples_needed``."""
    from nextgpt.stages.data import build_demo_dataset
    from nextgpt.stages.data.shards import count_samples

    src = root / "demo"
    build_demo_dataset(src, seed=0)
    out = root / "data"
    for name in ("pairs", "conversations"):
        shards = sorted((src / name).glob("*.tar"))
        n = count_samples([str(s) for s in shards])
        (out / name).mkdir(parents=True, exist_ok=True)
        for k in range(max(1, -(-samples_needed // n))):
            for s in shards:
                shutil.copy(s, out / name / f"r{k:03d}-{s.name}")
    return out


def _model(args, device, dtypes, extra: dict):
    from nextgpt import NextGPT, NextGPTConfig

    if args.preset:
        model = NextGPT(NextGPTConfig.from_preset(args.preset).with_overrides(extra))
        return model.to(device), f"preset:{args.preset}"
    return build_model(args.size, device, dtypes, extra=extra), args.size


def run(args) -> Report:
    from nextgpt.stages.cache import STAGES_OF, build_cache, open_caches
    from nextgpt.stages.datamodule import NextGPTDataModule
    from nextgpt.stages.modules import StageModule
    from nextgpt.stages.train import build_trainer

    device, dtypes = setup(args)
    steps = args.steps or {"smoke": 2, "small": 6, "full": 10}[args.size if not args.preset else "small"]
    warmup = args.warmup if args.warmup is not None else 2
    extra = {}
    if args.gradient_checkpointing != "preset":
        extra["model.llm.gradient_checkpointing"] = args.gradient_checkpointing == "on"
    if not args.data:  # the demo folders
        extra.update({f"training.stages.{s}.datasets": ["pairs"] for s in (1, 2)})
        extra["training.stages.3.datasets"] = ["conversations"]
    t0 = time.perf_counter()
    model, size = _model(args, device, dtypes, extra)
    build_s = time.perf_counter() - t0
    base = model.config
    precision = base.training.precision if args.preset else ("bf16-mixed" if dtypes.autocast else "32-true")
    work = Path(tempfile.mkdtemp(prefix="nextgpt-train-step-"))
    rows, configs = [], {}
    try:
        most = max(args.batch_size or base.training.stage_config(s).batch_size for s in args.stages)
        data = Path(args.data) if args.data else _demo_data(work, (steps + warmup + 1) * most)
        cache_dir = work / "cache"
        peak, peak_source = peak_flops(device, dtypes.autocast or dtypes.llm, args.peak_tflops)
        frozen, lora = llm_matmul_params(model.llm)
        head = model.llm._causal_lm().get_output_embeddings().weight.numel()
        llm_cfg = base.model.llm
        for stage in args.stages:
            for cache in ["on", "off"] if args.cache == "both" else [args.cache]:
                if cache == "on":
                    for what, stages in STAGES_OF.items():
                        if stage in stages:
                            build_cache(what, data, cache_dir, model=model, stage=stage, progress=False)
                preset_packing = base.training.stage_config(stage).packing
                packings = {"both": [True, False], "on": [True], "off": [False], "preset": [preset_packing]}
                for packing in packings[args.packing]:
                    over = [
                        f"training.stage={stage}",
                        f"training.stages.{stage}.packing={str(packing).lower()}",
                        f"training.stages.{stage}.epochs=1000",
                        f"training.precision={precision}",
                        "training.accelerator=" + ("gpu" if device.type == "cuda" else "cpu"),
                        "training.devices=1",
                        "training.strategy=auto",
                        "training.log_every_n_steps=1",
                        f"training.checkpoint_every_n_steps={steps + warmup + 100}",
                        f"training.cache_dir={cache_dir if cache == 'on' else 'null'}",
                    ]
                    if args.batch_size:
                        over.append(f"training.stages.{stage}.batch_size={args.batch_size}")
                    if args.pack_length:
                        over.append(f"training.stages.{stage}.pack_length={args.pack_length}")
                    if args.num_workers is not None:
                        over.append(f"training.num_workers={args.num_workers}")
                    cfg = base.with_overrides(over)
                    module = StageModule(cfg, stage, model)
                    dm = NextGPTDataModule(cfg, stage, model.processor, data)
                    dm.feature_cache, dm.caption_cache = open_caches(cfg, stage, model, data, dm.shards())
                    timer = StepTimer(device)
                    trainer = build_trainer(
                        cfg,
                        work / f"run-s{stage}-{cache}-{packing}",
                        max_steps=steps + warmup,
                        callbacks=[timer],
                        enable_progress_bar=False,
                        enable_model_summary=False,
                    )
                    trainer.fit(module, datamodule=dm)
                    rows.append(
                        _row(timer, warmup, stage, cache, packing, frozen - head, head, lora, llm_cfg, peak)
                    )
                    configs[f"s{stage}-{cache}-{'packed' if packing else 'padded'}"] = {
                        "batch_size": cfg.training.stage_config(stage).batch_size,
                        "pack_length": cfg.training.stage_config(stage).pack_length
                        or cfg.training.stage_config(stage).max_length,
                        "num_workers": cfg.training.num_workers,
                        "precision": precision,
                        "step_times_s": timer.step_s,
                        "data_wait_s": timer.data_s,
                    }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = {}
    for r in rows:
        if not r["packing"]:
            continue
        other = [
            o for o in rows if not o["packing"] and o["stage"] == r["stage"] and o["cache"] == r["cache"]
        ]
        if other:
            key = f"stage{r['stage']}_cache_{r['cache']}"
            ratios[key] = {
                "useful_tokens_per_s": r["useful_tokens_per_s"] / other[0]["useful_tokens_per_s"],
                "samples_per_s": r["samples_per_s"] / other[0]["samples_per_s"],
            }
    return Report(
        benchmark="train_step",
        size=size,
        env=env_info(device, dtypes),
        columns=[
            ("stage", "stage"),
            ("cache", "caches"),
            ("layout", "layout"),
            ("samples_per_step", "samples/step"),
            ("rows_x_len", "rows x len"),
            ("padding", "padding"),
            ("step_s", "step (s)"),
            ("data_s", "data wait (s)"),
            ("samples_per_s", "samples/s"),
            ("useful_tokens_per_s", "useful tok/s"),
            ("mfu", "MFU"),
            ("hfu", "HFU"),
        ],
        rows=rows,
        summary={"packed_over_padded": ratios, "peak_tflops": peak / 1e12, "build_s": build_s},
        config={
            "variants": configs,
            "llm_frozen_matmul_params": frozen,
            "llm_head_params": head,
            "llm_lora_params": lora,
            "gradient_checkpointing": bool(llm_cfg.gradient_checkpointing),
            "peak_source": peak_source,
            "warmup_steps": warmup,
            "timed_steps": steps,
        },
        notes=[
            "included: Trainer.fit of StageModule on NextGPTDataModule (collation in DataLoader workers: "
            "template, tokenisation, packing, cache reads or media preprocessing), transfer, forward, "
            "backward, clipping, optimiser + LR scheduler step, logging",
            f"excluded: start-up, model build, cache build, checkpoint writes, the first {warmup} steps",
            "rates over step + data wait; padding = 1 - useful / processed tokens",
            "MFU: model FLOPs on useful tokens (LM head at labelled positions, attention per sample); "
            "HFU: every processed token, attention over whole rows, + recompute",
            f"peak: {peak_source}",
        ],
    )


def _row(timer, warmup, stage, cache, packing, body, head, lora, llm_cfg, peak) -> dict:
    keep = slice(warmup, None)
    step_s, data_s, batches = timer.step_s[keep], timer.data_s[keep], timer.batches[keep]
    wall = sum(step_s) + sum(d for d in data_s if d == d)
    samples = sum(b["samples"] for b in batches)
    useful = sum(sum(b["lengths"]) for b in batches)
    processed = sum(b["rows"] * b["row_len"] for b in batches)
    model_flops = hw_flops = 0.0
    recompute = bool(llm_cfg.gradient_checkpointing)
    for b in batches:
        f = sample_flops(
            body=body,
            head=head,
            lora=lora,
            layers=llm_cfg.num_layers,
            hidden=llm_cfg.hidden_size,
            lengths=b["lengths"],
            labelled=b["labelled"],
            rows=b["rows"],
            row_len=b["row_len"],
            recompute=recompute,
        )
        model_flops += f["model"]
        hw_flops += f["hardware"]
    return {
        "stage": stage,
        "cache": cache,
        "packing": packing,
        "layout": "packed" if packing else "padded",
        "samples_per_step": samples / max(1, len(batches)),
        "rows_x_len": f"{statistics.mean(b['rows'] for b in batches):.1f} x "
        f"{statistics.mean(b['row_len'] for b in batches):.0f}",
        "padding": 1 - useful / max(1, processed),
        "step_s": statistics.median(step_s),
        "data_s": statistics.median([d for d in data_s if d == d] or [0.0]),
        "samples_per_s": samples / wall,
        "useful_tokens_per_s": useful / wall,
        "processed_tokens_per_s": processed / wall,
        "mfu": model_flops / wall / peak,
        "hfu": hw_flops / wall / peak,
        "steps": len(batches),
    }


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
