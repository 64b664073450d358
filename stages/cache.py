"""Caches of frozen features, so training does not run frozen models in its inner loop.

Two caches, each a folder under ``training.cache_dir``:

* ``encoder/`` — for every input media item of every sample (tensor ``"<sample key>/<item index>"``),
  what the input projector consumes: pooled ImageBind embeddings ``[D]`` (linear projector) or patch
  tokens ``[L, D]`` (grouping projector). Used by stages 1 and 3.
* ``captions/`` — for every output of every sample (tensor ``"<sample key>/<output index>"``), the
  decoder's text-encoder conditioning ``[tokens, dim]`` of the output's caption: the alignment target
  of stages 2 and 3.

Layout. A cache holds one *entry* per (source shard, stage). The shard's path relative to the data
root (``cc3m/00000.tar``) names the entry's files, mirrored as sub-folders, so shards with the same
file name in different dataset folders never collide, and a shard built for two stages has two
entries::

    <cache_dir>/encoder/index.json                       every entry (no per-sample data)
    <cache_dir>/encoder/cc3m/00000.tar.s1.safetensors    the tensors, fp16
    <cache_dir>/encoder/cc3m/00000.tar.s1.json           the entry's sidecar (written after its tensors)
    <cache_dir>/encoder/conversations/conv-000000.tar.s3.safetensors ...

A sidecar records the shard id, the source shard's byte size, the stage (the encoder view is the input
media of that stage's rendering of the samples; the captions view its output captions), the feature
kind and shapes, the frozen-model fingerprint, the number of samples and the number of items of
every sample key. ``index.json`` lists the entries (the sidecars without the per-sample counts); it is
rewritten from all the sidecars present after every build, so builds for other stages or datasets
merge into the same folder. Every file is written atomically (temporary file + ``os.replace``), the
tensors before their sidecar and the index last.

Opening (:func:`open_caches`, before training starts) checks that the cache covers every shard the
stage reads, for that stage, with the current frozen model: a missing entry, a changed source shard, a
different feature kind or a different fingerprint is an error naming the shards and the
``nextgpt cache ... --stage N`` command that builds them — never a silent ``KeyError`` per sample.

Building (:func:`build_cache`) runs the frozen model on a chosen device and splits the shards across
processes: rank ``r`` of ``W`` builds shards ``r, r + W, ...`` of the sorted shard list, and rank 0
writes the index once every shard is done. An entry that is already up to date is skipped, so an
interrupted build resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from nextgpt.errors import CheckpointError, ConfigError, InputError, NextGPTError
from nextgpt.modality import Modality

logger = logging.getLogger(__name__)

INDEX = "index.json"
#: Version of the on-disk layout (1: one file per shard stem, keyed by sample key only).
FORMAT = 2
KINDS = ("encoder", "captions")
#: The stages that read each cache.
STAGES_OF = {"encoder": (1, 3), "captions": (2, 3)}
#: What of a stage's samples each cache holds.
VIEW = {"encoder": "input media", "captions": "output captions"}
STORED_DTYPE = torch.float16
#: How long rank 0 waits for the other ranks' entries before writing the index (seconds).
INDEX_WAIT_S = 3600.0
POLL_S = 1.0
_SHOWN = 3  # shards named in an error message
#: Shards whose file handle and per-sample counts a reader keeps (least recently used ones are closed).
OPEN_SHARDS = 16


class CacheMiss(KeyError):
    """A sample (or one of its items) that the cache does not hold. A ``KeyError``: the collator drops
    the sample. The message names the shard, the sample key and the cache folder."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


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


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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


# --------------------------------------------------------------------------------------------------
# reading


def _remember(lru: OrderedDict, key: str, value):
    """Keep ``value`` under ``key``, forgetting the least recently used beyond :data:`OPEN_SHARDS`."""
    lru[key] = value
    while len(lru) > OPEN_SHARDS:
        lru.popitem(last=False)
    return value


