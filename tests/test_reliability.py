"""Crash safety and clear errors: kill mid-generation and resume (nothing lost or made twice), exact resume
after a round, SIGTERM, generation faults, DDP faults, and bad input named before any long work starts."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from blindspot.images import load_image
from tests.helpers import TINY_WORLD, pool_of
from tests.tiny_models import make_tiny_clip, make_tiny_world_pipeline

ROOT = Path(__file__).resolve().parents[1]
BUDGET = 24


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_models")
    clip_name = make_tiny_clip(root / "clip")
    return clip_name, make_tiny_world_pipeline(root / "world", clip_name)


def headline(tiny_models, run_dir, steps=12, extra=()):
    clip_name, pipe = tiny_models
    return [*TINY_WORLD, "+augment=failure_diffusion", "data.val_per_group=6", "trainer.max_epochs=2", "test=false",
            f"clip.name={clip_name}", "clip.pretrained=null", f"generator.model={pipe}",
            f"generator.num_inference_steps={steps}", "generator.progress=false",
            "loop.start_epoch=1", "loop.max_rounds=1",
            "discovery.min_support=3", "discovery.min_error_gap=0.0",
            f"remedy.images_per_round={BUDGET}", f"remedy.max_generated={2 * BUDGET}",  # waves, at most 2 x BUDGET
            "remedy.batch_size=2",
            # a random tiny CLIP/classifier would reject every image: keep the filters that judge pixels only
            "~filters.clip_alignment", "~filters.classifier",
            f"hydra.run.dir={run_dir}", *extra]


def start(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "train.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def records(run_dir: Path) -> list[dict]:
    out = []
    for p in (run_dir / "generated").glob("manifest-rank*.jsonl"):
        out += [json.loads(line) for line in p.read_text().split("\n")[:-1] if line]
    return out


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]


def whole_and_unique(recs: list[dict], when: str) -> list[dict]:
    """The manifest records, checked: no image made twice, and every recorded image whole on disk."""
    assert len({(r["mode_id"], r["seed"]) for r in recs}) == len(recs), f"{when}: an image was made twice"
    for r in recs:  # written before it was recorded
        assert load_image(r["path"]).shape == (3, 32, 32), f"{when}: {r['path']}"
    return recs


def test_kill_during_generation_then_resume_loses_and_repeats_nothing(tiny_models, tmp_path):
    """One run killed three times (just started, mid-round, every image made) and resumed each time: each kill
    leaves whole images only, and the run ends with exactly the clean run's images and pool."""
    reference = tmp_path / "reference"
    finish(start(headline(tiny_models, reference)))
    expected = pool_of(reference / "checkpoints" / "last.ckpt")
    made = len(records(reference))  # waves until remedy.target_kept (= BUDGET) are kept, at most 2 x BUDGET
    assert BUDGET <= made <= 2 * BUDGET and expected
    run = tmp_path / "killed"
    for name, kill_at in (("early", 2), ("middle", made // 2), ("end", made)):
        before = len(records(run))
        proc = start(headline(tiny_models, run, extra=[f"resume={run}"] if before else []))
        deadline = time.time() + 300
        while proc.poll() is None and len(records(run)) < kill_at and time.time() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None or name == "end", f"{name}: the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        recs = whole_and_unique(records(run), name)
        assert len(recs) >= kill_at > before, f"{name}: killed before the images it was meant to make"
    finish(start(headline(tiny_models, run, extra=[f"resume={run}"])))
    recs = whole_and_unique(records(run), "resumed to the end")
    assert len(recs) == made, "the round must end with exactly the clean run's count"
    images = {p.name for p in (run / "generated" / "round_0" / "images").iterdir()}
    assert images == {Path(r["path"]).name for r in recs}, "orphan files left behind"
    assert pool_of(run / "checkpoints" / "last.ckpt") == expected, "the pool differs from a clean run"


def test_resume_after_a_round_restores_modes_pool_counters_and_continues(compose_cfg, tmp_path, tiny_models):
    from train import run

    def cfg(out, extra):
        over = headline(tiny_models, out, steps=2)[:-1] + ["trainer.max_epochs=3",
                                                           "loop.max_rounds=2",
                                                           "loop.every_n_epochs=1", *extra]
        return compose_cfg([o for o in over if not o.startswith("hydra.")], output_dir=out)

    def loop_state(ckpt):
        return next(v for k, v in ckpt["callbacks"].items() if "FailureLoopCallback" in k)

    def batches(n, size):  # the train loader drops a last batch of one image (datamodules/base.py)
        return n // size if n % size == 1 else math.ceil(n / size)

    run(cfg(tmp_path / "full", []))
    full = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    data = cfg(tmp_path / "full", []).data
    real, injected = data.train_per_class * len(data.classes), loop_state(full)["rounds"][0]["stats"]["injected"]
    steps = batches(real, data.batch_size) + batches(real + data.synthetic_repeat * injected, data.batch_size)
    run(cfg(tmp_path / "half", [f"+trainer.max_steps={steps}"]))  # stops after epoch 2 (round 0 done, round 1 done)
    half = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=False)
    state = loop_state(half)
    assert len(state["rounds"]) == 2 and half["WorldDataModule"]["synthetic"]
    assert [r["status"] for r in state["rounds"]] == ["remedied", "remedied"]
    assert BUDGET <= state["rounds"][0]["stats"]["generated"] <= 2 * BUDGET
    run(cfg(tmp_path / "half", [f"ckpt_path={tmp_path / 'half' / 'checkpoints' / 'last.ckpt'}"]))
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=False)
    rounds = lambda c: [[m["mode_id"] for m in r["modes"]] for r in  # noqa: E731
                        next(v for k, v in c["callbacks"].items() if "FailureLoopCallback" in k)["rounds"]]
    assert rounds(a) == rounds(b)
    assert [Path(r["path"]).name for r in a["WorldDataModule"]["synthetic"]] == \
        [Path(r["path"]).name for r in b["WorldDataModule"]["synthetic"]]
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-5), k


