"""Web chat demo: a Gradio app around one :class:`~nextgpt.NextGPT` (``nextgpt serve``, ``make serve``).

A multimodal chat: a text box with image / audio / video uploads, replies with text and generated media
rendered in the conversation, and the generation controls of :meth:`NextGPT.generate` (output
modalities, seed, diffusion steps, guidance scale, max new tokens).

How it behaves:

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
  with their media and the previous answers as text go to ``generate`` as chat messages; the last
  ``max_history_turns`` exchanges are kept. Each session writes its uploads and outputs
  (:meth:`GenerationOutput.save`) under its own folder, removed when the session ends.
* **One model, one generation at a time.** A lock around the model serialises ``generate`` calls; the
  requests themselves run in Gradio's queue (``default_concurrency_limit`` workers), so page loads,
  upload checks and other sessions are never blocked by a long generation: a waiting session shows
  "waiting for the model", then progress ("generating text...", "decoding image: step k/n").

Gradio is an optional dependency (``pip install 'nextgpt[demo]'``): it is imported only inside
:func:`build_app` / :func:`serve`; the upload checks and session logic here do not need it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextgpt.errors import InputError, NextGPTError
from nextgpt.media import Audio, Video
from nextgpt.modality import Modality
from nextgpt.processor import AUDIO_EXTS, IMAGE_EXTS, VIDEO_EXTS

if TYPE_CHECKING:
    import gradio

    from nextgpt.model import NextGPT

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'nextgpt[demo]'"
#: Prefix of the files a reply is saved under (``reply_image0.png``, ``reply_audio0.wav``, ...).
OUTPUT_PREFIX = "reply"
#: Largest image (pixels) accepted from an upload, checked from the header before decoding.
MAX_UPLOAD_IMAGE_PIXELS = 50_000_000

#: A callback that reports progress: ``(fraction in [0, 1] or None, description)``.
ProgressFn = Callable[[float | None, str], None]
#: One part of a user turn as ``generate`` takes it.
Part = str | Path | Audio | Video


# --------------------------------------------------------------------------------------------------
# Upload checks (no gradio needed)


@dataclass(frozen=True)
class UploadLimits:
    """What an upload may be.

    Attributes:
        max_bytes: file size limit.
        max_media_seconds: duration limit for audio and video.
        max_image_pixels: image size limit (width x height), read from the header before decoding.
        max_files: files per message.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_media_seconds: float = 60.0
    max_image_pixels: int = MAX_UPLOAD_IMAGE_PIXELS
    max_files: int = 4


@dataclass(frozen=True)
class CheckedUpload:
    """An upload that passed :func:`check_upload`.

    Attributes:
        path: the file (its extension agrees with its content).
        name: the name the user gave it (for messages).
        modality: image, audio or video.
        duration: seconds, for audio and video.
    """

    path: Path
    name: str
    modality: Modality
    duration: float | None = None

    def as_part(self) -> Path | Audio | Video:
        """The input part ``generate`` takes for this file."""
        if self.modality is Modality.AUDIO:
            return Audio(self.path)
        if self.modality is Modality.VIDEO:
            return Video(self.path)
        return self.path


def _claimed_modality(path: Path) -> Modality | None:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return Modality.IMAGE
    if ext in AUDIO_EXTS:
        return Modality.AUDIO
    if ext in VIDEO_EXTS:
        return Modality.VIDEO
    return None


