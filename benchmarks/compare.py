"""The comparison sweep: every method x seed on the same data and epochs -> one table, one chart.

    python -m benchmarks.compare                 # all methods x 3 seeds (resumes: finished runs are kept)
    python -m benchmarks.compare --quick         # plumbing check: tiny data, 2 epochs, one seed (CI)
    python -m benchmarks.compare --methods none,failure_diffusion --seeds 0
    python -m benchmarks.compare --workers 2     # two runs side by side, each on cores/2 torch threads

Each run is `python train.py experiment=compare +augment=<method> seed=<seed>` in its own folder under
outputs/compare/full/<method>/seed<seed>/ (`ceiling` is ERM with the default world's blind spots filled by real
renders at their natural rate, as in benchmarks.suite; with it and `none`, the table gives each method's share of
the gap to the ceiling closed on every blind spot, per seed); a run whose report has test metrics is not run again, an interrupted
one continues from its last checkpoint, and a run whose settings differ from what today's conf/ composes is
moved aside to <folder>.stale-<time> and run afresh (benchmarks.runs). Writes benchmarks/results/compare.{json,md,png} and
compare_provenance.json (which commit, when and how each row was measured); a run of some methods replaces
their rows and keeps the others'. Every run is also scored from its final checkpoint on the default world's test design
rendered anew `--fresh-test` times as large (benchmarks.fresh_test, as the suite does): with 50 test images a group,
one seed's worst group moves by whole images.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from blindspot.runtime import last_checkpoint

from .common import QUICK_RUN, table_cell
from .fresh_test import SPLIT as FRESH
from .fresh_test import fresh_metrics, fresh_split, run_cache_dir
from .planted import blind_spots, default_world, slice_accuracy
from .runs import claimed, reusable_report

ROOT = Path(__file__).resolve().parents[1]
METHODS = ["none", "jtt", "group_dro_oracle", "group_dro_discovered", "dfr", "dfr_discovered", "retrieval",
           "untargeted_diffusion", "failure_diffusion", "failure_edit", "ceiling"]
CEILING = "ceiling"  # ERM with the world's blind spots filled by real renders at their natural rate
QUICK = [*QUICK_RUN, "loop.start_epoch=1", "remedy.images_per_round=8", "generator.num_inference_steps=2",
         "editor.num_inference_steps=2",
         "discovery.min_support=3", "discovery.min_error_gap=0.0", "callbacks.jtt.identification_epochs=1"]
LOOP = {"group_dro_discovered", "dfr_discovered", "retrieval", "untargeted_diffusion", "failure_diffusion",
        "failure_edit"}
GENERATION = {"untargeted_diffusion", "failure_diffusion"}
ONLY = {"callbacks.jtt": {"jtt"}, "remedy.images_per_round": GENERATION | {"retrieval", "failure_edit"},
        "generator": GENERATION, "editor": {"failure_edit"},
        "loop": LOOP, "discovery": LOOP}  # override prefix -> the methods whose config has it


def overrides_for(method: str, quick: bool) -> list[str]:
    """Quick-mode overrides that exist in this method's config (others would fail to compose)."""
    if not quick:
        return []
    keys = {o: o.split("=")[0] for o in QUICK}
    return [o for o in QUICK if all(method in methods for prefix, methods in ONLY.items()
                                    if keys[o] == prefix or keys[o].startswith(prefix + "."))]


def ceiling_overrides() -> list[str]:
    """ERM on the default world with every blind spot filled at its natural rate (as the suite's ceiling)."""
    from blindspot.world.suite import planted_override

    spec, world = default_world()
    return ["+augment=none", f"data.planted={planted_override(world.ceiling(spec).planted)}"]


def run_args(method: str, seed: int, quick: bool) -> list[str]:
    """The train.py overrides of one method/seed (the ceiling: ERM on the filled world)."""
    augment = ceiling_overrides() if method == CEILING else [f"+augment={method}"]
    return ["experiment=compare", augment[0], f"seed={seed}", "logger=csv", *augment[1:],
            *overrides_for("none" if method == CEILING else method, quick)]


def run_one(method: str, seed: int, out: Path, quick: bool, threads: int | None = None) -> dict:
    """Run (or resume, or skip) one method/seed; returns its report."""
    with claimed(out):
        return _run_claimed(method, seed, out, quick, threads)


