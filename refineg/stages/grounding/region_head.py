"""A small trainable scoring head over frozen open_clip crop and prompt embeddings.

For one entity the head scores each candidate box from ``[crop, prompt, crop * prompt, geometry]`` with an MLP and
a "none" option from ``[whole image, prompt, whole image * prompt]``; a softmax over ``[none, box_1 .. box_N]`` is
trained with cross-entropy against the candidate that matches a gold box (IoU >= 0.5), or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import torch
import torchmetrics
from torch import nn
from torch.utils.data import Dataset

from refineg.data.schema import Box
from refineg.metrics import box_iou

GEOMETRY_DIM = 5


def box_geometry(boxes: Sequence[Box], width: int, height: int) -> torch.Tensor:
    """``(N, 5)`` box features: ``x1/W, y1/H, x2/W, y2/H, area / image area``."""
    t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    norm = t / scale
    area = ((norm[:, 2] - norm[:, 0]) * (norm[:, 3] - norm[:, 1])).unsqueeze(1)
    return torch.cat([norm, area], dim=1)


@dataclass
class EntityCandidates:
    """One entity's candidate boxes with their frozen embeddings.

    Attributes:
        boxes: ``N`` candidate boxes, xyxy in original image pixels.
        crops: ``(N, D)`` normalised crop embeddings.
        text: ``(D,)`` normalised prompt embedding of the entity.
        image: ``(D,)`` normalised embedding of the whole image.
        geometry: ``(N, 5)`` see :func:`box_geometry`.
    """

    boxes: list[Box]
    crops: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor
    geometry: torch.Tensor


def target_index(boxes: Sequence[Box], gold: Sequence[Box], iou_threshold: float = 0.5) -> int | None:
    """Training target: 0 for none (no gold box), ``1 + i`` for the candidate with the highest IoU >= threshold.

    Returns:
        ``None`` when the entity has gold boxes but no candidate reaches the threshold (unlearnable, skipped).
    """
    if not gold:
        return 0
    best, best_iou = None, iou_threshold
    for i, box in enumerate(boxes):
        iou = max(box_iou(box, g) for g in gold)
        if iou >= best_iou and (best is None or iou > best_iou):
            best, best_iou = i, iou
    return None if best is None else best + 1


class RegionHead(nn.Module):
    """Scores the candidates of a batch of entities.

    Args:
        embed_dim: Joint embedding size ``D`` of the open_clip model.
        hidden: Hidden width of the MLPs.
        dropout: Dropout before the output layers.
        use_geometry: Feed the box geometry to the box scorer.
    """

    def __init__(self, embed_dim: int, hidden: int = 256, dropout: float = 0.1, use_geometry: bool = True) -> None:
        super().__init__()
        self.config = {"embed_dim": embed_dim, "hidden": hidden, "dropout": dropout, "use_geometry": use_geometry}
        self.use_geometry = use_geometry
        in_box = 3 * embed_dim + (GEOMETRY_DIM if use_geometry else 0)
        self.box_mlp = nn.Sequential(nn.Linear(in_box, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.none_mlp = nn.Sequential(nn.Linear(3 * embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                      nn.Linear(hidden, 1))

    def forward(self, crops: torch.Tensor, text: torch.Tensor, image: torch.Tensor, geometry: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Logits over ``[none, box_1 .. box_N]``.

        Args:
            crops: ``(B, N, D)`` crop embeddings (padded).
            text: ``(B, D)`` prompt embeddings.
            image: ``(B, D)`` whole-image embeddings.
            geometry: ``(B, N, 5)`` box geometry.
            mask: ``(B, N)`` bool, ``True`` for real (not padded) boxes.

        Returns:
            ``(B, N + 1)`` logits; padded boxes are ``-inf``.
        """
        # Unit-norm embeddings have entries ~1/sqrt(D): rescale so the MLP sees O(1) inputs and products.
        scale = crops.shape[-1] ** 0.5
        crops, text, image = crops * scale, text * scale, image * scale
        txt = text.unsqueeze(1).expand_as(crops)
        feats = [crops, txt, crops * txt] + ([geometry] if self.use_geometry else [])
        box_logits = self.box_mlp(torch.cat(feats, dim=-1)).squeeze(-1).masked_fill(~mask, float("-inf"))
        none_logit = self.none_mlp(torch.cat([image, text, image * text], dim=-1))
        return torch.cat([none_logit, box_logits], dim=1)

    @torch.no_grad()
    def box_probs(self, cand: EntityCandidates) -> torch.Tensor:
        """``(N,)`` softmax probability of each candidate box of one entity (the rest is the none option)."""
        batch = collate_candidates([(cand, 0)])
        was_training = self.training
        self.eval()
        probs = self(batch["crops"], batch["text"], batch["image"], batch["geometry"], batch["mask"]).softmax(-1)
        self.train(was_training)
        return probs[0, 1:]


