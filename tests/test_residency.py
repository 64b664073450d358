"""The decoder memory policy: a budget of resident pipelines, least-recently-used eviction, offload.

Unit tests run :class:`nextgpt.decoders.residency.DecoderResidency` over fresh decoders of the
``tiny`` preset (nothing loads until a test acquires one); the end-to-end test goes through
``NextGPT.generate``.
"""

from __future__ import annotations

import logging
import threading

import pytest
import torch

from nextgpt import NextGPTConfig
from nextgpt.config import DecoderMemoryConfig
from nextgpt.decoders import build_decoder
from nextgpt.decoders.residency import DecoderResidency
from nextgpt.errors import ConfigError, InputError
from nextgpt.modality import Modality

IMAGE, AUDIO, VIDEO = Modality.IMAGE, Modality.AUDIO, Modality.VIDEO
MIB = 2**20


def _decoders(config: NextGPTConfig, device: str = "cpu"):
    return {m: build_decoder(o.decoder, device=device, seed=0) for m, o in config.model.outputs.items()}


@pytest.fixture
def decoders(tiny_config):
    """Fresh tiny decoders (none loaded)."""
    return _decoders(tiny_config)


@pytest.fixture(scope="module")
def sizes(tiny_config):
    """The measured pipeline bytes of each tiny decoder."""
    out = {}
    for m, decoder in _decoders(tiny_config).items():
        decoder.load()
        out[m] = decoder.pipeline_bytes()
        decoder.unload()
    return out


def _budget(nbytes: float, **kw) -> DecoderMemoryConfig:
    return DecoderMemoryConfig(budget_mb=nbytes / MIB, **kw)


def _use(residency: DecoderResidency, *modalities: Modality) -> None:
    for m in modalities:
        residency.acquire(m)
        residency.release(m)


def _resident(residency: DecoderResidency) -> set[Modality]:
    return set(residency.resident_bytes())


# ------------------------------------------------------------------------------ sizes


def test_pipeline_bytes_are_the_parameters_and_buffers_of_its_modules(decoders):
    decoder = decoders[IMAGE]
    assert decoder.pipeline_bytes() == 0  # not built: unknown, reported as nothing
    pipe = decoder.load()
    expected = 0
    buffers = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            expected += sum(p.numel() * p.element_size() for p in component.parameters())
            buffers += sum(b.numel() * b.element_size() for b in component.buffers())
    assert buffers > 0  # the CLIP text encoder's position ids: buffers are counted too
    assert decoder.pipeline_bytes() == expected + buffers
    decoder.unload()
    assert decoder.pipeline_bytes() == 0


def test_no_budget_loads_lazily_and_keeps_every_pipeline(decoders, sizes):
    residency = DecoderResidency(decoders, DecoderMemoryConfig())
    assert _resident(residency) == set()  # nothing loads before its first use
    got = residency.acquire(IMAGE)
    assert got is decoders[IMAGE] and got.is_loaded
    residency.release(IMAGE)
    assert not decoders[AUDIO].is_loaded
    _use(residency, AUDIO, VIDEO, IMAGE)
    assert residency.resident_bytes() == sizes
    assert residency.stats == {"loads": 3, "restores": 0, "unloads": 0, "offloads": 0}
    state = residency.state()
    assert state["budget_bytes"] is None
    assert {k: v["state"] for k, v in state["decoders"].items()} == dict.fromkeys(
        ["image", "audio", "video"], "resident"
    )
    assert "no budget" in residency.describe() and "image resident" in residency.describe()


# ------------------------------------------------------------------------------ budget and LRU


