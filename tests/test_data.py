"""Training data layer: shard round trips, stage turn construction, corrupt-sample accounting, worker and
rank splitting, deterministic order, the upstream-format converters and the demo dataset."""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import pytest
import torch
from data_fixtures import (
    dump_json,
    image_array,
    image_pair,
    jpg_bytes,
    mp4_bytes,
    png_bytes,
    smooth_image,
    text_conversation,
    video_frames,
    wav_bytes,
    waveform,
    write_raw_tar,
)
from PIL import Image

from nextgpt.errors import ConfigError, InputError
from nextgpt.media import Audio, Video
from nextgpt.modality import Modality
from nextgpt.processor import MediaItem
from nextgpt.stages.data import (
    FORMATS,
    STAGE1_PROMPT,
    ConversationRecord,
    DataStats,
    MediaBlob,
    PairRecord,
    RecordTurn,
    ShardDataset,
    build_demo_dataset,
    clean_caption,
    collate_samples,
    convert,
    count_samples,
    iter_samples,
    write_samples,
)

RAW_CAPTION = '  A "Red" (tiny) cat: sleeping;\n\n on ~a* mat#  '
CLEAN = "a red tiny cat sleeping on a mat"


def _pairs_dir(tmp_path):
    img, wave, frames = image_array(), waveform(channels=2), video_frames()
    records = [
        PairRecord("p_png", RAW_CAPTION, MediaBlob(Modality.IMAGE, png_bytes(img), "png"), source="s"),
        PairRecord("p_jpg", "a smooth gradient", MediaBlob(Modality.IMAGE, jpg_bytes(smooth_image()), "jpg")),
        PairRecord(
            "p_wav", "a two-tone hum", MediaBlob(Modality.AUDIO, wav_bytes(wave), "wav", name="hum.wav")
        ),
        PairRecord("p_mp4", "moving stripes", MediaBlob(Modality.VIDEO, mp4_bytes(frames), "mp4")),
    ]
    paths = write_samples(tmp_path / "pairs", records, prefix="pairs", max_count_per_shard=3)
    return paths, img, wave, frames


def test_clean_caption_legacy_rules():
    assert clean_caption(RAW_CAPTION) == CLEAN
    assert clean_caption("Caption\r\n") == "caption"


def test_pair_round_trip_and_stage_turns(tmp_path):
    paths, img, wave, frames = _pairs_dir(tmp_path)
    assert [p.name for p in paths] == ["pairs-000000.tar", "pairs-000001.tar"]
    assert count_samples(tmp_path / "pairs") == 4

    s1 = {s.id: s for s in iter_samples(paths, 1)}
    png = s1["p_png"]
    assert png.kind == "pair" and png.source == "s" and png.output_captions == []
    user, assistant = png.turns
    assert user.role == "user" and isinstance(user.parts[0], MediaItem) and user.parts[1] == STAGE1_PROMPT
    assert assistant.role == "assistant" and assistant.parts == [CLEAN]
    value = user.parts[0].value
    assert isinstance(value, Image.Image) and value.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(value), img)  # PNG: exact
    jpg = np.asarray(s1["p_jpg"].turns[0].parts[0].value).astype(int)
    assert np.abs(jpg - smooth_image()).mean() < 3  # JPEG: close
    audio = s1["p_wav"].turns[0].parts[0].value
    assert isinstance(audio, Audio) and audio.sample_rate == 16000
    np.testing.assert_array_equal(audio.source, wave)  # 16-bit WAV of 16-bit-grid samples: exact
    video = s1["p_mp4"].turns[0].parts[0].value
    assert isinstance(video, Video) and video.fps == pytest.approx(8.0)
    assert video.source.shape == frames.shape and video.source.dtype == np.uint8
    assert np.abs(video.source.astype(int) - frames).mean() < 4  # MP4: close

    s2 = {s.id: s for s in iter_samples(paths, 2)}
    user, assistant = s2["p_png"].turns
    assert user.parts == [CLEAN]
    assert assistant.parts[0] == CLEAN and assistant.parts[1].modality is Modality.IMAGE
    np.testing.assert_array_equal(np.asarray(assistant.parts[1].value), img)
    assert s2["p_png"].output_captions == [RAW_CAPTION.strip()]  # raw, like the legacy embedding cache
    assert s2["p_wav"].output_names == ["hum.wav"]
    cleaned = {s.id: s for s in iter_samples(paths, 2, clean_output_captions=True)}
    assert cleaned["p_png"].output_captions == [CLEAN]
    assert [s.outputs()[0].modality for s in cleaned.values()] == [
        Modality.IMAGE,
        Modality.IMAGE,
        Modality.AUDIO,
        Modality.VIDEO,
    ]

    s3 = {s.id: s for s in iter_samples(paths, 3, decode_output_media=False)}
    assert s3["p_mp4"].turns[1].parts[1].value is None  # output decoding off: captions only
    assert s3["p_mp4"].turns[0].parts == ["moving stripes"]

    with pytest.raises(ConfigError, match="stage"):
        ShardDataset(paths, 4)


