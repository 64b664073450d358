"""The evaluation harness: metrics against independent values, readers of the standard formats,
every task end to end on ``tiny`` with fixture data, resume after a killed run, clear errors."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from nextgpt.errors import ExtractorWeightsError, InputError
from nextgpt.eval import readers
from nextgpt.eval.fixtures import (
    build_audio_data,
    build_image_data,
    build_tiny_clip,
    build_tiny_inception,
    build_video_data,
)
from nextgpt.eval.metrics import visual
from nextgpt.eval.metrics.captioning import caption_scores
from nextgpt.eval.metrics.frechet import frechet_distance, frechet_distance_from_stats
from nextgpt.eval.runner import EvalOptions, ExtractorPaths, read_answers, run_task
from nextgpt.eval.tasks import TASKS

needs_java = pytest.mark.skipif(
    shutil.which("java") is None, reason="caption metrics need Java (make install)"
)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    out = {
        **build_image_data(root / "img"),
        **build_video_data(root / "vid"),
        **build_audio_data(root / "aud"),
    }
    out["inception"] = build_tiny_inception(root / "inception-tiny.pt", feature_dim=64)
    out["clip"] = build_tiny_clip(root / "clip-tiny")
    return out


# ------------------------------------------------------------------------------------ Frechet distance


def test_frechet_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_matches_the_closed_form_of_two_gaussians():
    # diagonal Gaussians: d^2 = |mu_a - mu_b|^2 + sum_i (s_a + s_b - 2 sqrt(s_a s_b)), s = variances
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s_a, s_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    closed = float(((mu_a - mu_b) ** 2).sum() + (s_a + s_b - 2 * np.sqrt(s_a * s_b)).sum())
    assert closed == pytest.approx(1 + 6.25 + (1 + 9 - 6) + (4 + 1 - 4) + 0)
    assert frechet_distance_from_stats(mu_a, np.diag(s_a), mu_b, np.diag(s_b)) == pytest.approx(
        closed, rel=1e-9
    )
    # and from samples, within sampling error
    rng = np.random.default_rng(1)
    a = mu_a + rng.normal(size=(200_000, 3)) * np.sqrt(s_a)
    b = mu_b + rng.normal(size=(200_000, 3)) * np.sqrt(s_b)
    assert frechet_distance(a, b) == pytest.approx(closed, rel=0.02)


def test_frechet_agrees_with_torchmetrics_fid_on_the_same_features():
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    class Identity(torch.nn.Module):
        num_features = 16

        def forward(self, x):
            return x

    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 16)), rng.normal(0.3, 1.5, size=(300, 16))
    metric = FrechetInceptionDistance(feature=Identity(), normalize=True).double()
    metric.update(torch.from_numpy(a), real=True)
    metric.update(torch.from_numpy(b), real=False)
    assert frechet_distance(a, b) == pytest.approx(float(metric.compute()), rel=1e-6)


def test_frechet_svd_form_equals_sqrtm_and_is_exact_below_full_rank():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(300, 24)), rng.normal(0.5, 0.7, size=(200, 24)) @ rng.normal(size=(24, 24))
    full = frechet_distance_from_stats(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert frechet_distance(a, b) == pytest.approx(full, rel=1e-9)  # both exact at full rank (N > D: QR)
    few_a, few_b = a[:10], b[:15]  # N < D: no QR
    full = frechet_distance_from_stats(
        few_a.mean(0), np.cov(few_a, rowvar=False), few_b.mean(0), np.cov(few_b, rowvar=False)
    )
    assert frechet_distance(few_a, few_b) == pytest.approx(full, rel=1e-6)
    # 6 samples of 2048-d features (singular covariances): a set against itself is exactly 0, a shift
    # by 1 in every dimension is exactly |1|^2 * 2048
    few = rng.normal(size=(6, 2048))
    assert frechet_distance(few, few) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(few, few + 1.0) == pytest.approx(2048.0, rel=1e-9)


def test_frechet_refuses_bad_features():
    with pytest.raises(InputError, match="N >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(InputError, match="NaN"):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))


# ------------------------------------------------------------------------------------ caption metrics


def _cider_d_oracle(cands: dict[str, list[str]], refs: dict[str, list[list[str]]]) -> float:
    """CIDEr-D written from its definition (Vedantam et al. 2015, the coco-caption variant): tf-idf
    n-gram vectors, n = 1..4, idf over the references' documents, clipped candidate counts, Gaussian
    length penalty sigma = 6, x10, mean over references, over n, over images."""
    n_docs = len(refs)

    def grams(words, n):
        return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))

    scores = []
    for key, cand in cands.items():
        per_n = []
        for n in range(1, 5):
            df = Counter(g for r in refs.values() for g in set().union(*(grams(w, n) for w in r)))
            ref_len = math.log(float(n_docs))

            def vec(words, n=n, df=df, ref_len=ref_len):
                c = grams(words, n)
                return {g: tf * (ref_len - math.log(max(1.0, df[g]))) for g, tf in c.items()}

            vc = vec(cand)
            sims = []
            for r in refs[key]:
                vr = vec(r)
                num = sum(min(vc[g], vr[g]) * vr[g] for g in vc if g in vr)
                norm_c = math.sqrt(sum(v * v for v in vc.values()))
                norm_r = math.sqrt(sum(v * v for v in vr.values()))
                val = num / (norm_c * norm_r) if norm_c and norm_r else 0.0
                val *= math.exp(-((len(cand) - len(r)) ** 2) / (2 * 6.0**2))
                sims.append(val)
            per_n.append(sum(sims) / len(sims) * 10.0)
        scores.append(sum(per_n) / 4)
    return sum(scores) / len(scores)


REFS = {
    "1": ["a man riding a horse on the beach", "a person rides a horse", "a man on a horse near the sea"],
    "2": ["two dogs play in the snow", "dogs playing in snow", "a pair of dogs in a snowy field"],
    "3": ["a plate of food on a table", "food served on a white plate", "a table with a meal"],
}
CANDS = {"1": "a man rides a horse", "2": "a dog in the snow", "3": "a plate with food"}


@needs_java
def test_caption_metrics_against_hand_values_and_an_oracle():
    got = caption_scores(CANDS, REFS, ["bleu1", "bleu4", "meteor", "cider"])
    # BLEU-1 by hand: candidate words 5+5+4 = 14; clipped matches against any reference: (a, man,
    # rides, a, horse) 5, (a, in, the, snow; "dog" is only "dogs") 4, (a, plate, with, food) 4 -> 13/14;
    # closest reference lengths 5 + 4 + 5 = 14, not shorter than the candidates: brevity penalty 1.
    assert got["bleu1"] == pytest.approx(13 / 14, rel=1e-6)
    oracle = _cider_d_oracle(
        {k: v.split() for k, v in CANDS.items()}, {k: [r.split() for r in rs] for k, rs in REFS.items()}
    )
    assert got["cider"] == pytest.approx(oracle, rel=1e-6)
    assert 0.0 < got["meteor"] < 1.0 and 0.0 <= got["bleu4"] < got["bleu1"]


@needs_java
def test_a_candidate_equal_to_its_references_scores_the_maximum():
    refs = {
        "a": ["a cat on a mat today", "a cat on a mat today"],
        "b": ["dogs run in a park now", "dogs run in a park now"],
    }
    got = caption_scores(
        {"a": "A cat on a mat today.", "b": "dogs run in a park now"}, refs, ["bleu4", "meteor"]
    )
    assert got["bleu4"] == pytest.approx(1.0, rel=1e-6)  # PTB tokenizer lower-cases, drops punctuation
    assert got["meteor"] == pytest.approx(1.0, abs=1e-3)


def test_caption_metric_errors():
    with pytest.raises(InputError, match="no references"):
        caption_scores({"x": "a"}, {"y": ["b"]})
    with pytest.raises(InputError, match="unknown caption metric"):
        caption_scores({"x": "a"}, {"x": ["b"]}, ["rouge"])
    with pytest.raises(InputError, match="no predictions"):
        caption_scores({}, {"x": ["b"]})


@needs_java
def test_spice_without_corenlp_names_the_variable(monkeypatch):
    import pycocoevalcap.spice as spice_pkg

    lib = Path(spice_pkg.__file__).parent / "lib"
    if (lib / "stanford-corenlp-3.6.0.jar").is_file():
        pytest.skip("CoreNLP 3.6.0 is installed in pycocoevalcap here")
    monkeypatch.delenv("NEXTGPT_CORENLP_DIR", raising=False)
    with pytest.raises(ExtractorWeightsError, match="NEXTGPT_CORENLP_DIR"):
        caption_scores({"x": "a cat"}, {"x": ["a cat"]}, ["spider"])


# ------------------------------------------------------------------------------------ image / video metrics


def test_extractors_load_only_local_files(tmp_path, monkeypatch):
    monkeypatch.delenv("NEXTGPT_INCEPTION", raising=False)
    monkeypatch.delenv("NEXTGPT_CLIP", raising=False)
    with pytest.raises(ExtractorWeightsError, match="NEXTGPT_INCEPTION"):
        visual.InceptionFID.from_path(None)
    with pytest.raises(ExtractorWeightsError, match="not found"):
        visual.InceptionFID.from_path(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not torchscript")
    with pytest.raises(ExtractorWeightsError, match="TorchScript"):
        visual.InceptionFID.from_path(tmp_path / "bad.pt")
    with pytest.raises(ExtractorWeightsError, match="NEXTGPT_CLIP"):
        visual.CLIPEmbedder.from_path(None)


def test_inception_features_and_fid(data):
    from PIL import Image

    inc = visual.InceptionFID.from_path(data["inception"])
    assert len(inc.sha256) == 64
    imgs = [Image.open(p) for p in sorted(data["images"].iterdir())]
    f = inc.features(imgs)
    assert f.shape == (4, 64) and f.dtype == np.float64
    assert visual.resize_clean(imgs[0]).shape == (299, 299, 3)
    assert visual.fid(imgs, imgs[::-1], inc) == pytest.approx(0.0, abs=1e-6)
    shifted = [Image.fromarray(255 - np.asarray(im)) for im in imgs]
    assert visual.fid(imgs, shifted, inc) > 1e-3


def test_features_read_images_lazily_one_batch_at_a_time(data):
    inc = visual.InceptionFID.from_path(data["inception"])
    pulled = []
    original = inc.module

    def module(x, return_features=True):
        assert len(pulled) <= 8 * (len(calls) + 1)  # never more than the batch in flight
        calls.append(x.shape[0])
        return original(x, return_features=return_features)

    calls: list[int] = []
    inc.module = module

    def images():
        for i in range(20):
            pulled.append(i)
            yield np.full((16, 16, 3), i * 10, dtype=np.uint8)

    assert inc.features(images(), batch_size=8).shape == (20, 64)
    assert calls == [8, 8, 4]


def test_mixed_rate_audio_is_resampled_to_16k():
    from nextgpt.eval.runner import _one_rate

    waves, rate = _one_rate([(np.zeros(16000, np.float32), 16000), (np.zeros(16000, np.float32), 16000)])
    assert rate == 16000 and [len(w) for w in waves] == [16000, 16000]
    waves, rate = _one_rate([(np.zeros(44100, np.float32), 44100), (np.zeros(32000, np.float32), 32000)])
    assert rate == 16000 and [len(w) for w in waves] == [16000, 16000]


def test_clip_score_and_clipsim_against_the_clip_forward(data):
    import torch

    clip = visual.CLIPEmbedder.from_path(data["clip"])
    rng = np.random.default_rng(3)
    imgs = [rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8) for _ in range(5)]
    caps = ["a cat on a sofa", "a dog", "two dogs play in the snow", "a red square", "a green circle"]
    # the independent value: CLIPModel's own forward, logits_per_image = exp(logit_scale) * cosine
    inputs = clip.processor(text=caps, images=imgs, padding=True)
    with torch.no_grad():
        out = clip.model(**inputs)
    scale = clip.model.logit_scale.detach().exp()
    cos = (out.logits_per_image / scale).diag().numpy()
    assert visual.clip_score(imgs, caps, clip) == pytest.approx(
        max(100 * cos.mean(), 0.0), rel=1e-4, abs=1e-4
    )
    videos = [np.stack(imgs[:3]), np.stack(imgs[3:])]
    per_frame = (out.logits_per_image / scale).numpy()
    expected = np.mean([per_frame[:3, 0].mean(), per_frame[3:, 3].mean()])
    assert visual.clipsim(videos, [caps[0], caps[3]], clip) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    with pytest.raises(InputError, match="as many"):
        visual.clipsim(videos, caps, clip)


# ------------------------------------------------------------------------------------ readers


def test_readers_parse_the_standard_formats(data):
    karpathy = readers.read_coco_captions(data["karpathy"], data["images"].parent, split="test")
    assert [s.id for s in karpathy] == ["100", "101", "102", "103"] and len(karpathy[0].references) == 3
    coco = readers.read_coco_captions(data["coco"], data["images"])
    assert [s.media for s in coco] == [s.media for s in karpathy]
    vqa = readers.read_vqa(data["vqa_questions"], data["vqa_annotations"], data["images"])
    assert (
        vqa[0].id == "1000"
        and len(vqa[0].references) == 10
        and vqa[0].media.name == "COCO_val2014_000000000100.jpg"
    )
    vizwiz = readers.read_vqa(data["vizwiz"], None, data["images"])
    assert len(vizwiz) == 4 and vizwiz[0].question == "What color is this?"
    msrvtt = readers.read_msrvtt_captions(data["msrvtt"], data["videos"], split="test")
    assert [s.id for s in msrvtt] == ["video7010", "video7011", "video7012"]
    qa = readers.read_video_qa(data["msrvtt_qa"], data["videos"])
    assert qa[1].media.name == "video7011.mp4" and qa[1].references == ["2"]
    ac = readers.read_audiocaps(data["audiocaps"], data["audio"])
    assert [len(s.references) for s in ac] == [2, 3, 2] and ac[0].media.name == "yt000abc.wav"


def test_reader_errors_name_the_problem(data, tmp_path):
    with pytest.raises(InputError, match="not found"):
        readers.read_coco_captions(tmp_path / "missing.json", data["images"])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match="not readable JSON"):
        readers.read_coco_captions(tmp_path / "bad.json", data["images"])
    (tmp_path / "nofield.json").write_text(json.dumps({"images": [{"id": 1}], "annotations": []}))
    with pytest.raises(InputError, match="file_name"):
        readers.read_coco_captions(tmp_path / "nofield.json", data["images"])
    (tmp_path / "q.json").write_text(
        json.dumps({"questions": [{"question_id": 5, "image_id": 1, "question": "?"}]})
    )
    (tmp_path / "a.json").write_text(json.dumps({"annotations": []}))
    with pytest.raises(InputError, match="question_id 5 has no entry"):
        readers.read_vqa(tmp_path / "q.json", tmp_path / "a.json", data["images"])
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="columns"):
        readers.read_audiocaps(tmp_path / "bad.csv", data["audio"])
    samples = readers.read_coco_captions(data["coco"], tmp_path)
    with pytest.raises(InputError, match="4 image file"):
        readers.check_media(samples, "image")


# ------------------------------------------------------------------------------------ tasks end to end


def _run(model, tmp_path, task, data_file, media, **kw):
    return run_task(
        task,
        model,
        data_file,
        tmp_path / "results",
        media=media,
        options=kw.pop("options", EvalOptions(batch_size=3, max_new_tokens=8)),
        **kw,
    )


CAPTION_CASES = [
    ("coco-caption", "karpathy", "images_parent", None),
    ("flickr30k-caption", "karpathy", "images_parent", None),
    ("nocaps-caption", "coco", "images", None),
    ("msrvtt-caption", "msrvtt", "videos", None),
    ("audiocaps-caption", "audiocaps", "audio", ["cider", "bleu4"]),
]


@needs_java
@pytest.mark.parametrize(("task", "file_key", "media_key", "metrics"), CAPTION_CASES)
def test_caption_tasks_end_to_end(tiny_model, data, tmp_path, task, file_key, media_key, metrics):
    media = data["images"].parent if media_key == "images_parent" else data[media_key]
    result = _run(tiny_model, tmp_path, task, data[file_key], media, metrics=metrics)
    expected = metrics or list(TASKS[task].metrics)
    assert list(result["metrics"]) == expected
    for m in expected:
        entry = result["metrics"][m]
        assert math.isfinite(entry["value"]) and entry["reported"] == pytest.approx(
            entry["value"] * entry["scale"]
        )
    task_dir = tmp_path / "results" / task
    assert len(read_answers(task_dir / "predictions.jsonl")) == result["num_samples"]
    saved = json.loads((task_dir / "results.json").read_text())
    assert (
        saved["model"]["fingerprint"] == result["model"]["fingerprint"]
        and saved["versions"]["pycocoevalcap"] == "1.2"
    )
    report = (task_dir / "results.md").read_text()
    assert "NExT-GPT (paper)" in report and "pycocoevalcap CIDEr-D" in report
    assert saved["metrics"][expected[0]]["definition"]
    assert saved["tools"]["java"].startswith(("openjdk", "java"))


@pytest.mark.parametrize(
    ("task", "file_key", "answers_key", "media_key"),
    [
        ("vqav2", "vqa_questions", "vqa_annotations", "images"),
        ("okvqa", "vqa_questions", "vqa_annotations", "images"),
        ("vizwiz", "vizwiz", None, "images"),
        ("msvd-qa", "msrvtt_qa", None, "videos"),
        ("msrvtt-qa", "msrvtt_qa", None, "videos"),
    ],
)
def test_qa_tasks_end_to_end(tiny_model, data, tmp_path, task, file_key, answers_key, media_key):
    answers = data[answers_key] if answers_key else None
    result = _run(tiny_model, tmp_path, task, data[file_key], data[media_key], answers=answers)
    (metric,) = result["metrics"]
    assert 0.0 <= result["metrics"][metric]["value"] <= 1.0 and result["num_samples"] == 4


def test_qa_accuracy_is_scored_from_the_logged_answers(tiny_model, data, tmp_path):
    # a fixed log: the answers "yes" (7/10 annotators), "2" (7/10), "blue" (0/10), "maybe" (1/10)
    task_dir = tmp_path / "results" / "vqav2"
    _run(
        tiny_model, tmp_path, "vqav2", data["vqa_questions"], data["images"], answers=data["vqa_annotations"]
    )
    log = task_dir / "predictions.jsonl"
    fixed = ["Yes", "two", "blue", "Answer: maybe."]
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    log.write_text("".join(json.dumps({**r, "text": t}) + "\n" for r, t in zip(recs, fixed)))
    result = _run(
        tiny_model, tmp_path, "vqav2", data["vqa_questions"], data["images"], answers=data["vqa_annotations"]
    )
    # the 10 answers differ, so both sides are normalised: "Yes" -> yes (7 matches: 1.0), "two" -> 2
    # (1.0), blue 0, maybe (1 match: 9 subsets hold it, 1/3 each; 1 subset drops it: 0) -> 0.3
    assert result["metrics"]["vqa_accuracy"]["value"] == pytest.approx((1 + 1 + 0 + 0.3) / 4)


def test_generation_tasks_end_to_end(tiny_model, data, tmp_path):
    extractors = ExtractorPaths(inception=str(data["inception"]), clip=str(data["clip"]))
    r = _run(tiny_model, tmp_path, "coco-t2i", data["coco"], data["images"], extractors=extractors)
    assert set(r["metrics"]) == {"fid", "clip_score"} and r["metrics"]["fid"]["value"] >= -1e-6
    assert r["extractors"]["inception"]["sha256"] == visual.sha256_path(data["inception"])
    assert len(list((tmp_path / "results" / "coco-t2i" / "media").glob("*.png"))) == 4
    r = _run(tiny_model, tmp_path, "msrvtt-t2v", data["msrvtt"], data["videos"], extractors=extractors)
    assert set(r["metrics"]) == {"clipsim", "fid"} and -1.0 <= r["metrics"]["clipsim"]["value"] <= 1.0
    assert r["metrics"]["clipsim"]["reported"] == pytest.approx(100 * r["metrics"]["clipsim"]["value"])


def test_text_to_audio_end_to_end(tiny_model, data, tmp_path):
    from nextgpt.eval.fixtures import build_random_audio_extractors

    panns, vggish = build_random_audio_extractors(tmp_path / "extractors")
    extractors = ExtractorPaths(panns=str(panns), vggish=str(vggish))
    options = EvalOptions(batch_size=3, max_new_tokens=8, is_splits=1)
    r = _run(
        tiny_model,
        tmp_path,
        "audiocaps-t2a",
        data["audiocaps"],
        data["audio"],
        extractors=extractors,
        options=options,
    )
    assert list(r["metrics"]) == ["fd", "is", "kl", "fad"]
    assert all(math.isfinite(e["value"]) for e in r["metrics"].values())
    assert r["metrics"]["is"]["value"] >= 1.0 - 1e-9  # one split: exp(KL(p || mean p)) >= 1
    assert set(r["extractors"]) == {"panns", "vggish"}
    assert len(list((tmp_path / "results" / "audiocaps-t2a" / "media").glob("*.wav"))) == 3
    with pytest.raises(InputError, match="is_splits=10"):  # AudioLDM's 10 splits need >= 10 clips
        _run(
            tiny_model,
            tmp_path / "b",
            "audiocaps-t2a",
            data["audiocaps"],
            data["audio"],
            extractors=extractors,
        )


def test_missing_extractor_fails_before_generation(tiny_model, data, tmp_path, monkeypatch):
    monkeypatch.delenv("NEXTGPT_INCEPTION", raising=False)
    calls = []
    monkeypatch.setattr(tiny_model, "generate_batch", lambda *a, **k: calls.append(1))
    with pytest.raises(ExtractorWeightsError, match="NEXTGPT_INCEPTION"):
        _run(tiny_model, tmp_path, "coco-t2i", data["coco"], data["images"], metrics=["fid"])
    assert calls == []


def test_missing_data_files_are_clear_errors(tiny_model, data, tmp_path):
    with pytest.raises(InputError, match="not found"):
        _run(tiny_model, tmp_path, "coco-caption", tmp_path / "nope.json", data["images"])
    with pytest.raises(InputError, match="needs --answers"):
        _run(tiny_model, tmp_path, "vqav2", data["vqa_questions"], data["images"])
    with pytest.raises(InputError, match="file.*not found"):
        _run(tiny_model, tmp_path, "msrvtt-caption", data["msrvtt"], data["images"])
    with pytest.raises(InputError, match="unknown evaluation task"):
        _run(tiny_model, tmp_path, "imagenet", data["coco"], data["images"])
    with pytest.raises(InputError, match="metrics must be among"):
        _run(tiny_model, tmp_path, "vqav2", data["vqa_questions"], data["images"], metrics=["cider"])


def _eval_argv(task: str, data_file, media, *extra: str) -> list[str]:
    """``nextgpt eval TASK`` arguments on the tiny preset."""
    return ["eval", task, "--preset", "tiny", "--data", str(data_file), "--media", str(media), *extra]


class _Killed(Exception):
    pass


def test_resume_after_a_killed_run(tiny_model, data, tmp_path, monkeypatch):
    args = ("msrvtt-qa", data["msrvtt_qa"], data["videos"])
    options = EvalOptions(batch_size=1, max_new_tokens=8)
    fresh = _run(tiny_model, tmp_path / "fresh", *args, options=options)
    real = tiny_model.generate_batch
    calls: list[int] = []

    def dies_on_third(convs, **kw):
        calls.append(len(convs))
        if len(calls) == 3:
            raise _Killed
        return real(convs, **kw)

    monkeypatch.setattr(tiny_model, "generate_batch", dies_on_third)
    with pytest.raises(_Killed):
        _run(tiny_model, tmp_path, *args, options=options)
    log = tmp_path / "results" / "msrvtt-qa" / "predictions.jsonl"
    assert len(log.read_text().splitlines()) == 2
    with open(log, "a") as f:  # a kill in the middle of writing the third line
        f.write('{"id": "52", "text": "tor')
    calls.clear()
    monkeypatch.setattr(
        tiny_model, "generate_batch", lambda convs, **kw: calls.append(len(convs)) or real(convs, **kw)
    )
    resumed = _run(tiny_model, tmp_path, *args, options=options)
    assert calls == [1, 1]  # only the two unanswered samples
    assert [json.loads(x)["id"] for x in log.read_text().splitlines()] == ["50", "51", "52", "53"]
    assert resumed["metrics"] == fresh["metrics"]
    fresh_texts = {
        r["id"]: r["text"]
        for r in read_answers(tmp_path / "fresh" / "results" / "msrvtt-qa" / "predictions.jsonl").values()
    }
    assert {k: r["text"] for k, r in read_answers(log).items()} == fresh_texts


def test_a_resumed_run_must_match_its_config(tiny_model, data, tmp_path):
    args = ("msvd-qa", data["msrvtt_qa"], data["videos"])
    _run(tiny_model, tmp_path, *args)
    with pytest.raises(InputError, match="options.*--restart"):
        _run(tiny_model, tmp_path, *args, options=EvalOptions(batch_size=3, max_new_tokens=9))
    r = _run(tiny_model, tmp_path, *args, options=EvalOptions(batch_size=3, max_new_tokens=9), restart=True)
    assert r["config"]["options"]["max_new_tokens"] == 9


def test_cli_lists_and_runs_a_task(data, tmp_path, capsys):
    from nextgpt.cli import main

    assert main(["eval", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in TASKS)
    code = main(
        _eval_argv(
            "vizwiz",
            data["vizwiz"],
            data["images"],
            "--out",
            str(tmp_path / "r"),
            "--max-new-tokens",
            "4",
            "--limit",
            "2",
        )
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "vqa_accuracy:" in out and "48.4 (Table 2)" in out
    assert json.loads((tmp_path / "r" / "vizwiz" / "results.json").read_text())["num_samples"] == 2
    assert main(["eval", "vizwiz", "--preset", "tiny", "--data", str(tmp_path / "none.json")]) == 2
    assert "--data file not found" in capsys.readouterr().err


def test_a_sigkilled_cli_run_resumes_without_repeating_answers(data, tmp_path):
    """``nextgpt eval`` in its own process, killed with SIGKILL once answers are on disk, then run
    again: every sample answered exactly once, none lost."""
    import os
    import signal
    import subprocess
    import sys
    import time

    qa = [
        {"question": f"what happens in clip {i}?", "answer": "yes", "video_id": 7010 + i % 4, "id": i}
        for i in range(40)
    ]
    questions = tmp_path / "qa.json"
    questions.write_text(json.dumps(qa))
    out = tmp_path / "r"
    extra = ("--out", str(out), "--batch-size", "1", "--max-new-tokens", "32")
    cmd = [sys.executable, "-m", "nextgpt.cli", *_eval_argv("msrvtt-qa", questions, data["videos"], *extra)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = out / "msrvtt-qa" / "predictions.jsonl"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(log.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = len(read_answers(log))
    assert 2 <= before < 40
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert sorted(ids, key=int) == [str(i) for i in range(40)]  # each once
    assert json.loads((out / "msrvtt-qa" / "results.json").read_text())["num_samples"] == 40


def test_cli_checks_weights_and_java_before_loading_the_model(data, monkeypatch, capsys):
    import nextgpt.cli as cli

    monkeypatch.delenv("NEXTGPT_INCEPTION", raising=False)
    monkeypatch.setattr(cli, "_load_model", lambda args: pytest.fail("the model was loaded"))
    args = _eval_argv("coco-t2i", data["coco"], data["images"])
    assert cli.main([*args, "--metrics", "fid"]) == 2
    assert "NEXTGPT_INCEPTION" in capsys.readouterr().err
    monkeypatch.setattr("shutil.which", lambda name: None)  # no java on PATH
    args = _eval_argv("nocaps-caption", data["coco"], data["images"])
    assert cli.main(args) == 2
    assert "need Java" in capsys.readouterr().err


def test_a_run_resumes_with_another_batch_size(tiny_model, data, tmp_path, monkeypatch):
    args = ("msrvtt-qa", data["msrvtt_qa"], data["videos"])
    real = tiny_model.generate_batch
    calls: list[int] = []

    def dies_after_one_batch(convs, **kw):
        calls.append(len(convs))
        if len(calls) == 2:
            raise MemoryError  # as an out-of-memory batch would
        return real(convs, **kw)

    monkeypatch.setattr(tiny_model, "generate_batch", dies_after_one_batch)
    with pytest.raises(MemoryError):
        _run(tiny_model, tmp_path, *args, options=EvalOptions(batch_size=2, max_new_tokens=8))
    monkeypatch.setattr(tiny_model, "generate_batch", real)
    r = _run(tiny_model, tmp_path, *args, options=EvalOptions(batch_size=1, max_new_tokens=8))
    assert r["num_samples"] == 4 and r["config"]["batch_size"] == 1
