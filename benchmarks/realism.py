"""Do generated images of a blind spot look real to a classifier that learned the real ones? By guidance scale.

For every planted slice of a finished suite run, the world's ceiling classifier (ERM trained with the slice's real
renders at their natural rate) reads generated images of the slice (its class and attribute value, the other
attributes drawn at random) and real renders of the same attribute draws. Its accuracy on the generated images,
beside its accuracy on the real ones, says how far the generator's rendering of the slice is from the real one;
the world oracle's class + attribute reading says whether the image shows what the prompt asked for.

    python -m benchmarks.realism --runs <suite --out folder> --guidance 2,2.5,3,4 [--n 96] [--seed 5000]
    python -m benchmarks.realism --runs <folder> --world default --groups 'cross|brick,star|grass' --stem realism_groups

Writes benchmarks/results/realism.{json,md} (or <--stem>.*). `--groups` reads any groups of one world (hard groups
as well as planted slices) instead of the suite's planted slices.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from blindspot.generation.backends import DiffusersText2Image
from blindspot.world.oracle import load_oracle
from blindspot.world.spec import BACKGROUNDS, CLASSES, COLORS, SIZES, WorldSpec, caption

from .common import RESULTS, ROOT, checkpoint_classifier, machine, table_cell, world_generator_settings, write
from .targeting import slice_draws, slice_renders


def ceiling_checkpoint(runs: Path, world: str, seed: int) -> Path:
    """The best checkpoint of a world's finished ceiling run (not a retired `.stale-` folder)."""
    found = sorted(p for p in (runs / world / "ceiling").glob(f"seed{seed}-*/checkpoints/best_*.ckpt")
                   if ".stale-" not in str(p))
    if not found:
        raise FileNotFoundError(f"no finished ceiling run of {world} (seed {seed}) under {runs}: run "
                                f"`python -m benchmarks.suite --config core --out {runs}` first")
    return found[-1]


def group_slice(group: str) -> dict:
    """A 'class|value' group as a slice: its class, the attribute kind the value belongs to, and the value."""
    cls, _, value = group.partition("|")
    kinds = {"background": BACKGROUNDS, "color": COLORS, "size": SIZES}
    kind = next((k for k, values in kinds.items() if value in values), None)
    if cls not in CLASSES or kind is None:
        raise SystemExit(f"--groups {group!r}: use 'class|value' with a class of {list(CLASSES)} and a background, "
                         "colour or size")
    return {"group": group, "class": cls, "attribute": kind, "value": value}


def readings(images: torch.Tensor, predict, oracle, codes: dict, head: str) -> dict[str, float]:
    """Ceiling classifier (`predict`: uint8 images -> classes) accuracy and oracle class + attribute agreement."""
    seen = oracle.predict(images)
    return {"ceiling_acc": float((predict(images) == codes["class"]).float().mean()),
            "oracle_fidelity": float(((seen["class"] == codes["class"]) & (seen[head] == codes[head])).float().mean())}


def measure_slice(backends: dict[float, DiffusersText2Image], predict, oracle, s: dict, n: int, seed: int) -> dict:
    """Real renders and each guidance's generated images of one slice, read by its ceiling classifier."""
    spec = WorldSpec()
    codes = slice_draws(spec, s["class"], s["attribute"], s["value"], n, seed)
    prompts = [caption(CLASSES[k], BACKGROUNDS[b], COLORS[c], SIZES[z]) for k, b, c, z in
               zip(*(codes[h].tolist() for h in ("class", "background", "color", "size")))]
    row = {"real": readings(slice_renders(spec, s["class"], s["attribute"], s["value"], n, seed), predict, oracle,
                            codes, s["attribute"])}
    for g, backend in backends.items():
        images = backend.generate(prompts, list(range(seed, seed + n))).images
        row[str(g)] = readings((images.clamp(0, 1) * 255).round().to(torch.uint8), predict, oracle, codes,
                               s["attribute"])
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="a suite --out folder with finished ceiling runs")
    p.add_argument("--suite", type=Path, default=RESULTS / "suite.json", help="the suite results naming the slices")
    p.add_argument("--guidance", default="2,2.5,3,4", help="guidance scales to compare, comma-separated")
    p.add_argument("--n", type=int, default=96, help="images per slice and setting")
    p.add_argument("--seed", type=int, default=5000, help="first image seed (and the attribute draws')")
    p.add_argument("--run-seed", type=int, default=0, help="the training seed of the ceiling runs")
    p.add_argument("--world", default="default", help="with --groups: the world whose ceiling run reads them")
    p.add_argument("--groups", default=None, help="'class|value' groups to read instead of the planted slices")
    p.add_argument("--stem", default="realism", help="results file name")
    args = p.parse_args()
    settings = world_generator_settings()
    guidance = [float(g) for g in args.guidance.split(",")]
    backends = {g: DiffusersText2Image(str(ROOT / "weights" / "world_diffusion"), device="cpu", dtype=settings.dtype,
                                       num_inference_steps=settings.num_inference_steps, guidance_scale=g,
                                       height=settings.height, width=settings.width, scheduler=settings.scheduler,
                                       progress=False) for g in guidance}
    oracle = load_oracle()
    rows = []
    worlds = ([{"name": args.world, "slices": [group_slice(g) for g in args.groups.split(",")]}] if args.groups
              else json.loads(args.suite.read_text())["worlds"])
    for world in worlds:
        if not world["slices"]:
            continue  # a control world: no planted slice, no ceiling run
        predict = checkpoint_classifier(ceiling_checkpoint(args.runs, world["name"], args.run_seed))
        for s in world["slices"]:
            row = {"world": world["name"], "slice": s["group"], **measure_slice(backends, predict, oracle, s, args.n,
                                                                                args.seed)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    keys = ["real"] + [str(g) for g in guidance]
    mean = {k: {m: sum(r[k][m] for r in rows) / len(rows) for m in ("ceiling_acc", "oracle_fidelity")} for k in keys}
    result = {"slices": rows, "mean": mean, "n_per_slice": args.n, "seed": args.seed, "runs": str(args.runs),
              "sampler": {"dtype": str(backends[guidance[0]].dtype), "steps": settings.num_inference_steps,
                          "scheduler": settings.scheduler}, "machine": machine()}
    table = [["world", "slice"] + [f"{k}: ceiling acc / oracle" for k in keys]]
    table += [[r["world"], table_cell(r["slice"])] + [f"{r[k]['ceiling_acc']:.0%} / {r[k]['oracle_fidelity']:.0%}"
                                                      for k in keys] for r in rows]
    table += [["mean", f"{len(rows)} slices"] + [f"{mean[k]['ceiling_acc']:.1%} / {mean[k]['oracle_fidelity']:.1%}"
                                                 for k in keys]]
    print(f"wrote {write(args.stem, result, table, quick=False)}")


if __name__ == "__main__":
    main()
