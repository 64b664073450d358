"""Generation progress for the web demo: diffusion steps reported while one ``generate`` call runs.

``generate(progress=True)`` logs one ``nextgpt.model`` record per diffusion step; while a round runs,
:func:`diffusion_progress` installs a log filter that turns those records into ``(fraction,
description)`` reports ("decoding image: step k/n") for the page's progress bar.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

#: A callback that reports progress: ``(fraction in [0, 1] or None, description)``.
ProgressFn = Callable[[float | None, str], None]


class _DiffusionProgress(logging.Filter):
    """Turns the model's per-step diffusion log records (``generate(progress=True)``) into progress
    reports while installed on the ``nextgpt.model`` logger; drops them when that logger would not
    have shown them."""

    def __init__(self, report: ProgressFn, swallow: bool) -> None:
        super().__init__()
        self.report = report
        self.swallow = swallow

    def filter(self, record: logging.LogRecord) -> bool:
        if "diffusion step" not in str(record.msg) or not isinstance(record.args, tuple):
            return True
        if len(record.args) == 3:
            modality, step, total = record.args
            with contextlib.suppress(Exception):
                self.report(step / max(total, 1), f"decoding {modality}: step {step}/{total}")
        return not self.swallow


@contextlib.contextmanager
def diffusion_progress(report: ProgressFn | None) -> Iterator[bool]:
    """Install :class:`_DiffusionProgress` for the duration of one (locked) ``generate`` call."""
    if report is None:
        yield False
        return
    model_logger = logging.getLogger("nextgpt.model")
    swallow = not model_logger.isEnabledFor(logging.INFO)
    old_level = model_logger.level
    filt = _DiffusionProgress(report, swallow)
    model_logger.addFilter(filt)
    if swallow:
        model_logger.setLevel(logging.INFO)
    try:
        yield True
    finally:
        model_logger.removeFilter(filt)
        if swallow:
            model_logger.setLevel(old_level)
