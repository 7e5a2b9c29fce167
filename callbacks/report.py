"""FailureReport: what was found, what was made, whether it got fixed -> report/ files and W&B (thin adapter)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from blindspot.groundtruth import majority_group, score_discovery
from blindspot.images import load_image
from blindspot.report import write_report
from blindspot.thumbnails import save_grid

from .augmentation import DiffusionAugmentation
from .common import find_callback
from .discovery import FailureDiscovery

log = logging.getLogger(__name__)


def _metrics(results: dict | None) -> dict:
    """The module's split results in report form."""
    if not results:
        return {}
    out = {"avg_acc": results.get("acc"), "per_class": results.get("per_class", {})}
    if "per_group" in results:
        out.update(worst_group_acc=results.get("worst_group_acc"), per_group=results["per_group"])
    return out


@torch.no_grad()
def evaluate(pl_module: LightningModule, loader, datamodule) -> dict:
    """Accuracy, per-class and per-group accuracy of the current model on a loader (no logging)."""
    from blindspot.metrics import GroupAccuracy, worst_group

    was_training = pl_module.training
    pl_module.eval()
    n_groups = max(1, len(datamodule.group_names))
    # one process evaluates the whole loader: no cross-rank sync (other ranks are not computing these metrics)
    groups = GroupAccuracy(n_groups, sync_on_compute=False)
    classes = GroupAccuracy(datamodule.num_classes, sync_on_compute=False)
    for batch in loader:
        preds = pl_module(batch["image"].to(pl_module.device)).argmax(-1).cpu()
        groups.update(preds, batch["label"], batch["group"])
        classes.update(preds, batch["label"], batch["label"])
    pl_module.train(was_training)
    per_class = classes.compute()
    out = {"acc": float((classes.correct.sum() / classes.total.sum().clamp(min=1))),
           "per_class": dict(zip(datamodule.class_names, per_class.tolist()))}
    if datamodule.group_names:
        per_group = groups.compute()
        out.update(per_group=dict(zip(datamodule.group_names, per_group.tolist())), worst_group_acc=worst_group(per_group))
    return out


