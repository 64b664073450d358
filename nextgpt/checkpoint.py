"""Safe checkpoint reading and strict key accounting.

Checkpoints are read without unpickling arbitrary objects: ``.safetensors`` files through
safetensors, everything else through ``torch.load(weights_only=True)``. Loading into a module checks
every key both ways and every shape, and raises :class:`~nextgpt.errors.CheckpointError` naming the
offending keys, instead of silently dropping them as ``strict=False`` loaders do.
"""

from __future__ import annotations

import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from nextgpt.errors import CheckpointError

logger = logging.getLogger(__name__)

_MAX_LISTED = 8


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return f"{shown}, ... ({more} more)" if more > 0 else shown


def read_state_dict(path: str | os.PathLike, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """Read a flat ``{name: tensor}`` state dict from ``path`` without unpickling arbitrary objects.

    Args:
        path: a ``.safetensors`` file or a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``).
        mmap: memory-map ``torch.save`` zip files so that multi-GB checkpoints are not copied into RAM.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, holds non-tensor objects
            that need unpickling, or is not a flat mapping of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: '{path}'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            use_mmap = mmap and zipfile.is_zipfile(path)
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()[0] if text else "?"
        if "Unsupported global" in text:  # a pickled object other than tensors/containers
            raise CheckpointError(
                f"'{path}' needs unsafe unpickling to load (it holds objects other than tensors); "
                f"refusing to load it: {reason}"
            ) from exc
        raise CheckpointError(f"cannot read checkpoint '{path}': {reason}") from exc
    except Exception as exc:  # torch/safetensors raise RuntimeError, EOFError, OSError, ... on bad files
        raise CheckpointError(f"cannot read checkpoint '{path}': {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, Mapping):
        raise CheckpointError(f"'{path}' holds a {type(state).__name__}, not a state dict")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"'{path}' is not a flat state dict: non-tensor entries {_listing(bad)}")
    return dict(state)


def check_keys(
    expected: Mapping[str, torch.Size | tuple[int, ...]],
    found: Mapping[str, torch.Tensor],
    *,
    what: str,
) -> None:
    """Raise ``CheckpointError`` unless ``found`` has exactly the keys and shapes of ``expected``."""
    missing = sorted(k for k in expected if k not in found)
    unexpected = sorted(k for k in found if k not in expected)
    mismatched = sorted(
        f"{k} (checkpoint {tuple(found[k].shape)}, model {tuple(expected[k])})"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k])
    )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_listing(mismatched)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def load_strict(
    module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str, assign: bool = False
) -> None:
    """Load ``state`` into ``module`` after checking every key and shape (see :func:`check_keys`).

    With ``assign=True`` the checkpoint tensors replace the module's (use it for modules built on the
    ``meta`` device, so that a multi-GB model is never materialised twice).
    """
    expected = {k: v.shape for k, v in module.state_dict().items()}
    check_keys(expected, state, what=what)
    module.load_state_dict(state, strict=True, assign=assign)
