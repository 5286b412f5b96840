"""Phrase grounding on real photos (Flickr30k Entities dev): the fitted region scorer against simple baselines.

Reads a state written by ``refineg fit-region-scorer`` (its dev split is named in the state), computes the
candidates of every dev image once, and scores in the same run:

* the fitted scorer (its none-threshold, and always answering its best box),
* the same scorer fitted with random towers (``--random-state``, optional; read from its fit report, which scored
  the same dev posts),
* whole image, centre box (the middle half of each side), the largest proposal (the whole-image box excluded),
  a random proposal (seeded),
* the proposal recall: share of phrases with a box for which some candidate has IoU >= 0.5 (the upper bound of
  picking a candidate without refinement).

Acc@0.5 is over dev phrases with a gold box (the first answered box must have IoU >= 0.5 with one of them);
none-accuracy is over phrases without one (baselines always answer a box, so theirs is 0). Also draws a few dev
photos with gold and predicted boxes.

Usage:
    refineg convert --format flickr30k-entities --input $F --out /tmp/f30k/all.jsonl
    refineg fit-region-scorer --data /tmp/f30k/all.jsonl --images $F/images --out runs/f30k/scorer.pt
    refineg fit-region-scorer --data /tmp/f30k/all.jsonl --images $F/images --out runs/f30k-random/scorer.pt \
        pretrained=null
    HF_HUB_OFFLINE=1 python bench/grounding_flickr.py --state runs/f30k/scorer.pt \
        --random-state runs/f30k-random/scorer.pt --images $F/images --out docs/grounding_flickr.json \
        --picture docs/img/grounding_flickr.png
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)

from refineg.data import read_jsonl
from refineg.metrics import box_iou
from refineg.stages.grounding import create_grounder
from refineg.stages.grounding.region_fit import build_groups, grounding_answers, grounding_report


def baseline_answers(groups, index, rule: str, seed: int = 0):
    """``(score, box)`` per indexed entity for a rule that ignores the text."""
    rng = random.Random(seed)
    out = []
    for g, _ in index:
        group = groups[g][0]
        w, h = group.size
        full = [0.0, 0.0, float(w), float(h)]
        if rule == "whole":
            box = full
        elif rule == "centre":
            box = [w / 4, h / 4, 3 * w / 4, 3 * h / 4]
        elif rule == "largest":
            inner = [b for b in group.boxes if b != full] or group.boxes
            box = max(inner, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        else:
            box = rng.choice(group.boxes)
        out.append((1.0, box))
    return out


def recall(groups, index, gold) -> float:
    hits = [
        any(box_iou(b, g) >= 0.5 for b in groups[gi][0].boxes for g in gb)
        for (gi, _), (_, gb) in zip(index, gold)
        if gb
    ]
    return sum(hits) / len(hits)


def evaluate_state(state: str, images: str, threads: int):
    torch.set_num_threads(threads)
    scorer = create_grounder("clip", state=state)
    fit = torch.load(state, map_location="cpu", weights_only=True)["fit"]
    dev_posts = read_jsonl(fit["split"]["dev"])
    t0 = time.perf_counter()
    groups, index, _ = build_groups(scorer, dev_posts, images, "dev features")
    features_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = grounding_answers(scorer, groups, index)
    score_s = time.perf_counter() - t0
    gold = [(groups[g][1][k][1], groups[g][1][k][2]) for g, k in index]
    return scorer, fit, dev_posts, groups, index, answers, gold, {"features_s": features_s, "score_s": score_s}


def entity_posts(dev_posts, images: str):
    """The ``(post, entity)`` of each indexed entity, in :func:`build_groups` order."""
    return [
        (post, ent)
        for post in dev_posts
        if post.entities and post.image and (Path(images) / post.image).is_file()
        for ent in post.entities
    ]


def draw(picture: Path, images: str, dev_posts, index, answers, gold, n: int = 6) -> None:
    """Draws the first caption of ``n`` dev photos: gold boxes dashed, the scorer's answer solid, one colour per
    phrase."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    from PIL import Image

    pairs = entity_posts(dev_posts, images)
    first: dict[str, list[int]] = {}
    for i, (post, _) in enumerate(pairs):
        if post.id.endswith("_0"):
            first.setdefault(post.id, []).append(i)
    chosen = [ids for ids in first.values() if sum(bool(gold[i][1]) for i in ids) >= 2][:n]
    cols = (len(chosen) + 1) // 2
    fig, axes = plt.subplots(2, cols, figsize=(4.4 * cols, 8.4))
    colours = ["tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple"]
    for ax, ids in zip(axes.ravel(), chosen):
        post = pairs[ids[0]][0]
        ax.imshow(Image.open(Path(images) / post.image))
        legend = []
        for colour, i in zip(colours, ids):
            ent = pairs[i][1]
            for gb in gold[i][1]:
                ax.add_patch(
                    patches.Rectangle(
                        (gb[0], gb[1]),
                        gb[2] - gb[0],
                        gb[3] - gb[1],
                        fill=False,
                        edgecolor=colour,
                        linewidth=1.2,
                        linestyle="--",
                    )
                )
            box = answers[i][1]
            hit = box is not None and any(box_iou(box, g) >= 0.5 for g in gold[i][1])
            if box is not None:
                ax.add_patch(
                    patches.Rectangle(
                        (box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, edgecolor=colour, linewidth=2.4
                    )
                )
            mark = "ok" if hit else ("no gold box" if not gold[i][1] else "miss")
            legend.append(f"{ent.text(post.tokens)} [{ent.type}] {mark}")
        ax.set_title("\n".join(legend), fontsize=7, loc="left")
        ax.axis("off")
    for ax in axes.ravel()[len(chosen) :]:
        ax.axis("off")
    fig.suptitle(
        "Flickr30k Entities dev: gold boxes dashed, region scorer's answer solid (one colour per phrase)", fontsize=9
    )
    fig.tight_layout()
    picture.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(picture, dpi=72)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--state", required=True)
    ap.add_argument("--random-state", default=None)
    ap.add_argument("--images", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--picture", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    scorer, fit, dev_posts, groups, index, answers, gold, times = evaluate_state(args.state, args.images, args.threads)
    methods = {
        "fitted scorer (threshold)": grounding_report(answers, gold, scorer.threshold),
        "fitted scorer (always answer)": grounding_report(answers, gold, None),
    }
    for rule, name in (
        ("whole", "whole image"),
        ("centre", "centre box"),
        ("largest", "largest proposal"),
        ("random", "random proposal"),
    ):
        methods[name] = grounding_report(baseline_answers(groups, index, rule), gold, None)
    if args.random_state:  # its own fit report: the same dev posts, scored by fit-region-scorer
        r_fit = torch.load(args.random_state, map_location="cpu", weights_only=True)["fit"]
        if r_fit["split"]["dev"] != fit["split"]["dev"] or r_fit["dev_entities"] != len(index):
            raise SystemExit(f"{args.random_state} was fitted on another dev split")
        methods["scorer with random towers (threshold)"] = r_fit["dev"]
        methods["scorer with random towers (always answer)"] = r_fit["dev_always_answer"]
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "threads": args.threads,
        "state": args.state,
        "label": scorer.label,
        "dev_images": len(groups),
        "dev_posts": len(dev_posts),
        "dev_entities": len(index),
        "proposal_recall": recall(groups, index, gold),
        "mean_candidates": sum(len(g.boxes) for g, _ in groups) / len(groups),
        "threshold": scorer.threshold,
        "fit_seconds": fit.get("seconds"),
        "dev_features_seconds": round(times["features_s"], 1),
        "dev_scoring_seconds": round(times["score_s"], 1),
        "methods": methods,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"proposal recall {100 * result['proposal_recall']:.2f}%")
    for name, r in methods.items():
        none = "-" if r["none_acc"] is None else f"{100 * r['none_acc']:.2f}"
        print(f"{name:<42} Acc@0.5 {100 * r['acc']:6.2f}  none-acc {none}")
    if args.picture:
        draw(Path(args.picture), args.images, dev_posts, index, answers, gold)


if __name__ == "__main__":
    main()
