"""The evaluation tasks of NExT-GPT's tables (paper tables 2-4 and 8-13), one :class:`Task` each.

A task says which reader builds its samples, how a sample becomes a conversation for the model,
which metrics score it (and on which scale the paper prints them), and the paper's numbers.
Prompts are ours (NExT-GPT released no evaluation prompts); docs/EVAL.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nextgpt.errors import InputError
from nextgpt.eval import readers
from nextgpt.eval.readers import Sample

CAPTION_PROMPTS = {
    "image": "Describe this image in one sentence.",
    "video": "Describe this video in one sentence.",
    "audio": "Describe this sound in one sentence.",
}
QA_SUFFIX = "Answer the question using a single word or phrase."
GENERATE_PROMPTS = {
    "image": "Generate an image of: {caption}",
    "audio": "Generate the sound of: {caption}",
    "video": "Generate a video of: {caption}",
}


#: How each metric is computed, one line each (the report prints it beside the numbers; docs/EVAL.md
#: has the full definitions).
METRIC_NOTES = {
    "bleu1": "pycocoevalcap BLEU-1 (corpus, closest ref length) on PTB-tokenised text",
    "bleu2": "pycocoevalcap BLEU-2 (corpus, closest ref length) on PTB-tokenised text",
    "bleu3": "pycocoevalcap BLEU-3 (corpus, closest ref length) on PTB-tokenised text",
    "bleu4": "pycocoevalcap BLEU-4 (corpus, closest ref length) on PTB-tokenised text",
    "meteor": "pycocoevalcap METEOR 1.5 on PTB-tokenised text",
    "cider": "pycocoevalcap CIDEr-D (n=1..4, sigma 6, idf from this set's references)",
    "spice": "pycocoevalcap SPICE 1.0 (Stanford CoreNLP 3.6.0)",
    "spider": "SPIDEr = (CIDEr-D + SPICE) / 2",
    "vqa_accuracy": "official VQA accuracy: mean over 10 leave-one-out subsets of min(1, matches/3), "
    "official answer normalisation",
    "accuracy": "exact match of the normalised answer (VQA normalisation) with the reference",
    "fid": "Frechet distance of TF-Inception (inception-2015-12-05) pool features, PIL-bicubic 299 px",
    "clip_score": "torchmetrics CLIPScore: max(100 * mean cosine(image, caption), 0)",
    "clipsim": "mean over videos of the mean raw frame-caption CLIP cosine (printed x100)",
    "fd": "AudioLDM FD: Frechet distance of PANNs Cnn14 (16 kHz) 2048-d embeddings",
    "is": "AudioLDM IS: inception score of PANNs Cnn14 softmax class outputs, 10 splits",
    "kl": "AudioLDM KL (softmax): paired KL(p_ref || p_gen) of PANNs class outputs, mean over clips",
    "fad": "FAD: Frechet distance of VGGish 128-d frame embeddings (no PCA, no last ReLU)",
}


@dataclass(frozen=True)
class PaperNumber:
    """One number NExT-GPT reports: ``value`` on the paper's printed scale, in ``table``."""

    metric: str
    value: float
    table: str
    note: str = ""


