"""Image encoders that turn a batch of images into a sequence of visual tokens.

Every encoder maps ``images: (B, 3, H, W)`` (already preprocessed by its own :attr:`ImageEncoder.transform`) to
``tokens: (B, N, C)`` with ``C == encoder.out_dim``; the number of tokens ``N`` depends on the architecture and
the input size (patch tokens of a ViT, flattened cells of a CNN feature grid, or a single pooled token).

Encoders are built by name from :data:`IMAGE_ENCODERS`::

    encoder = create_image_encoder("timm", model_name="vit_base_patch16_224", pretrained=True)
    tokens = encoder(torch.stack([encoder.transform(img) for img in pil_images]))

Weights are only loaded when asked for (``pretrained=True`` / a tag / a checkpoint path); a checkpoint path that
does not exist raises :class:`FileNotFoundError` before anything is built.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from refineg.registry import Registry

__all__ = [
    "IMAGE_ENCODERS",
    "ImageEncoder",
    "OpenClipImageEncoder",
    "TimmImageEncoder",
    "create_image_encoder",
    "list_image_encoders",
]

log = logging.getLogger(__name__)

#: Registry of image encoder classes, keyed by backend name (``"timm"``, ``"open_clip"``).
IMAGE_ENCODERS = Registry("image encoder")


def create_image_encoder(name: str, **kwargs: Any) -> ImageEncoder:
    """Builds the image encoder registered as ``name`` (see :func:`list_image_encoders`) with ``kwargs``.

    Raises:
        KeyError: ``name`` is not registered; the message lists the known encoders.
    """
    return IMAGE_ENCODERS.create(name, **kwargs)


def list_image_encoders(pattern: str = "*") -> list[str]:
    """Sorted names of the registered image encoders that match the shell-style ``pattern``."""
    return IMAGE_ENCODERS.list(pattern)


def _require_file(path: str, what: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} checkpoint not found: {path!r} (no weights are downloaded in its place)")


class ImageEncoder(nn.Module):
    """Base class: a vision tower wrapped to return token features, optionally frozen.

    A frozen encoder has no trainable parameters, runs without autograd and stays in eval mode even when the
    surrounding model is put in train mode (so BatchNorm statistics and dropout are never touched, and a batch of
    one image works).

    Attributes:
        out_dim: Channel size ``C`` of the returned tokens.
        transform: Eval-mode preprocessing, ``PIL.Image -> Tensor (3, H, W)`` float.
        frozen: Whether the tower is frozen.
    """

    out_dim: int
    transform: Callable[[Any], Tensor]

    def __init__(self, freeze: bool) -> None:
        super().__init__()
        self.frozen = freeze

    def _freeze(self, tower: nn.Module) -> None:
        if self.frozen:
            tower.requires_grad_(False)
            tower.eval()

    def train(self, mode: bool = True) -> ImageEncoder:
        """Sets train/eval mode like :meth:`nn.Module.train`, but a frozen tower always stays in eval mode."""
        super().train(mode)
        if self.frozen:
            for child in self.children():
                child.eval()
        return self

    def encode(self, images: Tensor) -> Tensor:
        """Backend-specific forward: ``images (B, 3, H, W) -> tokens (B, N, C)``."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """Encodes a batch of preprocessed images.

        Args:
            images: ``(B, 3, H, W)`` float images, as produced by stacking :attr:`transform` outputs.

        Returns:
            ``(B, N, out_dim)`` token features.
        """
        param = next(self.parameters(), None)
        if param is not None and images.is_floating_point():
            images = images.to(device=param.device, dtype=param.dtype)
        if self.frozen:
            with torch.no_grad():
                return self.encode(images)
        return self.encode(images)


@IMAGE_ENCODERS.register("timm")
class TimmImageEncoder(ImageEncoder):
    """Any timm backbone, returning the features of ``forward_features`` as tokens.

    CNN feature maps ``(B, C, h, w)`` (or ``(B, h, w, C)`` for NHWC models such as Swin) are flattened to
    ``(B, h*w, C)``; transformer outputs ``(B, T, C)`` are returned as they are, prefix tokens (class/register
    tokens, counted in :attr:`num_prefix_tokens`) first.

    Args:
        model_name: timm model name (``"resnet50"``, ``"vit_base_patch16_224"``, ``"test_vit"``, ...).
        pretrained: Load timm's pretrained weights for ``model_name`` (may download unless cached). A string is
            read as a config value: ``"true"`` / ``"false"`` (any case), else a ``checkpoint_path``.
        checkpoint_path: Local weights file to load instead of timm's (classifier weights are dropped);
            implies ``pretrained``. Must exist. ``"imagenet-mobilenetv2"`` loads the packaged ImageNet
            MobileNetV2 weights (:mod:`refineg.weights`) into ``mobilenetv2_100`` offline.
        img_size: Input resolution. Passed to models that take ``img_size`` (ViTs resize their position
            embeddings); for fully convolutional models only the transform uses it.
        freeze: Freeze the tower (no gradients, always in eval mode).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool | str | None = False,
        checkpoint_path: str | None = None,
        img_size: int | None = None,
        freeze: bool = True,
    ) -> None:
        super().__init__(freeze)
        if isinstance(pretrained, str):
            flag = pretrained.lower()
            if flag not in ("true", "false"):
                checkpoint_path = checkpoint_path or pretrained
            pretrained = flag == "true"
        pretrained = bool(pretrained)
        import timm
        from timm.data import create_transform, resolve_data_config

        from refineg.weights import MOBILENET_TAG, load_timm_pretrained

        kwargs: dict[str, Any] = {"num_classes": 0}
        packaged = checkpoint_path == MOBILENET_TAG
        if packaged:
            checkpoint_path, pretrained = None, False
        if checkpoint_path is not None:
            _require_file(checkpoint_path, f"timm {model_name!r}")
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = {"file": checkpoint_path}
        if img_size is not None:
            try:
                self.model = timm.create_model(model_name, pretrained=pretrained, img_size=img_size, **kwargs)
            except TypeError as err:
                if "img_size" not in str(err):
                    raise
                # Convolutional models have no img_size argument and accept any resolution.
                self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)
        else:
            self.model = timm.create_model(model_name, pretrained=pretrained, **kwargs)

        if packaged:
            load_timm_pretrained(self.model, MOBILENET_TAG)
        self.model_name = model_name
        self.out_dim = int(self.model.num_features)
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0) or 0)
        self._channels_last_output = str(getattr(self.model, "output_fmt", "NCHW")).upper() == "NHWC"

        overrides: dict[str, Any] = {}
        if img_size is not None:
            overrides["input_size"] = (3, img_size, img_size)
        self.data_config = resolve_data_config(overrides, model=self.model)
        self.transform = create_transform(**self.data_config, is_training=False)
        self._freeze(self.model)

    def encode(self, images: Tensor) -> Tensor:
        """``images (B, 3, H, W) -> tokens (B, N, out_dim)`` from ``forward_features``."""
        features = self.model.forward_features(images)
        if isinstance(features, (tuple, list)):
            features = features[0]
        if features.dim() == 4:
            if self._channels_last_output:
                return features.flatten(1, 2)
            return features.flatten(2).transpose(1, 2)
        if features.dim() == 3:
            return features
        if features.dim() == 2:
            return features.unsqueeze(1)
        raise ValueError(f"unexpected forward_features shape {tuple(features.shape)} from timm {self.model_name!r}")


