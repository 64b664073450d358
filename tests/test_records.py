"""One record per fact: signal targets (collator -> stage module -> losses), the generate progress
callback, per-decoder option tables and the per-modality generation output."""

from __future__ import annotations

import dataclasses
import inspect
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt import GenerationOutput, NextGPT
from nextgpt.errors import InputError
from nextgpt.modality import Modality
from nextgpt.model import SignalTarget
from nextgpt.outputs import PROGRESS_STAGES, ProgressEvent
from nextgpt.processor import MediaItem, Turn
from nextgpt.stages.batch import Batch, Collator

IMAGE, AUDIO, VIDEO = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO


@pytest.fixture(scope="module")
def model(tiny_model: NextGPT) -> NextGPT:
    return tiny_model


@pytest.fixture()
def red() -> Image.Image:
    return Image.new("RGB", (40, 30), (200, 10, 10))


def _sample(red, out_image, caption: str = "a red square", key: str = "k"):
    from nextgpt.stages.data import Sample

    turns = [
        Turn("user", [MediaItem(IMAGE, red), "what is this?"]),
        Turn("assistant", ["it is red. ", MediaItem(IMAGE, out_image)]),
    ]
    return Sample(key, "conversation", turns, [caption], url="shard.tar")


def _image_run_ids(model: NextGPT) -> torch.Tensor:
    return torch.tensor([[1, 40, *model.llm.layout.signal_ids[IMAGE], 2]])


# ------------------------------------------------------------------ the record


def test_signal_target_is_a_frozen_checked_record() -> None:
    cond = torch.zeros(8, 32)
    t = SignalTarget(IMAGE, caption="a cat", cond=cond, media="anything")
    assert (t.modality, t.caption, t.cond, t.media) == (IMAGE, "a cat", cond, "anything")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.cond = None  # type: ignore[misc]
    assert SignalTarget(AUDIO, cond=torch.zeros(32)).cond.shape == (32,)  # one-token conditioning
    with pytest.raises(InputError, match="modality must be image, audio or video"):
        SignalTarget(Modality.TEXT)
    with pytest.raises(InputError, match="modality must be image, audio or video"):
        SignalTarget("image")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="caption must be a str or None, got int"):
        SignalTarget(IMAGE, caption=3)  # type: ignore[arg-type]
    for bad in (torch.zeros(1, 8, 32), torch.zeros(8, 32, dtype=torch.long), [[0.0]]):
        with pytest.raises(InputError, match=r"cond must be a floating \[Q, C\] or \[C\] tensor"):
            SignalTarget(IMAGE, cond=bad)  # type: ignore[arg-type]


def test_signal_target_moves_its_cond_and_shares_its_media() -> None:
    media = object()
    t = SignalTarget(IMAGE, cond=torch.zeros(8, 32), media=media).to("meta")
    assert t.cond.device.type == "meta" and t.media is media
    bare = SignalTarget(IMAGE, media=media)
    assert bare.to("meta") is bare


# ------------------------------------------------------------------ the batch


def _ids(rows: int = 1) -> dict:
    ids = torch.ones(rows, 3, dtype=torch.long)
    return dict(
        keys=[str(i) for i in range(rows)],
        input_ids=ids,
        attention_mask=ids,
        labels=ids,
        slot_modalities=[],
        media=None,
        features=None,
    )


def test_batch_holds_one_record_per_output_and_only_takes_records() -> None:
    c = torch.zeros(8, 32)
    records = [[SignalTarget(IMAGE, "a", c)], [SignalTarget(AUDIO, "b")]]
    batch = Batch(**_ids(2), outputs=records)
    assert batch.outputs == records
    assert batch.output_modalities == [[IMAGE], [AUDIO]] and batch.output_captions == [["a"], ["b"]]
    with pytest.raises(AttributeError):
        batch.output_modalities = [[VIDEO], [VIDEO]]  # type: ignore[misc]  # a view, read-only
    with pytest.raises(AttributeError):
        batch.output_captions = [["x"], ["y"]]  # type: ignore[misc]
    assert Batch(**_ids(2)).outputs == [[], []]
    # the parallel lists are gone: one record per output is the only way in
    for legacy in (
        {"output_modalities": [[IMAGE], [AUDIO]]},
        {"output_captions": [["a"], ["b"]]},
        {"targets": [[c], [None]]},
        {"output_media": [[None], [None]]},
    ):
        with pytest.raises(TypeError, match="unexpected keyword argument"):
            Batch(**_ids(2), **legacy)
    empty = Batch.empty(0)
    assert empty.is_empty and empty.outputs == [[]] and empty.output_modalities == [[]]


