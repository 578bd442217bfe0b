"""``ssebus.__version__`` is the installed distribution's version, the one pyproject.toml sets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import ssebus

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_version_is_the_one_pyproject_declares() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    declared = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    assert ssebus.__version__ == declared


def test_version_falls_back_to_0_unknown_without_distribution_metadata() -> None:
    # A source tree put on sys.path without installing it has no distribution metadata.
    code = (
        "import importlib.metadata as m\n"
        "def missing(name): raise m.PackageNotFoundError(name)\n"
        "m.version = missing\n"
        "import ssebus; print(ssebus.__version__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "0+unknown"
