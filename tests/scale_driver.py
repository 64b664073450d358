"""Run one training stage the way `nextgpt train` does, recording what the multi-process tests check.

Usage: ``python tests/scale_driver.py SPEC.json``. Lightning's launcher re-runs this same command for
every other rank. ``SPEC``: ``{"stage", "preset", "data", "out", "overrides": [...], "record": dir,
"sleep_per_step": seconds}``. Each rank appends one JSON line per optimiser step to
``<record>/rank<R>.jsonl`` (global step, local loss, learning rate, a hash of the torch random state)
and, when the stage ends, writes ``<record>/rank<R>-final.json`` (steps, the schedule's total and its
final LR) and ``<record>/rank<R>-trainable.safetensors`` (the rank's trainable tensors, gathered when
sharded). Lines are flushed at once, so a killed run leaves what it did.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning as L  # noqa: E402
import torch  # noqa: E402


def rng_hash() -> str:
    return hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()[:16]


class Recorder(L.Callback):
    def __init__(self, record: Path, sleep: float) -> None:
        self.record, self.sleep = record, sleep

    def _path(self, trainer, suffix: str) -> Path:
        return self.record / f"rank{trainer.global_rank}{suffix}"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        row = {
            "step": int(trainer.global_step),
            "batch": int(batch_idx),
            "loss": float(loss) if loss is not None else None,
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            "rng": rng_hash(),
            "empty": bool(batch.is_empty),
        }
        with open(self._path(trainer, ".jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.sleep:
            time.sleep(self.sleep)

    def on_train_end(self, trainer, pl_module) -> None:
        from safetensors.torch import save_file

        from nextgpt.stages.parallel import gathered_trainable_state

        sched = trainer.lr_scheduler_configs[0].scheduler
        state = gathered_trainable_state(pl_module.model)  # a collective when sharded
        save_file(state, str(self._path(trainer, "-trainable.safetensors")))
        final = {
            "global_step": int(trainer.global_step),
            "total_steps": int(pl_module._total_steps()),
            "scheduler_steps": int(sched.last_epoch),
            "final_lr": float(sched.get_last_lr()[0]),
            "world_size": int(trainer.world_size),
        }
        self._path(trainer, "-final.json").write_text(json.dumps(final))


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    from nextgpt.stages.train import train

    record = Path(spec["record"])
    record.mkdir(parents=True, exist_ok=True)
    train(
        spec["stage"],
        spec.get("preset", "tiny"),
        spec["data"],
        spec["out"],
        spec.get("overrides", []),
        callbacks=[Recorder(record, float(spec.get("sleep_per_step", 0.0)))],
    )


if __name__ == "__main__":
    main()