def _run_claimed(method: str, seed: int, out: Path, quick: bool, threads: int | None) -> dict:
    """run_one's work, with the run's folder locked."""
    report = out / "report" / "report.json"
    args = [*run_args(method, seed, quick), f"hydra.run.dir={out}"]
    done = reusable_report(out, args, f"[compare] {method} seed {seed}")
    if done is not None:
        return done | {"reused": True}  # finished earlier: the provenance says so
    if last_checkpoint(out).exists():
        args.append(f"resume={out}")
    env = dict(os.environ)  # train.py runs from ROOT: its folder is on sys.path
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{method} seed {seed} failed:\n{proc.stderr[-4000:]}")
    data = json.loads(report.read_text())
    data.setdefault("wall_seconds", time.time() - start)
    return data


SLOW_FIRST = ["failure_diffusion", "failure_edit", "untargeted_diffusion", "jtt", "retrieval"]


def run_all(methods: list[str], seeds: list[int], out: Path, quick: bool, workers: int) -> dict[str, list[dict]]:
    """Every method x seed, `workers` at a time (longest methods first), printing each as it finishes."""
    jobs = sorted(((m, s) for m in methods for s in seeds),
                  key=lambda job: SLOW_FIRST.index(job[0]) if job[0] in SLOW_FIRST else len(SLOW_FIRST))
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 else None

    def one(job: tuple[str, int]) -> dict:
        report = run_one(job[0], job[1], out / job[0] / f"seed{job[1]}", quick, threads)
        test = report["metrics"]["test"]
        print(f"[compare] {job[0]} seed {job[1]}: avg {test['avg_acc']:.1%}, worst group "
              f"{test['worst_group_acc']:.1%}, {report.get('wall_seconds', 0) / 60:.1f} min", flush=True)
        return report

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reports = dict(zip(jobs, pool.map(one, jobs)))
    return {m: [reports[(m, s)] for s in seeds] for m in methods}


def images_added(report: dict) -> int:
    """Images (generated, edited or retrieved) the method added to the training pool, from its report.json.

    Newer reports count them per round (`rounds[i].injected`); older ones in `rounds[i].kept` for generation and
    in `extra.retrieval[<round>].added` for retrieval.
    """
    rounds = [r for r in report.get("rounds", []) if isinstance(r, dict)]
    if any("injected" in r for r in rounds):
        return int(sum(r.get("injected") or 0 for r in rounds))
    retrieval = report.get("extra", {}).get("retrieval", {})
    retrieved = sum(v.get("added", v.get("retrieved", 0)) for v in retrieval.values() if isinstance(v, dict))
    return int(sum(r.get("kept") or 0 for r in rounds) + retrieved)


def split_summary(reports: list[dict], seeds: list[int], spots: list[dict], split: str) -> dict:
    """Average and worst-group accuracy on one test split (mean and standard deviation over seeds), and each blind
    spot's accuracy per seed."""
    avg = [r["metrics"][split]["avg_acc"] for r in reports]
    wga = [r["metrics"][split]["worst_group_acc"] for r in reports]
    return {"avg_acc_mean": statistics.mean(avg), "avg_acc_std": statistics.pstdev(avg),
            "wga_mean": statistics.mean(wga), "wga_std": statistics.pstdev(wga),
            "blind_spots": {s["group"]: {str(seed): slice_accuracy(r, s, split) for seed, r in zip(seeds, reports)}
                            for s in spots}}


def summarise(runs: dict[str, list[dict]], seeds: list[int]) -> dict:
    """Mean and standard deviation over seeds per method, and each blind spot's accuracy per seed (on the runs' own
    test splits, and as fresh_* on the fresh one when every run of the method was scored on it)."""
    out, spots = {}, blind_spots()
    for method, reports in runs.items():
        groups = sorted(reports[0]["metrics"]["test"].get("per_group", {}))
        out[method] = {
            **split_summary(reports, seeds, spots, "test"),
            "images_added": statistics.mean(images_added(r) for r in reports),
            "wall_seconds": statistics.mean(r.get("wall_seconds", 0.0) for r in reports),
            "seeds": len(reports),
            "per_group_mean": {g: statistics.mean(r["metrics"]["test"]["per_group"][g] for r in reports)
                               for g in groups},
        }
        if all(FRESH in r["metrics"] for r in reports):
            fresh = split_summary(reports, seeds, spots, FRESH)
            out[method] |= {f"fresh_{k}": v for k, v in fresh.items()} | {
                "fresh_images": reports[0]["metrics"][FRESH]["n"]}
    return out


