"""Turn an MLLM's grounding answer (decoded JSON) into boxes per entity, in original image pixels.

Accepted answer shapes: a JSON array of ``{"entity", "entity_type", "bounding_box"}`` objects (also under the key
``"entities"`` of an object). ``bounding_box`` (or ``boxes`` / ``bbox``) may be one box ``[x1, y1, x2, y2]``, a list
of boxes, ``{"xmin", "ymin", "xmax", "ymax"}``, or ``[]`` / ``null`` / ``"Null"`` / ``"none"`` for no box. Items are
matched to the asked entities by name (case and spacing ignored), else by position. Anything malformed gives no
box for that item and a problem note; nothing raises. An item without any box key (say ``"region"``) is a
problem too, not a silent "none". :func:`is_grounding_answer` tells a decoded value of this shape from other JSON in
the answer (a box list in the reasoning, say), so that the LLM layer takes the right one or asks again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from refineg.data.schema import Box
from refineg.data.spans import normalize_name
from refineg.llm import ImageScale

_NONE_WORDS = {"", "null", "none", "n/a", "na", "no", "[]"}
_BOX_KEYS = ("bounding_box", "bounding_boxes", "boxes", "box", "bbox")


@dataclass
class ParsedAnswer:
    """Boxes per asked entity and what was wrong with the answer.

    Attributes:
        boxes: Per asked entity (same order), boxes in original pixels (``[]`` = none).
        problems: Human-readable notes (``"item 2: malformed box ..."``); empty for a clean answer.
        dropped: Boxes dropped as malformed, inverted, degenerate or too large.
        unusable: Indices of asked entities left without a box because their part of the answer could not be
            used (no item for them, no box key, only unreadable or dropped boxes), as opposed to an explicit none.
    """

    boxes: list[list[Box]]
    problems: list[str] = field(default_factory=list)
    dropped: int = 0
    unusable: list[int] = field(default_factory=list)


def _is_item(value: Any) -> bool:
    return isinstance(value, dict) and ("entity" in value or any(k in value for k in _BOX_KEYS))


def is_grounding_answer(answer: Any) -> bool:
    """Whether a decoded JSON value has the shape of a grounding answer (see the module docstring).

    A list that is empty or holds at least one object with an ``entity`` or box key; or an object wrapping such a
    list under ``entities`` / ``results`` / ``answer``; or one such object.
    """
    if isinstance(answer, dict):
        inner = next((answer[k] for k in ("entities", "results", "answer") if isinstance(answer.get(k), list)), None)
        if inner is None:
            return _is_item(answer)
        answer = inner
    return isinstance(answer, list) and (not answer or any(_is_item(x) for x in answer))


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def raw_boxes(value: Any) -> tuple[list[list[float]], list[str]]:
    """Candidate boxes (sent pixels, not yet checked for order or size) and problems from one answer value."""
    if value is None:
        return [], []
    if isinstance(value, str):
        return ([], []) if normalize_name(value) in _NONE_WORDS else ([], [f"unreadable box {value!r}"])
    if isinstance(value, dict):
        keys = ("xmin", "ymin", "xmax", "ymax")
        if all(k in value for k in keys):
            return raw_boxes([value[k] for k in keys])
        return [], [f"unreadable box {value!r}"]
    if not isinstance(value, list):
        return [], [f"unreadable box {value!r}"]
    if not value:
        return [], []
    if all(not isinstance(v, (list, dict)) for v in value):  # one flat box
        nums = [_number(v) for v in value]
        if len(nums) != 4 or any(n is None for n in nums):
            return [], [f"malformed box {value!r}"]
        return [[float(n) for n in nums if n is not None]], []
    boxes, problems = [], []
    for item in value:
        got, bad = raw_boxes(item)
        boxes.extend(got)
        problems.extend(bad)
    return boxes, problems


def clean_boxes(
    candidates: Sequence[Sequence[float]],
    scale: ImageScale,
    max_boxes: int,
    min_side: float = 1.0,
    max_area_fraction: float | None = None,
) -> tuple[list[Box], list[str]]:
    """Maps sent-pixel boxes to original pixels (rounded), clips them to the image and keeps the usable ones.

    Args:
        candidates: Boxes ``[x1, y1, x2, y2]`` in the pixels of the image as sent.
        scale: Original <-> sent mapping.
        max_boxes: Most boxes kept (in the given order; duplicates count once).
        min_side: Least width and height in original pixels after clipping.
        max_area_fraction: Boxes covering more of the image than this are dropped (``None``: no limit).

    Returns:
        The kept boxes and one note per dropped box.
    """
    kept: list[Box] = []
    problems = []
    w, h = scale.original_size
    for box in candidates:
        if not (box[0] < box[2] and box[1] < box[3]):
            problems.append(f"inverted or empty box {list(box)}")
            continue
        orig = scale.to_original(box, round_to_int=True, clip=True)
        if orig[2] - orig[0] < min_side or orig[3] - orig[1] < min_side:
            problems.append(f"degenerate box {list(box)} (outside the image or under {min_side} px)")
            continue
        if max_area_fraction is not None and (orig[2] - orig[0]) * (orig[3] - orig[1]) > max_area_fraction * w * h:
            problems.append(f"box {list(box)} covers more than {max_area_fraction:.0%} of the image")
            continue
        if orig not in kept and len(kept) < max_boxes:
            kept.append(orig)
    return kept, problems


def parse_answer(
    answer: Any,
    entities: Sequence[tuple[str, str]],
    scale: ImageScale,
    max_boxes: int = 1,
    min_side: float = 1.0,
    max_area_fraction: float | None = None,
) -> ParsedAnswer:
    """Boxes per asked entity from a decoded answer.

    Args:
        answer: The decoded JSON answer.
        entities: ``(surface string, type)`` of each asked entity, in the order they were listed.
        scale: Original <-> sent mapping of the query image.
        max_boxes: Most boxes kept per entity.
        min_side: See :func:`clean_boxes`.
        max_area_fraction: See :func:`clean_boxes`.
    """
    out = ParsedAnswer([[] for _ in entities])
    if isinstance(answer, dict):
        inner = next((answer[k] for k in ("entities", "results", "answer") if isinstance(answer.get(k), list)), None)
        answer = inner if inner is not None else [answer]
    if not isinstance(answer, list):
        out.problems.append(f"answer is a {type(answer).__name__}, not a list")
        return out
    names = [normalize_name(name) for name, _ in entities]
    assigned = [False] * len(entities)
    for pos, item in enumerate(answer):
        if not isinstance(item, dict):
            out.problems.append(f"item {pos}: not an object ({item!r:.60})")
            continue
        target = None
        if "entity" in item:
            name = normalize_name(item["entity"])
            target = next((i for i, n in enumerate(names) if n == name and not assigned[i]), None)
            if target is None:
                out.problems.append(f"item {pos}: entity {item['entity']!r} was not asked")
                continue
        elif pos < len(entities) and not assigned[pos]:
            target = pos
        else:
            out.problems.append(f"item {pos}: no entity name and no free position")
            continue
        assigned[target] = True
        key = next((k for k in _BOX_KEYS if k in item), None)
        if key is None:
            out.problems.append(
                f"item {pos}: no box key (keys {sorted(map(str, item))[:6]}; expected {' / '.join(_BOX_KEYS)})"
            )
            out.unusable.append(target)
            continue
        cands, bad = raw_boxes(item[key])
        kept, dropped = clean_boxes(cands, scale, max_boxes, min_side, max_area_fraction)
        out.problems.extend(f"item {pos}: {p}" for p in bad + dropped)
        out.dropped += len(bad) + len(dropped)
        out.boxes[target] = kept
        if not kept and (bad or dropped):
            out.unusable.append(target)
    missing = [i for i, a in enumerate(assigned) if not a]
    if missing:
        out.problems.append(f"no answer for {[entities[i][0] for i in missing]}")
        out.unusable.extend(missing)
    out.unusable.sort()
    return out
