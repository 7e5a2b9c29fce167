"""Discovery alone on the suite's worlds: train ERM to the first round's epoch once, then score discovery settings.

    python -m benchmarks.discovery_worlds --workers 2              # capture every world, score today's discovery
    python -m benchmarks.discovery_worlds --variant clusters=discovery=clusters \
        --variant loose="discovery.min_errors=3,discovery.min_support=5"
    python -m benchmarks.discovery_worlds --worlds default,w01-square-red
    python -m benchmarks.discovery_worlds --quick   # smoke run: the suite's quick world (CI)

A capture is the suite's failure_diffusion run of a world (same overrides, same seed) stopped at the end of the
epoch its first round runs, with the loop's remedy removed: it saves that epoch's validation predictions, labels,
ground-truth groups and CLIP embeddings (outputs/discovery_worlds/<world>/seed<seed>-<hash>/capture.pt; a capture is
reused while its overrides are the same). Every variant (Hydra overrides of the train config, comma-separated) is
then run on each capture through the loop's own `discover` (discovery + captioning, max_modes handed) and scored
against the planted slices with the suite's rules (found in the top-k, caption hit, handed). The first variant is
today's defaults; its modes must equal the suite run's first round. Results: results/discovery_worlds.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from lightning import Callback

from .common import RESULTS, table_cell

ROOT = Path(__file__).resolve().parents[1]
METHOD = "failure_diffusion"
OUT = ROOT / "outputs" / "discovery_worlds"
CAPTURE_VERSION = 3  # 1: stopped by a shorter max_epochs (another LR schedule than the run's); 2: no train embeddings


class CaptureDiscoveryInputs(Callback):
    """Saves the last validation epoch's predictions, labels, groups and CLIP embeddings, then the loop's rounds."""

    def __init__(self, path: str, stop_after_epoch: int, loop=None):
        self.path, self.stop_after_epoch, self.loop, self._rows = Path(path), stop_after_epoch, loop, []

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._rows = []

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if dataloader_idx == 0 and outputs is not None:
            self._rows.append((outputs["index"].cpu(), outputs["preds"].cpu(), outputs["label"].cpu()))

    def on_validation_end(self, trainer, pl_module) -> None:
        # stop here, not by a shorter max_epochs: the LR schedule spans the run's max_epochs (T_max), so the model
        # at the round's epoch is the suite run's own only if max_epochs stays what the run has
        if not trainer.sanity_checking and trainer.current_epoch + 1 >= self.stop_after_epoch:
            trainer.should_stop = True

    def on_fit_end(self, trainer, pl_module) -> None:
        from blindspot.loop import Split

        dm = trainer.datamodule
        index, preds, labels = (torch.cat(t) for t in zip(*self._rows))
        order = torch.argsort(index)
        emb = self.loop.embed(Split(len(dm.val_set), dm.val_images, dm.val_fingerprint()), progress=False)
        capture = {"epoch": trainer.current_epoch, "preds": preds[order], "labels": labels[order],
                   "groups": torch.as_tensor(dm.val_set.groups), "embeddings": emb.cpu(),
                   "class_names": list(dm.class_names), "group_names": list(dm.group_names),
                   "planted": dm.planted_slices(), "rounds": [r.to_dict() for r in self.loop.rounds]}
        train = Split(len(dm.train_set), dm.train_images, dm.train_fingerprint())
        capture["train_embeddings"] = self.loop.embed(train, progress=False).cpu()
        capture["train_labels"] = torch.as_tensor(dm.train_set.labels)
        tmp = self.path.with_suffix(".tmp")
        torch.save(capture, tmp)
        os.replace(tmp, self.path)


def suite_jobs(config: str, worlds: list[str] | None, overrides: list[str] = ()):
    """The suite's failure_diffusion jobs (world, seed, overrides) of a suite configuration."""
    from . import suite

    cfg = suite.load_config(config, [*overrides, "branch=false"])  # a capture trains from scratch: no ERM run needed
    spec, all_worlds = suite.build_worlds(cfg)
    jobs = [j for j in suite.plan(cfg, spec, all_worlds, ROOT / "outputs" / "suite") if j.method == METHOD]
    return [j for j in jobs if worlds is None or j.world in worlds]


def round_epoch(args: list[str]) -> int:
    """The (1-based) epoch the first round runs at under these overrides."""
    cfg = compose(args)
    return int(cfg.loop.start_epoch)


