"""Training stages on the tiny preset: trainable sets, losses, learning, resume, chaining, caches."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from nextgpt import NextGPT
from nextgpt.errors import CheckpointError, InputError
from nextgpt.modality import Modality
from nextgpt.model import SignalTarget
from nextgpt.stages.modules import TRAINABLE, select_trainable


@pytest.fixture(scope="module")
def model(tiny_model: NextGPT) -> NextGPT:
    return tiny_model


# ------------------------------------------------------------------ trainable sets


def _groups(names: set[str]) -> set[str]:
    out = set()
    for n in names:
        if n.startswith("input_projector."):
            out.add("input_projector")
        elif n.startswith("output_projectors."):
            out.add("output_projectors." + n.split(".")[1])
        elif "lora_" in n:
            out.add("lora")
        else:
            out.add(n)
    return out


def test_trainable_sets_per_stage(model: NextGPT) -> None:
    outputs = {"output_projectors.image", "output_projectors.audio", "output_projectors.video"}
    rows = {"llm.new_embeddings", "llm.new_lm_head"}
    expected = {
        1: {"input_projector"},
        2: outputs | rows,
        3: {"input_projector", "lora"} | outputs | rows,
    }
    for stage in (1, 2, 3):
        chosen = select_trainable(model, stage)
        assert _groups(set(chosen)) == expected[stage], stage
        grads = {n for n, p in model.named_parameters() if p.requires_grad}
        assert grads == set(chosen), stage  # nothing else requires grad
        assert not any(n.startswith("encoder.") for n in grads)
    assert set(TRAINABLE) == {1, 2, 3}


def test_legacy_policy_trains_full_token_matrices_in_every_stage() -> None:
    legacy = NextGPT.from_preset("tiny", ["model.llm.trainable_embeddings=full"])
    base = {
        "llm.model.base_model.model.model.embed_tokens.weight",
        "llm.model.base_model.model.lm_head.weight",
    }
    for stage in (1, 2, 3):
        assert base <= set(select_trainable(legacy, stage)), stage


# ------------------------------------------------------------------ losses


def test_alignment_loss_equals_hand_computation(model: NextGPT) -> None:
    layout = model.llm.layout
    img, aud = list(layout.signal_ids[Modality.IMAGE]), list(layout.signal_ids[Modality.AUDIO])
    ids = torch.tensor([[1, 40, 41, *img, 42, *aud, 2]])
    labels = ids.clone()
    mask = torch.ones_like(ids)
    g = torch.Generator().manual_seed(0)
    t_img = torch.randn(8, 32, generator=g)
    t_aud = torch.randn(1, 32, generator=g)
    with torch.no_grad():
        targets = [[SignalTarget(Modality.IMAGE, cond=t_img), SignalTarget(Modality.AUDIO, cond=t_aud)]]
        losses = model.compute_losses(ids, mask, labels, [], targets, alignment_weights={Modality.AUDIO: 3.0})
        # by hand: final-layer states at signal inputs + their input embeddings -> projector
        embeds = model.llm.embed(ids)
        hidden = model.llm(embeds).hidden
        p_img = [ids[0].tolist().index(i) for i in img]
        p_aud = [ids[0].tolist().index(i) for i in aud]
        pred_img = model.output_projectors["image"]((hidden[0, p_img] + embeds[0, p_img]).unsqueeze(0))[0]
        pred_aud = model.output_projectors["audio"]((hidden[0, p_aud] + embeds[0, p_aud]).unsqueeze(0))[0]
        d_img = torch.sqrt(((pred_img - t_img) ** 2).sum(-1)).mean()
        d_aud = torch.sqrt(((pred_aud - t_aud) ** 2).sum(-1)).mean()
        logits = model.llm(embeds).logits[0, :-1]
        ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:])
    torch.testing.assert_close(losses["align_image"], d_img)
    torch.testing.assert_close(losses["align_audio"], d_aud)
    torch.testing.assert_close(losses["align_loss"], d_img + 3.0 * d_aud)
    torch.testing.assert_close(losses["lm_loss"], ce)
    torch.testing.assert_close(losses["loss"], ce + d_img + 3.0 * d_aud)


def test_run_and_target_count_mismatch_is_an_error(model: NextGPT) -> None:
    img = list(model.llm.layout.signal_ids[Modality.IMAGE])
    ids = torch.tensor([[1, 40, *img, 2]])
    with pytest.raises(InputError, match="1 signal runs but 0 alignment targets"):
        model.compute_losses(ids, torch.ones_like(ids), ids, [], [[]])


# ------------------------------------------------------------------ training runs on the demo data


def _losses(run_dir: Path, key: str = "train/loss") -> list[float]:
    """Per-step losses over every attempt of a run (a resumed attempt overrides the steps it redid)."""
    by_step: dict[int, float] = {}
    versions = sorted((run_dir / "logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        with open(version / "metrics.csv") as f:
            for row in csv.DictReader(f):
                if row.get(key):
                    by_step[int(row["step"])] = float(row[key])
    return [by_step[s] for s in sorted(by_step)]


FAST = ["training.num_workers=0", "training.log_every_n_steps=1", "training.checkpoint_every_n_steps=2"]


def _fixed_batches_loss(model: NextGPT, stage: int, data: Path, n: int = 4) -> float:
    """Mean loss of ``model`` over the first ``n`` batches of the stage's data (no shuffling)."""
    from nextgpt.stages.datamodule import NextGPTDataModule
    from nextgpt.stages.modules import StageModule

    module = StageModule(model.config, stage, model).eval()
    dm = NextGPTDataModule(model.config, stage, model.processor, data, shuffle=0)
    dm.setup()
    loader = torch.utils.data.DataLoader(dm.dataset, batch_size=2, collate_fn=dm.collator())
    losses = []
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i == n:
                break
            losses.append(float(module(batch)["loss"]))
    return sum(losses) / len(losses)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_each_stage_learns_on_demo_data(stage: int, demo_data: Path, tmp_path: Path) -> None:
    """A few dozen steps lower the stage's loss on fixed demo batches (no noise from batch order)."""
    from nextgpt.stages.train import train

    lr = {1: 2e-2, 2: 5e-3, 3: 5e-3}[stage]
    overrides = [*FAST, f"training.stages.{stage}.lr={lr}", f"training.stages.{stage}.epochs=3"]
    model_dir = train(stage, "tiny", demo_data, tmp_path, overrides, max_steps=30)
    assert len(_losses(tmp_path / f"stage{stage}")) == 30
    before = _fixed_batches_loss(NextGPT.from_preset("tiny"), stage, demo_data)
    trained = NextGPT.from_pretrained(model_dir)
    after = _fixed_batches_loss(trained, stage, demo_data)
    assert after < before * {1: 0.999, 2: 0.8, 3: 0.8}[stage], (stage, before, after)
    assert trained.generate("hi", modalities=["text"], max_new_tokens=2).token_ids


