"""Images listed in a metadata CSV (the Waterbirds / CelebA layout) with labels, splits and group attributes."""

from __future__ import annotations

import csv
import itertools
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Mapping, Sequence

from .files import SPLITS, FileDataModule, Sample, id_like_names

log = logging.getLogger(__name__)


def _norm(value: object) -> str:
    """A CSV cell or config value as a canonical string: 1, '1' and '1.0' all become '1'."""
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if math.isfinite(number) and number.is_integer() else text


def _sorted_values(values: set[str]) -> list[str]:
    """Numeric values in numeric order, otherwise alphabetical."""
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


class MetadataCSVDataModule(FileDataModule):
    """A root folder of images plus a CSV naming each image's file, label, split and group attributes.

    The group of a sample is its class crossed with the values of `group_columns` (Waterbirds: label x place),
    named like "waterbird|place=land"; groups are for evaluation and the oracle baselines only.
    """

    source = "metadata_csv"

    def __init__(
        self,
        root: str | None,
        metadata: str = "metadata.csv",
        image_dir: str = "",
        filename_column: str = "img_filename",
        label_column: str = "y",
        split_column: str | None = "split",
        split_values: Mapping[str, object] | None = None,
        group_columns: Sequence[str] = ("place",),
        class_names: Sequence[str] | None = None,
        value_names: Mapping[str, Mapping[object, str]] | None = None,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        self.metadata, self.image_dir = metadata, image_dir
        self.filename_column, self.label_column, self.split_column = filename_column, label_column, split_column
        split_values = split_values if split_values is not None else {"train": 0, "val": 1, "test": 2}
        unknown = sorted(set(split_values) - set(SPLITS))
        if unknown:
            raise ValueError(f"data.split_values has keys {unknown}; use train / val / test")
        self.split_of: dict[str, str] = {}  # CSV split value -> split name
        for split, values in split_values.items():
            for v in [values] if isinstance(values, (str, int, float)) else values:
                self.split_of[_norm(v)] = split
        self.group_columns = list(group_columns or [])
        self.given_class_names = list(class_names) if class_names else None
        self.value_names = {col: {_norm(k): str(v) for k, v in names.items()}
                            for col, names in (value_names or {}).items()}
        self._group_names: list[str] = []

    @property
    def group_names(self) -> list[str]:
        self.index()
        return list(self._group_names)

    def _read_rows(self) -> tuple[Path, list[dict[str, str]]]:
        """The CSV's rows, after checking that the file and every configured column exist."""
        root = self._root()
        path = root / self.metadata
        if not path.is_file():
            raise FileNotFoundError(f"{self.source}: no metadata CSV at {path}; set data.metadata to the CSV's "
                                    f"path relative to data.root (now {root})")
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
        needed = [(self.filename_column, "data.filename_column"), (self.label_column, "data.label_column")]
        needed += [(self.split_column, "data.split_column")] if self.split_column else []
        needed += [(c, "data.group_columns") for c in self.group_columns]
        for column, key in needed:
            if column not in columns:
                raise ValueError(f"{self.source}: {path} has no column {column!r} (set by {key}); its columns are "
                                 f"{columns}. Set {key} to one of them" +
                                 (" or to [] for no groups" if key == "data.group_columns" else ""))
        for line, row in enumerate(rows, start=2):
            for column in (self.filename_column, self.label_column):
                if not row.get(column):
                    raise ValueError(f"{self.source}: {path} line {line}: empty {column!r} cell")
        if not rows:
            raise ValueError(f"{self.source}: {path} has a header but no rows")
        return root, rows

    def _labels(self, values: list[str]) -> tuple[dict[str, int], list[str]]:
        """CSV label value -> class index, and the class names."""
        found = _sorted_values(set(values))
        names = self.given_class_names
        if names is None:
            ids = id_like_names(found)
            if ids:
                example = ", ".join(f"name_of_{v}" for v in found[:4]) + (", ..." if len(found) > 4 else "")
                log.warning("%s: data.class_names is null, so the classes are named by their raw labels %s in column "
                            "%r. Those names go into CLIP prompts and captions ('a photo of a %s') and the zero-shot "
                            "class filter, which cannot read them: set data.class_names=[%s] (one word or phrase per "
                            "label, in label order)", self.source, found, self.label_column, ids[0], example)
            return {v: i for i, v in enumerate(found)}, found
        if len(set(names)) != len(names):
            raise ValueError(f"{self.source}: data.class_names={names} names a class twice; give each label its own "
                             "name")
        if all(v.lstrip("-").isdigit() and 0 <= int(v) < len(names) for v in found):
            return {v: int(v) for v in found}, names
        if set(found) <= set(names):
            return {v: names.index(v) for v in found}, names
        numeric = all(v.lstrip("-").isdigit() for v in found)
        unknown = [v for v in found if v not in names] if not numeric else [v for v in found if not 0 <= int(v) <
                                                                          len(names)]
        raise ValueError(f"{self.source}: label column {self.label_column!r} has values {found} that do not fit "
                         f"data.class_names={names} ({len(names)} names; no class for {unknown}): give one name per "
                         "label 0..n-1, or list the label values themselves (or set data.class_names=null to use "
                         "the values as names)")

    def _build_index(self) -> tuple[dict[str, list[Sample]], list[str]]:
        root, rows = self._read_rows()
        label_of, classes = self._labels([_norm(r[self.label_column]) for r in rows])
        attributes = [_sorted_values({_norm(r[c]) for r in rows}) for c in self.group_columns]
        combos = list(itertools.product(range(len(classes)), *attributes))
        group_of = {combo: i for i, combo in enumerate(combos)}
        self._group_names = [
            "|".join([classes[combo[0]]] + [f"{col}={self.value_names.get(col, {}).get(v, v)}"
                                            for col, v in zip(self.group_columns, combo[1:])])
            for combo in combos] if self.group_columns else []
        samples, splits, ignored = [], [], Counter()
        for r in rows:
            split = self.split_of.get(_norm(r[self.split_column])) if self.split_column else "train"
            if split is None:
                ignored[r[self.split_column]] += 1
                continue
            label = label_of[_norm(r[self.label_column])]
            key = (label, *(_norm(r[c]) for c in self.group_columns))
            group = group_of[key] if self.group_columns else -1
            samples.append(Sample(str(root / self.image_dir / r[self.filename_column]), label, group))
            splits.append(split)
        if ignored:
            log.info("%s: ignored %d rows whose %r value is not in data.split_values (%s)", self.source,
                     sum(ignored.values()), self.split_column, dict(ignored))
        index = {s: [x for x, sp in zip(samples, splits) if sp == s] for s in SPLITS}
        if not self.split_column:
            index = self._carve(index["train"], ["val", "test"])
        return index, classes

    def _empty_split_hint(self) -> str:
        if self.split_column:
            return (f"check data.split_values (now maps {self.split_of} from column {self.split_column!r}) "
                    "against the values in the CSV")
        return "add rows or raise data.val_fraction / data.test_fraction"
