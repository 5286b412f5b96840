"""The LLM-free synthesiser: gazetteer mention swapping and context recombination of gold posts.

Not ReFineG's method (which asks an LLM); a cheap stand-in for users without an LLM and for the embedded default.
Every new post is a gold context whose entity mentions are replaced by other mentions of the same type, and,
optionally, the beginning of one gold post joined to the end of another (cut outside entities). Gold posts are
fully labelled, so these posts are too.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from refineg.data import Entity, Example
from refineg.data.tokenize import word_tokenize
from refineg.stages.synthesis.base import SYNTHESIZERS
from refineg.stages.synthesis.report import SynthesisReport

Mention = tuple[str, ...]


def build_gazetteer(
    seeds: Sequence[Example], types: Sequence[str], extra_file: str | Path | None = None
) -> dict[str, list[Mention]]:
    """Mentions per type, in first-seen order: the seeds' entities, then ``extra_file`` (``TYPE<TAB>mention``).

    Raises:
        ValueError: A line of ``extra_file`` without a tab, or with a type outside ``types``.
    """
    gazetteer: dict[str, dict[Mention, None]] = {t: {} for t in types}
    for seed in seeds:
        for ent in seed.entities:
            gazetteer.setdefault(ent.type, {})[tuple(seed.tokens[ent.start : ent.end])] = None
    if extra_file is not None:
        for lineno, line in enumerate(Path(extra_file).read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(f"{extra_file}:{lineno}: expected TYPE<TAB>mention")
            etype, mention = line.split("\t", 1)
            if etype not in gazetteer:
                raise ValueError(f"{extra_file}:{lineno}: type {etype!r} is not one of {list(types)}")
            tokens = tuple(word_tokenize(mention))
            if tokens:
                gazetteer[etype][tokens] = None
    return {t: list(m) for t, m in gazetteer.items()}


def _cut_points(ex: Example) -> list[int]:
    """Token positions ``1..len-1`` that fall outside every entity, central half first when there is one."""
    inside = {i for e in ex.entities for i in range(e.start + 1, e.end)}
    points = [i for i in range(1, len(ex.tokens)) if i not in inside]
    central = [i for i in points if len(ex.tokens) / 4 <= i <= 3 * len(ex.tokens) / 4]
    return central or points


def recombine(head: Example, tail: Example, rng: random.Random) -> tuple[list[str], list[Entity]] | None:
    """``head``'s tokens up to a cut plus ``tail``'s tokens from a cut, with their entities; ``None`` if no cut."""
    cuts_a, cuts_b = _cut_points(head), _cut_points(tail)
    if not cuts_a or not cuts_b:
        return None
    i, j = rng.choice(cuts_a), rng.choice(cuts_b)
    tokens = head.tokens[:i] + tail.tokens[j:]
    entities = [Entity(e.start, e.end, e.type) for e in head.entities if e.end <= i]
    entities += [Entity(e.start - j + i, e.end - j + i, e.type) for e in tail.entities if e.start >= j]
    return tokens, entities


def swap_mentions(
    tokens: Sequence[str], entities: Sequence[Entity], gazetteer: dict[str, list[Mention]], rng: random.Random
) -> tuple[list[str], list[Entity], list[list[str]]]:
    """Replaces each mention by another gazetteer mention of its type (the same surface gets the same new one).

    Returns:
        ``(tokens, entities, swaps)`` where ``swaps`` lists ``[old, new]`` surface pairs.
    """
    chosen: dict[tuple[Mention, str], Mention] = {}
    out_tokens: list[str] = []
    out_entities: list[Entity] = []
    swaps: list[list[str]] = []
    pos = 0
    for ent in sorted(entities, key=lambda e: e.start):
        out_tokens.extend(tokens[pos : ent.start])
        old = tuple(tokens[ent.start : ent.end])
        key = (old, ent.type)
        if key not in chosen:
            options = [m for m in gazetteer.get(ent.type, []) if m != old]
            chosen[key] = rng.choice(options) if options else old
            if chosen[key] != old:
                swaps.append([" ".join(old), " ".join(chosen[key])])
        new = chosen[key]
        out_entities.append(Entity(len(out_tokens), len(out_tokens) + len(new), ent.type))
        out_tokens.extend(new)
        pos = ent.end
    out_tokens.extend(tokens[pos:])
    return out_tokens, out_entities, swaps


@SYNTHESIZERS.register("swap")
class SwapSynthesizer:
    """swap: gazetteer mention swapping + context recombination, no LLM.

    Per seed, ``per_seed`` new posts: with probability ``recombine_prob`` (always for seeds without entities,
    whose posts can only change that way) the seed's beginning is joined to another seed's end; then every
    mention is swapped for another mention of its type from the gazetteer. A post identical to its seed or to an
    earlier post is retried up to ``max_tries`` times; requests that still fail are counted as
    ``no_new_variant``. Deterministic for a given ``seed``.

    Args:
        types: Entity types.
        per_seed: New posts per seed.
        gazetteer: Optional ``TYPE<TAB>mention`` file extending the seeds' mentions.
        recombine_prob: Probability of context recombination.
        max_tries: Attempts per requested post.
        seed: Random seed.
        progress: Show a progress bar over seeds.
    """

    name = "swap"

    def __init__(
        self,
        types: Sequence[str],
        per_seed: int = 10,
        gazetteer: str | Path | None = None,
        recombine_prob: float = 0.3,
        max_tries: int = 5,
        seed: int = 0,
        progress: bool = True,
    ) -> None:
        self.types, self.per_seed, self.gazetteer_file = list(types), per_seed, gazetteer
        self.recombine_prob, self.max_tries, self.seed, self.progress = recombine_prob, max_tries, seed, progress

    @classmethod
    def from_config(cls, cfg: Any, work_dir: Path) -> SwapSynthesizer:
        """Builds from a :class:`~refineg.stages.synthesis.config.SynthesisConfig` node (``swap.*`` keys)."""
        s = cfg.swap
        return cls(list(cfg.types), s.per_seed, s.gazetteer, s.recombine_prob, s.max_tries, cfg.seed, cfg.progress)

    def synthesize(self, seeds: Sequence[Example], report: SynthesisReport) -> list[Example]:
        """New posts for ``seeds`` (see the class docstring)."""
        rng = random.Random(self.seed)
        gazetteer = build_gazetteer(seeds, self.types, self.gazetteer_file)
        with_entities = [s for s in seeds if s.entities]
        without = [s for s in seeds if not s.entities]
        seen = {tuple(s.tokens) for s in seeds}
        report.requested += self.per_seed * len(seeds)
        out: list[Example] = []
        for seed in tqdm(seeds, desc="swap synthesis", unit="seed", disable=not self.progress):
            partners = [s for s in (with_entities if seed.entities else without) if s is not seed]
            for j in range(self.per_seed):
                for _ in range(self.max_tries):
                    made = self._variant(seed, partners, gazetteer, rng)
                    if made is not None and tuple(made[0]) not in seen:
                        break
                else:
                    report.reject("no_new_variant")
                    continue
                tokens, entities, meta = made
                seen.add(tuple(tokens))
                meta = {
                    "synthesizer": self.name,
                    "backend": None,
                    "model": None,
                    "prompt_hash": None,
                    "seed_id": seed.id,
                    **meta,
                }
                out.append(Example(f"swap-{seed.id}-{j}", tokens, None, entities, "synthetic", meta=meta))
        report.produced += len(out)
        return out

    def _variant(
        self, seed: Example, partners: Sequence[Example], gazetteer: dict[str, list[Mention]], rng: random.Random
    ) -> tuple[list[str], list[Entity], dict[str, Any]] | None:
        tokens, entities, meta = list(seed.tokens), list(seed.entities), {}
        if partners and (not seed.entities or rng.random() < self.recombine_prob):
            partner = rng.choice(partners)
            joined = recombine(seed, partner, rng)
            if joined is not None:
                tokens, entities = joined
                meta["partner_id"] = partner.id
        if not entities and "partner_id" not in meta:
            return None
        tokens, entities, swaps = swap_mentions(tokens, entities, gazetteer, rng)
        meta["swaps"] = swaps
        return tokens, entities, meta
