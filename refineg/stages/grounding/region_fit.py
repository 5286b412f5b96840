"""Fitting the ``clip`` grounder on labelled posts: optional head training and the none-threshold.

``refineg fit-region-scorer`` calls :func:`fit_region_scorer`: it embeds the candidates of every post that has
an image, trains the :class:`~refineg.stages.grounding.region_head.RegionHead` on ``train`` posts when given, picks
the threshold that maximises grounding accuracy on the dev posts (:func:`fit_threshold`) and saves a state file
that ``create_grounder("clip", state=...)`` loads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from tqdm.auto import tqdm

from refineg.config import build_typed_config
from refineg.data import Example, read_jsonl
from refineg.data.schema import Box
from refineg.metrics import box_iou

from .base import image_path
from .clip_scorer import DEFAULT_TEMPLATES, ClipRegionScorer
from .region_head import CandidateDataset, EntityCandidates, RegionHead, RegionHeadModule, target_index

logger = logging.getLogger(__name__)

# Optional[...] rather than ``X | None``: OmegaConf reads these annotations at run time.


@dataclass
class RegionHeadConfig:
    """Training of the optional scoring head (only with ``train=`` posts).

    Attributes:
        hidden: Hidden width.
        dropout: Dropout.
        use_geometry: Feed box geometry (normalised xyxy, area) to the box scorer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        epochs: Training epochs.
        batch_size: Entities per step.
    """

    hidden: int = 256
    dropout: float = 0.1
    use_geometry: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.01
    epochs: int = 20
    batch_size: int = 32


@dataclass
class RegionScorerFitConfig:
    """``refineg fit-region-scorer`` settings (``key=value`` overrides; ``head.epochs=5``).

    Attributes:
        model_name: open_clip architecture.
        pretrained: open_clip tag or local checkpoint; ``None`` = random weights (timing and tests only).
        allow_download: Let open_clip fetch uncached weights.
        proposals: Proposal source (``grid``, ``selective_search``, ``mtcnn``, ``file``).
        proposal_kwargs: Its keyword arguments (``proposal_kwargs.path=vinvl.jsonl``).
        templates: Prompt templates with ``{text}`` and ``{type_word}``.
        type_words: Type-to-word overrides for prompts.
        train: Labelled posts (canonical JSONL) to train the head on; ``None`` = no head, cosine scores.
        iou: IoU a box needs with a gold box to count as correct.
        head: Head training settings.
        device: Torch device.
        batch_size: Crops per forward pass.
        limit: Use at most this many posts of each file (quick runs).
        seed: Seed of head training.
    """

    model_name: str = "ViT-B-32"
    pretrained: Optional[str] = None  # noqa: UP045
    allow_download: bool = False
    proposals: str = "grid"
    proposal_kwargs: dict[str, Any] = field(default_factory=dict)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    type_words: dict[str, str] = field(default_factory=dict)
    train: Optional[str] = None  # noqa: UP045
    iou: float = 0.5
    head: RegionHeadConfig = field(default_factory=RegionHeadConfig)
    device: str = "cpu"
    batch_size: int = 64
    limit: Optional[int] = None  # noqa: UP045
    seed: int = 0


def load_fit_config(overrides: Sequence[str] | None = None) -> RegionScorerFitConfig:
    """Builds the config from ``key=value`` overrides (``None`` means null; a misspelt key is an error).

    Raises:
        ValueError: Unknown key, wrong type or malformed override.
    """
    return build_typed_config(RegionScorerFitConfig, overrides, what="fit-region-scorer")


def fit_threshold(best_scores: Sequence[float | None], box_correct: Sequence[bool], gold_none: Sequence[bool]
                  ) -> tuple[float | None, float]:
    """The none-threshold that maximises grounding accuracy on labelled entities.

    An entity counts as correct when it is answered (best score >= threshold) and its best box matches gold, or
    when it is not answered and gold has no box. Ties go to the lower threshold (more answers).

    Args:
        best_scores: Per entity, the best candidate's score; ``None`` = no candidate (always answered none).
        box_correct: Per entity, whether the best candidate matches a gold box.
        gold_none: Per entity, whether gold has no box.

    Returns:
        ``(threshold, accuracy)``: ``None`` means answer every entity that has candidates; otherwise the midpoint
        between the lowest answered and the highest unanswered score (above every score: never answer).
    """
    if not len(best_scores) == len(box_correct) == len(gold_none):
        raise ValueError("fit_threshold: best_scores, box_correct and gold_none differ in length")
    n = len(best_scores)
    if n == 0:
        return None, 0.0
    scored = sorted((i for i, s in enumerate(best_scores) if s is not None), key=lambda i: -best_scores[i])
    count = sum(gold_none)  # nothing answered: exactly the gold-none entities are right
    best_count, best_k = count, 0
    for k, i in enumerate(scored, 1):
        count += int(box_correct[i]) - int(gold_none[i])
        at_cut = k == len(scored) or best_scores[scored[k]] < best_scores[i]
        if at_cut and count >= best_count:
            best_count, best_k = count, k
    if best_k == len(scored):
        threshold = None
    elif best_k == 0:
        threshold = float(best_scores[scored[0]]) + 1.0
    else:
        threshold = (float(best_scores[scored[best_k - 1]]) + float(best_scores[scored[best_k]])) / 2
    return threshold, best_count / n


def load_image(images_dir: str | Path | None, post: Example) -> Image.Image | None:
    """The post's image as RGB, or ``None`` when it is unset or missing (logged)."""
    path = image_path(images_dir, post)
    if path is None or not path.is_file():
        return None
    with Image.open(path) as img:
        return img.convert("RGB")


