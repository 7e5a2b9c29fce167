"""Image-to-image editing as a remedy (ALIA, Dunlap et al. 2023; SDEdit): real training images of a mode's class,
chosen by seed, are edited toward the mode's captions with a diffusers image-to-image pipeline, then filtered,
recorded and injected exactly as text-to-image generation is (same plans, waves, manifest and resume)."""

from __future__ import annotations

import torch

from ..generation.backends import GenerationOutput
from .base import RemedyContext
from .text2image import Text2ImageRemedy


class EditSources:
    """A text-to-image backend made of an editor: each (prompt, seed) edits a seeded real image of its class."""

    def __init__(self, editor, train, train_labels: torch.Tensor, labels: dict[int, int],
                 strength: float | None = None):
        self.editor, self.train, self.labels, self.strength = editor, train, labels, strength
        self.by_class = {int(c): torch.nonzero(train_labels == c).flatten().tolist()
                         for c in torch.unique(train_labels).tolist()}

    def source(self, seed: int) -> int:
        """The training image an item edits: a pure function of its seed and class."""
        pool = self.by_class.get(self.labels[seed])
        if not pool:
            raise ValueError(f"remedy=edit: class {self.labels[seed]} has no training image to edit")
        return pool[torch.randint(len(pool), (1,), generator=torch.Generator().manual_seed(seed)).item()]

    def generate(self, prompts, seeds) -> GenerationOutput:
        """Edited images for the items' (prompt, seed) pairs."""
        images = self.train.images([self.source(s) for s in seeds])
        return self.editor.edit(images, list(prompts), list(seeds), self.strength)


class EditRemedy(Text2ImageRemedy):
    """Edit real training images of each mode's class toward its captions, keep what passes the filters, inject."""

    name = "edit"

    def __init__(self, editor, strength: float | None = None, generator=None, **kwargs):
        super().__init__(generator=editor, **kwargs)  # `generator` is unused: the editor makes the images
        self.editor, self.strength = editor, strength
        if self.verify is not None:
            raise ValueError("remedy.verify generates its probes from text: use it with remedy=text2image")
        if strength is not None and hasattr(editor, "check_strength"):
            editor.check_strength(strength)

    def prepare(self, context: RemedyContext) -> None:
        """Before training: the training images exist, the folder is writable, the editor loads."""
        if context.train() is None:
            raise ValueError("remedy=edit edits real training images and this datamodule gives none")
        super().prepare(context)

    def backend(self, context: RemedyContext, labels: dict[int, int]):
        """The editor, fed with seeded real images of each item's class."""
        train, train_labels = context.train()
        return EditSources(self.editor, train, train_labels, labels, self.strength)
