"""The region head: its targets and box deltas, refinement, and learnability from frozen random open_clip towers."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from refineg.data import read_jsonl
from refineg.metrics import box_iou
from refineg.stages.grounding import GroundingQuery, create_grounder
from refineg.stages.grounding.region_fit import RegionHeadConfig, build_groups, train_region_head
from refineg.stages.grounding.region_head import (
    RegionHead,
    apply_deltas,
    box_deltas,
    collate_groups,
    regression_target,
    soft_target,
)
from tests.stages.grounding_scenes import chance_rate, make_scenes, write_scenes

OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"
TINY = "refineg-tiny-vit"


@pytest.fixture(scope="module", autouse=True)
def _tiny_open_clip_config():
    import open_clip

    if TINY not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)


def test_soft_target_none_iou_weighted_positives_and_unlearnable():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 8], [0, 0, 10, 6], [20, 20, 30, 30]]  # IoU with gold: 1, 0.8, 0.6, 0
    target = soft_target(boxes, [])
    assert target.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]  # gold none: all mass on none
    assert soft_target([], []).tolist() == [1.0]

    target = soft_target(boxes, [[0, 0, 10, 10]], sharpness=10.0)
    weights = [math.exp(10 * (iou - 1)) for iou in (1.0, 0.8, 0.6)]
    expected = [0.0] + [w / sum(weights) for w in weights] + [0.0]
    assert target.tolist() == pytest.approx(expected, abs=1e-6)
    assert float(target.sum()) == pytest.approx(1.0)
    assert target[1] > target[2] > target[3] > 0  # tighter boxes get more
    # the best gold box counts: the far box matches a second gold box exactly
    two = soft_target(boxes, [[0, 0, 10, 10], [20, 20, 30, 30]])
    assert two[4] == pytest.approx(two[1]) and two[4] > 0
    # threshold is inclusive and configurable
    assert soft_target(boxes, [[0, 0, 10, 10]], iou_threshold=0.8)[3] == 0.0
    assert soft_target(boxes, [[0, 0, 10, 10]], iou_threshold=0.8)[2] > 0

    assert soft_target(boxes, [[100, 100, 120, 120]]) is None  # gold has a box, no candidate matches it
    assert soft_target(boxes[2:], [[0, 0, 10, 10]], iou_threshold=0.7) is None
    assert soft_target([], [[0, 0, 10, 10]]) is None


def test_box_deltas_and_apply_deltas_round_trip():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(50, 2, generator=gen) * 150
    wh = 5 + torch.rand(50, 2, generator=gen) * 90
    boxes = torch.cat([xy, xy + wh], 1)
    xy = torch.rand(50, 2, generator=gen) * 150
    wh = 5 + torch.rand(50, 2, generator=gen) * 90
    gold = torch.cat([xy, xy + wh], 1)
    deltas = box_deltas(boxes, gold)
    assert deltas.shape == (50, 4)
    for box, delta, g in zip(boxes.tolist(), deltas.tolist(), gold.tolist()):
        assert apply_deltas(box, delta, 300, 300) == pytest.approx(g, abs=1e-3)
    assert box_deltas(gold, gold).abs().max() < 1e-6  # already on gold: no move
    # by hand: move right by half a width, up by a quarter height, twice as wide, same height
    assert box_deltas(torch.tensor([[10.0, 20, 30, 60]]), torch.tensor([[10.0, 10, 50, 50]]))[
        0
    ].tolist() == pytest.approx([0.5, -0.25, math.log(2), 0.0])
    assert apply_deltas([10, 20, 30, 60], [0.5, -0.25, math.log(2), 0.0], 100, 100) == pytest.approx([10, 10, 50, 50])
    # clipped to the image
    assert apply_deltas([80, 80, 100, 100], [0.5, 0.5, math.log(3), 0.0], 100, 100) == pytest.approx(
        [70.0, 90.0, 100.0, 100.0]
    )


def test_regression_target_matches_each_box_to_its_best_gold_box():
    boxes = [[0, 0, 10, 10], [0, 0, 10, 6], [21, 20, 31, 30], [50, 50, 60, 60]]
    gold = [[0, 0, 10, 10], [20, 20, 30, 30]]
    deltas, positive = regression_target(boxes, gold)
    assert positive.tolist() == [True, True, True, False]
    assert deltas[0].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert deltas[2].tolist() == pytest.approx([-0.1, 0.0, 0.0, 0.0])  # onto the second gold box
    assert apply_deltas(boxes[1], deltas[1].tolist(), 100, 100) == pytest.approx(gold[0], abs=1e-5)
    empty_d, empty_p = regression_target(boxes, [])
    assert empty_d.shape == (4, 4) and not empty_p.any()


def test_collate_pads_images_and_skips_unlearnable_entities():
    from refineg.stages.grounding.region_head import ImageCandidates, box_geometry

    def group(n, size=(100, 80)):
        boxes = [[float(i), 0.0, float(i + 20), 20.0] for i in range(n)]
        return ImageCandidates(boxes, torch.randn(n, 6), torch.randn(6), box_geometry(boxes, *size), size)

    head = RegionHead(6, 5, types=["PER", "LOC"], hidden=8)
    a, b = group(2), group(4)
    items = [
        (a, [(torch.randn(5), "PER", [[0, 0, 20, 20]]), (torch.randn(5), "LOC", [])]),
        (
            b,
            [
                (torch.randn(5), "MISC", [[90, 60, 99, 79]]),  # no candidate matches: skipped
                (torch.randn(5), "LOC", [[3, 0, 23, 20]]),
            ],
        ),
    ]
    batch = collate_groups(items, head)
    assert int(batch["skipped"]) == 1
    assert batch["regions"].shape == (2, 4, 6) and batch["mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert batch["group"].tolist() == [0, 0, 1] and batch["type_ids"].tolist() == [1, 2, 2]
    assert head.type_ids(["MISC"]).tolist() == [0]  # unknown type
    assert batch["target"].shape == (3, 5) and batch["target"][1].tolist() == [1, 0, 0, 0, 0]
    assert batch["target"][0, 3:].tolist() == [0, 0]  # padding gets no mass
    logits, deltas = head(
        **{k: batch[k] for k in ("regions", "geometry", "mask", "image", "text", "type_ids", "group")}
    )
    assert logits.shape == (3, 5) and deltas.shape == (3, 4, 4)
    assert torch.isinf(logits[:2, 3:]).all() and torch.isfinite(logits[2]).all()


def test_training_survives_a_batch_of_only_unlearnable_entities():
    """An image whose entities' gold boxes no candidate matches gives a batch without targets (batch_size=1)."""
    from refineg.stages.grounding.region_head import ImageCandidates, box_geometry

    gen = torch.Generator().manual_seed(0)
    boxes = [[0.0, 0.0, 20.0, 20.0], [30.0, 0.0, 50.0, 20.0]]

    def group():
        return ImageCandidates(
            boxes,
            torch.randn(2, 6, generator=gen),
            torch.randn(6, generator=gen),
            box_geometry(boxes, 100, 80),
            (100, 80),
        )

    items = [(group(), [(torch.randn(5, generator=gen), "PER", [boxes[i % 2]])]) for i in range(4)]
    items.append((group(), [(torch.randn(5, generator=gen), "PER", [[60.0, 50.0, 90.0, 79.0]])]))
    head, metrics = train_region_head(items, [], 6, 5, ["PER"], RegionHeadConfig(epochs=1, batch_size=1, hidden=8))
    assert math.isfinite(metrics["train/loss"]) and not head.training


