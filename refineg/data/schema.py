"""Canonical GMNER data model: :class:`Example` holds a post, :class:`Entity` one labelled span."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SOURCES = ("gold", "synthetic", "predicted")

Box = list[float]
"""``[xmin, ymin, xmax, ymax]`` in original image pixels."""


@dataclass
class Entity:
    """A typed token span with the image regions that show it.

    Attributes:
        start: First token index.
        end: Token index after the last token (exclusive).
        type: Entity type, e.g. ``"PER"``.
        boxes: ``[xmin, ymin, xmax, ymax]`` boxes in original image pixels; empty means not groundable.
        score: Optional model confidence in [0, 1].
        uncertainty: Optional uncertainty in [0, 1] (refinement stage).
        groundable: Optional probability in [0, 1] that the entity is shown in the image at all (groundability
            head); grounding answers none below its threshold.
    """

    start: int
    end: int
    type: str
    boxes: list[Box] = field(default_factory=list)
    score: float | None = None
    uncertainty: float | None = None
    groundable: float | None = None

    @property
    def span(self) -> tuple[int, int]:
        """``(start, end)`` token span."""
        return self.start, self.end

    def text(self, tokens: list[str]) -> str:
        """Surface string of the entity in ``tokens``, tokens joined by spaces."""
        return " ".join(tokens[self.start : self.end])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``score``/``uncertainty``/``groundable`` only when set."""
        out: dict[str, Any] = {"start": self.start, "end": self.end, "type": self.type, "boxes": self.boxes}
        if self.score is not None:
            out["score"] = self.score
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty
        if self.groundable is not None:
            out["groundable"] = self.groundable
        return out


