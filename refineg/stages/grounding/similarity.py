"""How the context selector turns its per-term similarities into one score per (query, pool post): a registry.

``selector.entity_similarity`` names the rule:

- ``best_match`` (refineg's, the default): the entity term is, per predicted entity of the query, the best cosine
  with the pool post's gold entity strings, pooled over the query's entities by ``entity_pooling`` (``max`` or
  ``mean``; 0 for a pool post without entities); the score is the weighted *average* of the terms, the image term
  dropped (weights renormalised) where either image is missing and the entity term where the query has no entity.
- ``release`` (what ReFineG's released scripts do): the entity term is the *sum* over every (predicted entity,
  pool gold entity) pair of their cosine, plus ``same_label_bonus`` (0.8) for each pair with the same label; each
  term's similarities are min-max normalised to [0, 1] before the weighted *sum*
  ``w_text * T + w_image * I + w_entity * E``.

Min-max normalisation in ``release`` is per query, over the pool posts it can choose from (its own post excluded):
normalising a whole query-by-pool matrix would make a query's demonstrations depend on which other queries share
its batch. A term that is constant over a query's row normalises to 0; image similarities where either image is
missing are left out of the min and max and count as 0.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from refineg.registry import Registry

ENTITY_SIMILARITIES = Registry("similarity rule")


@dataclass
class SimilarityTerms:
    """What a scoring rule combines, for ``B`` queries and a pool of ``N`` posts.

    Attributes:
        text: ``(B, N)`` cosine of the post texts.
        pair_cos: ``(Eq, M)`` cosine of every predicted entity string of the queries (``Eq`` in all) with every
            gold entity string of the pool (``M`` in all).
        pair_same_label: ``(Eq, M)`` bool, the two entities have the same label.
        query_owner: ``(Eq,)`` query index of each predicted entity.
        pool_owner: ``(M,)`` pool index of each gold entity.
        own: ``(B, N)`` bool, the pool post is the query itself (never chosen).
        image: ``(B, N)`` image cosine, or ``None`` when the image term is not used.
        image_ok: ``(B, N)`` bool, both images exist (``None`` with ``image``).
    """

    text: Tensor
    pair_cos: Tensor
    pair_same_label: Tensor
    query_owner: Tensor
    pool_owner: Tensor
    own: Tensor
    image: Tensor | None = None
    image_ok: Tensor | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(B, N)``."""
        return int(self.text.shape[0]), int(self.text.shape[1])


@dataclass
class SimilarityWeights:
    """The rule's settings (the selector config's fields of the same names)."""

    w_text: float = 0.4
    w_image: float = 0.2
    w_entity: float = 0.6
    entity_pooling: str = "max"
    same_label_bonus: float = 0.8


Rule = Callable[[SimilarityTerms, SimilarityWeights], Tensor]


def list_entity_similarities() -> list[str]:
    """Names of the registered scoring rules."""
    return ENTITY_SIMILARITIES.list()


def get_entity_similarity(name: str) -> Rule:
    """The scoring rule registered as ``name``.

    Raises:
        KeyError: Unknown name (the message lists the known ones).
    """
    return ENTITY_SIMILARITIES.get(name)


def minmax_rows(values: Tensor, valid: Tensor) -> Tensor:
    """Min-max normalises each row over its ``valid`` entries to [0, 1]; invalid entries and constant rows give 0.

    Args:
        values: ``(B, N)``.
        valid: ``(B, N)`` bool, the entries that take part in the row's min and max.
    """
    lo = torch.where(valid, values, torch.full_like(values, float("inf"))).amin(dim=1, keepdim=True)
    hi = torch.where(valid, values, torch.full_like(values, float("-inf"))).amax(dim=1, keepdim=True)
    span = hi - lo
    ok = valid & torch.isfinite(span) & (span > 0)
    return torch.where(ok, (values - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(values))


def pair_sums(terms: SimilarityTerms, bonus: float) -> Tensor:
    """``(B, N)``: per query and pool post, the sum over their entity pairs of cosine + ``bonus`` * same label."""
    b, n = terms.shape
    pair = terms.pair_cos + bonus * terms.pair_same_label.to(terms.pair_cos.dtype)  # (Eq, M)
    per_post = torch.zeros(pair.shape[0], n, dtype=pair.dtype).index_add_(1, terms.pool_owner, pair)  # (Eq, N)
    return torch.zeros(b, n, dtype=pair.dtype).index_add_(0, terms.query_owner, per_post)


def best_match_entity(terms: SimilarityTerms, pooling: str) -> Tensor:
    """The ``best_match`` entity term ``(B, N)``; NaN for a query without entities.

    Per predicted entity the best cosine with the pool post's gold entities (0 without any), pooled over the
    query's entities by ``pooling`` (``max`` or ``mean``).
    """
    b, n = terms.shape
    eq = terms.pair_cos.shape[0]
    out = torch.full((b, n), float("nan"))
    if eq == 0:
        return out
    per_post = torch.full((eq, n), float("-inf"))
    if terms.pool_owner.numel():
        per_post = per_post.scatter_reduce(1, terms.pool_owner.expand(eq, -1), terms.pair_cos, "amax")
    per_post = torch.where(torch.isinf(per_post), torch.zeros_like(per_post), per_post)
    qidx = terms.query_owner
    if pooling == "max":
        pooled = torch.full((b, n), float("-inf")).scatter_reduce(0, qidx[:, None].expand(-1, n), per_post, "amax")
    else:
        pooled = torch.zeros(b, n).index_add_(0, qidx, per_post)
        pooled = pooled / torch.bincount(qidx, minlength=b).clamp(min=1)[:, None]
    has = torch.bincount(qidx, minlength=b) > 0
    out[has] = pooled[has]
    return out


@ENTITY_SIMILARITIES.register("best_match")
def best_match_score(terms: SimilarityTerms, w: SimilarityWeights) -> Tensor:
    """The default rule: weighted average of text, image and best-match entity cosines (see the module docstring)."""
    ent = best_match_entity(terms, w.entity_pooling)
    has_ent = ~torch.isnan(ent)
    num = w.w_text * terms.text + w.w_entity * torch.nan_to_num(ent, nan=0.0)
    den = w.w_text + w.w_entity * has_ent.float()
    if terms.image is not None and terms.image_ok is not None:
        num = num + w.w_image * terms.image * terms.image_ok
        den = den + w.w_image * terms.image_ok.float()
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


@ENTITY_SIMILARITIES.register("release")
def release_score(terms: SimilarityTerms, w: SimilarityWeights) -> Tensor:
    """The released scripts' rule: min-max normalised text, image and pair-sum entity terms, weighted sum."""
    free = ~terms.own
    total = w.w_text * minmax_rows(terms.text, free)
    total = total + w.w_entity * minmax_rows(pair_sums(terms, w.same_label_bonus), free)
    if terms.image is not None and terms.image_ok is not None:
        total = total + w.w_image * minmax_rows(terms.image, free & terms.image_ok)
    return total
