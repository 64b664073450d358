"""Batched and streaming generation, the new sampling controls and concurrent callers.

The promise under test: ``generate_batch`` and ``stream`` give what ``generate`` gives one
conversation at a time. Greedy text is compared token for token (left padding with per-row masks and
positions computes each row as it would alone: on these fp32 models the logits agree to ~1e-6, far
below any gap between the best two tokens); media are compared within 1e-5 (a batched diffusion call
draws each item's noise from its own generator, so only float summation order differs).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from sp_fixtures import V15_TOKENIZER_CONFIG, make_llama_folder, overrides

from nextgpt import NextGPT
from nextgpt.decoding import penalize, streamable
from nextgpt.errors import InputError
from nextgpt.modality import Modality

STEPS = {"num_inference_steps": 2}
PROMPTS = ["hello there", "draw a cat, please, a big one on a sofa", "x", "make a sound of rain falling"]
MODS = [None, ["text", "image"], ["audio"], ["text", "image", "audio"]]


@pytest.fixture(scope="module")
def model(tiny_model) -> NextGPT:
    return tiny_model


def _pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def _same_media(a, b) -> None:
    for m in (Modality.IMAGE, Modality.AUDIO, Modality.VIDEO):
        assert len(a.media[m]) == len(b.media[m]), m
    for x, y in zip(a.images, b.images, strict=True):
        assert x.size == y.size
        assert np.abs(_pixels(x) - _pixels(y)).max() <= 1.0  # uint8 rounding of values within 1e-5
    for x, y in zip(a.audios, b.audios, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    for x, y in zip(a.videos, b.videos, strict=True):
        assert np.abs(x.astype(int) - y.astype(int)).max() <= 1


# ------------------------------------------------------------------ batched


def test_batch_equals_one_at_a_time(model: NextGPT) -> None:
    """Rows of different lengths (left padding), per-row modalities (free, forced + text, media
    only), rows that end at different steps, per-row seeds, media decoded in batches."""
    seeds = [5, 6, 7, 8]
    outs = model.generate_batch(PROMPTS, MODS, max_new_tokens=10, seed=seeds, **STEPS)
    ref = [
        model.generate(p, m, max_new_tokens=10, seed=s, **STEPS)
        for p, m, s in zip(PROMPTS, MODS, seeds, strict=True)
    ]
    assert len({len(model.processor.encode(p).input_ids) for p in PROMPTS}) > 1  # really padded
    for a, b in zip(outs, ref, strict=True):
        assert a.token_ids == b.token_ids and a.text == b.text and a.finish_reason == b.finish_reason
        _same_media(a, b)
    assert outs[2].text == "" and len(outs[2].audios) == 1  # media only: no text
    assert len(outs[3].images) == 1 and len(outs[3].audios) == 1
    assert len(outs[1].images) == 1 and outs[1].audios == []


def test_batch_renders_each_modality_in_one_decoder_call(model: NextGPT, monkeypatch) -> None:
    decoder = model.decoders[Modality.IMAGE]
    calls = []
    original = decoder.generate

    def spy(cond, **kwargs):
        calls.append((cond.shape[0], kwargs.get("seed")))
        return original(cond, **kwargs)

    monkeypatch.setattr(decoder, "generate", spy)
    outs = model.generate_batch(["a", "bb", "ccc"], ["image"], seed=[1, 2, 3], **STEPS)
    assert calls == [(3, [1, 2, 3])]  # one diffusion batch, one seed per row
    solo = model.generate("bb", ["image"], seed=2, **STEPS)
    assert np.abs(_pixels(outs[1].images[0]) - _pixels(solo.images[0])).max() <= 1.0


def test_batch_with_the_sentencepiece_tokenizer(tmp_path) -> None:
    folder = make_llama_folder(tmp_path / "v15", tokenizer_config=V15_TOKENIZER_CONFIG)
    sp = NextGPT.from_preset("tiny", overrides(folder, "vicuna_v1"))
    prompts = ["what is this?", "a much longer question about the red cube on the table", "hi"]
    outs = sp.generate_batch(prompts, ["text"], max_new_tokens=12, repetition_penalty=1.3)
    for p, out in zip(prompts, outs, strict=True):
        ref = sp.generate(p, ["text"], max_new_tokens=12, repetition_penalty=1.3)
        assert out.token_ids == ref.token_ids and out.text == ref.text


def test_batch_arguments(model: NextGPT) -> None:
    with pytest.raises(InputError, match="conversations must be a list"):
        model.generate_batch("hello")
    with pytest.raises(InputError, match="must not be empty"):
        model.generate_batch([])
    with pytest.raises(InputError, match="seed has 1 entries for 2"):
        model.generate_batch(["a", "b"], seed=[1])
    with pytest.raises(InputError, match="conversation 1: seed must be"):
        model.generate_batch(["a", "b"], seed=[1, -1])
    # more conversations than batch_size run in chunks, in order
    outs = model.generate_batch(["a", "b", "c"], ["text"], max_new_tokens=3, batch_size=2)
    assert [o.token_ids for o in outs] == [
        model.generate(p, ["text"], max_new_tokens=3).token_ids for p in "abc"
    ]


# ------------------------------------------------------------------ streaming


@pytest.mark.parametrize("overlap", [False, True])
def test_stream_equals_generate(model: NextGPT, overlap: bool) -> None:
    kwargs = dict(max_new_tokens=10, seed=3, **STEPS)
    ref = model.generate(PROMPTS[3], MODS[3], **kwargs)
    events = list(model.stream(PROMPTS[3], MODS[3], overlap_media=overlap, **kwargs))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "done" and kinds.count("done") == 1
    out = events[-1].output
    assert out.token_ids == ref.token_ids
    assert "".join(e.text for e in events if e.kind == "text") == out.text == ref.text
    _same_media(out, ref)
    signals = [i for i, e in enumerate(events) if e.kind == "signal"]
    media = [i for i, e in enumerate(events) if e.kind == "media"]
    assert len(signals) == len(media) == 2
    for s_at, m_at in zip(signals, media, strict=True):
        assert s_at < m_at and events[s_at].index == events[m_at].index
    assert {e.modality for i, e in enumerate(events) if i in media} == {Modality.IMAGE, Modality.AUDIO}
    steps = [e.progress for e in events if e.kind == "progress" and e.progress.stage == "step"]
    assert len(steps) == 2 * STEPS["num_inference_steps"]
    assert kinds.index("text") < media[0]  # text is streamed before the media are rendered


def test_stream_holds_back_partial_characters_and_stop_prefixes(model: NextGPT) -> None:
    tok = model.llm.tokenizer
    ids = tok("caf\u00e9 ok ## no", add_special_tokens=False).input_ids  # é is two byte tokens
    script = iter(ids)
    model._pick = lambda logits, banned, sampling: next(script, model.llm.layout.eos_ids[0])
    try:
        events = list(model.stream("hi", ["text"], max_new_tokens=40, stop=["## n"]))
    finally:
        del model._pick
    deltas = [e.text for e in events if e.kind == "text"]
    assert all("\ufffd" not in d for d in deltas)
    assert all("#" not in d for d in deltas)  # held back until it could not become the stop string
    assert "".join(deltas) == events[-1].output.text == "caf\u00e9 ok"
    assert events[-1].output.finish_reason == "stop"


def test_streamable() -> None:
    assert streamable("abc\ufffd", ()) == "abc"
    assert streamable("the end ##", ("###",)) == "the end"
    assert streamable("the end #x", ("###",)) == "the end #x"
    assert streamable("stop", ("stop here", "st")) == ""  # the longest prefix held wins


def test_closing_a_stream_cancels_it(model: NextGPT) -> None:
    stream = model.stream("hello there", ["text"], max_new_tokens=200, min_new_tokens=200)
    first = next(stream)
    assert first.kind == "progress"
    stream.close()  # joins the worker: the call ended at its next step
    assert model.generation_lock.acquire(blocking=False)
    model.generation_lock.release()


def test_a_cancelled_request_ends_and_renders_nothing(model: NextGPT) -> None:
    req = model.prepare_request("draw", ["text", "image"], max_new_tokens=50, **STEPS)
    req.cancel()
    (out,) = model.run_requests([req])
    assert out.finish_reason == "cancelled" and out.token_ids == [] and out.images == []


def test_stream_arguments_are_checked_at_the_call(model: NextGPT) -> None:
    with pytest.raises(InputError, match="top_k"):
        model.stream("hi", top_k=-1)
    with pytest.raises(InputError, match="overlap_media"):
        model.stream("hi", overlap_media="yes")


# ------------------------------------------------------------------ controls


def test_top_k_one_is_greedy_and_top_k_changes_sampling(model: NextGPT) -> None:
    greedy = model.generate("hello", ["text"], max_new_tokens=8)
    k1 = model.generate("hello", ["text"], max_new_tokens=8, do_sample=True, temperature=5.0, top_k=1, seed=0)
    assert k1.token_ids == greedy.token_ids
    free = model.generate("hello", ["text"], max_new_tokens=8, do_sample=True, temperature=5.0, seed=0)
    assert free.token_ids != greedy.token_ids


def test_repetition_penalty() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    seen = torch.tensor([True, True, False, False])
    torch.testing.assert_close(penalize(logits, seen, 2.0), torch.tensor([1.0, -4.0, 1.0, 0.5]))


def test_repetition_penalty_stops_a_loop(model: NextGPT) -> None:
    plain = model.generate("hello", ["text"], max_new_tokens=30)
    penalised = model.generate("hello", ["text"], max_new_tokens=30, repetition_penalty=10.0)
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))
    with pytest.raises(InputError, match="repetition_penalty"):
        model.generate("hello", repetition_penalty=0)


def test_min_new_tokens_bans_eos(model: NextGPT, monkeypatch) -> None:
    eos = model.llm.layout.eos_ids[0]
    original = model.llm.logits

    def eos_first(hidden):
        out = original(hidden)
        out[..., eos] += 1e4
        return out

    monkeypatch.setattr(model.llm, "logits", eos_first)
    assert model.generate("hi", ["text"], max_new_tokens=10).token_ids == []
    out = model.generate("hi", ["text"], max_new_tokens=10, min_new_tokens=4)
    assert len(out.token_ids) == 4 and out.finish_reason == "stop"
    with pytest.raises(InputError, match="min_new_tokens"):
        model.generate("hi", max_new_tokens=3, min_new_tokens=4)


def test_negative_prompt_and_conditioning_reach_the_decoder(model: NextGPT, monkeypatch) -> None:
    decoder = model.decoders[Modality.IMAGE]
    seen = {}
    original = decoder.generate

    def spy(cond, **kwargs):
        seen.update(kwargs)
        return original(cond, **kwargs)

    monkeypatch.setattr(decoder, "generate", spy)
    model.generate("x", ["image"], negative_prompt="blurry", seed=1, **STEPS)
    torch.testing.assert_close(seen["negative"], decoder.encode_captions(["blurry"]))
    tokens, dim = decoder.cond_shape
    neg = torch.randn(1, tokens, dim)
    model.generate("x", ["image"], negative_conditioning={"image": neg}, seed=1, **STEPS)
    torch.testing.assert_close(seen["negative"], neg)
    seen.clear()
    model.generate("x", ["image"], seed=1, **STEPS)
    assert "negative" not in seen  # the decoder's own default (the empty prompt)
    with pytest.raises(InputError, match=r"negative_conditioning\['image'\] must be"):
        model.generate("x", negative_conditioning={"image": torch.zeros(2, tokens, dim)})
    with pytest.raises(InputError, match="not both"):
        model.generate("x", negative_prompt={"image": "a"}, negative_conditioning={"image": neg})
    with pytest.raises(InputError, match="has key 'smell'"):
        model.generate("x", negative_prompt={"smell": "a"})


def test_decoder_kwargs_per_modality(model: NextGPT, monkeypatch) -> None:
    seen: dict[str, dict] = {}

    def spy(m: Modality, original):
        def generate(cond, **kwargs):
            seen[m.value] = kwargs
            return original(cond, **kwargs)

        return generate

    for m in (Modality.IMAGE, Modality.AUDIO):
        monkeypatch.setattr(model.decoders[m], "generate", spy(m, model.decoders[m].generate))
    model.generate(
        "x",
        ["image", "audio"],
        num_inference_steps=2,
        decoder_kwargs={"image": {"num_inference_steps": 1, "height": 16}},
    )
    assert seen["image"]["num_inference_steps"] == 1 and seen["image"]["height"] == 16
    assert seen["audio"]["num_inference_steps"] == 2 and "height" not in seen["audio"]
    with pytest.raises(InputError, match="takes num_inference_steps"):
        model.generate("x", decoder_kwargs={"audio": {"height": 16}})
    with pytest.raises(InputError, match=r"decoder_kwargs\['image'\]: .*height"):
        model.generate("x", decoder_kwargs={"image": {"height": 13}})


# ------------------------------------------------------------------ concurrency


def test_concurrent_callers_queue_and_share_nothing(model: NextGPT) -> None:
    prompts = ["one", "two two", "three three three", "four"]
    ref = {p: model.generate(p, ["text", "image"], max_new_tokens=6, seed=9, **STEPS) for p in prompts}
    got: dict[str, object] = {}
    errors: list[BaseException] = []

    def call(p: str) -> None:
        try:
            if p == "two two":
                events = list(model.stream(p, ["text", "image"], max_new_tokens=6, seed=9, **STEPS))
                got[p] = events[-1].output
            else:
                got[p] = model.generate(p, ["text", "image"], max_new_tokens=6, seed=9, **STEPS)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=call, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for p in prompts:
        assert got[p].token_ids == ref[p].token_ids and got[p].text == ref[p].text
        _same_media(got[p], ref[p])


def test_a_row_without_media_is_done_when_its_text_ends(model: NextGPT) -> None:
    """A short text-only answer is complete (its "done" event) before a long row of the same batch
    has ended."""
    order: list[tuple[int, str]] = []
    short = model.prepare_request("a", ["text"], max_new_tokens=2)
    long = model.prepare_request("b", ["text", "image"], max_new_tokens=12, **STEPS)
    model.run_requests(
        [short, long], [lambda e: order.append((0, e.kind)), lambda e: order.append((1, e.kind))]
    )
    done_short = order.index((0, "done"))
    assert done_short < order.index((1, "signal")) < order.index((1, "done"))


def test_generate_and_prepare_request_take_the_same_arguments() -> None:
    """generate spells its arguments out for users and forwards them to prepare_request, which
    checks them: the two lists must stay the same."""
    import inspect

    def params(fn):
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    assert params(NextGPT.generate) == params(NextGPT.prepare_request)