def test_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    proc = start([*TINY_WORLD, "trainer.max_epochs=30", "test=false", f"hydra.run.dir={run}"])
    deadline = time.time() + 300
    while proc.poll() is None and not (run / "checkpoints" / "last.ckpt").exists() and time.time() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=300)
    assert (run / "checkpoints" / "on_exception.ckpt").is_file()
    finish(start([*TINY_WORLD, "trainer.max_epochs=3", "test=false", f"resume={run}"]))
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"] == 2


def test_generation_failing_on_one_ddp_rank_stops_every_rank(tiny_models, tmp_path):
    args = headline(tiny_models, tmp_path / "ddp", steps=2) + [
        "trainer=ddp", "trainer.devices=2", "generator._target_=tests.helpers.failing_backend",
        "+generator.fail_rank=1", "trainer.strategy.timeout.minutes=2"]
    proc = start(args)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode != 0
    # rank 0 names rank 1's error itself: it may stop rank 1 before rank 1's own traceback is written
    failed = [line for line in err.splitlines() if "generation failed in round 0 on rank 1:" in line]
    assert any("simulated generator crash on rank 1" in line for line in failed), err[-4000:]


def test_setup_error_on_one_ddp_rank_ends_the_run_without_waiting_for_the_timeout(tiny_models, tmp_path):
    # Lightning's OnExceptionCheckpoint would wait in a barrier that rank 0 (in another collective) never enters
    for attempt in (1, 2):
        proc = start(headline(tiny_models, tmp_path / f"ddp{attempt}", steps=2) + [
            "trainer=ddp", "trainer.devices=2", "+callbacks.fail._target_=tests.helpers.FailInSetup",
            "+callbacks.fail.fail_rank=1", "trainer.strategy.timeout.minutes=3"])
        out, err = proc.communicate(timeout=600)
        assert proc.returncode != 0
        assert "Timed out" not in err, err[-4000:]  # what the test is for: no rank waits out the timeout
        # Under load, rank 1's own traceback was once missing (2026-12-06 CI, 1 in ~10 runs; never alone) while
        # rank 0 reported gloo's "Connection closed by peer": not understood yet, so that case alone runs again and
        # warns with what rank 0 now logs about rank 1's end (exit code or signal; a native crash prints its stack)
        if "simulated setup failure on rank 1" in err or "Connection closed by peer" not in err:
            break
        warnings.warn("rank 1's error missing on attempt 1; rank 0 said: " + " | ".join(
            line for line in (out + err).splitlines() if "other DDP ranks" in line or "Fatal Python error" in line))
    assert "simulated setup failure on rank 1" in err, err[-4000:]
    # rank 0 names how rank 1 ended (its 2 s wait may end before rank 1's exit under load)
    pattern = r"the other DDP ranks on this node: local rank 1 \(pid \d+\) (exited with code 1|is still running)"
    assert re.search(pattern, out), out[-4000:]


