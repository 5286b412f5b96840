"""Plots each tagger, their mean and their weight average (soup) from ``bench/selftrain.py --soup`` summaries.

``python bench/plot_soup.py --out docs/img/selftrain_soups.png TITLE=SUMMARY ...`` draws one panel per ``TITLE`` (a
title given several times collects those summaries in one panel): for every group and round of its summaries, the dev
MNER F1 of each run's tagger (grey dots), their mean (black bar), the soup of them (red diamond) and, where the summary
has one, the ensemble of the last round (blue star). ``--target GROUP_PREFIX=VALUE`` draws an absolute target over the
groups whose name starts with the prefix; ``--gain GROUP_PREFIX=POINTS`` draws round 0's mean + POINTS over the later
rounds of those groups. Example (the figure in docs/results.md)::

    G=docs/selftrain_gpu C=docs/selftrain_cpu
    python bench/plot_soup.py --out docs/img/selftrain_soups.png \\
        "full data, 6 seeds (GPU)=$G/soup_full_fixed/summary_soups.json" \\
        "500 gold, gold samples 1-3 (GPU)=$G/soup_g500_fixed/summary.json" \\
        "500 gold, gold samples 4-6 (CPU)=$C/soup_g500_gD/summary.json" \\
        "500 gold, gold samples 4-6 (CPU)=$C/soup_g500_gE/summary.json" \\
        "500 gold, gold samples 4-6 (CPU)=$C/soup_g500_gF/summary.json" \\
        "100 gold (CPU)=$C/soup_g100/summary.json" --target full=78.5 --gain g500=2.5 g100=2.5
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def columns(path: str) -> list[dict]:
    """One column per group and round of a summary: its taggers' scores, the soup, the ensemble (points) and ``base``.

    ``base`` is the mean of the group's round-0 taggers in this summary (``None`` without round 0): a panel may collect
    several summaries with a group of one name, and each gain line belongs to its own summary's round 0.

    Raises:
        SystemExit: A summary without soups (written without ``--soup``).
    """
    summary = json.loads(Path(path).read_text())
    if not summary.get("soup"):
        raise SystemExit(f"error: {path} has no soups: run bench/selftrain.py with --soup")
    out = []
    for group, by_round in summary["soup"].items():
        ens = (summary.get("student_ensemble") or {}).get(group)
        last = max(by_round, key=int)
        base = statistics.fmean(by_round["0"]["members"]) if "0" in by_round else None  # this summary's round 0
        for k, soup in sorted(by_round.items(), key=lambda kv: int(kv[0])):
            out.append(
                {
                    "group": group,
                    "round": int(k),
                    "members": soup["members"],
                    "soup": soup["soup"],
                    "ensemble": ens["dev_mner_f1"] if ens and k == last else None,
                    "base": base,
                }
            )
    return out


def rule(items: list[str], flag: str) -> list[tuple[str, float]]:
    """``PREFIX=VALUE`` items as pairs, or a one-line ``error:`` naming the bad one.

    Raises:
        SystemExit: An item without ``=`` or with a value that is not a number.
    """
    pairs = []
    for item in items:
        prefix, _, value = item.partition("=")  # without "=", value is "" and not a number
        try:
            pairs.append((prefix, float(value)))
        except ValueError:
            raise SystemExit(f"error: {flag} {item!r}: expected GROUP_PREFIX=NUMBER") from None
    return pairs


def main() -> None:
    """Draws the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("panels", nargs="+", help="TITLE=SUMMARY (one title, one panel)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--target", nargs="*", default=[], help="GROUP_PREFIX=VALUE: an absolute target (dashed)")
    parser.add_argument("--gain", nargs="*", default=[], help="GROUP_PREFIX=POINTS: round 0's mean + POINTS (dashed)")
    args = parser.parse_args()
    targets, gains = rule(args.target, "--target"), rule(args.gain, "--gain")
    by_title: dict[str, list[dict]] = {}
    for spec in args.panels:
        title, sep, path = spec.partition("=")
        if not sep:
            raise SystemExit(f"error: {spec!r}: expected TITLE=SUMMARY")
        by_title.setdefault(title, []).extend(columns(path))
    panels = list(by_title.items())
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    widths = [len(cols) for _, cols in panels]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(1.2 * sum(widths) + 1.5, 4.6), dpi=120, gridspec_kw={"width_ratios": widths}
    )
    axes = list(axes) if len(panels) > 1 else [axes]
    for ax, (title, cols) in zip(axes, panels):
        for x, c in enumerate(cols):
            mean = statistics.fmean(c["members"])
            first = x == 0
            ax.plot([x - 0.1] * len(c["members"]), c["members"], "o", color="grey", alpha=0.6, ms=4,
                    label="one tagger (each seed)" if first else None)  # fmt: skip
            ax.hlines(mean, x - 0.25, x + 0.25, color="black", lw=2, label="mean of the taggers" if first else None)
            ax.plot([x + 0.1], [c["soup"]], "D", color="C3", ms=7, label="soup (weight average)" if first else None)
            if c["ensemble"] is not None:
                ax.plot([x + 0.25], [c["ensemble"]], "*", color="C0", ms=11, label="ensemble (all taggers run)")
            for prefix, value in targets:
                if c["group"].startswith(prefix):
                    ax.hlines(value, x - 0.45, x + 0.45, color="C2", ls="--", label=f"target {value:g}")
            for prefix, points in gains:
                if c["group"].startswith(prefix) and c["round"] > 0 and c["base"] is not None:
                    ax.hlines(c["base"] + points, x - 0.45, x + 0.45, color="C2", ls=":",
                              label=f"round 0 mean + {points:g}")  # fmt: skip
        ax.set_xticks(range(len(cols)), [f"{c['group']}\nround {c['round']}" for c in cols], fontsize=7)
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per label
        ax.legend(handles.values(), handles.keys(), fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    axes[0].set_ylabel("dev MNER F1")
    fig.suptitle("Self-training, Twitter-GMNER dev: one tagger, their mean and their soup", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
