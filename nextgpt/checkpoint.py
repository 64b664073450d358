"""Safe checkpoint reading and strict key accounting.

Checkpoints are read without unpickling arbitrary objects: ``.safetensors`` files through
safetensors, everything else through ``torch.load(weights_only=True)``. Loading into a module checks
every key both ways and every shape, and raises :class:`~nextgpt.errors.CheckpointError` naming the
offending keys, instead of silently dropping them as ``strict=False`` loaders do.
"""

from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import json
import logging
import os
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from nextgpt.errors import CheckpointError, UnsafeCheckpointError

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
            raise UnsafeCheckpointError(
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


def check_values(
    targets: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], *, what: str
) -> None:
    """Raise ``CheckpointError`` unless every tensor of ``found`` can stand in for its target in
    ``targets``: a floating target needs a floating tensor (an int64 or bool tensor is refused, it is
    not a cast the saver meant) whose values are all finite (NaN or inf weights are refused: they
    would turn every later output into NaN without an error)."""
    wrong_dtype, non_finite = [], []
    for k, v in found.items():
        target = targets.get(k)
        if target is None:
            continue
        if target.is_floating_point() and not v.is_floating_point():
            wrong_dtype.append(f"{k} ({str(v.dtype).removeprefix('torch.')}, model {target.dtype})")
        elif v.is_floating_point() and not bool(torch.isfinite(v).all()):
            non_finite.append(k)
    problems = []
    if wrong_dtype:
        problems.append(f"{len(wrong_dtype)} tensor(s) of a non-floating dtype: {_listing(wrong_dtype)}")
    if non_finite:
        problems.append(f"{len(non_finite)} tensor(s) holding NaN or inf: {_listing(non_finite)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


# ------------------------------------------------------------------ saved-model folders

#: The files of a folder written by ``NextGPT.save_pretrained``.
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "trainable.safetensors"
META_FILE = "nextgpt.json"
#: nextgpt.json format with a manifest of every file (size and SHA-256) and a save id.
MANIFEST_FORMAT = 2
_OWN_FILES = {CONFIG_FILE, WEIGHTS_FILE, META_FILE}
_SAVING = ".saving-"
_REPLACED = ".replaced-"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); ``False`` where the
    OS or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, f"cannot swap '{a}' and '{b}': {os.strerror(err)}")


def write_model_folder(
    directory: str | os.PathLike,
    write_config: Callable[[Path], object],
    state: Mapping[str, torch.Tensor],
    meta: Mapping[str, object],
) -> Path:
    """Write a saved-model folder as one unit: config, weights and a manifest go into a sibling
    folder that then replaces ``directory`` whole.

    On Linux the replacement is one atomic ``renameat2(RENAME_EXCHANGE)``, so a crash at any point
    leaves either the old folder or the new one. Where the OS cannot exchange, the old folder is
    first renamed aside (``<name>.replaced-<id>``) and removed after the new one is in place; a crash
    between the two renames leaves no ``directory`` and the previous save under that name, which
    :func:`read_model_folder` points to. An existing ``directory`` holding files other than a saved
    model's is refused, never replaced.
    """
    from safetensors.torch import save_file

    out = Path(directory)
    if out.exists():
        if not out.is_dir():
            raise CheckpointError(f"cannot save a model to '{out}': it is a file")
        foreign = sorted(p.name for p in out.iterdir() if p.name not in _OWN_FILES)
        if foreign:
            raise CheckpointError(
                f"refusing to replace '{out}': it holds files a saved nextgpt model does not "
                f"({_listing(foreign)}); save into a new or empty folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{glob.escape(out.name)}{_SAVING}*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    save_id = uuid.uuid4().hex
    tmp = out.with_name(f".{out.name}{_SAVING}{save_id}")
    tmp.mkdir()
    try:
        write_config(tmp / CONFIG_FILE)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"nextgpt_save_id": save_id})
        files = {
            name: {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
            for name in (CONFIG_FILE, WEIGHTS_FILE)
        }
        manifest = {"format": MANIFEST_FORMAT, "save_id": save_id, **meta, "files": files}
        (tmp / META_FILE).write_text(json.dumps(manifest, indent=1))
        for name in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
            _fsync(tmp / name)
        _fsync(tmp)
        if not out.exists():
            os.rename(tmp, out)
        elif _exchange(tmp, out):
            shutil.rmtree(tmp)  # now the previous save
        else:
            aside = out.with_name(f"{out.name}{_REPLACED}{save_id}")
            os.rename(out, aside)
            os.rename(tmp, out)
            shutil.rmtree(aside)
        _fsync(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_model_folder(directory: str | os.PathLike) -> tuple[Path, dict[str, torch.Tensor]]:
    """Check a saved-model folder and read its weights: ``(config path, state dict)``.

    Every file must match the manifest (size and SHA-256) and the weights must carry the manifest's
    save id: a folder whose parts come from different saves is refused. Folders written before the
    manifest existed load with a warning that they cannot be verified.
    """
    path = Path(directory)
    if not (path / CONFIG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        hint = ""
        leftovers = (
            sorted(path.parent.glob(f"{glob.escape(path.name)}{_REPLACED}*")) if path.parent.is_dir() else []
        )
        if leftovers:
            hint = (
                f"; a save into it was interrupted and left the previous model in '{leftovers[0]}' "
                f"(rename it to '{path.name}' to use it)"
            )
        raise CheckpointError(
            f"'{path}' is not a saved nextgpt model (needs {CONFIG_FILE} and {WEIGHTS_FILE}){hint}"
        )
    meta_path = path / META_FILE
    manifest = None
    if meta_path.is_file():
        try:
            manifest = json.loads(meta_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"'{meta_path}' is not a valid manifest: {exc}") from None
        if not isinstance(manifest, dict):
            raise CheckpointError(f"'{meta_path}' is not a valid manifest: not a JSON object")
    if manifest is None or "files" not in manifest:
        logger.warning(
            "'%s' has no file manifest (saved by an older nextgpt): its config and weights cannot be "
            "checked to come from the same save; re-save it to add one",
            path,
        )
        return path / CONFIG_FILE, read_state_dict(path / WEIGHTS_FILE)
    files = manifest.get("files")
    if not isinstance(files, dict) or set(files) != {CONFIG_FILE, WEIGHTS_FILE}:
        raise CheckpointError(f"'{meta_path}' is not a valid manifest: its file list is {files!r}")
    for name, want in files.items():
        f = path / name
        size = f.stat().st_size
        if not isinstance(want, dict) or size != want.get("bytes") or file_sha256(f) != want.get("sha256"):
            raise CheckpointError(
                f"'{path}': {name} is not the file its manifest ({META_FILE}) lists ({size} bytes, "
                f"manifest {want.get('bytes') if isinstance(want, dict) else '?'}): the folder's parts do "
                "not come from one save (an interrupted copy or a save mixed with another); re-save the model"
            )
    state = read_state_dict(path / WEIGHTS_FILE)
    from safetensors import safe_open

    with safe_open(str(path / WEIGHTS_FILE), "pt") as f:
        saved_id = (f.metadata() or {}).get("nextgpt_save_id")
    if saved_id != manifest.get("save_id"):
        raise CheckpointError(
            f"'{path}': {WEIGHTS_FILE} was written by save {saved_id}, the manifest by save "
            f"{manifest.get('save_id')}: the folder's parts do not come from one save; re-save the model"
        )
    return path / CONFIG_FILE, state
