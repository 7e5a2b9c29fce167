"""Packaging: pyproject.toml declares the same pins as requirements.txt (the README's install)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_pins_are_the_requirements():
    pins = {line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()}
    pins -= {"", "-e ."}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert set(project["dependencies"]) | set(project["optional-dependencies"]["test"]) == pins


def test_the_packages_are_installed_from_this_clone():
    import blindspot
    import callbacks
    import datamodules
    import lightning_modules

    for module in (blindspot, callbacks, datamodules, lightning_modules):
        assert Path(module.__file__).resolve().is_relative_to(ROOT)
