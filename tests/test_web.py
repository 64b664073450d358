"""The web chat demo (``nextgpt.web``): upload checks, session handling, and the page in a real browser.

The unit tests need no gradio. The end-to-end test serves the app on the ``tiny`` preset on 127.0.0.1
and drives Debian's Chromium (``/usr/bin/chromium``) with Playwright; it is skipped, with the reason,
when gradio, playwright or the browser is missing (``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from media_fixtures import (
    synthetic_image,
    synthetic_video_frames,
    tone,
    write_audio_only_mp4,
    write_mp4,
    write_wav,
)
from PIL import Image

from nextgpt import Audio, GenerationOutput, InputError, Modality, Video
from nextgpt.outputs import ProgressEvent, StreamEvent
from nextgpt.validate import check_progress
from nextgpt.web import (
    ChatBackend,
    ChatSession,
    Exchange,
    GenerationSettings,
    UploadLimits,
    check_upload,
    sniff_media,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-quic",
    "--disable-sync",
]
WAIT_MS = 60_000


# --------------------------------------------------------------------------------------------------
# media


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """Real media (PNG, 1 s WAV tone, 2 s mp4) and broken ones."""
    d = tmp_path_factory.mktemp("media")
    files = {}
    files["png"] = d / "photo.png"
    Image.fromarray(synthetic_image(64, 48)).save(files["png"])
    files["wav"] = write_wav(d / "tone.wav", tone(16000, 1.0, 440.0), 16000, subtype="PCM_16")
    files["mp4"] = write_mp4(d / "clip.mp4", synthetic_video_frames(20, 48, 64), 10)
    files["garbage"] = d / "garbage.png"
    files["garbage"].write_bytes(b"this is not an image \x00\x01\x02" * 20)
    files["wav_as_png"] = d / "sound.png"
    shutil.copyfile(files["wav"], files["wav_as_png"])
    files["audio_mp4"] = write_audio_only_mp4(d / "voice.mp4", tone(16000, 1.0, 300.0), 16000)
    files["truncated_png"] = d / "cut.png"
    files["truncated_png"].write_bytes(files["png"].read_bytes()[:200])
    files["truncated_mp4"] = d / "half.mp4"
    files["truncated_mp4"].write_bytes(files["mp4"].read_bytes()[: files["mp4"].stat().st_size // 2])
    files["txt"] = d / "notes.txt"
    files["txt"].write_text("hello")
    return files


# --------------------------------------------------------------------------------------------------
# upload checks


def test_check_upload_accepts_real_media(media):
    img = check_upload(media["png"])
    assert (img.modality, img.name, img.duration) == (Modality.IMAGE, "photo.png", None)
    assert img.as_part() == media["png"]

    wav = check_upload(media["wav"])
    assert wav.modality is Modality.AUDIO
    assert wav.duration == pytest.approx(1.0, abs=1e-3)
    assert isinstance(wav.as_part(), Audio) and wav.as_part().path == media["wav"]

    mp4 = check_upload(media["mp4"])
    assert mp4.modality is Modality.VIDEO
    assert mp4.duration == pytest.approx(2.0, abs=0.2)
    assert isinstance(mp4.as_part(), Video)


@pytest.mark.parametrize(
    ("key", "limits", "expected"),
    [
        ("garbage", UploadLimits(), "garbage.png: cannot decode image: unknown or unsupported image format"),
        ("truncated_png", UploadLimits(), "cut.png: cannot decode image"),
        (
            "wav_as_png",
            UploadLimits(),
            "sound.png: the name says image ('.png') but the content is audio (WAV)",
        ),
        ("audio_mp4", UploadLimits(), "voice.mp4: the name says video ('.mp4') but the content is audio"),
        ("truncated_mp4", UploadLimits(), "half.mp4: cannot read the video container: InvalidDataError"),
        ("txt", UploadLimits(), "notes.txt: unsupported file type '.txt'"),
        ("png", UploadLimits(max_bytes=100), "photo.png: the file is 0.0 MB, above the upload limit of"),
        (
            "png",
            UploadLimits(max_image_pixels=1000),
            "photo.png: image is 64x48 = 3072 pixels, above the limit",
        ),
        (
            "wav",
            UploadLimits(max_media_seconds=0.5),
            "tone.wav: the audio is 1.0 s long, above the limit of 0.5 s",
        ),
        (
            "mp4",
            UploadLimits(max_media_seconds=1.0),
            "clip.mp4: the video is 2.0 s long, above the limit of 1 s",
        ),
    ],
)
def test_check_upload_rejects(media, key, limits, expected):
    with pytest.raises(InputError) as info:
        check_upload(media[key], limits)
    message = str(info.value)
    assert message.startswith(expected), message
    assert str(media[key].parent) not in message  # the server-side path is not shown to the user


def test_check_upload_uses_the_given_name_and_rejects_empty_files(tmp_path, media):
    with pytest.raises(InputError, match=r"^holiday\.png: cannot decode image"):
        check_upload(media["garbage"], name="holiday.png")
    empty = tmp_path / "empty.wav"
    empty.touch()
    with pytest.raises(InputError, match=r"^empty\.wav: the file is empty"):
        check_upload(empty)


def test_sniff_media_signatures(media):
    assert sniff_media(media["png"].read_bytes()[:64]) == (Modality.IMAGE, "PNG")
    assert sniff_media(media["wav"].read_bytes()[:64]) == (Modality.AUDIO, "WAV")
    assert sniff_media(media["mp4"].read_bytes()[:64]) == (None, "container")
    assert sniff_media(b"\xff\xd8\xff\xe0" + bytes(20)) == (Modality.IMAGE, "JPEG")
    assert sniff_media(b"RIFF\x00\x00\x00\x00AVI LIST") == (Modality.VIDEO, "AVI")
    assert sniff_media(b"fLaC\x00\x00") == (Modality.AUDIO, "FLAC")
    assert sniff_media(b"hello world") == (None, "unknown")


# --------------------------------------------------------------------------------------------------
# sessions and the chat logic, with a stand-in model


class FakeModel:
    """Records ``generate`` calls; answers with text and one image, decoded in 2 diffusion steps.

    ``progress`` follows ``NextGPT.generate``: a callable gets the :class:`ProgressEvent` sequence of
    the real model ("text", then "decode" and each "step" of the image); ``True`` logs the steps on
    the ``nextgpt.model`` logger as the real model does (the backend must not rely on that).
    :meth:`stream` gives ``generate``'s answer as ``NextGPT.stream``'s events (subclasses that
    change ``generate`` change both)."""

    context_length = 512  # what the page bounds its max-new-tokens slider by
    steps = 2

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def _progress_events(self) -> list[ProgressEvent]:
        events = [ProgressEvent("text"), ProgressEvent("decode", Modality.IMAGE, 0, 0, self.steps)]
        return events + [
            ProgressEvent("step", Modality.IMAGE, 0, k, self.steps) for k in range(1, self.steps + 1)
        ]

    def generate(self, inputs, modalities=None, **kwargs) -> GenerationOutput:
        self.calls.append({"inputs": inputs, "modalities": modalities, **kwargs})
        progress = check_progress(kwargs.get("progress", False))
        for event in self._progress_events():
            if progress is True and event.stage == "step":
                logging.getLogger("nextgpt.model").info(
                    "%s diffusion step %d/%d", "image", event.step, event.total
                )
            elif callable(progress):
                progress(event)
        n = len(self.calls)
        return GenerationOutput(text=f"answer {n}", images=[Image.new("RGB", (8, 8), (n, 0, 0))])

    def stream(self, inputs, modalities=None, **kwargs) -> Iterator[StreamEvent]:
        """``generate``'s answer as events: text (in two deltas), the image's signal run, its decode
        progress, the image, done."""
        out = self.generate(inputs, modalities, **kwargs)
        text, images = self._progress_events()[:1], self._progress_events()[1:]
        yield StreamEvent("progress", progress=text[0])
        head, _, tail = out.text.rpartition(" ")
        for delta in (f"{head} ", tail) if head else (out.text,):
            yield StreamEvent("text", text=delta)
        for i, image in enumerate(out.images):
            yield StreamEvent("signal", modality=Modality.IMAGE, index=i)
            for event in images:
                yield StreamEvent("progress", progress=replace(event, index=i))
            yield StreamEvent("media", modality=Modality.IMAGE, index=i, media=image)
        yield StreamEvent("done", output=out)


def run_round(backend: ChatBackend, *args, **kwargs) -> list[dict]:
    """One round of ``backend.respond`` (a generator of the display) to its end: the last display."""
    displays = list(backend.respond(*args, **kwargs))
    assert displays, "respond yields the display at least once"
    return displays[-1]


def test_history_to_messages_keeps_media_and_roles(tmp_path, media):
    session = ChatSession.create(tmp_path)
    img, wav = media["png"], Audio(media["wav"])
    session.exchanges.append(Exchange([img, "what is this?"], "a photo"))
    session.exchanges.append(Exchange([wav, "and this?"], "a tone"))
    messages = session.to_messages(["/etc/passwd", Video(media["mp4"])])
    assert [m["role"] for m in messages] == ["user", "assistant", "user", "assistant", "user"]
    assert messages[0]["content"] == [img, "what is this?"]
    assert messages[1]["content"] == "a photo"
    assert messages[2]["content"][0] is wav
    assert messages[4]["content"][0] == "/etc/passwd"  # text stays text
    assert isinstance(messages[4]["content"][1], Video)
    # only the last turns are kept when asked
    assert [m["content"] for m in session.to_messages(["hi"], max_turns=1)][:2] == [
        [wav, "and this?"],
        "a tone",
    ]
    assert session.to_messages(["hi"], max_turns=0) == [{"role": "user", "content": ["hi"]}]


def test_backend_rejects_bad_upload_without_calling_the_model(tmp_path, media):
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    session = backend.new_session()
    warnings: list[str] = []
    display = run_round(
        backend, session, "look", [media["garbage"]], GenerationSettings(), warn=warnings.append
    )
    assert model.calls == []
    assert display[-1]["role"] == "assistant"
    assert display[-1]["content"].startswith("Upload rejected: garbage.png: cannot decode image")
    assert warnings and warnings[0].startswith("Upload rejected: garbage.png")
    assert session.exchanges == []  # a rejected turn does not enter the model's history
    # a good file in the same message does not get the bad one through
    run_round(backend, session, "look", [media["png"], media["wav_as_png"]], GenerationSettings())
    assert model.calls == [] and "sound.png: the name says image" in session.display[-1]["content"]
    # too many files
    backend.limits = UploadLimits(max_files=1)
    run_round(backend, session, "x", [media["png"], media["png"]], GenerationSettings())
    assert model.calls == [] and "at most 1 per message" in session.display[-1]["content"]


def test_backend_reads_media_only_from_the_upload_folder(tmp_path, media):
    model = FakeModel()
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    backend = ChatBackend(model, output_dir=tmp_path / "out", upload_dir=uploads)
    session = backend.new_session()
    run_round(backend, session, "hi", [media["png"]], GenerationSettings())  # a real file, but not an upload
    assert model.calls == []
    assert "photo.png: not an upload of this page" in session.display[-1]["content"]
    ok = shutil.copyfile(media["png"], uploads / "photo.png")
    run_round(backend, session, str(media["wav"]), [ok], GenerationSettings())
    (call,) = model.calls
    (turn,) = call["inputs"]
    image, text = turn["content"]
    assert isinstance(image, Path) and image.parent.parent == session.directory  # a copy in the session
    assert text == str(media["wav"]) and type(text) is str  # a path typed as text is never opened


def test_backend_round_trip_history_outputs_and_settings(tmp_path, media):
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out", max_history_turns=8)
    session = backend.new_session()
    settings = GenerationSettings(
        modalities=["text", "image"], seed=3, num_inference_steps=4, guidance_scale=2.5, max_new_tokens=9
    )
    reports: list[tuple[float | None, str]] = []
    display = run_round(
        backend, session, "draw it", [media["png"]], settings, progress=lambda f, d: reports.append((f, d))
    )
    call = model.calls[0]
    assert call["modalities"] == ["text", "image"]
    assert (call["seed"], call["num_inference_steps"], call["guidance_scale"], call["max_new_tokens"]) == (
        3,
        4,
        2.5,
        9,
    )
    # the chat's sampling defaults: greedy, with the repetition penalty that stops small's loops
    assert (call["do_sample"], call["repetition_penalty"], call["top_k"]) == (False, 1.2, 0)
    assert "progress" not in call  # progress comes from the stream's events
    # progress: text first, then the diffusion steps the model reported, then saving
    assert reports == [
        (None, "generating text..."),
        (0.0, "decoding image: step 0/2"),
        (0.5, "decoding image: step 1/2"),
        (1.0, "decoding image: step 2/2"),
        (None, "saving outputs..."),
    ]
    # the model logger is left as it was (nothing enabled, no filter left behind)
    model_logger = logging.getLogger("nextgpt.model")
    assert model_logger.filters == [] and model_logger.level == logging.NOTSET

    # display: the user's image (a file in the session folder), the text, the answer and its image
    assert display[0] == {"role": "user", "content": {"path": display[0]["content"]["path"]}}
    assert Path(display[0]["content"]["path"]).is_relative_to(session.directory)
    assert display[1] == {"role": "user", "content": "draw it"}
    assert display[2] == {"role": "assistant", "content": "answer 1"}
    out_image = Path(display[3]["content"]["path"])
    assert out_image.name == "reply_image0.png" and out_image.is_file()
    assert out_image.is_relative_to(session.directory)
    assert (out_image.parent / "reply.txt").read_text() == "answer 1\n"  # as GenerationOutput.save
    assert sorted(p.name for p in out_image.parent.iterdir()) == [
        "reply.txt",
        "reply_image0.png",
        "upload0_photo.png",
    ]

    # second round: the history (user media + answer text) goes to the model
    run_round(backend, session, "again", [], GenerationSettings())
    msgs = model.calls[1]["inputs"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert isinstance(msgs[0]["content"][0], Path) and msgs[0]["content"][1] == "draw it"
    assert msgs[1]["content"] == "answer 1"
    assert msgs[2]["content"] == ["again"]
    assert model.calls[1]["modalities"] is None  # nothing ticked: the model decides
    session.close()
    assert not session.directory.exists()


def _answers(display: list[dict]) -> list:
    """The answer's messages of the last round (after the last user message)."""
    k = max(i for i, m in enumerate(display) if m["role"] == "user")
    return [m["content"] for m in display[k + 1 :]]


