"""The suite of planted worlds: every method and a ceiling on each world -> per-slice gap closed, tables, a chart.

    python -m benchmarks.suite --workers 2         # every world x method (resumes: finished runs are kept)
    python -m benchmarks.suite --config core --workers 2   # ERM, failure_diffusion and the ceiling only
    python -m benchmarks.suite --quick             # smoke run: one tiny world, 2 epochs, tiny budgets (CI)
    python -m benchmarks.suite --list              # the worlds, their overrides, the runs and the time estimate
    python -m benchmarks.suite --worlds default,control --methods none,ceiling
    python -m benchmarks.suite worlds.seed=1 seeds=[0,1]   # Hydra overrides of conf/suite/<--config>.yaml

The worlds come from a seeded generator (blindspot.world.suite, settings in conf/suite/default.yaml). Each run is
`python train.py experiment=compare +augment=<method> seed=<seed> logger=csv <world's data overrides>` in
outputs/suite/<world>/<method>/seed<seed>-<hash of its overrides>/ (configs share runs with equal overrides:
`--config core` runs the goals' subset, the default config then adds the rest); the `ceiling` run is ERM on the
world with every blind spot filled by real renders at its natural rate. A method whose failure loop first acts at
the end of epoch E starts from the ERM run's checkpoint of epoch E - 1 (`branch: true`; until its first round the
run is ERM, epoch for epoch), so those epochs are trained once per world. A run whose report has test metrics is
not run again; an interrupted one continues from its last checkpoint; a run whose saved settings differ from
what today's conf/ composes (a default changed) is moved aside to <folder>.stale-<time> and run afresh. The results are computed from every
finished run of the configuration (filters only choose what runs now) and written to
benchmarks/results/suite.{json,md,png} (suite_quick.* with --quick).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig, OmegaConf

from blindspot.runtime import last_checkpoint
from blindspot.world.suite import SuiteWorld
from blindspot.world.spec import WorldSpec

from .common import table_cell
from .compare import SLOW_FIRST, git_commit, images_added, overrides_for
from .fresh_test import SEED_OFFSET, fresh_metrics, fresh_split
from .fresh_test import SPLIT as FRESH
from .planted import slice_accuracy, slice_mean, world_spec_and_default
from .runs import claimed, composed_config, finished_report, is_current, reusable_report

ROOT = Path(__file__).resolve().parents[1]
CEILING = "ceiling"  # the pseudo-method: the baseline on the world's ceiling
STATUS_FAILED, STATUS_PARTLY, STATUS_NOT_FAILED = "failed by ERM", "partly failed", "not failed by ERM"
LOOP_ONLY_DATA = ("synthetic_repeat", "pool")  # data keys that act only on injected or retrieved images


@dataclass
class Job:
    """One train.py run of the suite (or, with `alias`, a run that reuses another job's folder)."""

    world: str
    method: str
    seed: int
    args: list[str]
    out: Path
    alias: bool = False  # the ceiling of a world without a blind spot is its ERM run
    after: "Job | None" = None  # the baseline run this one starts from (its checkpoint at `branch_epoch`)
    branch_epoch: int = 0  # epochs taken over from `after` (0: trains from scratch)


# ------------------------------------------------------------------------------------------------ the plan

def load_config(name: str, overrides: list[str] = ()) -> DictConfig:
    """conf/suite/<name>.yaml composed with Hydra (defaults lists, command-line overrides)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if not (ROOT / "conf" / "suite" / f"{name}.yaml").is_file():
        known = sorted(p.stem for p in (ROOT / "conf" / "suite").glob("*.yaml"))
        raise SystemExit(f"--config {name}: no conf/suite/{name}.yaml; known: {known}")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(ROOT / "conf" / "suite"), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def build_worlds(cfg: DictConfig) -> tuple[WorldSpec, list[SuiteWorld]]:
    """Instantiate the configured world generator (`worlds._target_`) for this world spec."""
    from hydra.utils import instantiate

    spec, default_planted = world_spec_and_default()
    default = {"name": "default", "seed": int(cfg.default_seed), "planted": default_planted} \
        if cfg.get("include_default", True) else None
    generate = instantiate(cfg.worlds, _convert_="all", _partial_=True)
    return spec, generate(spec=spec, default_world=default)


def merge_overrides(*groups: list[str]) -> list[str]:
    """Overrides with one value per key (a later group wins), in first-seen order (Hydra rejects duplicates)."""
    merged: dict[str, str] = {}
    for group in groups:
        for o in group:
            if "=" not in o:
                raise ValueError(f"override {o!r} is not key=value (fix common_overrides / method_overrides)")
            merged[o.split("=", 1)[0]] = o
    return list(merged.values())


def method_overrides(cfg: DictConfig, method: str) -> list[str]:
    """The overrides a method's runs get: compare's quick ones (if `compare_quick`), common, its own."""
    base = method if method != CEILING else cfg.baseline
    quick = overrides_for(base, True) if cfg.get("compare_quick", False) else []
    own = list((cfg.get("method_overrides") or {}).get(method, []) or [])
    if method == CEILING and not own:
        own = list((cfg.get("method_overrides") or {}).get(base, []) or [])
    return merge_overrides(quick, list(cfg.get("common_overrides") or []), own)


def run_folder(out: Path, world: str, method: str, seed: int, args: list[str]) -> Path:
    """Where a run lives: its world, method, seed and a hash of its overrides (changed settings, new run)."""
    digest = hashlib.sha256(json.dumps(args).encode()).hexdigest()[:8]
    return out / world / method / f"seed{seed}-{digest}"


def run_prefix(method: str, seed: int | str) -> list[str]:
    """The overrides every run of a method starts with (then common, the method's own, the world's)."""
    return ["experiment=compare", f"+augment={method}", f"seed={seed}", "logger=csv"]


def branch_epoch(cfg: DictConfig, method: str) -> int:
    """Epochs a method's runs share with the baseline's: all before its loop's first round, if nothing else differs.

    A failure loop acts first at the end of `loop.start_epoch`; until then the run is the baseline's, epoch for
    epoch (same model, trainer, seed and data; data shuffles and flips depend only on seed and epoch), so it can
    start from the baseline's checkpoint of epoch `start_epoch - 1`. 0: the method trains from scratch.
    """
    if not cfg.get("branch", False) or method in (cfg.baseline, CEILING):
        return 0
    own = _resolved(run_prefix(method, 0) + method_overrides(cfg, method))
    if own.get("loop") is None or int(own["loop"]["start_epoch"]) < 2:
        return 0
    base = _resolved(run_prefix(cfg.baseline, 0) + method_overrides(cfg, cfg.baseline))
    return int(own["loop"]["start_epoch"]) - 1 if _before_the_loop(base) == _before_the_loop(own) else 0


def _resolved(args: list[str]) -> dict:
    """The train config these overrides compose to, resolved (composed once per override list: cached)."""
    return yaml.safe_load(composed_config(tuple(args)))


def _before_the_loop(resolved: dict) -> dict:
    """What decides a run's epochs before its failure loop acts: seed, model, trainer, data (less loop-only keys)."""
    data = {k: v for k, v in resolved["data"].items() if k not in LOOP_ONLY_DATA}
    return {"seed": resolved["seed"], "model": resolved["model"], "trainer": resolved["trainer"], "data": data}


def plan(cfg: DictConfig, spec: WorldSpec, worlds: list[SuiteWorld], out: Path) -> list[Job]:
    """Every (world, method, seed) run of the configuration, the ceiling included."""
    methods = list(cfg.methods)
    if cfg.baseline not in methods:
        raise SystemExit(f"baseline {cfg.baseline!r} is not in methods {methods} (fix conf/suite: baseline)")
    unknown = [m for m in methods if not (ROOT / "conf" / "augment" / f"{m}.yaml").is_file()]
    if unknown:
        known = sorted(p.stem for p in (ROOT / "conf" / "augment").glob("*.yaml"))
        raise SystemExit(f"methods {unknown} have no conf/augment/<name>.yaml; known: {known} "
                         "(fix conf/suite: methods)")
    branches = {m: branch_epoch(cfg, m) for m in methods}
    keep = math.gcd(*branches.values())  # the baseline keeps every checkpoint a method starts from
    order = [cfg.baseline] + [m for m in methods if m != cfg.baseline] + ([CEILING] if cfg.get("ceiling", True) else [])
    jobs = []
    for w in worlds:
        for seed in cfg.seeds:
            made: dict[str, Job] = {}
            for method in order:
                world = w.ceiling(spec) if method == CEILING else w
                base_job = made.get(cfg.baseline)
                if branches.get(method):  # start from the baseline's checkpoint of that epoch (0-based in its name)
                    extra = [f"ckpt_path={base_job.out / 'checkpoints' / f'keep_epoch_{branches[method] - 1:03d}.ckpt'}"]
                elif method == cfg.baseline and keep:
                    extra = [f"callbacks.model_checkpoint_keep.every_n_epochs={keep}"]
                else:
                    extra = []
                args = merge_overrides(run_prefix(cfg.baseline if method == CEILING else method, int(seed)),
                                       method_overrides(cfg, method), world.overrides(), extra)
                if method == CEILING and not w.blind_spots(spec):
                    made[method] = Job(w.name, method, int(seed), base_job.args, base_job.out, alias=True)
                    continue
                made[method] = Job(w.name, method, int(seed), args, run_folder(out, w.name, method, int(seed), args),
                                   after=base_job if branches.get(method) else None,
                                   branch_epoch=branches.get(method, 0))
            jobs += [made[m] for m in methods + ([CEILING] if CEILING in made else [])]
    return jobs


def estimate_minutes(jobs: list[Job], minutes_per_run: dict, workers: int) -> float:
    """Planned wall minutes: the runs' estimated minutes spread over `workers` (aliases cost nothing)."""
    unknown = sorted({j.method for j in jobs if not j.alias and j.method not in minutes_per_run})
    if unknown:
        raise SystemExit(f"minutes_per_run has no estimate for {unknown} (fix conf/suite: minutes_per_run)")
    return sum(float(minutes_per_run[j.method]) for j in jobs if not j.alias) / max(1, workers)


# ------------------------------------------------------------------------------------------------ running

def current_report(job: Job) -> dict | None:
    """The job's finished report, if its saved settings are still what its overrides compose to today."""
    return finished_report(job.out) if is_current(job.out, job.args) else None


def _write_json(path: Path, data) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run_job(job: Job, threads: int | None = None) -> dict:
    """Run (or resume, or skip) one job; returns its report (raises RuntimeError with the log's tail)."""
    if job.alias:
        done = current_report(job)
        if done is None:
            raise RuntimeError(f"{job.world} {job.method}: the run it reuses ({job.out}) has not finished")
        return done
    with claimed(job.out):
        return _run_claimed(job, threads)


def _run_claimed(job: Job, threads: int | None) -> dict:
    """run_job's work, with the job's folder locked."""
    done = reusable_report(job.out, job.args, f"[suite] {job.world} {job.method} seed {job.seed}")
    if done is not None:
        return done
    args = [*job.args, f"hydra.run.dir={job.out}"]
    if last_checkpoint(job.out).exists():
        args.append(f"resume={job.out}")
    _write_json(job.out / "suite_run.json", {"world": job.world, "method": job.method, "seed": job.seed,
                                             "args": job.args})
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    (job.out / "suite_run.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
    report = finished_report(job.out)
    if proc.returncode != 0 or report is None:
        raise RuntimeError(f"{job.world} {job.method} seed {job.seed} failed (log: {job.out / 'suite_run.log'}):\n"
                           f"{proc.stderr[-3000:]}")
    report.setdefault("wall_seconds", time.time() - start)
    return report


def run_all(jobs: list[Job], workers: int) -> tuple[dict[tuple[str, str, int], str], int]:
    """Run the jobs `workers` at a time (baselines first, then slow methods, aliases last); a job that starts from a
    baseline run waits for it. Returns the errors and how many ran."""
    order = {m: i for i, m in enumerate(SLOW_FIRST)}
    todo = sorted(jobs, key=lambda j: (j.alias, j.after is not None or j.method == CEILING,
                                       order.get(j.method, len(order))))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None
    errors: dict[tuple[str, str, int], str] = {}
    ran = [j for j in todo if not j.alias and current_report(j) is None]
    finished = {id(j): threading.Event() for j in todo}

    def one(job: Job) -> None:
        key = (job.world, job.method, job.seed)
        try:
            if job.after is not None:
                finished[id(job.after)].wait()  # queued earlier: already running or done
                if (job.after.world, job.after.method, job.after.seed) in errors:
                    raise RuntimeError(f"it starts from {job.after.out}, which failed")
            report = run_job(job, threads)
        except Exception as e:  # one broken run must not lose the others
            errors[key] = str(e)
            print(f"[suite] {job.world} {job.method} seed {job.seed}: FAILED\n{e}", flush=True)
            return
        finally:
            finished[id(job)].set()
        test = report["metrics"]["test"]
        print(f"[suite] {job.world} {job.method} seed {job.seed}: avg {test.get('avg_acc', float('nan')):.1%}, "
              f"worst group {test.get('worst_group_acc', float('nan')):.1%}, "
              f"{report.get('wall_seconds', 0) / 60:.1f} min", flush=True)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(one, [j for j in todo if not j.alias]))
    for job in (j for j in todo if j.alias):
        one(job)
    return errors, len(ran)


def add_fresh_tests(jobs: list[Job], finished: list[dict | None], worlds: list[SuiteWorld], spec: WorldSpec,
                    factor: int) -> None:
    """Score every finished run on its world's fresh test split (fresh_test.py): `report["metrics"]["fresh_test"]`."""
    for w in worlds:
        done = [(j, r) for j, r in zip(jobs, finished) if j.world == w.name and r is not None]
        if not done:
            continue
        cache_dir = ROOT / _resolved(done[0][0].args)["data"]["cache_dir"]  # the runs' own (train.py runs in ROOT)
        split = fresh_split(w, spec, factor, cache_dir)  # the world's, not its ceiling's: one split for every method
        print(f"[suite] fresh test of {w.name}: {len(split)} images, {len(done)} run(s)", flush=True)
        for job, report in done:
            metrics = fresh_metrics(job.out, split)
            if metrics is not None:
                report["metrics"][FRESH] = metrics


def with_baselines(selected: list[Job]) -> list[Job]:
    """The selected jobs plus the baseline runs they start from (a finished one is only read again)."""
    chosen, added = {id(j) for j in selected}, []
    for job in selected:
        if job.after is not None and id(job.after) not in chosen:
            chosen.add(id(job.after))
            added.append(job.after)
    return selected + added


# ------------------------------------------------------------------------------------------------ metrics

def slice_status(erm: float | None, thresholds: dict) -> str | None:
    """Whether ERM fails the slice: failed (< fails_below), not failed (>= not_failed_at), or partly."""
    if erm is None:
        return None
    if erm < thresholds["fails_below"]:
        return STATUS_FAILED
    if erm >= thresholds["not_failed_at"]:
        return STATUS_NOT_FAILED
    return STATUS_PARTLY


def gap_closed(method: float | None, erm: float | None, ceiling: float | None, min_gap: float) -> float | None:
    """(method - ERM) / (ceiling - ERM); None when a number is missing or the ceiling is not min_gap above ERM."""
    if method is None or erm is None or ceiling is None or ceiling - erm < min_gap:
        return None
    return (method - erm) / (ceiling - erm)


def discovery_of(report: dict, group: str) -> dict | None:
    """The report's discovery score of a planted slice (found in the top-k modes, caption hit), if it has one."""
    for p in (report.get("discovery") or {}).get("planted", []) or []:
        if p.get("group") == group:
            return p
    return None


def outranked_by(report: dict, slice_: dict) -> dict | None:
    """For a planted slice outside the first round's top-k: its rank and test accuracy at that round, and the
    top-k modes' majority groups with theirs (what discovery ranked first instead); None when it was found."""
    d = discovery_of(report, slice_["group"])
    rounds = report.get("rounds") or []
    if d is None or d.get("found") or not rounds:
        return None
    k = (report.get("discovery") or {}).get("k") or 0
    at_round = slice_mean(report.get("metrics", {}).get("baseline_test", {}).get("per_group") or {}, slice_)
    above = [{"group": m.get("majority_group"), "share": m.get("majority_share"),
              "acc_at_round": m.get("group_acc_before"), "caption": m.get("caption")}
             for m in rounds[0].get("modes", [])[:k]]
    return {"rank": d.get("rank"), "acc_at_round": at_round, "modes": above}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.mean(values) if values else None


def evaluate(cfg: DictConfig, spec: WorldSpec, worlds: list[SuiteWorld],
             reports: dict[tuple[str, str], list[dict]], split: str = "test") -> dict:
    """Per-slice and per-world rows and the goal summary from the finished reports ({(world, method): [seeds]}),
    with the test metrics of `split` (a report's `metrics[split]`: its own "test", or fresh_test.SPLIT)."""
    thresholds = dict(cfg.thresholds)
    methods = list(cfg.methods) + ([CEILING] if cfg.get("ceiling", True) else [])
    repaired = [m for m in cfg.methods if m != cfg.baseline]
    who = cfg.get("discovery_method", "failure_diffusion")
    slices, per_world = [], []
    for w in worlds:
        row = {"world": w.name, "role": w.role, **w.describe(spec), "methods": {}}
        for m in methods:
            rs = reports.get((w.name, m), [])
            if rs:
                row["methods"][m] = {
                    "avg_acc": _mean([r["metrics"].get(split, {}).get("avg_acc") for r in rs]),
                    "worst_group_acc": _mean([r["metrics"].get(split, {}).get("worst_group_acc") for r in rs]),
                    "images_added": _mean([images_added(r) for r in rs]),
                    "wall_seconds": _mean([r.get("wall_seconds") for r in rs]),
                    "generate_seconds": _mean([(r.get("breakdown") or {}).get("generate", 0.0) for r in rs]),
                    "seeds": len(rs)}
        per_world.append(row)
        for s in w.slices(spec):
            acc = {m: _mean([slice_accuracy(r, s, split) for r in reports.get((w.name, m), [])]) for m in methods}
            erm, ceiling = acc.get(cfg.baseline), acc.get(CEILING)
            found, hit, handed = {}, {}, {}
            missed = [o for r in reports.get((w.name, who), []) if (o := outranked_by(r, s))]
            for m in methods:
                scores = [discovery_of(r, s["group"]) for r in reports.get((w.name, m), [])]
                scores = [d for d in scores if d is not None]
                if scores:
                    found[m] = _mean([float(bool(d.get("found"))) for d in scores])
                    hit[m] = _mean([float(bool(d.get("caption_hit"))) for d in scores])
                    if all("handed" in d for d in scores):  # reports from before 2026-12-02 07:00 lack it
                        handed[m] = _mean([float(bool(d["handed"])) for d in scores])
            slices.append({"id": f"{w.name}:{s['group']}", "world": w.name, "group": s["group"],
                           "class": s["class"], "attribute": s["attribute"], "value": s["value"],
                           "rate": s["rate"], "shortcut": s["shortcut"], "groups": s["groups"], "accuracy": acc,
                           "status": slice_status(erm, thresholds),
                           "gap_closed": {m: gap_closed(acc.get(m), erm, ceiling, thresholds["min_gap"])
                                          for m in repaired},
                           "found": found, "caption_hit": hit, "handed": handed, "outranked_by": missed})
    return {"slices": slices, "per_world": per_world,
            "summary": summarise(cfg, slices, per_world, repaired, thresholds)}


def summarise(cfg: DictConfig, slices: list[dict], per_world: list[dict], repaired: list[str],
              thresholds: dict) -> dict:
    """The issue's goals: gap closed on slices ERM fails, found-in-top-k and caption hit rates, control worlds."""
    failed = [s for s in slices if s["status"] == STATUS_FAILED]
    methods = {}
    for m in repaired:
        gaps = [(s["gap_closed"][m], s["id"]) for s in failed if s["gap_closed"].get(m) is not None]
        methods[m] = {"slices": len(gaps), "of": len(failed),
                      "gap_closed_mean": statistics.mean(g for g, _ in gaps) if gaps else None,
                      "gap_closed_min": min(gaps)[0] if gaps else None,
                      "worst_slice": min(gaps)[1] if gaps else None,
                      "undefined": [s["id"] for s in failed if s["gap_closed"].get(m) is None]}
    who = cfg.get("discovery_method", "failure_diffusion")

    def rate(key: str, statuses: tuple = (STATUS_FAILED,)) -> dict:
        have = [s for s in slices if s["status"] in statuses and who in s.get(key, {})]
        hits = sum(s[key][who] for s in have)
        return {"method": who, "hits": hits, "of": len(have), "rate": hits / len(have) if have else None}

    wider = (STATUS_FAILED, STATUS_PARTLY)

    controls = {}
    for row in (r for r in per_world if r["control"]):
        erm = row["methods"].get(cfg.baseline, {}).get("worst_group_acc")
        for m in repaired:
            wga = row["methods"].get(m, {}).get("worst_group_acc")
            if erm is not None and wga is not None:
                controls.setdefault(m, []).append({"world": row["world"], "delta": wga - erm})
    return {"methods": methods, "found_in_top_k": rate("found"), "caption_hit": rate("caption_hit"),
            "found_in_handed": rate("handed"),
            "partly_failed_too": {k: rate(key, wider) for k, key in (("found_in_top_k", "found"),
                                                                    ("caption_hit", "caption_hit"),
                                                                    ("found_in_handed", "handed"))},
            "not_failed_by_erm": [s["id"] for s in slices if s["status"] == STATUS_NOT_FAILED],
            "partly_failed": [s["id"] for s in slices if s["status"] == STATUS_PARTLY],
            "failed_by_erm": [s["id"] for s in failed],
            "controls": {m: {"worlds": v, "worst_delta": min(d["delta"] for d in v),
                             "within_margin": min(d["delta"] for d in v) >= -thresholds["control_margin"]}
                         for m, v in controls.items()},
            "thresholds": thresholds}


# ------------------------------------------------------------------------------------------------ output

def _pct(x: float | None, digits: int = 0) -> str:
    return "–" if x is None else f"{x:.{digits}%}"


def markdown(result: dict) -> str:
    """The suite's tables: goals, per slice, per world, the worlds, and how it was measured."""
    cfg, summary = result["settings"], result["summary"]
    methods, baseline = cfg["methods"], cfg["baseline"]
    repaired = [m for m in methods if m != baseline]
    th = summary["thresholds"]
    runs = result["runs"]
    heads = [f"ERM ({m})" if m == baseline else m for m in methods + [CEILING]]
    given = " ".join(cfg.get("overrides") or [])  # e.g. worlds.seed=1: other worlds than the committed suite's
    title = f"`conf/suite/{result['config']}.yaml`" + (f" with `{given}`" if given else "")
    lines = [f"# Suite of planted worlds ({title})", "",
             f"{runs['finished']} of {runs['planned']} runs finished"
             + (f"; missing: {', '.join(runs['missing'][:12])}{' …' if len(runs['missing']) > 12 else ''}"
                if runs["missing"] else "") + ".", ""]
    if result.get("pooled_from"):  # benchmarks.suite_seeds: several results files, one suite over all their seeds
        lines += ["Pooled over seeds " + ", ".join(map(str, cfg["seeds"])) + " from "
                  + "; ".join(f"`{f['file']}` (seeds {', '.join(map(str, f['seeds']))})" for f in result["pooled_from"])
                  + ": every number is averaged over the seeds each file holds; methods every file has.", ""]
    test = cfg.get("test_split") or {"name": "test"}
    if test["name"] == FRESH:
        lines += [f"Test accuracy everywhere below is on fresh renders: each world's test design {test['factor']}× as "
                  f"large (data seed + {test['seed_offset']}), the same images for ERM, every method and the ceiling, "
                  "scored from each run's final checkpoint (`benchmarks/fresh_test.py`).", ""]
    lines += ["## Goals (issue 17)", ""]
    for m, s in summary["methods"].items():
        worst = f" ({table_cell(s['worst_slice'])})" if s["worst_slice"] else ""
        goal = " (goal: mean ≥ 80%, each ≥ 60%)" if m == "failure_diffusion" else ""
        undefined = (f"; undefined (ceiling not {th['min_gap'] * 100:.0f} points above ERM, or a run missing) on "
                     + ", ".join(map(table_cell, s["undefined"]))) if s["undefined"] else ""
        lines.append(f"- {m}: gap to the ceiling closed on the {s['slices']} of {s['of']} slices ERM fails "
                     f"(< {th['fails_below']:.0%}): mean {_pct(s['gap_closed_mean'])}, min "
                     f"{_pct(s['gap_closed_min'])}{worst}{goal}{undefined}")
    own = (result.get("own_test") or {}).get("summary", {}).get("methods", {})
    for m, s in own.items():
        lines.append(f"- on the runs' own test splits instead (the ceiling on its own renders): {m} closes "
                     f"{_pct(s['gap_closed_mean'])} of the gap on average, {_pct(s['gap_closed_min'])} at the least "
                     f"({table_cell(s['worst_slice'] or '–')}), on {s['slices']} of {s['of']} slices ERM fails there")
    for key, goal, what in (("found_in_top_k", "95%", "found in the top-k modes (k = the world's blind spots)"),
                            ("caption_hit", "90%", "caption hit"),
                            ("found_in_handed", None, "found among all the modes handed to the remedy")):
        r, w = summary.get(key), summary.get("partly_failed_too", {}).get(key)
        if r is None or not (r["of"] or (w and w["of"])):
            continue
        also = (f"; with the partly failed slices (< {th['not_failed_at']:.0%}) too: {w['hits']:g} of {w['of']} = "
                f"{_pct(w['rate'])}") if w and w["of"] else ""
        lines.append(f"- {what} ({r['method']}'s first round), slices ERM fails (< {th['fails_below']:.0%}): "
                     f"{r['hits']:g} of {r['of']} = {_pct(r['rate'])}" + (f" (goal ≥ {goal})" if goal else "")
                     + also)
    for m, c in summary["controls"].items():
        deltas = ", ".join(f"{d['world']} {d['delta'] * 100:+.1f} pts" for d in c["worlds"])
        lines.append(f"- control worlds, worst-group vs ERM, {m}: {deltas} "
                     f"({'within' if c['within_margin'] else 'NOT within'} {th['control_margin'] * 100:.0f} points)")
    if summary["not_failed_by_erm"]:
        lines.append(f"- not failed by ERM (≥ {th['not_failed_at']:.0%}, not counted as misses): "
                     + ", ".join(map(table_cell, summary["not_failed_by_erm"])))
    lines += ["", "## Per planted slice: test accuracy, ERM → each method → ceiling", "",
              "| world | slice | train rate | shortcut | " + " | ".join(heads) + " | "
              + " | ".join(f"gap closed {m}" for m in repaired) + " | found | caption hit | handed | ERM |",
              "|---|---|---|---|" + "---|" * (len(methods) + 1 + len(repaired) + 4)]
    who = summary["found_in_top_k"]["method"]
    for s in result["slices"]:
        cells = [_pct(s["accuracy"].get(m)) for m in methods + [CEILING]]
        cells += [_pct(s["gap_closed"].get(m)) for m in repaired]
        found, hit, handed = s["found"].get(who), s["caption_hit"].get(who), s.get("handed", {}).get(who)
        cells += [_pct(found), _pct(hit), _pct(handed), s["status"] or "–"]
        lines.append(f"| {s['world']} | {table_cell(s['group'])} | {s['rate']:g} | {s['shortcut'] or 'no'} | "
                     + " | ".join(cells) + " |")
    lines += missed_table(result["slices"], th)
    lines += ["", "## Per world: test average / worst-group accuracy", "",
              "| world | blind spots | " + " | ".join(heads) + " |",
              "|---|---|" + "---|" * (len(methods) + 1)]
    for w in result["per_world"]:
        kind = "control" if w["control"] else "+".join(w["blind_spots"]) + (", shortcut" if w["shortcut"] else "")
        cells = [f"{_pct(v['avg_acc'], 1)} / {_pct(v['worst_group_acc'], 1)}" if (v := w["methods"].get(m)) else "–"
                 for m in methods + [CEILING]]
        lines.append(f"| {w['world']} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", "## The worlds", "", "| world | data seed | planted (class, attribute=value, train rate) | "
              "val / test per group |", "|---|---|---|---|"]
    for w in result["worlds"]:
        planted = "; ".join(f"{p['cls']} {p['attribute']}={p['value']} {p['rate']:g}" for p in w["planted"]) or "–"
        lines.append(f"| {w['name']} | {w['seed']} | {planted} | {w['val_per_group']} / {w['test_per_group']} |")
    lines += ["", "## How it was measured", "",
              f"Every run: `python train.py {' '.join(cfg['run_prefix'])}` + the world's `data.*` overrides + "
              f"`{' '.join(cfg['common_overrides'])}`; seeds {cfg['seeds']}. The ceiling is `+augment={baseline}` "
              "on the world with each blind-spot entry at its natural rate (its val/test splits are fresh renders "
              "of the same balanced design). Planned cost: "
              f"{result['estimate_minutes_workers2']:.0f} min at --workers 2 (conf `minutes_per_run`)."
              + run_minutes(result["per_world"], methods + [CEILING]), ""]
    lines += [f"- {e['date']}: {e['ran']} run(s) at commit {e['commit']}, {e['workers']} side by side on "
              f"{e['cpu_count']} cores, {e['minutes']:.1f} min"
              + (f", load average {e['load_average_at_end'][1]:.1f} (5 min) at the end"
                 if e.get("load_average_at_end") else "") for e in result["invocations"]]
    return "\n".join(lines) + "\n"


def markdown_missed_rows(slices: list[dict]) -> list[str]:
    """A table row for each (slice, seed) ERM fails or partly fails that the first round left out of its top-k."""
    rows = []
    for s in slices:
        if s["status"] in (STATUS_NOT_FAILED, None):
            continue
        for o in s.get("outranked_by", []):
            rank = "not handed" if o["rank"] is None else f"{o['rank'] + 1}"
            above = "; ".join(f"{table_cell(m['group'] or '?')} ({_pct(m['share'])} of members, "
                              f"{_pct(m['acc_at_round'])})" for m in o["modes"]) or "–"
            rows.append(f"| {s['world']} | {table_cell(s['group'])} | {s['status']} | {rank} | "
                        f"{_pct(o['acc_at_round'])} | {above} |")
    return rows


def run_minutes(per_world: list[dict], methods: list[str]) -> str:
    """' Run minutes per method: ...' summed over worlds and seeds (generation's share in brackets), or ''."""
    parts = []
    for m in methods:
        rows = [w["methods"][m] for w in per_world if m in w["methods"] and w["methods"][m].get("wall_seconds")]
        if rows:
            wall = sum(r["wall_seconds"] * r["seeds"] for r in rows) / 60
            gen = sum((r.get("generate_seconds") or 0.0) * r["seeds"] for r in rows) / 60
            parts.append(f"{m} {wall:.0f}" + (f" (generation {gen:.0f})" if gen >= 0.5 else ""))
    return (" Run minutes per method, summed over its runs (each run's own wall time, with the runs beside it): "
            + ", ".join(parts) + ".") if parts else ""


def missed_table(slices: list[dict], th: dict) -> list[str]:
    """The section on planted slices outside the first round's top-k (empty when there are none)."""
    rows = markdown_missed_rows(slices)
    if not rows:
        return []
    return ["", f"## Planted slices outside the first round's top-k (ERM < {th['not_failed_at']:.0%}): "
                "what ranked above them", "",
            "Test accuracy at the round is the model's just before the round's remedy; a top-k mode is named by "
            "the ground-truth group most of its validation members are in.", "",
            "| world | slice | status | rank among handed modes | slice accuracy at the round | "
            "the top-k modes: majority group (share, its accuracy at the round) |", "|---|---|---|---|---|---|"] + rows


def chart(result: dict, path: Path) -> None:
    """Per planted slice: test accuracy of ERM, each method and the ceiling (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = result["settings"]["methods"] + [CEILING]
    slices = result["slices"]
    colors = ["#8d99ae", "#d1495b", "#edae49", "#66a182", "#00798c", "#30638e", "#003d5b"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(slices) + 2), 3.8))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        xs = [k + (i - (len(methods) - 1) / 2) * width for k in range(len(slices))]
        ys = [s["accuracy"].get(m) for s in slices]
        ax.bar([x for x, y in zip(xs, ys) if y is not None], [y for y in ys if y is not None], width,
               label="ERM (none)" if m == result["settings"]["baseline"] else m,
               color="#222222" if m == CEILING else colors[i % len(colors)], alpha=0.35 if m == CEILING else 1.0)
    ax.set_xticks(range(len(slices)), [f"{s['world']}\n{s['group']}" for s in slices], rotation=35, ha="right",
                  fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("slice test accuracy")
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(methods), frameon=False)
    fig.tight_layout()
    tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def collect(jobs: list[Job], reports: list[dict | None]) -> dict[tuple[str, str], list[dict]]:
    """The jobs' finished reports (`reports[i]` is job i's, or None), by (world, method), one per finished seed."""
    out: dict[tuple[str, str], list[dict]] = {}
    for job, report in zip(jobs, reports):
        if report is not None:
            out.setdefault((job.world, job.method), []).append(report)
    return out


def write_results(results: Path, stem: str, result: dict) -> str:
    """Write results/<stem>.{json,md,png} atomically; returns the markdown."""
    _write_json(results / f"{stem}.json", result)
    text = markdown(result)
    tmp = results / f"{stem}.md.{os.getpid()}.tmp"
    tmp.write_text(text)
    os.replace(tmp, results / f"{stem}.md")
    chart(result, results / f"{stem}.png")
    return text


def main(argv: list[str] | None = None) -> int:
    """Run the suite (or the selected part of it) and write the results of every finished run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the suite config, e.g. worlds.seed=1")
    p.add_argument("--config", default="default", help="conf/suite/<name>.yaml")
    p.add_argument("--quick", action="store_true", help="the smoke run: --config quick, results suite_quick.*")
    p.add_argument("--worlds", default=None, help="comma-separated world names to run (default: all)")
    p.add_argument("--methods", default=None, help=f"comma-separated methods to run, '{CEILING}' included")
    p.add_argument("--workers", type=int, default=1, help="runs side by side (CPU: each gets cores/workers threads)")
    p.add_argument("--out", default=str(ROOT / "outputs" / "suite"), help="run folders (configs share equal runs)")
    p.add_argument("--list", action="store_true", help="print the worlds, runs and time estimate; run nothing")
    args = p.parse_args(argv)
    name = "quick" if args.quick else args.config
    cfg = load_config(name, args.overrides)
    spec, worlds = build_worlds(cfg)
    out = Path(args.out)
    jobs = plan(cfg, spec, worlds, out)
    names = [w.name for w in worlds]
    methods = list(cfg.methods) + [CEILING]
    chosen_worlds = args.worlds.split(",") if args.worlds else names
    chosen_methods = args.methods.split(",") if args.methods else methods
    for kind, chosen, known in (("--worlds", chosen_worlds, names), ("--methods", chosen_methods, methods)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            p.error(f"{kind}: unknown {unknown}; known: {known}")
    selected = with_baselines([j for j in jobs if j.world in chosen_worlds and j.method in chosen_methods])
    if args.list:
        for w in worlds:
            print(f"{w.name}: {w.describe(spec)}\n    {' '.join(w.overrides())}")
        for j in selected:
            start = f" (from {cfg.baseline}'s epoch {j.branch_epoch})" if j.after is not None else ""
            print(f"  {j.world} {j.method} seed {j.seed}: {'= ERM run (no blind spot)' if j.alias else j.out}{start}")
        print(f"{sum(not j.alias for j in selected)} runs, about "
              f"{estimate_minutes(selected, dict(cfg.minutes_per_run), args.workers):.0f} min with "
              f"--workers {args.workers}")
        return 0
    start = time.time()
    errors, ran = run_all(selected, args.workers)
    results = Path(os.environ.get("BLINDSPOT_RESULTS", ROOT / "benchmarks" / "results"))
    stem = "suite_quick" if args.quick else ("suite" if name == "default" else f"suite_{name}")
    old = results / f"{stem}.json"
    invocations = json.loads(old.read_text()).get("invocations", []) if old.is_file() else []
    commit = os.environ.get("BLINDSPOT_COMMIT") or git_commit()  # BLINDSPOT_COMMIT: runs from an exported tree
    if ran or errors:  # a call that only re-reads finished runs measured nothing
        invocations.append({"date": time.strftime("%Y-%m-%d %H:%M"), "commit": commit, "ran": ran,
                            "workers": args.workers, "cpu_count": os.cpu_count(),
                            "minutes": (time.time() - start) / 60, "worlds": chosen_worlds,
                            "methods": chosen_methods, "errors": len(errors),
                            "load_average_at_end": os.getloadavg()})
    finished = [current_report(j) for j in jobs]  # read once: collect, missing and the count use it
    factor = int(cfg.get("fresh_test_factor") or 0)
    if factor:
        add_fresh_tests(jobs, finished, worlds, spec, factor)
    reports = collect(jobs, finished)
    split = FRESH if factor else "test"
    missing = [f"{j.world}/{j.method}/seed{j.seed}" for j, r in zip(jobs, finished) if not j.alias and r is None]
    result = {"config": name,
              "settings": {"methods": list(cfg.methods), "baseline": cfg.baseline, "seeds": list(cfg.seeds),
                           "run_prefix": run_prefix("<method>", "<seed>"),
                           "common_overrides": list(cfg.common_overrides), "overrides": list(args.overrides),
                           "generator": OmegaConf.to_container(cfg.worlds),
                           "test_split": {"name": split, "factor": factor, "seed_offset": SEED_OFFSET}
                           if factor else {"name": split}},
              "estimate_minutes_workers2": estimate_minutes(jobs, dict(cfg.minutes_per_run), 2),
              "runs": {"planned": sum(not j.alias for j in jobs), "finished": sum(
                  1 for j, r in zip(jobs, finished) if not j.alias and r is not None), "missing": missing,
                       "errors": {"/".join(map(str, k)): v[-2000:] for k, v in errors.items()},
                       "folders": {f"{j.world}/{j.method}/seed{j.seed}": str(j.out) for j in jobs}},
              "worlds": [w.to_dict(spec) for w in worlds],
              **evaluate(cfg, spec, worlds, reports, split), "invocations": invocations}
    if factor:  # the same numbers on the runs' own test splits, for comparison
        own = evaluate(cfg, spec, worlds, reports, "test")
        result["own_test"] = {"summary": own["summary"], "accuracy": {s["id"]: s["accuracy"] for s in own["slices"]}}
    print(write_results(results, stem, result))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
