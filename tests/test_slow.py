"""Release checks (slow: minutes each; `python -m pytest -q -m slow`): the headline with the shipped world models,
and SIGTERM in the middle of a generation round."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.helpers import pool_of
from tests.test_reliability import BUDGET, finish, headline, records, start, tiny_models  # noqa: F401

pytestmark = pytest.mark.slow


def test_the_headline_with_the_shipped_models_finds_names_and_fixes_the_planted_blind_spot(tmp_path):
    run = tmp_path / "headline"
    finish(start(["+augment=failure_diffusion", "logger=csv", f"hydra.run.dir={run}"]), timeout=1800)
    report = json.loads((run / "report" / "report.json").read_text())
    first = report["rounds"][0]
    assert first["modes"][0]["class_name"] == "star", "the planted blind spot is found first"
    assert report["discovery"]["planted_recall"] == 1.0 and report["discovery"]["caption_hit"] == 1.0
    assert "grass" in first["modes"][0]["caption"]
    before = report["metrics"]["baseline_test"]["worst_group_acc"]
    after = report["metrics"]["test"]["worst_group_acc"]
    assert after >= before + 0.3, f"worst group {before:.0%} -> {after:.0%}"
    assert report["metrics"]["test"]["avg_acc"] >= report["metrics"]["baseline_test"]["avg_acc"]
    assert first["injected"] > 0 and (run / "report" / "charts").is_dir()


def test_sigterm_in_the_middle_of_generation_stops_between_batches_and_resumes_exact(tiny_models, tmp_path):
    reference = tmp_path / "reference"
    finish(start(headline(tiny_models, reference)))
    run = tmp_path / "stopped"
    proc = start(headline(tiny_models, run))
    deadline = time.time() + 300
    while proc.poll() is None and len(records(run)) < BUDGET // 3 and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    partial = records(run)
    assert 0 < len(partial) < BUDGET, "stopped in the middle of the round"
    assert len(partial) % 2 == 0, "generation stops between batches (batch_size=2): no half batch recorded"
    for path in (run / "generated").glob("manifest-rank*.jsonl"):
        assert path.read_text().endswith("\n"), "the manifest ends with a whole record"
    finish(start(headline(tiny_models, run, extra=[f"resume={run}"])))
    assert len(records(run)) == BUDGET
    assert pool_of(run / "checkpoints" / "last.ckpt") == pool_of(reference / "checkpoints" / "last.ckpt")
