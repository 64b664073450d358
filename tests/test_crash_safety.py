"""Crashes at the worst moment: saved-model folders that are one save or the other, never a mix;
loads that refuse non-finite or non-floating weights; a damaged ``last.ckpt`` that falls back to the
checkpoint before it; metrics rows that survive kill -9.

A crash is simulated as kill -9 would do it: in a forked child that ends with ``os._exit`` (no
``finally``, no ``except``, no flush) at a chosen line of the save code, for every line in turn.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nextgpt import CheckpointError, NextGPT
from nextgpt.stages.data import build_demo_dataset

ROOT = Path(__file__).resolve().parents[1]
SAVE_CODE = {str(ROOT / "nextgpt" / "checkpoint.py"), str(ROOT / "nextgpt" / "model.py")}
#: The functions that write the folder (old and new code); their callees elsewhere run untraced.
SAVE_FUNCTIONS = {"save_pretrained", "write_model_folder", "_exchange", "_fsync", "file_sha256"}


@pytest.fixture(scope="module")
def pair() -> tuple[NextGPT, NextGPT]:
    """Two tiny models that differ in config (``training.seed``) and in every trainable tensor."""
    a = NextGPT.from_preset("tiny")
    b = NextGPT.from_preset("tiny", ["training.seed=7"])
    with torch.no_grad():
        for p in b.trainable_state_dict().values():
            p.add_(0.5)
    return a, b


def _fingerprint(model: NextGPT) -> tuple[int, float]:
    state = model.trainable_state_dict()
    return model.config.training.seed, float(sum(v.double().sum() for v in state.values()))


def _in_save_code(code) -> bool:
    return code.co_filename in SAVE_CODE and code.co_name in SAVE_FUNCTIONS


def _kill_at(line_number: int, save, traced=_in_save_code) -> int:
    """Run ``save()`` in a forked child that dies (``os._exit(9)``) at the ``line_number``-th line
    executed in code objects ``traced`` selects; returns the child's exit code (0: the save finished
    first)."""
    pid = os.fork()
    if pid == 0:  # child: no pytest machinery runs here, whatever happens
        count = 0

        def tracer(frame, event, arg):
            nonlocal count
            if not traced(frame.f_code):
                return None
            if event == "line":
                count += 1
                if count == line_number:
                    os._exit(9)
            return tracer

        try:
            sys.settrace(tracer)
            save()
            sys.settrace(None)
        except BaseException:
            os._exit(3)
        os._exit(0)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the save hung in the forked child")
        time.sleep(0.005)


def test_a_save_killed_at_any_line_leaves_one_whole_model(pair, tmp_path: Path) -> None:
    """Re-saving B over A and killed at every line of the save in turn: the folder always loads, as
    exactly A or exactly B (config and weights from one save), and the save leaves no litter once a
    later save completes. The old save (config written in place, then the weights) left A's weights
    under B's config after a kill between the two, and that folder loaded without a word."""
    a, b = pair
    want = {_fingerprint(a): "A", _fingerprint(b): "B"}
    folder = tmp_path / "model"
    seen = []
    line = 1
    while True:
        a.save_pretrained(folder)
        code = _kill_at(line, lambda: b.save_pretrained(folder))
        assert code in (0, 9), f"the save failed (exit {code}) at line {line}"
        got = want.get(_fingerprint(NextGPT.from_pretrained(folder)))
        assert got is not None, f"killed at line {line}: the folder loads a mix of the two saves"
        seen.append(got)
        if code == 0:
            break
        line += 1
    assert line > 20 and seen[0] == "A" and seen[-1] == "B", seen
    a.save_pretrained(folder)  # a complete save cleans up what the killed ones left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_a_folder_mixed_from_two_saves_is_refused(pair, tmp_path: Path) -> None:
    a, b = pair
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.yaml").write_bytes((tmp_path / "a" / "config.yaml").read_bytes())
    with pytest.raises(CheckpointError, match="config.yaml is not the file its manifest"):
        NextGPT.from_pretrained(tmp_path / "b")
    b.save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "config.yaml").write_text("")  # the empty config a killed in-place write left
    with pytest.raises(CheckpointError, match="do not come from one save"):
        NextGPT.from_pretrained(tmp_path / "b")


def test_saving_over_a_folder_with_other_files_is_refused(pair, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"refusing to replace .*notes\.txt"):
        pair[0].save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "poison, match",
    [
        (lambda v: v.fill_(float("nan")), "NaN or inf"),
        (lambda v: v.fill_(float("inf")), "NaN or inf"),
        (lambda v: v.to(torch.int64), "non-floating dtype"),
    ],
)
def test_non_finite_or_integer_weights_are_refused(pair, tmp_path: Path, poison, match) -> None:
    """Saved through the library (so the manifest is right), with one tensor poisoned: the old
    loader took NaN and int64 tensors silently (an int64 tensor was cast, NaN spread to every
    output)."""
    a = pair[0]
    state = {k: v.detach().clone() for k, v in a.trainable_state_dict().items()}
    key = next(k for k in state if k.startswith("output_projectors."))
    state[key] = poison(state[key])
    a.save_pretrained(tmp_path / "m", state=state)
    with pytest.raises(CheckpointError, match=match) as err:
        NextGPT.from_pretrained(tmp_path / "m")
    assert key in str(err.value)
    before = _fingerprint(a)
    with pytest.raises(CheckpointError, match=match):
        a.load_trainable_state(state, what="poisoned")
    assert _fingerprint(a) == before  # a refused state changes nothing