def test_rank_exits_are_described_and_native_crashes_print_a_stack():
    from blindspot.runtime import describe_rank_exits

    crash = "from blindspot.runtime import enable_crash_tracebacks as e; e(); import ctypes; ctypes.string_at(0)"
    children = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True)
                for code in ("raise SystemExit(3)", crash, "import time; time.sleep(60)")]
    try:
        lines = describe_rank_exits(children, timeout=5)  # the last one runs on: the wait ends at the timeout
    finally:
        children[2].kill()
    assert lines[0] == f"local rank 1 (pid {children[0].pid}) exited with code 3"
    assert lines[1] == f"local rank 2 (pid {children[1].pid}) was killed by SIGSEGV"
    assert lines[2] == f"local rank 3 (pid {children[2].pid}) is still running"
    assert "Fatal Python error: Segmentation fault" in children[1].communicate()[1]


def test_ddp_shards_generation_and_every_rank_trains_on_the_same_pool(tiny_models, tmp_path):
    run = tmp_path / "ddp"
    finish(start(headline(tiny_models, run, steps=2) + [
        "trainer=ddp", "trainer.devices=2", "+callbacks.dump._target_=tests.helpers.DumpPool",
        f"+callbacks.dump.output_dir={run / 'pools'}"]))
    recs = records(run)
    assert BUDGET <= len(recs) <= 2 * BUDGET and len({r["id"] for r in recs}) == len(recs)
    assert {r["rank"] for r in recs} == {0, 1}  # both ranks generated, disjoint items
    pools = [json.loads((run / "pools" / f"pool_rank{r}.json").read_text()) for r in (0, 1)]
    # exactly remedy.target_kept (= BUDGET) injected, or every kept image if the cap came first
    assert pools[0] == pools[1] and len(pools[0]) == min(BUDGET, sum(r["kept"] for r in recs))
    assert len(list(run.rglob("report.json"))) == 1  # exactly one report


@pytest.mark.parametrize("override,match", [
    (["clip.name=blindspot-world-clip", "clip.pretrained=/nonexistent/clip.safetensors"], "clip.pretrained"),
    (["generator.model=/nonexistent/pipeline"], "generator.model"),
    (["model.backbone=resnet_does_not_exist"], "unknown timm model"),
    (["vocabulary=file", "vocabulary.path=/nonexistent/vocab.yaml"], "vocabulary.path"),
    (["data.planted=[{cls: dragon, attribute: background, value: grass, rate: 0.1}]"], "dragon"),
    (["remedy.images_per_round=0"], "budget"),
    (["remedy.output_dir=/proc/version/generated"], "cannot write"),
])
def test_bad_input_is_named_before_training(compose_cfg, tiny_models, tmp_path, override, match):
    from train import run

    base = [o for o in headline(tiny_models, tmp_path, steps=2) if not o.startswith("hydra.")]
    with pytest.raises(Exception, match=match):
        run(compose_cfg(base + override))


def test_corrupt_weights_are_named(tmp_path, tiny_models):
    from blindspot.clip import WeightsNotFoundError, load_clip
    from blindspot.generation.backends import DiffusersText2Image

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsNotFoundError, match="corrupt"):
        load_clip("blindspot-world-clip", pretrained=str(bad))
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(tiny_models[1], pipe)
    (pipe / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    with pytest.raises(WeightsNotFoundError, match="corrupt"):
        DiffusersText2Image(str(pipe)).load()


def test_nan_loss_stops_with_the_step_and_batch_named(compose_cfg):
    from train import run

    with pytest.raises(FloatingPointError, match=r"global step \d+ .*batch \d+"):
        run(compose_cfg([*TINY_WORLD, "model.optimizer.lr=1e30"]))
