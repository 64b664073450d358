"""Caches of frozen features, so training does not run frozen models in its inner loop.

Two caches, each a folder with ``index.json`` and one ``.safetensors`` file per source shard:

* ``encoder/`` — for every input media item of every sample (key ``"<sample key>/<item index>"``),
  what the input projector consumes: pooled ImageBind embeddings (linear projector) or patch tokens
  (grouping projector). Used by stages 1 and 3.
* ``captions/`` — for every output of every sample (key ``"<sample key>/<output index>"``), the
  decoder's text-encoder conditioning of the output's caption: the alignment target of stages 2 and 3.

``index.json`` records the fingerprint of the frozen model that made the cache (a hash of its
weights, sizes and feature kind). Opening a cache checks it against the current model: a mismatch is
an error naming both fingerprints, never a silent reuse. Reads are lazy (``safe_open`` per key).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from nextgpt.errors import CheckpointError, ConfigError
from nextgpt.modality import Modality

logger = logging.getLogger(__name__)

INDEX = "index.json"


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
    ip = model.config.model.input_projector
    feature = "tokens" if ip.uses_patch_tokens else "pooled"
    return tensor_fingerprint(model.encoder.model, extra=f"imagebind:{feature}:preprocess-v1")


def captions_fingerprint(model) -> str:
    parts = [
        f"{m.value}:{d.caption_fingerprint()}"
        for m, d in sorted(model.decoders.items(), key=lambda x: x[0].value)
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


class FeatureCache:
    """Read side of a cache folder. ``get(sample_key, index)`` returns a float32 tensor."""

    def __init__(self, directory: str | os.PathLike, expected_fingerprint: str | None = None) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.is_file():
            raise CheckpointError(f"'{self.directory}' is not a nextgpt cache (no {INDEX})")
        self.index = json.loads(index_path.read_text())
        fp = self.index.get("fingerprint")
        if expected_fingerprint is not None and fp != expected_fingerprint:
            raise CheckpointError(
                f"cache '{self.directory}' was made by a different frozen model (fingerprint {fp}, current "
                f"{expected_fingerprint}); rebuild it with `nextgpt cache {self.index.get('kind', '?')} ...` or remove it"
            )
        self.entries: dict[str, str] = self.index["entries"]
        self._handles: dict[str, object] = {}

    def __getstate__(self):  # DataLoader workers re-open files lazily
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def get(self, sample_key: str, index: int) -> torch.Tensor:
        from safetensors import safe_open

        name = self.entries.get(sample_key)
        if name is None:
            raise KeyError(f"sample {sample_key!r} is not in cache {self.directory}")
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = safe_open(str(self.directory / name), framework="pt")
        return handle.get_tensor(f"{sample_key}/{index}").float()

    def __len__(self) -> int:
        return len(self.entries)


def open_caches(cfg, stage: int, model) -> tuple[FeatureCache | None, FeatureCache | None]:
    """The caches a stage run uses: those present under ``training.cache_dir`` (checked against the
    current frozen models' fingerprints); ``None`` for an absent one (features computed online)."""
    from nextgpt.config import resolve_path

    root = resolve_path(cfg.training.cache_dir, "training.cache_dir")
    if root is None:
        return None, None
    enc = cap = None
    if stage in (1, 3) and (root / "encoder" / INDEX).is_file():
        enc = FeatureCache(root / "encoder", encoder_fingerprint(model))
        logger.info("using encoder cache %s (%d samples)", root / "encoder", len(enc))
    if stage in (2, 3) and (root / "captions" / INDEX).is_file():
        cap = FeatureCache(root / "captions", captions_fingerprint(model))
        logger.info("using caption cache %s (%d samples)", root / "captions", len(cap))
    return enc, cap


def _iter_shard_samples(url: str, stage: int):
    from nextgpt.stages.data import ShardDataset

    yield from ShardDataset([url], stage, shuffle=0, seed=0)


def _compute(
    model, what: str, m: Modality, jobs: list[tuple[str, object]], out: dict[str, torch.Tensor]
) -> None:
    """Features for one modality's pending items, stored fp16 under their cache keys."""
    from nextgpt.encoders.encoder import ImageBindEncoder

    with torch.no_grad():
        if what == "encoder":
            feats = model.media_features(
                m, torch.stack([ImageBindEncoder.preprocess_item(m, value) for _, value in jobs])
            )
        else:
            feats = model.decoders[m].encode_captions([value for _, value in jobs])
    for (key, _), f in zip(jobs, feats):
        out[key] = f.detach().to(torch.float16).cpu().contiguous()


def build_cache(
    what: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "tiny",
    overrides=(),
    stage: int = 1,
    model=None,
    batch_size: int = 16,
    progress: bool = True,
) -> Path:
    """Precompute ``what`` (``"encoder"`` or ``"captions"``) for the stage's shards under ``data``
    into ``<out>/<what>/``; returns that folder. Writes are atomic per file; the index goes last."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from nextgpt.config import NextGPTConfig
    from nextgpt.model import NextGPT
    from nextgpt.stages.datamodule import stage_shards

    if what not in ("encoder", "captions"):
        raise ConfigError(f"unknown cache {what!r}; valid: encoder, captions")
    if model is None:
        cfg = NextGPTConfig.from_preset(preset).with_overrides(list(overrides))
        model = NextGPT(cfg)
    cfg = model.config
    urls = stage_shards(data, stage, list(cfg.training.stage_config(stage).datasets))
    target = Path(out) / what
    target.mkdir(parents=True, exist_ok=True)
    fingerprint = encoder_fingerprint(model) if what == "encoder" else captions_fingerprint(model)
    entries: dict[str, str] = {}
    bar = tqdm(total=None, desc=f"{what} cache", unit="sample", disable=not progress)
    for url in urls:
        name = Path(url).stem + ".safetensors"
        tensors: dict[str, torch.Tensor] = {}
        pending: dict[Modality, list[tuple[str, object]]] = {}

        for sample in _iter_shard_samples(url, stage):
            if sample.key in entries:
                raise CheckpointError(f"duplicate sample key {sample.key!r} in {url} (keys must be unique)")
            enc = model.processor.encode(sample.turns, add_generation_prompt=False)
            if what == "encoder":
                items = [item for slot in enc.slots for item in slot]
                for i, item in enumerate(items):
                    pending.setdefault(item.modality, []).append((f"{sample.key}/{i}", item.value))
            else:
                for i, (slot, caption) in enumerate(zip(enc.outputs, sample.output_captions)):
                    pending.setdefault(slot[0].modality, []).append((f"{sample.key}/{i}", caption))
            entries[sample.key] = name
            bar.update(1)
            for m in [m for m, jobs in pending.items() if len(jobs) >= batch_size]:
                _compute(model, what, m, pending.pop(m), tensors)
        for m in list(pending):
            _compute(model, what, m, pending.pop(m), tensors)
        tmp = target / (name + ".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, target / name)
    bar.close()
    index = {"kind": what, "fingerprint": fingerprint, "stage": stage, "preset": cfg.name, "entries": entries}
    tmp = target / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index))
    os.replace(tmp, target / INDEX)
    logger.info("%s cache: %d samples -> %s", what, len(entries), target)
    return target
