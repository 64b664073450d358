"""The web demo's bounds (``nextgpt.web.ChatBackend``, ``serve``): per-session history, payload and files
stay bounded over many rounds, idle sessions (browser or API) expire on an injected clock, the disk cap
evicts idle sessions then refuses uploads, and SIGTERM/SIGINT remove the sessions' files.

Everything but the two gradio tests runs without gradio; the model is a stub (or the tiny preset in a
child process for the SIGTERM test)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from media_fixtures import synthetic_image
from PIL import Image
from test_web import FakeModel, run_round

import nextgpt
from nextgpt import web
from nextgpt.web import ChatBackend, GenerationSettings

SETTINGS = GenerationSettings()


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def pngs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("limits-media")
    small, big = d / "photo.png", d / "poster.png"
    Image.fromarray(synthetic_image(64, 48)).save(small)  # ~7 kB
    Image.fromarray(synthetic_image(256, 192)).save(big)  # ~110 kB
    return {"small": small, "big": big}


def _paths(display: list[dict]) -> list[Path]:
    return [Path(m["content"]["path"]) for m in display if isinstance(m["content"], dict)]


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------------
# history, payload and files per session


def test_history_display_and_files_stay_bounded_over_50_rounds(tmp_path, pngs):
    class CheckingModel(FakeModel):
        def generate(self, inputs, modalities=None, **kwargs):  # every file of the history still exists
            assert all(m["content"][0].is_file() for m in inputs if m["role"] == "user")
            return super().generate(inputs, modalities, **kwargs)

    model = CheckingModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out", max_history_turns=8)
    session = backend.new_session()
    sizes = []
    for k in range(50):
        display = run_round(backend, session, f"message {k}", [pngs["small"]], SETTINGS)
        sizes.append(len(display))
        # every round shows 4 messages (upload, text, answer, answer image): at most 8 rounds shown
        assert len(display) <= 8 * 4
        assert all(p.is_file() for p in _paths(display))  # nothing shown whose file was deleted
    assert sizes[-1] == 32 and max(sizes) == 32
    # the chat, the model's history and the disk hold the same last 8 rounds
    assert [
        m["content"] for m in session.display if m["role"] == "user" and isinstance(m["content"], str)
    ] == [f"message {k}" for k in range(42, 50)]
    assert [ex.user[-1] for ex in session.exchanges] == [f"message {k}" for k in range(42, 50)]
    assert sorted(p.name for p in session.directory.iterdir()) == [f"turn-{k:03d}" for k in range(43, 51)]
    assert len(model.calls) == 50  # each call found its history's files (CheckingModel)
    assert len(model.calls[-1]["inputs"]) == 17  # 8 previous exchanges and the new turn
    # session bytes: what is on disk, bounded by 8 rounds
    on_disk = _tree_bytes(session.directory)
    assert session.bytes == on_disk == backend.total_bytes
    assert on_disk <= 8 * (pngs["small"].stat().st_size + 2000)

    # rejected rounds count too, and files of the rounds that fall out are deleted
    first_kept = session.directory / "turn-043"
    run_round(backend, session, "bad", [tmp_path / "missing.png"], SETTINGS)
    assert "Upload rejected" in session.display[-1]["content"]
    assert not first_kept.exists() and len(session.rounds) == 8 and len(session.exchanges) == 7
    # "New chat" forgets the rounds and deletes their files
    session.reset()
    assert session.display == [] and list(session.directory.iterdir()) == [] and session.bytes == 0


def test_display_text_is_clipped_but_the_model_gets_all_of_it(tmp_path):
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    session = backend.new_session()
    text = "x" * 100_000
    run_round(backend, session, text, [], SETTINGS)
    assert model.calls[0]["inputs"][-1]["content"] == [text]
    shown = session.display[0]["content"]
    assert len(shown) < 21_000 and shown.endswith("[80000 more characters]")

    class Verbose(FakeModel):  # a long answer: clipped while it streams and at the end
        def generate(self, inputs, modalities=None, **kwargs):
            out = super().generate(inputs, modalities, **kwargs)
            out.text = "y" * 30_000 + " end"
            return out

    backend.model = Verbose()
    displays = list(backend.respond(session, "talk", [], SETTINGS))
    answers = [m["content"] for d in displays for m in d[2:] if m["role"] == "assistant"]
    texts = [a for a in answers if isinstance(a, str) and a.startswith("y")]
    assert texts and all(len(t) < 21_000 for t in texts)
    assert session.display[-2]["content"].endswith("[10004 more characters]")
    assert (session.rounds[-1].directory / "reply.txt").read_text() == "y" * 30_000 + " end\n"


# --------------------------------------------------------------------------------------------------
# idle sessions


def test_idle_sessions_expire_on_the_backends_clock(tmp_path):
    clock = FakeClock()
    backend = ChatBackend(FakeModel(), output_dir=tmp_path / "out", session_ttl_s=100, clock=clock)
    a = backend.new_session()
    run_round(backend, a, "hi", [], SETTINGS)
    clock.t = 50
    b = backend.new_session()  # like an API call that sent no state: opened, never used again
    assert backend.sessions == [a, b]
    clock.t = 120  # a idle 120 s, b 70 s
    c = backend.new_session()  # each new session reaps
    assert a.closed and not a.directory.exists() and a.display == []
    assert not b.closed and b.directory.is_dir()
    assert backend.sessions == [b, c]
    clock.t = 160  # b idle 110 s, c 40 s: each round reaps too
    run_round(backend, c, "hello", [], SETTINGS)
    assert b.closed and not b.directory.exists() and backend.sessions == [c]

    # a session in a round is never reaped, however long the round takes
    class SlowModel(FakeModel):
        def generate(self, inputs, modalities=None, **kwargs):
            clock.t += 1000
            assert backend.reap() == []  # c is in this round; nothing else is open
            return super().generate(inputs, modalities, **kwargs)

    backend.model = SlowModel()
    run_round(backend, c, "slow", [], SETTINGS)
    assert not c.closed and c.display[-2]["content"] == "answer 1"
    backend.model = FakeModel()

    # a closed session used again (a gr.State still holding it) starts over, saying so
    display = run_round(backend, a, "back again", [], SETTINGS)
    assert not a.closed and a.directory.is_dir()
    assert display[0] == {"role": "assistant", "content": web.EXPIRED_NOTICE}
    assert display[1:3] == [
        {"role": "user", "content": "back again"},
        {"role": "assistant", "content": "answer 1"},
    ]
    assert backend.sessions == [c, a]


def test_a_session_closed_during_its_round_leaves_no_files(tmp_path):
    backend = ChatBackend(FakeModel(), output_dir=tmp_path / "out")
    session = backend.new_session()

    class TabClosed(FakeModel):  # the browser tab goes away while the model works
        def generate(self, inputs, modalities=None, **kwargs):
            backend.close_session(session)
            return super().generate(inputs, modalities, **kwargs)

    backend.model = TabClosed()
    run_round(backend, session, "hi", [], SETTINGS)  # the outputs are saved after the close
    assert session.closed and list((tmp_path / "out").iterdir()) == [] and backend.sessions == []


def test_reaper_thread_closes_idle_sessions(tmp_path):
    backend = ChatBackend(FakeModel(), output_dir=tmp_path / "out", session_ttl_s=0.2)
    try:
        backend.start_reaper(interval_s=0.05)
        session = backend.new_session()
        deadline = time.monotonic() + 10
        while (not session.closed or session.directory.exists()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert session.closed and not session.directory.exists() and backend.sessions == []
    finally:
        backend.close()


def test_api_sessions_opened_without_state_are_tracked_and_expire(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nextgpt[demo]')")
    from nextgpt.web import build_app

    model = FakeModel()
    model.output_modalities = []
    model.config = SimpleNamespace(model=SimpleNamespace(outputs={}))
    app = build_app(model, output_dir=tmp_path / "out", session_ttl_s=100)
    backend = app.nextgpt_backend
    clock = FakeClock()
    backend.clock = clock
    try:
        (respond,) = [f.fn for f in app.fns.values() if f.name == "respond"]
        for k in range(3):  # three API calls, no gr.State sent: three sessions
            *_, (_, display, session) = respond({"text": f"call {k}", "files": []}, None, [], 0, 2, 7.5, 4)
            assert display[:2] == [
                {"role": "user", "content": f"call {k}"},
                {"role": "assistant", "content": f"answer {k + 1}"},
            ]
        sessions = backend.sessions
        assert len(sessions) == 3 and all(s.directory.is_dir() for s in sessions)
        clock.t = 101
        assert backend.reap() == sessions
        assert list((tmp_path / "out").iterdir()) == []
    finally:
        backend.close()


# --------------------------------------------------------------------------------------------------
# disk cap


def test_disk_cap_evicts_idle_sessions_then_refuses_uploads(tmp_path, pngs):
    clock = FakeClock()
    model = FakeModel()
    small = pngs["small"].stat().st_size
    probe = ChatBackend(FakeModel(), output_dir=tmp_path / "probe")
    one_round = run_round(probe, probe.new_session(), "m", [pngs["small"]], SETTINGS) and probe.total_bytes
    cap = 2 * one_round + small // 2  # room for two rounds with a small upload, not three
    backend = ChatBackend(model, output_dir=tmp_path / "out", max_total_bytes=cap, clock=clock)

    a, b, c = backend.new_session(), backend.new_session(), backend.new_session()
    for t, s in enumerate((a, b)):
        clock.t = t
        run_round(backend, s, "look", [pngs["small"]], SETTINGS)
    assert backend.total_bytes == _tree_bytes(tmp_path / "out") == pytest.approx(2 * one_round, abs=10)
    # a third upload does not fit: the least recently used idle session (a) is closed to make room
    clock.t = 2
    run_round(backend, c, "look", [pngs["small"]], SETTINGS)
    assert a.closed and not a.directory.exists()
    assert not b.closed and c.display[-2]["content"] == "answer 3"
    assert backend.total_bytes <= cap

    # an upload that closing every idle session would not make fit: refused, nobody is evicted
    clock.t = 3
    calls = len(model.calls)
    display = run_round(backend, c, "and this?", [pngs["big"]], SETTINGS)
    assert len(model.calls) == calls
    assert display[-1]["content"].startswith("Upload rejected: the server's storage for chat files is full")
    assert not b.closed and b.directory.is_dir()
    assert not any(p.name.endswith("poster.png") for p in (tmp_path / "out").rglob("*"))
    # a message without uploads still gets an answer
    run_round(backend, c, "just text", [], SETTINGS)
    assert c.display[-2]["content"] == f"answer {calls + 1}"
    # every session folder on disk is an open session's
    assert sorted((tmp_path / "out").iterdir()) == sorted(s.directory for s in backend.sessions)


# --------------------------------------------------------------------------------------------------
# cleanup on signals


def _child_env() -> dict[str, str]:
    """The environment of a child python: it imports the same nextgpt as this process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(nextgpt.__file__).parent.parent), env.get("PYTHONPATH", "")]
    )
    env.pop("GRADIO_TEMP_DIR", None)
    env["GRADIO_ANALYTICS_ENABLED"] = "False"
    return env


