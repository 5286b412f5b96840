"""Merging MLLM answers into the small model's predictions.

Rules: a corrected span must be found in the post's own words, overlap the checked span and move each boundary by
at most ``max_boundary_change`` words (anything else is an invented entity and is ignored); it may not overlap
another entity; a type must be one of the inventory; the MLLM never adds an entity; when the backend fails or
its answer is unusable, the small model's answer stays. Every outcome is counted.
"""

from __future__ import annotations

from typing import Any

from refineg.data import Entity
from refineg.data.spans import locate_span

from .backends import Answer

NULLS = (None, "", "null", "none", "n/a")


def is_null(value: Any) -> bool:
    """True for the "no answer" spellings MLLMs use (``Null``, ``None``, ``null``, empty)."""
    return value is None or (isinstance(value, str) and value.strip().lower() in NULLS)


def merge_span(
    entities: list[Entity | None], j: int, tokens: list[str], answer: Answer, max_change: int, allow_drop: bool
) -> str:
    """Applies a span-check answer to ``entities[j]`` in place (``None`` marks a dropped entity).

    Returns:
        The outcome: ``failed``, ``budget_exhausted``, ``invalid``, ``dropped``, ``drop_refused``, ``kept``,
        ``corrected``, ``rejected_invented`` or ``rejected_overlap``.
    """
    if not answer.ok:
        return "budget_exhausted" if answer.status == "budget_exhausted" else "failed"
    ent = entities[j]
    assert ent is not None
    if "corrected_entity" not in answer.parsed:
        return "invalid"
    value = answer.parsed["corrected_entity"]
    if is_null(value):
        if not allow_drop:
            return "drop_refused"
        entities[j] = None
        return "dropped"
    if not isinstance(value, str):
        return "invalid"
    span = locate_span(tokens, value, ent, max_change)
    if span is None:
        return "rejected_invented"
    if span == ent.span:
        return "kept"
    for k, other in enumerate(entities):
        if k != j and other is not None and span[0] < other.end and span[1] > other.start:
            return "rejected_overlap"
    ent.start, ent.end = span
    return "corrected"


def _clip_box(box: list[float], size: tuple[int, int] | None) -> list[float] | None:
    x1, y1, x2, y2 = box
    if size is not None:
        x1, x2 = max(0.0, x1), min(float(size[0]), x2)
        y1, y2 = max(0.0, y1), min(float(size[1]), y2)
    return [round(x1, 2), round(y1, 2), round(x2, 2), round(y2, 2)] if x1 < x2 and y1 < y2 else None


def merge_type(
    ent: Entity, answer: Answer, types: list[str], use_boxes: bool, has_image: bool, image_size: tuple[int, int] | None
) -> list[str]:
    """Applies a type-and-box answer to ``ent`` in place.

    Returns:
        Outcomes: one of ``failed``, ``budget_exhausted``, ``type_kept``, ``retyped``, ``invalid_type``, and,
        when boxes are used and the post has an image, one of ``box_set``, ``box_null``, ``box_invalid``,
        ``box_missing`` (the answer has no ``corrected_bounding_box``; the boxes stay as they were).
    """
    if not answer.ok:
        return ["budget_exhausted" if answer.status == "budget_exhausted" else "failed"]
    out = []
    etype = answer.parsed.get("corrected_type")
    if isinstance(etype, str) and etype.strip().upper() in {t.upper() for t in types}:
        new = next(t for t in types if t.upper() == etype.strip().upper())
        out.append("type_kept" if new == ent.type else "retyped")
        ent.type = new
    else:
        out.append("invalid_type")
    if use_boxes and has_image and "corrected_bounding_box" not in answer.parsed:
        out.append("box_missing")
    elif use_boxes and has_image:
        box = answer.parsed["corrected_bounding_box"]
        if is_null(box):
            ent.boxes = []
            out.append("box_null")
        elif isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            clipped = _clip_box([float(v) for v in box], image_size)
            if clipped is None:
                out.append("box_invalid")
            else:
                ent.boxes = [clipped]
                out.append("box_set")
        else:
            out.append("box_invalid")
    return out
