"""Readers of the benchmarks' standard annotation files, each returning a list of :class:`Sample`.

Every reader checks what it reads: a missing file, unparsable JSON/CSV, a missing field or a media
file absent from the media folder is an :class:`~nextgpt.errors.InputError` naming the file, the
record and the field, raised before any model work starts. Formats (docs/EVAL.md has examples):

- :func:`read_coco_captions`: COCO caption annotations (``captions_val2014.json``, NoCaps'
  ``nocaps_val_4500_captions.json``: ``images`` [{id, file_name}], ``annotations`` [{image_id,
  caption}]) or the Karpathy split files (``dataset_coco.json``, ``dataset_flickr30k.json``:
  ``images`` [{filename, filepath?, split, sentences [{raw}]}]), filtered by ``split``.
- :func:`read_vqa`: VQAv2 / OK-VQA question + annotation jsons (``questions`` [{question_id,
  image_id, question}], ``annotations`` [{question_id, answers [{answer}]}]; images named
  ``COCO_<data_subtype>_<image_id:012d>.jpg``), or one VizWiz json (a list of {image, question,
  answers [{answer}]}).
- :func:`read_msrvtt_captions`: MSR-VTT ``videodatainfo`` json (``videos`` [{video_id, split}],
  ``sentences`` [{video_id, caption}]); videos ``<video_id>.mp4``.
- :func:`read_video_qa`: MSVD-QA / MSRVTT-QA jsons (a list of {question, answer, video_id | video,
  id?}); videos named by ``video_pattern`` (MSRVTT-QA: ``video{video_id}.mp4``).
- :func:`read_audiocaps`: an AudioCaps csv (``audiocap_id,youtube_id,start_time,caption``); the
  captions of one clip are grouped; audio files named by ``audio_pattern`` (default
  ``{youtube_id}.wav``).
"""

from __future__ import annotations

import csv
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextgpt.errors import InputError

PathLike = str | os.PathLike


@dataclass
class Sample:
    """One evaluation item.

    Attributes:
        id: unique within the task (str): the key of its line in the predictions log.
        media: the input (x -> text tasks) or reference (text -> x tasks) media file, or ``None``.
        references: reference captions (captioning; the prompts of text -> x tasks are
            ``references[0]``), or the annotators' answers (QA).
        question: the question of a QA sample ("" otherwise).
    """

    id: str
    media: Path | None
    references: list[str]
    question: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _load_json(path: PathLike, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} not found: '{p}'")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what} '{p}' is not readable JSON: {exc}") from None