class FeatureCache:
    """Read side of a cache folder (see the module docstring).

    Args:
        directory: ``<cache_dir>/encoder`` or ``<cache_dir>/captions``.
        expected_fingerprint: when given, every entry used (those of ``stage``, or all) must have been
            made by this frozen model (:class:`CheckpointError` otherwise).
        data_root: the data folder the shard urls passed to :meth:`get` live under (without it, a
            url maps to the longest shard id it ends with: ``/data/cc3m/00000.tar`` -> ``cc3m/00000.tar``).
        stage: use the entries built for this stage (``None``: all; a shard with entries for several
            stages then needs ``stage``).

    ``get(shard_url, key, index)`` returns a float32 tensor; a sample the cache lacks raises
    :class:`CacheMiss`. File handles open lazily and are not pickled (DataLoader workers reopen them).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        expected_fingerprint: str | None = None,
        *,
        data_root: str | os.PathLike | None = None,
        stage: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        index_path = self.directory / INDEX
        if not index_path.is_file():
            raise ConfigError(
                f"'{self.directory}' is not a complete nextgpt cache (no {INDEX}: a build is unfinished "
                "or still running); run `nextgpt cache` again (finished shards are kept)"
            )
        index = _read_json(index_path)
        if index is None:
            raise ConfigError(f"cannot read '{index_path}' (not JSON)")
        if index.get("format") != FORMAT:
            raise ConfigError(
                f"cache '{self.directory}' has an older layout (format {index.get('format', 1)}, keyed by "
                f"sample key only; this version reads format {FORMAT}); remove it and rebuild it with "
                f"`nextgpt cache {index.get('kind') or index.get('what') or '<encoder|captions>'} ...`"
            )
        self.what: str = index.get("what", self.directory.name)
        self.stage = None if stage is None else int(stage)
        self.data_root = None if data_root is None else os.path.abspath(os.fspath(data_root))
        self.entries: dict[str, dict] = {}
        self._ambiguous: set[str] = set()
        for entry in index.get("entries", []):
            if self.stage is not None and entry.get("stage") != self.stage:
                continue
            self._add(entry)
        self._all_entries: list[dict] = list(index.get("entries", []))
        if expected_fingerprint is not None:
            other = sorted({e["fingerprint"] for e in self.entries.values()} - {expected_fingerprint})
            if other:
                bad = [s for s, e in self.entries.items() if e["fingerprint"] != expected_fingerprint]
                raise CheckpointError(
                    f"cache '{self.directory}' was made by a different frozen model (fingerprint "
                    f"{', '.join(other)}, current {expected_fingerprint}) for {len(bad)} shard(s): "
                    f"{_listing(bad)}; rebuild it with `nextgpt cache {self.what} ...` or remove it"
                )
        self._items: OrderedDict[str, dict[str, int]] = OrderedDict()
        self._handles: OrderedDict[str, object] = OrderedDict()
        self._ids: dict[str, str] = {}

    def _add(self, entry: dict) -> None:
        sid = entry["shard"]
        if sid in self.entries and self.entries[sid].get("stage") != entry.get("stage"):
            self._ambiguous.add(sid)
        self.entries[sid] = entry

    def __getstate__(self):  # DataLoader workers re-open files (and re-read sidecars) lazily
        state = dict(self.__dict__)
        state["_handles"] = OrderedDict()
        state["_items"] = OrderedDict()
        return state

    def __len__(self) -> int:
        """Samples held (over the entries in use)."""
        return sum(int(e.get("samples", 0)) for e in self.entries.values())

    @property
    def shards(self) -> list[str]:
        """Ids of the shards with an entry in use."""
        return sorted(self.entries)

    # ---------------------------------------------------------------------------- lookup

    def shard_id(self, shard_url: str | os.PathLike) -> str:
        """The shard id of a shard url (``Sample.url``)."""
        text = os.fspath(shard_url)
        sid = self._ids.get(text)
        if sid is None:
            if self.data_root is not None:
                sid = shard_id(text, self.data_root)
            else:  # no data root: the longest cached shard id the path ends with, else the path
                posix = Path(os.path.normpath(text)).as_posix()
                ends = [s for s in self.entries if posix == s or posix.endswith("/" + s)]
                sid = max(ends, key=len) if ends else posix
            self._ids[text] = sid
        return sid

    def _entry(self, shard_url, key: str) -> tuple[str, dict]:
        sid = self.shard_id(shard_url)
        entry = self.entries.get(sid)
        if entry is None:
            stage = "" if self.stage is None else f" for stage {self.stage}"
            raise CacheMiss(f"sample {key!r}: shard {sid!r} has no entry{stage} in cache {self.directory}")
        if sid in self._ambiguous:
            raise ConfigError(
                f"shard {sid!r} has entries for several stages in cache {self.directory}; open it with stage="
            )
        return sid, entry

    def _sample_items(self, sid: str, entry: dict) -> dict[str, int]:
        items = self._items.get(sid)
        if items is None:
            side = _read_json(self.directory / entry["sidecar"])
            if side is None or "items" not in side:
                raise CacheMiss(
                    f"shard {sid!r}: its sidecar {entry['sidecar']!r} is missing in {self.directory}"
                )
            items = _remember(self._items, sid, side["items"])
        else:
            self._items.move_to_end(sid)
        return items

    def num_items(self, shard_url: str | os.PathLike, key: str) -> int:
        """How many items (media items or outputs) the cache holds for sample ``key`` of the shard."""
        sid, entry = self._entry(shard_url, key)
        n = self._sample_items(sid, entry).get(key)
        if n is None:
            raise CacheMiss(f"sample {key!r} of shard {sid!r} is not in cache {self.directory}")
        return int(n)

    def get(self, shard_url: str | os.PathLike, key: str, index: int) -> torch.Tensor:
        """Item ``index`` of sample ``key`` of the shard at ``shard_url``, float32."""
        from safetensors import safe_open

        sid, entry = self._entry(shard_url, key)
        n = self._sample_items(sid, entry).get(key)
        if n is None:
            raise CacheMiss(f"sample {key!r} of shard {sid!r} is not in cache {self.directory}")
        if not 0 <= int(index) < int(n):
            raise CacheMiss(
                f"item {index} of sample {key!r} of shard {sid!r}: cache {self.directory} holds {n} item(s)"
            )
        handle = self._handles.get(sid)
        if handle is None:
            handle = _remember(
                self._handles, sid, safe_open(str(self.directory / entry["file"]), framework="pt")
            )
        else:
            self._handles.move_to_end(sid)
        return handle.get_tensor(f"{key}/{int(index)}").float()

    # ---------------------------------------------------------------------------- checks

    def require(
        self,
        shard_urls: Iterable[str | os.PathLike],
        *,
        fingerprint: str,
        feature: dict,
        command: str,
    ) -> None:
        """Raise unless every shard has an up-to-date entry for the cache's stage.

        Raises:
            CheckpointError: entries made by a different frozen model (``fingerprint``).
            ConfigError: shards without an entry for the stage, changed since they were cached, or
                cached with other features than ``feature`` (:func:`expected_feature`).
        """
        if self.stage is None:
            raise ConfigError("require() needs a cache opened for one stage")
        urls = list(dict.fromkeys(os.fspath(u) for u in shard_urls))
        stages_of: dict[str, list[int]] = {}
        for e in self._all_entries:
            stages_of.setdefault(e["shard"], []).append(int(e["stage"]))
        missing, changed, feature_bad, foreign = [], [], [], []
        other_fps: set[str] = set()
        for url in urls:
            sid = self.shard_id(url)
            entry = self.entries.get(sid)
            if entry is None:  # not in the index: a sidecar written after it (a concurrent build)?
                side = _read_json(self.directory / (entry_name(sid, self.stage) + ".json"))
                if (
                    side is not None
                    and side.get("format") == FORMAT
                    and side.get("what") == self.what
                    and (self.directory / str(side.get("file"))).is_file()
                ):
                    side.pop("items", None)
                    entry = side
                    self._add(entry)
            if entry is None:
                built = sorted(set(stages_of.get(sid, [])))
                note = f" [built for stage {', '.join(map(str, built))} only]" if built else ""
                missing.append(sid + note)
                continue
            size = os.path.getsize(url) if os.path.isfile(url) else None
            if entry.get("source_size") != size:
                changed.append(f"{sid} [{entry.get('source_size')} bytes when cached, now {size}]")
                continue
            problem = _feature_problem(entry.get("feature", {}), feature)
            if problem is not None:
                feature_bad.append(f"{sid} [{problem}]")
                continue
            if entry.get("fingerprint") != fingerprint:
                foreign.append(sid)
                other_fps.add(str(entry.get("fingerprint")))
        problems = []
        if missing:
            held = sorted({int(e["stage"]) for e in self._all_entries})
            note = f" (the cache holds entries for stage {', '.join(map(str, held))})" if held else ""
            problems.append(f"{len(missing)} without a stage-{self.stage} entry{note}: {_listing(missing)}")
        if changed:
            problems.append(f"{len(changed)} changed since they were cached: {_listing(changed)}")
        if feature_bad:
            problems.append(f"{len(feature_bad)} with other features: {_listing(feature_bad)}")
        if foreign:
            problems.append(
                f"{len(foreign)} made by a different frozen model (fingerprint {', '.join(sorted(other_fps))}, "
                f"current {fingerprint}): {_listing(foreign)}"
            )
        if not problems:
            return
        bad = len(missing) + len(changed) + len(feature_bad) + len(foreign)
        message = (
            f"{self.what} cache '{self.directory}' does not fit {bad} of the {len(urls)} shard(s) stage "
            f"{self.stage} reads: {'; '.join(problems)}. Build them with: {command} "
            "(up-to-date entries are kept), or remove the folder to compute the features online"
        )
        raise (CheckpointError if foreign and not (missing or changed or feature_bad) else ConfigError)(
            message
        )


def open_caches(
    cfg,
    stage: int,
    model,
    data_root: str | os.PathLike | None = None,
    shard_urls: Sequence[str] | None = None,
) -> tuple[FeatureCache | None, FeatureCache | None]:
    """The caches a stage run uses, checked before training starts.

    For each cache the stage reads (encoder: stages 1 and 3; captions: stages 2 and 3) whose folder
    exists under ``training.cache_dir``: open it and check that it covers every shard of
    ``shard_urls`` (the stage's shards, as :func:`~nextgpt.stages.datamodule.stage_shards` returns
    them; default: those under ``data_root``) for this stage, with the current frozen models. An absent
    folder gives ``None`` (features computed online).

    Args:
        cfg: the run's :class:`~nextgpt.config.NextGPTConfig`.
        stage: the training stage (1, 2 or 3).
        model: the built model whose frozen encoder and decoders the caches must match.
        data_root: the data folder (default ``training.data_dir``); shard ids are relative to it.
        shard_urls: the stage's shards (default: those under ``data_root``).

    Raises:
        ConfigError: a shard without an entry for the stage, changed since it was cached, or cached
            with other features; the message names the shards and the ``nextgpt cache`` command.
        CheckpointError: entries made by a different frozen model.
    """
    from nextgpt.config import resolve_path

    root = resolve_path(cfg.training.cache_dir, "training.cache_dir")
    if root is None:
        return None, None
    used = [w for w in KINDS if stage in STAGES_OF[w] and (root / w).exists()]
    if not used:
        return None, None
    if data_root is None:
        data_root = resolve_path(cfg.training.data_dir, "training.data_dir")
        if data_root is None:
            raise ConfigError(
                "feature caches need the data folder (shard ids are relative to it): pass data_root or set "
                "training.data_dir"
            )
    if shard_urls is None:
        from nextgpt.stages.datamodule import stage_shards

        shard_urls = stage_shards(data_root, stage, list(cfg.training.stage_config(stage).datasets))
    out: dict[str, FeatureCache] = {}
    for what in used:
        command = build_command(what, cfg, stage, data_root, root)
        if not (root / what / INDEX).is_file():
            raise ConfigError(
                f"{what} cache '{root / what}' has no {INDEX} (a build is unfinished or still running); "
                f"build it with: {command} (finished shards are kept), or remove the folder"
            )
        cache = FeatureCache(root / what, data_root=data_root, stage=stage)
        if cache.what != what:
            raise ConfigError(f"'{root / what}' holds a {cache.what} cache, not a {what} cache")
        cache.require(
            shard_urls,
            fingerprint=fingerprint_of(what, model),
            feature=expected_feature(what, model),
            command=command,
        )
        logger.info(
            "using %s cache %s for stage %d (%d shards, %d samples)",
            what,
            root / what,
            stage,
            len(shard_urls),
            len(cache),
        )
        out[what] = cache
    return out.get("encoder"), out.get("captions")


# --------------------------------------------------------------------------------------------------
# building


@dataclasses.dataclass
class BuildReport:
    """What :func:`build_cache_report` did.

    Attributes:
        path: the cache folder (``<out>/<what>``).
        what, stage: the cache and the stage built.
        shards: shards of the whole build (all ranks).
        written_shards, written_samples: entries (re)built by this process (and its workers).
        skipped_shards, skipped_samples: entries already up to date, left as they were.
        rank, world_size: this process's share of the build.
        index_written: whether this process wrote ``index.json``.
        entries, samples: what the folder's index lists (all stages and builds) when it was written.
    """

    path: Path
    what: str
    stage: int
    shards: int
    written_shards: int = 0
    written_samples: int = 0
    skipped_shards: int = 0
    skipped_samples: int = 0
    rank: int = 0
    world_size: int = 1
    index_written: bool = False
    entries: int = 0
    samples: int = 0
    fingerprint: str = ""

    def add(self, other: BuildReport) -> None:
        """Add ``other``'s written and skipped counts to this report's."""
        for name in ("written_shards", "written_samples", "skipped_shards", "skipped_samples"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """The device a build runs on. ``"cuda"`` without an index means ``cuda:$LOCAL_RANK`` under a
    launcher that sets it (torchrun), else the current CUDA device. ``None``: leave the model where it
    is.

    Raises:
        ConfigError: an invalid device string, or a device this machine does not have.
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid device {device!r} ({exc}); use e.g. cpu, cuda, cuda:1, mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r}: no CUDA device is available here (torch.cuda.is_available() is False)"
            )
        count = torch.cuda.device_count()
        if dev.index is None:
            local = os.environ.get("LOCAL_RANK")
            dev = torch.device("cuda", int(local) if local is not None else torch.cuda.current_device())
        if dev.index >= count:
            raise ConfigError(f"device {dev}: this machine has {count} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available here")
    elif dev.type == "xpu" and not (hasattr(torch, "xpu") and torch.xpu.is_available()):
        raise ConfigError(f"device {device!r}: no XPU device is available here")
    return dev


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None and world_size is None:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
    elif rank is None or world_size is None:
        raise ConfigError("pass rank and world_size together")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside world size {world_size}")
    return int(rank), int(world_size)


