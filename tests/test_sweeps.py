"""Hydra sweeps: the comparison multirun composes for every method, and a 2-trial Optuna search runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.compare import CEILING, METHODS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", [m for m in METHODS if m != CEILING])  # the ceiling is +augment=none on a filled world
def test_every_method_composes(compose_cfg, method):
    cfg = compose_cfg([f"+augment={method}", "experiment=compare", "hparams_search=failure_diffusion_optuna"]
                      if method == "failure_diffusion" else [f"+augment={method}", "experiment=compare"])
    assert cfg.augment.name == method
    assert cfg.callbacks.failure_report.method == method


def test_optuna_search_runs_two_trials(tmp_path):
    args = ["-m", "hparams_search=lr_optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
            "data.train_per_class=30", "data.val_per_group=2", "data.test_per_group=1", "trainer.max_epochs=1",
            "logger=none", "test=false", f"paths.log_dir={tmp_path}"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = list(tmp_path.rglob("optimization_results.yaml"))
    assert len(results) == 1 and "best_value" in results[0].read_text()
    assert len(list(tmp_path.rglob("report.json"))) == 2


@pytest.mark.parametrize("launcher,target", [("local", "BasicLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "train.py", f"hydra/launcher={launcher}", "--cfg", "hydra",
                           "--package", "hydra.launcher"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert target in proc.stdout
    if launcher == "slurm":
        assert "timeout_min: 240" in proc.stdout and "signal_delay_s: 120" in proc.stdout