def add_fresh_tests(runs: dict[str, list[dict]], seeds: list[int], out: Path, factor: int) -> None:
    """Score every run's final checkpoint on the default world's fresh test split: `metrics["fresh_test"]`."""
    folders = {(m, seed): out / m / f"seed{seed}" for m in runs for seed in seeds}
    spec, world = default_world()
    split = fresh_split(world, spec, factor, run_cache_dir(next(iter(folders.values()))))
    print(f"[compare] fresh test: {len(split)} images ({factor}x the test design), {len(folders)} run(s)", flush=True)
    for method, reports in runs.items():
        for seed, report in zip(seeds, reports):
            metrics = fresh_metrics(folders[(method, seed)], split)
            if metrics is not None:
                report["metrics"][FRESH] = metrics


def gap_rows(summary: dict, key: str = "blind_spots") -> list[dict]:
    """Per method and blind spot: the share of the gap to the ceiling closed per seed, (m - ERM) / (ceiling - ERM)
    (`key`: "blind_spots" on the runs' own test splits, "fresh_blind_spots" on the fresh one)."""
    base, top = summary.get("none", {}).get(key), summary.get(CEILING, {}).get(key)
    if not base or not top:
        return []
    rows = []
    for method, s in summary.items():
        if method in ("none", CEILING):
            continue
        for group, accs in (s.get(key) or {}).items():
            gaps = {seed: (a - base[group][seed]) / (top[group][seed] - base[group][seed])
                    for seed, a in accs.items() if a is not None and base[group].get(seed) is not None
                    and top[group].get(seed) is not None and top[group][seed] > base[group][seed]}
            if gaps:
                rows.append({"method": method, "group": group, "gap_closed": gaps,
                             "mean": statistics.mean(gaps.values())})
    return rows


def gap_table(summary: dict, key: str = "blind_spots") -> str:
    """The markdown table of gap closed on each blind spot per seed (empty without ERM and ceiling rows)."""
    rows = gap_rows(summary, key)
    if not rows:
        return ""
    seeds = sorted({seed for r in rows for seed in r["gap_closed"]}, key=int)
    lines = ["| method | blind spot | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
             "|---|---|" + "---|" * (len(seeds) + 1)]
    for r in rows:
        cells = [f"{r['gap_closed'][s]:.0%}" if s in r["gap_closed"] else "–" for s in seeds]
        lines.append(f"| {r['method']} | {table_cell(r['group'])} | " + " | ".join(cells) + f" | {r['mean']:.0%} |")
    return "\n".join(lines)


def chart(summary: dict, path: Path) -> None:
    """Bar chart of average and worst-group test accuracy per method (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    x = range(len(names))
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.6))
    ax.bar([i - 0.2 for i in x], [summary[n]["avg_acc_mean"] for n in names], 0.4,
           yerr=[summary[n]["avg_acc_std"] for n in names], label="average accuracy", color="#9bb7d4")
    ax.bar([i + 0.2 for i in x], [summary[n]["wga_mean"] for n in names], 0.4,
           yerr=[summary[n]["wga_std"] for n in names], label="worst-group accuracy", color="#d1495b")
    ax.set_xticks(list(x), names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def table(summary: dict) -> str:
    """The markdown table of the README (the fresh-render columns once any row has them)."""
    fresh = any("fresh_wga_mean" in s for s in summary.values())
    head = "| method | avg acc | worst-group acc | images added | wall time / run |"
    head += " avg acc, fresh renders | worst group, fresh renders |" if fresh else ""
    rows = [head, "|---|---|---|---|---|" + ("---|---|" if fresh else "")]
    for m, s in summary.items():
        row = (f"| {m} | {s['avg_acc_mean']:.1%} ± {s['avg_acc_std']:.1%} | {s['wga_mean']:.1%} ± "
               f"{s['wga_std']:.1%} | {s['images_added']:.0f} | {s['wall_seconds'] / 60:.1f} min |")
        if fresh:
            row += (f" {s['fresh_avg_acc_mean']:.1%} ± {s['fresh_avg_acc_std']:.1%} | {s['fresh_wga_mean']:.1%} ± "
                    f"{s['fresh_wga_std']:.1%} |" if "fresh_wga_mean" in s else " – | – |")
        rows.append(row)
    return "\n".join(rows)


def group_table(summary: dict) -> str:
    """Per-group test accuracy (mean over seeds): one row per group, one column per method."""
    methods = list(summary)
    groups = sorted({g for s in summary.values() for g in s.get("per_group_mean", {})})
    rows = ["| group | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for g in groups:
        cells = [f"{summary[m]['per_group_mean'][g]:.0%}" if g in summary[m].get("per_group_mean", {}) else "–"
                 for m in methods]
        rows.append(f"| {table_cell(g)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def git_commit() -> str | None:
    """The commit the sweep ran on (with '+changes' when the work tree differs), or None outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return sha + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def merged(results: Path, stem: str, summary: dict, invocation: dict) -> tuple[dict, list[dict]]:
    """This sweep's rows over the earlier file's (methods not run now keep their rows), and every invocation."""
    old_json, old_log = results / f"{stem}.json", results / f"{stem}_provenance.json"
    rows = json.loads(old_json.read_text()) if old_json.is_file() else {}
    log = json.loads(old_log.read_text()) if old_log.is_file() else []
    log = [entry | {"methods": [m for m in entry["methods"] if m not in summary]} for entry in log]
    rows.update(summary)
    order = [m for m in METHODS if m in rows] + [m for m in rows if m not in METHODS]
    return {m: rows[m] for m in order}, [entry for entry in log if entry["methods"]] + [invocation]


