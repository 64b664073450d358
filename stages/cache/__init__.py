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

Modules: :mod:`.keys` (fingerprints, feature kinds, shard ids, entry names, the build command),
:mod:`.store` (the reader, the check before training, writing entries and the index), :mod:`.compute`
(the frozen model over one process's shards), :mod:`.distributed` (ranks, spawned workers, waiting for
the other ranks) and :mod:`.build` (the build entry points). Every public name is importable from
``nextgpt.stages.cache``.
"""

from .build import build_cache, build_cache_report
from .compute import BuildReport, resolve_device
from .distributed import INDEX_WAIT_S, POLL_S
from .keys import (
    FORMAT,
    INDEX,
    KINDS,
    STAGES_OF,
    STORED_DTYPE,
    VIEW,
    build_command,
    captions_fingerprint,
    encoder_fingerprint,
    entry_name,
    expected_feature,
    fingerprint_of,
    shard_id,
    tensor_fingerprint,
)
from .store import OPEN_SHARDS, CacheMiss, FeatureCache, open_caches, write_index

__all__ = [
    "FORMAT",
    "INDEX",
    "INDEX_WAIT_S",
    "KINDS",
    "OPEN_SHARDS",
    "POLL_S",
    "STAGES_OF",
    "STORED_DTYPE",
    "VIEW",
    "BuildReport",
    "CacheMiss",
    "FeatureCache",
    "build_cache",
    "build_cache_report",
    "build_command",
    "captions_fingerprint",
    "encoder_fingerprint",
    "entry_name",
    "expected_feature",
    "fingerprint_of",
    "open_caches",
    "resolve_device",
    "shard_id",
    "tensor_fingerprint",
    "write_index",
]
