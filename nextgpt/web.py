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
import signal
import tempfile
import threading
import time
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


#: Rounds a session keeps by default (in the chat, in the model's history and on disk).
DEFAULT_HISTORY_TURNS = 8
#: A session unused for this long is closed and its folder removed (1 hour).
DEFAULT_SESSION_TTL_S = 3600.0
#: Total size of all session folders (uploads copied per round + saved outputs): 2 GiB.
DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
#: Longest text shown for one chat message (the model still gets the whole text).
MAX_DISPLAY_TEXT_CHARS = 20_000
#: What a session whose files were removed (expired, evicted) shows when it is used again.
EXPIRED_NOTICE = "(This chat had expired and its files were removed; starting a new conversation.)"


@dataclass
class Exchange:
    """One finished round: the user's parts (text and checked media) and the answer's text."""

    user: list[Part]
    answer: str


@dataclass
class Round:
    """What one round left behind: its folder, the chat messages it added and its exchange (``None``
    for a round that did not reach the model or failed), and the bytes its folder holds."""

    directory: Path
    display: list[dict[str, Any]]
    exchange: Exchange | None = None
    bytes: int = 0


def _tree_bytes(path: Path) -> int:
    total = 0
    with contextlib.suppress(OSError):
        for p in path.rglob("*"):
            with contextlib.suppress(OSError):
                if p.is_file() and not p.is_symlink():
                    total += p.stat().st_size
    return total


