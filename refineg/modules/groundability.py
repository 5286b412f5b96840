"""Groundability heads: does an entity appear in the post's image at all? Predicted from the text alone.

About 60% of Twitter-GMNER entities have no box, so answering "none" before any region scoring is worth a lot. A
head reads the tagger's encoder states over an entity's span (plus its type and the whole post) and returns one
logit per entity; ``sigmoid(logit)`` is :attr:`refineg.data.schema.Entity.groundable`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from refineg.registry import Registry

GROUNDABILITY_HEADS = Registry("groundability head")


def subword_spans(word_index: Tensor, word_end: Tensor, rows: Tensor) -> Tensor:
    """Maps word spans to subword spans.

    Args:
        word_index: ``(B, W)`` first-subword position of each word.
        word_end: ``(B, W)`` position after the last subword of each word.
        rows: ``(N, 3)`` ``[post, start_word, end_word_exclusive]``; spans must lie inside the kept words.

    Returns:
        ``(N, 3)`` ``[post, first_subword, end_subword_exclusive]`` (at least one subword long).
    """
    if rows.numel() == 0:
        return rows.new_zeros((0, 3))
    b, s, e = rows.unbind(-1)
    lo = word_index[b, s]
    hi = torch.maximum(word_end[b, e - 1], lo + 1)
    return torch.stack([b, lo, hi], -1)


@GROUNDABILITY_HEADS.register("span_mlp")
class SpanGroundabilityHead(nn.Module):
    """Span pooling + type embedding -> MLP -> one logit per entity.

    The span is pooled as ``[first subword; last subword; mean of its subwords; mean of the post]`` (the post mean
    is the sentence embedding MiniLM was trained for: whether a name is pictured depends on the whole tweet).

    Args:
        hidden_size: Width of the encoder states ``H``.
        num_types: Entity types (ids index :attr:`type_embedding`).
        hidden: Width of the MLP's hidden layer.
        type_dim: Width of the type embedding.
        dropout: Dropout on the pooled features and the hidden layer.
    """

    def __init__(
        self, hidden_size: int, num_types: int, hidden: int = 256, type_dim: int = 32, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.type_embedding = nn.Embedding(num_types, type_dim)
        self.mlp = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(4 * hidden_size + type_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, states: Tensor, attention_mask: Tensor, spans: Tensor, types: Tensor) -> Tensor:
        """Scores entity spans.

        Args:
            states: ``(B, S, H)`` encoder subword states.
            attention_mask: ``(B, S)`` 1 on real subwords.
            spans: ``(N, 3)`` ``[post, first_subword, end_subword_exclusive]`` (see :func:`subword_spans`).
            types: ``(N,)`` type ids.

        Returns:
            ``(N,)`` logits; ``sigmoid`` gives the probability that the entity has a box.
        """
        if spans.shape[0] == 0:
            return states.new_zeros((0,))
        b, lo, hi = spans.unbind(-1)
        post = states[b]  # (N, S, H)
        pos = torch.arange(states.shape[1], device=states.device)
        in_span = ((pos >= lo[:, None]) & (pos < hi[:, None])).to(states.dtype)  # (N, S)
        span_mean = (in_span.unsqueeze(-1) * post).sum(1) / in_span.sum(1, keepdim=True).clamp(min=1)
        real = attention_mask[b].to(states.dtype)
        post_mean = (real.unsqueeze(-1) * post).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        rows = torch.arange(len(b), device=states.device)
        feats = torch.cat(
            [post[rows, lo], post[rows, hi - 1], span_mean, post_mean, self.type_embedding(types).to(states.dtype)], -1
        )
        return self.mlp(feats).squeeze(-1)


def create_groundability_head(name: str, **kwargs) -> nn.Module:
    """Builds the groundability head registered as ``name`` (``hidden_size=``, ``num_types=``, ...)."""
    return GROUNDABILITY_HEADS.create(name, **kwargs)


def list_groundability_heads() -> list[str]:
    """Names of the registered groundability heads."""
    return GROUNDABILITY_HEADS.list()
