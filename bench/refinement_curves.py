"""Uncertainty heads vs delegation: AUROC/ECE per head and, with the simulated `oracle` backend, MNER F1 at several
delegation rates per head plus random delegation.

    python bench/refinement_curves.py --ckpt runs/X/checkpoints/best.ckpt --gold dev.jsonl --out-dir bench_out \
        [--heads max_prob_mean,entropy,crf_marginal,mc_dropout] [--ensemble A.ckpt B.ckpt] [--evidential E.pt] \
        [--fit-temperature] [--rates 0.05,0.1,0.2,0.3,0.5,1.0] [--random-seeds 5] [--backend noisy-oracle]

Writes refinement_curves.json, refinement_curves.png (MNER F1 vs delegation rate) and refinement_curves.md. Every
F1 after delegation comes from a SIMULATED MLLM (gold answers), and all three files say so.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

from refineg.data import read_jsonl
from refineg.metrics import evaluate_examples
from refineg.modules.uncertainty import TemperatureScaler, UncertaintyEstimator, create_uncertainty_head
from refineg.predictor import TaggerPredictor
from refineg.stages.refinement import RefineConfig, create_refinement_backend, head_report, refine_examples
from refineg.stages.refinement.calibrate import default_heads
from refineg.stages.refinement.plots import plot_delegation_curves

RATES = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def with_head(preds, per_post):
    out = copy.deepcopy(preds)
    for post, scores in zip(out, per_post):
        for ent, u in zip(post.entities, scores):
            ent.uncertainty = u.total
    return out


def f1_at(preds, golds, types, cfg):
    refined, report = refine_examples(preds, cfg, create_refinement_backend(cfg), types)
    return evaluate_examples(golds, refined, types=types)["mner"]["f1"], report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--gold", required=True, help="gold dev JSONL")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--heads", default=None, help="comma-separated (default: every head needing only the ckpt)")
    ap.add_argument("--ensemble", nargs="*", default=None, help="member checkpoints for the ensemble head")
    ap.add_argument("--evidential", default=None, help="trained Dirichlet layer for the evidential head")
    ap.add_argument("--fit-temperature", action="store_true", help="fit T on the gold file (optimistic)")
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--backend", default="oracle", choices=["oracle", "noisy-oracle"])
    ap.add_argument("--oracle-accuracy", type=float, default=0.8)
    ap.add_argument("--checks", default="span,type")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="first N gold posts only (smoke tests)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    golds = read_jsonl(args.gold)[:args.limit]
    t0 = time.time()
    predictor = TaggerPredictor.from_checkpoint(args.ckpt, batch_size=args.batch_size)
    types = list(predictor.module.types)
    specs = default_heads(predictor.module)
    if args.heads:
        specs = {h: specs.get(h, {}) for h in args.heads.split(",")}
    if args.ensemble:
        specs["ensemble"] = {"checkpoints": args.ensemble}
    if args.evidential:
        specs["evidential"] = {"path": args.evidential}
    heads = {n: create_uncertainty_head(n, **kw) for n, kw in specs.items()}
    scaler = TemperatureScaler() if args.fit_temperature else None
    if scaler is not None:
        scaler.fit(predictor.module, golds, args.batch_size)
    preds, scores = UncertaintyEstimator(predictor, heads, scaler).score(golds, progress=True)
    t_scores = time.time() - t0
    rates = [float(r) for r in args.rates.split(",")]
    base = RefineConfig(backend=args.backend, gold=args.gold, oracle_accuracy=args.oracle_accuracy,
                        checks=args.checks.split(","), types=types)
    base_f1 = evaluate_examples(golds, preds, types=types)["mner"]["f1"]
    results = {"simulation": f"{args.backend} (simulation): F1 after delegation uses gold answers, not an MLLM",
               "checkpoint": args.ckpt, "gold": args.gold, "posts": len(golds),
               "entities": sum(len(p.entities) for p in preds), "temperature": scaler and scaler.temperature,
               "mner_f1_no_delegation": base_f1, "rates": rates, "heads": {}, "scoring_seconds": round(t_scores, 1)}
    curves = {}
    for name, per_post in scores.items():
        flat = [u for post in per_post for u in post]
        rep = head_report(preds, golds, [u.total for u in flat], [u.fields() for u in flat])
        scored = with_head(preds, per_post)
        f1s = []
        for r in rates:
            cfg = copy.deepcopy(base)
            cfg.delegation_rate = r
            f1s.append(f1_at(scored, golds, types, cfg)[0])
        results["heads"][name] = {"auroc": rep["total"]["auroc"], "ece": rep["total"]["ece"],
                                  "aurc": rep["total"]["aurc"], "fields": {f: {k: rep[f][k] for k in (
                                      "auroc", "ece", "aurc", "n")} for f in rep}, "mner_f1": f1s}
        curves[name] = {"rate": [0.0, *rates], "f1": [base_f1, *f1s]}
    first = next(iter(scores))
    scored = with_head(preds, scores[first])
    rand = []
    for r in rates:
        vals = []
        for seed in range(args.random_seeds):
            cfg = copy.deepcopy(base)
            cfg.delegation_rate, cfg.random_delegation, cfg.seed = r, True, seed
            vals.append(f1_at(scored, golds, types, cfg)[0])
        rand.append(sum(vals) / len(vals))
    results["random"] = {"mner_f1": rand, "seeds": args.random_seeds}
    curves[f"random (mean of {args.random_seeds})"] = {"rate": [0.0, *rates], "f1": [base_f1, *rand]}
    full = {n: c["f1"][-1] for n, c in curves.items()}
    if 0.2 in rates and 1.0 in rates:
        k = rates.index(0.2) + 1
        for n, c in curves.items():
            gain = c["f1"][-1] - base_f1
            key = "random" if n.startswith("random") else n
            (results["heads"].get(key) or results["random"])["recovered_at_20"] = \
                (c["f1"][k] - base_f1) / gain if gain > 0 else None
    (out / "refinement_curves.json").write_text(json.dumps(results, indent=1))
    plot_delegation_curves(curves, out / "refinement_curves.png",
                           f"MNER F1 vs delegation ({args.backend}: SIMULATION)")
    lines = [f"MNER F1 (%) after delegating the most uncertain share of {results['entities']} predicted entities to "
             f"the **{args.backend} backend (a simulation with gold answers, not an MLLM)**; no delegation: "
             f"{100 * base_f1:.2f}.", "",
             "| head | AUROC | ECE | AURC | " + " | ".join(f"{100 * r:g}%" for r in rates) + " | recovered @20% |",
             "|---" * (len(rates) + 5) + "|"]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, h in results["heads"].items():
        lines.append(f"| {name} | {fmt(h['auroc'])} | {fmt(h['ece'])} | {fmt(h['aurc'])} | "
                     + " | ".join(f"{100 * f:.2f}" for f in h["mner_f1"]) + f" | {fmt(h.get('recovered_at_20'))} |")
    lines.append(f"| random ({args.random_seeds} seeds) | - | - | - | " + " | ".join(f"{100 * f:.2f}" for f in rand)
                 + f" | {fmt(results['random'].get('recovered_at_20'))} |")
    (out / "refinement_curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwrote {out}/refinement_curves.{{json,png,md}}; F1 at 100%: " +
          ", ".join(f"{n} {100 * v:.2f}" for n, v in full.items()))


if __name__ == "__main__":
    main()
