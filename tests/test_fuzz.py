"""Hostile arguments at the public generation boundary: every bad value is refused with a typed
error naming the argument (never a raw torch / diffusers error, never a silent reinterpretation).

A seeded fuzz of ``NextGPT.generate`` on the tiny preset mixes valid and hostile values for every
argument; direct tests pin each documented range (see :mod:`nextgpt.validate`)."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from nextgpt import NextGPT
from nextgpt.config import NextGPTConfig
from nextgpt.errors import ConfigError, InputError, NextGPTError
from nextgpt.modality import Modality
from nextgpt.outputs import GenerationOutput


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are dominated by per-op overhead: one intra-op thread is fastest."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model(tiny_model: NextGPT) -> NextGPT:
    return tiny_model


def _text(model: NextGPT, **kw) -> GenerationOutput:
    """A cheap text-only call (no media decoding) with ``kw`` overriding the defaults."""
    return model.generate("hi", **{"modalities": ["text"], "max_new_tokens": 2, **kw})


# ------------------------------------------------------------------ sampling arguments


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, 1e-310, 5e-324, -1.0, -1e-310, "1.0", None, True, np.float64("nan")],
    ids=repr,
)
def test_bad_temperature_is_refused_naming_it(model: NextGPT, value) -> None:
    with pytest.raises(InputError, match="temperature"):
        _text(model, do_sample=True, temperature=value, seed=0)


@pytest.mark.parametrize("value", [0, 0.0, -0.1, 1.0000001, 1.5, math.nan, math.inf, None, "0.9"], ids=repr)
def test_bad_top_p_is_refused_naming_it(model: NextGPT, value) -> None:
    with pytest.raises(InputError, match=r"top_p.*\(0, 1\]"):
        _text(model, do_sample=True, top_p=value, seed=0)


@pytest.mark.parametrize(
    "value", [0, -1, True, None, 2.0, "2", 513, 2**70, 10**5000], ids=lambda v: type(v).__name__
)
def test_bad_max_new_tokens_is_refused_naming_the_context_bound(model: NextGPT, value) -> None:
    # A media-only request spends no text budget, so unchecked code would return (not run away).
    with pytest.raises(InputError, match=r"max_new_tokens must be an int in \[1, 512\]"):
        model.generate("x", modalities=["image"], num_inference_steps=1, max_new_tokens=value)


@pytest.mark.parametrize("name", ["do_sample", "progress"])
@pytest.mark.parametrize("value", [None, 1, 0, "yes", "False"], ids=repr)
def test_flags_must_be_bools(model: NextGPT, name: str, value) -> None:
    with pytest.raises(InputError, match=f"{name} must be True or False"):
        _text(model, **{name: value})


@pytest.mark.parametrize("value", [2**70, 2**64, -1, True, 1.5, "3"], ids=repr)
def test_bad_seed_is_refused_naming_its_range(model: NextGPT, value) -> None:
    with pytest.raises(InputError, match=r"seed must be None or an int in \[0, 2\*\*64 - 1\]"):
        _text(model, seed=value)


@pytest.mark.parametrize("value", [5, 2.5, ["\ud800"], {"###": 1}], ids=repr)
def test_bad_stop_is_refused(model: NextGPT, value) -> None:
    with pytest.raises(InputError, match="stop"):
        _text(model, stop=value)


def test_modalities_must_be_names_or_a_list(model: NextGPT) -> None:
    with pytest.raises(InputError, match="modalities must be None, a modality name or a list"):
        _text(model, modalities=5)


def test_extreme_valid_values_work(model: NextGPT) -> None:
    """Valid edge values are usable: a normal but tiny temperature or top_p samples the greedy
    token (float64, max-shifted logits); numpy and Fraction numbers are accepted; the largest seed
    still seeds every media item (seed + i wraps)."""
    greedy = _text(model, max_new_tokens=4).token_ids
    for kw in ({"temperature": 1e-300}, {"top_p": 1e-300}, {"temperature": 0}):
        assert _text(model, max_new_tokens=4, do_sample=True, seed=1, **kw).token_ids == greedy
    out = _text(
        model,
        max_new_tokens=np.int64(3),
        do_sample=np.bool_(True),
        temperature=Fraction(1, 2),
        top_p=np.float32(0.9),
        seed=np.uint64(5),
    )
    assert 1 <= len(out.token_ids) <= 3
    out = model.generate(
        "x", modalities=["image", "audio"], seed=2**64 - 1, num_inference_steps=1, height=16, width=8
    )
    assert out.images[0].size == (8, 16) and len(out.audios) == 1


# ------------------------------------------------------------------ decoder options via the model


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_inference_steps": 0}, r"num_inference_steps must be an int in \[1, 500\]"),
        ({"height": 30}, r"height must be a multiple of 8 in \[8, 2048\]"),
        ({"width": -8}, r"width must be an int in \[8, 2048\]"),
    ],
    ids=lambda v: str(v),
)
def test_bad_image_option_is_refused_before_diffusers(model: NextGPT, kw, match) -> None:
    with pytest.raises(InputError, match=match):
        model.generate("x", modalities=["image"], seed=0, **kw)


def test_negative_audio_length_is_refused(model: NextGPT) -> None:
    with pytest.raises(InputError, match=r"audio_length_in_s must be a finite number in \[0.05, 60\]"):
        model.generate("x", modalities=["audio"], seed=0, num_inference_steps=1, audio_length_in_s=-1.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"num_inference_steps": 501}, "num_inference_steps"),
        ({"num_inference_steps": 2.0}, "num_inference_steps"),
        ({"num_inference_steps": True}, "num_inference_steps"),
        ({"guidance_scale": math.nan}, "guidance_scale"),
        ({"guidance_scale": -1.0}, "guidance_scale"),
        ({"guidance_scale": 1e308}, r"guidance_scale must be a finite number in \[0, 100\]"),
        ({"height": 4096}, "height"),
        ({"width": 0}, "width"),
        ({"num_frames": 0}, r"num_frames must be an int in \[1, 256\]"),
        ({"num_frames": 1000}, "num_frames"),
        ({"audio_length_in_s": 0.0}, "audio_length_in_s"),
        ({"audio_length_in_s": math.inf}, "audio_length_in_s"),
        ({"audio_length_in_s": 3600}, "audio_length_in_s"),
    ],
    ids=lambda v: str(v),
)
def test_decoder_options_are_checked_even_when_no_media_is_made(model: NextGPT, kw, match) -> None:
    """Checked once, up front: a text-only call refuses them too (nothing is silently ignored)."""
    with pytest.raises(InputError, match=match):
        _text(model, **kw)


# ------------------------------------------------------------------ text and config files


@pytest.mark.parametrize("text", ["\ud800", "ok \udfff then", ["fine", "lone \udc80"]], ids=repr)
def test_lone_surrogate_in_text_is_an_input_error(model: NextGPT, text) -> None:
    with pytest.raises(InputError, match="cannot be encoded as UTF-8"):
        model.generate(text, modalities=["text"], max_new_tokens=1)
    with pytest.raises(InputError, match="lone surrogate"):
        model.processor.encode([{"role": "user", "content": text}])


@pytest.mark.parametrize(
    "data",
    ["name: caf\xe9\n".encode("latin-1"), "name: tiny\n".encode("utf-16"), bytes(range(256))],
    ids=["latin-1", "utf-16", "binary"],
)
def test_non_utf8_config_yaml_is_a_config_error_naming_the_file(tmp_path, data: bytes) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError, match=r"config\.yaml is not UTF-8"):
        NextGPTConfig.from_yaml(path)


def test_deeply_nested_config_yaml_is_a_config_error(tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("[" * 50_000)
    with pytest.raises(ConfigError, match=r"config\.yaml: invalid YAML: nested too deeply"):
        NextGPTConfig.from_yaml(path)


# ------------------------------------------------------------------ decoders' own generate


@pytest.mark.parametrize(
    ("modality", "kw", "match"),
    [
        (Modality.IMAGE, {"height": 30}, "stable_diffusion decoder: height must be a multiple of 8"),
        (Modality.IMAGE, {"num_inference_steps": 0}, "stable_diffusion decoder: num_inference_steps"),
        (Modality.IMAGE, {"seed": 2**70}, r"stable_diffusion decoder: seed must be None or an int"),
        (
            Modality.IMAGE,
            {"callback": "print"},
            "stable_diffusion decoder: callback must be None or a callable",
        ),
        (Modality.VIDEO, {"num_frames": 0}, "zeroscope decoder: num_frames"),
        (Modality.VIDEO, {"width": 12}, "zeroscope decoder: width must be a multiple of 8"),
        (Modality.VIDEO, {"guidance_scale": math.nan}, "zeroscope decoder: guidance_scale"),
        (Modality.AUDIO, {"audio_length_in_s": -1.0}, "audioldm decoder: audio_length_in_s"),
        (Modality.AUDIO, {"num_inference_steps": 0}, "audioldm decoder: num_inference_steps"),
    ],
    ids=lambda v: str(v),
)
def test_decoder_generate_refuses_bad_options(model: NextGPT, modality, kw, match) -> None:
    decoder = model.decoders[modality]
    cond = torch.zeros(1, *decoder.cond_shape)
    with pytest.raises(InputError, match=match):
        decoder.generate(cond, **kw)


def test_decoder_generate_refuses_non_tensor_conditioning(model: NextGPT) -> None:
    with pytest.raises(InputError, match="cond must be a torch.Tensor"):
        model.decoders[Modality.IMAGE].generate([[0.0] * 32], seed=0)


# ------------------------------------------------------------------ the fuzz

NAN, INF = math.nan, math.inf
#: Values wrong for every argument (where ``None`` means "default", it is left out per argument).
GARBAGE = [NAN, INF, -INF, 1e-310, -1, -1.5, 2**70, 10**400, "1", "\ud800", [1], (), object(), 1j, b"1"]
GARBAGE += [np.float64(NAN), np.int64(-3), np.array([1, 2])]

VALID = {
    "max_new_tokens": [1, 2, 3, np.int64(2)],
    "do_sample": [True, False, np.bool_(True)],
    "temperature": [0, 0.7, 1.0, 2.0, 1e-300, np.float32(0.5), Fraction(3, 2)],
    "top_p": [1.0, 0.9, 0.5, 1e-300, np.float64(0.8)],
    "stop": [None, "###", ["x", "yz"], ("\n",), []],
    "seed": [None, 0, 7, 2**64 - 1, np.int64(3), np.uint64(5)],
    "num_inference_steps": [None, 1, 2, np.int32(1)],
    "guidance_scale": [None, 0, 1.0, 7.5, 100.0],
    "height": [None, 8, 16, 32],
    "width": [None, 8, 16, 32],
    "num_frames": [None, 1, 2],
    "audio_length_in_s": [None, 0.05, 0.08],
    "progress": [False, True],
}
HOSTILE = {
    "max_new_tokens": [0, 513, 10**6, True, None, 2.0],
    "do_sample": [None, 1, 0, "True"],
    "temperature": [-0.5, -1e-310, 5e-324, None, True],
    "top_p": [0, 0.0, -0.1, 1.0000001, 1.5, None, False],
    "stop": ["", [""], [None], 5, {"a": 1}, ["\ud800"], [b"x"]],
    "seed": [-1, 2**64, True, 1.0],
    "num_inference_steps": [0, 501, 1000, False, 2.5],
    "guidance_scale": [-1.0, 101.0, 1e308, True],
    "height": [7, 30, 0, -8, 2056, True, 16.0],
    "width": [4, 12, 0, -16, 2049],
    "num_frames": [0, 257, True, 2.0],
    "audio_length_in_s": [0, 0.0, 0.01, -1.0, 61.0, True],
    "progress": [None, 1, "no"],
}
VALID_MODALITIES = (
    [["text"]] * 12 + [None] * 3 + [["text", "image"], ["audio"], ["video"], "text", Modality.TEXT]
)
HOSTILE_MODALITIES = [5, 1.0, "smell", [None], b"image", "\ud800", ["text", 3], [object()], {"text": 1}]
RED = Image.new("RGB", (16, 12), (200, 30, 30))
VALID_INPUTS = [
    "hi",
    "",
    "\x00",
    "😀 héllo",
    "x" * 300,
    np.str_("np"),
    ["a", "b"],
    ("tuple",),
    [RED, "what?"],
    [{"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
        {"role": "user", "content": "b"},
    ],
]
HOSTILE_INPUTS = [
    "\ud800",
    "x\udcffy",
    ["ok", "\udbff"],
    None,
    5,
    3.5,
    b"bytes",
    [],
    {"role": "user", "content": "hi"},
    [{"role": "robot", "content": "hi"}],
    [{"role": "user"}],
    [{"role": "user", "content": None}],
    [["nested"]],
    ["a", None],
    "</s>",
    object(),
]
CALLS = 400


class _Runaway(BaseException):
    """Raised by the fuzz's watchdog: a call ran far more LLM or UNet steps than any valid call of
    the fuzz needs (unchecked huge ``max_new_tokens`` / ``num_inference_steps`` would run for
    minutes instead of being refused)."""


def _watchdog(model: NextGPT, monkeypatch) -> dict[str, int]:
    """Count LLM and UNet forward passes per call (the caller resets the counts) and raise
    :class:`_Runaway` past 1000 LLM steps or 50 UNet steps (valid fuzz calls need < 100 and < 20)."""
    counts = {"llm": 0, "unet": 0}

    def wrap(module: torch.nn.Module, key: str, limit: int) -> None:
        inner = module.forward

        def forward(*args, **kwargs):
            counts[key] += 1
            if counts[key] > limit:
                raise _Runaway(f"more than {limit} {key} forward passes in one call")
            return inner(*args, **kwargs)

        monkeypatch.setattr(module, "forward", forward)

    wrap(model.llm, "llm", 1000)
    for decoder in model.decoders.values():
        wrap(decoder.load().unet, "unet", 50)
    return counts


def _garbage_for(name: str) -> list:
    """:data:`GARBAGE` less the values that happen to be valid for ``name``."""
    valid_here = {"stop": ("1", ()), "top_p": (1e-310,)}.get(name, ())
    return [g for g in GARBAGE if not any(g is v or (type(g) is type(v) and g == v) for v in valid_here)]


def _draw(rng: random.Random) -> tuple[tuple, dict, list[str]]:
    """One call: (inputs, keyword arguments, the names of the hostile ones)."""
    hostile: list[str] = []
    bad_share = 0.0 if rng.random() < 0.4 else rng.choice([0.05, 0.1, 0.2])
    inputs = rng.choice(VALID_INPUTS)
    if rng.random() < bad_share:
        inputs = rng.choice(HOSTILE_INPUTS)
        hostile.append("inputs")
    kwargs: dict = {}
    if rng.random() < bad_share:
        kwargs["modalities"] = rng.choice(HOSTILE_MODALITIES)
        hostile.append("modalities")
    elif rng.random() < 0.9:
        kwargs["modalities"] = rng.choice(VALID_MODALITIES)
    for name in VALID:
        roll = rng.random()
        if roll < bad_share:
            kwargs[name] = rng.choice(HOSTILE[name] + _garbage_for(name))
            hostile.append(name)
        elif roll < 0.6 or name == "max_new_tokens":  # keep text short in valid calls
            kwargs[name] = rng.choice(VALID[name])
    return inputs, kwargs, hostile


def test_fuzz_generate_raises_only_typed_errors(model: NextGPT, monkeypatch) -> None:
    """A few hundred seeded calls mixing valid and hostile values for every argument: each either
    succeeds or raises a NextGPTError subclass (never another exception, never a runaway); a call
    with a hostile value never succeeds."""
    rng = random.Random(20250101)
    counts = _watchdog(model, monkeypatch)
    untyped, runaway, accepted, typed, ok = [], [], [], 0, 0
    for i in range(CALLS):
        inputs, kwargs, hostile = _draw(rng)
        counts.update(llm=0, unet=0)
        try:
            out = model.generate(inputs, **kwargs)
        except NextGPTError:
            typed += 1
            continue
        except _Runaway as err:
            runaway.append(f"call {i}: {err} (hostile: {hostile})")
            continue
        except Exception as err:  # noqa: BLE001 - the property under test
            untyped.append(f"call {i}: {type(err).__name__}: {str(err)[:100]} (hostile: {hostile})")
            continue
        ok += 1
        assert isinstance(out, GenerationOutput)
        if hostile:
            accepted.append(f"call {i}: accepted hostile {hostile}")
    report = "\n".join(untyped + runaway + accepted)
    assert not untyped and not runaway and not accepted, (
        f"{len(untyped)} of {CALLS} calls raised untyped exceptions, {len(runaway)} ran away, "
        f"{len(accepted)} accepted hostile values:\n{report}"
    )
    assert ok >= CALLS // 4 and typed >= CALLS // 4  # the mix exercises both sides
