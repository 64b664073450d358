"""Stage-3 training step: tokens/s and model FLOPs utilisation (MFU).

One optimiser step of ``StageModule(cfg, 3, model)`` (LoRA on q/k/v/o + input projector + the three
output projectors + added token rows), called directly (no Lightning Trainer): forward (LM loss +
caption-alignment losses), backward, gradient clipping (1.0, the preset's), the stage's Adam step.
At ``--size full`` on a GPU: Vicuna-7B shape in bf16 with bf16 autocast (the preset's
``bf16-mixed``), batch 4 x 512 tokens (paper Table 7), gradient checkpointing as the preset sets it.

The batch is synthetic with the real structure: rows cycle through image->image, audio->audio,
video->video and image->text (an input placeholder run of the projector's token count, an output
signal run with a random alignment target); media arrive as cached encoder features (computed once
by the frozen encoder, moved to the device in every step as Lightning would), so the encoder is not
in the step.

MFU = model FLOPs per step / step time / peak. Model FLOPs count the LLM only (projectors are
< 1% of the step) with a frozen base (see ``bench.flops.train_step_flops``):

    (2 + 2) * N_frozen * T + (2 + 2 + 2) * N_lora * T + 12 * L * d * S * T

(forward 2NT, activation gradients 2NT, weight gradients 2NT only for trainable weights; attention
12·L·d·S per token). Also reported: the full-fine-tuning convention 6·N·T (over-counts LoRA) and
the hardware FLOPs utilisation including the recomputed forward of gradient checkpointing.
Peak: the GPU's dense bf16 datasheet peak (H100 SXM / H200 989 TFLOPS, A100 312); on CPU a measured
matmul throughput stands in (labelled).

    python -m bench.train_step --size full --device cuda --json train_step.json
    python -m bench.train_step --size small --device cpu
"""

from __future__ import annotations

import time

import torch

from bench.cli import base_parser, cli_main, setup
from bench.flops import count_parameters, llm_matmul_params, train_step_flops
from bench.hardware import env_info, peak_flops
from bench.inputs import RowSpec, batch_to, synthetic_batch
from bench.report import Report
from bench.sizes import SIZE_SPECS, build_model
from bench.timing import timeit

#: Row pattern of the synthetic stage-3 batch: (input modality, output modality).
ROW_PATTERN = (("image", "image"), ("audio", "audio"), ("video", "video"), ("image", None))


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the size's)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the size's)")
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps (default: smoke 2, small 3, full 10)"
    )
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 1, full 3)")
    ap.add_argument(
        "--gradient-checkpointing",
        choices=("preset", "on", "off"),
        default="preset",
        help="LLM activation checkpointing (preset: on, as nextgpt-7b trains)",
    )
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak to divide by (unknown GPUs)")
    return ap.parse_args(argv)


def run(args) -> Report:
    device, dtypes = setup(args)
    spec = SIZE_SPECS[args.size]
    B = args.batch_size or spec.stage3_batch
    S = args.seq_len or spec.stage3_len
    steps = args.steps or {"smoke": 2, "small": 3, "full": 10}[args.size]
    warmup = args.warmup if args.warmup is not None else (3 if args.size == "full" else 1)
    extra = {}
    if args.gradient_checkpointing != "preset":
        extra["model.llm.gradient_checkpointing"] = args.gradient_checkpointing == "on"

    t0 = time.perf_counter()
    model = build_model(args.size, device, dtypes, extra=extra)
    build_s = time.perf_counter() - t0
    from nextgpt.stages.modules import StageModule

    module = StageModule(model.config, 3, model)
    module._total_steps = lambda: 1000  # no Trainer attached; the schedule's length only shapes warm-up
    optimizer = module.configure_optimizers()["optimizer"]
    module.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    clip = model.config.training.gradient_clip_val

    rows = [RowSpec(*ROW_PATTERN[i % len(ROW_PATTERN)]) for i in range(B)]
    host_batch = synthetic_batch(model, rows, S, cached=True, with_targets=True)

    def step():
        batch = batch_to(host_batch, device)
        with dtypes.autocast_context(device):
            losses = module(batch)
        losses["loss"].backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return losses["loss"].detach()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats, loss = timeit(step, device=device, repeats=steps, warmup=warmup)
    step_s = stats["median_s"]

    llm_cfg = model.config.model.llm
    frozen, lora = llm_matmul_params(model.llm)
    recompute = bool(llm_cfg.gradient_checkpointing)
    flops = train_step_flops(
        frozen=frozen,
        trainable=lora,
        layers=llm_cfg.num_layers,
        hidden=llm_cfg.hidden_size,
        batch=B,
        seq=S,
        recompute=recompute,
    )
    peak, peak_source = peak_flops(device, dtypes.autocast or dtypes.llm, args.peak_tflops)
    n_trainable = sum(p.numel() for p in trainable)
    row = {
        "batch": B,
        "seq_len": S,
        "tokens": int(flops["tokens"]),
        "step_s": step_s,
        "tokens_per_s": flops["tokens"] / step_s,
        "model_tflop_per_step": flops["model"] / 1e12,
        "achieved_tflops": flops["model"] / step_s / 1e12,
        "mfu": flops["model"] / step_s / peak,
        "mfu_6nt": flops["six_n"] / step_s / peak,
        "hfu": flops["hardware"] / step_s / peak,
        "loss": float(loss),
    }
    if device.type == "cuda":
        row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    report = Report(
        benchmark="train_step",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("batch", "batch"),
            ("seq_len", "seq"),
            ("step_s", "step (s)"),
            ("tokens_per_s", "tokens/s"),
            ("achieved_tflops", "model TFLOP/s"),
            ("mfu", "MFU (LoRA FLOPs)"),
            ("mfu_6nt", "MFU (6NT)"),
            ("hfu", "HFU (+recompute)"),
        ]
        + ([("peak_mem_gib", "peak mem (GiB)")] if device.type == "cuda" else []),
        rows=[row],
        summary={
            "tokens_per_s": row["tokens_per_s"],
            "mfu": row["mfu"],
            "step_s": step_s,
            "peak_tflops": peak / 1e12,
            "build_s": build_s,
        },
        config={
            "stage": 3,
            "rows": [f"{r.input}->{r.output or 'text'}" for r in rows],
            "gradient_checkpointing": recompute,
            "llm_frozen_matmul_params": frozen,
            "llm_lora_params": lora,
            "trainable_params": n_trainable,
            "total_params": count_parameters(model),
            "flops_per_step": flops,
            "peak_source": peak_source,
            "steps_timed": stats["runs"],
            "step_times": stats,
        },
        notes=[
            "MFU = (4*N_frozen + 6*N_lora)*T + 12*L*d*S*T per step / time / peak (LLM only; frozen base: no weight grads)",
            f"peak: {peak_source}",
        ],
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
