"""Every benchmark's --quick mode runs and writes its JSON (plumbing, not the numbers) — what CI smoke-tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def test_targeting_counts_kept_images_in_the_planted_group(tmp_path):
    """Rendered ground truth as a 'kept pool': 6 stars on grass, 2 stars on sand, 2 (rejected) more on grass."""
    from benchmarks.targeting import judge_run
    from blindspot.generation.manifest import append_records, manifest_path
    from blindspot.images import save_png
    from blindspot.world.oracle import load_oracle
    from blindspot.world.render import render
    from blindspot.world.spec import BACKGROUNDS, CLASSES, WorldSpec

    backgrounds = ["grass"] * 6 + ["sand"] * 2 + ["grass"] * 2
    n = len(backgrounds)
    images = render(torch.full((n,), CLASSES.index("star")), torch.tensor([BACKGROUNDS.index(b) for b in backgrounds]),
                    torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long), seed=0)
    records = []
    (tmp_path / "generated").mkdir()
    for i, image in enumerate(images):
        save_png(image, tmp_path / "generated" / f"{i}.png")
        records.append({"id": f"r0-{i}", "round": 0, "class_name": "star", "kept": i < 8,
                        "path": str(tmp_path / "generated" / f"{i}.png")})
    append_records(manifest_path(tmp_path / "generated", 0), records)
    report = {"method": "failure_diffusion", "discovery": {"planted": [{"group": "star|grass", "value": "grass"}]},
              "metrics": {"test": {"per_group": {"star|grass": 0.5}}}}
    (tmp_path / "report").mkdir()
    (tmp_path / "report" / "report.json").write_text(json.dumps(report))
    [row] = judge_run(tmp_path, load_oracle(), WorldSpec())
    assert row["kept_of_class"] == 8 and row["in_group"] == 6 and row["in_group_share"] == pytest.approx(0.75)
    assert row["class_agreement"] == 1.0 and row["test_acc"] == 0.5


def test_compare_keeps_the_rows_of_methods_not_run_again(tmp_path):
    """A sweep of some methods replaces their rows and provenance and keeps every other method's."""
    from benchmarks.compare import merged, render

    row = {"avg_acc_mean": 0.9, "avg_acc_std": 0.0, "wga_mean": 0.5, "wga_std": 0.0, "images_added": 0,
           "wall_seconds": 60.0, "seeds": 3, "per_group_mean": {"star|grass": 0.5}}
    first = {"methods": ["none", "failure_diffusion"], "seeds": [0, 1, 2], "workers": 2, "cpu_count": 2,
             "minutes": 10.0, "commit": "aaa", "date": "d1"}
    render(tmp_path, "compare", {"none": row, "failure_diffusion": row}, [first])
    again = {"methods": ["failure_diffusion"], "seeds": [0, 1, 2], "workers": 2, "cpu_count": 2, "minutes": 5.0,
             "commit": "bbb", "date": "d2"}
    summary, provenance = merged(tmp_path, "compare", {"failure_diffusion": row | {"wga_mean": 0.8}}, again)
    assert summary["none"]["wga_mean"] == 0.5 and summary["failure_diffusion"]["wga_mean"] == 0.8
    assert [(e["methods"], e["commit"]) for e in provenance] == [(["none"], "aaa"), (["failure_diffusion"], "bbb")]
    text = render(tmp_path, "compare", summary, provenance)
    assert "| star\\|grass | 50% | 50% |" in text and "at commit bbb" in text


def test_wilson_interval_matches_the_textbook_values():
    """13 of 16 and 50 of 100: the interval contains the rate and widens as n shrinks."""
    from benchmarks.world_models import wilson_interval

    assert wilson_interval(0.5, 100) == pytest.approx([0.4038, 0.5962], abs=1e-4)
    low, high = wilson_interval(13 / 16, 16)
    assert low < 13 / 16 < high and high - low > 0.3
    assert wilson_interval(1.0, 32)[1] == 1.0
