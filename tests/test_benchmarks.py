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
    env = dict(os.environ, BLINDSPOT_RESULTS=str(out), WANDB_MODE="offline")  # `-m` from ROOT: ROOT is on sys.path
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--quick", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("module,keys", [
    ("discovery", ["min_cosine_vs_sklearn"]),
    ("perf_embedding", ["ratio_vs_raw", "cached_fraction", "cosine_min", "cosine_mean"]),
    ("perf_generation", ["ratio_vs_raw", "speedup_fast_vs_default", "agreement_drop", "images_per_s"]),
    ("perf_callback", ["overhead_fraction"]),
    ("perf_ddp_generation", ["speedup_2proc_vs_1proc", "identical_images", "max_abs_pixel_difference"]),
    ("perf_e2e", ["cpu_seconds"]),
    ("world_models", ["clip_class_acc", "clip_background_acc", "clip_color_acc", "clip_retrieval_r1",
                      "gen_class_agreement_min_pair", "gen_background_agreement_min_pair", "train_minutes_clip"]),
])
def test_quick_benchmark_writes_its_results(module, keys, tmp_path):
    run_benchmark(module, tmp_path)
    stem = {"discovery": "perf_discovery"}.get(module, module)
    result = json.loads((tmp_path / f"{stem}_quick.json").read_text())
    for key in keys:
        assert isinstance(result[key], (int, float)), key
    assert (tmp_path / f"{stem}_quick.md").read_text().strip()


def _check_quick_comparison(tmp_path, methods: list[str], *extra: str) -> dict:
    """`benchmarks.compare --quick` over `methods` writes a row per method and the chart; returns the rows."""
    args = ["--methods", ",".join(methods)] if methods else []
    run_benchmark("compare", tmp_path, "--out", str(tmp_path / "runs"), *args, *extra, timeout=1800)
    summary = json.loads((tmp_path / "compare_quick.json").read_text())
    from benchmarks.compare import METHODS

    assert set(summary) == set(methods or METHODS)
    for m in summary:
        assert 0.0 <= summary[m]["wga_mean"] <= summary[m]["avg_acc_mean"] <= 1.0
        assert summary[m]["seeds"] == 1
    assert (tmp_path / "compare_quick.png").stat().st_size > 1000
    return summary


def test_quick_comparison_runs_erm_and_the_headline(tmp_path):
    """ERM and the headline through the comparison (its ceiling runs in the quick suite; every method: -m slow)."""
    summary = _check_quick_comparison(tmp_path, ["none", "failure_diffusion"], "--fresh-test", "1")
    for m, row in summary.items():  # each run's checkpoint scored on 36 groups x 50 fresh renders, cached in its folder
        fresh = json.loads((tmp_path / "runs" / "quick" / m / "seed0" / "fresh_test.json").read_text())["metrics"]
        assert row["fresh_images"] == fresh["n"] == 1800 and row["fresh_wga_mean"] == fresh["worst_group_acc"]
    assert "worst group, fresh renders |" in (tmp_path / "compare_quick.md").read_text()


@pytest.mark.slow
def test_quick_comparison_runs_every_method(tmp_path):
    _check_quick_comparison(tmp_path, [])


def test_every_compared_method_composes_with_the_quick_overrides():
    """Each method's run (quick or not) is a config train.py composes (the runs themselves are tested elsewhere)."""
    from omegaconf import OmegaConf

    from benchmarks.compare import METHODS, run_args
    from benchmarks.runs import composed_config

    for method in METHODS:
        for quick in (False, True):
            cfg = OmegaConf.create(composed_config(tuple(run_args(method, 0, quick))))
            assert cfg.augment.name == ("none" if method == "ceiling" else method), method
            assert (cfg.data.train_per_class == 60) == quick, method


def fake_targeting_run(tmp_path):
    """A run folder whose 'kept pool' is rendered ground truth: 6 stars on grass, 2 on sand, 2 (rejected) on grass."""
    from blindspot.generation.manifest import append_records, manifest_path
    from blindspot.images import save_png
    from blindspot.world.render import render
    from blindspot.world.spec import BACKGROUNDS, CLASSES

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


def test_targeting_counts_kept_images_in_the_planted_group(tmp_path):
    """Of the 8 kept stars, the oracle puts 6 on grass."""
    from benchmarks.targeting import judge_run
    from blindspot.world.oracle import load_oracle
    from blindspot.world.spec import WorldSpec

    fake_targeting_run(tmp_path)
    [row] = judge_run(tmp_path, load_oracle(), WorldSpec())
    assert row["kept_of_class"] == 8 and row["in_group"] == 6 and row["in_group_share"] == pytest.approx(0.75)
    assert row["class_agreement"] == 1.0 and row["test_acc"] == 0.5 and "transfer_gap" not in row


