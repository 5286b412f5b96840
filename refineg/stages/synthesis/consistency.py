"""The consistency filter: a tagger trained on the gold seeds checks the labels of every synthetic post.

Synthetic labels that the gold-trained tagger does not reproduce are where the LLM's idea of an entity conflicts
with the domain's annotation convention. Posts with too many such labels are dropped or relabelled; words the
tagger labels and the LLM left unlabelled can be filled in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from refineg.data import Entity, Example, write_jsonl
from refineg.stages.synthesis.report import SynthesisReport

logger = logging.getLogger(__name__)


class Predictor(Protocol):
    """Anything with :meth:`refineg.inference.predictor.TaggerPredictor.predict`'s signature."""

    def predict(self, examples: Sequence[Example], progress: bool = True) -> list[Example]:
        """Predicted copies of ``examples`` (same order, entities with ``score``)."""
        ...


def disagreement(labels: Sequence[Entity], predicted: Sequence[Entity]) -> float:
    """Share of ``labels`` that ``predicted`` lacks with the same span and type (0 when there are no labels)."""
    if not labels:
        return 0.0
    pred = {(e.start, e.end, e.type) for e in predicted}
    return sum((e.start, e.end, e.type) not in pred for e in labels) / len(labels)


def _overlaps(ent: Entity, others: Sequence[Entity]) -> bool:
    return any(ent.start < o.end and o.start < ent.end for o in others)


def check_consistency(
    examples: Sequence[Example],
    predictor: Predictor,
    mode: str,
    threshold: float,
    fill_unlabelled: bool,
    fill_min_score: float,
    report: SynthesisReport,
    progress: bool = False,
) -> list[Example]:
    """Applies the consistency filter.

    Args:
        examples: Labelled synthetic posts.
        predictor: A tagger trained on the gold seeds.
        mode: ``drop``: remove posts with ``disagreement > threshold`` (reason ``inconsistent_with_tagger``);
            ``relabel``: replace their labels by the tagger's (counted in ``report.relabelled_posts``).
        threshold: Highest tolerated :func:`disagreement`.
        fill_unlabelled: Add tagger entities that overlap none of a kept post's labels.
        fill_min_score: Lowest confidence of a filled entity.
        report: Counters to update.
        progress: Show the tagger's progress bar.

    Returns:
        The kept posts (labels without ``score``; the tagger's scores are not carried over).
    """
    if mode not in ("drop", "relabel"):
        raise ValueError(f"consistency mode must be drop or relabel, got {mode!r}")
    predictions = predictor.predict(list(examples), progress=progress)
    out = []
    for ex, pred in zip(examples, predictions, strict=True):
        predicted = [Entity(e.start, e.end, e.type) for e in pred.entities]
        confident = [
            Entity(e.start, e.end, e.type) for e in pred.entities if e.score is None or e.score >= fill_min_score
        ]
        if disagreement(ex.entities, predicted) > threshold:
            if mode == "drop":
                report.reject("inconsistent_with_tagger")
                continue
            report.relabelled_posts += 1
            out.append(replace(ex, entities=confident, meta={**ex.meta, "relabelled": True}))
            continue
        entities = list(ex.entities)
        if fill_unlabelled:
            added = [e for e in confident if not _overlaps(e, ex.entities)]
            report.filled_entities += len(added)
            entities = sorted(entities + added, key=lambda e: e.start)
        out.append(replace(ex, entities=entities))
    return out


def train_seed_tagger(
    seeds: Sequence[Example], types: Sequence[str], work_dir: Path, dev: str | None, overrides: Sequence[str], seed: int
) -> str:
    """Trains a tagger on the seeds (``refineg.training.train``) and returns its best checkpoint.

    Args:
        seeds: Gold seeds (written to ``work_dir/seeds.jsonl``).
        types: Entity types.
        work_dir: Folder for the seeds file and the run (``work_dir/tagger``).
        dev: Canonical JSONL for choosing the best epoch; ``None`` uses the seeds (no held-out data).
        overrides: Extra training-config overrides.
        seed: Training seed.
    """
    from refineg.config import load_config
    from refineg.training import RUN_ENV, train

    work_dir.mkdir(parents=True, exist_ok=True)
    seeds_path = work_dir / "seeds.jsonl"
    write_jsonl(seeds, seeds_path)
    dev_path = Path(dev).resolve() if dev else seeds_path
    base = [
        "data.format=jsonl",
        f"data.root={work_dir.resolve()}",
        f"data.train={seeds_path.name}",
        f"data.dev={dev_path}",
        "data.test=null",
        "data.xml_dir=null",
        "data.gold_limit=null",
        f"data.types=[{','.join(types)}]",
        "data.mixing=gold_only",
        "data.synthetic=null",
        f"runs_dir={work_dir.resolve()}",
        "run_name=tagger",
        "predict=false",
        "logger.wandb=false",
        f"seed={seed}",
    ]
    cfg = load_config(base + list(overrides))
    logger.info("training the consistency tagger on %d seeds (%s)", len(seeds), work_dir / "tagger")
    previous = os.environ.get(RUN_ENV)
    try:
        result: dict[str, Any] = train(cfg)
    finally:  # train() pins the run name for DDP ranks; don't let it leak into later runs of this process
        if previous is None:
            os.environ.pop(RUN_ENV, None)
        else:
            os.environ[RUN_ENV] = previous
    return result["best_checkpoint"]
