"""Did generation hit the blind spot? The world oracle judges each run's kept images (world only).

    python -m benchmarks.targeting                       # the comparison sweep's diffusion runs
    python -m benchmarks.targeting outputs/exp/run_a outputs/exp/run_b

For every planted blind spot (e.g. star|grass) and every run: how many kept images carry the class, the share
the oracle places in the planted group (right class *and* the planted attribute value), the oracle's class
agreement, and the group's final test accuracy. Targeted prompts should put far more images in the group than
class-name prompts; this measures by how much. Where the run saved its classifier (checkpoints/last.ckpt), also
whether the images taught the real slice: the final classifier's accuracy on the kept in-group images against
its accuracy on fresh real renders of the slice (a transfer gap: the model fits generated images it cannot yet
carry over to real ones). Writes benchmarks/results/targeting.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from blindspot.generation.manifest import read_manifest
from blindspot.images import load_image
from blindspot.runtime import last_checkpoint
from blindspot.world.oracle import HEADS, load_oracle
from blindspot.world.render import render
from blindspot.world.spec import BACKGROUNDS, CLASSES, COLORS, SIZES, WorldSpec

from .common import checkpoint_classifier, machine, table_cell, write

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RUNS = sorted(p for p in (ROOT / "outputs" / "compare" / "full").glob("*_diffusion/seed*")
                      if p.name[4:].isdigit())  # not the retired <seed>.stale-<time> folders


REAL_PER_SLICE = 200  # fresh real renders per planted slice for the classifier's real-image accuracy
GLOBAL = {"class": CLASSES, "background": BACKGROUNDS, "color": COLORS, "size": SIZES}


def slice_draws(spec: WorldSpec, cls: str, head: str, value: str, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Global indices (class and every attribute) of `n` images of the slice, the other attributes drawn uniformly."""
    g = torch.Generator().manual_seed(seed)
    codes = {}
    for name, values in (("class", spec.classes), *spec.attributes.items()):
        fixed = {"class": cls, head: value}.get(name)
        pick = torch.full((n,), values.index(fixed)) if fixed else torch.randint(len(values), (n,), generator=g)
        codes[name] = torch.tensor([GLOBAL[name].index(values[i]) for i in pick.tolist()])
    return codes


def slice_renders(spec: WorldSpec, cls: str, head: str, value: str, n: int = REAL_PER_SLICE,
                  seed: int = 0) -> torch.Tensor:
    """`n` real renders of the slice (class, head = value), every other attribute drawn uniformly."""
    codes = slice_draws(spec, cls, head, value, n, seed)
    return render(codes["class"], codes["background"], codes["color"], codes["size"], seed, spec.image_size)


def accuracy(predict, images: torch.Tensor, cls: str, spec: WorldSpec) -> float | None:
    """Share of images `predict` (uint8 images -> class indices) assigns to `cls`."""
    if not len(images):
        return None
    return float((predict(images) == spec.classes.index(cls)).float().mean())


def run_classifier(run: Path):
    """The run's final classifier as uint8 images -> class indices, or None when it saved none."""
    ckpt = last_checkpoint(run)
    return checkpoint_classifier(ckpt) if ckpt.exists() else None


def judge_run(run: Path, oracle, spec: WorldSpec, predict=None) -> list[dict]:
    """One row per planted group: the kept images of its class, where the oracle puts them and (with `predict`,
    uint8 images -> class indices) the classifier's accuracy on the in-group ones and on real renders of the group."""
    report = json.loads((run / "report" / "report.json").read_text())
    kept = [r for r in read_manifest(run / "generated") if r.get("kept")]
    pred = oracle.predict(torch.stack([load_image(r["path"], spec.image_size) for r in kept])) if kept else {}
    rows = []
    for planted in report.get("discovery", {}).get("planted", []):
        cls, value = planted["group"].split("|")[0], planted["value"]
        head = next(h for h in HEADS if h != "class" and value in spec.values(h))
        idx = [i for i, r in enumerate(kept) if r["class_name"] == cls]
        right_class = [spec.classes[pred["class"][i]] == cls for i in idx]
        in_group = [ok and spec.values(head)[pred[head][i]] == value for ok, i in zip(right_class, idx)]
        transfer = {}
        if predict is not None:
            images = [load_image(kept[i]["path"], spec.image_size) for i, ok in zip(idx, in_group) if ok]
            generated = accuracy(predict, torch.stack(images) if images else torch.empty(0), cls, spec)
            real = accuracy(predict, slice_renders(spec, cls, head, value), cls, spec)
            transfer = {"generated_acc": generated, "real_acc": real,
                        "transfer_gap": None if generated is None else generated - real}
        rows.append(transfer | {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run),
                     "method": report.get("method"), "group": planted["group"], "kept_of_class": len(idx),
                     "kept_total": len(kept), "class_agreement": statistics.mean(right_class) if idx else None,
                     "in_group_share": statistics.mean(in_group) if idx else None, "in_group": sum(in_group),
                     "test_acc": report["metrics"]["test"]["per_group"].get(planted["group"])})
    return rows


def summary(rows: list[dict]) -> dict:
    """Mean over runs per (method, group)."""
    out: dict[str, dict] = {}
    for key in sorted({(r["method"], r["group"]) for r in rows}):
        mine = [r for r in rows if (r["method"], r["group"]) == key]
        out[f"{key[0]} / {key[1]}"] = {
            field: statistics.mean(r[field] for r in mine if r.get(field) is not None)
            for field in ("kept_of_class", "in_group", "in_group_share", "class_agreement", "test_acc",
                          "generated_acc", "real_acc", "transfer_gap")
            if any(r.get(field) is not None for r in mine)} | {"runs": len(mine)}
    return out


def percent(x: float | None) -> str:
    """A share as a table cell ('–' when unknown)."""
    return "–" if x is None else f"{x:.1%}"


def main() -> None:
    """Judge the runs and write results/targeting.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path, default=DEFAULT_RUNS, help="run folders (report/ + generated/)")
    args = p.parse_args()
    if not args.runs:
        raise SystemExit("no runs to judge: run `python -m benchmarks.compare` first or name run folders")
    spec, oracle = WorldSpec(), load_oracle()
    rows = [row for run in map(Path.resolve, args.runs) for row in judge_run(run, oracle, spec, run_classifier(run))]
    means = summary(rows)
    table = [["method / planted group", "runs", "kept images of the class", "in the group (oracle)",
              "share in the group", "oracle class agreement", "group test acc",
              "final classifier on in-group kept images", "on real renders of the group"]]
    table += [[table_cell(k), v["runs"], f"{v['kept_of_class']:.0f}", f"{v['in_group']:.0f}",
               f"{v['in_group_share']:.1%}", f"{v['class_agreement']:.1%}", percent(v.get("test_acc")),
               percent(v.get("generated_acc")), percent(v.get("real_acc"))]
              for k, v in means.items()]
    write("targeting", {"machine": machine(), "runs": rows, "summary": means}, table, quick=False)


if __name__ == "__main__":
    main()