def test_conversation_round_trip(tmp_path):
    img, wave, frames = image_array(seed=3), waveform(seed=1), video_frames(t=6)
    rec = ConversationRecord(
        "c1",
        [
            RecordTurn(
                "user",
                [
                    "compare",
                    MediaBlob(Modality.IMAGE, png_bytes(img), "png"),
                    "with",
                    MediaBlob(Modality.VIDEO, mp4_bytes(frames), "mp4"),
                ],
            ),
            RecordTurn(
                "assistant",
                [
                    "here is a sound:",
                    MediaBlob(Modality.AUDIO, wav_bytes(wave), "wav", caption=" A Hum ", name="hum.wav"),
                ],
            ),
            RecordTurn("user", ["and a picture?"]),
            RecordTurn("assistant", [MediaBlob(Modality.IMAGE, None, None, caption="a red square")]),
        ],
        source="unit",
    )
    (path,) = write_samples(tmp_path, [rec], prefix="conv")
    (sample,) = list(iter_samples(path, 3))
    assert sample.kind == "conversation" and sample.id == "c1" and sample.source == "unit"
    assert [t.role for t in sample.turns] == ["user", "assistant", "user", "assistant"]
    u = sample.turns[0].parts
    assert u[0] == "compare" and u[2] == "with"
    np.testing.assert_array_equal(np.asarray(u[1].value), img)
    assert u[3].value.source.shape == frames.shape
    out = sample.turns[1].parts[1]
    assert out.modality is Modality.AUDIO
    np.testing.assert_array_equal(out.value.source, wave)
    assert sample.turns[3].parts[0].value is None  # caption-only output
    assert sample.output_captions == ["A Hum", "a red square"]
    assert sample.output_names == ["hum.wav", None]
    # stage 1 keeps conversations as stored
    (s1,) = list(iter_samples(path, 1))
    assert [t.text() for t in s1.turns] == [t.text() for t in sample.turns]


def test_writer_refuses_bad_records_and_stale_shards(tmp_path):
    no_caption = ConversationRecord(
        "x", [RecordTurn("user", ["hi"]), RecordTurn("assistant", [MediaBlob(Modality.IMAGE, None, None)])]
    )
    with pytest.raises(InputError, match="caption"):
        write_samples(tmp_path / "a", [no_caption], prefix="c")
    write_samples(
        tmp_path / "b", [text_conversation(0), text_conversation(1)], prefix="c", max_count_per_shard=1
    )
    with pytest.raises(InputError, match="already holds 2"):
        write_samples(tmp_path / "b", [text_conversation(0)], prefix="c")
    assert len(write_samples(tmp_path / "b", [text_conversation(0)], prefix="c", overwrite=True)) == 1
    assert count_samples(tmp_path / "b") == 1


def test_img2dataset_style_shards(tmp_path):
    img = image_array(seed=5)
    frames = video_frames(t=4)
    shard = write_raw_tar(
        tmp_path / "web-000000.tar",
        [
            ("000000000.jpg", jpg_bytes(smooth_image())),
            ("000000000.txt", b"A Photo of a Gradient"),
            (
                "000000000.json",
                json.dumps({"key": "000000000", "url": "http://x", "status": "success"}).encode(),
            ),
            ("000000001.png", png_bytes(img)),
            ("000000001.json", json.dumps({"caption": "json caption", "key": "k1"}).encode()),
            ("000000002.mp4", mp4_bytes(frames)),
            ("000000002.txt", b"a clip"),
        ],
    )
    samples = {s.key: s for s in iter_samples(shard, 1)}
    assert set(samples) == {"000000000", "000000001", "000000002"}
    assert samples["000000000"].kind == "pair" and samples["000000000"].id == "000000000"
    assert samples["000000000"].turns[1].parts == ["a photo of a gradient"]
    assert samples["000000001"].turns[1].parts == ["json caption"] and samples["000000001"].id == "k1"
    np.testing.assert_array_equal(np.asarray(samples["000000001"].turns[0].parts[0].value), img)
    assert samples["000000002"].turns[0].parts[0].modality is Modality.VIDEO


