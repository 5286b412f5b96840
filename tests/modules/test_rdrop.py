"""R-Drop (``model.rdrop``): the per-word KL, the two-pass loss and a training run with it."""

import csv
import math
from dataclasses import asdict

import pytest
import torch
from transformers import AutoTokenizer

from refineg.config import ModelConfig, OptimConfig, load_config
from refineg.data.schema import Entity, Example
from refineg.datamodules.encoding import PostCollator, encode_posts
from refineg.modules.tagger_module import TaggerModule, word_kl

TYPES = ["PER", "LOC"]


def test_word_kl_is_the_symmetric_kl_over_unmasked_words():
    first = torch.tensor([[[2.0, 0.0], [0.0, 0.0], [9.0, -9.0]]])
    second = torch.tensor([[[0.0, 2.0], [0.0, 0.0], [-9.0, 9.0]]])
    mask = torch.tensor([[True, True, False]])
    p = torch.tensor([math.exp(2), 1.0]) / (math.exp(2) + 1)
    q = p.flip(0)
    kl_pq = float((p * (p / q).log()).sum())
    kl_qp = float((q * (q / p).log()).sum())
    # word 0: (KL(p||q) + KL(q||p)) / 2; word 1: identical distributions; word 2: masked out
    expected = ((kl_pq + kl_qp) / 2 + 0.0) / 2
    assert word_kl(first, second, mask).tolist() == pytest.approx([expected], rel=1e-5)
    assert word_kl(first, first, mask).tolist() == pytest.approx([0.0], abs=1e-7)


def _module_and_batch(encoder: str, rdrop: float) -> tuple[TaggerModule, dict]:
    model = asdict(ModelConfig(encoder=encoder, dropout=0.3, rdrop=rdrop))
    module = TaggerModule(model, asdict(OptimConfig()), TYPES)
    tok = AutoTokenizer.from_pretrained(encoder)
    posts = [
        Example("a", ["Ann", "visits", "Rome"], [Entity(0, 1, "PER"), Entity(2, 3, "LOC")]),
        Example("b", ["hello", "there"], []),
    ]
    labels = {t: i for i, t in enumerate(module.labels)}
    return module, PostCollator(tok.pad_token_id)(encode_posts(posts, tok, labels, 32))


def test_rdrop_loss_is_the_mean_of_two_passes_plus_their_kl(tiny_encoder):
    module, batch = _module_and_batch(tiny_encoder, rdrop=0.7)
    module.train()
    torch.manual_seed(3)
    loss = module.tagging_loss(batch)
    torch.manual_seed(3)
    first, second = module(batch), module(batch)
    assert not torch.equal(first, second)  # the passes do draw other dropout masks
    head, mask = module.tagger.head, batch["word_mask"]
    per_post = (head.loss(first, batch["labels"], mask) + head.loss(second, batch["labels"], mask)) / 2
    per_post = per_post + 0.7 * word_kl(first, second, mask)
    assert float(loss) == pytest.approx(float(per_post.mean()), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in module.tagger.head.parameters())


def test_rdrop_is_one_pass_in_eval_mode_and_when_off(tiny_encoder):
    module, batch = _module_and_batch(tiny_encoder, rdrop=0.7)
    module.eval()
    plain = module.tagger.head.loss(module(batch), batch["labels"], batch["word_mask"]).mean()
    assert float(module.tagging_loss(batch)) == pytest.approx(float(plain), rel=1e-6)
    off, batch = _module_and_batch(tiny_encoder, rdrop=0.0)
    off.train()
    torch.manual_seed(5)
    loss = off.tagging_loss(batch)
    torch.manual_seed(5)
    one_pass = off.tagger.head.loss(off(batch), batch["labels"], batch["word_mask"]).mean()
    assert float(loss) == pytest.approx(float(one_pass), rel=1e-6)


def test_rdrop_config_is_checked():
    with pytest.raises(ValueError, match="model.rdrop=-1.0 must not be negative"):
        load_config(["model.rdrop=-1"])
    with pytest.raises(ValueError, match="model.rdrop does not combine with model.groundability"):
        load_config(["model.rdrop=1", "model.groundability=true"])


def test_training_with_rdrop_lowers_its_loss(tiny_encoder, tmp_path):
    from refineg.training import train
    from tests.test_train import tiny_args

    extra = {
        "model.rdrop": 1.0,
        "model.dropout": 0.1,
        "trainer.max_epochs": 3,
        "data.test": "null",
        "trainer.log_every_n_steps": 1,
    }
    result = train(load_config(tiny_args(tiny_encoder, tmp_path, "rdrop", **extra)))
    assert result["best_checkpoint"]
    rows = list(csv.DictReader(next((tmp_path / "rdrop" / "csv").glob("version_*/metrics.csv")).open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 12  # 3 epochs x 4 batches of 16 posts
    assert sum(losses[-4:]) < 0.8 * sum(losses[:4])  # the R-Drop objective falls over the run