def compose(args: list[str]):
    """conf/train.yaml composed with these overrides (under the sweeps' Hydra lock), for use outside a Hydra run."""
    from omegaconf import open_dict

    from blindspot.runtime import register_resolvers

    from .runs import compose_train

    register_resolvers()
    cfg = compose_train(args)
    with open_dict(cfg):
        cfg.paths.output_dir = str(OUT / "_scratch")  # composed for instantiating the loop only: nothing is written
    return cfg


def capture_args(job_args: list[str], out: Path) -> list[str]:
    """train.py overrides that stop the suite run at its first round's epoch, remedy-free, and capture it."""
    epoch = round_epoch(job_args)
    return [*job_args, "loop.remedy=null", "loop.max_rounds=1", "test=false",
            "logger=none", "~callbacks.model_checkpoint", f"hydra.run.dir={out}",
            "+callbacks.capture._target_=benchmarks.discovery_worlds.CaptureDiscoveryInputs",
            f"+callbacks.capture.path={out / 'capture.pt'}", f"+callbacks.capture.stop_after_epoch={epoch}",
            "+callbacks.capture.loop=null"]


def capture_path(job, out: Path = OUT) -> Path:
    """Where a job's capture lives: its world, seed and a hash of its overrides (and the capture version)."""
    import hashlib

    digest = hashlib.sha256(json.dumps([CAPTURE_VERSION, *job.args]).encode()).hexdigest()[:8]
    return out / job.world / f"seed{job.seed}-{digest}" / "capture.pt"


