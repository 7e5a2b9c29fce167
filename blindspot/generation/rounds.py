"""One generation round: plan (modes -> prompts + seeds), shard across ranks, generate, filter, record.

The plan is written to disk before any image is made, and every image is a pure function of its
(prompt, seed): a round killed half-way resumes from the same plan, skips what the manifest already
holds, reuses images written but not yet recorded, and ends with exactly the pool an uninterrupted
run makes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm import tqdm

from ..filters import Candidates, apply_filters
from ..images import UnreadableImageError, load_image, save_png, to_uint8
from ..modes import FailureMode
from .backends import Text2ImageBackend
from .contrast import contrast_modes
from .manifest import append_records, read_manifest

log = logging.getLogger(__name__)


class GenerationFailedError(RuntimeError):
    """Too many prompts failed to generate in a round."""


@dataclass
class PlanItem:
    """One image to make: which mode it serves, its prompt and seed, where it goes."""

    id: str
    mode_id: str
    label: int
    class_name: str
    prompt: str
    seed: int
    path: str
    wave: int = 0  # generation wave within the round (remedy.target_kept adds waves)
    role: str = "target"  # target: the mode's class | contrast: the class its errors are mistaken for, same context


def split_budget(scores: Sequence[float], budget: int, min_per_mode: int = 1) -> list[int]:
    """Split an image budget over modes in proportion to their (positive) scores, largest remainders first."""
    if budget < 1:
        raise ValueError(f"generation budget is {budget}: set augment.generation.images_per_round >= 1")
    n = len(scores)
    if n == 0:
        return []
    base = min(min_per_mode, budget // n)
    weights = torch.tensor([max(float(s), 1e-6) for s in scores])
    share = weights / weights.sum() * (budget - base * n)
    counts = [base + int(math.floor(s)) for s in share.tolist()]
    for i in torch.argsort(share - share.floor(), descending=True).tolist()[: budget - sum(counts)]:
        counts[i] += 1
    return counts


def plan_round(modes: Sequence[FailureMode], budget: int, round_index: int, seed: int, image_dir: str,
               prompts_per_mode: int = 2, prompt_template: str = "{caption}", untargeted: bool = False,
               untargeted_template: str = "a photo of a {cls}", caption_weighting: str = "score",
               prompt_fn: Callable[[FailureMode, int], list[str]] | None = None,
               contrast: float | Mapping[str, float] = 0.0) -> list[PlanItem]:
    """Prompts and seeds for one round (untargeted: class-name prompts with the same per-mode budget).

    A mode's images go to its top `prompts_per_mode` captions in proportion to their scores
    (`caption_weighting="score"`) or in turn (`"uniform"`); `prompt_fn(mode, count)`, when given, composes
    them instead (e.g. blindspot.generation.prompts.PromptComposer: diverse contexts). A `contrast` share of
    each mode's images shows the classes its errors are mistaken for in the same contexts (`contrast.contrast_modes`);
    a mapping gives each mode id its own share (a later wave: `waves.plan_next_wave`).
    """
    if caption_weighting not in ("score", "uniform"):
        raise ValueError(f"caption_weighting={caption_weighting!r}: use 'score' or 'uniform'")
    if isinstance(contrast, Mapping):
        if not all(0.0 <= v <= 1.0 for v in contrast.values()):
            raise ValueError(f"per-mode contrast shares must be in [0, 1]: {dict(contrast)}")
    elif not 0.0 <= contrast < 1.0:
        raise ValueError(f"remedy.contrast={contrast}: must be in [0, 1)")
    counts = split_budget([m.score for m in modes], budget)
    items = []

    def add(mode: FailureMode, count: int, role: str, tag: str) -> None:
        prompts = (prompt_fn(mode, count) if prompt_fn is not None and not untargeted and count else
                   mode_prompts(mode, count, prompts_per_mode, prompt_template, untargeted, untargeted_template,
                                caption_weighting))
        for k, prompt in enumerate(prompts):
            item_seed = (seed * 1_000_003 + round_index * 10_007 + len(items)) % (2**31 - 1)
            item_id = f"r{round_index}-{mode.mode_id}-{tag}{k:04d}"
            items.append(PlanItem(item_id, mode.mode_id, mode.class_index, mode.class_name, prompt, item_seed,
                                  str(Path(image_dir) / f"{item_id}.png"), role=role))

    for mode, count in zip(modes, counts):
        share = contrast.get(mode.mode_id, 0.0) if isinstance(contrast, Mapping) else contrast
        shadows = [] if untargeted or not count else contrast_modes(mode, round(share * count))
        add(mode, count - sum(n for _, n in shadows), "target", "")
        for j, (shadow, n) in enumerate(shadows):
            add(shadow, n, "contrast", f"c{j}-")
    return items


def mode_prompts(mode: FailureMode, count: int, prompts_per_mode: int, prompt_template: str, untargeted: bool,
                 untargeted_template: str, caption_weighting: str) -> list[str]:
    """The `count` prompts of one mode, in plan order."""
    if untargeted:
        return [untargeted_template.format(cls=mode.class_name)] * count
    captions = mode.captions[:prompts_per_mode] or [(mode.class_name, 1.0)]
    prompts = [prompt_template.format(caption=c, cls=mode.class_name) for c, _ in captions]
    if caption_weighting == "uniform" or len(prompts) == 1:
        return [prompts[k % len(prompts)] for k in range(count)]
    per_caption = split_budget([score for _, score in captions], count, min_per_mode=0) if count else []
    return [p for p, n in zip(prompts, per_caption) for _ in range(n)]


def save_plan(path: str | os.PathLike, items: Sequence[PlanItem], modes: Sequence[FailureMode]) -> None:
    """Write the round's modes and plan atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"modes": [m.to_dict() for m in modes], "items": [asdict(i) for i in items]}))
    os.replace(tmp, path)


