"""The Gradio app of the web demo: :func:`build_app` (the page), :func:`serve` (build the model and
serve the page) and the shutdown cleanup (:class:`ServerCleanup`, :func:`install_cleanup_handlers`).

Gradio is an optional dependency (``pip install 'nextgpt[demo]'``): this is the only module of the
library that imports it, and only inside :func:`build_app` / :func:`serve`. ``nextgpt serve`` (see
:mod:`nextgpt.cli`) is the command line of :func:`serve`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextgpt.web.session import (
    DEFAULT_HISTORY_TURNS,
    DEFAULT_MAX_TOTAL_BYTES,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_SESSION_TTL_S,
    OUTPUT_PREFIX,
    ChatBackend,
    ChatSession,
    GenerationSettings,
)
from nextgpt.web.uploads import (
    DEFAULT_MAX_FILES,
    DEFAULT_MAX_MEDIA_SECONDS,
    DEFAULT_MAX_UPLOAD_MB,
    UploadLimits,
)

if TYPE_CHECKING:
    import gradio

    from nextgpt.model import NextGPT

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nextgpt[demo]'"
#: Where :func:`serve` listens by default (``nextgpt serve --host/--port``): this machine only.
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Displayed width of the chat's images (CSS px): the ``small`` preset's decoders make 32-pixel images,
#: shown scaled up (generated ones pixelated; the saved files are unchanged); larger images shrink to it.
CHAT_IMAGE_PX = 256
#: The page's style: images in the chat at :data:`CHAT_IMAGE_PX` wide.
CHAT_CSS = f"""
#chatbot .message img {{
  width: {CHAT_IMAGE_PX}px !important;
  max-width: 100% !important;
  height: auto !important;
  max-height: none !important;
  object-fit: contain !important;
}}
#chatbot .message img[src*="/{OUTPUT_PREFIX}_image"] {{
  image-rendering: pixelated;
}}
"""


def _import_gradio():
    try:
        import gradio
    except ImportError as exc:
        raise ImportError(f"the web demo needs gradio, an optional dependency: {INSTALL_HINT}") from exc
    return gradio


def _decoder_default(model: NextGPT, attr: str, fallback: float) -> float:
    for out in model.config.model.outputs.values():
        value = getattr(out.decoder, attr, None)
        if value is not None:
            return value
    return fallback


def build_app(
    model: NextGPT,
    *,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_media_seconds: float = DEFAULT_MAX_MEDIA_SECONDS,
    max_files: int = DEFAULT_MAX_FILES,
    max_history_turns: int = DEFAULT_HISTORY_TURNS,
    output_dir: str | os.PathLike | None = None,
    concurrency_limit: int = 4,
    session_ttl_s: float = DEFAULT_SESSION_TTL_S,
    max_total_mb: float | None = DEFAULT_MAX_TOTAL_BYTES / 2**20,
    title: str = "NExT-GPT chat",
) -> gradio.Blocks:
    """The chat page for ``model``, as a ``gradio.Blocks`` (queue enabled; call ``.launch()``).

    Answers stream into the chat (:meth:`ChatBackend.respond`): text as it is generated, each medium
    as a progress line until it is ready; images are shown :data:`CHAT_IMAGE_PX` wide (the page
    carries its style, :data:`CHAT_CSS`, itself: no ``launch(css=...)`` needed).

    The returned app carries ``nextgpt_output_dir`` (the sessions' root folder) and ``nextgpt_backend``
    (the :class:`ChatBackend`, whose ``lock`` serialises generation; ``nextgpt_backend.close()`` closes
    every session). The backend's reaper thread is started here.

    Args:
        model: the model all sessions share (generation is serialised by a lock).
        max_upload_mb: per-file upload limit.
        max_media_seconds: audio/video duration limit.
        max_files: files per message.
        max_history_turns: previous exchanges passed to the model; also the rounds a chat shows and
            keeps on disk.
        output_dir: root of the per-session folders (default: a new temporary folder). Outside the
            system temp folder, pass it to ``launch(allowed_paths=[...])`` so Gradio may serve it.
        concurrency_limit: queue workers (requests waiting on the model lock, upload checks).
        session_ttl_s: a session's files are removed this long after its last use (browser tabs and
            sessions opened by API calls alike), or when its browser tab closes. Gradio's own copies of
            the uploads are deleted after the same time (``gr.Blocks(delete_cache=...)``).
        max_total_mb: size limit of all session folders together (``None``: none); see
            :class:`ChatBackend`.
        title: page title.

    Raises:
        ImportError: gradio is not installed.
    """
    gr = _import_gradio()
    root = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="nextgpt-web-"))
    root.mkdir(parents=True, exist_ok=True)
    from gradio.utils import get_upload_folder

    backend = ChatBackend(
        model,
        limits=UploadLimits(
            max_bytes=int(max_upload_mb * 1024 * 1024),
            max_media_seconds=float(max_media_seconds),
            max_files=max_files,
        ),
        output_dir=root,
        upload_dir=get_upload_folder(),
        max_history_turns=max_history_turns,
        session_ttl_s=session_ttl_s,
        max_total_bytes=None if max_total_mb is None else int(max_total_mb * 2**20),
    )
    choices = ["text"] + [m.value for m in model.output_modalities]
    default_steps = int(_decoder_default(model, "num_inference_steps", 25))
    default_guidance = float(_decoder_default(model, "guidance_scale", 7.5))

    def respond(
        message,
        session,
        modalities,
        seed,
        steps,
        guidance,
        max_new_tokens,
        repetition_penalty=DEFAULT_REPETITION_PENALTY,
        do_sample=False,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
    ):
        session = session if isinstance(session, ChatSession) else backend.new_session()
        message = message or {}
        text = message.get("text") or ""
        files = [f if isinstance(f, str) else f.get("path") for f in message.get("files") or []]
        settings = GenerationSettings(
            modalities=list(modalities) or None,
            seed=None if seed is None else int(seed),
            num_inference_steps=int(steps),
            guidance_scale=float(guidance),
            max_new_tokens=int(max_new_tokens),
            repetition_penalty=float(repetition_penalty),
            do_sample=bool(do_sample),
            temperature=float(temperature),
            top_k=int(top_k),
            top_p=float(top_p),
        )
        # show the user's turn at once, then the answer as it streams (text deltas, media placeholders
        # with their decode progress, each medium when it is ready)
        busy = gr.MultimodalTextbox(value=None, interactive=False)
        yield busy, session.display + _pending(text, files), session
        display = session.display
        for display in backend.respond(session, text, files, settings, warn=gr.Warning):
            yield gr.skip(), display, session
        yield gr.MultimodalTextbox(value=None, interactive=True), display, session

    def clear(session):
        if isinstance(session, ChatSession):
            session.reset()
        return [], session

    ttl = max(1, int(session_ttl_s))
    delete_cache = (max(1, min(ttl, 3600)), ttl)  # every min(TTL, 1 h), Gradio's files older than TTL
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=delete_cache) as app:
        gr.Markdown(
            f"## {title}\nAttach images, audio or video (checked by content: at most "
            f"{max_upload_mb:g} MB, {max_media_seconds:g} s) and pick the output modalities "
            "(none ticked: the model decides)."
        )
        gr.HTML(f"<style>{CHAT_CSS}</style>", elem_id="chat-style", padding=False, container=False)
        session_state = gr.State(None, time_to_live=session_ttl_s, delete_callback=backend.close_session)
        chatbot = gr.Chatbot(elem_id="chatbot", label="Conversation", height=520, buttons=["copy"])
        textbox = gr.MultimodalTextbox(
            elem_id="message",
            file_types=["image", "audio", "video"],
            file_count="multiple",
            sources=["upload"],
            placeholder="Type a message, attach media, press Enter",
            show_label=False,
        )
        with gr.Accordion("Generation settings", open=True):
            with gr.Row():
                modalities = gr.CheckboxGroup(
                    choices,
                    value=[],
                    label="Output modalities (none ticked: the model decides)",
                    elem_id="modalities",
                )
                seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
            with gr.Row():
                steps = gr.Slider(1, 100, value=default_steps, step=1, label="Diffusion steps")
                guidance = gr.Slider(1.0, 20.0, value=default_guidance, step=0.5, label="Guidance scale")
                most = min(1024, model.context_length)  # generate refuses more than the context
                max_new_tokens = gr.Slider(1, most, value=min(128, most), step=1, label="Max new tokens")
            with gr.Row():
                repetition_penalty = gr.Slider(
                    1.0,
                    2.0,
                    value=DEFAULT_REPETITION_PENALTY,
                    step=0.05,
                    label="Repetition penalty (1: off)",
                    elem_id="repetition-penalty",
                )
                do_sample = gr.Checkbox(value=False, label="Sample (off: greedy)", elem_id="do-sample")
                temperature = gr.Slider(0.05, 2.0, value=0.7, step=0.05, label="Temperature (sampling)")
                top_k = gr.Slider(0, 200, value=50, step=1, label="Top-k (sampling; 0: all tokens)")
                top_p = gr.Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p (sampling)")
        new_chat = gr.Button("New chat", elem_id="new-chat")

        textbox.submit(
            respond,
            [
                textbox,
                session_state,
                modalities,
                seed,
                steps,
                guidance,
                max_new_tokens,
                repetition_penalty,
                do_sample,
                temperature,
                top_k,
                top_p,
            ],
            [textbox, chatbot, session_state],
            show_progress="minimal",  # the answer shows its own progress lines as it streams
        )
        new_chat.click(clear, [session_state], [chatbot, session_state], queue=False)
        chatbot.clear(clear, [session_state], [chatbot, session_state], queue=False)

    app.queue(default_concurrency_limit=concurrency_limit)
    backend.start_reaper()
    # For launch(allowed_paths=[...]), cleanup and tests: where sessions write, and the chat logic.
    app.nextgpt_output_dir = root
    app.nextgpt_backend = backend
    return app


def _pending(text: str, files: Sequence[str | None]) -> list[dict[str, Any]]:
    """What the chat shows while a round runs: the user's text and attachment names."""
    names = ", ".join(Path(f).name for f in files if f)
    shown = (text + (f"\n\n[attached: {names}]" if names else "")).strip()
    return [{"role": "user", "content": shown}] if shown else []


