"""Which predicted entities go to the MLLM: threshold ``tau``, a target delegation rate, or a call budget."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from refineg.data import Example

from .config import RefineConfig


@dataclass
class Delegation:
    """One delegated entity.

    Attributes:
        post: Index of the post in the prediction list.
        entity: Index of the entity in the post.
        uncertainty: Its total uncertainty.
        checks: The checks it gets (``span``, ``type``), in that order.
    """

    post: int
    entity: int
    uncertainty: float
    checks: tuple[str, ...]


def entity_fields(post: Example, j: int) -> dict[str, float]:
    """Per-field uncertainties of entity ``j`` from ``meta["uncertainty"]["fields"]`` (empty when absent)."""
    fields = (post.meta.get("uncertainty") or {}).get("fields")
    if not fields or len(fields) != len(post.entities):
        return {}
    return dict(fields[j])


def select_delegated(preds: Sequence[Example], cfg: RefineConfig) -> tuple[list[Delegation], dict[str, int]]:
    """Chooses the delegated entities, most uncertain first.

    - ``delegation_rate`` set: the ``round(rate * n)`` most uncertain of the ``n`` predicted entities (ties keep
      file order);
    - otherwise every entity with ``u > tau``; with ``per_field`` each check only where its field's ``u > tau``;
    - ``random_delegation``: as many entities as the rule above picks, drawn at random (``seed``), the baseline;
    - ``call_budget``: entities are served most uncertain first while their checks fit in the budget; the rest
      are kept (``over_budget``).

    Returns:
        The delegations (most uncertain first) and counts ``entities``, ``selected``, ``over_budget``.

    Raises:
        ValueError: An entity without ``uncertainty``, or ``per_field`` without per-field values.
    """
    items = []
    for i, post in enumerate(preds):
        for j, ent in enumerate(post.entities):
            if ent.uncertainty is None:
                raise ValueError(
                    f"post {post.id}: entity {ent.text(post.tokens)!r} has no uncertainty; "
                    "compute one with ckpt=<checkpoint> head=<name>"
                )
            items.append((i, j, float(ent.uncertainty)))
    n = len(items)
    ranked = sorted(items, key=lambda x: -x[2])  # stable: ties keep file order
    base_checks = tuple(c for c in ("span", "type") if c in cfg.checks)
    if cfg.delegation_rate is not None:
        chosen = [(i, j, u, base_checks) for i, j, u in ranked[: int(round(cfg.delegation_rate * n))]]
    elif cfg.per_field:
        chosen = []
        for i, j, u in ranked:
            fields = entity_fields(preds[i], j)
            missing = [c for c in base_checks if c not in fields]
            if missing:
                raise ValueError(f"per_field needs per-field uncertainties ({missing} missing in post {preds[i].id})")
            checks = tuple(c for c in base_checks if fields[c] > cfg.tau)
            if checks:
                chosen.append((i, j, u, checks))
    else:
        chosen = [(i, j, u, base_checks) for i, j, u in ranked if u > cfg.tau]
    if cfg.random_delegation:
        picked = random.Random(cfg.seed).sample(range(n), len(chosen))
        chosen = sorted(((*items[k], base_checks) for k in picked), key=lambda x: -x[2])
    out, spent, over = [], 0, 0
    for i, j, u, checks in chosen:
        if cfg.call_budget is not None and spent + len(checks) > cfg.call_budget:
            over += 1
            continue
        spent += len(checks)
        out.append(Delegation(i, j, u, checks))
    return out, {"entities": n, "selected": len(chosen), "over_budget": over}
