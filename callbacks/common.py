"""Small helpers the Blindspot callbacks share: gathering across ranks, finding each other, timing."""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import TypeVar

import torch
from lightning import Callback, Trainer

C = TypeVar("C", bound=Callback)


def find_callback(trainer: Trainer, kind: type[C]) -> C | None:
    """The trainer's first callback of a given type, or None."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def gather_by_index(trainer: Trainer, index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """All ranks' per-sample values, ordered by dataset index, padding duplicates (DistributedSampler) removed."""
    if trainer.world_size > 1:
        index = trainer.strategy.all_gather(index).reshape(-1)
        values = tuple(trainer.strategy.all_gather(v).reshape(-1, *v.shape[1:]) for v in values)
    index = index.cpu()
    order = torch.argsort(index, stable=True)
    index = index[order]
    first = torch.ones_like(index, dtype=torch.bool)
    first[1:] = index[1:] != index[:-1]
    return (index[first], *(v.cpu()[order][first] for v in values))


@contextmanager
def timed(store: dict, key: str):
    """Add the wall time of a block to store[key] (seconds)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        store[key] = store.get(key, 0.0) + time.perf_counter() - start
