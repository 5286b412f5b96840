"""Draws docs/img/architecture.png: the stage / data-flow graph of docs/architecture.md (matplotlib only)."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

# (key, label, x, y, kind): kind "data" = a file, "step" = code
NODES = [
    ("raw", "Twitter-GMNER / CoNLL / CCKS", 0.00, 3.0, "data"),
    ("gold", "gold JSONL", 2.75, 3.0, "data"),
    ("syn", "1. synthesis (LLM)\nrefineg synthesize", 2.75, 4.5, "step"),
    ("synj", "synthetic JSONL", 5.50, 4.5, "data"),
    ("train", "small tagger\ntrain.py (BACKBONES, HEADS)", 5.50, 3.0, "step"),
    ("run", "runs/NAME/\nckpt, metrics, predictions", 8.25, 3.0, "data"),
    ("unc", "uncertainty heads\nrefineg calibrate", 8.25, 1.5, "step"),
    ("ref", "2. refinement\nrefineg refine (u > tau -> MLLM)", 5.50, 1.5, "step"),
    ("gr", "3. grounding\nGROUNDERS (MLLM boxes)", 2.75, 1.5, "step"),
    ("out", "GMNER output\n-> refineg evaluate", 0.00, 1.5, "data"),
    ("llm", "LLM_BACKENDS: openai (vLLM), hf, replay\ncache, budget, usage", 4.12, 0.0, "llm"),
    ("viz", "refineg report / visualize / sweep", 10.75, 3.0, "step"),
]
EDGES = [
    ("raw", "gold"),
    ("gold", "syn"),
    ("syn", "synj"),
    ("gold", "train"),
    ("synj", "train"),
    ("train", "run"),
    ("run", "unc"),
    ("unc", "ref"),
    ("ref", "gr"),
    ("gr", "out"),
    ("run", "viz"),
]
DASHED = [("llm", "ref"), ("llm", "gr")]
COLOURS = {"data": "#e8f0fe", "step": "#fff4e0", "llm": "#eee8f8"}
W, H = 1.9, 0.8


def _edge_point(src: tuple[float, float], dst: tuple[float, float]) -> tuple[float, float]:
    """Where the line from ``src``'s centre towards ``dst`` leaves ``src``'s box."""
    (x, y), (tx, ty) = src, dst
    if abs(ty - y) < 1e-6:
        return (x + W / 2 + 0.05, y) if tx > x else (x - W / 2 - 0.05, y)
    return (x, y + H / 2 + 0.05) if ty > y else (x, y - H / 2 - 0.05)


def main(out: str) -> None:
    """Draws the graph into ``out``."""
    pos = {k: (x, y) for k, _, x, y, _ in NODES}
    fig, ax = plt.subplots(figsize=(13, 6))
    for _key, label, x, y, kind in NODES:
        w = 3.6 if kind == "llm" else W
        ax.add_patch(
            FancyBboxPatch((x - w / 2, y - H / 2), w, H, boxstyle="round,pad=0.05", fc=COLOURS[kind], ec="#555555")
        )
        ax.text(x, y, label, ha="center", va="center", fontsize=8)
    for edges, style in ((EDGES, "-"), (DASHED, "--")):
        for a, b in edges:
            ax.annotate(
                "",
                xy=_edge_point(pos[b], pos[a]),
                xytext=_edge_point(pos[a], pos[b]),
                arrowprops={"arrowstyle": "->", "ls": style, "color": "#333333"},
            )
    ax.set_xlim(-1.2, 12.0)
    ax.set_ylim(-0.7, 5.2)
    ax.axis("off")
    ax.set_title("refineg: stages and data flow (blue: files, orange: code, purple: LLM backends)", fontsize=10)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[1] / "docs/img/architecture.png"))
