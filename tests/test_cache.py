"""Feature caches: keyed by dataset, shard and stage; checked before training; built on a device and
split across ranks/processes (stages/cache/)."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from nextgpt import NextGPT
from nextgpt.errors import CheckpointError, ConfigError
from nextgpt.modality import Modality
from nextgpt.stages.cache import (
    INDEX,
    CacheMiss,
    FeatureCache,
    build_cache,
    build_cache_report,
    open_caches,
    resolve_device,
)
from nextgpt.stages.data import (
    ConversationRecord,
    MediaBlob,
    PairRecord,
    RecordTurn,
    ShardDataset,
    write_samples,
)
from nextgpt.stages.datamodule import stage_shards

# stage 1 reads two datasets whose shards have the same file name; stage 3 reads "chat"
OVERRIDES = ["training.stages.1.datasets=[cc3m,webvid]", "training.stages.3.datasets=[chat]"]


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _image(seed: int, caption: str | None = None) -> MediaBlob:
    return MediaBlob(Modality.IMAGE, _png(seed), "png", caption=caption)


@pytest.fixture(scope="module")
def model() -> NextGPT:
    return NextGPT.from_preset("tiny", OVERRIDES)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """cc3m/part-000000.tar and webvid/part-000000.tar (same file name, same sample keys, other images);
    chat/part-000000.tar: two conversations (an input image each; one with an output image)."""
    root = tmp_path_factory.mktemp("data")
    ids = ["a", "b", "c"]
    write_samples(
        root / "cc3m", [PairRecord(i, f"photo {i}", _image(n)) for n, i in enumerate(ids)], prefix="part"
    )
    write_samples(
        root / "webvid",
        [PairRecord(i, f"clip {i}", _image(100 + n)) for n, i in enumerate(ids)],
        prefix="part",
    )
    convs = [
        ConversationRecord(
            "c0",
            [
                RecordTurn("user", [_image(7), "what is this?"]),
                RecordTurn("assistant", ["noise, and here is more", _image(8, caption="coloured noise")]),
            ],
        ),
        ConversationRecord(
            "c1", [RecordTurn("user", ["look", _image(9)]), RecordTurn("assistant", ["random pixels"])]
        ),
    ]
    write_samples(root / "chat", convs, prefix="part")
    return root


def _cfg(model: NextGPT, cache: Path):
    return model.config.with_overrides([f"training.cache_dir={cache}"])


def _open(model, cache: Path, data: Path, stage: int):
    urls = stage_shards(data, stage, list(model.config.training.stage_config(stage).datasets))
    return open_caches(_cfg(model, cache), stage, model, data, urls)


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {str(p.relative_to(folder)): load_file(str(p)) for p in sorted(folder.rglob("*.safetensors"))}


def _index(folder: Path) -> dict:
    return json.loads((folder / INDEX).read_text())


# ------------------------------------------------------------------ keyed by dataset and shard


def test_same_shard_name_in_two_datasets_keeps_both(model, data, tmp_path) -> None:
    build_cache("encoder", data, tmp_path, model=model, stage=1, progress=False)
    enc, cap = _open(model, tmp_path, data, 1)
    assert cap is None and len(enc) == 6
    assert enc.shards == ["cc3m/part-000000.tar", "webvid/part-000000.tar"]
    got: dict[str, dict[str, torch.Tensor]] = {}
    for url in stage_shards(data, 1, ["cc3m", "webvid"]):
        for sample in ShardDataset([url], 1):
            (item,) = [item for slot in model.processor.encode(sample.turns).slots for item in slot]
            want = model.media_features(
                Modality.IMAGE, model.encoder.preprocess(Modality.IMAGE, [item.value])
            )[0]
            assert enc.num_items(url, sample.key) == 1
            cached = enc.get(url, sample.key, 0)
            assert cached.dtype == torch.float32
            torch.testing.assert_close(cached, want, rtol=2e-3, atol=2e-3)  # stored fp16
            got.setdefault(sample.key, {})[Path(url).parent.name] = cached
    assert len(got) == 3  # the same three keys in both datasets ...
    for key, by_dataset in got.items():  # ... each with its own features
        assert not torch.allclose(by_dataset["cc3m"], by_dataset["webvid"]), key


# ------------------------------------------------------------------ checked before training


def test_stage1_cache_is_refused_for_stage3_until_built_for_it(model, data, tmp_path, capsys) -> None:
    from nextgpt.cli import main

    folder = tmp_path / "encoder"
    build_cache("encoder", data, tmp_path, model=model, stage=1, progress=False)
    with pytest.raises(ConfigError) as err:
        _open(model, tmp_path, data, 3)
    message = str(err.value)
    assert "chat/part-000000.tar" in message and "without a stage-3 entry" in message
    assert f"nextgpt cache encoder --data {data} --out {tmp_path} --stage 3 --preset tiny" in message
    assert "--override 'training.stages.3.datasets=[\"chat\"]'" in message  # the command names the datasets

    stage1_files = {p: p.read_bytes() for p in folder.rglob("*.s1.*")}
    # the command the message names builds exactly what is missing
    command = re.search(r"Build them with: (nextgpt cache .*?) \(up-to-date", message).group(1)
    assert main(shlex.split(command)[1:]) == 0
    assert "1 shard(s); 1 written (2 samples), 0 up to date" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in folder.rglob("*.s1.*")} == stage1_files  # untouched
    index = _index(folder)
    assert index["stages"] == [1, 3] and len(index["entries"]) == 3 and index["samples"] == 8  # merged
    enc1, _ = _open(model, tmp_path, data, 1)
    enc3, _ = _open(model, tmp_path, data, 3)
    assert len(enc1) == 6 and len(enc3) == 2
    url = str(data / "chat" / "part-000000.tar")
    keys = [s.key for s in ShardDataset([url], 3)]
    assert [enc3.num_items(url, k) for k in keys] == [1, 1]

    # the captions cache: stages 2 and 3 only; a stage-1 encoder cache does nothing for stage 2
    assert open_caches(_cfg(model, tmp_path), 2, model, data, []) == (None, None)
    build_cache("captions", data, tmp_path, model=model, stage=3, progress=False)
    _, cap3 = _open(model, tmp_path, data, 3)
    assert [cap3.num_items(url, k) for k in keys] == [1, 0]  # c0 has one output, c1 none
    assert cap3.get(url, keys[0], 0).shape == torch.Size(model.decoders[Modality.IMAGE].cond_shape)
    with pytest.raises(ConfigError, match="stage 1 does not read the captions cache"):
        build_cache("captions", data, tmp_path, model=model, stage=1, progress=False)


def test_changed_source_shard_is_refused_and_rebuilt(model, data, tmp_path) -> None:
    root = tmp_path / "data"
    shutil.copytree(data, root)
    cache = tmp_path / "cache"
    build_cache("encoder", root, cache, model=model, stage=1, progress=False)
    with open(root / "webvid" / "part-000000.tar", "ab") as f:  # a changed shard (still readable)
        f.write(b"\0" * 1024)
    with pytest.raises(ConfigError, match=r"1 changed since they were cached: webvid/part-000000\.tar"):
        _open(model, cache, root, 1)
    report = build_cache_report("encoder", root, cache, model=model, stage=1, progress=False)
    assert (report.written_shards, report.skipped_shards, report.skipped_samples) == (1, 1, 3)
    enc, _ = _open(model, cache, root, 1)
    assert len(enc) == 6


def test_other_frozen_model_or_feature_kind_is_refused(model, data, tmp_path) -> None:
    build_cache("encoder", data, tmp_path, model=model, stage=1, progress=False)
    index_path = tmp_path / "encoder" / INDEX
    index = json.loads(index_path.read_text())
    other = NextGPT.from_preset("tiny", [*OVERRIDES, "model.seed=1"])  # a different frozen encoder
    with pytest.raises(CheckpointError, match="different frozen model"):
        _open(other, tmp_path, data, 1)
    with pytest.raises(CheckpointError, match="different frozen model"):  # direct use, as before
        FeatureCache(tmp_path / "encoder", "0" * 32)

    index["entries"][0]["feature"]["kind"] = "pooled"
    index_path.write_text(json.dumps(index))
    with pytest.raises(ConfigError, match=r"1 with other features: cc3m/part-000000\.tar \[pooled features"):
        _open(model, tmp_path, data, 1)

    index_path.write_text(json.dumps({"kind": "encoder", "fingerprint": "x", "entries": {}}))  # old layout
    with pytest.raises(ConfigError, match="older layout"):
        _open(model, tmp_path, data, 1)
    index_path.unlink()  # an unfinished build
    with pytest.raises(ConfigError, match="no index.json.*nextgpt cache encoder"):
        _open(model, tmp_path, data, 1)


def _tar(path: Path, samples: list[tuple[str, bytes]]) -> None:
    """A shard of image pairs written member by member (keys may repeat; images may be broken)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, image in samples:
            meta = json.dumps({"kind": "pair", "modality": "image", "caption": f"picture {key}"}).encode()
            for name, payload in ((f"{key}.json", meta), (f"{key}.png", image)):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def test_duplicate_keys_are_an_error_and_bad_samples_are_skipped(model, tmp_path) -> None:
    root = tmp_path / "data"
    _tar(root / "cc3m" / "dup.tar", [("k", _png(1)), ("j", _png(2)), ("k", _png(3))])
    _tar(root / "webvid" / "dup.tar", [("k", _png(1)), ("j", _png(2))])  # the same keys elsewhere: fine
    with pytest.raises(CheckpointError, match=r"duplicate sample key 'k' in .*cc3m/dup\.tar"):
        build_cache("encoder", root, tmp_path / "cache", model=model, stage=1, progress=False)

    _tar(root / "cc3m" / "dup.tar", [("k", _png(1)), ("broken", b"not a png"), ("j", _png(2))])
    build_cache("encoder", root, tmp_path / "cache", model=model, stage=1, progress=False)
    side = json.loads((tmp_path / "cache" / "encoder" / "cc3m" / "dup.tar.s1.json").read_text())
    assert (side["samples"], side["skipped_samples"], side["skipped"]) == (2, 1, ["broken"])
    enc, _ = _open(model, tmp_path / "cache", root, 1)
    url = str(root / "cc3m" / "dup.tar")
    assert enc.num_items(url, "k") == 1
    with pytest.raises(CacheMiss, match="'broken'"):
        enc.get(url, "broken", 0)


