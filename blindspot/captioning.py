"""Put failure modes into words: rank candidate captions by how well CLIP text aligns with the failure.

Candidates are templates x attribute values from a vocabulary (the world brings its own; other data gets the
shipped general one, blindspot/vocabularies/general.yaml; a user's YAML or text file replaces or extends it; an
optional proposer callable adds more per mode, e.g. `blindspot.proposers.LLMProposer`). A candidate's score is
the cosine between (text(candidate) - text(bare class)) and a target in CLIP space (`target`): the mode's failure
direction (Jain et al. 2022; this class's default), the slice's mean image embedding minus the class's (Chegini &
Feizi 2023 style; also used when a mode has no direction; the loop's default, conf/loop), or the two summed. With `shared_errors="remove"` the target first
loses its component along what the other classes' errors share (their error-minus-correct mean, e.g. "small" when
small shapes fail in every class), so a caption says what is specific to the mode rather than what makes any image hard.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .discovery.shared_errors import shared_error_direction
from .modes import FailureMode

log = logging.getLogger(__name__)

Proposer = Callable[[str, FailureMode], Sequence[str]]


GENERAL_VOCABULARY = Path(__file__).parent / "vocabularies" / "general.yaml"


def _norm(phrase: str) -> str:
    """The form phrases are compared in for duplicates: lower case, single spaces."""
    return " ".join(phrase.lower().split())


@dataclass
class Vocabulary:
    """Attribute phrases and caption templates; `{cls}` and `{attr}` are filled in each template.

    A phrase that itself contains `{cls}` is a whole caption ("a sketch of a {cls}") and ignores the templates.
    Phrases are deduplicated (case and spacing ignored; the first kept) and `duplicates_dropped` counts the rest."""

    attributes: dict[str, list[str]]  # attribute name -> phrases, e.g. background -> ["on water", ...]
    templates: list[str] = field(default_factory=lambda: ["a photo of a {cls} {attr}"])
    reference_templates: list[str] = field(default_factory=lambda: ["a photo of a {cls}"])
    prefix_attributes: tuple[str, ...] = ()  # attributes said before the class ("a red star"), not after
    duplicates_dropped: int = 0  # phrases left out because they were already there

    def __post_init__(self):
        seen: set[str] = set()
        clean: dict[str, list[str]] = {}
        for name, values in self.attributes.items():
            kept = []
            for v in values:
                v = " ".join(str(v).split())
                if not v:
                    continue  # empty phrases are skipped
                if _norm(v) in seen:
                    self.duplicates_dropped += 1
                    continue
                seen.add(_norm(v))
                kept.append(v)
            if kept:
                clean[name] = kept
        self.attributes = clean
        if not clean:
            raise ValueError("the captioning vocabulary is empty: give at least one attribute with phrases "
                             "(the file at vocabulary.path, or the vocabulary config group)")
        if not self.templates or not self.reference_templates:
            raise ValueError("the captioning vocabulary needs at least one template and one reference template")
        for t in self.templates:
            if "{cls}" not in t or "{attr}" not in t:
                raise ValueError(f"caption template {t!r} needs both {{cls}} and {{attr}}")
        for t in self.reference_templates:
            if "{cls}" not in t:
                raise ValueError(f"reference template {t!r} needs {{cls}}")
        self.prefix_attributes = tuple(self.prefix_attributes)

    def __len__(self) -> int:
        return sum(len(v) for v in self.attributes.values())

    def phrase(self, cls: str, attribute: str, value: str, template: str) -> str:
        """One candidate caption for a class and an attribute phrase."""
        if "{cls}" in value:
            return _articles(value.replace("{cls}", cls))
        if attribute in self.prefix_attributes:
            return _articles(template.replace("{cls} {attr}", "{attr} {cls}").format(cls=cls, attr=value))
        return _articles(template.format(cls=cls, attr=value))

    def candidates(self, cls: str) -> list[tuple[str, str, str]]:
        """(attribute, value, caption) for every attribute value, captioned with the first template."""
        return [(a, v, self.phrase(cls, a, v, self.templates[0])) for a, vals in self.attributes.items() for v in vals]


def _articles(text: str) -> str:
    """'a' before a vowel sound becomes 'an' ("a orange star" -> "an orange star"); 'u' words are left alone."""
    return re.sub(r"\b([Aa]) (?=[aeioAEIO])", r"\1n ", text)


def merge_vocabularies(*vocabularies: Vocabulary) -> Vocabulary:
    """One vocabulary holding all phrases (first one's templates; same attribute names share a list; duplicates
    dropped and counted)."""
    first = vocabularies[0]
    attributes: dict[str, list[str]] = {}
    prefix: list[str] = []
    for v in vocabularies:
        for name, values in v.attributes.items():
            attributes.setdefault(name, []).extend(values)
        prefix += [p for p in v.prefix_attributes if p not in prefix]
    merged = Vocabulary(attributes, list(first.templates), list(first.reference_templates), tuple(prefix))
    merged.duplicates_dropped += sum(v.duplicates_dropped for v in vocabularies)
    return merged


def _read_text(path: Path, key: str) -> str:
    """A file's text as UTF-8; a bad byte gives an error naming the file, its offset and line, and the key."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"vocabulary file {path} is not UTF-8: byte 0x{data[err.start]:02x} at offset {err.start} "
                         f"(line {line}) cannot be decoded. Save the file as UTF-8, or point {key} at another "
                         "file") from None


