"""A word embedding that trains only the rows of the token ids the training data contains (``optim.embedding_rows``).

An XLM-R-sized encoder has a 250k-row word embedding (a quarter of a billion parameters), yet a training set uses a
few tens of thousands of its rows. With the ordinary table, every step still zeroes and fills a dense ``(V, H)``
gradient, clips it and runs AdamW over all of it. :class:`ActiveRowsEmbedding` trains a compact ``(K, H)`` parameter
holding only the rows of ids that occur in training and keeps the whole ``(V, H)`` table as a frozen buffer.

This is exact with respect to AdamW over the full table: a row whose id never occurs gets a zero gradient at every
step, so its first and second moments stay zero and AdamW's only change to it is the decoupled weight decay
``p <- p * (1 - lr_t * weight_decay)``. The module keeps the product of those factors as one scalar buffer
(:attr:`ActiveRowsEmbedding.decay`, advanced in place by an optimizer step hook, see :func:`track_decay`) and applies
it lazily: the forward pass returns the compact row for an active id and ``full[id] * decay`` for any other id (an
evaluation post may hold ids training never saw). The only difference from the full table is rounding: the decay is
one product of factors instead of one multiplication per step.

The state dict holds the ordinary merged ``weight`` under the original key, so a checkpoint loads into a model
without the option, and a full ``weight`` loads into this module (the decay restarts at 1).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


class ActiveRowsEmbedding(nn.Module):
    """Embedding lookup training only the rows of ``active_ids``; the other rows only decay.

    Args:
        weight: ``(V, H)`` initial table (copied).
        active_ids: Ids whose rows are trained; duplicates are dropped, ``padding_idx`` is never trained (its
            gradient is always zero in :class:`torch.nn.Embedding`, so it only decays, like an unseen row).
        padding_idx: The replaced embedding's ``padding_idx`` (kept as an attribute for code that reads it).

    Attributes:
        rows: ``(K, H)`` trained parameter, one row per active id in increasing id order.
        full: ``(V, H)`` frozen buffer; for inactive ids the current row is ``full[id] * decay``.
        lookup: ``(V,)`` int64 buffer, id -> index into :attr:`rows`, -1 for inactive ids.
        active_ids: ``(K,)`` int64 buffer, the active ids in increasing order.
        decay: ``()`` fp32 buffer, the product of ``1 - lr_t * weight_decay`` over the optimizer steps so far.
    """

    def __init__(self, weight: Tensor, active_ids: Iterable[int] | Tensor, padding_idx: int | None = None) -> None:
        super().__init__()
        num, dim = weight.shape
        ids = torch.as_tensor(list(active_ids) if not isinstance(active_ids, Tensor) else active_ids, dtype=torch.long)
        ids = torch.unique(ids.to(weight.device))  # sorted
        if len(ids) and (ids[0] < 0 or ids[-1] >= num):
            raise ValueError(f"active ids must lie in [0, {num}); got {int(ids[0])}..{int(ids[-1])}")
        if padding_idx is not None:
            ids = ids[ids != padding_idx]
        self.num_embeddings, self.embedding_dim, self.padding_idx = num, dim, padding_idx
        lookup = torch.full((num,), -1, dtype=torch.long, device=weight.device)
        lookup[ids] = torch.arange(len(ids), device=weight.device)
        self.register_buffer("full", weight.detach().clone(), persistent=False)
        self.register_buffer("lookup", lookup, persistent=False)
        self.register_buffer("active_ids", ids, persistent=False)
        self.register_buffer("decay", torch.ones((), dtype=torch.float32, device=weight.device), persistent=False)
        self.rows = nn.Parameter(weight.detach()[ids].clone())

    @classmethod
    def replace(cls, embedding: nn.Embedding, active_ids: Iterable[int] | Tensor) -> ActiveRowsEmbedding:
        """An :class:`ActiveRowsEmbedding` starting from an ``nn.Embedding``'s current table."""
        return cls(embedding.weight, active_ids, padding_idx=embedding.padding_idx)

    def forward(self, input_ids: Tensor) -> Tensor:
        """``(..., H)`` rows of ``input_ids`` (any shape): compact rows for active ids, decayed full rows otherwise."""
        index = self.lookup[input_ids]
        active = index >= 0
        trained = nn.functional.embedding(index.clamp(min=0), self.rows)
        frozen = nn.functional.embedding(input_ids, self.full) * self.decay.to(self.full.dtype)
        return torch.where(active.unsqueeze(-1), trained, frozen)

    @torch.no_grad()
    def merged_weight(self) -> Tensor:
        """``(V, H)`` table equal to what AdamW over the full table would hold (detached)."""
        weight = self.full * self.decay.to(self.full.dtype)
        weight[self.active_ids] = self.rows.detach().to(weight.dtype)
        return weight

    @torch.no_grad()
    def load_weight(self, weight: Tensor) -> None:
        """Restarts from a full ``(V, H)`` table (in place: the optimizer keeps its reference to :attr:`rows`)."""
        if tuple(weight.shape) != tuple(self.full.shape):
            raise ValueError(f"weight of shape {tuple(weight.shape)} does not fit a {tuple(self.full.shape)} table")
        self.full.copy_(weight)
        self.rows.copy_(self.full[self.active_ids])
        self.decay.fill_(1.0)

    def _save_to_state_dict(self, destination, prefix, keep_vars) -> None:  # noqa: D102
        destination[prefix + "weight"] = self.merged_weight()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ) -> None:  # noqa: D102
        key = prefix + "weight"
        if key not in state_dict:
            if strict:
                missing_keys.append(key)
            return
        try:
            self.load_weight(state_dict[key])
        except ValueError as err:
            error_msgs.append(f"{key}: {err}")

    def decay_step(self, lr: float | Tensor, weight_decay: float) -> None:
        """Applies one AdamW step's decoupled decay factor to the inactive rows (in place, no host sync)."""
        if weight_decay:
            self.decay.mul_(1.0 - lr * weight_decay)

    def extra_repr(self) -> str:  # noqa: D102
        return f"{self.num_embeddings}, {self.embedding_dim}, trained_rows={self.rows.shape[0]}"


