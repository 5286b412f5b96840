"""Do selected demonstrations share phrase types with the query? ContextSelector on real photos (Flickr30k Entities).

Issue 14, item 5. The 800 photos are split by image exactly as the region scorer splits them
(``split_by_image(posts, 0.2, 0)``): the 3,200 captions of the train photos are the demonstration pool, the 800
captions of the dev photos are the queries, so no photo is on both sides. Every query gets ``k`` demonstrations
from each selector variant below; the queries' *gold* entity strings stand in for the predicted entities that the
grounding stage would pass (so the entity term sees perfect mentions, never their types).

Variants (weights are ``(w_text, w_image, w_entity)``):

- ``multimodal``: the default selector, (0.4, 0.2, 0.6), image tower ``mobilenetv2-minilm`` (packaged ImageNet
  MobileNetV2 pooled features, offline), text encoder ``minilm``;
- ``multimodal_w_image_0``: (0.4, 0, 0.6), text + entity only: the same score as ``multimodal`` less the image term;
- ``multimodal_w_image_0.6``: (0.4, 0.6, 0.6);
- ``image_only``: (0, 1, 0): the pooled image cosine alone (the 5 captions of a pool photo tie; ties go to the lower
  pool index, so this picks the first ``k`` captions of the nearest photo);
- ``text``: ``mode=text``, caption cosine only;
- ``random``: ``mode=random``, seeded per query.

Metrics, per query, over its ``k`` demonstrations (a post's *types* = the set of its phrase types):

- ``jaccard``: mean Jaccard between the query's types and each demonstration's types;
- ``rare_share``: share of demonstrations whose types include at least one of the query's less common types (all
  types but people, other, scene, notvisual); only queries that have such a type;
- ``hit_<type>``: per type, share of the queries with that type whose demonstrations include it at least once;
- ``any_share``: share of demonstrations sharing at least one type with the query.

95% percentile bootstrap intervals over queries (seeded resamples), and paired differences between variants on
the same resampled queries. Queries come in groups of 5 captions of one photo, so the script also gives the paired
differences with photos as the resampled unit (the more careful of the two).

Usage (CPU; the pool index is saved under /tmp with a fingerprint and rebuilt unless ``--reuse-index``)::

    refineg convert --format flickr30k-entities --input /work/shared/data/flickr30k-entities \\
        --out /tmp/f30k/all.jsonl
    HF_HUB_OFFLINE=1 python bench/context_selection_flickr.py /tmp/f30k/all.jsonl \\
        /work/shared/data/flickr30k-entities/images --out docs/context_selection_flickr.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import sys
import time
from pathlib import Path

import torch

from refineg.data import Example, read_jsonl
from refineg.stages.grounding.config import SelectorConfig
from refineg.stages.grounding.encoders import ImageEncoder, TextEncoder
from refineg.stages.grounding.images import PostImages
from refineg.stages.grounding.region_fit import split_by_image
from refineg.stages.grounding.selector import ContextSelector

COMMON_TYPES = frozenset({"people", "other", "scene", "notvisual"})
HIT_TYPES = ("animals", "vehicles", "clothing", "bodyparts", "instruments")
# name -> (mode, w_text, w_image, w_entity); the selector's default weights are (0.4, 0.2, 0.6)
VARIANTS = {
    "multimodal": ("multimodal", 0.4, 0.2, 0.6),
    "multimodal_w_image_0": ("multimodal", 0.4, 0.0, 0.6),
    "multimodal_w_image_0.6": ("multimodal", 0.4, 0.6, 0.6),
    "image_only": ("multimodal", 0.0, 1.0, 0.0),
    "text": ("text", 0.4, 0.2, 0.6),
    "random": ("random", 0.4, 0.2, 0.6),
}
PAIRS = [
    ("multimodal", "text"),
    ("multimodal", "random"),
    ("text", "random"),
    ("multimodal", "multimodal_w_image_0"),
    ("multimodal_w_image_0.6", "multimodal_w_image_0"),
    ("image_only", "random"),
    ("multimodal_w_image_0", "text"),
]


def types_of(post: Example) -> frozenset[str]:
    return frozenset(e.type for e in post.entities)


def per_query(queries: list[Example], pool_types: list[frozenset[str]], demos: list[list[int]]) -> dict:
    """Per-query values of every metric (``None`` where the query does not count for that metric)."""
    out: dict[str, list] = {"jaccard": [], "rare_share": [], "any_share": []}
    out.update({f"hit_{t}": [] for t in HIT_TYPES})
    for q, d in zip(queries, demos, strict=True):
        qt = types_of(q)
        dts = [pool_types[i] for i in d]
        if not qt or not dts:
            for key in out:
                out[key].append(None)
            continue
        out["jaccard"].append(sum(len(qt & t) / len(qt | t) for t in dts) / len(dts))
        out["any_share"].append(sum(bool(qt & t) for t in dts) / len(dts))
        rare = qt - COMMON_TYPES
        out["rare_share"].append(sum(bool(rare & t) for t in dts) / len(dts) if rare else None)
        for t in HIT_TYPES:
            out[f"hit_{t}"].append(float(any(t in x for x in dts)) if t in qt else None)
    return out


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def bootstrap_ci(draws: list[float]) -> list[float]:
    s = sorted(draws)
    return [s[int(0.025 * (len(s) - 1))], s[int(0.975 * (len(s) - 1))]]


def resamples(n_units: int, n_boot: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(n_units) for _ in range(n_units)] for _ in range(n_boot)]


def summarise(values: list, draws: list[list[int]]) -> dict:
    """Mean over the queries that count, with its percentile interval over query resamples."""
    kept = [v for v in values if v is not None]
    if not kept:
        return {"n": 0, "mean": None, "ci95": None}
    boot = []
    for idx in draws:
        xs = [values[i] for i in idx if values[i] is not None]
        if xs:
            boot.append(mean(xs))
    return {"n": len(kept), "mean": mean(kept), "ci95": bootstrap_ci(boot)}


def paired(a: list, b: list, draws: list[list[list[int]]]) -> dict:
    """Mean of ``a - b`` over the queries that count for both; ``draws`` are lists of query-index groups."""
    diffs = [x - y if x is not None and y is not None else None for x, y in zip(a, b, strict=True)]
    kept = [d for d in diffs if d is not None]
    boot = []
    for groups in draws:
        xs = [diffs[i] for g in groups for i in g if diffs[i] is not None]
        if xs:
            boot.append(mean(xs))
    if not boot:
        return {"n": len(kept), "mean": None, "ci95": None, "excludes_0": None}
    ci = bootstrap_ci(boot)
    return {"n": len(kept), "mean": mean(kept), "ci95": ci, "excludes_0": ci[0] > 0 or ci[1] < 0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", help="canonical JSONL of all Flickr30k Entities captions")
    ap.add_argument("images", help="the photo folder (post image = <id>.jpg)")
    ap.add_argument("--out", default=None, help="JSON result file")
    ap.add_argument(
        "--index",
        default="/tmp/context_selection_flickr/index.pt",
        help="pool index path (text-only variants add -text / -noimage before the suffix)",
    )
    ap.add_argument("--reuse-index", action="store_true", help="keep a saved index (default: rebuild, for timing)")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--dev-fraction", type=float, default=0.2)
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0, help="random-mode and bootstrap seed")
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64, help="queries per select call")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    start, load_before = time.perf_counter(), os.getloadavg()

    posts = read_jsonl(args.data)
    pool, queries = split_by_image(posts, args.dev_fraction, args.split_seed)
    assert not {p.image for p in pool} & {q.image for q in queries}, "a photo is on both sides"
    images = PostImages(args.images)
    base = SelectorConfig()
    t0 = time.perf_counter()
    text_enc = TextEncoder(base.text_encoder, base.text_max_length, base.batch_size, base.device)
    image_enc = ImageEncoder(base.image_model, base.image_pretrained, base.batch_size, base.device)
    load_s = time.perf_counter() - t0

    index = Path(args.index)
    # The index fingerprint covers the mode and which pool images are used, so one file per kind of index:
    # the image variants share the first, mode=text and w_image=0 each need their own (text re-encoded).
    index_files = {
        "image": index,
        "text": index.with_name(index.stem + "-text" + index.suffix),
        "noimage": index.with_name(index.stem + "-noimage" + index.suffix),
    }
    if not args.reuse_index:
        for path in index_files.values():
            path.unlink(missing_ok=True)

    pool_types = [types_of(p) for p in pool]
    q_images = [images.load(q) for q in queries]
    n_missing = sum(im is None for im in q_images) + sum(not images.exists(p) for p in pool)
    results, timings, labels, demos_of = {}, {}, {}, {}
    for name, (mode, wt, wi, we) in VARIANTS.items():
        cfg = SelectorConfig(mode=mode, k=args.k, w_text=wt, w_image=wi, w_entity=we, seed=args.seed)
        kind = "text" if mode == "text" else "image" if wi > 0 else "noimage"
        use_images = mode == "multimodal" and wi > 0
        # encoders only where the variant uses them (ContextSelector.label names every encoder it is given)
        sel = ContextSelector(
            pool,
            cfg,
            images,
            index_files[kind] if mode != "random" else None,
            text_encoder=text_enc if mode != "random" else None,
            image_encoder=image_enc if use_images else None,
        )
        t1, c1 = time.perf_counter(), time.process_time()
        reused = None
        if mode != "random":
            reused = index_files[kind].is_file()
            sel.build_index()
        t2, c2 = time.perf_counter(), time.process_time()
        demos: list[list[int]] = []
        for lo in range(0, len(queries), args.batch):
            demos += sel.select(queries[lo : lo + args.batch], q_images[lo : lo + args.batch] if use_images else None)
        t3, c3 = time.perf_counter(), time.process_time()
        assert all(len(d) == args.k for d in demos)
        timings[name] = {
            "index_s": round(t2 - t1, 2),
            "index_cpu_s": round(c2 - c1, 2),
            "index_file": str(index_files[kind]) if reused is not None else None,
            "index_loaded_from_file": reused,
            "select_s": round(t3 - t2, 2),
            "select_cpu_s": round(c3 - c2, 2),
        }
        labels[name] = sel.label
        demos_of[name] = demos
        results[name] = per_query(queries, pool_types, demos)
        print(
            f"{name}: index {t2 - t1:.1f}s ({'loaded' if reused else 'built' if reused is not None else '-'}), "
            f"select {t3 - t2:.1f}s",
            file=sys.stderr,
            flush=True,
        )

    draws = resamples(len(queries), args.boot, args.seed)
    photo_of = sorted({q.image for q in queries})
    groups = [[i for i, q in enumerate(queries) if q.image == ph] for ph in photo_of]
    photo_draws = [[groups[g] for g in idx] for idx in resamples(len(groups), args.boot, args.seed + 1)]
    query_draws = [[[i] for i in idx] for idx in draws]
    metrics = {}
    for name, vals in results.items():
        metrics[name] = {key: summarise(v, draws) for key, v in vals.items()}
    diffs = {}
    for a, b in PAIRS:
        diffs[f"{a} - {b}"] = {
            key: {
                "by_query": paired(results[a][key], results[b][key], query_draws),
                "by_photo": paired(results[a][key], results[b][key], photo_draws),
            }
            for key in ("jaccard", "rare_share", "any_share", *(f"hit_{t}" for t in HIT_TYPES))
        }
    same_photo = {
        name: mean([float(len({pool[i].image for i in d}) == 1) for d in dm]) for name, dm in demos_of.items()
    }
    overlap = {
        name: mean([len(set(d) & set(t)) / args.k for d, t in zip(dm, demos_of["multimodal"], strict=True)])
        for name, dm in demos_of.items()
    }

    argv = ["python", *sys.argv]
    report = {
        "what": "Share of phrase types between a query caption and its selected demonstrations, Flickr30k Entities "
        "dev captions as queries, train captions as pool (split by photo, no photo on both sides); queries "
        "use their gold entity strings as the predicted entities.",
        "command": "HF_HUB_OFFLINE=1 " + shlex.join(argv),
        "python": sys.executable,
        "data": {
            "file": args.data,
            "posts": len(posts),
            "pool_posts": len(pool),
            "pool_photos": len({p.image for p in pool}),
            "queries": len(queries),
            "query_photos": len(groups),
            "missing_images": n_missing,
            "split": f"split_by_image(posts, {args.dev_fraction}, {args.split_seed})",
        },
        "k": args.k,
        "common_types": sorted(COMMON_TYPES),
        "bootstrap": {
            "resamples": args.boot,
            "seed": args.seed,
            "interval": "95% percentile",
            "units": "queries (metrics and by_query differences); photos (by_photo differences)",
        },
        "variants": {
            name: {"mode": m, "w_text": wt, "w_image": wi, "w_entity": we, "label": labels[name]}
            for name, (m, wt, wi, we) in VARIANTS.items()
        },
        "metrics": metrics,
        "paired_differences": diffs,
        "demos_all_from_one_photo": same_photo,
        "overlap_with_multimodal_demos": overlap,
        "timing": {
            "machine": platform.processor() or platform.machine(),
            "torch_threads": args.threads,
            "cpus": os.cpu_count(),
            "load_average_1_5_15_min": {
                "start": [round(x, 2) for x in load_before],
                "end": [round(x, 2) for x in os.getloadavg()],
            },
            "encoder_load_s": round(load_s, 2),
            "per_variant": timings,
            "total_s": round(time.perf_counter() - start, 1),
            "note": "CPU shared with other work: *_s are wall seconds, *_cpu_s this process's CPU seconds (all "
            "threads); select_s includes encoding the query captions, their "
            "entity strings and (image variants) the 800 query photos; the image index encodes one "
            "image per pool caption (3,200 encodings of 640 photos), see docs/results.md",
        },
    }
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(
        f"{'variant':24s} {'jaccard':>22s} {'rare_share':>22s} {'any_share':>8s} "
        + " ".join(f"{t[:6]:>6s}" for t in HIT_TYPES)
    )
    for name, m in metrics.items():
        cell = lambda s: f"{s['mean']:.3f} [{s['ci95'][0]:.3f},{s['ci95'][1]:.3f}]"  # noqa: E731
        print(
            f"{name:24s} {cell(m['jaccard']):>22s} {cell(m['rare_share']):>22s} {m['any_share']['mean']:8.3f} "
            + " ".join(f"{m[f'hit_{t}']['mean']:6.3f}" for t in HIT_TYPES)
        )
    for pair, d in diffs.items():
        print(
            pair,
            {
                k: (
                    round(v["by_query"]["mean"], 4),
                    [round(x, 4) for x in v["by_query"]["ci95"]],
                    [round(x, 4) for x in v["by_photo"]["ci95"]],
                )
                for k, v in d.items()
            },
        )


if __name__ == "__main__":
    main()
