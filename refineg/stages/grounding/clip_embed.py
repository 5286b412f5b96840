"""Frozen open_clip towers that embed image crops and entity prompts into the joint space."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from PIL import Image

from refineg.data.schema import Box

logger = logging.getLogger(__name__)

_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.lower().endswith(_CHECKPOINT_SUFFIXES)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


class ClipEmbedder:
    """An open_clip model used frozen, in eval mode, without gradients.

    Args:
        model_name: open_clip architecture (``"ViT-B-32"``, a name added with ``open_clip.add_model_config``,
            ``"hf-hub:org/repo"`` or ``"local-dir:/path"``).
        pretrained: open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b79k"``) or a local checkpoint path
            (must exist). ``None`` gives random weights (a warning says so) and never downloads.
        allow_download: Let open_clip fetch a pretrained tag or ``hf-hub:`` model that is not cached. Without it a
            tag or hub name is refused unless ``HF_HUB_OFFLINE=1`` (cache only), so weights are never fetched
            silently.
        device: Torch device.
        batch_size: Crops per forward pass.

    Raises:
        FileNotFoundError: ``pretrained`` looks like a path and does not exist.
        ValueError: A download would be needed and ``allow_download`` is off.
    """

    def __init__(self, model_name: str = "ViT-B-32", pretrained: str | None = None, allow_download: bool = False,
                 device: str = "cpu", batch_size: int = 64) -> None:
        import open_clip

        remote = model_name.startswith("hf-hub:") or (pretrained is not None and not _looks_like_path(pretrained))
        if remote and not allow_download and not _hub_offline():
            raise ValueError(f"open_clip {model_name!r} with pretrained={pretrained!r} may download weights; pass "
                             "a local checkpoint path, set HF_HUB_OFFLINE=1 to use the cache only, or "
                             "allow_download=true")
        if pretrained and _looks_like_path(pretrained) and not os.path.isfile(pretrained):
            raise FileNotFoundError(f"open_clip checkpoint not found: {pretrained!r} (nothing is downloaded instead)")
        if pretrained is None and not model_name.startswith(("hf-hub:", "local-dir:")):
            logger.warning("open_clip %s has RANDOM weights (pretrained=None): region scores are meaningless except "
                           "for timing and tests", model_name)
        extra = {"require_pretrained": True} if pretrained else {}
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name, pretrained=pretrained, pretrained_image=False, pretrained_text=False, device=device, **extra)
        self.model = model.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        self.embed_dim = int(self.model.text_projection.shape[-1] if getattr(self.model, "text_projection", None)
                             is not None else self.encode_texts(["x"]).shape[-1])

    @property
    def label(self) -> str:
        """``"ViT-B-32 (random weights)"``, ``"ViT-B-32 openai"``, ..."""
        return f"{self.model_name} " + (self.pretrained or "(random weights)")

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised embeddings ``(N, D)`` of RGB images (any size; the model's preprocessing resizes)."""
        out = []
        for i in range(0, len(images), self.batch_size):
            pixels = torch.stack([self.preprocess(im) for im in images[i : i + self.batch_size]]).to(self.device)
            out.append(self.model.encode_image(pixels, normalize=True).float().cpu())
        if not out:
            return torch.zeros(0, self.embed_dim)
        return torch.cat(out)

    def encode_crops(self, image: Image.Image, boxes: Sequence[Box]) -> torch.Tensor:
        """Embeddings ``(N, D)`` of ``image`` cropped to ``boxes`` (xyxy, original pixels)."""
        return self.encode_images([image.crop(tuple(box)) for box in boxes])

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised embeddings ``(T, D)`` of texts (truncated to the model's context length)."""
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[i : i + self.batch_size])).to(self.device)
            out.append(self.model.encode_text(tokens, normalize=True).float().cpu())
        return torch.cat(out)

    def encode_prompt_sets(self, prompt_sets: Sequence[Sequence[str]]) -> torch.Tensor:
        """One embedding ``(E, D)`` per set of prompts: the normalised mean of its prompts' embeddings."""
        if not prompt_sets:
            return torch.zeros(0, self.embed_dim)
        sizes = [len(s) for s in prompt_sets]
        flat = self.encode_texts([p for s in prompt_sets for p in s])
        means = torch.stack([chunk.mean(0) for chunk in flat.split(sizes)])
        return torch.nn.functional.normalize(means, dim=-1)
