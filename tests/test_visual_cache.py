"""ImageBind-LLM's visual cache: FAISS retrieval and the blend against a brute-force numpy computation,
its files, `nextgpt cache index` from shards, and cache-enhanced inference in a bind model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nextgpt import Audio, NextGPT
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.visual_cache import VisualCache


def _brute_force(values, queries, k, temperature, alpha):
    keys = values / np.linalg.norm(values, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    sims = q @ keys.T
    top = np.argsort(-sims, axis=1)[:, :k]
    s = np.take_along_axis(sims, top, axis=1)
    w = np.exp(s * temperature)
    w /= w.sum(axis=1, keepdims=True)
    retrieved = (w[:, :, None] * values[top]).sum(axis=1)
    retrieved /= np.linalg.norm(retrieved, axis=1, keepdims=True)
    blended = alpha * retrieved + (1 - alpha) * q
    blended /= np.linalg.norm(blended, axis=1, keepdims=True)
    return top, s, blended * np.linalg.norm(queries, axis=1, keepdims=True)


def test_retrieval_and_blend_match_brute_force():
    rng = np.random.default_rng(0)
    values = rng.standard_normal((300, 32)).astype(np.float32)
    values /= np.linalg.norm(values, axis=1, keepdims=True)  # ImageBind embeddings are unit vectors
    queries = rng.standard_normal((6, 32)).astype(np.float32) * 3.0
    cache = VisualCache(values)  # the paper's defaults: top 10, temperature 20, alpha 0.5
    sims, idx = cache.search(queries)
    top, s, want = _brute_force(values.astype(np.float64), queries.astype(np.float64), 10, 20.0, 0.5)
    assert np.array_equal(idx, top)
    np.testing.assert_allclose(sims, s, rtol=1e-5, atol=1e-6)
    got = cache.enhance(torch.from_numpy(queries))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(got.numpy(), axis=1), np.linalg.norm(queries, axis=1), rtol=1e-5
    )
    other = VisualCache(values, top_k=3, temperature=5.0, alpha=0.8)
    _, _, want3 = _brute_force(values.astype(np.float64), queries.astype(np.float64), 3, 5.0, 0.8)
    np.testing.assert_allclose(other.enhance(torch.from_numpy(queries)).numpy(), want3, rtol=1e-5, atol=1e-5)
    tiny = VisualCache(values[:4])  # fewer entries than top_k: all of them
    assert tiny.search(queries)[1].shape == (6, 4)


def test_cache_files_round_trip_and_bad_input(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.standard_normal((50, 16)).astype(np.float32)
    folder = VisualCache(values).save(tmp_path / "cache", {"note": "x"})
    loaded = VisualCache.load(folder, top_k=5)
    assert (
        loaded.size == 50
        and loaded.top_k == 5
        and json.loads((folder / "cache.json").read_text())["count"] == 50
    )
    q = torch.from_numpy(rng.standard_normal((2, 16)).astype(np.float32))
    torch.testing.assert_close(loaded.enhance(q), VisualCache(values, top_k=5).enhance(q))
    VisualCache(values[:10]).save(tmp_path / "other")
    (folder / "index.faiss").write_bytes((tmp_path / "other" / "index.faiss").read_bytes())
    assert VisualCache.load(folder).index.ntotal == 50  # a stale index is rebuilt from the values
    with pytest.raises(ConfigError, match="visual cache not found"):
        VisualCache.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match="NaN"):
        VisualCache(np.full((2, 4), np.nan, dtype=np.float32))
    with pytest.raises(InputError, match=r"queries must be \[M, 16\]"):
        loaded.search(np.zeros((1, 3), dtype=np.float32))


def test_cache_index_command_encodes_the_images_and_enhances_inference(demo_data, tmp_path, capsys):
    from nextgpt.cli import main

    bind = ["model.input_projector.kind=bind", "model.llm.media_wrappers=false"]
    out = tmp_path / "visual"
    args = ["cache", "index", "--data", str(demo_data), "--out", str(out), "--preset", "tiny"]
    assert main([*args, "--override", "training.stages.1.datasets=[pairs]", "--stage", "1"]) == 0
    meta = json.loads((out / "cache.json").read_text())
    assert meta["count"] == 10 and meta["dim"] == 32 and len(meta["encoder_sha256"]) == 64  # 10 demo pictures
    assert "10 image embeddings" in capsys.readouterr().out

    model = NextGPT.from_preset("tiny", [*bind, f"model.visual_cache.path={out}"])
    plain = NextGPT.from_preset("tiny", bind)
    sound = Audio(np.random.default_rng(0).standard_normal((1, 16000)).astype(np.float32) * 0.1, 16000)
    slots = model.prepare_request([sound, "what is this"], ["text"]).slots
    with torch.no_grad():
        feature = model.media_features(Modality.AUDIO, model.encoder.preprocess(Modality.AUDIO, [sound]))
        enhanced = model.visual_cache.enhance(feature)
        torch.testing.assert_close(model.bind_row(slots), model.input_projector(enhanced)[0])
        assert not torch.allclose(model.bind_row(slots), plain.bind_row(slots))
        values = np.load(out / "values.npy")
        assert np.allclose(np.linalg.norm(values, axis=1), 1.0, atol=1e-4)  # ImageBind's unit embeddings

    VisualCache(values[:, :16]).save(tmp_path / "narrow")  # another encoder's width
    narrow = NextGPT.from_preset("tiny", [*bind, f"model.visual_cache.path={tmp_path / 'narrow'}"])
    with pytest.raises(ConfigError, match="holds 16-d embeddings; this model's encoder gives 32-d"):
        narrow.generate([sound, "what is this"], modalities=["text"], max_new_tokens=1)