def _corrupt_shard(tmp_path):
    good = [text_conversation(i) for i in range(4)]
    (path,) = write_samples(tmp_path / "good", good, prefix="g")
    import tarfile

    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    conv_missing = {
        "kind": "conversation",
        "id": "cm",
        "turns": [
            {"role": "user", "parts": [{"media": "m0.jpg", "modality": "image", "caption": None}]},
            {"role": "assistant", "parts": [{"text": "ok"}]},
        ],
    }
    bad = [
        ("bad_jpg.jpg", b"\xff\xd8\xff\xe0 definitely not a jpeg"),
        (
            "bad_jpg.json",
            json.dumps({"kind": "pair", "modality": "image", "caption": "x", "id": "bj"}).encode(),
        ),
        ("bad_json.json", b"{not json"),
        ("bad_ref.json", json.dumps(conv_missing).encode()),
    ]
    # good, bad jpg, good, bad json, good, bad member reference, good
    mixed = members[:1] + bad[:2] + members[1:2] + bad[2:3] + members[2:3] + bad[3:] + members[3:]
    return write_raw_tar(tmp_path / "mixed-000000.tar", mixed)


def test_corrupt_samples_skipped_counted_and_logged(tmp_path, caplog):
    shard = _corrupt_shard(tmp_path)
    stats = DataStats()
    with caplog.at_level(logging.WARNING, logger="nextgpt.stages.data.shards"):
        samples = list(iter_samples(shard, 3, stats=stats))
    assert [s.id for s in samples] == ["conv0", "conv1", "conv2", "conv3"]
    assert (stats.seen, stats.bad) == (7, 3)
    assert stats.bad_keys == ["bad_jpg", "bad_json", "bad_ref"]
    for key, reason in [
        ("bad_jpg", "cannot decode image"),
        ("bad_json", "invalid json"),
        ("bad_ref", "not in the sample"),
    ]:
        assert any(key in r.getMessage() and reason in r.getMessage() for r in caplog.records), key


def test_truncated_shard_keeps_what_came_before(tmp_path):
    paths = write_samples(tmp_path / "s", [image_pair(i) for i in range(6)], prefix="p")
    data = paths[0].read_bytes()
    cut = tmp_path / "cut-000000.tar"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    good = write_samples(tmp_path / "t", [text_conversation(9)], prefix="t")
    stats = DataStats()
    samples = list(
        iter_samples(
            [str(cut), *map(str, good)], 2, stats=stats, max_bad_fraction=0.5, min_samples_before_check=1
        )
    )
    ids = [s.id for s in samples]
    assert ids[-1] == "conv9" and 1 <= len(ids) - 1 < 6  # the next shard is still read
    assert stats.bad == 1 and stats.bad_keys[0].startswith(str(cut))
    assert stats.reasons == {"corrupt or truncated shard": 1}


def test_bad_fraction_raises_with_fraction_and_keys(tmp_path):
    shard = _corrupt_shard(tmp_path)
    with pytest.raises(InputError, match=r"3 of 7 \(42\.9%\).*max_bad_fraction=10\.0%.*bad_jpg"):
        list(iter_samples(shard, 3, max_bad_fraction=0.1, min_samples_before_check=7))
    # below min_samples_before_check (or under the threshold) nothing is raised
    assert len(list(iter_samples(shard, 3, max_bad_fraction=0.1, min_samples_before_check=8))) == 4
    assert len(list(iter_samples(shard, 3, max_bad_fraction=0.5, min_samples_before_check=1))) == 4


def test_all_bad_is_an_error_even_when_small(tmp_path):
    shard = write_raw_tar(tmp_path / "x-000000.tar", [("a.json", b"[]"), ("b.json", b"{")])
    with pytest.raises(InputError, match="none of the 2 samples"):
        list(iter_samples(shard, 3))
    with pytest.raises(InputError, match="not found"):
        ShardDataset(tmp_path / "missing-000000.tar", 3)


def _keys_across(urls, world, workers, **kw):
    keys = []
    for rank in range(world):
        ds = ShardDataset(urls, 3, rank=rank, world_size=world, **kw)
        loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers, collate_fn=None)
        keys += [s.key for s in loader]
    return keys