def test_batch_to_moves_cached_targets_and_shares_media() -> None:
    media = Image.new("RGB", (4, 4))
    batch = Batch(**_ids(1), outputs=[[SignalTarget(IMAGE, "a", torch.zeros(8, 32), media)]], num_samples=3)
    moved = batch.to("meta")
    (t,) = moved.outputs[0]
    assert moved.input_ids.device.type == "meta" and t.cond.device.type == "meta"
    assert t.media is media and t.caption == "a" and moved.num_samples == 3
    assert batch.outputs[0][0].cond.device.type == "cpu"  # a copy


def test_collator_builds_the_records(model: NextGPT, red) -> None:
    out_image = Image.new("RGB", (20, 20), (0, 200, 0))
    batch = Collator(model.processor, 512, 0)([_sample(red, out_image)])
    assert not batch.drops
    (t,) = batch.outputs[0]
    assert (t.modality, t.caption, t.cond) == (IMAGE, "a red square", None) and t.media is out_image

    class Captions:  # a caption cache: conditioning per sample key and output
        def get(self, url, key, index):
            if key == "missing":
                raise KeyError(f"no {key}")
            return torch.full((8, 32), float(index + 1))

    c = Collator(model.processor, 512, 0, caption_cache=Captions())
    batch = c([_sample(red, None), _sample(red, None, key="missing")])
    assert batch.drops == {"cache_miss": 1} and len(batch.outputs) == 1
    (t,) = batch.outputs[0]
    assert t.media is None and torch.equal(t.cond, torch.full((8, 32), 1.0))


def test_stage_module_resolves_captions_and_denoising_media(model: NextGPT, red) -> None:
    from nextgpt.stages.modules import StageModule

    out_image = Image.new("RGB", (20, 20), (0, 200, 0))
    batch = Collator(model.processor, 512, 0)([_sample(red, out_image)])
    decoder = model.decoders[IMAGE]
    online = StageModule(model.config, 2, model).signal_targets(batch)
    (t,) = online[0]
    assert torch.equal(t.cond, decoder.encode_captions(["a red square"])[0])
    assert t.media is None  # no denoising loss configured: no target media
    assert batch.outputs[0][0].cond is None  # the batch's records are left as they are
    denoising = NextGPT.from_preset("tiny", ["training.denoising_loss=true"])
    (t,) = StageModule(denoising.config, 3, denoising).signal_targets(batch)[0]
    assert torch.equal(t.media, denoising.decoders[IMAGE].prepare_target(out_image))
    cached = Batch(**_ids(1), outputs=[[SignalTarget(IMAGE, "ignored", torch.ones(8, 32))]])
    (t,) = StageModule(model.config, 2, model).signal_targets(cached)[0]
    assert torch.equal(t.cond, torch.ones(8, 32))  # a cached target is used, never recomputed


