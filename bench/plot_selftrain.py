"""Plots dev MNER F1 per self-training round from ``bench/selftrain.py`` summaries (mean ± std over seeds).

``python bench/plot_selftrain.py --out docs/img/selftrain_rounds.png NAME=SUMMARY[:GROUP] ...`` draws one line per
``NAME`` from the group ``GROUP`` of a ``summary.json`` (default: its only group). Round 0 is the gold-only tagger of
the same runs. Example (the figure in docs/results.md)::

    python bench/plot_selftrain.py --out docs/img/selftrain_rounds.png \\
        "100 gold=docs/selftrain_gpu/g100/summary.json" \\
        "500 gold=docs/selftrain_gpu/summary.json:g500-soft" \\
        "1000 gold=docs/selftrain_gpu/g1000/summary.json" \\
        "full data=docs/selftrain_gpu/summary.json:full-soft" \\
        "full, ensemble teacher=docs/selftrain_gpu/ens6/summary.json" --hline "78.5=full-data target (issue 20)"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def series(spec: str) -> tuple[str, list[int], list[float], list[float]]:
    """``NAME=SUMMARY[:GROUP]`` -> name, rounds, mean and std of dev MNER F1 (points).

    Raises:
        SystemExit: A malformed spec, or a group that the summary does not hold.
    """
    name, sep, rest = spec.partition("=")
    if not sep:
        raise SystemExit(f"error: {spec!r}: expected NAME=SUMMARY[:GROUP]")
    path, _, group = rest.partition(":")
    groups = json.loads(Path(path).read_text())["groups"]
    if not group:
        if len(groups) != 1:
            raise SystemExit(f"error: {path} holds groups {sorted(groups)}: name one as {path}:GROUP")
        group = next(iter(groups))
    if group not in groups:
        raise SystemExit(f"error: {path} has no group {group!r}; it has {sorted(groups)}")
    rounds = groups[group]["rounds"]
    keys = sorted(rounds, key=int)
    return (
        name,
        [int(k) for k in keys],
        [rounds[k]["dev_mner_f1"]["mean"] for k in keys],
        [rounds[k]["dev_mner_f1"]["std"] for k in keys],
    )


def main() -> None:
    """Draws the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="NAME=SUMMARY[:GROUP]")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--hline", nargs="*", default=[], help="VALUE=LABEL: a dashed reference line (e.g. a target)")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for spec in args.specs:
        name, rounds, mean, std = series(spec)
        ax.errorbar(rounds, mean, yerr=std, marker="o", capsize=3, label=name)
    for item in args.hline:
        value, _, label = item.partition("=")
        ax.axhline(float(value), linestyle="--", color="grey", linewidth=1)
        ax.annotate(label, (0, float(value)), textcoords="offset points", xytext=(4, 4), fontsize=8, color="grey")
        low, high = ax.get_ylim()
        ax.set_ylim(low, max(high, float(value) + 2.5))
    ax.set_xlabel("self-training round (0 = gold only, same runs)")
    ax.set_ylabel("dev MNER F1 (mean ± std over seeds)")
    ax.set_xticks(sorted({r for spec in args.specs for r in series(spec)[1]}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Self-training, Twitter-GMNER dev, default tagger (GPU)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
