"""A small trainable region-scoring head over frozen open_clip region and prompt features.

Candidates are grouped by image: the boxes of one image (and their features) are shared by every entity asked
about it, so a training batch projects each image's boxes once. For one entity the head scores each box from its
region feature, its geometry, the entity's prompt feature and type, and the whole image (an additive and a bilinear
term, so scoring a box for one more entity is cheap); a "none" option is scored
from the whole image and the entity. A softmax over ``[none, box_1 .. box_N]`` is trained with cross-entropy
against a soft target spread over the boxes that match a gold box (IoU >= 0.5), or none; with ``refine`` the head
also regresses each matching box onto its gold box (Fast R-CNN deltas), applied to the chosen box at inference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
import torchmetrics
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision.ops import box_iou

from refineg.data.schema import Box

GEOMETRY_DIM = 10
_MAX_LOG_SCALE = math.log(1000.0 / 16)


def box_geometry(boxes: Sequence[Box], width: int, height: int) -> torch.Tensor:
    """``(N, 10)`` box features in image-relative units: ``x1, y1, x2, y2, cx, cy, w, h, area, log(w/h)``."""
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    norm = t / torch.tensor([width, height, width, height], dtype=torch.float32)
    w, h = (norm[:, 2] - norm[:, 0]).clamp(min=1e-4), (norm[:, 3] - norm[:, 1]).clamp(min=1e-4)
    cx, cy = (norm[:, 0] + norm[:, 2]) / 2, (norm[:, 1] + norm[:, 3]) / 2
    return torch.cat([norm, torch.stack([cx, cy, w, h, w * h, torch.log(w / h)], 1)], 1)


@dataclass
class ImageCandidates:
    """The candidate boxes of one image with their frozen features.

    Attributes:
        boxes: ``N`` candidate boxes, xyxy in original image pixels.
        regions: ``(N, Dv)`` region features.
        image: ``(Dv,)`` whole-image feature.
        geometry: ``(N, 10)`` see :func:`box_geometry`.
        size: ``(width, height)`` of the image in pixels.
    """

    boxes: list[Box]
    regions: torch.Tensor
    image: torch.Tensor
    geometry: torch.Tensor
    size: tuple[int, int]


@dataclass
class EntityCandidates:
    """One entity's question: its prompt feature and type, and the candidates of its image.

    Attributes:
        group: The image's candidates (shared between the entities of one image).
        text: ``(Dt,)`` prompt feature.
        type: Entity type (``"people"``, ``"PER"``, ...).
    """

    group: ImageCandidates
    text: torch.Tensor
    type: str

    @property
    def boxes(self) -> list[Box]:
        """The image's candidate boxes."""
        return self.group.boxes


def soft_target(
    boxes: Sequence[Box], gold: Sequence[Box], iou_threshold: float = 0.5, sharpness: float = 10.0
) -> torch.Tensor | None:
    """Training target over ``[none, box_1 .. box_N]``.

    Gold none puts all mass on none. Otherwise the mass goes to the boxes whose best IoU with a gold box reaches
    ``iou_threshold``, in proportion to ``exp(sharpness * IoU)`` (tighter boxes get more).

    Returns:
        ``(N + 1,)`` probabilities, or ``None`` when gold has boxes but no candidate reaches the threshold
        (unlearnable, skipped).
    """
    target = torch.zeros(len(boxes) + 1)
    if not gold:
        target[0] = 1.0
        return target
    if not len(boxes):
        return None
    iou = box_iou(torch.tensor(boxes, dtype=torch.float32), torch.tensor(gold, dtype=torch.float32)).max(1).values
    ok = iou >= iou_threshold
    if not ok.any():
        return None
    weights = torch.where(ok, torch.exp(sharpness * (iou - 1)), torch.zeros_like(iou))
    target[1:] = weights / weights.sum()
    return target