@pytest.mark.slow
def test_resume_after_interruption_reproduces_losses(demo_data: Path, tmp_path: Path) -> None:
    import lightning as L

    from nextgpt.stages.train import train

    class Crash(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step == 5:
                raise RuntimeError("simulated crash")

    args = (3, "tiny", demo_data)
    train(*args, tmp_path / "straight", FAST, max_steps=8)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(*args, tmp_path / "crashed", FAST, max_steps=8, callbacks=[Crash()])
    assert (tmp_path / "crashed" / "stage3" / "checkpoints" / "last.ckpt").is_file()
    train(*args, tmp_path / "crashed", FAST, max_steps=8)  # same command again: resumes
    straight = _losses(tmp_path / "straight" / "stage3")
    resumed = _losses(tmp_path / "crashed" / "stage3")
    assert len(straight) == 8
    # steps 0-4 come from the crashed attempt, 4-7 from the resumed one (it restarted after step 4)
    assert resumed == pytest.approx(straight, abs=1e-6)


@pytest.mark.slow
def test_stages_chain_with_strict_accounting(demo_data: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from nextgpt.stages.train import train

    s1 = train(1, "tiny", demo_data, tmp_path, FAST, max_steps=2)
    s1_state = load_file(str(s1 / "trainable.safetensors"))
    s2 = train(2, "tiny", demo_data, tmp_path, FAST, max_steps=2)  # picks stage1/model up by itself
    s2_state = load_file(str(s2 / "trainable.safetensors"))
    key = next(k for k in s1_state if k.startswith("input_projector."))
    assert torch.equal(s1_state[key], s2_state[key])  # stage 2 started from stage 1 and froze it
    # a previous-stage model with a missing key is refused
    del s1_state[key]
    save_file(s1_state, str(s1 / "trainable.safetensors"))
    with pytest.raises(CheckpointError, match="do not come from one save"):  # its manifest catches it
        train(2, "tiny", demo_data, tmp_path / "other", FAST, init_from=s1, max_steps=1)
    (s1 / "nextgpt.json").unlink()  # as an older nextgpt wrote it: the keys are still checked
    with pytest.raises(CheckpointError, match="missing key"):
        train(2, "tiny", demo_data, tmp_path / "other", FAST, init_from=s1, max_steps=1)


@pytest.mark.slow
def test_cached_features_give_the_same_losses(demo_data: Path, tmp_path: Path) -> None:
    from nextgpt.stages.cache import build_cache
    from nextgpt.stages.train import train

    model = NextGPT.from_preset("tiny")
    build_cache("encoder", demo_data, tmp_path / "cache", model=model, stage=1, progress=False)
    online = train(1, "tiny", demo_data, tmp_path / "online", FAST, max_steps=4).parent
    cached = train(
        1,
        "tiny",
        demo_data,
        tmp_path / "cached",
        [*FAST, f"training.cache_dir={tmp_path / 'cache'}"],
        max_steps=4,
    ).parent
    # fp16 storage of the features: equal to ~1e-3
    assert _losses(cached) == pytest.approx(_losses(online), rel=1e-3)
    other = NextGPT.from_preset("tiny", ["model.seed=1"])  # a different frozen encoder
    from nextgpt.stages.cache import FeatureCache, encoder_fingerprint

    with pytest.raises(CheckpointError, match="different frozen model"):
        FeatureCache(tmp_path / "cache" / "encoder", encoder_fingerprint(other))


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_denoising_loss_by_config(stage: int, demo_data: Path, tmp_path: Path) -> None:
    """training.denoising_loss=true adds the latent denoising loss through the frozen UNets."""
    from nextgpt.stages.train import train

    train(stage, "tiny", demo_data, tmp_path, [*FAST, "training.denoising_loss=true"], max_steps=3)
    denoise = _losses(tmp_path / f"stage{stage}", "train/denoise_loss")
    assert denoise and all(v > 0 and v == v for v in denoise)


def test_decoder_targets_have_the_decoder_geometry(model: NextGPT) -> None:
    import numpy as np
    from PIL import Image

    from nextgpt import Audio, Video

    img = model.decoders[Modality.IMAGE].prepare_target(Image.new("RGB", (50, 40), (255, 0, 0)))
    assert (
        img.shape == (3, 32, 32)
        and img.min() >= -1
        and img.max() <= 1
        and float(img[0].mean()) == pytest.approx(1.0)
    )
    vid = model.decoders[Modality.VIDEO].prepare_target(Video(np.zeros((9, 20, 30, 3), np.uint8), fps=8))
    assert vid.shape == (3, 4, 32, 32)
    tone = np.sin(2 * np.pi * 1000 * np.arange(16000) / 16000).astype(np.float32)
    mel = model.decoders[Modality.AUDIO].prepare_target(Audio(tone, sample_rate=16000))
    assert mel.shape[0] == 1 and mel.shape[1] % 2 == 0 and torch.isfinite(mel).all()
    # a 1 kHz tone puts its energy in the mel band containing 1 kHz (Slaney scale: mel 15 of 0..~44)
    from nextgpt.decoders.targets import _slaney_mel, mel_filterbank

    bins = mel.shape[2]
    centre = int(mel[0, 2:-2].mean(0).argmax())
    edges = np.linspace(0, _slaney_mel(8000.0), bins + 2)
    assert edges[centre] <= _slaney_mel(1000.0) <= edges[centre + 2]
    assert mel_filterbank(bins).shape == (bins, 513)
