"""Web chat demo: a Gradio app around one :class:`~nextgpt.NextGPT` (``nextgpt serve``, ``make serve``).

A multimodal chat: a text box with image / audio / video uploads, replies with text and generated media
rendered in the conversation, and the generation controls of :meth:`NextGPT.generate` (output
modalities, seed, diffusion steps, guidance scale, max new tokens, repetition penalty, sampling with
temperature / top-k / top-p).

How it behaves:

* **Answers stream** (:meth:`NextGPT.stream`): the text appears as it is generated, each medium has a
  placeholder line in the answer (``preparing image...``, then ``decoding image: step k/n``) that the
  medium replaces when its decoder is done; the finished answer is laid out as a one-shot answer (the
  text, then images, sounds and videos). Images are shown :data:`CHAT_IMAGE_PX` pixels wide
  (the ``small`` preset's 32-pixel images scaled up on the page only; the saved files are unchanged).
* **Sampling defaults that do not loop**: greedy decoding with a repetition penalty of
  :data:`DEFAULT_REPETITION_PENALTY` (SmolLM2-135M, the ``small`` preset's LLM, repeats itself
  greedily without one; see docs/WEB.md).

* **Uploads are checked before the model sees them** (:func:`check_upload`): the size in bytes, the
  type by content (magic bytes, PyAV for containers) which must agree with the file name's extension,
  a real decode with the library's own loaders (:func:`~nextgpt.encoders.load_image`,
  :func:`~nextgpt.encoders.load_audio`, :func:`~nextgpt.encoders.preprocess_video`) and a duration limit
  for audio and video. A rejected upload is reported in the chat (``Upload rejected: <file>: <reason>``)
  and the model is not called.
* **Media come only from uploads.** Message text is passed to the model as ``str`` (always text, never
  opened as a path); the only files read are the ones Gradio stored in its upload folder, and the
  handler refuses any other path.
* **One history per browser session** (:class:`ChatSession` in a ``gr.State``): the previous user turns
  with their media and the previous answers as text go to ``generate`` as chat messages. Each session
  writes its uploads and outputs (:meth:`GenerationOutput.save`) under its own folder, one
  ``turn-NNN`` folder per round, removed when the session ends.
* **Everything a session holds is bounded** (:class:`ChatBackend`):

  - *history and payload*: a session keeps its last ``max_history_turns`` rounds (default
    :data:`DEFAULT_HISTORY_TURNS` = 8, rejected and failed rounds included): the chat shows exactly
    those, the model is given their exchanges, and a round that falls out leaves the chat and the
    history and has its folder deleted. So the messages re-sent each round and a session's bytes on
    disk are bounded (at most 8 rounds of at most ``max_files`` uploads plus the outputs); one message's
    displayed text is clipped at :data:`MAX_DISPLAY_TEXT_CHARS` characters (the model gets all of it).
  - *idle sessions*: the backend tracks every session it opened, from a browser tab or from an API
    call that sent no state, with its last use; sessions unused for ``session_ttl_s`` (default
    :data:`DEFAULT_SESSION_TTL_S` = 1 hour) are closed and their folders removed, checked at each new
    session, at each round and by a reaper thread. A session in a round is never closed; one that
    was closed and is used again starts over with a notice.
  - *disk*: all session folders together are kept under ``max_total_mb`` (default
    :data:`DEFAULT_MAX_TOTAL_BYTES` = 2 GiB): before a round copies uploads, the least recently used
    idle sessions are closed until they fit; if closing them all would not make room (the space is
    held by this session or by rounds in progress) none is closed and the uploads are refused with
    ``Upload rejected: the server's storage for chat files is full ...`` (messages without uploads
    still run). Gradio's own copies of uploads are deleted after the session TTL.
* **Shutdown cleans up**: :func:`serve` gives Gradio a cache folder of its own (unless
  ``GRADIO_TEMP_DIR`` is set) and, on exit, SIGTERM or SIGINT (handlers chained to the previous ones:
  the process still ends as the signal asks), closes every session and removes the output root and
  the cache folder it created (:class:`ServerCleanup`, :func:`install_cleanup_handlers`).
* **One model, one generation at a time.** A lock around the model serialises the chat's calls (and
  the model's own ``generation_lock`` queues them behind other users of the model, e.g. the HTTP
  API); the requests themselves run in Gradio's queue (``default_concurrency_limit`` workers), so page
  loads, upload checks and other sessions are never blocked by a long generation: a waiting session's
  answer reads "waiting for the model (another session is generating)...", then streams.
* **A round stopped early** (the page went away: Gradio closes the handler's generator) cancels the
  model's call; the partial answer stays in the chat with ``(stopped)`` and enters no history.

Gradio is an optional dependency (``pip install 'nextgpt[demo]'``): it is imported only inside
:func:`build_app` / :func:`serve`; the upload checks and session logic do not need it, and importing
this package loads neither gradio nor torch.

The package, by topic (every public name is re-exported here: ``from nextgpt.web import X``):

* :mod:`nextgpt.web.uploads`: :func:`check_upload`, :func:`sniff_media`, :class:`UploadLimits`,
  :class:`CheckedUpload` and the upload limits' defaults;
* :mod:`nextgpt.web.session`: :class:`ChatSession`, :class:`ChatBackend`, :class:`GenerationSettings`
  and the history / TTL / disk bounds;
* :mod:`nextgpt.web.progress`: :data:`ProgressFn` (the optional progress reporter of
  :meth:`ChatBackend.respond`) and :func:`forward_progress`, which makes a ``generate`` progress
  callback (:class:`~nextgpt.outputs.ProgressEvent`) of such a reporter;
* :mod:`nextgpt.web.app`: :func:`build_app`, :func:`serve`, :class:`ServerCleanup`,
  :func:`install_cleanup_handlers`.

The command line is ``nextgpt serve`` (:mod:`nextgpt.cli`), which carries every option of :func:`serve`.
"""

