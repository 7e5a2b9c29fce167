"""DiffusionAugmentation: make images for the newest failure modes, filter them, inject them (thin adapter).

DDP: rank 0 writes the round plan, every rank generates a disjoint shard (plan[rank::world_size]) into its
own manifest file, all ranks agree on success before the barrier (no rank hangs when another fails), and
then every rank injects the same kept records, read back from the merged manifest.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from blindspot.filters import Candidates
from blindspot.images import load_image
from blindspot.generation.manifest import manifest_path, read_manifest
from blindspot.generation.rounds import (GenerationFailedError, RoundRunner, RoundStats, load_plan, plan_round,
                                         remove_strays, save_plan)

from .common import find_callback
from .discovery import FailureDiscovery, require_discovery

log = logging.getLogger(__name__)


class DiffusionAugmentation(Callback):
    """Generate `images_per_round` images for the modes of each discovery round and add the kept ones."""

    def __init__(self, generator, filters: dict | None = None, output_dir: str = "generated",
                 images_per_round: int = 256, prompts_per_mode: int = 2, prompt_template: str = "{caption}",
                 untargeted: bool = False, untargeted_template: str = "a photo of a {cls}", batch_size: int = 64,
                 max_failure_fraction: float = 0.1, seed: int = 0, progress: bool = True,
                 caption_weighting: str = "score"):
        if images_per_round < 1:
            raise ValueError(f"augment images_per_round={images_per_round}: the generation budget must be >= 1 "
                             "(use +augment=none to train without generated images)")
        if not 0.0 <= max_failure_fraction <= 1.0:
            raise ValueError("max_failure_fraction must be in [0, 1]")
        self.generator = generator
        self.filters = [f for f in (filters or {}).values() if f is not None and getattr(f, "enabled", True)]
        self.output_dir = Path(output_dir)
        self.images_per_round, self.prompts_per_mode = images_per_round, prompts_per_mode
        self.prompt_template, self.untargeted, self.untargeted_template = prompt_template, untargeted, \
            untargeted_template
        self.batch_size, self.max_failure_fraction, self.seed = batch_size, max_failure_fraction, seed
        self.progress = progress
        if caption_weighting not in ("score", "uniform"):
            raise ValueError(f"diffusion_augmentation.caption_weighting={caption_weighting!r}: use score or uniform")
        self.caption_weighting = caption_weighting
        self.stats: dict[int, dict] = {}  # round index -> summed stats (checkpointed)

    def check_writable(self) -> None:
        """Fail early with a clear message when the run folder cannot be written."""
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            probe = self.output_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as err:
            raise PermissionError(f"cannot write generated images to {self.output_dir}: {err}. Free disk space or "
                                  "point paths.log_dir (or hydra.run.dir) at a writable folder") from err

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            require_discovery(trainer, "DiffusionAugmentation", "failure_diffusion")
            self.check_writable()
            if hasattr(self.generator, "pipe"):
                _ = self.generator.pipe  # load (or fail with a clear message) before training starts

    def judge(self, trainer: Trainer, pl_module: LightningModule):
        """A function giving filters what they look at: CLIP embeddings and the current classifier's view."""
        discovery = find_callback(trainer, FailureDiscovery)
        needs = set().union(*(f.needs for f in self.filters)) if self.filters else set()
        class_names = trainer.datamodule.class_names

        def judge(images: torch.Tensor, prompts: list[str], labels: torch.Tensor) -> Candidates:
            clean = torch.nan_to_num(images, nan=0.0).clamp(0, 1)
            c = Candidates(images=images, labels=labels, prompts=prompts)
            if "clip" in needs:
                clip = discovery.clip
                c.image_emb = clip.encode_images(clean)
                c.prompt_emb = clip.encode_texts(prompts)
                c.class_emb = clip.encode_texts([f"a photo of a {n}" for n in class_names])
            if "classifier" in needs:
                c.probs = pl_module.predict_proba((clean * 255).round().to(torch.uint8))
            return c

        return judge

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        discovery = find_callback(trainer, FailureDiscovery)
        if trainer.sanity_checking or discovery is None:
            return
        for rnd in discovery.rounds:  # normally just the newest; after a crash also an unfinished one
            if rnd.index not in self.stats:
                self.run_round(trainer, pl_module, rnd)
        discovery.pending = None

    def prior_pool_embeddings(self, trainer: Trainer, round_index: int) -> torch.Tensor | None:
        """CLIP embeddings of images kept before this rank's next item (near-duplicate filter's memory)."""
        if not any(getattr(f, "name", "") == "near_duplicate" for f in self.filters):
            return None
        kept = [r for r in read_manifest(self.output_dir) if r["kept"] and (
            r["round"] < round_index or (r["round"] == round_index and r["rank"] == trainer.global_rank))]
        if not kept:
            return None
        clip = find_callback(trainer, FailureDiscovery).clip
        return clip.encode_images(torch.stack([load_image(r["path"]) for r in kept]))

    def run_round(self, trainer: Trainer, pl_module: LightningModule, rnd) -> None:
        """Plan (rank 0, once), generate this rank's shard, agree on success, inject the kept images."""
        round_dir = self.output_dir / f"round_{rnd.index}"
        plan_file = round_dir / "plan.json"
        if trainer.is_global_zero:
            if load_plan(plan_file) is None:  # a resumed round keeps its original plan (prompts, seeds, modes)
                items = plan_round(rnd.modes, self.images_per_round, rnd.index, self.seed, str(round_dir / "images"),
                                   self.prompts_per_mode, self.prompt_template, self.untargeted,
                                   self.untargeted_template, self.caption_weighting)
                save_plan(plan_file, items, rnd.modes)
            (round_dir / "images").mkdir(parents=True, exist_ok=True)
            remove_strays(round_dir / "images", {i.path for i in load_plan(plan_file)[0]})
        trainer.strategy.barrier("blindspot-plan")
        items, rnd.modes = load_plan(plan_file)
        mine = items[trainer.global_rank :: trainer.world_size]
        runner = RoundRunner(self.generator, self.filters, self.judge(trainer, pl_module), self.batch_size,
                             self.max_failure_fraction, self.progress and trainer.is_global_zero)
        error, stats = None, RoundStats()
        try:
            stats = runner.run(mine, rnd.index, manifest_path(self.output_dir, trainer.global_rank), self.output_dir,
                               pool_emb=self.prior_pool_embeddings(trainer, rnd.index), rank=trainer.global_rank,
                               should_stop=lambda: trainer.received_sigterm)
        except Exception as err:  # agree across ranks before anyone waits at a barrier
            error = err
        if trainer.strategy.reduce_boolean_decision(error is not None, all=False):
            if isinstance(error, InterruptedError):
                raise SIGTERMException(str(error))  # Lightning's SIGTERM path; resume=<run dir> continues the round
            raise GenerationFailedError(f"generation failed on at least one rank in round {rnd.index}: "
                                        f"{error or 'see the other rank log'}") from error
        stats = self._sum(trainer, stats)
        records = [r for r in read_manifest(self.output_dir) if r["round"] == rnd.index]
        kept = [r for r in records if r["kept"]]
        trainer.datamodule.add_samples(kept)
        rejected: dict[str, int] = {}
        for r in records:  # counts come from the manifest: right even when the round was resumed
            if not r["kept"]:
                rejected[r["rejected_by"]] = rejected.get(r["rejected_by"], 0) + 1
        stats.update(planned=len(items), recorded=len(records), kept=len(kept), rejected_by=rejected)
        self.stats[rnd.index] = stats
        rnd.seconds["generate"] = stats["seconds_generate"]
        rnd.seconds["filter"] = stats["seconds_filter"]
        rank_zero_info(f"[blindspot] round {rnd.index}: {len(records)} images ({stats['generated']} generated now, "
                       f"{stats['reused']} reused), {len(kept)} kept, rejected by {rejected}; "
                       f"training continues on {len(trainer.datamodule.synthetic)} injected samples")

    @staticmethod
    def _sum(trainer: Trainer, stats: RoundStats) -> dict:
        """Round stats summed over ranks (seconds: the slowest rank)."""
        all_stats = [asdict(stats)]
        if trainer.world_size > 1:
            import torch.distributed as dist

            all_stats = [None] * trainer.world_size
            dist.all_gather_object(all_stats, asdict(stats))
        out = {"generated": 0, "reused": 0, "skipped_done": 0, "kept": 0, "rejected_by": {}, "failed_prompts": [],
               "seconds_generate": 0.0, "seconds_filter": 0.0}
        for s in all_stats:
            for k in ("generated", "reused", "skipped_done", "kept"):
                out[k] += s[k]
            for k, v in s["rejected_by"].items():
                out["rejected_by"][k] = out["rejected_by"].get(k, 0) + v
            out["failed_prompts"] += s["failed_prompts"]
            out["seconds_generate"] = max(out["seconds_generate"], s["seconds_generate"])
            out["seconds_filter"] = max(out["seconds_filter"], s["seconds_filter"])
        return out

    def state_dict(self) -> dict:
        return {"stats": {str(k): v for k, v in self.stats.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.stats = {int(k): v for k, v in state_dict.get("stats", {}).items()}