def test_budget_evicts_the_least_recently_used_idle_pipeline(decoders, sizes):
    # First loads in increasing size, so that no estimate of a size not measured yet is too large.
    assert sizes[IMAGE] < sizes[VIDEO] < sizes[AUDIO]
    two = sizes[VIDEO] + sizes[AUDIO]  # room for any two of the three pipelines, never all three
    residency = DecoderResidency(decoders, _budget(two))
    _use(residency, IMAGE, VIDEO)
    assert _resident(residency) == {IMAGE, VIDEO}
    _use(residency, AUDIO)  # image is the least recently used
    assert _resident(residency) == {VIDEO, AUDIO}
    assert not decoders[IMAGE].is_loaded
    _use(residency, VIDEO, IMAGE)  # video touched: audio is now the least recently used
    assert _resident(residency) == {VIDEO, IMAGE}
    _use(residency, AUDIO)
    assert _resident(residency) == {IMAGE, AUDIO}
    assert sum(residency.resident_bytes().values()) <= two
    assert residency.stats == {"loads": 5, "restores": 0, "unloads": 3, "offloads": 0}
    assert list(residency.state()["decoders"]) == ["video", "image", "audio"]  # LRU first


def test_budget_of_one_pipeline_makes_room_before_loading(decoders, sizes):
    """Room is made before the next pipeline loads, so the peak fits the budget too: with its
    measured size, or before its first load with the largest size measured so far."""
    residency = DecoderResidency(decoders, _budget(max(sizes.values())))
    _use(residency, AUDIO)  # the largest
    seen: list[bool] = []
    for decoder in decoders.values():

        def watched(build=decoder._build_tiny):
            seen.append(any(d.is_loaded for d in decoders.values()))
            return build()

        decoder._build_tiny = watched  # instance attribute: this decoder only
    for m in (IMAGE, VIDEO, AUDIO, IMAGE):
        _use(residency, m)
        assert _resident(residency) == {m}
    assert seen == [False] * 4


def test_pipeline_larger_than_the_budget_still_loads_with_one_warning(decoders, sizes, caplog):
    residency = DecoderResidency(decoders, _budget(min(sizes.values()) / 2))
    with caplog.at_level(logging.WARNING, logger="nextgpt.decoders.residency"):
        decoder = residency.acquire(AUDIO)
        assert decoder.is_loaded  # needed now
        assert _resident(residency) == {AUDIO}
        residency.release(AUDIO)
        assert not decoder.is_loaded  # evicted once idle: at rest the budget holds
        _use(residency, AUDIO)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "audio pipeline" in warnings[0].getMessage() and "budget_mb" in warnings[0].getMessage()


def test_budget_zero_keeps_only_pipelines_in_use(decoders, caplog):
    residency = DecoderResidency(decoders, DecoderMemoryConfig(budget_mb=0))
    with caplog.at_level(logging.WARNING, logger="nextgpt.decoders.residency"):
        residency.acquire(IMAGE)
        residency.acquire(VIDEO)
        assert _resident(residency) == {IMAGE, VIDEO}  # both in use
        residency.release(VIDEO)
        assert _resident(residency) == {IMAGE}
        residency.release(IMAGE)
    assert _resident(residency) == set()
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # 0 is meant, not a mistake


# ------------------------------------------------------------------------------ threads and nesting


def test_acquire_release_nest_across_two_threads(decoders, sizes):
    """An in-use pipeline is never evicted, even when another thread needs the room."""
    residency = DecoderResidency(decoders, _budget(max(sizes.values())))
    holding, done = threading.Event(), threading.Event()
    media: list = []
    errors: list[BaseException] = []

    def decode_image():
        try:
            decoder = residency.acquire(IMAGE)
            try:
                holding.set()
                assert done.wait(60)
                assert decoder.is_loaded  # the other thread's audio did not evict it
                media.extend(
                    decoder.generate(torch.randn(1, *decoder.cond_shape), num_inference_steps=1, seed=0)
                )
            finally:
                residency.release(IMAGE)
        except BaseException as err:  # re-raised in the main thread
            errors.append(err)
            holding.set()

    worker = threading.Thread(target=decode_image)
    worker.start()
    assert holding.wait(60)
    audio = residency.acquire(AUDIO)
    assert _resident(residency) == {IMAGE, AUDIO}  # over the budget: both are in use
    assert residency.in_use() == {IMAGE: 1, AUDIO: 1}
    audio.generate(torch.randn(1, *audio.cond_shape), num_inference_steps=1, seed=0)
    residency.release(AUDIO)  # image still in use: the idle audio pipeline goes
    assert _resident(residency) == {IMAGE}
    done.set()
    worker.join(60)
    assert not errors, errors
    assert len(media) == 1
    assert residency.in_use() == {}
    assert _resident(residency) == {IMAGE}


