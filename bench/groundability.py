"""Groundability from text: how well the head separates boxed from box-less entities, and what it does to GMNER/EEG
F1 when the region scorer behind it is useless (the text-only floor) or perfect (oracle boxes).

    python bench/groundability.py --ckpt runs/X/checkpoints/best.ckpt --gold dev.jsonl --out groundability.json \
        [--pred predictions_dev.jsonl] [--train train.jsonl] [--thresholds 0.3,0.4,0.5,0.6,0.7]

Predicted entities come from the checkpoint's tagger (or ``--pred``, a JSONL the same checkpoint wrote, with
``groundable`` set). Box policies, all on the same predicted entities:

- ``none_for_all``: every entity answers none (what a text-only tagger scores);
- ``head_wrong_box``: ``groundable >= t`` -> a box that cannot be right, else none (the floor of head + grounder);
- ``head_oracle_box``: ``groundable >= t`` -> the gold box when the same-span gold entity has one (else a wrong
  box), else none (the ceiling of head + grounder);
- ``gold_groundability_oracle_box``: perfect groundability and perfect boxes (the MNER/span ceiling).

``break_even_box_accuracy`` is the share of head-grounded entities that have a gold box which the region scorer
must box correctly for the head + grounder to match ``none_for_all`` on GMNER F1 (F1 is linear in true positives
here: every policy predicts the same entities).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import torch
from torchmetrics.functional.classification import binary_accuracy, binary_auroc

from refineg.data import Example, read_jsonl
from refineg.inference.predictor import TaggerPredictor
from refineg.metrics import evaluate_examples

WRONG_BOX = [-2.0, -2.0, -1.0, -1.0]  # outside every image: IoU 0 with any gold box
TYPES = ["PER", "LOC", "ORG", "OTHER"]


def separation(scores: list[float], labels: list[int]) -> dict:
    """AUROC, accuracy at 0.5 and the majority-class accuracy of groundability scores against has-a-box labels."""
    p, y = torch.tensor(scores), torch.tensor(labels)
    return {
        "n": len(labels),
        "grounded_share": float(y.float().mean()),
        "auroc": float(binary_auroc(p, y)),
        "accuracy": float(binary_accuracy(p, y)),
        "majority_accuracy": float(max(y.float().mean(), 1 - y.float().mean())),
    }


def with_boxes(preds: list[Example], golds: list[Example], policy: str, threshold: float = 0.5) -> list[Example]:
    """Copies of ``preds`` whose entities get boxes by ``policy`` (see the module docstring)."""
    out = copy.deepcopy(preds)
    gold_by_id = {g.id: g for g in golds}
    for ex in out:
        gold_span = {e.span: e for e in gold_by_id[ex.id].entities}
        for ent in ex.entities:
            gold = gold_span.get(ent.span)
            if policy == "none_for_all":
                shown = False
            elif policy == "gold_groundability_oracle_box":
                shown = gold is not None and bool(gold.boxes)
            else:
                shown = ent.groundable is not None and ent.groundable >= threshold
            oracle = policy != "head_wrong_box" and gold is not None and gold.boxes
            ent.boxes = ([list(gold.boxes[0])] if oracle else [WRONG_BOX]) if shown else []
    return out


def scores(golds: list[Example], preds: list[Example]) -> dict:
    """GMNER/EEG/MNER F1 and GMNER/EEG true positives."""
    r = evaluate_examples(golds, preds, types=TYPES)
    return {
        "gmner_f1": r["gmner"]["f1"],
        "eeg_f1": r["eeg"]["f1"],
        "mner_f1": r["mner"]["f1"],
        "gmner_tp": r["counts"]["gmner"]["tp"],
        "eeg_tp": r["counts"]["eeg"]["tp"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--gold", required=True, help="canonical JSONL with boxes (refineg convert)")
    parser.add_argument("--train", help="canonical training JSONL: adds the per-type prior baseline (P(box | type))")
    parser.add_argument("--pred", help="predictions JSONL with groundable (default: predict with --ckpt)")
    parser.add_argument("--out", default="groundability.json")
    parser.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    golds = read_jsonl(args.gold)
    predictor = TaggerPredictor.from_checkpoint(args.ckpt, batch_size=128)
    preds = read_jsonl(args.pred) if args.pred else predictor.predict(golds)
    if any(e.groundable is None for p in preds for e in p.entities):
        raise ValueError(f"{args.pred or args.ckpt}: predicted entities without groundable (no head?)")
    scored_gold = predictor.score_groundability(golds, progress=True)

    gold_ents = [e for ex in scored_gold for e in ex.entities if e.groundable is not None]
    result: dict = {"ckpt": args.ckpt, "gold": args.gold, "posts": len(golds)}
    result["gold_entities"] = separation([e.groundable for e in gold_ents], [int(bool(e.boxes)) for e in gold_ents])
    if args.train:
        train_ents = [e for ex in read_jsonl(args.train) for e in ex.entities]
        prior = {
            t: sum(bool(e.boxes) for e in train_ents if e.type == t) / max(1, sum(e.type == t for e in train_ents))
            for t in TYPES
        }
        result["type_prior"] = prior
        result["gold_entities_type_prior_baseline"] = separation(
            [prior[e.type] for e in gold_ents], [int(bool(e.boxes)) for e in gold_ents]
        )
    result["gold_entities_by_type"] = {
        t: separation(
            [e.groundable for e in gold_ents if e.type == t], [int(bool(e.boxes)) for e in gold_ents if e.type == t]
        )
        for t in TYPES
    }
    gold_by_id = {g.id: g for g in golds}
    matched = [(p, g) for ex in preds for p in ex.entities for g in gold_by_id[ex.id].entities if g.span == p.span]
    result["predicted_entities_matching_gold_spans"] = separation(
        [p.groundable for p, _ in matched], [int(bool(g.boxes)) for _, g in matched]
    )
    result["predicted_entities"] = sum(len(p.entities) for p in preds)

    floors: dict = {
        "none_for_all": scores(golds, with_boxes(preds, golds, "none_for_all")),
        "gold_groundability_oracle_box": scores(golds, with_boxes(preds, golds, "gold_groundability_oracle_box")),
    }
    for t in (float(x) for x in args.thresholds.split(",")):
        wrong = scores(golds, with_boxes(preds, golds, "head_wrong_box", t))
        oracle = scores(golds, with_boxes(preds, golds, "head_oracle_box", t))
        need = floors["none_for_all"]["gmner_tp"] - wrong["gmner_tp"]
        gain = oracle["gmner_tp"] - wrong["gmner_tp"]
        shown = sum(1 for ex in preds for e in ex.entities if e.groundable >= t)
        floors[f"t={t:g}"] = {
            "head_grounded_share": shown / max(1, result["predicted_entities"]),
            "head_wrong_box": wrong,
            "head_oracle_box": oracle,
            "break_even_box_accuracy": need / gain if gain > 0 else None,
        }
    result["floors"] = floors
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
