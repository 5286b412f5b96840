"""``refineg calibrate``: scores every uncertainty head on labelled posts and writes a JSON report and PNG plots."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg.data import Example
from refineg.inference.uncertainty import default_heads

from .calibration import head_report
from .plots import plot_reliability, plot_risk_coverage

logger = logging.getLogger(__name__)


def calibrate(
    ckpt: str | Path,
    examples: Sequence[Example],
    out_dir: str | Path,
    heads: dict[str, dict[str, Any]] | None = None,
    fit_temperature: bool = False,
    bins: int = 10,
    batch_size: int = 64,
    max_length: int = 128,
    progress: bool = False,
) -> dict[str, Any]:
    """Per head: entity-level error-detection AUROC, ECE, risk-coverage and AURC on ``examples``.

    Args:
        ckpt: Tagger checkpoint.
        examples: Gold posts (dev).
        out_dir: Receives ``calibration.json``, ``reliability.png``, ``risk_coverage.png`` (and
            ``temperature.json`` with ``fit_temperature``).
        heads: ``{name: kwargs}`` (default :func:`default_heads`); a name may carry a ``@label`` suffix to run one
            head twice with different settings (``mc_dropout@var``).
        fit_temperature: Also fit a temperature on ``examples`` and report every head again with it (``name@T``;
            fitted and evaluated on the same posts, so its ECE is optimistic).
        bins: Reliability bins.
        batch_size: Posts per forward pass.
        max_length: Subword budget per post.
        progress: Show a per-post progress bar for each pass over ``examples``.

    Returns:
        The report written to ``calibration.json``.
    """
    from refineg.inference.predictor import TaggerPredictor
    from refineg.inference.uncertainty import TemperatureScaler, UncertaintyEstimator, create_uncertainty_head

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    predictor = TaggerPredictor.from_checkpoint(ckpt, batch_size=batch_size, max_length=max_length)
    heads = heads if heads is not None else default_heads(predictor.module)
    built = {name: create_uncertainty_head(name.split("@")[0], **kw) for name, kw in heads.items()}
    runs: list[tuple[str, TemperatureScaler | None]] = [("", None)]
    temperature = None
    if fit_temperature:
        scaler = TemperatureScaler()
        temperature = scaler.fit(predictor.module, examples, batch_size, max_length)
        scaler.save(out_dir / "temperature.json")
        runs.append(("@T", scaler))
    reports: dict[str, dict] = {}
    preds: list[Example] = []
    for suffix, scaler in runs:
        preds, scores = UncertaintyEstimator(predictor, built, scaler).score(examples, progress)
        for name, per_post in scores.items():
            flat = [u for post in per_post for u in post]
            reports[name + suffix] = head_report(
                preds, examples, [u.total for u in flat], [u.fields() for u in flat], bins
            )
            logger.info(
                "%s%s: AUROC %s  ECE %s  AURC %s",
                name,
                suffix,
                reports[name + suffix]["total"]["auroc"],
                reports[name + suffix]["total"]["ece"],
                reports[name + suffix]["total"]["aurc"],
            )
    report = {
        "checkpoint": str(ckpt),
        "posts": len(examples),
        "entities": sum(len(p.entities) for p in preds),
        "temperature": temperature,
        "bins": bins,
        "head_settings": {n: h.config() for n, h in built.items()},
        "heads": reports,
    }
    (out_dir / "calibration.json").write_text(json.dumps(report, indent=1))
    plot_reliability(reports, out_dir / "reliability.png")
    plot_risk_coverage(reports, out_dir / "risk_coverage.png")
    return report


def summary_table(report: dict[str, Any]) -> str:
    """A plain-text table of AUROC / ECE / AURC per head and field."""
    lines = [f"{'head':<22}{'field':<7}{'n':>6}{'err%':>7}{'AUROC':>8}{'ECE':>8}{'AURC':>8}"]
    fmt = lambda v: f"{v:8.3f}" if v is not None else f"{'-':>8}"  # noqa: E731
    for name, rep in report["heads"].items():
        for field, r in rep.items():
            err = 100 * r["error_rate"] if r["error_rate"] is not None else float("nan")
            lines.append(f"{name:<22}{field:<7}{r['n']:>6}{err:>7.1f}{fmt(r['auroc'])}{fmt(r['ece'])}{fmt(r['aurc'])}")
    return "\n".join(lines)