def test_respond_streams_text_then_progress_lines_then_the_image(tmp_path):
    """Each event updates the chat: text deltas grow the answer, the image has a placeholder line with
    its decode progress until it is shown in its place; the last display is the one-shot layout."""
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    session = backend.new_session()
    run_round(backend, session, "first", [], GenerationSettings())
    earlier = list(session.display)
    displays = list(backend.respond(session, "draw", [], GenerationSettings()))
    assert all(d[: len(earlier)] == earlier for d in displays)  # earlier rounds stay above
    steps = [_answers(d) for d in displays]
    image = {"path": str(session.rounds[-1].directory / "reply_image0.png")}
    assert steps == [
        [],  # the user's turn, before the model's first event
        ["generating text..."],
        ["answer "],
        ["answer 2"],
        ["answer 2", "preparing image..."],
        ["answer 2", "decoding image: step 0/2"],
        ["answer 2", "decoding image: step 1/2"],
        ["answer 2", "decoding image: step 2/2"],
        ["answer 2", image],
        ["answer 2", image],  # the round recorded: session.display
    ]
    assert displays[-1] == session.display and displays[-1] is not session.display
    assert Path(image["path"]).is_file()
    assert [m["content"] for m in session.display[len(earlier) :]] == ["draw", "answer 2", image]


