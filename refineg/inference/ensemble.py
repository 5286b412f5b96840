"""Several trained taggers as one: the normalised geometric mean of their label-sequence distributions.

Members with the same encoder (tokenisation) and entity types are combined by averaging their emissions and the
parameters of their heads (for a CRF: transitions, start and end scores). A linear-chain CRF scores a labelling by
a sum of emission and transition terms, so the averaged model scores each labelling by the mean of the members'
scores, and its distribution is ``p(y) ∝ prod_k p_k(y) ** (1/K)`` exactly: one CRF again, so Viterbi decoding,
marginals, span marginals and the uncertainty heads that read emissions work on it unchanged
(not ``evidential``, which reads one tagger's word states). For a softmax head the same averaging
gives the per-word geometric mean of the members' probabilities.

``ensemble_tagger(["a.ckpt", "b.ckpt", "c.ckpt"])`` returns a ``TaggerModule`` that predicts like the ensemble
(``TaggerPredictor(module)``, ``UncertaintyEstimator(TaggerPredictor(module), heads)``); it is for inference only.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from refineg.modules.tagger import SequenceTagger
from refineg.modules.tagger_module import TaggerModule

from .predictor import load_tagger


class EnsembleTagger(nn.Module):
    """K :class:`SequenceTagger` members: mean emissions, and a head whose parameters are the members' mean.

    Args:
        members: Trained taggers over the same labels and tokenisation, without groundability heads.

    Raises:
        ValueError: Fewer than two members, members with different labels or head classes, or a groundability head.
    """

    def __init__(self, members: Sequence[SequenceTagger]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 taggers, got {len(members)}")
        first = members[0]
        for k, m in enumerate(members):
            if type(m.head) is not type(first.head) or list(m.head.labels) != list(first.head.labels):
                raise ValueError(
                    f"ensemble member {k}: its head ({type(m.head).__name__}, labels {m.head.labels}) differs from "
                    f"member 0's ({type(first.head).__name__}, labels {first.head.labels})"
                )
            if m.groundability is not None:
                raise ValueError(f"ensemble member {k} has a groundability head; ensembles tag only")
        self.members = nn.ModuleList(members)
        self.head = copy.deepcopy(first.head)
        with torch.no_grad():
            for name, param in self.head.named_parameters():
                stacked = torch.stack([dict(m.head.named_parameters())[name].detach().float() for m in members])
                param.copy_(stacked.mean(0).to(param.dtype))
        self.head.requires_grad_(False)
        self.groundability = None

    def forward(self, **batch: Tensor) -> Tensor:
        """``(B, W, K)`` mean emission scores of the members."""
        return torch.stack([m(**batch).float() for m in self.members]).mean(0)


def ensemble_tagger(checkpoints: Sequence[str | Path]) -> TaggerModule:
    """A ``TaggerModule`` (inference only, on the CPU) whose tagger is the :class:`EnsembleTagger` of the checkpoints.

    The first checkpoint's module carries the hyper-parameters (encoder, labels, ``data.max_length`` users).

    Raises:
        ValueError: Fewer than two checkpoints, or members with another encoder or other entity types.
        DataFormatError: A file that is not a tagger checkpoint (:func:`~refineg.inference.predictor.load_tagger`).
    """
    if len(checkpoints) < 2:
        raise ValueError(f"an ensemble needs at least 2 checkpoints, got {len(checkpoints)}")
    modules = [load_tagger(c) for c in checkpoints]
    carrier = modules[0]
    for path, m in zip(checkpoints, modules):
        if m.hparams.model["encoder"] != carrier.hparams.model["encoder"] or list(m.types) != list(carrier.types):
            raise ValueError(
                f"{path}: encoder {m.hparams.model['encoder']!r} / types {list(m.types)} differ from "
                f"{checkpoints[0]}'s ({carrier.hparams.model['encoder']!r} / {list(carrier.types)})"
            )
    carrier.tagger = EnsembleTagger([m.tagger for m in modules])
    return carrier.eval()
