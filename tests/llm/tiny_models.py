"""Tiny randomly initialised chat models built from the configs in ``assets/`` (no downloads).

The tokenizer is byte-level with no merges (every byte is a token) plus ChatML and Qwen2-VL special tokens, and a
ChatML chat template; it is built in code because no small tokenizer ships in a package here.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def byte_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", extra_special_tokens=SPECIAL_TOKENS
    )
    fast.chat_template = (ASSETS / "chatml.jinja").read_text()
    return fast


def build_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """Saves a 2-layer Llama causal LM and its tokenizer into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = byte_tokenizer()
    spec = json.loads((ASSETS / "tiny_llama.json").read_text())
    config = LlamaConfig(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **spec)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def build_tiny_qwen2_vl(folder: Path, seed: int = 0) -> Path:
    """Saves a 2-layer Qwen2-VL image-text-to-text model and its processor into ``folder``."""
    import torch
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = byte_tokenizer()
    ids = tok.convert_tokens_to_ids
    spec = json.loads((ASSETS / "tiny_qwen2_vl.json").read_text())
    spec["text_config"].update(vocab_size=len(tok), eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    config = Qwen2VLConfig(
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **spec,
    )
    torch.manual_seed(seed)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    # Small pixel limits keep the image token count (and the test) small.
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=(ASSETS / "chatml.jinja").read_text(),
    )
    processor.save_pretrained(folder)
    return folder
