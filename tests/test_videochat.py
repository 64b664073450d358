"""The ``videochat`` converter (VideoChat ``videochat_instruct_11k.json`` -> conversation shards): exact
turns, media lookup, problem accounting, the command line, and rendering through a model processor."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from data_fixtures import dump_json, mp4_bytes, video_frames

from nextgpt.media import Video
from nextgpt.modality import Modality
from nextgpt.processor import IGNORE_INDEX, MediaItem
from nextgpt.stages.data import FORMATS, DataStats, convert, iter_samples

DESCRIBE = "Describe the following video in detail."
LONG = "A man in a red coat walks a dog along a snowy path, then stops to throw a ball."
CHAT_I = "Answer the questions about the video in full sentences."

#: Seven records shaped like ``videochat_instruct_11k.json`` (plus the VideoChat2 ``i`` key); the
#: first three convert, the others are broken in one way each.
RECORDS = [
    # a detailed description: one QA item, the upstream nested WebVid path
    {"video": "000001_000050/1066682446.mp4", "QA": [{"q": DESCRIBE, "a": LONG}]},
    # a multi-turn conversation with a per-record instruction repeated on every item (VideoChat2 style)
    {
        "video": "050951_051000/1022713978.mp4",
        "QA": [
            {"i": CHAT_I, "q": "What is the man wearing?", "a": "He wears a red coat."},
            {"i": CHAT_I, "q": "What does he throw?", "a": "A ball, for the dog."},
            {"i": "Now be brief.", "q": "Where are they?", "a": "On a snowy path."},
        ],
    },
    # caption-style item: empty question and null instruction; video under media_dir/videos/
    {"video": "000101_000150/1000000003.mp4", "QA": [{"i": None, "q": "", "a": "Snow falls on a lake."}]},
    {"video": "000001_000050/9999999999.mp4", "QA": [{"q": "Hi?", "a": "Hello."}]},  # file absent
    {"QA": [{"q": "Where is the video?", "a": "Missing."}]},  # no 'video'
    {"video": "000001_000050/1066682446.mp4", "QA": [{"q": "Empty answer?", "a": "  "}]},
    {"video": "000001_000050/1066682446.mp4", "QA": [{"q": 42, "a": "wrong type"}]},
    {"video": "000001_000050/1066682446.mp4", "QA": "not a list"},
    {"video": "000001_000050/1066682446.mp4", "QA": [{"q": "One", "a": "1"}, {"q": "", "a": "no question"}]},
    {"video": "../outside/1066682446.mp4", "QA": [{"q": "Escape?", "a": "No."}]},
]


@pytest.fixture()
def videochat(tmp_path):
    """The JSON and a WebVid-like media folder: one nested, one flat (downloaded by id), one in videos/."""
    media = tmp_path / "WebVid10M"
    frames = {
        "1066682446": video_frames(t=6),
        "1022713978": video_frames(t=4, h=32, w=48),
        "1000000003": video_frames(t=5),
    }
    (media / "000001_000050").mkdir(parents=True)
    (media / "000001_000050" / "1066682446.mp4").write_bytes(mp4_bytes(frames["1066682446"]))
    (media / "1022713978.mp4").write_bytes(mp4_bytes(frames["1022713978"]))
    (media / "videos" / "000101_000150").mkdir(parents=True)
    (media / "videos" / "000101_000150" / "1000000003.mp4").write_bytes(mp4_bytes(frames["1000000003"]))
    path = dump_json(tmp_path / "videochat_instruct_11k.json", RECORDS)
    return path, media, frames


def _read(shards):
    stats = DataStats()
    samples = list(iter_samples(shards, stage=3, stats=stats))
    assert stats.bad == 0
    return samples


def _texts(turn):
    return [p for p in turn.parts if isinstance(p, str)]


def _check_samples(samples, frames):
    by_id = {s.id: s for s in samples}
    assert list(by_id) == ["1066682446", "1022713978", "1000000003"]  # input order kept
    assert all(s.kind == "conversation" and s.source == "videochat" for s in samples)

    desc = by_id["1066682446"]
    assert [t.role for t in desc.turns] == ["user", "assistant"]
    video = desc.turns[0].parts[0]
    assert isinstance(video, MediaItem) and video.modality is Modality.VIDEO
    assert desc.turns[0].parts[1:] == [DESCRIBE] and desc.turns[1].parts == [LONG]
    assert desc.output_captions == [] and desc.outputs() == []

    chat = by_id["1022713978"]
    assert [t.role for t in chat.turns] == ["user", "assistant"] * 3
    assert chat.turns[0].parts[0].modality is Modality.VIDEO
    assert _texts(chat.turns[0]) == [CHAT_I, "What is the man wearing?"]
    assert chat.turns[2].parts == ["What does he throw?"]  # the same instruction is not repeated
    assert chat.turns[4].parts == ["Now be brief.", "Where are they?"]  # a new one is
    assert [t.parts for t in chat.turns[1::2]] == [
        ["He wears a red coat."],
        ["A ball, for the dog."],
        ["On a snowy path."],
    ]
    assert all(not isinstance(p, MediaItem) for t in chat.turns[1:] for p in t.parts)  # one video only

    caption = by_id["1000000003"]
    assert len(caption.turns[0].parts) == 1 and caption.turns[0].parts[0].modality is Modality.VIDEO
    assert caption.turns[1].parts == ["Snow falls on a lake."]

    for sid, sample in by_id.items():  # every video decodes to the frames that were written
        decoded = sample.turns[0].parts[0].value
        assert isinstance(decoded, Video) and decoded.fps == pytest.approx(8.0)
        assert decoded.source.shape == frames[sid].shape and decoded.source.dtype == np.uint8
        assert np.abs(decoded.source.astype(int) - frames[sid]).mean() < 4


def test_videochat_is_a_registered_format():
    assert "videochat" in FORMATS


def test_convert_videochat_turns_media_and_problems(tmp_path, videochat):
    path, media, frames = videochat
    rep = convert("videochat", path, media, tmp_path / "out", progress=False, max_per_shard=2)
    assert (rep.records, rep.written, rep.missing_media, rep.unreadable_media, rep.malformed) == (
        len(RECORDS),
        3,
        1,
        0,
        6,
    ), rep.summary()
    assert rep.outputs_without_media == 0 and len(rep.shards) == 2
    assert rep.examples["missing_media"] == [
        f"000001_000050/9999999999.mp4: video file '000001_000050/9999999999.mp4' not found under {media}"
    ]
    malformed = rep.examples["malformed"]
    assert len(malformed) == 6
    for needle in (
        "#4: missing 'video'",
        "QA 0 'a' is empty",
        "QA 0 'q' must be a string, got int",
        "'QA' must be a non-empty list of turn objects",
        "QA 1 has neither an instruction 'i' nor a question 'q'",
        "unsafe media path '../outside/1066682446.mp4'",
    ):
        assert sum(needle in m for m in malformed) == 1, (needle, malformed)
    saved = json.loads((tmp_path / "out" / "videochat-report.json").read_text())
    assert saved["written"] == 3 and saved["malformed"] == 6 and saved["format"] == "videochat"
    _check_samples(_read(rep.shards), frames)


def test_unreadable_video_is_counted_not_fatal(tmp_path):
    media = tmp_path / "media"
    (media / "p").mkdir(parents=True)
    (media / "p" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    (media / "p" / "clip.gif").write_bytes(b"GIF89a")
    path = dump_json(
        tmp_path / "v.json",
        [
            {"video": "p/broken.mp4", "QA": [{"q": "?", "a": "!"}]},
            {"video": "p/clip.gif", "QA": [{"q": "?", "a": "!"}]},
        ],
    )
    rep = convert("videochat", path, media, tmp_path / "out", progress=False)
    assert (rep.written, rep.unreadable_media, rep.malformed, rep.missing_media) == (0, 2, 0, 0)
    assert rep.shards == [] or _read(rep.shards) == []
    assert [e.split(":")[0] for e in rep.examples["unreadable_media"]] == ["p/broken.mp4", "p/clip.gif"]


def test_cli_converts_videochat(tmp_path, videochat):
    path, media, frames = videochat
    out = tmp_path / "cli_out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nextgpt.cli",
            "data",
            "convert",
            "videochat",
            "--input",
            str(path),
            "--media-dir",
            str(media),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"videochat: 3 of {len(RECORDS)} records written to 1 shard(s)" in proc.stdout
    assert "missing media: 1, unreadable media: 0, malformed: 6" in proc.stdout
    shards = sorted(str(p) for p in out.glob("videochat-*.tar"))
    assert len(shards) == 1
    _check_samples(_read(shards), frames)


def test_converted_conversations_render_with_labels_on_answers_only(tmp_path, videochat):
    from nextgpt import NextGPT

    path, media, _ = videochat
    rep = convert("videochat", path, media, tmp_path / "out", progress=False)
    processor = NextGPT.from_preset("tiny").processor
    for sample in _read(rep.shards):
        enc = processor.encode(sample.turns, add_generation_prompt=False)
        assert len(enc.slots) == 1 and enc.slots[0][0].modality is Modality.VIDEO and enc.outputs == []
        labelled = (enc.labels != IGNORE_INDEX).tolist()
        assert (enc.labels[enc.labels != IGNORE_INDEX] == enc.input_ids[enc.labels != IGNORE_INDEX]).all()
        runs, current = [], []
        for k, flag in enumerate(labelled):  # contiguous labelled spans, one per assistant turn
            if flag:
                current.append(int(enc.input_ids[k]))
            elif current:
                runs.append(current)
                current = []
        if current:
            runs.append(current)
        answers = [t.text() for t in sample.turns if t.role == "assistant"]
        assert [processor.decode(r) for r in runs] == answers
        prompt = processor.decode(enc.input_ids[enc.labels == IGNORE_INDEX])
        for turn in sample.turns:
            for text in _texts(turn):
                assert (text in prompt) == (turn.role == "user"), (text, prompt)
