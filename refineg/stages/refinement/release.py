"""Refinement mode ``release``: what ReFineG's released scripts do instead of the uncertainty gate.

Every post with at least one predicted entity goes to the MLLM with the grounding prompt (``release_prompts_dir``,
by default ``configs/prompts/grounding``: the post's image, text and predicted entities, no demonstrations), and
the entity list it answers, ``[{"entity", "entity_type", "bounding_box"}]``, REPLACES the tagger's entities of that
post. Each answered entity is placed on the post's own words (case and spaces ignored; where the string occurs more
than once, the occurrence the tagger predicted with the same type wins, then one it predicted with any type, then
the first free one); answered strings that are not in
the post, types outside the inventory and entities overlapping an already placed one are left out and counted.
One box per entity is kept (mapped back to original pixels). Where the request fails or the answer is unusable, the
tagger's entities stay (counted as ``failed``); posts without predicted entities are not sent.
"""

from __future__ import annotations

import copy
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any

from refineg.data import Entity, Example
from refineg.data.spans import find_spans

from .base import PostQuery, RefinementBackend
from .config import RefineConfig
from .modes import REFINEMENT_MODES

logger = logging.getLogger(__name__)


def replace_entities(
    post: Example, items: Sequence[dict[str, Any]], types: Sequence[str], use_boxes: bool = True
) -> tuple[list[Entity], Counter[str]]:
    """The post's new entity list from an answered list (see the module docstring).

    Args:
        post: The post with the tagger's entities.
        items: ``{"entity", "entity_type", "bounding_box"}`` per answered entity; ``bounding_box`` is a list of
            boxes in original pixels.
        types: The entity type inventory.
        use_boxes: Take the answer's boxes; otherwise an entity keeps the tagger's boxes of the same span.

    Returns:
        The entities (sorted by start) and outcome counts: ``same`` (span and type the tagger's), ``retyped`` (the
        tagger's span, another type), ``new_span``, ``removed`` (tagger entities not in the answer),
        ``rejected_not_in_post``, ``rejected_type``, ``rejected_overlap``.
    """
    counts: Counter[str] = Counter()
    tagger = {(e.start, e.end): e for e in post.entities}
    placed: list[Entity] = []
    taken = [False] * len(post.tokens)
    for item in items:
        etype = item.get("entity_type")
        if etype not in types:
            counts["rejected_type"] += 1
            continue
        spans = find_spans(post.tokens, str(item.get("entity", "")))
        if not spans:
            counts["rejected_not_in_post"] += 1
            continue
        free = [sp for sp in spans if not any(taken[sp[0] : sp[1]])]
        if not free:
            counts["rejected_overlap"] += 1
            continue
        same_type = [sp for sp in free if sp in tagger and tagger[sp].type == etype]
        start, end = next(iter(same_type), next((sp for sp in free if sp in tagger), free[0]))
        old = tagger.get((start, end))
        boxes = [list(b) for b in item.get("bounding_box") or []] if use_boxes else (list(old.boxes) if old else [])
        placed.append(Entity(start, end, etype, boxes=boxes))
        taken[start:end] = [True] * (end - start)
        counts["new_span" if old is None else "same" if old.type == etype else "retyped"] += 1
    kept = {(e.start, e.end) for e in placed}
    counts["removed"] += sum(1 for span in tagger if span not in kept)
    return sorted(placed, key=lambda e: e.start), counts


@REFINEMENT_MODES.register("release")
def refine_release(
    preds: Sequence[Example], cfg: RefineConfig, backend: RefinementBackend, types: list[str] | None = None
) -> tuple[list[Example], dict[str, Any]]:
    """Sends every post with a predicted entity and replaces its entities by the answer (returns copies).

    Args:
        preds: Predicted posts (``uncertainty`` is not needed).
        cfg: The refinement settings (``images_dir``, ``use_boxes``, ``never_grounded``).
        backend: Who answers.
        types: Entity type inventory (default ``cfg.types``).

    Returns:
        The refined posts (each with ``meta["refinement"]``: ``mode``, ``sent``, ``outcome`` and the tagger's
        entities where they were replaced) and a report: posts sent, entities before and after, outcome counts.
    """
    from .run import _image  # the gated mode's image lookup (one rule for both modes)

    types = list(types or cfg.types)
    posts = [copy.deepcopy(p) for p in preds]
    sent = [i for i, p in enumerate(posts) if p.entities]
    queries = [PostQuery(posts[i], _image(posts[i], cfg.images_dir)) for i in sent]
    answers = backend.entity_list(queries, types, list(cfg.never_grounded)) if queries else []
    counts: Counter[str] = Counter()
    failed = 0
    info: dict[int, dict[str, Any]] = {}
    for i, answer in zip(sent, answers, strict=True):
        post = posts[i]
        tagger = [{"start": e.start, "end": e.end, "type": e.type} for e in post.entities]
        if not answer.ok or not isinstance(answer.parsed.get("entities"), list):
            failed += 1
            info[i] = {"sent": True, "outcome": answer.status if not answer.ok else "invalid", "error": answer.error}
            continue
        new, outcome = replace_entities(post, answer.parsed["entities"], types, cfg.use_boxes)
        counts.update(outcome)
        post.entities = new
        info[i] = {"sent": True, "outcome": "replaced", "tagger_entities": tagger, "counts": dict(outcome)}
    for i, post in enumerate(posts):
        post.meta["refinement_backend"] = backend.label
        post.meta["refinement"] = {
            "backend": backend.label,
            "simulated": backend.simulated,
            "mode": "release",
            **info.get(i, {"sent": False}),
        }
    n_before = sum(len(p.entities) for p in preds)
    delegated = sum(len(preds[i].entities) for i in sent)
    if failed:
        logger.warning("refinement (release): %d post(s) got no usable answer; the tagger's entities stay", failed)
    report = {
        "mode": "release",
        "backend": backend.label,
        "simulated": backend.simulated,
        "posts": len(posts),
        "posts_sent": len(sent),
        "posts_replaced": len(sent) - failed,
        "entities": n_before,
        "entities_after": sum(len(p.entities) for p in posts),
        "delegated": delegated,
        "delegation_rate": delegated / n_before if n_before else 0.0,
        "backend_failures_kept_small_model": failed,
        "outcomes": dict(sorted(counts.items())),
    }
    return posts, report
