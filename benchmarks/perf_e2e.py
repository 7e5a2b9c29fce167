"""End to end: the headline run on the default world, timed, with the report's breakdown of where time went.

    python -m benchmarks.perf_e2e             # python train.py +augment=failure_diffusion (defaults)
    python -m benchmarks.perf_e2e --quick     # a 2-epoch miniature (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import QUICK_RUN, machine, write

ROOT = Path(__file__).resolve().parents[1]
QUICK = [*QUICK_RUN, "generator.num_inference_steps=2",
         "loop.start_epoch=1", "remedy.images_per_round=16",
         "discovery.min_support=3", "discovery.min_error_gap=0.0"]


def main() -> None:
    """Run the headline job once and write results/perf_e2e.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--run-dir", default=None, help="keep the run here (report, images); default: a temporary dir")
    p.add_argument("overrides", nargs="*", help="extra train.py overrides (default: none, the headline as shipped)")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(args.run_dir).resolve() if args.run_dir else Path(tmp) / "run"
        cmd = [sys.executable, "train.py", "+augment=failure_diffusion", "logger=none", f"hydra.run.dir={run}",
               *(QUICK if args.quick else []), *args.overrides]
        start, cpu = time.perf_counter(), os.times()
        proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                              text=True)
        wall = time.perf_counter() - start
        end = os.times()
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        report = json.loads((run / "report" / "report.json").read_text())
    child_cpu = (end.children_user - cpu.children_user) + (end.children_system - cpu.children_system)
    breakdown = {k: round(v, 1) for k, v in report.get("breakdown", {}).items()}
    breakdown["other (start-up, validation, report)"] = round(wall - sum(breakdown.values()), 1)
    result = {"machine": machine(), "quick": args.quick, "command": " ".join(cmd[1:]), "cpu_seconds": wall,
              "process_cpu_seconds": child_cpu, "breakdown": breakdown,
              "test": {k: report["metrics"]["test"].get(k) for k in ("avg_acc", "worst_group_acc")},
              "discovery": {k: report.get("discovery", {}).get(k) for k in ("planted_recall", "caption_hit")},
              "note": "cpu_seconds is the wall time of the whole run on this CPU-only machine (the issue's name)"}
    rows = [["stage", "seconds", "share"]] + [[k, f"{v:.1f}", f"{v / wall:.0%}"] for k, v in breakdown.items()]
    rows.append(["total (wall)", f"{wall:.1f}", "100%"])
    rows += result_rows(result)
    write("perf_e2e", result, rows, args.quick)


def result_rows(result: dict) -> list[list]:
    """What the run achieved, under the timing table."""
    test, found = result["test"], result.get("discovery") or {}
    fmt = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    return [["test accuracy / worst-group", f"{fmt(test.get('avg_acc'))} / {fmt(test.get('worst_group_acc'))}", ""],
            ["planted recall / caption hit", f"{fmt(found.get('planted_recall'))} / {fmt(found.get('caption_hit'))}",
             ""]]


if __name__ == "__main__":
    main()
