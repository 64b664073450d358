"""Sequence packing and length grouping (``training.stages.N.packing`` / ``group_by_length``).

A packed batch holds the same samples as the padded one, several per row, with positions restarting
per sample. The LLM must then attend within each sample only, so every loss and every gradient of
the packed batch equals the padded batch's. Tolerances: float32 ``rtol=1e-5, atol=1e-6`` (the two
layouts only sum in another order: matmuls over another number of rows); bf16 autocast ``rtol=2e-2,
atol=2e-3`` on the losses (bf16 keeps 8 bits of mantissa; the same rounding differences, larger).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from nextgpt import NextGPT, NextGPTConfig
from nextgpt.errors import ConfigError
from nextgpt.processor import IGNORE_INDEX
from nextgpt.stages.batch import Collator, pack_rows
from nextgpt.stages.data import ShardDataset
from nextgpt.stages.data.schema import DroppedSample
from nextgpt.stages.datamodule import LengthGroupedDataset, stage_shards
from nextgpt.stages.modules import StageModule

NO_NOISE = ["model.input_projector.grouping.gumbel=false"]
F32 = dict(rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ the row layout


def test_pack_rows_places_every_sample_once_in_fewer_tokens_than_padding() -> None:
    rng = random.Random(0)
    for _ in range(300):
        lengths = [rng.randint(1, 50) for _ in range(rng.randint(1, 30))]
        capacity = rng.randint(50, 160)
        rows = pack_rows(lengths, capacity)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        loads = [sum(lengths[i] for i in row) for row in rows]
        assert max(loads) <= capacity
        assert len(rows) * max(loads) <= len(lengths) * max(lengths)  # never more than padded
        assert all(row == sorted(row) for row in rows) and [r[0] for r in rows] == sorted(r[0] for r in rows)
        assert pack_rows(lengths, capacity) == rows  # deterministic
        if sum(lengths) <= capacity:  # one row would hold all: no padding at all (maybe in 2 equal rows)
            assert len(rows) * max(loads) == sum(lengths)
    assert pack_rows([5, 3, 4], 4) == [[0], [1], [2]]  # longer than a row: one row of its own
    assert pack_rows([3, 3, 2, 2], 5) == [[0, 2], [1, 3]]  # balanced: two rows of 5
    assert pack_rows([6, 1, 1, 1, 1], 100) == [[0, 1, 2, 3, 4]]
    assert pack_rows([4, 4, 4], 8) == [[0], [1], [2]]  # 2 rows would take 2 x 8 tokens, 3 take 12
    assert pack_rows([], 10) == []


# ------------------------------------------------------------------ packed == padded


def _samples(data: Path, stage: int, n: int) -> list:
    names = ["conversations"] if stage == 3 else ["pairs"]
    out = list(ShardDataset(stage_shards(data, stage, names), stage, decode_output_media=False))
    return out[:n]


def _collators(model: NextGPT, stage: int, pack_length: int | None = None) -> tuple[Collator, Collator]:
    tok = model.processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return (
        Collator(model.processor, 512, pad),
        Collator(model.processor, 512, pad, packing=True, pack_length=pack_length),
    )


def _losses_and_grads(module: StageModule, batch, autocast: torch.dtype | None = None):
    module.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        losses = module(batch)
    losses["loss"].backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return {k: v.detach().float() for k, v in losses.items() if v.ndim == 0}, grads


@pytest.mark.parametrize(("stage", "attention"), [(1, "sdpa"), (2, "sdpa"), (3, "sdpa"), (3, "eager")])
def test_packed_batch_gives_the_padded_losses_and_gradients(
    stage: int, attention: str, demo_data: Path
) -> None:
    """Stage 1 (media in, caption out), 2 (caption in, signal runs out, alignment losses) and 3
    (conversations with media on both sides), with torch's SDPA and with eager attention: the batch
    packed into rows of 1024 tokens (2-4 of the tiny byte-level tokenizer's samples a row) has the
    padded batch's losses and gradients."""
    cfg = NextGPTConfig.from_preset("tiny").with_overrides([*NO_NOISE, f"model.llm.attention={attention}"])
    model = NextGPT(cfg)
    assert model.llm._causal_lm().config._attn_implementation == attention
    module = StageModule(cfg, stage, model).train()
    padded_collator, packed_collator = _collators(model, stage, pack_length=1024)
    samples = _samples(demo_data, stage, 8)
    padded, packed = padded_collator(samples), packed_collator(samples)
    assert packed.packed and not padded.packed
    assert sorted(packed.keys) == sorted(padded.keys) and len(packed.keys) == 8
    assert packed.num_rows < padded.num_rows  # several samples per row
    assert packed.num_tokens == padded.num_tokens  # the same sample tokens ...
    assert packed.input_ids.numel() < padded.input_ids.numel()  # ... with less padding
    if stage >= 2:
        assert sum(len(r) for r in packed.outputs) == sum(len(r) for r in padded.outputs) > 0
    want, want_grads = _losses_and_grads(module, padded)
    got, got_grads = _losses_and_grads(module, packed)
    assert want.keys() == got.keys() and want["lm_loss"] > 0
    for k in want:
        torch.testing.assert_close(got[k], want[k], **F32, msg=lambda m, k=k: f"{k}: {m}")
    assert want_grads.keys() == got_grads.keys() and want_grads
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], **F32, msg=lambda m, k=k: f"{k}: {m}")


