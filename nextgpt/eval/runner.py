"""Run one evaluation task: answer every sample in batches, log each answer, score, report.

Layout of ``OUT/TASK/``:

- ``run.json``: what the answers depend on (task, data files, model fingerprint, generation
  options). A resumed run must match it; another model or option set is refused (``restart=True``
  or another ``out`` starts afresh).
- ``predictions.jsonl``: one line per answered sample, appended and fsynced after each batch, so a
  killed run resumes where it stopped (a torn last line is dropped and its batch redone).
- ``media/``: generated media of text -> x tasks (PNG, 16-bit WAV at the decoder's rate, ``.npz``
  with the uint8 frames and fps: lossless, so metrics see exactly what the model produced).
- ``results.json`` and ``results.md``: metric values (library scale and the paper's printed scale),
  the paper's numbers, sample count, timings, config, model fingerprint, library versions and the
  sha256 of every extractor file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nextgpt.errors import ExtractorWeightsError, InputError
from nextgpt.eval.readers import Sample
from nextgpt.eval.tasks import METRIC_NOTES, Task, get_task

VERSIONED = (
    "nextgpt",
    "torch",
    "transformers",
    "diffusers",
    "pycocoevalcap",
    "torchmetrics",
    "scipy",
    "numpy",
)
ANSWERS_FILE = "predictions.jsonl"


@dataclass
class EvalOptions:
    """Generation and scoring options of an evaluation run (all recorded in ``run.json``).

    ``fid_frames_per_video``: frames spread over each video for the video FID; ``is_splits``: the
    inception score's chunks (AudioLDM: 10, which needs at least 10 clips).
    """

    batch_size: int = 8
    max_new_tokens: int = 64
    seed: int = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    audio_length_in_s: float | None = None
    num_frames: int | None = None
    fid_frames_per_video: int = 8
    is_splits: int = 10

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``generate_batch`` these options set."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        for k in ("num_inference_steps", "guidance_scale", "audio_length_in_s", "num_frames"):
            if getattr(self, k) is not None:
                out[k] = getattr(self, k)
        return out


@dataclass
class ExtractorPaths:
    """Local weights of the feature extractors (``None``: the environment variable, else an error),
    and the device they run on."""

    inception: str | None = None
    clip: str | None = None
    panns: str | None = None
    vggish: str | None = None
    device: str = "cpu"
    loaded: dict[str, Any] = field(default_factory=dict)


def model_fingerprint(model: Any) -> str:
    """sha256 of the model's resolved config and its trainable tensors (projectors, LoRA, signal
    embeddings): two models that answer differently differ here (frozen weights are named by path in
    the config)."""
    h = hashlib.sha256(model.config.to_yaml().encode())
    for name, t in sorted(model.trainable_state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of the libraries that decide the numbers, plus Python and the platform."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in VERSIONED:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _safe_name(sample_id: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id)[:64]
    return f"{stem}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}"


def read_answers(path: Path) -> dict[str, dict]:
    """The answered samples of a predictions log; a torn (unparsable) last line is cut off."""
    if not path.is_file():
        return {}
    done: dict[str, dict] = {}
    good = 0
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    for i, raw in enumerate(lines):
        if not raw.strip():
            good += len(raw) + 1
            continue
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or "id" not in rec:
                raise ValueError("no id")
        except ValueError:
            if i == len(lines) - 1 or all(not rest.strip() for rest in lines[i + 1 :]):
                with open(path, "r+b") as f:  # a run killed mid-write: drop the torn line
                    f.truncate(good)
                break
            raise InputError(
                f"'{path}' line {i + 1} is not a prediction record; remove the file to restart"
            ) from None
        done[str(rec["id"])] = rec
        good += len(raw) + 1
    return done


def _needed_extractors(task: Task, metrics: Sequence[str]) -> list[str]:
    if task.kind != "generate":
        return []
    need = []
    if "fid" in metrics:
        need.append("inception")
    if {"clip_score", "clipsim"} & set(metrics):
        need.append("clip")
    if {"fd", "is", "kl"} & set(metrics):
        need.append("panns")
    if "fad" in metrics:
        need.append("vggish")
    return need


def load_extractors(task: Task, metrics: Sequence[str], paths: ExtractorPaths) -> dict[str, Any]:
    """Load the extractors ``metrics`` need, before any generation: missing weights fail fast."""
    from nextgpt.eval.metrics import visual

    device = paths.device
    for name in _needed_extractors(task, metrics):
        if name in paths.loaded:
            continue
        given = getattr(paths, name)
        if name == "inception":
            paths.loaded[name] = visual.InceptionFID.from_path(given, device)
        elif name == "clip":
            paths.loaded[name] = visual.CLIPEmbedder.from_path(given, device)
        elif name == "panns":
            from nextgpt.eval.metrics.audio import PannsCnn14

            paths.loaded[name] = PannsCnn14.from_path(given, device=device)
        else:
            from nextgpt.eval.metrics.audio import Vggish

            paths.loaded[name] = Vggish.from_path(given, device=device)
    return paths.loaded


def _check_metrics(task: Task, metrics: Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return task.metrics
    allowed = {
        "caption": ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "cider", "spice", "spider"),
        "qa": ("vqa_accuracy", "accuracy"),
        "generate": {
            "image": ("fid", "clip_score"),
            "audio": ("fd", "is", "kl", "fad"),
            "video": ("clipsim", "fid"),
        }[task.modality],
    }[task.kind]
    bad = [m for m in metrics if m not in allowed]
    if bad or not metrics:
        raise InputError(f"task {task.name}: metrics must be among {', '.join(allowed)}, got {list(metrics)}")
    return tuple(metrics)


def _conversation(task: Task, sample: Sample) -> list:
    from nextgpt.media import Audio, Video

    text = task.prompt(sample)
    if task.kind == "generate":
        return [text]
    assert sample.media is not None
    item: Any = {"image": sample.media, "audio": Audio(sample.media), "video": Video(sample.media)}[
        task.modality
    ]
    return [item, text]


def _save_media(task: Task, out: Any, media_dir: Path, sample_id: str) -> str:
    from nextgpt.mediaio import write_wav

    items = {"image": out.images, "audio": out.audios, "video": out.videos}[task.modality]
    if not items:
        raise InputError(
            f"sample {sample_id}: the model produced no {task.modality} (its decoder is not configured?)"
        )
    media_dir.mkdir(parents=True, exist_ok=True)
    base = media_dir / _safe_name(sample_id)
    if task.modality == "image":
        path = base.with_suffix(".png")
        items[0].save(path)
    elif task.modality == "audio":
        path = write_wav(
            base.with_suffix(".wav"), np.asarray(items[0], dtype=np.float32), int(out.audio_sample_rate)
        )
    else:
        path = base.with_suffix(".npz")
        np.savez(path, frames=np.asarray(items[0], dtype=np.uint8), fps=float(out.video_fps or 0.0))
    return path.relative_to(media_dir.parent).as_posix()


def generate_answers(
    task: Task,
    model: Any,
    samples: Sequence[Sample],
    task_dir: Path,
    options: EvalOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict]:
    """Answer every sample not yet in the log, ``options.batch_size`` at a time; return all answers."""
    log = task_dir / ANSWERS_FILE
    done = read_answers(log)
    known = {s.id for s in samples}
    stale = [k for k in done if k not in known]
    if stale:
        raise InputError(
            f"'{log}' holds answers for samples not in this data (e.g. {stale[0]!r}); use --restart"
        )
    todo = [s for s in samples if s.id not in done]
    if progress:
        progress(len(done), len(samples))
    modalities = ["text"] if task.kind != "generate" else [task.modality]
    position = {s.id: i for i, s in enumerate(samples)}
    with open(log, "a", encoding="utf-8") as f:
        for start in range(0, len(todo), options.batch_size):
            chunk = todo[start : start + options.batch_size]
            t0 = time.perf_counter()
            outs = model.generate_batch(
                [_conversation(task, s) for s in chunk],
                modalities=modalities,
                seed=[options.seed + position[s.id] for s in chunk],
                batch_size=options.batch_size,
                **options.generate_kwargs(),
            )
            seconds = (time.perf_counter() - t0) / len(chunk)
            for s, out in zip(chunk, outs):
                rec: dict[str, Any] = {"id": s.id, "text": out.text, "seconds": seconds}
                if task.kind == "generate":
                    rec["media"] = _save_media(task, out, task_dir / "media", s.id)
                done[s.id] = rec
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            if progress:
                progress(len(done), len(samples))
    return done


def _load_generated(task: Task, task_dir: Path, rec: Mapping[str, Any]) -> Any:
    from nextgpt.mediaio import load_image, read_audio

    path = task_dir / rec["media"]
    if task.modality == "image":
        return load_image(path)
    if task.modality == "audio":
        wave, rate = read_audio(path)
        return wave.mean(axis=0), rate
    with np.load(path) as z:
        return z["frames"]


def _reference_media(task: Task, sample: Sample) -> Any:
    from nextgpt.mediaio import decode_video, load_image, read_audio

    assert sample.media is not None
    if task.modality == "image":
        return load_image(sample.media)
    if task.modality == "audio":
        wave, rate = read_audio(sample.media)
        return wave.mean(axis=0), rate
    return np.asarray(decode_video(sample.media, max_frames=64).source)


def score(
    task: Task,
    samples: Sequence[Sample],
    answers: Mapping[str, Mapping[str, Any]],
    metrics: Sequence[str],
    task_dir: Path,
    extractors: Mapping[str, Any],
    options: EvalOptions,
) -> dict[str, float]:
    """The task's metrics (library scale) over ``samples`` from their logged answers."""
    if task.kind == "caption":
        from nextgpt.eval.metrics.captioning import caption_scores

        return caption_scores(
            {s.id: answers[s.id]["text"] for s in samples}, {s.id: s.references for s in samples}, metrics
        )
    if task.kind == "qa":
        from nextgpt.eval.metrics import vqa

        fn = vqa.vqa_accuracy if task.modality == "image" else vqa.exact_match
        values = [fn(vqa.extract_short_answer(answers[s.id]["text"]), s.references) for s in samples]
        return {m: float(np.mean(values)) for m in metrics}
    from nextgpt.eval.metrics import visual

    # media are read lazily, one batch at a time: 30K generated and 30K reference images never sit in
    # memory together (audio clips are the exception: AudioLDM's IS and KL need them all, ~1.3 GB for
    # AudioCaps test at 10 s)
    prompts = [s.references[0] for s in samples]

    def generated() -> Iterator[Any]:
        return (_load_generated(task, task_dir, answers[s.id]) for s in samples)

    def reference() -> Iterator[Any]:
        return (_reference_media(task, s) for s in samples)

    out: dict[str, float] = {}
    if task.modality == "image":
        if "fid" in metrics:
            out["fid"] = visual.fid(generated(), reference(), extractors["inception"])
        if "clip_score" in metrics:
            out["clip_score"] = visual.clip_score(generated(), prompts, extractors["clip"])
    elif task.modality == "video":
        if "clipsim" in metrics:
            out["clipsim"] = visual.clipsim(generated(), prompts, extractors["clip"])
        if "fid" in metrics:
            k = options.fid_frames_per_video
            gen_frames = (f for v in generated() for f in visual.sample_frames(v, k))
            ref_frames = (f for v in reference() for f in visual.sample_frames(v, k))
            out["fid"] = visual.fid(gen_frames, ref_frames, extractors["inception"])
    else:
        from nextgpt.eval.metrics.audio import text_to_audio_metrics

        gen_waves, gen_rate = _one_rate(list(generated()))
        ref_waves, ref_rate = _one_rate(list(reference()))
        values = text_to_audio_metrics(
            gen_waves,
            gen_rate,
            ref_waves,
            ref_rate,
            panns=extractors["panns"],
            vggish=extractors.get("vggish"),
            is_splits=options.is_splits,
        )
        out.update({m: float(values[m]) for m in metrics})
    return {m: out[m] for m in metrics}