class ServerCleanup:
    """Everything a served app leaves behind, removed once (idempotent, thread-safe): closes the app,
    closes every session of its backend (their folders go), removes the output root if the server
    created it and the Gradio cache folder if the server configured it (restoring ``GRADIO_TEMP_DIR``).

    Args:
        app: the ``gradio.Blocks`` (anything with ``close()``) or ``None``.
        backend: the :class:`ChatBackend` whose sessions to close, or ``None``.
        remove: folders the server created, removed entirely.
        restore_env: environment variables to restore (``None``: unset) after removal.
    """

    def __init__(
        self,
        app: Any = None,
        backend: ChatBackend | None = None,
        remove: Sequence[str | os.PathLike] = (),
        restore_env: dict[str, str | None] | None = None,
    ) -> None:
        self.app = app
        self.backend = backend
        self.remove = [Path(p) for p in remove]
        self.restore_env = dict(restore_env or {})
        self.done = False
        self._lock = threading.RLock()  # a signal handler may run it inside a call in progress

    def __call__(self) -> None:
        """Run the cleanup; later calls do nothing."""
        with self._lock:
            if self.done:
                return
            self.done = True
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.close()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
        for folder in self.remove:
            shutil.rmtree(folder, ignore_errors=True)
        for name, value in self.restore_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        logger.info("web demo stopped; session files removed")


