"""Is the planted blind spot still named when the world's words hide among the 500+ general phrases?

    python -m benchmarks.vocabulary                 # seeds 0, 1, 2 -> results/vocabulary.{json,md} (~5 min a seed)
    python -m benchmarks.vocabulary --quick         # smoke run, no training (< 1 min) -> results/vocabulary_quick.*

For each seed: train ERM with the unchanged command `python train.py seed=S trainer.max_epochs=5 logger=csv
hydra.run.dir=<scratch>` (5 epochs: where the headline's first discovery round runs; skipped when the scratch
run already has its last checkpoint), predict the validation set with its last checkpoint, embed the validation
set with the world CLIP, find failure directions with the settings `+augment=failure_diffusion` composes (its
discovery config; the top `max_modes` modes, as the loop hands them on), and caption the same modes with `vocabulary=world` and with `vocabulary=general_world`. Recorded per vocabulary: the
rank of the star mode (the mode mostly made of star|grass samples), its top-3 captions, whether its top caption
names grass (`blindspot.groundtruth.score_discovery`'s caption hit: the value 'grass' appears in the caption) and
whether it is exactly the world's phrase 'a photo of a star on grass', and where that phrase ranks among all
candidates. --quick skips training: predictions are the labels, wrong on most star|grass samples and on 3% of the
rest (a stand-in classifier with the planted blind spot), seed 0 only.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf, open_dict

from blindspot.runtime import last_checkpoint

from .common import RESULTS, checkpoint_predictions

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / "outputs" / "benchmarks" / "vocabulary"
VOCABULARIES = ("world", "general_world")
WORLD_PHRASE = "a photo of a star on grass"

log = logging.getLogger("benchmarks.vocabulary")


def compose(overrides: list[str], output_dir: Path):
    """The train config for these overrides, resolved outside a Hydra run (output folder set by hand)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from blindspot.runtime import register_resolvers

    register_resolvers()
    os.environ.setdefault("BLINDSPOT_ROOT", str(ROOT))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.root_dir = str(ROOT)
    GlobalHydra.instance().clear()
    return cfg


def headline_setting(cfg, *keys: str):
    """The first of these config keys that exists (the headline's layout moved: conf/loop + conf/discovery)."""
    for key in keys:
        value = OmegaConf.select(cfg, key)
        if value is not None:
            return value
    raise KeyError(f"none of {keys} in the +augment=failure_diffusion config")


def train_erm(seed: int, run_dir: Path, epochs: int = 5) -> Path:
    """Train ERM with the unchanged command (niced), unless run_dir already holds its last checkpoint."""
    ckpt = last_checkpoint(run_dir)
    if ckpt.exists():
        done = torch.load(ckpt, map_location="cpu", weights_only=False).get("epoch", -1) + 1
        if done >= epochs:
            log.info("seed %d: reusing %s (%d epochs)", seed, ckpt, done)
            return ckpt
        aside = run_dir.with_name(f"{run_dir.name}.partial-{int(time.time())}")  # kept, not overwritten
        log.info("seed %d: %s has %d of %d epochs; moved to %s, training again", seed, ckpt, done, epochs, aside)
        run_dir.rename(aside)
    run_dir.mkdir(parents=True, exist_ok=True)
    nice = str(max(0, 10 - os.nice(0)))  # the training runs at niceness 10, however this script was started
    cmd = ["nice", "-n", nice, sys.executable, "train.py", f"seed={seed}", f"trainer.max_epochs={epochs}",
           "logger=csv", f"hydra.run.dir={run_dir}"]
    log.info("seed %d: %s", seed, " ".join(cmd))
    with open(run_dir.parent / f"train_seed{seed}.log", "w") as out:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=out, stderr=subprocess.STDOUT)
    if not ckpt.exists():
        raise RuntimeError(f"training seed {seed} ended without {ckpt}")
    return ckpt


def stand_in_predictions(labels: torch.Tensor, groups: torch.Tensor, group_names: list[str], class_names: list[str],
                         blind: str = "star", value: str = "grass", seed: int = 0) -> torch.Tensor:
    """--quick: the labels, wrong on 80% of the planted group (blind|value...) and on 3% of the rest."""
    g = torch.Generator().manual_seed(seed)
    planted = torch.tensor([n.split("|")[0] == blind and value in n.split("|")[1:] for n in group_names])
    in_spot = planted[groups.clamp(min=0)] & (groups >= 0)
    wrong = torch.where(in_spot, torch.rand(len(labels), generator=g) < 0.8,
                        torch.rand(len(labels), generator=g) < 0.03)
    other = (labels + torch.randint(1, len(class_names), (len(labels),), generator=g)) % len(class_names)
    return torch.where(wrong, other, labels)


