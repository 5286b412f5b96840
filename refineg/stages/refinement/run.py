"""The refinement stage: keep confident entities, send the others to the MLLM, merge its answers (mode ``gated``).

``run_refine`` runs the mode named by ``cfg.mode`` (:mod:`.modes`; ``release`` is in :mod:`.release`).
"""

from __future__ import annotations

import copy
import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg.data import DataFormatError, Entity, Example, read_jsonl, write_jsonl
from refineg.data.files import inside_folder

from .base import Query, RefinementBackend, create_refinement_backend
from .config import RefineConfig
from .delegation import select_delegated
from .merge import merge_span, merge_type
from .modes import REFINEMENT_MODES

logger = logging.getLogger(__name__)


def _image(post: Example, images_dir: str | None) -> Path | None:
    if not images_dir or not post.image:
        return None
    path = inside_folder(images_dir, post.image, "image", record=post.id)
    return path if path.is_file() else None


@REFINEMENT_MODES.register("gated")
def refine_examples(
    preds: Sequence[Example], cfg: RefineConfig, backend: RefinementBackend, types: list[str] | None = None
) -> tuple[list[Example], dict[str, Any]]:
    """Refines predicted posts (returns copies; the input is not changed).

    Args:
        preds: Predicted posts whose entities carry ``uncertainty``.
        cfg: The refinement settings.
        backend: Who answers the checks.
        types: Entity type inventory (default ``cfg.types``).

    Returns:
        The refined posts (each with ``meta["refinement"]`` and ``meta["refinement_backend"]``) and a report with
        the delegation counts and every outcome count.
    """
    cfg.validate()
    types = list(types or cfg.types)
    delegated, sel_counts = select_delegated(preds, cfg)
    posts = [copy.deepcopy(p) for p in preds]
    work: list[list[Entity | None]] = [list(p.entities) for p in posts]
    logs: list[list[dict[str, Any]]] = [[] for _ in posts]
    entry: dict[tuple[int, int], dict[str, Any]] = {}
    for d in delegated:
        ent = work[d.post][d.entity]
        entry[(d.post, d.entity)] = {
            "start": ent.start,
            "end": ent.end,
            "type": ent.type,
            "uncertainty": d.uncertainty,
            "checks": list(d.checks),
            "outcomes": [],
        }
        logs[d.post].append(entry[(d.post, d.entity)])
    candidates: list[tuple[int, int]] = []
    if cfg.missed:
        for i, p in enumerate(posts):
            for c in p.meta.get("missed_candidates") or []:
                if c["type"] not in types:
                    continue
                work[i].append(Entity(int(c["start"]), int(c["end"]), c["type"], score=c.get("score")))
                j = len(work[i]) - 1
                candidates.append((i, j))
                entry[(i, j)] = {
                    "start": c["start"],
                    "end": c["end"],
                    "type": c["type"],
                    "missed_candidate": True,
                    "checks": ["span"] + (["type"] if "type" in cfg.checks else []),
                    "outcomes": [],
                }
                logs[i].append(entry[(i, j)])
    counts: Counter[str] = Counter()

    # 1. span checks (delegated entities that need one, then missed-entity candidates)
    span_jobs = [(d.post, d.entity) for d in delegated if "span" in d.checks] + candidates
    queries = [Query(posts[i], copy.deepcopy(work[i][j]), _image(posts[i], cfg.images_dir)) for i, j in span_jobs]
    for (i, j), answer in zip(span_jobs, backend.span_check(queries, types)):
        outcome = merge_span(
            work[i], j, posts[i].tokens, answer, cfg.max_boundary_change, cfg.allow_drop or (i, j) in candidates
        )
        entry[(i, j)]["outcomes"].append(outcome)
        counts[f"{'missed' if (i, j) in candidates else 'span'}/{outcome}"] += 1
    confirmed = set()
    for i, j in candidates:
        if entry[(i, j)]["outcomes"][-1] in ("kept", "corrected"):
            confirmed.add((i, j))
        elif work[i][j] is not None:
            work[i][j] = None  # not confirmed: a candidate is only added when the MLLM confirms it

    # 2. type-and-box checks of what is left
    type_jobs = [(d.post, d.entity) for d in delegated if "type" in d.checks and work[d.post][d.entity] is not None]
    type_jobs += [c for c in candidates if c in confirmed and "type" in cfg.checks]
    images = [_image(posts[i], cfg.images_dir) for i, _ in type_jobs]
    queries = [Query(posts[i], copy.deepcopy(work[i][j]), img) for (i, j), img in zip(type_jobs, images)]
    for (i, j), img, answer in zip(type_jobs, images, backend.type_check(queries, types)):
        ent = work[i][j]
        assert ent is not None
        for outcome in merge_type(ent, answer, types, cfg.use_boxes, img is not None, posts[i].image_size):
            entry[(i, j)]["outcomes"].append(outcome)
            counts[f"type/{outcome}"] += 1

    for i, post in enumerate(posts):
        post.entities = sorted((e for e in work[i] if e is not None), key=lambda e: e.start)
        post.meta["refinement_backend"] = backend.label
        post.meta["refinement"] = {"backend": backend.label, "simulated": backend.simulated, "checked": logs[i]}
    n_failed = sum(v for k, v in counts.items() if k.endswith("/failed") or k.endswith("/budget_exhausted"))
    report = {
        "backend": backend.label,
        "simulated": backend.simulated,
        "entities": sel_counts["entities"],
        "delegated": len(delegated),
        "delegation_rate": len(delegated) / sel_counts["entities"] if sel_counts["entities"] else 0.0,
        "selected_before_budget": sel_counts["selected"],
        "over_budget": sel_counts["over_budget"],
        "missed_candidates": len(candidates),
        "missed_added": len(confirmed),
        "backend_failures_kept_small_model": n_failed,
        "outcomes": dict(sorted(counts.items())),
    }
    if n_failed:
        logger.warning(
            "refinement: %d check(s) got no usable backend answer; the small model's answer was kept", n_failed
        )
    return posts, report


