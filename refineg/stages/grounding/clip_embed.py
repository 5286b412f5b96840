"""Frozen open_clip towers that turn image regions and entity prompts into features for region scoring."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from torchvision.transforms.functional import pil_to_tensor

from refineg.data.schema import Box
from refineg.weights import (
    BUILTIN_MODEL,
    PACKAGED,
    OpenClip,
    image_features,
    load_open_clip,
    text_features,
)

logger = logging.getLogger(__name__)


class ClipEmbedder:
    """An open_clip model used frozen, in eval mode, without gradients.

    Region features come one of two ways. Towers with a convolutional timm trunk (the built-in
    ``mobilenetv2-minilm``) run once per image, resized so its longer side is ``region_side`` pixels, and each box
    is RoI-aligned on the last feature map and averaged (Fast R-CNN style: cost independent of the box count).
    Other towers (a ViT CLIP) embed each box's crop, bilinearly resampled to the tower's input size.

    Args:
        model_name: open_clip architecture, or ``mobilenetv2-minilm`` (the default: offline, packaged weights).
        pretrained: open_clip tag, local checkpoint, ``packaged`` for the built-in model, or ``None`` (random weights,
            warned).
        allow_download: Let open_clip fetch weights that are not cached (off: never fetched silently).
        device: Torch device.
        batch_size: Crops per forward pass (crop mode).
        region_side: Longer image side (pixels) for the one-pass RoI features.
        fine_level: timm feature level (``forward_intermediates`` index) whose 2x2 RoI cells are appended to the
            pooled last-level feature (``None``: last level only); 3 is MobileNetV2's stride-16 level (96 channels).

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path and does not exist.
        ValueError: A download would be needed and ``allow_download`` is off.
    """

    def __init__(
        self,
        model_name: str = BUILTIN_MODEL,
        pretrained: str | None = PACKAGED,
        allow_download: bool = False,
        device: str = "cpu",
        batch_size: int = 64,
        region_side: int = 512,
        fine_level: int | None = 3,
    ) -> None:
        from open_clip.timm_model import TimmModel

        self.clip: OpenClip = load_open_clip(model_name, pretrained, allow_download, device)
        self.model = self.clip.model.requires_grad_(False)
        self.model_name, self.pretrained = model_name, pretrained
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.region_side = int(region_side)
        self.fine_level = fine_level
        self.roi_mode = isinstance(self.model.visual, TimmModel) and hasattr(
            self.model.visual.trunk, "forward_features"
        )
        if not self.roi_mode or not hasattr(self.model.visual.trunk, "forward_intermediates"):
            self.fine_level = None
        self._mean = torch.tensor(self.clip.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(self.clip.std).view(1, 3, 1, 1)
        with torch.inference_mode():
            probe = Image.new("RGB", (64, 48))
            self.image_dim = int(self.regions(probe, [[0, 0, 32, 32]])[1].shape[-1])
            self.text_dim = int(self.text_features([["x"]]).shape[-1])

    @property
    def label(self) -> str:
        """``"mobilenetv2-minilm packaged"``, ``"ViT-B-32 (random weights)"``, ..."""
        return self.clip.label

    def _pixels(self, image: Image.Image, side: int | None) -> tuple[torch.Tensor, float]:
        """Normalised ``(1, 3, H, W)`` pixels, resized so the longer side is ``side``; returns the scale used."""
        rgb = image.convert("RGB")
        scale = 1.0
        if side is not None:
            scale = side / max(rgb.size)
            rgb = rgb.resize((max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))), Image.BICUBIC)
        pixels = pil_to_tensor(rgb).unsqueeze(0).float() / 255.0
        return ((pixels - self._mean) / self._std).to(self.device), scale

    @torch.inference_mode()
    def image_features(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(N, D)`` features of whole images (see :func:`~refineg.weights.image_features`)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.clip.preprocess(im.convert("RGB")) for im in images[i : i + self.batch_size]])
            out.append(image_features(self.clip, pixels.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.image_dim)

    @torch.inference_mode()
    def regions(self, image: Image.Image, boxes: Sequence[Box]) -> tuple[torch.Tensor, torch.Tensor]:
        """Features of ``image`` and of each box: ``((D,), (N, D))``; boxes xyxy in original pixels."""
        rois = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.roi_mode:
            pixels, scale = self._pixels(image, self.region_side)
            trunk = self.model.visual.trunk
            if self.fine_level is not None:
                fmap, (fine,) = trunk.forward_intermediates(pixels, indices=[self.fine_level])
            else:
                fmap, fine = trunk.forward_features(pixels), None  # (1, C, h, w)
            whole = fmap.mean((2, 3))[0].float().cpu()
            rois = rois.to(fmap.device)
            pooled = roi_align(
                fmap,
                [rois],
                output_size=2,
                spatial_scale=scale * fmap.shape[-1] / pixels.shape[-1],
                sampling_ratio=2,
                aligned=True,
            ).mean((2, 3))
            if fine is not None:  # the 2x2 layout of a finer level: where inside the box things are
                whole = torch.cat([whole, fine.mean((2, 3))[0].float().cpu().repeat(4)])
                cells = roi_align(
                    fine,
                    [rois],
                    output_size=2,
                    spatial_scale=scale * fine.shape[-1] / pixels.shape[-1],
                    sampling_ratio=2,
                    aligned=True,
                )
                pooled = torch.cat([pooled, cells.flatten(1)], 1)
            return whole, pooled.float().cpu()
        whole = self.image_features([image])[0]
        if not len(rois):
            return whole, torch.zeros(0, whole.shape[-1])
        pixels, _ = self._pixels(image, None)
        side = self.clip.image_size
        crops = []
        for i in range(0, len(rois), self.batch_size):
            batch = roi_align(
                pixels,
                [rois[i : i + self.batch_size].to(pixels.device)],
                output_size=side,
                spatial_scale=1.0,
                sampling_ratio=2,
                aligned=True,
            )
            crops.append(image_features(self.clip, batch).float().cpu())
        return whole, torch.cat(crops)

    @torch.inference_mode()
    def text_features(self, prompt_sets: Sequence[Sequence[str]]) -> torch.Tensor:
        """One feature ``(E, D)`` per set of prompts: the mean of its prompts' features."""
        if not prompt_sets:
            return torch.zeros(0, getattr(self, "text_dim", 0))
        flat = [p for s in prompt_sets for p in s]
        hf = getattr(self.clip.tokenizer, "tokenizer", None)  # open_clip's HFTokenizer pads to its context length
        order = sorted(range(len(flat)), key=lambda i: len(flat[i]))  # similar lengths share a batch
        parts = []
        for lo in range(0, len(order), self.batch_size):
            texts = [flat[i] for i in order[lo : lo + self.batch_size]]
            if hf is not None:  # pad to the longest prompt of the batch only
                tokens = hf(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=self.clip.tokenizer.context_length,
                    return_tensors="pt",
                ).input_ids
            else:
                tokens = self.clip.tokenizer(texts)
            parts.append(text_features(self.clip, tokens.to(self.device)).float().cpu())
        feats = torch.empty_like(torch.cat(parts))
        feats[order] = torch.cat(parts)
        return torch.stack([chunk.mean(0) for chunk in feats.split([len(s) for s in prompt_sets])])

    @torch.inference_mode()
    def cosine(self, regions: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """``(N, E)`` cosine similarity of regions ``(N, D)`` and texts ``(E, D)`` after the model's projections.

        Timm towers project the pooled last level only (the finer-level cells are left out).

        This is the untrained scorer; it is meaningful only for a pretrained CLIP.
        """
        from open_clip.hf_model import HFTextEncoder
        from open_clip.timm_model import TimmModel

        if isinstance(self.model.visual, TimmModel):
            regions = self.model.visual.head(regions[..., : self.model.visual.trunk.num_features].to(self.device))
        if isinstance(getattr(self.model, "text", None), HFTextEncoder):
            text = self.model.text.proj(text.to(self.device))
        return (F.normalize(regions.float(), dim=-1) @ F.normalize(text.float(), dim=-1).T).cpu()
