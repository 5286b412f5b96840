"""Heads computed from per-word label probabilities: 1 - max probability (mean or min) and normalised entropy.

Per-word probabilities are the CRF token marginals for a CRF tagger and the softmax of the emissions otherwise.
Per field, a word's distribution is collapsed to what the field asks:

- span: ``{O, B-*, I-*}`` (is this word outside, the first word, or inside an entity of any type);
- type: the distribution over types given that the word is part of an entity.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (
    BatchContext,
    EntityUncertainty,
    UncertaintyHead,
    clamp01,
    label_index,
    register_uncertainty_head,
)


def span_field_probs(probs: Tensor, index: dict[str, Tensor]) -> Tensor:
    """``(..., K)`` label probabilities -> ``(..., 3)`` probabilities of ``O``, ``B-*``, ``I-*``."""
    dev = probs.device
    return torch.stack([(probs * index[k].to(dev)).sum(-1) for k in ("outside", "begin", "inside")], -1)


def type_field_probs(probs: Tensor, index: dict[str, Tensor]) -> Tensor:
    """``(..., K)`` label probabilities -> ``(..., T)`` type probabilities given "part of an entity"."""
    per_type = probs @ index["type_of"].to(probs.device, probs.dtype).T
    return per_type / per_type.sum(-1, keepdim=True).clamp(min=1e-12)


def entity_word_probs(
    probs: Tensor, start: int, end: int, etype: str, labels: list[str], index: dict[str, Tensor], types: list[str]
) -> dict[str, Tensor]:
    """Per-word probabilities of a predicted span.

    Returns:
        ``label`` (the predicted label), ``prefix`` (the predicted BIO prefix) and ``type`` (the predicted type
        given "entity"), each ``(end - start,)``.
    """
    p = probs[start:end]
    b_id, i_id = labels.index(f"B-{etype}"), labels.index(f"I-{etype}")
    pred = torch.cat([p[:1, b_id], p[1:, i_id]])
    sf = span_field_probs(p, index)
    prefix = torch.cat([sf[:1, 1], sf[1:, 2]])
    typ = type_field_probs(p, index)[:, types.index(etype)]
    return {"label": pred, "prefix": prefix, "type": typ}


def _entropy(p: Tensor) -> Tensor:
    """Normalised entropy (in [0, 1]) over the last dimension."""
    k = p.shape[-1]
    if k < 2:
        return p.new_zeros(p.shape[:-1])
    p = p.clamp(min=0)
    h = -(p * p.clamp(min=1e-12).log()).sum(-1)
    return h / math.log(k)


@register_uncertainty_head("max_prob_mean")
class MaxProbMeanHead(UncertaintyHead):
    """``1 - mean`` over the entity's words of the word's highest label probability.

    Per field: ``1 - mean`` of the probability of the predicted BIO prefix (span) and of the predicted type given
    "entity" (type).
    """

    reduce = "mean"

    def _agg(self, x: Tensor) -> float:
        return float(x.mean() if self.reduce == "mean" else x.min())

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        index = label_index(ctx.labels, ctx.types)
        probs = ctx.token_probs.float()
        out = []
        for b, post in enumerate(ctx.spans):
            row = []
            for s, e, t in post:
                w = entity_word_probs(probs[b], s, e, t, ctx.labels, index, ctx.types)
                top = probs[b, s:e].max(-1).values
                row.append(
                    EntityUncertainty(
                        clamp01(1 - self._agg(top)),
                        clamp01(1 - self._agg(w["prefix"])),
                        clamp01(1 - self._agg(w["type"])),
                    )
                )
            out.append(row)
        return out

    def config(self) -> dict[str, str]:  # noqa: D102
        return {"reduce": self.reduce}


@register_uncertainty_head("max_prob_min")
class MaxProbMinHead(MaxProbMeanHead):
    """``1 - min`` over the entity's words of the word's highest label probability (the weakest word decides)."""

    reduce = "min"


@register_uncertainty_head("entropy")
class EntropyHead(UncertaintyHead):
    """Mean over the entity's words of the label entropy divided by ``log K`` (so in [0, 1]).

    Per field: the same over the ``{O, B-*, I-*}`` distribution (span, divided by ``log 3``) and over the type
    distribution given "entity" (type, divided by ``log T``; 0 with a single type).
    """

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        index = label_index(ctx.labels, ctx.types)
        probs = ctx.token_probs.float()
        out = []
        for b, post in enumerate(ctx.spans):
            row = []
            for s, e, _ in post:
                p = probs[b, s:e]
                row.append(
                    EntityUncertainty(
                        clamp01(float(_entropy(p).mean())),
                        clamp01(float(_entropy(span_field_probs(p, index)).mean())),
                        clamp01(float(_entropy(type_field_probs(p, index)).mean())),
                    )
                )
            out.append(row)
        return out
