"""Placement of the fixed-length clips that ImageBind reads from audio and video.

Upstream ImageBind (``imagebind/data.py``) asks pytorchvideo's ``ConstantClipsPerVideoSampler`` for
clips one at a time until the sampler reports the last one. The arithmetic it performs, reproduced
here without pytorchvideo:

- the latest possible start is ``max(duration - clip_duration, 0)``; ``duration`` is a float (a sample
  or frame count divided by a rate) and ``clip_duration`` is held as an exact ``Fraction``, so the
  subtraction happens in floating point and its result is turned into an exact ``Fraction``;
- the step between starts is that latest start divided by the number of clips (by ``n``, not
  ``n - 1``: the last clip never reaches the end of the media);
- clip ``i`` covers ``[i * step, i * step + clip_duration)``;
- sampling stops after ``n`` clips, or as soon as the next start would pass the latest start (which
  exact arithmetic never triggers before ``n``; the check is kept for fidelity).

Media shorter than one clip is valid: every clip then starts at 0 and the readers take what exists.
"""

from __future__ import annotations

from fractions import Fraction

from nextgpt.errors import ConfigError


def clip_timepoints(
    duration: float, clip_duration: float, clips_per_video: int
) -> list[tuple[Fraction, Fraction]]:
    """Start and end times (seconds, exact fractions) of the clips ImageBind reads.

    Args:
        duration: length of the media in seconds (samples / rate, or frames / fps).
        clip_duration: length of one clip in seconds (2 for ImageBind audio and video).
        clips_per_video: number of clips (3 for audio, 5 for video in ImageBind).

    Returns:
        ``[(start, end), ...]`` with ``end = start + clip_duration``; ``clips_per_video`` entries.

    Raises:
        ConfigError: ``clips_per_video < 1`` or ``clip_duration <= 0``.
    """
    if int(clips_per_video) != clips_per_video or clips_per_video < 1:
        raise ConfigError(f"clips_per_video must be a positive integer, got {clips_per_video!r}")
    if not clip_duration > 0:
        raise ConfigError(f"clip_duration must be positive, got {clip_duration!r}")
    n = int(clips_per_video)
    length = Fraction(clip_duration)
    # float - Fraction evaluates in floating point (as in the sampler); the result is made exact.
    max_start = Fraction(max(float(duration) - length, 0))
    step = Fraction(max_start, n)

    clips: list[tuple[Fraction, Fraction]] = []
    index = 0
    while True:
        start = step * index
        clips.append((start, start + length))
        index += 1
        if index >= n or step * index > max_start:
            break
    return clips