@dataclass(frozen=True)
class Task:
    """One benchmark.

    Attributes:
        name: the CLI name (``nextgpt eval NAME``).
        kind: ``caption`` (x -> text), ``qa`` (image or video QA), or ``generate`` (text -> x).
        modality: the input (caption, qa) or output (generate) media modality.
        benchmark: the dataset and split the paper evaluates.
        data_help: what ``--data`` (and ``--media``, ``--answers``) must be.
        metrics: the default metrics, in report order.
        scale: factor from the metric's library value to the paper's printed scale.
        paper: the paper's numbers for this task.
        lower_is_better: metrics where smaller is better (shown with a down arrow).
    """

    name: str
    kind: str
    modality: str
    benchmark: str
    data_help: str
    metrics: tuple[str, ...]
    scale: dict[str, float] = field(default_factory=dict)
    paper: tuple[PaperNumber, ...] = ()
    lower_is_better: tuple[str, ...] = ()
    reader: str = ""
    split: str | None = None

    def read(
        self,
        data: str | Path,
        media: str | Path | None,
        *,
        answers: str | Path | None = None,
        split: str | None = None,
        pattern: str | None = None,
    ) -> list[Sample]:
        """The task's samples from its annotation file(s), media files checked to exist."""
        split = split if split is not None else self.split
        media_root = media if media is not None else Path(data).parent
        if self.reader == "coco":
            samples = readers.read_coco_captions(data, media_root, split=split)
        elif self.reader == "msrvtt":
            samples = readers.read_msrvtt_captions(data, media_root, split=split)
        elif self.reader == "audiocaps":
            samples = readers.read_audiocaps(data, media_root, audio_pattern=pattern or "{youtube_id}.wav")
        elif self.reader == "vqa":
            if answers is None:
                raise InputError(
                    f"{self.name} needs --answers (the annotation json with the 10 answers per question)"
                )
            samples = readers.read_vqa(data, answers, media_root, image_pattern=pattern)
        elif self.reader == "vizwiz":
            if answers is not None:
                raise InputError("VizWiz keeps its answers in the --data file: drop --answers")
            samples = readers.read_vqa(data, None, media_root)
        elif self.reader == "videoqa":
            samples = readers.read_video_qa(data, media_root, video_pattern=pattern or "video{video_id}.mp4")
        else:  # pragma: no cover - the registry below names only known readers
            raise AssertionError(self.reader)
        if self.reader == "vqa" and answers is None:
            raise InputError(
                f"{self.name} needs --answers (the annotation json with the 10 answers per question)"
            )
        ids = [s.id for s in samples]
        if len(set(ids)) != len(ids):
            repeated = next(i for i in ids if ids.count(i) > 1)
            raise InputError(f"'{data}': sample id {repeated!r} repeats; every sample needs its own id")
        readers.check_media(samples, self.modality)
        return samples

    def prompt(self, sample: Sample) -> str:
        """The user turn's text for ``sample``."""
        if self.kind == "caption":
            return CAPTION_PROMPTS[self.modality]
        if self.kind == "qa":
            return f"{sample.question.strip()}\n{QA_SUFFIX}"
        return GENERATE_PROMPTS[self.modality].format(caption=sample.references[0].strip())