def _head_with_fixed_deltas(image_dim, text_dim, delta, refine=True):
    """A random head whose box deltas are ``delta`` for every box (its scores stay random)."""
    torch.manual_seed(0)
    head = RegionHead(image_dim, text_dim, types=["PER", "OTHER"], hidden=16, refine=refine)
    if refine:
        # the box output layer: one score and four deltas per box
        (last,) = [m for m in head.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 5]
        with torch.no_grad():
            last.weight[1:] = 0.0
            last.bias[1:] = torch.tensor(delta)
    return head.eval()


def test_refinement_moves_the_answered_box():
    scene = make_scenes(1, seed=3)[0]
    grounder = create_grounder("clip", model_name=TINY)  # grid proposals
    width, height = scene.image.size
    delta = [0.1, -0.05, math.log(1.25), math.log(0.8)]
    grounder.head = _head_with_fixed_deltas(grounder.embedder.image_dim, grounder.text_dim, delta)
    cands = grounder.candidates(scene.post, scene.image)
    probs, deltas = grounder.head.predict(cands)
    assert torch.allclose(deltas, torch.tensor(delta).expand_as(deltas))
    scored = grounder.score_entities(cands)
    result = grounder.ground([GroundingQuery(scene.post, scene.image)])[0]
    for row, ((scores, boxes), cand, answer) in enumerate(zip(scored, cands, result.boxes)):
        assert torch.allclose(scores, probs[row, 1:])
        for box, moved in zip(cand.boxes, boxes):  # every candidate moved by the deltas, by hand
            x1, y1, x2, y2 = box
            w, h = x2 - x1, y2 - y1
            cx, cy = (x1 + x2) / 2 + 0.1 * w, (y1 + y2) / 2 - 0.05 * h
            w, h = 1.25 * w, 0.8 * h
            expected = [max(0, cx - w / 2), max(0, cy - h / 2), min(width, cx + w / 2), min(height, cy + h / 2)]
            assert moved == pytest.approx(expected, abs=1e-4)
        best = int(scores.argmax())
        assert answer == [pytest.approx(boxes[best], abs=0.005)]
        assert answer[0] != pytest.approx(cand.boxes[best], abs=1.0)  # moved off the proposal

    # without refinement the answer is the proposal itself
    grounder.head = _head_with_fixed_deltas(grounder.embedder.image_dim, grounder.text_dim, delta, refine=False)
    result = grounder.ground([GroundingQuery(scene.post, scene.image)])[0]
    probs, deltas = grounder.head.predict(cands)
    assert not deltas.any()
    for row, (cand, answer) in enumerate(zip(cands, result.boxes)):
        assert answer == [pytest.approx(cand.boxes[int(probs[row, 1:].argmax())], abs=0.005)]


