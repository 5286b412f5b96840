"""How well an uncertainty separates right from wrong predicted entities: AUROC, ECE, risk-coverage and AURC.

An entity is *wrong* (an error) for the ``total`` field unless a gold entity has the same span and type (MNER
rule); for the ``span`` field unless a gold entity has the same span (any type); for the ``type`` field the
entities with a correct span are kept and an error is a wrong type.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from refineg.data import Example
from refineg.metrics import entity_errors  # noqa: F401  (re-exported: calibrate and the tests use it from here)


def auroc(uncertainty: Sequence[float], error: Sequence[bool]) -> float | None:
    """Error-detection AUROC (Mann-Whitney U).

    The probability that a random error has a higher uncertainty than a random correct prediction (ties count one
    half). ``None`` when there are no errors or no correct predictions.
    """
    u = np.asarray(uncertainty, dtype=float)
    y = np.asarray(error, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(u, kind="mergesort")
    ranks = np.empty(len(u), dtype=float)
    sorted_u = u[order]
    i = 0
    while i < len(u):  # average ranks over ties
        j = i
        while j + 1 < len(u) and sorted_u[j + 1] == sorted_u[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def reliability(uncertainty: Sequence[float], error: Sequence[bool], bins: int = 10) -> dict[str, list]:
    """Equal-width bins of confidence ``1 - u`` on [0, 1].

    Returns:
        ``edges`` (bins + 1), and per bin ``count``, ``confidence`` (mean) and ``accuracy`` (``None`` when empty).
    """
    conf = 1 - np.asarray(uncertainty, dtype=float)
    correct = ~np.asarray(error, dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out: dict[str, list] = {"edges": edges.tolist(), "count": [], "confidence": [], "accuracy": []}
    for b in range(bins):
        sel = idx == b
        out["count"].append(int(sel.sum()))
        out["confidence"].append(float(conf[sel].mean()) if sel.any() else None)
        out["accuracy"].append(float(correct[sel].mean()) if sel.any() else None)
    return out


def ece(uncertainty: Sequence[float], error: Sequence[bool], bins: int = 10) -> float | None:
    """Expected calibration error of confidence ``1 - u``: ``sum_b |B|/n * |accuracy_b - confidence_b|``."""
    if len(uncertainty) == 0:
        return None
    rel = reliability(uncertainty, error, bins)
    n = sum(rel["count"])
    return float(sum(c / n * abs(a - f) for c, a, f in zip(rel["count"], rel["accuracy"], rel["confidence"]) if c))


def risk_coverage(uncertainty: Sequence[float], error: Sequence[bool]) -> dict[str, list[float] | float | None]:
    """Risk-coverage curve: keep the ``k`` most certain predictions, risk = their error rate.

    Ties in ``u`` are broken by expectation (the expected number of errors among the first ``j`` of a tie group
    of size ``m`` with ``r`` errors is ``j * r / m``), so the result does not depend on input order.

    Returns:
        ``coverage`` and ``risk`` at ``k = 1..n`` and ``aurc`` (mean risk over ``k``; ``None`` when empty).
    """
    u = np.asarray(uncertainty, dtype=float)
    y = np.asarray(error, dtype=float)
    n = len(u)
    if n == 0:
        return {"coverage": [], "risk": [], "aurc": None}
    order = np.argsort(u, kind="mergesort")
    su, sy = u[order], y[order]
    expected_errors = np.empty(n)
    done, i = 0.0, 0
    while i < n:
        j = i
        while j + 1 < n and su[j + 1] == su[i]:
            j += 1
        m, r = j - i + 1, sy[i : j + 1].sum()
        expected_errors[i : j + 1] = done + np.arange(1, m + 1) * r / m
        done += r
        i = j + 1
    k = np.arange(1, n + 1)
    risk = expected_errors / k
    return {"coverage": (k / n).tolist(), "risk": risk.tolist(), "aurc": float(risk.mean())}


def field_report(uncertainty: Sequence[float], error: Sequence[bool], bins: int = 10) -> dict:
    """AUROC, ECE, AURC, error rate, the reliability bins and the risk-coverage curve of one field."""
    rc = risk_coverage(uncertainty, error)
    return {
        "n": len(uncertainty),
        "error_rate": float(np.mean(error)) if len(error) else None,
        "auroc": auroc(uncertainty, error),
        "ece": ece(uncertainty, error, bins),
        "aurc": rc["aurc"],
        "reliability": reliability(uncertainty, error, bins),
        "risk_coverage": {"coverage": rc["coverage"], "risk": rc["risk"]},
    }


def head_report(
    preds: Sequence[Example],
    golds: Sequence[Example],
    totals: Sequence[float],
    fields: Sequence[dict[str, float]] | None = None,
    bins: int = 10,
) -> dict:
    """Report of one head: ``{"total": field_report, "span": ..., "type": ...}`` (fields only when given).

    Args:
        preds: Predicted posts.
        golds: Gold posts.
        totals: Total uncertainty per predicted entity (posts in order).
        fields: Optional per-entity ``{"span": u, "type": u}``.
        bins: Reliability bins.
    """
    errors = entity_errors(preds, golds)
    if len(errors) != len(totals):
        raise ValueError(f"{len(totals)} uncertainties for {len(errors)} predicted entities")
    out = {"total": field_report(list(totals), [e["total"] for e in errors], bins)}
    for name in ("span", "type"):
        if not fields or any(name not in f for f in fields):
            continue
        pairs = [(f[name], e[name]) for f, e in zip(fields, errors) if e[name] is not None]
        out[name] = field_report([u for u, _ in pairs], [bool(err) for _, err in pairs], bins)
    return out