from nextgpt.web.app import (
    CHAT_CSS,
    CHAT_IMAGE_PX,
    DEFAULT_HOST,
    DEFAULT_PORT,
    INSTALL_HINT,
    ServerCleanup,
    build_app,
    install_cleanup_handlers,
    serve,
)
from nextgpt.web.progress import ProgressFn, forward_progress
from nextgpt.web.session import (
    DEFAULT_HISTORY_TURNS,
    DEFAULT_MAX_TOTAL_BYTES,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_SESSION_TTL_S,
    EXPIRED_NOTICE,
    MAX_DISPLAY_TEXT_CHARS,
    OUTPUT_PREFIX,
    WAITING_LINE,
    ChatBackend,
    ChatSession,
    Exchange,
    GenerationSettings,
    Part,
    Round,
)
from nextgpt.web.uploads import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_MEDIA_SECONDS,
    DEFAULT_MAX_UPLOAD_MB,
    MAX_UPLOAD_IMAGE_PIXELS,
    CheckedUpload,
    UploadLimits,
    check_upload,
    sniff_media,
)

__all__ = [
    "CHAT_CSS",
    "CHAT_IMAGE_PX",
    "DEFAULT_HISTORY_TURNS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_MEDIA_SECONDS",
    "DEFAULT_MAX_TOTAL_BYTES",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_PORT",
    "DEFAULT_REPETITION_PENALTY",
    "DEFAULT_SESSION_TTL_S",
    "EXPIRED_NOTICE",
    "INSTALL_HINT",
    "MAX_DISPLAY_TEXT_CHARS",
    "MAX_UPLOAD_IMAGE_PIXELS",
    "OUTPUT_PREFIX",
    "ChatBackend",
    "ChatSession",
    "CheckedUpload",
    "Exchange",
    "GenerationSettings",
    "Part",
    "ProgressFn",
    "Round",
    "ServerCleanup",
    "UploadLimits",
    "WAITING_LINE",
    "build_app",
    "check_upload",
    "forward_progress",
    "install_cleanup_handlers",
    "serve",
    "sniff_media",
]
