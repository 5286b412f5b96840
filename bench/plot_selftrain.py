"""Plots dev MNER F1 per self-training round from ``bench/selftrain.py`` summaries (mean ± std over seeds).

``python bench/plot_selftrain.py --out docs/img/selftrain_rounds.png NAME=SUMMARY[:GROUP] ...`` draws one line per
``NAME`` from the group ``GROUP`` of a ``summary.json`` (default: its only group). Round 0 is the gold-only tagger of
the same runs. Example (the figure in docs/results.md)::

    python bench/plot_selftrain.py --out docs/img/selftrain_rounds.png \\
        "100 gold=docs/selftrain_gpu/g100/summary.json" \\
        "500 gold=docs/selftrain_gpu/summary.json:g500-soft" \\
        "1000 gold=docs/selftrain_gpu/g1000/summary.json" \\
        "full data=docs/selftrain_gpu/summary.json:full-soft" \\
        "full, ensemble teacher=docs/selftrain_gpu/ens6/summary.json" \\
        "full, R-Drop+EMA, ensemble teacher, swap pool=docs/selftrain_gpu/ens6_rdrop_ema_swap2/summary.json" \\
        --hline "78.5=full-data target (issue 20)" --zoom full \\
        --mark "1=78.69=ensemble of the 6 students" "0=78.62=ensemble teacher (6 round-0 taggers)"

``--zoom PREFIX`` adds a right-hand panel with only the lines whose name starts with ``PREFIX`` on their own scale;
``--mark ROUND=VALUE=LABEL`` draws a single labelled point there (or on the main panel without ``--zoom``).
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


def number(text: str, item: str, what: str) -> float:
    """``float(text)``, or a one-line ``error:`` naming the argument ``item``.

    Raises:
        SystemExit: ``text`` is not a number.
    """
    try:
        return float(text)
    except ValueError:
        raise SystemExit(f"error: {item!r}: expected {what}") from None


def main() -> None:
    """Draws the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", help="NAME=SUMMARY[:GROUP]")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--hline", nargs="*", default=[], help="VALUE=LABEL: a dashed reference line (e.g. a target)")
    parser.add_argument("--zoom", default="", help="PREFIX: a second panel with the lines whose name starts with it")
    parser.add_argument("--mark", nargs="*", default=[], help="ROUND=VALUE=LABEL: a single labelled point")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_series = [series(spec) for spec in args.specs]
    if args.zoom:
        fig, (ax, zoom) = plt.subplots(1, 2, figsize=(10.0, 4.0), dpi=120, gridspec_kw={"width_ratios": [3, 2]})
    else:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        zoom = None
    colours = {name: f"C{i}" for i, (name, *_) in enumerate(all_series)}
    for name, rounds, mean, std in all_series:
        ax.errorbar(rounds, mean, yerr=std, marker="o", capsize=3, label=name, color=colours[name])
        if zoom is not None and name.startswith(args.zoom):
            zoom.errorbar(rounds, mean, yerr=std, marker="o", capsize=3, label=name, color=colours[name])
    # drawn before the limits below fix the y range (a point drawn later outside it would be cut off);
    # black and grey stars: no line's colour
    for i, item in enumerate(args.mark):
        where, _, rest = item.partition("=")
        value, _, label = rest.partition("=")
        x, y = number(where, item, "ROUND=VALUE=LABEL"), number(value, item, "ROUND=VALUE=LABEL")
        panel = zoom if zoom is not None else ax
        colour = ["black", "grey", "silver"][i % 3]
        panel.plot([x], [y], "*", markersize=12, color=colour, linestyle="none", label=label)
    for panel in [ax] + ([zoom] if zoom is not None else []):
        for item in args.hline:
            text, _, label = item.partition("=")
            value = number(text, item, "VALUE=LABEL")
            panel.axhline(value, linestyle="--", color="grey", linewidth=1)
            panel.annotate(label, (0, value), textcoords="offset points", xytext=(4, 4), fontsize=8, color="grey")
            low, high = panel.get_ylim()
            panel.set_ylim(low, max(high, value + (2.5 if panel is ax else 0.3)))
        panel.set_xlabel("self-training round (0 = gold only, same runs)")
        shown = [rounds for name, rounds, *_ in all_series if panel is ax or name.startswith(args.zoom)]
        panel.set_xticks(sorted({r for rounds in shown for r in rounds}))
        panel.grid(alpha=0.3)
    ax.set_ylabel("dev MNER F1 (mean ± std over seeds)")
    below = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.25)}  # under the panel: no line is hidden
    ax.legend(fontsize=8, ncol=2, **below)
    ax.set_title("Self-training, Twitter-GMNER dev, default tagger (GPU)", fontsize=10)
    if zoom is not None:
        zoom.legend(fontsize=7, **below)
        zoom.set_title(f"zoom: lines named {args.zoom!r}…", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
