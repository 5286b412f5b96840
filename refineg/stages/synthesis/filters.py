"""Rule filters for synthetic posts: generic mentions, length bounds, exact and near duplicates."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace

from refineg.data import Example
from refineg.stages.synthesis.report import SynthesisReport

_WORD = re.compile(r"\w", re.UNICODE)


class GenericMentionRule:
    """Decides whether a mention names a kind of thing ("soldier", "the police") rather than one specific thing.

    A mention is generic when, lower-cased and with leading ``strip`` words removed, it is in ``lexicon``, or
    when the whole mention matches one of ``patterns`` (case-insensitive).

    Args:
        lexicon: Generic mentions.
        patterns: Regular expressions matched against the whole mention.
        strip: Leading words ignored before the lexicon look-up (determiners, numerals).
    """

    def __init__(self, lexicon: Iterable[str] = (), patterns: Iterable[str] = (), strip: Iterable[str] = ()) -> None:
        self.lexicon = {" ".join(w.casefold().split()) for w in lexicon}
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]
        self.strip = {w.casefold() for w in strip}

    def __call__(self, mention: str) -> bool:
        """True when ``mention`` (words joined by single spaces) is generic."""
        if any(p.fullmatch(mention) for p in self.patterns):
            return True
        words = mention.casefold().split()
        while words:
            if " ".join(words) in self.lexicon:
                return True
            if words[0] not in self.strip:
                return False
            words = words[1:]
        return False


def reject_generic(
    examples: Sequence[Example], rule: GenericMentionRule, action: str, report: SynthesisReport
) -> list[Example]:
    """Removes generic mentions: their label (``action="drop_entity"``) or their post (``"drop_post"``).

    Counted as ``generic_mention`` in ``report.dropped_entities`` or ``report.rejected_posts``.
    """
    out = []
    for ex in examples:
        generic = [ent for ent in ex.entities if rule(ent.text(ex.tokens))]
        if not generic:
            out.append(ex)
        elif action == "drop_post":
            report.reject("generic_mention")
        else:
            report.drop_entity("generic_mention", len(generic))
            out.append(replace(ex, entities=[e for e in ex.entities if e not in generic]))
    return out


def within_length(
    examples: Sequence[Example], min_tokens: int, max_tokens: int, report: SynthesisReport
) -> list[Example]:
    """Keeps posts with ``min_tokens <= len(tokens) <= max_tokens`` (rejections: ``too_short``, ``too_long``)."""
    out = []
    for ex in examples:
        if len(ex.tokens) < min_tokens:
            report.reject("too_short")
        elif len(ex.tokens) > max_tokens:
            report.reject("too_long")
        else:
            out.append(ex)
    return out


def normalise(tokens: Sequence[str]) -> tuple[str, ...]:
    """Lower-cased word tokens without punctuation-only tokens (the key of exact-duplicate detection)."""
    return tuple(t.casefold() for t in tokens if _WORD.search(t))


def shingles(words: Sequence[str], n: int = 3) -> set[tuple[str, ...]]:
    """Word ``n``-grams of ``words`` (the whole sequence when it is shorter than ``n``)."""
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


class NearDuplicateIndex:
    """Incremental exact and near-duplicate detection over word-trigram sets (Jaccard similarity).

    An inverted index from trigram to posts keeps each look-up proportional to the posts sharing a trigram, so
    tens of thousands of posts stay cheap.

    Args:
        threshold: Jaccard similarity at or above which a post is a near duplicate; ``None`` checks exact
            duplicates only.
    """

    def __init__(self, threshold: float | None = 0.8) -> None:
        self.threshold = threshold
        self._exact: dict[tuple[str, ...], str] = {}
        self._sets: list[set[tuple[str, ...]]] = []
        self._labels: list[str] = []
        self._postings: dict[tuple[str, ...], list[int]] = defaultdict(list)

    def match(self, tokens: Sequence[str]) -> tuple[str, str] | None:
        """``("exact" | "near", label of the matched post)`` or ``None``."""
        words = normalise(tokens)
        if words in self._exact:
            return "exact", self._exact[words]
        if self.threshold is None:
            return None
        grams = shingles(words)
        shared: Counter = Counter()
        for gram in grams:
            shared.update(self._postings.get(gram, ()))
        for idx, common in shared.items():
            if common / (len(grams) + len(self._sets[idx]) - common) >= self.threshold:
                return "near", self._labels[idx]
        return None

    def add(self, tokens: Sequence[str], label: str) -> None:
        """Indexes a kept post; ``label`` says what it is (``"gold"`` or ``"synthetic"``)."""
        words = normalise(tokens)
        self._exact.setdefault(words, label)
        if self.threshold is None:
            return
        grams = shingles(words)
        idx = len(self._sets)
        self._sets.append(grams)
        self._labels.append(label)
        for gram in grams:
            self._postings[gram].append(idx)


def remove_duplicates(
    examples: Sequence[Example], seeds: Sequence[Example], threshold: float | None, report: SynthesisReport
) -> list[Example]:
    """Keeps the first of each group of (near-)duplicate posts; posts that copy a seed are removed too.

    Rejection reasons: ``duplicate``, ``near_duplicate``, ``copy_of_seed``, ``near_copy_of_seed``.
    """
    index = NearDuplicateIndex(threshold)
    for seed in seeds:
        index.add(seed.tokens, "gold")
    out = []
    for ex in examples:
        hit = index.match(ex.tokens)
        if hit is None:
            index.add(ex.tokens, "synthetic")
            out.append(ex)
            continue
        kind, label = hit
        if label == "gold":
            report.reject("copy_of_seed" if kind == "exact" else "near_copy_of_seed")
        else:
            report.reject("duplicate" if kind == "exact" else "near_duplicate")
    return out
