"""What a real training run needs that fp32, one process and tiny shapes hide (single-process parts):
every preset's structure under bf16-mixed and 16-mixed, decoders that follow the model's device and
dtype, exact epoch lengths, counted and bounded sample drops, truncation that keeps signal runs
whole, checkpoints read without unpickling, per-rank random streams, and strategies refused with a
reason. The multi-process parts are in ``tests/test_scale.py``."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from nextgpt import NextGPT
from nextgpt.config import NextGPTConfig
from nextgpt.errors import CheckpointError, ConfigError, InputError
from nextgpt.modality import Modality
from nextgpt.stages.batch import Collator
from nextgpt.stages.modules import StageModule

PRESETS = ("tiny", "small", "nextgpt-7b", "nextgpt-7b-legacy", "qwen2.5-7b")


def tiny_shaped(preset: str) -> NextGPTConfig:
    """``preset``'s structure at tiny size: its projector kind, dtypes, LLM architecture and template,
    token-row policy,
    wrappers, tied embeddings, LoRA dropout, gradient checkpointing, precision and clipping; tiny's
    widths, random weights and byte tokenizer (which has no chat template: ``chat_template`` presets
    run ``vicuna_v1`` here)."""
    src = NextGPTConfig.from_preset(preset).to_dict()
    out = NextGPTConfig.from_preset("tiny").to_dict()
    sm, om = src["model"], out["model"]
    om["encoder"]["dtype"] = sm["encoder"]["dtype"]
    om["input_projector"]["kind"] = sm["input_projector"]["kind"]
    om["input_projector"]["sum_items"] = sm["input_projector"]["sum_items"]
    for key in ("kind", "dtype", "template", "trainable_embeddings", "media_wrappers", "tie_word_embeddings"):
        om["llm"][key] = sm["llm"][key]
    om["llm"]["gradient_checkpointing"] = sm["llm"]["gradient_checkpointing"]
    om["llm"]["lora"]["enabled"] = sm["llm"]["lora"]["enabled"]
    if om["llm"]["template"] == "chat_template":
        om["llm"]["template"] = "vicuna_v1"
    for m, o in om["outputs"].items():
        o["decoder"]["dtype"] = sm["outputs"][m]["decoder"]["dtype"]
    out["training"]["gradient_clip_val"] = src["training"]["gradient_clip_val"]
    out["name"] = f"tiny-shaped-{preset}"
    return NextGPTConfig.from_dict(out)


class _Loss(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _one_step(cfg: NextGPTConfig, model: NextGPT, stage: int, data: Path, precision: str) -> float:
    from nextgpt.stages.datamodule import NextGPTDataModule

    module = StageModule(cfg, stage, model)
    dm = NextGPTDataModule(cfg, stage, model.processor, data, shuffle=0)
    from nextgpt.stages.train import precision_settings

    rec = _Loss()
    precision, plugins = precision_settings(precision, "cpu")  # real fp16 autocast + GradScaler on CPU
    if plugins:  # the default first scale (2**16) overflows and skips step 1, as it does on a GPU
        plugins[0].scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        precision=precision,
        plugins=plugins,
        max_steps=1,
        gradient_clip_val=cfg.training.gradient_clip_val,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[rec],
    )
    trainer.fit(module, datamodule=dm)
    assert len(rec.losses) == 1
    return rec.losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("preset", PRESETS)
def test_one_step_of_every_stage_in_mixed_precision(preset: str, precision: str, demo_data: Path) -> None:
    """One optimiser step of each stage, every preset's structure at tiny size, under CPU autocast
    (16-mixed with torch.amp.GradScaler("cpu"), gradient clipping as the preset): the loss is finite,
    every trainable tensor is a float32 master copy and training moved it, every frozen tensor is
    bit-identical (frozen fp16/bf16 weights included)."""
    cfg = tiny_shaped(preset)
    model = NextGPT(cfg)
    for stage in (1, 2, 3):
        module = StageModule(cfg, stage, model)
        trainable = set(module.trainable_names)
        before = {k: v.detach().clone() for k, v in model.named_parameters()}
        loss = _one_step(cfg, model, stage, demo_data, precision)
        assert loss == loss and abs(loss) != float("inf"), (stage, loss)
        after = dict(model.named_parameters())
        wrong = {k: after[k].dtype for k in trainable if after[k].dtype != torch.float32}
        assert not wrong, (stage, wrong)
        frozen_changed = [k for k in after if k not in trainable and not torch.equal(after[k], before[k])]
        assert not frozen_changed, (stage, frozen_changed[:3])
        moved = {k for k in trainable if not torch.equal(after[k], before[k])}
        groups = {
            1: ["input_projector."],
            2: ["output_projectors.", "llm."],
            3: ["output_projectors.", "lora_"],
        }[stage]
        for g in groups:
            assert any(g in k for k in moved), (stage, g)
        if cfg.model.llm.trainable_embeddings == "full":  # the legacy full matrices train in every stage
            assert any("embed_tokens" in k or "lm_head" in k for k in moved), stage


def test_fused_adam_only_where_lightning_allows_it() -> None:
    from types import SimpleNamespace

    from nextgpt.stages.modules import fused_allowed

    cuda = [SimpleNamespace(device=torch.device("cuda"))]
    cpu = [SimpleNamespace(device=torch.device("cpu"))]
    t = SimpleNamespace
    assert fused_allowed(cuda, t(precision="bf16-mixed", gradient_clip_val=1.0))
    assert fused_allowed(cuda, t(precision="16-mixed", gradient_clip_val=None))
    assert not fused_allowed(cuda, t(precision="16-mixed", gradient_clip_val=1.0))  # Lightning refuses it
    assert not fused_allowed(cpu, t(precision="bf16-mixed", gradient_clip_val=1.0))


# ------------------------------------------------------------------ decoders follow the model


def _components(decoder) -> dict[str, torch.nn.Module]:
    return {
        k: c
        for k, c in decoder.pipeline.components.items()
        if isinstance(c, torch.nn.Module) and any(True for _ in c.parameters())
    }


def test_decoders_follow_model_moves_and_casts() -> None:
    """`model.to(...)` (and Lightning moving the module) reaches every decoder component: the pipeline
    loaded before the move, one loaded after it, the text encoders behind the stage-2/3 caption
    targets and the UNets behind the denoising loss; a meta-device build puts them on meta."""
    model = NextGPT.from_preset("tiny")
    image = model.decoders[Modality.IMAGE]
    image.load()  # loaded before the move
    model.to(torch.bfloat16)
    for decoder in model.decoders.values():
        assert decoder.dtype == torch.bfloat16
    audio = model.decoders[Modality.AUDIO]
    for d in (image, audio):  # audio loads after the move
        for name, comp in _components(d).items():
            assert all(p.dtype == torch.bfloat16 for p in comp.parameters()), (d.kind, name)
    assert image.encode_captions(["a red cube"]).dtype == torch.bfloat16  # caption targets
    model.to(torch.float32)
    assert all(p.dtype == torch.float32 for c in _components(image).values() for p in c.parameters())
    assert image.pipeline.unet.dtype == torch.float32  # the denoising-loss UNet

    meta = NextGPT(NextGPTConfig.from_preset("tiny"), device="meta")
    video = meta.decoders[Modality.VIDEO]
    assert all(d.device.type == "meta" for d in meta.decoders.values())
    assert all(p.is_meta for c in _components(video).values() for p in c.parameters())


# ------------------------------------------------------------------ schedule length


def test_unknown_epoch_length_is_an_error_not_a_guess(tmp_path: Path) -> None:
    """A loader without a length and no max_steps: the LR schedule cannot be laid out (it used to fall
    back to 1000 steps, so a 20k-step epoch trained at LR 0 from step 1000)."""

    class Endless(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield from ()

    model = NextGPT.from_preset("tiny")
    module = StageModule(model.config, 1, model)
    trainer = L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False)
    loader = torch.utils.data.DataLoader(Endless(), batch_size=None)
    with pytest.raises(ConfigError, match="length of the training run is unknown.*training.max_steps"):
        trainer.fit(module, train_dataloaders=loader)


# ------------------------------------------------------------------ counted drops, truncation


@pytest.fixture(scope="module")
def tiny(tiny_model: NextGPT) -> NextGPT:
    return tiny_model


def _conversation(user_parts, assistant_parts):
    from nextgpt.processor import Turn
    from nextgpt.stages.data import Sample

    turns = [Turn("user", user_parts), Turn("assistant", assistant_parts)]
    from nextgpt.processor import MediaItem

    captions = [p.value for p in assistant_parts if isinstance(p, MediaItem)]
    outputs = [MediaItem(p.modality, None) if isinstance(p, MediaItem) else p for p in assistant_parts]
    turns[1] = Turn("assistant", outputs)
    return Sample("k", "conversation", turns, captions, url="shard.tar")


def test_overlength_is_truncated_without_splitting_a_run(tiny: NextGPT) -> None:
    """A sample longer than max_length is cut (never inside an input media slot or a signal run; the
    outputs past the cut go with it) or, with overlength=skip, dropped and counted."""
    from PIL import Image

    from nextgpt.processor import MediaItem

    img = Image.new("RGB", (40, 30), (200, 10, 10))
    sample = _conversation(
        [MediaItem(Modality.IMAGE, img), "what is this? " * 3],
        ["it is red. ", MediaItem(Modality.IMAGE, "a red square"), " and more words " * 4],
    )
    proc, layout = tiny.processor, tiny.llm.layout
    full = proc.encode(sample.turns, add_generation_prompt=False)
    ids = full.input_ids.tolist()
    run = list(layout.signal_ids[Modality.IMAGE])
    start = ids.index(run[0])
    pad = 0
    # a limit inside the signal run: the cut moves to its start, the output and its caption go
    c = Collator(proc, start + 2, pad)
    batch = c([sample])
    assert batch.input_ids.shape[1] == start
    assert batch.output_modalities == [[]] and batch.output_captions == [[]]
    assert batch.slot_modalities == [[Modality.IMAGE]] and not batch.drops
    assert bool((batch.labels != -100).any())  # "it is red." is still a target
    # a limit after the run keeps it whole, with its caption
    c = Collator(proc, start + len(run) + 1, pad)
    batch = c([sample])
    assert batch.input_ids[0, start : start + len(run)].tolist() == run
    assert batch.output_captions == [["a red square"]]
    # a limit inside the image placeholders: the slot goes, and with it every target: dropped
    ph = ids.index(layout.placeholder_ids[Modality.IMAGE])
    batch = Collator(proc, ph + 1, pad)([sample])
    assert batch.is_empty and batch.drops == {"no_target": 1}
    # overlength=skip: dropped and counted
    batch = Collator(proc, start + 2, pad, overlength="skip")([sample])
    assert batch.is_empty and batch.drops == {"overlength": 1} and batch.num_samples == 1


def test_collator_counts_every_drop_by_reason(tiny: NextGPT) -> None:
    from nextgpt.media import Audio
    from nextgpt.processor import MediaItem
    from nextgpt.stages.cache import CacheMiss
    from nextgpt.stages.data import DroppedSample

    good = _conversation(["hello"], ["hi there"])
    reserved = _conversation(["text with <image> in it"], ["no"])
    bad_audio = _conversation(
        [MediaItem(Modality.AUDIO, Audio(np.full((1, 400), np.nan, np.float32), 16000)), "hm"], ["ok"]
    )
    batch = Collator(tiny.processor, 512, 0)(
        [
            good,
            reserved,
            bad_audio,
            DroppedSample("x", "s.tar", "decode", "bad json"),
            DroppedSample("__padding__0_0", "", "padding"),
        ]
    )
    assert batch.keys == ["k"] and not batch.is_empty
    assert batch.drops == {"template": 1, "preprocess": 1, "decode": 1}
    assert batch.num_samples == 4  # padding is not a sample

    class NoEntries:
        def get(self, shard, key, index):
            raise CacheMiss(f"{shard}: {key}/{index} not cached")

    img = _conversation([MediaItem(Modality.IMAGE, None), "what?"], ["a cat"])
    batch = Collator(tiny.processor, 512, 0, feature_cache=NoEntries())([img])
    assert batch.is_empty and batch.drops == {"cache_miss": 1}
    assert batch.input_ids.shape == (1, 1) and (batch.labels == -100).all()


def test_missing_dataset_is_an_error(tmp_path: Path, demo_data: Path) -> None:
    from nextgpt.stages.datamodule import stage_shards

    with pytest.raises(ConfigError, match=r"'webvid'.*folders there: conversations, llmbind, pairs"):
        stage_shards(demo_data, 1, ["pairs", "webvid"])
    assert len(stage_shards(demo_data, 1, ["pairs"])) == 3


def test_too_many_dropped_samples_stop_the_run_with_counts(tmp_path: Path) -> None:
    """Drops of every kind count toward training.max_bad_fraction over the whole run (all ranks);
    past it the run stops naming the counts by reason."""
    from data_fixtures import text_conversation
    from test_scale import write_raw

    from nextgpt.stages.data import write_samples
    from nextgpt.stages.data.shards import iter_raw
    from nextgpt.stages.train import train

    (clean,) = write_samples(tmp_path / "clean", [text_conversation(i) for i in range(12)], prefix="c")
    raws = list(iter_raw(str(clean)))
    for raw in raws[4:10]:
        raw["json"] = b"{broken"
    write_raw(raws, tmp_path / "data" / "conversations" / "c-000000.tar")
    overrides = [
        "training.num_workers=0",
        "training.shuffle_buffer=0",
        "training.min_samples_before_check=8",
        "training.max_bad_fraction=0.25",
    ]
    with pytest.raises(InputError, match=r"4 of 8 samples dropped \(50\.0%\).*decode 4"):
        train(3, "tiny", tmp_path / "data", tmp_path / "out", overrides)


# ------------------------------------------------------------------ checkpoints, random state, strategies


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {_Payload.sentinel}",))


def test_resume_refuses_a_checkpoint_that_would_run_code(tmp_path: Path, demo_data: Path) -> None:
    from nextgpt.stages.train import train

    ckpt = tmp_path / "out" / "stage1" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    _Payload.sentinel = tmp_path / "pwned"
    torch.save({"state_dict": {}, "evil": _Payload()}, ckpt)
    with pytest.raises(CheckpointError, match="refusing to load training checkpoint"):
        train(1, "tiny", demo_data, tmp_path / "out", ["training.num_workers=0"])
    assert not _Payload.sentinel.exists()
    ckpt.write_bytes(pickle.dumps({"not": "a torch file"}))
    with pytest.raises(CheckpointError):
        train(1, "tiny", demo_data, tmp_path / "out", ["training.num_workers=0"])


def test_random_state_is_per_rank_and_survives_weights_only(tmp_path: Path) -> None:
    from nextgpt.stages.modules import _rng_state, _set_rng_state, rank_seed, seed_rank

    assert len({rank_seed(13, r) for r in range(8)}) == 8
    assert rank_seed(13, 0) == rank_seed(13, 0) != rank_seed(14, 0)
    seed_rank(13, 1)
    torch.save({"rng": [_rng_state()]}, tmp_path / "s.pt")
    import random

    import numpy as np

    want = (torch.rand(3), random.random(), np.random.rand())
    _set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"][0])
    got = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]


def test_unsupported_strategies_are_refused_with_what_to_use_instead() -> None:
    from nextgpt.stages.parallel import build_strategy

    with pytest.raises(ConfigError, match="deepspeed_stage_2 is not supported.*training.strategy=fsdp"):
        build_strategy("deepspeed_stage_2")
    with pytest.raises(ConfigError, match="unknown 'horovod'"):
        build_strategy("horovod")
    with pytest.raises(ConfigError, match="fsdp with training.precision=16-mixed.*bf16-mixed"):
        build_strategy("fsdp", precision="16-mixed")  # fp16's GradScaler cannot unscale mixed DTensor grads
    assert type(build_strategy("fsdp", precision="bf16-mixed")).__name__ == "NextGPTFSDPStrategy"