def test_targeting_transfer_compares_kept_images_with_real_renders_of_the_slice(tmp_path):
    """Real renders of a slice are that slice (oracle); a classifier's accuracy on both sides gives the gap."""
    from benchmarks.targeting import accuracy, judge_run, slice_renders
    from blindspot.world.oracle import load_oracle
    from blindspot.world.spec import CLASSES, WorldSpec

    spec, oracle = WorldSpec(), load_oracle()
    renders = slice_renders(spec, "cross", "size", "small", n=64)
    read = oracle.predict(renders)
    assert renders.dtype == torch.uint8 and len(renders) == 64
    assert (read["class"] == CLASSES.index("cross")).float().mean() > 0.95
    assert (read["size"] == spec.sizes.index("small")).float().mean() > 0.95
    assert len(set(read["background"].tolist())) > 3  # the other attributes vary
    assert accuracy(lambda x: torch.full((len(x),), CLASSES.index("cross")), renders, "cross", spec) == 1.0
    assert accuracy(lambda x: torch.zeros(len(x), dtype=torch.long), renders, "cross", spec) == 0.0

    fake_targeting_run(tmp_path)
    [row] = judge_run(tmp_path, oracle, spec, predict=lambda x: oracle.predict(x)["class"])
    assert row["generated_acc"] == 1.0 and row["real_acc"] > 0.95
    assert row["transfer_gap"] == pytest.approx(row["generated_acc"] - row["real_acc"])


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


def _fake_report(rounds: list[dict], extra: dict | None = None) -> dict:
    """A report.json as train.py writes it, with only what the comparison reads."""
    test = {"avg_acc": 0.9, "worst_group_acc": 0.5, "per_group": {"star|grass": 0.5}}
    return {"metrics": {"test": test}, "rounds": rounds, "wall_seconds": 60.0} | ({"extra": extra} if extra else {})


def test_compare_counts_the_images_every_method_added(tmp_path):
    """From report.json files on disk: diffusion (kept / injected per round), retrieval (old: extra.retrieval, new:
    injected per round) and a method that adds nothing; the table, JSON and figure show the images added."""
    from benchmarks.compare import run_all, summarise, render

    reports = {
        ("failure_diffusion", 0): _fake_report([{"round": 0, "kept": 138}, {"round": 1, "kept": 94}]),  # old layout
        ("failure_diffusion", 1): _fake_report([{"round": 0, "kept": 140, "injected": 138},
                                                {"round": 1, "kept": 96, "injected": 94}]),
        ("retrieval", 0): _fake_report([{"round": 0, "kept": 0}, {"round": 1, "kept": 0}],  # old layout
                                       {"retrieval": {"0": {"retrieved": 256, "added": 256, "per_mode": {"m": 256}},
                                                      "1": {"retrieved": 256, "added": 256}}}),
        ("retrieval", 1): _fake_report([{"round": 0, "injected": 256}, {"round": 1, "injected": 256}],
                                       {"retrieval": {"0": {"added": 256}, "1": {"added": 256}}}),  # not twice
        ("none", 0): _fake_report([]), ("none", 1): _fake_report([]),
    }
    for (method, seed), report in reports.items():
        folder = tmp_path / "runs" / method / f"seed{seed}" / "report"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(report))
    runs = run_all(["none", "retrieval", "failure_diffusion"], [0, 1], tmp_path / "runs", quick=False, workers=1)
    summary = summarise(runs, [0, 1])  # finished runs are read back, nothing is trained
    assert {m: s["images_added"] for m, s in summary.items()} == {"none": 0, "retrieval": 512,
                                                                  "failure_diffusion": 232}
    text = render(tmp_path / "results", "compare", summary, [])
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[3] for line in text.splitlines()[2:5]}
    assert rows == {"none": "0", "retrieval": "512", "failure_diffusion": "232"}
    assert json.loads((tmp_path / "results" / "compare.json").read_text())["retrieval"]["images_added"] == 512
    assert (tmp_path / "results" / "compare.png").stat().st_size > 1000


