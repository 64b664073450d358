"""Clip placement (pytorchvideo ConstantClipsPerVideoSampler as driven by upstream ImageBind)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from media_fixtures import PREPROCESS_REFS

from nextgpt.encoders.clips import clip_timepoints
from nextgpt.errors import ConfigError


def F(x) -> Fraction:
    return Fraction(x)


@pytest.mark.parametrize(
    ("duration", "clip", "n", "starts"),
    [
        (5.0, 2, 3, [0, 1, 2]),  # max start 3, step 1
        (7.0, 2, 5, [0, 1, 2, 3, 4]),  # the last clip ends at 6 < 7: divided by n, not n - 1
        (12.0, 2, 5, [0, 2, 4, 6, 8]),
        (3.5, 1.5, 4, [0, Fraction(1, 2), 1, Fraction(3, 2)]),
        (2.0, 2, 3, [0, 0, 0]),  # exactly one clip long
        (0.5, 2, 3, [0, 0, 0]),  # shorter than a clip: every clip starts at 0
        (0.0, 2, 5, [0, 0, 0, 0, 0]),
    ],
)
def test_hand_computed_placements(duration, clip, n, starts):
    got = clip_timepoints(duration, clip, n)
    assert [s for s, _ in got] == [F(s) for s in starts]
    assert [e for _, e in got] == [F(s) + F(clip) for s in starts]
    assert all(isinstance(s, Fraction) and isinstance(e, Fraction) for s, e in got)


def test_float_subtraction_is_kept_exactly():
    # 3.3 - 2.0 is 1.2999999999999998 in floating point; the sampler makes THAT exact, not 13/10.
    got = clip_timepoints(3.3, 2.0, 3)
    step = Fraction(3.3 - 2.0) / 3
    assert step != Fraction(13, 30)
    assert [s for s, _ in got] == [0, step, 2 * step]
    # The audio slice bounds upstream takes at 16 kHz: int(start * 16000).
    assert [int(s * 16000) for s, _ in got] == [0, 6933, 13866]
    assert [int(e * 16000) for _, e in got] == [32000, 38933, 45866]


def test_matches_pytorchvideo_reference_table():
    table = json.loads(str(np.load(PREPROCESS_REFS)["clips_json"]))
    assert len(table) == 33
    for key, expected in table.items():
        clip, n, duration = key.split("|")
        got = clip_timepoints(float(duration), float(clip), int(n))
        assert [[str(s), str(e)] for s, e in got] == expected, key


@pytest.mark.parametrize(("clip", "n"), [(2, 0), (2, -1), (0, 3), (-1.0, 3), (2, 1.5)])
def test_invalid_settings(clip, n):
    with pytest.raises(ConfigError):
        clip_timepoints(10.0, clip, n)
