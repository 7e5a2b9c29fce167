"""Text-to-image generation as a remedy: plan prompts + seeds for a round's modes, generate (sharded over ranks),
filter, record in the manifest, and inject what was kept (CLIP-aided description + diffusion generation of rare
contexts, Chegini & Feizi 2023; classifier-probability pruning of generated samples).

The round is generated in waves: the first has `images_per_round` images; with `target_kept` set, further waves
(blindspot.generation.waves: sized from each mode's keep rates so far, with only the contrast images its own kept
images can carry; at most `max_generated_per_kept` x `target_kept` images in all) run until the round keeps that
many, and exactly `target_kept` are injected, so methods are compared at equal injected images. Every wave's plan
is written before its first image, so a killed round resumes exactly (blindspot.generation.rounds).

With `real_neighbours` set, that many of the round's injected images are real training images nearest in CLIP space
to its modes' members (of each mode's class, none twice in a run) and generation makes the rest (or, with
`neighbours_in_budget` false, they come on top of the generated ones): generated images teach the slice as the generator draws
it, and these carry it over to real images of the slice (upsampling, as JTT does, but of the discovered slices).

With `covered_members="neighbours"`, the members loop.trim_covered cut from a mode (the hard-group part of its
errors: training images of it abound, so more generated ones are not what it lacks) get their share of the mode's
images as the real training images nearest to them; the rest of the round is generated for the mode's uncovered
members as before. With "generate", the cut members are a mode of their own for generation (id
`<mode>-covered`), captioned on their own by the loop (`extra["covered_captions"]`, e.g. 'a cross in the night sky')
and given the same share of the mode's images. "drop" (the default) gives the cut members nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..baselines.retrieval import select_for_modes
from ..filters import Candidates, seeded_subset
from ..generation.contrast import ContextCounts, confused_classes
from ..generation.manifest import manifest_path, read_manifest
from ..generation.rounds import (GenerationFailedError, PlanItem, RoundRunner, RoundStats, load_plan, plan_round,
                                 remove_strays, save_plan, split_budget)
from ..generation.waves import WavePlan, contrast_room, plan_next_wave
from ..images import load_image, save_png
from ..loop import Split
from ..modes import COVERED_SUFFIX, parent_mode_id
from .base import RemedyContext, RemedyResult, check_writable

log = logging.getLogger(__name__)

CAPTION_WEIGHTINGS = ("score", "uniform")
CONTEXT_SAMPLE = 4000  # real training images whose contexts remedy.contrast reads (a seeded sample)
COVERED_REMEDIES = ("drop", "neighbours", "generate")


@dataclass
class RoundBudget:
    """What one round may generate: its first wave, the images it injects (None: what is kept) and its cap."""

    first_wave: int
    target_kept: int | None
    max_generated: int


class Text2ImageRemedy:
    """Generate images for a round's modes with a text-to-image backend, keep what passes the filters, inject."""

    name = "text2image"

    def __init__(self, generator, filters: dict | None = None, output_dir: str = "generated",
                 images_per_round: int = 256, target_kept: int | None = None, max_generated: int | None = None,
                 max_generated_per_kept: float = 2.0,
                 prompts=None, verify=None, prompts_per_mode: int = 2, caption_weighting: str = "score",
                 prompt_template: str = "{caption}", untargeted: bool = False,
                 untargeted_template: str = "a photo of a {cls}", contrast: float = 0.0, batch_size: int = 64,
                 max_failure_fraction: float = 0.1, max_waves: int = 6, real_neighbours: int = 0,
                 neighbours_in_budget: bool = True, covered_members: str = "drop", seed: int = 0):
        if images_per_round < 1:
            raise ValueError(f"remedy.images_per_round={images_per_round}: the generation budget must be >= 1 "
                             "(use +augment=none to train without generated images)")
        if target_kept is not None and target_kept < 1:
            raise ValueError(f"remedy.target_kept={target_kept}: must be >= 1, or null to inject whatever is kept")
        if target_kept is not None and max_generated is not None and max_generated < target_kept:
            raise ValueError(f"remedy.max_generated={max_generated} is below remedy.target_kept={target_kept}: a round "
                             "could never keep that many; raise it, or set it to null to use "
                             "remedy.max_generated_per_kept")
        if not 0.0 <= contrast < 1.0:
            raise ValueError(f"remedy.contrast={contrast}: the share of a mode's images that show the classes its "
                             "errors are mistaken for must be in [0, 1) (0: none)")
        if max_generated_per_kept < 1:
            raise ValueError(f"remedy.max_generated_per_kept={max_generated_per_kept}: must be >= 1 (each kept image "
                             "is generated)")
        if not 0.0 <= max_failure_fraction <= 1.0:
            raise ValueError(f"remedy.max_failure_fraction={max_failure_fraction}: must be in [0, 1]")
        if real_neighbours < 0:
            raise ValueError(f"remedy.real_neighbours={real_neighbours}: the real training images injected per round "
                             "beside the generated ones must be >= 0 (0: none)")
        if covered_members not in COVERED_REMEDIES:
            raise ValueError(f"remedy.covered_members={covered_members!r}: use one of {COVERED_REMEDIES}")
        if caption_weighting not in CAPTION_WEIGHTINGS:
            raise ValueError(f"remedy.caption_weighting={caption_weighting!r}: use one of {CAPTION_WEIGHTINGS}")
        if neighbours_in_budget and real_neighbours >= (target_kept or images_per_round):
            raise ValueError(f"remedy.real_neighbours={real_neighbours}: real training images take that share of the "
                             f"round's {target_kept or images_per_round} images; it must be below "
                             f"remedy.{'target_kept' if target_kept else 'images_per_round'} so some are generated")
        if real_neighbours and neighbours_in_budget:  # part of the round's images: generation makes the rest
            images_per_round -= real_neighbours
            target_kept = target_kept - real_neighbours if target_kept else None
        self.generator = generator
        self.prompts = prompts  # a PromptComposer (diverse contexts), or None: the mode's top captions as they are
        self.verify = verify  # a ProbeVerifier (probe each caption before spending), or None
        self.filters = [f for f in (filters or {}).values() if f is not None]
        self.output_dir = Path(output_dir)
        self.images_per_round, self.target_kept = images_per_round, target_kept
        self.max_generated_cap, self.max_generated_per_kept = max_generated, max_generated_per_kept
        self.max_generated = self.round_budget(0).max_generated
        self.prompts_per_mode, self.caption_weighting, self.prompt_template = (prompts_per_mode, caption_weighting,
                                                                              prompt_template)
        self.untargeted, self.untargeted_template, self.contrast = untargeted, untargeted_template, contrast
        self._context_counts: ContextCounts | None = None  # read once per run, when contrast images are planned
        self.batch_size, self.max_failure_fraction, self.max_waves, self.seed = (batch_size, max_failure_fraction,
                                                                                 max_waves, seed)
        self.real_neighbours, self.covered_members = real_neighbours, covered_members
        self.neighbours_taken: list[int] = []  # training indices already injected again by real_neighbours

    def round_budget(self, real: int) -> RoundBudget:
        """The round's generation budget when `real` of its images are real training images."""
        target = self.target_kept - real if self.target_kept else None
        first = max(self.images_per_round - real, 0)
        cap = self.max_generated_cap or (math.ceil(self.max_generated_per_kept * target) if target else first)
        return RoundBudget(first, target, cap)

    def prepare(self, context: RemedyContext) -> None:
        """Before training: the output folder is writable and the generator loads."""
        check_writable(self.output_dir, "remedy.output_dir")
        if self.real_neighbours and context.train() is None:
            raise ValueError(f"remedy.real_neighbours={self.real_neighbours} injects real training images near each "
                             "mode and this datamodule gives none: set remedy.real_neighbours=0")
        if self.covered_members == "neighbours" and context.train() is None:
            raise ValueError("remedy.covered_members=neighbours injects real training images near the members "
                             "loop.trim_covered cut from a mode and this datamodule gives none: set "
                             "remedy.covered_members=drop")
        if hasattr(self.generator, "pipe"):
            _ = self.generator.pipe

    # filtering -------------------------------------------------------------------------------
    def judge(self, context: RemedyContext):
        """A function giving filters what they look at: CLIP embeddings and the current classifier's view."""
        needs = set().union(*(f.needs for f in self.filters)) if self.filters else set()

        def judge(images: torch.Tensor, prompts: list[str], labels: torch.Tensor) -> Candidates:
            clean = torch.nan_to_num(images, nan=0.0).clamp(0, 1)
            c = Candidates(images=images, labels=labels, prompts=prompts)
            if "clip" in needs:
                c.image_emb = context.clip.encode_images(clean)
                c.prompt_emb = context.clip.encode_texts(prompts)
                c.class_emb = context.clip.encode_texts([f"a photo of a {n}" for n in context.class_names])
            if "classifier" in needs:
                c.probs = context.predict_proba((clean * 255).round().to(torch.uint8))
            return c

        return judge

    def calibrate_filters(self, context: RemedyContext) -> None:
        """Filters that set thresholds from the real training images do it now (once; the same on every rank)."""
        for f in self.filters:
            if hasattr(f, "calibrate") and not f.calibrated:
                real = self.real_sample(context, f.max_real)
                if real is None:
                    raise ValueError(f"filters.{f.name}: auto needs the real training images and this datamodule "
                                     "gives none; set a number instead")
                emb, labels, _ = real
                threshold = f.calibrate(emb, labels)
                log.info("filters.%s: threshold %.4f from %d real training images", f.name, threshold, len(labels))

    def real_sample(self, context: RemedyContext, size: int) -> tuple[torch.Tensor, torch.Tensor, float] | None:
        """CLIP embeddings and labels of a seeded sample of the real training images, and training-set size /
        sample size (None when the datamodule gives no training images)."""
        train = context.train()
        if train is None:
            return None
        split, labels = train
        idx = seeded_subset(split.n, size)
        sample = Split(len(idx), lambda i: split.images([idx[k] for k in i]), f"{split.fingerprint}-{len(idx)}")
        return context.embed(sample), labels[idx], split.n / max(len(idx), 1)

    def contrast_view(self, modes: list, budget: int, context: RemedyContext, say: bool = True) -> list:
        """The modes with the confused classes that get contrast images (ContextCounts.prune)."""
        if not self.contrast or self.untargeted or self.prompts is None:
            return modes
        if self._context_counts is None:
            real = self.real_sample(context, CONTEXT_SAMPLE)
            if real is None:
                log.info("remedy.contrast: no training images to read contexts from; every confused class "
                         "gets contrast images")
                return modes
            emb, labels, scale = real
            self._context_counts = ContextCounts.read(self.prompts, emb, labels, context.class_names,
                                                      context.clip.encode_texts, scale)
        planned = split_budget([m.score for m in modes], budget) if modes else []
        out = []
        for m, n in zip(modes, planned):
            parsed = self.prompts.parse(m.caption, m.class_name)
            view = self._context_counts.prune(m, parsed[:2] if parsed else None, n)
            if say and len(view.confused_with) < len(m.confused_with):
                log.info("remedy.contrast: mode %s gets no contrast images of %s (already common in its context)",
                         m.mode_id, ", ".join(c["class_name"] for c in m.confused_with if c not in view.confused_with))
            out.append(view)
        return out

    def prior_kept_embeddings(self, context: RemedyContext, round_index: int, wave: int) -> torch.Tensor | None:
        """CLIP embeddings of images kept before this rank's next item (the near-duplicate filter's memory)."""
        if not any(getattr(f, "name", "") == "near_duplicate" for f in self.filters):
            return None
        kept = [r for r in read_manifest(self.output_dir) if r["kept"] and (
            r["round"] < round_index or (r["round"] == round_index and (
                r.get("wave", 0) < wave or (r.get("wave", 0) == wave and r["rank"] == context.rank))))]
        if not kept:
            return None
        return context.clip.encode_images(torch.stack([load_image(r["path"]) for r in kept]).float() / 255.0)

    # planning --------------------------------------------------------------------------------
    def prompt_fn(self, context: RemedyContext, round_index: int, wave: int):
        """The composer's prompts for a mode (seeded by round and wave), or None for the bare captions."""
        if self.prompts is None:
            return None

        def compose(mode, count):
            members = None
            if context.val_embeddings is not None and mode.members:
                members = context.val_embeddings[torch.as_tensor(mode.members)]
            return self.prompts(mode, count, seed=self.seed * 1009 + round_index * 101 + wave,
                                member_embeddings=members,
                                encode_texts=getattr(context.clip, "encode_texts", None))

        return compose

    def plan_wave(self, rnd, modes, wave: int, count: int, context: RemedyContext, budget: RoundBudget,
                  contrast: dict[str, float] | None = None) -> list[PlanItem]:
        """Prompts and seeds of one wave for the (verified) modes (disjoint ids and seeds across waves); `contrast`:
        each mode's contrast share in this wave (default: remedy.contrast for all)."""
        round_dir = self.output_dir / f"round_{rnd.index}"
        modes = self.contrast_view(self.with_covered_parts(modes), budget.target_kept or budget.first_wave, context,
                                   say=wave == 0)
        items = plan_round(modes, count, rnd.index, self.seed + 7919 * wave, str(round_dir / "images"),
                           self.prompts_per_mode, self.prompt_template, self.untargeted, self.untargeted_template,
                           self.caption_weighting, self.prompt_fn(context, rnd.index, wave),
                           self.contrast if contrast is None else contrast)
        if wave == 0:
            return items
        return [replace(i, id=f"{i.id}-w{wave}", path=str(Path(i.path).with_name(f"{i.id}-w{wave}.png")), wave=wave)
                for i in items]

    def next_wave(self, rnd, modes, records: list[dict], context: RemedyContext, budget: RoundBudget) -> WavePlan:
        """The next wave's size and per-mode contrast shares (size 0: the round is done; waves.plan_next_wave)."""
        if budget.target_kept is None:
            return WavePlan(0, {}, 0.0)
        contrast = 0.0 if self.untargeted else self.contrast
        view = self.contrast_view(self.with_covered_parts(modes), budget.target_kept, context, say=False)
        has = [bool(confused_classes(m)) for m in view]
        return plan_next_wave([m.mode_id for m in view], [m.score for m in view], has, records, budget.target_kept,
                              budget.max_generated - len(records), contrast, self.batch_size)

    def usable(self, kept: list[dict]) -> list[dict]:
        """Kept records that can be injected, in order: in every prefix, each mode's contrast images stay within
        `contrast` of what it injects (they skip the classifier filter, so more of them pass than of its own);
        a contrast image waits until enough of its mode's own images come before it."""
        if not self.contrast:
            return kept
        own: Counter = Counter()
        shown: Counter = Counter()
        waiting: dict[str, list[dict]] = {}
        out: list[dict] = []
        for r in kept:
            m = r["mode_id"]
            if r.get("role") == "contrast":
                waiting.setdefault(m, []).append(r)
            else:
                out.append(r)
                own[m] += 1
            while waiting.get(m) and shown[m] < contrast_room(own[m], self.contrast):
                out.append(waiting[m].pop(0))
                shown[m] += 1
        return out

    def verified(self, rnd, context: RemedyContext) -> tuple[list, list[dict]]:
        """The modes worth spending on (all, without a verifier) and each caption's probe error (rank 0 only;
        probes are generated once per round, kept in probes.json, never injected)."""
        if self.verify is None or self.untargeted:
            return rnd.modes, []
        from ..generation.probes import ProbeReport

        path = self.output_dir / f"round_{rnd.index}" / "probes.json"
        if path.is_file():
            report = ProbeReport.from_dict(json.loads(path.read_text()))
        else:
            report = self.verify(rnd.modes, self.generator, context.predict_proba, round_index=rnd.index)
            report.save(path)
        return report.verified_modes(rnd.modes), report.to_dict()["captions"]

    def backend(self, context: RemedyContext, labels: dict[int, int]):
        """What makes an item's image from its (prompt, seed): the text-to-image generator."""
        return self.generator

    @staticmethod
    def _plan_file(round_dir: Path, wave: int) -> Path:
        return round_dir / ("plan.json" if wave == 0 else f"plan-wave{wave}.json")

    # the round -------------------------------------------------------------------------------
    def __call__(self, rnd, context: RemedyContext) -> RemedyResult:
        """Generate the round's waves (this rank's shard of each), agree on success, return the kept records."""
        round_dir = self.output_dir / f"round_{rnd.index}"
        labels: dict[int, int] = {}  # seed -> class of the item (editing picks a real image of that class)
        runner = RoundRunner(self.backend(context, labels), self.filters, self.judge(context), self.batch_size,
                             self.max_failure_fraction, context.progress and context.is_main)
        total, order, wave = RoundStats(), {}, 0
        self.calibrate_filters(context)
        covered = self.covered_records(rnd, context)
        budget = self.round_budget(len(covered))
        modes, probes = self.verified(rnd, context) if context.is_main else (None, [])
        while wave < self.max_waves:
            plan_file = self._plan_file(round_dir, wave)
            if context.is_main and load_plan(plan_file) is None and modes and budget.first_wave:  # resumed: kept
                records = [r for r in read_manifest(self.output_dir) if r["round"] == rnd.index]
                nxt = (WavePlan(budget.first_wave, None, 0.0) if wave == 0
                       else self.next_wave(rnd, modes, records, context, budget))
                if nxt.count > 0:
                    if wave:
                        log.info("round %d, wave %d: %d images (expected to add %.0f usable)", rnd.index, wave,
                                 nxt.count, nxt.expected_gain)
                    save_plan(plan_file, self.plan_wave(rnd, modes, wave, nxt.count, context, budget, nxt.contrast),
                              rnd.modes)
            context.barrier("blindspot-plan")
            plan = load_plan(plan_file)
            if plan is None:
                break
            items, modes = plan
            if wave == 0:
                rnd.modes = modes  # a resumed round keeps its planned modes
            order.update({it.id: (wave, k) for k, it in enumerate(items)})
            labels.update({it.seed: it.label for it in items})
            if context.is_main:
                (round_dir / "images").mkdir(parents=True, exist_ok=True)
            self._run_wave(rnd.index, wave, items, runner, context, total)
            wave += 1
        if context.is_main:
            remove_strays(round_dir / "images", {self._item_path(round_dir, i) for i in order})
        result = self._result(rnd, context, total, order, budget)
        if covered:
            result.records += covered
            result.stats["injected"] += len(covered)
            result.stats["covered_neighbours"] = len(covered)
            for mode_id, n in Counter(r["mode_id"] for r in covered).items():
                result.stats["per_mode"].setdefault(mode_id, {"generated": 0, "kept": 0})["covered_neighbours"] = n
        if self.real_neighbours:
            neighbours = self.neighbour_records(rnd, context, [(rnd.modes, self.real_neighbours)])
            result.records += neighbours
            result.stats["injected"] += len(neighbours)
            result.stats["real_neighbours"] = len(neighbours)
        result.stats["probes"] = context.broadcast(probes)
        result.stats["filter_thresholds"] = {f.name: f.max_similarity for f in self.filters if hasattr(f, "calibrate")}
        result.stats["modes_verified"] = context.broadcast(len(modes) if modes is not None else 0)
        return result

    def with_covered_parts(self, modes: list) -> list:
        """With remedy.covered_members=generate: each mode the loop trimmed, followed by its cut members as a mode
        of their own (its covered captions; the mode's score split between the two by member count)."""
        if self.covered_members != "generate" or self.untargeted:
            return modes
        out = []
        for m in modes:
            cut, captions = m.extra.get("covered_members") or [], m.extra.get("covered_captions") or []
            if not cut or not captions:
                out.append(m)
                continue
            share = len(cut) / (len(cut) + len(m.members))
            out += [replace(m, score=m.score * (1 - share)), replace(m.covered_part(), score=m.score * share)]
        return out

    def covered_views(self, modes: list, total: int) -> list[tuple[list, int]]:
        """Per mode with members loop.trim_covered cut away: a view of it on those members, and how many of the
        round's `total` images its real neighbours take (its share of the mode's images, as they are of its
        members); nothing unless remedy.covered_members=neighbours."""
        if self.covered_members != "neighbours" or not modes:
            return []
        out = []
        for m, share in zip(modes, split_budget([m.score for m in modes], total)):
            cut = [int(i) for i in m.extra.get("covered_members", [])]
            count = round(share * len(cut) / (len(cut) + len(m.members))) if cut else 0
            if count:
                out.append(([replace(m, members=cut)], count))
        return out

    def covered_records(self, rnd, context: RemedyContext) -> list[dict]:
        """The real training images nearest to each mode's covered members (remedy.covered_members=neighbours)."""
        if self.covered_members != "neighbours" or self.untargeted:
            return []
        total = self.target_kept or self.images_per_round
        views = self.covered_views(rnd.modes, total) if context.is_main else None
        if not context.broadcast(bool(views)):
            return []
        return self.neighbour_records(rnd, context, views, "covered_neighbours", "covered_neighbour")

    def neighbour_records(self, rnd, context: RemedyContext, requests: list[tuple[list, int]] | None,
                          folder_name: str = "real_neighbours", source: str = "real_neighbour") -> list[dict]:
        """The real training images nearest to the members of each request's modes (of each mode's class, at most
        the request's count, none taken before), written once as PNGs on rank 0; every rank gets the same records.
        `requests` is read on rank 0 only."""
        records = None
        if context.is_main:
            split, labels = context.train()
            train_emb, picks = context.embed(split), []
            for modes, count in requests:
                picks += select_for_modes(modes, context.val_embeddings, train_emb, labels, count,
                                          self.neighbours_taken + [p.pool_index for p in picks])
            folder = self.output_dir / f"round_{rnd.index}" / folder_name
            folder.mkdir(parents=True, exist_ok=True)
            records = []
            for start in range(0, len(picks), self.batch_size):
                batch = picks[start : start + self.batch_size]
                for p, image in zip(batch, split.images([p.pool_index for p in batch])):
                    path = folder / f"train_{p.pool_index:07d}.png"
                    if not path.is_file():  # a resumed round finds the same picks already written
                        save_png(image, path)
                    records.append({"path": str(path), "label": p.label, "source": source,
                                    "round": rnd.index, "mode_id": p.mode_id, "train_index": p.pool_index,
                                    "similarity": p.similarity})
            log.info("round %d: %d real training images near its modes injected again (%s)", rnd.index,
                     len(records), "remedy.covered_members" if source == "covered_neighbour" else "remedy.real_neighbours")
        records = context.broadcast(records)
        context.barrier("blindspot-neighbours")  # files are written before any rank reads them
        self.neighbours_taken += [r["train_index"] for r in records]
        return records

    def state_dict(self) -> dict:
        """Training indices already injected again by real_neighbours."""
        return {"neighbours_taken": list(self.neighbours_taken)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`."""
        self.neighbours_taken = [int(i) for i in state.get("neighbours_taken", [])]

    @staticmethod
    def _item_path(round_dir: Path, item_id: str) -> str:
        return str(round_dir / "images" / f"{item_id}.png")

    def _run_wave(self, round_index: int, wave: int, items: list[PlanItem], runner: RoundRunner,
                  context: RemedyContext, total: RoundStats) -> None:
        mine = items[context.rank :: context.world_size]
        error, stats = None, RoundStats()
        try:
            stats = runner.run(mine, round_index, manifest_path(self.output_dir, context.rank), self.output_dir,
                               pool_emb=self.prior_kept_embeddings(context, round_index, wave), rank=context.rank,
                               should_stop=context.should_stop)
        except Exception as err:  # agree across ranks before anyone waits at a barrier
            error = err
        # every rank learns every rank's error (the first rank to raise takes the others down before they can log)
        # and stats, in one collective
        outcomes = context.gather((None if error is None else f"{type(error).__name__}: {error}", asdict(stats)))
        if any(e for e, _ in outcomes):
            if isinstance(error, InterruptedError):
                raise error
            failed = "; ".join(f"rank {r}: {e}" for r, (e, _) in enumerate(outcomes) if e)
            raise GenerationFailedError(f"generation failed in round {round_index} on {failed}") from error
        for _, s in outcomes:
            for k in ("generated", "reused", "skipped_done", "kept"):
                setattr(total, k, getattr(total, k) + s[k])
            total.failed_prompts += s["failed_prompts"]
            total.seconds_generate += s["seconds_generate"] / context.world_size  # mean over ranks
            total.seconds_filter += s["seconds_filter"] / context.world_size

    def _result(self, rnd, context: RemedyContext, total: RoundStats, order: dict,
                budget: RoundBudget) -> RemedyResult:
        records = [r for r in read_manifest(self.output_dir) if r["round"] == rnd.index and r["id"] in order]
        records.sort(key=lambda r: order[r["id"]])
        kept = [r for r in records if r["kept"]]
        usable = self.usable(kept)
        injected = usable[: budget.target_kept] if budget.target_kept else usable  # a prefix keeps the contrast share
        rejected: dict[str, int] = {}
        for r in records:  # counts come from the manifest: right even when the round was resumed
            if not r["kept"]:
                rejected[r["rejected_by"]] = rejected.get(r["rejected_by"], 0) + 1
        per_mode: dict[str, dict] = {}
        for r in records:  # what each mode got (its covered part's images included), and a few rejected images
            m = per_mode.setdefault(parent_mode_id(r["mode_id"]), {"generated": 0, "kept": 0, "contrast_kept": 0,
                                                                   "rejected_examples": []})
            m["generated"] += 1
            m["kept"] += bool(r["kept"])
            if r["mode_id"].endswith(COVERED_SUFFIX):
                m["covered_kept"] = m.get("covered_kept", 0) + bool(r["kept"])
            m["contrast_kept"] += bool(r["kept"]) and r.get("role") == "contrast"
            if not r["kept"] and len(m["rejected_examples"]) < 8:
                m["rejected_examples"].append(r["path"])
        stats = {"planned": len(order), "generated": len(records), "kept": len(kept), "injected": len(injected),
                 "per_mode": per_mode,
                 "rejected_by": rejected, "failed_prompts": total.failed_prompts, "made_now": total.generated,
                 "reused": total.reused, "waves": 1 + max((w for w, _ in order.values()), default=0),
                 "contrast_injected": sum(r.get("role") == "contrast" for r in injected),
                 "contrast_over_share": len(kept) - len(usable)}
        if not rnd.modes:
            log.info("round %d found no failure modes: nothing to generate", rnd.index)
        elif budget.target_kept and len(usable) < budget.target_kept:
            log.warning("round %d kept %d images, short of its %d to generate (remedy.target_kept) after %d "
                        "generated (remedy.max_generated=%d)", rnd.index, len(usable), budget.target_kept,
                        len(records), budget.max_generated)
        return RemedyResult(records=injected, stats=stats,
                            seconds={"generate": total.seconds_generate, "filter": total.seconds_filter})
