"""GMNER, MNER and EEG micro precision/recall/F1 (plus per-type F1) as a torchmetrics ``Metric``.

Definitions (see ``docs/data-format.md``): a predicted entity is correct for

- **MNER** when span and type equal a gold entity's;
- **EEG** when span equals a gold entity's and its region is correct (type ignored);
- **GMNER** when span, type and region are all correct.

A region is correct when the gold entity has no box and the prediction has none, or when the prediction's first
box has IoU >= 0.5 with any gold box of that entity. With ``match="name"`` (the CCKS2025 scorer) entities are
matched by surface string + label instead of token span; each gold entity matches at most one prediction.
Counts are metric states summed over DDP ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torchmetrics import Metric

from refineg.data.schema import Box, Entity, Example

TASKS = ("gmner", "mner", "eeg")


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``[xmin, ymin, xmax, ymax]`` boxes (continuous pixel coordinates)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def region_correct(pred: Entity, gold: Entity, iou_threshold: float = 0.5) -> bool:
    """True when both have no box, or the prediction's first box overlaps any gold box with IoU >= threshold."""
    if not gold.boxes:
        return not pred.boxes
    return bool(pred.boxes) and any(box_iou(pred.boxes[0], g) >= iou_threshold for g in gold.boxes)


def _greedy_matches(n_pred: int, n_gold: int, same: Callable[[int, int], bool]) -> list[int]:
    """Indices of predictions matched one-to-one to golds by ``same(pred_index, gold_index)``, in prediction order."""
    used = [False] * n_gold
    hits = []
    for i in range(n_pred):
        for j in range(n_gold):
            if not used[j] and same(i, j):
                used[j] = True
                hits.append(i)
                break
    return hits


class GMNERMetrics(Metric):
    """Micro P/R/F1 for GMNER, MNER and EEG, and per-type F1 for GMNER and MNER.

    Args:
        types: Entity type inventory; predictions of other types count in the micro scores only.
        match: ``"span"`` (token span, Twitter-GMNER) or ``"name"`` (surface string + label, CCKS2025).
        iou_threshold: Minimum IoU for a correct box.

    Example:
        >>> m = GMNERMetrics(["PER", "LOC"])
        >>> m.update(preds=[...], golds=[...])  # lists of Example, aligned by position
        >>> m.compute()["gmner_f1"]
    """

    full_state_update = False

    def __init__(self, types: Sequence[str], match: str = "span", iou_threshold: float = 0.5, **kwargs) -> None:
        super().__init__(**kwargs)
        if match not in ("span", "name"):
            raise ValueError(f"match must be 'span' or 'name', got {match!r}")
        self.types = list(types)
        self.match = match
        self.iou_threshold = iou_threshold
        self._type_index = {t: i for i, t in enumerate(self.types)}
        n = len(self.types) + 1  # last row: types outside the inventory
        # counts[task, type, (tp, predicted, gold)]; EEG ignores types and uses row 0 only.
        self.add_state("counts", default=torch.zeros(len(TASKS), n, 3, dtype=torch.long), dist_reduce_fx="sum")

    def _row(self, etype: str) -> int:
        return self._type_index.get(etype, len(self.types))

    def _key(self, ent: Entity, ex: Example):
        return ent.span if self.match == "span" else ent.text(ex.tokens).strip()

    def update(self, preds: Sequence[Example], golds: Sequence[Example]) -> None:
        """Adds counts for aligned lists of predicted and gold posts.

        Raises:
            ValueError: Lists of different length, or a prediction whose id differs from its gold post's.
        """
        if len(preds) != len(golds):
            raise ValueError(f"{len(preds)} predicted posts vs {len(golds)} gold posts")
        counts = torch.zeros_like(self.counts, device="cpu")
        for pred_ex, gold_ex in zip(preds, golds):
            if pred_ex.id != gold_ex.id:
                raise ValueError(f"predicted post {pred_ex.id!r} is aligned with gold post {gold_ex.id!r}")
            self._count_post(pred_ex, gold_ex, counts)
        self.counts += counts.to(self.counts.device)

    def _count_post(self, pred_ex: Example, gold_ex: Example, counts: torch.Tensor) -> None:
        p_ents, g_ents = pred_ex.entities, gold_ex.entities
        p_keys = [self._key(e, pred_ex) for e in p_ents]
        g_keys = [self._key(e, gold_ex) for e in g_ents]
        key_eq = [[pk == gk for gk in g_keys] for pk in p_keys]
        type_eq = [[p.type == g.type for g in g_ents] for p in p_ents]
        region_ok = [[region_correct(p, g, self.iou_threshold) for g in g_ents] for p in p_ents]
        rules = {
            "gmner": lambda i, j: key_eq[i][j] and type_eq[i][j] and region_ok[i][j],
            "mner": lambda i, j: key_eq[i][j] and type_eq[i][j],
            "eeg": lambda i, j: key_eq[i][j] and region_ok[i][j],
        }
        for t, task in enumerate(TASKS):
            typed = task != "eeg"
            for e in p_ents:
                counts[t, self._row(e.type) if typed else 0, 1] += 1
            for e in g_ents:
                counts[t, self._row(e.type) if typed else 0, 2] += 1
            for i in _greedy_matches(len(p_ents), len(g_ents), rules[task]):
                counts[t, self._row(p_ents[i].type) if typed else 0, 0] += 1

    def compute(self) -> dict[str, torch.Tensor]:
        """Returns ``{task}_{precision,recall,f1}`` for each task and ``{task}_f1/{type}`` for GMNER and MNER."""
        out: dict[str, torch.Tensor] = {}
        c = self.counts.double()
        for t, task in enumerate(TASKS):
            tp, npred, ngold = c[t].sum(0)
            out.update(_prf(task, tp, npred, ngold))
            if task != "eeg":
                for i, etype in enumerate(self.types):
                    out[f"{task}_f1/{etype}"] = _prf(task, *c[t, i])[f"{task}_f1"]
        return out