_CAPTION_SCALE = {"bleu4": 100.0, "meteor": 100.0, "cider": 100.0, "spice": 100.0, "spider": 100.0}
_KARPATHY = "a Karpathy split json (dataset_coco.json / dataset_flickr30k.json) or COCO-format captions json"

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "coco-caption",
            "caption",
            "image",
            "COCO Karpathy test (5,000 images)",
            f"--data {_KARPATHY}; --media the image root (filepath/filename are relative to it)",
            ("bleu4", "meteor", "cider"),
            _CAPTION_SCALE,
            (
                PaperNumber("cider", 124.9, "Table 2", "zero-shot"),
                PaperNumber("bleu4", 45.1, "Table 12"),
                PaperNumber("meteor", 34.1, "Table 12"),
                PaperNumber("cider", 158.3, "Table 12", "Table 12 differs from Table 2: setting not stated"),
            ),
            reader="coco",
            split="test",
        ),
        Task(
            "flickr30k-caption",
            "caption",
            "image",
            "Flickr30K Karpathy test (1,000 images)",
            f"--data {_KARPATHY}; --media the flickr30k-images folder",
            ("bleu4", "meteor", "cider"),
            _CAPTION_SCALE,
            (PaperNumber("cider", 84.5, "Table 2", "zero-shot"),),
            reader="coco",
            split="test",
        ),
        Task(
            "nocaps-caption",
            "caption",
            "image",
            "NoCaps validation (4,500 images)",
            "--data nocaps_val_4500_captions.json (COCO format); --media its images folder",
            ("bleu4", "meteor", "cider"),
            _CAPTION_SCALE,
            (PaperNumber("cider", 123.7, "Table 2", "zero-shot"),),
            reader="coco",
        ),
        Task(
            "msrvtt-caption",
            "caption",
            "video",
            "MSR-VTT test (2,990 videos)",
            "--data test_videodatainfo.json (or train_val_videodatainfo.json with --split); --media the <video_id>.mp4 folder",
            ("bleu4", "meteor", "cider"),
            _CAPTION_SCALE,
            (
                PaperNumber(
                    "cider",
                    76.2,
                    "Table 3",
                    "fine-tuned on MSR-VTT train (*); metric not named, CIDEr assumed",
                ),
                PaperNumber("bleu4", 58.8, "Table 13"),
                PaperNumber("meteor", 39.6, "Table 13"),
            ),
            reader="msrvtt",
            split="test",
        ),
        Task(
            "audiocaps-caption",
            "caption",
            "audio",
            "AudioCaps test (975 clips, 5 captions each)",
            "--data test.csv (audiocap_id,youtube_id,start_time,caption); --media the clips folder ({youtube_id}.wav)",
            ("cider", "spider"),
            {"cider": 1.0, "spider": 1.0, "spice": 1.0, "bleu4": 1.0, "meteor": 1.0},
            (
                PaperNumber("spider", 0.534, "Table 11"),
                PaperNumber("cider", 0.807, "Table 11"),
                PaperNumber("cider", 0.813, "Table 3", "fine-tuned (*); printed as 81.3"),
            ),
            reader="audiocaps",
        ),
        Task(
            "vqav2",
            "qa",
            "image",
            "VQAv2 (test-dev in the paper; val2014 answers are public)",
            "--data v2_OpenEnded_mscoco_val2014_questions.json; --answers v2_mscoco_val2014_annotations.json; "
            "--media val2014/",
            ("vqa_accuracy",),
            {"vqa_accuracy": 100.0},
            (PaperNumber("vqa_accuracy", 66.7, "Table 2", "zero-shot"),),
            reader="vqa",
        ),
        Task(
            "vizwiz",
            "qa",
            "image",
            "VizWiz VQA val",
            "--data val.json (VizWiz annotations); --media val/",
            ("vqa_accuracy",),
            {"vqa_accuracy": 100.0},
            (PaperNumber("vqa_accuracy", 48.4, "Table 2", "zero-shot"),),
            reader="vizwiz",
        ),
        Task(
            "okvqa",
            "qa",
            "image",
            "OK-VQA val2014",
            "--data OpenEnded_mscoco_val2014_questions.json; --answers mscoco_val2014_annotations.json; --media val2014/",
            ("vqa_accuracy",),
            {"vqa_accuracy": 100.0},
            (PaperNumber("vqa_accuracy", 52.1, "Table 2", "zero-shot"),),
            reader="vqa",
        ),
        Task(
            "msvd-qa",
            "qa",
            "video",
            "MSVD-QA test",
            "--data test_qa.json ([{question, answer, video_id}]); --media the videos; "
            "--pattern names a video from video_id (default video{video_id}.mp4)",
            ("accuracy",),
            {"accuracy": 100.0},
            (PaperNumber("accuracy", 64.5, "Table 3"),),
            reader="videoqa",
        ),
        Task(
            "msrvtt-qa",
            "qa",
            "video",
            "MSRVTT-QA test",
            "--data test_qa.json ([{question, answer, video_id}]); --media the MSR-VTT videos (video{video_id}.mp4)",
            ("accuracy",),
            {"accuracy": 100.0},
            (PaperNumber("accuracy", 61.4, "Table 3"),),
            reader="videoqa",
        ),
        Task(
            "coco-t2i",
            "generate",
            "image",
            "COCO captions -> images (the paper: 30K val2014 captions)",
            "--data captions_val2014.json (COCO format; the first caption of each image is the prompt); "
            "--media val2014/ (the reference images)",
            ("fid", "clip_score"),
            {"fid": 1.0, "clip_score": 1.0},
            (
                PaperNumber("fid", 10.07, "Table 4"),
                PaperNumber("fid", 11.18, "Table 8"),
            ),
            lower_is_better=("fid",),
            reader="coco",
        ),
        Task(
            "audiocaps-t2a",
            "generate",
            "audio",
            "AudioCaps test captions -> audio",
            "--data test.csv; --media the reference clips ({youtube_id}.wav)",
            ("fd", "is", "kl", "fad"),
            {"fd": 1.0, "is": 1.0, "kl": 1.0, "fad": 1.0},
            (
                PaperNumber("fad", 1.68, "Table 4"),
                PaperNumber("fd", 23.25, "Table 10"),
                PaperNumber("is", 8.67, "Table 10"),
            ),
            lower_is_better=("fd", "kl", "fad"),
            reader="audiocaps",
        ),
        Task(
            "msrvtt-t2v",
            "generate",
            "video",
            "MSR-VTT test captions -> video (zero-shot)",
            "--data test_videodatainfo.json; --media the reference <video_id>.mp4 folder",
            ("clipsim", "fid"),
            {"clipsim": 100.0, "fid": 1.0},
            (
                PaperNumber("clipsim", 31.97, "Table 4"),
                PaperNumber("clipsim", 31.97, "Table 9"),
                PaperNumber("fid", 12.69, "Table 9"),
            ),
            lower_is_better=("fid",),
            reader="msrvtt",
            split="test",
        ),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name is an InputError listing the tasks."""
    if name not in TASKS:
        raise InputError(f"unknown evaluation task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
