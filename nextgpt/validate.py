"""Checks of the generation arguments at the public boundary.

:meth:`nextgpt.NextGPT.generate` and each decoder's ``generate`` run these before anything reaches
torch or diffusers, so a bad value raises :class:`~nextgpt.errors.InputError` naming the argument
and its valid range instead of a raw ``RuntimeError`` / ``ZeroDivisionError`` from deep inside a
pipeline (or, worse, a silently different behaviour).

Accepted values (``None`` always means "the default" for the decoder options):

=====================  ==========================================================================
argument               valid values
=====================  ==========================================================================
max_new_tokens         int, ``1 <= n <=`` the LLM's context length (``max_position_embeddings``)
do_sample              bool
progress               bool, or a callable ``progress(event)`` (:class:`~nextgpt.outputs.ProgressEvent`)
temperature            finite float, ``0`` (greedy, as with ``do_sample=False``) or
                       ``>= 2.2250738585072014e-308`` (the smallest normal float); negative refused
top_p                  finite float in ``(0, 1]``
stop                   ``None``, one non-empty str (a bare str is one stop string, not its
                       characters), or a list/tuple (any iterable but bytes or a mapping) of
                       non-empty str
seed                   ``None`` or int in ``[0, 2**64 - 1]`` (what ``torch.Generator.manual_seed``
                       takes without wrapping negatives)
num_inference_steps    int in ``[1, 500]`` (schedulers trained on 1000 steps with
                       ``steps_offset=1`` index past their table at 1000)
guidance_scale         finite float in ``[0, 100]`` (``<= 1`` disables classifier-free guidance)
height, width          int, a multiple of 8 in ``[8, 2048]``
num_frames             int in ``[1, 256]``
audio_length_in_s      finite float in ``[0.05, 60]`` seconds
=====================  ==========================================================================

"int" means any :class:`numbers.Integral` (``numpy.int64`` included) except ``bool``; "float" any
:class:`numbers.Real` except ``bool``. Text must be encodable as UTF-8 (no lone surrogates).
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from nextgpt.errors import InputError

__all__ = [
    "DECODER_OPTIONS",
    "MAX_AUDIO_LENGTH_S",
    "MAX_FRAMES",
    "MAX_GUIDANCE_SCALE",
    "MAX_INFERENCE_STEPS",
    "MAX_SEED",
    "MAX_SIDE",
    "MIN_AUDIO_LENGTH_S",
    "SIDE_MULTIPLE",
    "check_bool",
    "check_callback",
    "check_decoder_options",
    "check_int",
    "check_progress",
    "check_real",
    "check_seed",
    "check_seeds",
    "check_side",
    "check_stops",
    "check_temperature",
    "check_text",
    "derived_seed",
]

#: Largest seed: ``torch.Generator.manual_seed`` takes 64-bit unsigned values.
MAX_SEED = 2**64 - 1
#: Denoising steps: the SD-family schedulers have 1000 training timesteps and, with
#: ``steps_offset=1``, fail at 1000 inference steps; 500 keeps a call's work bounded.
MAX_INFERENCE_STEPS = 500
#: Largest image / frame side in pixels (memory grows with its square).
MAX_SIDE = 2048
#: Image / frame sides are multiples of this: the VAE downsampling factor of the Stable Diffusion
#: family of decoders (the decoder configs check their default sizes against it too).
SIDE_MULTIPLE = 8
#: Largest number of video frames.
MAX_FRAMES = 256
#: Audio clip length bounds in seconds. AudioLDM needs at least its VAE scale factor in mel frames
#: (0.04 s for the released model, 0.02 s for the tiny one).
MIN_AUDIO_LENGTH_S = 0.05
MAX_AUDIO_LENGTH_S = 60.0
#: Largest classifier-free guidance scale (typical values are 1..20; larger ones only saturate).
MAX_GUIDANCE_SCALE = 100.0
#: The smallest positive normal float: smaller positive values are subnormal.
_MIN_NORMAL = sys.float_info.min


def _show(value: Any) -> str:
    """A short, always-printable description of ``value`` for an error message."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - huge ints (str conversion limit) or a hostile __repr__
        text = f"<{type(value).__name__}>"
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= 60 else f"{text[:40]}...<{type(value).__name__}, {len(text)} chars>"


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not _is_bool(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, *, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``; ``InputError`` naming ``name`` and the range otherwise."""
    if not _is_int(value):
        raise InputError(f"{name} must be an int in [{low}, {high}], got {_show(value)}")
    number = int(value)
    if not low <= number <= high:
        raise InputError(f"{name} must be an int in [{low}, {high}], got {_show(value)}")
    return number


def check_real(
    name: str, value: Any, *, low: float, high: float = math.inf, low_open: bool = False, hint: str = ""
) -> float:
    """``value`` as a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if math.isinf(high):
        span = f"{'>' if low_open else '>='} {low:g}"
    else:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
    what = f"{name} must be a finite number {span}{hint}, got "
    if not isinstance(value, numbers.Real) or _is_bool(value):
        raise InputError(what + _show(value))
    try:
        number = float(value)
    except (OverflowError, ValueError, TypeError):
        raise InputError(what + _show(value)) from None
    if not math.isfinite(number) or number < low or number > high or (low_open and number == low):
        raise InputError(what + _show(value))
    return number


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a bool (``numpy.bool_`` accepted; ints and strings are not)."""
    if not _is_bool(value):
        raise InputError(f"{name} must be True or False, got {_show(value)}")
    return bool(value)


def check_progress(value: Any, name: str = "progress") -> bool | Callable[..., Any]:
    """A bool (``numpy.bool_`` accepted; ints and strings are not) or a callable ``progress(event)``."""
    if _is_bool(value):
        return bool(value)
    if callable(value):
        return value
    raise InputError(f"{name} must be True or False or a callable progress(event), got {_show(value)}")


def check_seed(value: Any, name: str = "seed") -> int | None:
    """``None`` or an int in ``[0, 2**64 - 1]``."""
    if value is None:
        return None
    if not _is_int(value) or not 0 <= int(value) <= MAX_SEED:
        raise InputError(f"{name} must be None or an int in [0, 2**64 - 1], got {_show(value)}")
    return int(value)


def check_seeds(value: Any, name: str = "seed") -> int | list[int] | None:
    """A decoder's ``seed``: ``None``, one seed, or a non-empty list of seeds (one per item)."""
    if not isinstance(value, (list, tuple)):
        return check_seed(value, name)
    if not value:
        raise InputError(f"{name} must be None, an int or a non-empty list of ints, got []")
    seeds = []
    for i, item in enumerate(value):
        checked = check_seed(item, f"{name}[{i}]")
        if checked is None:
            raise InputError(f"{name}[{i}] must be an int in [0, 2**64 - 1], got None")
        seeds.append(checked)
    return seeds


def derived_seed(seed: int | None, offset: int) -> int | None:
    """The seed of the ``offset``-th media item of one call (wraps inside the seed range)."""
    return None if seed is None else (seed + offset) % (MAX_SEED + 1)


def check_side(name: str, value: Any) -> int:
    """An image / frame side: an int, a multiple of :data:`SIDE_MULTIPLE` in ``[8, MAX_SIDE]``."""
    side = check_int(name, value, low=SIDE_MULTIPLE, high=MAX_SIDE)
    if side % SIDE_MULTIPLE:
        raise InputError(
            f"{name} must be a multiple of {SIDE_MULTIPLE} in [{SIDE_MULTIPLE}, {MAX_SIDE}], got {side}"
        )
    return side


def check_temperature(value: Any) -> float:
    """``0`` (greedy) or a normal positive finite float."""
    what = f"temperature must be 0 (greedy) or a finite number >= {_MIN_NORMAL:g} (not subnormal), got "
    try:
        temperature = check_real("temperature", value, low=0.0)
    except InputError:
        raise InputError(what + _show(value)) from None
    if 0 < temperature < _MIN_NORMAL:
        raise InputError(what + f"{_show(value)} (subnormal)")
    return temperature


def check_text(value: str, name: str = "text") -> str:
    r"""``value`` unchanged if it can be encoded as UTF-8 (a lone surrogate such as ``"\ud800"``
    cannot: it is half of a UTF-16 pair, not a character)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        bad = value[err.start : err.end].encode("utf-8", "backslashreplace").decode("ascii")
        raise InputError(
            f"{name} cannot be encoded as UTF-8: {bad} at position {err.start} is a lone surrogate "
            "(half of a UTF-16 pair); decode the text with errors='replace' or remove it"
        ) from None
    return value


def check_stops(stop: Any) -> list[str]:
    """``None`` -> ``[]``; one str -> ``[str]`` (a single stop string, not its characters); a list,
    tuple or other iterable of non-empty str (not bytes, not a mapping) -> a list."""
    if stop is None:
        return []
    if isinstance(stop, str):
        items: list[Any] = [stop]
    elif isinstance(stop, Iterable) and not isinstance(stop, (bytes, bytearray, Mapping)):
        items = list(stop)
    else:
        raise InputError(
            f"stop must be None, a str or a list of non-empty str, got {type(stop).__name__} {_show(stop)}"
        )
    for item in items:
        if not isinstance(item, str) or not item:
            raise InputError(f"stop strings must be non-empty str, got {_show(item)}")
        check_text(item, "stop string")
    return items


def check_callback(value: Any, name: str = "callback") -> Callable[..., Any] | None:
    """``None`` or a callable."""
    if value is not None and not callable(value):
        raise InputError(f"{name} must be None or a callable, got {_show(value)}")
    return value


def _steps(name: str, value: Any) -> int:
    return check_int(name, value, low=1, high=MAX_INFERENCE_STEPS)


def _guidance(name: str, value: Any) -> float:
    return check_real(name, value, low=0.0, high=MAX_GUIDANCE_SCALE)


def _frames(name: str, value: Any) -> int:
    return check_int(name, value, low=1, high=MAX_FRAMES)


def _audio_length(name: str, value: Any) -> float:
    return check_real(name, value, low=MIN_AUDIO_LENGTH_S, high=MAX_AUDIO_LENGTH_S, hint=" seconds")


#: The decoder options and their checks (each takes the name and a non-None value).
DECODER_OPTIONS: dict[str, Callable[[str, Any], Any]] = {
    "num_inference_steps": _steps,
    "guidance_scale": _guidance,
    "height": check_side,
    "width": check_side,
    "num_frames": _frames,
    "audio_length_in_s": _audio_length,
    "seed": lambda name, value: check_seeds(value, name),
}


def check_decoder_options(options: Mapping[str, Any], *, prefix: str = "") -> dict[str, Any]:
    """The decoder options in ``options`` checked and normalised (``None`` values kept as ``None``).

    ``prefix`` starts each error message (e.g. ``"stable_diffusion decoder: "``)."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        check = DECODER_OPTIONS[key]
        try:
            out[key] = None if value is None else check(key, value)
        except InputError as err:
            if not prefix:
                raise
            raise InputError(f"{prefix}{err}") from None
    return out