def test_attention_leaking_across_samples_would_be_caught(demo_data: Path) -> None:
    """The comparison above can fail: the packed rows given to the LLM with a plain causal mask
    (each sample also attending to the samples before it in its row) change the loss."""
    cfg = NextGPTConfig.from_preset("tiny").with_overrides(NO_NOISE)
    model = NextGPT(cfg)
    module = StageModule(cfg, 1, model).train()
    padded_collator, packed_collator = _collators(model, 1, pack_length=1024)
    samples = _samples(demo_data, 1, 8)
    padded, packed = padded_collator(samples), packed_collator(samples)
    with torch.no_grad():
        want = module(padded)["lm_loss"]
        assert torch.allclose(module(packed)["lm_loss"], want, **F32)
        packed.position_ids = None  # the attention mask then covers whole rows
        leaked = module(packed)["lm_loss"]
    assert not torch.allclose(leaked, want, **F32), (leaked, want)


def test_packed_matches_padded_with_sentencepiece_under_bf16_autocast(
    tmp_path: Path, demo_data: Path
) -> None:
    """The real SentencePiece LLaMA tokenizer (bos per sample, byte fallback) with a bf16 LLM under
    bf16 autocast, as nextgpt-7b trains: stage-2 losses of the packed batch match the padded ones."""
    from sp_fixtures import V15_TOKENIZER_CONFIG, make_llama_folder, overrides

    folder = make_llama_folder(tmp_path / "v15", tokenizer_config=V15_TOKENIZER_CONFIG)
    cfg = NextGPTConfig.from_preset("tiny").with_overrides(
        [*overrides(folder, "vicuna_v1"), *NO_NOISE, "model.llm.dtype=bfloat16"]
    )
    model = NextGPT(cfg)
    module = StageModule(cfg, 2, model).train()
    padded_collator, packed_collator = _collators(model, 2)
    samples = _samples(demo_data, 2, 6)
    padded, packed = padded_collator(samples), packed_collator(samples)
    assert packed.num_rows < padded.num_rows == 6
    bos = model.processor.tokenizer.bos_token_id
    starts = [
        (b, s)
        for b in range(packed.num_rows)
        for s in (packed.position_ids[b] == 0).nonzero().flatten().tolist()
        if packed.attention_mask[b, s]
    ]
    assert [int(packed.input_ids[b, s]) for b, s in starts] == [bos] * 6  # every sample starts itself
    want, _ = _losses_and_grads(module, padded, torch.bfloat16)
    got, _ = _losses_and_grads(module, packed, torch.bfloat16)
    for k in ("lm_loss", "align_loss", "loss"):
        torch.testing.assert_close(got[k], want[k], rtol=2e-2, atol=2e-3, msg=lambda m, k=k: f"{k}: {m}")


def test_packed_layout_keeps_each_sample_whole(demo_data: Path, tiny_model: NextGPT) -> None:
    """Positions restart at each sample, a sample's first token is never a target, the padding after
    the last sample is unlabelled, and every row's labels are the samples' own labels."""
    padded_collator, packed_collator = _collators(tiny_model, 3, pack_length=1024)
    samples = _samples(demo_data, 3, 6)
    packed = packed_collator(samples)
    singles = {s.key: padded_collator([s]) for s in samples}
    k = 0
    for b in range(packed.num_rows):
        pos, ids, labels = packed.position_ids[b], packed.input_ids[b], packed.labels[b]
        starts = (pos == 0).nonzero().flatten().tolist()
        n_real = int(packed.attention_mask[b].sum())
        for a, z in zip(starts, [*starts[1:], len(pos)]):
            if a >= n_real:  # the padding segment
                assert bool((labels[a:] == IGNORE_INDEX).all())
                break
            one = singles[packed.keys[k]]
            k += 1
            assert torch.equal(ids[a:z], one.input_ids[0]) and torch.equal(pos[a:z], torch.arange(z - a))
            assert labels[a] == IGNORE_INDEX and torch.equal(labels[a + 1 : z], one.labels[0, 1:])
    assert k == len(samples)


