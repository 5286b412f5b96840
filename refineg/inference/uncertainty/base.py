"""Uncertainty heads: the registry, the per-entity result and what a head sees of a batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from refineg.data import Example
from refineg.modules.heads import CRFHead
from refineg.registry import Registry

if TYPE_CHECKING:
    from refineg.modules.tagger_module import TaggerModule

UNCERTAINTY_HEADS = Registry("uncertainty head")

#: Fields a head may give an uncertainty for. Region (the box) is not among them: the text tagger predicts no
#: boxes, so region uncertainty belongs to the grounding stage.
FIELDS = ("span", "type")

Span = tuple[int, int, str]


@dataclass
class EntityUncertainty:
    """Uncertainty of one predicted entity, all values in [0, 1] (higher = more likely wrong).

    Attributes:
        total: Uncertainty of the whole prediction (span and type).
        span: Uncertainty of the boundaries alone (type ignored), when the head gives one.
        type: Uncertainty of the type given the span, when the head gives one.
    """

    total: float
    span: float | None = None
    type: float | None = None

    def fields(self) -> dict[str, float]:
        """The per-field values that are set, e.g. ``{"span": 0.1, "type": 0.4}``."""
        return {k: round(float(v), 6) for k in FIELDS if (v := getattr(self, k)) is not None}


@dataclass
class BatchContext:
    """What an uncertainty head sees of one batch.

    Attributes:
        module: The tagger being scored (in eval mode).
        batch: The collated batch (see :class:`refineg.datamodules.encoding.PostCollator`).
        emissions: ``(B, W, K)`` emission scores, already divided by the fitted temperature (if any).
        mask: ``(B, W)`` bool word mask.
        spans: Predicted ``(start, end_exclusive, type)`` spans per post (decoded from unscaled emissions).
        scale: Applies the temperature to emissions of further forward passes (identity without one).
    """

    module: TaggerModule
    batch: dict[str, Tensor]
    emissions: Tensor
    mask: Tensor
    spans: list[list[Span]]
    scale: Callable[[Tensor], Tensor] = field(default=lambda e: e)

    @property
    def labels(self) -> list[str]:
        """BIO label inventory of the tagger."""
        return self.module.labels

    @property
    def types(self) -> list[str]:
        """Entity types of the tagger."""
        return self.module.types

    @cached_property
    def token_probs(self) -> Tensor:
        """``(B, W, K)`` per-word label probabilities: CRF token marginals or the softmax of the emissions."""
        return token_probabilities(self.module, self.emissions, self.mask)


def token_probabilities(module: TaggerModule, emissions: Tensor, mask: Tensor) -> Tensor:
    """``(B, W, K)`` label probabilities per word: forward-backward marginals for a CRF head, else softmax."""
    head = module.tagger.head
    if isinstance(head, CRFHead):
        return head.crf.marginals(emissions, mask)
    return emissions.float().softmax(-1) * mask.unsqueeze(-1)


class UncertaintyHead:
    """Base class: gives every predicted entity of a batch an :class:`EntityUncertainty`.

    A head that learns from labelled posts (``needs_fit``) builds itself with :meth:`fit`, writes what it learned
    with :meth:`save` and comes back with :meth:`load` (also ``create_uncertainty_head(name, path=...)``).
    ``refineg calibrate --fit NAME=TRAIN.jsonl`` does the three for any such head.
    """

    #: Registry name (set by :func:`register_uncertainty_head`).
    name: str = ""
    #: Whether the head must be fitted on labelled posts before it can score (see :meth:`fit`).
    needs_fit: bool = False
    #: File suffix of :meth:`save`'s output.
    state_suffix: str = ".pt"

    @classmethod
    def fit(cls, module: Any, examples: Sequence[Example], **kwargs: Any) -> UncertaintyHead:
        """A head of this kind fitted on labelled ``examples`` with the trained tagger ``module``.

        Raises:
            NotImplementedError: The head learns nothing (``needs_fit`` is false).
        """
        raise NotImplementedError(f"uncertainty head {cls.name!r} has nothing to fit")

    def save(self, path: str | Path) -> None:
        """Writes what :meth:`fit` learned to ``path`` (read back by :meth:`load`).

        Raises:
            NotImplementedError: The head learns nothing.
        """
        raise NotImplementedError(f"uncertainty head {self.name!r} has nothing to save")

    @classmethod
    def load(cls, path: str | Path) -> UncertaintyHead:
        """A head of this kind from a file written by :meth:`save`.

        Raises:
            NotImplementedError: The head learns nothing.
        """
        raise NotImplementedError(f"uncertainty head {cls.name!r} has nothing to load")

    def score(self, ctx: BatchContext) -> list[list[EntityUncertainty]]:
        """One :class:`EntityUncertainty` per span of ``ctx.spans``, post by post."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Settings worth reporting next to the head's results."""
        return {}


def register_uncertainty_head(name: str) -> Callable[[type], type]:
    """Class decorator: registers an :class:`UncertaintyHead` subclass under ``name``."""

    def wrap(cls: type) -> type:
        cls.name = name
        UNCERTAINTY_HEADS.register(name)(cls)
        return cls

    return wrap


def create_uncertainty_head(name: str, **kwargs: Any) -> UncertaintyHead:
    """Builds the uncertainty head registered as ``name``.

    Raises:
        KeyError: Unknown name (the message lists the known ones).
    """
    return UNCERTAINTY_HEADS.create(name, **kwargs)


def list_uncertainty_heads(pattern: str = "*") -> list[str]:
    """Names of the registered uncertainty heads."""
    return UNCERTAINTY_HEADS.list(pattern)


def default_heads(module: Any) -> dict[str, dict[str, Any]]:
    """The heads that need nothing beyond the checkpoint, with their settings.

    Probability heads, CRF marginal (CRF taggers) and MC dropout (8 passes; rate 0.1 when the tagger was trained
    without dropout).
    """
    heads: dict[str, dict[str, Any]] = {"max_prob_mean": {}, "max_prob_min": {}, "entropy": {}}
    if isinstance(module.tagger.head, CRFHead):
        heads["crf_marginal"] = {}
    heads["mc_dropout"] = {"samples": 8}
    if not module.hparams.model.get("dropout"):
        heads["mc_dropout"]["dropout"] = 0.1
    return heads


def clamp01(x: float) -> float:
    """``x`` clipped to [0, 1] (guards against float round-off)."""
    return float(min(1.0, max(0.0, x)))


def per_post(values: list[Any], spans: list[list[Span]]) -> list[list[Any]]:
    """Splits a flat list (one value per span, posts in order) back into posts."""
    out, k = [], 0
    for post in spans:
        out.append(values[k : k + len(post)])
        k += len(post)
    return out


def label_index(labels: list[str], types: list[str]) -> dict[str, Tensor]:
    """Boolean masks over the label inventory.

    Returns:
        ``outside``, ``begin``, ``inside`` ``(K,)`` and ``type_of`` ``(T, K)`` (label k belongs to type t).
    """
    k = len(labels)
    begin = torch.tensor([lab.startswith("B-") for lab in labels])
    inside = torch.tensor([lab.startswith("I-") for lab in labels])
    type_of = torch.zeros(len(types), k, dtype=torch.bool)
    for j, lab in enumerate(labels):
        if lab != "O":
            type_of[types.index(lab[2:]), j] = True
    return {"outside": ~(begin | inside), "begin": begin, "inside": inside, "type_of": type_of}
