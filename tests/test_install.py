"""Both install modes expose one import namespace: nextgpt, nextgpt.encoders, ... (no bare names).

Each test makes a throwaway virtualenv that sees this environment's dependencies
(``--system-site-packages``) and installs *this* source tree into it, editable or as a wheel, without
touching the network (``--no-deps --no-build-isolation``). A subprocess then imports every subpackage
and reports where each came from.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "nextgpt",
    "nextgpt.encoders",
    "nextgpt.projectors",
    "nextgpt.decoders",
    "nextgpt.stages",
    "nextgpt.stages.data",
]
# Top-level names that must NOT be installed: they belong to unrelated PyPI projects.
FORBIDDEN = ["encoders", "decoders", "stages", "projectors"]

PROBE = f"""
import importlib, importlib.util, json, sys
mods = {{name: importlib.import_module(name).__file__ for name in {SUBPACKAGES!r}}}
bare = {{name: importlib.util.find_spec(name) is not None for name in {FORBIDDEN!r}}}
from nextgpt.config import NextGPTConfig, list_presets
presets = {{name: NextGPTConfig.from_preset(name).name for name in list_presets()}}
print(json.dumps({{"mods": mods, "bare": bare, "presets": presets}}))
"""


def _venv(tmp_path: Path) -> Path:
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    return env_dir / "bin" / "python"


def _pip(args: list[str]) -> None:
    # The venv has no pip of its own: the outer pip installs into it with `--python`.
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, text=True)


def _probe(python: Path, cwd: Path) -> dict:
    out = subprocess.run([str(python), "-c", PROBE], check=True, capture_output=True, text=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.install
@pytest.mark.slow
def test_wheel_install_imports_every_subpackage(tmp_path: Path) -> None:
    wheel_dir = tmp_path / "wheels"
    # Build from a copy: setuptools leaves build/ behind, and a stale build/lib would leak deleted files.
    src = tmp_path / "src"
    generated = {".git", "build", "runs", "outputs", "data"}  # top-level only (stages/data is source)

    def skip(folder: str, names: list[str]) -> set[str]:
        top = Path(folder) == ROOT
        return {n for n in names if (top and n in generated) or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(ROOT, src, ignore=skip)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("nextgpt-*.whl")
    python = _venv(tmp_path)
    _pip(["--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    info = _probe(python, cwd=tmp_path)
    site = tmp_path / "venv"
    for name, file in info["mods"].items():
        assert Path(file).is_relative_to(site), f"{name} imported from {file}, not from the wheel install"
    assert Path(info["mods"]["nextgpt.encoders"]).parent.name == "encoders"
    assert Path(info["mods"]["nextgpt.encoders"]).parent.parent.name == "nextgpt"
    assert not any(info["bare"].values()), f"bare top-level packages installed: {info['bare']}"
    assert set(info["presets"]) == {"tiny", "small", "nextgpt-7b", "nextgpt-7b-legacy"}


@pytest.mark.install
@pytest.mark.slow
def test_editable_install_imports_every_subpackage(tmp_path: Path) -> None:
    python = _venv(tmp_path)
    _pip(
        [
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-e",
            str(ROOT),
        ]
    )
    info = _probe(python, cwd=tmp_path)
    expected = {
        "nextgpt": ROOT / "nextgpt",
        "nextgpt.encoders": ROOT / "encoders",
        "nextgpt.projectors": ROOT / "projectors",
        "nextgpt.decoders": ROOT / "decoders",
        "nextgpt.stages": ROOT / "stages",
    }
    for name, folder in expected.items():
        assert Path(info["mods"][name]) == folder / "__init__.py", f"{name} -> {info['mods'][name]}"
    assert not any(info["bare"].values()), f"bare top-level packages installed: {info['bare']}"
    assert set(info["presets"]) == {"tiny", "small", "nextgpt-7b", "nextgpt-7b-legacy"}
