"""The small tagger: backbone subword states -> first-subword word states (+ casing) -> tagging head.

An optional groundability head scores entity spans on the same subword states (see
:mod:`refineg.modules.groundability`).
"""

from __future__ import annotations

from torch import Tensor, nn

from refineg.datamodules.encoding import CASING
from refineg.modules.groundability import subword_spans
from refineg.modules.heads import TaggingHead


class SequenceTagger(nn.Module):
    """Word-level tagger over any backbone.

    Args:
        backbone: Module mapping ``input_ids, attention_mask[, pixel_values, image_mask]`` to ``(B, S, H)``; has
            ``hidden_size``.
        head: Tagging head (emissions, loss, decoding).
        casing: Add a learned casing-class embedding to each word state (for uncased encoders).
        dropout: Dropout on word states.
        groundability: Optional groundability head (``states, attention_mask, subword spans, types -> logits``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: TaggingHead,
        casing: bool = True,
        dropout: float = 0.1,
        groundability: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.groundability = groundability
        self.casing = nn.Embedding(len(CASING), backbone.hidden_size, padding_idx=0) if casing else None
        if self.casing is not None:
            nn.init.normal_(self.casing.weight, std=0.02)
            self.casing.weight.data[0].zero_()
        self.dropout = nn.Dropout(dropout)

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        word_index: Tensor,
        casing: Tensor | None = None,
        pixel_values: Tensor | None = None,
        image_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        **_: object,
    ) -> tuple[Tensor, Tensor]:
        """Returns ``(B, S, H)`` subword states and ``(B, W, H)`` word states (first subword + casing).

        Packed batches (``segment_ids`` given) return the ``(R, L, H)`` states of the packed rows, and
        ``word_index`` indexes their flattened ``R * L`` positions.

        Raises:
            ValueError: A packed batch for a tagger with a groundability head (it reads whole posts' states).
        """
        extra = {} if pixel_values is None else {"pixel_values": pixel_values, "image_mask": image_mask}
        if segment_ids is not None:
            if self.groundability is not None:
                raise ValueError("the groundability head needs one post per row: set data.pack_length=0")
            extra.update(position_ids=position_ids, segment_ids=segment_ids)
            if cu_seqlens is not None:
                extra["cu_seqlens"] = cu_seqlens
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if segment_ids is not None:
            words = states.reshape(-1, states.shape[-1])[word_index]
        else:
            words = states.gather(1, word_index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
        if self.casing is not None and casing is not None:
            words = words + self.casing(casing).to(words.dtype)
        return states, words

    def word_states(self, **batch: Tensor) -> Tensor:
        """Returns ``(B, W, H)`` word states (first subword + casing), before dropout and the head."""
        return self.encode(**batch)[1]

    def groundability_logits(
        self, states: Tensor, attention_mask: Tensor, word_index: Tensor, word_end: Tensor, spans: Tensor, types: Tensor
    ) -> Tensor:
        """``(N,)`` groundability logits of word spans ``(N, 3)`` ``[post, start, end_exclusive]`` of types ``(N,)``.

        Raises:
            RuntimeError: The tagger has no groundability head.
        """
        if self.groundability is None:
            raise RuntimeError("this tagger has no groundability head (train with model.groundability=true)")
        return self.groundability(states, attention_mask, subword_spans(word_index, word_end, spans), types)

    def forward(self, **batch: Tensor) -> Tensor:
        """Returns ``(B, W, K)`` emission scores for the words of each post (keys as :meth:`encode` takes)."""
        return self.head(self.dropout(self.word_states(**batch)))
