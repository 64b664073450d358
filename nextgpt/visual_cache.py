"""ImageBind-LLM's training-free visual cache: image embeddings from the training data, retrieved at
inference to pull other modalities' embeddings towards the images the bind network was trained on.

Model (ImageBind-LLM, section 3.2.3, eqs. 3-4): ImageBind image embeddings of the training images are
both the keys and the values. For a query embedding ``q`` (any input modality), the ``top_k`` keys
most similar by cosine are found (``s = q_hat . k_hat``); their values are averaged with weights
``softmax(s * temperature)`` and L2-normalised (``p``), blended with the normalised query,
``alpha * p + (1 - alpha) * q_hat``, normalised again and scaled back to ``q``'s norm (as the
released ImageBind-LLM code does). Defaults (``model.visual_cache``, the code's): ``top_k`` 10,
``temperature`` 20, ``alpha`` 0.5.

The index is FAISS (``faiss-cpu``, the ``imagebind_llm`` extra; the paper uses FAISS too): an exact
inner-product index (``IndexFlatIP``) over the L2-normalised keys, so ``search`` returns cosine
similarities. (The paper tunes an approximate index with autofaiss for its 3M CC3M images; an exact
index of 3M x 1024 float32 keys takes 12.3 GB of host memory.) A cache folder holds ``index.faiss``,
``values.npy`` (float32 ``[N, D]``) and ``cache.json`` (count, width, the encoder fingerprint, the
shards it came from); ``nextgpt cache index`` writes it from image shards (:func:`build_visual_cache`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from nextgpt.errors import ConfigError, InputError

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
VALUES_FILE = "values.npy"
META_FILE = "cache.json"


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            "the visual cache needs faiss (pip install 'nextgpt[imagebind_llm]' or faiss-cpu)"
        ) from None
    return faiss


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class VisualCache:
    """Cached image embeddings with a FAISS index; :meth:`enhance` blends queries with their nearest
    ones (module docstring).

    Args:
        values: the cached image embeddings ``[N, D]`` (also the keys, once normalised).
        top_k, temperature, alpha: the retrieval (``model.visual_cache``).
    """

    def __init__(self, values: np.ndarray, *, top_k: int = 10, temperature: float = 20.0, alpha: float = 0.5):
        values = np.ascontiguousarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[0] == 0:
            raise InputError(f"a visual cache needs embeddings [N >= 1, D], got shape {values.shape}")
        if not np.isfinite(values).all():
            raise InputError("the visual cache's embeddings hold NaN or infinite values")
        faiss = _faiss()
        self.values = values
        self.index = faiss.IndexFlatIP(values.shape[1])
        self.index.add(_normalise(values))
        self.top_k, self.temperature, self.alpha = int(top_k), float(temperature), float(alpha)

    @property
    def size(self) -> int:
        """Cached embeddings."""
        return int(self.values.shape[0])

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self.values.shape[1])

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(cosine similarities [M, k], indices [M, k])`` of each query's nearest cached embeddings,
        best first (``k = min(top_k, size)``)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"queries must be [M, {self.dim}], got shape {q.shape}")
        return self.index.search(_normalise(q), min(self.top_k, self.size))

    def enhance(self, queries: torch.Tensor) -> torch.Tensor:
        """Each query ``[M, D]`` blended with its retrieved embeddings, at its own norm (same dtype and
        device as ``queries``)."""
        q = queries.detach().float().cpu().numpy()
        sims, idx = self.search(q)
        logits = sims * self.temperature
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        retrieved = _normalise(np.einsum("mk,mkd->md", weights, self.values[idx]))
        blended = _normalise(self.alpha * retrieved + (1.0 - self.alpha) * _normalise(q))
        blended = blended * np.linalg.norm(q, axis=1, keepdims=True)
        return torch.from_numpy(blended.astype(np.float32)).to(queries.device, queries.dtype)

    # ------------------------------------------------------------------ files

    def save(self, folder: str | os.PathLike, meta: dict | None = None) -> Path:
        """Write ``index.faiss``, ``values.npy`` and ``cache.json`` into ``folder``."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(out / INDEX_FILE))
        np.save(out / VALUES_FILE, self.values)
        info = {"count": self.size, "dim": self.dim, **(meta or {})}
        (out / META_FILE).write_text(json.dumps(info, indent=2) + "\n")
        return out

    @classmethod
    def load(cls, folder: str | os.PathLike, **retrieval) -> VisualCache:
        """The cache in ``folder`` (:meth:`save`). The values are the truth; the index is rebuilt from
        them when its file is missing or does not match them.

        Raises:
            ConfigError: no such folder, or a missing or unreadable values file.
        """
        root = Path(folder)
        if not (root / VALUES_FILE).is_file():
            raise ConfigError(f"visual cache not found: '{root}' has no {VALUES_FILE} (nextgpt cache index)")
        try:
            values = np.load(root / VALUES_FILE, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"visual cache '{root}': cannot read {VALUES_FILE}: {exc}") from None
        cache = cls(values, **retrieval)
        index_path = root / INDEX_FILE
        if index_path.is_file():
            index = _faiss().read_index(str(index_path))
            if index.ntotal == cache.size and index.d == cache.dim:
                cache.index = index
            else:
                logger.warning("visual cache '%s': its index does not match its values; rebuilt", root)
        return cache


def build_visual_cache(
    model, shards: Iterable[str], out: str | os.PathLike, *, batch_size: int = 32, limit: int | None = None
) -> Path:
    """Encode every input image of ``shards`` with the model's ImageBind and save a cache folder.

    Pairs contribute their image; conversations every input image. Undecodable samples are skipped
    (and counted in the log); the encoder runs in batches of ``batch_size`` in eval mode.
    """
    from nextgpt.modality import Modality
    from nextgpt.stages.data.shards import DataStats, iter_samples

    urls = list(shards)
    stats = DataStats()
    embeddings: list[np.ndarray] = []
    batch: list[object] = []

    def flush() -> None:
        if batch:
            with torch.no_grad():
                pixels = model.encoder.preprocess(Modality.IMAGE, batch)
                feats = model.encoder(Modality.IMAGE, pixels.to(model.device)).embeds
            embeddings.append(feats.float().cpu().numpy())
            batch.clear()

    model.eval()
    count = 0
    for sample in iter_samples(urls, 1, stats=stats, max_bad_fraction=1.0):
        for turn in sample.turns:
            if turn.role != "user":
                continue
            for item in turn.media():
                if item.modality is Modality.IMAGE and item.value is not None:
                    batch.append(item.value)
                    count += 1
                    if len(batch) == batch_size:
                        flush()
        if limit is not None and count >= limit:
            break
    flush()
    if not embeddings:
        raise InputError(f"no image in the shards {urls[:3]}... to build a visual cache from")
    values = np.concatenate(embeddings)[: limit if limit is not None else None]
    fingerprint = hashlib.sha256()
    for name, tensor in sorted(model.encoder.state_dict().items()):
        fingerprint.update(name.encode())
        fingerprint.update(tensor.detach().float().cpu().numpy().tobytes())
    cfg = model.config.model.visual_cache
    cache = VisualCache(values, top_k=cfg.top_k, temperature=cfg.temperature, alpha=cfg.alpha)
    logger.info(
        "visual cache: %d image embeddings (%d bad samples skipped) -> %s", cache.size, stats.bad, out
    )
    return cache.save(out, {"encoder_sha256": fingerprint.hexdigest(), "shards": urls, "skipped": stats.bad})