# ------------------------------------------------------------------ training runs killed


_KILLED_RUN = """
import os, sys
import lightning as L
from nextgpt.stages.train import train

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(sys.argv[3]):
            os._exit(9)  # as kill -9: no handler, no flush

train(1, "tiny", sys.argv[1], sys.argv[2], ["training.num_workers=0", "training.log_every_n_steps=1",
      "training.checkpoint_every_n_steps=4"], max_steps=14, callbacks=[Kill()])
"""


def _rows(version: Path) -> list[dict]:
    with open(version / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_metrics_rows_survive_a_kill_while_the_file_is_rewritten(tmp_path: Path) -> None:
    """Lightning's CSV writer rewrites metrics.csv whole when a new column appears (a metric logged
    for the first time late in the run, such as the epoch totals): the old writer truncated the file
    and refilled it in place, so a kill inside that rewrite lost every earlier row. Killed at every
    line of the rewrite in turn, the rows already written must all still be there."""
    from nextgpt.config import NextGPTConfig
    from nextgpt.stages.train import build_trainer

    trainer = build_trainer(NextGPTConfig.from_preset("tiny"), tmp_path / "run", max_steps=1)
    logger = trainer.loggers[0]
    for step in range(50):
        logger.log_metrics({"train/loss": 1.0 + step}, step=step)
    logger.save()
    path = Path(logger.experiment.metrics_file_path)
    pristine = path.read_bytes()
    code_files = {
        str(ROOT / "stages" / "train.py"),
        logger.experiment.__class__._rewrite_with_new_header.__code__.co_filename,
    }

    def rewrite() -> None:
        logger.log_metrics({"train/loss": 0.0, "data/seen": 3.0}, step=50)  # a new column
        logger.save()

    line = 1
    while True:
        path.write_bytes(pristine)
        code = _kill_at(line, rewrite, lambda c: c.co_filename in code_files)
        assert code in (0, 9), code
        with open(path, newline="") as f:
            steps = [int(r["step"]) for r in csv.DictReader(f)]
        assert steps[:50] == list(range(50)), (
            f"killed at line {line} of the rewrite: rows lost ({len(steps)} left)"
        )
        if code == 0:
            assert steps == list(range(51))
            break
        line += 1
    assert line > 5


@pytest.mark.slow
def test_killed_run_keeps_its_metrics_and_a_damaged_last_checkpoint_falls_back(tmp_path: Path) -> None:
    """kill -9 at the end of step 10, before its row: every logged row (steps 0-9) is on disk, with
    running totals of the samples seen and dropped (over all ranks, exact in every row; the old
    per-step ``train/skipped_samples`` was logged only when non-zero and summing it over-counted).
    ``last.ckpt`` (step 8) is then
    truncated, as a full disk or a partial copy leaves it: the rerun warns and resumes from
    ``previous.ckpt`` (step 4) instead of failing with a raw RuntimeError, and ends at the same step
    count. With both checkpoints damaged
    the rerun stops with a CheckpointError that says what to do."""
    from nextgpt.stages.train import train

    data = tmp_path / "data"
    build_demo_dataset(data, seed=0)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(data), str(out), "11"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 9, proc.stderr[-3000:]
    run = out / "stage1"
    rows = _rows(run / "logs" / "version_0")
    steps = sorted({int(r["step"]) for r in rows if r.get("train/loss")})
    assert steps == list(range(10)), steps  # every row logged before the kill (step 10 died first)
    seen = [float(r["data/seen_so_far"]) for r in rows if r.get("data/seen_so_far")]
    assert seen == sorted(seen) and seen[0] > 0  # running totals, exact in every row

    ckpts = run / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and (ckpts / "previous.ckpt").is_file()
    data_bytes = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data_bytes[: len(data_bytes) // 2])
    overrides = [
        "training.num_workers=0",
        "training.log_every_n_steps=1",
        "training.checkpoint_every_n_steps=4",
    ]
    train(1, "tiny", data, out, overrides, max_steps=14)
    resumed = _rows(run / "logs" / "version_1")
    resumed_steps = sorted({int(r["step"]) for r in resumed if r.get("train/loss")})
    assert resumed_steps == list(range(4, resumed_steps[-1] + 1)), resumed_steps  # from previous.ckpt
    assert resumed_steps[-1] >= 10  # to the end of the epoch, as the killed attempt would have gone
    assert not any("train/skipped_samples" in r for r in resumed)
    end = [r for r in resumed if r.get("data/seen")]
    last_running = [r for r in resumed if r.get("data/seen_so_far")][-1]
    assert len(end) == 1 and float(end[0]["data/seen"]) == float(last_running["data/seen_so_far"])
    assert float(end[0]["data/dropped"]) == float(last_running["data/dropped_so_far"])

    for name in ("last.ckpt", "previous.ckpt"):
        (ckpts / name).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match=r"no checkpoint there can be read.*Delete"):
        train(1, "tiny", data, out, overrides, max_steps=16)
