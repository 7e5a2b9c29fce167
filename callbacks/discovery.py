"""FailureDiscovery: at the end of validation, find and caption the model's blind spots (thin adapter)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from blindspot.captioning import Captioner
from blindspot.clip import ClipModel, load_clip
from blindspot.embedding import embed_dataset
from blindspot.modes import FailureMode

from .common import find_callback, gather_by_index, timed

log = logging.getLogger(__name__)


@dataclass
class Round:
    """One discovery round: when, what was found, and how long each step took."""

    index: int
    epoch: int
    modes: list[FailureMode]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"round": self.index, "epoch": self.epoch, "modes": [m.to_dict() for m in self.modes],
                "seconds": dict(self.seconds)}

    @classmethod
    def from_dict(cls, d: dict) -> "Round":
        return cls(d["round"], d["epoch"], [FailureMode.from_dict(m) for m in d["modes"]], dict(d["seconds"]))


class FailureDiscovery(Callback):
    """Every `every_n_epochs` validation epochs from `start_epoch` (at most `max_rounds` times): embed the
    validation set with CLIP (cached), find failure modes, caption them, and hand them on (`pending`)."""

    def __init__(self, discovery: Callable, captioner: Captioner, clip: dict, every_n_epochs: int = 1,
                 start_epoch: int = 1, max_rounds: int = 1, max_modes: int = 4, cache_dir: str | None = None,
                 progress: bool = True):
        if every_n_epochs < 1 or start_epoch < 0 or max_rounds < 0 or max_modes < 1:
            raise ValueError("FailureDiscovery needs every_n_epochs >= 1, start_epoch >= 0, max_rounds >= 0, "
                             "max_modes >= 1")
        self.discovery, self.captioner, self.clip_cfg = discovery, captioner, dict(clip)
        self.every_n_epochs, self.start_epoch, self.max_rounds = every_n_epochs, start_epoch, max_rounds
        self.max_modes, self.cache_dir, self.progress = max_modes, cache_dir, progress
        self.rounds: list[Round] = []
        self.pending: Round | None = None  # the newest round, until a consumer takes it
        self.mode_accuracy: dict[str, list[dict]] = {}  # mode id -> [{"epoch", "acc"}] on its members
        self.last_val: dict[str, torch.Tensor] = {}
        self._clip: ClipModel | None = None
        self._embeddings: torch.Tensor | None = None
        self._buffers: dict[str, list[torch.Tensor]] = {}

    # shared resources ---------------------------------------------------------------------------
    @property
    def clip(self) -> ClipModel:
        """The CLIP model (loaded on first use, on the module's device)."""
        if self._clip is None:
            self._clip = load_clip(**self.clip_cfg)
        return self._clip

    def embeddings(self, trainer: Trainer) -> torch.Tensor:
        """CLIP embeddings of the validation set (computed once, cached on disk by fingerprint)."""
        if self._embeddings is None:
            dm = trainer.datamodule
            n = len(dm.val_set)
            self._embeddings = embed_dataset(self.clip, n, dm.val_images, dm.val_fingerprint(), self.cache_dir,
                                             progress=self.progress and trainer.is_global_zero)
        return self._embeddings

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.max_rounds > 0:
            _ = self.clip  # load (or fail with a clear message) now, not after hours of training

    # collecting validation outputs --------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._buffers = {"index": [], "preds": [], "labels": [], "probs": []}

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if dataloader_idx == 0 and outputs is not None:
            for key, out in (("index", "index"), ("preds", "preds"), ("labels", "label"), ("probs", "probs")):
                self._buffers[key].append(outputs[out].detach())

    def should_run(self, epoch: int) -> bool:
        """Whether a discovery round runs at the end of this (0-based) epoch's validation."""
        e = epoch + 1  # epochs counted from 1 in the config
        return (len(self.rounds) < self.max_rounds and e >= self.start_epoch
                and (e - self.start_epoch) % self.every_n_epochs == 0
                and not any(r.epoch == epoch for r in self.rounds))

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self._buffers.get("index"):
            return
        index, preds, labels, probs = gather_by_index(
            trainer, *(torch.cat(self._buffers[k]) for k in ("index", "preds", "labels", "probs")))
        self.last_val = {"index": index, "preds": preds, "labels": labels, "probs": probs}
        for r in self.rounds:  # accuracy curve of every known mode on its members
            for m in r.modes:
                acc = float((preds[m.members] == labels[m.members]).float().mean())
                self.mode_accuracy.setdefault(m.mode_id, []).append({"epoch": trainer.current_epoch, "acc": acc})
        if not self.should_run(trainer.current_epoch):
            return
        seconds: dict[str, float] = {}
        modes = None
        if trainer.is_global_zero:  # discover once, then broadcast: every rank gets the same modes
            with timed(seconds, "embed"):
                emb = self.embeddings(trainer)
            with timed(seconds, "discover"):
                modes = self.discovery(emb, labels, preds, trainer.datamodule.class_names)[: self.max_modes]
            with timed(seconds, "caption"):
                self.captioner(modes, self.clip.encode_texts, emb, labels)
        modes, seconds = trainer.strategy.broadcast((modes, seconds), src=0)
        index_ = len(self.rounds)
        for m in modes:
            m.round, m.mode_id = index_, f"r{index_}-{m.mode_id}"
            acc = float((preds[m.members] == labels[m.members]).float().mean())
            self.mode_accuracy[m.mode_id] = [{"epoch": trainer.current_epoch, "acc": acc}]
        self.pending = Round(index_, trainer.current_epoch, modes, seconds)
        self.rounds.append(self.pending)
        rank_zero_info(f"[blindspot] round {index_} (epoch {trainer.current_epoch + 1}): {len(modes)} failure "
                       f"modes: " + "; ".join(f"{m.class_name}: {m.caption!r} ({m.support} samples, error "
                                              f"{m.error_rate:.0%} vs {m.class_error_rate:.0%})" for m in modes))

    def take_pending(self, trainer: Trainer) -> Round | None:
        """The round found at this validation, handed to one consumer (None during sanity checks or when none)."""
        if trainer.sanity_checking:
            return None
        rnd, self.pending = self.pending, None
        return rnd

    # checkpointed state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"rounds": [r.to_dict() for r in self.rounds], "mode_accuracy": self.mode_accuracy}

    def load_state_dict(self, state_dict: dict) -> None:
        self.rounds = [Round.from_dict(r) for r in state_dict.get("rounds", [])]
        self.mode_accuracy = dict(state_dict.get("mode_accuracy", {}))
        self.pending = None


def require_discovery(trainer: Trainer, consumer: str, augment: str) -> FailureDiscovery:
    """The run's FailureDiscovery callback; a consumer without one fails at setup, naming the preset that adds it."""
    discovery = find_callback(trainer, FailureDiscovery)
    if discovery is None:
        raise ValueError(f"{consumer} needs a FailureDiscovery callback (use +augment={augment})")
    return discovery


def take_pending_round(trainer: Trainer) -> tuple[FailureDiscovery | None, Round | None]:
    """The FailureDiscovery callback and the round it has ready for one consumer (no round: None)."""
    discovery = find_callback(trainer, FailureDiscovery)
    return discovery, discovery.take_pending(trainer) if discovery else None
