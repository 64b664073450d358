"""The machine a benchmark runs on: device and dtype choice, device synchronisation, datasheet
tables (bf16 dense peak, HBM bandwidth) with CPU stand-ins (measured matmul throughput and copy
bandwidth), and the names and versions every report records."""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is available")
    return dev


@dataclass(frozen=True)
class Dtypes:
    """``llm``: LLM weights; ``media``: encoder and decoder weights; ``autocast``: compute dtype of
    the training step (``None``: plain float32)."""

    llm: str
    media: str
    autocast: str | None

    def autocast_context(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=getattr(torch, self.autocast))


def resolve_dtypes(name: str, device: torch.device) -> Dtypes:
    """``auto``: the nextgpt-7b settings on CUDA (LLM bf16, encoder/decoders fp16, bf16-mixed
    training); float32 everywhere on CPU. An explicit dtype applies to every component."""
    if name == "auto":
        if device.type == "cuda":
            return Dtypes("bfloat16", "float16", "bfloat16")
        return Dtypes("float32", "float32", None)
    if name not in ("float32", "bfloat16", "float16"):
        raise SystemExit(f"unknown --dtype {name!r}")
    return Dtypes(name, name, None if name == "float32" else name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Dense (no sparsity) bf16 tensor-core peak per GPU, FLOP/s (NVIDIA datasheets). First match wins.
BF16_PEAK_FLOPS: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h200",), 989e12, "H200 SXM"),
    (("h100", "pcie"), 756e12, "H100 PCIe"),
    (("h100", "nvl"), 835e12, "H100 NVL"),
    (("h100",), 989e12, "H100 SXM"),
    (("a100",), 312e12, "A100"),
    (("l40s",), 362e12, "L40S"),
)
#: HBM bandwidth per GPU, bytes/s (NVIDIA datasheets). First match wins.
HBM_BANDWIDTH: tuple[tuple[tuple[str, ...], float, str], ...] = (
    (("h200",), 4.8e12, "H200 SXM"),
    (("h100", "pcie"), 2.0e12, "H100 PCIe"),
    (("h100", "nvl"), 3.9e12, "H100 NVL"),
    (("h100",), 3.35e12, "H100 SXM"),
    (("a100", "80gb"), 2.0e12, "A100 80GB"),
    (("a100",), 1.555e12, "A100 40GB"),
    (("l40s",), 0.864e12, "L40S"),
)


def lookup(table, device_name: str) -> tuple[float, str] | None:
    """``(value, label)`` of the first row whose substrings all occur in ``device_name``."""
    name = device_name.lower()
    for keys, value, label in table:
        if all(k in name for k in keys):
            return value, label
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measured_matmul_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024) -> float:
    """Achieved FLOP/s of a square matmul (the CPU stand-in for a datasheet peak)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    sync(device)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def measured_copy_bandwidth(device: torch.device, mib: int = 256) -> float:
    """Bytes/s of a large tensor copy, counting read + write (STREAM "copy" convention)."""
    src = torch.ones(mib * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * src.element_size() / best


def peak_flops(
    device: torch.device, dtype: str | None, override_tflops: float | None = None
) -> tuple[float, str]:
    """(FLOP/s, source) the MFU divides by: ``--peak-tflops``, the GPU table, or on CPU a measured
    matmul in the step's dtype."""
    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if device.type == "cuda":
        hit = lookup(BF16_PEAK_FLOPS, device_name(device))
        if hit:
            return hit[0], f"datasheet dense bf16 peak, {hit[1]}"
        return measured_matmul_flops(
            device, torch.bfloat16, 4096
        ), "measured bf16 matmul (GPU not in the table)"
    dt = getattr(torch, dtype or "float32")
    return measured_matmul_flops(device, dt), f"measured {dt} matmul on this CPU (stand-in for a peak)"


def memory_bandwidth(device: torch.device, override_gbs: float | None = None) -> tuple[float, str]:
    """(bytes/s, source): ``--bandwidth-gbs``, the GPU table, or a measured copy bandwidth."""
    if override_gbs:
        return override_gbs * 1e9, "--bandwidth-gbs"
    if device.type == "cuda":
        hit = lookup(HBM_BANDWIDTH, device_name(device))
        if hit:
            return hit[0], f"datasheet HBM bandwidth, {hit[1]}"
        return measured_copy_bandwidth(device, 1024), "measured device copy bandwidth (GPU not in the table)"
    source = "measured memcpy bandwidth of this CPU (read+write bytes, 256 MiB copy)"
    return measured_copy_bandwidth(device), source


def gib(n: float) -> float:
    return n / 2**30


def env_info(device: torch.device, dtypes: Dtypes | None = None) -> dict[str, Any]:
    """Date, device and CPU names, thread count and library versions (the ``env`` of a report)."""
    import diffusers
    import peft
    import transformers

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "device_name": device_name(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "peft": peft.__version__,
    }
    if device.type == "cuda":
        info["cuda"] = torch.version.cuda
    if dtypes is not None:
        info["dtypes"] = {"llm": dtypes.llm, "media": dtypes.media, "autocast": dtypes.autocast}
    return info
