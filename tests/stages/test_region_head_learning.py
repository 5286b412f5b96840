"""Learnability: the region head learns which pasted photo a caption names, from frozen random open_clip towers."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from refineg.metrics import box_iou
from refineg.stages.grounding import GroundingQuery, create_grounder
from refineg.stages.grounding.region_fit import RegionHeadConfig, train_region_head, training_items
from tests.stages.grounding_scenes import chance_rate, make_scenes

OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"
TINY = "refineg-tiny-vit"


@pytest.fixture(scope="module", autouse=True)
def _tiny_open_clip_config():
    import open_clip

    if TINY not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)


def _accuracy(scenes, results):
    ok = [bool(boxes) and box_iou(boxes[0], ent.boxes[0]) >= 0.5
          for s, r in zip(scenes, results) for ent, boxes in zip(s.post.entities, r.boxes)]
    return float(np.mean(ok))


def test_trained_head_picks_the_named_photo_far_above_chance(tmp_path):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    train, test = make_scenes(100, seed=1), make_scenes(40, seed=2)
    assert not {s.post.id for s in train} & {s.post.id for s in test}
    proposals = tmp_path / "proposals.jsonl"
    proposals.write_text("".join(json.dumps({"image": s.post.image, "boxes": s.candidates}) + "\n"
                                 for s in train + test))
    scorer = create_grounder("clip", model_name=TINY, proposals="file", proposal_kwargs={"path": str(proposals)})

    items = [(cand, ent.boxes) for s in train for ent, cand in zip(s.post.entities, scorer.candidates(s.post, s.image))]
    pairs, skipped = training_items(items)
    assert skipped == 0 and len(pairs) == sum(len(s.post.entities) for s in train)
    assert all(len(cand.boxes) == len(s.candidates) for s in train[:5] for cand in scorer.candidates(s.post, s.image))

    queries = [GroundingQuery(s.post, s.image) for s in test]
    cosine_acc = _accuracy(test, scorer.ground(queries))
    scorer.head, metrics = train_region_head(pairs, [], scorer.embedder.embed_dim,
                                             RegionHeadConfig(epochs=20, lr=3e-3), seed=0)
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