def test_a_sample_start_is_never_predicted_from_the_sample_before(demo_data: Path, monkeypatch) -> None:
    """A template whose first token is a target (labels[0] set): in its own row nothing predicts it
    (the loss shifts by one), so in a packed row the previous sample's last token must not either."""
    cfg = NextGPTConfig.from_preset("tiny").with_overrides(NO_NOISE)
    model = NextGPT(cfg)
    encode = model.processor.encode

    def first_token_labelled(*args, **kwargs):
        enc = encode(*args, **kwargs)
        enc.labels[0] = enc.input_ids[0]
        return enc

    monkeypatch.setattr(model.processor, "encode", first_token_labelled)
    module = StageModule(cfg, 1, model).train()
    padded_collator, packed_collator = _collators(model, 1, pack_length=1024)
    samples = _samples(demo_data, 1, 8)
    padded, packed = padded_collator(samples), packed_collator(samples)
    assert packed.num_rows < padded.num_rows
    with torch.no_grad():
        torch.testing.assert_close(module(packed)["lm_loss"], module(padded)["lm_loss"], **F32)


def test_labelled_positions_only_logits_give_the_full_cross_entropy(
    tiny_model: NextGPT, demo_data: Path
) -> None:
    """The LM head runs only where a label is; the loss is the mean cross-entropy over the labelled
    tokens of the full logits."""
    padded_collator, _ = _collators(tiny_model, 1)
    batch = padded_collator(_samples(demo_data, 1, 4))
    module = StageModule(tiny_model.config, 1, tiny_model).eval()
    with torch.no_grad():
        got = module(batch)["lm_loss"]
        media, _ = tiny_model.project_inputs(
            batch.slot_modalities,
            batch.media and {m: tiny_model.media_features(m, x) for m, x in batch.media.items()},
        )
        embeds = tiny_model.embed_inputs(batch.input_ids, media)
        logits = tiny_model.llm(embeds, batch.attention_mask).logits[:, :-1].float()
        want = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
        )
    torch.testing.assert_close(got, want, **F32)


# ------------------------------------------------------------------ through the training loop