@dataclass
class Example:
    """One post: tokens, optional image and its entities.

    Attributes:
        id: Post id (unique within a file).
        tokens: Whitespace-free tokens.
        image: Image file name or path (relative to an image folder), or ``None``.
        entities: Entities sorted by ``start``; spans never overlap.
        source: ``"gold"``, ``"synthetic"`` or ``"predicted"``.
        image_size: Optional ``(width, height)`` in pixels when the source states it (Pascal VOC ``<size>``).
        meta: Optional free-form provenance (e.g. seed id and model of synthetic posts).
    """

    id: str
    tokens: list[str]
    image: str | None = None
    entities: list[Entity] = field(default_factory=list)
    source: str = "gold"
    image_size: tuple[int, int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def validate(self, allow_overlaps: bool = False) -> None:
        """Checks tokens, spans, types and boxes.

        Args:
            allow_overlaps: Accept overlapping and duplicate entities (predictions of systems that emit them are
                scored as they are); gold data never has them.

        Raises:
            ValueError: With the post id and the offending token or entity.
        """
        if self.source not in SOURCES:
            raise ValueError(f"post {self.id}: source {self.source!r} is not one of {SOURCES}")
        for i, token in enumerate(self.tokens):
            if any(c.isspace() for c in token):
                raise ValueError(
                    f"post {self.id}: token {i} ({token!r}) contains whitespace (tokens are whitespace-free)"
                )
        last_end = 0
        for ent in sorted(self.entities, key=lambda e: e.start):
            if not 0 <= ent.start < ent.end <= len(self.tokens):
                raise ValueError(f"post {self.id}: span [{ent.start}, {ent.end}) outside 0..{len(self.tokens)}")
            if ent.start < last_end and not allow_overlaps:
                raise ValueError(f"post {self.id}: entity [{ent.start}, {ent.end}) overlaps the previous one")
            last_end = max(last_end, ent.end)
            for box in ent.boxes:
                check_box(box, f"post {self.id}, entity {ent.text(self.tokens)!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the canonical JSONL layout (see ``docs/data-format.md``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "tokens": self.tokens,
            "image": self.image,
            "entities": [e.to_dict() for e in self.entities],
            "source": self.source,
        }
        if self.image_size is not None:
            out["image_size"] = list(self.image_size)
        if self.meta:
            out["meta"] = self.meta
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any], allow_overlaps: bool = False) -> Example:
        """Builds and validates an example from a canonical dict.

        Field types are strict: ``id`` a string (or an integer), ``tokens`` whitespace-free strings, ``image`` a
        string or null, ``image_size`` two positive integers, ``meta`` an object, spans integers (``1.0`` is
        accepted, ``0.7`` is not), ``type`` a string, boxes and scores finite numbers.

        Args:
            record: The dict.
            allow_overlaps: See :meth:`validate`.

        Raises:
            ValueError: Missing or mistyped fields, or an invalid entity.
        """
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        missing = [k for k in ("id", "tokens") if k not in record]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        raw_id = record["id"]
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            raise ValueError(f"'id' must be a string, got {raw_id!r}")
        post_id = str(raw_id)
        tokens = record["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"post {post_id}: 'tokens' must be a list of strings")
        image = record.get("image")
        if image is not None and not isinstance(image, str):
            raise ValueError(f"post {post_id}: 'image' must be a string or null, got {image!r}")
        meta = record.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ValueError(f"post {post_id}: 'meta' must be a JSON object, got {meta!r}")
        size = record.get("image_size")
        if size is not None:
            try:
                size = (_integer(size[0], "width"), _integer(size[1], "height"))
                if len(record["image_size"]) != 2 or min(size) <= 0:
                    raise ValueError("two positive integers expected")
            except (KeyError, TypeError, ValueError):
                raise ValueError(
                    f"post {post_id}: 'image_size' must be [width, height] in pixels, got {record['image_size']!r}"
                ) from None
        raw_entities = record.get("entities")
        if raw_entities is not None and not isinstance(raw_entities, list):
            raise ValueError(f"post {post_id}: 'entities' must be a list, got {raw_entities!r}")
        entities = []
        for raw in raw_entities or []:
            try:
                if not isinstance(raw, dict):
                    raise TypeError("not an object")
                if not isinstance(raw["type"], str) or not raw["type"]:
                    raise TypeError(f"type {raw['type']!r} is not a non-empty string")
                entities.append(
                    Entity(
                        start=_integer(raw["start"], "start"),
                        end=_integer(raw["end"], "end"),
                        type=raw["type"],
                        boxes=[[_number(v, "box coordinate") for v in box] for box in raw.get("boxes") or []],
                        score=_optional_number(raw, "score"),
                        uncertainty=_optional_number(raw, "uncertainty"),
                        groundable=_optional_number(raw, "groundable"),
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"post {post_id}: bad entity {raw!r} ({err})") from None
        example = cls(
            id=post_id,
            tokens=tokens,
            image=image,
            entities=sorted(entities, key=lambda e: e.start),
            source=record.get("source", "gold"),
            image_size=size,
            meta=meta or {},
        )
        example.validate(allow_overlaps=allow_overlaps)
        return example


def _integer(value: Any, what: str) -> int:
    """``value`` as an int: an int, or a float with an integral value; anything else raises ``TypeError``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (isinstance(value, float) and not value.is_integer())
    ):
        raise TypeError(f"{what} {value!r} is not an integer")
    return int(value)


def _number(value: Any, what: str) -> float:
    """``value`` as a finite float; anything else raises ``TypeError`` or ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} {value!r} is not a number")
    if not math.isfinite(value):
        raise ValueError(f"{what} {value!r} is not finite")
    return float(value)


def _optional_number(raw: dict[str, Any], key: str) -> float | None:
    return None if raw.get(key) is None else _number(raw[key], key)


def box_problem(box: Box) -> str | None:
    """What is wrong with ``box`` (not four finite numbers, or not xmin < xmax and ymin < ymax), or ``None``."""
    if len(box) != 4:
        return f"a box needs 4 numbers, got {box}"
    if not all(math.isfinite(v) for v in box):
        return f"box {box} has a coordinate that is not finite"
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        return f"inverted or empty box {box} (need xmin < xmax and ymin < ymax)"
    return None


def check_box(box: Box, where: str) -> None:
    """Raises ``ValueError`` unless ``box`` is four finite numbers with xmin < xmax and ymin < ymax."""
    problem = box_problem(box)
    if problem is not None:
        raise ValueError(f"{where}: {problem}")


def clip_box(box: Box, size: tuple[int, int] | None) -> Box | None:
    """``box`` clipped to the image, or ``None`` when nothing of it is left (it lies entirely outside the image).

    The image is ``[0, width] x [0, height]`` for a known ``size``; otherwise only negative coordinates are clipped.
    """
    hi = (size[0], size[1], size[0], size[1]) if size is not None else (math.inf,) * 4
    clipped = [min(max(float(v), 0.0), float(limit)) for v, limit in zip(box, hi)]
    if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
        return None
    return clipped