def test_respond_shows_media_in_one_shot_order_and_saves_each_as_generate_would(tmp_path):
    """Items stream in signal-run order (audio, image, image here); the chat shows them as the
    one-shot answer did (images, then sounds) and each file has GenerationOutput.save's name."""

    class Mixed(FakeModel):
        def stream(self, inputs, modalities=None, **kwargs):
            wave = np.zeros(1600, np.float32)
            red, blue = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
            items = [(Modality.AUDIO, wave, 16000), (Modality.IMAGE, red, None), (Modality.IMAGE, blue, None)]
            yield StreamEvent("text", text="here")
            for i, (m, _, _) in enumerate(items):
                yield StreamEvent("signal", modality=m, index=i)
            for i, (m, item, rate) in enumerate(items):
                yield StreamEvent("media", modality=m, index=i, media=item, rate=rate)
            out = GenerationOutput("here", images=[red, blue], audios=[wave], audio_sample_rate=16000)
            yield StreamEvent("done", output=out)

    backend = ChatBackend(Mixed(), output_dir=tmp_path / "out")
    session = backend.new_session()
    displays = list(backend.respond(session, "go", [], GenerationSettings()))
    names = [Path(c["path"]).name if isinstance(c, dict) else c for c in _answers(displays[-1])]
    assert names == ["here", "reply_image0.png", "reply_image1.png", "reply_audio0.wav"]
    # while streaming, the slots already stand in that order
    assert _answers(displays[4]) == ["here", "preparing image...", "preparing image...", "preparing audio..."]
    folder = session.rounds[-1].directory
    assert Image.open(folder / "reply_image1.png").getpixel((0, 0)) == (0, 0, 255)
    assert sorted(p.name for p in folder.iterdir()) == [
        "reply.txt",
        "reply_audio0.wav",
        "reply_image0.png",
        "reply_image1.png",
    ]  # nothing left of the per-medium scratch folders


