"""Gated cross-attention that adds image evidence to contextual token states."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ImageTextFusion"]


class ImageTextFusion(nn.Module):
    """Text tokens attend to image tokens; the result is added through a learned tanh gate.

    ``out = text + tanh(gate) * Dropout(CrossAttn(LN(text), LN(Proj(image))))`` for posts that have an image and
    ``out = text`` (the same values, bit for bit) for posts without one. The normalisation is applied to the
    attention inputs (pre-norm) rather than to the sum, and the gate starts at 0, so a freshly initialised module
    is exactly the identity: training starts from the text-only model and lets the image in gradually.

    Args:
        hidden_size: Size ``H`` of the text states.
        image_dim: Channel size ``C`` of the image tokens (``ImageEncoder.out_dim``).
        num_heads: Attention heads; must divide ``hidden_size``.
        dropout: Dropout on the attention weights and on the attended output.
    """

    def __init__(self, hidden_size: int, image_dim: int, num_heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        self.hidden_size = hidden_size
        self.image_dim = image_dim
        self.image_proj = nn.Linear(image_dim, hidden_size)
        self.image_norm = nn.LayerNorm(hidden_size)
        self.text_norm = nn.LayerNorm(hidden_size)
        self.cross_attn = nn.MultiheadAttention(hidden_size, num_heads, dropout=dropout, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(
        self,
        text_states: Tensor,
        image_tokens: Tensor | None = None,
        image_mask: Tensor | None = None,
    ) -> Tensor:
        """Fuses image tokens into the text states.

        Args:
            text_states: ``(B, S, H)`` contextual token states (queries).
            image_tokens: ``(B, N, C)`` image tokens (keys/values), or ``None`` when the batch has no images.
            image_mask: ``(B,)`` bool, True where the post has an image; ``None`` means every post has one. The
                image tokens of posts without an image are ignored (they may hold any values, NaN included).

        Returns:
            ``(B, S, H)`` fused states; rows with no image are ``text_states`` unchanged.
        """
        if image_tokens is None:
            return text_states
        batch = text_states.shape[0]
        if image_tokens.shape[0] != batch:
            raise ValueError(f"image_tokens batch {image_tokens.shape[0]} != text_states batch {batch}")
        if image_mask is None:
            image_mask = torch.ones(batch, dtype=torch.bool, device=text_states.device)
        else:
            image_mask = image_mask.to(device=text_states.device, dtype=torch.bool)
            if image_mask.shape != (batch,):
                raise ValueError(f"image_mask must have shape ({batch},), got {tuple(image_mask.shape)}")
            if not bool(image_mask.any()):
                return text_states

        keep = image_mask.view(batch, 1, 1)
        # Zero the placeholders of image-less posts so that no NaN/inf can reach the gradients through them.
        image_tokens = torch.where(
            keep, image_tokens, torch.zeros((), dtype=image_tokens.dtype, device=image_tokens.device)
        )
        memory = self.image_norm(self.image_proj(image_tokens.to(self.image_proj.weight.dtype)))
        query = self.text_norm(text_states)
        attended, _ = self.cross_attn(query, memory, memory, need_weights=False)
        fused = text_states + torch.tanh(self.gate).to(attended.dtype) * self.dropout(attended)
        return torch.where(keep, fused.to(text_states.dtype), text_states)
