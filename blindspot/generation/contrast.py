"""Contrast images: the classes a mode's errors are mistaken for, shown in the mode's own contexts.

Injecting only the failing class in a context teaches "this context means this class": after 'small crosses on
brick' are added, stars on brick start to read as crosses. A share of a mode's images (`remedy.contrast`) therefore
shows the classes its validation errors went to, with the same prompts and the class named instead (counterfactual
pairs, Kaushik et al. 2020). A confused class that already fills the failure context in the real training data
gets none (`ContextCounts.prune`): there the context is that class's shortcut (crosses on grass, when stars on grass
fail), and more of it would work against the repair.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable, Sequence

import torch

from ..modes import FailureMode
from .prompts import allocate


def swap_class(caption: str, old: str, new: str) -> str:
    """The caption with the class name `old` replaced by `new` (and an 'a'/'an' before it made to agree)."""
    text = re.sub(rf"\b{re.escape(old)}\b", new, caption)

    def article(m: re.Match) -> str:
        word = m.group(2)
        art = "an" if word[:1].lower() in "aeiou" else "a"
        return (art.capitalize() if m.group(1)[0].isupper() else art) + " " + word

    return re.sub(rf"\b(a|an|A|An) ({re.escape(new)})\b", article, text)


def confused_classes(mode: FailureMode) -> list[dict]:
    """The other classes the mode's errors went to (its own class left out), most errors first."""
    return [c for c in mode.confused_with if c["class_index"] != mode.class_index]


def contrast_modes(mode: FailureMode, count: int) -> list[tuple[FailureMode, int]]:
    """The mode as seen from each class its errors are mistaken for (same captions and contexts, that class
    named instead), with `count` images split by how many errors went to each."""
    confused = confused_classes(mode)
    if count < 1 or not confused:
        return []
    shares = allocate([c["errors"] for c in confused], count)
    return [(replace(mode, class_index=c["class_index"], class_name=c["class_name"],
                     captions=[(swap_class(t, mode.class_name, c["class_name"]), s) for t, s in mode.captions]), n)
            for c, n in zip(confused, shares) if n > 0]


class ContextCounts:
    """How many real training images of each class show each attribute value, as CLIP reads them.

    `reads[c]` holds one {kind: value} per sampled image of class c (nearest vocabulary phrase per kind);
    `scale` turns sample counts into training-set counts.
    """

    def __init__(self, reads: dict[str, list[dict[str, str]]], scale: float = 1.0):
        self.reads, self.scale = reads, scale

    @classmethod
    def read(cls, composer, embeddings: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
             encode_texts: Callable[[list[str]], torch.Tensor], scale: float = 1.0) -> "ContextCounts":
        """Read every sampled image's attributes with the composer's vocabulary (its class's phrases)."""
        kinds = composer.varying_kinds(None)
        reads = {}
        for c in labels.unique().tolist():
            emb = embeddings[labels == c]
            reads[class_names[c]] = composer.member_attributes(class_names[c], emb, encode_texts, kinds)
        return cls(reads, scale)

    def count(self, class_name: str, kind: str, value: str) -> float:
        """Training images of the class with that attribute value (estimated)."""
        return self.scale * sum(r.get(kind) == value for r in self.reads.get(class_name, []))

    def prune(self, mode: FailureMode, failure: tuple[str, str] | None, planned: int) -> FailureMode:
        """The mode without the confused classes that already have more real images in its failure context
        (kind, value) than its class will have after `planned` more; unchanged when the context is unknown."""
        if failure is None:
            return mode
        kind, value = failure
        if not any(kind in r for r in self.reads.get(mode.class_name, [])):
            return mode
        ceiling = self.count(mode.class_name, kind, value) + planned
        keep = [c for c in mode.confused_with if self.count(c["class_name"], kind, value) < ceiling]
        return mode if len(keep) == len(mode.confused_with) else replace(mode, confused_with=keep)