@pytest.mark.parametrize("when", ["at the call", "mid-stream"])
def test_a_failed_generation_shows_one_error_and_leaves_no_history(tmp_path, when):
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    session = backend.new_session()
    run_round(backend, session, "hello", [], GenerationSettings())
    before = [dict(m) for m in session.display]

    def broken(inputs, modalities=None, **kwargs):
        if when == "at the call":  # as NextGPT.stream checks its arguments before iterating
            raise InputError("text contains the reserved token '<image>'")

        def events():
            yield StreamEvent("text", text="partial answer")
            yield StreamEvent("signal", modality=Modality.IMAGE, index=0)
            yield StreamEvent("media", modality=Modality.IMAGE, index=0, media=Image.new("RGB", (4, 4)))
            raise InputError("text contains the reserved token '<image>'")

        return events()

    model.stream = broken
    warnings: list[str] = []
    displays = list(backend.respond(session, "<image>", [], GenerationSettings(), warn=warnings.append))
    message = "Error: text contains the reserved token '<image>'"
    assert warnings == [message]
    assert session.display[: len(before)] == before
    assert [m["content"] for m in session.display[len(before) :]] == ["<image>", message]
    assert displays[-1] == session.display  # the partial answer is gone from the chat
    assert len(session.exchanges) == 1  # and from the history
    folder = session.rounds[-1].directory
    assert list(folder.iterdir()) == []  # the partial answer's image is deleted
    # an unexpected failure: logged, one generic message
    model.stream = lambda *a, **k: iter([StreamEvent("text", text="x"), 1 / 0])
    run_round(backend, session, "again", [], GenerationSettings(), warn=warnings.append)
    assert session.display[-1]["content"] == "Error: generation failed (see the server log)."
    assert len(warnings) == 2 and len(session.exchanges) == 1


