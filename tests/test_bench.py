"""The real-scale benchmarks (``bench/``): formulas, device tables, and a smoke run of every script.

The smoke runs call each script's ``main([...])`` at ``--size smoke`` on the CPU and check the JSON it
writes: the expected keys, positive finite measurements, and the relations that must hold whatever
the machine (cached stage-1 steps skip the encoder, the 6NT convention over-counts a LoRA step, lazy
decoders are unloaded at the end, ...).
"""

from __future__ import annotations

import importlib
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--size", "smoke", "--device", "cpu", "--threads", "1"]


@pytest.fixture(scope="module")
def bench():
    """``import bench.<name>`` with the repository root importable (bench/ is not installed)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return lambda name: importlib.import_module(f"bench.{name}")


def positive_finite(mapping: dict, keys) -> None:
    for key in keys:
        value = mapping[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)


def run_script(bench, name: str, tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / f"{name}.json"
    returned = bench(name).main([*SMOKE, *extra, "--json", str(out)])
    data = json.loads(out.read_text())
    assert data["benchmark"] == name and data["size"] == "smoke"
    assert returned["results"] == data["results"]
    for key in ("date", "torch", "transformers", "diffusers", "device_name"):
        assert data["env"][key]
    return data


# ------------------------------------------------------------------------------------------- formulas


def test_llama_7b_matmul_parameters(bench):
    flops = bench("flops")
    # Vicuna-7B: 32 x (4 x 4096^2 + 3 x 4096 x 11008) + 32000 x 4096 (LM head); embeddings excluded.
    assert flops.llama_matmul_params(4096, 32, 32, 32, 11008, 32000) == 6_607_077_376
    # Grouped-query attention shrinks k and v only.
    assert flops.llama_matmul_params(64, 1, 4, 2, 128, 10) == 2 * 64 * 64 + 2 * 64 * 32 + 3 * 64 * 128 + 640


def test_llm_matmul_params_of_a_built_model(bench):
    flops, sizes, hardware = bench("flops"), bench("sizes"), bench("hardware")
    device = torch.device("cpu")
    model = sizes.build_model("smoke", device, hardware.resolve_dtypes("auto", device))
    frozen, lora = flops.llm_matmul_params(model.llm)
    d = model.config.model.llm  # the smoke overlay's LLM shape
    assert (d.hidden_size, d.num_layers, d.num_kv_heads, d.lora.r) == (64, 2, 4, 4)
    assert frozen == flops.llama_matmul_params(
        d.hidden_size, d.num_layers, d.num_heads, d.num_kv_heads, d.intermediate_size, d.vocab_size
    )
    # LoRA on q, k, v, o (each d -> d): A [r, d] + B [d, r] per projection.
    assert lora == d.num_layers * 4 * 2 * d.lora.r * d.hidden_size


def test_train_step_flops(bench):
    flops = bench("flops")
    f = flops.train_step_flops(frozen=1000, trainable=10, layers=2, hidden=8, batch=3, seq=5, recompute=False)
    T = 15
    attention = 12 * 2 * 8 * 5 * T
    assert f["tokens"] == T
    assert f["model"] == 4 * 1000 * T + 6 * 10 * T + attention
    assert f["six_n"] - f["model"] == 2 * 1000 * T  # no weight gradients for frozen weights
    assert f["hardware"] == f["model"]
    g = flops.train_step_flops(frozen=1000, trainable=10, layers=2, hidden=8, batch=3, seq=5, recompute=True)
    assert g["hardware"] - g["model"] == 2 * 1010 * T + attention / 3  # one more forward


def test_device_tables(bench):
    hw = bench("hardware")
    assert hw.lookup(hw.BF16_PEAK_FLOPS, "NVIDIA H100 80GB HBM3")[0] == 989e12
    assert hw.lookup(hw.BF16_PEAK_FLOPS, "NVIDIA H100 PCIe")[0] == 756e12
    assert hw.lookup(hw.BF16_PEAK_FLOPS, "NVIDIA H200")[0] == 989e12
    assert hw.lookup(hw.BF16_PEAK_FLOPS, "NVIDIA A100-SXM4-80GB")[0] == 312e12
    assert hw.lookup(hw.HBM_BANDWIDTH, "NVIDIA H100 80GB HBM3")[0] == 3.35e12
    assert hw.lookup(hw.HBM_BANDWIDTH, "NVIDIA H200")[0] == 4.8e12
    assert hw.lookup(hw.HBM_BANDWIDTH, "NVIDIA A100-SXM4-80GB")[0] == 2.0e12
    assert hw.lookup(hw.HBM_BANDWIDTH, "NVIDIA A100-SXM4-40GB")[0] == 1.555e12
    assert hw.lookup(hw.BF16_PEAK_FLOPS, "Tesla T4") is None


def test_full_size_overrides_are_the_preset_shapes(bench):
    from nextgpt import NextGPTConfig

    sizes = bench("sizes")
    cfg = sizes.build_config("full", bench("hardware").Dtypes("bfloat16", "float16", "bfloat16"))
    llm = cfg.model.llm
    assert (llm.hidden_size, llm.num_layers, llm.num_heads, llm.intermediate_size, llm.vocab_size) == (
        4096,
        32,
        32,
        11008,
        32000,
    )
    assert llm.path is None and cfg.model.encoder.checkpoint is None
    assert (llm.lora.r, llm.lora.alpha, llm.dtype) == (32, 32, "bfloat16")
    assert cfg.model.encoder.vision.embed_dim == 1280 and cfg.model.encoder.vision.num_blocks == 32
    assert cfg.model.input_projector.tokens_per_item == 8
    image, video = cfg.model.outputs["image"].decoder, cfg.model.outputs["video"].decoder
    assert (image.cond_tokens, image.cond_dim, image.height, image.num_inference_steps) == (77, 768, 512, 50)
    assert (video.cond_dim, video.num_frames, video.height, video.width) == (1024, 24, 320, 576)
    # the preset's own clip length (9 s): the benchmark measures what users run
    assert cfg.model.outputs["audio"].decoder.audio_length_in_s == 9.0
    assert all(cfg.model.outputs[m].decoder.path is None for m in ("image", "audio", "video"))
    # The shapes are the preset's own: the full overlay repeats none of them (one source).
    preset = NextGPTConfig.from_preset("nextgpt-7b").model
    assert cfg.model.encoder.trunks == preset.encoder.trunks
    assert (cfg.model.llm.hidden_size, cfg.model.input_projector) == (
        preset.llm.hidden_size,
        preset.input_projector,
    )
    assert not any(o.startswith(("model.encoder.", "model.llm.")) for o in sizes.SIZE_SPECS["full"].overlay)


def test_full_size_component_shapes(bench):
    """The real-shaped diffusers components (built on the meta device: no memory) have the
    published parameter counts: SD 1.5 UNet 859.5M, Zeroscope UNet 1.41B, AudioLDM-L UNet 739M."""
    from nextgpt.decoders.tiny import build_components

    count = bench("flops").count_parameters
    meta = torch.device("meta")
    sd = build_components("stable_diffusion", "real", 77, 768, device=meta, dtype=torch.float32)
    assert count(sd["unet"]) == 859_520_964
    assert count(sd["vae"]) == 83_653_863
    assert count(sd["text_encoder"]) == 123_060_480
    video = build_components("zeroscope", "real", 77, 1024, device=meta, dtype=torch.float32)
    assert round(count(video["unet"]) / 1e6) == 1411
    assert round(count(video["text_encoder"]) / 1e6) == 340
    audio = build_components("audioldm", "real", 1, 512, sample_rate=16000, device=meta, dtype=torch.float32)
    assert round(count(audio["unet"]) / 1e6) == 739  # the model card's AudioLDM-L size


# ------------------------------------------------------------------------------------------ smoke runs


@pytest.mark.slow
def test_train_step_smoke(bench, tmp_path):
    """Stage 1 through Trainer.fit on the demo shards with the feature cache, packed and padded
    (in-process loading, to keep it short): every variant timed its steps and counted useful tokens,
    model FLOPs at most hardware FLOPs."""
    args = (
        "--stages",
        "1",
        "--cache",
        "on",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--num-workers",
        "0",
        "--batch-size",
        "4",
    )
    data = run_script(bench, "train_step", tmp_path, *args)
    rows = data["results"]
    assert [(r["stage"], r["cache"], r["layout"]) for r in rows] == [(1, "on", "packed"), (1, "on", "padded")]
    for row in rows:
        positive_finite(row, ["step_s", "samples_per_s", "useful_tokens_per_s", "mfu", "hfu"])
        assert row["steps"] == 2 and 0 <= row["padding"] < 1
        assert row["mfu"] <= row["hfu"]  # padding, whole-row attention
        assert row["useful_tokens_per_s"] <= row["processed_tokens_per_s"]
    assert set(data["summary"]["packed_over_padded"]) == {"stage1_cache_on"}
    assert any("Trainer.fit" in note for note in data["notes"])
    assert any("excluded" in note for note in data["notes"])


def test_sample_flops_count_useful_and_processed_work(bench):
    sample_flops = bench("flops").sample_flops
    batch = dict(
        body=100, head=10, lora=2, layers=2, hidden=4, lengths=[3, 5], labelled=4, rows=1, row_len=10
    )
    f = sample_flops(**batch, recompute=False)
    assert f["useful"] == 8 and f["processed"] == 10
    assert f["model"] == 4 * 100 * 8 + 6 * 2 * 8 + 4 * 10 * 4 + 12 * 2 * 4 * (9 + 25)
    assert f["hardware"] == 4 * 100 * 10 + 6 * 2 * 10 + 4 * 10 * 4 + 12 * 2 * 4 * 100
    g = sample_flops(**batch, recompute=True)
    assert g["hardware"] == f["hardware"] + 2 * 102 * 10 + 4 * 2 * 4 * 100


@pytest.mark.slow
def test_stage1_cache_smoke(bench, tmp_path):
    data = run_script(bench, "stage1_cache", tmp_path)
    assert [r["modality"] for r in data["results"]] == ["image", "audio", "video"]
    for row in data["results"]:
        positive_finite(
            row,
            [
                "online_step_s",
                "cached_step_s",
                "online_samples_per_s",
                "cached_samples_per_s",
                "speedup",
                "encoder_s",
            ],
        )
    video = data["results"][2]
    assert video["media_shape"] == [15, 3, 2, 224, 224]
    assert len(video["feature_shape"]) == 2  # patch tokens [N, D] for the grouping projector
    positive_finite(data["summary"], ["speedup_image", "speedup_audio", "speedup_video"])


@pytest.mark.slow
def test_decode_smoke(bench, tmp_path):
    data = run_script(bench, "decode", tmp_path)
    assert [r["decoder"] for r in data["results"]] == ["nextgpt.generate", "transformers.generate"]
    for row in data["results"]:
        positive_finite(
            row,
            [
                "total_s",
                "tokens_per_s",
                "step_ms",
                "decode_tokens_per_s",
                "bound_tokens_per_s",
                "fraction_of_bound",
            ],
        )
        assert row["new_tokens"] == 8
    positive_finite(
        data["summary"], ["decode_tokens_per_s", "fraction_of_bound", "bandwidth_gbs", "weight_gib"]
    )
    assert "measured" in data["config"]["bandwidth_source"]  # CPU: measured, and labelled so


@pytest.mark.slow
def test_generate_latency_smoke(bench, tmp_path):
    data = run_script(bench, "generate_latency", tmp_path)
    assert [r["output"] for r in data["results"]] == ["text+image", "text+audio", "text+video"]
    for row in data["results"]:
        positive_finite(row, ["total_s", "llm_s", "projector_s", "diffusion_s", "first_call_s"])
        assert row["llm_s"] + row["projector_s"] + row["diffusion_s"] <= row["total_s"] * 1.001
    signal = {"text+image": 4, "text+audio": 8, "text+video": 24}
    for row in data["results"]:
        assert row["llm_tokens"] == 4 + signal[row["output"]]  # K text tokens + the appended run
    assert data["results"][2]["media"] == "4x32x32"


@pytest.mark.slow
@pytest.mark.heavy  # three model builds in subprocesses (~35 s); test_residency covers the policy
def test_memory_smoke(bench, tmp_path):
    data = run_script(bench, "memory", tmp_path)
    rows = {r["mode"]: r for r in data["results"]}
    assert set(rows) == {"default", "budget"}  # offload needs CUDA
    for row in rows.values():
        positive_finite(row, ["baseline_gib", "peak_gib", "scenario_s"])
        assert row["peak_gib"] >= row["baseline_gib"] and "stand-in" in row["metric"] and row["loads"] == 3
    default, budget = rows["default"], rows["budget"]
    # No budget: every pipeline stays once used; a one-pipeline budget evicts the other two.
    assert default["decoders_loaded_at_end"] == 3 and default["evictions"] == 0
    assert budget["decoders_loaded_at_end"] == 1 and budget["evictions"] == 2
    sizes = default["pipeline_mib"]
    assert set(sizes) == {"image", "audio", "video"}
    assert budget["budget_mb"] == pytest.approx(1.05 * max(sizes.values()))
    assert default["decoder_weights_held_mib"] == pytest.approx(sum(sizes.values()))
    assert budget["decoder_weights_held_mib"] <= budget["budget_mb"]


@pytest.mark.slow
def test_batching_smoke(bench, tmp_path):
    data = run_script(bench, "batching", tmp_path)
    rows = data["results"]
    assert {r["mode"] for r in rows} >= {"one at a time", "batched", "first text delta", "whole answer"}
    for row in rows:
        positive_finite(row, ["seconds"])
    assert data["summary"]["batched text equals one at a time (greedy, token for token)"] is True
    assert 0 < data["summary"]["first text delta / whole answer (stream)"] < 1


@pytest.mark.slow
@pytest.mark.heavy  # every stage of two presets through Lightning (~35 s); its target is make gpu-check
def test_gpu_check_smoke(bench, tmp_path):
    """`make gpu-check`'s logic at smoke size on the CPU: every item of both 7B presets' structure in
    their precision (fp16 through the CPU GradScaler), the DDP item on 2 processes, generate with all
    four outputs; each passes, and a failing item is reported as such (exit code 1 from the script)."""
    data = run_script(bench, "gpu_check", tmp_path)
    items = [r["item"] for r in data["results"]]
    assert items == [
        *[f"train nextgpt-7b stage {s} (bf16-mixed)" for s in (1, 2, 3)],
        *[f"train nextgpt-7b-legacy stage {s} (16-mixed)" for s in (1, 2, 3)],
        "ddp stage 3",
        "generate text+image+audio+video",
    ]
    failed = [(r["item"], r.get("note")) for r in data["results"] if not r["ok"]]
    assert not failed and data["summary"] == {"passed": 8, "failed": 0}
    assert "2 rank(s)" in data["results"][6]["note"]
    positive_finite(data["results"][0], ["step_s"])
    # a broken item fails the check: no trainable tensor can change when the learning rate is 0
    import nextgpt.stages.modules as modules

    real = modules.lr_factor
    modules.lr_factor = lambda *a: lambda step: 0.0
    try:
        rows = bench("gpu_check").train_items("smoke", torch.device("cpu"), "nextgpt-7b")
    finally:
        modules.lr_factor = real
    assert [r["ok"] for r in rows] == [False] * 3
    assert all("no trainable tensor changed" in r["note"] for r in rows)


def test_phase_timer_puts_back_a_module_function_and_uncovers_a_method():
    import types

    from bench.timing import PhaseTimer

    module = types.ModuleType("m")
    module.work = lambda: 1

    class Thing:
        def work(self):
            return 2

    thing, original = Thing(), module.work
    timer = PhaseTimer(torch.device("cpu"))
    timer.wrap(module, "work", "a")
    timer.wrap(thing, "work", "b")
    assert module.work() == 1 and thing.work() == 2 and timer.calls == {"a": 1, "b": 1}
    timer.restore()
    assert module.work is original  # deleting it (the old restore) broke every later caller
    assert "work" not in vars(thing) and thing.work() == 2


def test_eval_throughput_smoke(bench, tmp_path):
    out = tmp_path / "eval.json"
    returned = bench("eval_throughput").main(
        [
            "--preset",
            "tiny",
            "--tasks",
            "vizwiz",
            "msrvtt-qa",
            "--max-new-tokens",
            "4",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    data = json.loads(out.read_text())
    assert data["benchmark"] == "eval_throughput" and returned["results"] == data["results"]
    assert [r["task"] for r in data["results"]] == ["vizwiz", "msrvtt-qa"]
    for row in data["results"]:
        positive_finite(row, ["samples", "samples_per_s", "generation_s"])
        assert 0 < row["generation_share"] <= 1
