"""Uncertainty heads for the refinement stage (one registry: ``create_uncertainty_head`` / ``list_uncertainty_heads``).

| name | what |
|---|---|
| ``max_prob_mean``, ``max_prob_min`` | 1 - mean / min over the entity's words of the top label probability |
| ``entropy`` | mean normalised label entropy of the entity's words |
| ``crf_marginal`` | 1 - CRF span marginal (forward-backward) |
| ``mc_dropout`` | disagreement / variance over K passes with dropout on |
| ``ensemble`` | disagreement / variance over K checkpoints |
| ``evidential`` | Dirichlet vacuity of a head trained with its own loss on frozen word states |
| ``learned`` | P(error) of a logistic regression over other heads' scores and simple entity features |
"""

from . import crf_marginal, evidential, learned, probability, sampling  # noqa: F401  (register the heads)
from .base import (
    FIELDS,
    UNCERTAINTY_HEADS,
    BatchContext,
    EntityUncertainty,
    UncertaintyHead,
    create_uncertainty_head,
    default_heads,
    list_uncertainty_heads,
    token_probabilities,
)
from .estimator import UncertaintyEstimator
from .evidential import DirichletTagger, evidential_loss, fit_evidential
from .learned import ErrorPredictor, collect_features, cross_fit, fit_error_predictor
from .missed import MissedEntityDetector
from .temperature import TemperatureScaler

__all__ = [
    "FIELDS",
    "UNCERTAINTY_HEADS",
    "BatchContext",
    "DirichletTagger",
    "EntityUncertainty",
    "ErrorPredictor",
    "MissedEntityDetector",
    "TemperatureScaler",
    "UncertaintyEstimator",
    "UncertaintyHead",
    "collect_features",
    "create_uncertainty_head",
    "default_heads",
    "cross_fit",
    "evidential_loss",
    "fit_error_predictor",
    "fit_evidential",
    "list_uncertainty_heads",
    "token_probabilities",
]