def test_a_round_stopped_early_keeps_its_partial_answer_and_no_history(tmp_path):
    """The page went away (the handler's generator is closed): the round is recorded as shown, with
    ``(stopped)``, the model's stream is closed, and nothing enters the history."""
    closed: list[bool] = []

    class Endless(FakeModel):
        def stream(self, inputs, modalities=None, **kwargs):
            try:
                while True:
                    yield StreamEvent("text", text="la ")
            finally:
                closed.append(True)

    backend = ChatBackend(Endless(), output_dir=tmp_path / "out")
    session = backend.new_session()
    rounds = backend.respond(session, "sing", [], GenerationSettings())
    display = [next(rounds) for _ in range(4)][-1]  # the user's turn, then three deltas
    rounds.close()
    assert closed == [True]
    assert display[-1] == {"role": "assistant", "content": "la la la "}
    assert [m["content"] for m in session.display] == ["sing", "la la la ", "(stopped)"]
    assert session.exchanges == [] and not session.active and not backend.lock.locked()


def test_two_sessions_do_not_share_state(tmp_path):
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    a, b = backend.new_session(), backend.new_session()
    assert a.directory != b.directory
    run_round(backend, a, "I am A", [], GenerationSettings())
    run_round(backend, b, "I am B", [], GenerationSettings())
    run_round(backend, a, "who am I?", [], GenerationSettings())
    texts = [m["content"] for m in model.calls[2]["inputs"]]
    assert texts == [["I am A"], "answer 1", ["who am I?"]]  # nothing of B's conversation
    assert [m["content"] for m in b.display] == ["I am B", "answer 2", b.display[2]["content"]]
    assert len(a.exchanges) == 2 and len(b.exchanges) == 1


@pytest.mark.parametrize("holder", ["another session", "another user of the model"])
def test_generation_is_serialised_by_the_model_lock(tmp_path, holder):
    """While the backend's lock (another tab) or the model's own generation lock (e.g. the HTTP API
    on the same model) is held, the answer is the line "waiting for the model ..."."""
    model = FakeModel()
    model.generation_lock = threading.RLock()  # as NextGPT.generation_lock
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    session = backend.new_session()
    reports: list[str] = []
    displays: list[list[dict]] = []
    held, release = threading.Event(), threading.Event()

    def hold(lock) -> None:
        with lock:
            held.set()
            release.wait(10)

    lock = backend.lock if holder == "another session" else model.generation_lock
    holder_thread = threading.Thread(target=hold, args=(lock,))
    holder_thread.start()
    held.wait(10)

    def run() -> None:
        for display in backend.respond(
            session, "hi", [], GenerationSettings(), progress=lambda f, d: reports.append(d)
        ):
            displays.append(display)
            if holder != "another session":  # the model's lock: the fake model does not take it
                release.wait(10)

    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 10
    while not displays and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    waiting = "waiting for the model (another session is generating)..."
    assert model.calls == [] and reports == [waiting]
    assert _answers(displays[-1]) == [waiting]
    release.set()
    worker.join(10)
    holder_thread.join(10)
    assert len(model.calls) == 1
    assert _answers(displays[-1]) == [
        "answer 1",
        {"path": str(session.rounds[-1].directory / "reply_image0.png")},
    ]


def test_build_app_without_gradio_says_how_to_install(monkeypatch):
    from nextgpt.web import build_app

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ImportError, match=r"pip install 'nextgpt\[demo\]'"):
        build_app(FakeModel())


def test_importing_the_web_package_loads_neither_torch_nor_gradio():
    """``nextgpt --help`` builds the serve options from ``nextgpt.web``'s defaults: that stays light."""
    import subprocess

    probe = "import sys, nextgpt.cli, nextgpt.web; nextgpt.cli.build_parser(); "
    probe += "print(sorted(m for m in ('torch', 'gradio') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_only_web_imports_gradio():
    root = Path(__file__).resolve().parents[1]
    offenders = [
        str(p.relative_to(root))
        for folder in ("nextgpt", "encoders", "projectors", "decoders", "stages")
        for p in (root / folder).rglob("*.py")
        if p.relative_to(root).as_posix() != "nextgpt/web/app.py"
        and "import gradio" in p.read_text(encoding="utf-8")
    ]
    assert offenders == []