def install_cleanup_handlers(
    cleanup: Callable[[], None], signals: Sequence[int] = (signal.SIGTERM, signal.SIGINT)
) -> Callable[[], None]:
    """Run ``cleanup`` when one of ``signals`` arrives, then chain to the handler that was installed
    before: a Python handler is called (SIGINT's default raises ``KeyboardInterrupt``), the default
    action is re-delivered (the process ends by that signal, as it would have without us). A signal
    that was ignored stays ignored. Only the main thread can install handlers; elsewhere this does
    nothing.

    Returns:
        A function that puts the previous handlers back (if ours are still installed).
    """
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not the main thread: no signal handlers installed")
        return lambda: None
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: Any) -> None:
        logger.info("signal %s: cleaning up", signal.Signals(signum).name)
        try:
            cleanup()
        except Exception:
            logger.exception("cleanup failed")
        prev = previous.get(signum)
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:  # the default action (or a handler set outside Python)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for sig in signals:
        prev = signal.getsignal(sig)
        if prev == signal.SIG_IGN:
            continue
        previous[sig] = prev
        signal.signal(sig, handler)

    def uninstall() -> None:
        for sig, prev in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)

    return uninstall


def serve(
    preset: str | None = "small",
    model_dir: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    share: bool = False,
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
    max_media_seconds: float = DEFAULT_MAX_MEDIA_SECONDS,
    output_dir: str | os.PathLike | None = None,
    session_ttl_s: float = DEFAULT_SESSION_TTL_S,
    max_total_mb: float | None = DEFAULT_MAX_TOTAL_BYTES / 2**20,
    block: bool = True,
) -> gradio.Blocks:
    """Build the model and serve the chat page (``nextgpt serve``, ``make serve``).

    Unless ``GRADIO_TEMP_DIR`` is set, Gradio's upload cache is a new temporary folder of this server.
    On exit, on SIGTERM and on SIGINT (``block=True``: handlers installed here, chained to the previous
    ones) the server cleans up: every session's folder, the output root if it was created here and
    the Gradio cache folder configured here are removed.

    Args:
        preset: preset to build when ``model_dir`` is not given (default ``small``).
        model_dir: a directory written by ``save_pretrained``.
        overrides: dotted config overrides for the preset.
        device: torch device of the model.
        host: interface to bind; ``127.0.0.1`` (default) keeps the demo on this machine.
        port: TCP port.
        share: ask Gradio for a public link (needs the internet).
        max_upload_mb: per-file upload limit.
        max_media_seconds: audio/video duration limit.
        output_dir: where session files go (default: a temporary folder, removed at exit).
        session_ttl_s: idle-session expiry (see :func:`build_app`).
        max_total_mb: size limit of all session folders together (``None``: none; see :func:`build_app`).
        block: wait until interrupted (``False``: return the running app; call
            ``app.nextgpt_cleanup()`` to stop it and remove its files).
    """
    from nextgpt.model import NextGPT

    if model_dir is not None:
        model = NextGPT.from_pretrained(model_dir, device=device)
    else:
        model = NextGPT.from_preset(preset or "small", list(overrides), device=device)
    created: list[Path] = []
    restore_env: dict[str, str | None] = {}
    if not os.environ.get("GRADIO_TEMP_DIR"):  # read when the app and its server are built
        cache = Path(tempfile.mkdtemp(prefix="nextgpt-gradio-"))
        restore_env["GRADIO_TEMP_DIR"] = os.environ.get("GRADIO_TEMP_DIR")
        os.environ["GRADIO_TEMP_DIR"] = str(cache)
        created.append(cache)
    if output_dir is None:
        output_dir = Path(tempfile.mkdtemp(prefix="nextgpt-web-"))
        created.append(output_dir)
    cleanup = ServerCleanup(remove=created, restore_env=restore_env)
    uninstall = install_cleanup_handlers(cleanup) if block else (lambda: None)
    try:
        app = build_app(
            model,
            max_upload_mb=max_upload_mb,
            max_media_seconds=max_media_seconds,
            output_dir=output_dir,
            session_ttl_s=session_ttl_s,
            max_total_mb=max_total_mb,
        )
        cleanup.app, cleanup.backend = app, app.nextgpt_backend
        app.nextgpt_cleanup = cleanup
        if host not in ("127.0.0.1", "localhost", "::1"):
            logger.warning("serving on %s: the demo is reachable from other machines", host)
        logger.info("session files in %s; gradio cache in %s", output_dir, os.environ["GRADIO_TEMP_DIR"])
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=int(max_upload_mb * 2**20),  # bytes: gradio reads "1.5mb" as a bad unit
            allowed_paths=[str(app.nextgpt_output_dir)],
            prevent_thread_lock=True,
            ssr_mode=False,
        )
        if block:
            app.block_thread()
    except BaseException:
        cleanup()
        raise
    finally:
        uninstall()
    if block:
        cleanup()
    return app
