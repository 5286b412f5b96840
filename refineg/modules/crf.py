"""Linear-chain conditional random field (CRF) for BIO sequence tagging.

The CRF scores a tag sequence ``y_0 .. y_{L-1}`` of a post with ``L`` real tokens as::

    score(y) = start[y_0] + sum_t emissions[t, y_t] + sum_{t>0} transitions[y_{t-1}, y_t] + end[y_{L-1}]

and defines ``P(y | x) = exp(score(y)) / Z``. All computations are batched over posts (only the time dimension
is looped over), are done in log space and in float32, even when the emissions come in bf16/fp16 or the
module runs under autocast.

Structural constraints (e.g. ``O -> I-PER`` is impossible in BIO) are given as boolean masks; disallowed
transitions/starts/ends get the constant :data:`IMPOSSIBLE` instead of the learned score, so their probability
is ``exp(-1e4)``, i.e. exactly zero in float32, and they never win in Viterbi decoding.

Masks are left-aligned: ``mask[b, t]`` is True for the real tokens ``t < length[b]`` and every post has at least
one token (``mask[:, 0]`` all True). Positions beyond a post's length are ignored everywhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from refineg.data.bio import split_tag

__all__ = [
    "IMPOSSIBLE",
    "ForwardBackward",
    "LinearChainCRF",
    "bio_constraints",
    "bio_span_tags",
]

#: Score given to structurally impossible starts, transitions and ends.
IMPOSSIBLE = -1e4

_REDUCTIONS = ("mean", "sum", "none", "token_mean")


def bio_constraints(labels: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Build BIO structural constraints for a label list.

    ``I-X`` may only follow ``B-X`` or ``I-X`` and may not start a sequence; everything else is allowed.

    Args:
        labels: Tag names indexed by tag id, e.g. ``["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]``.

    Returns:
        ``(allowed_start, allowed_transitions)``: bool tensors of shape ``(K,)`` and ``(K, K)``;
        ``allowed_transitions[i, j]`` tells whether tag ``j`` may follow tag ``i``.
    """
    parsed = [split_tag(lab) for lab in labels]
    num = len(labels)
    allowed_start = torch.ones(num, dtype=torch.bool)
    allowed = torch.ones(num, num, dtype=torch.bool)
    for j, (prefix, etype) in enumerate(parsed):
        if prefix != "I":
            continue
        allowed_start[j] = False
        for i, (prev_prefix, prev_type) in enumerate(parsed):
            allowed[i, j] = prev_prefix in ("B", "I") and prev_type == etype
    return allowed_start, allowed