# --------------------------------------------------------------------------------------------------
# end to end in a real browser


class CountingModel:
    """The real model, counting ``generate`` and ``stream`` calls."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls = 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def generate(self, *args, **kwargs):
        self.calls += 1
        return self.model.generate(*args, **kwargs)

    def stream(self, *args, **kwargs):
        self.calls += 1
        return self.model.stream(*args, **kwargs)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_model():
    from nextgpt import NextGPT

    return NextGPT.from_preset("tiny")


def test_backend_reports_the_real_models_diffusion_steps(tiny_model, tmp_path, media):
    backend = ChatBackend(tiny_model, output_dir=tmp_path)
    session = backend.new_session()
    reports: list[str] = []
    settings = GenerationSettings(modalities=["image"], seed=0, num_inference_steps=2, max_new_tokens=4)
    display = run_round(
        backend, session, "draw", [media["png"]], settings, progress=lambda f, d: reports.append(d)
    )
    assert reports == [
        "generating text...",
        "decoding image: step 0/2",
        "decoding image: step 1/2",
        "decoding image: step 2/2",
        "saving outputs...",
    ]
    assert Path(display[-1]["content"]["path"]).name == "reply_image0.png"


class EventRecordingModel(CountingModel):
    """The real model; records the arguments of ``stream`` and every event it yields."""

    def __init__(self, model) -> None:
        super().__init__(model)
        self.kwargs: list[dict] = []
        self.events: list[StreamEvent] = []

    def stream(self, *args, **kwargs):
        self.kwargs.append(kwargs)
        for event in super().stream(*args, **kwargs):
            self.events.append(event)
            yield event


def test_backend_gets_the_real_models_decode_steps_from_the_stream(tiny_model, tmp_path, caplog):
    """The page's progress comes from the stream's progress events, one by one, not from log records."""
    model = EventRecordingModel(tiny_model)
    backend = ChatBackend(model, output_dir=tmp_path)
    session = backend.new_session()
    reports: list[tuple[float | None, str]] = []
    settings = GenerationSettings(modalities=["image"], seed=0, num_inference_steps=3, max_new_tokens=4)
    model_logger = logging.getLogger("nextgpt.model")
    with caplog.at_level(logging.DEBUG, logger="nextgpt.model"):
        displays = list(
            backend.respond(session, "draw", [], settings, progress=lambda f, d: reports.append((f, d)))
        )
    (kwargs,) = model.kwargs
    assert kwargs.get("progress", False) is False  # no callback, no log: the events are the progress
    steps = [e.progress for e in model.events if e.kind == "progress"]
    assert [(e.stage, e.modality, e.index, e.step, e.total) for e in steps] == [
        ("text", None, None, 0, 0),
        ("decode", Modality.IMAGE, 0, 0, 3),
        ("step", Modality.IMAGE, 0, 1, 3),
        ("step", Modality.IMAGE, 0, 2, 3),
        ("step", Modality.IMAGE, 0, 3, 3),
    ]
    # one report per event, as the event describes itself, then the backend's own "saving"
    assert reports == [(e.fraction, e.describe()) for e in steps] + [(None, "saving outputs...")]
    assert [f for f, _ in reports][1:5] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    # the same lines stood in the chat, in the image's place, until the image came
    lines = [_answers(d)[-1] for d in displays if _answers(d)]
    assert [f"decoding image: step {k}/3" for k in range(4)] == [
        x for x in lines if str(x).startswith("decoding")
    ]
    assert lines.index("decoding image: step 3/3") < lines.index(_answers(displays[-1])[-1])
    # no side channel: nothing logged per step, the model logger untouched
    assert not [r for r in caplog.records if "diffusion step" in r.getMessage()]
    assert model_logger.filters == []


def test_the_streamed_chat_ends_as_the_one_shot_answer(tiny_model, tmp_path, media):
    """With greedy settings the last display equals what the one-shot page showed for the same call:
    the answer's text (the deltas joined) and its image, pixel for pixel."""
    backend = ChatBackend(tiny_model, output_dir=tmp_path)
    session = backend.new_session()
    settings = GenerationSettings(
        modalities=["text", "image"], seed=0, num_inference_steps=2, max_new_tokens=12
    )
    displays = list(backend.respond(session, "Draw a cat sitting on a red sofa", [], settings))
    one_shot = tiny_model.generate(
        [{"role": "user", "content": ["Draw a cat sitting on a red sofa"]}],
        modalities=settings.modalities,
        **settings.generate_options(),
    )
    assert one_shot.text and len(one_shot.images) == 1
    final = displays[-1]
    assert final[0] == {"role": "user", "content": "Draw a cat sitting on a red sofa"}
    assert final[1] == {"role": "assistant", "content": one_shot.text}
    (image,) = final[2:]
    assert Image.open(image["content"]["path"]).tobytes() == one_shot.images[0].tobytes()
    # the text grew delta by delta before the image came
    texts = [
        a[0] for a in map(_answers, displays) if a and isinstance(a[0], str) and a[0] != "generating text..."
    ]
    assert texts and all(one_shot.text.startswith(t) for t in texts)
    assert len(set(texts)) >= 2


