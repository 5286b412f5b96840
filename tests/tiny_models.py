"""Tiny randomly initialised models built in code (no downloads)."""

import os
import shutil
from pathlib import Path

from transformers import BertConfig, BertModel

from refineg.weights import resolve_encoder


def make_tiny_bert(folder: Path, seed: int = 0) -> str:
    """A 2-layer, 32-wide BERT with the packaged MiniLM tokenizer (real WordPiece vocab), saved to ``folder``.

    ``REFINEG_TEST_TOKENIZER`` names another folder with those tokenizer files, for a machine without the weights
    package (the lent GPU machine: ``.devcarry/tok``).
    """
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    src = Path(os.environ.get("REFINEG_TEST_TOKENIZER") or resolve_encoder("minilm"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).is_file():
            shutil.copy(src / name, folder / name)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(folder)
    return str(folder)
