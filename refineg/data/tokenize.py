"""Word tokenisation of raw text and projection of entity strings onto tokens."""

from __future__ import annotations

import re
from collections.abc import Sequence

# URLs, @mentions and #hashtags stay whole; otherwise words (with inner apostrophes/hyphens/dots) and single symbols.
_TOKEN = re.compile(r"https?://\S+|[@#]\w+|\w+(?:['’\-.]\w+)*|[^\w\s]", re.UNICODE)


def word_tokenize(text: str) -> list[str]:
    """Splits ``text`` into tokens: URLs, mentions and hashtags whole, words, and single punctuation marks."""
    return _TOKEN.findall(text)


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
