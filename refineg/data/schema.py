"""Canonical GMNER data model: :class:`Example` holds a post, :class:`Entity` one labelled span."""

from __future__ import annotations

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

    def validate(self) -> None:
        """Checks spans, types and boxes.

        Raises:
            ValueError: With the post id and the offending entity.
        """
        if self.source not in SOURCES:
            raise ValueError(f"post {self.id}: source {self.source!r} is not one of {SOURCES}")
        last_end = 0
        for ent in sorted(self.entities, key=lambda e: e.start):
            if not 0 <= ent.start < ent.end <= len(self.tokens):
                raise ValueError(f"post {self.id}: span [{ent.start}, {ent.end}) outside 0..{len(self.tokens)}")
            if ent.start < last_end:
                raise ValueError(f"post {self.id}: entity [{ent.start}, {ent.end}) overlaps the previous one")
            last_end = ent.end
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
    def from_dict(cls, record: dict[str, Any]) -> Example:
        """Builds and validates an example from a canonical dict.

        Raises:
            ValueError: Missing or mistyped fields, or an invalid entity.
        """
        if not isinstance(record, dict):
            raise ValueError(f"expected a JSON object, got {type(record).__name__}")
        missing = [k for k in ("id", "tokens") if k not in record]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        tokens = record["tokens"]
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"post {record['id']}: 'tokens' must be a list of strings")
        entities = []
        for raw in record.get("entities") or []:
            try:
                entities.append(
                    Entity(
                        start=int(raw["start"]),
                        end=int(raw["end"]),
                        type=str(raw["type"]),
                        boxes=[[float(v) for v in box] for box in raw.get("boxes") or []],
                        score=None if raw.get("score") is None else float(raw["score"]),
                        uncertainty=None if raw.get("uncertainty") is None else float(raw["uncertainty"]),
                        groundable=None if raw.get("groundable") is None else float(raw["groundable"]),
                    )
                )
            except (KeyError, TypeError, ValueError) as err:
                raise ValueError(f"post {record['id']}: bad entity {raw!r} ({err})") from None
        size = record.get("image_size")
        example = cls(
            id=str(record["id"]),
            tokens=tokens,
            image=record.get("image"),
            entities=sorted(entities, key=lambda e: e.start),
            source=record.get("source", "gold"),
            image_size=None if size is None else (int(size[0]), int(size[1])),
            meta=record.get("meta") or {},
        )
        example.validate()
        return example


def check_box(box: Box, where: str) -> None:
    """Raises ``ValueError`` unless ``box`` is four finite numbers with xmin < xmax and ymin < ymax."""
    if len(box) != 4:
        raise ValueError(f"{where}: a box needs 4 numbers, got {box}")
    x1, y1, x2, y2 = box
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"{where}: inverted or empty box {box} (need xmin < xmax and ymin < ymax)")
