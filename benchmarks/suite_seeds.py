"""Results of one suite run on disjoint seeds, pooled: per-slice accuracies and discovery rates averaged over all seeds.

    python -m benchmarks.suite_seeds benchmarks/results/suite.json benchmarks/results/suite_core_seeds12_g3.json \
        --stem suite_seeds012_g3

Each input is a results JSON of `python -m benchmarks.suite` over the same worlds (same `worlds.*` settings) and
other training seeds, e.g. seed 0 with every method and seeds 1-2 with `--config core`. Every number is averaged
with each file's seed count as its weight, exactly as one suite run over all the seeds would average them (same
test sets); status, gap closed and the goals are then computed by the suite's own code. Only the methods every
file has are pooled. Writes benchmarks/results/<stem>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from omegaconf import OmegaConf

from .suite import CEILING, ROOT, gap_closed, slice_status, summarise, write_results


def _weighted(pairs: list[tuple[float | None, int]]) -> float | None:
    """Mean of values weighted by their seed counts, skipping missing values."""
    pairs = [(v, n) for v, n in pairs if v is not None and n]
    return sum(v * n for v, n in pairs) / sum(n for _, n in pairs) if pairs else None


def seed_counts(result: dict) -> dict[tuple[str, str], int]:
    """{(world, method): seeds} of one results file, from its per-world rows."""
    return {(w["world"], m): v.get("seeds", 1) for w in result["per_world"] for m, v in w["methods"].items()}


def check_same_suite(results: list[dict]) -> None:
    """Refuse files whose worlds differ or whose seeds overlap (pooling them would not be one suite run)."""
    worlds = [json.dumps(r["worlds"], sort_keys=True) for r in results]
    if len(set(worlds)) > 1:
        raise ValueError("the results files were made on different worlds (their `worlds` differ): pool only runs "
                         "of the same suite settings")
    splits = [json.dumps(r["settings"].get("test_split") or {"name": "test"}, sort_keys=True) for r in results]
    if len(set(splits)) > 1:
        raise ValueError("the results files were scored on different test splits (settings.test_split differs): "
                         "re-summarise them with the same fresh_test_factor")
    seen: set[int] = set()
    for r in results:
        seeds = set(r["settings"]["seeds"])
        if seeds & seen:
            raise ValueError(f"seeds {sorted(seeds & seen)} are in more than one file: pool disjoint seeds")
        seen |= seeds


def pool(results: list[dict], names: list[str] | None = None) -> dict:
    """One results dict over all the files' seeds (the methods every file has); `names` label the files."""
    check_same_suite(results)
    first = results[0]
    methods = [m for m in first["settings"]["methods"] if all(m in r["settings"]["methods"] for r in results)]
    baseline = first["settings"]["baseline"]
    counts = [seed_counts(r) for r in results]
    th = first["summary"]["thresholds"]
    per_world = []
    for i, w in enumerate(first["per_world"]):
        rows = [r["per_world"][i] for r in results]
        pooled = {}
        for m in methods + [CEILING]:
            have = [(row["methods"][m], c[(row["world"], m)]) for row, c in zip(rows, counts) if m in row["methods"]]
            if have:
                pooled[m] = {k: _weighted([(v.get(k), n) for v, n in have])
                             for k in ("avg_acc", "worst_group_acc", "images_added", "wall_seconds",
                                       "generate_seconds")}
                pooled[m]["seeds"] = sum(n for _, n in have)
        per_world.append({**w, "methods": pooled})
    repaired = [m for m in methods if m != baseline]
    slices = []
    for i, s in enumerate(first["slices"]):
        rows = [r["slices"][i] for r in results]
        weights = {m: [c.get((s["world"], m), 0) for c in counts] for m in methods + [CEILING]}

        def mean(key: str, m: str) -> float | None:
            """The files' values of slice[key][m], weighted by their seed counts of method m on this world."""
            return _weighted([(row.get(key, {}).get(m), n) for row, n in zip(rows, weights[m])])
        acc = {m: mean("accuracy", m) for m in weights}
        rates = {key: {m: v for m in methods if (v := mean(key, m)) is not None}
                 for key in ("found", "caption_hit", "handed")}
        erm = acc.get(baseline)
        slices.append({**s, "accuracy": acc, "status": slice_status(erm, th),
                       "gap_closed": {m: gap_closed(acc.get(m), erm, acc.get(CEILING), th["min_gap"])
                                      for m in repaired},
                       **rates, "outranked_by": [o for row in rows for o in row.get("outranked_by", [])]})
    # runs pooled: each world's methods x seeds, less a control world's ceiling (the ERM run itself)
    pooled_runs = sum(v["seeds"] for w in per_world for m, v in w["methods"].items()
                      if not (m == CEILING and w["control"]))
    cfg = OmegaConf.create({"baseline": baseline,
                            "discovery_method": first["summary"]["found_in_top_k"]["method"]})
    seeds = sorted(s for r in results for s in r["settings"]["seeds"])
    shared = [o for o in first["settings"].get("overrides", []) if not o.startswith("seeds=")]  # seeds are pooled
    return {"config": first["config"],
            "settings": {**first["settings"], "methods": methods, "seeds": seeds, "overrides": shared},
            "estimate_minutes_workers2": first["estimate_minutes_workers2"],
            "runs": {"planned": pooled_runs, "finished": pooled_runs, "missing": [], "errors": {}, "folders": {}},
            "worlds": first["worlds"], "slices": slices, "per_world": per_world,
            "summary": summarise(cfg, slices, per_world, repaired, th),
            "invocations": [e for r in results for e in r["invocations"]],
            "pooled_from": [{"file": name, "seeds": r["settings"]["seeds"]}
                            for name, r in zip(names or [None] * len(results), results)]}


def main(argv: list[str] | None = None) -> int:
    """Pool the given results files and write <stem>.{json,md,png}."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="results JSONs of benchmarks.suite, same worlds, disjoint seeds")
    p.add_argument("--stem", default="suite_seeds", help="output name under the results folder")
    args = p.parse_args(argv)
    results = [json.loads(Path(f).read_text()) for f in args.files]
    out = Path(os.environ.get("BLINDSPOT_RESULTS", ROOT / "benchmarks" / "results"))
    print(write_results(out, args.stem, pool(results, [Path(f).name for f in args.files])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
