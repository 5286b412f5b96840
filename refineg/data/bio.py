"""BIO tags <-> entity spans, with conlleval/seqeval's default (lenient IOB2) chunk rules."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from refineg.data.schema import Entity

TAG_PATTERN = re.compile(r"^(?:O|[BI]-\S+)$")


def split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``.

    Raises:
        ValueError: The tag is not ``O``, ``B-<type>`` or ``I-<type>``.
    """
    if not TAG_PATTERN.match(tag):
        raise ValueError(f"unknown tag {tag!r} (expected O, B-<type> or I-<type>)")
    return (tag, "") if tag == "O" else (tag[0], tag[2:])


def _ends(prev: str, prev_type: str, cur: str, cur_type: str) -> bool:
    """True when the chunk that holds the previous token ends before the current one (conlleval's endOfChunk)."""
    if prev == "O":
        return False
    return cur in ("B", "O") or prev_type != cur_type


def _starts(prev: str, prev_type: str, cur: str, cur_type: str) -> bool:
    """True when a chunk starts at the current token (conlleval's startOfChunk)."""
    if cur == "O":
        return False
    return cur == "B" or prev == "O" or prev_type != cur_type


def tags_to_spans(tags: Sequence[str]) -> list[tuple[int, int, str]]:
    """Decodes BIO tags into ``(start, end_exclusive, type)`` spans.

    An ``I-X`` after ``O`` or after a chunk of another type starts a new chunk, as in conlleval and seqeval's
    default mode.
    """
    spans: list[tuple[int, int, str]] = []
    prev, prev_type, start = "O", "", -1
    for i, tag in enumerate(list(tags) + ["O"]):
        cur, cur_type = split_tag(tag)
        if _ends(prev, prev_type, cur, cur_type):
            spans.append((start, i, prev_type))
        if _starts(prev, prev_type, cur, cur_type):
            start = i
        prev, prev_type = cur, cur_type
    return spans


def tags_to_entities(tags: Sequence[str]) -> list[Entity]:
    """Decodes BIO tags into :class:`Entity` objects without boxes."""
    return [Entity(start=s, end=e, type=t) for s, e, t in tags_to_spans(tags)]


def entities_to_tags(num_tokens: int, entities: Iterable[Entity]) -> list[str]:
    """Encodes non-overlapping entities as IOB2 tags of length ``num_tokens``."""
    tags = ["O"] * num_tokens
    for ent in entities:
        tags[ent.start] = f"B-{ent.type}"
        for i in range(ent.start + 1, ent.end):
            tags[i] = f"I-{ent.type}"
    return tags


def bio_labels(types: Sequence[str]) -> list[str]:
    """Label inventory ``["O", "B-T1", "I-T1", ...]`` for the given entity types."""
    labels = ["O"]
    for t in types:
        labels += [f"B-{t}", f"I-{t}"]
    return labels