def planted_mode(modes, planted: dict, val_groups: torch.Tensor, group_names: list[str], min_share: float = 0.5):
    """(rank from 1, mode) of the first mode mostly made of the planted slice's samples, or (None, None)."""
    inside = {group_names.index(n) for n in planted["groups"]}
    for rank, m in enumerate(modes, 1):
        share = sum(int(g) in inside for g in val_groups[m.members].tolist()) / max(1, m.support)
        if m.class_name == planted["class"] and share >= min_share:
            return rank, m
    return None, None


def caption_with(vocabulary, modes, clip, emb, labels, preds, planted, val_groups, group_names, settings: dict) -> dict:
    """Caption copies of the modes with one vocabulary (the headline's captioner `settings`); what happened to the
    planted slice's mode."""
    from blindspot.captioning import Captioner
    from blindspot.groundtruth import score_discovery

    modes = copy.deepcopy(modes)
    captioner = Captioner(vocabulary, **settings)
    start = time.perf_counter()
    captioner(modes, clip.encode_texts, emb, labels, preds)
    seconds = time.perf_counter() - start
    rank, mode = planted_mode(modes, planted, val_groups, group_names)
    row = {"phrases": len(vocabulary), "duplicates_dropped": vocabulary.duplicates_dropped,
           "candidates_per_class": len(vocabulary.candidates(planted["class"])), "caption_seconds": round(seconds, 2),
           "star_mode_rank": rank, "top3": None, "top_names_value": False, "top_is_world_phrase": False,
           "world_phrase_rank": None, "score_discovery": score_discovery(modes, [planted], val_groups, group_names)}
    if mode is not None:
        ranking = captioner.rank(mode, clip.encode_texts, emb, labels, preds)
        row["top3"] = [[c, round(s, 4)] for c, s in mode.captions[:3]]
        row["top_names_value"] = planted["value"].lower() in mode.caption.lower()  # groundtruth's caption hit
        row["top_is_world_phrase"] = mode.caption == WORLD_PHRASE
        row["world_phrase_rank"] = next((i for i, (c, _) in enumerate(ranking, 1) if c == WORLD_PHRASE), None)
    return row


def run_seed(seed: int, quick: bool, scratch: Path, epochs: int) -> dict:
    """Train (or stand in), discover, caption with both vocabularies."""
    from hydra.utils import instantiate

    from blindspot.clip import load_clip
    from blindspot.embedding import embed_dataset

    run_dir = scratch / f"seed{seed}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    cfg = compose([f"seed={seed}", "+augment=failure_diffusion"], run_dir)
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    labels, groups = dm.val_set.labels.clone(), dm.val_set.groups.clone()
    images = dm.val_images()
    t0 = time.perf_counter()
    if quick:
        preds = stand_in_predictions(labels, groups, dm.group_names, dm.class_names, seed=seed)
        ckpt = None
    else:
        ckpt = train_erm(seed, run_dir, epochs)
        preds = checkpoint_predictions(ckpt, images)
    train_seconds = time.perf_counter() - t0
    clip_cfg = OmegaConf.to_container(cfg.clip, resolve=True)
    clip = instantiate(clip_cfg) if "_target_" in clip_cfg else load_clip(**clip_cfg)
    emb = embed_dataset(clip, len(labels), dm.val_images, dm.val_fingerprint(), cfg.paths.cache_dir + "/embeddings",
                        progress=False)
    settings = headline_setting(cfg, "discovery", "augment.methods.directions")  # the headline's discovery
    discovery = instantiate(OmegaConf.to_container(settings, resolve=True))
    max_modes = int(headline_setting(cfg, "loop.max_modes", "callbacks.failure_discovery.max_modes"))
    all_modes = discovery(emb, labels, preds, dm.class_names)
    planted = next(p for p in dm.planted_slices() if p["class"] == "star" and p["value"] == "grass")
    rank_all, _ = planted_mode(all_modes, planted, groups, dm.group_names)
    modes = all_modes[:max_modes]  # what the callback hands to captioning
    out = {"seed": seed, "checkpoint": str(ckpt) if ckpt else None, "train_seconds": round(train_seconds, 1),
           "val_accuracy": float((preds == labels).float().mean()),
           "star_grass_val_accuracy": float((preds == labels)[torch.isin(groups, torch.tensor(
               [dm.group_names.index(n) for n in planted["groups"]]))].float().mean()),
           "modes_found": len(all_modes), "star_mode_rank_among_all": rank_all, "max_modes": max_modes,
           "mode_classes": [m.class_name for m in modes], "vocabularies": {}}
    settings = {"top_k": int(headline_setting(cfg, "loop.captioner.top_k", "augment.captioner.top_k")),
                "target": cfg.loop.captioner.target, "shared_errors": cfg.loop.captioner.shared_errors}
    for name in VOCABULARIES:
        vocab = instantiate(compose([f"seed={seed}", f"vocabulary={name}"], run_dir).vocabulary)
        out["vocabularies"][name] = caption_with(vocab, modes, clip, emb, labels, preds, planted, groups,
                                                 dm.group_names, settings)
    return out


