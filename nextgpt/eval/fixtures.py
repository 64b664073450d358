"""Small evaluation datasets in each benchmark's standard file format, and tiny stand-in extractors,
for the test suite, the benchmarks and a first try of ``nextgpt eval`` (never for real numbers).

Everything is built here from synthetic media: a few images (PNG/JPEG), short mp4 videos and wav
clips, with the annotation files laid out as the real benchmarks ship them (COCO caption json,
Karpathy split json, VQAv2 question + annotation jsons, VizWiz json, MSR-VTT videodatainfo json,
MSRVTT-QA json, AudioCaps csv). The extractors are the real interfaces with tiny random weights: a
TorchScript module with the FID Inception's call signature, and a transformers CLIP folder.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
from PIL import Image

from nextgpt.mediaio import write_mp4

CAPTIONS = [
    ["a red square on a blue field", "a blue picture with a red box", "red and blue shapes"],
    ["a green circle", "a round green shape on white", "green disc"],
    ["a cat sitting on a sofa", "a small cat on a red sofa", "cat resting"],
    ["two dogs play in the snow", "dogs playing outside", "a snowy field with dogs"],
]
ANSWERS = ["yes", "2", "red", "no"]


def _image(i: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(i)
    img = np.zeros((size, size, 3), dtype=np.uint8)
    img[...] = rng.integers(0, 255, size=3, dtype=np.uint8)
    img[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = rng.integers(0, 255, size=3, dtype=np.uint8)
    return img


def _tone(rate: int, seconds: float, freq: float) -> np.ndarray:
    t = np.arange(int(round(rate * seconds)), dtype=np.float64) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _frames(i: int, num_frames: int = 8, size: int = 32) -> np.ndarray:
    """A square of video ``i``'s colour moving across a gradient, ``[T, size, size, 3]`` uint8."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    frames = np.zeros((num_frames, size, size, 3), dtype=np.uint8)
    colour = np.random.default_rng(i).integers(0, 255, size=3, dtype=np.uint8)
    for t in range(num_frames):
        frames[t, ..., 0] = ramp[None, :].astype(np.uint8)
        frames[t, ..., 2] = ramp[:, None].astype(np.uint8)
        x = (4 * t + 5 * i) % (size - 8)
        frames[t, 8:16, x : x + 8] = colour
    return frames


def build_image_data(root: Path) -> dict[str, Path]:
    """COCO-format captions, a Karpathy json (test split + one train image), VQAv2 and VizWiz files."""
    images = root / "val2014"
    images.mkdir(parents=True)
    coco = {"images": [], "annotations": []}
    karpathy = {"images": [], "dataset": "coco"}
    vqa_q = {"data_subtype": "val2014", "questions": []}
    vqa_a = {"annotations": []}
    vizwiz = []
    for i, caps in enumerate(CAPTIONS):
        image_id = 100 + i
        name = f"COCO_val2014_{image_id:012d}.jpg"
        Image.fromarray(_image(i)).save(images / name, quality=95)
        coco["images"].append({"id": image_id, "file_name": name, "height": 48, "width": 48})
        for j, c in enumerate(caps):
            coco["annotations"].append({"id": 10 * image_id + j, "image_id": image_id, "caption": c})
        karpathy["images"].append(
            {
                "filepath": "val2014",
                "filename": name,
                "cocoid": image_id,
                "split": "test",
                "sentences": [{"raw": c} for c in caps],
            }
        )
        vqa_q["questions"].append(
            {"image_id": image_id, "question": f"What is shown in picture {i}?", "question_id": 1000 + i}
        )
        answers = [ANSWERS[i]] * 7 + ["maybe", "unsure", ANSWERS[(i + 1) % 4]]
        vqa_a["annotations"].append(
            {
                "question_id": 1000 + i,
                "image_id": image_id,
                "answers": [
                    {"answer": a, "answer_confidence": "yes", "answer_id": k + 1}
                    for k, a in enumerate(answers)
                ],
                "multiple_choice_answer": ANSWERS[i],
            }
        )
        vizwiz.append(
            {"image": name, "question": "What color is this?", "answers": [{"answer": a} for a in answers]}
        )
    karpathy["images"].append(
        {
            "filepath": "val2014",
            "filename": coco["images"][0]["file_name"],
            "cocoid": 999,
            "split": "train",
            "sentences": [{"raw": "x"}],
        }
    )
    out = {
        "images": images,
        "coco": root / "captions_val2014.json",
        "karpathy": root / "dataset_coco.json",
        "vqa_questions": root / "v2_OpenEnded_mscoco_val2014_questions.json",
        "vqa_annotations": root / "v2_mscoco_val2014_annotations.json",
        "vizwiz": root / "vizwiz_val.json",
    }
    for key, value in (
        ("coco", coco),
        ("karpathy", karpathy),
        ("vqa_questions", vqa_q),
        ("vqa_annotations", vqa_a),
        ("vizwiz", vizwiz),
    ):
        out[key].write_text(json.dumps(value))
    return out


