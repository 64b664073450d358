"""Shard files at the tar level: shard lists (:func:`expand_urls`), raw samples (:func:`iter_raw`,
members grouped by key), sample counts from the tar headers (:func:`count_samples`) and writing
records as shards (:func:`write_samples`). See :mod:`nextgpt.stages.data.shards`."""

from __future__ import annotations

import glob
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from nextgpt.errors import InputError

from ..schema import BadSample, ConversationRecord, PairRecord, record_members, safe_key

logger = logging.getLogger(__package__)  # records keep the name nextgpt.stages.data.shards


# --------------------------------------------------------------------------------------------------
# shard lists


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def expand_urls(urls: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    """Shard list from a directory (its ``*.tar``, sorted), a glob, a brace pattern
    (``pairs-{000000..000009}.tar``), ``::``-separated patterns, or a list of those.

    Raises:
        InputError: a local shard that does not exist, or no shards at all.
    """
    from webdataset.shardlists import expand_urls as wds_expand

    items = [urls] if isinstance(urls, (str, os.PathLike)) else list(urls)
    out: list[str] = []
    for item in items:
        text = os.fspath(item)
        if _is_remote(text):
            out.extend(wds_expand(text))
            continue
        for pat in wds_expand(text):
            if os.path.isdir(pat):
                found = sorted(
                    glob.glob(os.path.join(pat, "*.tar")) + glob.glob(os.path.join(pat, "*.tar.gz"))
                )
                if not found:
                    raise InputError(f"shard folder '{pat}' holds no .tar files")
                out.extend(found)
            elif glob.has_magic(pat):
                found = sorted(glob.glob(pat))
                if not found:
                    raise InputError(f"no shards match '{pat}'")
                out.extend(found)
            else:
                out.append(pat)
    if not out:
        raise InputError("empty shard list")
    missing = [u for u in out if not _is_remote(u) and not os.path.isfile(u)]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise InputError(f"{len(missing)} shard(s) not found: {', '.join(missing[:3])}{more}")
    return out


def _open(url: str):
    if _is_remote(url):
        from webdataset.gopen import gopen

        return gopen(url, "rb")
    return open(url, "rb")


def _split_name(name: str) -> tuple[str | None, str | None]:
    """Split a tar member name by webdataset's rule: key = path up to the first dot of the base name,
    field = the rest."""
    head, _, base = name.rpartition("/")
    if "." not in base or base.startswith("."):
        return None, None
    stem, _, rest = base.partition(".")
    return (f"{head}/{stem}" if head else stem), rest.lower()


def _members(tar: tarfile.TarFile, size: int | None) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """``(member, key, field)`` of the sample members of an open tar, in order (directories, names
    without a field and ``__x__`` keys skipped). Raises ``tarfile.ReadError`` at the end when the file
    (``size`` bytes, if known) is shorter than its archive: tarfile takes a header cut short for the
    end (a complete tar ends with two zero blocks after the last member)."""
    for info in tar:
        if not info.isreg():
            continue
        key, fld = _split_name(info.name)
        if key is None or (key.startswith("__") and key.endswith("__")):
            continue
        yield info, key, fld
    if size is not None and size < tar.offset + 2 * tarfile.BLOCKSIZE:
        raise tarfile.ReadError("the archive ends before its end-of-archive blocks")


def iter_raw(url: str) -> Iterator[dict]:
    """Raw samples of one shard: ``{"__key__", "__url__", field: bytes, ...}``. A read error ends the
    shard with one ``{"__error__": reason}`` item (the partial sample it interrupted is dropped)."""
    current: dict | None = None
    last_key = "<start>"
    size = os.path.getsize(url) if not _is_remote(url) and url.endswith(".tar") else None
    try:
        with _open(url) as stream, tarfile.open(fileobj=stream, mode="r|*") as tar:
            for info, key, fld in _members(tar, size):
                data = tar.extractfile(info).read()
                if current is not None and key != current["__key__"]:
                    yield current
                    current = None
                if current is None:
                    current = {"__key__": key, "__url__": url}
                    last_key = key
                if fld in current:
                    current["__error__"] = f"duplicate member {info.name!r}"
                current[fld] = data
        if current is not None:
            yield current
    except Exception as exc:  # corrupt/truncated tar, unreadable stream
        yield {
            "__key__": f"{url}#{last_key}",
            "__url__": url,
            "__error__": f"corrupt or truncated shard ({type(exc).__name__}: {exc})",
        }


def _count_local_tar(url: str) -> int:
    """Samples in a local uncompressed tar, from its headers (``tarfile`` seeks over member data).

    The count equals what :func:`iter_raw` yields for the file: the same key grouping and skipped
    names; a truncated or corrupt archive falls back to reading it (its readable samples plus the one
    error item :func:`iter_raw` ends with)."""
    try:
        n, last = 0, None
        with tarfile.open(url, mode="r:") as tar:
            for _, key, _ in _members(tar, os.path.getsize(url)):
                if key != last:
                    n, last = n + 1, key
        return n
    except (tarfile.TarError, OSError, EOFError) as exc:
        logger.warning("shard %s cannot be listed (%s): counting it by reading", url, exc)
        return sum(1 for _ in iter_raw(url))


def count_samples(urls, *, per_shard: bool = False) -> int | dict[str, int]:
    """Number of raw items :func:`iter_raw` yields for the shards (samples, bad ones included, plus one
    error item for a corrupt or truncated shard). Local uncompressed shards are counted from their tar
    headers; others are read."""
    counts: dict[str, int] = {}
    for url in expand_urls(urls):
        if not _is_remote(url) and url.endswith(".tar"):
            counts[url] = _count_local_tar(url)
        else:
            counts[url] = sum(1 for _ in iter_raw(url))
    return counts if per_shard else sum(counts.values())


# --------------------------------------------------------------------------------------------------
# writing


def write_samples(
    out_dir: str | os.PathLike,
    samples: Iterable[PairRecord | ConversationRecord],
    *,
    prefix: str,
    max_count_per_shard: int = 1000,
    max_size_per_shard: float = 1e9,
    overwrite: bool = False,
    on_written: Callable[[PairRecord | ConversationRecord, str], None] | None = None,
) -> list[Path]:
    """Write records into ``out_dir/<prefix>-000000.tar, ...`` and return the shard paths.

    Keys are ``<8-digit index>_<id>`` (made webdataset-safe). A record that would not read back
    (:class:`~.schema.BadSample`) raises ``InputError`` — callers validate their records first.

    Args:
        out_dir: the folder to write to (created if missing).
        samples: the records to write, in order.
        prefix: shard file name prefix (letters, digits, ``_`` or ``-``).
        max_count_per_shard: records per shard at most.
        max_size_per_shard: a new shard starts once a shard holds this many bytes.
        overwrite: remove existing ``<prefix>-*.tar`` first; otherwise existing shards are an error
            (stale shards of an earlier, longer run would be read as part of the dataset).
        on_written: called with each record and its key after it is written.
    """
    import webdataset as wds

    if max_count_per_shard < 1:
        raise InputError(f"max_count_per_shard must be >= 1, got {max_count_per_shard}")
    if not prefix or safe_key(prefix) != prefix:
        raise InputError(f"shard prefix must be letters, digits, '_' or '-', got {prefix!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(out.glob(f"{prefix}-*.tar"))
    if existing:
        if not overwrite:
            raise InputError(
                f"{out} already holds {len(existing)} shard(s) named {prefix}-*.tar; "
                "pass overwrite=True or choose another output folder/prefix"
            )
        for p in existing:
            p.unlink()
    pattern = str(out / f"{prefix}-%06d.tar")
    writer = None
    n = 0
    try:
        for record in samples:
            try:
                members = record_members(record)
            except BadSample as exc:
                raise InputError(f"record {getattr(record, 'id', '?')!r} cannot be written: {exc}") from None
            key = f"{n:08d}_{safe_key(record.id)}"
            if writer is None:
                writer = wds.ShardWriter(
                    pattern,
                    maxcount=max_count_per_shard,
                    maxsize=max_size_per_shard,
                    verbose=0,
                    encoder=False,
                    mtime=0.0,
                )
            writer.write({"__key__": key, **members})
            n += 1
            if on_written is not None:
                on_written(record, key)
    finally:
        if writer is not None:
            writer.close()
    paths = sorted(out.glob(f"{prefix}-*.tar"))
    logger.info("wrote %d samples into %d shard(s) under %s", n, len(paths), out)
    return paths
