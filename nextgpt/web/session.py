"""Chat sessions of the web demo (no gradio needed): :class:`ChatSession` and :class:`ChatBackend`.

A :class:`ChatSession` is one browser (or API) session: its folder (one ``turn-NNN`` folder per
round), the model-side history and what the chat shows, kept per round so that old rounds leave the
chat, the history and the disk together. A :class:`ChatBackend` is the chat logic behind the page:
it checks uploads (:func:`~nextgpt.web.uploads.check_upload`), keeps each session's history to its
last rounds, streams the model's answer under a lock (:meth:`ChatBackend.respond` is a generator of
the chat display, text delta by delta and medium by medium), closes idle sessions (TTL) and keeps all
sessions' files under a disk limit. The bounds are described in :mod:`nextgpt.web`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextgpt.errors import InputError, NextGPTError
from nextgpt.media import Audio, Video
from nextgpt.modality import MEDIA_MODALITIES, Modality
from nextgpt.web.progress import ProgressFn
from nextgpt.web.uploads import CheckedUpload, UploadLimits, check_upload

if TYPE_CHECKING:
    from nextgpt.model import NextGPT
    from nextgpt.outputs import GenerationOutput

logger = logging.getLogger(__name__)

#: Prefix of the files a reply is saved under (``reply_image0.png``, ``reply_audio0.wav``, ...).
OUTPUT_PREFIX = "reply"
#: One part of a user turn as ``generate`` takes it.
Part = str | Path | Audio | Video
_DEFAULT_LIMITS = UploadLimits()

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
#: The answer's placeholder line while another call has the model.
WAITING_LINE = "waiting for the model (another session is generating)..."


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
        """A new session with its own new folder under ``root`` (created if missing)."""
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


#: The chat's default repetition penalty: SmolLM2-135M (the ``small`` preset) answers greedily in loops
#: without one (docs/WEB.md); 1 turns it off.
DEFAULT_REPETITION_PENALTY = 1.2


@dataclass(frozen=True)
class GenerationSettings:
    """The chat's generation controls, as :meth:`~nextgpt.NextGPT.stream` takes them
    (``modalities=None``: the model decides; ``None`` decoder options: each decoder's config).

    The defaults are greedy decoding with a repetition penalty of :data:`DEFAULT_REPETITION_PENALTY`;
    ``top_k`` (0: all tokens), ``top_p`` and ``temperature`` apply when ``do_sample`` is on.
    """

    modalities: list[str] | None = None
    seed: int | None = 0
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY

    def generate_options(self) -> dict[str, Any]:
        """The keyword arguments of ``generate`` / ``stream`` besides ``modalities``."""
        options = asdict(self)
        del options["modalities"]
        return options


class ChatBackend:
    """The chat logic behind the page, independent of Gradio: checks uploads, keeps the history, streams
    the model's answers under a lock (:meth:`respond`), and keeps every session it opened within bounds.

    Bounds (see :mod:`nextgpt.web`):

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
        lock: serialises the backend's model calls (default: a new lock for this backend; the
            model's own ``generation_lock`` also queues them behind other users of the model).
        session_ttl_s: idle time after which a session is closed (``None``: never).
        max_total_bytes: size limit of all session folders together (``None``: none).
        clock: the time source for idle times (default ``time.monotonic``; tests inject one).
    """

    def __init__(
        self,
        model: NextGPT,
        *,
        limits: UploadLimits = _DEFAULT_LIMITS,
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
    ) -> Iterator[list[dict[str, Any]]]:
        """Run one round, yielding the session's chat display (a new list each time) as it grows.

        Uploads are checked first; if any is rejected (or the storage is full) the model is not called
        and the chat shows ``Upload rejected: <file>: <reason>``. Otherwise the history plus the new
        turn go to the model's :meth:`~nextgpt.NextGPT.stream` (under the backend's lock) and the chat
        is yielded again at each event: the answer's text grows delta by delta, each medium shows a
        placeholder line in the answer (``preparing image...``, then ``decoding image: step k/n``)
        until it is saved in the round's folder and shown in its place. While another session
        generates, the answer is the line ``waiting for the model (another session is
        generating)...``. The last display yielded is the session's after the round, laid out as a
        one-shot answer: the text, then the media (images, sounds, videos, each in order), or
        ``(empty answer)``.

        The round is recorded (its messages join the chat, its exchange the history) and the session
        trimmed to its last ``max_history_turns`` rounds, also when the caller stops iterating early
        (the page went away: the model call is cancelled, the partial answer kept with
        ``(stopped)``). A failed generation shows one ``Error: ...`` message (also passed to
        ``warn``) in place of the partial answer and adds nothing to the history. A session that was
        closed (expired, evicted) starts over with a notice.

        ``progress`` (a reporter of the page, optional) gets the same lines: ``waiting for the model
        ...``, ``generating text...``, ``decoding image: step k/n`` (with the fraction of the
        medium's steps), then ``saving outputs...``; a reporter that fails is ignored.
        """
        text = text or ""
        if not text.strip() and not files:
            if warn:
                warn("Type a message or attach a file.")
            yield list(session.display)
            return
        shown = self._begin(session)
        try:
            turn_dir = session.next_turn_dir()
            exchange: list[Exchange] = []  # the round's exchange, once the model has answered
            try:
                yield from self._round(
                    session, turn_dir, text, files, settings, shown, exchange, progress, warn
                )
            finally:  # also when the caller stops early (GeneratorExit)
                with session._lock:
                    if session.closed or turn_dir.parent != session.directory:
                        # closed during the round (its tab went away, the server stops): drop the files
                        shutil.rmtree(turn_dir.parent, ignore_errors=True)
                    else:
                        session.add_round(turn_dir, shown, exchange[0] if exchange else None)
                        session.trim(self.max_history_turns)
        finally:
            self._end(session)
        yield list(session.display)

    def _round(
        self,
        session: ChatSession,
        turn_dir: Path,
        text: str,
        files: Sequence[str | os.PathLike],
        settings: GenerationSettings,
        shown: list[dict[str, Any]],
        exchange: list[Exchange],
        progress: ProgressFn | None,
        warn: Callable[[str], None] | None,
    ) -> Iterator[list[dict[str, Any]]]:
        """One round's work, yielding the display as it streams: appends what the chat keeps of the
        round to ``shown`` and, when the model answered, the round's exchange to ``exchange``."""

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
            return
        accepted, errors = self.check_files(files, turn_dir)
        if errors:  # show what was sent, without serving files that failed the checks
            rejected(errors)
            return

        parts: list[Part] = [u.as_part() for u in accepted]
        if text.strip():
            parts.append(text)  # always text: a str part is never opened as a file
        for u in accepted:
            shown.append({"role": "user", "content": {"path": str(u.path)}})
        if text.strip():
            shown.append({"role": "user", "content": _clip_text(text)})

        def report(fraction: float | None, desc: str) -> None:
            if progress is None:
                return
            try:
                progress(fraction, desc)
            except Exception:  # the page went away: the round goes on
                logger.debug("progress report %r failed", desc, exc_info=True)

        answer = _Answer(turn_dir)

        def view() -> list[dict[str, Any]]:
            return [*session.display, *shown, *answer.live()]

        messages = session.to_messages(parts, self.max_history_turns)
        if self._model_busy():
            answer.status = WAITING_LINE
            report(None, WAITING_LINE)
        yield view()
        try:
            with self.lock:
                out = yield from self._stream(messages, settings, answer, report, view)
        except GeneratorExit:  # the caller stopped: keep what was shown, without placeholders
            shown.extend(answer.partial())
            raise
        except NextGPTError as exc:
            self._failed(answer, shown, f"Error: {exc}", warn)
            return
        except Exception:
            logger.exception("generation failed")
            self._failed(answer, shown, "Error: generation failed (see the server log).", warn)
            return
        report(None, "saving outputs...")
        shown.extend(answer.finish(out))
        exchange.append(Exchange(parts, out.text))

    @staticmethod
    def _failed(
        answer: _Answer, shown: list[dict[str, Any]], message: str, warn: Callable[[str], None] | None
    ) -> None:
        answer.discard()
        shown.append({"role": "assistant", "content": message})
        if warn:
            warn(message)

    def _model_busy(self) -> bool:
        """Whether another call holds this backend's lock or the model's own generation lock (an HTTP
        server sharing the model)."""
        if self.lock.locked():
            return True
        model_lock = getattr(self.model, "generation_lock", None)
        if model_lock is None:
            return False
        if model_lock.acquire(blocking=False):
            model_lock.release()
            return False
        return True

    def _stream(
        self,
        messages: list[dict[str, Any]],
        settings: GenerationSettings,
        answer: _Answer,
        report: ProgressFn,
        view: Callable[[], list[dict[str, Any]]],
    ) -> Generator[list[dict[str, Any]], None, GenerationOutput]:
        """Iterate the model's stream: each event updates ``answer`` and yields the display; returns
        the final output. Closing this generator closes the stream (the model call is cancelled)."""
        events = self.model.stream(messages, modalities=settings.modalities, **settings.generate_options())
        out = None
        try:
            for event in events:
                if event.kind == "done":
                    out = event.output
                    continue
                if event.kind == "text":
                    answer.text += event.text
                elif event.kind == "signal":
                    answer.open(event.modality, event.index)
                elif event.kind == "progress" and event.progress is not None:
                    step = event.progress
                    report(step.fraction, step.describe())
                    if step.stage == "text":
                        answer.status = step.describe()
                    elif step.index is not None:
                        answer.open(step.modality, step.index).line = step.describe()
                elif event.kind == "media":
                    answer.save(event.modality, event.index, event.media, event.rate)
                else:
                    continue
                yield view()
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                close()  # a no-op once the stream has ended; otherwise it cancels the call
        if out is None:
            raise RuntimeError("the model's stream ended without its output")
        return out


@dataclass
class _Medium:
    """One media item of a streaming answer: a placeholder ``line`` until it is saved at ``path``."""

    modality: Modality
    ordinal: int  # its place among the answer's items of the same modality
    line: str
    path: Path | None = None

    @property
    def key(self) -> tuple[int, int]:
        """Where a one-shot answer shows it: by modality (image, audio, video), then in order."""
        return MEDIA_MODALITIES.index(self.modality), self.ordinal


class _Answer:
    """The answer of a round as it streams: its text, a status line (before any text or medium), and
    one :class:`_Medium` per signal run, saved in ``directory`` as ``reply_<modality><i>.<ext>``,
    as :meth:`GenerationOutput.save` names them."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.text = ""
        self.status: str | None = None
        self.media: dict[int, _Medium] = {}  # by the item's index in the answer

    def open(self, modality: Modality | None, index: int | None) -> _Medium:
        """The medium ``index`` of the answer (created with its placeholder line when new)."""
        assert modality is not None and index is not None, "a media event names its modality and index"
        medium = self.media.get(index)
        if medium is None:
            ordinal = sum(m.modality is modality for m in self.media.values())
            medium = self.media[index] = _Medium(modality, ordinal, f"preparing {modality.value}...")
        return medium

    def save(self, modality: Modality | None, index: int | None, item: object, rate: float | None) -> None:
        """Write the medium ``index`` (through :meth:`GenerationOutput.save`) into the round's folder."""
        from nextgpt.outputs import GenerationOutput

        medium = self.open(modality, index)
        self.directory.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".medium-", dir=self.directory))
        try:
            one = GenerationOutput(media={medium.modality: [item]}, rates={medium.modality: rate})
            (written,) = one.save(scratch, prefix=OUTPUT_PREFIX)
            target = (
                self.directory / f"{OUTPUT_PREFIX}_{medium.modality.value}{medium.ordinal}{written.suffix}"
            )
            os.replace(written, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        medium.path = target

    def _ordered(self) -> list[_Medium]:
        return sorted(self.media.values(), key=lambda m: m.key)

    def live(self) -> list[dict[str, Any]]:
        """The answer's messages now: the text so far, then each medium or its placeholder line."""
        shown: list[dict[str, Any]] = []
        if self.text:
            shown.append({"role": "assistant", "content": _clip_text(self.text)})
        elif self.status and not self.media:
            shown.append({"role": "assistant", "content": self.status})
        for m in self._ordered():
            content: Any = {"path": str(m.path)} if m.path is not None else m.line
            shown.append({"role": "assistant", "content": content})
        return shown

    def partial(self) -> list[dict[str, Any]]:
        """What an answer stopped early keeps: the text so far, the media saved, and ``(stopped)``."""
        shown = [{"role": "assistant", "content": _clip_text(self.text)}] if self.text else []
        shown += [{"role": "assistant", "content": {"path": str(m.path)}} for m in self._ordered() if m.path]
        return [*shown, {"role": "assistant", "content": "(stopped)"}]

    def finish(self, out: GenerationOutput) -> list[dict[str, Any]]:
        """Save the text (``reply.txt``) and any medium the stream did not deliver; the final
        messages, as a one-shot answer shows them: text, media, or ``(empty answer)``."""
        from nextgpt.outputs import GenerationOutput

        self.text = out.text
        if out.text:
            GenerationOutput(text=out.text).save(self.directory, prefix=OUTPUT_PREFIX)
        slots = {(m.modality, m.ordinal): index for index, m in self.media.items()}
        for modality in MEDIA_MODALITIES:
            for ordinal, item in enumerate(out.media[modality]):
                index = slots.get((modality, ordinal))
                if index is not None and self.media[index].path is not None:
                    continue  # streamed and saved
                logger.debug("%s %d was not streamed; saving it now", modality.value, ordinal)
                if index is None:
                    index = max(self.media, default=-1) + 1
                    self.media[index] = _Medium(modality, ordinal, "")
                self.save(modality, index, item, out.rates.get(modality))
        saved = [m for m in self._ordered() if m.path is not None]
        shown = [{"role": "assistant", "content": _clip_text(out.text)}] if out.text else []
        shown += [{"role": "assistant", "content": {"path": str(m.path)}} for m in saved]
        return shown or [{"role": "assistant", "content": "(empty answer)"}]

    def discard(self) -> None:
        """Delete the media saved so far (a failed answer shows none of them)."""
        for m in self.media.values():
            if m.path is not None:
                m.path.unlink(missing_ok=True)
                m.path = None
