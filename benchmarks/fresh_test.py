"""A larger test split for the suite: every run's final model on fresh renders of its world, the same for every method.

A run's own test split holds 50 images per planted slice, so one seed's slice accuracy carries about ±13 points of
sampling noise (95%), and the ceiling run tests on other renders than the methods. Here each world's test design is
rendered again `factor` times as large with another data seed (no run trained, validated or tested on it), and
every run of the world (ERM, each method, the ceiling) is scored on those same images from its final checkpoint.
Results are cached in the run folder (`fresh_test.json`), keyed by the split and the checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from blindspot.runtime import last_checkpoint
from blindspot.world.dataset import SplitSizes, WorldSplit, build_split
from blindspot.world.spec import WorldSpec
from blindspot.world.suite import SuiteWorld

from .common import checkpoint_classifier

SEED_OFFSET = 7919  # added to a world's data seed: a split no run of the suite has seen
SPLIT = "fresh_test"  # the name the metrics go under in a report's `metrics`


def fresh_split(world: SuiteWorld, spec: WorldSpec, factor: int, cache_dir: str | os.PathLike | None) -> WorldSplit:
    """The world's test design with `factor` times the images per group, rendered from another data seed."""
    sizes = SplitSizes(test_per_group=world.test_per_group * factor)
    return build_split(spec, list(world.planted), "test", sizes, seed=world.seed + SEED_OFFSET, cache_dir=cache_dir)


def split_metrics(predicted: torch.Tensor, split: WorldSplit) -> dict:
    """Average, worst-group and per-group accuracy, as a run's report gives them for its test split."""
    correct = (predicted == split.labels).float()
    per_group = {name: float(correct[split.groups == i].mean()) for i, name in enumerate(split.group_names)
                 if bool((split.groups == i).any())}
    return {"avg_acc": float(correct.mean()), "worst_group_acc": min(per_group.values()), "per_group": per_group,
            "n": len(split)}


def fresh_metrics(run_dir: Path, split: WorldSplit) -> dict | None:
    """The run's final model on `split` (cached in the run folder); None if the run kept no checkpoint."""
    ckpt = last_checkpoint(run_dir)
    if not ckpt.exists():
        return None
    target = ckpt.resolve()  # last.ckpt links to the newest epoch: key by that file
    stat = target.stat()
    key = {"split": split.fingerprint, "checkpoint": target.name, "size": stat.st_size, "mtime": stat.st_mtime}
    cache = run_dir / "fresh_test.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("key") == key:
            return saved["metrics"]
    metrics = split_metrics(checkpoint_classifier(ckpt)(split.images), split)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "metrics": metrics}, indent=2) + "\n")
    os.replace(tmp, cache)
    return metrics