def test_closing_the_round_cancels_the_real_models_stream(tiny_model, tmp_path):
    backend = ChatBackend(tiny_model, output_dir=tmp_path)
    session = backend.new_session()
    settings = GenerationSettings(
        modalities=["text", "image"], seed=0, num_inference_steps=2, max_new_tokens=200
    )
    rounds = backend.respond(session, "Tell me a long story", [], settings)
    for display in rounds:  # up to the first text delta
        if [a for a in _answers(display) if a != "generating text..."]:
            break
    rounds.close()
    lock = tiny_model.generation_lock
    assert lock.acquire(timeout=30)  # the model's call ended (cancelled), not left running
    lock.release()
    assert session.display[-1] == {"role": "assistant", "content": "(stopped)"}
    assert session.exchanges == [] and not any(p.name.startswith("reply_image") for p in tmp_path.rglob("*"))


def test_a_failing_progress_reporter_does_not_end_the_round(tmp_path):
    model = FakeModel()
    backend = ChatBackend(model, output_dir=tmp_path / "out")
    session = backend.new_session()
    seen: list[str] = []

    def flaky(fraction, desc):
        seen.append(desc)
        if desc.startswith("decoding"):
            raise RuntimeError("the page went away")

    display = run_round(backend, session, "hi", [], GenerationSettings(), progress=flaky)
    assert seen == [
        "generating text...",
        "decoding image: step 0/2",
        "decoding image: step 1/2",
        "decoding image: step 2/2",
        "saving outputs...",
    ]
    assert display[1] == {"role": "assistant", "content": "answer 1"}