def test_compare_measures_the_gap_to_the_ceiling_on_each_seed(tmp_path):
    """The ceiling is ERM on the default world with star|grass filled at its natural rate, and the gap closed on
    star|grass is (method - ERM) / (ceiling - ERM) per seed, from finished reports."""
    from benchmarks.compare import gap_rows, render, run_args, run_all, summarise

    args = run_args("ceiling", 1, quick=False)
    assert "+augment=none" in args and "seed=1" in args
    planted = next(a for a in args if a.startswith("data.planted="))
    assert "cls:star,attribute:background,value:grass,rate:0.166667" in planted  # 1 of 6 backgrounds
    star = {("none", 0): 0.1, ("none", 1): 0.3, ("ceiling", 0): 0.9, ("ceiling", 1): 0.7,
            ("failure_diffusion", 0): 0.8, ("failure_diffusion", 1): 0.7}
    for (method, seed), acc in star.items():
        report = _fake_report([])
        report["metrics"]["test"]["per_group"] = {"star|grass": acc}
        folder = tmp_path / "runs" / method / f"seed{seed}" / "report"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps(report))
    summary = summarise(run_all(["none", "failure_diffusion", "ceiling"], [0, 1], tmp_path / "runs", False, 1), [0, 1])
    (row,) = gap_rows(summary)
    assert row["method"] == "failure_diffusion" and row["group"] == "star|grass"
    assert row["gap_closed"] == pytest.approx({"0": 7 / 8, "1": 1.0}) and row["mean"] == pytest.approx(15 / 16)
    assert "| failure_diffusion | star\\|grass | 88% | 100% | 94% |" in render(tmp_path / "out", "c", summary, [])


def test_compare_reports_fresh_renders_beside_the_runs_own_test(tmp_path):
    """Rows whose runs were scored on the fresh split get its columns and gap table; rows from before show '–'."""
    from benchmarks.compare import render, summarise

    def report(own: float, fresh: float | None) -> dict:
        r = _fake_report([])
        r["metrics"]["test"]["per_group"] = {"star|grass": own}
        if fresh is not None:
            r["metrics"]["fresh_test"] = {"avg_acc": 0.95, "worst_group_acc": fresh, "n": 7200,
                                          "per_group": {"star|grass": fresh}}
        return r

    runs = {"none": [report(0.2, 0.3), report(0.4, 0.3)], "ceiling": [report(0.9, 0.9), report(0.8, 0.9)],
            "failure_diffusion": [report(0.8, 0.6), report(0.6, 0.9)], "jtt": [report(0.5, None), report(0.5, 0.5)]}
    summary = summarise(runs, [0, 1])
    assert summary["failure_diffusion"]["fresh_wga_mean"] == pytest.approx(0.75) and "fresh_wga_mean" not in summary["jtt"]
    text = render(tmp_path, "compare", summary, [])
    assert "| failure_diffusion | 90.0% ± 0.0% | 50.0% ± 0.0% | 0 | 1.0 min | 95.0% ± 0.0% | 75.0% ± 15.0% |" in text
    assert "| jtt | 90.0% ± 0.0% | 50.0% ± 0.0% | 0 | 1.0 min | – | – |" in text
    fresh = text.split("The same on fresh renders (7200 images")[1]
    assert "| failure_diffusion | star\\|grass | 50% | 100% | 75% |" in fresh  # (0.6-0.3)/(0.9-0.3), (0.9-0.3)/0.6


def test_embedding_baseline_is_open_clips_own_path(tmp_path, monkeypatch):
    """The raw baseline (open_clip's preprocess on PIL images) agrees with the wrapper on the same weights, and
    does not go through the wrapper: a broken wrapper shows up as disagreement instead of matching itself."""
    from benchmarks.perf_embedding import compare_paths
    from blindspot.clip import ClipModel
    from blindspot.world.corpus import corpus_batch
    from blindspot.world.spec import WorldSpec
    from tests.tiny_models import make_tiny_clip

    name = make_tiny_clip(tmp_path / "clip")
    images = corpus_batch(WorldSpec(), 24, seed=0).images
    result = compare_paths(name, None, images, batch_size=16, repeats=1)
    assert result["images"] == 24 and result["seconds_raw"] > 0 and result["seconds_blindspot"] > 0
    assert result["cosine_min"] > 0.999, result
    assert "Normalize" in result["raw_preprocess"]

    encode = ClipModel.encode_images
    monkeypatch.setattr(ClipModel, "encode_images", lambda self, x, batch_size=256: -encode(self, x, batch_size))
    broken = compare_paths(name, None, images, batch_size=16, repeats=1)
    assert broken["cosine_mean"] == pytest.approx(-1.0, abs=1e-3)


