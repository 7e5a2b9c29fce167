"""Every benchmark's --quick mode runs and writes its JSON (plumbing, not the numbers) — what CI smoke-tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(module: str, out: Path, *args: str, timeout: int = 900) -> None:
    env = dict(os.environ, BLINDSPOT_RESULTS=str(out), PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("module,keys", [
    ("discovery", ["min_cosine_vs_sklearn"]),
    ("perf_embedding", ["ratio_vs_raw", "cached_fraction"]),
    ("perf_generation", ["ratio_vs_raw", "speedup_fast_vs_default", "agreement_drop", "images_per_s"]),
    ("perf_callback", ["overhead_fraction"]),
    ("perf_ddp_generation", ["speedup_2proc_vs_1proc"]),
    ("perf_e2e", ["cpu_seconds"]),
    ("world_models", ["clip_class_acc", "clip_background_acc", "clip_color_acc", "clip_retrieval_r1",
                      "gen_class_agreement_min_pair", "gen_background_agreement_min_pair"]),
])
def test_quick_benchmark_writes_its_results(module, keys, tmp_path):
    run_benchmark(module, tmp_path)
    stem = {"discovery": "perf_discovery"}.get(module, module)
    result = json.loads((tmp_path / f"{stem}_quick.json").read_text())
    for key in keys:
        assert isinstance(result[key], (int, float)), key
    assert (tmp_path / f"{stem}_quick.md").read_text().strip()


def test_quick_comparison_runs_every_method(tmp_path):
    run_benchmark("compare", tmp_path, "--out", str(tmp_path / "runs"), timeout=1800)
    summary = json.loads((tmp_path / "compare_quick.json").read_text())
    from benchmarks.compare import METHODS

    assert set(summary) == set(METHODS)
    for m in METHODS:
        assert 0.0 <= summary[m]["wga_mean"] <= summary[m]["avg_acc_mean"] <= 1.0
        assert summary[m]["seeds"] == 1
    assert (tmp_path / "compare_quick.png").stat().st_size > 1000
