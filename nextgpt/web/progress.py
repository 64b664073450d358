"""Generation progress for the web demo: what one generation reports, as the page shows it.

The page's progress reporter is a :data:`ProgressFn` ``(fraction, description)``, the optional
``progress`` of :meth:`~nextgpt.web.ChatBackend.respond`: the backend calls it with each
:class:`~nextgpt.outputs.ProgressEvent` of the model's stream, as ``(event.fraction,
event.describe())`` (``generating text...``, ``decoding image: step k/n``), the lines the streamed
answer shows in place of each medium. :func:`forward_progress` makes the same reports of a
``NextGPT.generate(progress=...)`` callback, for callers of the one-shot ``generate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # nextgpt.outputs loads numpy; importing nextgpt.web stays light
    from nextgpt.outputs import ProgressEvent

logger = logging.getLogger(__name__)

#: A callback that reports progress: ``(fraction in [0, 1] or None, description)``.
ProgressFn = Callable[[float | None, str], None]


def forward_progress(report: ProgressFn) -> Callable[[ProgressEvent], None]:
    """The ``progress`` callback for ``generate`` that passes each event on to ``report`` as
    ``(event.fraction, event.describe())``.

    A reporter that fails (the page went away) does not end the generation: its error is logged
    at DEBUG and the call goes on.
    """

    def on_event(event: ProgressEvent) -> None:
        try:
            report(event.fraction, event.describe())
        except Exception:
            logger.debug("progress report %r failed", event, exc_info=True)

    return on_event


__all__ = ["ProgressFn", "forward_progress"]
