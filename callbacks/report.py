"""FailureReport: what was found, what was made, whether it got fixed -> report/ files and W&B (thin adapter).

It reads only public channels: `trainer.callback_metrics` (the module's val/test metrics, the methods' scalars)
and the failure loop's state (rounds, mode accuracy), at `on_validation_end` / `on_test_end`, after every
callback and the module have finished the epoch's work: the report is the same whatever the callback order.
"""

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
from blindspot.loop import FailureLoop, Split
from blindspot.metrics import wilson_interval
from blindspot.modes import parent_mode_id
from blindspot.report import load_report, summary_lines, write_report
from blindspot.thumbnails import save_grid

from .common import gather_by_index

log = logging.getLogger(__name__)

METHOD_PREFIXES = ("jtt/", "dfr/")  # scalars methods log for the report's "method details"


def split_metrics(metrics: dict, split: str, class_names, group_names) -> dict:
    """A split's accuracy, per-class and per-group accuracy, read from logged metrics (`val/acc`, ...)."""
    value = lambda key: float(metrics[key]) if key in metrics else None  # noqa: E731
    if value(f"{split}/acc") is None:
        return {}
    out = {"avg_acc": value(f"{split}/acc"),
           "per_class": {c: value(f"{split}/acc_class/{c}") for c in class_names}}
    if group_names:
        out["per_group"] = {g: value(f"{split}/acc_group/{g}") for g in group_names}
        out["worst_group_acc"] = value(f"{split}/worst_group_acc")
    return out


@torch.no_grad()
def evaluate(pl_module: LightningModule, loader, datamodule) -> dict:
    """Accuracy, per-class and per-group accuracy and per-sample correctness of the model on a loader."""
    from blindspot.metrics import GroupAccuracy, worst_group

    was_training = pl_module.training
    pl_module.eval()
    n_groups = max(1, len(datamodule.group_names))
    groups = GroupAccuracy(n_groups, sync_on_compute=False)  # one process evaluates the whole loader
    classes = GroupAccuracy(datamodule.num_classes, sync_on_compute=False)
    index, correct = [], []
    for batch in loader:
        preds = pl_module(batch["image"].to(pl_module.device)).argmax(-1).cpu()
        groups.update(preds, batch["label"], batch["group"])
        classes.update(preds, batch["label"], batch["label"])
        index.append(batch["index"])
        correct.append(preds == batch["label"])
    pl_module.train(was_training)
    order = torch.argsort(torch.cat(index))
    out = {"avg_acc": float(classes.correct.sum() / classes.total.sum().clamp(min=1)),
           "per_class": dict(zip(datamodule.class_names, classes.compute().tolist())),
           "correct": torch.cat(correct)[order].tolist()}
    if datamodule.group_names:
        per_group = groups.compute()
        out.update(per_group=dict(zip(datamodule.group_names, per_group.tolist())),
                   worst_group_acc=worst_group(per_group))
    return out


def slice_accuracy(correct: list[bool] | None, members: list[int]) -> tuple[float | None, list[float] | None]:
    """Accuracy of a slice and its 95% Wilson interval (None when unknown or empty)."""
    if not correct or not members:
        return None, None
    hits = sum(bool(correct[i]) for i in members)
    return hits / len(members), list(wilson_interval(hits, len(members)))