# ------------------------------------------------------------------ read API


def test_cache_miss_is_a_key_error_naming_shard_and_key(model, data, tmp_path) -> None:
    build_cache("encoder", data, tmp_path, model=model, stage=1, progress=False)
    enc, _ = _open(model, tmp_path, data, 1)
    url = str(data / "cc3m" / "part-000000.tar")
    key = next(iter(ShardDataset([url], 1))).key
    with pytest.raises(CacheMiss) as err:
        enc.get(url, "no-such-key", 0)
    assert isinstance(err.value, KeyError)
    assert "cc3m/part-000000.tar" in str(err.value) and "no-such-key" in str(err.value)
    assert str(tmp_path / "encoder") in str(err.value)
    with pytest.raises(KeyError, match="no-such-key"):
        enc.num_items(url, "no-such-key")
    with pytest.raises(CacheMiss, match="item 1 of sample .* holds 1 item"):
        enc.get(url, key, 1)
    with pytest.raises(CacheMiss, match=r"chat/part-000000\.tar' has no entry for stage 1"):
        enc.get(str(data / "chat" / "part-000000.tar"), key, 0)
    # DataLoader workers pickle the cache: open handles are dropped and reopened
    import pickle

    enc.get(url, key, 0)
    clone = pickle.loads(pickle.dumps(enc))
    assert clone._handles == {}
    torch.testing.assert_close(clone.get(url, key, 0), enc.get(url, key, 0))
    # direct use without a data root: a shard path maps to the cached shard id it ends with
    direct = FeatureCache(tmp_path / "encoder")
    torch.testing.assert_close(direct.get(url, key, 0), enc.get(url, key, 0))
    with pytest.raises(CacheMiss, match=r"shard 'elsewhere/part-000000\.tar' has no entry"):
        direct.get("elsewhere/part-000000.tar", key, 0)


