"""Process-level glue for Hydra runs: one output folder per job, shared by every DDP rank."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

RUN_DIR_ENV = "BLINDSPOT_RUN_DIR"
OVERRIDES_ENV = "BLINDSPOT_JOB_OVERRIDES"


def is_ddp_child() -> bool:
    """True in the extra processes that Lightning's DDP launcher starts (local rank > 0)."""
    return int(os.environ.get("LOCAL_RANK", "0")) > 0 and RUN_DIR_ENV in os.environ


def rewrite_argv_for_ddp_child() -> None:
    """Make a DDP child run rank 0's *job* in rank 0's folder.

    Lightning restarts `python train.py <original argv>` for every extra rank. Under a multirun that argv
    still says `-m seed=0,1,...`, and a `${now:...}` run dir resolves to a new time: the child would start a
    sweep of its own or write to another folder. Rank 0 exports its job's overrides and output folder
    (`export_job`), and the child replaces its argv with exactly that job before Hydra parses it.
    """
    if not is_ddp_child() or OVERRIDES_ENV not in os.environ:
        return
    overrides = json.loads(os.environ[OVERRIDES_ENV])
    run_dir = os.environ[RUN_DIR_ENV]
    sys.argv = [sys.argv[0], *overrides, f"hydra.run.dir={run_dir}", "hydra.output_subdir=null",
                f"hydra.job.name=ddp_rank_{os.environ.get('LOCAL_RANK')}"]


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    """Where a run keeps the checkpoint that `resume=<run dir>` continues from (conf/callbacks/model_checkpoint.yaml)."""
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def export_job(output_dir: str, overrides: list[str]) -> None:
    """Called on rank 0 before the trainer starts: children inherit these through the environment."""
    if not is_ddp_child():
        os.environ[RUN_DIR_ENV] = os.path.abspath(output_dir)
        os.environ[OVERRIDES_ENV] = json.dumps([o for o in overrides if not o.startswith("hydra.")])


def register_resolvers() -> None:
    """OmegaConf resolvers the configs use: ${coalesce:a,b} is the first value that is not null/empty."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("coalesce"):
        OmegaConf.register_new_resolver("coalesce", lambda *xs: next((x for x in xs if x not in (None, "")), None))


def enable_crash_tracebacks() -> None:
    """Print the Python stack of a process that dies in native code (segfault, abort), which is silent otherwise."""
    if not faulthandler.is_enabled():
        faulthandler.enable()


def describe_rank_exits(children: Sequence[subprocess.Popen], timeout: float = 2.0) -> list[str]:
    """How each DDP child process ended, within `timeout` s in all: "local rank 1 (pid 7) was killed by SIGSEGV"."""
    deadline = time.monotonic() + timeout
    lines = []
    for rank, child in enumerate(children, start=1):
        try:
            code = child.wait(timeout=max(deadline - time.monotonic(), 0.01))
        except subprocess.TimeoutExpired:
            lines.append(f"local rank {rank} (pid {child.pid}) is still running")
            continue
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        lines.append(f"local rank {rank} (pid {child.pid}) {how}")
    return lines