def _shards_of(data, stage: int, cfg) -> tuple[list[str], list[str]]:
    """The stage's shards, sorted by shard id: ``(urls, ids)``."""
    from nextgpt.stages.datamodule import stage_shards

    urls = list(dict.fromkeys(stage_shards(data, stage, list(cfg.training.stage_config(stage).datasets))))
    pairs = sorted((shard_id(u, data), u) for u in urls)
    return [u for _, u in pairs], [s for s, _ in pairs]


def _kind_of(what: str, cfg) -> str:
    if what == "captions":
        return "conditioning"
    return "tokens" if cfg.model.input_projector.uses_patch_tokens else "pooled"


def _fresh(side: dict | None, *, what: str, stage: int, size: int, fingerprint: str, kind: str) -> bool:
    return (
        side is not None
        and side.get("format") == FORMAT
        and side.get("what") == what
        and side.get("stage") == stage
        and side.get("source_size") == size
        and side.get("fingerprint") == fingerprint
        and side.get("feature", {}).get("kind") == kind
    )


def _compute(
    model,
    what: str,
    m: Modality,
    jobs: list[tuple[str, object]],
    out: dict[str, torch.Tensor],
    shapes: dict[str, list[int]],
) -> None:
    """Features for one modality's pending items, stored fp16 under their tensor names."""
    with torch.no_grad():
        if what == "encoder":
            feats = model.media_features(m, torch.stack([value for _, value in jobs]))
        else:
            feats = model.decoders[m].encode_captions([value for _, value in jobs])
    shape = shapes.setdefault(m.value, list(feats.shape[1:]))
    if shape != list(feats.shape[1:]):
        raise CheckpointError(
            f"{m.value} features of shapes {shape} and {list(feats.shape[1:])} in one cache"
        )
    for (name, _), f in zip(jobs, feats):
        out[name] = f.detach().to(STORED_DTYPE).cpu().contiguous()