def _one_rate(clips: list[tuple[np.ndarray, int]]) -> tuple[list[np.ndarray], int]:
    """The clips at one sample rate: as they are when they share one (AudioLDM's path), else each
    resampled to 16 kHz first (a set of mixed-rate reference files)."""
    from nextgpt.eval.metrics.audio import SAMPLE_RATE, resample

    rates = {r for _, r in clips}
    if len(rates) == 1:
        return [w for w, _ in clips], rates.pop()
    return [resample(w, r, SAMPLE_RATE) for w, r in clips], SAMPLE_RATE


def markdown_report(result: Mapping[str, Any]) -> str:
    """The results as a markdown table: ours beside the paper's, on the paper's printed scale."""
    task = get_task(result["task"])
    lines = [
        f"# {task.name}: {task.benchmark}",
        "",
        f"{result['num_samples']} samples; model `{result['model']['name']}` (fingerprint "
        f"`{result['model']['fingerprint'][:16]}`); {result['timing']['samples_per_s']:.3g} samples/s generation.",
        "",
        "| metric | ours | NExT-GPT (paper) | table | how it is computed |",
        "|---|---|---|---|---|",
    ]
    for m, entry in result["metrics"].items():
        arrow = " (lower is better)" if m in task.lower_is_better else ""
        papers = [p for p in task.paper if p.metric == m] or [None]
        for p in papers:
            paper = f"{p.value:g}" if p else "-"
            table = f"{p.table}{': ' + p.note if p and p.note else ''}" if p else "-"
            lines.append(
                f"| {m}{arrow} | {entry['reported']:.4g} | {paper} | {table} | {METRIC_NOTES.get(m, '')} |"
            )
    lines += ["", "Values on the paper's printed scale (factor from the library value in results.json)."]
    for name, version in result.get("tools", {}).items():
        lines += ["", f"{name}: `{version}`"]
    if result.get("extractors"):
        lines += ["", "| extractor | file | sha256 |", "|---|---|---|"]
        for name, e in result["extractors"].items():
            lines.append(f"| {name} | `{e['path']}` | `{e['sha256'][:16]}...` |")
    return "\n".join(lines) + "\n"


