"""Image folders as a datamodule: root/<class>/*.jpg, optionally inside train/ val/ test/ split folders."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

from .files import IMAGE_EXTENSIONS, SPLITS, FileDataModule, Sample, id_like_names

log = logging.getLogger(__name__)

class ImageFolderDataModule(FileDataModule):
    """Class subfolders (root/<class>/*.jpg), optionally inside split folders (root/train/<class>/...)."""

    source = "image_folder"

    def __init__(self, root: str | None, split_dirs: Mapping[str, str] | None = None,
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, **kwargs):
        super().__init__(root, **kwargs)
        self.split_dirs = {s: str((split_dirs or {}).get(s, s)) for s in SPLITS}
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)

    def _images(self, folder: Path) -> list[str]:
        return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in self.extensions and p.is_file())

    def _classes(self, folder: Path) -> dict[str, list[str]]:
        """Class name -> image files under folder/<class>/ (hidden and image-less folders are ignored)."""
        found = {}
        for d in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = self._images(d)
            if files:
                found[d.name] = files
            else:
                log.warning("%s: %s has no %s files; not a class", self.source, d, "/".join(self.extensions))
        return found

    def _build_index(self) -> tuple[dict[str, list[Sample]], list[str]]:
        root = self._root()
        train_dir = root / self.split_dirs["train"]
        split_folders = train_dir.is_dir()
        per_split = {s: self._classes(root / self.split_dirs[s]) for s in SPLITS
                     if (root / self.split_dirs[s]).is_dir()} if split_folders else {"train": self._classes(root)}
        classes = sorted(per_split["train"])
        if not classes:
            where = train_dir if split_folders else root
            raise FileNotFoundError(
                f"{self.source}: no class folders with images in {where}; expected {where}/<class>/<image> with "
                f"extensions {list(self.extensions)} (data.root, data.split_dirs, data.extensions)")
        for split, found in per_split.items():
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise ValueError(f"{self.source}: classes {unknown} in {root / self.split_dirs[split]} have no "
                                 f"training folder in {train_dir}; add them there or remove them")
        ids = id_like_names(classes)
        if ids:
            log.warning("%s: the class names come from the folder names %s, and %s are ids, not words. Those names go "
                        "into CLIP prompts and captions ('a photo of a %s') and the zero-shot class filter, which "
                        "cannot read them: rename the class folders under %s to what they show (e.g. %s/cat/)",
                        self.source, classes[:10] + (["..."] if len(classes) > 10 else []), ids[:5], ids[0],
                        train_dir if split_folders else root, train_dir if split_folders else root)
        label = {c: i for i, c in enumerate(classes)}
        index = {split: [Sample(p, label[c]) for c, files in found.items() for p in files]
                 for split, found in per_split.items()}
        missing = [s for s in ("val", "test") if s not in index]
        if missing:
            index.update(self._carve(index.pop("train"), missing))
        return index, classes

    def _empty_split_hint(self) -> str:
        return (f"add images to the split folders ({self.split_dirs}) or raise data.val_fraction / "
                "data.test_fraction (used for split folders that do not exist)")
