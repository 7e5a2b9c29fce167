"""Resumable benchmark runs: a finished run is reused only while its settings are still what it would run now.

A run folder keeps Hydra's `.hydra/config.yaml`. Before a sweep reuses a finished (or half-finished) run, the
same overrides are composed again from today's `conf/`; if a default the run uses changed since (a generator
default does not touch ERM runs), the old folder is moved aside (kept, never deleted) and the run starts afresh, so
a table never mixes old and new settings. A knob conf/ spelled out later at the value the code always had
(`SPELLED_OUT`) is read into a saved config that lacks it: writing a default down changes no run. While a run runs,
its folder is locked (`claimed`): two sweeps started on the same folders do not write into one run.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import re
import threading
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
RUN_KEYS = ("resume",)  # how a run was started (a resume of its own folder), not what it trains
# config groups train.py never reads itself: a run uses one only if another part of its config interpolates it
# (`${generator}` in a generating remedy), so ERM does not go stale when the generator's defaults change
REFERENCED_ONLY = ("vocabulary", "proposer", "clip", "generator", "editor")
# knobs conf/ spelled out after runs were saved, at the value the code had used all along: a saved config without
# one (where today's has it) is read as having that value
SPELLED_OUT = {"remedy.covered_members": "drop", "remedy.prompts.members_fraction": 0.5,
               "remedy.prompts.smoothing": 0.0, "remedy.prompts.vary": None, "remedy.prompts.order": None}
_HYDRA = threading.Lock()  # Hydra's compose API is one global state: sweeps compose from several threads


class RunInUseError(RuntimeError):
    """Another process is running this folder right now."""


def compose_train(args) -> DictConfig:
    """conf/train.yaml composed with these overrides (hydra.* ones dropped); safe to call from several threads."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [a for a in args if not a.lstrip("+~").startswith("hydra.")]
    with _HYDRA:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
                return compose(config_name="train", overrides=overrides)
        finally:
            GlobalHydra.instance().clear()


@functools.lru_cache(maxsize=None)
def composed_config(args: tuple[str, ...]) -> str:
    """conf/train.yaml composed with these overrides (hydra.* ones dropped), as the YAML Hydra saves."""
    return settings(compose_train(args))


def used_keys(cfg) -> list[str]:
    """The top-level keys a run uses: all but RUN_KEYS and the REFERENCED_ONLY groups nothing it uses interpolates."""
    keys = [k for k in cfg if k not in RUN_KEYS]
    used = [k for k in keys if k not in REFERENCED_ONLY]
    new = used
    while new:  # groups can interpolate groups (a remedy's prompts interpolate the vocabulary)
        text = OmegaConf.to_yaml(OmegaConf.masked_copy(cfg, new))  # as written: interpolations still there
        new = [k for k in keys if k not in used and re.search(r"\$\{" + re.escape(k) + r"\b", text)]
        used += new
    return [k for k in keys if k in used]


def settings(cfg) -> str:
    """A run config as resolved YAML (`${seed}` -> 0), only the keys it uses (`used_keys`).

    `${hydra:...}` values (the run's own folder) stay as placeholders: they exist only inside a Hydra run.
    """
    cfg = OmegaConf.masked_copy(cfg, used_keys(cfg))
    OmegaConf.register_new_resolver("hydra", lambda path: f"<hydra:{path}>", replace=True)
    try:
        return OmegaConf.to_yaml(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))
    except Exception:  # an interpolation this process cannot resolve: compare the configs as written
        return OmegaConf.to_yaml(cfg)


def is_current(out: Path, args: list[str]) -> bool:
    """True unless `out` holds a run whose saved config differs from what `args` compose to today (key order aside;
    `SPELLED_OUT` knobs it lacks read at their old value)."""
    saved = out / ".hydra" / "config.yaml"
    if not saved.is_file():
        return True
    today = OmegaConf.to_container(OmegaConf.create(composed_config(tuple(args))))
    then = OmegaConf.to_container(OmegaConf.create(settings(OmegaConf.load(saved))))
    fill_spelled_out(then, today)
    return then == today


def fill_spelled_out(then: dict, today: dict, path: str = "") -> None:
    """Give `then` each SPELLED_OUT knob it lacks where `today` has it (at any depth: `loop.remedy.covered_members`
    as well as `remedy.covered_members`), at the value the code had; in place."""
    for key, value in today.items():
        here = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and isinstance(then.get(key), dict):
            fill_spelled_out(then[key], value, here)
        elif key not in then:
            old = [v for k, v in SPELLED_OUT.items() if here == k or here.endswith("." + k)]
            if old:
                then[key] = old[0]


def finished_report(out: Path) -> dict | None:
    """A run folder's report.json if the run finished (has test metrics), else None."""
    path = out / "report" / "report.json"
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return report if report.get("metrics", {}).get("test") else None


def reusable_report(out: Path, args: list[str], label: str) -> dict | None:
    """The finished report to reuse, or None to (re)run; a stale folder is first moved aside (and said so)."""
    if out.exists() and not is_current(out, args):
        print(f"{label}: settings changed since {out.name} ran; moved it to {retire(out).name}", flush=True)
    return finished_report(out)


def retire(out: Path) -> Path:
    """Move a stale run folder aside (`<name>.stale-<time>`) so a fresh run can take its place."""
    target = out.with_name(f"{out.name}.stale-{time.strftime('%Y%m%d-%H%M%S')}")
    out.rename(target)
    return target


@contextlib.contextmanager
def claimed(out: Path):
    """Hold an exclusive lock on a run folder while it runs: a second sweep on the same folder stops at once."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.parent / f".{out.name}.lock"
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise RunInUseError(f"{out} is being run by another process (pid {lock.read().strip() or '?'}); "
                                "wait for it, or stop that sweep first") from None
        lock.seek(0), lock.truncate(), lock.write(str(os.getpid())), lock.flush()
        yield out