def test_compute_losses_checks_the_records_against_the_runs(model: NextGPT) -> None:
    ids = _image_run_ids(model)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        with pytest.raises(InputError, match="1 signal runs but 0 alignment targets"):
            model.compute_losses(ids, mask, ids, [], [[]])
        with pytest.raises(InputError, match="1 batch rows but signal targets for 0 rows"):
            model.compute_losses(ids, mask, ids, [], [])
        with pytest.raises(InputError, match="signal run 0 is image but its target is audio"):
            model.compute_losses(ids, mask, ids, [], [[SignalTarget(AUDIO, cond=torch.zeros(1, 32))]])
        with pytest.raises(InputError, match="must be a SignalTarget, got Tensor"):
            model.compute_losses(ids, mask, ids, [], [[torch.zeros(8, 32)]])
        with pytest.raises(InputError, match="prepared by Decoder.prepare_target, got Image"):
            model.compute_losses(ids, mask, ids, [], [[SignalTarget(IMAGE, media=Image.new("RGB", (4, 4)))]])
        with pytest.raises(InputError, match=r"image alignment target \(1, 4, 32\) != projector output"):
            model.compute_losses(ids, mask, ids, [], [[SignalTarget(IMAGE, cond=torch.zeros(4, 32))]])
        # a run without cond or media takes no alignment loss (only the zero-weighted idle projector)
        losses = model.compute_losses(ids, mask, ids, [], [[SignalTarget(IMAGE, caption="x")]])
    assert "align_image" not in losses and float(losses["align_loss"]) == 0.0 and int(losses["runs"]) == 1


def test_records_give_the_hand_computed_alignment_loss(model: NextGPT) -> None:
    ids = _image_run_ids(model)
    target = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        losses = model.compute_losses(
            ids, torch.ones_like(ids), ids, [], [[SignalTarget(IMAGE, cond=target)]]
        )
        embeds = model.llm.embed(ids)
        hidden = model.llm(embeds).hidden
        pos = slice(2, 2 + len(model.llm.layout.signal_ids[IMAGE]))
        pred = model.output_projectors["image"]((hidden[0, pos] + embeds[0, pos]).unsqueeze(0))[0]
    torch.testing.assert_close(losses["align_image"], ((pred - target) ** 2).sum(-1).sqrt().mean())


# ------------------------------------------------------------------ progress


def test_progress_callback_reports_text_then_every_step_of_every_item(model: NextGPT) -> None:
    events: list[ProgressEvent] = []
    kw = dict(modalities=["image", "audio"], seed=0, num_inference_steps=2)
    out = model.generate("paint and play", progress=events.append, **kw)
    assert [(e.stage, e.modality, e.index, e.step, e.total) for e in events] == [
        ("text", None, None, 0, 0),
        ("decode", IMAGE, 0, 0, 2),
        ("step", IMAGE, 0, 1, 2),
        ("step", IMAGE, 0, 2, 2),
        ("decode", AUDIO, 1, 0, 2),
        ("step", AUDIO, 1, 1, 2),
        ("step", AUDIO, 1, 2, 2),
    ]
    assert {e.stage for e in events} == set(PROGRESS_STAGES)
    assert events[0].describe() == "generating text..." and events[0].fraction is None
    assert events[2].describe() == "decoding image: step 1/2" and events[3].fraction == 1.0
    quiet = model.generate("paint and play", **kw)  # reporting changes nothing
    assert np.array_equal(np.asarray(out.images[0]), np.asarray(quiet.images[0]))
    assert np.array_equal(out.audios[0], quiet.audios[0]) and out.token_ids == quiet.token_ids
    # the default number of steps is the decoder's
    events.clear()
    model.generate("x", modalities=["image"], seed=0, progress=events.append)
    assert events[1].total == model.decoders[IMAGE].num_inference_steps == events[-1].step


def test_progress_true_logs_the_steps_as_before(model: NextGPT, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="nextgpt.model"):
        model.generate("x", modalities=["video"], seed=0, num_inference_steps=2, progress=True)
    steps = [r for r in caplog.records if "diffusion step" in str(r.msg)]
    assert [r.getMessage() for r in steps] == ["video diffusion step 1/2", "video diffusion step 2/2"]
    assert all(
        r.msg == "%s diffusion step %d/%d" and r.args == ("video", i + 1, 2) for i, r in enumerate(steps)
    )
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="nextgpt.model"):
        model.generate("x", modalities=["video"], seed=0, num_inference_steps=2, progress=np.bool_(False))
    assert not [r for r in caplog.records if "diffusion step" in str(r.msg)]


