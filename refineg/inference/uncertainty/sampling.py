"""Heads that compare K predictions of a batch: MC dropout (K stochastic passes) and a deep ensemble (K taggers).

Two measures:

- ``disagreement``: ``1 - (share of the K predictions that contain the entity)``; per field, the span (any type)
  and the type given the span;
- ``variance``: the variance over the K passes of the probability of the predicted label, averaged over the
  entity's words and multiplied by 4 (a probability's variance is at most 1/4); per field the same for the
  predicted BIO prefix and the predicted type given "entity".
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .base import (
    BatchContext,
    EntityUncertainty,
    Span,
    UncertaintyHead,
    clamp01,
    label_index,
    register_uncertainty_head,
    token_probabilities,
)
from .probability import entity_word_probs

MEASURES = ("disagreement", "variance")


def vote(spans: list[list[Span]], samples: Sequence[list[list[Span]]]) -> list[list[EntityUncertainty]]:
    """Disagreement of ``samples`` (K decodings of the same batch) about each predicted span.

    Returns:
        Per predicted entity: total = ``1 - hits/K`` (exact span and type), span = ``1 - span_hits/K``, type =
        ``1 - hits/span_hits`` (1 when no sample has the span).
    """
    k = len(samples)
    out = []
    for b, post in enumerate(spans):
        sets = [set(sample[b]) for sample in samples]
        bounds = [{(s, e) for s, e, _ in sample[b]} for sample in samples]
        row = []
        for s, e, t in post:
            hits = sum((s, e, t) in x for x in sets)
            span_hits = sum((s, e) in x for x in bounds)
            row.append(EntityUncertainty(1 - hits / k, 1 - span_hits / k, 1 - hits / span_hits if span_hits else 1.0))
        out.append(row)
    return out


def probability_variance(ctx: BatchContext, probs: Sequence[Tensor]) -> list[list[EntityUncertainty]]:
    """``4 x`` variance over K probability tensors ``(B, W, K)``, averaged over each entity's words.

    Per entity: of the predicted label (total), the predicted BIO prefix (span) and the predicted type (type).
    """
    index = label_index(ctx.labels, ctx.types)
    out = []
    for b, post in enumerate(ctx.spans):
        row = []
        for s, e, t in post:
            per = [entity_word_probs(p[b].float(), s, e, t, ctx.labels, index, ctx.types) for p in probs]
            var = {
                f: float(torch.stack([x[f] for x in per]).var(0, unbiased=False).mean()) * 4
                for f in ("label", "prefix", "type")
            }
            row.append(EntityUncertainty(clamp01(var["label"]), clamp01(var["prefix"]), clamp01(var["type"])))
        out.append(row)
    return out


@contextmanager
def dropout_active(module: nn.Module, p: float | None = None):
    """Puts every ``nn.Dropout`` of ``module`` in training mode (optionally with rate ``p``), the rest in eval."""
    layers = [m for m in module.modules() if isinstance(m, nn.Dropout)]
    saved = [(m.training, m.p) for m in layers]
    try:
        for m in layers:
            m.train()
            if p is not None:
                m.p = p
        yield len(layers)
    finally:
        for m, (training, rate) in zip(layers, saved):
            m.train(training)
            m.p = rate


def _check_measure(measure: str) -> str:
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    return measure


@register_uncertainty_head("mc_dropout")
class MCDropoutHead(UncertaintyHead):
    """K forward passes with dropout on (Gal & Ghahramani, 2016).

    Args:
        samples: Number of stochastic passes K.
        dropout: Dropout rate to use in every dropout layer while sampling; ``None`` keeps the trained rates.
            Set it when the tagger was trained without dropout (every pass would be identical).
        measure: ``disagreement`` or ``variance`` (see the module docstring).
        seed: Seed of the dropout masks (scores are repeatable).
    """

    def __init__(
        self, samples: int = 8, dropout: float | None = None, measure: str = "disagreement", seed: int = 0
    ) -> None:
        if samples < 2:
            raise ValueError("mc_dropout needs at least 2 samples")
        self.samples, self.dropout, self.measure, self.seed = samples, dropout, _check_measure(measure), seed

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        head = ctx.module.tagger.head
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        decodes, probs = [], []
        try:
            with dropout_active(ctx.module, self.dropout) as n_layers:
                if n_layers == 0 or (
                    self.dropout is None and all(m.p == 0 for m in ctx.module.modules() if isinstance(m, nn.Dropout))
                ):
                    raise ValueError("mc_dropout: the tagger has no active dropout layer; pass dropout=<rate>")
                for _ in range(self.samples):
                    em = ctx.module(ctx.batch)
                    if self.measure == "disagreement":
                        decodes.append([[(s, e, t) for s, e, t, _ in post] for post in head.decode_spans(em, ctx.mask)])
                    else:
                        probs.append(token_probabilities(ctx.module, ctx.scale(em), ctx.mask))
        finally:
            torch.random.set_rng_state(gen_state)
        return vote(ctx.spans, decodes) if self.measure == "disagreement" else probability_variance(ctx, probs)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"samples": self.samples, "dropout": self.dropout, "measure": self.measure, "seed": self.seed}


@register_uncertainty_head("ensemble")
class EnsembleHead(UncertaintyHead):
    """A deep ensemble (Lakshminarayanan et al., 2017): K taggers trained with different seeds or data.

    The members must share the scored tagger's encoder (same tokenisation) and entity types. The scored tagger
    may itself be one of the members.

    Args:
        checkpoints: Checkpoint paths of the K members (loaded on first use).
        members: Already loaded members (``TaggerModule``), instead of ``checkpoints``.
        measure: ``disagreement`` or ``variance`` (see the module docstring).
    """

    def __init__(
        self, checkpoints: Sequence[str | Path] = (), members: Sequence[Any] = (), measure: str = "disagreement"
    ) -> None:
        self.checkpoints = [str(c) for c in checkpoints]
        self._members = list(members)
        if len(self.checkpoints) + len(self._members) < 2:
            raise ValueError("ensemble needs at least 2 members (checkpoints=[...] or members=[...])")
        self.measure = _check_measure(measure)

    def members(self, like: Any) -> list[Any]:
        """The members on ``like``'s device in eval mode; checks they match ``like``'s encoder and types."""
        if self.checkpoints:
            from refineg.inference.predictor import load_tagger

            self._members += [load_tagger(c) for c in self.checkpoints]
            self.checkpoints = []
        for m in self._members:
            if m.hparams.model["encoder"] != like.hparams.model["encoder"] or list(m.types) != list(like.types):
                raise ValueError("ensemble members must share the scored tagger's encoder and entity types")
            m.to(like.device).eval()
        return self._members

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        decodes, probs = [], []
        for m in self.members(ctx.module):
            em = m(ctx.batch)
            if self.measure == "disagreement":
                decodes.append(
                    [[(s, e, t) for s, e, t, _ in post] for post in m.tagger.head.decode_spans(em, ctx.mask)]
                )
            else:
                probs.append(token_probabilities(m, ctx.scale(em), ctx.mask))
        return vote(ctx.spans, decodes) if self.measure == "disagreement" else probability_variance(ctx, probs)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"members": len(self._members) + len(self.checkpoints), "measure": self.measure}