def _prf(prefix: str, tp: torch.Tensor, npred: torch.Tensor, ngold: torch.Tensor) -> dict[str, torch.Tensor]:
    p = tp / npred if npred > 0 else torch.zeros((), dtype=torch.float64)
    r = tp / ngold if ngold > 0 else torch.zeros((), dtype=torch.float64)
    f = 2 * p * r / (p + r) if p + r > 0 else torch.zeros((), dtype=torch.float64)
    return {f"{prefix}_precision": p, f"{prefix}_recall": r, f"{prefix}_f1": f}


def evaluate_examples(
    golds: Sequence[Example], preds: Sequence[Example], types: Sequence[str] | None = None, match: str = "span"
) -> dict:
    """Scores predictions against gold posts matched by id.

    A gold post with no prediction counts as predicted empty; a predicted id absent from gold is an error, and so
    is (with ``match="span"``) a prediction whose tokens differ from its gold post's. Overlapping and duplicate
    predicted entities are scored like any other: every predicted triple counts, so a duplicate is a false
    positive; ``overlapping_predictions`` says how many there were.

    Returns:
        ``{"gmner": {"precision", "recall", "f1"}, "mner": {...}, "eeg": {...}, "per_type": {type: {"gmner_f1",
        "mner_f1", "support"}}, "counts": {...}, "overlapping_predictions": {"entities", "posts"}}`` with fractions
        in [0, 1].

    Raises:
        ValueError: Predicted ids that are not in the gold data (the first few are named), or predicted tokens that
            differ from the gold tokens (span matching; the post is named).
    """
    by_id = {p.id: p for p in preds}
    extra = [i for i in by_id if i not in {g.id for g in golds}]
    if extra:
        raise ValueError(f"{len(extra)} predicted post id(s) are not in the gold data, e.g. {extra[:5]}")
    if match == "span":
        for g in golds:
            p = by_id.get(g.id)
            if p is not None and list(p.tokens) != list(g.tokens):
                at = next(
                    (i for i, (a, b) in enumerate(zip(p.tokens, g.tokens)) if a != b), min(len(p.tokens), len(g.tokens))
                )
                raise ValueError(
                    f"post {g.id}: predicted tokens differ from the gold tokens (from token {at}: "
                    f"{p.tokens[at : at + 3]} vs {g.tokens[at : at + 3]}); spans would not mean the same "
                    "words"
                )
    if types is None:
        types = sorted({e.type for ex in list(golds) + list(preds) for e in ex.entities})
    aligned = [by_id.get(g.id) or Example(id=g.id, tokens=g.tokens, source="predicted") for g in golds]
    metric = GMNERMetrics(types, match=match, sync_on_compute=False)  # local data: never a collective call
    metric.update(aligned, list(golds))
    values = {k: float(v) for k, v in metric.compute().items()}
    counts = metric.counts
    result: dict = {task: {m: values[f"{task}_{m}"] for m in ("precision", "recall", "f1")} for task in TASKS}
    result["per_type"] = {
        t: {"gmner_f1": values[f"gmner_f1/{t}"], "mner_f1": values[f"mner_f1/{t}"], "support": int(counts[1, i, 2])}
        for i, t in enumerate(types)
    }
    result["counts"] = {
        task: dict(zip(("tp", "predicted", "gold"), map(int, counts[t].sum(0)))) for t, task in enumerate(TASKS)
    }
    overlaps = [count_overlaps(p) for p in preds]
    result["overlapping_predictions"] = {"entities": sum(overlaps), "posts": sum(1 for n in overlaps if n)}
    result["grounding"] = grounding_accuracy(golds, aligned)
    return result