def with_uncertainty(preds: Sequence[Example], cfg: RefineConfig) -> list[Example]:
    """Re-tags the posts of ``preds`` with ``cfg.ckpt`` and scores them with ``cfg.head`` (when set)."""
    if cfg.head is None:
        return list(preds)
    if cfg.ckpt is None:
        raise ValueError("head= needs ckpt=<tagger checkpoint> to compute uncertainties")
    from refineg.inference.uncertainty import MissedEntityDetector, UncertaintyEstimator

    missed = MissedEntityDetector(cfg.missed_threshold) if cfg.missed else None
    est = UncertaintyEstimator.from_checkpoint(cfg.ckpt, cfg.head, dict(cfg.head_kwargs), cfg.temperature, missed)
    scored = est.predict(preds)
    changed = sum(
        1
        for a, b in zip(preds, scored)
        if [(e.start, e.end, e.type) for e in a.entities] != [(e.start, e.end, e.type) for e in b.entities]
    )
    if changed:
        logger.warning(
            "%d post(s) of the prediction file differ from %s's predictions; using the checkpoint's", changed, cfg.ckpt
        )
    return scored


def run_refine(
    cfg: RefineConfig, pred_path: str | Path, out_path: str | Path, types: list[str] | None = None
) -> dict[str, Any]:
    """``refineg refine``: reads predictions, refines them, writes ``out_path`` and ``<out>.report.json``.

    Raises:
        DataFormatError: Without ``head=``, an entity of ``pred_path`` that has no ``uncertainty``; an image name
            that would leave ``images_dir`` (both named by post, before any call).
    """
    out_path = Path(out_path)
    preds = read_jsonl(pred_path)
    for post in preds if cfg.images_dir else ():
        if post.image:
            inside_folder(cfg.images_dir, post.image, "image", source=pred_path, record=post.id)
    if cfg.head is None and cfg.mode == "gated":
        post = next((p for p in preds if any(e.uncertainty is None for e in p.entities)), None)
        if post is not None:
            ent = next(e for e in post.entities if e.uncertainty is None)
            raise DataFormatError(
                pred_path,
                f"entity {ent.text(post.tokens)!r} has no uncertainty; compute one with "
                "ckpt=<tagger checkpoint> head=<name>",
                record=post.id,
            )
    preds = with_uncertainty(preds, cfg)
    if types is None and cfg.ckpt:
        import torch

        types = list(torch.load(cfg.ckpt, map_location="cpu", weights_only=False)["hyper_parameters"]["types"])
    backend = create_refinement_backend(cfg, run_dir=cfg.run_dir or out_path.parent)
    try:
        refined, report = REFINEMENT_MODES.get(cfg.mode)(preds, cfg, backend, types)
        report["usage"] = backend.usage()
    finally:
        backend.close()
    report["config"] = {k: v for k, v in vars(cfg).items() if k != "llm"} | {"llm": vars(cfg.llm)}
    write_jsonl(refined, out_path)
    out_path.with_suffix(".report.json").write_text(json.dumps(report, indent=2, default=str))
    return report
