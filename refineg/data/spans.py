"""Projecting strings onto token spans: the one place that decides when a string "is" a run of a post's tokens.

Three matchers, from strict to lenient, and the two normalisations they use:

* :func:`locate_spans`: exact token match after :func:`~refineg.data.tokenize.word_tokenize` (data readers, the
  synthesis labeller);
* :func:`map_spans`: :func:`locate_spans`, then a case- and space-blind pass (:func:`squash`) for what is left
  (MLLM answers in the zero-shot baseline);
* :func:`locate_span`: one corrected string near a given entity, case- and space-blind (refinement span checks);
* :func:`find_spans`: every occurrence of one string, case- and space-blind (the release refinement mode, which
  chooses among them).

:func:`squash` drops every whitespace character and lowercases (so ``"New  York"`` matches the tokens
``["new", "york"]``); :func:`normalize_name` collapses whitespace runs to one space and lowercases (comparing an
entity name an MLLM echoes with the name it was asked about).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from refineg.data.schema import Entity
from refineg.data.tokenize import word_tokenize


def squash(text: str) -> str:
    """``text`` without any whitespace, lowercased."""
    return re.sub(r"\s+", "", text).lower()


def normalize_name(name: Any) -> str:
    """``str(name)`` with whitespace runs collapsed to one space, stripped and lowercased."""
    return re.sub(r"\s+", " ", str(name)).strip().lower()


def locate_spans(tokens: Sequence[str], names: Sequence[str]) -> list[tuple[int, int] | None]:
    """Finds each entity string in ``tokens`` by exact token match, longest string first, without overlaps.

    A name that occurs several times takes its first free occurrence, so a name listed twice labels two mentions.

    Args:
        tokens: The post's tokens.
        names: Entity surface strings (tokenised with :func:`word_tokenize`).

    Returns:
        For each name, in input order, ``(start, end_exclusive)`` or ``None`` when no free occurrence exists.
    """
    taken = [False] * len(tokens)
    result: list[tuple[int, int] | None] = [None] * len(names)
    order = sorted(range(len(names)), key=lambda i: -len(names[i]))
    for i in order:
        needle = word_tokenize(names[i])
        n = len(needle)
        if n == 0:
            continue
        for start in range(len(tokens) - n + 1):
            if list(tokens[start : start + n]) == needle and not any(taken[start : start + n]):
                result[i] = (start, start + n)
                for k in range(start, start + n):
                    taken[k] = True
                break
    return result


def map_spans(tokens: Sequence[str], names: Sequence[str], max_words: int = 16) -> list[tuple[int, int] | None]:
    """Token spans of answered entity strings: the project's exact locator, then a case- and space-blind pass.

    Both passes take the first free occurrence, longest name first, so spans never overlap.

    Returns:
        One ``(start, end_exclusive)`` or ``None`` per name, in input order.
    """
    spans = list(locate_spans(tokens, names))
    taken = [False] * len(tokens)
    for span in spans:
        if span is not None:
            taken[span[0] : span[1]] = [True] * (span[1] - span[0])
    for i in sorted((i for i, s in enumerate(spans) if s is None), key=lambda i: -len(names[i])):
        target = squash(names[i])
        if not target:
            continue
        for start in range(len(tokens)):
            hit = None
            for end in range(start + 1, min(len(tokens), start + max_words) + 1):
                if any(taken[start:end]):
                    break
                joined = squash("".join(tokens[start:end]))
                if joined == target:
                    hit = (start, end)
                if not target.startswith(joined):
                    break
            if hit is not None:
                spans[i] = hit
                taken[hit[0] : hit[1]] = [True] * (hit[1] - hit[0])
                break
    return spans


def locate_span(tokens: Sequence[str], text: str, entity: Entity, max_change: int) -> tuple[int, int] | None:
    """Finds a corrected entity in the post's own words.

    Returns:
        The span of ``tokens`` that spells ``text`` (spaces and case ignored), overlaps ``entity`` and moves each
        boundary by at most ``max_change`` words (the closest to ``entity`` wins), or ``None``.
    """
    target = squash(text)
    if not target:
        return None
    n = len(tokens)
    best = None
    for s in range(max(0, entity.start - max_change), min(n, entity.start + max_change + 1)):
        for e in range(max(s + 1, entity.end - max_change), min(n, entity.end + max_change) + 1):
            if s < entity.end and e > entity.start and squash("".join(tokens[s:e])) == target:
                cost = abs(s - entity.start) + abs(e - entity.end)
                if best is None or cost < best[0]:
                    best = (cost, s, e)
    return None if best is None else (best[1], best[2])


def find_spans(tokens: Sequence[str], text: str) -> list[tuple[int, int]]:
    """Every word span of ``tokens`` that spells ``text`` (case and spaces ignored, :func:`squash`), by start."""
    target = squash(str(text))
    out: list[tuple[int, int]] = []
    if not target:
        return out
    for s in range(len(tokens)):
        built = ""
        for e in range(s, len(tokens)):
            built += squash(tokens[e])
            if not target.startswith(built):
                break
            if built == target:
                out.append((s, e + 1))
                break
    return out