def test_ddp_generation_compares_every_image_exactly():
    """Per seed and per pixel: one pixel off by one is not identical, even where a pixel sum would agree."""
    import numpy as np

    from benchmarks.perf_ddp_generation import compare_images

    rng = np.random.default_rng(0)
    a = {s: rng.integers(0, 256, (3, 8, 8), dtype=np.uint8) for s in range(6)}
    assert compare_images(a, {s: x.copy() for s, x in a.items()}) == {
        "images_compared": 6, "identical_images": 6, "max_abs_pixel_difference": 0, "missing_seeds": [],
        "all_identical": True}
    a[2][0, 0, :2], a[4][1, 2, 3] = (10, 20), 100
    b = {s: x.copy() for s, x in a.items()}
    b[2][0, 0, :2] = (20, 10)  # two pixels swapped: the same pixel sum, a different image
    b[4][1, 2, 3] = 101
    del b[5]
    assert compare_images(a, b) == {"images_compared": 5, "identical_images": 3, "max_abs_pixel_difference": 10,
                                    "missing_seeds": [5], "all_identical": False}


def test_world_model_budget_is_judged_on_the_run_that_made_the_shipped_weights(tmp_path):
    """A faster re-run is shown as information; the budget passes or fails on the shipped weights' own run."""
    from benchmarks.world_models import judge, markdown

    (tmp_path / "world_clip").mkdir()
    (tmp_path / "world_clip" / "training.json").write_text(json.dumps({
        "wall_minutes": 76.78, "date": "2026-11-23 14:45:59",
        "reproductions": [{"date": "2026-12-01 10:03:13", "wall_minutes": 12.0}]}))
    (tmp_path / "world_diffusion").mkdir()
    (tmp_path / "world_diffusion" / "training.json").write_text(json.dumps({
        "total_wall_minutes": 87.08, "wall_minutes": 13.0, "date": "2026-12-01 10:17:32"}))
    result = judge({"gen_seconds_64_cpu": 10.0}, tmp_path)
    assert result["train_minutes_clip"] == 76.78 and result["train_minutes_clip_rerun"] == 12.0
    assert result["passed"]["train_minutes_clip"] is False
    assert result["train_minutes_diffusion"] == 87.08 and result["passed"]["train_minutes_diffusion"] is True
    assert result["train_minutes_diffusion_rerun"] is None
    text = markdown(result | {"gen_class_min_pair_ci95": [0.7, 0.9], "images_per_pair": 32, "gen_class_min_pair": "a",
                              "gen_background_min_pair": "b", "gen_class_agreement_mean": 0.9,
                              "gen_background_agreement_mean": 1.0, "machine": {"processor": "x", "torch_threads": 2}})
    assert "| train_minutes_clip | 76.78 | ≤ 30 | no |" in text
    assert "| train_minutes_clip_rerun | 12.00 | – | – |" in text
    assert "a re-run of the same command on 2026-12-01 took 12.00 min (information only" in text


def test_realism_reads_the_ceiling_run_and_draws_the_slice_as_the_renders_do(tmp_path):
    """The realism benchmark takes a world's finished ceiling run (never a retired one) and prompts the very
    attribute draws its real renders show."""
    from benchmarks.realism import ceiling_checkpoint
    from benchmarks.targeting import slice_draws, slice_renders
    from blindspot.world.render import render
    from blindspot.world.spec import WorldSpec

    with pytest.raises(FileNotFoundError, match="benchmarks.suite --config core"):
        ceiling_checkpoint(tmp_path, "w08", 0)
    for name in ("seed0-aaa.stale-20261206-000000", "seed0-bbb"):
        (tmp_path / "w08" / "ceiling" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "w08" / "ceiling" / name / "checkpoints" / "best_epoch_007.ckpt").touch()
    assert ceiling_checkpoint(tmp_path, "w08", 0).parts[-3] == "seed0-bbb"

    codes = slice_draws(WorldSpec(), "cross", "size", "small", n=16, seed=3)
    assert (codes["size"] == 0).all() and len(set(codes["background"].tolist())) > 2
    again = render(codes["class"], codes["background"], codes["color"], codes["size"], 3)
    assert torch.equal(again, slice_renders(WorldSpec(), "cross", "size", "small", n=16, seed=3))


def test_realism_reads_any_group_of_a_world_as_a_slice():
    """--groups 'cross|brick': the class, the attribute kind the value belongs to, and the value; a clear stop else."""
    from benchmarks.realism import group_slice

    assert group_slice("cross|brick") == {"group": "cross|brick", "class": "cross", "attribute": "background",
                                          "value": "brick"}
    assert group_slice("star|small")["attribute"] == "size"
    with pytest.raises(SystemExit, match="--groups 'cow|brick'"):
        group_slice("cow|brick")