def render(results: Path, stem: str, summary: dict, provenance: list[dict]) -> str:
    """Write results/<stem>.{json,md,png} and the provenance log; returns the markdown."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{stem}.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / f"{stem}_provenance.json").write_text(json.dumps(provenance, indent=2) + "\n")
    lines = [f"- {', '.join(e['methods'])}: seeds {e['seeds']}, measured {e['date']} at commit {e['commit']}, "
             f"{e['workers']} run(s) side by side on {e['cpu_count']} CPU cores, sweep wall time {e['minutes']:.1f} min"
             + (f" (finished earlier, reused: {', '.join(e['reused'])})" if e.get("reused") else "")
             for e in provenance]
    text = (table(summary) + "\n\nHow each row was measured:\n" + "\n".join(lines)
            + "\n\nPer-group test accuracy (mean over seeds):\n\n" + group_table(summary) + "\n")
    gaps = gap_table(summary)
    if gaps:
        text += ("\nGap to the ceiling closed on each blind spot, (method - ERM) / (ceiling - ERM) on the same seed "
                 "(test accuracy of the slice):\n\n" + gaps + "\n")
    fresh = gap_table(summary, "fresh_blind_spots")
    if fresh:
        n = next(s["fresh_images"] for s in summary.values() if "fresh_images" in s)
        text += (f"\nThe same on fresh renders ({n} images: the test design rendered anew from another data seed, the "
                 "same images for every run; rows without them were measured before they existed):\n\n" + fresh + "\n")
    (results / f"{stem}.md").write_text(text)
    chart(summary, results / f"{stem}.png")
    return text


def main() -> None:
    """Run the sweep and write results/compare.{json,md,png} (rows of methods not run now are kept)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default=str(ROOT / "outputs" / "compare"))
    p.add_argument("--workers", type=int, default=1, help="runs side by side (CPU: each gets cores/workers threads)")
    p.add_argument("--fresh-test", type=int, default=None, metavar="N",
                   help="also score each run on its test design rendered anew N times as large (default 4; "
                        "--quick: 0, off)")
    args = p.parse_args()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; known: {METHODS}")
    out = Path(args.out) / ("quick" if args.quick else "full")
    start = time.time()
    runs = run_all(methods, seeds, out, args.quick, args.workers)
    factor = (0 if args.quick else 4) if args.fresh_test is None else args.fresh_test
    if factor:
        add_fresh_tests(runs, seeds, out, factor)
    invocation = {"methods": methods, "seeds": seeds, "workers": args.workers, "cpu_count": os.cpu_count(),
                  "minutes": (time.time() - start) / 60, "commit": git_commit(),
                  "date": time.strftime("%Y-%m-%d %H:%M"),
                  "reused": [f"{m} seed {seed}" for m in methods for seed, r in zip(seeds, runs[m]) if r.get("reused")]}
    stem = "compare_quick" if args.quick else "compare"
    results = Path(os.environ.get("BLINDSPOT_RESULTS", ROOT / "benchmarks" / "results"))
    summary, provenance = merged(results, stem, summarise(runs, seeds), invocation)
    print(render(results, stem, summary, provenance))


if __name__ == "__main__":
    main()
