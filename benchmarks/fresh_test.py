"""A larger test split for the suite: every run's final model on fresh renders of its world, the same for every method.

A run's own test split holds 50 images per planted slice, so one seed's slice accuracy carries about ±13 points of
sampling noise (95%), and the ceiling run tests on other renders than the methods. Here each world's test design is
rendered again `factor` times as large with another data seed (no run trained, validated or tested on it), and
every run of the world (ERM, each method, the ceiling) is scored on those same images from its final checkpoint.
Results are cached in the run folder (`fresh_test.json`), keyed by the split and the checkpoint.

Any finished runs of a suite world can be scored this way, e.g. two settings over three seeds each (runs sharing a
label are pooled; results/<stem>.{json,md}):
    python -m benchmarks.fresh_test --world default cut=RUN_A0 cut=RUN_A1 cut=RUN_A2 whole=RUN_B0 ...
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

import torch

from blindspot.runtime import last_checkpoint
from blindspot.world.dataset import SplitSizes, WorldSplit, build_split
from blindspot.world.spec import WorldSpec
from blindspot.world.suite import SuiteWorld

from .common import ROOT, checkpoint_classifier, machine, table_cell, write

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


def run_cache_dir(run_dir: Path) -> Path:
    """Where the run's own world splits are cached (its composed `data.cache_dir`, relative to the repo root)."""
    from omegaconf import OmegaConf

    cache = OmegaConf.select(OmegaConf.load(run_dir / ".hydra" / "config.yaml"), "data.cache_dir")
    if cache is None:
        raise SystemExit(f"{run_dir}: its .hydra/config.yaml has no data.cache_dir (not a run on a world)")
    return ROOT / cache


def labelled_runs(items: list[str]) -> list[tuple[str, Path]]:
    """LABEL=RUN_DIR arguments (an existing RUN_DIR alone is labelled by its folder name), each run folder checked."""
    out = []
    for item in items:
        label, _, folder = ("", "", item) if Path(item).exists() else item.partition("=")
        run = Path(folder)
        if not last_checkpoint(run).exists():
            raise SystemExit(f"{run}: no {last_checkpoint(run).relative_to(run)} (not a finished run folder)")
        out.append((label or run.name, run))
    return out


def pooled(rows: list[dict], groups: list[str]) -> list[dict]:
    """Per label: the mean and (population) standard deviation over its runs of the average, worst-group and named groups."""
    out = []
    for label in dict.fromkeys(r["label"] for r in rows):
        mine = [r for r in rows if r["label"] == label]
        row = {"label": label, "runs": len(mine)}
        for key, values in [("avg_acc", [r["avg_acc"] for r in mine]),
                            ("worst_group_acc", [r["worst_group_acc"] for r in mine]),
                            *[(g, [r["per_group"][g] for r in mine]) for g in groups]]:
            row[key] = {"mean": statistics.fmean(values), "sd": statistics.pstdev(values)}  # as benchmarks.compare
        out.append(row)
    return out


def cell(stat: dict) -> str:
    """'88.3 ± 4.0' (percent) from {"mean", "sd"}."""
    return f"{100 * stat['mean']:.1f} ± {100 * stat['sd']:.1f}"


def main(argv: list[str] | None = None) -> int:
    """Score the given runs of one suite world on its fresh test split; write results/<stem>.{json,md}."""
    from .suite import build_worlds, load_config

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR (or RUN_DIR): finished runs of the world; a label pools")
    p.add_argument("--world", default="default", help="the suite world the runs trained on (its name)")
    p.add_argument("--config", default="default", help="conf/suite/<config>.yaml that generates the world")
    p.add_argument("--factor", type=int, default=None, help="times the world's test design (default: the config's)")
    p.add_argument("--groups", default="", help="comma-separated groups to report beside the worst (e.g. star|grass)")
    p.add_argument("--stem", default="fresh_test", help="output name under the results folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override of the suite config (e.g. --set worlds.seed=1); repeatable")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    spec, worlds = build_worlds(cfg)
    world = next((w for w in worlds if w.name == args.world), None)
    if world is None:
        raise SystemExit(f"--world {args.world}: not in --config {args.config}; its worlds: "
                         f"{', '.join(w.name for w in worlds)}")
    factor = args.factor or int(cfg.fresh_test_factor) or 4
    runs = labelled_runs(args.runs)
    split = fresh_split(world, spec, factor, run_cache_dir(runs[0][1]))
    groups = [g for g in args.groups.split(",") if g]
    unknown = [g for g in groups if g not in split.group_names]
    if unknown:
        raise SystemExit(f"--groups {','.join(unknown)}: not groups of {world.name} ({', '.join(split.group_names)})")
    rows = []
    for label, run in runs:
        print(f"[fresh_test] {label}: {run}", flush=True)
        rows.append({"label": label, "run": str(run), **fresh_metrics(run, split)})
    result = {"world": world.name, "config": args.config, "factor": factor, "seed_offset": SEED_OFFSET,
              "images": len(split), "groups": groups, "runs": rows, "pooled": pooled(rows, groups),
              "machine": machine()}
    table = [["label", "runs", "average", "worst group", *map(table_cell, groups)]]
    table += [[r["label"], r["runs"], cell(r["avg_acc"]), cell(r["worst_group_acc"]), *[cell(r[g]) for g in groups]]
              for r in result["pooled"]]
    path = write(args.stem, result, table, quick=False)
    print(f"[fresh_test] {len(split)} fresh images of {world.name} ({factor}x its test design): {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
