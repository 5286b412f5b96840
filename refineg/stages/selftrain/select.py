"""Which pseudo-labels a self-training round keeps: entity-level or post-level selection by uncertainty.

A pool post predicted by the teacher carries entities with an ``uncertainty`` (from the chosen head). An entity is
*confident* when ``uncertainty <= tau`` (or when a refinement backend checked it, ``meta["verified"]``).

- ``selection="post"``: a post is kept only when all its entities are confident.
- ``selection="entity"``: confident entities are kept; a post with uncertain entities is handled by ``uncertain``:
  ``mask`` keeps the post and leaves the uncertain entities' words unlabelled (no loss there: the CRF sums over
  every labelling of them), ``drop_entity`` keeps the post with those words labelled ``O``, ``drop_post`` drops it.
- ``outside_min``: the other words count as ``O`` only where the teacher's ``P(O) >= outside_min``; the rest are
  unlabelled too, so that entities the teacher missed (or half-saw) do not train as ``O``.

Kept posts are canonical posts whose ``meta["pseudo"]`` the training data module reads
(:func:`refineg.datamodules.gmner.apply_pseudo_labels`): ``unlabeled`` spans and, with soft targets, the teacher's
per-word label distribution ``word_targets`` over ``labels``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from refineg.data import Entity, Example

SELECTIONS = ("entity", "post")
UNCERTAIN_POLICIES = ("mask", "drop_entity", "drop_post")


def is_confident(ent: Entity, tau: float) -> bool:
    """Whether an entity counts as confident (``uncertainty <= tau``; a missing uncertainty is not confident)."""
    return ent.uncertainty is not None and ent.uncertainty <= tau


def select_pseudo_labels(
    preds: Sequence[Example],
    tau: float,
    selection: str = "entity",
    uncertain: str = "mask",
    empty_posts: bool = True,
    marginals: Sequence[list[list[float]] | None] | None = None,
    labels: Sequence[str] | None = None,
    round_index: int = 0,
    soft: bool | None = None,
    outside_min: float | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """Pseudo-labelled training posts from the teacher's scored predictions.

    Args:
        preds: Predicted pool posts whose entities carry ``uncertainty``; ``meta["verified"]`` (entity indices)
            marks entities a refinement backend confirmed.
        tau: Confidence threshold on the uncertainty.
        selection: ``entity`` or ``post`` (module docstring).
        uncertain: Policy for posts with uncertain entities under entity selection: ``mask``, ``drop_entity``,
            ``drop_post``.
        empty_posts: Keep posts in which the teacher found no entity (every word ``O``).
        marginals: Per post, the teacher's label distribution per word (needed by ``soft`` and ``outside_min``).
        labels: The label inventory of ``marginals`` (``labels[0]`` is ``O``).
        round_index: Recorded in ``meta["pseudo"]["round"]``.
        soft: Write ``marginals`` as soft targets (default: whenever ``marginals`` is given).
        outside_min: Least teacher ``P(O)`` of a word outside the entities for it to count as ``O`` (module
            docstring); ``None``: every such word is ``O``.

    Returns:
        The kept posts (entities = the confident ones) and counts: ``pool_posts``, ``posts``, ``entities``
        (kept), ``predicted_entities``, ``uncertain_entities``, ``masked_entities``, ``dropped_entities``,
        ``dropped_posts``, ``empty_posts`` (kept without entities), ``dropped_empty_posts``, ``unsure_outside_words``
        (left unlabelled by ``outside_min``).

    Raises:
        ValueError: Unknown ``selection``/``uncertain``, ``marginals`` without ``labels``, or ``soft``/``outside_min``
            without ``marginals``.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selftrain.selection must be one of {SELECTIONS}, got {selection!r}")
    if uncertain not in UNCERTAIN_POLICIES:
        raise ValueError(f"selftrain.uncertain must be one of {UNCERTAIN_POLICIES}, got {uncertain!r}")
    if marginals is not None and labels is None:
        raise ValueError("soft targets need the label inventory")
    soft = marginals is not None if soft is None else soft
    if (soft or outside_min is not None) and marginals is None:
        raise ValueError("soft targets and outside_min need the teacher's marginals")
    counts: Counter[str] = Counter(pool_posts=len(preds))
    out = []
    for i, pred in enumerate(preds):
        verified = set(pred.meta.get("verified") or [])
        confident = [e for j, e in enumerate(pred.entities) if j in verified or is_confident(e, tau)]
        doubtful = [e for j, e in enumerate(pred.entities) if not (j in verified or is_confident(e, tau))]
        counts["predicted_entities"] += len(pred.entities)
        counts["uncertain_entities"] += len(doubtful)
        if not pred.entities and not empty_posts:
            counts["dropped_empty_posts"] += 1
            continue
        if doubtful and (selection == "post" or uncertain == "drop_post"):
            counts["dropped_posts"] += 1
            continue
        info: dict[str, Any] = {"round": round_index}
        unlabeled = []
        if doubtful and uncertain == "mask":
            unlabeled = [[e.start, e.end] for e in doubtful]
            counts["masked_entities"] += len(doubtful)
        elif doubtful:
            counts["dropped_entities"] += len(doubtful)
        if outside_min is not None:
            covered = {w for e in pred.entities for w in range(e.start, e.end)}
            unsure = [w for w, r in enumerate(marginals[i]) if w not in covered and r[0] < outside_min]
            counts["unsure_outside_words"] += len(unsure)
            unlabeled += [[w, w + 1] for w in unsure]
        if unlabeled:
            info["unlabeled"] = sorted(unlabeled)
        if soft:
            rows = [list(r) for r in marginals[i]]
            if doubtful and uncertain == "drop_entity":
                outside = [1.0] + [0.0] * (len(labels) - 1)
                for e in doubtful:
                    rows[e.start : e.end] = [list(outside) for _ in range(e.start, e.end)]
            info["word_targets"] = [[round(float(v), 4) for v in r] for r in rows]
            info["labels"] = list(labels)
        post = Example(pred.id, list(pred.tokens), pred.image, list(confident), "predicted", pred.image_size)
        post.meta["pseudo"] = info
        counts["posts"] += 1
        counts["entities"] += len(confident)
        counts["empty_posts"] += not pred.entities
        out.append(post)
    return out, dict(counts)


