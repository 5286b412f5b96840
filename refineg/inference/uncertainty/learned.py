"""Learned error predictor: a logistic regression from other heads' scores and simple entity features to P(error).

Features of a predicted entity (all computed from what a head sees of the batch, so fitting and scoring agree):

- every member head's ``total`` / ``span`` / ``type`` uncertainty, as a logit (clipped to [1e-4, 1 - 1e-4]);
- the boundaries alone: logit of ``P(B-* at the first word)`` and of ``P(no I-* right after the last word)``
  (CRF token marginals for a CRF tagger, softmax otherwise);
- the entity's length in words and the post's (log), the predicted type (one-hot), the share of the entity's words
  in each casing class (lower, Title, UPPER, mixed, with digits, other) and the casing of the word before it.

One model per field (``total``: exact span and type; ``span``: span of any type; ``type``: type given a correct
span, fitted on the entities whose span is correct), each a standardised L2 logistic regression (scikit-learn).
Fitted on labelled posts (dev); to score those same posts honestly, use :func:`cross_fit` (every post is scored
by a model fitted on the other folds).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refineg.data import Example
from refineg.datamodules.encoding import CASING

from .base import (
    FIELDS,
    BatchContext,
    EntityUncertainty,
    UncertaintyHead,
    clamp01,
    create_uncertainty_head,
    default_heads,
    label_index,
    register_uncertainty_head,
)
from .estimator import assemble_predictions
from .probability import span_field_probs

logger = logging.getLogger(__name__)

TARGETS = ("total", *FIELDS)
#: Casing groups of the entity's words (``numeric`` and ``has_digit`` are one group).
CASE_GROUPS = {
    "lower": ("lower",),
    "title": ("title",),
    "upper": ("upper",),
    "mixed": ("mixed",),
    "digit": ("numeric", "has_digit"),
    "other": ("other",),
}
EPS = 1e-4


def _logit(p: float) -> float:
    p = min(1 - EPS, max(EPS, float(p)))
    return math.log(p / (1 - p))


def feature_names(members: Sequence[str], member_fields: dict[str, Sequence[str]], types: Sequence[str]) -> list[str]:
    """Names of the feature vector's columns, in order (see the module docstring)."""
    names = [f"{m}.{f}" for m in members for f in member_fields[m]]
    names += ["boundary.begin", "boundary.end", "log_words", "log_post_words"]
    names += [f"type={t}" for t in types]
    names += [f"case={g}" for g in CASE_GROUPS] + [f"prev={g}" for g in (*CASE_GROUPS, "none")]
    return names


def entity_features(
    ctx: BatchContext, member_scores: dict[str, list[list[EntityUncertainty]]], member_fields: dict[str, Sequence[str]]
) -> list[list[list[float]]]:
    """One feature vector per predicted entity of the batch (columns as :func:`feature_names`).

    Args:
        ctx: The batch.
        member_scores: ``{member name: per-post uncertainties}`` of the same batch.
        member_fields: Which of ``total``/``span``/``type`` each member contributes (a member that lacks a field
            raises).
    """
    index = label_index(ctx.labels, ctx.types)
    probs = span_field_probs(ctx.token_probs.float(), index)  # (B, W, 3): O, B-*, I-*
    casing = ctx.batch["casing"].tolist()
    group_of = {CASING.index(c): g for g, cs in CASE_GROUPS.items() for c in cs}
    out = []
    for b, post in enumerate(ctx.spans):
        n = int(ctx.mask[b].sum())
        rows = []
        for j, (s, e, t) in enumerate(post):
            row = []
            for m, fields in member_fields.items():
                u = member_scores[m][b][j]
                for f in fields:
                    v = u.total if f == "total" else getattr(u, f)
                    if v is None:
                        raise ValueError(f"learned head: member {m!r} gives no {f!r} uncertainty")
                    row.append(_logit(v))
            row.append(_logit(float(probs[b, s, 1])))
            row.append(_logit(1.0 - float(probs[b, e, 2]) if e < n else 1.0))
            row += [math.log(e - s), math.log(max(n, 1))]
            row += [float(t == x) for x in ctx.types]
            groups = [group_of.get(c, "other") for c in casing[b][s:e]]
            row += [groups.count(g) / len(groups) for g in CASE_GROUPS]
            prev = group_of.get(casing[b][s - 1], "other") if s > 0 else "none"
            row += [float(prev == g) for g in (*CASE_GROUPS, "none")]
            rows.append(row)
        out.append(rows)
    return out


