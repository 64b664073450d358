"""The ``nextgpt`` command line, driven in-process through ``nextgpt.cli.main`` and as a subprocess
(``python -m nextgpt.cli``) on the tiny preset: generate, chat, data demo, train, import-legacy, the
one-line error contract (and ``--verbose`` tracebacks), and every subcommand's ``--help``."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from media_fixtures import pygame_sound, skimage_image
from PIL import Image

from nextgpt import NextGPT, NextGPTConfig
from nextgpt.cli import build_parser, cmd_chat, main
from nextgpt.errors import InputError

ASTRONAUT = skimage_image("astronaut.png")
WHIFF = pygame_sound("whiff.wav")
needs_media = pytest.mark.skipif(
    ASTRONAUT is None or WHIFF is None, reason="scikit-image / pygame sample media not installed"
)


@pytest.fixture(autouse=True)
def _restore_cli_side_effects(monkeypatch, tmp_path):
    """``main`` quietens third-party loggers for the process; undo that after each test, and run every
    test in its own working directory so default output folders never land in the repository."""
    names = ("transformers", "diffusers", "httpx", "peft")
    levels = {n: logging.getLogger(n).level for n in names}
    monkeypatch.chdir(tmp_path)
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def _run_cli(*args: str, stdin: str | None = None, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nextgpt.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------ generate


@needs_media
def test_generate_prints_text_and_saves_media(tmp_path, capsys) -> None:
    def run(out: str, seed: str) -> tuple[int, str]:
        rc = main(
            [
                "generate",
                "Draw what this astronaut hears.",
                "--image",
                str(ASTRONAUT),
                "--audio",
                str(WHIFF),
                "--preset",
                "tiny",
                "--modalities",
                "text,image",
                "--seed",
                seed,
                "--max-new-tokens",
                "4",
                "--out",
                str(tmp_path / out),
            ]
        )
        return rc, capsys.readouterr().out

    rc, stdout = run("a", "0")
    assert rc == 0
    image = tmp_path / "a" / "output_image0.png"
    assert f"saved {image}" in stdout.splitlines()
    assert Image.open(image).size == (32, 32)  # the tiny Stable Diffusion decoder's size
    # exactly the requested outputs: text (when the tiny LLM wrote any) and one image
    assert {p.name for p in (tmp_path / "a").iterdir()} <= {"output.txt", "output_image0.png"}
    text = tmp_path / "a" / "output.txt"
    if text.exists():  # the printed answer is what was saved
        assert stdout.startswith(text.read_text(encoding="utf-8").rstrip("\n"))

    # --seed reaches the decoders: same seed, same picture; another seed, another picture
    assert run("b", "0")[0] == 0 and run("c", "1")[0] == 0
    assert (tmp_path / "b" / "output_image0.png").read_bytes() == image.read_bytes()
    assert (tmp_path / "c" / "output_image0.png").read_bytes() != image.read_bytes()


def test_missing_input_file_is_one_error_line(tmp_path, capsys) -> None:
    missing = tmp_path / "no-such-picture.png"
    rc = main(["generate", "hi", "--preset", "tiny", "--image", str(missing), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc != 0
    assert _error_lines(err) == [f"error: image file not found: '{missing}'"]
    assert "Traceback" not in err
    # --verbose re-raises the typed error (the interpreter then prints the traceback)
    with pytest.raises(InputError, match="no-such-picture.png"):
        main(["--verbose", "generate", "hi", "--preset", "tiny", "--image", str(missing)])


def test_verbose_shows_the_traceback_in_a_subprocess(tmp_path) -> None:
    missing = tmp_path / "gone.wav"
    res = _run_cli("-v", "generate", "hi", "--preset", "tiny", "--audio", str(missing), cwd=tmp_path)
    assert res.returncode != 0
    assert "Traceback (most recent call last)" in res.stderr
    assert f"nextgpt.errors.InputError: audio file not found: '{missing}'" in res.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "hi", "--model", "{empty}"], "is not a saved nextgpt model"),
        (["generate", "hi", "--model", "{empty}", "--override", "a=b"], "--override applies to presets"),
        (["generate", "hi", "--preset", "nosuch"], "unknown preset 'nosuch'; valid presets:"),
        (["generate", "hi", "--preset", "tiny", "--override", "model.llm.lora.r=abc"], "expected an integer"),
        (
            ["import-legacy", "{empty}/pytorch_model.pt", "--out", "{empty}/x", "--preset", "tiny"],
            "not found",
        ),
        # a preset that needs the user's weights: the message names the environment variable
        (["generate", "hi", "--preset", "nextgpt-7b-legacy"], "NEXTGPT_IMAGEBIND_CKPT is not set"),
        (["data", "convert", "cc3m", "--input", "{empty}/cc3m.json", "--out", "{empty}/x"], "not found"),
    ],
)
def test_failures_are_one_error_line(argv, message, tmp_path, capsys, monkeypatch) -> None:
    for name in ("NEXTGPT_IMAGEBIND_CKPT", "NEXTGPT_VICUNA_7B_V0", "NEXTGPT_SD15", "NEXTGPT_AUDIOLDM"):
        monkeypatch.delenv(name, raising=False)  # never start loading real weights here
    empty = tmp_path / "empty"
    empty.mkdir()
    rc = main([a.replace("{empty}", str(empty)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2
    lines = _error_lines(err)
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err


# ------------------------------------------------------------------ chat


@needs_media
def test_chat_attach_ask_switch_outputs_save_quit(tmp_path, capsys) -> None:
    args = build_parser().parse_args(["chat", "--preset", "tiny", "--max-new-tokens", "4", "--seed", "0"])
    save_dir = tmp_path / "saved"
    script = "\n".join(
        [
            "/save " + str(save_dir),  # nothing yet
            "/audio " + str(tmp_path / "nope.wav"),  # a missing file is refused, the chat goes on
            "/image " + str(ASTRONAUT),
            "What is in this picture?",
            "/modalities text,image",
            "Now draw it.",
            "/save " + str(save_dir),
            "/quit",
            "/reset",  # after /quit: never read
        ]
    )
    assert cmd_chat(args, stdin=io.StringIO(script + "\n")) == 0
    out = capsys.readouterr().out
    assert "nothing to save yet" in out
    assert f"error: no such file: {tmp_path / 'nope.wav'}" in out
    assert "attached astronaut.png" in out
    assert "outputs: ['text', 'image']" in out
    assert "[1 image(s), 0 audio, 0 video(s); /save DIR to write them]" in out
    image = save_dir / "output_image0.png"
    assert f"saved {image}" in out
    assert Image.open(image).size == (32, 32)
    assert "history cleared" not in out  # /quit stopped the loop


def test_chat_reads_stdin_in_a_subprocess(tmp_path) -> None:
    script = "/modalities image\nDraw a cat.\n/save out\n/reset\n"  # ends at EOF, without /quit
    res = _run_cli(
        "chat", "--preset", "tiny", "--max-new-tokens", "2", "--seed", "0", stdin=script, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    assert "nextgpt chat (tiny)" in res.stdout
    assert "outputs: ['image']" in res.stdout
    assert "history cleared" in res.stdout
    assert (tmp_path / "out" / "output_image0.png").is_file()
    assert not (tmp_path / "out" / "output.txt").exists()  # text was not asked for
    assert "Traceback" not in res.stderr


class ScriptedModel:
    """The real tiny model behind ``nextgpt chat``, recording each ``generate`` call's messages and
    raising ``fail[k]`` instead of answering the k-th call (0-based) when given."""

    def __init__(self, model, fail: dict[int, BaseException] | None = None) -> None:
        self.model = model
        self.fail = fail or {}
        self.calls: list[list[dict]] = []

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def generate(self, inputs, **kwargs):
        self.calls.append(inputs)
        if len(self.calls) - 1 in self.fail:
            raise self.fail[len(self.calls) - 1]
        return self.model.generate(inputs, **kwargs)


@pytest.fixture(scope="module")
def tiny_chat_model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def chat_media(tmp_path_factory) -> dict[str, Path]:
    from media_fixtures import synthetic_image

    d = tmp_path_factory.mktemp("chat-media")
    good = d / "good.png"
    Image.fromarray(synthetic_image(32, 24)).save(good)
    bad = d / "broken.png"
    bad.write_bytes(b"not a picture at all \x00\x01" * 10)
    return {"good": good, "bad": bad}


def _chat(monkeypatch, model, script: list[str], *extra: str) -> int:
    """Run ``cmd_chat`` on ``model`` with ``script`` as stdin (text outputs only, 2 new tokens)."""
    monkeypatch.setattr("nextgpt.cli._load_model", lambda args: model)
    args = build_parser().parse_args(["chat", "--max-new-tokens", "2", "--modalities", "text", *extra])
    return cmd_chat(args, stdin=io.StringIO("\n".join(script) + "\n"))


def test_chat_bad_image_is_dropped_and_the_next_message_works(
    tiny_chat_model, chat_media, monkeypatch, capsys
) -> None:
    model = ScriptedModel(tiny_chat_model)
    script = ["/image " + str(chat_media["bad"]), "Hello?", "/image " + str(chat_media["good"]), "And this?"]
    rc = _chat(monkeypatch, model, script)
    out = capsys.readouterr().out
    assert rc == 0
    refusals = [line for line in out.splitlines() if "error:" in line]
    # refused when attached, with the loader's message naming the file; nothing else failed
    assert len(refusals) == 1 and "cannot decode image" in refusals[0] and "broken.png" in refusals[0]
    assert refusals[0].endswith("(not attached)")
    assert "attached good.png" in out
    # both messages reached the model; the bad file never did, the good one went with its message
    assert len(model.calls) == 2
    assert model.calls[0] == [{"role": "user", "content": ["Hello?"]}]
    *history, user = model.calls[1]
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == ["Hello?"]
    assert user == {"role": "user", "content": [chat_media["good"], "And this?"]}


def test_chat_survives_any_error_in_a_turn(
    tiny_chat_model, chat_media, monkeypatch, capsys, tmp_path
) -> None:
    model = ScriptedModel(tiny_chat_model, fail={0: RuntimeError("CUDA out of memory.\nTried to allocate")})
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    script = [
        "/image " + str(chat_media["good"]),
        "First question",  # generate raises RuntimeError: one line, the chat goes on
        "Second question",
        "/save " + str(not_a_dir / "sub"),  # an OSError in a command: one line, the chat goes on
        "Third question",
    ]
    rc = _chat(monkeypatch, model, script)
    out = capsys.readouterr().out
    assert rc == 0
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 2, out
    assert errors[0].endswith(
        "error: RuntimeError: CUDA out of memory. Tried to allocate (1 attachment(s) dropped)"
    )
    assert "file.txt" in errors[1]
    assert len(model.calls) == 3
    # the failed turn (and its attachment) is not in the history of the next turns
    assert model.calls[1] == [{"role": "user", "content": ["Second question"]}]
    assert [m["content"] for m in model.calls[2] if m["role"] == "user"] == [
        ["Second question"],
        ["Third question"],
    ]

    # Ctrl-C during a turn still ends the chat (through main: "interrupted", status 130)
    model = ScriptedModel(tiny_chat_model, fail={1: KeyboardInterrupt()})
    monkeypatch.setattr("nextgpt.cli._load_model", lambda args: model)
    monkeypatch.setattr("sys.stdin", io.StringIO("one\ntwo\nthree\n"))
    assert main(["chat", "--max-new-tokens", "2", "--modalities", "text"]) == 130
    captured = capsys.readouterr()
    assert "interrupted" in captured.err and "Traceback" not in captured.err
    assert len(model.calls) == 2  # "three" was never sent


def test_serve_limit_options_match_the_web_defaults() -> None:
    from nextgpt import web

    args = build_parser().parse_args(["serve"])
    assert args.session_ttl_minutes * 60 == web.DEFAULT_SESSION_TTL_S
    assert args.max_disk_mb * 2**20 == web.DEFAULT_MAX_TOTAL_BYTES
    assert args.max_upload_mb == web.DEFAULT_MAX_UPLOAD_MB
    assert args.max_media_seconds == web.DEFAULT_MAX_MEDIA_SECONDS
    assert (args.host, args.port, args.share) == (web.DEFAULT_HOST, web.DEFAULT_PORT, False)


def test_serve_passes_every_option_to_web_serve(monkeypatch) -> None:
    import inspect

    from nextgpt import web

    options = set(inspect.signature(web.serve).parameters)
    calls = []
    monkeypatch.setattr(web, "serve", lambda *a, **kw: calls.append((a, kw)))
    argv = ["serve", "--preset", "tiny", "--override", "model.llm.lora.r=4", "--device", "cpu"]
    argv += ["--host", "0.0.0.0", "--port", "8123", "--share", "--max-upload-mb", "1.5"]
    argv += ["--max-media-seconds", "12", "--session-ttl-minutes", "2", "--max-disk-mb", "64"]
    argv += ["--output-dir", "sessions"]
    assert main(argv) == 0
    assert calls == [
        (
            (),
            {
                "preset": "tiny",
                "model_dir": None,
                "overrides": ["model.llm.lora.r=4"],
                "device": "cpu",
                "host": "0.0.0.0",
                "port": 8123,
                "share": True,
                "max_upload_mb": 1.5,
                "max_media_seconds": 12.0,
                "output_dir": "sessions",
                "session_ttl_s": 120.0,
                "max_total_mb": 64.0,
            },
        )
    ]
    # every option of web.serve but `block` has its flag
    assert options - set(calls[0][1]) == {"block"}


def test_serve_refuses_overrides_of_a_saved_model_before_loading(monkeypatch, tmp_path, capsys) -> None:
    from nextgpt import web

    monkeypatch.setattr(web, "serve", lambda *a, **kw: pytest.fail("serve was called"))
    assert main(["serve", "--model", str(tmp_path), "--override", "a=b"]) == 2
    assert _error_lines(capsys.readouterr().err) == [
        "error: --override applies to presets; a saved model carries its own config"
    ]


def test_demo_runs_the_main_job_on_a_preset(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("preset tiny built in ")
    assert "[text -> text]" in stdout and "[text -> text + image + audio + video" in stdout
    saved = {p.name for p in out.iterdir()}
    assert {"cat_image0.png", "cat_audio0.wav", "cat_video0.mp4"} <= saved
    assert all(f"saved {out / name}" in stdout for name in saved)


# ------------------------------------------------------------------ data, train, import-legacy


def test_data_demo_then_train_stage1(tmp_path, capsys) -> None:
    data = tmp_path / "demo"
    assert main(["data", "demo", "--out", str(data)]) == 0
    out = capsys.readouterr().out
    assert f"pairs: 3 shard(s) in {data / 'pairs'}" in out
    assert f"conversations: 2 shard(s) in {data / 'conversations'}" in out
    assert (data / "manifest.json").is_file()

    run = tmp_path / "run"
    argv = ["train", "--stage", "1", "--preset", "tiny", "--data", str(data), "--out", str(run)]
    argv += ["--override", "training.max_steps=2", "--override", "training.num_workers=0"]
    assert main(argv) == 0
    model_dir = run / "stage1" / "model"
    assert f"stage 1 finished: model saved in {model_dir}" in capsys.readouterr().out
    assert (run / "stage1" / "checkpoints" / "last.ckpt").is_file()
    trained = NextGPT.from_pretrained(model_dir)
    fresh = NextGPT.from_preset("tiny")
    assert trained.config.training.stage == 1 and trained.config.training.max_steps == 2
    # stage 1 trains the input projector: its saved weights moved away from the seeded init
    a, b = trained.trainable_state_dict(), fresh.trainable_state_dict()
    moved = [k for k in a if k.startswith("input_projector.") and not torch.equal(a[k], b[k])]
    assert moved
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("output_projectors."))


def test_import_legacy_writes_a_loadable_model(tmp_path, capsys) -> None:
    from test_legacy import LEGACY_OVERRIDES, synthetic_legacy_state

    cfg = NextGPTConfig.from_preset("tiny").with_overrides(LEGACY_OVERRIDES)
    state = synthetic_legacy_state(cfg)
    ckpt = tmp_path / "pytorch_model.pt"
    torch.save(state, ckpt)
    out = tmp_path / "imported"
    argv = ["import-legacy", str(ckpt), "--out", str(out), "--preset", "tiny"]
    for o in LEGACY_OVERRIDES:
        argv += ["--override", o]
    assert main(argv) == 0
    assert f"imported {ckpt} -> {out}" in capsys.readouterr().out
    model = NextGPT.from_pretrained(out)
    assert model.config.model.llm.template == "vicuna_v0"
    weights = model.trainable_state_dict()
    torch.testing.assert_close(weights["input_projector.proj.weight"], state["llama_proj.weight"].float())
    torch.testing.assert_close(
        weights["output_projectors.audio.query_embs"], state["gen_text_hidden_fcs_audio.0.query_embs"].float()
    )


# ------------------------------------------------------------------ help


HELP = {
    (): ["generate", "chat", "import-legacy", "serve", "demo", "data", "cache", "train", "--verbose"],
    ("generate",): ["prompt", "--image", "--audio", "--video", "--out", "--preset", "--model", "--override"]
    + ["--modalities", "--seed", "--max-new-tokens", "--steps", "--guidance", "--device"],
    ("chat",): ["--preset", "--model", "--override", "--modalities", "--seed", "--max-new-tokens"],
    ("import-legacy",): ["checkpoint", "--out", "--preset", "--override"],
    ("serve",): ["--preset", "--model", "--host", "--port", "--session-ttl-minutes", "--max-disk-mb"]
    + ["--override", "--device", "--share", "--max-upload-mb", "--max-media-seconds", "--output-dir"],
    ("demo",): ["--preset", "--out", "--seed"],
    ("data",): ["convert", "demo"],
    ("data", "convert"): ["format", "--input", "--media-dir", "--out", "--max-per-shard"],
    ("data", "demo"): ["--out", "--seed"],
    ("cache",): ["encoder", "captions", "--data", "--out", "--stage", "--preset", "--override"],
    ("train",): ["--stage", "--preset", "--data", "--out", "--init-from", "--no-resume", "--override"],
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "nextgpt")
def test_help_exits_zero_and_lists_options(command, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: nextgpt {' '.join(command)}".rstrip())
    missing = [opt for opt in HELP[command] if opt not in text]
    assert not missing, f"help of {command} lacks {missing}"


def test_console_script_help_in_a_subprocess(tmp_path) -> None:
    res = _run_cli("--help", cwd=tmp_path)
    assert res.returncode == 0 and "import-legacy" in res.stdout


def test_no_command_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "the following arguments are required: command" in capsys.readouterr().err