def capture(job, threads: int, out_root: Path = OUT) -> Path:
    """Run (or reuse) one world's capture; returns the capture file."""
    path = capture_path(job, out_root)
    out = path.parent
    if path.is_file():
        return path
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    start = time.time()
    proc = subprocess.run([sys.executable, "train.py", *capture_args(job.args, out)], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    (out / "capture.log").write_text(proc.stdout[-20000:] + "\n--- stderr ---\n" + proc.stderr[-20000:])
    if proc.returncode != 0 or not path.is_file():
        raise RuntimeError(f"{job.world}: capture failed (log: {out / 'capture.log'}):\n{proc.stderr[-3000:]}")
    print(f"[discovery] {job.world}: captured in {(time.time() - start) / 60:.1f} min", flush=True)
    return path


def slice_val_errors(cap: dict, planted: dict) -> tuple[int, int]:
    """Validation samples of a planted slice at the round's epoch, and how many of them the model got wrong."""
    ids = [cap["group_names"].index(g) for g in planted.get("groups", [planted["group"]])]
    inside = torch.isin(cap["groups"], torch.tensor(ids))
    wrong = cap["preds"] != cap["labels"]
    return int(inside.sum()), int((inside & wrong).sum())


def score(cap: dict, args: list[str]) -> list[dict]:
    """One variant on one capture: the planted slices with found / caption hit / handed and their val errors."""
    import hydra

    from blindspot.groundtruth import score_discovery

    cfg = compose(args)
    loop = hydra.utils.instantiate(cfg.loop, remedy=None, _convert_="all")
    train = (cap["train_embeddings"], cap["train_labels"]) if "train_embeddings" in cap else None
    modes, _ = loop.discover(cap["embeddings"], cap["labels"], cap["preds"], cap["class_names"], train=train)
    result = score_discovery(modes, cap["planted"], cap["groups"], cap["group_names"])
    coverage = mode_coverage(cap, modes)
    alt = {name: score_discovery(order, cap["planted"], cap["groups"], cap["group_names"])["planted"]
           for name, order in reranked(modes, coverage).items()}
    in_run = [(m["class_name"], sorted(m["members"])) for m in cap["rounds"][0]["modes"]] if cap["rounds"] else []
    same = in_run == [(m.class_name, sorted(m.members)) for m in modes]
    rows = []
    for i, (p, match) in enumerate(zip(cap["planted"], result["planted"])):
        n, errors = slice_val_errors(cap, p)
        rows.append({**match, "class": p.get("class"), "val_samples": n, "val_errors": errors, "same_as_run": same,
                     "modes": [f"{m.class_name}: {m.caption!r} ({m.support}, {m.error_rate:.0%})" for m in modes],
                     "coverage": coverage, "reranked": {name: a[i] for name, a in alt.items()}})
    return rows


def mode_coverage(cap: dict, modes: list) -> list[dict]:
    """Each handed mode's majority ground-truth group, slice score and training coverage (if the capture has the
    training embeddings)."""
    from blindspot.discovery.coverage import train_coverage
    from blindspot.groundtruth import majority_group

    cover = (train_coverage(modes, cap["embeddings"], cap["train_embeddings"], cap["train_labels"])
             if "train_embeddings" in cap else [None] * len(modes))
    planted = {g for p in cap["planted"] for g in p.get("groups", [p["group"]])}
    out = []
    for m, c in zip(modes, cover):
        group, share = majority_group(m, cap["groups"], cap["group_names"])
        out.append({"class": m.class_name, "group": group, "share": share, "planted": group in planted,
                    "score": m.score, "slice_score": m.extra.get("slice_score", m.score),  # before rank_by=uncovered
                    "error_rate": m.error_rate, "support": m.support, "coverage": c})
    return out


def reranked(modes: list, coverage: list[dict]) -> dict[str, list]:
    """The handed modes in other orders, for scoring offline: least covered by training images first, and the
    slice score discounted by coverage (score × (1 − coverage))."""
    if not modes or coverage[0]["coverage"] is None:
        return {}
    pairs = list(zip(modes, coverage))  # the slice score from the rows: rank_by=uncovered discounted m.score already
    by_coverage = sorted(pairs, key=lambda p: p[1]["coverage"])
    by_uncovered = sorted(pairs, key=lambda p: -p[1]["slice_score"] * (1 - p[1]["coverage"]))
    return {"least_covered": [m for m, _ in by_coverage], "score_x_uncovered": [m for m, _ in by_uncovered]}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """'name=override,override' -> (name, overrides); 'defaults' alone means today's settings."""
    name, _, overrides = text.partition("=")
    return name, [o for o in overrides.split(",") if o] if overrides else []


def erm_status(suite_result: dict, world: str, group: str) -> str | None:
    """The suite's status of a planted slice (failed / partly failed / not failed by ERM), if it has one."""
    for s in suite_result.get("slices", []):
        if s["world"] == world and s["group"] == group:
            return s["status"]
    return None


def markdown(result: dict) -> str:
    """The results as a markdown page."""
    lines = ["# Discovery alone on the suite's worlds (`python -m benchmarks.discovery_worlds`)", "",
             f"Captures: the `--config {result['config']}` failure_diffusion runs stopped at their first round "
             "(validation predictions at that epoch). Slices the suite reports as not failed by ERM (>= 90% test) "
             "are left out of the rates, as in the suite.", "",
             "| variant | overrides | found in top-k | caption hit | handed | found, ERM < 70% | caption hit, ERM < 70% |",
             "|---|---|---|---|---|---|---|"]
    for i, v in enumerate(result["variants"]):
        s = v["summary"]
        lines.append(f"| {v['name']} | `{' '.join(v['overrides']) or '(defaults)'}` | {s['found']} | {s['caption_hit']} | "
                     f"{s['handed']} | {s['found_failed']} | {s.get('caption_failed', '–')} |")
        for order, r in (v.get("reranked", {}) if i == 0 else {}).items():  # today's modes, re-ranked offline
            lines.append(f"| {v['name']}, handed modes re-ranked offline: {order} | – | {r['found']} | "
                         f"{r['caption_hit']} | {r['handed']} | {r['found_failed']} | {r.get('caption_failed', '–')} |")
    lines += coverage_table(result["variants"][0]["slices"])
    lines += ["", "## Per slice", "", "| slice | ERM | val errors / samples | " + " | ".join(
        v["name"] for v in result["variants"]) + " |", "|---|---|---|" + "---|" * len(result["variants"])]
    first = result["variants"][0]["slices"]
    for i, row in enumerate(first):
        cells = []
        for v in result["variants"]:
            r = v["slices"][i]
            cells.append(("found" if r["found"] else f"rank {r['rank'] + 1}" if r["handed"] else "missed")
                         + (", caption" if r["caption_hit"] else ""))
        lines.append(f"| {row['world']}:{table_cell(row['group'])} (seed {row.get('seed', '?')}) | {row['status'] or '?'} | "
                     f"{row['val_errors']} / "
                     f"{row['val_samples']} | " + " | ".join(cells) + " |")
    lines += ["", f"Machine: {result['machine']}; captures made this run: {result['captured']}."]
    return "\n".join(lines) + "\n"


def coverage_table(rows: list[dict]) -> list[str]:
    """The handed modes of each capture with their majority group, slice score and training coverage."""
    lines, seen = [], set()
    for r in rows:
        key = (r["world"], r.get("seed"))
        if key in seen or not r.get("coverage") or r["coverage"][0]["coverage"] is None:
            continue
        seen.add(key)
        cells = [f"{table_cell(c['group'] or '?')}{' (planted)' if c['planted'] else ''}: slice score "
                 f"{c.get('slice_score', c['score']):.2f}, error {c['error_rate']:.0%} of {c['support']}, coverage {c['coverage']:.2f}"
                 for c in r["coverage"]]
        lines.append(f"| {r['world']} | {r.get('seed', '?')} | " + "<br>".join(cells) + " |")
    if not lines:
        return []
    return ["", "## Training coverage of the handed modes", "",
            "Coverage: the share of the class's training images that are farther from their own 5th nearest other "
            "same-class training image (CLIP cosine) than the mode's median member is from its 5th nearest (0 = less "
            "covered than any training image, `blindspot/discovery/coverage.py`). A mode is named by the ground-truth "
            "group most of its members are in; "
            "(planted) marks a planted slice's group.", "",
            "| world | seed | handed modes, in rank order |", "|---|---|---|"] + lines


def summarise(rows: list[dict], order: str | None = None) -> dict:
    """Rates over the slices ERM fails or partly fails (as the suite counts them); `order`: a re-ranking's."""
    counted = [r for r in rows if r["status"] != "not failed by ERM"]
    failed = [r for r in rows if r["status"] == "failed by ERM"]

    def rate(items, key):
        return f"{sum(bool((r['reranked'][order] if order else r)[key]) for r in items)} / {len(items)}"

    return {"found": rate(counted, "found"), "caption_hit": rate(counted, "caption_hit"),
            "handed": rate(counted, "handed"), "found_failed": rate(failed, "found"),
            "caption_failed": rate(failed, "caption_hit"), "n": len(counted),
            "same_modes_as_the_run": all(r["same_as_run"] for r in rows)}


def main(argv: list[str] | None = None) -> int:
    import platform

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the suite config, e.g. 'seeds=[0,1]'")
    parser.add_argument("--config", default="repair", help="conf/suite/<name>.yaml whose failure_diffusion runs to capture")
    parser.add_argument("--suite-json", action="append", default=[], type=Path,
                        help="suite results giving the ERM status of each slice (repeatable: one per seed; "
                             "default results/suite_<config>.json)")
    parser.add_argument("--worlds", help="comma-separated world names (default: all)")
    parser.add_argument("--variant", action="append", default=[], help="name=override,override (repeatable)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stem", help="results/<stem>.{json,md} (default discovery_worlds, or _quick)")
    parser.add_argument("--out", type=Path, default=OUT, help="where captures go")
    parser.add_argument("--quick", action="store_true", help="the suite's quick config (one tiny world, 1 epoch)")
    a = parser.parse_args(argv)
    config = "quick" if a.quick else a.config
    stem = a.stem or ("discovery_worlds_quick" if a.quick else "discovery_worlds")
    jobs = suite_jobs(config, a.worlds.split(",") if a.worlds else None, a.overrides)
    threads = max(1, (os.cpu_count() or 1) // max(1, a.workers))
    made = sum(not capture_path(j, a.out).is_file() for j in jobs)
    with ThreadPoolExecutor(max_workers=max(1, a.workers)) as pool:
        paths = list(pool.map(lambda j: capture(j, threads, a.out), jobs))
    statuses = {}  # seed -> that seed's suite result
    for path in a.suite_json or [p for p in [RESULTS / f"suite_{config}.json"] if p.is_file()]:
        found = json.loads(path.read_text())
        for seed in found.get("settings", {}).get("seeds", []):
            statuses[int(seed)] = found
    variants = [("defaults", [])] + [parse_variant(v) for v in a.variant]
    result = {"config": config, "machine": f"{platform.node()} ({os.cpu_count()} cores)",
              "captured": made, "variants": []}
    for name, overrides in variants:
        rows = []
        for job, path in zip(jobs, paths):
            cap = torch.load(path, weights_only=False)
            for r in score(cap, [*job.args, *overrides]):
                rows.append({"world": job.world, "seed": job.seed,
                             "status": erm_status(statuses.get(job.seed, {}), job.world, r["group"]), **r})
        result["variants"].append({"name": name, "overrides": overrides, "slices": rows, "summary": summarise(rows),
                                   "reranked": {o: summarise(rows, o) for o in (rows[0]["reranked"] if rows else {})}})
        print(f"[discovery] {name}: {result['variants'][-1]['summary']}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
