"""Evaluation throughput: samples/s of every ``nextgpt eval`` task, and the share of its time spent
in generation vs metric computation.

Each task runs through :func:`nextgpt.eval.runner.run_task`, the code ``nextgpt eval`` runs, on the
small standard-format fixture datasets (:mod:`nextgpt.eval.fixtures`: 3-4 samples per task,
repeated ``--repeat`` times with distinct ids so a batch is full). Generation time is the time of
the ``generate_batch`` calls (the per-sample seconds the predictions log records). Metric time is
the scoring that follows: the Java tokenizer and METEOR for captions, feature extraction and the
Frechet distances for media tasks. Feature extractors are the fixtures' tiny stand-ins (a 2048-d
TorchScript "Inception", a tiny CLIP, random-weight PANNs/VGGish of the true architectures), so the
metric share shown for media tasks undercounts what real extractors cost.

    python -m bench.eval_throughput --preset small --device cpu
    python -m bench.eval_throughput --preset tiny --tasks vizwiz --json out.json     # a smoke run
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from bench.cli import cli_main, setup
from bench.hardware import env_info
from bench.report import Report

CAPTION_TASKS = ("coco-caption", "flickr30k-caption", "nocaps-caption", "msrvtt-caption", "audiocaps-caption")
QA_TASKS = ("vqav2", "okvqa", "vizwiz", "msvd-qa", "msrvtt-qa")
GENERATE_TASKS = ("coco-t2i", "audiocaps-t2a", "msrvtt-t2v")


def parse_args(argv):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    ap.add_argument("--preset", default="small", help="the model preset (default small)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    ap.add_argument("--tasks", nargs="*", default=None, help="tasks to run (default: all)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--repeat", type=int, default=2, help="copies of each fixture sample (distinct ids)")
    ap.add_argument("--steps", type=int, default=None, help="diffusion steps of media tasks")
    ap.add_argument("--json", default=None, metavar="OUT")
    ap.add_argument("--threads", type=int, default=None)
    return ap.parse_args(argv)


def _repeat_json(path: Path, n: int, kind: str) -> None:
    """Write ``n`` copies of every sample of an annotation file, each with its own id."""
    data = json.loads(path.read_text())
    if kind == "coco":
        images = [{**im, "id": f"{im['id']}-{k}"} for k in range(n) for im in data["images"]]
        anns = [{**a, "image_id": f"{a['image_id']}-{k}"} for k in range(n) for a in data["annotations"]]
        data = {**data, "images": images, "annotations": anns}
    elif kind == "karpathy":
        data["images"] = [{**im, "cocoid": f"{im['cocoid']}-{k}"} for k in range(n) for im in data["images"]]
    elif kind == "vqa_q":
        data["questions"] = [
            {**q, "question_id": f"{q['question_id']}-{k}"} for k in range(n) for q in data["questions"]
        ]
    elif kind == "vqa_a":
        data["annotations"] = [
            {**a, "question_id": f"{a['question_id']}-{k}"} for k in range(n) for a in data["annotations"]
        ]
    else:  # video QA
        data = [{**r, "id": f"{r['id']}-{k}"} for k in range(n) for r in data]
    path.write_text(json.dumps(data))


def _cases(d: dict, repeat: int) -> dict[str, dict]:
    for key, kind in (
        ("coco", "coco"),
        ("karpathy", "karpathy"),
        ("vqa_questions", "vqa_q"),
        ("vqa_annotations", "vqa_a"),
        ("msrvtt_qa", "videoqa"),
    ):
        _repeat_json(d[key], repeat, kind)
    images_parent = d["images"].parent
    return {
        "coco-caption": {"data": d["karpathy"], "media": images_parent},
        "flickr30k-caption": {"data": d["karpathy"], "media": images_parent},
        "nocaps-caption": {"data": d["coco"], "media": d["images"]},
        "msrvtt-caption": {"data": d["msrvtt"], "media": d["videos"]},
        "audiocaps-caption": {"data": d["audiocaps"], "media": d["audio"], "metrics": ["cider", "bleu4"]},
        "vqav2": {"data": d["vqa_questions"], "media": d["images"], "answers": d["vqa_annotations"]},
        "okvqa": {"data": d["vqa_questions"], "media": d["images"], "answers": d["vqa_annotations"]},
        "vizwiz": {"data": d["vizwiz"], "media": d["images"]},
        "msvd-qa": {"data": d["msrvtt_qa"], "media": d["videos"]},
        "msrvtt-qa": {"data": d["msrvtt_qa"], "media": d["videos"]},
        "coco-t2i": {"data": d["coco"], "media": d["images"]},
        "audiocaps-t2a": {"data": d["audiocaps"], "media": d["audio"]},
        "msrvtt-t2v": {"data": d["msrvtt"], "media": d["videos"]},
    }


def run(args) -> Report:
    import torch

    from nextgpt import NextGPT
    from nextgpt.eval import fixtures
    from nextgpt.eval.runner import EvalOptions, ExtractorPaths, run_task

    args.size = "preset"
    device, dtypes = setup(args)
    model = NextGPT.from_preset(args.preset, device=str(device))
    root = Path(tempfile.mkdtemp(prefix="eval-bench-"))
    rows = []
    try:
        d = {
            **fixtures.build_image_data(root / "img"),
            **fixtures.build_video_data(root / "vid"),
            **fixtures.build_audio_data(root / "aud"),
        }
        extractors = ExtractorPaths(
            inception=str(fixtures.build_tiny_inception(root / "inception.pt")),
            clip=str(fixtures.build_tiny_clip(root / "clip")),
        )
        cases = _cases(d, args.repeat)
        names = args.tasks or list(cases)
        if "audiocaps-t2a" in names:
            _audio_extractors(root, extractors)
        unknown = [n for n in names if n not in cases]
        if unknown:
            raise SystemExit(f"unknown tasks {unknown}; choose from {', '.join(cases)}")
        options = EvalOptions(
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            num_inference_steps=args.steps,
            is_splits=1,  # the fixture has 3 clips; AudioLDM's 10 splits need at least 10
        )
        for name in names:
            case = dict(cases[name])
            result = run_task(
                name,
                model,
                case.pop("data"),
                root / "results",
                model_name=f"preset:{args.preset}",
                options=options,
                extractors=extractors,
                restart=True,
                **case,
            )
            t = result["timing"]
            rows.append(
                {
                    "task": name,
                    "samples": result["num_samples"],
                    "samples_per_s": t["samples_per_s"],
                    "generation_s": t["generation_s"],
                    "metrics_s": t["metrics_s"],
                    "generation_share": t["generation_share"],
                }
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    total_gen = sum(r["generation_s"] for r in rows)
    total_metric = sum(r["metrics_s"] for r in rows)
    return Report(
        benchmark="eval_throughput",
        size=f"preset {args.preset}",
        env=env_info(device, dtypes),
        columns=[
            ("task", "task"),
            ("samples", "samples"),
            ("samples_per_s", "samples/s (generation)"),
            ("generation_s", "generation s"),
            ("metrics_s", "metrics s"),
            ("generation_share", "generation share"),
        ],
        rows=rows,
        summary={
            "tasks run": len(rows),
            "generation share over all tasks": total_gen / (total_gen + total_metric) if rows else 0.0,
            "torch threads": torch.get_num_threads(),
        },
        config={
            "preset": args.preset,
            "batch_size": args.batch_size,
            "max_new_tokens": args.max_new_tokens,
            "repeat": args.repeat,
            "steps": args.steps,
        },
        notes=[
            "fixture datasets (nextgpt.eval.fixtures), samples repeated --repeat times with distinct ids",
            "extractors are tiny stand-ins: the metric share of media tasks undercounts real extractors",
        ],
    )


def _audio_extractors(root: Path, extractors) -> None:
    """Random-weight PANNs and VGGish checkpoints of the true architectures."""
    from nextgpt.eval.fixtures import build_random_audio_extractors

    panns, vggish = build_random_audio_extractors(root / "audio-extractors")
    extractors.panns, extractors.vggish = str(panns), str(vggish)


def main(argv=None):
    return cli_main(parse_args, run, argv)


if __name__ == "__main__":
    main()