def test_nested_acquires_of_one_modality_are_counted(decoders):
    residency = DecoderResidency(decoders, DecoderMemoryConfig(budget_mb=0))
    residency.acquire(IMAGE)
    residency.acquire("image")
    residency.release(IMAGE)
    assert residency.in_use() == {IMAGE: 1} and decoders[IMAGE].is_loaded
    residency.release(IMAGE)
    assert residency.in_use() == {} and not decoders[IMAGE].is_loaded
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        residency.release(IMAGE)


def test_concurrent_decodes_keep_the_bookkeeping_consistent(decoders, sizes):
    residency = DecoderResidency(decoders, _budget(max(sizes.values())))
    errors: list[BaseException] = []

    def loop(modality: Modality):
        try:
            for _ in range(4):
                decoder = residency.acquire(modality)
                try:
                    assert decoder.is_loaded
                    decoder.generate(torch.randn(1, *decoder.cond_shape), num_inference_steps=1, seed=0)
                finally:
                    residency.release(modality)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=loop, args=(m,)) for m in (IMAGE, AUDIO)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert residency.in_use() == {}
    assert sum(residency.resident_bytes().values()) <= max(sizes.values())


def test_unknown_or_missing_modality_is_an_input_error(tiny_config):
    config = tiny_config.with_overrides(["model.outputs.video=null"])
    residency = DecoderResidency(_decoders(config))
    with pytest.raises(InputError, match="no video decoder; its decoders: image, audio"):
        residency.acquire(VIDEO)
    with pytest.raises(InputError, match="unknown modality"):
        residency.acquire("smell")


# ------------------------------------------------------------------------------ offload


def test_decoder_offload_to_cpu_keeps_the_pipeline_and_restores_it(decoders):
    decoder = decoders[IMAGE]
    decoder.offload_to_cpu()  # not built: nothing to do
    assert not decoder.is_offloaded
    pipe = decoder.load()
    decoder.negative_conditioning()
    decoder.offload_to_cpu()
    assert decoder.is_loaded and decoder.is_offloaded
    assert decoder._negative is None  # cached on the device: recomputed after the move back
    decoder.to(dtype=torch.bfloat16)  # a parked pipeline is cast but stays parked
    assert decoder.is_offloaded and pipe.unet.dtype == torch.bfloat16
    assert decoder.restore() is pipe  # moved back, not rebuilt
    assert not decoder.is_offloaded
    decoder.offload_to_cpu()
    decoder.unload()
    assert not decoder.is_offloaded and not decoder.is_loaded


def test_offload_idle_parks_evicted_pipelines_instead_of_unloading(decoders, sizes, monkeypatch):
    # On a CPU device parking frees nothing and is refused (next test); the bookkeeping is the same
    # on every device, so the device check is lifted here.
    monkeypatch.setattr(DecoderResidency, "_check_offload_device", staticmethod(lambda m, d: None))
    residency = DecoderResidency(decoders, _budget(max(sizes.values()), offload_idle=True))
    _use(residency, IMAGE)
    pipe = decoders[IMAGE].pipeline
    _use(residency, AUDIO)
    assert _resident(residency) == {AUDIO}
    assert residency.offloaded_bytes() == {IMAGE: sizes[IMAGE]}
    assert decoders[IMAGE].is_offloaded and decoders[IMAGE].is_loaded
    assert residency.state()["decoders"]["image"]["state"] == "offloaded"
    assert residency.acquire(IMAGE).pipeline is pipe  # moved back, not loaded again
    residency.release(IMAGE)
    assert residency.offloaded_bytes() == {AUDIO: sizes[AUDIO]}
    assert residency.stats == {"loads": 2, "restores": 1, "unloads": 0, "offloads": 2}
    assert "parked in CPU memory" in residency.describe()


def test_offload_idle_on_a_cpu_device_is_a_config_error(decoders):
    residency = DecoderResidency(decoders, DecoderMemoryConfig(budget_mb=1, offload_idle=True))
    with pytest.raises(
        ConfigError, match=r"model\.decoder_memory\.offload_idle: the image decoder runs on the CPU"
    ):
        residency.acquire(IMAGE)
    assert residency.in_use() == {} and not decoders[IMAGE].is_loaded