def _accuracy(scenes, results):
    ok = [
        bool(boxes) and box_iou(boxes[0], ent.boxes[0]) >= 0.5
        for s, r in zip(scenes, results)
        for ent, boxes in zip(s.post.entities, r.boxes)
    ]
    return float(np.mean(ok))


def test_trained_head_picks_the_named_photo_far_above_chance(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, test = make_scenes(100, seed=1), make_scenes(40, seed=2)
    assert not {s.post.id for s in train} & {s.post.id for s in test}
    train_posts, proposals = write_scenes(train, tmp_path, "train")
    write_scenes(test, tmp_path, "test")
    scorer = create_grounder("clip", model_name=TINY, proposals="file", proposal_kwargs={"path": str(proposals)})

    groups, index, missing = build_groups(scorer, read_jsonl(train_posts), tmp_path)
    n_entities = sum(len(s.post.entities) for s in train)
    assert missing == 0 and len(groups) == len(train) and len(index) == n_entities
    assert sum(len(ents) for _, ents in groups) == n_entities
    for (group, ents), scene in zip(groups[:5], train[:5]):
        assert group.boxes == scene.candidates and group.regions.shape == (len(scene.candidates), 32)
        assert [gold for _, _, gold in ents] == [e.boxes for e in scene.post.entities]
    # every entity is learnable: one of its candidates is its pasted photo's box
    assert all(soft_target(g.boxes, gold) is not None for g, ents in groups for _, _, gold in ents)
    assert int(collate_groups(groups, RegionHead(32, 32))["skipped"]) == 0

    queries = [GroundingQuery(s.post, s.image) for s in test]
    cosine_acc = _accuracy(test, scorer.ground(queries))
    types = sorted({e.type for s in train for e in s.post.entities})
    scorer.head, metrics = train_region_head(
        groups, [], scorer.embedder.image_dim, scorer.text_dim, types, RegionHeadConfig(epochs=20, lr=3e-3), seed=0
    )
    assert not scorer.head.training and scorer.head.config["types"] == ["OTHER", "PER"]
    results = scorer.ground(queries)
    head_acc = _accuracy(test, results)

    chance = chance_rate(test)  # a uniformly random candidate
    pasted_chance = float(np.mean([1 / len(s.post.entities) for s in test for _ in s.post.entities]))
    assert 0 < chance < 0.1
    assert metrics["train/loss"] < 0.5
    assert head_acc >= 0.8, (head_acc, chance, cosine_acc)
    assert head_acc >= 10 * chance
    assert head_acc >= 2 * pasted_chance  # not just "some pasted photo": the one the caption names
    assert head_acc > cosine_acc + 0.4  # random towers alone cannot do it
    assert "trained head" in scorer.label and all(r.status == "ok" for r in results)
