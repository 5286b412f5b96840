"""Embeddings for context selection: a sentence encoder (mean pooling) and an open_clip image tower.

Both return L2-normalised float32 rows, so a matrix product of two embedding matrices gives cosine similarities.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from refineg.data.images import load_image

log = logging.getLogger(__name__)


class TextEncoder:
    """Sentence embeddings: mean of the last hidden states over real (non-padding) subwords, L2-normalised.

    Args:
        name: Local folder, hub name, or ``minilm`` (the packaged all-MiniLM-L6-v2, ReFineG's encoder).
        max_length: Subwords per string (longer strings are truncated).
        batch_size: Strings per forward pass.
        device: Torch device.
    """

    def __init__(self, name: str = "minilm", max_length: int = 128, batch_size: int = 32, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        from refineg.weights import resolve_encoder

        self.name = name
        self.path = resolve_encoder(name)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path).to(device).eval()
        self.max_length, self.batch_size, self.device = max_length, batch_size, device
        self.dim = int(self.model.config.hidden_size)
        self.label = f"text {name} (mean pooling, dim {self.dim})"

    @property
    def fingerprint(self) -> str:
        """Identifies the encoder's weights and settings (part of the index fingerprint)."""
        h = hashlib.sha256(f"{self.name}|{self.max_length}|{self.dim}".encode())
        for p in list(self.model.parameters())[:4]:  # a cheap weight check: differs between checkpoints
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()[:16]

    @torch.no_grad()
    def encode(self, texts: Sequence[str], progress: bool = False) -> Tensor:
        """``texts (N,) -> (N, dim)`` normalised embeddings (``(0, dim)`` for no text)."""
        out = []
        for lo in tqdm(
            range(0, len(texts), self.batch_size), desc="encode text", unit="batch", disable=not progress, leave=False
        ):
            batch = self.tokenizer(
                list(texts[lo : lo + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state  # (B, T, dim)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out.append(torch.nn.functional.normalize(mean.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.dim)


class ImageEncoder:
    """Image embeddings for context selection, L2-normalised.

    The pooled trunk of the built-in ``mobilenetv2-minilm`` (ImageNet MobileNetV2), or an open_clip model's
    projected image embedding.

    Args:
        model: ``mobilenetv2-minilm`` or an open_clip architecture (``ViT-L-14``, ...).
        pretrained: ``packaged`` (the built-in model), an open_clip tag or a local checkpoint (must exist); ``None``
            = random weights, which the ``label`` says ("random weights").
        batch_size: Images per forward pass.
        device: Torch device.
    """

    def __init__(
        self,
        model: str = "mobilenetv2-minilm",
        pretrained: str | None = "packaged",
        batch_size: int = 32,
        device: str = "cpu",
    ):
        from refineg.weights import load_open_clip

        self.clip = load_open_clip(model, pretrained, allow_download=False, device=device)
        self.model = self.clip.model
        self.preprocess = self.clip.preprocess
        self.model_name, self.pretrained = model, pretrained
        self.batch_size, self.device = batch_size, device
        self.label = f"image open_clip {model} ({pretrained if pretrained else 'random weights'})"
        if not pretrained:
            log.warning(
                "context selection: the open_clip %s image tower has random weights; image similarity is "
                "not meaningful (set selector.image_pretrained)",
                model,
            )

    @property
    def fingerprint(self) -> str:
        """Identifies the tower and its weights (random weights are seeded by nothing: hash a few of them)."""
        h = hashlib.sha256(f"{self.model_name}|{self.pretrained}".encode())
        for p in list(self.model.visual.parameters())[:4]:
            h.update(p.detach().float().cpu().numpy().tobytes()[:4096])
        return h.hexdigest()[:16]

    @torch.no_grad()
    def encode(self, images: Sequence[Image.Image | str | Path], progress: bool = False) -> Tensor:
        """``images (N,) -> (N, dim)`` normalised embeddings; paths are opened one batch at a time."""
        from refineg.weights import image_features

        out = []
        for lo in tqdm(
            range(0, len(images), self.batch_size),
            desc="encode images",
            unit="batch",
            disable=not progress,
            leave=False,
        ):
            pixels = torch.stack([self.preprocess(load_image(img)) for img in images[lo : lo + self.batch_size]])
            emb = image_features(self.clip, pixels.to(self.device))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
        if out:
            return torch.cat(out)
        return torch.zeros(0, 0)