@dataclass
class ErrorPredictor:
    """Fitted logistic regressions, one per target field, plus the member heads whose scores they read.

    Attributes:
        members: ``{name: kwargs}`` of the member heads (``name`` may carry an ``@label`` suffix).
        member_fields: Fields each member contributes.
        feature_names: Column names of the feature vector.
        models: ``{target: {"mean", "scale", "coef", "intercept", "n", "errors"}}`` (standardisation and weights).
        c: Inverse L2 strength the models were fitted with.
    """

    members: dict[str, dict[str, Any]]
    member_fields: dict[str, list[str]]
    feature_names: list[str]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    c: float = 1.0

    def predict(self, x: np.ndarray, target: str = "total") -> np.ndarray:
        """``(N,)`` error probabilities of feature rows ``x`` ``(N, D)`` for ``target``."""
        m = self.models[target]
        z = (np.asarray(x, dtype=float) - np.asarray(m["mean"])) / np.asarray(m["scale"])
        return 1.0 / (1.0 + np.exp(-(z @ np.asarray(m["coef"]) + m["intercept"])))

    def weights(self, target: str = "total") -> dict[str, float]:
        """Standardised coefficients by feature name (which features the model leans on)."""
        return dict(zip(self.feature_names, self.models[target]["coef"]))

    def save(self, path: str | Path) -> None:
        """Writes everything as JSON."""
        Path(path).write_text(json.dumps(vars(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> ErrorPredictor:
        """Reads a file written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))


def _fit_one(x: np.ndarray, y: np.ndarray, c: float) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    mean = x.mean(0)
    scale = x.std(0)
    scale[scale < 1e-8] = 1.0
    z = (x - mean) / scale
    if y.min() == y.max():  # one class only: a constant model
        p = min(1 - EPS, max(EPS, float(y.mean())))
        return {
            "mean": mean.tolist(),
            "scale": scale.tolist(),
            "coef": [0.0] * x.shape[1],
            "intercept": math.log(p / (1 - p)),
            "n": int(len(y)),
            "errors": int(y.sum()),
        }
    lr = LogisticRegression(C=c, max_iter=2000).fit(z, y)
    return {
        "mean": mean.tolist(),
        "scale": scale.tolist(),
        "coef": lr.coef_[0].tolist(),
        "intercept": float(lr.intercept_[0]),
        "n": int(len(y)),
        "errors": int(y.sum()),
    }


def fit_error_predictor(
    x: np.ndarray,
    errors: dict[str, Sequence[bool | None]],
    members: dict[str, dict[str, Any]],
    member_fields: dict[str, list[str]],
    names: list[str],
    c: float = 1.0,
) -> ErrorPredictor:
    """Fits one logistic regression per target on feature rows ``x`` ``(N, D)``.

    Args:
        x: Feature rows (see :func:`entity_features`).
        errors: ``{target: per-row error flag}``; ``None`` rows are left out (the ``type`` target of a wrong span).
        members: Member head specs (stored with the models).
        member_fields: Fields each member contributes.
        names: Column names.
        c: Inverse L2 strength (scikit-learn's ``C``).
    """
    x = np.asarray(x, dtype=float)
    pred = ErrorPredictor(dict(members), {k: list(v) for k, v in member_fields.items()}, list(names), c=c)
    for target in TARGETS:
        flags = errors.get(target)
        if flags is None:
            continue
        keep = np.array([f is not None for f in flags], dtype=bool)
        if keep.sum() == 0:
            continue
        y = np.array([bool(f) for f in flags], dtype=float)[keep]
        pred.models[target] = _fit_one(x[keep], y, c)
    if "total" not in pred.models:
        raise ValueError("fit_error_predictor needs the 'total' target")
    return pred


def cross_fit(
    x: np.ndarray,
    errors: dict[str, Sequence[bool | None]],
    groups: Sequence[Any],
    members: dict[str, dict[str, Any]],
    member_fields: dict[str, list[str]],
    names: list[str],
    folds: int = 5,
    seed: int = 0,
    c: float = 1.0,
) -> dict[str, np.ndarray]:
    """Out-of-fold error probabilities (no row is scored by a model that saw it).

    Groups (posts) are split into ``folds`` random folds; each fold is scored by models fitted on the other folds.

    Returns:
        ``{target: (N,) probabilities}`` for every target fitted.
    """
    x = np.asarray(x, dtype=float)
    uniq = sorted(set(groups), key=str)
    if len(uniq) < folds:
        raise ValueError(f"cross_fit: {len(uniq)} groups for {folds} folds")
    perm = np.random.default_rng(seed).permutation(len(uniq))
    fold_of = {uniq[k]: i % folds for i, k in enumerate(perm)}
    fold = np.array([fold_of[g] for g in groups])
    out = {t: np.full(len(x), np.nan) for t in TARGETS if errors.get(t) is not None}
    for k in range(folds):
        train, test = fold != k, fold == k
        sub = {t: [f for f, keep in zip(v, train) if keep] for t, v in errors.items() if v is not None}
        model = fit_error_predictor(x[train], sub, members, member_fields, names, c)
        for t in out:
            if t in model.models:
                out[t][test] = model.predict(x[test], t)
    return out


def build_members(members: dict[str, dict[str, Any]]) -> dict[str, UncertaintyHead]:
    """Member heads from ``{name[@label]: kwargs}``."""
    return {name: create_uncertainty_head(name.split("@")[0], **kw) for name, kw in members.items()}


def default_member_fields(scores: dict[str, list[list[EntityUncertainty]]]) -> dict[str, list[str]]:
    """The fields every entity of each member has (``total`` always; ``span``/``type`` where all are set)."""
    out = {}
    for name, per_post in scores.items():
        flat = [u for post in per_post for u in post]
        out[name] = ["total"] + [f for f in FIELDS if flat and all(getattr(u, f) is not None for u in flat)]
    return out


@torch.inference_mode()
def collect_features(
    estimator: Any,
    examples: Sequence[Example],
    member_fields: dict[str, list[str]] | None = None,
    progress: bool = False,
) -> tuple[list[Example], dict[str, list[list[EntityUncertainty]]], np.ndarray, list[str], dict[str, list[str]]]:
    """Runs an :class:`~refineg.inference.uncertainty.UncertaintyEstimator` whose heads are the members, once.

    Returns:
        The predicted posts, every member's scores (as ``estimator.score`` gives them), the ``(N, D)`` feature
        rows of all predicted entities (posts in input order), the column names and the member fields used.
    """
    examples = list(examples)
    per_batch = []
    spans: list[Any] = [None] * len(examples)
    for idx, kept, ctx in estimator.contexts(examples, progress, desc="features"):
        scores = {name: head.score(ctx) for name, head in estimator.heads.items()}
        per_batch.append((idx, ctx, scores))
        for i, post in zip(idx, kept):
            spans[i] = post
    merged: dict[str, list[Any]] = {n: [None] * len(examples) for n in estimator.heads}
    for idx, _, scores in per_batch:
        for n, s in scores.items():
            for i, post in zip(idx, s):
                merged[n][i] = post
    fields = member_fields or default_member_fields(merged)
    rows: list[Any] = [None] * len(examples)
    for idx, ctx, scores in per_batch:
        for i, post in zip(idx, entity_features(ctx, scores, fields)):
            rows[i] = post
    preds = assemble_predictions(examples, spans, merged)
    types = list(estimator.module.types)
    names = feature_names(list(fields), fields, types)
    x = np.array([r for post in rows for r in post], dtype=float).reshape(-1, len(names))
    return preds, merged, x, names, fields


@register_uncertainty_head("learned")
class LearnedErrorHead(UncertaintyHead):
    """P(error) of a fitted :class:`ErrorPredictor` over its member heads' scores and entity features.

    Args:
        path: JSON written by :meth:`ErrorPredictor.save` (e.g. by ``bench/refinement_curves.py --learned-out``).
        predictor: An in-memory :class:`ErrorPredictor` instead of ``path``.
    """

    def __init__(self, path: str | Path | None = None, predictor: ErrorPredictor | None = None) -> None:
        if (path is None) == (predictor is None):
            raise ValueError("learned needs exactly one of path= (a fitted error predictor) or predictor=")
        self.path = None if path is None else str(path)
        self.predictor = predictor if predictor is not None else ErrorPredictor.load(path)  # type: ignore[arg-type]
        self.members = build_members(self.predictor.members)

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        scores = {name: head.score(ctx) for name, head in self.members.items()}
        feats = entity_features(ctx, scores, self.predictor.member_fields)
        expected = len(self.predictor.feature_names)
        out = []
        for post in feats:
            if not post:
                out.append([])
                continue
            x = np.asarray(post, dtype=float)
            if x.shape[1] != expected:
                raise ValueError(
                    f"learned head: {x.shape[1]} features, the model expects {expected} (another tagger's types?)"
                )
            p = {t: self.predictor.predict(x, t) for t in self.predictor.models}
            out.append(
                [
                    EntityUncertainty(
                        clamp01(p["total"][k]),
                        clamp01(p["span"][k]) if "span" in p else None,
                        clamp01(p["type"][k]) if "type" in p else None,
                    )
                    for k in range(len(x))
                ]
            )
        return out

    needs_fit = True
    state_suffix = ".json"

    @classmethod
    def fit(
        cls,
        module: Any,
        examples: Sequence[Example],
        members: dict[str, dict[str, Any]] | None = None,
        c: float = 1.0,
        batch_size: int = 64,
        max_length: int = 128,
    ) -> LearnedErrorHead:
        """A head over an :class:`ErrorPredictor` fitted on the tagger's predictions for gold ``examples``.

        Args:
            module: A trained ``TaggerModule``.
            examples: Gold posts (held out from the tagger's training).
            members: Member head specs ``{name[@label]: kwargs}``; default: :func:`default_heads` (as
                ``bench/refinement_curves.py --learned``).
            c: Inverse L2 strength of each logistic regression.
            batch_size: Posts per forward pass.
            max_length: Subword budget per post.
        """
        from refineg.inference.predictor import TaggerPredictor
        from refineg.inference.uncertainty.estimator import UncertaintyEstimator
        from refineg.metrics import entity_errors

        if members is None:
            members = default_heads(module)
        estimator = UncertaintyEstimator(TaggerPredictor(module, batch_size, max_length), build_members(members))
        preds, _, x, names, fields = collect_features(estimator, examples)
        errs = entity_errors(preds, examples)
        errors = {t: [e[t] for e in errs] for t in TARGETS}
        return cls(predictor=fit_error_predictor(x, errors, members, fields, names, c=c))

    def save(self, path: str | Path) -> None:
        """Writes the fitted :class:`ErrorPredictor` as JSON."""
        self.predictor.save(path)

    @classmethod
    def load(cls, path: str | Path) -> LearnedErrorHead:
        """The head over a predictor written by :meth:`save`."""
        return cls(path=path)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"path": self.path, "members": list(self.predictor.members), "c": self.predictor.c}
