"""Shared fixtures: composed Hydra configs shrunk for tests, outputs in tmp_path, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]  # pytest.ini's `pythonpath = .` makes `tests.*` importable
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("BLINDSPOT_ROOT", str(ROOT))

import torch  # noqa: E402

# under pytest-xdist every worker gets one core's worth of threads (two workers on the 2-core CI machine)
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture
def compose_cfg(tmp_path):
    """compose(overrides) -> a train config writing into tmp_path (GlobalHydra cleared afterwards)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from blindspot.runtime import register_resolvers

    register_resolvers()

    def _compose(overrides=(), output_dir=None):
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=False)
        from omegaconf import OmegaConf, open_dict

        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir or tmp_path)
            cfg.paths.root_dir = str(ROOT)
        OmegaConf.resolve(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()
