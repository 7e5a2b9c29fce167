"""FailureLoopCallback: feeds the failure loop validation predictions and applies what its remedy returns.

A thin adapter over `blindspot.loop.FailureLoop` (which owns CLIP, the rounds and their status). At the end of
each validation epoch it gathers the predictions of every rank, lets the loop decide whether a round runs,
discovers on rank 0 and broadcasts, runs the remedy on every rank (generation is sharded), and applies the
result to the datamodule and the module. All of it happens in `on_validation_epoch_end`, so every reader of
the loop's state at `on_validation_end` (the report, loggers) sees the finished round, whatever the callback
order. Mode accuracies are logged as `blindspot/mode_acc/<mode id>` to every logger.
"""

from __future__ import annotations

import time

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from blindspot.loop import FailureLoop, Round, Split
from blindspot.remedies import RemedyContext, RemedyResult

from .common import gather_by_index, install_head


class FailureLoopCallback(Callback):
    """Run the failure loop's rounds at the end of validation epochs and inject what its remedy makes."""

    def __init__(self, loop: FailureLoop | None = None, progress: bool = True):
        if loop is None:
            raise ValueError("FailureLoopCallback needs the run's failure loop: train.py passes it from the `loop` "
                             "config (use +augment=failure_diffusion or another preset that sets one)")
        self.loop, self.progress = loop, progress
        self._buffers: dict[str, list[torch.Tensor]] = {}

    # the context a remedy sees ------------------------------------------------------------------
    def context(self, trainer: Trainer, pl_module: LightningModule, val_embeddings=None, val_labels=None):
        """The remedy context for this trainer and module."""
        dm = trainer.datamodule

        def pool():
            p = dm.pool_split() if hasattr(dm, "pool_split") else None
            if p is None:
                return None
            return Split(len(p.labels), lambda idx: p.images[idx], p.fingerprint), torch.as_tensor(p.labels).long()

        def gather(obj):
            if trainer.world_size == 1:
                return [obj]
            import torch.distributed as dist

            out = [None] * trainer.world_size
            dist.all_gather_object(out, obj)
            return out

        def features(images):
            from blindspot.baselines.dfr import penultimate_features

            with torch.no_grad():
                return penultimate_features(pl_module.net, pl_module.normalize(images.to(pl_module.device)))

        return RemedyContext(
            clip=self.loop.clip, class_names=list(dm.class_names), predict_proba=pl_module.predict_proba,
            embed=lambda split: self.loop.embed(split, progress=self.progress and trainer.is_global_zero),
            val_embeddings=val_embeddings, val_labels=val_labels, val_images=getattr(dm, "val_images", None),
            features=features, train=lambda: self.train_split(trainer), pool=pool,
            rank=trainer.global_rank, world_size=trainer.world_size, barrier=trainer.strategy.barrier,
            broadcast=lambda obj: trainer.strategy.broadcast(obj, src=0), gather=gather,
            should_stop=lambda: trainer.received_sigterm, progress=self.progress and trainer.is_global_zero,
            hparams=dict(getattr(pl_module, "hparams", {})))

    def val_split(self, trainer: Trainer) -> Split:
        """The validation set as the loop embeds it."""
        dm = trainer.datamodule
        return Split(len(dm.val_set), dm.val_images, dm.val_fingerprint())

    @staticmethod
    def train_split(trainer: Trainer) -> tuple[Split, torch.Tensor] | None:
        """The training set as the loop embeds it, with its labels (None if the datamodule cannot give its images)."""
        dm = trainer.datamodule
        if not hasattr(dm, "train_images"):
            return None
        labels = torch.as_tensor(dm.train_set.labels).long()
        return Split(len(dm.train_set), dm.train_images, dm.train_fingerprint()), labels

    def train_embeddings(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor] | None:
        """CLIP embeddings and labels of the training set, when the loop's ranking needs them."""
        if not self.loop.needs_train_embeddings:
            return None
        split, labels = self.train_split(trainer)
        return self.loop.embed(split, progress=self.progress), labels

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.loop.needs_train_embeddings and not hasattr(trainer.datamodule, "train_images"):
            raise ValueError(f"loop.rank_by={self.loop.rank_by} and loop.trim_covered={self.loop.trim_covered} "
                             "measure training coverage, which needs the datamodule's train_images(indices); "
                             f"{type(trainer.datamodule).__name__} has none: use loop.rank_by=score "
                             "loop.trim_covered=null")
        if stage == "fit" and self.loop.max_rounds > 0 and hasattr(self.loop.remedy, "prepare"):
            initial = self.loop.remedy.prepare(self.context(trainer, pl_module))  # fail now, not after hours
            if isinstance(initial, RemedyResult):
                self.apply(trainer, pl_module, initial)

    # collecting validation outputs --------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._buffers = {"index": [], "preds": [], "labels": []}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if dataloader_idx == 0 and outputs is not None:
            for key, out in (("index", "index"), ("preds", "preds"), ("labels", "label")):
                self._buffers[key].append(outputs[out].detach())

    # the round ------------------------------------------------------------------------------------
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._buffers.get("index"):
            return
        _, preds, labels = gather_by_index(trainer, *(torch.cat(self._buffers[k]) for k in ("index", "preds",
                                                                                            "labels")))
        epoch = trainer.current_epoch
        val_emb = None
        if self.loop.is_due(epoch):
            modes, seconds = None, {}
            if trainer.is_global_zero:  # discover once, then broadcast: every rank gets the same modes
                t0 = time.perf_counter()
                val_emb = self.loop.embed(self.val_split(trainer), progress=self.progress)
                train = self.train_embeddings(trainer)  # None unless the ranking needs them
                seconds["embed"] = time.perf_counter() - t0
                modes, found = self.loop.discover(val_emb, labels, preds, trainer.datamodule.class_names,
                                                  train=train)
                seconds.update(found)
            modes, seconds = trainer.strategy.broadcast((modes, seconds), src=0)
            rnd = self.loop.add_round(epoch, modes, seconds, preds, labels)
            rank_zero_info(f"[blindspot] round {rnd.index} (epoch {epoch + 1}): {len(modes)} failure modes: " + "; ".join(
                f"{m.class_name}: {m.caption!r} ({m.support} samples, error {m.error_rate:.0%} vs "
                f"{m.class_error_rate:.0%})" for m in modes))
        accs = self.loop.track(epoch, preds, labels)
        if accs:
            pl_module.log_dict({f"blindspot/mode_acc/{k}": v for k, v in accs.items()}, on_epoch=True)
        for rnd in self.loop.unfinished():  # normally the newest; after a crash also an interrupted one
            if val_emb is None and trainer.is_global_zero:
                val_emb = self.loop.embed(self.val_split(trainer), progress=self.progress)
            self.remedy(trainer, pl_module, rnd, val_emb, labels)

    def remedy(self, trainer: Trainer, pl_module: LightningModule, rnd: Round, val_emb, val_labels) -> None:
        """Run the remedy on a round and apply its result."""
        context = self.context(trainer, pl_module, val_emb, val_labels)
        try:
            result = self.loop.remedy_round(rnd, context)
        except InterruptedError as err:
            raise SIGTERMException(str(err)) from err  # Lightning's SIGTERM path; resume=<run dir> continues it
        self.apply(trainer, pl_module, result)
        s = result.stats
        rank_zero_info(f"[blindspot] round {rnd.index} ({rnd.remedy}): " + ", ".join(
            f"{k} {s[k]}" for k in ("generated", "kept", "injected") if k in s)
            + (f"; rejected by {s['rejected_by']}" if s.get("rejected_by") else "")
            + f"; training continues on {len(getattr(trainer.datamodule, 'synthetic', []))} injected samples")

    @staticmethod
    def apply(trainer: Trainer, pl_module: LightningModule, result: RemedyResult) -> None:
        """Hand a remedy's result to the datamodule (samples, weights, groups) and the module (group weights)."""
        dm = trainer.datamodule
        if result.records:
            dm.add_samples(result.records)
        if result.sample_weights is not None:
            dm.set_sample_weights(result.sample_weights)
        if result.loss_groups is not None:
            groups, names = result.loss_groups
            dm.set_loss_groups(groups, names)
            if names:
                pl_module.reset_group_weights(len(names))
        if result.head is not None:
            install_head(pl_module, *result.head)

    # checkpointed state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return self.loop.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.loop.load_state_dict(state_dict)
