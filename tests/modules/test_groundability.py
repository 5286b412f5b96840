"""Groundability head: batch targets, shapes, learnability, training with a frozen tagger, checkpoints, predictor."""

import csv
import os
import random

import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from refineg.data import Entity, Example, bio_labels, read_jsonl
from refineg.datamodules.encoding import PostCollator, encode_posts
from refineg.modules.groundability import create_groundability_head, list_groundability_heads, subword_spans
from refineg.modules.tagger_module import TaggerModule

TYPES = ["PER", "LOC"]
LABELS = bio_labels(TYPES)
LABEL_IDS = {t: i for i, t in enumerate(LABELS)}


@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


def test_collator_carries_entity_targets_and_subword_spans(tokenizer):
    posts = [
        Example(
            "a",
            ["Justin", "Bieberization", "in", "NYC"],
            entities=[Entity(0, 2, "PER", boxes=[[1, 2, 30, 40]]), Entity(3, 4, "LOC")],
        ),
        Example("b", ["hi", "Paris"], entities=[Entity(1, 2, "LOC", boxes=[[0, 0, 5, 5]])]),
    ]
    enc = encode_posts(posts, tokenizer, LABEL_IDS, 32)
    batch = PostCollator(tokenizer.pad_token_id)(enc)
    assert batch["entity_spans"].tolist() == [[0, 0, 2], [0, 3, 4], [1, 1, 2]]
    assert batch["entity_types"].tolist() == [0, 1, 1]
    assert batch["entity_grounded"].tolist() == [1.0, 0.0, 1.0]
    # "bieberization" is several word pieces: its span ends after the last one
    pieces = tokenizer.tokenize("bieberization")
    assert len(pieces) > 1
    sub = subword_spans(batch["word_index"], batch["word_end"], batch["entity_spans"]).tolist()
    assert sub[0] == [0, 1, 2 + len(pieces)]  # [CLS] justin bieber ##iza ...
    assert sub[1] == [0, 3 + len(pieces), 4 + len(pieces)]
    assert sub[2][0] == 1 and sub[2][2] - sub[2][1] == len(tokenizer.tokenize("paris"))
    # prediction-time encoding (no labels) carries no targets
    bare = PostCollator(tokenizer.pad_token_id)(encode_posts(posts, tokenizer, None, 32))
    assert bare["entity_spans"].shape == (0, 3) and bare["entity_grounded"].shape == (0,)


def test_head_output_shapes_and_registry():
    assert list_groundability_heads() == ["span_mlp"]
    head = create_groundability_head("span_mlp", hidden_size=16, num_types=2, hidden=8)
    states = torch.randn(3, 7, 16)
    mask = torch.ones(3, 7, dtype=torch.long)
    spans = torch.tensor([[0, 1, 3], [2, 4, 5], [2, 1, 2], [1, 6, 7]])
    out = head(states, mask, spans, torch.tensor([0, 1, 1, 0]))
    assert out.shape == (4,) and torch.isfinite(out).all()
    assert head(states, mask, spans[:0], torch.zeros(0, dtype=torch.long)).shape == (0,)
    # the logit depends on the span's own states, not only on the post
    head.eval()
    moved = states.clone()
    moved[0, 2] += 5.0  # inside span 0 only (last subword)
    moved[0, 5] -= 5.0  # keeps the post mean of post 0 unchanged
    diff = head(moved, mask, spans, torch.tensor([0, 1, 1, 0])) - head(states, mask, spans, torch.tensor([0, 1, 1, 0]))
    assert abs(float(diff[0])) > 1e-4 and float(diff[1:].abs().max()) < 1e-6
    with pytest.raises(KeyError, match="known groundability heads: span_mlp"):
        create_groundability_head("linear", hidden_size=4, num_types=1)


def _toy_posts(n, seed):
    """Groundability depends only on the entity's word: names in SHOWN have a box, names in HIDDEN do not."""
    shown, hidden = ["obama", "paris", "rome", "messi"], ["trump", "london", "berlin", "ronaldo"]
    fillers = ["look", "at", "this", "today", "news", "great", "rt", "via", "the", "new"]
    rng = random.Random(seed)
    posts = []
    for i in range(n):
        is_shown = rng.random() < 0.5
        name = rng.choice(shown if is_shown else hidden)
        left, right = rng.sample(fillers, rng.randint(0, 3)), rng.sample(fillers, rng.randint(1, 3))
        ent = Entity(len(left), len(left) + 1, rng.choice(TYPES), boxes=[[0, 0, 10, 10]] if is_shown else [])
        posts.append(Example(str(i), left + [name] + right, entities=[ent]))
    return posts