class CandidateDataset(Dataset):
    """``(EntityCandidates, target)`` pairs; target 0 = none, ``1 + i`` = box ``i``."""

    def __init__(self, items: Sequence[tuple[EntityCandidates, int]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[EntityCandidates, int]:
        return self.items[idx]


def collate_candidates(items: Sequence[tuple[EntityCandidates, int]]) -> dict[str, torch.Tensor]:
    """Pads the candidates of a batch to the longest ``N`` (see :meth:`RegionHead.forward` for the keys)."""
    n_max = max(1, max(len(c.boxes) for c, _ in items))
    dim = items[0][0].text.shape[-1]
    b = len(items)
    crops = torch.zeros(b, n_max, dim)
    geometry = torch.zeros(b, n_max, GEOMETRY_DIM)
    mask = torch.zeros(b, n_max, dtype=torch.bool)
    for i, (c, _) in enumerate(items):
        n = len(c.boxes)
        crops[i, :n], geometry[i, :n], mask[i, :n] = c.crops, c.geometry, True
    return {"crops": crops, "geometry": geometry, "mask": mask,
            "text": torch.stack([c.text for c, _ in items]), "image": torch.stack([c.image for c, _ in items]),
            "target": torch.tensor([t for _, t in items], dtype=torch.long)}


class RegionHeadModule(L.LightningModule):
    """Trains a :class:`RegionHead`: cross-entropy over ``[none, boxes]``, AdamW.

    Metrics: ``train/loss``, ``val/loss``, ``val/acc`` (top-1 of the softmax, none included), ``val/acc_best``.

    Args:
        embed_dim: Joint embedding size of the frozen open_clip model.
        hidden: Hidden width of the head.
        dropout: Head dropout.
        use_geometry: Feed box geometry to the head.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, embed_dim: int, hidden: int = 256, dropout: float = 0.1, use_geometry: bool = True,
                 lr: float = 1e-3, weight_decay: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.head = RegionHead(embed_dim, hidden, dropout, use_geometry)
        self.loss = nn.CrossEntropyLoss()
        self.val_acc = torchmetrics.MeanMetric()
        self.val_acc_best = torchmetrics.MaxMetric()

    def _step(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(batch["crops"], batch["text"], batch["image"], batch["geometry"], batch["mask"])
        return self.loss(logits, batch["target"]), logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of one batch."""
        loss, _ = self._step(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["target"]))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Loss and top-1 accuracy."""
        loss, logits = self._step(batch)
        self.val_acc.update((logits.argmax(-1) == batch["target"]).float())
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["target"]))

    def on_validation_epoch_end(self) -> None:
        """Logs the epoch's accuracy and the best so far."""
        acc = self.val_acc.compute()
        self.val_acc.reset()
        self.val_acc_best.update(acc)
        self.log("val/acc", acc, prog_bar=True)
        self.log("val/acc_best", self.val_acc_best.compute())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over the head."""
        return torch.optim.AdamW(self.head.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
