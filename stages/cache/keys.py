"""What identifies a cache entry: the layout constants, the frozen-model fingerprints, the feature
kind a model needs, shard ids and entry names, and the ``nextgpt cache`` command line that builds an
entry (see :mod:`nextgpt.stages.cache`)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path

import torch

from nextgpt.errors import ConfigError, NextGPTError

INDEX = "index.json"
#: Version of the on-disk layout (1: one file per shard stem, keyed by sample key only).
FORMAT = 2
KINDS = ("encoder", "captions")
#: The stages that read each cache.
STAGES_OF = {"encoder": (1, 3), "captions": (2, 3)}
#: What of a stage's samples each cache holds.
VIEW = {"encoder": "input media", "captions": "output captions"}
STORED_DTYPE = torch.float16
_SHOWN = 3  # shards named in an error message


# --------------------------------------------------------------------------------------------------
# fingerprints and feature kinds


def tensor_fingerprint(module: torch.nn.Module, extra: str = "") -> str:
    """A hash of every tensor's name, shape and dtype plus a sample of its values (first and last
    256 values and the sum): cheap for billion-parameter models, and any retrained or swapped weight
    changes it."""
    h = hashlib.sha256(extra.encode())
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().reshape(-1).float().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(flat[:256].numpy().tobytes())
        h.update(flat[-256:].numpy().tobytes())
        h.update(repr(round(float(flat.double().sum()), 6)).encode())
    return h.hexdigest()[:32]


def encoder_fingerprint(model) -> str:
    """Fingerprint of ``model``'s frozen encoder and the feature kind (pooled or tokens) it caches."""
    ip = model.config.model.input_projector
    feature = "tokens" if ip.uses_patch_tokens else "pooled"
    return tensor_fingerprint(model.encoder.model, extra=f"imagebind:{feature}:preprocess-v1")


def captions_fingerprint(model) -> str:
    """Fingerprint of every output decoder's caption encoding (each decoder's ``caption_fingerprint()``)."""
    parts = [
        f"{m.value}:{d.caption_fingerprint()}"
        for m, d in sorted(model.decoders.items(), key=lambda x: x[0].value)
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def fingerprint_of(what: str, model) -> str:
    """:func:`encoder_fingerprint` or :func:`captions_fingerprint` of ``model``, for cache ``what``."""
    return encoder_fingerprint(model) if what == "encoder" else captions_fingerprint(model)


def expected_feature(what: str, model) -> dict:
    """What the current model needs from a cache: ``{"kind": ..., ...}``. Encoder: ``"pooled"``
    (items ``[D]``) or ``"tokens"`` (items ``[L, D]``) with ``D`` the encoder's output width; captions:
    ``"conditioning"`` with each output modality's ``[tokens, dim]``."""
    mcfg = model.config.model
    if what == "encoder":
        kind = "tokens" if mcfg.input_projector.uses_patch_tokens else "pooled"
        return {"kind": kind, "dim": int(mcfg.encoder.out_embed_dim)}
    shapes = {m.value: [int(x) for x in d.cond_shape] for m, d in model.decoders.items()}
    return {"kind": "conditioning", "shapes": shapes}


def _feature_problem(stored: dict, expected: dict) -> str | None:
    """Why an entry's features do not fit the model (``None``: they do)."""
    kind = stored.get("kind")
    if kind != expected["kind"]:
        return f"{kind} features, the model needs {expected['kind']}"
    for m, shape in stored.get("shapes", {}).items():
        if kind == "conditioning":
            want = expected["shapes"].get(m)
            if want is None:
                return f"{m} targets, the model has no {m} output"
            if list(shape) != want:
                return f"{m} targets of shape {list(shape)}, the model needs {want}"
        else:
            ndim = 1 if kind == "pooled" else 2
            if len(shape) != ndim or shape[-1] != expected["dim"]:
                return f"{m} features of shape {list(shape)}, the model needs width {expected['dim']}"
    return None


def _kind_of(what: str, cfg) -> str:
    if what == "captions":
        return "conditioning"
    return "tokens" if cfg.model.input_projector.uses_patch_tokens else "pooled"


# --------------------------------------------------------------------------------------------------
# names


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def shard_id(url: str | os.PathLike, data_root: str | os.PathLike) -> str:
    """A shard's id: its path relative to the data root, posix (``cc3m/00000.tar``)."""
    text = os.fspath(url)
    if _is_remote(text):
        raise ConfigError(f"feature caches need local shards; {text!r} is remote")
    rel = os.path.relpath(os.path.abspath(text), os.path.abspath(os.fspath(data_root)))
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise ConfigError(f"shard '{text}' is not under the data folder '{data_root}'")
    return Path(rel).as_posix()


def entry_name(shard: str, stage: int) -> str:
    """The entry's file stem inside the cache folder: ``<shard id>.s<stage>``."""
    return f"{shard}.s{int(stage)}"


def _listing(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" (and {len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")


def _flatten(data, prefix: str = "") -> dict[str, object]:
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, object] = {}
    for k, v in data.items():
        key = f"{prefix}.{getattr(k, 'value', k)}" if prefix else str(getattr(k, "value", k))
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v
    return out


def _frozen_overrides(cfg, what: str, stage: int) -> list[str]:
    """The overrides that turn ``cfg.name``'s preset into ``cfg`` where the cache's content depends on
    it (frozen models, feature kind, the stage's datasets)."""
    from nextgpt.config import NextGPTConfig

    try:
        base = NextGPTConfig.from_preset(cfg.name)
    except NextGPTError:
        return []
    sections = ["model.seed", f"training.stages.{stage}.datasets"]
    sections += ["model.encoder", "model.input_projector"] if what == "encoder" else ["model.outputs"]
    have, had = _flatten(cfg.to_dict()), _flatten(base.to_dict())

    def relevant(key: str) -> bool:
        return any(key == s or key.startswith(s + ".") for s in sections)

    out = [f"{k}={json.dumps(v)}" for k, v in have.items() if relevant(k) and had.get(k, object()) != v]
    removed: list[str] = []
    for k in had:
        if relevant(k) and k not in have:
            parts = k.split(".")
            gone = next(
                ".".join(parts[:i]) for i in range(1, len(parts) + 1) if not _has_prefix(have, parts[:i])
            )
            if gone not in removed:
                removed.append(gone)
    return out + [f"{k}=null" for k in removed]


def _has_prefix(flat: dict, parts: list[str]) -> bool:
    p = ".".join(parts)
    return any(k == p or k.startswith(p + ".") for k in flat)


def build_command(what: str, cfg, stage: int, data_root, cache_root) -> str:
    """The ``nextgpt cache`` command line that builds ``what`` for ``stage`` with ``cfg``'s models."""
    args = ["nextgpt", "cache", what, "--data", str(data_root), "--out", str(cache_root)]
    args += ["--stage", str(stage), "--preset", str(cfg.name)]
    for o in _frozen_overrides(cfg, what, stage):
        args += ["--override", o]
    return shlex.join(args)