def sniff_media(head: bytes) -> tuple[Modality | None, str]:
    """Classify a file by its first bytes: ``(modality, format)``.

    The modality is ``None`` with format ``"container"`` for formats that hold audio, video or both
    (MP4/MOV, Matroska/WebM, Ogg: the streams decide, see :func:`check_upload`) and ``None`` with
    format ``"unknown"`` when no signature matches.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Modality.IMAGE, "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return Modality.IMAGE, "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return Modality.IMAGE, "GIF"
    if head.startswith(b"BM") and len(head) >= 14:
        return Modality.IMAGE, "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Modality.IMAGE, "TIFF"
    if head.startswith(b"RIFF") and len(head) >= 12:
        kind = head[8:12]
        if kind == b"WEBP":
            return Modality.IMAGE, "WebP"
        if kind == b"WAVE":
            return Modality.AUDIO, "WAV"
        if kind == b"AVI ":
            return Modality.VIDEO, "AVI"
    if head.startswith(b"fLaC"):
        return Modality.AUDIO, "FLAC"
    if head.startswith(b"ID3"):
        return Modality.AUDIO, "MP3"
    if len(head) >= 2 and head[0] == 0xFF and (head[1] & 0xE0) == 0xE0:
        return Modality.AUDIO, "MPEG audio"  # MP3 frame sync or ADTS AAC
    if head.startswith(b"OggS") or head.startswith(b"\x1a\x45\xdf\xa3") or head[4:8] == b"ftyp":
        return None, "container"
    return None, "unknown"


def _probe_container(path: Path) -> tuple[Modality | None, float | None]:
    """Streams of an audio/video container (PyAV): ``(video if it has a picture stream, else audio
    if it has sound, else None; duration in seconds or None)``."""
    import av

    with av.open(os.fspath(path)) as container:
        videos = [s for s in container.streams.video if not _is_attached_picture(s)]
        duration = container.duration / 1e6 if container.duration else None
        if videos:
            kind = Modality.VIDEO
            stream = videos[0]
        elif container.streams.audio:
            kind = Modality.AUDIO
            stream = container.streams.audio[0]
        else:
            return None, duration
        if duration is None and stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        return kind, duration


def _is_attached_picture(stream: Any) -> bool:
    """A cover image stored as a video stream (MP3/M4A album art) is not a video."""
    import av

    flag = getattr(getattr(av.stream, "Disposition", None), "attached_pic", None)
    try:
        return bool(flag is not None and stream.disposition & flag)
    except TypeError:
        return False


def _header_duration(path: Path, modality: Modality) -> float | None:
    """Duration from the file header (no decoding), or None when the header does not say."""
    if modality is Modality.AUDIO:
        try:
            import soundfile

            return float(soundfile.info(os.fspath(path)).duration)
        except Exception:  # not a libsndfile format: ask PyAV
            pass
    try:
        return _probe_container(path)[1]
    except Exception:
        return None


def _without_path(message: str, path: Path) -> str:
    """A loader's message with the server-side path taken out (the caller prefixes the user's name)."""
    quoted = f"'{path}'"
    for form, by in ((f": {quoted}", ""), (f" {quoted}", ""), (quoted, "the file"), (str(path), "the file")):
        message = message.replace(form, by)
    return message


def check_upload(
    path: str | os.PathLike, limits: UploadLimits = UploadLimits(), *, name: str | None = None
) -> CheckedUpload:
    """Check one uploaded file before the model sees it.

    In order: the file exists and is at most ``limits.max_bytes``; its extension names an image, audio
    or video format; its content (magic bytes; PyAV streams for MP4/WebM/Ogg containers) is of that
    same modality; audio/video are at most ``limits.max_media_seconds`` long (header first, then the
    decoded length); the library's own loader decodes it.

    Args:
        path: the uploaded file on the server.
        limits: size / duration / pixel limits.
        name: the file's name as the user knows it (default: ``path``'s name), used in messages.

    Raises:
        InputError: ``"<name>: <reason>"`` for anything the model should not be given.
    """
    from nextgpt.encoders import load_audio, load_image, preprocess_video

    p = Path(os.fspath(path))
    name = name or p.name

    def reject(reason: str) -> InputError:
        return InputError(f"{name}: {reason}")

    if not p.is_file():
        raise reject("the upload is missing on the server")
    size = p.stat().st_size
    if size == 0:
        raise reject("the file is empty")
    if size > limits.max_bytes:
        raise reject(
            f"the file is {size / 2**20:.1f} MB, above the upload limit of {limits.max_bytes / 2**20:g} MB"
        )
    claimed = _claimed_modality(p)
    if claimed is None:
        known = ", ".join(sorted(IMAGE_EXTS | AUDIO_EXTS | VIDEO_EXTS))
        raise reject(f"unsupported file type '{p.suffix or '(none)'}'; accepted: {known}")

    with p.open("rb") as fh:
        head = fh.read(64)
    sniffed, fmt = sniff_media(head)
    duration: float | None = None
    if fmt == "container":
        try:
            sniffed, duration = _probe_container(p)
        except Exception as exc:
            why = _without_path(f"{type(exc).__name__}: {exc}", p)
            raise reject(f"cannot read the {claimed.value} container: {why}") from exc
        if sniffed is None:
            raise reject("the file holds no audio or video stream")
        fmt = f"{sniffed.value} container"
    if sniffed is not None and sniffed is not claimed:
        raise reject(
            f"the name says {claimed.value} ('{p.suffix}') but the content is {sniffed.value} ({fmt}); "
            "rename the file or upload the right one"
        )

    if claimed is Modality.IMAGE:
        try:
            load_image(p, max_pixels=limits.max_image_pixels)
        except InputError as exc:
            raise reject(_without_path(str(exc), p)) from exc
        return CheckedUpload(p, name, claimed)

    # audio / video: duration from the header before any decoding
    if duration is None:
        duration = _header_duration(p, claimed)
    if duration is not None and duration > limits.max_media_seconds:
        raise reject(
            f"the {claimed.value} is {duration:.1f} s long, above the limit of {limits.max_media_seconds:g} s"
        )
    try:
        if claimed is Modality.AUDIO:
            wave, rate = load_audio(p)
            duration = wave.shape[1] / rate
        else:
            preprocess_video(Video(p), size=32)  # decodes the frames the encoder will read
    except InputError as exc:
        raise reject(_without_path(str(exc), p)) from exc
    if duration is None:
        raise reject(f"cannot tell how long the {claimed.value} is")
    if duration > limits.max_media_seconds:
        raise reject(
            f"the {claimed.value} is {duration:.1f} s long, above the limit of {limits.max_media_seconds:g} s"
        )
    return CheckedUpload(p, name, claimed, duration)


# --------------------------------------------------------------------------------------------------
# Sessions (no gradio needed)


@dataclass
class Exchange:
    """One finished round: the user's parts (text and checked media) and the answer's text."""

    user: list[Part]
    answer: str


@dataclass
class ChatSession:
    """The state of one browser session: its folder, the model-side history and what the chat shows.

    Attributes:
        directory: this session's folder (uploads and outputs); removed by :meth:`close`.
        exchanges: finished rounds, oldest first.
        display: the chatbot's messages (``{"role", "content"}`` with text or ``{"path": ...}``).
    """

    directory: Path
    exchanges: list[Exchange] = field(default_factory=list)
    display: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0

    @classmethod
    def create(cls, root: str | os.PathLike) -> ChatSession:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(prefix="session-", dir=root)))

    def to_messages(self, new_user: Sequence[Part], max_turns: int | None = None) -> list[dict[str, Any]]:
        """Chat messages for ``generate``: the last ``max_turns`` exchanges (user parts with their media,
        answers as text) followed by the new user turn."""
        history = self.exchanges if max_turns is None else self.exchanges[-max_turns:] if max_turns else []
        messages: list[dict[str, Any]] = []
        for ex in history:
            messages.append({"role": "user", "content": list(ex.user)})
            messages.append({"role": "assistant", "content": ex.answer})
        messages.append({"role": "user", "content": list(new_user)})
        return messages

    def next_turn_dir(self) -> Path:
        """A fresh folder for the next round's uploads and outputs."""
        self.turns += 1
        d = self.directory / f"turn-{self.turns:03d}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def reset(self) -> None:
        """Forget the conversation (files stay until :meth:`close`)."""
        self.exchanges.clear()
        self.display.clear()

    def close(self) -> None:
        """Remove the session's folder."""
        shutil.rmtree(self.directory, ignore_errors=True)


