"""Put failure modes into words: rank candidate captions by how well CLIP text aligns with the failure.

Candidates are templates x attribute values from a vocabulary (the world brings its own; real use reads a
YAML or text file; an optional proposer callable can add more, e.g. from an LLM). A candidate's score is
the cosine between (text(candidate) - text(bare class)) and the mode's failure direction (Jain et al. 2022),
or, without a direction, the slice's mean image embedding minus the class's (Chegini & Feizi 2023 style).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .modes import FailureMode

log = logging.getLogger(__name__)

Proposer = Callable[[str, FailureMode], Sequence[str]]


@dataclass
class Vocabulary:
    """Attribute phrases and caption templates; `{cls}` and `{attr}` are filled in each template."""

    attributes: dict[str, list[str]]  # attribute name -> phrases, e.g. background -> ["on water", ...]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {cls} {attr}"])
    reference_templates: list[str] = field(default_factory=lambda: ["a photo of a {cls}"])
    prefix_attributes: tuple[str, ...] = ()  # attributes said before the class ("a red star"), not after

    def __post_init__(self):
        if not self.attributes or not any(self.attributes.values()):
            raise ValueError("the captioning vocabulary is empty: give at least one attribute with phrases "
                             "(the file at vocabulary.path, or the vocabulary config group)")
        for t in self.templates:
            if "{cls}" not in t or "{attr}" not in t:
                raise ValueError(f"caption template {t!r} needs both {{cls}} and {{attr}}")

    def phrase(self, cls: str, attribute: str, value: str, template: str) -> str:
        """One candidate caption for a class and an attribute phrase."""
        if attribute in self.prefix_attributes:
            return template.replace("{cls} {attr}", "{attr} {cls}").format(cls=cls, attr=value).replace(" a o", " an o")
        return template.format(cls=cls, attr=value)

    def candidates(self, cls: str) -> list[tuple[str, str, str]]:
        """(attribute, value, caption) for every attribute value, captioned with the first template."""
        return [(a, v, self.phrase(cls, a, v, self.templates[0])) for a, vals in self.attributes.items() for v in vals]


def load_vocabulary(path: str | Path) -> Vocabulary:
    """A vocabulary from YAML (attributes/templates keys) or a text file (one attribute phrase per line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} not found: set vocabulary.path (with vocabulary=file) to an "
                                "existing YAML (attributes: {name: [phrases]}, templates: [...]) or text file")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data.get("attributes"), dict):
            raise ValueError(f"{path}: needs an `attributes:` mapping of attribute name -> list of phrases")
        kwargs = {k: data[k] for k in ("templates", "reference_templates") if k in data}
        return Vocabulary({k: list(v) for k, v in data["attributes"].items()}, **kwargs,
                          prefix_attributes=tuple(data.get("prefix_attributes", ())))
    lines = [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    return Vocabulary({"context": lines})


def world_vocabulary(backgrounds: Sequence[str], colors: Sequence[str], sizes: Sequence[str]) -> Vocabulary:
    """The built-in world's vocabulary: its backgrounds, colours and sizes, worded as its captions are."""
    from .world.spec import BACKGROUND_PHRASES

    if not (backgrounds or colors or sizes):
        raise ValueError("vocabulary=world needs the built-in world's data (data=world); for other data give your "
                         "own words: vocabulary=file vocabulary.path=<yaml or text file>")
    return Vocabulary(
        attributes={"background": [BACKGROUND_PHRASES[b] for b in backgrounds], "color": list(colors),
                    "size": list(sizes)},
        templates=["a photo of a {cls} {attr}", "a {cls} {attr}", "a picture of a {cls} {attr}"],
        reference_templates=["a photo of a {cls}", "a {cls}", "a picture of a {cls}"],
        prefix_attributes=("color", "size"),
    )


class Captioner:
    """Ranks a vocabulary's candidate captions for each failure mode by CLIP alignment."""

    def __init__(self, vocabulary: Vocabulary, top_k: int = 3, proposer: Proposer | None = None):
        if top_k < 1:
            raise ValueError(f"captioner top_k={top_k}: must be >= 1")
        self.vocabulary, self.top_k, self.proposer = vocabulary, top_k, proposer
        self._cache: dict[str, torch.Tensor] = {}

    def _embed(self, encode_texts: Callable[[list[str]], torch.Tensor], texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            for t, e in zip(missing, encode_texts(missing)):
                self._cache[t] = e
        return torch.stack([self._cache[t] for t in texts])

    def _ensemble(self, encode_texts, cls: str, attribute: str | None, value: str | None) -> torch.Tensor:
        v = self.vocabulary
        if attribute is None:
            texts = [t.format(cls=cls) for t in v.reference_templates]
        else:
            texts = [v.phrase(cls, attribute, value, t) for t in v.templates]
        return F.normalize(self._embed(encode_texts, texts).mean(0), dim=-1)

    def target(self, mode: FailureMode, embeddings: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """The direction captions should align with: the failure direction, or slice mean minus class mean."""
        if mode.direction is not None:
            return F.normalize(torch.tensor(mode.direction, dtype=torch.float32), dim=-1)
        if embeddings is None or labels is None:
            raise ValueError(f"mode {mode.mode_id} has no direction: pass the validation embeddings and labels")
        members = embeddings[mode.members].mean(0)
        whole = embeddings[labels == mode.class_index].mean(0)
        return F.normalize(members - whole, dim=-1)

    def rank(self, mode: FailureMode, encode_texts: Callable[[list[str]], torch.Tensor],
             embeddings: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> list[tuple[str, float]]:
        """All candidate captions of a mode with scores, best first."""
        cls = mode.class_name
        direction = self.target(mode, embeddings, labels)
        reference = self._ensemble(encode_texts, cls, None, None)
        scored = []
        for attribute, value, text in self.vocabulary.candidates(cls):
            delta = self._ensemble(encode_texts, cls, attribute, value) - reference
            scored.append((text, float(F.cosine_similarity(delta, direction, dim=0))))
        if self.proposer is not None:
            for text in self.proposer(cls, mode):
                delta = F.normalize(self._embed(encode_texts, [text])[0], dim=-1) - reference
                scored.append((text, float(F.cosine_similarity(delta, direction, dim=0))))
        return sorted(scored, key=lambda x: -x[1])

    def __call__(self, modes: list[FailureMode], encode_texts: Callable[[list[str]], torch.Tensor],
                 embeddings: torch.Tensor | None = None, labels: torch.Tensor | None = None) -> list[FailureMode]:
        """Attach the top-k captions (with scores) to every mode; returns the same modes."""
        for mode in modes:
            mode.captions = self.rank(mode, encode_texts, embeddings, labels)[: self.top_k]
            log.info("mode %s (%s, %d samples, error %.0f%% vs %.0f%%): %s", mode.mode_id, mode.class_name,
                     mode.support, 100 * mode.error_rate, 100 * mode.class_error_rate,
                     "; ".join(f"{c!r} {s:.2f}" for c, s in mode.captions))
        return modes
