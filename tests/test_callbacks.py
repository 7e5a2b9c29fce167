"""The headline callbacks in short real fits (tiny random CLIP + world-style pipeline): discover, caption,
generate, filter, inject, report; the pool and the rounds survive a checkpoint."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from tests.helpers import TINY_WORLD
from tests.tiny_models import make_tiny_clip, make_tiny_world_pipeline


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    clip_name = make_tiny_clip(root / "clip")
    return clip_name, make_tiny_world_pipeline(root / "world", clip_name)


def augment_overrides(tiny_models, budget=12):
    clip_name, pipe = tiny_models
    return TINY_WORLD + [
        "+augment=failure_diffusion", "data.val_per_group=6", "trainer.max_epochs=2",
        f"clip.name={clip_name}", "clip.pretrained=null", f"generator.model={pipe}",
        "generator.num_inference_steps=2", "generator.progress=false",
        "loop.start_epoch=1", "loop.max_rounds=1",
        "discovery.min_support=3", "discovery.min_error_gap=0.0",
        f"remedy.images_per_round={budget}", "remedy.batch_size=8",
        "~filters.clip_alignment",
    ]


def test_a_round_discovers_generates_filters_injects_and_reports(compose_cfg, tmp_path, tiny_models, caplog):
    from train import run

    cfg = compose_cfg(augment_overrides(tiny_models) + ["loop.rank_by=uncovered"])  # ranked by training coverage
    with caplog.at_level(logging.INFO, logger="callbacks.report"):
        run(cfg)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[blindspot] test")]
    assert len(summary) == 1 and summary[0].endswith(f"report: {tmp_path / 'report' / 'index.html'}")  # once, last
    assert f"{report['rounds'][0]['modes'][0]['mode_id']} '" in summary[0]
    assert len(report["rounds"]) == 1
    rnd = report["rounds"][0]
    assert rnd["epoch"] == 0 and rnd["modes"], "a barely trained model has failure modes"
    scores = [m["score"] for m in rnd["modes"]]
    assert scores == sorted(scores, reverse=True) and all(
        m["score"] == pytest.approx(m["extra"]["slice_score"] * (1 - m["extra"]["train_coverage"]))
        for m in rnd["modes"])
    assert "Training coverage (slice score → rank score)" in (tmp_path / "report" / "report.md").read_text()
    # waves until the round keeps remedy.target_kept (= images_per_round, 12) or hits max_generated (2 x 12)
    assert 12 <= rnd["generated"] <= 24 and rnd["kept"] + sum(rnd["rejected_by"].values()) == rnd["generated"]
    assert rnd["injected"] == min(rnd["kept"], 12)
    assert all(m["captions"] and m["mode_id"].startswith("r0-") for m in rnd["modes"])
    manifest = [json.loads(line) for p in (tmp_path / "generated").glob("manifest-rank*.jsonl")
                for line in p.read_text().splitlines()]
    assert len(manifest) == rnd["generated"] and len({r["id"] for r in manifest}) == rnd["generated"]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    pool = ckpt["WorldDataModule"]["synthetic"]
    assert len(pool) == rnd["injected"] and {r["path"] for r in pool} <= {r["path"] for r in manifest if r["kept"]}
    discovery_state = next(v for k, v in ckpt["callbacks"].items() if "FailureLoopCallback" in k)
    assert [m["mode_id"] for m in discovery_state["rounds"][0]["modes"]] == [m["mode_id"] for m in rnd["modes"]]
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "index.html").is_file()
    assert "test" in report["metrics"] and "baseline_test" in report["metrics"]
    stages = report["breakdown"]  # disjoint stages: training time excludes the discovery and generation after it
    assert stages["train"] > 0 and stages["generate"] > 0 and sum(stages.values()) <= report["wall_seconds"]


def test_untargeted_ablation_prompts_name_only_the_class(compose_cfg, tmp_path, tiny_models):
    from train import run

    cfg = compose_cfg(augment_overrides(tiny_models, budget=6)
                      + ["remedy.untargeted=true", "test=false"])
    run(cfg)
    prompts = {json.loads(line)["prompt"] for p in (tmp_path / "generated").glob("manifest-rank*.jsonl")
               for line in p.read_text().splitlines()}
    assert prompts and all(p.startswith("a photo of a ") and len(p.split()) == 5 for p in prompts)


def test_a_zero_budget_is_refused_before_training(compose_cfg, tiny_models):
    from train import run

    cfg = compose_cfg(augment_overrides(tiny_models) + ["remedy.images_per_round=0"])
    with pytest.raises(Exception, match="budget"):
        run(cfg)