def _close_session(session: ChatSession | None) -> None:
    if isinstance(session, ChatSession):
        logger.info("session %s ended; removing its files", session.directory.name)
        session.close()


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class GenerationSettings:
    """The chat's generation controls, as ``generate`` takes them (``modalities=None``: model decides)."""

    modalities: list[str] | None = None
    seed: int | None = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    max_new_tokens: int = 128


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
def _diffusion_progress(report: ProgressFn | None) -> Iterator[bool]:
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


class ChatBackend:
    """The chat logic behind the page, independent of Gradio: checks uploads, keeps the history and
    calls the model under a lock.

    Args:
        model: the one model instance all sessions share.
        limits: upload limits.
        output_dir: root of the per-session folders (created if missing).
        upload_dir: the only folder uploads may come from (Gradio's upload cache); ``None``: any.
        max_history_turns: previous exchanges passed to the model.
        lock: serialises ``generate`` (default: a new lock for this backend).
    """

    def __init__(
        self,
        model: NextGPT,
        *,
        limits: UploadLimits = UploadLimits(),
        output_dir: str | os.PathLike,
        upload_dir: str | os.PathLike | None = None,
        max_history_turns: int = 8,
        lock: threading.Lock | None = None,
    ) -> None:
        self.model = model
        self.limits = limits
        self.output_dir = Path(output_dir)
        self.upload_dir = Path(upload_dir) if upload_dir is not None else None
        self.max_history_turns = max_history_turns
        self.lock = lock or threading.Lock()

    def new_session(self) -> ChatSession:
        return ChatSession.create(self.output_dir)

    # ---------------------------------------------------------------- uploads

    def check_files(
        self, files: Sequence[str | os.PathLike], turn_dir: Path
    ) -> tuple[list[CheckedUpload], list[str]]:
        """Check uploads and copy the good ones into ``turn_dir``: ``(accepted, error messages)``."""
        if len(files) > self.limits.max_files:
            return [], [f"{len(files)} files attached; at most {self.limits.max_files} per message"]
        accepted, errors = [], []
        for k, f in enumerate(files):
            src = Path(os.fspath(f))
            if self.upload_dir is not None and not _is_within(src, self.upload_dir):
                errors.append(f"{src.name}: not an upload of this page")
                continue
            try:
                checked = check_upload(src, self.limits)
            except InputError as exc:
                errors.append(str(exc))
                continue
            dst = turn_dir / f"upload{k}_{src.name}"
            shutil.copyfile(src, dst)
            accepted.append(CheckedUpload(dst, checked.name, checked.modality, checked.duration))
        return accepted, errors

    # ---------------------------------------------------------------- one round

    def respond(
        self,
        session: ChatSession,
        text: str,
        files: Sequence[str | os.PathLike],
        settings: GenerationSettings,
        progress: ProgressFn | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Run one round and return the session's display messages.

        Uploads are checked first; if any is rejected the model is not called and the chat shows
        ``Upload rejected: <file>: <reason>``. Otherwise the history plus the new turn go to
        ``generate`` (under the model lock), the outputs are saved in the session's folder and shown.
        """
        text = text or ""
        if not text.strip() and not files:
            if warn:
                warn("Type a message or attach a file.")
            return session.display
        turn_dir = session.next_turn_dir()
        accepted, errors = self.check_files(files, turn_dir)

        user_display: list[dict[str, Any]] = []
        if errors:  # show what was sent, without serving files that failed the checks
            names = ", ".join(Path(os.fspath(f)).name for f in files)
            user_display.append({"role": "user", "content": f"{text}\n\n[attached: {names}]".strip()})
            session.display.extend(user_display)
            message = "Upload rejected: " + "; ".join(errors)
            logger.info("%s", message)
            if warn:
                warn(message)
            session.display.append({"role": "assistant", "content": message})
            return session.display

        parts: list[Part] = [u.as_part() for u in accepted]
        if text.strip():
            parts.append(text)  # always text: a str part is never opened as a file
        for u in accepted:
            user_display.append({"role": "user", "content": {"path": str(u.path)}})
        if text.strip():
            user_display.append({"role": "user", "content": text})
        session.display.extend(user_display)

        messages = session.to_messages(parts, self.max_history_turns)
        try:
            out = self._generate(messages, settings, progress)
        except NextGPTError as exc:
            session.display.append({"role": "assistant", "content": f"Error: {exc}"})
            return session.display
        except Exception:
            logger.exception("generation failed")
            session.display.append(
                {"role": "assistant", "content": "Error: generation failed (see the server log)."}
            )
            return session.display

        if progress:
            progress(None, "saving outputs...")
        saved = [p for p in out.save(turn_dir, prefix=OUTPUT_PREFIX) if p.suffix != ".txt"]
        if out.text:
            session.display.append({"role": "assistant", "content": out.text})
        for p in saved:
            session.display.append({"role": "assistant", "content": {"path": str(p)}})
        if not out.text and not saved:
            session.display.append({"role": "assistant", "content": "(empty answer)"})
        session.exchanges.append(Exchange(parts, out.text))
        return session.display

    def _generate(
        self, messages: list[dict[str, Any]], settings: GenerationSettings, progress: ProgressFn | None
    ):
        if progress and self.lock.locked():
            progress(None, "waiting for the model (another session is generating)...")
        with self.lock:
            if progress:
                progress(None, "generating text...")
            with _diffusion_progress(progress) as tracking:
                return self.model.generate(
                    messages,
                    modalities=settings.modalities,
                    seed=settings.seed,
                    num_inference_steps=settings.num_inference_steps,
                    guidance_scale=settings.guidance_scale,
                    max_new_tokens=settings.max_new_tokens,
                    progress=tracking,
                )


# --------------------------------------------------------------------------------------------------
# The Gradio app


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
    max_upload_mb: float = 20,
    max_media_seconds: float = 60,
    max_files: int = 4,
    max_history_turns: int = 8,
    output_dir: str | os.PathLike | None = None,
    concurrency_limit: int = 4,
    session_ttl_s: float = 6 * 3600,
    title: str = "NExT-GPT chat",
) -> gradio.Blocks:
    """The chat page for ``model``, as a ``gradio.Blocks`` (queue enabled; call ``.launch()``).

    The returned app carries ``nextgpt_output_dir`` (the sessions' root folder) and ``nextgpt_backend``
    (the :class:`ChatBackend`, whose ``lock`` serialises generation).

    Args:
        model: the model all sessions share (generation is serialised by a lock).
        max_upload_mb: per-file upload limit.
        max_media_seconds: audio/video duration limit.
        max_files: files per message.
        max_history_turns: previous exchanges passed to the model.
        output_dir: root of the per-session folders (default: a new temporary folder). Outside the
            system temp folder, pass it to ``launch(allowed_paths=[...])`` so Gradio may serve it.
        concurrency_limit: queue workers (requests waiting on the model lock, upload checks).
        session_ttl_s: a session's files are removed this long after its last use, or when its
            browser tab closes.
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
        progress=gr.Progress(),  # noqa: B008 - how gradio injects a progress tracker
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
        )
        # show the user's turn at once, then the answer
        yield (
            gr.MultimodalTextbox(value=None, interactive=False),
            session.display + _pending(text, files),
            session,
        )

        def report(fraction: float | None, desc: str) -> None:
            progress(fraction, desc=desc)

        display = backend.respond(session, text, files, settings, progress=report, warn=gr.Warning)
        yield gr.MultimodalTextbox(value=None, interactive=True), list(display), session

    def clear(session):
        if isinstance(session, ChatSession):
            session.reset()
        return [], session

    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(
            f"## {title}\nAttach images, audio or video (checked by content: at most "
            f"{max_upload_mb:g} MB, {max_media_seconds:g} s) and pick the output modalities "
            "(none ticked: the model decides)."
        )
        session_state = gr.State(None, time_to_live=session_ttl_s, delete_callback=_close_session)
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
                max_new_tokens = gr.Slider(1, 1024, value=128, step=1, label="Max new tokens")
        new_chat = gr.Button("New chat", elem_id="new-chat")

        textbox.submit(
            respond,
            [textbox, session_state, modalities, seed, steps, guidance, max_new_tokens],
            [textbox, chatbot, session_state],
            show_progress="full",
            show_progress_on=[chatbot],
        )
        new_chat.click(clear, [session_state], [chatbot, session_state], queue=False)
        chatbot.clear(clear, [session_state], [chatbot, session_state], queue=False)

    app.queue(default_concurrency_limit=concurrency_limit)
    # For launch(allowed_paths=[...]), cleanup and tests: where sessions write, and the chat logic.
    app.nextgpt_output_dir = root
    app.nextgpt_backend = backend
    return app


def _pending(text: str, files: Sequence[str | None]) -> list[dict[str, Any]]:
    """What the chat shows while a round runs: the user's text and attachment names."""
    names = ", ".join(Path(f).name for f in files if f)
    shown = (text + (f"\n\n[attached: {names}]" if names else "")).strip()
    return [{"role": "user", "content": shown}] if shown else []


def serve(
    preset: str | None = "small",
    model_dir: str | os.PathLike | None = None,
    *,
    overrides: Sequence[str] = (),
    device: str = "cpu",
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_upload_mb: float = 20,
    max_media_seconds: float = 60,
    output_dir: str | os.PathLike | None = None,
    block: bool = True,
) -> gradio.Blocks:
    """Build the model and serve the chat page (``nextgpt serve``, ``make serve``).

    Args:
        preset: preset to build when ``model_dir`` is not given (default ``small``).
        model_dir: a directory written by ``save_pretrained``.
        overrides: dotted config overrides for the preset.
        device: torch device of the model.
        host: interface to bind; ``127.0.0.1`` (default) keeps the demo on this machine.
        port: TCP port.
        share: ask Gradio for a public link (needs the internet).
        max_upload_mb, max_media_seconds: upload limits.
        output_dir: where session files go (default: a temporary folder, removed at exit).
        block: wait until interrupted (``False``: return the running app; call ``app.close()``).
    """
    from nextgpt.model import NextGPT

    if model_dir is not None:
        model = NextGPT.from_pretrained(model_dir, device=device)
    else:
        model = NextGPT.from_preset(preset or "small", list(overrides), device=device)
    app = build_app(
        model, max_upload_mb=max_upload_mb, max_media_seconds=max_media_seconds, output_dir=output_dir
    )
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("serving on %s: the demo is reachable from other machines", host)
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=f"{max_upload_mb}mb",
        allowed_paths=[str(app.nextgpt_output_dir)],
        prevent_thread_lock=True,
        ssr_mode=False,
    )
    if block:
        try:
            app.block_thread()
        finally:
            app.close()
            if output_dir is None:
                shutil.rmtree(app.nextgpt_output_dir, ignore_errors=True)
    return app


def main(argv: list[str] | None = None) -> None:
    """``python -m nextgpt.web``: serve the chat page."""
    ap = argparse.ArgumentParser(prog="python -m nextgpt.web", description="NExT-GPT web chat demo (gradio)")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--model", default=None, help="a directory written by save_pretrained")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--share", action="store_true")
    ap.add_argument("--max-upload-mb", type=float, default=20)
    ap.add_argument("--max-media-seconds", type=float, default=60)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    serve(
        args.preset,
        args.model,
        overrides=args.override,
        device=args.device,
        host=args.host,
        port=args.port,
        share=args.share,
        max_upload_mb=args.max_upload_mb,
        max_media_seconds=args.max_media_seconds,
    )


if __name__ == "__main__":
    main()
