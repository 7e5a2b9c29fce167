"""The failure loop in short real fits: the report does not depend on the order Lightning calls callbacks in,
and the W&B logger (offline) receives the mode-accuracy curves, one table per round, and the report's charts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.wandb_reader import history_and_summary
from tests.test_callbacks import augment_overrides, tiny_models  # noqa: F401  (module-scoped fixture)

TIMING_KEYS = {"wall_seconds", "breakdown", "seconds"}


def fit_and_test(cfg, reverse: bool):
    """train.run's steps, with the callbacks in configured or reversed order; returns the report dict."""
    import hydra
    import lightning as L

    from train import build

    L.seed_everything(cfg.seed, workers=True)
    dm, model, callbacks, loggers = build(cfg)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks[::-1] if reverse else callbacks,
                                      logger=loggers or False)
    trainer.fit(model, datamodule=dm)
    trainer.test(model, datamodule=dm)
    for lg in trainer.loggers:
        lg.finalize("success")
    if any(type(lg).__name__ == "WandbLogger" for lg in trainer.loggers):
        import wandb

        wandb.finish()  # flush the offline run's log before the test reads it back
    return json.loads((Path(cfg.paths.output_dir) / "report" / "report.json").read_text())


def without_timing(obj):
    """The report without wall times and paths (they differ between two identical runs)."""
    if isinstance(obj, dict):
        return {k: without_timing(v) for k, v in obj.items() if k not in TIMING_KEYS}
    if isinstance(obj, list):
        return [without_timing(v) for v in obj]
    return obj


def offline_run(run_dir: Path) -> Path:
    """The offline W&B run folder of a training run."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert runs, f"no offline W&B run under {run_dir}"
    return runs[-1]


def test_the_report_is_the_same_whatever_the_callback_order_and_wandb_gets_it(compose_cfg, tmp_path, tiny_models):
    over = augment_overrides(tiny_models) + ["trainer.max_epochs=2"]
    a = fit_and_test(compose_cfg([o if o != "logger=csv" else "logger=wandb" for o in over],
                                 output_dir=tmp_path / "a"), reverse=False)
    b = fit_and_test(compose_cfg(over, output_dir=tmp_path / "b"), reverse=True)
    assert a["rounds"] and a["rounds"][0]["status"] == "remedied" and a["rounds"][0]["injected"] > 0
    assert [t["epoch"] for t in a["timeline"]] == [0, 1] and all(t["val_acc"] is not None for t in a["timeline"])
    assert without_timing(a) == without_timing(b)
    assert any(m.get("test_slice", {}).get("n") for m in a["rounds"][0]["modes"]), "held-out slice evidence"

    run = offline_run(tmp_path / "a")
    files = [p for p in (run / "files").rglob("*") if p.is_file()]
    tables = [p for p in files if p.name.endswith(".table.json")]
    assert len(tables) == 1 and "round_0" in str(tables[0])  # one table for the one round, logged once
    table = json.loads(tables[0].read_text())
    assert [row[1] for row in table["data"]] == [m["mode_id"] for m in a["rounds"][0]["modes"]]
    assert "caption" in table["columns"] and "members" in table["columns"]
    charts = {p.name.split("_")[0] for p in files if p.suffix == ".png" and "charts" in str(p)}
    assert {"validation", "mode"} <= charts, "report charts logged as images"
    history, summary = history_and_summary(run)
    curves = [k for k in summary if k.startswith("blindspot/mode_acc/")]
    assert curves and sum(k in row for row in history for k in curves) >= len(curves) * 2, "a curve per mode"
    assert summary["blindspot/round_0/injected"] == a["rounds"][0]["injected"]
    assert summary["report/test_avg_acc"] == pytest.approx(a["metrics"]["test"]["avg_acc"])
    assert sum("blindspot/round_0/modes/_type" in row for row in history) == 1  # the table, logged once