# ------------------------------------------------------------------ ranks and processes


def test_rank_split_gives_the_one_process_cache(model, data, tmp_path, monkeypatch) -> None:
    one = build_cache("encoder", data, tmp_path / "one", model=model, stage=1, progress=False)
    # rank 1 of 2 first: it builds webvid/ (shard 1 of the sorted list) and writes no index
    r1 = build_cache_report(
        "encoder", data, tmp_path / "two", model=model, stage=1, rank=1, world_size=2, progress=False
    )
    two = r1.path
    assert (r1.written_shards, r1.index_written) == (1, False) and not (two / INDEX).exists()
    assert [p.relative_to(two).as_posix() for p in two.rglob("*.safetensors")] == [
        "webvid/part-000000.tar.s1.safetensors"
    ]
    r0 = build_cache_report(
        "encoder", data, tmp_path / "two", model=model, stage=1, rank=0, world_size=2, progress=False
    )
    assert (r0.written_shards, r0.index_written, r0.entries, r0.samples) == (1, True, 2, 6)
    assert _index(two) == _index(one)
    assert _tensors(two).keys() == _tensors(one).keys()
    for name, tensors in _tensors(one).items():
        for key, t in tensors.items():
            assert torch.equal(_tensors(two)[name][key], t), (name, key)

    # rank 0 alone waits for rank 1's shards, then indexes what is done and says what is missing
    with pytest.raises(
        CheckpointError, match=r"1 shard\(s\) of the build were not done .*webvid/part-000000\.tar"
    ):
        build_cache_report(
            "encoder",
            data,
            tmp_path / "alone",
            model=model,
            stage=1,
            rank=0,
            world_size=2,
            progress=False,
            wait_timeout_s=0.5,
        )
    assert [e["shard"] for e in _index(tmp_path / "alone" / "encoder")["entries"]] == ["cc3m/part-000000.tar"]

    # RANK / WORLD_SIZE from the environment (torchrun, SLURM-style launchers)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    report = build_cache_report("encoder", data, tmp_path / "env", model=model, stage=1, progress=False)
    assert (report.rank, report.world_size, report.written_shards, report.index_written) == (1, 2, 1, False)
    assert (tmp_path / "env" / "encoder" / "webvid" / "part-000000.tar.s1.json").is_file()
    with pytest.raises(ConfigError, match="outside world size"):
        build_cache("encoder", data, tmp_path / "bad", model=model, stage=1, rank=2, world_size=2)