def _clip_text(text: str, limit: int = MAX_DISPLAY_TEXT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


@dataclass
class ChatSession:
    """The state of one browser (or API) session: its folder, the model-side history and what the chat
    shows, kept per round so that old rounds leave the chat, the history and the disk together.

    Attributes:
        directory: this session's folder (one ``turn-NNN`` folder per round); removed by :meth:`close`.
        exchanges: finished rounds the model may be given, oldest first.
        display: the chatbot's messages (``{"role", "content"}`` with text or ``{"path": ...}``).
        rounds: the rounds still kept (see :meth:`trim`), oldest first.
        last_used: when the session was last used, on its backend's clock.
        active: rounds in progress (a session in a round is never expired or evicted).
        closed: the folder was removed (:meth:`close`); :meth:`reopen` starts it over.
    """

    directory: Path
    exchanges: list[Exchange] = field(default_factory=list)
    display: list[dict[str, Any]] = field(default_factory=list)
    turns: int = 0
    rounds: list[Round] = field(default_factory=list)
    last_used: float = 0.0
    active: int = 0
    closed: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False, compare=False)

    @classmethod
    def create(cls, root: str | os.PathLike) -> ChatSession:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        return cls(Path(tempfile.mkdtemp(prefix="session-", dir=root)))

    @property
    def bytes(self) -> int:
        """Bytes in the folders of the kept rounds (as measured when each round finished)."""
        return sum(r.bytes for r in self.rounds)

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

    def add_round(
        self, directory: Path, display: list[dict[str, Any]], exchange: Exchange | None = None
    ) -> Round:
        """Record a finished round: its messages join the chat, its exchange (if any) the history."""
        r = Round(directory, list(display), exchange, _tree_bytes(directory))
        self.rounds.append(r)
        self.display.extend(r.display)
        if exchange is not None:
            self.exchanges.append(exchange)
        return r

    def trim(self, max_rounds: int) -> int:
        """Keep the last ``max_rounds`` rounds (at least one): older rounds leave the chat and the
        history, and their folders are deleted. Returns the bytes freed."""
        freed = 0
        while len(self.rounds) > max(1, max_rounds):
            r = self.rounds.pop(0)
            self._forget(r)
            freed += r.bytes
        return freed

    def _forget(self, r: Round) -> None:
        for entry in r.display:  # by identity: equal messages of other rounds stay
            for k, shown in enumerate(self.display):
                if shown is entry:
                    del self.display[k]
                    break
        if r.exchange is not None:
            for k, ex in enumerate(self.exchanges):
                if ex is r.exchange:
                    del self.exchanges[k]
                    break
        shutil.rmtree(r.directory, ignore_errors=True)

    def reset(self) -> None:
        """Forget the conversation and delete the files of its finished rounds."""
        rounds, self.rounds = self.rounds, []
        for r in rounds:
            shutil.rmtree(r.directory, ignore_errors=True)
        self.exchanges.clear()
        self.display.clear()

    def close(self) -> None:
        """Remove the session's folder and forget its conversation."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            directory = self.directory
            self.rounds.clear()
            self.exchanges.clear()
            self.display.clear()
        shutil.rmtree(directory, ignore_errors=True)

    def reopen(self, root: str | os.PathLike) -> None:
        """Start a closed session over in a new folder under ``root``."""
        fresh = ChatSession.create(root)
        with self._lock:
            self.directory, self.turns, self.closed = fresh.directory, 0, False
            self.rounds.clear()
            self.exchanges.clear()
            self.display.clear()


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
    """The chat logic behind the page, independent of Gradio: checks uploads, keeps the history, calls
    the model under a lock, and keeps every session it opened within bounds.

    Bounds (see the module docstring):

    * **history**: each session keeps its last ``max_history_turns`` rounds (at least one); older ones
      leave the chat, the model's history and the disk together (:meth:`ChatSession.trim`);
    * **idle sessions**: every session opened by :meth:`new_session` (a browser tab's ``gr.State`` or an
      API call that sent none) is tracked with its last use; :meth:`reap` closes the ones unused for
      ``session_ttl_s``. It runs at each new session and each round, and every few seconds in a thread
      once :meth:`start_reaper` is called (:func:`build_app` does). A session in a round is never closed;
    * **disk**: all session folders together hold at most about ``max_total_bytes``. Before a round
      copies its uploads, the least recently used idle sessions are closed until the uploads fit; if
      that cannot make them fit (the space is held by this session or by rounds in progress), no
      session is closed and the uploads are refused with an :class:`~nextgpt.errors.InputError` message (``Upload rejected: the server's
      storage for chat files is full ...``). Rounds without uploads still run (their outputs are small
      and the next round evicts again).

    Args:
        model: the one model instance all sessions share.
        limits: upload limits.
        output_dir: root of the per-session folders (created if missing).
        upload_dir: the only folder uploads may come from (Gradio's upload cache); ``None``: any.
        max_history_turns: previous exchanges passed to the model, and rounds kept per session.
        lock: serialises ``generate`` (default: a new lock for this backend).
        session_ttl_s: idle time after which a session is closed (``None``: never).
        max_total_bytes: size limit of all session folders together (``None``: none).
        clock: the time source for idle times (default ``time.monotonic``; tests inject one).
    """

    def __init__(
        self,
        model: NextGPT,
        *,
        limits: UploadLimits = UploadLimits(),
        output_dir: str | os.PathLike,
        upload_dir: str | os.PathLike | None = None,
        max_history_turns: int = DEFAULT_HISTORY_TURNS,
        lock: threading.Lock | None = None,
        session_ttl_s: float | None = DEFAULT_SESSION_TTL_S,
        max_total_bytes: int | None = DEFAULT_MAX_TOTAL_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.limits = limits
        self.output_dir = Path(output_dir)
        self.upload_dir = Path(upload_dir) if upload_dir is not None else None
        self.max_history_turns = max_history_turns
        self.lock = lock or threading.Lock()
        self.session_ttl_s = session_ttl_s
        self.max_total_bytes = max_total_bytes
        self.clock = clock
        self._sessions: dict[int, ChatSession] = {}
        self._registry = threading.RLock()  # guards _sessions and the sessions' active/last_used
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # ---------------------------------------------------------------- sessions

    @property
    def sessions(self) -> list[ChatSession]:
        """The open sessions this backend tracks, least recently used first."""
        with self._registry:
            return sorted(self._sessions.values(), key=lambda s: s.last_used)

    @property
    def total_bytes(self) -> int:
        """Bytes held by the rounds of all open sessions."""
        with self._registry:
            return sum(s.bytes for s in self._sessions.values())

    def new_session(self) -> ChatSession:
        """Open a tracked session (closing expired ones first)."""
        self.reap()
        session = ChatSession.create(self.output_dir)
        with self._registry:
            session.last_used = self.clock()
            self._sessions[id(session)] = session
        return session

    def close_session(self, session: ChatSession | None) -> None:
        """Close ``session`` (remove its folder) and stop tracking it; for ``gr.State``'s delete callback."""
        if not isinstance(session, ChatSession):
            return
        with self._registry:
            self._sessions.pop(id(session), None)
        if not session.closed:
            logger.info("session %s ended; removing its files", session.directory.name)
            session.close()

    def reap(self, now: float | None = None) -> list[ChatSession]:
        """Close the sessions unused for longer than ``session_ttl_s``: returns them."""
        if self.session_ttl_s is None:
            return []
        now = self.clock() if now is None else now
        with self._registry:
            expired = [
                s for s in self._sessions.values() if not s.active and now - s.last_used > self.session_ttl_s
            ]
            for s in expired:
                self._sessions.pop(id(s), None)
        for s in expired:
            logger.info("session %s idle for %.0f s; removing its files", s.directory.name, now - s.last_used)
            s.close()
        return expired

    def start_reaper(self, interval_s: float | None = None) -> None:
        """Run :meth:`reap` every ``interval_s`` seconds (default: a quarter of the TTL, 1 to 60 s) in a
        daemon thread until :meth:`close`."""
        if self.session_ttl_s is None or (self._reaper is not None and self._reaper.is_alive()):
            return
        interval = interval_s if interval_s is not None else min(60.0, max(1.0, self.session_ttl_s / 4))
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.reap()
                except Exception:  # keep reaping whatever one pass hit
                    logger.exception("closing idle sessions failed")

        self._reaper = threading.Thread(target=loop, name="nextgpt-session-reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        """Stop the reaper and close every tracked session (their folders are removed)."""
        self._stop.set()
        with self._registry:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for s in sessions:
            s.close()

    def _make_room(self, session: ChatSession, incoming: int) -> str | None:
        """Evict least recently used idle sessions (not ``session``) until ``incoming`` more bytes fit
        under ``max_total_bytes``; the refusal message when they cannot fit, else ``None``."""
        cap = self.max_total_bytes
        if cap is None:
            return None
        evicted: list[ChatSession] = []
        with self._registry:
            used = sum(s.bytes for s in self._sessions.values())
            idle = [s for s in self._sessions.values() if s is not session and not s.active and s.bytes]
            if used + incoming > cap and used - sum(s.bytes for s in idle) + incoming <= cap:
                for s in sorted(idle, key=lambda s: s.last_used):  # least recently used first
                    if used + incoming <= cap:
                        break
                    self._sessions.pop(id(s), None)
                    used -= s.bytes
                    evicted.append(s)
        for s in evicted:
            logger.info("disk limit: closing idle session %s (%d bytes)", s.directory.name, s.bytes)
            s.close()
        if incoming and used + incoming > cap:
            return (
                f"the server's storage for chat files is full ({used / 2**20:.1f} MB of "
                f"{cap / 2**20:g} MB in use); try again later, or start a new chat"
            )
        return None

    def _begin(self, session: ChatSession) -> list[dict[str, Any]]:
        """Mark ``session`` in use (tracked, reopened if it was closed); returns a notice to show."""
        self.reap()
        notice: list[dict[str, Any]] = []
        with self._registry:
            if session.closed:
                session.reopen(self.output_dir)
                notice.append({"role": "assistant", "content": EXPIRED_NOTICE})
            self._sessions[id(session)] = session
            session.active += 1
            session.last_used = self.clock()
        return notice

    def _end(self, session: ChatSession) -> None:
        with self._registry:
            session.active -= 1
            session.last_used = self.clock()

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

        Uploads are checked first; if any is rejected (or the storage is full) the model is not called
        and the chat shows ``Upload rejected: <file>: <reason>``. Otherwise the history plus the new
        turn go to ``generate`` (under the model lock), the outputs are saved in the session's folder and
        shown. The round is then recorded and the session trimmed to its last ``max_history_turns``
        rounds. A session that was closed (expired, evicted) starts over with a notice.
        """
        text = text or ""
        if not text.strip() and not files:
            if warn:
                warn("Type a message or attach a file.")
            return session.display
        shown = self._begin(session)
        try:
            turn_dir = session.next_turn_dir()
            exchange = self._round(session, turn_dir, text, files, settings, shown, progress, warn)
            with session._lock:
                if session.closed or turn_dir.parent != session.directory:
                    # closed during the round (its tab went away, the server stops): drop the files
                    shutil.rmtree(turn_dir.parent, ignore_errors=True)
                else:
                    session.add_round(turn_dir, shown, exchange)
                    session.trim(self.max_history_turns)
        finally:
            self._end(session)
        return session.display

    def _round(
        self,
        session: ChatSession,
        turn_dir: Path,
        text: str,
        files: Sequence[str | os.PathLike],
        settings: GenerationSettings,
        shown: list[dict[str, Any]],
        progress: ProgressFn | None,
        warn: Callable[[str], None] | None,
    ) -> Exchange | None:
        """One round's work; appends what the chat shows to ``shown``, returns the exchange or ``None``."""

        def rejected(errors: list[str]) -> None:
            names = ", ".join(Path(os.fspath(f)).name for f in files)
            shown.append({"role": "user", "content": _clip_text(f"{text}\n\n[attached: {names}]".strip())})
            message = "Upload rejected: " + "; ".join(errors)
            logger.info("%s", message)
            if warn:
                warn(message)
            shown.append({"role": "assistant", "content": message})

        incoming = 0
        for f in files:
            with contextlib.suppress(OSError, TypeError):
                incoming += Path(os.fspath(f)).stat().st_size
        full = self._make_room(session, incoming)
        if full is not None:
            rejected([full])
            return None
        accepted, errors = self.check_files(files, turn_dir)
        if errors:  # show what was sent, without serving files that failed the checks
            rejected(errors)
            return None

        parts: list[Part] = [u.as_part() for u in accepted]
        if text.strip():
            parts.append(text)  # always text: a str part is never opened as a file
        for u in accepted:
            shown.append({"role": "user", "content": {"path": str(u.path)}})
        if text.strip():
            shown.append({"role": "user", "content": _clip_text(text)})

        messages = session.to_messages(parts, self.max_history_turns)
        try:
            out = self._generate(messages, settings, progress)
        except NextGPTError as exc:
            shown.append({"role": "assistant", "content": f"Error: {exc}"})
            return None
        except Exception:
            logger.exception("generation failed")
            shown.append({"role": "assistant", "content": "Error: generation failed (see the server log)."})
            return None

        if progress:
            progress(None, "saving outputs...")
        saved = [p for p in out.save(turn_dir, prefix=OUTPUT_PREFIX) if p.suffix != ".txt"]
        if out.text:
            shown.append({"role": "assistant", "content": out.text})
        for p in saved:
            shown.append({"role": "assistant", "content": {"path": str(p)}})
        if not out.text and not saved:
            shown.append({"role": "assistant", "content": "(empty answer)"})
        return Exchange(parts, out.text)

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
    max_history_turns: int = DEFAULT_HISTORY_TURNS,
    output_dir: str | os.PathLike | None = None,
    concurrency_limit: int = 4,
    session_ttl_s: float = DEFAULT_SESSION_TTL_S,
    max_total_mb: float | None = DEFAULT_MAX_TOTAL_BYTES / 2**20,
    title: str = "NExT-GPT chat",
) -> gradio.Blocks:
    """The chat page for ``model``, as a ``gradio.Blocks`` (queue enabled; call ``.launch()``).

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

    ttl = max(1, int(session_ttl_s))
    delete_cache = (max(1, min(ttl, 3600)), ttl)  # every min(TTL, 1 h), Gradio's files older than TTL
    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=delete_cache) as app:
        gr.Markdown(
            f"## {title}\nAttach images, audio or video (checked by content: at most "
            f"{max_upload_mb:g} MB, {max_media_seconds:g} s) and pick the output modalities "
            "(none ticked: the model decides)."
        )
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
    host: str = "127.0.0.1",
    port: int = 7860,
    share: bool = False,
    max_upload_mb: float = 20,
    max_media_seconds: float = 60,
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
        max_upload_mb, max_media_seconds: upload limits.
        output_dir: where session files go (default: a temporary folder, removed at exit).
        session_ttl_s, max_total_mb: idle-session expiry and the disk limit (see :func:`build_app`).
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
            max_file_size=f"{max_upload_mb}mb",
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
    ap.add_argument("--session-ttl-minutes", type=float, default=DEFAULT_SESSION_TTL_S / 60)
    ap.add_argument("--max-disk-mb", type=float, default=DEFAULT_MAX_TOTAL_BYTES / 2**20)
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
        session_ttl_s=args.session_ttl_minutes * 60,
        max_total_mb=args.max_disk_mb,
    )


if __name__ == "__main__":
    main()