def _build_shard(
    model, what: str, stage: int, url: str, batch_size: int, bar
) -> tuple[dict[str, torch.Tensor], dict[str, int], list[str], int, dict[str, list[int]]]:
    """``(tensors, items per sample key, skipped sample keys (the first 100), number skipped, shape per
    modality)`` of one shard.

    The shard is read as training reads it (the same decoding), whole, whatever RANK/WORLD_SIZE say.
    A sample that does not decode or render is skipped and counted (training drops it too); a cache
    build never stops for one."""
    from nextgpt.encoders.encoder import ImageBindEncoder
    from nextgpt.stages.data.schema import BadSample
    from nextgpt.stages.data.shards import decode_sample, iter_raw

    tensors: dict[str, torch.Tensor] = {}
    items: dict[str, int] = {}
    seen: set[str] = set()
    skipped: list[str] = []
    n_skipped = 0
    shapes: dict[str, list[int]] = {}
    pending: dict[Modality, list[tuple[str, object]]] = {}

    def skip(key: str, reason: object) -> None:
        nonlocal n_skipped
        logger.warning("cache: skipping sample %s of %s: %s", key, url, reason)
        n_skipped += 1
        if len(skipped) < 100:
            skipped.append(key)

    for raw in iter_raw(url):
        bar.update(1)
        key = str(raw.get("__key__"))
        if "__error__" not in raw:
            if key in seen:
                raise CheckpointError(
                    f"duplicate sample key {key!r} in {url} (keys must be unique in a shard)"
                )
            seen.add(key)
        try:
            sample = decode_sample(raw, stage, decode_output_media=False)
            enc = model.processor.encode(sample.turns, add_generation_prompt=False)
            if what == "encoder":
                jobs = [
                    (item.modality, ImageBindEncoder.preprocess_item(item.modality, item.value))
                    for slot in enc.slots
                    for item in slot
                ]
            else:
                if len(enc.outputs) != len(sample.output_captions):
                    raise InputError(
                        f"{len(enc.outputs)} output media but {len(sample.output_captions)} captions"
                    )
                jobs = [
                    (slot[0].modality, caption) for slot, caption in zip(enc.outputs, sample.output_captions)
                ]
        except (BadSample, InputError, ValueError) as exc:
            skip(key, exc)
            continue
        items[sample.key] = len(jobs)
        for i, (m, value) in enumerate(jobs):
            pending.setdefault(m, []).append((f"{sample.key}/{i}", value))
        for m in [m for m, q in pending.items() if len(q) >= batch_size]:
            _compute(model, what, m, pending.pop(m), tensors, shapes)
    for m in list(pending):
        _compute(model, what, m, pending.pop(m), tensors, shapes)
    return tensors, items, skipped, n_skipped, shapes