@pytest.fixture(scope="module")
def served_app(tiny_model, tmp_path_factory):
    """The app on the tiny preset, on 127.0.0.1, stopped at the end."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nextgpt[demo]')")
    from nextgpt.web import build_app

    model = CountingModel(tiny_model)
    app = build_app(model, output_dir=tmp_path_factory.mktemp("web-out"))
    port = _free_port()
    app.launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, ssr_mode=False
    )
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        app.close()
        app.nextgpt_backend.close()  # stops its reaper thread, removes the sessions' folders


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, served_app, tmp_path):
    """A fresh browser session; a full-page screenshot is written to ``tmp_path`` if the test fails."""
    context = browser.new_context(viewport={"width": 1200, "height": 1300})
    pg = context.new_page()
    pg.set_default_timeout(WAIT_MS)
    try:
        yield pg
    finally:
        context.close()


@contextlib.contextmanager
def screenshot_on_failure(page, directory: Path):
    try:
        yield
    except BaseException:
        shot = directory / "failure.png"
        with contextlib.suppress(Exception):
            page.screenshot(path=str(shot), full_page=True)
            logging.getLogger(__name__).error("screenshot of the page at the failure: %s", shot)
        raise


def _send(page, text: str, files: list[Path], modalities: list[str]) -> None:
    """Attach ``files`` (images), type ``text``, tick ``modalities`` and press Enter."""
    page.set_input_files("#message input[type=file]", [str(f) for f in files])
    for f in files:  # the preview shows the file once the server has it
        page.locator(f'#message img[src*="gradio_api/file="][src$="/{f.name}"]').wait_for()
    page.fill("#message textarea", text)
    for name in modalities:
        page.locator("#modalities").get_by_label(name, exact=True).check()
    page.press("#message textarea", "Enter")


@pytest.mark.filterwarnings(
    "ignore:.*(no_silent_downcasting|copy keyword is deprecated)"
)  # gradio vs pandas 3
def test_browser_chat_generates_an_image_and_reports_bad_uploads(page, served_app, media, tmp_path):
    with screenshot_on_failure(page, tmp_path):
        _browser_chat(page, *served_app, media)


#: Records in the page (``window.__seen``) when the bot's first real text (not a progress line) and
#: the reply's image appear in the chat, and every length the text had before the image came.
WATCH_CHAT = """() => {
  const seen = window.__seen = {text: null, image: null, lengths: []};
  const progressLine = /^(generating text|preparing |decoding |waiting for the model)/;
  const check = () => {
    const now = performance.now();
    const texts = [...document.querySelectorAll('#chatbot [data-testid="bot"] .message-content')]
      .map(m => m.innerText.trim()).filter(t => t && !progressLine.test(t));
    if (texts.length && seen.text === null) seen.text = now;
    if (seen.image === null) {
      const n = texts.reduce((a, t) => a + t.length, 0);
      if (n && seen.lengths[seen.lengths.length - 1] !== n) seen.lengths.push(n);
      if (document.querySelector('#chatbot img[src*="reply_image0.png"]')) seen.image = now;
    }
  };
  new MutationObserver(check).observe(document.querySelector('#chatbot'),
                                      {subtree: true, childList: true, characterData: true});
}"""


def _browser_chat(page, app, url: str, media: dict[str, Path]) -> None:
    page.goto(url)
    page.wait_for_selector("#message textarea")
    page.evaluate(WATCH_CHAT)

    # (1) image + text in, text + image out: the reply shows an image served by the app, after the
    # answer's text has streamed in (CPU: the image is decoded once the text is done)
    _send(page, "Paint this as a watercolour.", [media["png"]], ["text", "image"])
    reply = page.locator('#chatbot img[src*="reply_image0.png"]')
    reply.wait_for()
    seen = page.evaluate("() => window.__seen")
    assert seen["text"] is not None and seen["image"] is not None, seen
    assert seen["text"] < seen["image"], seen  # the text was on the page before the image
    assert len(seen["lengths"]) >= 2, seen  # and it grew in steps: streamed, not in one block
    # shown at a readable size: the 32-pixel decoder image is scaled up on the page, not on disk
    box = reply.bounding_box()
    assert box is not None and box["width"] >= 200, box
    assert reply.get_attribute("src").startswith(url)
    page.wait_for_function(
        "() => { const i = document.querySelector('#chatbot img[src*=\"reply_image0.png\"]');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    assert page.locator("#chatbot").get_by_text("Paint this as a watercolour.").count() >= 1
    # the uploaded image is shown in the chat, from the session's copy
    assert page.locator('#chatbot img[src*="upload0_photo.png"]').count() == 1

    backend = app.nextgpt_backend
    assert backend.model.calls == 1
    (saved,) = Path(app.nextgpt_output_dir).rglob("reply_image0.png")
    assert Image.open(saved).size[0] < box["width"]  # the file keeps the decoder's size

    # (2) a corrupt file: a visible error, and the model is not called
    sessions_before = len(list(Path(app.nextgpt_output_dir).iterdir()))
    _send(page, "What about this one?", [media["garbage"]], [])
    error = page.locator("#chatbot").get_by_text("Upload rejected: garbage.png: cannot decode image")
    # (the same message also pops up as a toast)
    error.wait_for()
    assert error.is_visible()
    assert backend.model.calls == 1
    assert len(list(Path(app.nextgpt_output_dir).iterdir())) == sessions_before  # same session

    # another browser session starts with an empty chat while the model is busy elsewhere
    other = page.context.browser.new_context().new_page()
    try:
        with backend.lock:  # a long generation in some session: page loads must not wait for it
            t0 = time.perf_counter()
            other.goto(url)
            other.wait_for_selector("#message textarea", timeout=45_000)
            assert (
                time.perf_counter() - t0 < 45
            )  # the lock is held throughout: a page load that needed it would never finish
        assert other.locator('#chatbot img[src*="reply_image0.png"]').count() == 0
        assert other.locator("#chatbot").get_by_text("Paint this as a watercolour.").count() == 0
    finally:
        other.context.close()


def test_serve_binds_loopback_and_serves_the_page(tmp_path):
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nextgpt[demo]')")
    import httpx

    from nextgpt.web import serve

    port = _free_port()
    app = serve("tiny", port=port, block=False, output_dir=tmp_path, max_upload_mb=1)
    try:
        assert app.server_name == "127.0.0.1"
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
        assert page.status_code == 200 and "NExT-GPT chat" in page.text
        assert app.max_file_size == 1024 * 1024  # gradio refuses larger uploads before our checks
    finally:
        app.nextgpt_cleanup()  # closes the app, its sessions and the gradio cache folder serve made


def test_serve_takes_a_fractional_upload_limit(tmp_path):
    """``nextgpt serve --max-upload-mb`` parses a float (5 -> 5.0): gradio gets the limit in bytes."""
    pytest.importorskip("gradio", reason="gradio is not installed (pip install 'nextgpt[demo]')")
    from nextgpt.web import serve

    app = serve("tiny", port=_free_port(), block=False, output_dir=tmp_path, max_upload_mb=1.5)
    try:
        assert app.max_file_size == int(1.5 * 2**20)
    finally:
        app.nextgpt_cleanup()