def _read_until(proc: subprocess.Popen, marker: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if line.startswith(marker):
            return lines
    proc.kill()
    raise AssertionError(f"child never printed {marker!r}: {lines}\n{proc.stderr.read()}")


def test_sigint_and_sigterm_run_the_cleanup_and_chain_to_previous_handlers(tmp_path):
    child = textwrap.dedent(
        """
        import signal, sys, time
        from pathlib import Path
        from nextgpt.web import ChatBackend, ServerCleanup, install_cleanup_handlers

        root = Path(sys.argv[1])
        def previous_term(signum, frame):
            print("previous SIGTERM handler", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, previous_term)
        backend = ChatBackend(None, output_dir=root / "sessions")
        session = backend.new_session()
        (session.next_turn_dir() / "upload0_photo.png").write_bytes(b"x" * 100)
        cache = root / "gradio-cache"
        cache.mkdir()
        (cache / "upload.png").write_bytes(b"y")
        install_cleanup_handlers(ServerCleanup(backend=backend, remove=[cache]))
        try:
            print("ready", session.directory, flush=True)
            time.sleep(60)
        except KeyboardInterrupt:  # SIGINT chained to Python's default handler
            print("KeyboardInterrupt", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
        cwd=tmp_path,
    )
    try:
        session_dir = Path(_read_until(proc, "ready", 60)[-1].split(" ", 1)[1])
        assert session_dir.is_dir()
        proc.send_signal(signal.SIGINT)
        _read_until(proc, "KeyboardInterrupt", 20)
        assert not session_dir.exists() and not (tmp_path / "gradio-cache").exists()
        assert (tmp_path / "sessions").is_dir()  # the root was given, not created: it stays
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "previous SIGTERM handler" in out and proc.returncode == 3, err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_on_serve_removes_sessions_output_root_and_gradio_cache(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nextgpt[demo]')")
    import httpx

    port = _free_port()
    child = textwrap.dedent(
        """
        import os, sys
        import nextgpt.web.app as web  # serve looks build_app up in its own module

        build_app = web.build_app
        def build_with_a_session(*args, **kwargs):
            app = build_app(*args, **kwargs)
            session = app.nextgpt_backend.new_session()  # as a first message would
            (session.next_turn_dir() / "upload0_photo.png").write_bytes(b"x" * 100)
            print("root", app.nextgpt_output_dir, flush=True)
            print("cache", os.environ.get("GRADIO_TEMP_DIR", ""), flush=True)
            print("session", session.directory, flush=True)
            return app
        web.build_app = build_with_a_session
        web.serve("tiny", port=int(sys.argv[1]))
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", child, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
        cwd=tmp_path,
    )
    root = cache = session = None
    try:
        lines = _read_until(proc, "session", 90)
        paths = dict(
            line.split(" ", 1) for line in lines if line.split(" ")[0] in ("root", "cache", "session")
        )
        root, session = Path(paths["root"]), Path(paths["session"])
        cache = Path(paths["cache"]) if paths.get("cache") else None  # what serve gave gradio
        assert session.is_dir() and session.parent == root
        deadline = time.monotonic() + 60
        while True:  # wait until the server answers
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        leftovers = [p for p in (session, root, cache) if p is not None and p.exists()]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in (root, cache):  # never leave a failed run's folders in the temp folder
            if p is not None and p != Path(tempfile.gettempdir()) / "gradio":
                shutil.rmtree(p, ignore_errors=True)
    assert leftovers == [], err
    assert cache is not None and cache.name.startswith("nextgpt-gradio-")  # a cache folder of its own
    assert proc.returncode == -signal.SIGTERM, err  # the default action still ends the process
    assert "Traceback" not in err
