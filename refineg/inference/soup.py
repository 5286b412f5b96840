"""Several trained taggers as one: the uniform average of their weights (a "model soup").

Taggers fine-tuned from the same starting weights usually stay close enough in weight space that their average tags
as well as, or better than, each of them, at the inference cost of one tagger. The encoder starts from the same
pretrained weights in every run; the layers that do not (casing embedding, emission layer, CRF) start the same only
when the runs share ``model.init_seed``. Members trained without it may average badly: score the soup on dev before
using it. This is not an ensemble (:mod:`refineg.inference.ensemble` runs every member at inference).

``write_soup(["a.ckpt", "b.ckpt"], "soup.ckpt")`` writes an inference checkpoint that ``refineg predict``,
``load_tagger`` and ``model.init_from`` read like any other; :func:`greedy_order` adds members one by one while a
dev score does not drop (Wortsman et al., 2022).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from refineg.config import ModelConfig
from refineg.modules.backbones import BACKBONES
from refineg.modules.tagger_module import BACKBONE_KEY_ALIASES, factory_parameters

from .predictor import read_tagger_checkpoint

logger = logging.getLogger(__name__)

#: Hyper-parameters every member must share: they decide the tagger's layers and the meaning of its outputs.
SAME = ("backbone", "encoder", "head", "casing", "backbone_kwargs", "head_kwargs", "groundability")
#: Checkpoint entries that belong to one training run (resuming, the run's own best score), not to the average.
RUN_STATE = ("optimizer_states", "lr_schedulers", "loops", "callbacks", "val_mner_f1_best", "embedding_rows_active")
#: With a groundability head, these decide it too (its width is checked with the weights' shapes).
GROUNDABILITY_SAME = ("groundability_head", "groundability_kwargs")


def architecture(model: dict[str, Any]) -> dict[str, Any]:
    """The ``model.*`` values that soup members must share, from a checkpoint's ``model`` hyper-parameters.

    :data:`SAME`, the short image-tower names that the backbone factory takes (``image_model``, ``image_size``,
    ``image_pretrained``, ... but not ``freeze_image``, which only decides what trains) and, with a groundability
    head, :data:`GROUNDABILITY_SAME`. A key a checkpoint lacks (written before it existed) has its
    :class:`~refineg.config.ModelConfig` default.
    """
    accepted = factory_parameters(BACKBONES.get(model["backbone"]))  # None: the factory takes any keyword
    keys = [*SAME, *(k for k in BACKBONE_KEY_ALIASES if k != "freeze_image" and (accepted is None or k in accepted))]
    if model.get("groundability"):
        keys += GROUNDABILITY_SAME
    defaults = ModelConfig()
    return {k: model.get(k, getattr(defaults, k, None)) for k in keys}


def soup_checkpoint(checkpoints: Sequence[str | Path]) -> dict[str, Any]:
    """The checkpoint dict whose weights are the mean of the members' (floating-point tensors averaged in float32).

    The first member's hyper-parameters come along; the training state (optimiser, schedulers, loops, callbacks)
    does not, so a soup is for inference and for ``model.init_from``.

    Raises:
        ValueError: No members, or a member of another architecture, other entity types, other weight
            names or shapes, or other integer buffers (batch-norm step counters aside: the first member's stay).
        DataFormatError: A file that is not a tagger checkpoint
            (:func:`~refineg.inference.predictor.read_tagger_checkpoint`).
    """
    if not checkpoints:
        raise ValueError("a soup needs checkpoints, got none")
    first = read_tagger_checkpoint(checkpoints[0])
    model0, types0 = first["hyper_parameters"]["model"], first["hyper_parameters"]["types"]
    weights0 = first["state_dict"]
    total = {k: v.float().clone() if v.is_floating_point() else v for k, v in weights0.items()}
    init_seeds = {model0.get("init_seed")}
    arch0 = architecture(model0)
    for path in checkpoints[1:]:
        ckpt = read_tagger_checkpoint(path)
        model, types = ckpt["hyper_parameters"]["model"], ckpt["hyper_parameters"]["types"]
        arch = architecture(model)
        for key in dict.fromkeys([*arch0, *arch]):
            if arch.get(key) != arch0.get(key):
                raise ValueError(
                    f"{path}: model.{key}={arch.get(key)!r}, but {checkpoints[0]} has {arch0.get(key)!r}; "
                    "a soup averages taggers of one architecture"
                )
        if list(types) != list(types0):
            raise ValueError(f"{path}: entity types {list(types)} differ from {checkpoints[0]}'s {list(types0)}")
        weights = ckpt["state_dict"]
        if weights.keys() != weights0.keys():
            raise ValueError(f"{path}: weight names differ from {checkpoints[0]}'s ({len(weights)} vs {len(weights0)})")
        for key, value in weights.items():
            if value.shape != weights0[key].shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, {tuple(weights0[key].shape)} before")
            if value.is_floating_point():
                total[key] += value.float()
            elif key.endswith(".num_batches_tracked"):
                continue  # a batch-norm step counter (the statistics are averaged): the first member's stays
            elif not torch.equal(value, weights0[key]):
                raise ValueError(f"{path}: {key} (not a weight: {value.dtype}) differs from {checkpoints[0]}'s")
        init_seeds.add(model.get("init_seed"))
    if None in init_seeds or len(init_seeds) > 1:
        logger.warning(
            "soup members were not all trained with one model.init_seed (%s): their new layers started from other "
            "weights, and the average may tag badly; score it on dev",
            sorted(str(s) for s in init_seeds),
        )
    n = len(checkpoints)
    first["state_dict"] = {
        k: (v / n).to(weights0[k].dtype) if weights0[k].is_floating_point() else v for k, v in total.items()
    }
    for key in RUN_STATE:
        first.pop(key, None)
    first["soup"] = {"members": [str(c) for c in checkpoints]}
    return first


def check_out(out: str | Path) -> Path:
    """``out`` as a path a soup can be written to.

    Raises:
        ValueError: ``out`` is a folder.
    """
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"{out} is a folder: name the checkpoint file to write")
    return out


def write_soup(checkpoints: Sequence[str | Path], out: str | Path) -> Path:
    """Writes :func:`soup_checkpoint` of ``checkpoints`` to ``out`` (folders created); returns ``out``.

    Raises:
        ValueError: ``out`` is a folder (:func:`check_out`), or as :func:`soup_checkpoint`.
    """
    out = check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(soup_checkpoint(checkpoints), tmp)
    tmp.replace(out)
    return out


def greedy_order(
    checkpoints: Sequence[str | Path], score: Callable[[Path], float], work: str | Path
) -> tuple[list[str], list[dict[str, Any]]]:
    """Greedy soup: members in order of their own score, each kept when the soup's score does not drop.

    Args:
        checkpoints: Candidate members.
        score: A checkpoint file's score, higher is better (e.g. dev MNER F1).
        work: Folder for the trial soups.

    Returns:
        The kept members, and one record per candidate (its own score, the soup's with it, whether it was kept).
        The scores select the members, so a soup's score on the same data is optimistic.
    """
    work = Path(work)
    own = {str(c): score(Path(c)) for c in checkpoints}
    ranked = sorted(own, key=lambda c: -own[c])
    kept, best, log = [ranked[0]], own[ranked[0]], [{"checkpoint": ranked[0], "own": own[ranked[0]], "kept": True}]
    for cand in ranked[1:]:
        trial = work / f"greedy-{len(log)}.ckpt"
        try:
            value = score(write_soup([*kept, cand], trial))
        finally:
            trial.unlink(missing_ok=True)
        keep = value >= best
        log.append({"checkpoint": cand, "own": own[cand], "soup": value, "kept": keep})
        if keep:
            kept, best = [*kept, cand], value
    return kept, log
