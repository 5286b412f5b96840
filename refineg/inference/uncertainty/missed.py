"""The "missed entity" detector: runs of words the tagger tagged O although their non-O probability is high.

ReFineG only checks predicted entities; this detector (off by default) offers such runs as candidates for the MLLM
to confirm. A candidate is a maximal run of words outside every predicted entity whose probability of not being
``O`` is at least ``threshold``; its type is the type with the most probability mass over the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import BatchContext, label_index


@dataclass
class MissedEntityDetector:
    """Finds candidate entities among the words tagged ``O``.

    Args:
        threshold: Least non-O probability of every word of a candidate.
        max_words: Longer runs are not offered (they are rarely one entity).
    """

    threshold: float = 0.5
    max_words: int = 6

    def candidates(self, ctx: BatchContext) -> list[list[dict]]:
        """Per post, ``{"start", "end", "type", "score"}`` candidates (``score``: mean non-O probability)."""
        index = label_index(ctx.labels, ctx.types)
        probs = ctx.token_probs.float()
        lengths = ctx.mask.sum(1).tolist()
        outside = index["outside"].to(probs.device)
        type_of = index["type_of"].to(probs.device, probs.dtype)
        out = []
        for b, post in enumerate(ctx.spans):
            covered = {i for s, e, _ in post for i in range(s, e)}
            non_o = 1 - (probs[b] * outside).sum(-1)
            found, start = [], None
            for i in range(lengths[b] + 1):
                hot = i < lengths[b] and i not in covered and float(non_o[i]) >= self.threshold
                if hot and start is None:
                    start = i
                elif not hot and start is not None:
                    if i - start <= self.max_words:
                        mass = (probs[b, start:i] @ type_of.T).sum(0)
                        found.append(
                            {
                                "start": start,
                                "end": i,
                                "type": ctx.types[int(mass.argmax())],
                                "score": round(float(non_o[start:i].mean()), 6),
                            }
                        )
                    start = None
            out.append(found)
        return out
