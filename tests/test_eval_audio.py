"""Text -> audio metrics (nextgpt.eval.metrics.audio): PANNs Cnn14 and VGGish extractors with seeded
random weights in the official file formats, IS / KL / FD / FAD against hand values and, where installed,
against audioldm_eval's and panns_inference's own code."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from nextgpt.errors import ExtractorWeightsError, InputError
from nextgpt.eval.metrics import audio as A
from nextgpt.eval.metrics.frechet import frechet_distance


def _tones(freqs: list[float], seconds: float, rate: int, amp: float = 0.3) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return sum(amp * np.sin(2 * np.pi * f * t) for f in freqs).astype(np.float32)


def _noise(seed: int, seconds: float, rate: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)


@pytest.fixture(scope="module")
def cnn14_file(tmp_path_factory) -> Path:
    """A seeded random Cnn14 saved as PANNs' official checkpoint is laid out: ``{"model": state_dict, ...}``."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("panns") / "Cnn14_16k_mAP=0.438.pth"
    torch.save({"model": A.build_cnn14().state_dict(), "iteration": 0}, path)
    return path


@pytest.fixture(scope="module")
def vggish_file(tmp_path_factory) -> Path:
    """A seeded random VGGish saved as a bare state dict, as harritaylor's ``vggish-10086976.pth``."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vggish") / "vggish-10086976.pth"
    torch.save(A.build_vggish().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def panns(cnn14_file):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(A.PANNS_ENV, str(cnn14_file))
        return A.PannsCnn14.from_path()


@pytest.fixture(scope="module")
def vggish(vggish_file):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(A.VGGISH_ENV, str(vggish_file))
        return A.Vggish.from_path()


def _audioldm_metric(name: str):
    """audioldm_eval's ``metrics/<name>.py`` loaded from its file (the package's ``__init__`` imports
    torchaudio and its other evaluation dependencies, which are not installed here)."""
    spec = importlib.util.find_spec("audioldm_eval")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("audioldm-eval is not installed (pip install --no-deps audioldm-eval==0.0.3)")
    path = Path(next(iter(spec.submodule_search_locations))) / "metrics" / f"{name}.py"
    mod_spec = importlib.util.spec_from_file_location(f"_audioldm_eval_{name}", path)
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------ weights


def test_missing_weights_name_the_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv(A.PANNS_ENV, raising=False)
    monkeypatch.delenv(A.VGGISH_ENV, raising=False)
    with pytest.raises(ExtractorWeightsError, match=A.PANNS_ENV):
        A.PannsCnn14.from_path()
    with pytest.raises(ExtractorWeightsError, match=A.VGGISH_ENV):
        A.Vggish.from_path()
    missing = tmp_path / "Cnn14_16k_mAP=0.438.pth"
    with pytest.raises(ExtractorWeightsError, match="Cnn14_16k_mAP=0.438.pth") as err:
        A.PannsCnn14.from_path(missing)
    assert A.PANNS_ENV in str(err.value)
    monkeypatch.setenv(A.VGGISH_ENV, str(tmp_path / "vggish-10086976.pth"))
    with pytest.raises(ExtractorWeightsError, match="vggish-10086976.pth"):
        A.Vggish.from_path()


def test_unloadable_or_foreign_weights_are_refused(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ExtractorWeightsError, match=A.PANNS_ENV):
        A.PannsCnn14.from_path(garbage)
    foreign = tmp_path / "foreign.pth"
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, foreign)
    with pytest.raises(ExtractorWeightsError, match="does not fit"):
        A.PannsCnn14.from_path(foreign)
    with pytest.raises(ExtractorWeightsError, match="does not fit"):
        A.Vggish.from_path(foreign)


def test_extractors_record_path_and_sha256(panns, vggish, cnn14_file, vggish_file):
    for ext, f in ((panns, cnn14_file), (vggish, vggish_file)):
        assert Path(ext.path) == f
        assert ext.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert not panns.model.training and not vggish.model.training


def test_cnn14_config_and_keys_match_panns_inference(cnn14_file, monkeypatch, tmp_path):
    """Our Cnn14 against panns_inference's own class: same parameter names, same outputs."""
    if importlib.util.find_spec("panns_inference") is None:
        pytest.skip("panns-inference is not installed")
    # panns_inference's config.py downloads the AudioSet label list into ~/panns_data at import time
    # unless it is there: give it a HOME that holds a stand-in list.
    labels = tmp_path / "panns_data" / "class_labels_indices.csv"
    labels.parent.mkdir()
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/{i},c{i}\n" for i in range(527)))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from panns_inference.models import Cnn14

    assert A.CNN14_16K == dict(
        sample_rate=16000, window_size=512, hop_size=160, mel_bins=64, fmin=50, fmax=8000, classes_num=527
    )
    theirs = Cnn14(**A.CNN14_16K)
    state = torch.load(cnn14_file, weights_only=True)["model"]
    assert set(theirs.state_dict()) == set(state)
    theirs.load_state_dict(state)
    ours = A.build_cnn14()
    ours.load_state_dict(state)
    x = torch.from_numpy(_tones([330.0, 990.0], 2.0, 16000)[None])
    with torch.no_grad():
        out = theirs.eval()(x)
        emb, logits = ours.eval()(x)
    torch.testing.assert_close(emb, out["embedding"])
    torch.testing.assert_close(torch.sigmoid(logits), out["clipwise_output"])