def _loss_rows(run_dir: Path) -> list[float]:
    import csv

    by_step: dict[int, float] = {}
    for version in sorted((run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1])):
        with open(version / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row.get("train/loss"):
                    by_step[int(row["step"])] = float(row["train/loss"])
    return [by_step[s] for s in sorted(by_step)]


@pytest.mark.slow
def test_packed_training_takes_the_padded_steps_and_resumes_exactly(demo_data: Path, tmp_path: Path) -> None:
    """Stage 2 through Lightning, packed (rows of 1024 byte-level tokens) and padded: the same number of
    steps and the same per-step losses (the packed batches hold the same samples); a packed run killed
    after step 3 and run again repeats the straight run's losses."""
    import lightning as L

    from nextgpt.stages.train import train

    fast = [
        "training.num_workers=0",
        "training.log_every_n_steps=1",
        "training.checkpoint_every_n_steps=2",
        *NO_NOISE,
    ]
    assert NextGPTConfig.from_preset("nextgpt-7b").training.stages[2].packing  # on in the GPU presets
    packed_run = [*fast, "training.stages.2.packing=true", "training.stages.2.pack_length=1024"]

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 3:
                raise RuntimeError("simulated crash")

    train(2, "tiny", demo_data, tmp_path / "packed", packed_run, max_steps=5)
    train(2, "tiny", demo_data, tmp_path / "padded", [*fast, "training.stages.2.packing=false"], max_steps=5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(2, "tiny", demo_data, tmp_path / "crashed", packed_run, max_steps=5, callbacks=[Crash()])
    train(2, "tiny", demo_data, tmp_path / "crashed", packed_run, max_steps=5)
    packed, padded = _loss_rows(tmp_path / "packed" / "stage2"), _loss_rows(tmp_path / "padded" / "stage2")
    assert len(packed) == len(padded) == 5
    assert packed == pytest.approx(padded, rel=1e-4, abs=1e-5)
    assert _loss_rows(tmp_path / "crashed" / "stage2") == pytest.approx(packed, abs=1e-6)


# ------------------------------------------------------------------ length grouping


class _Stream:
    """A stand-in for ShardDataset: items with a length, one worker."""

    def __init__(self, lengths: list[int]) -> None:
        self.lengths = lengths
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def worker_position(self) -> tuple[int, int]:
        return 0, 1

    def batches_per_rank(self, batch_size: int, num_workers: int) -> int:
        return -(-len(self.lengths) // batch_size)

    def __iter__(self):
        return iter(range(len(self.lengths)))


def test_length_grouping_keeps_every_item_and_cuts_the_padding() -> None:
    rng = random.Random(1)
    lengths = [rng.randint(10, 200) for _ in range(203)]
    stream = _Stream(lengths)
    grouped = LengthGroupedDataset(stream, lambda i: lengths[i], batch_size=4, window_batches=8, seed=0)
    order = list(grouped)
    assert sorted(order) == list(range(203))  # nothing lost, nothing repeated
    assert order == list(grouped)  # the same order again (exact resume)
    grouped.set_epoch(1)
    assert list(grouped) != order and stream.epoch == 1  # another epoch, another order

    def padded_tokens(seq):
        return sum(
            max(lengths[i] for i in seq[k : k + 4]) * len(seq[k : k + 4]) for k in range(0, len(seq), 4)
        )

    assert padded_tokens(order) < 0.75 * padded_tokens(list(range(203)))
    assert padded_tokens(order) < 1.15 * sum(lengths)
    windows = [order[k : k + 32] for k in range(0, 203, 32)]
    assert [sorted(w) for w in windows] == [list(range(k, min(k + 32, 203))) for k in range(0, 203, 32)]
    assert len(order[200:]) == 3 and grouped.batches_per_rank(4, 0) == 51  # the short batch comes last


def test_length_of_a_dropped_sample_is_zero(tiny_model: NextGPT, demo_data: Path) -> None:
    padded_collator, _ = _collators(tiny_model, 1)
    sample = _samples(demo_data, 1, 1)[0]
    assert padded_collator.length(sample) == padded_collator([sample]).input_ids.shape[1]
    assert padded_collator.length(DroppedSample("k", "u", "decode", "bad")) == 0


@pytest.mark.slow
def test_grouped_stage3_trains_through_the_data_module(demo_data: Path, tmp_path: Path) -> None:
    """``group_by_length`` through Lightning: the epoch has the ungrouped run's length and every
    batch of the loader is a length group of its window."""
    from nextgpt.stages.datamodule import NextGPTDataModule
    from nextgpt.stages.train import train

    over = [
        "training.num_workers=0",
        "training.stages.3.group_by_length=true",
        "training.length_group_batches=4",
    ]
    cfg = NextGPTConfig.from_preset("tiny").with_overrides(over)
    model = NextGPT(cfg)
    dm = NextGPTDataModule(cfg, 3, model.processor, demo_data)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 20  # 40 conversations, batch 2
    collator = dm.collator()
    spreads = [b.input_ids.shape[1] - min(int(r.sum()) for r in b.attention_mask) for b in batches]
    plain = NextGPTDataModule(
        cfg.with_overrides(["training.stages.3.group_by_length=false"]), 3, model.processor, demo_data
    )
    plain_spreads = [
        b.input_ids.shape[1] - min(int(r.sum()) for r in b.attention_mask) for b in plain.train_dataloader()
    ]
    assert sum(spreads) < sum(plain_spreads)
    assert collator.packing is False
    train(3, "tiny", demo_data, tmp_path, over, max_steps=3)
    assert len(_loss_rows(tmp_path / "stage3")) == 3


def test_packing_and_grouping_together_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="group_by_length"):
        NextGPTConfig.from_preset("tiny").with_overrides(
            ["training.stages.1.packing=true", "training.stages.1.group_by_length=true"]
        )
    with pytest.raises(ConfigError, match="pack_length"):
        NextGPTConfig.from_preset("tiny").with_overrides(["training.stages.1.pack_length=0"])


def test_flash_attention_without_cuda_is_a_config_error() -> None:
    from nextgpt.llm import _check_attention

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: flash attention may well run")
    with pytest.raises(ConfigError, match="model.llm.attention=flash_attention_2 needs a CUDA GPU"):
        NextGPT(NextGPTConfig.from_preset("tiny").with_overrides(["model.llm.attention=flash_attention_2"]))
    _check_attention("sdpa")