def input_embedding_owner(model: nn.Module) -> tuple[nn.Module, str]:
    """The module holding a Hugging Face model's input word embedding and its attribute name.

    Raises:
        ValueError: The model has no ``get_input_embeddings()`` embedding that can be found among its children.
    """
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if embedding is None:
        raise ValueError(f"{type(model).__name__} has no input word embedding (get_input_embeddings)")
    for module in model.modules():
        for name, child in module.named_children():
            if child is embedding:
                return module, name
    raise ValueError(f"{type(model).__name__}: its input embedding is not a child module")


def activate_rows(model: nn.Module, active_ids: Iterable[int] | Tensor) -> ActiveRowsEmbedding:
    """Replaces ``model``'s input word embedding (Hugging Face model) by an :class:`ActiveRowsEmbedding` in place.

    Idempotent: a model whose embedding is already an :class:`ActiveRowsEmbedding` keeps it.

    Raises:
        ValueError: No input embedding, an embedding that is not an ``nn.Embedding``, or one tied to an output layer.
    """
    owner, name = input_embedding_owner(model)
    embedding = getattr(owner, name)
    if isinstance(embedding, ActiveRowsEmbedding):
        return embedding
    if type(embedding) is not nn.Embedding:
        raise ValueError(f"optim.embedding_rows=active needs an nn.Embedding, not {type(embedding).__name__}")
    get_out = getattr(model, "get_output_embeddings", None)
    out = get_out() if callable(get_out) else None
    if out is not None and getattr(out, "weight", None) is embedding.weight:
        raise ValueError("optim.embedding_rows=active does not support an input embedding tied to the output layer")
    new = ActiveRowsEmbedding.replace(embedding, active_ids)
    new.train(embedding.training)
    setattr(owner, name, new)
    logger.info("embedding rows: training %d of %d (optim.embedding_rows=active)", new.rows.shape[0], len(new.full))
    return new


def track_decay(optimizer: torch.optim.Optimizer, embedding: ActiveRowsEmbedding) -> None:
    """Registers an optimizer step post-hook advancing ``embedding.decay`` with its parameter group's lr and decay.

    Raises:
        ValueError: ``embedding.rows`` is in none of the optimizer's parameter groups.
    """
    index = next(
        (i for i, g in enumerate(optimizer.param_groups) if any(p is embedding.rows for p in g["params"])), None
    )
    if index is None:
        raise ValueError("the active embedding rows are not in any optimizer parameter group")

    def hook(opt: torch.optim.Optimizer, args, kwargs) -> None:
        # the step just used the group's current lr (schedulers step after the optimizer); look the group up each
        # time because Optimizer.load_state_dict (resuming) replaces the group dicts
        group = opt.param_groups[index]
        embedding.decay_step(group["lr"], group["weight_decay"])

    optimizer.register_step_post_hook(hook)
