"""Suite-wide test settings: offline hub, deterministic torch, the longest modules first, heavy and
GPU-only tests skipped with a reason."""

from __future__ import annotations

import os

# Set before anything imports transformers/diffusers/huggingface_hub: no hub look-ups (they retry ~40 s).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

# Under pytest-xdist (`make test` runs one worker per core) each worker computes on one thread: two
# workers with two threads each would oversubscribe the cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
else:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


#: Modules whose tests take the longest (multi-process runs, notebooks, kill tests): collected first,
#: so that the two xdist workers share them instead of one worker running them after the rest.
FIRST = ("test_scale", "test_crash_safety", "test_notebooks", "test_install", "test_bench")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__ if item.module else "", len(FIRST)))
    if not os.environ.get("NEXTGPT_HEAVY"):
        skip_heavy = pytest.mark.skip(
            reason="heavy (a minute or more; covered in part by lighter tests): run with `make test-heavy`"
        )
        for item in items:
            if "heavy" in item.keywords:
                item.add_marker(skip_heavy)
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# ------------------------------------------------------------------ shared fixtures


@pytest.fixture(scope="module")
def tiny_model():
    """A fresh ``tiny`` NextGPT for each test module (modules train, merge and reload it)."""
    from nextgpt import NextGPT

    return NextGPT.from_preset("tiny")


@pytest.fixture(scope="module")
def tiny_config():
    """A fresh ``tiny`` config for each test module."""
    from nextgpt import NextGPTConfig

    return NextGPTConfig.from_preset("tiny")


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The demo dataset (``build_demo_dataset(seed=0)``), built once per test module; modules that
    need another size define their own ``demo_data``."""
    from nextgpt.stages.data import build_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    build_demo_dataset(out, seed=0)
    return out
