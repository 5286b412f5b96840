"""Uncertainty heads vs delegation: AUROC/ECE per head and, with the simulated `oracle` backend, MNER F1 at several
delegation rates per head plus random delegation.

    python bench/refinement_curves.py --ckpt runs/X/checkpoints/best.ckpt --gold dev.jsonl --out-dir bench_out \
        [--heads max_prob_mean,entropy,crf_marginal,mc_dropout] [--head-kwargs JSON] \
        [--ensemble A.ckpt B.ckpt] [--evidential E.pt | --fit-evidential train.jsonl] \
        [--heldout-temperature] [--fit-temperature] [--learned [--learned-out learned.json]] [--ceiling] \
        [--rates 0.05,0.1,0.2,0.3,0.5,1.0] [--random-seeds 5] [--backend noisy-oracle]

- ``--heldout-temperature``: dev posts are split in two seeded halves; a temperature fitted on one half scales the
  heads scored on the other (and the other way round), so no entity is scored with a T fitted on its own post.
  Only the heads whose scores depend on T are rerun (probability heads and the CRF marginal), as ``name@T``.
- ``--learned``: the ``learned`` head (a logistic regression over every other head's scores and simple entity
  features), cross-fitted over ``--learned-folds`` folds of posts (each post scored by a model fitted on the other
  folds); ``--learned-out`` also saves one fitted on all posts, for ``head=learned head_kwargs={path: ...}``.
- ``--ceiling``: a row ranking the true errors first (uses the gold labels; an upper bound, not a head).

Writes refinement_curves.json, refinement_curves.png (MNER F1 vs delegation rate) and refinement_curves.md. Every
F1 after delegation comes from a SIMULATED MLLM (gold answers), and all three files say so.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import time
from pathlib import Path

import torch

from refineg.data import read_jsonl
from refineg.inference.predictor import TaggerPredictor
from refineg.inference.uncertainty import (
    EntityUncertainty,
    TemperatureScaler,
    UncertaintyEstimator,
    collect_features,
    create_uncertainty_head,
    cross_fit,
    default_heads,
    fit_error_predictor,
    fit_evidential,
)
from refineg.inference.uncertainty.base import per_post as split_by_post
from refineg.metrics import evaluate_examples
from refineg.stages.refinement import RefineConfig, create_refinement_backend, head_report, refine_examples
from refineg.stages.refinement.calibration import entity_errors
from refineg.stages.refinement.plots import plot_delegation_curves

#: Heads whose scores change with a temperature (the sampling heads decode, the evidential head has its own layer).
TEMPERATURE_HEADS = ("max_prob_mean", "max_prob_min", "entropy", "crf_marginal")

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


def heldout_temperature(predictor, golds, specs, batch_size, seed=0):
    """Scores of the T-dependent heads with a temperature fitted on the other half of the posts.

    Returns:
        ``{name@T: per-post scores}`` (all posts) and ``{"temperatures": [T_a, T_b], "halves": [n_a, n_b]}``.
    """
    order = list(range(len(golds)))
    random.Random(seed).shuffle(order)
    halves = [sorted(order[: len(order) // 2]), sorted(order[len(order) // 2 :])]
    names = [n for n in specs if n in TEMPERATURE_HEADS]
    out = {f"{n}@T": [None] * len(golds) for n in names}
    temps = []
    for k, score_half in enumerate(halves):
        scaler = TemperatureScaler()
        temps.append(scaler.fit(predictor.module, [golds[i] for i in halves[1 - k]], batch_size))
        heads = {n: create_uncertainty_head(n, **specs[n]) for n in names}
        _, scores = UncertaintyEstimator(predictor, heads, scaler).score([golds[i] for i in score_half], progress=True)
        for n, per in scores.items():
            for i, post in zip(score_half, per):
                out[f"{n}@T"][i] = post
    return out, {"temperatures": temps, "halves": [len(h) for h in halves], "seed": seed}


def learned_scores(x, errors, posts_of_entities, preds, specs, fields, names, folds, c, seed=0):
    """Cross-fitted ``learned`` head scores as per-post :class:`EntityUncertainty` lists."""
    oof = cross_fit(x, errors, posts_of_entities, specs, fields, names, folds=folds, seed=seed, c=c)
    flat = [
        EntityUncertainty(float(oof["total"][k]), float(oof["span"][k]), float(oof["type"][k])) for k in range(len(x))
    ]
    return split_by_post(flat, [p.entities for p in preds])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--gold", required=True, help="gold dev JSONL")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--heads", default=None, help="comma-separated (default: every head needing only the ckpt)")
    ap.add_argument(
        "--head-kwargs",
        default="{}",
        help='JSON {head: {kwarg: value}}, e.g. \'{"ensemble": {"measure": "variance"}}\'',
    )
    ap.add_argument("--ensemble", nargs="*", default=None, help="member checkpoints for the ensemble head")
    ap.add_argument("--evidential", default=None, help="trained Dirichlet layer for the evidential head")
    ap.add_argument(
        "--fit-evidential",
        default=None,
        metavar="TRAIN_JSONL",
        help="train the Dirichlet layer on these posts (the tagger's training data; saved in --out-dir)",
    )
    ap.add_argument("--fit-temperature", action="store_true", help="fit T on the gold file (optimistic)")
    ap.add_argument(
        "--heldout-temperature",
        action="store_true",
        help="T fitted on one half of the posts, heads scored on the other (both ways): name@T rows",
    )
    ap.add_argument("--learned", action="store_true", help="add the cross-fitted learned error-predictor head")
    ap.add_argument("--learned-folds", type=int, default=5)
    ap.add_argument("--learned-c", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    ap.add_argument("--learned-out", default=None, help="save a learned model fitted on all posts here")
    ap.add_argument(
        "--learned-seeds",
        type=int,
        default=1,
        help="also report AUROC and recovered @20%% of the learned head for this many fold splits",
    )
    ap.add_argument("--ceiling", action="store_true", help="add a row that ranks the true errors first (upper bound)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--dump-entities",
        action="store_true",
        help="also write entities.jsonl: per predicted entity, every head's scores and its error flags",
    )
    ap.add_argument("--rates", default=",".join(map(str, RATES)))
    ap.add_argument("--random-seeds", type=int, default=5)
    ap.add_argument("--backend", default="oracle", choices=["oracle", "noisy-oracle"])
    ap.add_argument("--oracle-accuracy", type=float, default=0.8)
    ap.add_argument("--checks", default="span,type")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="first N gold posts only (smoke tests)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    golds = read_jsonl(args.gold)[: args.limit]
    t0 = time.time()
    predictor = TaggerPredictor.from_checkpoint(args.ckpt, batch_size=args.batch_size)
    types = list(predictor.module.types)
    extra = json.loads(args.head_kwargs)
    specs = default_heads(predictor.module)
    if args.heads:
        specs = {h: specs.get(h, {}) for h in args.heads.split(",")}
    if args.ensemble:
        specs["ensemble"] = {"checkpoints": args.ensemble}
    if args.fit_evidential:
        layer = fit_evidential(predictor.module, read_jsonl(args.fit_evidential), **extra.pop("fit_evidential", {}))
        layer.save(out / "evidential.pt")
        specs["evidential"] = {"path": str(out / "evidential.pt")}
    elif args.evidential:
        specs["evidential"] = {"path": args.evidential}
    for name, kw in extra.items():
        specs.setdefault(name, {}).update(kw)
    heads = {n: create_uncertainty_head(n.split("@")[0], **kw) for n, kw in specs.items()}
    scaler = TemperatureScaler() if args.fit_temperature else None
    if scaler is not None:
        scaler.fit(predictor.module, golds, args.batch_size)
    estimator = UncertaintyEstimator(predictor, heads, scaler)
    extras: dict = {}
    if args.learned:
        preds, scores, x, names, fields = collect_features(estimator, golds, progress=True)
        errs = entity_errors(preds, golds)
        errors = {t: [e[t] for e in errs] for t in ("total", "span", "type")}
        posts_of = [i for i, p in enumerate(preds) for _ in p.entities]
        scores["learned"] = learned_scores(
            x, errors, posts_of, preds, specs, fields, names, args.learned_folds, args.learned_c
        )
        model = fit_error_predictor(x, errors, specs, fields, names, c=args.learned_c)
        extras["learned"] = {
            "folds": args.learned_folds,
            "c": args.learned_c,
            "features": names,
            "weights_all_posts": model.weights(),
        }
        if args.learned_out:
            model.save(args.learned_out)
    else:
        preds, scores = estimator.score(golds, progress=True)
    if args.heldout_temperature:
        t_scores, extras["heldout_temperature"] = heldout_temperature(predictor, golds, specs, args.batch_size)
        scores.update(t_scores)
    if args.ceiling:
        errs = iter(entity_errors(preds, golds))
        scores["ceiling (gold errors first)"] = [
            [EntityUncertainty(float(next(errs)["total"])) for _ in p.entities] for p in preds
        ]
    t_scores = time.time() - t0
    rates = [float(r) for r in args.rates.split(",")]
    base = RefineConfig(
        backend=args.backend,
        gold=args.gold,
        oracle_accuracy=args.oracle_accuracy,
        checks=args.checks.split(","),
        types=types,
    )
    base_f1 = evaluate_examples(golds, preds, types=types)["mner"]["f1"]
    results = {
        "simulation": f"{args.backend} (simulation): F1 after delegation uses gold answers, not an MLLM",
        "checkpoint": args.ckpt,
        "gold": args.gold,
        "posts": len(golds),
        "entities": sum(len(p.entities) for p in preds),
        "temperature": scaler and scaler.temperature,
        "mner_f1_no_delegation": base_f1,
        "rates": rates,
        "heads": {},
        "scoring_seconds": round(t_scores, 1),
        "head_settings": {n: h.config() for n, h in heads.items()},
        **extras,
    }
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
        results["heads"][name] = {
            "auroc": rep["total"]["auroc"],
            "ece": rep["total"]["ece"],
            "aurc": rep["total"]["aurc"],
            "fields": {f: {k: rep[f][k] for k in ("auroc", "ece", "aurc", "n")} for f in rep},
            "mner_f1": f1s,
        }
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
            (results["heads"].get(key) or results["random"])["recovered_at_20"] = (
                (c["f1"][k] - base_f1) / gain if gain > 0 else None
            )
    if args.learned and args.learned_seeds > 1 and 0.2 in rates and 1.0 in rates:
        full_f1, spread = curves["learned"]["f1"][-1], []
        for seed in range(args.learned_seeds):
            per = learned_scores(
                x, errors, posts_of, preds, specs, fields, names, args.learned_folds, args.learned_c, seed
            )
            cfg = copy.deepcopy(base)
            cfg.delegation_rate = 0.2
            f20 = f1_at(with_head(preds, per), golds, types, cfg)[0]
            flat = [u.total for post in per for u in post]
            spread.append(
                {
                    "fold_seed": seed,
                    "auroc": head_report(preds, golds, flat)["total"]["auroc"],
                    "mner_f1_at_20": f20,
                    "recovered_at_20": (f20 - base_f1) / (full_f1 - base_f1),
                }
            )
        results["learned"]["fold_seeds"] = spread
        vals = [r["recovered_at_20"] for r in spread]
        print(
            f"learned, {len(vals)} fold splits: recovered @20% mean {sum(vals) / len(vals):.3f}, "
            f"min {min(vals):.3f}, max {max(vals):.3f}"
        )
    (out / "refinement_curves.json").write_text(json.dumps(results, indent=1))
    if args.dump_entities:
        errs = iter(entity_errors(preds, golds))
        feats = iter(x.tolist() if args.learned else [])
        with open(out / "entities.jsonl", "w") as f:
            for i, p in enumerate(preds):
                for j, e in enumerate(p.entities):
                    row = {
                        "post": p.id,
                        "start": e.start,
                        "end": e.end,
                        "type": e.type,
                        "errors": next(errs),
                        "heads": {n: {"total": s[i][j].total, **s[i][j].fields()} for n, s in scores.items()},
                    }
                    if args.learned:
                        row["features"] = next(feats)
                    f.write(json.dumps(row) + "\n")
    plot_delegation_curves(curves, out / "refinement_curves.png", f"MNER F1 vs delegation ({args.backend}: SIMULATION)")
    lines = [
        f"MNER F1 (%) after delegating the most uncertain share of {results['entities']} predicted entities to "
        f"the **{args.backend} backend (a simulation with gold answers, not an MLLM)**; no delegation: "
        f"{100 * base_f1:.2f}.",
        "",
        "| head | AUROC | ECE | AURC | " + " | ".join(f"{100 * r:g}%" for r in rates) + " | recovered @20% |",
        "|---" * (len(rates) + 5) + "|",
    ]
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for name, h in results["heads"].items():
        lines.append(
            f"| {name} | {fmt(h['auroc'])} | {fmt(h['ece'])} | {fmt(h['aurc'])} | "
            + " | ".join(f"{100 * f:.2f}" for f in h["mner_f1"])
            + f" | {fmt(h.get('recovered_at_20'))} |"
        )
    lines.append(
        f"| random ({args.random_seeds} seeds) | - | - | - | "
        + " | ".join(f"{100 * f:.2f}" for f in rand)
        + f" | {fmt(results['random'].get('recovered_at_20'))} |"
    )
    (out / "refinement_curves.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(
        f"\nwrote {out}/refinement_curves.{{json,png,md}}; F1 at 100%: "
        + ", ".join(f"{n} {100 * v:.2f}" for n, v in full.items())
    )


if __name__ == "__main__":
    main()
