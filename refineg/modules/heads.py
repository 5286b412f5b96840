"""Tagging heads: word states -> label scores, per-post loss, decoding and per-entity confidence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from refineg.data.bio import tags_to_spans
from refineg.modules.crf import LinearChainCRF, bio_span_tags
from refineg.registry import Registry

HEADS = Registry("head")


class TaggingHead(nn.Module):
    """Base class: a linear emission layer over word states plus a decoding rule.

    Args:
        hidden_size: Width of the word states.
        labels: BIO label inventory, ``labels[0] == "O"``.
    """

    def __init__(self, hidden_size: int, labels: Sequence[str]) -> None:
        super().__init__()
        self.labels = list(labels)
        self.emission = nn.Linear(hidden_size, len(self.labels))

    def forward(self, states: Tensor) -> Tensor:
        """``(B, W, H)`` word states -> ``(B, W, K)`` emission scores."""
        return self.emission(states)

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:
        """Per-post loss ``(B,)``; ``tags`` ``(B, W)`` with any value at masked positions."""
        raise NotImplementedError

    def target_loss(self, emissions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Per-post loss ``(B,)`` against per-word label distributions ``targets`` ``(B, W, K)``.

        A one-hot row is a hard label (the loss then equals :meth:`loss`); an all-zero row is an unlabelled word
        (no supervision there); other rows are soft pseudo-labels.
        """
        raise NotImplementedError

    def word_log_probs(self, emissions: Tensor, mask: Tensor) -> Tensor:
        """``(B, W, K)`` log of the head's per-word label distribution (float32; meaningless at masked words)."""
        raise NotImplementedError

    def soft_cross_entropy(self, emissions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
        """Per-post ``(B,)`` cross-entropy of the per-word label distribution against the soft rows of ``targets``.

        Token-level distillation (``model.marginal_kd``): only rows that are a distribution (not one-hot, not all
        zero: a teacher's marginals) count, averaged over the post's such words; a post without any scores 0.
        """
        t = targets.to(device=emissions.device, dtype=torch.float32)
        soft = (t.sum(-1) > 0) & (t.amax(-1) < 1) & mask
        ce = -(t * self.word_log_probs(emissions, mask)).sum(-1) * soft
        return ce.sum(1) / soft.sum(1).clamp(min=1)

    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:
        """Best label ids per post, each of the post's (unmasked) length."""
        raise NotImplementedError

    def span_confidence(
        self, emissions: Tensor, mask: Tensor, spans: list[list[tuple[int, int, str]]]
    ) -> list[list[float]]:
        """Confidence in [0, 1] of each decoded ``(start, end, type)`` span of each post."""
        raise NotImplementedError

    def decode_spans(self, emissions: Tensor, mask: Tensor) -> list[list[tuple[int, int, str, float]]]:
        """Decoded ``(start, end_exclusive, type, confidence)`` spans per post."""
        paths = self.decode(emissions, mask)
        spans = [tags_to_spans([self.labels[i] for i in path]) for path in paths]
        conf = self.span_confidence(emissions, mask, spans)
        return [[(s, e, t, c) for (s, e, t), c in zip(post, cs)] for post, cs in zip(spans, conf)]


@HEADS.register("softmax")
class SoftmaxHead(TaggingHead):
    """Independent per-word softmax; loss = mean token cross-entropy per post; confidence = mean max-probability."""

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        ce = F.cross_entropy(emissions.float().transpose(1, 2), tags.clamp(min=0), reduction="none")
        ce = ce * mask
        return ce.sum(1) / mask.sum(1).clamp(min=1)

    def target_loss(self, emissions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        # soft cross-entropy per labelled word, averaged over the post's labelled words
        t = targets.to(device=emissions.device, dtype=torch.float32)
        labelled = (t.sum(-1) > 0) & mask
        ce = -(t * self.word_log_probs(emissions, mask)).sum(-1) * labelled
        return ce.sum(1) / labelled.sum(1).clamp(min=1)

    def word_log_probs(self, emissions: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        return emissions.float().log_softmax(-1)

    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:  # noqa: D102
        best = emissions.argmax(-1).tolist()
        return [row[:n] for row, n in zip(best, mask.sum(1).tolist())]

    def span_confidence(self, emissions, mask, spans):  # noqa: D102
        probs = emissions.float().softmax(-1).max(-1).values.tolist()
        return [[sum(p[s:e]) / (e - s) for s, e, _ in post] for p, post in zip(probs, spans)]


@HEADS.register("crf")
class CRFHead(TaggingHead):
    """Linear-chain CRF with BIO constraints; loss = NLL per post; confidence = CRF span marginal."""

    def __init__(self, hidden_size: int, labels: Sequence[str]) -> None:
        super().__init__(hidden_size, labels)
        self.crf = LinearChainCRF.from_bio_labels(self.labels)
        self.types, type_tags = bio_span_tags(self.labels)
        self.register_buffer("type_tags", type_tags, persistent=False)

    def loss(self, emissions: Tensor, tags: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        return self.crf.nll(emissions, tags.clamp(min=0), mask, reduction="none")

    def target_loss(self, emissions: Tensor, targets: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        return self.crf.target_nll(emissions, targets, mask)

    def word_log_probs(self, emissions: Tensor, mask: Tensor) -> Tensor:  # noqa: D102
        return self.crf.log_marginals(emissions, mask)  # the CRF's token marginals, by forward-backward

    def decode(self, emissions: Tensor, mask: Tensor) -> list[list[int]]:  # noqa: D102
        paths, _ = self.crf.decode(emissions, mask)
        return [row[:n] for row, n in zip(paths.tolist(), mask.sum(1).tolist())]

    def span_confidence(self, emissions, mask, spans):  # noqa: D102
        rows = [(b, s, e, self.types.index(t)) for b, post in enumerate(spans) for s, e, t in post]
        if not rows:
            return [[] for _ in spans]
        probs = self.crf.span_marginals(emissions, mask, torch.tensor(rows), self.type_tags).tolist()
        out, k = [], 0
        for post in spans:
            out.append(probs[k : k + len(post)])
            k += len(post)
        return out


def create_head(name: str, **kwargs) -> TaggingHead:
    """Builds the head registered as ``name`` (``hidden_size=``, ``labels=``)."""
    return HEADS.create(name, **kwargs)


def list_heads() -> list[str]:
    """Names of the registered tagging heads."""
    return HEADS.list()