def build_video_data(root: Path) -> dict[str, Path]:
    """MSR-VTT videodatainfo json (3 test videos + 1 train) and a MSRVTT-QA json; mp4 clips."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    info = {"videos": [], "sentences": []}
    qa = []
    for i in range(4):
        vid = f"video{7010 + i}"
        write_mp4(videos / f"{vid}.mp4", _frames(i), 8)
        info["videos"].append({"video_id": vid, "split": "test" if i < 3 else "train", "category": i})
        for j, c in enumerate(CAPTIONS[i]):
            info["sentences"].append({"video_id": vid, "caption": c, "sen_id": 10 * i + j})
        qa.append(
            {
                "answer": ANSWERS[i],
                "id": 50 + i,
                "question": f"what happens in clip {i}?",
                "video_id": 7010 + i,
            }
        )
    out = {"videos": videos, "msrvtt": root / "test_videodatainfo.json", "msrvtt_qa": root / "test_qa.json"}
    out["msrvtt"].write_text(json.dumps(info))
    out["msrvtt_qa"].write_text(json.dumps(qa))
    return out


def build_audio_data(root: Path, rate: int = 16000) -> dict[str, Path]:
    """An AudioCaps csv (3 clips, 2-3 captions each) and the clips as ``{youtube_id}.wav``."""
    import soundfile as sf

    clips = root / "audio"
    clips.mkdir(parents=True)
    rows = []
    for i in range(3):
        yid = f"yt{i:03d}abc"
        sf.write(clips / f"{yid}.wav", _tone(rate, 1.0, 220.0 * (i + 1)), rate, subtype="PCM_16")
        for j, c in enumerate(CAPTIONS[i][: 2 + i % 2]):
            rows.append({"audiocap_id": 100 * i + j, "youtube_id": yid, "start_time": 30, "caption": c})
    path = root / "test.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["audiocap_id", "youtube_id", "start_time", "caption"])
        w.writeheader()
        w.writerows(rows)
    return {"audio": clips, "audiocaps": path}


def build_tiny_inception(path: Path, feature_dim: int = 2048) -> Path:
    """A TorchScript file with the FID Inception's call: ``m(x_uint8 [N, 3, 299, 299], return_features=True)``."""
    import torch

    class TinyInception(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(3 * 4 * 4, feature_dim)

        def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
            assert x.dtype == torch.uint8 and x.shape[1] == 3 and x.shape[2] == 299 and x.shape[3] == 299
            f = self.proj(torch.nn.functional.adaptive_avg_pool2d(x.float() / 255.0, 4).flatten(1))
            return f if return_features else f.softmax(-1)

    torch.jit.script(TinyInception()).save(str(path))
    return path


def build_tiny_clip(folder: Path) -> Path:
    """A transformers CLIP folder (model, tokenizer, image processor) with tiny random weights."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from nextgpt.decoders.tiny import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(77)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    bos = tok.convert_tokens_to_ids("<|startoftext|>")
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
            "eos_token_id": eos,
            "bos_token_id": bos,
            "pad_token_id": eos,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(
        folder
    )
    return folder


def build_random_audio_extractors(folder: Path) -> tuple[Path, Path]:
    """PANNs Cnn14 (as its official ``{"model": state}`` file) and VGGish (a bare state dict) with
    seeded random weights: the true architectures, about 610 MB on disk together."""
    import torch

    from nextgpt.eval.metrics.audio import build_cnn14, build_vggish

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    panns = folder / "Cnn14_16k_random.pth"
    torch.save({"model": build_cnn14().state_dict()}, panns)
    torch.manual_seed(1)
    vggish = folder / "vggish_random.pth"
    torch.save(build_vggish().state_dict(), vggish)
    return panns, vggish