def embed_posts(scorer: ClipRegionScorer, posts: Sequence[Example], images_dir: str | Path | None,
                desc: str = "embed") -> tuple[list[tuple[EntityCandidates, list[Box]]], int]:
    """Candidates of every entity of every post that has an image, paired with its gold boxes.

    Returns:
        ``(items, missing_images)``.
    """
    items, missing = [], 0
    for post in tqdm(posts, desc=desc, unit="post"):
        if not post.entities:
            continue
        image = load_image(images_dir, post)
        if image is None:
            missing += 1
            continue
        for ent, cand in zip(post.entities, scorer.candidates(post, image)):
            items.append((cand, [list(b) for b in ent.boxes]))
    if missing:
        logger.warning("%d posts had no image under %s and were left out", missing, images_dir)
    return items, missing


def training_items(items: Sequence[tuple[EntityCandidates, list[Box]]], iou: float = 0.5
                   ) -> tuple[list[tuple[EntityCandidates, int]], int]:
    """``(candidates, target)`` pairs for the head; entities whose gold box no candidate matches are skipped.

    Returns:
        ``(pairs, skipped)``.
    """
    pairs, skipped = [], 0
    for cand, gold in items:
        target = target_index(cand.boxes, gold, iou)
        if target is None:
            skipped += 1
        else:
            pairs.append((cand, target))
    return pairs, skipped


def train_region_head(train: Sequence[tuple[EntityCandidates, int]], val: Sequence[tuple[EntityCandidates, int]],
                      embed_dim: int, cfg: RegionHeadConfig | None = None, seed: int = 0,
                      accelerator: str = "cpu") -> tuple[RegionHead, dict[str, float]]:
    """Trains a head with Lightning; returns it in eval mode and the last logged metrics."""
    import lightning as L
    from torch.utils.data import DataLoader

    from .region_head import collate_candidates

    cfg = cfg or RegionHeadConfig()
    L.seed_everything(seed, workers=True, verbose=False)
    module = RegionHeadModule(embed_dim, cfg.hidden, cfg.dropout, cfg.use_geometry, cfg.lr, cfg.weight_decay)
    train_dl = DataLoader(CandidateDataset(train), batch_size=cfg.batch_size, shuffle=True,
                          collate_fn=collate_candidates)
    val_dl = DataLoader(CandidateDataset(val), batch_size=256, collate_fn=collate_candidates) if val else None
    trainer = L.Trainer(max_epochs=cfg.epochs, accelerator=accelerator, devices=1, logger=False,
                        enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                        num_sanity_val_steps=0)
    trainer.fit(module, train_dl, val_dl)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module.head.eval(), metrics


