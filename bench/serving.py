"""Concurrency of the HTTP API: N parallel clients against ``nextgpt serve --api``, batching on vs off.

One uvicorn server per mode (:func:`nextgpt.api.serve_api` on a free port of 127.0.0.1, in this
process) over one model; ``--clients`` threads each send ``--requests`` chat completions one after
the other (``POST /v1/chat/completions``, a different short prompt each, greedy, ``max_tokens`` =
``min_tokens`` = ``--max-tokens`` so every answer has the same length, text only unless
``--modalities`` says otherwise). Modes, in one run on one model:

* ``batched``: ``batch_window_ms=--window-ms``, ``max_batch=--clients``: requests that arrive
  together run in one ``model.run_requests`` call;
* ``sequential``: ``max_batch=1``: one request at a time (what a lock around ``generate`` gives).

Per mode: requests/s over the wall time of all clients, p50/p95 latency of one request (client side,
HTTP included), completion tokens/s, errors (any non-200 answer or transport error) and the mean
batch size the batcher ran. A warm-up request per mode is not counted.

``--size`` picks the model: ``smoke`` the ``tiny`` preset, ``small`` the ``small`` preset (the real
SmolLM2-135M-Instruct, CPU), ``full`` the benchmark's random ``nextgpt-7b`` (:mod:`bench.sizes`, GPU).

    python -m bench.serving --size small --device cpu --clients 8 --requests 4
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.cli import base_parser, cli_main, setup
from bench.hardware import env_info
from bench.report import Report

PROMPTS = [
    "What is the capital of France?",
    "Name three colours of the rainbow.",
    "Write one sentence about the sea.",
    "What do bees make?",
    "Give me a word that rhymes with cat.",
    "How many legs does a spider have?",
    "What is two plus two?",
    "Describe a cat in a few words.",
    "What is the opposite of hot?",
    "Name a fruit that is yellow.",
    "Why is the sky blue?",
    "Say hello in Spanish.",
]
PRESETS = {"smoke": "tiny", "small": "small"}


def parse_args(argv):
    ap = base_parser(__doc__)
    ap.add_argument("--clients", type=int, default=8, help="parallel HTTP clients (default 8)")
    ap.add_argument("--requests", type=int, default=4, help="requests per client per mode (default 4)")
    ap.add_argument("--max-tokens", type=int, default=32, help="completion tokens per request (default 32)")
    ap.add_argument("--window-ms", type=float, default=50.0, help="batching window of the batched mode (ms)")
    ap.add_argument("--modalities", default="text", help="comma-separated outputs asked for (default text)")
    ap.add_argument(
        "--modes", nargs="+", choices=("batched", "sequential"), default=["batched", "sequential"]
    )
    return ap.parse_args(argv)


def build(args, device, dtypes):
    if args.size in PRESETS:
        from nextgpt import NextGPT

        return NextGPT.from_preset(PRESETS[args.size], device=str(device))
    from bench.sizes import build_model

    return build_model(args.size, device, dtypes)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def run_mode(model, args, mode: str) -> dict:
    import httpx

    from nextgpt.api import serve_api

    max_batch = args.clients if mode == "batched" else 1
    server = serve_api(
        model,
        port=0,
        block=False,
        log_level="warning",
        batch_window_ms=args.window_ms if mode == "batched" else 0.0,
        max_batch=max_batch,
        max_queue=max(64, args.clients * 2),
    )
    name = server.app.state.nextgpt.model_name
    modalities = [m.strip() for m in args.modalities.split(",") if m.strip()]

    def body(prompt: str) -> dict:
        return {
            "model": name,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens,
            "min_tokens": args.max_tokens,
            "modalities": modalities,
            "seed": 0,
        }

    latencies: list[float] = []
    tokens = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            for k in range(args.requests):
                prompt = PROMPTS[(i * args.requests + k) % len(PROMPTS)]
                t = time.perf_counter()
                try:
                    r = http.post("/v1/chat/completions", json=body(prompt))
                    ok = r.status_code == 200
                    detail = "" if ok else f"{r.status_code} {r.text[:200]}"
                except httpx.HTTPError as exc:
                    ok, detail = False, f"{type(exc).__name__}: {exc}"
                dt = time.perf_counter() - t
                with lock:
                    if ok:
                        latencies.append(dt)
                        tokens[0] += r.json()["usage"]["completion_tokens"]
                    else:
                        errors.append(detail)

    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:  # warm-up (not counted)
            r = http.post("/v1/chat/completions", json=body("Hello!"))
            r.raise_for_status()
        batcher = server.app.state.nextgpt.batcher
        warm_batches = len(batcher.batch_sizes)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(client, range(args.clients)))
        wall = time.perf_counter() - t0
        sizes = list(batcher.batch_sizes)[warm_batches:]
    finally:
        server.stop()
    n = len(latencies)
    return {
        "mode": mode,
        "max_batch": max_batch,
        "window_ms": args.window_ms if mode == "batched" else 0.0,
        "requests": n + len(errors),
        "errors": len(errors),
        "wall_s": wall,
        "requests_per_s": n / wall if wall else 0.0,
        "p50_s": percentile(latencies, 0.5) if n else None,
        "p95_s": percentile(latencies, 0.95) if n else None,
        "mean_s": statistics.fmean(latencies) if n else None,
        "tokens_per_s": tokens[0] / wall if wall else 0.0,
        "mean_batch": statistics.fmean(sizes) if sizes else None,
        "max_batch_run": max(sizes) if sizes else None,
        "batches": len(sizes),
        "first_errors": errors[:3],
    }


def run(args) -> Report:
    import fastapi
    import uvicorn

    device, dtypes = setup(args)
    t0 = time.perf_counter()
    model = build(args, device, dtypes)
    build_s = time.perf_counter() - t0
    rows = [run_mode(model, args, mode) for mode in args.modes]
    by = {r["mode"]: r for r in rows}
    summary = {
        f"{r['mode']}_{k}": r[k]
        for r in rows
        for k in ("requests_per_s", "p50_s", "p95_s", "errors", "mean_batch")
    }
    if "batched" in by and "sequential" in by and by["sequential"]["requests_per_s"]:
        summary["throughput_ratio"] = by["batched"]["requests_per_s"] / by["sequential"]["requests_per_s"]
    summary["build_s"] = build_s
    env = env_info(device, dtypes) | {"fastapi": fastapi.__version__, "uvicorn": uvicorn.__version__}
    return Report(
        benchmark="serving",
        size=args.size,
        env=env,
        columns=[
            ("mode", "mode"),
            ("max_batch", "max batch"),
            ("window_ms", "window (ms)"),
            ("requests", "requests"),
            ("errors", "errors"),
            ("requests_per_s", "requests/s"),
            ("p50_s", "p50 (s)"),
            ("p95_s", "p95 (s)"),
            ("tokens_per_s", "tokens/s"),
            ("mean_batch", "mean batch"),
        ],
        rows=rows,
        summary=summary,
        config={
            "clients": args.clients,
            "requests_per_client": args.requests,
            "max_tokens": args.max_tokens,
            "modalities": args.modalities,
            "model": PRESETS.get(args.size, f"bench size {args.size}"),
        },
        notes=[
            "latency: client side, one non-streaming POST /v1/chat/completions, HTTP on 127.0.0.1 included"
        ],
    )


def main(argv: list[str] | None = None) -> dict:
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