def bio_span_tags(labels: Sequence[str]) -> tuple[list[str], Tensor]:
    """Map entity types to their ``B-`` and ``I-`` tag ids.

    Args:
        labels: Tag names indexed by tag id, e.g. ``["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]``.

    Returns:
        ``(types, type_tags)``: the entity types in order of first appearance, and a long tensor of shape
        ``(num_types, 2)`` whose row ``k`` is ``(id of B-types[k], id of I-types[k])``. This is the
        ``type_tags`` argument of :meth:`LinearChainCRF.span_marginals`.

    Raises:
        ValueError: If a type lacks its ``B-`` or ``I-`` tag, or a tag is duplicated.
    """
    begin: dict[str, int] = {}
    inside: dict[str, int] = {}
    types: list[str] = []
    for idx, lab in enumerate(labels):
        prefix, etype = split_tag(lab)
        if prefix == "O":
            continue
        if etype not in types:
            types.append(etype)
        table = begin if prefix == "B" else inside
        if etype in table:
            raise ValueError(f"duplicate label {lab!r}")
        table[etype] = idx
    missing = [t for t in types if t not in begin or t not in inside]
    if missing:
        raise ValueError(f"entity types without both B- and I- tags: {missing}")
    type_tags = torch.tensor([[begin[t], inside[t]] for t in types], dtype=torch.long).reshape(-1, 2)
    return types, type_tags


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Context manager that disables autocast for ``device`` (no-op where autocast is unsupported)."""
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # pragma: no cover - exotic device types
        return contextlib.nullcontext()


class ForwardBackward(NamedTuple):
    """Result of the forward-backward algorithm (all float32, log space).

    Attributes:
        alphas: ``(B, T, K)``; ``alphas[b, t, k]`` is the log-sum of the scores of all prefixes ``y_0..y_t``
            with ``y_t = k`` (including the emission at ``t``). Meaningless beyond a post's length.
        betas: ``(B, T, K)``; ``betas[b, t, k]`` is the log-sum of the scores of all suffixes after
            ``y_t = k`` (transitions, later emissions and the end score; excluding the emission at ``t``).
        log_z: ``(B,)`` log partition function.
    """

    alphas: Tensor
    betas: Tensor
    log_z: Tensor


class LinearChainCRF(nn.Module):
    """Linear-chain CRF with optional structural (e.g. BIO) constraints.

    Args:
        num_tags: Number of tags ``K``.
        allowed_transitions: Optional bool ``(K, K)``; ``[i, j]`` False forbids tag ``j`` after tag ``i``.
        allowed_start: Optional bool ``(K,)``; False forbids a tag at the first position.
        allowed_end: Optional bool ``(K,)``; False forbids a tag at the last position.

    Attributes:
        start: Learned start scores ``(K,)``.
        end: Learned end scores ``(K,)``.
        transitions: Learned transition scores ``(K, K)``, ``[i, j]`` = score of ``i -> j``.
    """

    allowed_start: Tensor
    allowed_end: Tensor
    allowed_transitions: Tensor

    def __init__(
        self,
        num_tags: int,
        allowed_transitions: Tensor | None = None,
        allowed_start: Tensor | None = None,
        allowed_end: Tensor | None = None,
    ) -> None:
        super().__init__()
        if num_tags < 1:
            raise ValueError(f"num_tags must be positive, got {num_tags}")
        self.num_tags = num_tags
        self.start = nn.Parameter(torch.empty(num_tags))
        self.end = nn.Parameter(torch.empty(num_tags))
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags))
        self.register_buffer("allowed_start", self._as_mask(allowed_start, (num_tags,), "allowed_start"))
        self.register_buffer("allowed_end", self._as_mask(allowed_end, (num_tags,), "allowed_end"))
        self.register_buffer(
            "allowed_transitions",
            self._as_mask(allowed_transitions, (num_tags, num_tags), "allowed_transitions"),
        )
        self.reset_parameters()

    @classmethod
    def from_bio_labels(cls, labels: Sequence[str]) -> LinearChainCRF:
        """Build a CRF over ``labels`` with BIO constraints (see :func:`bio_constraints`).

        Args:
            labels: Tag names indexed by tag id.

        Returns:
            A constrained :class:`LinearChainCRF` with ``len(labels)`` tags.
        """
        allowed_start, allowed_transitions = bio_constraints(labels)
        return cls(len(labels), allowed_transitions=allowed_transitions, allowed_start=allowed_start)

    @staticmethod
    def _as_mask(mask: Tensor | None, shape: tuple[int, ...], name: str) -> Tensor:
        """Validate a constraint mask (all-True when ``None``)."""
        if mask is None:
            return torch.ones(shape, dtype=torch.bool)
        mask = torch.as_tensor(mask).detach().to(torch.bool).clone()
        if tuple(mask.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(mask.shape)}")
        return mask

    def reset_parameters(self) -> None:
        """Initialise all scores uniformly in ``[-0.1, 0.1]``."""
        for param in (self.start, self.end, self.transitions):
            nn.init.uniform_(param, -0.1, 0.1)

    def extra_repr(self) -> str:
        """Summary shown by ``repr``."""
        constrained = not (self.allowed_start.all() and self.allowed_end.all() and self.allowed_transitions.all())
        return f"num_tags={self.num_tags}, constrained={bool(constrained)}"

    # ------------------------------------------------------------------ helpers

    def _potentials(self) -> tuple[Tensor, Tensor, Tensor]:
        """Float32 start, transition and end scores with impossible entries set to :data:`IMPOSSIBLE`."""
        start = self.start.float().masked_fill(~self.allowed_start, IMPOSSIBLE)
        trans = self.transitions.float().masked_fill(~self.allowed_transitions, IMPOSSIBLE)
        end = self.end.float().masked_fill(~self.allowed_end, IMPOSSIBLE)
        return start, trans, end

    def _prepare(self, emissions: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Validate inputs; return float32 emissions and a bool mask on the same device."""
        if emissions.dim() != 3 or emissions.shape[2] != self.num_tags:
            raise ValueError(f"emissions must be (B, T, {self.num_tags}), got {tuple(emissions.shape)}")
        if emissions.shape[1] < 1:
            raise ValueError("emissions must have at least one time step")
        batch, steps = emissions.shape[:2]
        if mask is None:
            mask = torch.ones(batch, steps, dtype=torch.bool, device=emissions.device)
        elif tuple(mask.shape) != (batch, steps):
            raise ValueError(f"mask must be ({batch}, {steps}), got {tuple(mask.shape)}")
        return emissions.float(), mask.to(device=emissions.device, dtype=torch.bool)

    def _alphas(self, em: Tensor, mask: Tensor, start: Tensor, trans: Tensor) -> list[Tensor]:
        """Forward recursion; element ``t`` is ``(B, K)`` (carried over unchanged past a post's end)."""
        alpha = start + em[:, 0]
        alphas = [alpha]
        for t in range(1, em.shape[1]):
            nxt = torch.logsumexp(alpha.unsqueeze(2) + trans, dim=1) + em[:, t]
            alpha = torch.where(mask[:, t].unsqueeze(1), nxt, alpha)
            alphas.append(alpha)
        return alphas

    def _forward_backward(self, em: Tensor, mask: Tensor) -> ForwardBackward:
        """Forward-backward on prepared (float32) inputs."""
        start, trans, end = self._potentials()
        steps = em.shape[1]
        alphas = self._alphas(em, mask, start, trans)
        log_z = torch.logsumexp(alphas[-1] + end, dim=1)
        beta = end.expand(em.shape[0], -1)
        betas = [beta] * steps
        for t in range(steps - 2, -1, -1):
            nxt = torch.logsumexp(trans + (em[:, t + 1] + beta).unsqueeze(1), dim=2)
            beta = torch.where(mask[:, t + 1].unsqueeze(1), nxt, end)
            betas[t] = beta
        return ForwardBackward(torch.stack(alphas, dim=1), torch.stack(betas, dim=1), log_z)

    # ------------------------------------------------------------------ public API

    def forward(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """Alias of :meth:`nll`."""
        return self.nll(emissions, tags, mask, reduction)

    def log_partition(self, emissions: Tensor, mask: Tensor | None = None) -> Tensor:
        """Log partition function ``log Z`` per post.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.

        Returns:
            ``(B,)`` float32.
        """
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            start, trans, end = self._potentials()
            return torch.logsumexp(self._alphas(em, mask, start, trans)[-1] + end, dim=1)

    def nll(self, emissions: Tensor, tags: Tensor, mask: Tensor | None = None, reduction: str = "mean") -> Tensor:
        """Negative log-likelihood of the gold tag sequences.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            tags: ``(B, T)`` long gold tags; values at masked positions are ignored (e.g. ``-100``).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.
            reduction: ``"mean"`` (over posts), ``"sum"``, ``"none"`` (per post) or ``"token_mean"``
                (sum divided by the number of real tokens).

        Returns:
            Float32 scalar, or ``(B,)`` for ``reduction="none"``.
        """
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            if tuple(tags.shape) != tuple(mask.shape):
                raise ValueError(f"tags must be {tuple(mask.shape)}, got {tuple(tags.shape)}")
            start, trans, end = self._potentials()
            tags = tags.to(device=em.device, dtype=torch.long).masked_fill(~mask, 0)

            emit = em.gather(2, tags.unsqueeze(2)).squeeze(2)
            gold = start[tags[:, 0]] + torch.where(mask, emit, 0.0).sum(1)
            if em.shape[1] > 1:
                pair = trans[tags[:, :-1], tags[:, 1:]]
                gold = gold + torch.where(mask[:, 1:], pair, 0.0).sum(1)
            last = (mask.sum(1) - 1).clamp(min=0)
            gold = gold + end[tags.gather(1, last.unsqueeze(1)).squeeze(1)]

            log_z = torch.logsumexp(self._alphas(em, mask, start, trans)[-1] + end, dim=1)
            loss = log_z - gold
            if reduction == "none":
                return loss
            if reduction == "sum":
                return loss.sum()
            if reduction == "mean":
                return loss.mean()
            return loss.sum() / mask.sum().clamp(min=1)

    def target_nll(self, emissions: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
        """Negative log of the CRF probability of the paths the targets allow, each weighted by its targets.

        With per-token weights ``q_t(k)`` the loss is ``log Z - log sum_y p~(y) prod_t q_t(y_t)`` (``p~`` the
        unnormalised path score): one-hot rows give exactly :meth:`nll`; an all-zero row (an unlabelled token)
        allows every tag with weight 1, so the loss marginalises over it (partial-label CRF); other rows are soft
        targets (e.g. a teacher's token marginals) that weight each path by the product of its tokens' weights.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            targets: ``(B, T, K)`` non-negative weights per token and tag.
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.

        Returns:
            ``(B,)`` float32.
        """
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            if tuple(targets.shape) != tuple(em.shape):
                raise ValueError(f"targets must be {tuple(em.shape)}, got {tuple(targets.shape)}")
            t = targets.to(device=em.device, dtype=torch.float32)
            labelled = t.sum(-1, keepdim=True) > 0
            log_w = torch.where(t > 0, t.clamp(min=1e-30).log(), IMPOSSIBLE)
            log_w = torch.where(labelled, log_w, 0.0)
            start, trans, end = self._potentials()
            log_z = torch.logsumexp(self._alphas(em, mask, start, trans)[-1] + end, dim=1)
            log_allowed = torch.logsumexp(self._alphas(em + log_w, mask, start, trans)[-1] + end, dim=1)
            return log_z - log_allowed

    @torch.no_grad()
    def decode(self, emissions: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Batched Viterbi decoding.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.

        Returns:
            ``(best_paths, best_scores)``: ``(B, T)`` long tag ids, ``-1`` beyond each post's length, and
            ``(B,)`` float32 unnormalised scores of those paths (``best_scores - log_partition`` is the
            log-probability of the best path).
        """
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            start, trans, end = self._potentials()
            batch, steps, num = em.shape
            identity = torch.arange(num, device=em.device).expand(batch, num)
            score = start + em[:, 0]
            history = []
            for t in range(1, steps):
                best, idx = (score.unsqueeze(2) + trans).max(dim=1)
                step_mask = mask[:, t].unsqueeze(1)
                score = torch.where(step_mask, best + em[:, t], score)
                # Past a post's end the back-pointer is the identity, so backtracking passes through unchanged.
                history.append(torch.where(step_mask, idx, identity))
            best_scores, cur = (score + end).max(dim=1)
            paths = torch.empty(batch, steps, dtype=torch.long, device=em.device)
            paths[:, steps - 1] = cur
            for t in range(steps - 1, 0, -1):
                cur = history[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
                paths[:, t - 1] = cur
            return paths.masked_fill(~mask, -1), best_scores

    def forward_backward(self, emissions: Tensor, mask: Tensor | None = None) -> ForwardBackward:
        """Forward and backward log-space tables; reusable by :meth:`marginals` and :meth:`span_marginals`.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.

        Returns:
            A :class:`ForwardBackward` of float32 tensors.
        """
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            return self._forward_backward(em, mask)

    def marginals(self, emissions: Tensor, mask: Tensor | None = None, fb: ForwardBackward | None = None) -> Tensor:
        """Token marginals ``P(y_t = k | x)`` by forward-backward.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.
            fb: Optional precomputed :meth:`forward_backward` result for the same inputs.

        Returns:
            ``(B, T, K)`` float32 probabilities; rows sum to 1 at real tokens and are 0 at padding.
        """
        with _no_autocast(emissions.device):
            mask = self._prepare(emissions, mask)[1]
            return torch.where(mask.unsqueeze(2), self.log_marginals(emissions, mask, fb).exp().clamp(0.0, 1.0), 0.0)

    def log_marginals(self, emissions: Tensor, mask: Tensor | None = None, fb: ForwardBackward | None = None) -> Tensor:
        """Log token marginals ``log P(y_t = k | x)`` (differentiable; values at padding are meaningless).

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.
            fb: Optional precomputed :meth:`forward_backward` result for the same inputs.

        Returns:
            ``(B, T, K)`` float32, at most 0.
        """
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            if fb is None:
                fb = self._forward_backward(em, mask)
            return (fb.alphas + fb.betas - fb.log_z[:, None, None]).clamp(max=0.0)

    def span_marginals(
        self,
        emissions: Tensor,
        mask: Tensor | None,
        spans: Tensor,
        type_tags: Tensor,
        fb: ForwardBackward | None = None,
    ) -> Tensor:
        """Probability that each given typed span is exactly an entity under the CRF.

        For a span ``(b, s, e, x)`` with ``B``/``I`` tag ids ``bx``/``ix`` of type ``x`` this is::

            P(y_s = bx, y_{s+1..e-1} = ix, y_e != ix)      (the last condition only when e < length[b])

        computed in log space as ``alpha[s, bx] + (inner transitions and emissions)
        + logsumexp_{j != ix}(trans[y_{e-1}, j] + emissions[e, j] + beta[e, j]) - log Z``,
        with ``end[y_{e-1}]`` in place of the logsumexp when the span ends the post.

        Args:
            emissions: ``(B, T, K)`` unnormalised tag scores (any float dtype).
            mask: ``(B, T)`` bool, left-aligned; ``None`` means all tokens are real.
            spans: ``(N, 4)`` long rows ``(batch index, start, end exclusive, type index)``.
            type_tags: ``(num_types, 2)`` long rows ``(B tag id, I tag id)``, e.g. from :func:`bio_span_tags`.
            fb: Optional precomputed :meth:`forward_backward` result for the same inputs.

        Returns:
            ``(N,)`` float32 probabilities in ``[0, 1]``; 0 for empty or out-of-range spans.
        """
        with _no_autocast(emissions.device):
            em, mask = self._prepare(emissions, mask)
            if fb is None:
                fb = self._forward_backward(em, mask)
            device = em.device
            spans = spans.to(device=device, dtype=torch.long).reshape(-1, 4)
            type_tags = type_tags.to(device=device, dtype=torch.long)
            if spans.shape[0] == 0:
                return em.new_zeros(0)
            _, trans, end = self._potentials()
            steps = em.shape[1]

            b, s, e, typ = spans.unbind(1)
            lengths = mask.sum(1)[b]
            valid = (s >= 0) & (e > s) & (e <= lengths)
            s = torch.where(valid, s, 0)
            e = torch.where(valid, e, 1)
            bx, ix = type_tags[typ].unbind(1)
            width = e - s

            # Everything up to and including y_s = B-x.
            log_p = fb.alphas[b, s, bx]
            # Transitions B-x -> I-x once and I-x -> I-x (width - 2) times, plus I-x emissions inside the span.
            log_p = log_p + torch.where(width > 1, trans[bx, ix], 0.0)
            log_p = log_p + (width - 2).clamp(min=0).float() * trans[ix, ix]
            pos = torch.arange(steps, device=device)
            inside = (pos > s.unsqueeze(1)) & (pos < e.unsqueeze(1))
            em_inside = em[b.unsqueeze(1), pos.unsqueeze(0), ix.unsqueeze(1)]
            log_p = log_p + torch.where(inside, em_inside, 0.0).sum(1)
            # Continuation after the last span token: any next tag except I-x, or the end of the post.
            last_tag = torch.where(width == 1, bx, ix)
            nxt = e.clamp(max=steps - 1)
            cont = trans[last_tag] + em[b, nxt] + fb.betas[b, nxt]
            cont = cont.scatter(1, ix.unsqueeze(1), float("-inf"))
            tail = torch.where(e == lengths, end[last_tag], torch.logsumexp(cont, dim=1))
            log_p = log_p + tail - fb.log_z[b]
            return torch.where(valid, log_p.exp().clamp(0.0, 1.0), 0.0)