def _field(record: Any, key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    if not isinstance(record, dict) or key not in record:
        raise InputError(f"{where}: missing field '{key}'")
    value = record[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise InputError(f"{where}: field '{key}' must be {names}, got {type(value).__name__}")
    return value


def _list_field(record: Any, key: str, where: str) -> list:
    return _field(record, key, where, list)


def _media_root(root: PathLike | None, what: str) -> Path | None:
    if root is None:
        return None
    p = Path(root)
    if not p.is_dir():
        raise InputError(f"{what} folder not found: '{p}'")
    return p


def check_media(samples: list[Sample], what: str) -> None:
    """Refuse a sample list whose media files are missing (names the first few and the count)."""
    missing = [s for s in samples if s.media is not None and not s.media.is_file()]
    if missing:
        shown = ", ".join(f"'{s.media}' (sample {s.id})" for s in missing[:3])
        raise InputError(f"{len(missing)} {what} file(s) of {len(samples)} not found: {shown}")


def _nonempty(samples: list[Sample], path: PathLike, detail: str = "") -> list[Sample]:
    if not samples:
        raise InputError(f"no samples in '{path}'{detail}")
    return samples


def read_coco_captions(
    annotations: PathLike, image_root: PathLike | None, *, split: str | None = "test"
) -> list[Sample]:
    """Image captioning samples from a COCO-style or Karpathy-split caption json.

    Args:
        annotations: the json file.
        image_root: the folder image ``file_name`` / ``filepath/filename`` are relative to (``None``:
            no media, for the text -> image task's prompts only).
        split: Karpathy files only: keep images of this split (``None``: all).
    """
    data = _load_json(annotations, "caption annotation file")
    root = _media_root(image_root, "image")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputError(
            f"'{annotations}': expected an object with an 'images' list (COCO or Karpathy format)"
        )
    samples: list[Sample] = []
    if "annotations" in data:  # COCO format
        refs: dict[Any, list[str]] = OrderedDict()
        files: dict[Any, str] = {}
        for i, img in enumerate(data["images"]):
            where = f"'{annotations}' images[{i}]"
            image_id = _field(img, "id", where, (int, str))
            files[image_id] = _field(img, "file_name", where)
            refs[image_id] = []
        for i, ann in enumerate(_list_field(data, "annotations", f"'{annotations}'")):
            where = f"'{annotations}' annotations[{i}]"
            image_id = _field(ann, "image_id", where, (int, str))
            if image_id not in refs:
                raise InputError(f"{where}: image_id {image_id!r} is not in 'images'")
            refs[image_id].append(_field(ann, "caption", where))
        for image_id, caps in refs.items():
            if caps:
                media = root / files[image_id] if root is not None else None
                samples.append(Sample(str(image_id), media, caps))
        return _nonempty(samples, annotations)
    for i, img in enumerate(data["images"]):  # Karpathy format
        where = f"'{annotations}' images[{i}]"
        if split is not None and _field(img, "split", where) != split:
            continue
        name = _field(img, "filename", where)
        rel = Path(img["filepath"]) / name if isinstance(img.get("filepath"), str) else Path(name)
        caps = [
            _field(s, "raw", f"{where} sentences[{j}]")
            for j, s in enumerate(_list_field(img, "sentences", where))
        ]
        sid = str(img.get("cocoid", img.get("imgid", rel.stem)))
        samples.append(Sample(sid, root / rel if root is not None else None, caps))
    return _nonempty(samples, annotations, f" for split '{split}'")


def _answers(record: Any, where: str) -> list[str]:
    answers = _list_field(record, "answers", where)
    out = [_field(a, "answer", f"{where} answers[{j}]") for j, a in enumerate(answers)]
    if not out:
        raise InputError(f"{where}: 'answers' is empty")
    return out


def read_vqa(
    questions: PathLike,
    annotations: PathLike | None,
    image_root: PathLike,
    *,
    image_pattern: str | None = None,
) -> list[Sample]:
    """Image QA samples: VQAv2 / OK-VQA (questions + annotations) or VizWiz (one json, ``annotations=None``).

    Args:
        questions: the questions json (VQAv2, OK-VQA) or the VizWiz annotation list.
        annotations: the annotations json with the 10 answers per question (``None`` for VizWiz).
        image_root: the images folder.
        image_pattern: VQAv2 / OK-VQA image file names, formatted with ``image_id`` and
            ``data_subtype`` (default ``COCO_{data_subtype}_{image_id:012d}.jpg``).
    """
    root = _media_root(image_root, "image")
    assert root is not None
    qdata = _load_json(questions, "VQA question file")
    samples: list[Sample] = []
    if annotations is None:  # VizWiz: [{image, question, answers}]
        if not isinstance(qdata, list):
            raise InputError(f"'{questions}': a VizWiz annotation file is a list of questions")
        for i, rec in enumerate(qdata):
            where = f"'{questions}' [{i}]"
            image = _field(rec, "image", where)
            samples.append(
                Sample(Path(image).stem, root / image, _answers(rec, where), _field(rec, "question", where))
            )
        return _nonempty(samples, questions)
    adata = _load_json(annotations, "VQA annotation file")
    qs = _list_field(qdata, "questions", f"'{questions}'")
    answers: dict[Any, list[str]] = {}
    for i, ann in enumerate(_list_field(adata, "annotations", f"'{annotations}'")):
        where = f"'{annotations}' annotations[{i}]"
        answers[_field(ann, "question_id", where, (int, str))] = _answers(ann, where)
    subtype = qdata.get("data_subtype", "val2014")
    pattern = image_pattern or "COCO_{data_subtype}_{image_id:012d}.jpg"
    for i, q in enumerate(qs):
        where = f"'{questions}' questions[{i}]"
        qid = _field(q, "question_id", where, (int, str))
        if qid not in answers:
            raise InputError(f"{where}: question_id {qid!r} has no entry in '{annotations}'")
        image_id = _field(q, "image_id", where, (int, str))
        try:
            name = pattern.format(image_id=image_id, data_subtype=subtype)
        except (KeyError, ValueError, IndexError) as exc:
            raise InputError(f"image_pattern {pattern!r} cannot name image {image_id!r}: {exc}") from None
        samples.append(Sample(str(qid), root / name, answers[qid], _field(q, "question", where)))
    return _nonempty(samples, questions)


def read_msrvtt_captions(
    annotations: PathLike, video_root: PathLike | None, *, split: str | None = "test"
) -> list[Sample]:
    """Video captioning samples from an MSR-VTT ``videodatainfo`` json (videos ``<video_id>.mp4``)."""
    data = _load_json(annotations, "MSR-VTT annotation file")
    root = _media_root(video_root, "video")
    videos = _list_field(data, "videos", f"'{annotations}'")
    refs: dict[str, list[str]] = OrderedDict()
    for i, v in enumerate(videos):
        where = f"'{annotations}' videos[{i}]"
        vid = _field(v, "video_id", where)
        if split is None or v.get("split") == split:
            refs[vid] = []
    for i, s in enumerate(_list_field(data, "sentences", f"'{annotations}'")):
        where = f"'{annotations}' sentences[{i}]"
        vid = _field(s, "video_id", where)
        if vid in refs:
            refs[vid].append(_field(s, "caption", where))
    samples = [
        Sample(vid, root / f"{vid}.mp4" if root is not None else None, caps)
        for vid, caps in refs.items()
        if caps
    ]
    return _nonempty(samples, annotations, f" for split '{split}'")


def read_video_qa(
    questions: PathLike, video_root: PathLike, *, video_pattern: str = "video{video_id}.mp4"
) -> list[Sample]:
    """Open-ended video QA samples (MSVD-QA, MSRVTT-QA): a json list of {question, answer, video_id}."""
    data = _load_json(questions, "video QA file")
    root = _media_root(video_root, "video")
    assert root is not None
    if not isinstance(data, list):
        raise InputError(f"'{questions}': a video QA file is a list of {{question, answer, video_id}}")
    samples: list[Sample] = []
    for i, rec in enumerate(data):
        where = f"'{questions}' [{i}]"
        if isinstance(rec, dict) and "video" in rec and "video_id" not in rec:
            name = _field(rec, "video", where)
        else:
            video_id = _field(rec, "video_id", where, (int, str))
            try:
                name = video_pattern.format(video_id=video_id)
            except (KeyError, ValueError, IndexError) as exc:
                raise InputError(
                    f"video_pattern {video_pattern!r} cannot name video {video_id!r}: {exc}"
                ) from None
        sid = str(rec.get("id", rec.get("question_id", i)))
        samples.append(
            Sample(sid, root / name, [_field(rec, "answer", where)], _field(rec, "question", where))
        )
    ids = [s.id for s in samples]
    if len(set(ids)) != len(ids):
        raise InputError(f"'{questions}': question ids repeat")
    return _nonempty(samples, questions)


AUDIOCAPS_COLUMNS = ("audiocap_id", "youtube_id", "start_time", "caption")


def read_audiocaps(
    csv_path: PathLike, audio_root: PathLike | None, *, audio_pattern: str = "{youtube_id}.wav"
) -> list[Sample]:
    """Audio captioning samples from an AudioCaps csv; a clip's captions (5 in test) are grouped."""
    p = Path(csv_path)
    if not p.is_file():
        raise InputError(f"AudioCaps csv not found: '{p}'")
    root = _media_root(audio_root, "audio")
    try:
        with open(p, encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"AudioCaps csv '{p}' is not readable: {exc}") from None
    if not rows or any(c not in rows[0] for c in AUDIOCAPS_COLUMNS):
        raise InputError(f"'{p}': expected the columns {', '.join(AUDIOCAPS_COLUMNS)}")
    clips: dict[str, Sample] = OrderedDict()
    for i, row in enumerate(rows):
        yid, caption = row["youtube_id"], row["caption"]
        if not yid or caption is None or not caption.strip():
            raise InputError(f"'{p}' row {i + 2}: empty youtube_id or caption")
        if yid not in clips:
            try:
                name = audio_pattern.format(**row)
            except (KeyError, ValueError, IndexError) as exc:
                raise InputError(f"audio_pattern {audio_pattern!r} cannot name clip {yid!r}: {exc}") from None
            clips[yid] = Sample(yid, root / name if root is not None else None, [])
        clips[yid].references.append(caption.strip())
    return list(clips.values())
