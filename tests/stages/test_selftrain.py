"""Self-training (issue 20): the unlabelled pool, pseudo-label selection, soft/partial targets, rounds, resume, CLI."""

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from refineg.config import load_config
from refineg.data import Entity, Example, bio_labels, read_jsonl, write_jsonl
from refineg.datamodules.encoding import EncodedPost, PostCollator
from refineg.datamodules.gmner import GMNERDataModule, apply_pseudo_labels, gold_posts, read_split, sample_gold
from refineg.modules.crf import LinearChainCRF
from refineg.modules.heads import SoftmaxHead
from refineg.stages.selftrain import (
    build_pool,
    load_selftrain_config,
    pick_teacher,
    pseudo_label_quality,
    select_pseudo_labels,
    stop_reason,
)
from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[2]
LABELS = bio_labels(["PER", "LOC"])  # O, B-PER, I-PER, B-LOC, I-LOC (5 labels)


def tiny_overrides(encoder, runs, name, **extra):
    args = {
        "model.encoder": encoder,
        "model.dropout": 0.0,
        "data.gold_limit": 48,
        "data.unlabeled_from_train": "true",
        "data.unlabeled_limit": 40,
        "data.batch_size": 16,
        "data.eval_batch_size": 64,
        "trainer.max_epochs": 1,
        "trainer.accelerator": "cpu",
        "trainer.enable_progress_bar": "false",
        "logger.wandb": "false",
        "optim.encoder_lr": 1e-3,
        "runs_dir": str(runs),
        "run_name": name,
        "selftrain.tau": 0.9,
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


# ---------------------------------------------------------------------------------------------------- the pool


def test_pool_from_train_is_the_complement_of_the_gold_sample_with_labels_hidden(tiny_encoder, tmp_path):
    cfg = load_config(["data.gold_limit=64", "data.unlabeled_from_train=true", "seed=7"])
    pool = build_pool(cfg.data, cfg.seed)
    train = read_split(cfg.data, "train")
    # the gold posts are exactly those the training data module draws for this seed
    dm = GMNERDataModule(cfg.data, tiny_encoder, seed=cfg.seed, run_dir=tmp_path)
    dm.setup("fit")
    gold_ids = {e.id for e in dm.examples["train"]}
    assert gold_ids == set(json.loads((tmp_path / "gold_ids.json").read_text()))
    pool_ids = [p.id for p in pool.posts]
    assert len(gold_ids) == 64 and len(pool_ids) == len(train) - 64 == 536
    assert not gold_ids & set(pool_ids)
    assert gold_ids | set(pool_ids) == {e.id for e in train}
    assert all(p.entities == [] for p in pool.posts)
    # the labels are kept aside for measuring only, unchanged
    by_id = {e.id: e for e in train}
    assert sum(len(p.entities) for p in pool.hidden.values()) > 500
    assert all(pool.hidden[i].entities == by_id[i].entities for i in pool_ids)
    assert all(p.tokens == by_id[p.id].tokens for p in pool.posts)


def test_pool_limit_is_a_seeded_subset_and_another_seed_moves_the_gold_sample():
    cfg = load_config(["data.gold_limit=64", "data.unlabeled_from_train=true", "data.unlabeled_limit=50"])
    a, b = build_pool(cfg.data, 1), build_pool(cfg.data, 1)
    assert [p.id for p in a.posts] == [p.id for p in b.posts] and len(a.posts) == 50
    assert set(a.hidden) == {p.id for p in a.posts}
    gold2 = {e.id for e in sample_gold(read_split(cfg.data, "train"), 64, 2)}
    full2 = build_pool(load_config(["data.gold_limit=64", "data.unlabeled_from_train=true"]).data, 2)
    assert not gold2 & {p.id for p in full2.posts}


def test_gold_seed_keeps_one_gold_sample_and_pool_across_training_seeds():
    data = load_config(["data.gold_limit=64", "data.unlabeled_from_train=true", "data.gold_seed=9"]).data
    train = read_split(data, "train")
    ids = {s: {e.id for e in gold_posts(train, data, s)} for s in (1, 2)}
    assert ids[1] == ids[2] == {e.id for e in sample_gold(train, 64, 9)} and len(ids[1]) == 64
    assert ids[1] != {e.id for e in sample_gold(train, 64, 1)}
    assert [p.id for p in build_pool(data, 1).posts] == [p.id for p in build_pool(data, 2).posts]
    assert not ids[1] & {p.id for p in build_pool(data, 2).posts}


@pytest.mark.parametrize("fmt", ["jsonl", "conll", "twitter-gmner"])
def test_unlabeled_file_of_any_format_loses_its_labels(tmp_path, fmt):
    if fmt == "jsonl":
        posts = [
            Example("a", ["Obama", "visits", "Paris"], None, [Entity(0, 1, "PER"), Entity(2, 3, "LOC")]),
            Example("b", ["no", "entity"], None, []),
        ]
        path = tmp_path / "pool.jsonl"
        write_jsonl(posts, path)
        expected = 2
    elif fmt == "conll":
        path = FIXTURES / "twitter2015_sample.txt"
        expected = None
    else:
        path = FIXTURES / "twitter_gmner" / "txt" / "sample.txt"
        expected = None
    over = [f"data.unlabeled={path}"] + (["data.format=twitter-gmner"] if fmt == "twitter-gmner" else [])
    cfg = load_config(over + ([] if fmt != "conll" else ["data.unlabeled_format=conll"]))
    pool = build_pool(cfg.data, 0)
    assert pool.hidden is None and len(pool.posts) > 0
    assert expected is None or len(pool.posts) == expected
    assert all(p.entities == [] for p in pool.posts)
    labelled = build_pool(load_config(over + ["data.unlabeled_hidden_gold=true"]).data, 0)
    assert any(e.entities for e in labelled.hidden.values())


# ------------------------------------------------------------------------------------------------- selection


def scored_post():
    tokens = "Obama met Merkel in Berlin and Paris".split()
    ents = [
        Entity(0, 1, "PER", uncertainty=0.1),
        Entity(2, 3, "PER", uncertainty=0.5),
        Entity(4, 5, "LOC", uncertainty=0.2),  # exactly tau: confident
        Entity(6, 7, "LOC", uncertainty=0.21),
    ]
    return Example("p1", tokens, None, ents, source="predicted")


def confident_post():
    return Example("p2", ["Anna", "sings"], None, [Entity(0, 1, "PER", uncertainty=0.05)], source="predicted")


def empty_post():
    return Example("p3", ["nothing", "here"], None, [], source="predicted")


def spans(post):
    return [(e.start, e.end, e.type) for e in post.entities]


def test_entity_selection_keeps_exactly_the_confident_entities_and_masks_the_rest():
    kept, counts = select_pseudo_labels([scored_post(), confident_post(), empty_post()], tau=0.2, uncertain="mask")
    assert [p.id for p in kept] == ["p1", "p2", "p3"]
    assert spans(kept[0]) == [(0, 1, "PER"), (4, 5, "LOC")]
    assert kept[0].meta["pseudo"]["unlabeled"] == [[2, 3], [6, 7]]
    assert "unlabeled" not in kept[1].meta["pseudo"] and spans(kept[1]) == [(0, 1, "PER")]
    assert counts == {
        "pool_posts": 3,
        "predicted_entities": 5,
        "uncertain_entities": 2,
        "masked_entities": 2,
        "posts": 3,
        "entities": 3,
        "empty_posts": 1,
    }


def test_uncertain_policies_and_post_selection():
    posts = [scored_post(), confident_post(), empty_post()]
    kept, counts = select_pseudo_labels(posts, tau=0.2, uncertain="drop_entity")
    assert spans(kept[0]) == [(0, 1, "PER"), (4, 5, "LOC")] and "unlabeled" not in kept[0].meta["pseudo"]
    assert counts["dropped_entities"] == 2
    for kwargs in ({"uncertain": "drop_post"}, {"selection": "post"}):
        kept, counts = select_pseudo_labels(posts, tau=0.2, **kwargs)
        assert [p.id for p in kept] == ["p2", "p3"] and counts["dropped_posts"] == 1
    kept, counts = select_pseudo_labels(posts, tau=0.2, empty_posts=False)
    assert [p.id for p in kept] == ["p1", "p2"] and counts["dropped_empty_posts"] == 1
    # a threshold above every uncertainty keeps all four entities; a verified entity counts as confident
    assert len(select_pseudo_labels(posts, tau=0.5)[0][0].entities) == 4
    checked = scored_post()
    checked.meta["verified"] = [1]
    assert spans(select_pseudo_labels([checked], tau=0.2)[0][0]) == [(0, 1, "PER"), (2, 3, "PER"), (4, 5, "LOC")]


def test_soft_targets_carry_the_marginals_with_uncertain_words_per_policy():
    post = scored_post()
    rows = [[0.1, 0.6, 0.1, 0.1, 0.1] for _ in post.tokens]
    kept, _ = select_pseudo_labels([post], 0.2, uncertain="drop_entity", marginals=[rows], labels=LABELS)
    info = kept[0].meta["pseudo"]
    assert info["labels"] == LABELS and len(info["word_targets"]) == 7
    assert info["word_targets"][2] == [1.0, 0.0, 0.0, 0.0, 0.0]  # dropped entity: O
    assert info["word_targets"][0] == [0.1, 0.6, 0.1, 0.1, 0.1]
    kept, _ = select_pseudo_labels([post], 0.2, uncertain="mask", marginals=[rows], labels=LABELS)
    assert kept[0].meta["pseudo"]["word_targets"][2] == rows[2]  # masked later, by the data module


def test_outside_min_leaves_words_the_teacher_doubts_unlabelled():
    post = scored_post()  # words: Obama met Merkel in Berlin and Paris; entities on 0, 2, 4, 6
    p_outside = [0.0, 0.95, 0.1, 0.5, 0.0, 0.89, 0.3]
    rows = [[p, 1 - p, 0.0, 0.0, 0.0] for p in p_outside]
    kept, counts = select_pseudo_labels([post], 0.2, marginals=[rows], labels=LABELS, soft=False, outside_min=0.9)
    info = kept[0].meta["pseudo"]
    # uncertain entities (2, 6) masked; outside words: "met" is O (0.95), "in" (0.5) and "and" (0.89) unlabelled
    assert info["unlabeled"] == [[2, 3], [3, 4], [5, 6], [6, 7]] and "word_targets" not in info
    assert counts["unsure_outside_words"] == 2
    kept, _ = select_pseudo_labels([post], 0.2, uncertain="drop_entity", marginals=[rows], labels=LABELS, soft=False,
                                   outside_min=0.9)  # fmt: skip
    assert kept[0].meta["pseudo"]["unlabeled"] == [[3, 4], [5, 6]]  # dropped entities' words stay O
    with pytest.raises(ValueError, match="need the teacher's marginals"):
        select_pseudo_labels([post], 0.2, outside_min=0.9)


GOLD_P1 = [Entity(0, 1, "PER"), Entity(2, 3, "PER"), Entity(4, 5, "ORG")]


def test_pseudo_label_precision_against_hidden_labels():
    hidden = {
        "p1": Example(
            "p1", scored_post().tokens, None, [Entity(0, 1, "PER"), Entity(2, 3, "PER"), Entity(4, 5, "ORG")]
        ),
        "p2": Example("p2", ["Anna", "sings"], None, [Entity(0, 1, "PER")]),
    }
    preds = [scored_post(), confident_post()]
    kept, _ = select_pseudo_labels(preds, tau=0.2)
    q = pseudo_label_quality(preds, kept, hidden, tau=0.2)
    # kept: Obama (right), Berlin LOC (gold says ORG), Anna (right)
    assert (q["correct_kept"], q["n_kept"]) == (2, 3) and q["precision_kept"] == pytest.approx(2 / 3)
    assert (q["correct_all"], q["n_all"]) == (3, 5)
    assert (q["correct_uncertain"], q["n_uncertain"]) == (1, 2)
    assert q["recall_kept_posts"] == pytest.approx(2 / 4)


# ------------------------------------------------------------------------------------ soft and partial losses


def brute_force_log_sum(crf, em, weights):
    """log sum over every tag path of exp(score) * prod_t weights[t, y_t] (one post)."""
    start, trans, end = crf._potentials()
    total = []
    for path in itertools.product(range(em.shape[1]), repeat=em.shape[0]):
        w = math.prod(float(weights[t, k]) for t, k in enumerate(path))
        if w == 0:
            continue
        s = start[path[0]] + end[path[-1]] + sum(em[t, k] for t, k in enumerate(path))
        s = s + sum(trans[a, b] for a, b in zip(path, path[1:]))
        total.append(float(s) + math.log(w))
    return torch.logsumexp(torch.tensor(total, dtype=torch.float64), 0)


def test_crf_target_nll_is_nll_for_one_hot_partial_for_zero_rows_and_weighted_for_soft():
    torch.manual_seed(0)
    crf = LinearChainCRF.from_bio_labels(LABELS)
    with torch.no_grad():
        crf.transitions.normal_()
        crf.start.normal_()
        crf.end.normal_()
    em = torch.randn(1, 4, 5)
    tags = torch.tensor([[1, 2, 0, 3]])
    one_hot = torch.nn.functional.one_hot(tags, 5).float()
    assert float(crf.target_nll(em, one_hot)[0]) == pytest.approx(
        float(crf.nll(em, tags, reduction="none")[0]), abs=1e-4
    )
    log_z = brute_force_log_sum(crf, em[0], torch.ones(4, 5))
    partial = one_hot.clone()
    partial[0, 1:3] = 0  # words 1 and 2 unlabelled
    weights = partial[0].clone()
    weights[1:3] = 1
    expected = log_z - brute_force_log_sum(crf, em[0], weights)
    assert float(crf.target_nll(em, partial)[0]) == pytest.approx(float(expected), abs=1e-4)
    assert float(crf.target_nll(em, torch.zeros(1, 4, 5))[0]) == pytest.approx(0.0, abs=1e-5)
    soft = torch.softmax(torch.randn(1, 4, 5), -1)
    expected = log_z - brute_force_log_sum(crf, em[0], soft[0])
    assert float(crf.target_nll(em, soft)[0]) == pytest.approx(float(expected), abs=1e-4)
    # differentiable: one gradient step on the soft targets lowers the loss
    em.requires_grad_(True)
    loss = crf.target_nll(em, soft).sum()
    loss.backward()
    assert crf.target_nll(em.detach() - 0.1 * em.grad, soft).sum() < loss


def test_softmax_target_loss_skips_unlabelled_words():
    head = SoftmaxHead(4, LABELS)
    em = torch.randn(1, 3, 5)
    tags = torch.tensor([[1, 0, 3]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    one_hot = torch.nn.functional.one_hot(tags, 5).float()
    assert float(head.target_loss(em, one_hot, mask)[0]) == pytest.approx(float(head.loss(em, tags, mask)[0]), abs=1e-5)
    one_hot[0, 1] = 0
    only = torch.nn.functional.cross_entropy(em[0, [0, 2]], tags[0, [0, 2]])
    assert float(head.target_loss(em, one_hot, mask)[0]) == pytest.approx(float(only), abs=1e-5)


def test_pseudo_posts_reach_the_batch_as_partial_and_soft_targets(tiny_encoder, tmp_path):
    post = scored_post()
    kept, _ = select_pseudo_labels([post], 0.2, uncertain="mask")
    soft_rows = [[0.2, 0.2, 0.2, 0.2, 0.2] for _ in post.tokens]
    soft, _ = select_pseudo_labels([confident_post()], 0.2, marginals=[soft_rows[:2]], labels=LABELS)
    encoded = [
        EncodedPost(0, [101, 1, 2, 3, 4, 5, 6, 7, 102], list(range(1, 8)), [(i, i + 1) for i in range(1, 8)],
                    [0] * 7, [1, 0, 1, 0, 3, 0, 3]),
        EncodedPost(1, [101, 1, 2, 102], [1, 2], [(1, 2), (2, 3)], [0, 0], [1, 0]),
    ]  # fmt: skip
    apply_pseudo_labels(encoded, [kept[0], soft[0]], LABELS, "pseudo.jsonl")
    assert encoded[0].labels == [1, 0, -100, 0, 3, 0, -100] and encoded[0].targets is None
    assert encoded[1].targets == [[0.2] * 5, [0.2] * 5]
    gold = EncodedPost(2, [101, 1, 102], [1], [(1, 2)], [0], [3])
    batch = PostCollator(0, num_labels=5)([*encoded, gold])
    t = batch["targets"]
    assert t.shape == (3, 7, 5)
    assert t[0, 2].sum() == 0 and t[0, 6].sum() == 0 and t[0, 0, 1] == 1 and t[0, 4, 3] == 1
    assert torch.allclose(t[1, :2], torch.full((2, 5), 0.2)) and t[1, 2:].sum() == 0
    assert t[2, 0, 3] == 1 and t[2, 1:].sum() == 0
    assert "targets" not in PostCollator(0, num_labels=5)([gold])  # hard labels only: the plain loss
    assert "targets" not in PostCollator(0)(encoded)  # prediction batches never carry targets
    bad = Example("x", ["a"], None, [], source="predicted", meta={"pseudo": {"word_targets": [[1.0]], "labels": ["O"]}})
    with pytest.raises(Exception, match=r"pseudo.jsonl \[id x\]: word_targets are over labels"):
        apply_pseudo_labels([EncodedPost(0, [101, 1, 102], [1], [(1, 2)], [0], [0])], [bad], LABELS, "pseudo.jsonl")


def test_gold_synthetic_and_pseudo_posts_share_the_non_gold_pool(tiny_encoder, tmp_path):
    rome = ["Anna", "went", "to", "Rome"]
    synthetic = [Example(f"s{i}", rome, None, [Entity(0, 1, "PER")], "synthetic") for i in range(3)]
    write_jsonl(synthetic, tmp_path / "syn.jsonl")
    kept, _ = select_pseudo_labels([scored_post(), confident_post()], 0.2)
    write_jsonl(kept, tmp_path / "pseudo.jsonl")
    cfg = load_config(
        [
            "data.gold_limit=20",
            "data.mixing=concat",
            f"data.synthetic={tmp_path / 'syn.jsonl'}",
            "data.synthetic_weight=0.5",
            f"data.pseudo={tmp_path / 'pseudo.jsonl'}",
            "data.pseudo_weight=0.25",
            "data.types=[PER,LOC,ORG,OTHER]",
        ]
    )
    dm = GMNERDataModule(cfg.data, tiny_encoder, seed=0)
    dm.setup("fit")
    pool = dm.encoded["synthetic"]
    assert [p.weight for p in pool] == [0.5, 0.5, 0.5, 0.25, 0.25]
    assert [p.index for p in pool] == [20, 21, 22, 23, 24]
    assert pool[3].labels[2] == -100 and pool[3].labels[0] == dm.label_ids["B-PER"]  # Merkel masked, Obama kept
    posts, n_gold = dm.train_posts(0)
    assert n_gold == 20 and len(posts) == 25
    batch = dm._collator(train=True)(posts[18:25])
    assert batch["targets"].shape[2] == 9 and batch["targets"][5, 2].sum() == 0


def test_uncertain_pseudo_labels_delegated_to_the_oracle_simulation_become_confident(tmp_path):
    from refineg.stages.selftrain.run import delegate

    gold = Example("p1", scored_post().tokens, None, [Entity(0, 1, "PER"), Entity(2, 3, "PER"), Entity(4, 5, "LOC")])
    write_jsonl([gold], tmp_path / "pool_gold.jsonl")
    cfg = load_selftrain_config(
        ["selftrain.refine_backend=oracle", "selftrain.tau=0.2", "data.unlabeled_from_train=true"]
    )
    refined, report = delegate([scored_post()], cfg, tmp_path / "round1", ["PER", "LOC"], tmp_path / "pool_gold.jsonl")
    assert report["simulated"] and report["backend"] == "oracle (simulation)" and report["delegated"] == 2
    # Merkel (0.5) confirmed; Paris (0.21) is no gold entity: dropped by the span check
    assert spans(refined[0]) == [(0, 1, "PER"), (2, 3, "PER"), (4, 5, "LOC")]
    assert refined[0].meta["verified"] == [1]
    kept, counts = select_pseudo_labels(refined, tau=0.2)
    assert spans(kept[0]) == [(0, 1, "PER"), (2, 3, "PER"), (4, 5, "LOC")] and "unlabeled" not in kept[0].meta["pseudo"]
    assert counts["uncertain_entities"] == 0
    assert cfg.refine.gold is None and cfg.refine.backend == "mllm"  # the stage's values did not leak into cfg


# ------------------------------------------------------------------------------------------------ the rounds


def rounds_with(*f1):
    return [{"round": k, "dev_mner_f1": v} for k, v in enumerate(f1)]


def test_stop_rule_and_teacher():
    assert stop_reason([], 3, 1, 0.0) is None
    assert stop_reason(rounds_with(0.60), 3, 1, 0.0) is None
    assert stop_reason(rounds_with(0.60, 0.62), 3, 1, 0.0) is None
    assert stop_reason(rounds_with(0.60, 0.62, 0.61), 3, 1, 0.0).startswith("dev: no gain over 0.6200")
    assert stop_reason(rounds_with(0.60, 0.62, 0.61), 3, 2, 0.0) is None  # patience 2: one more round
    assert stop_reason(rounds_with(0.60, 0.62, 0.61, 0.62), 5, 2, 0.0).startswith("dev: no gain")
    assert stop_reason(rounds_with(0.60, 0.605), 3, 1, 0.01).startswith("dev: no gain")  # below min_delta
    assert stop_reason(rounds_with(0.60, 0.62, 0.63, 0.64), 3, 1, 0.0).startswith("max_rounds")
    assert stop_reason(rounds_with(0.60), 0, 1, 0.0).startswith("max_rounds")
    assert pick_teacher(rounds_with(0.60, 0.62, 0.61), "best") == 1
    assert pick_teacher(rounds_with(0.60, 0.60), "best") == 0
    assert pick_teacher(rounds_with(0.60, 0.62, 0.61), "last") == 2


def test_rounds_with_their_own_epochs_are_scored_every_epoch_while_round_0_keeps_its_validation_interval(tmp_path):
    from refineg.stages.selftrain.run import _round_cfg

    cfg = load_selftrain_config(
        ["trainer.max_epochs=42", "trainer.check_val_every_n_epoch=6", "selftrain.epochs=3", "data.unlabeled=x.jsonl"]
    )
    r0, r1 = _round_cfg(cfg, tmp_path, 0, None, None), _round_cfg(cfg, tmp_path, 1, tmp_path / "p.jsonl", None)
    assert (r0.trainer.max_epochs, r0.trainer.check_val_every_n_epoch) == (42, 6)
    assert (r1.trainer.max_epochs, r1.trainer.check_val_every_n_epoch) == (3, 1)
    cfg = load_selftrain_config(["trainer.max_epochs=6", "trainer.check_val_every_n_epoch=2", "data.unlabeled=x.jsonl"])
    r1 = _round_cfg(cfg, tmp_path, 1, tmp_path / "p.jsonl", None)  # no selftrain.epochs: the rounds train as round 0
    assert (r1.trainer.max_epochs, r1.trainer.check_val_every_n_epoch) == (6, 2)


def test_selftrain_rounds_end_to_end_on_the_sample(tiny_encoder, tmp_path):
    from refineg.stages.selftrain import run_selftrain

    os.environ.pop("REFINEG_RUN_NAME", None)
    over = {"selftrain.rounds": 2, "selftrain.soft_targets": "true"}
    cfg = load_selftrain_config(tiny_overrides(tiny_encoder, tmp_path, "st", **over))
    state = run_selftrain(cfg)
    rounds = state["rounds"]
    # the rounds ran until the stop rule said so, and not one round longer
    assert all(stop_reason(rounds[:k], 2, 1, 0.0) is None for k in range(len(rounds)))
    assert state["stopped"] == stop_reason(rounds, 2, 1, 0.0) is not None
    assert state["gold_only_dev_mner_f1"] == rounds[0]["dev_mner_f1"]
    assert state["best_round"] == pick_teacher(rounds, "best")
    r1 = rounds[1]
    assert r1["teacher_round"] == 0 and r1["pseudo"]["pool_posts"] == 40
    pseudo = read_jsonl(tmp_path / "st" / "round1" / "pseudo.jsonl")
    assert len(pseudo) == r1["pseudo"]["posts"] and sum(len(p.entities) for p in pseudo) == r1["pseudo"]["entities"]
    assert r1["pseudo_quality"]["n_kept"] == r1["pseudo"]["entities"]
    # soft targets: the teacher's CRF marginals, one distribution per word
    rows = [p.meta["pseudo"]["word_targets"] for p in pseudo]
    assert all(len(r) == len(p.tokens) for r, p in zip(rows, pseudo))
    assert all(sum(w) == pytest.approx(1.0, abs=1e-3) for r in rows for w in r)
    gold_ids = set(json.loads((tmp_path / "st" / "round1" / "gold_ids.json").read_text()))
    assert len(gold_ids) == 48 and not gold_ids & {p.id for p in pseudo}
    # round 1 trained on gold + pseudo-labelled posts (concat), dev only
    config = (tmp_path / "st" / "round1" / "config.yaml").read_text()
    assert "mixing: concat" in config and "pseudo.jsonl" in config
    on_disk = json.loads((tmp_path / "st" / "selftrain.json").read_text())
    assert on_disk["rounds"] == rounds


def test_killed_run_continues_from_the_last_finished_round(tiny_encoder, tmp_path):
    args = tiny_overrides(tiny_encoder, tmp_path, "resume", **{"selftrain.rounds": 1, "trainer.max_epochs": 2})
    cmd = [sys.executable, "-m", "refineg.cli", "selftrain", *args]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    state = tmp_path / "resume" / "selftrain.json"
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = json.loads(state.read_text())
    assert len(first["rounds"]) == 1 and "stopped" not in first  # killed during round 1
    ckpt0 = Path(first["rounds"][0]["checkpoint"])
    stamp = ckpt0.stat().st_mtime_ns
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    final = json.loads(state.read_text())
    assert final["rounds"][0] == first["rounds"][0] and ckpt0.stat().st_mtime_ns == stamp  # round 0 not redone
    assert [r["round"] for r in final["rounds"]] == [0, 1] and final["stopped"]
    assert "best round" in out.stdout
    # the same run name with other settings is refused
    from refineg.errors import UsageError
    from refineg.stages.selftrain import run_selftrain

    with pytest.raises(UsageError, match=r"written by another configuration .* use another run_name"):
        run_selftrain(load_selftrain_config([*args, "selftrain.tau=0.5"]))
    # more rounds are a continuation, not another configuration: round 2 runs unless dev already stopped the run
    more = run_selftrain(load_selftrain_config([*args, "selftrain.rounds=2"]))
    assert more["rounds"][:2] == final["rounds"]
    assert len(more["rounds"]) == (3 if stop_reason(final["rounds"], 2, 1, 0.0) is None else 2)


# --------------------------------------------------------------------------------------------- CLI errors


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ([], "error: self-training needs unlabelled posts: data.unlabeled=FILE or data.unlabeled_from_train=true"),
        (["data.unlabeled_from_train=true"], "error: data.unlabeled_from_train=true needs data.gold_limit below"),
        (["data.unlabeled=/nonexistent/pool.jsonl"], "error: data.unlabeled=/nonexistent/pool.jsonl: "),
        (["data.unlabeled=TMP/pool.xyz"], "error: data.unlabeled=TMP/pool.xyz: cannot tell its format"),
        (["data.unlabeled=x.jsonl", "selftrain.selection=posts"], "error: selftrain.selection must be one of"),
        (["data.unlabeled=x.jsonl", "selftrain.soft_targets=true", "model.head=softmax"], "error: selftrain.soft_"),
        (["data.unlabeled=x.jsonl", "selftrain.rounds=two"], "error: bad configuration: "),
        (["data.unlabeled=x.jsonl", "selftrain.tua=0.3"], "error: bad configuration: "),
        (["data.unlabeled=x.jsonl", "selftrain.refine_backend=gpt"], "error: selftrain.refine_backend='gpt': choose"),
        (
            ["data.unlabeled=x.jsonl", "selftrain.refine_backend=oracle", "refine.tau=2"],
            "error: refine: tau must be in",
        ),
    ],
)
def test_cli_errors_are_one_line(tmp_path, extra, needle, capsys):
    from refineg.cli import main

    (tmp_path / "pool.xyz").write_text("a b c\n")
    extra = [e.replace("TMP", str(tmp_path)) for e in extra]
    code = main(["selftrain", f"runs_dir={tmp_path}", "run_name=e", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(needle.replace("TMP", str(tmp_path))), err
    assert not list(tmp_path.glob("e/round*"))  # nothing trained


def test_delegation_settings_that_cannot_work_are_refused_before_training():
    from refineg.stages.selftrain.config import load_selftrain_config

    with pytest.raises(ValueError, match="gated refinement mode; refine.mode='release'"):
        load_selftrain_config(["selftrain.refine_backend=oracle", "refine.mode=release", "refine.gold=g.jsonl"])
    with pytest.raises(ValueError, match="simulates an MLLM from gold labels: set refine.gold"):
        load_selftrain_config(["selftrain.refine_backend=oracle", "data.unlabeled=pool.jsonl"])
    ok = load_selftrain_config(["selftrain.refine_backend=oracle", "data.unlabeled_from_train=true"])
    assert ok.selftrain.refine_backend == "oracle"


def test_every_round_shares_one_llm_cache_in_the_run_folder(tmp_path, monkeypatch):
    from refineg.config import as_dictconfig
    from refineg.stages import refinement
    from refineg.stages.selftrain.config import load_selftrain_config
    from refineg.stages.selftrain.run import delegate

    gold = [Example("p1", ["Barack", "Obama", "visits", "Paris"], entities=[Entity(0, 2, "PER"), Entity(3, 4, "LOC")])]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    pred = [
        Example(
            "p1",
            ["Barack", "Obama", "visits", "Paris"],
            entities=[Entity(0, 2, "ORG", uncertainty=0.9), Entity(3, 4, "LOC", uncertainty=0.0)],
        )
    ]
    seen = []
    real = refinement.create_refinement_backend

    def spy(cfg, run_dir=None):
        seen.append(Path(run_dir))
        return real(cfg, run_dir=run_dir)

    monkeypatch.setattr(refinement, "create_refinement_backend", spy)
    cfg = as_dictconfig(
        load_selftrain_config(["selftrain.refine_backend=oracle", f"refine.gold={tmp_path / 'gold.jsonl'}"])
    )
    for r in (1, 2):
        refined, _ = delegate(pred, cfg, tmp_path / f"round{r}", list(cfg.data.types), llm_dir=tmp_path)
        assert [e.type for e in refined[0].entities] == ["PER", "LOC"]  # the oracle corrected the uncertain type
    assert seen == [tmp_path, tmp_path]


def test_an_ensemble_teacher_joins_a_continued_run_and_its_dev_score_is_recorded(tiny_encoder, tmp_path):
    from refineg.errors import UsageError
    from refineg.inference.ensemble import ensemble_tagger
    from refineg.inference.predictor import TaggerPredictor
    from refineg.metrics import evaluate_examples
    from refineg.stages.selftrain import run_selftrain

    os.environ.pop("REFINEG_RUN_NAME", None)
    alone = tiny_overrides(tiny_encoder, tmp_path, "other", seed=7, **{"selftrain.rounds": 0})
    other = run_selftrain(load_selftrain_config(alone))
    member = other["rounds"][0]["checkpoint"]
    args = tiny_overrides(tiny_encoder, tmp_path, "student", **{"selftrain.rounds": 0})
    first = run_selftrain(load_selftrain_config(args))
    assert len(first["rounds"]) == 1
    with pytest.raises(ValueError, match="selftrain.ensemble: no such checkpoint"):
        load_selftrain_config([*args, f"selftrain.ensemble=[{tmp_path}/none.ckpt]"])
    more = [*args, "selftrain.rounds=1", f"selftrain.ensemble=[{member}]"]
    state = run_selftrain(load_selftrain_config(more))  # a continuation: the extra member may join later rounds
    assert state["rounds"][0] == first["rounds"][0]
    r1 = state["rounds"][1]
    assert r1["teacher_members"] == [first["rounds"][0]["checkpoint"], member]
    cfg = load_selftrain_config(more)
    dev = read_split(cfg.data, "dev")
    preds = TaggerPredictor(ensemble_tagger(r1["teacher_members"])).predict(dev, progress=False)
    assert r1["teacher_dev_mner_f1"] == pytest.approx(evaluate_examples(dev, preds)["mner"]["f1"], abs=1e-9)
    with pytest.raises(UsageError, match="written by another configuration"):
        run_selftrain(load_selftrain_config([*more, "selftrain.tau=0.5"]))


def test_rounds_train_on_gold_synthetic_and_pseudo_posts_together(tiny_encoder, tmp_path, caplog):
    import logging
    import re

    from refineg.stages.selftrain import run_selftrain

    os.environ.pop("REFINEG_RUN_NAME", None)
    rome = ["Anna", "went", "to", "Rome"]
    synthetic = [Example(f"s{i}", rome, None, [Entity(0, 1, "PER")], "synthetic") for i in range(5)]
    write_jsonl(synthetic, tmp_path / "s.jsonl")
    over = {"selftrain.rounds": 1, "data.synthetic": tmp_path / "s.jsonl", "data.mixing": "concat"}
    with caplog.at_level(logging.INFO, logger="refineg.datamodules.gmner"):
        state = run_selftrain(load_selftrain_config(tiny_overrides(tiny_encoder, tmp_path, "syn", **over)))
    sizes = [eval(m.group(1)) for m in re.finditer(r"posts: (\{[^}]*\})", caplog.text)]  # noqa: S307 (our own log)
    assert [s["synthetic"] for s in sizes] == [5, 5] and [s["train"] for s in sizes] == [48, 48]
    assert [s["pseudo"] for s in sizes] == [0, state["rounds"][1]["pseudo"]["posts"]]
    assert state["rounds"][1]["pseudo"]["posts"] > 0


def test_ensemble_members_that_cannot_join_are_refused_before_training(tiny_encoder, tmp_path, capsys):
    from refineg.cli import main
    from tests.refine_helpers import make_tiny_tagger, save_checkpoint
    from tests.tiny_models import make_tiny_bert

    not_ckpt = tmp_path / "notes.ckpt"
    not_ckpt.write_text("not a checkpoint")
    elsewhere = make_tiny_bert(tmp_path / "other_encoder")  # the same tiny BERT, saved under another name
    other = save_checkpoint(make_tiny_tagger(str(elsewhere)), tmp_path / "other.ckpt")
    for member, needle in ((not_ckpt, "notes.ckpt: not a PyTorch checkpoint"), (other, "other.ckpt is a tagger")):
        over = {"selftrain.rounds": 1, "selftrain.ensemble": f"[{member}]"}
        assert main(["selftrain", *tiny_overrides(tiny_encoder, tmp_path, f"refused-{member.stem}", **over)]) == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last, last
        assert not (tmp_path / f"refused-{member.stem}" / "round0").exists()  # nothing trained


def test_ensemble_member_with_another_head_is_refused_before_round_0(tiny_encoder, tmp_path, capsys):
    from refineg.cli import main
    from tests.refine_helpers import make_tiny_tagger, save_checkpoint

    os.environ.pop("REFINEG_RUN_NAME", None)
    softmax = save_checkpoint(make_tiny_tagger(tiny_encoder, head="softmax"), tmp_path / "softmax.ckpt")
    over = {"selftrain.rounds": 1, "selftrain.ensemble": f"[{softmax}]"}
    assert main(["selftrain", *tiny_overrides(tiny_encoder, tmp_path, "head", **over)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: selftrain.ensemble: ") and "model.head=softmax" in last, last
    assert not (tmp_path / "head" / "round0").exists()  # refused before round 0 trained
    from refineg.modules.tagger_module import TaggerModule
    from tests.refine_helpers import OPTIM, TYPES

    model = {"backbone": "hf", "encoder": tiny_encoder, "head": "crf", "casing": True, "groundability": True}
    grounding = save_checkpoint(TaggerModule(model, OPTIM, TYPES), tmp_path / "grounding.ckpt")
    over["selftrain.ensemble"] = f"[{grounding}]"
    assert main(["selftrain", *tiny_overrides(tiny_encoder, tmp_path, "ground", **over)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: selftrain.ensemble: ") and "groundability" in last, last
    assert not (tmp_path / "ground" / "round0").exists()


def test_a_round_interrupted_before_it_was_recorded_keeps_its_teacher_members(tiny_encoder, tmp_path):
    from refineg.errors import UsageError
    from refineg.stages.selftrain import run_selftrain

    os.environ.pop("REFINEG_RUN_NAME", None)
    other = run_selftrain(
        load_selftrain_config(tiny_overrides(tiny_encoder, tmp_path, "o", seed=7, **{"selftrain.rounds": 0}))
    )
    member = other["rounds"][0]["checkpoint"]
    args = tiny_overrides(tiny_encoder, tmp_path, "cut", **{"selftrain.rounds": 1, "selftrain.patience": 5})
    first = run_selftrain(load_selftrain_config(args))
    # as if killed after round 1 trained and before selftrain.json recorded it
    state_path = tmp_path / "cut" / "selftrain.json"
    state = json.loads(state_path.read_text())
    state["rounds"] = state["rounds"][:1]
    state_path.write_text(json.dumps(state))
    pseudo = (tmp_path / "cut" / "round1" / "pseudo.jsonl").read_text()
    # round 1 trained on the pseudo-labels of round 0's tagger alone: another teacher cannot take it over
    with pytest.raises(UsageError, match=r"round 1 .*teacher"):
        run_selftrain(load_selftrain_config([*args, f"selftrain.ensemble=[{member}]"]))
    assert (tmp_path / "cut" / "round1" / "pseudo.jsonl").read_text() == pseudo
    again = run_selftrain(load_selftrain_config(args))  # the same teacher continues it
    assert again["rounds"][1]["checkpoint"] == first["rounds"][1]["checkpoint"]
    assert "teacher_members" not in again["rounds"][1]


def test_an_ensemble_teacher_with_the_evidential_head_is_refused_before_training(tmp_path):
    from refineg.stages.selftrain.config import load_selftrain_config

    member = tmp_path / "member.ckpt"
    member.write_bytes(b"")
    base = ["data.unlabeled_from_train=true", f"selftrain.ensemble=[{member}]"]
    with pytest.raises(ValueError, match="the evidential head reads one tagger's word states"):
        load_selftrain_config([*base, "selftrain.head=evidential", "selftrain.head_kwargs={path: e.pt}"])
    assert load_selftrain_config([*base, "selftrain.head=crf_marginal"]).selftrain.ensemble == [str(member)]


# ---------------------------------------------------------------------------------------------------- label cache


def test_runs_with_the_same_ensemble_teacher_label_the_pool_once(tiny_encoder, tmp_path, monkeypatch):
    """Two seeds continued with each other's round 0 share a teacher: the second reads the first's labels."""
    from refineg.stages.selftrain import run, run_selftrain

    os.environ.pop("REFINEG_RUN_NAME", None)
    cache = tmp_path / "shared"
    # one pool file for both seeds (the training posts outside each seed's gold sample would differ)
    train = read_split(load_config([]).data, "train")
    write_jsonl(train[-30:], tmp_path / "pool.jsonl")
    pool = {
        "data.unlabeled_from_train": "false",
        "data.unlabeled": tmp_path / "pool.jsonl",
        "data.unlabeled_limit": None,
    }
    args = {
        n: tiny_overrides(tiny_encoder, tmp_path, n, seed=s, **{"selftrain.soft_targets": "true", **pool})
        for n, s in (("a", 1), ("b", 2))
    }
    first = {n: run_selftrain(load_selftrain_config([*a, "selftrain.rounds=0"])) for n, a in args.items()}
    ckpt = {n: st["rounds"][0]["checkpoint"] for n, st in first.items()}
    more = {n: [*a, "selftrain.rounds=1", f"selftrain.label_cache={cache}"] for n, a in args.items()}
    a = run_selftrain(load_selftrain_config([*more["a"], f"selftrain.ensemble=[{ckpt['b']}]"]))

    def no_teacher(*_args):
        raise AssertionError("the pool was labelled again")

    monkeypatch.setattr(run, "teacher_estimator", no_teacher)
    b = run_selftrain(load_selftrain_config([*more["b"], f"selftrain.ensemble=[{ckpt['a']}]"]))
    ra, rb = a["rounds"][1], b["rounds"][1]
    assert (ra["labels_cached"], rb["labels_cached"]) == (False, True)
    assert rb["teacher_dev_mner_f1"] == ra["teacher_dev_mner_f1"] and rb["pseudo"] == ra["pseudo"]
    pa, pb = (read_jsonl(tmp_path / n / "round1" / "pseudo.jsonl") for n in ("a", "b"))
    assert [p.to_dict() for p in pb] == [p.to_dict() for p in pa]  # the same posts, entities and soft rows
    assert any(p.meta["pseudo"].get("word_targets") for p in pa)
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1  # one entry: one teacher, one pool
    # a run whose teacher is its own round 0 alone: another key, labelled, kept in its own run folder
    monkeypatch.undo()
    alone = run_selftrain(load_selftrain_config([*more["a"], "run_name=a_alone", "selftrain.label_cache=null"]))
    assert alone["rounds"][1]["labels_cached"] is False
    assert len(list((tmp_path / "a_alone" / "labels").glob("*/meta.json"))) == 1


def test_a_round_continued_after_an_interruption_does_not_label_again(tiny_encoder, tmp_path, monkeypatch):
    from refineg.stages.selftrain import run, run_selftrain

    os.environ.pop("REFINEG_RUN_NAME", None)
    args = tiny_overrides(tiny_encoder, tmp_path, "cut", **{"selftrain.rounds": 1})
    done = run_selftrain(load_selftrain_config(args))
    pseudo = (tmp_path / "cut" / "round1" / "pseudo.jsonl").read_text()
    # as if the run had stopped while round 1 trained: its record and training output are gone, its labels kept
    state_path = tmp_path / "cut" / "selftrain.json"
    state = json.loads(state_path.read_text())
    state["rounds"] = state["rounds"][:1]
    state_path.write_text(json.dumps(state))
    (tmp_path / "cut" / "round1" / "metrics.json").unlink()

    def no_teacher(*_args):
        raise AssertionError("the pool was labelled again")

    monkeypatch.setattr(run, "teacher_estimator", no_teacher)
    again = run_selftrain(load_selftrain_config(args))
    assert again["rounds"][1]["labels_cached"] is True and done["rounds"][1]["labels_cached"] is False
    assert (tmp_path / "cut" / "round1" / "pseudo.jsonl").read_text() == pseudo
    assert again["rounds"][1]["pseudo"] == done["rounds"][1]["pseudo"]


def test_label_cache_lock_lets_one_caller_label_while_the_others_wait(tmp_path):
    import threading

    from refineg.stages.selftrain.label_cache import cached_labels

    calls, results = [], []
    post = Example("p", ["Anna", "sings"], None, [Entity(0, 1, "PER", uncertainty=0.25)], source="predicted")

    def label():
        calls.append(1)
        time.sleep(0.3)  # the others arrive while this one holds the lock
        return {
            "preds": [post],
            "rows": [[[0.1, 0.9], [1.0, 0.0]]],
            "labels": ["O", "B-PER"],
            "teacher_dev_mner_f1": 0.5,
        }

    threads = [threading.Thread(target=lambda: results.append(cached_labels(tmp_path, "k", label))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(cached for _, cached in results) == [False, True, True]
    for labels, _ in results:
        assert labels["preds"][0].entities[0].uncertainty == 0.25 and labels["teacher_dev_mner_f1"] == 0.5
        assert labels["rows"] == [[[pytest.approx(0.1), pytest.approx(0.9)], [1.0, 0.0]]]


def _key_inputs(tmp_path):
    from refineg.config import as_dictconfig

    cfg = as_dictconfig(load_selftrain_config([]))
    posts = [Example("p1", ["Anna", "sings"], "1.jpg", [], source="predicted", image_size=(640, 480))]
    return cfg, posts


def test_label_key_changes_when_a_member_is_replaced_by_a_copy_that_keeps_the_mtime(tmp_path):
    """``cp -p``, ``rsync -a`` and ``tar x`` put another checkpoint of the same size at the path with the old mtime."""
    from refineg.stages.selftrain.label_cache import label_key

    cfg, posts = _key_inputs(tmp_path)
    member, other = tmp_path / "m.ckpt", tmp_path / "other.ckpt"
    member.write_bytes(b"a" * 64)
    other.write_bytes(b"b" * 64)
    before = label_key([str(member)], posts, cfg)
    assert label_key([str(member)], posts, cfg) == before  # nothing changed: the same key
    stat = os.stat(member)
    time.sleep(0.05)  # past the file system's timestamp granularity
    shutil.copyfile(other, member)
    os.utime(member, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # what cp -p does from a source of that mtime
    assert (os.stat(member).st_size, os.stat(member).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert label_key([str(member)], posts, cfg) != before


def test_label_key_covers_the_pool_images_that_the_cached_posts_carry(tmp_path):
    from refineg.stages.selftrain.label_cache import label_key

    cfg, posts = _key_inputs(tmp_path)
    member = tmp_path / "m.ckpt"
    member.write_bytes(b"a")
    moved = [Example("p1", ["Anna", "sings"], "imgs/1.jpg", [], source="predicted", image_size=(640, 480))]
    resized = [Example("p1", ["Anna", "sings"], "1.jpg", [], source="predicted", image_size=(320, 240))]
    keys = {label_key([str(member)], p, cfg) for p in (posts, moved, resized)}
    assert len(keys) == 3


def test_label_key_covers_the_files_named_in_head_kwargs(tmp_path):
    """The ``learned`` and ``evidential`` heads read a fitted model from ``head_kwargs.path``."""
    from refineg.stages.selftrain.label_cache import label_key

    cfg, posts = _key_inputs(tmp_path)
    member, fitted = tmp_path / "m.ckpt", tmp_path / "errors.json"
    member.write_bytes(b"a")
    fitted.write_text('{"w": 1}')
    cfg.selftrain.head, cfg.selftrain.head_kwargs = "learned", {"path": str(fitted)}
    before = label_key([str(member)], posts, cfg)
    time.sleep(0.05)
    fitted.write_text('{"w": 2}')  # refitted in place
    assert label_key([str(member)], posts, cfg) != before


def test_a_label_cache_entry_left_incomplete_is_labelled_again(tmp_path):
    """An entry folder without its meta.json (a removal that stopped half way) is replaced, not a crash."""
    from refineg.stages.selftrain.label_cache import cached_labels

    post = Example("p", ["Anna", "sings"], None, [Entity(0, 1, "PER", uncertainty=0.25)], source="predicted")
    fresh = {"preds": [post], "rows": None, "labels": ["O", "B-PER", "I-PER"], "teacher_dev_mner_f1": None}
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "preds.jsonl").write_text("")
    labels, cached = cached_labels(tmp_path, "k", lambda: fresh)
    assert cached is False and labels is fresh
    again, cached = cached_labels(tmp_path, "k", lambda: pytest.fail("labelled twice"))
    assert cached is True and [p.to_dict() for p in again["preds"]] == [post.to_dict()]
    assert again["labels"] == fresh["labels"] and again["rows"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.lock"]  # no temporary folder left


def test_a_run_started_before_a_config_key_existed_continues_while_the_key_keeps_its_default(tiny_encoder, tmp_path):
    from refineg.errors import UsageError
    from refineg.stages.selftrain import run_selftrain
    from refineg.stages.selftrain.run import same_settings

    assert same_settings({"a": 1}, {"a": 1, "new": 0}, {"a": 5, "new": 0})
    assert not same_settings({"a": 1}, {"a": 1, "new": 2}, {"a": 5, "new": 0})  # set away from its default
    assert not same_settings({"a": 1, "gone": 3}, {"a": 1}, {"a": 1})  # a recorded key this version lacks
    assert not same_settings({"m": {"x": 1}}, {"m": {"x": 2}}, {"m": {"x": 2}})  # a recorded value that differs
    os.environ.pop("REFINEG_RUN_NAME", None)
    args = tiny_overrides(tiny_encoder, tmp_path, "old", **{"selftrain.rounds": 0})
    run_selftrain(load_selftrain_config(args))
    path = tmp_path / "old" / "selftrain.json"
    state = json.loads(path.read_text())
    del state["fingerprint"]["model"]["marginal_kd"]  # as written before model.marginal_kd existed
    path.write_text(json.dumps(state))
    with pytest.raises(UsageError, match="written by another configuration"):
        run_selftrain(load_selftrain_config([*args, "selftrain.rounds=1", "model.marginal_kd=1"]))
    state = run_selftrain(load_selftrain_config([*args, "selftrain.rounds=1"]))
    assert [r["round"] for r in state["rounds"]] == [0, 1]