def prepare(
    task_name: str,
    data: str | os.PathLike,
    *,
    media: str | os.PathLike | None = None,
    answers: str | os.PathLike | None = None,
    split: str | None = None,
    pattern: str | None = None,
    limit: int | None = None,
    metrics: Sequence[str] | None = None,
    options: EvalOptions | None = None,
    extractors: ExtractorPaths | None = None,
) -> tuple[Task, list[Sample], tuple[str, ...], dict[str, Any]]:
    """Everything :func:`run_task` checks before it needs the model: the task, its samples (data and
    media files read and checked), the metrics, Java for caption metrics, and the extractors (loaded
    into ``extractors.loaded``). The command line calls it before a possibly minutes-long model load.

    Returns:
        ``(task, samples, metrics, loaded extractors)``.
    """
    task = get_task(task_name)
    options = options or EvalOptions()
    extractors = extractors if extractors is not None else ExtractorPaths()
    chosen = _check_metrics(task, metrics)
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise InputError(f"limit must be a positive int, got {limit!r}")
    if not 1 <= options.batch_size <= 256:
        raise InputError(f"batch_size must be in [1, 256], got {options.batch_size}")
    samples = task.read(data, media, answers=answers, split=split, pattern=pattern)
    if limit is not None:
        samples = samples[:limit]
    if task.kind == "generate" and len(samples) < 2 and {"fid", "fd", "fad", "is"} & set(chosen):
        raise InputError(
            f"task {task.name}: distribution metrics need at least 2 samples, got {len(samples)}"
        )
    audio_is = task.modality == "audio" and task.kind == "generate" and "is" in chosen
    if audio_is and len(samples) < options.is_splits:
        raise InputError(
            f"the inception score needs at least is_splits={options.is_splits} clips, got {len(samples)} "
            "(AudioLDM uses 10 splits; set is_splits lower for a small set)"
        )
    if task.kind == "caption":
        from nextgpt.eval.metrics.captioning import _spice_ready, java_version

        java_version()
        if {"spice", "spider"} & set(chosen):
            _spice_ready()
    return task, samples, chosen, load_extractors(task, chosen, extractors)


