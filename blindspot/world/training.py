"""Shared plumbing of the world-model training scripts: resumable state, schedules, provenance."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch


def cosine_lr(step: int, total: int, peak: float, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save via a temporary file and rename, so a kill never leaves a half-written state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict | None:
    """The resumable state saved by a previous run, or None."""
    return torch.load(path, map_location="cpu", weights_only=False) if path.is_file() else None


def machine() -> dict:
    """Where a number was measured."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
    }


def invocation() -> str:
    """The command that started this process: `python -m package.module ...` or `python script.py ...`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    head = ["python", "-m", spec.name] if spec is not None else ["python", Path(sys.argv[0]).name]
    return " ".join(head + sys.argv[1:])


def write_provenance(out_dir: Path, **facts) -> None:
    """Write how a shipped checkpoint was made (command, steps, wall time, machine) next to it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    facts.setdefault("command", invocation())
    facts.setdefault("machine", machine())
    facts.setdefault("date", time.strftime("%Y-%m-%d %H:%M:%S"))
    (out_dir / "training.json").write_text(json.dumps(facts, indent=2) + "\n")


class Stopwatch:
    """Wall and CPU time that survive resumes: seconds from earlier runs plus this one."""

    def __init__(self, previous: float = 0.0, previous_cpu: float = 0.0):
        self.previous, self.previous_cpu = previous, previous_cpu
        self.start, self.start_cpu = time.monotonic(), time.process_time()

    @property
    def seconds(self) -> float:
        return self.previous + time.monotonic() - self.start

    @property
    def cpu_seconds(self) -> float:
        """Process CPU time (all threads): wall time x threads on an otherwise idle machine."""
        return self.previous_cpu + time.process_time() - self.start_cpu
