"""Overhead of the discovery callback: the same epochs of the default world with and without it (no generation).

    python -m benchmarks.perf_callback            # default world, discovery after every epoch (worst case)
    python -m benchmarks.perf_callback --quick
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


def fit_seconds(args: list[str], out: Path) -> tuple[float, dict]:
    """Wall time of one train.py run (fit only, no test) and its report."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "train.py", "test=false", "logger=none", f"hydra.run.dir={out}", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - start, json.loads((out / "report" / "report.json").read_text())


def main() -> None:
    """Measure and write results/perf_callback.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=None, help="trainer.max_epochs (default: the config's)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each variant, alternating (the minimum counts)")
    args = p.parse_args()
    common = list(QUICK_RUN) if args.quick else []  # quick: a plumbing check, not the number
    common += [f"trainer.max_epochs={args.epochs}"] if args.epochs and not args.quick else []
    discovery = ["+augment=failure_diffusion", "loop.remedy=null",
                 "loop.start_epoch=1", "loop.every_n_epochs=1",
                 "loop.max_rounds=100"]
    with tempfile.TemporaryDirectory() as tmp:
        times = {"without": [], "with": []}
        reports = {}
        for rep in range(1 if args.quick else args.repeats):  # alternate so drift hits both alike
            for name, extra in (("without", []), ("with", discovery)):
                seconds, reports[name] = fit_seconds(common + extra, Path(tmp) / f"{name}{rep}")
                times[name].append(seconds)
    t_without, t_with = min(times["without"]), min(times["with"])
    rounds = len(reports["with"].get("rounds", []))
    breakdown = reports["with"].get("breakdown", {})
    result = {"machine": machine(), "quick": args.quick, "seconds_without": t_without, "seconds_with": t_with,
              "epochs": args.epochs, "runs": times, "rounds": rounds,
              "overhead_fraction": (t_with - t_without) / t_without,
              "discovery_breakdown": {k: breakdown.get(k) for k in ("embed", "discover", "caption")},
              "note": "whole-process wall time (incl. start-up), min over repeats; discovery after every epoch"}
    write("perf_callback", result, [
        ["measure", "value", "target"],
        ["fit without discovery", f"{t_without:.1f} s", "-"],
        [f"fit with discovery ({rounds} rounds)", f"{t_with:.1f} s", "-"],
        ["overhead", f"{result['overhead_fraction']:.1%}", "<= 5%"],
        ["of which discovery itself (embed + discover + caption, in-run)",
         f"{sum(v or 0.0 for v in result['discovery_breakdown'].values()):.1f} s", "-"],
    ], args.quick)


if __name__ == "__main__":
    main()