def run_task(
    task_name: str,
    model: Any,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_name: str = "",
    media: str | os.PathLike | None = None,
    answers: str | os.PathLike | None = None,
    split: str | None = None,
    pattern: str | None = None,
    limit: int | None = None,
    metrics: Sequence[str] | None = None,
    options: EvalOptions | None = None,
    extractors: ExtractorPaths | None = None,
    restart: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on one task; write and return the results (see the module docstring).

    Raises:
        InputError: bad data files, options, or a resumed run that does not match ``run.json``.
        ExtractorWeightsError: a metric's extractor has no local weights (raised before generation).
    """
    if extractors is None:  # the extractors run where the model does
        extractors = ExtractorPaths(device=str(getattr(model, "device", "cpu")))
    task, samples, chosen, loaded = prepare(
        task_name,
        data,
        media=media,
        answers=answers,
        split=split,
        pattern=pattern,
        limit=limit,
        metrics=metrics,
        options=options,
        extractors=extractors,
    )
    options = options or EvalOptions()
    task_dir = Path(out) / task.name
    task_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = model_fingerprint(model)
    run = {
        "task": task.name,
        "data": str(Path(data).resolve()),
        "media": str(Path(media).resolve()) if media is not None else None,
        "answers": str(Path(answers).resolve()) if answers is not None else None,
        "split": split,
        "pattern": pattern,
        "model_fingerprint": fingerprint,
        # the batch size is left out: answers do not depend on it (batched rows equal lone calls),
        # and a run that ran out of memory resumes with a smaller one
        "options": {k: v for k, v in options.__dict__.items() if k != "batch_size"},
    }
    run_file = task_dir / "run.json"
    if restart:
        for name in (ANSWERS_FILE, "results.json", "results.md"):
            (task_dir / name).unlink(missing_ok=True)
    elif run_file.is_file():
        previous = json.loads(run_file.read_text())
        if previous != run:
            diff = sorted(k for k in set(previous) | set(run) if previous.get(k) != run.get(k))
            raise InputError(
                f"'{task_dir}' holds a run with other {', '.join(diff)}: pass --restart to discard it, or another --out"
            )
    run_file.write_text(json.dumps(run, indent=2) + "\n")
    answered = generate_answers(task, model, samples, task_dir, options, progress=progress)
    gen_seconds = sum(float(answered[s.id].get("seconds", 0.0)) for s in samples)
    t0 = time.perf_counter()
    values = score(task, samples, answered, chosen, task_dir, loaded, options)
    metric_seconds = time.perf_counter() - t0
    paper = {m: [p.__dict__ for p in task.paper if p.metric == m] for m in chosen}
    extractor_info = {k: {"path": str(v.path), "sha256": v.sha256} for k, v in loaded.items()}
    tools = {}
    if task.kind == "caption":
        from nextgpt.eval.metrics.captioning import java_version

        tools["java"] = java_version()
    result = {
        "task": task.name,
        "benchmark": task.benchmark,
        "num_samples": len(samples),
        "metrics": {
            m: {
                "value": v,
                "reported": v * task.scale.get(m, 1.0),
                "scale": task.scale.get(m, 1.0),
                "paper": paper[m],
                "definition": METRIC_NOTES[m],
            }
            for m, v in values.items()
        },
        "timing": {
            "generation_s": gen_seconds,
            "metrics_s": metric_seconds,
            "samples_per_s": len(samples) / gen_seconds if gen_seconds > 0 else float("nan"),
            "generation_share": gen_seconds / (gen_seconds + metric_seconds)
            if gen_seconds + metric_seconds
            else 0.0,
        },
        "config": {**run, "batch_size": options.batch_size},
        "model": {"name": model_name, "fingerprint": fingerprint},
        "versions": versions(),
        "extractors": extractor_info,
        "tools": tools,
    }
    (task_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (task_dir / "results.md").write_text(markdown_report(result))
    return result


__all__ = ["EvalOptions", "ExtractorPaths", "ExtractorWeightsError", "model_fingerprint", "run_task"]