def evaluate_scorer(scorer: ClipRegionScorer, items: Sequence[tuple[EntityCandidates, list[Box]]], iou: float = 0.5
                    ) -> tuple[list[float | None], list[bool], list[bool]]:
    """Per entity: best score (``None`` without candidates), whether the best box is right, whether gold is none."""
    best_scores, correct, gold_none = [], [], []
    for cand, gold in items:
        scores = scorer.scores(cand)
        if not len(scores):
            best_scores.append(None)
            correct.append(False)
        else:
            best = int(scores.argmax())
            best_scores.append(float(scores[best]))
            correct.append(bool(gold) and any(box_iou(cand.boxes[best], g) >= iou for g in gold))
        gold_none.append(not gold)
    return best_scores, correct, gold_none


def fit_region_scorer(cfg: RegionScorerFitConfig, data: str | Path, images_dir: str | Path, out: str | Path
                      ) -> dict[str, Any]:
    """Embeds, trains the head (with ``cfg.train``), fits the threshold on ``data`` and saves ``out``.

    Returns:
        The fit report (also stored in the state file under ``fit``).

    Raises:
        ValueError: No dev entity has an image.
    """
    torch.manual_seed(cfg.seed)
    scorer = ClipRegionScorer(cfg.model_name, cfg.pretrained, cfg.allow_download, cfg.proposals,
                              dict(cfg.proposal_kwargs), list(cfg.templates),
                              dict(cfg.type_words), device=cfg.device, batch_size=cfg.batch_size)
    dev_posts = read_jsonl(data)[: cfg.limit]
    dev, dev_missing = embed_posts(scorer, dev_posts, images_dir, "embed dev")
    if not dev:
        raise ValueError(f"no entity of {data} has an image under {images_dir}")
    report: dict[str, Any] = {"data": str(data), "images": str(images_dir), "label": scorer.label,
                              "dev_posts": len(dev_posts), "dev_posts_without_image": dev_missing,
                              "dev_entities": len(dev)}
    if cfg.train:
        train_posts = read_jsonl(cfg.train)[: cfg.limit]
        train_raw, train_missing = embed_posts(scorer, train_posts, images_dir, "embed train")
        train, skipped = training_items(train_raw, cfg.iou)
        val, _ = training_items(dev, cfg.iou)
        if not train:
            raise ValueError(f"no trainable entity in {cfg.train} (images under {images_dir}?)")
        accelerator = "gpu" if cfg.device.startswith("cuda") else "cpu"
        scorer.head, metrics = train_region_head(train, val, scorer.embedder.embed_dim, cfg.head, cfg.seed,
                                                 accelerator)
        scorer.head.to("cpu")
        report.update({"train": str(cfg.train), "train_posts": len(train_posts),
                       "train_posts_without_image": train_missing, "train_entities": len(train),
                       "train_entities_unmatched": skipped, "head_metrics": metrics})
    best_scores, correct, gold_none = evaluate_scorer(scorer, dev, cfg.iou)
    threshold, accuracy = fit_threshold(best_scores, correct, gold_none)
    scorer.threshold = threshold
    n = len(dev)
    report.update({"label": scorer.label, "threshold": threshold, "dev_accuracy": accuracy,
                   "dev_accuracy_always_answer": sum(correct) / n,
                   "dev_accuracy_always_none": sum(gold_none) / n,
                   "dev_gold_none_rate": sum(gold_none) / n,
                   "dev_mean_candidates": sum(len(c.boxes) for c, _ in dev) / n})
    report = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
    scorer.save(out, {"fit": report})
    return report