@pytest.mark.slow
def test_spawned_processes_give_the_one_process_cache(model, data, tmp_path) -> None:
    one = build_cache("encoder", data, tmp_path / "one", model=model, stage=1, progress=False)
    report = build_cache_report(
        "encoder",
        data,
        tmp_path / "spawn",
        preset="tiny",
        overrides=OVERRIDES,
        stage=1,
        num_processes=2,
        device="cpu",
        progress=False,
    )
    assert (report.written_shards, report.written_samples, report.index_written) == (2, 6, True)
    assert _index(report.path) == _index(one)
    spawned = _tensors(report.path)
    for name, tensors in _tensors(one).items():
        for key, t in tensors.items():
            assert torch.equal(spawned[name][key], t), (name, key)


# ------------------------------------------------------------------ devices


def test_device_reaches_the_model_and_bad_devices_are_clear(model, data, tmp_path, monkeypatch) -> None:
    report = build_cache_report(
        "encoder", data, tmp_path / "cpu", model=model, stage=1, device="cpu", progress=False
    )
    assert report.written_shards == 2 and model.device == torch.device("cpu")

    # the requested device is where the model is moved (recorded here: this machine may lack it) ...
    moves = []
    monkeypatch.setattr(model, "to", lambda *args, **kwargs: moves.append((args, kwargs)) or model)
    build_cache("encoder", data, tmp_path / "meta", model=model, stage=1, device="meta", progress=False)
    assert moves == [((torch.device("meta"),), {})]
    # ... and, for caption targets, a decoder that did not follow model.to() is moved there too
    decoder = model.decoders[Modality.IMAGE]
    monkeypatch.setattr(decoder, "device", torch.device("meta"))
    build_cache("captions", data, tmp_path / "cap", model=model, stage=3, device="cpu", progress=False)
    assert moves[-1] == ((torch.device("cpu"),), {}) and decoder.device == torch.device("cpu")
    monkeypatch.undo()

    with pytest.raises(ConfigError, match="invalid device 'gpu0'"):
        build_cache("encoder", data, tmp_path / "x", model=model, stage=1, device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            build_cache("encoder", data, tmp_path / "x", model=model, stage=1, device="cuda")
    # "cuda" under a launcher means the process's local GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert resolve_device("cuda") == torch.device("cuda", 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="4 CUDA device"):
        resolve_device("cuda:7")


# ------------------------------------------------------------------ command line


def test_cli_builds_and_reports_counts(data, tmp_path, capsys) -> None:
    from nextgpt.cli import main

    argv = [
        "cache",
        "encoder",
        "--data",
        str(data),
        "--out",
        str(tmp_path),
        "--stage",
        "1",
        "--preset",
        "tiny",
    ]
    argv += ["--override", OVERRIDES[0], "--device", "cpu", "--num-processes", "1", "--batch-size", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert f"encoder cache for stage 1: {tmp_path / 'encoder'}" in out
    assert "2 shard(s); 2 written (6 samples), 0 up to date (0 samples)" in out
    assert "the cache holds 2 entries, 6 samples" in out
    assert main(argv) == 0  # again: nothing to do
    assert "2 shard(s); 0 written (0 samples), 2 up to date (6 samples)" in capsys.readouterr().out
    assert main([*argv[:-4], "--device", "nonsense"]) == 2
    assert "invalid device 'nonsense'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["cache", "--help"])
    text = capsys.readouterr().out
    assert all(
        opt in text for opt in ["--device", "--num-processes", "--batch-size", "--stage", "--override"]
    )


def test_build_cache_rejects_bad_arguments(model, data, tmp_path) -> None:
    with pytest.raises(ConfigError, match="unknown cache 'tokens'"):
        build_cache("tokens", data, tmp_path, model=model)
    with pytest.raises(ConfigError, match="stage 2 does not read the encoder cache"):
        build_cache("encoder", data, tmp_path, model=model, stage=2)
    with pytest.raises(ConfigError, match="num_processes"):
        build_cache("encoder", data, tmp_path, model=model, num_processes=0)
    assert not os.path.exists(tmp_path / "encoder")