class FailureReport(Callback):
    """Keeps report/report.json, report.md and index.html up to date (rank 0) and logs the same to W&B."""

    def __init__(self, output_dir: str = "report", thumbnails_per_mode: int = 8, log_to_loggers: bool = True,
                 method: str = "none"):
        self.output_dir, self.thumbnails_per_mode = Path(output_dir), thumbnails_per_mode
        self.log_to_loggers, self.method = log_to_loggers, method
        self.start = time.time()
        self.timeline: list[dict] = []
        self.baseline: dict = {}
        self.breakdown: dict[str, float] = {}
        self._logged_rounds: set[int] = set()
        self._epoch_start = None

    # timing ------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._add_train_time()  # an open training epoch ends here: discovery and generation follow validation

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._add_train_time()  # epochs without validation

    def _add_train_time(self) -> None:
        if self._epoch_start is not None:
            self.breakdown["train"] = self.breakdown.get("train", 0.0) + time.perf_counter() - self._epoch_start
            self._epoch_start = None

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_start = time.perf_counter()

    # collecting --------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        val = pl_module.last_results.get("val", {})
        self.timeline.append({"epoch": trainer.current_epoch, "val_acc": val.get("acc"),
                              "val_worst_group_acc": val.get("worst_group_acc")})
        discovery = find_callback(trainer, FailureDiscovery)
        if discovery and discovery.mode_accuracy and trainer.loggers:
            pl_module.log_dict({f"blindspot/mode_acc/{k}": v[-1]["acc"] for k, v in discovery.mode_accuracy.items()
                                if v and v[-1]["epoch"] == trainer.current_epoch})

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        discovery = find_callback(trainer, FailureDiscovery)
        if trainer.sanity_checking or not discovery or not discovery.rounds:
            return
        if not self.baseline and len(discovery.rounds) == 1 and trainer.is_global_zero:
            self.baseline = {"val": dict(pl_module.last_results.get("val", {})),  # before any injection
                             "test": evaluate(pl_module, trainer.datamodule.test_dataloader(), trainer.datamodule)}
        self.write(trainer, pl_module)

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer, pl_module)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.breakdown["test"] = time.perf_counter() - getattr(self, "_test_start", time.perf_counter())
        self.write(trainer, pl_module)

    # building the report -----------------------------------------------------------------------
    def build(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        """The report dict (see blindspot/report.py for the schema)."""
        dm = trainer.datamodule
        discovery = find_callback(trainer, FailureDiscovery)
        augmentation = find_callback(trainer, DiffusionAugmentation)
        results = pl_module.last_results
        report = {
            "title": f"Blindspot report: {self.method}",
            "method": self.method,
            "wall_seconds": time.time() - self.start,
            "metrics": {k: _metrics(results.get(k)) for k in ("val", "test") if results.get(k)},
            "timeline": self.timeline,
            "rounds": [],
            "breakdown": dict(self.breakdown),
        }
        if self.baseline:
            report["metrics"]["baseline_val"] = _metrics(self.baseline.get("val"))
            report["metrics"]["baseline_test"] = _metrics(self.baseline.get("test"))
        extra = {}  # hook: any callback with `report_extra() -> dict` adds what its method did (e.g. JTT, DFR)
        for cb in trainer.callbacks:
            if cb is not self and callable(getattr(cb, "report_extra", None)):
                extra.update(cb.report_extra())
        if extra:
            report["extra"] = extra
        if discovery is None:
            return report
        val_groups = getattr(dm.val_set, "groups", None)
        group_names = dm.group_names
        report["mode_accuracy"] = discovery.mode_accuracy
        for rnd in discovery.rounds:
            stats = augmentation.stats.get(rnd.index, {}) if augmentation else {}
            entry = {"round": rnd.index, "epoch": rnd.epoch, "method": self.method, "seconds": dict(rnd.seconds),
                     "generated": stats.get("recorded", 0), "kept": stats.get("kept", 0),
                     "rejected_by": stats.get("rejected_by", {}), "failed_prompts": stats.get("failed_prompts", []),
                     "modes": []}
            for m in rnd.modes:
                d = m.to_dict()
                curve = discovery.mode_accuracy.get(m.mode_id, [])
                d["acc_before"] = curve[0]["acc"] if curve else None
                d["acc_after"] = curve[-1]["acc"] if curve else None
                if val_groups is not None and group_names:
                    name, share = majority_group(m, val_groups, group_names)
                    d["majority_group"], d["majority_share"] = name, share
                    d["group_acc_before"] = self.baseline.get("test", {}).get("per_group", {}).get(name)
                    d["group_acc_after"] = results.get("test", {}).get("per_group", {}).get(name)
                d.update(self._thumbnails(trainer, m, stats))
                entry["modes"].append(d)
            report["rounds"].append(entry)
        report["breakdown"].update({k: sum(r.seconds.get(k, 0.0) for r in discovery.rounds)
                                    for k in ("embed", "discover", "caption", "generate", "filter")})
        planted = dm.planted_slices() if hasattr(dm, "planted_slices") else []
        if planted and discovery.rounds and val_groups is not None:
            report["discovery"] = score_discovery(discovery.rounds[0].modes, planted, val_groups, group_names)
        return report

    def _thumbnails(self, trainer: Trainer, mode, stats: dict) -> dict:
        """Save member / generated thumbnail grids of a mode; returns their paths relative to the report."""
        out, thumbs = {}, self.output_dir / "thumbs"
        n = self.thumbnails_per_mode
        member_file = thumbs / f"{mode.mode_id}-members.png"
        if not member_file.is_file() and mode.members:
            save_grid(trainer.datamodule.val_images(mode.members[:n]), member_file)
        if member_file.is_file():
            out["thumbnail"] = f"thumbs/{member_file.name}"
        augmentation = find_callback(trainer, DiffusionAugmentation)
        if augmentation is not None:
            from blindspot.generation.manifest import read_manifest

            records = [r for r in read_manifest(augmentation.output_dir) if r["mode_id"] == mode.mode_id]
            for kind, keep in (("generated", True), ("rejected", False)):
                chosen = [r for r in records if r["kept"] == keep][:n]
                target = thumbs / f"{mode.mode_id}-{kind}.png"
                if chosen:
                    save_grid(torch.stack([load_image(r["path"]) for r in chosen]), target)
                    out[f"{kind}_thumbnail"] = f"thumbs/{target.name}"
            out["images_planned"] = len(records)
            out["images_kept"] = sum(r["kept"] for r in records)
        return out

    @rank_zero_only
    def write(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Write the report files and send new rounds to W&B."""
        report = self.build(trainer, pl_module)
        write_report(report, self.output_dir)
        if self.log_to_loggers:
            self._log_wandb(trainer, report)

    def _log_wandb(self, trainer: Trainer, report: dict) -> None:
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        for entry in report["rounds"]:
            if entry["round"] in self._logged_rounds or not entry["generated"]:
                continue
            table = wandb.Table(columns=["round", "mode", "class", "caption", "score", "support", "error_rate",
                                         "class_error_rate", "acc_before", "members", "generated"])
            for m in entry["modes"]:
                image = lambda key: wandb.Image(str(self.output_dir / m[key])) if m.get(key) else None  # noqa: E731
                table.add_data(entry["round"], m["mode_id"], m["class_name"], m["caption"],
                               m["captions"][0][1] if m["captions"] else None, m["support"], m["error_rate"],
                               m["class_error_rate"], m.get("acc_before"), image("thumbnail"),
                               image("generated_thumbnail"))
            for lg in wandb_loggers:
                lg.experiment.log({f"blindspot/round_{entry['round']}/modes": table,
                                   f"blindspot/round_{entry['round']}/kept": entry["kept"],
                                   f"blindspot/round_{entry['round']}/generated": entry["generated"]})
            self._logged_rounds.add(entry["round"])
        if "test" in report["metrics"]:
            summary = {f"report/test_{k}": v for k, v in report["metrics"]["test"].items() if isinstance(v, float)}
            summary.update({f"report/discovery_{k}": v for k, v in report.get("discovery", {}).items()
                            if isinstance(v, float)})
            for lg in wandb_loggers:
                lg.experiment.summary.update(summary)

    # checkpointed state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"timeline": self.timeline, "baseline": self.baseline, "breakdown": self.breakdown,
                "elapsed": time.time() - self.start}

    def load_state_dict(self, state_dict: dict) -> None:
        self.timeline = list(state_dict.get("timeline", []))
        self.baseline = dict(state_dict.get("baseline", {}))
        self.breakdown = dict(state_dict.get("breakdown", {}))
        self.start = time.time() - float(state_dict.get("elapsed", 0.0))