def load_vocabulary(path: str | Path, key: str = "vocabulary.path") -> Vocabulary:
    """A vocabulary from YAML (attributes/templates keys) or a text file (one attribute phrase per line).

    Empty lines and `#` comments are skipped; duplicate phrases are dropped, counted and logged; a non-UTF-8
    byte or no phrase at all is an error naming the file and `key` (the config key that set the path)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} not found: set {key} (with vocabulary=file) to an "
                                "existing YAML (attributes: {name: [phrases]}, templates: [...]) or text file")
    text = _read_text(path, key)
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"vocabulary file {path} is not valid YAML ({err}); fix it or {key}") from None
        if not isinstance(data, dict) or not isinstance(data.get("attributes"), dict):
            raise ValueError(f"{path}: needs an `attributes:` mapping of attribute name -> list of phrases ({key})")
        attributes = {}
        for name, values in data["attributes"].items():
            values = [] if values is None else values
            if not isinstance(values, list) or any(not isinstance(v, (str, type(None))) for v in values):
                raise ValueError(f"{path}: attribute {name!r} must be a list of phrases (text; quote words YAML "
                                 f"reads as numbers or booleans, e.g. 'on', 'yes') ({key})")
            attributes[str(name)] = [v for v in values if v is not None]
        kwargs = {k: list(data[k]) for k in ("templates", "reference_templates") if data.get(k)}
        prefix = tuple(data.get("prefix_attributes") or ())
    else:
        attributes = {"context": [ln.strip() for ln in text.splitlines() if ln.strip() and not
                                  ln.strip().startswith("#")]}
        kwargs, prefix = {}, ()
    try:
        vocab = Vocabulary(attributes, **kwargs, prefix_attributes=prefix)
    except ValueError as err:
        raise ValueError(f"vocabulary file {path} ({key}): {err}") from None
    if vocab.duplicates_dropped:
        log.warning("vocabulary file %s: %d duplicate phrase(s) dropped (case and spacing ignored)", path,
                    vocab.duplicates_dropped)
    return vocab


def general_vocabulary(path: str | Path | None = None, extra_path: str | Path | None = None) -> Vocabulary:
    """The curated general vocabulary (blindspot/vocabularies/general.yaml, 500+ phrases), plus your own file."""
    vocab = load_vocabulary(path or GENERAL_VOCABULARY, key="vocabulary.path")
    if extra_path:
        vocab = merge_vocabularies(vocab, load_vocabulary(extra_path, key="vocabulary.extra_path"))
    return vocab


def general_world_vocabulary(backgrounds: Sequence[str], colors: Sequence[str], sizes: Sequence[str],
                             path: str | Path | None = None, extra_path: str | Path | None = None) -> Vocabulary:
    """The world's words mixed into the general vocabulary (the world first; repeats dropped and counted)."""
    return merge_vocabularies(world_vocabulary(backgrounds, colors, sizes), general_vocabulary(path, extra_path))