# ------------------------------------------------------------------ PANNs embeddings


def test_panns_embed_shapes_and_batch_order(panns):
    waves = [_tones([440.0], 2.5, 16000), _tones([700.0], 1.0, 16000), _noise(0, 2.5, 16000)]
    out = panns.embed(waves, 16000, batch_size=2)
    assert set(out) == {"embedding", "logits"}
    assert out["embedding"].shape == (3, 2048) and out["logits"].shape == (3, 527)
    assert out["embedding"].dtype == np.float64 and out["logits"].dtype == np.float64
    assert np.isfinite(out["embedding"]).all() and (out["embedding"] >= 0).all()  # relu(fc1)
    for i, w in enumerate(waves):  # grouping equal lengths into batches keeps each clip's row
        one = panns.embed([w], 16000)
        np.testing.assert_allclose(one["embedding"][0], out["embedding"][i], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(one["logits"][0], out["logits"][i], rtol=1e-4, atol=1e-6)


def test_panns_clip_preparation_follows_audioldm(panns):
    """Mean removed, padded to 2 s at 16 kHz: a 1 s clip equals itself zero-padded to 2 s and shifted by DC."""
    w = _tones([500.0, 1500.0], 1.0, 16000)
    w = w - w.mean()
    padded = np.concatenate([w, np.zeros(16000, np.float32)])
    out = panns.embed([w, padded, w + 0.25], 16000)
    np.testing.assert_allclose(out["embedding"][1], out["embedding"][0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(out["embedding"][2], out["embedding"][0], rtol=1e-3, atol=1e-5)
    longer = panns.embed([np.concatenate([w, w, w])], 16000)["embedding"][0]
    assert not np.allclose(longer, out["embedding"][0], rtol=1e-3, atol=1e-5)  # nothing is cut
    assert A.audioldm_prepare(w, 16000).shape == (32000,)
    assert A.audioldm_prepare(np.ones(64000), 32000).shape == (32000,)


def test_panns_resamples_to_16k(panns):
    f16 = panns.embed([_tones([440.0, 1320.0], 2.5, 16000)], 16000)["embedding"][0]
    f32 = panns.embed([_tones([440.0, 1320.0], 2.5, 32000)], 32000)["embedding"][0]
    other = panns.embed([_tones([2500.0, 5000.0], 2.5, 16000)], 16000)["embedding"][0]
    same = np.linalg.norm(f32 - f16) / np.linalg.norm(f16)
    diff = np.linalg.norm(other - f16) / np.linalg.norm(f16)
    assert same < 0.05 < diff


def test_embed_rejects_bad_clips(panns, vggish):
    with pytest.raises(InputError):
        panns.embed([], 16000)
    with pytest.raises(InputError, match="mono"):
        panns.embed([np.zeros((2, 16000), np.float32)], 16000)
    with pytest.raises(InputError, match="NaN"):
        vggish.embed([np.full(16000, np.nan, np.float32)], 16000)
    with pytest.raises(InputError, match="sample rate"):
        panns.embed([np.zeros(16000, np.float32)], 0)


# ------------------------------------------------------------------ VGGish embeddings


def test_vggish_frames_and_pooling(vggish):
    waves = [_tones([440.0], 3.0, 16000), _tones([800.0], 0.5, 16000), _noise(1, 2.0, 16000)]
    per_clip = vggish.embed_clips(waves, 16000)
    # 3 s -> 298 STFT frames of 25 ms every 10 ms -> 3 whole 0.96 s examples; 0.5 s -> none; 2 s -> 2
    assert [c.shape for c in per_clip] == [(3, 128), (0, 128), (2, 128)]
    pooled = vggish.embed(waves, 16000)
    assert pooled.shape == (5, 128) and pooled.dtype == np.float64
    np.testing.assert_array_equal(pooled, np.concatenate(per_clip))
    assert (pooled < 0).any()  # the final ReLU is removed (FAD's use_activation=False)


def test_vggish_is_torchvggish_without_last_relu_or_pca(vggish, vggish_file):
    from torchvggish import vggish_input
    from torchvggish.torchvggish import VGG, make_layers

    reference = VGG(make_layers(), postprocess=False)  # with its final ReLU
    reference.load_state_dict(torch.load(vggish_file, weights_only=True))
    w = _tones([300.0, 900.0], 2.0, 22050)
    with torch.no_grad():  # torchvggish resamples with resampy itself
        theirs = reference.eval()(vggish_input.waveform_to_examples(w.astype(np.float64), 22050).detach())
    ours = vggish.embed([w], 22050)
    np.testing.assert_allclose(np.maximum(ours, 0.0), theirs.double().numpy(), rtol=1e-4, atol=1e-6)


def test_vggish_resamples_to_16k(vggish):
    f16 = vggish.embed([_tones([440.0, 1320.0], 2.0, 16000)], 16000)
    f32 = vggish.embed([_tones([440.0, 1320.0], 2.0, 32000)], 32000)
    other = vggish.embed([_tones([2500.0, 5000.0], 2.0, 16000)], 16000)
    assert f16.shape == f32.shape == (2, 128)
    same = np.linalg.norm(f32 - f16) / np.linalg.norm(f16)
    diff = np.linalg.norm(other - f16) / np.linalg.norm(f16)
    assert same < 0.05 < diff


# ------------------------------------------------------------------ IS / KL / FD


def test_inception_score_hand_values():
    same = np.tile(np.array([[0.2, 0.3, 0.5]]), (12, 1))
    mean, std = A.inception_score(same, splits=3, probs=True)
    assert mean == pytest.approx(1.0) and std == pytest.approx(0.0, abs=1e-12)
    one_hot = np.eye(20)
    assert A.inception_score(one_hot, splits=1, probs=True) == pytest.approx((20.0, 0.0))
    assert A.inception_score(one_hot, splits=4, probs=True) == pytest.approx((5.0, 0.0))
    # logits: softmax of 60 * one-hot is one-hot to ~1e-24
    assert A.inception_score(60.0 * np.eye(20), splits=2) == pytest.approx((10.0, 0.0), rel=1e-9)
    # two classes, rows [1, 0] and [0.5, 0.5], one split: q = [0.75, 0.25]
    kl_rows = [np.log(1 / 0.75), 0.5 * np.log(0.5 / 0.75) + 0.5 * np.log(0.5 / 0.25)]
    got = A.inception_score(np.array([[1.0, 0.0], [0.5, 0.5]]), splits=1, probs=True)
    assert got == pytest.approx((np.exp(np.mean(kl_rows)), 0.0))


def test_inception_score_shuffles_with_seed_2020():
    logits = np.random.default_rng(3).normal(size=(30, 7)) * 3
    n, splits = 30, 4
    x = logits[np.random.RandomState(2020).permutation(n)]
    p = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    scores = []
    for i in range(splits):
        c = p[i * n // splits : (i + 1) * n // splits]
        scores.append(np.exp(np.mean(np.sum(c * (np.log(c) - np.log(c.mean(axis=0))), axis=1))))
    assert A.inception_score(logits, splits=splits) == pytest.approx((np.mean(scores), np.std(scores)))
    assert A.inception_score(logits, splits=splits, shuffle=False) != pytest.approx(
        (np.mean(scores), np.std(scores))
    )
    with pytest.raises(InputError):
        A.inception_score(logits[:3], splits=4)


def test_inception_score_matches_audioldm_eval():
    isc = _audioldm_metric("isc")
    logits = np.random.default_rng(4).normal(size=(53, 527)) * 4
    want = isc.calculate_isc(
        {"logits": torch.from_numpy(logits).float()}, "logits", rng_seed=2020, samples_shuffle=True, splits=10
    )
    got = A.inception_score(logits.astype(np.float32), splits=10)
    assert got == pytest.approx((want["inception_score_mean"], want["inception_score_std"]), rel=1e-6)


def test_kl_divergence_hand_and_scipy_values():
    from scipy.special import softmax
    from scipy.stats import entropy

    rng = np.random.default_rng(5)
    gen, ref = rng.normal(size=(6, 9)) * 2, rng.normal(size=(6, 9)) * 2
    want = np.mean([entropy(r, g) for r, g in zip(softmax(ref, axis=1), softmax(gen, axis=1), strict=True)])
    assert A.kl_divergence(gen, ref, eps=0.0) == pytest.approx(want, rel=1e-10)
    assert A.kl_divergence(ref, ref, eps=0.0) == pytest.approx(0.0, abs=1e-12)
    pg, pr = softmax(gen, axis=1), softmax(ref, axis=1)
    hand = np.sum(pr * (np.log(pr) - np.log(pg + 1e-6))) / 6
    assert A.kl_divergence(gen, ref) == pytest.approx(hand, rel=1e-10)
    sg, sr = 1 / (1 + np.exp(-gen)), 1 / (1 + np.exp(-ref))
    hand_sig = np.sum(sr * (np.log(sr) - np.log(sg + 1e-6))) / 6
    assert A.kl_divergence(gen, ref, kind="sigmoid") == pytest.approx(hand_sig, rel=1e-10)
    with pytest.raises(InputError, match="paired"):
        A.kl_divergence(gen, ref[:5])
    with pytest.raises(InputError, match="kind"):
        A.kl_divergence(gen, ref, kind="tanh")


def test_kl_divergence_matches_audioldm_eval():
    kl = _audioldm_metric("kl")
    rng = np.random.default_rng(6)
    gen, ref = rng.normal(size=(8, 527)) * 3, rng.normal(size=(8, 527)) * 3
    names = [f"{i}.wav" for i in range(8)]
    want, _, _ = kl.calculate_kl(
        {"logits": torch.from_numpy(gen), "file_path_": names},
        {"logits": torch.from_numpy(ref), "file_path_": names},
        "logits",
        same_name=True,
    )
    assert A.kl_divergence(gen, ref) == pytest.approx(want["kullback_leibler_divergence_softmax"], rel=1e-9)
    assert A.kl_divergence(gen, ref, kind="sigmoid") == pytest.approx(
        want["kullback_leibler_divergence_sigmoid"], rel=1e-9
    )


def test_fd_on_panns_embeddings(panns):
    """FD is frechet.py's distance on the Cnn14 embeddings; checked on 128 of the 2048 dimensions, since
    scipy's sqrtm of a 2048 x 2048 product takes ~15 s on one core (the end-to-end test runs one)."""
    fid = _audioldm_metric("fid")
    a = panns.embed(
        [_tones([f], 2.0, 16000) + _noise(i, 2.0, 16000) for i, f in enumerate([300, 600, 900, 1200])], 16000
    )
    b = panns.embed([_noise(10 + i, 2.0, 16000) for i in range(4)], 16000)
    ea, eb = a["embedding"][:, :128], b["embedding"][:, :128]
    assert abs(frechet_distance(ea, ea)) < 1e-6 * np.trace(np.cov(ea.T))
    fd = frechet_distance(ea, eb)
    assert fd > 0
    want = fid.calculate_fid({"2048": torch.from_numpy(ea)}, {"2048": torch.from_numpy(eb)}, "2048")
    assert fd == pytest.approx(want["frechet_distance"], rel=1e-6)


# ------------------------------------------------------------------ end to end


def test_text_to_audio_metrics_end_to_end(panns, vggish, monkeypatch):
    import nextgpt.eval.metrics.frechet as frechet_mod

    gen = [_tones([200.0 * (i + 1)], 2.0, 32000) + _noise(i, 2.0, 32000)[:64000] for i in range(4)]
    ref = [_noise(20 + i, 2.5, 16000) + _tones([300.0 * (i + 1)], 2.5, 16000) for i in range(4)]
    out = A.text_to_audio_metrics(gen, 32000, ref, 16000, panns=panns, vggish=vggish, is_splits=2)
    assert set(out) == {"fd", "is", "is_std", "kl", "kl_sigmoid", "fad"}
    assert all(isinstance(v, float) and np.isfinite(v) for v in out.values())
    assert out["fd"] > 0 and out["fad"] > 0 and out["kl_sigmoid"] > 0
    assert 1.0 <= out["is"] <= 2.0  # each split holds 2 clips

    # the pieces, by hand: the same preparation, then the metric functions
    g = [A.audioldm_prepare(w, 32000) for w in gen]
    r = [A.audioldm_prepare(w, 16000) for w in ref]
    fg, fr = panns.embed(g, 16000), panns.embed(r, 16000)
    assert out["kl"] == pytest.approx(A.kl_divergence(fg["logits"], fr["logits"]), rel=1e-6)
    assert out["kl_sigmoid"] == pytest.approx(
        A.kl_divergence(fg["logits"], fr["logits"], kind="sigmoid"), rel=1e-6
    )
    assert (out["is"], out["is_std"]) == pytest.approx(A.inception_score(fg["logits"], splits=2), rel=1e-6)
    assert out["fad"] == pytest.approx(
        frechet_distance(vggish.embed(g, 16000), vggish.embed(r, 16000)), rel=1e-6
    )
    # KL of a clip with itself is the eps term alone: sum_c p (log p - log(p + 1e-6)) ~ -1e-6 * classes
    p = np.exp(fr["logits"]) / np.exp(fr["logits"]).sum(axis=1, keepdims=True)
    self_kl = np.sum(p * (np.log(p) - np.log(p + 1e-6))) / 4
    assert A.kl_divergence(fr["logits"], fr["logits"]) == pytest.approx(self_kl, rel=1e-9)
    assert self_kl == pytest.approx(-527e-6, rel=0.05)

    monkeypatch.setattr(frechet_mod, "frechet_distance", lambda x, y: float(np.abs(x.mean() - y.mean())))
    no_fad = A.text_to_audio_metrics(gen, 32000, ref, 16000, panns=panns, vggish=None, is_splits=2)
    assert set(no_fad) == {"fd", "is", "is_std", "kl", "kl_sigmoid"}
    assert no_fad["kl"] == pytest.approx(out["kl"], rel=1e-6)


def test_text_to_audio_metrics_input_errors(panns):
    clips = [_noise(i, 2.0, 16000) for i in range(3)]
    with pytest.raises(InputError, match="paired"):
        A.text_to_audio_metrics(clips, 16000, clips[:2], 16000, panns=panns, vggish=None, is_splits=1)
    with pytest.raises(InputError, match="is_splits"):
        A.text_to_audio_metrics(clips, 16000, clips, 16000, panns=panns, vggish=None)
    with pytest.raises(InputError, match="at least 2"):
        A.text_to_audio_metrics(clips[:1], 16000, clips[:1], 16000, panns=panns, vggish=None, is_splits=1)
