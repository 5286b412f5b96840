"""Attention over packed rows without a dense mask: variable-length FlashAttention on the GPU.

Packed batches (``data.pack_length``) hold several posts per row; each subword may attend only within its post.
A dense ``(R, 1, L, L)`` block-diagonal mask makes SDPA fall back to its memory-efficient kernel and read the mask
in every layer. Instead, the collator writes ``cu_seqlens``: the boundaries of every post (and of each row's padding
tail) in the flattened ``R * L`` subwords, padded with repeats of ``R * L`` (empty sequences) to a length fixed by
the batch's shape, so a CUDA graph recorded for one batch replays for the next. The attention then runs as one
variable-length FlashAttention call over all subwords (``aten::_flash_attention_forward`` with cumulative sequence
lengths, the kernel behind SDPA's flash backend, with its dropout and backward), computing no cross-post scores.

Hugging Face encoders reach it through transformers' attention registry: :func:`register` adds the implementation
``"refineg_packed"``, which is SDPA for ordinary batches (same mask building, same kernels) and the variable-length
kernel when the backbone passes ``packed_cu_seqlens``. The backbone hands the packed rows' segment ids over as a 4D
``(R, 1, 1, L)`` "mask", which transformers passes through untouched; off the GPU, or in float32, the function
builds the block-diagonal mask from them and calls SDPA (the reference the GPU path is tested against).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

PACKED_ATTENTION = "refineg_packed"


def _flash_forward(*args, **kwargs):
    """``aten::_flash_attention_forward`` (a seam for tests); its autograd formula gives the backward."""
    return torch.ops.aten._flash_attention_forward(*args, **kwargs)


def _flash_ok(query: Tensor) -> bool:
    return query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] % 8 == 0


def packed_attention_forward(
    module: nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    packed_cu_seqlens: Tensor | None = None,
    **kwargs,
) -> tuple[Tensor, None]:
    """A transformers attention function: SDPA, or variable-length attention for packed rows.

    Args:
        module: The attention layer (passed on to SDPA).
        query: ``(B, H, S, D)``.
        key: ``(B, H, S, D)``.
        value: ``(B, H, S, D)``.
        attention_mask: The usual SDPA mask (bool or float); for packed rows the ``(B, 1, 1, S)`` integer segment
            ids (posts from 1, padding 0).
        dropout: Attention-probability dropout (training only; the layer passes 0 in eval).
        scaling: Score scale (``None``: ``D ** -0.5``).
        packed_cu_seqlens: ``(N + 1,)`` int32 boundaries of packed rows' posts (the collator's ``cu_seqlens``;
            without them, or off the GPU, packed rows use SDPA with the block-diagonal mask).
        **kwargs: Passed on to SDPA.

    Returns:
        ``(B, S, H, D)`` attention output and ``None`` (no weights).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments = attention_mask is not None and not (
        attention_mask.is_floating_point() or attention_mask.dtype == torch.bool
    )
    if not segments:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    batch, heads, length, dim = query.shape
    if packed_cu_seqlens is None or not _flash_ok(query):
        same = attention_mask.transpose(-1, -2) == attention_mask  # (B, 1, S, S) block-diagonal
        return sdpa_attention_forward(module, query, key, value, same, dropout=dropout, scaling=scaling)
    q, k, v = (t.transpose(1, 2).reshape(batch * length, heads, dim) for t in (query, key, value))
    cu = packed_cu_seqlens.to(torch.int32)
    out = _flash_forward(q, k, v, cu, cu, length, length, dropout, False, False, scale=scaling)[0]
    return out.view(batch, length, heads, dim), None


def register() -> str:
    """Adds :data:`PACKED_ATTENTION` to transformers' attention and mask registries (idempotent).

    Returns:
        The implementation name to pass as ``attn_implementation``.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION
