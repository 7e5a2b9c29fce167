"""The built-in world as a datamodule: rendered shapes on textured backgrounds with planted shortcuts."""

from __future__ import annotations

import logging
from typing import Sequence

from blindspot.world.dataset import (Planted, SplitSizes, WorldSplit, build_split, check_pool, group_names,
                                     planted_slices, validate_planted)
from blindspot.world.spec import WorldSpec

from .base import BlindspotDataModule
from .datasets import TensorImageDataset

log = logging.getLogger(__name__)


class WorldDataModule(BlindspotDataModule):
    """Train on a world with planted correlations; validate and test on splits balanced over groups."""

    def __init__(
        self,
        classes: Sequence[str],
        backgrounds: Sequence[str],
        colors: Sequence[str],
        sizes: Sequence[str],
        planted: Sequence[dict],
        image_size: int = 32,
        train_per_class: int = 1000,
        val_per_group: int = 20,
        test_per_group: int = 50,
        pool_per_class: int = 500,
        pool: str = "uniform",
        seed: int = 0,
        cache_dir: str | None = None,
        **loader_kwargs,
    ):
        super().__init__(image_size=image_size, **loader_kwargs)
        self.spec = WorldSpec(tuple(classes), tuple(backgrounds), tuple(colors), tuple(sizes), image_size)
        self.planted = [Planted(**dict(p)) for p in planted]
        validate_planted(self.spec, self.planted)
        self.sizes = SplitSizes(train_per_class, val_per_group, test_per_group, pool_per_class)
        check_pool(pool)
        self.seed, self.cache_dir, self.pool = seed, cache_dir, pool
        self.splits: dict[str, WorldSplit] = {}

    @property
    def class_names(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def group_names(self) -> list[str]:
        return group_names(self.spec, self.planted)

    def split(self, name: str) -> WorldSplit:
        """A rendered split ('train', 'val', 'test' or the unlabelled 'pool'), built once."""
        if name not in self.splits:
            self.splits[name] = build_split(self.spec, self.planted, name, self.sizes, self.seed, self.cache_dir,
                                            pool=self.pool)
        return self.splits[name]

    def prepare_data(self) -> None:
        for name in ("train", "val", "test"):
            build_split(self.spec, self.planted, name, self.sizes, self.seed, self.cache_dir)

    def setup(self, stage: str | None = None) -> None:
        self.resolve_preprocessing()
        if self.train_set is None:
            train, val, test = (self.split(s) for s in ("train", "val", "test"))
            self.train_set = TensorImageDataset(train.images, train.labels, train.groups, hflip=self.hflip)
            self.val_set = TensorImageDataset(val.images, val.labels, val.groups)
            self.test_set = TensorImageDataset(test.images, test.labels, test.groups)
            self._apply_weights()
            log.info("world: %d train / %d val / %d test images, %d groups", len(train), len(val), len(test),
                     len(self.group_names))

    def val_fingerprint(self) -> str:
        return self.split("val").fingerprint

    def train_fingerprint(self) -> str:
        return self.split("train").fingerprint

    def test_fingerprint(self) -> str:
        return self.split("test").fingerprint

    def pool_split(self) -> WorldSplit:
        """The unlabelled-style pool retrieval draws from (with class labels): `pool="uniform"` spreads it evenly over
        attribute values, `pool="train"` draws it like the training set, so its blind spots are as rare there."""
        return self.split("pool")

    def planted_slices(self) -> list[dict]:
        """Ground truth for discovery scores: the rare (class, value) combinations (evaluation only)."""
        return planted_slices(self.spec, self.planted)