@pytest.mark.parametrize("n_shards, split", [(8, "auto"), (1, "auto"), (3, "sample")])
def test_each_sample_once_across_workers_and_ranks(tmp_path, n_shards, split):
    recs = [text_conversation(i) for i in range(24)]
    paths = write_samples(tmp_path, recs, prefix="c", max_count_per_shard=24 // n_shards)
    assert len(paths) == n_shards
    keys = _keys_across(paths, world=2, workers=2, split=split, shuffle=4, seed=1)
    assert len(keys) == 24 and len(set(keys)) == 24
    # a single rank of the two sees only its half
    half = [s.key for s in ShardDataset(paths, 3, rank=1, world_size=2, split=split)]
    assert 0 < len(half) < 24


@pytest.mark.parametrize("world, workers", [(3, 0), (2, 2)])
def test_balanced_reading_is_exact_and_loses_nothing(tmp_path, world, workers):
    """Balanced (training) reading: every (rank, worker) yields exactly ceil(N / G) items; every good
    sample arrives once, bad ones as DroppedSample("decode") in their place, and the few workers with
    a shorter range add padding. The loader's batch count is known before reading (the LR schedule's
    length) and equals what it yields."""
    from nextgpt.stages.data import DroppedSample, collate_samples

    uneven = write_samples(
        tmp_path / "u", [text_conversation(i) for i in range(7)], prefix="u", max_count_per_shard=2
    )  # 2 + 2 + 2 + 1
    urls = [*map(str, uneven), str(_corrupt_shard(tmp_path))]  # + 4 good, 3 bad: N = 14
    total = world * max(1, workers)
    quota = -(-14 // total)
    good, dropped, padding, batches = [], [], 0, []
    for rank in range(world):
        ds = ShardDataset(urls, 3, rank=rank, world_size=world, balanced=True, shuffle=3, seed=5)
        assert ds.num_samples() == 14 and ds.items_per_worker(total) == quota
        loader = torch.utils.data.DataLoader(
            ds, batch_size=2, num_workers=workers, collate_fn=collate_samples
        )
        got = list(loader)
        assert len(got) == ds.batches_per_rank(2, workers)  # exact, known up front
        batches.append(len(got))
        for item in (x for b in got for x in b):
            if isinstance(item, DroppedSample):
                padding += item.is_padding
                if not item.is_padding:
                    assert item.reason == "decode" and item.detail
                    dropped.append(item.key)
            else:
                good.append(item.id)
    assert len(set(batches)) == 1  # every rank runs the same number of steps
    assert sorted(good) == sorted([f"conv{i}" for i in range(7)] + [f"conv{i}" for i in range(4)])
    assert sorted(dropped) == ["bad_jpg", "bad_json", "bad_ref"]
    assert padding == total * quota - 14


def test_deterministic_order_epochs_skip_and_collate(tmp_path):
    paths = write_samples(
        tmp_path, [text_conversation(i) for i in range(40)], prefix="c", max_count_per_shard=5
    )

    def order(**kw):
        return [s.id for s in ShardDataset(paths, 3, shuffle=8, **kw)]

    a = order(seed=7)
    assert a == order(seed=7) and sorted(a) == sorted(order(seed=8))
    assert a != order(seed=8) and a != order(seed=7, epoch=1)
    assert a != [f"conv{i}" for i in range(40)]
    assert order(seed=7, skip=5) == a[5:]
    assert order(seed=7, max_samples_per_worker=3) == a[:3]
    ds = ShardDataset(paths, 3, shuffle=8, seed=7)
    ds.set_epoch(1)
    assert [s.id for s in ds] == order(seed=7, epoch=1)
    assert [s.id for s in ShardDataset(paths, 3)] == [f"conv{i}" for i in range(40)]  # no shuffle: file order
    braces = ShardDataset(str(tmp_path / "c-{000000..000007}.tar"), 3)
    assert braces.urls == [str(p) for p in paths] == ShardDataset(tmp_path, 3).urls
    loader = torch.utils.data.DataLoader(ShardDataset(paths, 3), batch_size=4, collate_fn=collate_samples)
    assert [s.id for s in next(iter(loader))] == ["conv0", "conv1", "conv2", "conv3"]


# --------------------------------------------------------------------------------------------------
# converters


@pytest.fixture()
def media_dir(tmp_path):
    d = tmp_path / "media"
    (d / "images").mkdir(parents=True)
    (d / "images" / "ok1.jpg").write_bytes(jpg_bytes(smooth_image()))
    (d / "ok2.png").write_bytes(png_bytes(image_array()))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xffnot really")
    (d / "clip.mp4").write_bytes(mp4_bytes(video_frames(t=4)))
    (d / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 garbage")
    (d / "snd.wav").write_bytes(wav_bytes(waveform()))
    (d / "snd.txt").write_bytes(b"not audio")
    (d / "out.jpg").write_bytes(jpg_bytes(smooth_image()))
    return d


def _read_all(report, stage=3):
    stats = DataStats()
    samples = list(iter_samples(report.shards, stage, stats=stats)) if report.shards else []
    assert stats.bad == 0
    return samples


def _check(report, written, missing=0, unreadable=0, malformed=0):
    assert (report.written, report.missing_media, report.unreadable_media, report.malformed) == (
        written,
        missing,
        unreadable,
        malformed,
    ), report.summary()


def test_convert_pairs(tmp_path, media_dir):
    cc3m = dump_json(
        tmp_path / "cc3m.json",
        [
            {"caption": "a gradient", "id": "001", "image_name": "ok1.jpg"},
            {"caption": "pattern ", "id": "002", "image_name": "ok2.png"},
            {"caption": "gone", "id": "003", "image_name": "absent.jpg"},
            {"caption": "broken", "id": "004", "image_name": "broken.jpg"},
            {"id": "005", "image_name": "ok1.jpg"},
            {"caption": "escape", "id": "006", "image_name": "../media/ok2.png"},
            "not a record",
        ],
    )
    rep = convert("cc3m", cc3m, media_dir, tmp_path / "out", max_per_shard=1, progress=False)
    _check(rep, 2, missing=1, unreadable=1, malformed=3)
    assert len(rep.shards) == 2 and rep.records == 7
    assert any(e.startswith("003:") for e in rep.examples["missing_media"])
    assert any(e.startswith("004:") for e in rep.examples["unreadable_media"])
    assert any(e.startswith("005:") for e in rep.examples["malformed"])
    assert json.loads((tmp_path / "out" / "cc3m-report.json").read_text())["written"] == 2
    samples = {s.id: s for s in _read_all(rep, 1)}
    assert set(samples) == {"001", "002"} and samples["002"].turns[1].parts == ["pattern"]
    np.testing.assert_array_equal(np.asarray(samples["002"].turns[0].parts[0].value), image_array())

    webvid = dump_json(
        tmp_path / "webvid.json",
        [
            {"caption": "Clip\r\n", "id": 12, "video_name": "clip.mp4"},
            {"caption": "bad", "id": 13, "video_name": "bad.mp4"},
            {"caption": "missing", "id": 14, "video_name": "nope.mp4"},
        ],
    )
    rep = convert("webvid", webvid, media_dir, tmp_path / "out", progress=False)
    _check(rep, 1, missing=1, unreadable=1)
    (s,) = _read_all(rep, 2)
    assert s.id == "12" and s.output_captions == ["Clip"] and s.turns[1].parts[1].modality is Modality.VIDEO

    audiocap = dump_json(
        tmp_path / "audiocap.json",
        [
            {"audio_id": 7, "audio_name": "snd.wav", "caption": "A hum"},
            {"audio_id": 8, "audio_name": "snd.txt", "caption": "text file"},
            {"audio_id": 9, "audio_name": "snd.wav"},
        ],
    )
    rep = convert("audiocap", audiocap, media_dir, tmp_path / "out", progress=False)
    _check(rep, 1, unreadable=1, malformed=1)
    (s,) = _read_all(rep, 1)
    assert s.id == "7" and isinstance(s.turns[0].parts[0].value, Audio)


def test_convert_t2m(tmp_path, media_dir):
    def item(name, modality="image", caption="a smooth gradient", value="Here it is <image> enjoy"):
        return {
            "conversation": [
                {"from": "human", "value": "Make me a picture", "input_modality": "text"},
                {"from": "gpt", "value": value, "caption": caption, "output_modality": modality},
            ],
            "mm_name": name,
            "source_data": "cc3m",
        }

    path = dump_json(
        tmp_path / "image_t2x.json",
        [
            item("out.jpg"),
            item("never_made.jpg", value="A picture for you."),
            item("broken.jpg"),
            item("out.jpg", caption=""),
            item("out.jpg", modality="smell"),
            {"mm_name": "x.jpg"},
        ],
    )
    rep = convert("t2m", path, media_dir, tmp_path / "out", progress=False)
    _check(rep, 2, unreadable=1, malformed=3)
    assert rep.outputs_without_media == 1
    samples = {s.id: s for s in _read_all(rep)}
    with_media, caption_only = samples["out.jpg"], samples["never_made.jpg"]
    parts = with_media.turns[1].parts
    assert parts[0] == "Here it is" and parts[1].modality is Modality.IMAGE and parts[2] == "enjoy"
    assert isinstance(parts[1].value, Image.Image)
    assert with_media.output_captions == ["a smooth gradient"] and with_media.output_names == ["out.jpg"]
    assert with_media.source == "cc3m"
    assert (
        caption_only.turns[1].parts[0] == "A picture for you."
        and caption_only.turns[1].parts[1].value is None
    )
    strict = convert("t2m", path, media_dir, tmp_path / "strict", progress=False, require_output_media=True)
    _check(strict, 1, missing=1, unreadable=1, malformed=3)


def test_convert_mosit(tmp_path, media_dir):
    rec = {
        "image_list": [
            {"image_name": "ok2.png", "data_source": "mosit", "caption": "stripes"},
            {"image_name": "out.jpg", "data_source": "mosit", "caption": "a gradient picture"},
        ],
        "video_list": [],
        "audio_list": [{"audio_name": "gen.wav", "data_source": "mosit", "caption": "a gentle hum"}],
        "conversation": [
            {"from": "human", "value": "Look at <Image>ok2.png</Image> what is it?"},
            {"from": "gpt", "value": "Stripes. Here is another: <Image>out.jpg</Image>"},
            {"from": "human", "value": "Now a sound"},
            {"from": "gpt", "value": "<Audio>gen.wav</Audio> There you go."},
        ],
    }
    missing_input = json.loads(json.dumps(rec))
    missing_input["conversation"][0]["value"] = "Look at <Image>lost.png</Image>"
    no_caption = json.loads(json.dumps(rec))
    no_caption["conversation"][1]["value"] = "Here: <Video>unlisted.mp4</Video>"
    path = dump_json(tmp_path / "mosit.json", [rec, missing_input, no_caption])
    rep = convert("mosit", path, media_dir, tmp_path / "out", progress=False)
    _check(rep, 1, missing=1, malformed=1)
    assert rep.outputs_without_media == 1  # gen.wav exists only as a caption
    (s,) = _read_all(rep)
    u0, a0, _, a1 = s.turns
    assert (
        u0.parts[0] == "Look at" and u0.parts[1].modality is Modality.IMAGE and u0.parts[2] == "what is it?"
    )
    np.testing.assert_array_equal(np.asarray(u0.parts[1].value), image_array())
    assert a0.parts[0] == "Stripes. Here is another:" and isinstance(a0.parts[1].value, Image.Image)
    assert (
        a1.parts[0].modality is Modality.AUDIO
        and a1.parts[0].value is None
        and a1.parts[1] == "There you go."
    )
    assert s.output_captions == ["a gradient picture", "a gentle hum"]


def test_convert_llava_and_alpaca(tmp_path, media_dir):
    llava = dump_json(
        tmp_path / "llava.json",
        [
            {
                "id": "a",
                "image": "ok1.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nWhat is shown?"},
                    {"from": "gpt", "value": "A gradient."},
                    {"from": "human", "value": "Colours?"},
                    {"from": "gpt", "value": "Red and green."},
                ],
            },
            {
                "id": "b",
                "image": "ok2.png",
                "conversations": [
                    {"from": "human", "value": "Describe"},
                    {"from": "gpt", "value": "Stripes."},
                ],
            },
            {
                "id": "c",
                "image": "absent.jpg",
                "conversations": [
                    {"from": "human", "value": "<image>\nHi"},
                    {"from": "gpt", "value": "Hello"},
                ],
            },
            {
                "id": "d",
                "conversations": [
                    {"from": "human", "value": "<image> no file"},
                    {"from": "gpt", "value": "?"},
                ],
            },
            {"id": "e", "conversations": [{"from": "robot", "value": "x"}]},
        ],
    )
    rep = convert("llava", llava, media_dir, tmp_path / "out", progress=False)
    _check(rep, 2, missing=1, malformed=2)
    samples = {s.id: s for s in _read_all(rep)}
    a = samples["a"]
    assert [t.role for t in a.turns] == ["user", "assistant", "user", "assistant"]
    assert a.turns[0].parts[0].modality is Modality.IMAGE and a.turns[0].parts[1] == "What is shown?"
    assert samples["b"].turns[0].parts[0].modality is Modality.IMAGE  # no placeholder: image first
    assert samples["b"].turns[0].parts[1] == "Describe" and a.output_captions == []

    alpaca = dump_json(
        tmp_path / "alpaca.json",
        [
            {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": "", "output": "Hi!"},
            {"instruction": "No output", "input": ""},
        ],
    )
    rep = convert("alpaca", alpaca, None, tmp_path / "out", progress=False)
    _check(rep, 2, malformed=1)
    texts = [[t.text() for t in s.turns] for s in _read_all(rep)]
    assert texts == [["Add the numbers.\n\n2 and 3", "5"], ["Say hi.", "Hi!"]]


def test_convert_errors(tmp_path, media_dir):
    with pytest.raises(ConfigError, match="valid: " + ", ".join(FORMATS)):
        convert("coco", tmp_path / "x.json", media_dir, tmp_path / "out")
    with pytest.raises(InputError, match="not found"):
        convert("cc3m", tmp_path / "absent.json", media_dir, tmp_path / "out")
    (tmp_path / "obj.json").write_text('{"caption": "x"}')
    with pytest.raises(InputError, match="JSON list"):
        convert("cc3m", tmp_path / "obj.json", media_dir, tmp_path / "out")
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(InputError, match="cannot parse"):
        convert("cc3m", tmp_path / "bad.json", media_dir, tmp_path / "out")
    # threads give the same shards as the serial path
    path = dump_json(
        tmp_path / "cc3m.json",
        [{"caption": f"c{i}", "id": str(i), "image_name": "ok2.png"} for i in range(5)]
        + [{"caption": "x", "id": "9", "image_name": "n.jpg"}],
    )
    serial = convert("cc3m", path, media_dir, tmp_path / "o1", progress=False)
    threaded = convert("cc3m", path, media_dir, tmp_path / "o2", progress=False, num_workers=3)
    assert serial.written == threaded.written == 5 and threaded.missing_media == 1
    assert [open(p, "rb").read() for p in serial.shards] == [open(p, "rb").read() for p in threaded.shards]


# --------------------------------------------------------------------------------------------------
# demo dataset


@pytest.mark.slow
def test_demo_dataset_builds_reads_back_and_is_deterministic(tmp_path):
    t0 = time.perf_counter()
    out = build_demo_dataset(tmp_path / "demo", seed=0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 30
    manifest = json.loads((tmp_path / "demo" / "manifest.json").read_text())
    assert (tmp_path / "demo" / "README.txt").read_text().count("CC-BY 3.0") >= 1
    assert manifest["pairs"] == sum(manifest["pairs_by_modality"].values()) > 0
    for stage in (1, 3):  # stage 2 builds pairs like stage 3
        stats = DataStats()
        pairs = list(iter_samples(out["pairs"], stage, stats=stats))
        convs = list(iter_samples(out["conversations"], stage, stats=stats))
        assert stats.bad == 0 and len(pairs) == manifest["pairs"] and len(convs) == manifest["conversations"]
    modalities = {s.turns[0].parts[0].modality for s in iter_samples(out["pairs"], 1)}
    assert modalities == {Modality(m) for m, n in manifest["pairs_by_modality"].items() if n}
    # conversations put media on both sides and switch modality
    in_mods = {p.modality for s in convs for t in s.turns if t.role == "user" for p in t.media()}
    out_mods = {p.modality for s in convs for p in s.outputs()}
    assert len(in_mods) >= 2 and len(out_mods) >= 2
    assert any(len(s.turns) == 4 for s in convs) and any(len(s.turns) == 2 for s in convs)
    assert all(len(s.output_captions) == len(s.outputs()) for s in convs)

    again = build_demo_dataset(tmp_path / "again", seed=0)
    other = build_demo_dataset(tmp_path / "other", seed=1)
    read = lambda paths: [p.read_bytes() for p in paths]  # noqa: E731
    assert read(again["pairs"] + again["conversations"]) == read(out["pairs"] + out["conversations"])
    assert read(other["conversations"]) != read(out["conversations"])