def _write_entry(target: Path, sid: str, stage: int, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    name = entry_name(sid, stage)
    data = target / (name + ".safetensors")
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(f".{data.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, data)
    _atomic_write_text(target / (name + ".json"), json.dumps(meta))


def _prepare_model(model, what: str, device: torch.device | None):
    if device is not None:
        model.to(device)
        if what == "captions":  # decoders follow model.to(); make sure the text encoders moved too
            for decoder in model.decoders.values():
                if torch.device(decoder.device) != device:
                    decoder.to(device=device)
    return model


def _build_part(
    what: str,
    stage: int,
    urls: list[str],
    ids: list[str],
    target: Path,
    model,
    *,
    batch_size: int,
    rank: int,
    world_size: int,
    progress: bool,
) -> BuildReport:
    """Build this rank's shards (``r, r + W, ...``); return what was written and skipped."""
    from tqdm.auto import tqdm

    from nextgpt.stages.data import count_samples

    report = BuildReport(target, what, stage, len(urls), rank=rank, world_size=world_size)
    fingerprint = fingerprint_of(what, model)
    report.fingerprint = fingerprint
    kind = expected_feature(what, model)["kind"]
    mine = list(range(rank, len(urls), world_size))
    todo = []
    for i in mine:
        size = os.path.getsize(urls[i])
        side = _read_json(target / (entry_name(ids[i], stage) + ".json"))
        data = target / (entry_name(ids[i], stage) + ".safetensors")
        if (
            _fresh(side, what=what, stage=stage, size=size, fingerprint=fingerprint, kind=kind)
            and data.is_file()
        ):
            report.skipped_shards += 1
            report.skipped_samples += int(side.get("samples", 0))
        else:
            todo.append((i, size))
    total = count_samples([urls[i] for i, _ in todo]) if todo else 0
    desc = f"{what} cache" + (f" [rank {rank}/{world_size}]" if world_size > 1 else "")
    bar = tqdm(
        total=total, desc=desc, unit="sample", disable=not progress, position=rank if world_size > 1 else None
    )
    try:
        for i, size in todo:
            tensors, items, skipped, n_skipped, shapes = _build_shard(
                model, what, stage, urls[i], batch_size, bar
            )
            meta = {
                "format": FORMAT,
                "what": what,
                "view": VIEW[what],
                "stage": stage,
                "shard": ids[i],
                "source_size": size,
                "file": entry_name(ids[i], stage) + ".safetensors",
                "sidecar": entry_name(ids[i], stage) + ".json",
                "samples": len(items),
                "skipped_samples": n_skipped,
                "tensors": len(tensors),
                "feature": {
                    "kind": kind,
                    "dtype": str(STORED_DTYPE).removeprefix("torch."),
                    "shapes": shapes,
                },
                "fingerprint": fingerprint,
                "preset": model.config.name,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "items": items,
                "skipped": skipped,
            }
            _write_entry(target, ids[i], stage, tensors, meta)
            report.written_shards += 1
            report.written_samples += len(items)
    finally:
        bar.close()
    return report


def _sidecars(target: Path) -> list[dict]:
    """Every entry sidecar under ``target`` whose tensor file exists."""
    out = []
    for path in sorted(target.rglob("*.json")):
        if path == target / INDEX or path.name.startswith("."):
            continue
        side = _read_json(path)
        if not side or side.get("format") != FORMAT or "shard" not in side:
            continue
        if (target / side["file"]).is_file():
            out.append(side)
    return out


def write_index(target: str | os.PathLike, what: str) -> dict:
    """(Re)write ``<target>/index.json`` from all the entry sidecars present; return it."""
    target = Path(target)
    entries = []
    for side in _sidecars(target):
        if side.get("what") != what:
            continue
        entries.append({k: v for k, v in side.items() if k not in ("items", "skipped", "built_at")})
    entries.sort(key=lambda e: (e["shard"], e["stage"]))
    index = {
        "format": FORMAT,
        "what": what,
        "view": VIEW[what],
        "stages": sorted({e["stage"] for e in entries}),
        "samples": sum(int(e["samples"]) for e in entries),
        "entries": entries,
    }
    _atomic_write_text(target / INDEX, json.dumps(index, indent=1, sort_keys=True))
    return index


def _wait_for_entries(
    target: Path,
    what: str,
    stage: int,
    urls: list[str],
    ids: list[str],
    *,
    fingerprint: str,
    kind: str,
    timeout_s: float,
) -> list[str]:
    """Poll until every shard of the build has an up-to-date sidecar; return those still missing when
    ``timeout_s`` ran out (empty: all done)."""
    pending = {sid: (url, os.path.getsize(url)) for url, sid in zip(urls, ids)}
    seen_mtime: dict[str, float] = {}
    deadline = time.monotonic() + timeout_s
    while True:
        for sid in list(pending):
            side_path = target / (entry_name(sid, stage) + ".json")
            try:
                mtime = side_path.stat().st_mtime
            except OSError:
                continue
            if seen_mtime.get(sid) == mtime:
                continue
            seen_mtime[sid] = mtime
            side = _read_json(side_path)
            size = pending[sid][1]
            if _fresh(side, what=what, stage=stage, size=size, fingerprint=fingerprint, kind=kind):
                pending.pop(sid)
        if not pending or time.monotonic() >= deadline:
            return sorted(pending)
        time.sleep(POLL_S)


def _dist_group(rank: int, world_size: int) -> bool:
    """Whether a torch.distributed process group matches this build's ranks (then barriers are used)."""
    dist = torch.distributed
    return (
        world_size > 1
        and dist.is_available()
        and dist.is_initialized()
        and dist.get_rank() == rank
        and dist.get_world_size() == world_size
    )


def _child_device(device: torch.device | None, requested, local: int) -> str | None:
    """The device of local worker ``local``: ``cuda`` without an index puts worker ``r`` on
    ``cuda:r`` (modulo the number of GPUs) when there are several."""
    if device is None:
        return None
    if device.type == "cuda" and torch.device(requested).index is None and torch.cuda.device_count() > 1:
        return f"cuda:{local % torch.cuda.device_count()}"
    return str(device)


def _spawned(local: int, job: dict, queue) -> None:
    """Entry point of a local build worker (torch.multiprocessing.spawn)."""
    try:
        device = job["devices"][local]
        if device is None or torch.device(device).type == "cpu":  # share the cores
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // job["num_processes"]))
        model = job["model"]
        if model is None:
            from nextgpt.model import NextGPT

            model = NextGPT(job["cfg"])
        _prepare_model(model, job["what"], resolve_device(job["devices"][local]))
        report = _build_part(
            job["what"],
            job["stage"],
            job["urls"],
            job["ids"],
            job["target"],
            model,
            batch_size=job["batch_size"],
            rank=job["rank0"] + local,
            world_size=job["world_size"],
            progress=job["progress"],
        )
        queue.put(("ok", local, dataclasses.asdict(report)))
    except NextGPTError as exc:  # re-raised in the parent with its type and message
        queue.put(("error", local, (type(exc).__name__, str(exc))))


def _run_spawned(job: dict, num_processes: int) -> list[BuildReport]:
    import torch.multiprocessing as mp

    from nextgpt import errors

    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(_spawned, args=(job, queue), nprocs=num_processes, join=True)
    reports, failures = [], []
    while not queue.empty():
        status, local, payload = queue.get()
        if status == "ok":
            reports.append(BuildReport(**payload))
        else:
            failures.append((local, *payload))
    if failures:
        local, name, message = failures[0]
        error_type = getattr(errors, name, None)
        if not (isinstance(error_type, type) and issubclass(error_type, NextGPTError)):
            error_type = CheckpointError
        raise error_type(f"cache build worker {local}: {message}")
    if len(reports) != num_processes:
        raise CheckpointError(f"only {len(reports)} of {num_processes} cache build workers reported back")
    return reports


def build_cache_report(
    what: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    preset: str = "tiny",
    overrides: Sequence[str] = (),
    stage: int = 1,
    model=None,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    num_processes: int = 1,
    progress: bool = True,
    wait_timeout_s: float = INDEX_WAIT_S,
) -> BuildReport:
    """Precompute ``what`` (``"encoder"`` or ``"captions"``) for ``stage``'s shards under ``data`` into
    ``<out>/<what>/``; returns a :class:`BuildReport` (its ``path``, counts written / up to date).

    Args:
        what: the cache to build, ``"encoder"`` or ``"captions"``.
        data: the data folder holding the stage's shards.
        out: the cache root; the cache goes to ``<out>/<what>/``.
        preset: the preset whose frozen models run (ignored when ``model`` is given).
        overrides: dotted config overrides for ``preset``.
        stage: the stage whose rendering of the samples is cached (encoder: 1 or 3; captions: 2 or 3).
        model: a built :class:`~nextgpt.NextGPT` to use instead (moved to ``device`` when given).
        batch_size: items per frozen-model call.
        device: where the frozen models run (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...; ``"cuda"`` means
            ``cuda:$LOCAL_RANK`` under a launcher that sets it). ``None``: where ``model`` is (a model
            built here: the CPU).
        rank: this process's share: shards ``rank, rank + world_size, ...`` of the sorted shard list
            (pass it with ``world_size``; default: the ``RANK``/``WORLD_SIZE`` environment variables,
            else 0 and 1). Rank 0 writes the index when every shard is done (it waits for the others'
            entries, or meets them at a barrier when a torch.distributed group is initialised).
        world_size: the number of processes sharing the build (pass it with ``rank``).
        num_processes: start this many local worker processes (spawned) that split this process's
            share; with ``device="cuda"`` and several GPUs, worker ``r`` runs on ``cuda:r``.
        progress: show a progress bar.
        wait_timeout_s: how long rank 0 waits for the other ranks' entries before it gives up.

    Entries already up to date (same source size, stage, feature kind and fingerprint) are kept, so
    running the same command again resumes an interrupted build; builds for other stages or
    datasets add their entries to the same folder.

    Raises:
        ConfigError: an unknown cache, a stage that does not read it, an invalid or absent device.
        CheckpointError: duplicate sample keys in a shard; other ranks' shards not done in time.
    """
    from nextgpt.config import NextGPTConfig

    if what not in KINDS:
        raise ConfigError(f"unknown cache {what!r}; valid: {', '.join(KINDS)}")
    if stage not in (1, 2, 3):
        raise ConfigError(f"stage must be 1, 2 or 3, got {stage!r}")
    if stage not in STAGES_OF[what]:
        users = " and ".join(map(str, STAGES_OF[what]))
        raise ConfigError(f"stage {stage} does not read the {what} cache (stages {users} do)")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if num_processes < 1:
        raise ConfigError(f"num_processes must be >= 1, got {num_processes}")
    rank, world_size = _rank_world(rank, world_size)
    dev = resolve_device(device)  # validated here, before any worker starts
    cfg = (
        model.config
        if model is not None
        else NextGPTConfig.from_preset(preset).with_overrides(list(overrides))
    )
    urls, ids = _shards_of(data, stage, cfg)
    target = Path(out) / what
    target.mkdir(parents=True, exist_ok=True)

    if num_processes > 1:
        # Global ranks: this launcher rank's workers are rank * N .. rank * N + N - 1 of world * N.
        job = {
            "what": what,
            "stage": stage,
            "urls": urls,
            "ids": ids,
            "target": target,
            "model": model,
            "cfg": cfg,
            "batch_size": batch_size,
            "progress": progress,
            "num_processes": num_processes,
            "rank0": rank * num_processes,
            "world_size": world_size * num_processes,
        }
        job["devices"] = [_child_device(dev, device, i) for i in range(num_processes)]
        report = BuildReport(target, what, stage, len(urls), rank=rank, world_size=world_size)
        for part in _run_spawned(job, num_processes):
            report.add(part)
            report.fingerprint = report.fingerprint or part.fingerprint
    else:
        if model is None:
            from nextgpt.model import NextGPT

            model = NextGPT(cfg)
        _prepare_model(model, what, dev)
        report = _build_part(
            what,
            stage,
            urls,
            ids,
            target,
            model,
            batch_size=batch_size,
            rank=rank,
            world_size=world_size,
            progress=progress,
        )

    kind = _kind_of(what, cfg)
    use_barrier = _dist_group(rank, world_size)
    if use_barrier:
        torch.distributed.barrier()
    if rank == 0:
        missing = []
        if not use_barrier:
            missing = _wait_for_entries(
                target,
                what,
                stage,
                urls,
                ids,
                fingerprint=report.fingerprint,
                kind=kind,
                timeout_s=wait_timeout_s,
            )
        index = write_index(target, what)
        report.index_written = True
        report.entries, report.samples = len(index["entries"]), int(index["samples"])
        if missing:
            raise CheckpointError(
                f"{what} cache {target}: {len(missing)} shard(s) of the build were not done after "
                f"{wait_timeout_s:.0f} s: {_listing(missing)}; the index lists the finished ones. Run the "
                "build again (finished shards are kept)"
            )
    if use_barrier:
        torch.distributed.barrier()
    logger.info(
        "%s cache (stage %d) -> %s: %d shard(s) written (%d samples), %d up to date (%d samples)",
        what,
        stage,
        target,
        report.written_shards,
        report.written_samples,
        report.skipped_shards,
        report.skipped_samples,
    )
    return report


def build_cache(what: str, data: str | os.PathLike, out: str | os.PathLike, **kwargs) -> Path:
    """:func:`build_cache_report` (same arguments), returning the cache folder."""
    return build_cache_report(what, data, out, **kwargs).path
