"""The cache folder on disk: reading it (:class:`FeatureCache`, checked by :func:`open_caches` before
training) and writing it (entry tensors and sidecars, then the index), every file atomically (see
:mod:`nextgpt.stages.cache`)."""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from nextgpt.errors import CheckpointError, ConfigError

from .keys import (
    FORMAT,
    INDEX,
    KINDS,
    STAGES_OF,
    VIEW,
    _feature_problem,
    _listing,
    build_command,
    entry_name,
    expected_feature,
    fingerprint_of,
    shard_id,
)

logger = logging.getLogger(__package__)  # records keep the name nextgpt.stages.cache

#: Shards whose file handle and per-sample counts a reader keeps (least recently used ones are closed).
OPEN_SHARDS = 16


class CacheMiss(KeyError):
    """A sample (or one of its items) that the cache does not hold. A ``KeyError``: the collator drops
    the sample. The message names the shard, the sample key and the cache folder."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else ""


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


# --------------------------------------------------------------------------------------------------
# reading


def _remember(lru: OrderedDict, key: str, value):
    """Keep ``value`` under ``key``, forgetting the least recently used beyond :data:`OPEN_SHARDS`."""
    lru[key] = value
    while len(lru) > OPEN_SHARDS:
        lru.popitem(last=False)
    return value


class FeatureCache:
    """Read side of a cache folder (see :mod:`nextgpt.stages.cache`).

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
# writing


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


def _write_entry(target: Path, sid: str, stage: int, tensors: dict, meta: dict) -> None:
    from safetensors.torch import save_file

    name = entry_name(sid, stage)
    data = target / (name + ".safetensors")
    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.with_name(f".{data.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, data)
    _atomic_write_text(target / (name + ".json"), json.dumps(meta))


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
