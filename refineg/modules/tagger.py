"""The small tagger: backbone subword states -> first-subword word states (+ casing) -> tagging head."""

from __future__ import annotations

from torch import Tensor, nn

from refineg.datamodules.encoding import CASING
from refineg.modules.heads import TaggingHead


class SequenceTagger(nn.Module):
    """Word-level tagger over any backbone.

    Args:
        backbone: Module mapping ``input_ids, attention_mask[, pixel_values, image_mask]`` to ``(B, S, H)``; has
            ``hidden_size``.
        head: Tagging head (emissions, loss, decoding).
        casing: Add a learned casing-class embedding to each word state (for uncased encoders).
        dropout: Dropout on word states.
    """

    def __init__(self, backbone: nn.Module, head: TaggingHead, casing: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.casing = nn.Embedding(len(CASING), backbone.hidden_size, padding_idx=0) if casing else None
        if self.casing is not None:
            nn.init.normal_(self.casing.weight, std=0.02)
            self.casing.weight.data[0].zero_()
        self.dropout = nn.Dropout(dropout)

    def word_states(self, input_ids: Tensor, attention_mask: Tensor, word_index: Tensor,
                    casing: Tensor | None = None, pixel_values: Tensor | None = None,
                    image_mask: Tensor | None = None, **_: object) -> Tensor:
        """Returns ``(B, W, H)`` word states (first subword + casing), before dropout and the head."""
        extra = {} if pixel_values is None else {"pixel_values": pixel_values, "image_mask": image_mask}
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        words = states.gather(1, word_index.unsqueeze(-1).expand(-1, -1, states.shape[-1]))
        if self.casing is not None and casing is not None:
            words = words + self.casing(casing).to(words.dtype)
        return words

    def forward(self, input_ids: Tensor, attention_mask: Tensor, word_index: Tensor, casing: Tensor | None = None,
                pixel_values: Tensor | None = None, image_mask: Tensor | None = None, **_: object) -> Tensor:
        """Returns ``(B, W, K)`` emission scores for the words of each post."""
        words = self.word_states(input_ids, attention_mask, word_index, casing, pixel_values, image_mask)
        return self.head(self.dropout(words))
