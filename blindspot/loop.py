"""The failure loop: one owner of CLIP, the validation embeddings, the rounds and each round's status.

Lightning-free. A round is discovered (failure modes found and captioned on the validation errors), then
remedied (a remedy plugin turns it into samples to inject, sample weights or groups). The loop alone decides
when a round runs; adapters (the Lightning callback) feed it predictions and apply what a remedy returns;
readers (the report, loggers) read `rounds` and `mode_accuracy`. Its whole changing state is `state_dict()`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .clip import ClipModel
from .discovery.coverage import median_coverage, member_coverages, uncovered
from .embedding import embed_dataset
from .modes import FailureMode
from .remedies.base import Remedy, RemedyContext, RemedyResult

log = logging.getLogger(__name__)

STATUSES = ("discovered", "remedied")
RANKINGS = ("score", "uncovered")


@dataclass
class Round:
    """One round of the loop: when, what was found, what the remedy did, how long each step took."""

    index: int
    epoch: int
    modes: list[FailureMode]
    status: str = "discovered"
    remedy: str = ""
    stats: dict = field(default_factory=dict)  # the remedy's result stats (generated, kept, injected, ...)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {"round": self.index, "epoch": self.epoch, "modes": [m.to_dict() for m in self.modes],
                "status": self.status, "remedy": self.remedy, "stats": dict(self.stats),
                "seconds": dict(self.seconds)}

    @classmethod
    def from_dict(cls, d: dict) -> "Round":
        """Inverse of `to_dict`."""
        return cls(d["round"], d["epoch"], [FailureMode.from_dict(m) for m in d["modes"]], d.get("status", "remedied"),
                   d.get("remedy", ""), dict(d.get("stats", {})), dict(d.get("seconds", {})))


@dataclass
class Split:
    """What the loop needs of a fixed image set: its size, its images by index, and a fingerprint."""

    n: int
    images: Callable[[list[int]], torch.Tensor]
    fingerprint: str


class FailureLoop:
    """Every `every_n_epochs` validation epochs from `start_epoch` (1-based; at most `max_rounds` times): find
    failure modes in CLIP space, rank them (`rank_by`), caption the first `max_modes`, and hand them to the remedy.

    `rank_by="uncovered"` multiplies each mode's slice score by (1 - its training coverage): a slice that training
    images barely reach (a blind spot more data can fix) outranks an equally failed slice that they cover well (a
    hard group), and, since remedies split their budget by score, it also gets more of the round's images.
    It is conf/loop's default; the constructor's is "score", which needs no training embeddings.

    `trim_covered=q` then cuts each mode down to its members that training covers less than a share q of the
    class's training images cover each other, when at least the discovery's `min_support` of them are left: a slice
    that mixes a blind spot with a hard group the training images reach (e.g. circles on grass, never seen, with
    circles on brick, hard everywhere) keeps the blind spot. None keeps every member.
    """

    def __init__(self, discovery: Callable, captioner: Callable, clip: ClipModel, remedy: Remedy | None = None,
                 start_epoch: int = 1, every_n_epochs: int = 1, max_rounds: int = 1, max_modes: int = 4,
                 rank_by: str = "score", coverage_k: int = 5, trim_covered: float | None = None,
                 cache_dir: str | None = None, progress: bool = True):
        if every_n_epochs < 1 or start_epoch < 0 or max_rounds < 0 or max_modes < 1:
            raise ValueError("loop needs every_n_epochs >= 1, start_epoch >= 0, max_rounds >= 0, max_modes >= 1 "
                             "(loop.every_n_epochs, loop.start_epoch, loop.max_rounds, loop.max_modes)")
        if rank_by not in RANKINGS:
            raise ValueError(f"loop.rank_by={rank_by!r}: use one of {', '.join(RANKINGS)}")
        if coverage_k < 1:
            raise ValueError(f"loop.coverage_k must be >= 1 (the training neighbour that measures coverage), got "
                             f"{coverage_k!r}")
        if trim_covered is not None and not 0.0 < trim_covered <= 1.0:
            raise ValueError(f"loop.trim_covered={trim_covered!r}: a share in (0, 1], or null to keep every member")
        self.discovery, self.captioner, self.clip, self.remedy = discovery, captioner, clip, remedy
        self.start_epoch, self.every_n_epochs, self.max_rounds = start_epoch, every_n_epochs, max_rounds
        self.max_modes, self.rank_by, self.coverage_k, self.trim_covered = max_modes, rank_by, coverage_k, trim_covered
        self.cache_dir, self.progress = cache_dir, progress
        self.rounds: list[Round] = []
        self.mode_accuracy: dict[str, list[dict]] = {}  # mode id -> [{"epoch", "acc"}] on its validation members
        self._embeddings: dict[str, torch.Tensor] = {}

    # resources ---------------------------------------------------------------------------------
    def embed(self, split: Split, progress: bool | None = None) -> torch.Tensor:
        """CLIP embeddings of a fixed split (computed once per process, cached on disk by fingerprint)."""
        if split.fingerprint not in self._embeddings:
            self._embeddings[split.fingerprint] = embed_dataset(
                self.clip, split.n, split.images, split.fingerprint, self.cache_dir,
                progress=self.progress if progress is None else progress)
        return self._embeddings[split.fingerprint]

    # schedule ----------------------------------------------------------------------------------
    def is_due(self, epoch: int) -> bool:
        """Whether a round runs at the end of this (0-based) epoch's validation."""
        e = epoch + 1
        return (len(self.rounds) < self.max_rounds and e >= self.start_epoch
                and (e - self.start_epoch) % self.every_n_epochs == 0
                and not any(r.epoch == epoch for r in self.rounds))

    def unfinished(self) -> list[Round]:
        """Rounds discovered but not yet remedied (the newest; after a crash, also an interrupted one)."""
        return [r for r in self.rounds if r.status != "remedied"]

    # steps -------------------------------------------------------------------------------------
    def track(self, epoch: int, preds: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """Record every known mode's accuracy on its validation members at this epoch; returns them."""
        now = {}
        for r in self.rounds:
            for m in r.modes:
                acc = float((preds[m.members] == labels[m.members]).float().mean())
                curve = self.mode_accuracy.setdefault(m.mode_id, [])
                if not curve or curve[-1]["epoch"] != epoch:
                    curve.append({"epoch": epoch, "acc": acc})
                now[m.mode_id] = acc
        return now

    @property
    def needs_train_embeddings(self) -> bool:
        """Whether `discover` needs the training split's embeddings (to rank or trim modes by training coverage)."""
        return self.rank_by == "uncovered" or self.trim_covered is not None

    def discover(self, embeddings: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                 class_names: Sequence[str], train: tuple[torch.Tensor, torch.Tensor] | None = None,
                 ) -> tuple[list[FailureMode], dict[str, float]]:
        """Failure modes (ranked, at most max_modes, captioned) of this validation epoch, and the seconds each step
        took. `train`: (embeddings, labels) of the training split, needed by rank_by="uncovered" and trim_covered."""
        seconds: dict[str, float] = {}
        t0 = time.perf_counter()
        modes = self.discovery(embeddings, labels, preds, list(class_names))
        if self.needs_train_embeddings:
            coverage = self.member_coverages(modes, embeddings, train)
            if self.rank_by == "uncovered":
                modes, coverage = self.rank_by_coverage(modes, coverage)
            if self.trim_covered is not None:  # after ranking: a hard group's few uncovered members must not lift it
                self.trim_to_uncovered(modes, coverage, labels, preds)
        modes = modes[: self.max_modes]
        for m in modes:
            m.set_confusions(preds, labels, list(class_names))
        seconds["discover"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.captioner(modes, self.clip.encode_texts, embeddings, labels, preds)
        self.caption_covered(modes, embeddings, labels, preds)
        seconds["caption"] = time.perf_counter() - t0
        return modes, seconds

    def member_coverages(self, modes: list[FailureMode], embeddings: torch.Tensor,
                         train: tuple[torch.Tensor, torch.Tensor] | None) -> list[torch.Tensor | None]:
        """Each mode's members' training coverage, measured once for ranking and trimming alike."""
        if train is None:
            knob, off = (("loop.rank_by=uncovered", "loop.rank_by=score") if self.rank_by == "uncovered"
                         else ("loop.trim_covered", "loop.trim_covered=null"))
            raise ValueError(f"{knob} needs the training split's CLIP embeddings (the datamodule's train_images); "
                             f"use {off} for data without them")
        return member_coverages(modes, embeddings, *train, k=self.coverage_k)

    def rank_by_coverage(self, modes: list[FailureMode], coverage: list[torch.Tensor | None],
                         ) -> tuple[list[FailureMode], list[torch.Tensor | None]]:
        """The modes re-scored by score x (1 - training coverage), best first (their member coverages in the same
        order); both numbers are kept in `extra`."""
        for m, members in zip(modes, coverage):
            cover = median_coverage(members)
            cover = 0.0 if cover != cover else cover  # NaN: the class has too few training images to cover it
            m.extra.update(slice_score=m.score, train_coverage=cover)
            m.score = m.score * (1.0 - cover)
        order = sorted(range(len(modes)), key=lambda i: -modes[i].score)
        return [modes[i] for i in order], [coverage[i] for i in order]

    def trim_to_uncovered(self, modes: list[FailureMode], coverage: list[torch.Tensor | None], labels: torch.Tensor,
                          preds: torch.Tensor) -> None:
        """Cut each mode to its members training covers less than `trim_covered` (if enough are left); in place. The
        cut members stay in `extra["covered_members"]` (remedy.covered_members may give them real neighbours)."""
        least = getattr(self.discovery, "min_support", 1)
        for m, members in zip(modes, coverage):
            kept = uncovered(m, members, self.trim_covered)
            if len(kept) == len(m.members) or len(kept) < least:
                continue
            cut = sorted(set(m.members) - set(kept))
            m.extra.update(trimmed_from=m.support, trimmed_error_rate_from=m.error_rate, covered_members=cut)
            m.members = kept
            m.error_rate = float((preds[kept] != labels[kept]).float().mean())

    def caption_covered(self, modes: list[FailureMode], embeddings: torch.Tensor, labels: torch.Tensor,
                        preds: torch.Tensor) -> None:
        """Caption each trimmed mode's cut members on their own (what they share, not the mode's direction), into
        `extra["covered_captions"]`: what the part training covers shows (e.g. 'a cross in the night sky')."""
        parts = {m.mode_id: m.covered_part() for m in modes if m.extra.get("covered_members")}
        if parts:
            self.captioner(list(parts.values()), self.clip.encode_texts, embeddings, labels, preds)
        for m in modes:
            if m.mode_id in parts:
                m.extra["covered_captions"] = [[c, float(s)] for c, s in parts[m.mode_id].captions]

    def add_round(self, epoch: int, modes: list[FailureMode], seconds: dict[str, float],
                  preds: torch.Tensor, labels: torch.Tensor) -> Round:
        """Start a round with these modes (ids made unique per round); its accuracy curves begin now."""
        index = len(self.rounds)
        for m in modes:
            m.round, m.mode_id = index, f"r{index}-{m.mode_id}"
        rnd = Round(index, epoch, modes, seconds=dict(seconds),
                    remedy=getattr(self.remedy, "name", "") if self.remedy else "")
        self.rounds.append(rnd)
        for m in modes:
            acc = float((preds[m.members] == labels[m.members]).float().mean())
            self.mode_accuracy[m.mode_id] = [{"epoch": epoch, "acc": acc}]
        return rnd

    def remedy_round(self, rnd: Round, context: RemedyContext) -> RemedyResult:
        """Run the remedy on a round; the round is then 'remedied' with the remedy's stats."""
        if self.remedy is None:
            result = RemedyResult()
        else:
            t0 = time.perf_counter()
            result = self.remedy(rnd, context)
            rnd.seconds["remedy"] = time.perf_counter() - t0
        rnd.stats = dict(result.stats)
        rnd.seconds.update(result.seconds)
        rnd.status = "remedied"
        return result

    # modes on other splits ----------------------------------------------------------------------
    def carry(self, rnd: Round, embeddings: torch.Tensor, labels: torch.Tensor,
              ref_embeddings: torch.Tensor, ref_labels: torch.Tensor) -> dict[str, list[int]]:
        """Each mode of a round carried onto another split (by its direction or centroid): mode id -> indices."""
        from .baselines.groups import mode_direction

        x = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        labels = torch.as_tensor(labels).long()
        out = {}
        for m in rnd.modes:
            d, cut = mode_direction(m, ref_embeddings, ref_labels)
            out[m.mode_id] = torch.nonzero((labels == m.class_index) & (x @ d >= cut)).flatten().tolist()
        return out

    # checkpointed state -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The loop's changing state: rounds (with status and stats) and the mode accuracy curves."""
        state = {"rounds": [r.to_dict() for r in self.rounds], "mode_accuracy": self.mode_accuracy}
        if self.remedy is not None and hasattr(self.remedy, "state_dict"):
            state["remedy"] = self.remedy.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`."""
        self.rounds = [Round.from_dict(r) for r in state.get("rounds", [])]
        self.mode_accuracy = {k: list(v) for k, v in state.get("mode_accuracy", {}).items()}
        if self.remedy is not None and hasattr(self.remedy, "load_state_dict") and "remedy" in state:
            self.remedy.load_state_dict(state["remedy"])