def box_deltas(boxes: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` deltas ``dx, dy, log dw, log dh`` that move ``boxes (N, 4)`` onto ``gold (N, 4)`` (xyxy)."""
    pw, ph = (boxes[:, 2] - boxes[:, 0]).clamp(min=1.0), (boxes[:, 3] - boxes[:, 1]).clamp(min=1.0)
    gw, gh = (gold[:, 2] - gold[:, 0]).clamp(min=1.0), (gold[:, 3] - gold[:, 1]).clamp(min=1.0)
    dx = ((gold[:, 0] + gold[:, 2]) - (boxes[:, 0] + boxes[:, 2])) / 2 / pw
    dy = ((gold[:, 1] + gold[:, 3]) - (boxes[:, 1] + boxes[:, 3])) / 2 / ph
    return torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph)], 1)


def apply_deltas(box: Box, delta: Sequence[float], width: int, height: int) -> Box:
    """``box`` moved by ``delta`` (see :func:`box_deltas`), clipped to the image."""
    x1, y1, x2, y2 = box
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    cx, cy = (x1 + x2) / 2 + delta[0] * w, (y1 + y2) / 2 + delta[1] * h
    w = w * math.exp(min(max(delta[2], -_MAX_LOG_SCALE), _MAX_LOG_SCALE))
    h = h * math.exp(min(max(delta[3], -_MAX_LOG_SCALE), _MAX_LOG_SCALE))
    return [max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(float(width), cx + w / 2), min(float(height), cy + h / 2)]


def regression_target(
    boxes: Sequence[Box], gold: Sequence[Box], iou_threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per box: deltas to its best-matching gold box ``(N, 4)`` and whether it matches (IoU >= threshold) ``(N,)``."""
    n = len(boxes)
    if not gold or not n:
        return torch.zeros(n, 4), torch.zeros(n, dtype=torch.bool)
    b = torch.tensor(boxes, dtype=torch.float32)
    g = torch.tensor(gold, dtype=torch.float32)
    iou, idx = box_iou(b, g).max(1)
    return box_deltas(b, g[idx]), iou >= iou_threshold


class RegionHead(nn.Module):
    """Scores the candidate boxes of a batch of entities grouped by image.

    Args:
        image_dim: Region/image feature size ``Dv``.
        text_dim: Prompt feature size ``Dt``.
        types: Entity types with a learned embedding (others share the "unknown" one).
        hidden: Hidden width.
        dropout: Dropout before the output layers.
        use_geometry: Feed the box geometry.
        refine: Also predict box deltas.
    """

    def __init__(
        self,
        image_dim: int,
        text_dim: int,
        types: Sequence[str] = (),
        hidden: int = 128,
        dropout: float = 0.1,
        use_geometry: bool = True,
        refine: bool = True,
    ) -> None:
        super().__init__()
        self.config = {
            "image_dim": image_dim,
            "text_dim": text_dim,
            "types": list(types),
            "hidden": hidden,
            "dropout": dropout,
            "use_geometry": use_geometry,
            "refine": refine,
        }
        self.type_index = {t: i + 1 for i, t in enumerate(types)}
        self.use_geometry, self.refine = use_geometry, refine
        self.region = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden))
        self.context = nn.Sequential(nn.LayerNorm(image_dim), nn.Linear(image_dim, hidden))
        self.text = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        self.type_embedding = nn.Embedding(len(types) + 1, hidden)
        self.geometry = nn.Sequential(nn.Linear(GEOMETRY_DIM, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.query = nn.Linear(hidden, 2 * hidden)  # entity -> (additive term, multiplicative key)
        self.box_context = nn.Linear(hidden, hidden, bias=False)
        self.dropout = nn.Dropout(dropout)
        self.box_out = nn.Linear(hidden, 5 if refine else 1)
        self.none_mlp = nn.Sequential(
            nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def type_ids(self, types: Sequence[str]) -> torch.Tensor:
        """``(E,)`` embedding index of each type (0 = unknown)."""
        return torch.tensor([self.type_index.get(t, 0) for t in types], dtype=torch.long)

    def forward(
        self,
        regions: torch.Tensor,
        geometry: torch.Tensor,
        mask: torch.Tensor,
        image: torch.Tensor,
        text: torch.Tensor,
        type_ids: torch.Tensor,
        group: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits over ``[none, box_1 .. box_N]`` and box deltas per entity.

        Args:
            regions: ``(G, N, Dv)`` region features of ``G`` images (padded to ``N`` boxes).
            geometry: ``(G, N, 10)`` box geometry.
            mask: ``(G, N)`` bool, ``True`` for real boxes.
            image: ``(G, Dv)`` whole-image features.
            text: ``(E, Dt)`` prompt features of ``E`` entities.
            type_ids: ``(E,)`` type indices (:meth:`type_ids`).
            group: ``(E,)`` index of each entity's image in ``0 .. G-1``.

        Returns:
            ``(E, N + 1)`` logits (padded boxes ``-inf``) and ``(E, N, 4)`` deltas (zeros without ``refine``).
        """
        v = self.region(regions)
        if self.use_geometry:
            v = v + self.geometry(geometry)
        c = self.context(image)
        q = self.text(text) + self.type_embedding(type_ids)
        add, key = self.query(q).chunk(2, dim=-1)
        # Additive (Bahdanau-style) scoring: the per-box term is computed once per image and the per-entity terms
        # are broadcast over its boxes, so a pair costs O(hidden) rather than an MLP layer; plus a bilinear term.
        per_box = v + self.box_context(c).unsqueeze(1)  # (G, N, H)
        ve = per_box[group]  # (E, N, H)
        hidden = self.dropout(F.gelu(ve + add.unsqueeze(1)))
        out = self.box_out(hidden)
        out = out.clone()
        out[..., 0] = out[..., 0] + (v[group] * key.unsqueeze(1)).sum(-1) / v.shape[-1] ** 0.5
        box_logits = out[..., 0].masked_fill(~mask[group], float("-inf"))
        ce = c[group]
        none_logit = self.none_mlp(torch.cat([ce, q, ce * q], -1))
        deltas = out[..., 1:] if self.refine else torch.zeros(*out.shape[:-1], 4)
        return torch.cat([none_logit, box_logits], 1), deltas

    @torch.no_grad()
    def predict(self, cands: Sequence[EntityCandidates]) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over ``[none, boxes]`` ``(E, N + 1)`` and deltas ``(E, N, 4)`` for entities of one image."""
        batch = collate_groups([(cands[0].group, [(c.text, c.type, None) for c in cands])], self)
        was_training = self.training
        self.eval()
        logits, deltas = self(**{k: batch[k] for k in _FORWARD_KEYS})
        self.train(was_training)
        return logits.softmax(-1), deltas


_FORWARD_KEYS = ("regions", "geometry", "mask", "image", "text", "type_ids", "group")

#: One training item: an image's candidates and, per entity asked about it, ``(text, type, gold boxes or None)``.
GroupItem = tuple[ImageCandidates, list[tuple[torch.Tensor, str, "list[Box] | None"]]]


class GroupDataset(Dataset):
    """Images with their learnable entities (see :data:`GroupItem`); training targets are computed once, here."""

    def __init__(self, items: Sequence[GroupItem], iou: float = 0.5) -> None:
        self.items = []
        for group, ents in items:
            targets = [entity_targets(group.boxes, gold, iou) for _, _, gold in ents]
            # unlearnable entities (gold boxes that no candidate matches) are left out, then images left empty
            kept = [(e, t) for e, t in zip(ents, targets) if e[2] is None or t is not None]
            if kept:
                self.items.append((group, [e for e, _ in kept], [t for _, t in kept]))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int):
        return self.items[idx]


def entity_targets(
    boxes: Sequence[Box], gold: Sequence[Box] | None, iou: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``(soft target (N + 1,), deltas (N, 4), positive (N,))`` of one entity.

    ``None`` when no gold is given, or when it is unlearnable (gold boxes that no candidate matches).
    """
    if gold is None:
        return None
    target = soft_target(boxes, gold, iou)
    if target is None:
        return None
    deltas, positive = regression_target(boxes, gold, iou)
    return target, deltas, positive


def collate_groups(items: Sequence, head: RegionHead, iou: float = 0.5) -> dict[str, torch.Tensor]:
    """Pads a batch of images to the longest box list; targets where gold boxes are given.

    Items are :data:`GroupItem` pairs, or triples from :class:`GroupDataset` with precomputed targets. Entities
    with gold boxes but no matching candidate are left out (``skipped`` counts them).
    """
    n_max = max(1, max(len(item[0].boxes) for item in items))
    dim = items[0][0].regions.shape[-1]
    regions = torch.zeros(len(items), n_max, dim)
    geometry = torch.zeros(len(items), n_max, GEOMETRY_DIM)
    mask = torch.zeros(len(items), n_max, dtype=torch.bool)
    texts, types, groups, targets, deltas, positive = [], [], [], [], [], []
    skipped = 0
    for gi, item in enumerate(items):
        g, ents = item[0], item[1]
        prepared = item[2] if len(item) > 2 else [entity_targets(g.boxes, gold, iou) for _, _, gold in ents]
        n = len(g.boxes)
        regions[gi, :n], geometry[gi, :n], mask[gi, :n] = g.regions.float(), g.geometry, True
        for (text, etype, gold), ready in zip(ents, prepared):
            if gold is not None:
                if ready is None:
                    skipped += 1
                    continue
                target, d, pos = ready
                targets.append(F.pad(target, (0, n_max - n)))
                deltas.append(F.pad(d, (0, 0, 0, n_max - n)))
                positive.append(F.pad(pos, (0, n_max - n)))
            texts.append(text.float())
            types.append(etype)
            groups.append(gi)
    batch = {
        "regions": regions,
        "geometry": geometry,
        "mask": mask,
        "image": torch.stack([item[0].image.float() for item in items]),
        "text": torch.stack(texts) if texts else torch.zeros(0, head.config["text_dim"]),
        "type_ids": head.type_ids(types),
        "group": torch.tensor(groups, dtype=torch.long),
        "skipped": torch.tensor(skipped),
    }
    if targets:
        batch.update({"target": torch.stack(targets), "deltas": torch.stack(deltas), "positive": torch.stack(positive)})
    return batch


class RegionHeadModule(L.LightningModule):
    """Trains a :class:`RegionHead`: soft cross-entropy over ``[none, boxes]`` plus smooth-L1 box deltas; AdamW.

    Metrics: ``train/loss``, ``val/loss``, ``val/acc`` (the top box matches gold, or none for gold none),
    ``val/acc_best``.

    Args:
        head_config: :class:`RegionHead` keyword arguments.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        box_weight: Weight of the box-delta loss.
        epochs: Training epochs (cosine decay over them).
    """

    def __init__(
        self, head_config: dict, lr: float = 1e-3, weight_decay: float = 0.01, box_weight: float = 1.0, epochs: int = 20
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = RegionHead(**head_config)
        self.val_acc = torchmetrics.MeanMetric()
        self.val_acc_best = torchmetrics.MaxMetric()

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits, deltas = self.head(**{k: batch[k] for k in _FORWARD_KEYS})
        logp = logits.log_softmax(-1).masked_fill(torch.isinf(logits), 0.0)
        loss = -(batch["target"] * logp).sum(-1).mean()
        if self.head.refine and batch["positive"].any():
            pos = batch["positive"]
            loss = loss + self.hparams.box_weight * F.smooth_l1_loss(deltas[pos], batch["deltas"][pos], beta=0.1)
        return loss, logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of one batch."""
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["group"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and top-1 accuracy (among learnable entities)."""
        loss, logits = self._step(batch)
        top = logits.argmax(-1)
        self.val_acc.update((batch["target"].gather(1, top[:, None])[:, 0] > 0).float())
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["group"]))

    def on_validation_epoch_end(self) -> None:
        """Logs the epoch's accuracy and the best so far."""
        acc = self.val_acc.compute()
        self.val_acc.reset()
        self.val_acc_best.update(acc)
        self.log("val/acc", acc, prog_bar=True)
        self.log("val/acc_best", self.val_acc_best.compute())

    def configure_optimizers(self):
        """AdamW with cosine decay over the epochs."""
        opt = torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.hparams.epochs))
        return {"optimizer": opt, "lr_scheduler": sched}
