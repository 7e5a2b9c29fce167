"""Settings of one method side by side on the suite: per planted slice, test accuracy and the gap closed per variant.

    python -m benchmarks.suite_variants old=benchmarks/results/suite_core.json new=benchmarks/results/suite.json

Each argument is `label=path` to a results JSON of `python -m benchmarks.suite` (one variant of `--method`'s
settings each, same worlds, same ERM and ceiling runs). The ERM and ceiling runs are shared, so they need to be in
one file only: a variant run with `--methods <method>` alone gets its gap closed and its control-world delta from
the ERM and ceiling accuracies of the others. Writes benchmarks/results/suite_variants.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from .common import RESULTS
from .suite import _pct, gap_closed



def variant_rows(results: dict[str, dict], method: str, fails_below: float) -> tuple[list[dict], dict]:
    """Per slice ERM failed (< fails_below) and every slice: ERM, each variant, ceiling; plus per-variant means."""
    first = next(iter(results.values()))
    rows, summary = [], {label: {"gap_closed": [], "control_delta": [], "found": [], "caption_hit": []}
                         for label in results}
    for s in first["slices"]:
        shared = [x["accuracy"] for r in results.values() for x in r["slices"] if x["id"] == s["id"]]
        erm = next((a["none"] for a in shared if a.get("none") is not None), None)  # the same runs in every file
        ceiling = next((a["ceiling"] for a in shared if a.get("ceiling") is not None), None)
        row = {"id": s["id"], "erm": erm, "ceiling": ceiling, "failed": erm is not None and erm < fails_below,
               "variants": {}}
        for label, r in results.items():
            match = next((x for x in r["slices"] if x["id"] == s["id"]), {})
            acc, gap = match.get("accuracy", {}).get(method), match.get("gap_closed", {}).get(method)
            if gap is None:  # a variant run without its own ERM / ceiling runs: use the shared ones
                gap = gap_closed(acc, erm, ceiling, r["summary"]["thresholds"]["min_gap"])
            row["variants"][label] = {"accuracy": acc, "gap_closed": gap,
                                      "found": (match.get("found") or {}).get(method),
                                      "caption_hit": (match.get("caption_hit") or {}).get(method)}
            if row["failed"] and gap is not None:
                summary[label]["gap_closed"].append(gap)
            if erm is not None and erm < r["summary"]["thresholds"]["not_failed_at"] and acc is not None:
                for key in ("found", "caption_hit"):  # the suite's discovery rates: slices ERM fails or partly fails
                    summary[label][key].append(bool(row["variants"][label][key]))
        rows.append(row)
    erm_worst = {w["world"]: w["methods"]["none"]["worst_group_acc"] for r in results.values()
                 for w in r["per_world"] if w.get("control") and "none" in w["methods"]}
    for label, r in results.items():
        for w in r["per_world"]:
            if w.get("control") and method in w["methods"] and w["world"] in erm_worst:
                summary[label]["control_delta"].append(w["methods"][method]["worst_group_acc"] - erm_worst[w["world"]])
        gaps = summary[label]["gap_closed"]
        summary[label].update(mean=statistics.mean(gaps) if gaps else None, min=min(gaps) if gaps else None,
                              slices=len(gaps))
    return rows, summary


def markdown(rows: list[dict], summary: dict, method: str) -> str:
    """The side-by-side table: accuracy (gap closed) per variant, slices ERM fails first."""
    labels = list(summary)
    lines = [f"# `{method}` settings side by side on the suite of worlds", "",
             "| slice | ERM | " + " | ".join(labels) + " | ceiling |", "|---" * (len(labels) + 3) + "|"]
    for row in sorted(rows, key=lambda r: (not r["failed"], r["id"])):
        cells = [f"{_pct(v['accuracy'])} ({_pct(v['gap_closed'])})" for v in row["variants"].values()]
        mark = "" if row["failed"] or row["erm"] is None else " (ERM ≥ 70%)"
        name = row["id"].replace("|", "\\|")
        lines.append(f"| {name}{mark} | {_pct(row['erm'])} | " + " | ".join(cells) + f" | {_pct(row['ceiling'])} |")
    lines += ["", "| variant | slices ERM fails | gap closed, mean | gap closed, min | control worst-group vs ERM | "
              "found in top-k (ERM < 90%) | caption hit (ERM < 90%) |", "|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        deltas = ", ".join(f"{d * 100:+.0f} pts" for d in s["control_delta"]) or "–"
        found, hit = (f"{sum(s[k])} / {len(s[k])}" for k in ("found", "caption_hit"))
        lines.append(f"| {label} | {s['slices']} | {_pct(s['mean'])} | {_pct(s['min'])} | {deltas} | {found} | {hit} |")
    lines += ["", "Cells: test accuracy of the slice (share of the ERM → ceiling gap closed)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Read the labelled suite results and write the side-by-side table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help="label=path of a benchmarks.suite results JSON")
    p.add_argument("--method", default="failure_diffusion", help="the method whose settings differ")
    p.add_argument("--fails-below", type=float, default=0.7, help="ERM slice accuracy below this: a failed slice")
    p.add_argument("--out", default=str(RESULTS / "suite_variants"), help="output stem (.json and .md)")
    args = p.parse_args(argv)
    results = {}
    for item in args.variants:
        label, sep, path = item.partition("=")
        if not sep:
            p.error(f"{item!r}: expected label=path")
        results[label] = json.loads(Path(path).read_text())
    rows, summary = variant_rows(results, args.method, args.fails_below)
    text = markdown(rows, summary, args.method)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"method": args.method, "sources": dict(
        item.partition("=")[::2] for item in args.variants), "rows": rows, "summary": summary}, indent=2) + "\n")
    out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
