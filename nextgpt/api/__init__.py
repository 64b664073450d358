"""An OpenAI-compatible HTTP API for one :class:`~nextgpt.NextGPT` (``nextgpt serve --api``).

The convention of vLLM and vLLM-Omni, which serve LLM + diffusion pipelines this way:

* ``POST /v1/chat/completions``: OpenAI chat messages whose content mixes text with image, audio and
  video parts (base64 data URLs, or files uploaded with ``POST /v1/files``); ``stream: true`` answers
  as server-sent events (text deltas as they are generated, each medium when its decoder is done);
  a ``modalities`` field picks the outputs; the answer's media come back as data URLs or as file URLs
  (``message.media``).
* ``POST /v1/images/generations``: OpenAI's images API (``prompt``, ``n``, ``size``,
  ``response_format``), answered by the model with ``modalities=["image"]``.
* ``GET /v1/models``: the served model.

Requests from several clients are batched: a :class:`Batcher` thread collects prepared requests
(``model.prepare_request``) for ``batch_window_ms`` (up to ``max_batch``) and runs them in one
``model.run_requests`` call. Bad requests get 4xx JSON errors in OpenAI's shape, never a traceback;
media in requests are checked as the web page's uploads are (:mod:`nextgpt.web.uploads`: size,
type by content, real decode, duration). ``docs/API.md`` is the reference.

The package, by topic: :mod:`nextgpt.api.app` (:func:`build_api`, :func:`serve_api`),
:mod:`nextgpt.api.batcher`, :mod:`nextgpt.api.schemas` (request bodies), :mod:`nextgpt.api.convert`
(requests -> ``prepare_request`` arguments), :mod:`nextgpt.api.media` (data URLs, output encoding,
bounded file stores), :mod:`nextgpt.api.errors`.

FastAPI and uvicorn are optional dependencies (``pip install 'nextgpt[api]'``; gradio brings them
too): ``import nextgpt.api`` loads neither them nor torch; the names below load on first access.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "build_api": "app",
    "serve_api": "app",
    "ApiServer": "app",
    "ApiState": "app",
    "DEFAULT_HOST": "app",
    "DEFAULT_PORT": "app",
    "DEFAULT_MAX_TOKENS": "app",
    "DEFAULT_MEDIA_TTL_S": "app",
    "DEFAULT_MAX_DISK_MB": "app",
    "Batcher": "batcher",
    "Job": "batcher",
    "DEFAULT_BATCH_WINDOW_MS": "batcher",
    "DEFAULT_MAX_BATCH": "batcher",
    "DEFAULT_MAX_QUEUE": "batcher",
    "ApiError": "errors",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_LAZY)