def test_progress_argument_is_checked_and_callback_errors_propagate(model: NextGPT) -> None:
    for bad in (None, 1, "yes"):
        with pytest.raises(InputError, match="progress must be True or False or a callable"):
            model.generate("x", modalities=["text"], max_new_tokens=1, progress=bad)

    class Cancelled(Exception):
        pass

    def stop(event: ProgressEvent) -> None:
        if event.stage == "step":
            raise Cancelled  # e.g. a user cancelling

    with pytest.raises(Cancelled):
        model.generate("x", modalities=["image"], num_inference_steps=1, progress=stop)


# ------------------------------------------------------------------ decoder options


def test_each_decoder_declares_the_options_its_generate_takes() -> None:
    from nextgpt.decoders import DECODERS
    from nextgpt.validate import DECODER_OPTIONS

    for cls in DECODERS.values():
        params = set(inspect.signature(cls.generate).parameters) - {
            "self",
            "cond",
            "negative",
            "seed",
            "callback",
        }
        assert set(cls.OPTIONS) == params, cls.kind
        assert set(cls.OPTIONS) <= set(DECODER_OPTIONS), cls.kind
    taken, ignored = DECODERS["audioldm"].take_options(
        {"num_inference_steps": 3, "height": 16, "width": None, "audio_length_in_s": 1.0}
    )
    assert taken == {"num_inference_steps": 3, "audio_length_in_s": 1.0} and ignored == ["height"]


def test_generate_routes_options_by_the_table(model: NextGPT, monkeypatch, caplog) -> None:
    calls: list[dict] = []
    decoder = model.decoders[IMAGE]

    def fake(cond, **kwargs):  # takes anything: routing must come from OPTIONS, not the signature
        calls.append(kwargs)
        return [Image.new("RGB", (8, 8))]

    monkeypatch.setattr(decoder, "generate", fake)
    with caplog.at_level(logging.DEBUG, logger="nextgpt.model"):
        out = model.generate(
            "x",
            modalities=["image"],
            seed=7,
            num_inference_steps=3,
            height=16,
            num_frames=2,
            audio_length_in_s=1,
        )
    assert calls == [{"seed": 7, "num_inference_steps": 3, "height": 16}]
    assert "image decoder ignores ['num_frames', 'audio_length_in_s']" in caplog.messages
    assert len(out.images) == 1


def test_decoders_report_their_media_rate(model: NextGPT) -> None:
    assert model.decoders[IMAGE].media_rate is None
    assert model.decoders[AUDIO].media_rate == model.decoders[AUDIO].sample_rate == 16000
    assert model.decoders[VIDEO].media_rate == model.decoders[VIDEO].fps == 8


# ------------------------------------------------------------------ the output


def test_generation_output_is_keyed_by_modality_with_the_old_views(tmp_path) -> None:
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    wave = np.zeros(160, dtype=np.float32)
    frames = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    out = GenerationOutput(text="hi", images=[img], audios=[wave], audio_sample_rate=16000)
    assert out.media == {IMAGE: [img], AUDIO: [wave], VIDEO: []} and out.rates == {AUDIO: 16000}
    assert out.images == [img] and out.audio_sample_rate == 16000 and out.video_fps is None
    out.videos += [frames]
    out.video_fps = 8
    assert out.media[VIDEO] == [frames] and out.rates[VIDEO] == 8
    out.add(IMAGE, [img])
    assert len(out.images) == 2
    out.audio_sample_rate = None
    assert AUDIO not in out.rates
    same = GenerationOutput(
        text="hi", media={"image": [img, img], AUDIO: [wave], VIDEO: [frames]}, rates={VIDEO: 8}
    )
    assert same.media == out.media and same.rates == out.rates
    assert (
        GenerationOutput().media == {IMAGE: [], AUDIO: [], VIDEO: []} and GenerationOutput().token_ids == []
    )
    with pytest.raises(ValueError, match="not text"):
        GenerationOutput(media={Modality.TEXT: ["x"]})
    names = [p.name for p in out.save(tmp_path, prefix="o")]
    assert names == ["o.txt", "o_image0.png", "o_image1.png", "o_audio0.wav", "o_video0.mp4"]