def pseudo_label_quality(
    preds: Sequence[Example], kept: Sequence[Example], hidden: dict[str, Example], tau: float
) -> dict[str, Any]:
    """Pseudo-labels against the hidden gold labels of a pool taken from the training split.

    Returns:
        ``precision_kept`` (kept entities that are gold, span and type), ``recall_kept_posts`` (gold entities of
        the kept posts that were kept: the rest train as ``O`` or unlabelled), ``precision_all`` (every predicted
        entity), ``precision_confident`` and ``precision_uncertain`` (by ``tau``), with the counts behind them.
    """

    def gold_set(post_id: str) -> set[tuple[int, int, str]]:
        return {(e.start, e.end, e.type) for e in hidden[post_id].entities}

    def tally(pairs: list[tuple[str, Entity]]) -> tuple[int, int]:
        return sum((e.start, e.end, e.type) in gold_set(pid) for pid, e in pairs), len(pairs)

    every = [(p.id, e) for p in preds for e in p.entities]
    verified = {(p.id, j) for p in preds for j in p.meta.get("verified") or []}
    conf = [(p.id, e) for p in preds for j, e in enumerate(p.entities) if (p.id, j) in verified or is_confident(e, tau)]
    conf_ids = {(pid, id(e)) for pid, e in conf}
    doubt = [(pid, e) for pid, e in every if (pid, id(e)) not in conf_ids]
    kept_pairs = [(p.id, e) for p in kept for e in p.entities]
    out: dict[str, Any] = {}
    for name, pairs in (("all", every), ("confident", conf), ("uncertain", doubt), ("kept", kept_pairs)):
        tp, n = tally(pairs)
        out[f"precision_{name}"] = tp / n if n else None
        out[f"correct_{name}"], out[f"n_{name}"] = tp, n
    gold_in_kept = sum(len(hidden[p.id].entities) for p in kept)
    out["gold_entities_kept_posts"] = gold_in_kept
    out["recall_kept_posts"] = out["correct_kept"] / gold_in_kept if gold_in_kept else None
    return out
