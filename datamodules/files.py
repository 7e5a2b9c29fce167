"""Shared base of datamodules that read images from files: a lazily built index (class names are known
before `setup`), files checked before training starts, and unreadable images stopping the run with a list of
them or skipped and counted."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from blindspot.images import UnreadableImageError, find_unreadable

from .base import BlindspotDataModule
from .datasets import FileImageDataset

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
BAD_IMAGE_CHOICES = ("error", "skip")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image file with its class index and ground-truth group (-1 when unknown)."""

    path: str
    label: int
    group: int = -1


def stratified_split(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[int]:
    """Part of each sample: 0 (the rest) or k for the k-th fraction, drawn per class, reproducible by seed."""
    labels = np.asarray(labels, dtype=np.int64)
    parts = np.zeros(len(labels), dtype=np.int64)
    rng = np.random.default_rng(seed)
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        start = 0
        for k, fraction in enumerate(fractions, start=1):
            n = int(round(fraction * len(members)))
            parts[members[start:start + n]] = k
            start += n
    return parts.tolist()


def id_like_names(names: Sequence[str]) -> list[str]:
    """Class names that are ids rather than words ("0", "12", WordNet's "n01440764"): CLIP cannot read them."""
    return [n for n in names if re.fullmatch(r"-?\d+(\.\d+)?|n\d{8}", str(n).strip())]


def _fingerprint(paths: Sequence[str]) -> str:
    """Changes when any file is added, removed, resized or touched."""
    h = hashlib.sha1()
    for p in sorted(set(paths)):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def find_bad_images(paths: Sequence[str], verify: bool, cache_dir: str | None = None,
                    desc: str = "verifying images") -> list[tuple[str, str]]:
    """(path, reason) for files that are missing (always checked) or do not decode (when `verify`)."""
    bad = [(p, "file not found") for p in dict.fromkeys(paths) if not os.path.isfile(p)]
    if not verify:
        return bad
    missing = {p for p, _ in bad}
    present = [p for p in dict.fromkeys(paths) if p not in missing]
    cache = Path(cache_dir) / f"{_fingerprint(present)}.json" if cache_dir and present else None
    if cache is not None and cache.is_file():
        return bad + [tuple(x) for x in json.loads(cache.read_text())]
    undecodable = find_unreadable(tqdm(present, desc=desc, disable=len(present) < 2000, leave=False))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(undecodable))
        os.replace(tmp, cache)
    return bad + undecodable


