"""ContextSelector on a tiny pool with known nearest neighbours (real MiniLM text encoder, tiny open_clip tower)."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from refineg.data import Entity, Example
from refineg.stages.grounding.config import SelectorConfig
from refineg.stages.grounding.encoders import ImageEncoder, TextEncoder
from refineg.stages.grounding.images import PostImages
from refineg.stages.grounding.selector import ContextSelector
from refineg.stages.grounding.similarity import (
    SimilarityTerms,
    SimilarityWeights,
    get_entity_similarity,
    minmax_rows,
    pair_sums,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"
TINY = "refineg-tiny-vit"


@pytest.fixture(scope="module")
def encoders():
    import open_clip

    torch.set_num_threads(1)
    if TINY not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)
    torch.manual_seed(0)
    return TextEncoder("minilm", batch_size=8), ImageEncoder(TINY, None, batch_size=4)


def _post(pid, text, ents, image=None):
    tokens = text.split()
    entities = []
    for name, etype in ents:
        words = name.split()
        start = next(i for i in range(len(tokens)) if tokens[i : i + len(words)] == words)
        entities.append(Entity(start, start + len(words), etype))
    return Example(pid, tokens, image, entities)


COLOURS = {"a": "red", "b": "blue", "c": "green", "q1": "red"}


@pytest.fixture
def pool_and_images(tmp_path):
    pool = [
        _post("a", "Messi scored a late goal in the football match", [("Messi", "PER")], "a.jpg"),
        _post("b", "Apple released a new phone at the tech event", [("Apple", "ORG")], "b.jpg"),
        _post("c", "Heavy rain floods the streets of London", [("London", "LOC")], "c.jpg"),
        _post("d", "Ronaldo scored twice for the striker record", [("Ronaldo", "PER")], "d.jpg"),  # image missing
        _post("e", "nothing to see here today", [], "e.jpg"),
        _post("q1", "Messi and the football goal of the night", [("Messi", "PER")], "q1.jpg"),  # the query itself
    ]
    for pid, colour in COLOURS.items():
        Image.new("RGB", (40, 30), colour).save(tmp_path / f"{pid}.jpg")
    Image.new("RGB", (40, 30), "gray").save(tmp_path / "e.jpg")
    return pool, PostImages(tmp_path)


def test_multimodal_scores_follow_the_formula_and_exclude_the_query(encoders, pool_and_images):
    text_enc, image_enc = encoders
    pool, images = pool_and_images
    sel = ContextSelector(pool, SelectorConfig(k=3), images, text_encoder=text_enc, image_encoder=image_enc)
    query = pool[-1]
    q_img = images.load(query)
    scores = sel.scores([query], [q_img])[0]
    assert scores.shape == (len(pool),) and scores[-1] == float("-inf")
    # by hand: cosines of the normalised embeddings, the image term dropped for "d" (no image file)
    t = text_enc.encode([" ".join(p.tokens) for p in pool]) @ text_enc.encode([" ".join(query.tokens)])[0]
    names = [p.entities[0].text(p.tokens) if p.entities else None for p in pool]
    q_ent = text_enc.encode(["Messi"])[0]
    img = image_enc.encode([images.load(p) for p in pool[:3]] + [images.load(pool[4])]) @ image_enc.encode([q_img])[0]
    img_of = {0: img[0], 1: img[1], 2: img[2], 4: img[3]}
    for i in range(5):
        e = float(text_enc.encode([names[i]])[0] @ q_ent) if names[i] else 0.0
        if i in img_of:
            expected = (0.4 * t[i] + 0.2 * img_of[i] + 0.6 * e) / 1.2
        else:
            expected = (0.4 * t[i] + 0.6 * e) / 1.0
        assert float(scores[i]) == pytest.approx(float(expected), abs=1e-5), i
    assert float(img_of[0]) == pytest.approx(1.0, abs=1e-5)  # same red image
    picked = sel.select([query], [q_img])[0]
    assert picked[0] == 0 and 5 not in picked and len(picked) == 3  # "a": same entity, same image, same topic
    assert picked == torch.argsort(scores[:5], descending=True)[:3].tolist()


def test_text_mode_and_entity_pooling(encoders, pool_and_images):
    text_enc, image_enc = encoders
    pool, images = pool_and_images
    query = _post(
        "x", "Messi scores a goal in the football match as Apple fans watch", [("Messi", "PER"), ("Apple", "ORG")]
    )
    text_sel = ContextSelector(pool, SelectorConfig(mode="text", k=2), images, text_encoder=text_enc)
    assert text_sel.image_encoder is None
    assert text_sel.select([query])[0][0] == 0  # the football post is the nearest text
    by_pool = {}
    for pooling in ("max", "mean"):
        sel = ContextSelector(pool, SelectorConfig(entity_pooling=pooling, w_image=0.0), images, text_encoder=text_enc)
        by_pool[pooling] = sel._entity_scores([query], sel.build_index())[0]
    cross = float(text_enc.encode(["Messi"])[0] @ text_enc.encode(["Apple"])[0])
    assert float(by_pool["max"][0]) == pytest.approx(1.0, abs=1e-5)  # "Messi" is a's gold entity
    assert float(by_pool["max"][1]) == pytest.approx(1.0, abs=1e-5)  # "Apple" is b's
    assert float(by_pool["mean"][0]) == pytest.approx((1.0 + cross) / 2, abs=1e-5)
    assert float(by_pool["max"][4]) == 0.0  # a pool post without entities


def test_random_and_none_modes(pool_and_images):
    pool, images = pool_and_images
    sel = ContextSelector(pool, SelectorConfig(mode="random", k=3, seed=1), images)
    first = sel.select([pool[-1], pool[0]])
    assert first == sel.select([pool[-1], pool[0]])  # seeded per query: stable across calls and batches
    assert sel.select([pool[0]])[0] == first[1]
    assert 5 not in first[0] and 0 not in first[1] and all(len(set(d)) == 3 for d in first)
    assert ContextSelector(pool, SelectorConfig(mode="none"), images).select([pool[0]]) == [[]]


def test_index_is_saved_reused_and_rebuilt_when_stale(encoders, pool_and_images, tmp_path, monkeypatch):
    text_enc, image_enc = encoders
    pool, images = pool_and_images
    path = tmp_path / "idx" / "index.pt"
    sel = ContextSelector(pool, SelectorConfig(), images, path, text_enc, image_enc)
    built = sel.build_index()
    assert path.is_file() and built["text"].shape == (6, 384) and built["ent"].shape == (5, 384)
    assert built["has_image"].tolist() == [True, True, True, False, True, True]
    calls = []
    real = TextEncoder.encode
    monkeypatch.setattr(
        TextEncoder,
        "encode",
        lambda self, texts, progress=False: calls.append(len(texts)) or real(self, texts, progress),
    )
    again = ContextSelector(pool, SelectorConfig(), images, path, text_enc, image_enc).build_index()
    assert calls == [] and again["fingerprint"] == built["fingerprint"]
    assert torch.equal(again["text"], built["text"])
    # the pool changed (one gold entity type): rebuilt and saved again
    changed = [
        Example(p.id, p.tokens, p.image, [Entity(e.start, e.end, "ORG") for e in p.entities]) if p.id == "a" else p
        for p in pool
    ]
    rebuilt = ContextSelector(changed, SelectorConfig(), images, path, text_enc, image_enc).build_index()
    assert calls and rebuilt["fingerprint"] != built["fingerprint"]
    assert torch.load(path, weights_only=True)["fingerprint"] == rebuilt["fingerprint"]
    # an image appears: rebuilt too
    Image.new("RGB", (40, 30), "white").save(images.images_dir / "d.jpg")
    fresh = ContextSelector(changed, SelectorConfig(), images, path, text_enc, image_enc).build_index()
    assert fresh["has_image"].tolist() == [True] * 6 and fresh["fingerprint"] != rebuilt["fingerprint"]


def test_random_weights_are_stated(encoders):
    assert "random weights" in encoders[1].label


def test_release_rule_on_a_hand_computed_example():
    # query 0: entities PER, ORG; pool: post 0 [PER], post 1 [ORG, PER], post 2 [] (no image); query 1 is post 1
    terms = SimilarityTerms(
        text=torch.tensor([[0.2, 0.6, 0.4], [0.1, 0.99, 0.3]]),
        pair_cos=torch.tensor([[0.5, 0.1, 0.3], [0.2, 0.9, 0.0]]),
        pair_same_label=torch.tensor([[True, False, True], [False, True, False]]),
        query_owner=torch.tensor([0, 0]),
        pool_owner=torch.tensor([0, 1, 1]),
        own=torch.tensor([[False, False, False], [False, True, False]]),
        image=torch.tensor([[0.9, 0.3, 0.0], [0.5, 0.7, 0.0]]),
        image_ok=torch.tensor([[True, True, False], [True, True, False]]),
    )
    # entity pair sums, query 0: post 0 = (0.5 + 0.8) + 0.2 = 1.5; post 1 = (0.1 + 0.3 + 0.8) + (0.9 + 0.8 + 0.0)
    # = 2.9; post 2 = 0 -> normalised 1.5 / 2.9, 1, 0. Query 1 has no entity: its entity term is 0 everywhere.
    assert pair_sums(terms, 0.8)[0].tolist() == pytest.approx([1.5, 2.9, 0.0])
    score = get_entity_similarity("release")(terms, SimilarityWeights())
    # query 0: text -> [0, 1, 0.5]; image (post 2 missing) -> [1, 0, 0]
    assert score[0].tolist() == pytest.approx([0.6 * 1.5 / 2.9 + 0.2, 0.4 + 0.6, 0.4 * 0.5])
    # query 1: its own post 1 is out of the min and max: text over posts 0, 2 -> [0, -, 1]; image only post 0 is
    # valid (a one-entry row is constant) -> 0
    assert score[1].tolist() == pytest.approx([0.0, 0.0, 0.4])
    assert minmax_rows(torch.tensor([[3.0, 3.0]]), torch.tensor([[True, True]])).tolist() == [[0.0, 0.0]]


def test_release_similarity_through_the_selector(encoders, pool_and_images):
    text_enc, image_enc = encoders
    pool, images = pool_and_images
    cfg = SelectorConfig(k=3, entity_similarity="release")
    sel = ContextSelector(pool, cfg, images, text_encoder=text_enc, image_encoder=image_enc)
    query = _post("x", "Messi and Apple fans at the football goal", [("Messi", "PER"), ("Apple", "PER")], "q1.jpg")
    q_img = images.load(pool[-1])
    scores = sel.scores([query], [q_img])[0]
    t = text_enc.encode([" ".join(p.tokens) for p in pool]) @ text_enc.encode([" ".join(query.tokens)])[0]
    q_ents = text_enc.encode(["Messi", "Apple"])
    ent = []
    for p in pool:  # every (query entity, pool entity) pair: cosine + 0.8 when the labels agree
        total = 0.0
        for e in p.entities:
            g = text_enc.encode([e.text(p.tokens)])[0]
            total += sum(float(q @ g) + (0.8 if e.type == "PER" else 0.0) for q in q_ents)
        ent.append(total)
    has_img = [True, True, True, False, True, True]
    img = [float(image_enc.encode([images.load(p)])[0] @ image_enc.encode([q_img])[0]) if h else 0.0
           for p, h in zip(pool, has_img)]  # fmt: skip

    def mm(values, valid):
        lo, hi = min(v for v, ok in zip(values, valid) if ok), max(v for v, ok in zip(values, valid) if ok)
        return [(v - lo) / (hi - lo) if ok else 0.0 for v, ok in zip(values, valid)]

    expected = [
        0.4 * a + 0.6 * b + 0.2 * c
        for a, b, c in zip(mm([float(v) for v in t], [True] * 6), mm(ent, [True] * 6), mm(img, has_img))
    ]
    assert [float(s) for s in scores] == pytest.approx(expected, abs=1e-5)
    # "a" (Messi, PER) and "d" (Ronaldo, PER) earn the label bonus twice; "e" (no entity) has the least entity term
    assert ent[0] > ent[3] > ent[1] and min(ent) == ent[4] == 0.0
    assert sel.select([query], [q_img])[0] == torch.argsort(scores, descending=True)[:3].tolist()
    assert "similarity release" in sel.label


def test_unknown_entity_similarity_is_a_clear_error():
    from refineg.stages.grounding.config import load_ground_config

    assert load_ground_config(["selector.entity_similarity=release"]).selector.entity_similarity == "release"
    with pytest.raises(ValueError, match="unknown rule 'pairsum'; known: best_match, release"):
        load_ground_config(["selector.entity_similarity=pairsum"])
    with pytest.raises(KeyError, match="known similarity rules: best_match, release"):
        get_entity_similarity("pairsum")