def load_plan(path: str | os.PathLike) -> tuple[list[PlanItem], list[FailureMode]] | None:
    """A saved plan (items, modes), or None."""
    path = Path(path)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return [PlanItem(**i) for i in data["items"]], [FailureMode.from_dict(m) for m in data["modes"]]


def remove_strays(image_dir: str | os.PathLike, planned: set[str]) -> int:
    """Delete temporary files and images that no plan item names (left by a kill); returns how many."""
    removed = 0
    for p in Path(image_dir).glob("*"):
        if p.is_file() and (p.name.startswith(".") or str(p) not in planned):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


Judge = Callable[[torch.Tensor, list[str], torch.Tensor], Candidates]


@dataclass
class RoundStats:
    """What one rank did in a round (summed over ranks by the caller)."""

    generated: int = 0
    reused: int = 0
    skipped_done: int = 0
    kept: int = 0
    rejected_by: dict[str, int] = field(default_factory=dict)
    failed_prompts: list[str] = field(default_factory=list)
    first_error: str = ""          # the first generation error, for the message that stops the run
    seconds_generate: float = 0.0
    seconds_filter: float = 0.0


class RoundRunner:
    """Generates, filters and records one rank's share of a round plan."""

    def __init__(self, backend: Text2ImageBackend, filters: list, judge: Judge, batch_size: int = 64,
                 max_failure_fraction: float = 0.1, progress: bool = True):
        self.backend, self.filters, self.judge = backend, filters, judge
        self.batch_size, self.max_failure_fraction, self.progress = batch_size, max_failure_fraction, progress

    def _make(self, items: list[PlanItem], stats: RoundStats) -> tuple[list[PlanItem], torch.Tensor]:
        """Images for items, in plan order: reuse files already written (orphans), generate the rest."""
        made: dict[str, torch.Tensor] = {}
        todo = []
        for it in items:
            if Path(it.path).is_file():
                try:
                    made[it.id] = load_image(it.path).float() / 255.0
                    stats.reused += 1
                    continue
                except UnreadableImageError:
                    Path(it.path).unlink(missing_ok=True)
            todo.append(it)
        if todo:
            t0 = time.perf_counter()
            images, ok_items = self._generate(todo, stats)
            stats.seconds_generate += time.perf_counter() - t0
            for it, img in zip(ok_items, images):
                pixels = to_uint8(img)
                save_png(pixels, it.path)  # written before the manifest line: a kill leaves an orphan
                # judge exactly what was saved (a resumed run re-reads it): quantised, NaN kept visible
                made[it.id] = pixels.float() / 255.0 if torch.isfinite(img).all() else torch.full_like(img, float("nan"))
            stats.generated += len(ok_items)
        ready = [it for it in items if it.id in made]
        return ready, torch.stack([made[it.id] for it in ready]) if ready else torch.zeros(0)

    def _generate(self, items: list[PlanItem], stats: RoundStats) -> tuple[torch.Tensor, list[PlanItem]]:
        try:
            out = self.backend.generate([i.prompt for i in items], [i.seed for i in items])
            return out.images, items
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as err:  # one bad prompt must not cost the round: retry one by one
            if len(items) == 1:
                log.warning("generation failed for %s (%r): %s", items[0].id, items[0].prompt, err)
                stats.failed_prompts.append(items[0].prompt)
                stats.first_error = stats.first_error or f"{type(err).__name__}: {err}"
                return torch.zeros(0), []
            good_images, good_items = [], []
            for it in items:
                imgs, ok = self._generate([it], stats)
                if ok:
                    good_images.append(imgs[0])
                    good_items += ok
            return (torch.stack(good_images) if good_images else torch.zeros(0)), good_items

    def run(self, items: list[PlanItem], round_index: int, manifest_file: str | os.PathLike,
            manifest_dir: str | os.PathLike, pool_emb: torch.Tensor | None = None, rank: int = 0,
            should_stop: Callable[[], bool] = lambda: False) -> RoundStats:
        """Process this rank's items in plan order; skip those already recorded; append a record per image.

        `pool_emb`: CLIP embeddings of the images kept before this point (earlier rounds, and this rank's
        earlier items of this round) for the near-duplicate filter. `should_stop` is polled between batches
        (e.g. SIGTERM): the manifest stays consistent and a resumed run carries on from there.
        """
        stats = RoundStats()
        done = {r["id"] for r in read_manifest(manifest_dir)}
        todo = [i for i in items if i.id not in done]
        stats.skipped_done = len(items) - len(todo)
        bar = tqdm(total=len(items), initial=stats.skipped_done, desc=f"round {round_index} generate+filter",
                   disable=not self.progress, leave=False)
        for start in range(0, len(todo), self.batch_size):
            if should_stop():
                raise InterruptedError(f"round {round_index} stopped on request after {start} of {len(todo)} images")
            batch = todo[start : start + self.batch_size]
            ready, images = self._make(batch, stats)
            if ready:
                t0 = time.perf_counter()
                cands = self.judge(images, [i.prompt for i in ready], torch.tensor([i.label for i in ready]))
                cands.contrast = torch.tensor([i.role == "contrast" for i in ready])
                keep, rejected_by, scores = apply_filters(self.filters, cands, pool_emb)
                stats.seconds_filter += time.perf_counter() - t0
                if cands.image_emb is not None:
                    kept_emb = cands.image_emb[keep]
                    pool_emb = kept_emb if pool_emb is None else torch.cat([pool_emb, kept_emb])
                records = []
                for j, it in enumerate(ready):
                    records.append({**asdict(it), "round": round_index, "rank": rank, "kept": bool(keep[j]),
                                    "rejected_by": rejected_by[j],
                                    "scores": {k: v[j] for k, v in scores.items() if v[j] is not None}})
                    if keep[j]:
                        stats.kept += 1
                    else:
                        stats.rejected_by[rejected_by[j]] = stats.rejected_by.get(rejected_by[j], 0) + 1
                append_records(manifest_file, records)
            bar.update(len(batch))
            failed = len(stats.failed_prompts)
            if failed and failed > self.max_failure_fraction * len(items):
                raise GenerationFailedError(
                    f"{failed} of {len(items)} images failed to generate in round {round_index} (more than "
                    f"augment.generation.max_failure_fraction={self.max_failure_fraction}); first failing prompt: "
                    f"{stats.failed_prompts[0]!r} ({stats.first_error}). Check the generator config and the log above.")
        bar.close()
        return stats