class FileDataModule(BlindspotDataModule):
    """A datamodule over image files: subclasses build the index (`_build_index`), this class checks and loads."""

    source = "files"  # names the datamodule in messages

    def __init__(self, root: str | None, image_size: int | None = 224, val_fraction: float = 0.1,
                 test_fraction: float = 0.1, seed: int = 0, verify_images: bool = True,
                 on_bad_image: str = "error", verify_cache_dir: str | None = None, **loader_kwargs):
        super().__init__(image_size=image_size, **loader_kwargs)
        if on_bad_image not in BAD_IMAGE_CHOICES:
            raise ValueError(f"data.on_bad_image={on_bad_image!r}: choose one of {BAD_IMAGE_CHOICES}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 <= value < 1.0:
                raise ValueError(f"data.{key}={value}: must be in [0, 1)")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(f"data.val_fraction + data.test_fraction = {val_fraction + test_fraction}: "
                             "must be < 1 to leave images for training")
        self.root = root
        self.val_fraction, self.test_fraction, self.seed = val_fraction, test_fraction, seed
        self.verify_images, self.on_bad_image, self.verify_cache_dir = verify_images, on_bad_image, verify_cache_dir
        self.bad_images: list[tuple[str, str]] = []  # (path, reason) of images left out by on_bad_image=skip
        self._index: dict[str, list[Sample]] | None = None
        self._class_names: list[str] = []

    # the index ------------------------------------------------------------------------------------
    def _build_index(self) -> tuple[dict[str, list[Sample]], list[str]]:
        """Samples per split and the class names; must check its inputs and be cheap (no decoding)."""
        raise NotImplementedError

    def _root(self) -> Path:
        """The data root, or an error that says which key to set."""
        if self.root in (None, "", "???") or not Path(str(self.root)).is_dir():
            raise FileNotFoundError(
                f"{self.source}: data.root={self.root!r} is not a folder; set data.root=<folder with your images> "
                f"(e.g. `python train.py data={self.source} data.root=/path/to/dataset`)")
        return Path(str(self.root))

    def index(self) -> dict[str, list[Sample]]:
        """Samples per split ('train', 'val', 'test'), built once from the files on disk."""
        if self._index is None:
            self._index, self._class_names = self._build_index()
        return self._index

    def _carve(self, samples: list[Sample], splits: Sequence[str]) -> dict[str, list[Sample]]:
        """Split samples into 'train' and the given held-out splits by their fractions, stratified by class."""
        fractions = [{"val": self.val_fraction, "test": self.test_fraction}[s] for s in splits]
        parts = stratified_split([s.label for s in samples], fractions, self.seed)
        names = ["train", *splits]
        out: dict[str, list[Sample]] = {n: [] for n in names}
        for sample, part in zip(samples, parts):
            out[names[part]].append(sample)
        self._log.info("%s: carved %s out of the training images (data.val_fraction=%s, data.test_fraction=%s, "
                       "data.seed=%s)", self.source, "/".join(splits), self.val_fraction, self.test_fraction, self.seed)
        return out

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)

    @property
    def class_names(self) -> list[str]:
        self.index()
        return list(self._class_names)

    @property
    def skipped_images(self) -> int:
        """How many images were left out because they are missing or do not decode (on_bad_image=skip)."""
        return len(self.bad_images)

    # setup -----------------------------------------------------------------------------------------
    def _screen(self, index: dict[str, list[Sample]]) -> dict[str, list[Sample]]:
        """Drop (skip) or report (error) samples whose files are missing or do not decode."""
        paths = [s.path for split in index.values() for s in split]
        bad = find_bad_images(paths, self.verify_images, self.verify_cache_dir, desc=f"{self.source}: verifying")
        if not bad:
            return index
        listing = "; ".join(f"{p} ({why})" for p, why in bad[:5]) + (f"; ... {len(bad) - 5} more" if len(bad) > 5
                                                                       else "")
        if self.on_bad_image == "error":
            raise UnreadableImageError(
                f"{self.source}: {len(bad)} of {len(set(paths))} images are missing or do not decode: {listing}. "
                "Fix or remove them, or set data.on_bad_image=skip to train without them")
        drop = {p for p, _ in bad}
        self.bad_images = bad
        self._log.warning("%s: skipping %d of %d images that are missing or do not decode "
                          "(data.on_bad_image=skip): %s", self.source, len(bad), len(set(paths)), listing)
        return {split: [s for s in samples if s.path not in drop] for split, samples in index.items()}

    def _dataset(self, samples: list[Sample], hflip: bool) -> FileImageDataset:
        return FileImageDataset([s.path for s in samples], [s.label for s in samples], [s.group for s in samples],
                                image_size=self.image_size, hflip=hflip, interpolation=self.interpolation)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.resolve_preprocessing()
        index = self._screen(self.index())
        empty = [s for s in SPLITS if not index.get(s)]
        if empty:
            raise ValueError(f"{self.source}: no images in the {'/'.join(empty)} split(s) of {self.root}; "
                             f"{self._empty_split_hint()}")
        self.train_set = self._dataset(index["train"], self.hflip)
        self.val_set = self._dataset(index["val"], False)
        self.test_set = self._dataset(index["test"], False)
        self._apply_weights()
        self._log.info("%s: %d train / %d val / %d test images, %d classes, %d groups%s", self.source,
                       len(index["train"]), len(index["val"]), len(index["test"]), self.num_classes,
                       len(self.group_names), f", {self.skipped_images} skipped" if self.skipped_images else "")
        if self.group_names:
            counts = self.train_set.groups.bincount(minlength=len(self.group_names)).tolist()
            self._log.info("%s: train images per group: %s", self.source,
                           ", ".join(f"{name} {n}" for name, n in zip(self.group_names, counts)))

    def _empty_split_hint(self) -> str:
        return "add images or raise data.val_fraction / data.test_fraction"
