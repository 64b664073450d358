"""Both install modes expose one import namespace: nextgpt, nextgpt.encoders, ... (no bare names).

Each test makes a throwaway virtualenv that sees this environment's dependencies (:func:`_venv`) and
installs *this* source tree into it, editable or as a wheel, without
touching the network (``--no-deps --no-build-isolation``). A subprocess then imports every subpackage
and reports where each came from.
"""

from __future__ import annotations

import json
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = [
    "nextgpt",
    "nextgpt.mediaio",
    "nextgpt.web",
    "nextgpt.api",
    "nextgpt.encoders",
    "nextgpt.projectors",
    "nextgpt.decoders",
    "nextgpt.stages",
    "nextgpt.stages.cache",
    "nextgpt.stages.data",
    "nextgpt.stages.data.convert",
    "nextgpt.stages.data.shards",
]
# Top-level names that must NOT be installed: they belong to unrelated PyPI projects.
FORBIDDEN = ["encoders", "decoders", "stages", "projectors"]

PROBE = f"""
import importlib, importlib.util, json, sys
mods = {{name: importlib.import_module(name).__file__ for name in {SUBPACKAGES!r}}}
bare = {{name: importlib.util.find_spec(name) is not None for name in {FORBIDDEN!r}}}
from nextgpt.config import NextGPTConfig, list_presets
presets = {{name: NextGPTConfig.from_preset(name).name for name in list_presets()}}
import torch
print(json.dumps({{"mods": mods, "bare": bare, "presets": presets, "torch": torch.__file__}}))
"""


def _venv(tmp_path: Path) -> Path:
    """A venv that sees the packages of the interpreter running the tests (system Python, a venv or
    conda alike). ``system_site_packages=True`` would not: inside a venv it exposes the *base*
    interpreter's packages. Instead a ``.pth`` file adds this environment's site-packages folders
    after the new venv's own (plain path entries: their own ``.pth`` files, such as an editable
    install of this tree, stay inactive)."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    outer = [p for p in [*site.getsitepackages(), site.getusersitepackages()] if Path(p).is_dir()]
    Path(purelib, "_nextgpt_test_outer_env.pth").write_text("\n".join(outer) + "\n")
    return python


def _pip(args: list[str]) -> None:
    # The venv has no pip of its own: the outer pip installs into it with `--python`.
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, capture_output=True, text=True)


def _probe(python: Path, cwd: Path) -> dict:
    out = subprocess.run([str(python), "-c", PROBE], check=True, capture_output=True, text=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.install
@pytest.mark.slow
@pytest.mark.heavy  # the editable install test below covers the same imports in a tenth of the time
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
    assert set(info["presets"]) == {
        "tiny",
        "small",
        "nextgpt-7b",
        "nextgpt-7b-legacy",
        "qwen2.5-7b",
        "llmbind-7b",
        "imagebind-llm-7b",
    }


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
    # the dependencies come from the environment running the tests (a venv, conda or the system
    # Python), not from whatever base interpreter that environment was made from
    import torch

    assert Path(info["torch"]).resolve() == Path(torch.__file__).resolve()
    assert not any(info["bare"].values()), f"bare top-level packages installed: {info['bare']}"
    assert set(info["presets"]) == {
        "tiny",
        "small",
        "nextgpt-7b",
        "nextgpt-7b-legacy",
        "qwen2.5-7b",
        "llmbind-7b",
        "imagebind-llm-7b",
    }


def _requirements() -> dict[str, str]:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [ln.strip() for ln in cfg["options"]["install_requires"].splitlines()]
    return {
        ln.split(">")[0].split("=")[0].split("<")[0].strip(): ln
        for ln in lines
        if ln and not ln.startswith("#")
    }


def test_declared_minimums_are_ones_the_code_works_with() -> None:
    """setup.cfg's floors: the oldest versions the suite was run with (in a throwaway venv, see the
    comment there), and the packages a real Vicuna folder needs (SentencePiece + protobuf). The
    installed versions satisfy every requirement."""
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    reqs = {name: Requirement(line) for name, line in _requirements().items()}
    floors = {
        "transformers": "5.6",
        "peft": "0.18",
        "diffusers": "0.36",
        "accelerate": "1.2",
        "lightning": "2.6",
    }
    for name, floor in floors.items():
        lows = [Version(s.version) for s in reqs[name].specifier if s.operator == ">="]
        assert lows and min(lows) >= Version(floor), (name, str(reqs[name].specifier))
    assert {"sentencepiece", "protobuf"} <= set(reqs)
    for name, req in reqs.items():
        assert req.specifier.contains(version(name), prereleases=True), (name, version(name), str(req))
