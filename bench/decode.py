"""Text decoding at batch 1: tokens/s against the memory-bandwidth bound.

Two decoders on the same LLM (LoRA adapters attached, as ``NextGPT`` runs it):

* ``nextgpt``: ``NextGPT.generate(prompt, modalities=["text"])`` — our own loop (KV cache, signal-
  token control, hidden states kept for the output projectors);
* ``transformers``: the plain ``generate`` of the same (peft-wrapped) ``LlamaForCausalLM``, greedy,
  ``min_new_tokens = max_new_tokens``.

Each is timed for ``N`` new tokens and for 1 new token; ``(t_N - t_1) / (N - 1)`` is the time of one
decoding step (prefill excluded). EOS is disabled (random weights may emit it at any step).

Bound: one decoding step at batch 1 must read every weight once (the input-embedding table
excepted: one row) plus the KV cache, so ``tokens/s <= bandwidth / (weight bytes + KV bytes at the
mean context)``. Bandwidth: the GPU's HBM datasheet figure (H100 SXM 3.35 TB/s, H200 4.8 TB/s,
A100-80GB 2.0 TB/s); on a CPU a measured memcpy bandwidth of this machine (read + write bytes of
a 256 MiB tensor copy), labelled as such. Target at ``--size full`` on a GPU: >= 60% of the bound.

    python -m bench.decode --size full --device cuda --json decode.json
    python -m bench.decode --size small --device cpu
"""

from __future__ import annotations

import time

import torch

from bench.cli import base_parser, cli_main, setup
from bench.hardware import env_info, memory_bandwidth
from bench.report import Report
from bench.sizes import SIZE_SPECS, build_model, suppress_eos
from bench.timing import timeit

PROMPT = "Tell me a long story about a lighthouse keeper who finds a message in a bottle."


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--new-tokens", type=int, default=None, help="tokens to generate (default: the size's)")
    ap.add_argument(
        "--repeats", type=int, default=None, help="timed runs per measurement (default: smoke 1, else 3)"
    )
    ap.add_argument("--prompt", default=PROMPT)
    ap.add_argument("--bandwidth-gbs", type=float, default=None, help="bandwidth to use for the bound (GB/s)")
    return ap.parse_args(argv)


def weight_bytes(llm) -> int:
    """Bytes a decoding step reads: every LLM weight except the input-embedding table."""
    embed = llm._causal_lm().get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in llm.parameters() if p is not embed)


def kv_bytes(cfg, context: float, element_size: int) -> float:
    """KV-cache bytes read in one step at ``context`` cached positions."""
    head_dim = cfg.hidden_size // cfg.num_heads
    return 2 * cfg.num_layers * cfg.num_kv_heads * head_dim * element_size * context


def run(args) -> Report:
    from nextgpt.processor import parse_inputs

    device, dtypes = setup(args)
    spec = SIZE_SPECS[args.size]
    N = max(2, args.new_tokens or spec.decode_tokens)
    repeats = args.repeats or (1 if args.size == "smoke" else 3)

    t0 = time.perf_counter()
    model = build_model(args.size, device, dtypes)
    build_s = time.perf_counter() - t0
    model.eval()
    suppress_eos(model)
    enc = model.processor.encode(parse_inputs(args.prompt), add_generation_prompt=True)
    ids = enc.input_ids.unsqueeze(0).to(device)  # (1, L)
    hf = model.llm.model
    pad = model.llm.tokenizer.pad_token_id or 0

    def ours(n):
        out = model.generate(args.prompt, modalities=["text"], max_new_tokens=n)
        assert len(out.token_ids) == n, (len(out.token_ids), n)
        return out

    def theirs(n):
        with torch.no_grad():
            out = hf.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=pad,
            )
        assert out.shape[1] - ids.shape[1] == n, (out.shape, ids.shape, n)
        return out

    bw, bw_source = memory_bandwidth(device, args.bandwidth_gbs)
    llm_cfg = model.config.model.llm
    w_bytes = weight_bytes(model.llm)
    elem = next(model.llm.parameters()).element_size()
    mean_ctx = ids.shape[1] + N / 2
    step_bytes = w_bytes + kv_bytes(llm_cfg, mean_ctx, elem)
    bound = bw / step_bytes

    rows = []
    for name, fn in (("nextgpt.generate", ours), ("transformers.generate", theirs)):
        full, _ = timeit(lambda fn=fn: fn(N), device=device, repeats=repeats, warmup=1)
        one, _ = timeit(lambda fn=fn: fn(1), device=device, repeats=repeats, warmup=1)
        step_s = max(full["median_s"] - one["median_s"], 1e-9) / (N - 1)
        rows.append(
            {
                "decoder": name,
                "prompt_tokens": int(ids.shape[1]),
                "new_tokens": N,
                "total_s": full["median_s"],
                "first_token_s": one["median_s"],
                "tokens_per_s": N / full["median_s"],
                "step_ms": step_s * 1e3,
                "decode_tokens_per_s": 1 / step_s,
                "bound_tokens_per_s": bound,
                "fraction_of_bound": (1 / step_s) / bound,
            }
        )
    ours_row, hf_row = rows
    report = Report(
        benchmark="decode",
        size=args.size,
        env=env_info(device, dtypes),
        columns=[
            ("decoder", "decoder"),
            ("prompt_tokens", "prompt"),
            ("new_tokens", "new tokens"),
            ("total_s", "total (s)"),
            ("tokens_per_s", "tokens/s (end to end)"),
            ("step_ms", "step (ms)"),
            ("decode_tokens_per_s", "tokens/s (decode)"),
            ("bound_tokens_per_s", "bound tokens/s"),
            ("fraction_of_bound", "fraction of bound"),
        ],
        rows=rows,
        summary={
            "decode_tokens_per_s": ours_row["decode_tokens_per_s"],
            "fraction_of_bound": ours_row["fraction_of_bound"],
            "nextgpt_over_transformers_step": ours_row["step_ms"] / hf_row["step_ms"],
            "bound_tokens_per_s": bound,
            "bandwidth_gbs": bw / 1e9,
            "weight_gib": w_bytes / 2**30,
            "build_s": build_s,
        },
        config={
            "bandwidth_source": bw_source,
            "weight_bytes": w_bytes,
            "bytes_per_step_at_mean_context": step_bytes,
            "mean_context": mean_ctx,
            "llm_dtype": dtypes.llm,
            "repeats": repeats,
        },
        notes=[
            f"bandwidth: {bw_source}",
            "bound = bandwidth / (weight bytes w/o embedding table + KV bytes at mean context)",
        ],
    )
    return report


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