@pytest.mark.gpu
def test_offload_idle_on_cuda_moves_idle_pipelines_to_host_memory(tiny_config, sizes):
    decoders = _decoders(tiny_config, device="cuda")
    residency = DecoderResidency(decoders, _budget(max(sizes.values()), offload_idle=True))
    _use(residency, IMAGE)
    on_gpu = torch.cuda.memory_allocated()
    _use(residency, AUDIO)
    assert decoders[IMAGE].pipeline_bytes() == sizes[IMAGE]
    assert next(decoders[IMAGE]._pipeline.unet.parameters()).device.type == "cpu"
    assert next(decoders[AUDIO]._pipeline.unet.parameters()).device.type == "cuda"
    assert torch.cuda.memory_allocated() < on_gpu + sizes[AUDIO]  # image's weights left the GPU
    decoder = residency.acquire(IMAGE)
    assert next(decoder._pipeline.unet.parameters()).device.type == "cuda"
    decoder.generate(torch.randn(1, *decoder.cond_shape, device="cuda"), num_inference_steps=1, seed=0)
    residency.release(IMAGE)
    assert next(decoders[AUDIO]._pipeline.unet.parameters()).device.type == "cpu"


# ------------------------------------------------------------------------------ config


def test_decoder_memory_config_defaults_and_round_trip(tiny_config):
    node = tiny_config.model.decoder_memory
    assert (node.budget_mb, node.offload_idle, node.budget_bytes) == (None, False, None)
    cfg = tiny_config.with_overrides(
        ["model.decoder_memory.budget_mb=1.5", "model.decoder_memory.offload_idle=true"]
    )
    assert cfg.model.decoder_memory.budget_bytes == int(1.5 * MIB)
    again = NextGPTConfig.from_dict(cfg.to_dict())
    assert again.model.decoder_memory == cfg.model.decoder_memory


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.decoder_memory.budget_mb=-1"], r"model\.decoder_memory\.budget_mb: must be a finite number"),
        (
            ["model.decoder_memory.budget_mb=.inf"],
            r"model\.decoder_memory\.budget_mb: must be a finite number",
        ),
        (["model.decoder_memory.budget_mb=lots"], r"model\.decoder_memory\.budget_mb: expected a number"),
        (["model.decoder_memory.offload_idle=true"], r"model\.decoder_memory\.offload_idle: needs budget_mb"),
        (
            ["model.decoder_memory.budget=1"],
            r"model\.decoder_memory\.budget: unknown key; valid keys: budget_mb",
        ),
    ],
)
def test_decoder_memory_config_errors_name_the_key(tiny_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config.with_overrides(overrides)


def test_decoder_memory_config_errors_in_python():
    with pytest.raises(ConfigError, match="budget_mb: must be a finite number of MiB >= 0"):
        DecoderMemoryConfig(budget_mb=float("nan"))
    with pytest.raises(ConfigError, match="offload_idle: needs budget_mb"):
        DecoderMemoryConfig(offload_idle=True)


# ------------------------------------------------------------------------------ through generate


def test_generate_with_a_one_pipeline_budget_unloads_the_image_pipeline(sizes):
    from nextgpt import NextGPT

    budget = max(sizes.values()) / MIB
    model = NextGPT.from_preset("tiny", [f"model.decoder_memory.budget_mb={budget}"])
    assert model.residency.config.budget_mb == budget
    image = model.generate("Draw a cat.", modalities=["image"], max_new_tokens=2, seed=0)
    assert len(image.images) == 1
    assert model.decoders[IMAGE].is_loaded
    audio = model.generate("Make a sound.", modalities=["audio"], max_new_tokens=2, seed=0)
    assert len(audio.audios) == 1
    assert not model.decoders[IMAGE].is_loaded  # evicted: the library, not the caller, freed it
    assert set(model.residency.resident_bytes()) == {AUDIO}
    assert model.residency.in_use() == {}
    assert model.residency.stats["unloads"] == 1
