"""FailureMode: a coherent slice of validation errors, the contract between discovery, captioning,
generation and reporting. JSON-serialisable so reports, W&B tables and checkpoints carry it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

COVERED_SUFFIX = "-covered"  # a mode's covered part (the members loop.trim_covered cut) as a mode of its own


def parent_mode_id(mode_id: str) -> str:
    """The mode a (possibly covered-part) mode id belongs to: 'r0-star-0-covered' -> 'r0-star-0'."""
    return mode_id.removesuffix(COVERED_SUFFIX)


@dataclass
class FailureMode:
    """One discovered blind spot of one class."""

    class_index: int
    class_name: str
    members: list[int]  # validation-set indices in the slice
    error_rate: float  # error rate inside the slice
    class_error_rate: float  # error rate over the whole class
    score: float  # ranking score (higher = more worth fixing)
    method: str = ""  # which discovery produced it ("directions", "clusters", ...)
    mode_id: str = ""  # stable id, e.g. "r0-star-0" (round, class, rank)
    direction: list[float] | None = None  # unit failure direction in CLIP space (directions method)
    captions: list[tuple[str, float]] = field(default_factory=list)  # ranked (caption, score)
    round: int = 0  # discovery round that found it
    confused_with: list[dict] = field(default_factory=list)  # classes its errors were predicted as, most first
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific facts (e.g. SVM C, CV accuracy)

    @property
    def support(self) -> int:
        """Number of validation samples in the slice."""
        return len(self.members)

    @property
    def caption(self) -> str:
        """The top-ranked caption (or the bare class name before captioning)."""
        return self.captions[0][0] if self.captions else self.class_name

    def covered_part(self) -> "FailureMode":
        """The members loop.trim_covered cut from this mode as a mode of their own: id `<id>-covered`, no direction
        (captions score what its members share), its captions from `extra["covered_captions"]` once captioned."""
        return replace(self, members=[int(i) for i in self.extra.get("covered_members", [])], direction=None,
                       captions=[(c, float(s)) for c, s in self.extra.get("covered_captions", [])], extra={},
                       mode_id=self.mode_id + COVERED_SUFFIX)

    def to_dict(self) -> dict:
        """A JSON-ready dict (support and caption included for readers)."""
        d = asdict(self)
        d["captions"] = [[c, float(s)] for c, s in self.captions]
        d["support"] = self.support
        d["caption"] = self.caption
        return d

    def set_confusions(self, preds, labels, class_names) -> None:
        """Record which classes the mode's wrong members were predicted as ({class_index, class_name, errors})."""
        counts: dict[int, int] = {}
        for i in self.members:
            p, y = int(preds[i]), int(labels[i])
            if p != y:
                counts[p] = counts.get(p, 0) + 1
        self.confused_with = [{"class_index": c, "class_name": class_names[c], "errors": n}
                              for c, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]

    @classmethod
    def from_dict(cls, d: dict) -> "FailureMode":
        """Inverse of `to_dict`."""
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["captions"] = [(c, float(s)) for c, s in known.get("captions", [])]
        known["members"] = [int(i) for i in known.get("members", [])]
        return cls(**known)
