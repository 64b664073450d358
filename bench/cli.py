"""The flags every size-based script takes (``--size``, ``--device``, ``--dtype``, ``--json``,
``--threads``), the process setup, and the parse -> run -> print -> write loop."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.hardware import Dtypes, resolve_device, resolve_dtypes
from bench.report import Report
from bench.sizes import SIZES


def base_parser(doc: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=doc.strip().splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", choices=SIZES, default="small", help="model/workload size (default: small)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:N")
    ap.add_argument(
        "--dtype",
        default="auto",
        choices=("auto", "float32", "bfloat16", "float16"),
        help="auto: LLM bf16 + encoder/decoders fp16 + bf16 autocast on CUDA, float32 on CPU",
    )
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the results to this JSON file")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return ap


def cli_main(
    parse_args: Callable[[Any], Any], run: Callable[[Any], Report], argv: Sequence[str] | None
) -> dict[str, Any]:
    """Parse ``argv``, run, print the table, write ``--json``; the caller's torch thread count is
    restored afterwards (``--threads`` changes a process-wide setting)."""
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return run(args).emit(args.json)
    finally:
        torch.set_num_threads(threads)


def setup(args) -> tuple[torch.device, Dtypes]:
    import logging
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = resolve_device(args.device)
    return device, resolve_dtypes(args.dtype, device)
