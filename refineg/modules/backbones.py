"""Text encoder backbones: any Hugging Face encoder (``AutoModel``), by hub name or local folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

from refineg.modules import packed_attention as packed_attention_module
from refineg.modules.packed_attention import PACKED_ATTENTION
from refineg.registry import Registry
from refineg.weights import resolve_encoder

BACKBONES = Registry("backbone")
#: Encoder families whose packed rows (a 4D block-diagonal mask + explicit positions) give the same states as one
#: post per row: BERT and XLM-R in tests, DistilBERT, ELECTRA and ALBERT checked by hand, RoBERTa and CamemBERT share
#: XLM-R's code. Others (local attention windows, relative positions, masks read as 0/1) are refused.
PACKABLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "albert")


def encoder_not_found(encoder: str, err: OSError) -> FileNotFoundError:
    """The one-line error for an encoder that transformers could not load (``err``: its ``OSError``)."""
    reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    exists = Path(encoder).expanduser().exists()
    if exists:
        where = "not a model folder transformers can load"
    elif encoder.startswith(("/", ".", "~")):
        where = "no such model folder"
    else:
        where = "not a local folder, and not a Hugging Face hub model that can be loaded here"
    return FileNotFoundError(f"encoder {encoder!r}: {where} ({reason})")


class HFTextEncoder(nn.Module):
    """A Hugging Face encoder returning subword states.

    Args:
        encoder: Hub name, local folder or alias (see :func:`resolve_encoder`).
        pretrained: Load weights (``False``: random init from the config, for throughput benchmarks).
        gradient_checkpointing: Trade compute for memory.
        attn_implementation: ``"sdpa"`` (default) or ``"eager"``.
        packed_attention: How packed rows (``data.pack_length``) attend within their posts: ``"mask"`` (SDPA with a
            dense block-diagonal mask; faster for short posts on an H200, see docs/benchmarks.md) or ``"varlen"``
            (variable-length FlashAttention on the GPU, no mask: :mod:`refineg.modules.packed_attention`).
    """

    def __init__(
        self,
        encoder: str,
        pretrained: bool = True,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
        packed_attention: str = "mask",
    ) -> None:
        super().__init__()
        path = resolve_encoder(encoder)
        if packed_attention not in ("mask", "varlen"):
            raise ValueError(f"packed_attention must be 'mask' or 'varlen', not {packed_attention!r}")
        if packed_attention == "varlen":
            if attn_implementation != "sdpa":
                raise ValueError(f"packed_attention=varlen runs with sdpa attention, not {attn_implementation!r}")
            attn_implementation = packed_attention_module.register()  # SDPA for ordinary batches
        try:
            if pretrained:
                # fp32 master weights even when the checkpoint is stored in bf16/fp16 (mixed precision casts per op)
                self.model = AutoModel.from_pretrained(
                    path, attn_implementation=attn_implementation, dtype=torch.float32
                )
            else:
                config = AutoConfig.from_pretrained(path)
                self.model = AutoModel.from_config(config, attn_implementation=attn_implementation)
        except OSError as err:  # transformers' "not a folder, not on the hub / not cached" errors
            raise encoder_not_found(encoder, err) from err
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None  # unused by tagging; unused parameters would stall DDP
        if gradient_checkpointing:
            self.model.gradient_checkpointing_enable()
        self.hidden_size = self.model.config.hidden_size
        # RoBERTa-family embeddings number positions from padding_idx + 1; BERT-family from 0
        self.position_offset = getattr(getattr(self.model, "embeddings", None), "padding_idx", -1) + 1

    @property
    def supports_packing(self) -> bool:
        """Whether packed rows give the same states as one post per row (checked model families only)."""
        config = self.model.config
        windowed = getattr(config, "sliding_window", None) or getattr(config, "local_attention", None)
        return (
            config.model_type in PACKABLE
            and not windowed
            and config._attn_implementation in ("sdpa", "eager", PACKED_ATTENTION)
        )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        **_: object,
    ) -> Tensor:
        """``(B, S)`` ids and mask -> ``(B, S, H)`` last hidden states.

        Packed rows (see :class:`refineg.datamodules.encoding.PostCollator`) also pass ``(B, S)`` ``position_ids``
        (counted from 0 within each post) and ``segment_ids``: each subword attends only to its own segment. With
        ``packed_attention="varlen"``, the collator's ``cu_seqlens`` let a GPU run variable-length FlashAttention
        instead of a dense mask (:mod:`refineg.modules.packed_attention`).

        Raises:
            ValueError: Packed rows for an encoder outside :data:`PACKABLE` (see :attr:`supports_packing`).
        """
        if segment_ids is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if not self.supports_packing:
            raise ValueError(
                f"packed rows (data.pack_length) are supported for {', '.join(PACKABLE)} encoders with "
                f"sdpa or eager attention and no local attention window; this encoder is "
                f"{self.model.config.model_type!r} with {self.model.config._attn_implementation!r} "
                "attention: set data.pack_length=0"
            )
        positions = position_ids + self.position_offset
        if self.model.config._attn_implementation == PACKED_ATTENTION:
            # a 4D "mask" passes through transformers untouched: the attention reads the segments from it
            return self.model(
                input_ids=input_ids,
                attention_mask=segment_ids[:, None, None, :],
                position_ids=positions,
                packed_cu_seqlens=cu_seqlens,
            ).last_hidden_state
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1)  # (B, 1, S, S); pads see pads
        if self.model.config._attn_implementation == "eager":  # eager attention adds the mask to its scores
            dtype = self.model.dtype
            same = torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill(~same, torch.finfo(dtype).min)
        return self.model(input_ids=input_ids, attention_mask=same, position_ids=positions).last_hidden_state


@BACKBONES.register("hf")
def hf_backbone(
    encoder: str,
    pretrained: bool = True,
    gradient_checkpointing: bool = False,
    attn_implementation: str = "sdpa",
    packed_attention: str = "mask",
) -> HFTextEncoder:
    """Text-only Hugging Face encoder (arguments as :class:`HFTextEncoder`)."""
    return HFTextEncoder(encoder, pretrained, gradient_checkpointing, attn_implementation, packed_attention)


class ImageAwareEncoder(nn.Module):
    """A Hugging Face text encoder whose token states attend to image tokens (gated cross-attention).

    Posts without an image (``image_mask`` False, or no ``pixel_values`` in the batch) get the text-only states.

    Args:
        encoder: Text encoder (see :class:`HFTextEncoder`).
        image_encoder: Image tower name in :data:`refineg.modules.image_encoders.IMAGE_ENCODERS` (``timm``,
            ``open_clip``, ...).
        image_model: The tower's ``model_name`` (timm model name, open_clip architecture).
        image_pretrained: The tower's ``pretrained`` (timm: ``"true"`` for timm's weights, a local checkpoint path
            or ``imagenet-mobilenetv2``; open_clip: a pretrained tag or a local checkpoint path). ``None``: random
            weights.
        freeze_image: Keep the image tower frozen.
        image_size: The tower's ``img_size`` input resolution (``None``: the model's default; not passed then).
        num_heads: Cross-attention heads.
        pretrained: Load pretrained text encoder weights.
        gradient_checkpointing: Passed to the text encoder.
        image_kwargs: More keyword arguments for the image tower's factory.
    """

    def __init__(
        self,
        encoder: str,
        image_encoder: str = "timm",
        image_model: str = "resnet50",
        image_pretrained: str | None = None,
        freeze_image: bool = True,
        image_size: int | None = None,
        num_heads: int = 4,
        pretrained: bool = True,
        gradient_checkpointing: bool = False,
        image_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        from refineg.modules.fusion import ImageTextFusion
        from refineg.modules.image_encoders import create_image_encoder

        self.text = HFTextEncoder(encoder, pretrained=pretrained, gradient_checkpointing=gradient_checkpointing)
        self.hidden_size = self.text.hidden_size
        kwargs: dict[str, Any] = {"model_name": image_model, "pretrained": image_pretrained, "freeze": freeze_image}
        if image_size is not None:
            kwargs["img_size"] = image_size
        kwargs.update(image_kwargs or {})
        self.image = create_image_encoder(image_encoder, **kwargs)
        self.image_transform = self.image.transform
        self.fusion = ImageTextFusion(self.hidden_size, self.image.out_dim, num_heads=num_heads)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        pixel_values: Tensor | None = None,
        image_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        **_: object,
    ) -> Tensor:
        """``(B, S)`` ids/mask, optional ``(B, 3, H, W)`` images and ``(B,)`` mask -> ``(B, S, H)`` states.

        Raises:
            ValueError: Packed rows (the image attends to whole posts, one per row).
        """
        if segment_ids is not None:
            raise ValueError("the image-aware backbone needs one post per row: set data.pack_length=0")
        states = self.text(input_ids, attention_mask)
        if pixel_values is None:
            return states
        return self.fusion(states, self.image(pixel_values), image_mask)


BACKBONES.register("hf_image")(ImageAwareEncoder)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Builds the backbone registered as ``name``."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return BACKBONES.list()
