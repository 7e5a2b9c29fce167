"""The remedy contract: (round, context) -> result. Lightning-free; the loop's adapter fills the context.

A remedy turns one discovered round into something training can use: samples to inject (generated, edited or
retrieved images), per-sample loss weights, or loss groups. It may keep state of its own (`state_dict`), and
it checks what it needs before training starts (`prepare`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import torch


@dataclass
class RemedyContext:
    """What a remedy may use: CLIP, the embeddings, the current classifier, the data, and the ranks."""

    clip: Any  # blindspot.clip.ClipModel
    class_names: list[str]
    predict_proba: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> probs, prepared as the train loader does
    embed: Callable[[Any], torch.Tensor]  # Split -> its CLIP embeddings (cached)
    val_embeddings: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    val_images: Callable[[list[int]], torch.Tensor] | None = None  # validation images (uint8) by index
    features: Callable[[torch.Tensor], torch.Tensor] | None = None  # uint8 images -> the classifier's penultimate features
    train: Callable[[], tuple[Any, torch.Tensor] | None] = lambda: None  # (Split, labels) of the training set
    pool: Callable[[], tuple[Any, torch.Tensor] | None] = lambda: None  # (Split, weak labels) of a pool, or None
    rank: int = 0
    world_size: int = 1
    barrier: Callable[[str], None] = lambda name: None
    broadcast: Callable[[Any], Any] = lambda obj: obj  # rank 0's object on every rank
    gather: Callable[[Any], list] = lambda obj: [obj]  # every rank's object, in rank order
    should_stop: Callable[[], bool] = lambda: False  # e.g. SIGTERM received: stop between batches
    progress: bool = True
    hparams: dict = field(default_factory=dict)  # the classifier's hyper-parameters (e.g. its loss)

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0


@dataclass
class RemedyResult:
    """What a remedy gives training: samples to inject, loss weights, loss groups, and what it did."""

    records: list[dict] = field(default_factory=list)  # {path, label, source, round, mode_id, ...} to inject
    sample_weights: dict[int, float] | None = None  # train index -> loss weight
    loss_groups: tuple[torch.Tensor, list[str]] | None = None  # a group per train sample, and the group names
    head: tuple[torch.Tensor, torch.Tensor] | None = None  # new weight and bias of the classifier's last layer
    stats: dict = field(default_factory=dict)  # generated / kept / injected / rejected_by / ... for the report
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per stage


@runtime_checkable
class Remedy(Protocol):
    """A plugin turning a round into training data or weights."""

    name: str

    def __call__(self, rnd: Any, context: RemedyContext) -> RemedyResult:
        """Remedy one round (every rank calls it; the remedy shards or broadcasts as it needs)."""


def check_writable(folder: str | Path, key: str) -> None:
    """Fail early with a clear message when a remedy's output folder cannot be written."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise PermissionError(f"cannot write to {folder}: {err}. Free disk space or point {key} (or hydra.run.dir) "
                              "at a writable folder") from err
