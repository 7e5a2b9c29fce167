"""The datamodule contract every Blindspot datamodule keeps: splits, names, and a synthetic-sample pool."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from lightning import LightningDataModule
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from blindspot.images import DEFAULT_INTERPOLATION, check_interpolation, resize_images

from .datasets import FileImageDataset

log = logging.getLogger(__name__)


class SeededShuffle(Sampler[int]):
    """A random order that depends only on its seed: iterating it twice (as Lightning may) gives the same order."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return iter(torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed)).tolist())


class BlindspotDataModule(LightningDataModule):
    """Train/val/test splits plus a pool of injected samples that the train loader concatenates.

    Subclasses set `train_set`, `val_set`, `test_set` in `setup` and define `class_names` and `group_names`.
    `add_samples` appends to the pool; the pool (and any per-sample weights) travel in `state_dict`, so a
    resumed run trains on exactly what was injected. Image files are squashed to `image_size` with the
    `interpolation` filter; either left null follows the classifier the trainer holds (its timm pretrained
    config, see `ImageClassifier.preprocessing`), which normalises its input itself.
    """

    def __init__(self, batch_size: int = 128, num_workers: int = 0, image_size: int | None = 32,
                 synthetic_repeat: int = 1, synthetic_weight: float = 1.0, hflip: bool = True,
                 pin_memory: bool = False, shuffle_seed: int = 0, interpolation: str | None = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"data.batch_size={batch_size}: must be >= 1")
        if image_size is not None and int(image_size) < 1:
            raise ValueError(f"data.image_size={image_size}: must be a positive number of pixels (or null)")
        if interpolation is not None:
            check_interpolation(interpolation)
        self.batch_size, self.num_workers = batch_size, num_workers
        self._configured_sizing = (None if image_size is None else int(image_size), interpolation)
        self._model_sizing: tuple[int | None, str | None] = (None, None)
        self.image_size, self.interpolation = self._configured_sizing  # final values: see resolve_preprocessing
        self.synthetic_repeat, self.synthetic_weight = synthetic_repeat, synthetic_weight
        self.hflip, self.pin_memory, self.shuffle_seed = hflip, pin_memory, shuffle_seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.synthetic: list[dict] = []  # records: path, label, and provenance (mode, prompt, seed, round, ...)
        self._weight_overrides: dict[int, float] = {}
        self.loss_groups: torch.Tensor | None = None  # per real train sample: the group a group-DRO loss uses
        self.loss_group_names: list[str] = []

    # names ---------------------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def group_names(self) -> list[str]:
        """Names of ground-truth groups (empty when the data has none)."""
        return []

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    # how images are sized ---------------------------------------------------------------------------
    def use_preprocessing(self, image_size: int | None, interpolation: str | None) -> None:
        """Take a classifier's preferred side and resize filter for data.image_size / data.interpolation left null."""
        self._model_sizing = (None if image_size is None else int(image_size),
                              None if interpolation is None else check_interpolation(interpolation))
        self.resolve_preprocessing()

    def resolve_preprocessing(self) -> None:
        """Set `image_size` / `interpolation`: as configured, else the classifier's (timm's pretrained config), else
        the defaults; the classifier is the one given to `use_preprocessing` or held by the trainer."""
        size, interpolation = self._model_sizing
        model = getattr(getattr(self, "trainer", None), "lightning_module", None)
        prep = getattr(model, "preprocessing", None)
        if prep is not None and size is None and interpolation is None:
            size, interpolation = prep.image_size, prep.interpolation
        before = (self.image_size, self.interpolation)
        self.image_size = self._configured_sizing[0] or size
        self.interpolation = self._configured_sizing[1] or interpolation or DEFAULT_INTERPOLATION
        if (self.image_size, self.interpolation) != before and None not in (size, interpolation) and (
                self._configured_sizing[0] is None or self._configured_sizing[1] is None):
            log.info("data: image files resized to %s px with %s, as the classifier asks (data.image_size=%s, "
                     "data.interpolation=%s as configured)", self.image_size, self.interpolation,
                     self._configured_sizing[0], self._configured_sizing[1])
        if self.image_size is None:
            raise ValueError("data.image_size=null takes the side from the classifier, and there is none here: set "
                             "data.image_size=<pixels> (or call datamodule.use_preprocessing(size, interpolation))")

    def resize_like_loader(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images of any size exactly as the loaders make them from files (side and filter)."""
        self.resolve_preprocessing()
        return resize_images(images, self.image_size, self.interpolation)

    # the synthetic pool --------------------------------------------------------------------------
    def add_samples(self, records: Sequence[dict]) -> int:
        """Append samples ({'path', 'label', ...provenance}) to the pool; returns how many were new."""
        known = {r["path"] for r in self.synthetic}
        added = 0
        for r in records:
            if "path" not in r or "label" not in r:
                raise ValueError(f"add_samples needs 'path' and 'label' in every record, got keys {sorted(r)}")
            if not 0 <= int(r["label"]) < self.num_classes:
                raise ValueError(f"label {r['label']} out of range for {self.num_classes} classes")
            if r["path"] not in known:
                self.synthetic.append(dict(r))
                known.add(r["path"])
                added += 1
        if added:
            log.info("synthetic pool: +%d samples (now %d); the train loader uses them from the next epoch",
                     added, len(self.synthetic))
        return added

    def set_sample_weights(self, weights: dict[int, float]) -> None:
        """Per-sample loss weights of real train samples by index (e.g. JTT's upweighted errors)."""
        self._weight_overrides = {int(k): float(v) for k, v in weights.items()}
        self._apply_weights()

    def set_loss_groups(self, groups: torch.Tensor, names: Sequence[str]) -> None:
        """Groups (index into `names`, -1 = none) of the real train samples that batches carry as 'loss_group'."""
        groups = torch.as_tensor(groups, dtype=torch.long).clone()
        if self.train_set is not None and len(groups) != len(self.train_set):
            raise ValueError(f"{len(groups)} loss groups for {len(self.train_set)} train samples")
        if len(groups) and int(groups.max()) >= len(names):
            raise ValueError(f"loss group {int(groups.max())} has no name ({len(names)} names)")
        self.loss_groups, self.loss_group_names = groups, list(names)
        self._apply_weights()

    def _apply_weights(self) -> None:
        if self.train_set is not None and hasattr(self.train_set, "weights"):
            self.train_set.weights.fill_(1.0)
            for i, w in self._weight_overrides.items():
                self.train_set.weights[i] = w
        if self.train_set is not None and self.loss_groups is not None:
            self.train_set.loss_groups = self.loss_groups

    def synthetic_dataset(self) -> Dataset | None:
        """The pool as a dataset (indices after the real train set), or None when empty."""
        if not self.synthetic:
            return None
        self.resolve_preprocessing()
        ds = FileImageDataset([r["path"] for r in self.synthetic], [int(r["label"]) for r in self.synthetic],
                              image_size=self.image_size, hflip=self.hflip, index_offset=len(self.train_set),
                              interpolation=self.interpolation)
        ds.weights.fill_(self.synthetic_weight)
        if self.loss_groups is not None:  # injected samples join no loss group (plain ERM term)
            ds.loss_groups = torch.full((len(ds),), -1, dtype=torch.long)
        return ds

    # loaders -------------------------------------------------------------------------------------
    def _loader(self, dataset: Dataset, sampler: Sampler | None = None, train: bool = False) -> DataLoader:
        # a train batch of one image breaks BatchNorm; injected samples change the train size every round
        drop_last = train and len(dataset) % self.batch_size == 1
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=False, drop_last=drop_last)

    @property
    def epoch(self) -> int:
        """The trainer's current epoch (0 outside a fit)."""
        trainer = getattr(self, "trainer", None)
        return int(trainer.current_epoch) if trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        """Real + injected samples; order and flips depend only on (shuffle_seed, epoch): resumes are exact."""
        parts = [self.train_set]
        synthetic = self.synthetic_dataset()
        if synthetic is not None:
            parts += [synthetic] * self.synthetic_repeat
        for part in parts:
            part.flip_seed = self.shuffle_seed * 100_003 + self.epoch
        dataset = ConcatDataset(parts) if len(parts) > 1 else parts[0]
        return self._loader(dataset, SeededShuffle(len(dataset), self.shuffle_seed * 100_003 + self.epoch), train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set)

    def val_fingerprint(self) -> str:
        """Identifies the validation images (for embedding caches)."""
        return _fingerprint(self.val_set)

    def test_fingerprint(self) -> str:
        """Identifies the test images (for embedding caches)."""
        return _fingerprint(self.test_set)

    def test_images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 test images (all, or the given indices) without augmentation."""
        return _images(self.test_set, indices)

    def val_images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 validation images (all, or the given indices) without augmentation."""
        return _images(self.val_set, indices)

    def train_fingerprint(self) -> str:
        """Identifies the real training images (for embedding caches)."""
        return _fingerprint(self.train_set)

    def train_images(self, indices: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 real training images (all, or the given indices) without augmentation."""
        return _images(self.train_set, indices)

    def pool_split(self):
        """The weakly labelled pool (`.images` uint8, `.labels`, `.fingerprint`) for retrieval, or None."""
        return None

    # checkpointed state --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"synthetic": [dict(r) for r in self.synthetic], "weights": dict(self._weight_overrides),
                "loss_groups": None if self.loss_groups is None else self.loss_groups.tolist(),
                "loss_group_names": list(self.loss_group_names)}

    def load_state_dict(self, state: dict) -> None:
        self.synthetic = [dict(r) for r in state.get("synthetic", [])]
        missing = [r["path"] for r in self.synthetic if not Path(r["path"]).is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} injected samples from the checkpoint are missing on disk (e.g. {missing[0]}); "
                "resume in the original run directory (`resume=<run dir>`) or restore its generated/ folder")
        self._weight_overrides = {int(k): float(v) for k, v in state.get("weights", {}).items()}
        if state.get("loss_groups") is not None:
            self.loss_groups = torch.as_tensor(state["loss_groups"], dtype=torch.long)
            self.loss_group_names = list(state.get("loss_group_names", []))
        self._apply_weights()


def _fingerprint(ds: Dataset) -> str:
    """A short hash of a dataset's file paths and how they are resized (or its type and length when in memory)."""
    import hashlib

    key = "|".join(getattr(ds, "paths", [])) or f"{type(ds).__name__}:{len(ds)}"
    if getattr(ds, "paths", None):  # files are loaded resized: another side or filter gives other images
        key += f"|{getattr(ds, 'image_size', '')}|{getattr(ds, 'interpolation', '')}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _images(ds: Dataset, indices: Sequence[int] | None) -> torch.Tensor:
    """uint8 images of a split (all, or the given indices) without augmentation."""
    idx = list(range(len(ds))) if indices is None else list(indices)
    if hasattr(ds, "images") and isinstance(ds.images, torch.Tensor):
        return ds.images[idx]
    return ds.images(idx)
