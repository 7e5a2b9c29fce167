"""train.py end to end on a tiny world: ERM, exact resume, multirun, and 2-process DDP (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_WORLD

ROOT = Path(__file__).resolve().parents[1]


def run_train(cfg):
    from train import run

    return run(cfg)


def test_erm_run_writes_report_and_returns_the_sweep_metric(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY_WORLD)
    value = run_train(cfg)
    assert value is not None and 0.0 <= value <= 1.0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    test = report["metrics"]["test"]
    assert len(test["per_group"]) == 36 and 0.0 <= test["worst_group_acc"] <= test["avg_acc"] <= 1.0
    assert report["rounds"] == []
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_resume_from_a_checkpoint_continues_the_same_run(compose_cfg, tmp_path):
    full = compose_cfg(TINY_WORLD + ["trainer.max_epochs=2", "test=false"], output_dir=tmp_path / "full")
    run_train(full)
    first = compose_cfg(TINY_WORLD + ["trainer.max_epochs=2", "test=false", "+trainer.max_steps=12"],
                        output_dir=tmp_path / "half")  # the same run, stopped after its first epoch (12 steps)
    run_train(first)
    resumed = compose_cfg(TINY_WORLD + ["trainer.max_epochs=2", "test=false",
                                        f"ckpt_path={tmp_path / 'half' / 'checkpoints' / 'last.ckpt'}"],
                          output_dir=tmp_path / "half")
    run_train(resumed)
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-5), k  # same as never stopping



def test_a_resumed_run_continues_from_its_own_checkpoint_before_ckpt_path(compose_cfg, tmp_path, monkeypatch):
    """A suite run that starts from ERM's checkpoint (ckpt_path) and is resumed continues its own last epoch."""
    import lightning

    started_from = []
    monkeypatch.setattr(lightning.Trainer, "fit", lambda self, *a, ckpt_path=None, **k: started_from.append(ckpt_path))
    run_dir, erm = tmp_path / "run", tmp_path / "erm" / "keep_epoch_003.ckpt"
    (run_dir / "checkpoints").mkdir(parents=True)
    args = TINY_WORLD + ["test=false", f"resume={run_dir}", f"ckpt_path={erm}"]
    run_train(compose_cfg(args, output_dir=run_dir))  # no checkpoint of its own yet: where it started
    (run_dir / "checkpoints" / "last.ckpt").touch()
    run_train(compose_cfg(args, output_dir=run_dir))
    assert started_from == [str(erm), str(run_dir / "checkpoints" / "last.ckpt")]


def test_a_new_run_neither_continues_nor_overwrites_an_old_one_in_its_folder(compose_cfg, tmp_path):
    import shutil

    args = TINY_WORLD + ["trainer.max_epochs=1", "test=false"]
    run_train(compose_cfg(args))
    with pytest.raises(FileExistsError, match=f"resume={tmp_path}"):
        run_train(compose_cfg(args))
    # a run killed in its first epoch leaves only on_exception.ckpt: resuming it starts again, never from that state
    ckpts = tmp_path / "checkpoints"
    shutil.copy(ckpts / "last.ckpt", ckpts / "on_exception.ckpt")  # a finished epoch: restoring it would train none
    for p in ckpts.glob("*epoch*.ckpt"):
        p.unlink()
    (ckpts / "last.ckpt").unlink()
    run_train(compose_cfg(args + [f"resume={tmp_path}"]))
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["epoch"] == 0  # epoch 0 trained again
    assert not (ckpts / "on_exception.ckpt").exists()  # a run that ends normally keeps no crash checkpoint


def _python(args, cwd=ROOT, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "train.py", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_multirun_gives_each_job_its_own_folder(tmp_path):
    out = _python(["-m", "seed=0,1", *TINY_WORLD, f"paths.log_dir={tmp_path}", "hydra/launcher=local"])
    assert out.returncode == 0, out.stderr[-3000:]
    reports = sorted(tmp_path.glob("train/multiruns/*/*/report/report.json"))
    assert len(reports) == 2
    seeds = {json.loads((r.parents[1] / ".hydra" / "config.yaml").read_text().split("seed: ")[1].split("\n")[0])
             for r in reports}
    assert seeds == {0, 1}


def test_ddp_two_processes_share_one_folder_see_disjoint_data_and_reduce_metrics(tmp_path):
    out = _python(["trainer=ddp", "trainer.devices=2", *TINY_WORLD, f"hydra.run.dir={tmp_path / 'run'}",
                   "+callbacks.record._target_=tests.helpers.RecordSeenSamples",
                   f"+callbacks.record.output_dir={tmp_path / 'run' / 'seen'}"])
    assert out.returncode == 0, out.stderr[-3000:]
    runs = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert runs == [tmp_path / "run"]  # one output folder for both ranks
    seen = [json.loads((tmp_path / "run" / "seen" / f"seen_rank{r}.json").read_text()) for r in (0, 1)]
    assert seen[0]["pid"] != seen[1]["pid"] and seen[0]["world_size"] == 2
    assert not set(seen[0]["train"]) & set(seen[1]["train"])  # disjoint shards
    assert len(set(seen[0]["train"]) | set(seen[1]["train"])) == 360  # together: the whole train set
    val = {i: (p, y) for s in seen for i, p, y in s["val"]}
    global_acc = sum(p == y for p, y in val.values()) / len(val)
    metrics = (tmp_path / "run" / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    row = next(line.split(",") for line in metrics[1:] if line.split(",")[header.index("val/acc")])
    assert float(row[header.index("val/acc")]) == pytest.approx(global_acc, abs=1e-6)  # reduced over ranks
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["metrics"]["test"]["avg_acc"] is not None


ONE_CYCLE = ["model.scheduler._target_=torch.optim.lr_scheduler.OneCycleLR", "~model.scheduler.T_max",
             "+model.scheduler.max_lr=0.002", "model.scheduler_interval=step"]


def test_a_step_schedule_spans_the_run_and_holds_at_its_end(compose_cfg, tmp_path):
    from lightning_modules.classifier import ImageClassifier

    run_train(compose_cfg(TINY_WORLD + ONE_CYCLE + ["trainer.max_epochs=2", "test=false"]))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    schedule = ckpt["lr_schedulers"][0]
    assert schedule["total_steps"] == ckpt["global_step"] == 24  # 2 epochs x 12 batches, filled in by the module
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=4)
    for _ in range(10):  # injected samples can make epochs longer than planned: no error, the last rate holds
        ImageClassifier.lr_scheduler_step(None, one_cycle, None)
    assert one_cycle.last_epoch == 3 and opt.param_groups[0]["lr"] == pytest.approx(one_cycle.get_last_lr()[0])
