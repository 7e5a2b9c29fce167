"""Benchmark failure discovery on synthetic CLIP-like embeddings with planted failure directions.

    python -m benchmarks.discovery            # 1,000,000 x 512 over 1,000 classes -> results/perf_discovery.{json,md}
    python -m benchmarks.discovery --quick    # small smoke run (seconds)  -> results/perf_discovery_quick.{json,md}

Measures: wall time of `FailureDirections` on the whole problem, agreement of the batched SVM with scikit-learn's
LinearSVC (same C, class_weight="balanced", squared hinge) on a subsample of classes, and recovery of the planted
directions and slices.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass

import torch

from .common import RESULTS


@dataclass
class PlantedProblem:
    """Synthetic validation set: embeddings, labels, predictions and the planted truth."""

    embeddings: torch.Tensor  # [N, d] unit rows
    labels: torch.Tensor  # [N]
    preds: torch.Tensor  # [N]
    class_names: list[str]
    directions: torch.Tensor  # [C, d] planted unit failure directions
    planted: torch.Tensor  # [C] bool, class has a planted blind spot
    in_slice: torch.Tensor  # [N] bool, sample lies in its class's planted slice


def planted_problem(
    n_classes: int = 10,
    per_class: int = 200,
    dim: int = 64,
    slice_fraction: float = 0.12,
    slice_error: float = 0.85,
    base_error: float = 0.04,
    strength: float = 0.12,
    control_fraction: float = 0.1,
    cluster_shift: float = 0.0,
    seed: int = 0,
    device: str = "cpu",
) -> PlantedProblem:
    """CLIP-like unit embeddings (shared + class component + anisotropic noise); in each planted class, samples
    with a high latent along a random unit direction form the slice and are mispredicted with prob slice_error.
    With cluster_shift > 0 the slice is instead a random subset shifted by cluster_shift along that direction
    (a separate cluster)."""
    g = torch.Generator().manual_seed(seed)
    N = n_classes * per_class
    common = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=0)
    means = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    dirs = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    spectrum = torch.arange(1, dim + 1).float() ** -0.5
    spectrum *= 0.45 / spectrum.norm()  # E|noise|^2 = 0.45^2
    planted = torch.rand(n_classes, generator=g) >= control_fraction
    planted[0] = True
    cut = math.sqrt(2) * torch.erfinv(torch.tensor(1 - 2 * slice_fraction)).item()  # N(0,1) upper quantile
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = torch.empty(N, dim)
    in_slice = torch.zeros(N, dtype=torch.bool)
    step = max(1, 2**22 // (per_class * dim))  # classes per generation chunk (~16 MB of noise)
    for c0 in range(0, n_classes, step):
        c1 = min(n_classes, c0 + step)
        rows = slice(c0 * per_class, c1 * per_class)
        lab = labels[rows]
        t = torch.randn(len(lab), generator=g)
        noise = torch.randn(len(lab), dim, generator=g) * spectrum
        if cluster_shift > 0:
            sl = (torch.rand(len(lab), generator=g) < slice_fraction) & planted[lab]
            t = t + sl.float() * cluster_shift / strength
        else:
            sl = (t > cut) & planted[lab]
        x[rows] = 0.5 * common + 0.6 * means[lab] + noise + strength * t.unsqueeze(1) * dirs[lab]
        in_slice[rows] = sl
    x = torch.nn.functional.normalize(x, dim=1)
    p_err = torch.where(in_slice, torch.tensor(slice_error), torch.tensor(base_error))
    wrong = torch.rand(N, generator=g) < p_err
    other = (labels + torch.randint(1, max(n_classes, 2), (N,), generator=g)) % n_classes
    preds = torch.where(wrong, other, labels)
    names = [f"class{c:04d}" for c in range(n_classes)]
    return PlantedProblem(x.to(device), labels.to(device), preds.to(device), names, dirs.to(device),
                          planted.to(device), in_slice.to(device))


def sklearn_agreement(problem: PlantedProblem, fd, classes: list[int], extra_C: float = 1.0) -> dict:
    """Cosine between our SVM normals and LinearSVC's (same C, balanced, squared hinge) on the given classes."""
    from sklearn.svm import LinearSVC

    from blindspot.discovery import linear_svm

    x, labels = problem.embeddings.cpu(), problem.labels.cpu()
    wrong = (problem.labels != problem.preds).cpu()
    cos_chosen, cos_fixed = [], []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        X, y = x[idx], wrong[idx]
        cd = fd.directions_[c]
        for C, store in ((cd.C, cos_chosen), (extra_C, cos_fixed)):
            sk = LinearSVC(C=C, class_weight="balanced", loss="squared_hinge", tol=1e-4, max_iter=20_000)
            ref = torch.tensor(sk.fit(X.numpy(), y.numpy()).coef_[0]).float()
            ours = cd.direction if store is cos_chosen else linear_svm(X, y, C, tol=fd.tol).coef[0, 0]
            store.append(float(torch.nn.functional.cosine_similarity(ref, ours.cpu(), dim=0)))
    return {"classes": len(classes), "min_cosine_chosen_C": min(cos_chosen), f"min_cosine_C={extra_C}": min(cos_fixed),
            "median_cosine_chosen_C": sorted(cos_chosen)[len(cos_chosen) // 2]}


def planted_recovery(problem: PlantedProblem, fd, modes) -> dict:
    """How well the planted directions and slices were found."""
    planted = problem.planted.cpu()
    in_slice, labels = problem.in_slice.cpu(), problem.labels.cpu()
    dirs = problem.directions.cpu()
    cos = torch.tensor([float(fd.directions_[c].direction @ dirs[c]) for c in fd.directions_ if planted[c]])
    by_class = {m.class_index: m for m in modes}
    prec, rec = [], []
    for c, m in by_class.items():
        if planted[c]:
            hit = in_slice[torch.tensor(m.members)]
            prec.append(float(hit.float().mean()))
            rec.append(float(hit.sum()) / max(1, int((in_slice & (labels == c)).sum())))
    n_planted = int(planted.sum())
    top = [m.class_index for m in modes[:n_planted]]
    q = lambda t, p: float(torch.quantile(torch.tensor(t, dtype=torch.float32), p)) if len(t) else None  # noqa: E731
    return {
        "planted_classes": n_planted,
        "control_classes": int((~planted).sum()),
        "direction_cosine_median": q(cos.tolist(), 0.5),
        "direction_cosine_p10": q(cos.tolist(), 0.1),
        "direction_cosine_min": float(cos.min()) if len(cos) else None,
        "fraction_cosine_ge_0.9": float((cos >= 0.9).float().mean()) if len(cos) else None,
        "planted_classes_with_mode": sum(1 for c in by_class if planted[c]),
        "control_classes_with_mode": sum(1 for c in by_class if not planted[c]),
        "slice_precision_median": q(prec, 0.5),
        "slice_recall_median": q(rec, 0.5),
        "top_ranked_modes_that_are_planted": sum(1 for c in top if planted[c]) / max(1, len(top)),
    }


def main() -> None:
    """Run the benchmark and write JSON + markdown under benchmarks/results/."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small problem (CI smoke test); writes *_quick files")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--sklearn-classes", type=int, default=None, help="classes compared with LinearSVC")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available")
    from blindspot.discovery import FailureDirections

    load_start = os.getloadavg()
    sizes = dict(n_classes=20, per_class=200, dim=64) if args.quick else dict(n_classes=1000, per_class=1000, dim=512)
    gen_settings = dict(sizes, slice_fraction=0.12, slice_error=0.85, base_error=0.04, strength=0.12,
                        control_fraction=0.1, seed=0)
    t0 = time.perf_counter()
    problem = planted_problem(**gen_settings, device=args.device)
    t_gen = time.perf_counter() - t0
    fd = FailureDirections()
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    modes = fd(problem.embeddings, problem.labels, problem.preds, problem.class_names)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    load_after_fit = os.getloadavg()
    n_cmp = args.sklearn_classes or (5 if args.quick else 10)
    cmp_classes = sorted(fd.directions_)[:: max(1, len(fd.directions_) // n_cmp)][:n_cmp]
    agreement = sklearn_agreement(problem, fd, cmp_classes)
    recovery = planted_recovery(problem, fd, modes)
    Cs = [cd.C for cd in fd.directions_.values()]
    N = sizes["n_classes"] * sizes["per_class"]
    result = {
        "benchmark": "failure directions on synthetic CLIP-like embeddings with planted directions",
        "quick": args.quick,
        "seconds_1m_1000cls": None if args.quick else round(seconds, 2),
        "fit": {"seconds": round(seconds, 2), "n_samples": N, "dim": sizes["dim"], "n_classes": sizes["n_classes"],
                "device": args.device, "generate_seconds": round(t_gen, 2), "modes_found": len(modes),
                "chosen_C_histogram": {str(c): Cs.count(c) for c in sorted(set(Cs))}},
        "min_cosine_vs_sklearn": min(agreement["min_cosine_chosen_C"], agreement["min_cosine_C=1.0"]),
        "sklearn_agreement": agreement,
        "planted_recovery": recovery,
        "settings": {"FailureDirections": {k: v for k, v in vars(fd).items() if not k.endswith("_")},
                     "problem": gen_settings,
                     "sklearn": "LinearSVC(C=same, class_weight='balanced', loss='squared_hinge', tol=1e-4) on all "
                                "samples of evenly spaced classes; our side: the fitted direction at the class's "
                                "chosen C, and linear_svm at C=1.0"},
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch_version": torch.__version__, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                    "loadavg_start": [round(v, 2) for v in load_start],
                    "loadavg_after_fit": [round(v, 2) for v in load_after_fit],
                    "cuda_device": torch.cuda.get_device_name() if args.device == "cuda" else None},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "perf_discovery_quick" if args.quick else "perf_discovery"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(_markdown(result))
    print(_markdown(result))


def _markdown(r: dict) -> str:
    """A small table of the headline numbers."""
    f, a, p, m = r["fit"], r["sklearn_agreement"], r["planted_recovery"], r["machine"]
    fd = r["settings"]["FailureDirections"]
    rows = [
        ("problem", f"{f['n_samples']:,} x {f['dim']} over {f['n_classes']:,} classes ({f['device']})"),
        ("FailureDirections fit (s)", f"{f['seconds']:.2f}"),
        ("settings", f"Cs={fd['Cs']}, cv_folds={fd['cv_folds']}, tol={fd['tol']} (FailureDirections defaults)"),
        ("min cosine vs sklearn LinearSVC", f"{r['min_cosine_vs_sklearn']:.4f} ({a['classes']} classes)"),
        ("planted direction cosine (median / p10 / min)",
         f"{p['direction_cosine_median']:.3f} / {p['direction_cosine_p10']:.3f} / {p['direction_cosine_min']:.3f}"),
        ("planted classes with a mode", f"{p['planted_classes_with_mode']} / {p['planted_classes']}"),
        ("control classes with a mode", f"{p['control_classes_with_mode']} / {p['control_classes']}"),
        ("slice precision / recall (median)", f"{p['slice_precision_median']:.3f} / {p['slice_recall_median']:.3f}"),
        ("machine", f"{m['cpu_count']} CPUs, torch {m['torch_version']}, {m['torch_threads']} threads, "
                    f"load {m['loadavg_start'][0]:.2f} at start"),
    ]
    return "| metric | value |\n| --- | --- |\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


if __name__ == "__main__":
    main()
