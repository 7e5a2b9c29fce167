"""The vocabulary of the built-in world: classes, attributes and how they are put into words."""

from __future__ import annotations

from dataclasses import dataclass, field

CLASSES = ("circle", "square", "triangle", "star", "cross", "heart")
BACKGROUNDS = ("grass", "water", "sand", "snow", "brick", "night")
COLORS = ("red", "orange", "yellow", "cyan", "purple")
SIZES = ("small", "large")

# How each background is said in a caption ("a red star on grass", "a red star on a brick wall").
BACKGROUND_PHRASES = {
    "grass": "on grass",
    "water": "on water",
    "sand": "on sand",
    "snow": "on snow",
    "brick": "on a brick wall",
    "night": "in the night sky",
}

# Caption templates the world's CLIP is trained with; `{object}` is e.g. "small red star".
CAPTION_TEMPLATES = (
    "{a} {object} {where}",
    "a photo of {a} {object} {where}",
    "a picture of {a} {object} {where}",
    "an image of {a} {object} {where}",
    "a drawing of {a} {object} {where}",
)


@dataclass(frozen=True)
class WorldSpec:
    """Which classes and attribute values exist in a world; the corpus covers all their combinations."""

    classes: tuple[str, ...] = CLASSES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    colors: tuple[str, ...] = COLORS
    sizes: tuple[str, ...] = SIZES
    image_size: int = 32
    attribute_order: tuple[str, ...] = field(default=("background", "color", "size"), repr=False)

    def __post_init__(self):
        for name, values, known in (
            ("classes", self.classes, CLASSES),
            ("backgrounds", self.backgrounds, BACKGROUNDS),
            ("colors", self.colors, COLORS),
            ("sizes", self.sizes, SIZES),
        ):
            unknown = [v for v in values if v not in known]
            if unknown or not values:
                raise ValueError(
                    f"world {name} {list(values)}: unknown or empty {unknown}; the renderer knows {list(known)}"
                )
        if self.image_size < 16 or self.image_size % 8:
            raise ValueError(f"world image_size={self.image_size}: use a multiple of 8, at least 16")

    @property
    def attributes(self) -> dict[str, tuple[str, ...]]:
        """Attribute name -> its values, in a fixed order."""
        return {"background": self.backgrounds, "color": self.colors, "size": self.sizes}

    def values(self, attribute: str) -> tuple[str, ...]:
        """The values of one attribute, with a clear error for an unknown name."""
        if attribute == "class":
            return self.classes
        if attribute not in self.attributes:
            raise ValueError(f"unknown world attribute {attribute!r}; known: ['class', {', '.join(map(repr, self.attributes))}]")
        return self.attributes[attribute]


def object_phrase(cls: str, color: str | None = None, size: str | None = None) -> str:
    """'small red star' from its parts (missing parts are left out)."""
    return " ".join(p for p in (size, color, cls) if p)


def caption(cls: str, background: str | None = None, color: str | None = None, size: str | None = None,
            template: str = CAPTION_TEMPLATES[0]) -> str:
    """A world caption such as 'a small red star on grass'."""
    obj = object_phrase(cls, color, size)
    where = BACKGROUND_PHRASES[background] if background else ""
    return template.format(a="an" if obj[0] in "aeiou" else "a", object=obj, where=where).strip()
