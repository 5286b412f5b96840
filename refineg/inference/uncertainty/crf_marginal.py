"""CRF span marginal head: the probability, under the whole CRF distribution, that the span is exactly the entity."""

from __future__ import annotations

import torch

from refineg.modules.heads import CRFHead

from .base import BatchContext, EntityUncertainty, UncertaintyHead, clamp01, per_post, register_uncertainty_head


@register_uncertainty_head("crf_marginal")
class CRFMarginalHead(UncertaintyHead):
    """``1 - P(span is an entity of the predicted type)`` by forward-backward (:meth:`LinearChainCRF.span_marginals`).

    Per field, with ``P_x`` the span marginal for type ``x`` (disjoint events, so they add up):
    span = ``1 - sum_x P_x`` (the span is an entity of any type), type = ``1 - P_t / sum_x P_x``.

    Raises:
        ValueError: At scoring time, when the tagger's head is not a CRF.
    """

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        head = ctx.module.tagger.head
        if not isinstance(head, CRFHead):
            raise ValueError(f"crf_marginal needs a CRF tagger; this one has a {type(head).__name__}")
        n_types = len(head.types)
        rows = [(b, s, e, x) for b, post in enumerate(ctx.spans) for s, e, _ in post for x in range(n_types)]
        if not rows:
            return [[] for _ in ctx.spans]
        probs = head.crf.span_marginals(ctx.emissions, ctx.mask, torch.tensor(rows), head.type_tags)
        probs = probs.reshape(-1, n_types)
        flat = []
        for k, (_, _, t) in enumerate(s for post in ctx.spans for s in post):
            p_t = float(probs[k, head.types.index(t)])
            p_any = float(probs[k].sum())
            flat.append(
                EntityUncertainty(clamp01(1 - p_t), clamp01(1 - p_any), clamp01(1 - p_t / p_any) if p_any > 0 else 1.0)
            )
        return per_post(flat, ctx.spans)