class FailureReport(Callback):
    """Keeps report/report.json, report.md and index.html (with charts) up to date and logs them to W&B."""

    def __init__(self, loop: FailureLoop | None = None, output_dir: str = "report", thumbnails_per_mode: int = 8,
                 log_to_loggers: bool = True, method: str = "none", regression_margin: float = 0.05):
        if not 0.0 <= regression_margin <= 1.0:
            raise ValueError(f"failure_report.regression_margin={regression_margin}: a fraction in [0, 1]")
        self.loop, self.output_dir, self.thumbnails_per_mode = loop, Path(output_dir), thumbnails_per_mode
        self.log_to_loggers, self.method, self.regression_margin = log_to_loggers, method, regression_margin
        self.start = time.time()
        self.timeline: list[dict] = []
        self.baseline: dict = {}  # test (and val) results of the model at the first round, before any injection
        self.final_test: dict = {}
        self.last: dict[str, dict] = {}  # newest val / test metrics (trainer.test resets callback_metrics)
        self.extra: dict[str, dict] = {}  # the methods' logged scalars (jtt/*, dfr/*)
        self.breakdown: dict[str, float] = {}
        self.logged_rounds: list[int] = []  # rounds whose W&B table was logged (checkpointed: none twice)
        self._epoch_start = None
        self._test_buffers: dict[str, list[torch.Tensor]] = {}
        self._summary: list[str] = []  # the final report's verdict, logged after Lightning's test table

    # timing ------------------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._add_train_time()  # an open training epoch ends here: discovery and remedies follow validation

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._add_train_time()  # epochs without validation

    def _add_train_time(self) -> None:
        if self._epoch_start is not None:
            self.breakdown["train"] = self.breakdown.get("train", 0.0) + time.perf_counter() - self._epoch_start
            self._epoch_start = None

    # collecting --------------------------------------------------------------------------------
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        dm = trainer.datamodule
        val = self.read_metrics(trainer, "val")
        self.timeline = [t for t in self.timeline if t["epoch"] != trainer.current_epoch]
        self.timeline.append({"epoch": trainer.current_epoch, "val_acc": val.get("avg_acc"),
                              "val_worst_group_acc": val.get("worst_group_acc")})
        if self.loop is not None and self.loop.rounds and not self.baseline and trainer.is_global_zero:
            self.baseline = {"val": val, "test": evaluate(pl_module, dm.test_dataloader(), dm)}
        self.write(trainer)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._test_start = time.perf_counter()
        self._test_buffers = {"index": [], "preds": [], "labels": []}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if outputs is not None:
            for key, out in (("index", "index"), ("preds", "preds"), ("labels", "label")):
                self._test_buffers[key].append(outputs[out].detach())

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._test_buffers.get("index"):  # every rank takes part in the gather
            _, preds, labels = gather_by_index(trainer, *(torch.cat(self._test_buffers[k]) for k in
                                                          ("index", "preds", "labels")))
            self.final_test = {"correct": (preds == labels).tolist()}

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.write(trainer)

    def read_metrics(self, trainer: Trainer, split: str) -> dict:
        """Keep the newest metrics of a split and the methods' scalars from `trainer.callback_metrics`."""
        dm, metrics = trainer.datamodule, trainer.callback_metrics
        self.last[split] = split_metrics(metrics, split, dm.class_names, dm.group_names) or self.last.get(split, {})
        for key, value in metrics.items():
            if key.startswith(METHOD_PREFIXES):
                method, name = key.split("/", 1)
                self.extra.setdefault(method, {})[name] = float(value)
        return self.last[split]

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.read_metrics(trainer, "test")
        self.breakdown["test"] = time.perf_counter() - getattr(self, "_test_start", time.perf_counter())
        self.write(trainer, final=True)

    # building the report -----------------------------------------------------------------------
    def build(self, trainer: Trainer) -> dict:
        """The report dict (see blindspot/report.py for the schema)."""
        dm = trainer.datamodule
        report = {"title": f"Blindspot report: {self.method}", "method": self.method,
                  "wall_seconds": time.time() - self.start, "timeline": self.timeline, "rounds": [],
                  "breakdown": dict(self.breakdown), "regression_margin": self.regression_margin,
                  "metrics": {k: dict(v) for k, v in self.last.items() if v}}
        if self.baseline:
            report["metrics"]["baseline_val"] = self.baseline.get("val", {})
            report["metrics"]["baseline_test"] = {k: v for k, v in self.baseline.get("test", {}).items()
                                                  if k != "correct"}
        if self.extra:
            report["extra"] = {k: dict(v) for k, v in self.extra.items()}
        if self.loop is None:
            return report
        report["mode_accuracy"] = self.loop.mode_accuracy
        test_members = self.test_members(trainer)
        for rnd in self.loop.rounds:
            report["rounds"].append(self.round_entry(trainer, rnd, test_members))
        report["breakdown"].update({k: sum(r.seconds.get(k, 0.0) for r in self.loop.rounds)
                                    for k in ("embed", "discover", "caption", "generate", "filter")})
        val_groups = getattr(dm.val_set, "groups", None)
        planted = dm.planted_slices() if hasattr(dm, "planted_slices") else []
        if planted and self.loop.rounds and val_groups is not None:
            report["discovery"] = score_discovery(self.loop.rounds[0].modes, planted, val_groups, dm.group_names)
        return report

    def test_members(self, trainer: Trainer) -> dict[str, list[int]]:
        """Every mode carried onto the test split by its direction or centroid (held-out evidence)."""
        dm = trainer.datamodule
        if not self.loop.rounds or not hasattr(dm, "test_images"):
            return {}
        val = Split(len(dm.val_set), dm.val_images, dm.val_fingerprint())
        test = Split(len(dm.test_set), dm.test_images, dm.test_fingerprint())
        val_emb, test_emb = self.loop.embed(val, progress=False), self.loop.embed(test, progress=False)
        val_labels, test_labels = torch.as_tensor(dm.val_set.labels), torch.as_tensor(dm.test_set.labels)
        out = {}
        for rnd in self.loop.rounds:
            out.update(self.loop.carry(rnd, test_emb, test_labels, val_emb, val_labels))
        return out

    def round_entry(self, trainer: Trainer, rnd, test_members: dict[str, list[int]]) -> dict:
        """One round of the report: the remedy's counts and every mode with its evidence and thumbnails."""
        dm = trainer.datamodule
        stats = dict(rnd.stats)
        per_mode = stats.pop("per_mode", {})
        entry = {"round": rnd.index, "epoch": rnd.epoch, "method": self.method, "remedy": rnd.remedy,
                 "status": rnd.status, "seconds": dict(rnd.seconds), "generated": stats.pop("generated", 0),
                 "kept": stats.pop("kept", 0), "injected": stats.pop("injected", 0),
                 "rejected_by": stats.pop("rejected_by", {}), "failed_prompts": stats.pop("failed_prompts", []),
                 "probes": stats.pop("probes", []), "details": stats, "modes": []}
        val_groups = getattr(dm.val_set, "groups", None)
        test_now = self.last.get("test", {})
        for m in rnd.modes:
            d = m.to_dict()
            curve = self.loop.mode_accuracy.get(m.mode_id, [])
            d["acc_before"] = curve[0]["acc"] if curve else None
            d["acc_after"] = curve[-1]["acc"] if curve else None
            if val_groups is not None and dm.group_names:
                name, share = majority_group(m, val_groups, dm.group_names)
                d["majority_group"], d["majority_share"] = name, share
                d["group_acc_before"] = self.baseline.get("test", {}).get("per_group", {}).get(name)
                d["group_acc_after"] = test_now.get("per_group", {}).get(name)
            if m.mode_id in test_members:
                members = test_members[m.mode_id]
                before, ci_before = slice_accuracy(self.baseline.get("test", {}).get("correct"), members)
                after, ci_after = slice_accuracy(self.final_test.get("correct"), members)
                d["test_slice"] = {"n": len(members), "acc_before": before, "acc_after": after,
                                   "ci_before": ci_before, "ci_after": ci_after}
            d.update(self.thumbnails(trainer, m, per_mode.get(m.mode_id, {})))
            entry["modes"].append(d)
        return entry

    def thumbnails(self, trainer: Trainer, mode, made: dict) -> dict:
        """Save member / injected / rejected thumbnail grids of a mode; returns their paths relative to the report."""
        out, thumbs, n = {}, self.output_dir / "thumbs", self.thumbnails_per_mode
        member_file = thumbs / f"{mode.mode_id}-members.png"
        if not member_file.is_file() and mode.members:
            save_grid(trainer.datamodule.val_images(mode.members[:n]), member_file)
        if member_file.is_file():
            out["thumbnail"] = f"thumbs/{member_file.name}"
        injected = [r for r in getattr(trainer.datamodule, "synthetic", [])
                    if parent_mode_id(str(r.get("mode_id", ""))) == mode.mode_id]  # its covered part's too
        shown = sorted(injected, key=lambda r: r.get("role") == "contrast")[:n]  # the mode's own class first
        target = thumbs / f"{mode.mode_id}-generated.png"
        if shown and not target.is_file():
            save_grid(torch.stack([load_image(r["path"]) for r in shown]), target)
        if target.is_file():
            out["generated_thumbnail"] = f"thumbs/{target.name}"
        rejected = thumbs / f"{mode.mode_id}-rejected.png"
        paths = [p for p in made.get("rejected_examples", [])[:n] if Path(p).is_file()]
        if paths and not rejected.is_file():
            save_grid(torch.stack([load_image(p) for p in paths]), rejected)
        if rejected.is_file():
            out["rejected_thumbnail"] = f"thumbs/{rejected.name}"
        out["images_kept"] = len(injected)
        out["images_contrast"] = sum(r.get("role") == "contrast" for r in injected)
        out["images_real"] = sum(str(r.get("source", "")).endswith("neighbour") for r in injected)  # real training
        if "generated" in made:
            out["images_planned"] = made["generated"]
        return out

    @rank_zero_only
    def write(self, trainer: Trainer, final: bool = False) -> None:
        """Write the report files; send finished rounds (and, at the end, the charts) to W&B."""
        report = self.build(trainer)
        paths = write_report(report, self.output_dir)
        if self.log_to_loggers:
            self.log_wandb(trainer, report, paths if final else {})
        if final:
            self._summary = summary_lines(load_report(paths["json"]), paths["html"])  # as written: regressions in

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self._summary:  # set on rank 0 by the final write; the last thing a run says
            log.info("[blindspot] " + "\n  ".join(self._summary))
            self._summary = []

    def log_wandb(self, trainer: Trainer, report: dict, paths: dict) -> None:
        """One table per finished round (logged once, even across a resume), the charts, the summary."""
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not wandb_loggers:
            return
        import wandb

        for entry in report["rounds"]:
            if entry["round"] in self.logged_rounds or entry["status"] != "remedied":
                continue
            table = wandb.Table(columns=["round", "mode", "class", "caption", "score", "support", "error_rate",
                                         "class_error_rate", "acc_before", "test_slice_n", "test_acc_before",
                                         "test_acc_after", "members", "injected"])
            for m in entry["modes"]:
                image = lambda key: wandb.Image(str(self.output_dir / m[key])) if m.get(key) else None  # noqa: E731
                ts = m.get("test_slice", {})
                table.add_data(entry["round"], m["mode_id"], m["class_name"], m["caption"],
                               m["captions"][0][1] if m["captions"] else None, m["support"], m["error_rate"],
                               m["class_error_rate"], m.get("acc_before"), ts.get("n"), ts.get("acc_before"),
                               ts.get("acc_after"), image("thumbnail"), image("generated_thumbnail"))
            for lg in wandb_loggers:
                lg.experiment.log({f"blindspot/round_{entry['round']}/modes": table,
                                   f"blindspot/round_{entry['round']}/generated": entry["generated"],
                                   f"blindspot/round_{entry['round']}/kept": entry["kept"],
                                   f"blindspot/round_{entry['round']}/injected": entry["injected"]})
            self.logged_rounds.append(entry["round"])
        charts = {f"report/charts/{Path(p).stem}": wandb.Image(str(p)) for p in paths.get("charts", [])}
        summary = {f"report/test_{k}": v for k, v in report["metrics"].get("test", {}).items() if isinstance(v, float)}
        summary.update({f"report/discovery_{k}": v for k, v in report.get("discovery", {}).items()
                        if isinstance(v, float)})
        for lg in wandb_loggers:
            if charts:
                lg.experiment.log(charts)
            lg.experiment.summary.update(summary)

    # checkpointed state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"timeline": self.timeline, "baseline": self.baseline, "breakdown": self.breakdown,
                "elapsed": time.time() - self.start, "logged_rounds": list(self.logged_rounds),
                "last": self.last, "extra": self.extra}

    def load_state_dict(self, state_dict: dict) -> None:
        self.timeline = list(state_dict.get("timeline", []))
        self.baseline = dict(state_dict.get("baseline", {}))
        self.breakdown = dict(state_dict.get("breakdown", {}))
        self.start = time.time() - float(state_dict.get("elapsed", 0.0))
        self.logged_rounds = [int(r) for r in state_dict.get("logged_rounds", [])]
        self.last = dict(state_dict.get("last", {}))
        self.extra = dict(state_dict.get("extra", {}))
