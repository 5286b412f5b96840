"""PNG plots of calibration reports and delegation curves (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_reliability(reports: dict[str, dict], path: str | Path, field: str = "total") -> Path:
    """Reliability diagram (accuracy vs confidence per bin) of every head's ``field``."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
    for name, rep in reports.items():
        rel = rep[field]["reliability"]
        pts = [(c, a) for c, a in zip(rel["confidence"], rel["accuracy"]) if c is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=f"{name} (ECE {rep[field]['ece']:.3f})")
    ax.set(
        xlabel="confidence (1 - uncertainty)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title=f"reliability ({field})",
    )
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_risk_coverage(reports: dict[str, dict], path: str | Path, field: str = "total") -> Path:
    """Risk-coverage curves of every head's ``field``."""
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, rep in reports.items():
        rc = rep[field]["risk_coverage"]
        if rc["coverage"]:
            ax.plot(rc["coverage"], rc["risk"], label=f"{name} (AURC {rep[field]['aurc']:.3f})")
    ax.set(
        xlabel="coverage (share of entities kept)",
        ylabel="risk (error rate of kept)",
        xlim=(0, 1),
        title=f"risk-coverage ({field})",
    )
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_delegation_curves(curves: dict[str, dict[str, list[float]]], path: str | Path, title: str) -> Path:
    """F1 versus delegation rate, one line per head (``{"rate": [...], "f1": [...]}``)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    for k, (name, c) in enumerate(curves.items()):
        ls = "--" if name.startswith("random") else ":" if "@" in name or name.startswith("ceiling") else "-"
        ax.plot(
            [100 * r for r in c["rate"]],
            [100 * f for f in c["f1"]],
            marker="o",
            ms=3,
            ls=ls,
            color=colors[k % len(colors)],
            label=name,
        )
    ax.set(xlabel="delegated entities (%)", ylabel="MNER F1 (%)", title=title)
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
