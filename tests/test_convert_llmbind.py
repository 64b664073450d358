"""The ``llmbind`` converter (LLMBind interactive generation / editing dialogues -> conversation shards):
exact turns, task tags kept verbatim, the input image of editing records, problem accounting and the
command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import dump_json, jpg_bytes, png_bytes, smooth_image

from nextgpt.modality import Modality
from nextgpt.processor import MediaItem
from nextgpt.stages.data import FORMATS, DataStats, convert, iter_samples

GEN_1 = "Sure, here is a picture of it: <gen> a red fox curled up in fresh snow, soft morning light </gen>"
GEN_2 = "Of course. <gen> a red fox curled up in fresh snow at night, under a full moon </gen>"
EDIT_GEN = "Done: <edit> make the fox's fur white </edit>"
EDIT_IMG = "Here it is: <edit> add a yellow hat to the horse </edit>"
VIDEO = "Sure! <vid_cap> waves rolling onto a sandy beach at sunset </vid_cap>"
AUDIO = "Here you go: <aud_cap> a dog barking twice in a quiet yard </audio_cap>"

#: Records shaped like the LLMBind interactive JSON files; the first five convert, then one with a
#: missing image and one broken in each way.
RECORDS = [
    # pure generation, multi-turn (the second request refines the first)
    {
        "conversations": [
            {"from": "human", "value": "I'd love to see a fox sleeping in the snow."},
            {"from": "gpt", "value": GEN_1},
            {"from": "human", "value": "Now make it night time."},
            {"from": "gpt", "value": GEN_2},
        ]
    },
    # editing an image generated earlier in the dialogue: text only, no 'image'
    {
        "id": "edit_text_7",
        "conversations": [
            {"from": "human", "value": "Draw a fox."},
            {"from": "gpt", "value": "<gen> a red fox </gen>"},
            {"from": "human", "value": "Can its fur be white instead?"},
            {"from": "gpt", "value": EDIT_GEN},
        ],
    },
    # editing an input image, LLaVA-style name with the coco/train2017/ prefix, placeholder mid-text
    {
        "id": "edit_img_1",
        "image": "coco/train2017/000000000009.jpg",
        "conversations": [
            {"from": "human", "value": "Please put a hat on the horse <image> for me."},
            {"from": "gpt", "value": EDIT_IMG},
        ],
    },
    # an input image without a placeholder (goes first in the first human turn), after a leading gpt
    # turn (dropped, as the upstream loader does); a video and an audio request
    {
        "id": 42,
        "image": "horse.png",
        "conversations": [
            {"from": "gpt", "value": "Hello! How can I help?"},
            {"from": "human", "value": "Show me the sea."},
            {"from": "gpt", "value": VIDEO},
            {"from": "human", "value": "And a barking dog?"},
            {"from": "gpt", "value": AUDIO},
        ],
    },
    # a single turn pair, jsonl-style short
    {
        "conversations": [
            {"from": "human", "value": "  Paint a cat.  "},
            {"from": "gpt", "value": "<gen> a cat </gen>"},
        ]
    },
    # the image file is absent
    {
        "id": "edit_missing",
        "image": "coco/train2017/000000999999.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nMake it snowy."},
            {"from": "gpt", "value": "<edit> make it snowy </edit>"},
        ],
    },
    {"id": "bad_role", "conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]},
    {"id": "no_conv", "image": "horse.png"},
    {
        "id": "two_human",
        "conversations": [
            {"from": "human", "value": "a"},
            {"from": "human", "value": "b"},
            {"from": "gpt", "value": "<gen> c </gen>"},
        ],
    },
    {
        "id": "tag_no_image",
        "conversations": [{"from": "human", "value": "<image> edit"}, {"from": "gpt", "value": "ok"}],
    },
    {"id": "int_value", "conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "ok"}]},
    {"id": "human_only", "conversations": [{"from": "human", "value": "Draw a fox."}]},
    "not a record",
]


@pytest.fixture()
def llmbind(tmp_path):
    """The JSON and an llmbind_dataset-like folder: one image under coco/train2017/, one flat."""
    media = tmp_path / "llmbind_dataset"
    images = {"edit_img_1": smooth_image(), "42": smooth_image(32, 40)[:, ::-1].copy()}
    (media / "coco" / "train2017").mkdir(parents=True)
    (media / "coco" / "train2017" / "000000000009.jpg").write_bytes(jpg_bytes(images["edit_img_1"]))
    (media / "horse.png").write_bytes(png_bytes(images["42"]))
    path = dump_json(
        media / "interactive_dataset" / "interactive_generation_and_editing_format.json", RECORDS
    )
    return path, media, images


def _read(shards):
    stats = DataStats()
    samples = list(iter_samples(shards, stage=3, stats=stats))
    assert stats.bad == 0
    return samples


def _check_samples(samples, images):
    by_id = {s.id: s for s in samples}
    assert list(by_id) == ["llmbind_0", "edit_text_7", "edit_img_1", "42", "llmbind_4"]  # input order kept
    assert all(s.kind == "conversation" and s.source == "llmbind" for s in samples)
    assert all(s.output_captions == [] and s.outputs() == [] for s in samples)  # prompts, not media

    gen = by_id["llmbind_0"]
    assert [t.role for t in gen.turns] == ["user", "assistant", "user", "assistant"]
    assert [t.parts for t in gen.turns] == [
        ["I'd love to see a fox sleeping in the snow."],
        [GEN_1],
        ["Now make it night time."],
        [GEN_2],
    ]
    assert by_id["edit_text_7"].turns[3].parts == [EDIT_GEN]
    assert by_id["edit_text_7"].turns[1].parts == ["<gen> a red fox </gen>"]

    edit = by_id["edit_img_1"]
    assert [t.role for t in edit.turns] == ["user", "assistant"]
    image = edit.turns[0].parts[0]
    assert isinstance(image, MediaItem) and image.modality is Modality.IMAGE
    assert edit.turns[0].parts[1:] == ["Please put a hat on the horse  for me."]
    assert edit.turns[1].parts == [EDIT_IMG]

    mixed = by_id["42"]
    assert [t.role for t in mixed.turns] == ["user", "assistant", "user", "assistant"]
    assert mixed.turns[0].parts[0].modality is Modality.IMAGE and mixed.turns[0].parts[1:] == [
        "Show me the sea."
    ]
    # the upstream docs' </audio_cap> is written as the </aud_cap> that nextgpt.task_prompts parses
    assert [t.parts for t in mixed.turns[1:]] == [
        [VIDEO],
        ["And a barking dog?"],
        [AUDIO.replace("</audio_cap>", "</aud_cap>")],
    ]

    assert [t.parts for t in by_id["llmbind_4"].turns] == [["Paint a cat."], ["<gen> a cat </gen>"]]

    for sid in ("edit_img_1", "42"):  # the input images decode to what was written
        value = np.asarray(by_id[sid].turns[0].parts[0].value)
        assert value.shape == images[sid].shape and value.dtype == np.uint8
        assert np.abs(value.astype(int) - images[sid]).mean() < 4
    assert (np.asarray(mixed.turns[0].parts[0].value) == images["42"]).all()  # png: lossless
    assert sum(isinstance(p, MediaItem) for s in samples for t in s.turns for p in t.parts) == 2


def test_llmbind_is_a_registered_format():
    assert "llmbind" in FORMATS and FORMATS[-2:] == ("llmbind", "refcoco")


def test_convert_llmbind_turns_tags_image_and_problems(tmp_path, llmbind):
    path, media, images = llmbind
    rep = convert("llmbind", path, media, tmp_path / "out", progress=False, max_per_shard=3)
    assert (rep.records, rep.written, rep.missing_media, rep.unreadable_media, rep.malformed) == (
        13,
        5,
        1,
        0,
        7,
    ), rep.summary()
    assert rep.outputs_without_media == 0 and len(rep.shards) == 2
    assert rep.examples["missing_media"] == [
        f"edit_missing: image file '000000999999.jpg' not found under {media}"
    ]
    malformed = rep.examples["malformed"]
    assert len(malformed) == 7
    for needle in (
        "bad_role: turn 0: 'from' must be human or gpt, got 'robot'",
        "no_conv: missing 'conversations'",
        "two_human: turn 1: turns must alternate human / gpt, got user after user",
        "tag_no_image: turn 0: <image> placeholder but no 'image'",
        "int_value: turn 0 'value' must be a string, got int",
        "human_only: no gpt turn",
        "#12: record must be an object, got str",
    ):
        assert sum(needle == m for m in malformed) == 1, (needle, malformed)
    saved = json.loads((tmp_path / "out" / "llmbind-report.json").read_text())
    assert (saved["format"], saved["written"], saved["missing_media"], saved["malformed"]) == (
        "llmbind",
        5,
        1,
        7,
    )
    _check_samples(_read(rep.shards), images)


@pytest.mark.parametrize(
    ("record", "kind", "reason"),
    [
        (
            {
                "image": "horse.png",
                "conversations": [
                    {"from": "human", "value": "<image> a <image> b"},
                    {"from": "gpt", "value": "ok"},
                ],
            },
            "malformed",
            "2 <image> placeholders; a record has at most one image",
        ),
        (
            {
                "image": "horse.png",
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "<image> b"}],
            },
            "malformed",
            "turn 1: <image> in a gpt turn",
        ),
        (
            {
                "image": ["horse.png"],
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            },
            "malformed",
            "'image' must be a non-empty string, got ['horse.png']",
        ),
        (
            {"conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "   "}]},
            "malformed",
            "turn 1 is empty",
        ),
        (
            {
                "image": "../x/horse.png",
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            },
            "malformed",
            "unsafe media path '../x/horse.png'",
        ),
        (
            {
                "image": "broken.jpg",
                "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}],
            },
            "unreadable_media",
            "broken.jpg: InputError: cannot decode image",
        ),
    ],
)
def test_llmbind_record_problems(tmp_path, record, kind, reason):
    media = tmp_path / "media"
    media.mkdir()
    (media / "horse.png").write_bytes(png_bytes(smooth_image()))
    (media / "broken.jpg").write_bytes(b"\xff\xd8\xffnot really")
    path = dump_json(tmp_path / "one.json", [record])
    rep = convert("llmbind", path, media, tmp_path / "out", progress=False)
    assert (rep.records, rep.written, rep.skipped, getattr(rep, kind)) == (1, 0, 1, 1), rep.summary()
    assert len(rep.examples[kind]) == 1 and reason in rep.examples[kind][0], rep.examples


def test_cli_converts_llmbind(tmp_path, llmbind):
    path, media, images = llmbind
    out = tmp_path / "cli_out"
    proc = subprocess.run(
        [sys.executable, "-m", "nextgpt.cli", "data", "convert", "llmbind", "--input", str(path)]
        + ["--media-dir", str(media), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "llmbind: 5 of 13 records written to 1 shard(s)" in proc.stdout
    assert "missing media: 1, unreadable media: 0, malformed: 7" in proc.stdout
    shards = sorted(str(p) for p in out.glob("llmbind-*.tar"))
    assert len(shards) == 1
    _check_samples(_read(shards), images)