def count_overlaps(example: Example) -> int:
    """Entities of ``example`` that overlap or repeat an earlier one (in start order)."""
    n, last_end = 0, 0
    for ent in sorted(example.entities, key=lambda e: e.start):
        n += ent.start < last_end
        last_end = max(last_end, ent.end)
    return n


def grounding_accuracy(golds: Sequence[Example], preds: Sequence[Example], iou_threshold: float = 0.5) -> dict:
    """Phrase-grounding accuracy of predictions aligned with ``golds`` (same order).

    A gold entity is looked up among the predicted entities with the same span (type ignored); a gold entity the
    prediction lacks counts as wrong. See :func:`grounding_tally` for the rates.
    """
    records = []
    for gold, pred in zip(golds, preds):
        by_span = {(e.start, e.end): e for e in pred.entities}
        for ent in gold.entities:
            found = by_span.get((ent.start, ent.end))
            answer = None if found is None else (found.boxes[0] if found.boxes else [])
            records.append((ent.type, ent.boxes, answer))
    return grounding_tally(records, iou_threshold)


def grounding_tally(
    records: Iterable[tuple[str, Sequence[Box], Box | list | None]], iou_threshold: float = 0.5
) -> dict:
    """Acc@``iou_threshold`` and none-accuracy of grounding answers, overall and per type.

    Args:
        records: Per gold entity ``(type, gold boxes, answer)``; answer = the first answered box, ``[]`` for an
            answered none, ``None`` for an entity that was not answered at all (wrong either way).
        iou_threshold: IoU the answered box needs with one of the gold boxes.

    Returns:
        ``{"acc", "with_box", "none_acc", "without_box", "accuracy", "per_type": {type: {...}}}``: ``acc`` over
        entities with a gold box, ``none_acc`` over those without, ``accuracy`` over both; a rate is ``None`` when
        its denominator is 0.
    """
    rows: dict[str, list[int]] = {}
    for etype, gold, answer in records:
        row = rows.setdefault(etype, [0, 0, 0, 0])  # box hits, entities with a box, none hits, entities without
        if gold:
            row[1] += 1
            row[0] += int(bool(answer) and any(box_iou(answer, g) >= iou_threshold for g in gold))
        else:
            row[3] += 1
            row[2] += int(answer == [])

    def rates(r: list[int]) -> dict:
        return {
            "acc": r[0] / r[1] if r[1] else None,
            "with_box": r[1],
            "none_acc": r[2] / r[3] if r[3] else None,
            "without_box": r[3],
            "accuracy": (r[0] + r[2]) / (r[1] + r[3]) if r[1] + r[3] else None,
        }

    total = [sum(r[i] for r in rows.values()) for i in range(4)]
    return {**rates(total), "per_type": {t: rates(r) for t, r in sorted(rows.items())}}


def format_scores(result: dict) -> str:
    """Readable table of an :func:`refineg.metrics.evaluate_examples` result (percentages)."""
    lines = [f"{'task':<8}{'P':>8}{'R':>8}{'F1':>8}"]
    for task in ("gmner", "mner", "eeg"):
        s = result[task]
        lines.append(f"{task.upper():<8}{100 * s['precision']:>8.2f}{100 * s['recall']:>8.2f}{100 * s['f1']:>8.2f}")
    lines.append("")
    lines.append(f"{'type':<10}{'GMNER F1':>10}{'MNER F1':>10}{'support':>9}")
    for etype, s in result["per_type"].items():
        lines.append(f"{etype:<10}{100 * s['gmner_f1']:>10.2f}{100 * s['mner_f1']:>10.2f}{s['support']:>9}")
    grounding = result.get("grounding")
    if grounding and grounding["with_box"] + grounding["without_box"]:

        def pct(v: float | None) -> str:
            return "-" if v is None else f"{100 * v:.2f}"

        lines.append("")
        lines.append(
            f"grounding: Acc@0.5 {pct(grounding['acc'])} of {grounding['with_box']} gold entities with a box, "
            f"none-accuracy {pct(grounding['none_acc'])} of {grounding['without_box']} without"
        )
    return "\n".join(lines)


def entity_errors(preds: Sequence[Example], golds: Sequence[Example]) -> list[dict[str, bool]]:
    """Per predicted entity (posts in ``preds`` order): ``{"total": error, "span": error, "type": error or None}``.

    Raises:
        ValueError: A predicted post id is not in the gold data.
    """
    by_id = {g.id: g for g in golds}
    out = []
    for p in preds:
        if p.id not in by_id:
            raise ValueError(f"predicted post {p.id!r} is not in the gold data")
        gold = by_id[p.id].entities
        spans = {(g.start, g.end): g.type for g in gold}
        for e in p.entities:
            gtype = spans.get((e.start, e.end))
            out.append(
                {"total": gtype != e.type, "span": gtype is None, "type": None if gtype is None else gtype != e.type}
            )
    return out