@IMAGE_ENCODERS.register("open_clip")
class OpenClipImageEncoder(ImageEncoder):
    """The visual tower of an open_clip model (the text tower is discarded).

    For ViT towers the transformer's patch tokens (after the final LayerNorm, before the projection to the joint
    embedding space) are returned, ``(B, grid_h * grid_w, width)``; towers that cannot return tokens (modified
    ResNet, timm towers) return their pooled, projected embedding as a single token ``(B, 1, embed_dim)``.

    Args:
        model_name: open_clip architecture (``"ViT-B-32"``, a name added with ``open_clip.add_model_config``,
            or ``"hf-hub:org/repo"`` / ``"local-dir:/path"``).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``; may download unless cached)
            or a local checkpoint path (must exist). ``None`` gives random weights and never downloads.
        freeze: Freeze the tower (no gradients, always in eval mode).

    Raises:
        FileNotFoundError: ``pretrained`` looks like a file path and does not exist.
        RuntimeError: open_clip could not load the requested weights.
    """

    def __init__(self, model_name: str, pretrained: str | None = None, freeze: bool = True) -> None:
        super().__init__(freeze)
        from refineg.weights import load_open_clip

        # A tag may be fetched here as timm's pretrained=True may be (the tagger's documented behaviour).
        clip = load_open_clip(model_name, pretrained, allow_download=True)
        model, preprocess = clip.model, clip.preprocess
        self.model_name = model_name
        self.visual: nn.Module = model.visual
        del model
        self.transform = preprocess

        self.returns_tokens = hasattr(self.visual, "output_tokens")
        if self.returns_tokens:
            self.visual.output_tokens = True
        self.out_dim = self._token_dim()
        self._freeze(self.visual)

    def _token_dim(self) -> int:
        visual = self.visual
        if self.returns_tokens:
            if getattr(visual, "attn_pool", None) is not None:
                return int(visual.output_dim)
            transformer = getattr(visual, "transformer", None)
            if transformer is not None and hasattr(transformer, "width"):
                return int(transformer.width)
        elif isinstance(getattr(visual, "output_dim", None), int):
            return int(visual.output_dim)
        # Unknown tower layout: measure it.
        size = getattr(visual, "image_size", (224, 224))
        size = (size, size) if isinstance(size, int) else tuple(size)
        was_training = visual.training
        visual.eval()
        with torch.no_grad():
            dim = self.encode(torch.zeros(1, 3, *size)).shape[-1]
        visual.train(was_training)
        return int(dim)

    def encode(self, images: Tensor) -> Tensor:
        """``images (B, 3, H, W) -> tokens (B, N, out_dim)`` from the visual tower."""
        output = self.visual(images)
        if isinstance(output, (tuple, list)):
            tokens = output[1]
            if tokens is not None and tokens.dim() == 3:
                return tokens
            output = output[0]
        return output.unsqueeze(1) if output.dim() == 2 else output