def atomic_write(path: Path, text: str) -> None:
    """Write a file through a temporary one and a rename (a reader never sees half of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(result: dict) -> str:
    """The results table."""
    lines = ["| seed | vocabulary | phrases | star mode rank | top caption names grass | top is the world phrase | "
             "rank of 'a photo of a star on grass' | top-3 captions (score) |", "|" + "---|" * 8]
    for r in result["seeds"]:
        for name, v in r["vocabularies"].items():
            top3 = "; ".join(f"{c} ({s:.3f})" for c, s in v["top3"] or []) or "no star mode"
            lines.append(f"| {r['seed']} | {name} | {v['phrases']} | {v['star_mode_rank']} | "
                         f"{'yes' if v['top_names_value'] else 'no'} | {'yes' if v['top_is_world_phrase'] else 'no'} | "
                         f"{v['world_phrase_rank']} of {v['candidates_per_class']} | {top3} |")
    s = result["summary"]
    lines += ["", f"Caption hit (top caption names grass) with general_world: {s['general_world_hits']} of "
              f"{s['seeds']} seeds; with world: {s['world_hits']} of {s['seeds']}.",
              "", result["protocol"]]
    m = result["machine"]
    lines.append(f"\nMachine: {m.get('processor')}, {m.get('cpu_count')} cores, {m.get('torch_threads')} torch "
                 f"threads, load at start {m.get('load_average_at_start')}; torch {m.get('torch')}.")
    return "\n".join(lines) + "\n"


def run(seeds: list[int], quick: bool, scratch: Path = SCRATCH, epochs: int = 5, results: Path = RESULTS) -> dict:
    """Every seed, then JSON + markdown under `results` (vocabulary[_quick].{json,md}), rewritten after each seed
    (`complete` says whether all seeds are in); returns the result."""
    from .common import machine

    start = time.perf_counter()
    info = machine()
    rows: list[dict] = []
    stem = "vocabulary_quick" if quick else "vocabulary"
    for seed in seeds:
        rows.append(run_seed(seed, quick, scratch, epochs))
        result = {
            "benchmark": "caption of the planted blind spot: world vocabulary vs general + world (500+ distractors)",
            "quick": quick,
            "complete": len(rows) == len(seeds),
            "protocol": ("stand-in predictions (labels, wrong on 80% of star|grass and 3% elsewhere), no training"
                         if quick else f"ERM: python train.py seed=S trainer.max_epochs={epochs} logger=csv "
                                       "hydra.run.dir=<scratch>, last checkpoint; FailureDirections as "
                                       "+augment=failure_diffusion composes it (top max_modes modes); world CLIP"),
            "seeds": rows,
            "summary": {"seeds": len(rows),
                        **{f"{name}_hits": sum(bool(r["vocabularies"][name]["top_names_value"]) for r in rows)
                           for name in VOCABULARIES},
                        **{f"{name}_world_phrase_top": sum(bool(r["vocabularies"][name]["top_is_world_phrase"])
                                                           for r in rows) for name in VOCABULARIES}},
            "seconds": round(time.perf_counter() - start, 1),
            "machine": info,
        }
        atomic_write(results / f"{stem}.json", json.dumps(result, indent=2, default=str) + "\n")
        atomic_write(results / f"{stem}.md", markdown(result))
    return result


def main() -> None:
    """Command line: run the seeds and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="no training (stand-in predictions), seed 0 only")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--epochs", type=int, default=5, help="ERM epochs (5: the headline's first round)")
    ap.add_argument("--scratch", type=Path, default=SCRATCH, help="where the ERM runs go (kept: re-runs reuse them)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    result = run(seeds, args.quick, args.scratch, args.epochs)
    print(markdown(result))


if __name__ == "__main__":
    main()
