"""Record that re-running a training command reproduced a shipped checkpoint (time, metrics, weight distance).

    python -m blindspot.world.train_clip out_dir=/tmp/clip_rerun work_dir=/tmp/clip_rerun_work
    python -m blindspot.world.reproduction weights/world_clip /tmp/clip_rerun
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safetensors.torch import load_file


def relative_weight_distance(shipped: Path, rerun: Path) -> float:
    """||rerun - shipped|| / ||shipped|| over every tensor of two safetensors files with the same keys."""
    a, b = load_file(str(shipped)), load_file(str(rerun))
    if a.keys() != b.keys():
        raise ValueError(f"{rerun} and {shipped} hold different tensors: not the same model config")
    diff = sum(float((a[k].float() - b[k].float()).norm() ** 2) for k in a)
    norm = sum(float(a[k].float().norm() ** 2) for k in a)
    return (diff / norm) ** 0.5


def record(shipped_dir: Path, rerun_dir: Path) -> dict:
    """Append the re-run's provenance to the shipped training.json under "reproductions"; returns the entry."""
    shipped, rerun = (json.loads((d / "training.json").read_text()) for d in (shipped_dir, rerun_dir))
    checkpoint = shipped["checkpoint"]
    entry = {key: rerun.get(key) for key in ("date", "command", "steps", "batch_size", "wall_minutes", "metrics",
                                              "machine")}
    entry["relative_weight_distance"] = round(
        relative_weight_distance(shipped_dir / checkpoint, rerun_dir / rerun["checkpoint"]), 6)
    entry["bitwise_identical"] = entry["relative_weight_distance"] == 0.0
    shipped.setdefault("reproductions", []).append(entry)
    tmp = shipped_dir / "training.json.tmp"  # write, then rename: a kill never leaves half a record
    tmp.write_text(json.dumps(shipped, indent=2) + "\n")
    tmp.replace(shipped_dir / "training.json")
    return entry


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shipped_dir", type=Path, help="folder of the shipped checkpoint and its training.json")
    p.add_argument("rerun_dir", type=Path, help="out_dir of the re-run of the same training command")
    args = p.parse_args()
    print(json.dumps(record(args.shipped_dir, args.rerun_dir), indent=2))


if __name__ == "__main__":
    main()