def world_vocabulary(backgrounds: Sequence[str], colors: Sequence[str], sizes: Sequence[str]) -> Vocabulary:
    """The built-in world's vocabulary: its backgrounds, colours and sizes, worded as its captions are."""
    from .world.spec import BACKGROUND_PHRASES

    if not (backgrounds or colors or sizes):
        raise ValueError("vocabulary=world needs the built-in world's data (data=world); for other data use the "
                         "shipped general words (vocabulary=general, optionally vocabulary.extra_path=<your file>) "
                         "or only your own: vocabulary=file vocabulary.path=<yaml or text file>")
    return Vocabulary(
        attributes={"background": [BACKGROUND_PHRASES[b] for b in backgrounds], "color": list(colors),
                    "size": list(sizes)},
        templates=["a photo of a {cls} {attr}", "a {cls} {attr}", "a picture of a {cls} {attr}"],
        reference_templates=["a photo of a {cls}", "a {cls}", "a picture of a {cls}"],
        prefix_attributes=("color", "size"),
    )


class Captioner:
    """Ranks a vocabulary's candidate captions for each failure mode by CLIP alignment."""

    TARGETS = ("direction", "members", "both")
    SHARED = ("keep", "remove")

    def __init__(self, vocabulary: Vocabulary, top_k: int = 3, proposer: Proposer | None = None,
                 target: str = "direction", shared_errors: str = "keep"):
        if top_k < 1:
            raise ValueError(f"captioner top_k={top_k}: must be >= 1")
        if target not in self.TARGETS:
            raise ValueError(f"loop.captioner.target={target!r}: must be one of {', '.join(self.TARGETS)}")
        if shared_errors not in self.SHARED:
            raise ValueError(f"loop.captioner.shared_errors={shared_errors!r}: must be one of {', '.join(self.SHARED)}")
        self.vocabulary, self.top_k, self.proposer, self.target_kind = vocabulary, top_k, proposer, target
        self.shared_errors = shared_errors
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

    def target(self, mode: FailureMode, embeddings: torch.Tensor | None, labels: torch.Tensor | None,
               preds: torch.Tensor | None = None) -> torch.Tensor:
        """The direction captions align with (`target`), less what other classes' errors share (`shared_errors`;
        the cosine taken out is recorded in `mode.extra["shared_error_overlap"]`)."""
        target = self._target(mode, embeddings, labels)
        if self.shared_errors == "keep":
            return target
        if embeddings is None or labels is None or preds is None:
            raise ValueError("loop.captioner.shared_errors=remove needs the validation embeddings, labels and "
                             "predictions (or set it to keep)")
        shared = shared_error_direction(embeddings, labels, preds, exclude=mode.class_index)
        if shared is None:
            return target
        overlap = float(target @ shared)
        mode.extra["shared_error_overlap"] = overlap  # the cosine taken out: how much of the mode any class shares
        return F.normalize(target - overlap * shared, dim=-1)

    def _target(self, mode: FailureMode, embeddings: torch.Tensor | None, labels: torch.Tensor | None) -> torch.Tensor:
        """The mode's failure direction, its members' mean minus its class's mean (what the members share), or both
        summed (`target`; members when a mode has no direction)."""
        direction = None
        if mode.direction is not None:
            direction = F.normalize(torch.tensor(mode.direction, dtype=torch.float32), dim=-1)
            if self.target_kind == "direction":
                return direction
        if embeddings is None or labels is None:
            why = f"mode {mode.mode_id} has no direction" if direction is None else \
                f"loop.captioner.target={self.target_kind} scores captions against the mode's members"
            raise ValueError(f"{why}: pass the validation embeddings and labels")
        members = embeddings[mode.members].float().mean(0)
        whole = embeddings[labels == mode.class_index].float().mean(0)
        shared = F.normalize(members - whole, dim=-1)
        if direction is None or self.target_kind == "members":
            return shared
        return F.normalize(direction + shared, dim=-1)

    def _score(self, encode_texts, cls: str, items: list[tuple[str | None, str]], direction: torch.Tensor,
               reference: torch.Tensor) -> list[tuple[str, float]]:
        """(caption, cosine of its template-ensemble delta with the direction) for (attribute, phrase) items."""
        v = self.vocabulary
        texts = {(a, p): [v.phrase(cls, a or "", p, t) for t in v.templates] for a, p in items}
        self._embed(encode_texts, [t for ts in texts.values() for t in ts])  # one batched call for all
        out = []
        for (a, p), ts in texts.items():
            delta = F.normalize(self._embed(encode_texts, ts).mean(0), dim=-1) - reference
            out.append((v.phrase(cls, a or "", p, v.templates[0]), float(F.cosine_similarity(delta, direction, dim=0))))
        return out

    def rank(self, mode: FailureMode, encode_texts: Callable[[list[str]], torch.Tensor],
             embeddings: torch.Tensor | None = None, labels: torch.Tensor | None = None,
             preds: torch.Tensor | None = None) -> list[tuple[str, float]]:
        """All candidate captions of a mode with scores, best first.

        With a proposer, it is called after the vocabulary is ranked, with `mode.captions` holding the top-k of
        that ranking; a proposed text naming the class is a caption as is, any other is an attribute phrase
        worded with the vocabulary's templates. Proposals already among the candidates are counted in
        `mode.extra["proposer"]["already_candidates"]`."""
        cls = mode.class_name
        direction = self.target(mode, embeddings, labels, preds)
        reference = self._ensemble(encode_texts, cls, None, None)
        scored = self._score(encode_texts, cls, [(a, val) for a, vals in self.vocabulary.attributes.items()
                                                 for val in vals], direction, reference)
        scored.sort(key=lambda x: -x[1])
        if self.proposer is not None:
            mode.captions = scored[: self.top_k]
            known = {_norm(c) for c, _ in scored}
            items, repeats = [], 0
            for text in self.proposer(cls, mode):
                named = rf"\b{re.escape(cls)}\b"
                item = (None, re.sub(named, "{cls}", text, count=1, flags=re.I))  # names the class: a caption
                caption = self.vocabulary.phrase(cls, "", item[1], self.vocabulary.templates[0])
                if _norm(caption) in known:
                    repeats += 1
                    continue
                known.add(_norm(caption))
                items.append(item)
            mode.extra.setdefault("proposer", {})["already_candidates"] = repeats
            mode.extra["proposer"]["candidates_added"] = len(items)
            scored = sorted(scored + self._score(encode_texts, cls, items, direction, reference), key=lambda x: -x[1])
        return scored

    def __call__(self, modes: list[FailureMode], encode_texts: Callable[[list[str]], torch.Tensor],
                 embeddings: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 preds: torch.Tensor | None = None) -> list[FailureMode]:
        """Attach the top-k captions (with scores) to every mode; returns the same modes."""
        for mode in modes:
            mode.captions = self.rank(mode, encode_texts, embeddings, labels, preds)[: self.top_k]
            log.info("mode %s (%s, %d samples, error %.0f%% vs %.0f%%): %s", mode.mode_id, mode.class_name,
                     mode.support, 100 * mode.error_rate, 100 * mode.class_error_rate,
                     "; ".join(f"{c!r} {s:.2f}" for c, s in mode.captions))
        return modes
