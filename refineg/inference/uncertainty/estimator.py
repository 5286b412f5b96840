"""Tagging with uncertainty: predicted posts whose entities carry an uncertainty from a chosen head."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from refineg.data import Entity, Example
from refineg.inference.predictor import TaggerPredictor

from .base import BatchContext, EntityUncertainty, UncertaintyHead, create_uncertainty_head
from .missed import MissedEntityDetector
from .temperature import TemperatureScaler


class UncertaintyEstimator:
    """Tags posts and scores every predicted entity with one or more uncertainty heads.

    Predictions are exactly :class:`TaggerPredictor`'s (decoded from unscaled emissions); the temperature, when
    given, only changes what the heads see.

    Args:
        predictor: Batched tagger (its module is put in eval mode).
        heads: ``{name: head}``; the first one fills ``Entity.uncertainty``.
        temperature: Optional fitted :class:`TemperatureScaler`.
        missed: Optional :class:`MissedEntityDetector` (its candidates go to ``meta["missed_candidates"]``).

    Output posts carry ``meta["uncertainty"] = {"head": first head name, "fields": [{"span": .., "type": ..}, ..]}``
    (one dict per entity) and, with several heads, ``meta["uncertainty_by_head"] = {name: [total per entity]}``.
    """

    def __init__(
        self,
        predictor: TaggerPredictor,
        heads: dict[str, UncertaintyHead],
        temperature: TemperatureScaler | None = None,
        missed: MissedEntityDetector | None = None,
    ) -> None:
        if not heads:
            raise ValueError("at least one uncertainty head is needed")
        self.predictor, self.heads, self.temperature, self.missed = predictor, dict(heads), temperature, missed

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        head: str = "crf_marginal",
        head_kwargs: dict[str, Any] | None = None,
        temperature: str | Path | None = None,
        missed: MissedEntityDetector | None = None,
        **predictor_kwargs: Any,
    ) -> UncertaintyEstimator:
        """Loads a tagger checkpoint and builds one head by name (``temperature``: a saved scaler JSON)."""
        predictor = TaggerPredictor.from_checkpoint(path, **predictor_kwargs)
        scaler = TemperatureScaler.load(temperature) if temperature else None
        return cls(predictor, {head: create_uncertainty_head(head, **(head_kwargs or {}))}, scaler, missed)

    @property
    def module(self) -> Any:
        """The tagger (``TaggerModule``)."""
        return self.predictor.module

    def contexts(
        self, examples: Sequence[Example], progress: bool = False, desc: str = "uncertainty"
    ) -> Iterator[tuple[list[int], list[list[tuple]], BatchContext]]:
        """Tags ``examples`` batch by batch (call under ``torch.inference_mode()``).

        Yields:
            The batch's post indices, its decoded ``(start, end, type, confidence)`` spans per post and the
            :class:`BatchContext` the heads see.
        """
        module = self.module.eval()
        scale = self.temperature.to(module.device) if self.temperature is not None else (lambda e: e)
        for idx, batch in self.predictor.batches(examples, progress, desc=desc):
            emissions = module(batch)
            mask = batch["word_mask"]
            decoded = module.tagger.head.decode_spans(emissions, mask)
            kept = []
            for i, post in zip(idx, decoded):
                n = len(examples[i].tokens)
                kept.append([(s, e, t, c) for s, e, t, c in post if e <= n])
            yield (
                idx,
                kept,
                BatchContext(module, batch, scale(emissions), mask, [[x[:3] for x in p] for p in kept], scale),
            )

    @torch.inference_mode()
    def score(
        self, examples: Sequence[Example], progress: bool = False
    ) -> tuple[list[Example], dict[str, list[list[EntityUncertainty]]]]:
        """Predicted posts plus every head's :class:`EntityUncertainty` per entity (posts in input order)."""
        examples = list(examples)
        spans: list[Any] = [None] * len(examples)
        scores: dict[str, list[Any]] = {name: [None] * len(examples) for name in self.heads}
        missed: list[list[dict] | None] = [None] * len(examples)
        for idx, kept, ctx in self.contexts(examples, progress):
            for name, head in self.heads.items():
                for i, post in zip(idx, head.score(ctx)):
                    scores[name][i] = post
            cands = self.missed.candidates(ctx) if self.missed is not None else [None] * len(idx)
            for i, post, cand in zip(idx, kept, cands):
                spans[i], missed[i] = post, cand
        return assemble_predictions(examples, spans, scores, missed), scores

    def predict(self, examples: Sequence[Example], progress: bool = False) -> list[Example]:
        """Predicted posts whose entities carry ``uncertainty`` (first head) and the meta described above."""
        return self.score(examples, progress)[0]


def assemble_predictions(
    examples: Sequence[Example],
    spans: Sequence[list[tuple]],
    scores: dict[str, list[list[EntityUncertainty]]],
    missed: Sequence[list[dict] | None] | None = None,
) -> list[Example]:
    """Predicted posts from decoded ``(start, end, type, confidence)`` spans and the heads' scores.

    The meta written is described in :class:`UncertaintyEstimator`; the first head of ``scores`` fills
    ``Entity.uncertainty``.
    """
    first = next(iter(scores))
    preds = []
    for i, ex in enumerate(examples):
        ents = [Entity(s, e, t, score=round(float(c), 6)) for s, e, t, c in spans[i]]
        pred = Example(ex.id, ex.tokens, ex.image, ents, source="predicted", image_size=ex.image_size)
        unc = scores[first][i]
        for ent, u in zip(pred.entities, unc):
            ent.uncertainty = round(u.total, 6)
        pred.meta["uncertainty"] = {"head": first, "fields": [u.fields() for u in unc]}
        if len(scores) > 1:
            pred.meta["uncertainty_by_head"] = {n: [round(u.total, 6) for u in s[i]] for n, s in scores.items()}
        if missed is not None and missed[i] is not None:
            pred.meta["missed_candidates"] = missed[i]
        preds.append(pred)
    return preds