def test_head_learns_groundability_from_a_visible_word(tiny_encoder, tokenizer):
    torch.manual_seed(0)
    module = TaggerModule(
        {
            "backbone": "hf",
            "encoder": tiny_encoder,
            "head": "crf",
            "groundability": True,
            "groundability_hidden": 32,
            "dropout": 0.0,
            "freeze_tagger": True,
        },
        {},
        TYPES,
    )
    assert not module.tagger.backbone.training and module.tagger.groundability.training  # as built
    module.train()
    assert not any(p.requires_grad for n, p in module.tagger.named_parameters() if not n.startswith("groundab"))
    assert not module.tagger.backbone.training and module.tagger.groundability.training  # frozen parts stay eval
    collate = PostCollator(tokenizer.pad_token_id)
    train = collate(encode_posts(_toy_posts(64, 1), tokenizer, LABEL_IDS, 32))
    dev = collate(encode_posts(_toy_posts(128, 2), tokenizer, LABEL_IDS, 32))

    def dev_auroc():
        with torch.no_grad():
            _, states = module.run(dev)
            logits = module.groundability_logits(dev, states, dev["entity_spans"], dev["entity_types"])
        return float(binary_auroc(logits.sigmoid(), dev["entity_grounded"].long()))

    before = dev_auroc()
    opt = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(25):
        loss = module._groundability_training_step(train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dev_auroc()
    assert after > 0.95 and after > before + 0.2, (before, after)


def _tiny_args(encoder, runs, name, **extra):
    args = {
        "model.encoder": encoder,
        "model.dropout": 0.0,
        "data.gold_limit": 48,
        "data.batch_size": 16,
        "data.eval_batch_size": 64,
        "trainer.max_epochs": 1,
        "logger.wandb": "false",
        "data.test": "null",
        "trainer.enable_progress_bar": "false",
        "runs_dir": str(runs),
        "run_name": name,
        "trainer.accelerator": "cpu",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def test_frozen_tagger_head_training_checkpoint_and_predictor(tiny_encoder, tmp_path):
    from refineg.config import load_config
    from refineg.inference.predictor import TaggerPredictor
    from refineg.training import train

    os.environ.pop("REFINEG_RUN_NAME", None)
    base = train(load_config(_tiny_args(tiny_encoder, tmp_path, "tagger", predict="false")))
    os.environ.pop("REFINEG_RUN_NAME", None)
    result = train(
        load_config(
            _tiny_args(
                tiny_encoder,
                tmp_path,
                "head",
                **{
                    "model.groundability": "true",
                    "model.freeze_tagger": "true",
                    "model.init_from": base["best_checkpoint"],
                    "trainer.max_epochs": 2,
                    "optim.head_lr": 1e-2,
                },
            )
        )
    )
    assert "best_val_groundability_auroc" in result and 0.0 <= result["best_val_groundability_auroc"] <= 1.0
    rows = list(csv.DictReader(open(next((tmp_path / "head" / "csv").glob("version_*/metrics.csv")))))
    aurocs = [float(r["val/groundability_auroc"]) for r in rows if r.get("val/groundability_auroc")]
    accs = [float(r["val/groundability_acc"]) for r in rows if r.get("val/groundability_acc")]
    assert len(aurocs) == 2 and len(accs) == 2 and all(0 < a < 1 for a in accs)

    # the frozen tagger is bit-identical to the one it started from; the head moved away from its init
    old = torch.load(base["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    new = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    assert set(new) - set(old) and all(k.startswith("tagger.groundability.") for k in set(new) - set(old))
    assert all(torch.equal(old[k], new[k]) for k in old)
    assert result["dev"]["mner"]["f1"] == pytest.approx(base["best_val_mner_f1"], abs=1e-6)

    # round trip: the reloaded module has the same head, and predictions carry `groundable`
    module = TaggerModule.load_from_checkpoint(result["best_checkpoint"], map_location="cpu", weights_only=False)
    assert module.tagger.groundability is not None
    for k, v in module.state_dict().items():
        if k in new:
            assert torch.equal(v, new[k]), k
    preds = read_jsonl(tmp_path / "head" / "predictions_dev.jsonl")
    ents = [e for p in preds for e in p.entities]
    assert ents and all(e.groundable is not None and 0.0 <= e.groundable <= 1.0 for e in ents)
    assert len({e.groundable for e in ents}) > 1

    # scoring given (gold) entities agrees with the scores the decoder attached to the same spans
    predictor = TaggerPredictor(module, batch_size=64)
    scored = predictor.score_groundability(preds)
    for p, s in zip(preds, scored):
        for a, b in zip(p.entities, s.entities):
            assert b.groundable == pytest.approx(a.groundable, abs=1e-5)
    plain = TaggerModule.load_from_checkpoint(base["best_checkpoint"], map_location="cpu", weights_only=False)
    assert all(
        e.groundable is None for p in TaggerPredictor(plain).predict(preds[:5], progress=False) for e in p.entities
    )
    with pytest.raises(RuntimeError, match="no groundability head"):
        TaggerPredictor(plain).score_groundability(preds[:1])


def test_joint_training_step_updates_tagger_and_head(tiny_encoder, tokenizer):
    torch.manual_seed(0)
    module = TaggerModule(
        {
            "backbone": "hf",
            "encoder": tiny_encoder,
            "head": "crf",
            "groundability": True,
            "groundability_weight": 0.5,
            "dropout": 0.0,
        },
        {},
        TYPES,
    ).train()
    assert all(p.requires_grad for p in module.parameters()) and module.tagger.backbone.training
    batch = PostCollator(tokenizer.pad_token_id)(encode_posts(_toy_posts(8, 3), tokenizer, LABEL_IDS, 32))
    loss = module._groundability_training_step(batch)
    with torch.no_grad():  # the same loss by hand: mean tagging NLL + 0.5 x mean BCE over the 8 gold entities
        emissions, states = module.run(batch)
        tagging = module.tagger.head.loss(emissions, batch["labels"], batch["word_mask"]).mean()
        logits = module.groundability_logits(batch, states, batch["entity_spans"], batch["entity_types"])
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["entity_grounded"])
    assert len(logits) == 8 and float(loss) == pytest.approx(float(tagging + 0.5 * bce), rel=1e-5)
    loss.backward()
    head_grad = module.tagger.groundability.mlp[-1].weight.grad
    enc_grad = next(p.grad for n, p in module.tagger.named_parameters() if "encoder.layer.0" in n)
    assert head_grad is not None and head_grad.abs().sum() > 0 and enc_grad.abs().sum() > 0
