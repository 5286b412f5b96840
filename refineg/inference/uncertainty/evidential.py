"""Evidential head (Sensoy et al., 2018): a per-word Dirichlet trained on a frozen tagger's word states.

For each word the head outputs evidence ``e = softplus(W h + b) >= 0`` and ``alpha = e + 1``; the expected label
probabilities are ``alpha / S`` with ``S = sum(alpha)`` and the *vacuity* ``K / S`` (in (0, 1]) is high when the
word has little evidence for any label. An entity's uncertainty is the mean vacuity of its words; per field, 1 -
the mean expected probability of the predicted BIO prefix (span) and of the predicted type (type).
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from refineg.data import DataFormatError, Example
from refineg.data.files import torch_archive

from .base import (
    BatchContext,
    EntityUncertainty,
    UncertaintyHead,
    clamp01,
    label_index,
    register_uncertainty_head,
)
from .probability import entity_word_probs

logger = logging.getLogger(__name__)


class DirichletTagger(nn.Module):
    """Word states ``(B, W, H)`` -> Dirichlet parameters ``alpha`` ``(B, W, K)``, all ``>= 1``.

    Args:
        hidden_size: Width of the word states.
        labels: BIO label inventory (kept for checks when loading).
    """

    def __init__(self, hidden_size: int, labels: Sequence[str]) -> None:
        super().__init__()
        self.labels = list(labels)
        self.hidden_size = hidden_size
        self.evidence = nn.Linear(hidden_size, len(self.labels))

    def forward(self, states: Tensor) -> Tensor:  # noqa: D102
        return F.softplus(self.evidence(states.float())) + 1.0

    def save(self, path: str | Path) -> None:
        """Writes the weights and the label inventory."""
        torch.save({"state_dict": self.state_dict(), "labels": self.labels, "hidden_size": self.hidden_size}, path)

    @classmethod
    def load(cls, path: str | Path) -> DirichletTagger:
        """Reads a file written by :meth:`save`.

        Raises:
            DataFormatError: The file is missing or was not written by :meth:`save`.
        """
        path = check_evidential_file(path)
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            model = cls(blob["hidden_size"], blob["labels"])
            model.load_state_dict(blob["state_dict"])
        except (KeyError, TypeError, RuntimeError, pickle.UnpicklingError) as err:
            raise DataFormatError(path, f"not an {_WRITTEN_BY} ({type(err).__name__}: {err})") from None
        return model


_WRITTEN_BY = "evidential.pt written by refineg calibrate --fit-evidential"


def check_evidential_file(path: str | Path) -> Path:
    """``path`` after checking that it exists and is a PyTorch file (see :func:`refineg.data.files.torch_archive`)."""
    return torch_archive(path, "evidential layer", _WRITTEN_BY)


def dirichlet_kl_to_uniform(alpha: Tensor) -> Tensor:
    """``KL(Dir(alpha) || Dir(1, ..., 1))`` over the last dimension."""
    k = alpha.shape[-1]
    s = alpha.sum(-1)
    return (
        torch.lgamma(s)
        - torch.lgamma(torch.tensor(float(k), device=alpha.device))
        - torch.lgamma(alpha).sum(-1)
        + ((alpha - 1) * (torch.digamma(alpha) - torch.digamma(s).unsqueeze(-1))).sum(-1)
    )


def evidential_loss(alpha: Tensor, tags: Tensor, mask: Tensor, kl_weight: float) -> Tensor:
    """Evidential loss, averaged over real words (Sensoy et al., eq. 4 and 5).

    The expected cross-entropy under ``Dir(alpha)`` plus ``kl_weight`` times the KL of the misleading evidence
    (evidence for wrong labels) to the uniform Dirichlet.

    Args:
        alpha: ``(B, W, K)`` Dirichlet parameters.
        tags: ``(B, W)`` gold label ids (any value at masked words).
        mask: ``(B, W)`` bool.
        kl_weight: Weight of the regulariser (annealed from 0 in :func:`fit_evidential`).
    """
    y = F.one_hot(tags.clamp(min=0), alpha.shape[-1]).to(alpha.dtype)
    s = alpha.sum(-1, keepdim=True)
    nll = (y * (torch.digamma(s) - torch.digamma(alpha))).sum(-1)
    kl = dirichlet_kl_to_uniform(y + (1 - y) * alpha)
    per_word = (nll + kl_weight * kl) * mask
    return per_word.sum() / mask.sum().clamp(min=1)


def fit_evidential(
    module: Any,
    examples: Sequence[Example],
    epochs: int = 10,
    lr: float = 1e-2,
    kl_anneal_epochs: int = 5,
    batch_size: int = 32,
    max_length: int = 128,
    seed: int = 0,
) -> DirichletTagger:
    """Trains a :class:`DirichletTagger` on the frozen word states of a trained tagger.

    The tagger runs once (no gradients) to cache every post's word states; the Dirichlet layer is then trained
    with AdamW over the cached states. The KL weight grows linearly from 0 to 1 over ``kl_anneal_epochs``.

    Args:
        module: A trained ``TaggerModule``.
        examples: Labelled posts (the tagger's training data, or a held-out split).
        epochs: Passes over the cached states.
        lr: AdamW learning rate.
        kl_anneal_epochs: Epochs to reach the full KL weight.
        batch_size: Posts per batch.
        max_length: Subword budget per post.
        seed: Initialisation and shuffling seed.

    Returns:
        The trained layer (on CPU, eval mode).
    """
    from refineg.datamodules.encoding import encode_posts
    from refineg.inference.predictor import TaggerPredictor

    # batches in file order (not TaggerPredictor.batches' longest-first): the documented runs were trained this way
    predictor = TaggerPredictor(module, batch_size=batch_size, max_length=max_length)
    label_ids = {lab: i for i, lab in enumerate(module.labels)}
    encoded = encode_posts(list(examples), predictor.tokenizer, label_ids, max_length)
    cached = []
    with torch.no_grad():
        for lo in range(0, len(encoded), batch_size):
            batch = {k: v.to(module.device) for k, v in predictor.collate(encoded[lo : lo + batch_size]).items()}
            states = module.tagger.word_states(**batch).float().cpu()
            cached.append((states, batch["labels"].cpu(), (batch["word_mask"] & (batch["labels"] >= 0)).cpu()))
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DirichletTagger(cached[0][0].shape[-1], module.labels)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for epoch in range(epochs):
        kl_weight = min(1.0, epoch / max(1, kl_anneal_epochs))
        total = 0.0
        for j in torch.randperm(len(cached), generator=gen).tolist():
            states, tags, mask = cached[j]
            loss = evidential_loss(model(states), tags, mask, kl_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss)
        logger.info("evidential epoch %d: loss %.4f (kl weight %.2f)", epoch, total / len(cached), kl_weight)
    return model.eval()


@register_uncertainty_head("evidential")
class EvidentialHead(UncertaintyHead):
    """Scores entities with a trained :class:`DirichletTagger` (see the module docstring).

    Args:
        path: File written by :meth:`DirichletTagger.save` (e.g. by ``refineg calibrate --fit-evidential``).
        model: An in-memory :class:`DirichletTagger` instead of ``path``.
    """

    def __init__(self, path: str | Path | None = None, model: DirichletTagger | None = None) -> None:
        if (path is None) == (model is None):
            raise ValueError("evidential needs exactly one of path= (a trained Dirichlet layer) or model=")
        self.path = None if path is None else str(path)
        self.model = model if model is not None else DirichletTagger.load(path)  # type: ignore[arg-type]

    def alpha(self, ctx: BatchContext) -> Tensor:
        """``(B, W, K)`` Dirichlet parameters of the batch."""
        if self.model.labels != ctx.labels:
            raise ValueError(f"evidential layer labels {self.model.labels} differ from the tagger's {ctx.labels}")
        states = ctx.module.tagger.word_states(**ctx.batch)
        self.model.to(states.device).eval()
        return self.model(states)

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:  # noqa: D102
        alpha = self.alpha(ctx)
        strength = alpha.sum(-1)
        vacuity = alpha.shape[-1] / strength
        probs = alpha / strength.unsqueeze(-1)
        index = label_index(ctx.labels, ctx.types)
        out = []
        for b, post in enumerate(ctx.spans):
            row = []
            for s, e, t in post:
                w = entity_word_probs(probs[b], s, e, t, ctx.labels, index, ctx.types)
                row.append(
                    EntityUncertainty(
                        clamp01(float(vacuity[b, s:e].mean())),
                        clamp01(1 - float(w["prefix"].mean())),
                        clamp01(1 - float(w["type"].mean())),
                    )
                )
            out.append(row)
        return out

    needs_fit = True

    @classmethod
    def fit(cls, module: Any, examples: Sequence[Example], **kwargs: Any) -> EvidentialHead:
        """A head over a Dirichlet layer trained on ``examples`` (keyword arguments as :func:`fit_evidential`)."""
        return cls(model=fit_evidential(module, examples, **kwargs))

    def save(self, path: str | Path) -> None:
        """Writes the Dirichlet layer (:meth:`DirichletTagger.save`)."""
        self.model.save(path)

    @classmethod
    def load(cls, path: str | Path) -> EvidentialHead:
        """The head over a layer written by :meth:`save`."""
        return cls(path=path)

    def config(self) -> dict[str, Any]:  # noqa: D102
        return {"path": self.path}
