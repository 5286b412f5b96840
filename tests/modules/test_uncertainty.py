import math

import pytest
import torch

from refineg.inference.predictor import TaggerPredictor
from refineg.inference.uncertainty import (
    BatchContext,
    EntityUncertainty,
    MissedEntityDetector,
    TemperatureScaler,
    UncertaintyEstimator,
    create_uncertainty_head,
    evidential_loss,
    fit_evidential,
    list_uncertainty_heads,
)
from refineg.inference.uncertainty.sampling import vote
from tests.refine_helpers import gold_from_predictions, make_tiny_tagger, sample_posts

HEAD_KWARGS = {"max_prob_mean": {}, "max_prob_min": {}, "entropy": {}, "crf_marginal": {}, "mc_dropout": {"samples": 3}}


@pytest.fixture(scope="module")
def crf_tagger(tiny_encoder):
    return make_tiny_tagger(tiny_encoder, "crf")


@pytest.fixture(scope="module")
def posts():
    return sample_posts(n=8)


def _check(preds, scores):
    n = sum(len(p.entities) for p in preds)
    assert n > 15
    for name, per_post in scores.items():
        flat = [u for post in per_post for u in post]
        assert len(flat) == n, name
        for u in flat:
            assert 0 <= u.total <= 1 and all(0 <= v <= 1 for v in u.fields().values()), (name, u)
        assert len({round(u.total, 4) for u in flat}) > 2, f"{name} gives (almost) constant uncertainties"


def test_registry_lists_every_head():
    assert list_uncertainty_heads() == sorted(
        ["crf_marginal", "ensemble", "entropy", "evidential", "learned", "max_prob_mean", "max_prob_min", "mc_dropout"]
    )
    with pytest.raises(KeyError, match="known uncertainty heads"):
        create_uncertainty_head("nope")


@pytest.mark.parametrize("tagger_head", ["crf", "softmax"])
def test_every_simple_head_on_tiny_tagger(tiny_encoder, crf_tagger, posts, tagger_head):
    module = crf_tagger if tagger_head == "crf" else make_tiny_tagger(tiny_encoder, "softmax")
    names = [n for n in HEAD_KWARGS if tagger_head == "crf" or n != "crf_marginal"]
    heads = {n: create_uncertainty_head(n, **HEAD_KWARGS[n]) for n in names}
    preds, scores = UncertaintyEstimator(TaggerPredictor(module), heads).score(posts)
    _check(preds, scores)
    # predictions are the plain predictor's, uncertainty comes from the first head
    plain = TaggerPredictor(module).predict(posts, progress=False)
    assert [[(e.start, e.end, e.type) for e in p.entities] for p in preds] == [
        [(e.start, e.end, e.type) for e in p.entities] for p in plain
    ]
    first = scores[names[0]]
    assert [e.uncertainty for p in preds for e in p.entities] == [round(u.total, 6) for post in first for u in post]
    assert all(len(p.meta["uncertainty"]["fields"]) == len(p.entities) for p in preds)
    if tagger_head == "softmax":
        with pytest.raises(ValueError, match="CRF"):
            UncertaintyEstimator(TaggerPredictor(module), {"c": create_uncertainty_head("crf_marginal")}).score(posts)


def test_crf_marginal_head_matches_brute_force(crf_tagger, posts):
    """1 - the head's uncertainty is the probability mass of the tag paths that contain the entity."""
    import itertools

    short = [type(posts[0])(posts[0].id, posts[0].tokens[:3])]
    est = UncertaintyEstimator(TaggerPredictor(crf_tagger), {"crf_marginal": create_uncertainty_head("crf_marginal")})
    preds, scores = est.score(short)
    assert preds[0].entities
    pred = TaggerPredictor(crf_tagger)
    _, batch = next(pred.batches(short))
    with torch.no_grad():
        em = crf_tagger(batch)[0, :3].float()
        start, trans, end = crf_tagger.tagger.head.crf._potentials()
    labels = crf_tagger.labels
    paths, weights = [], []
    for path in itertools.product(range(len(labels)), repeat=len(short[0].tokens)):
        w = start[path[0]] + em[0, path[0]] + end[path[-1]]
        for t in range(1, len(path)):
            w = w + trans[path[t - 1], path[t]] + em[t, path[t]]
        paths.append(path)
        weights.append(w)
    probs = torch.stack(weights).softmax(0)
    from refineg.data import tags_to_spans

    for ent, u in zip(preds[0].entities, scores["crf_marginal"][0]):
        p = sum(
            float(pr)
            for path, pr in zip(paths, probs)
            if (ent.start, ent.end, ent.type) in tags_to_spans([labels[i] for i in path])
        )
        assert u.total == pytest.approx(1 - p, abs=1e-4)


def test_vote_counts_agreement():
    spans = [[(0, 2, "PER"), (3, 4, "LOC")]]
    samples = [[[(0, 2, "PER"), (3, 4, "LOC")]], [[(0, 2, "ORG")]], [[(0, 2, "PER")]], [[(1, 2, "PER")]]]
    a, b = vote(spans, samples)[0]
    assert (a.total, a.span, a.type) == (0.5, 0.25, pytest.approx(1 / 3))
    assert (b.total, b.span, b.type) == (0.75, 0.75, 0.0)


def test_mc_dropout_needs_dropout_and_is_repeatable(tiny_encoder, posts):
    module = make_tiny_tagger(tiny_encoder, "crf", dropout=0.0)
    with pytest.raises(ValueError, match="dropout"):
        UncertaintyEstimator(TaggerPredictor(module), {"m": create_uncertainty_head("mc_dropout")}).score(posts)
    heads = {
        "mc_dropout": create_uncertainty_head("mc_dropout", samples=2, dropout=0.3),
        "var": create_uncertainty_head("mc_dropout", samples=2, dropout=0.3, measure="variance"),
    }
    est = UncertaintyEstimator(TaggerPredictor(module), heads)
    _, s1 = est.score(posts)
    _, s2 = est.score(posts)
    assert s1 == s2
    assert all(m.p == 0.0 for m in module.modules() if isinstance(m, torch.nn.Dropout))  # rates restored
    assert not module.training


def test_ensemble_of_identical_members_is_certain_and_of_different_ones_is_not(tiny_encoder, crf_tagger, posts):
    same = create_uncertainty_head("ensemble", members=[crf_tagger, crf_tagger])
    other = create_uncertainty_head("ensemble", members=[crf_tagger, make_tiny_tagger(tiny_encoder, "crf", seed=5)])
    _, scores = UncertaintyEstimator(TaggerPredictor(crf_tagger), {"same": same, "other": other}).score(posts)
    assert all(u.total == 0 for post in scores["same"] for u in post)
    assert any(u.total > 0 for post in scores["other"] for u in post)
    with pytest.raises(ValueError, match="at least 2"):
        create_uncertainty_head("ensemble", members=[crf_tagger])


def test_evidential_head_trains_on_frozen_states(crf_tagger, posts):
    before = {k: v.clone() for k, v in crf_tagger.state_dict().items()}
    golds = gold_from_predictions(TaggerPredictor(crf_tagger).predict(posts, progress=False))
    alpha0 = torch.ones(1, 1, len(crf_tagger.labels)) * 3
    loss0 = evidential_loss(alpha0, torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool), 0.0)
    k = len(crf_tagger.labels)  # expected CE under Dir(3,...,3) for any label: digamma(3K) - digamma(3)
    assert float(loss0) == pytest.approx(float(torch.digamma(torch.tensor(3.0 * k)) - torch.digamma(torch.tensor(3.0))))
    layer = fit_evidential(crf_tagger, golds, epochs=1, batch_size=8)
    first = float(_evidential_nll(crf_tagger, layer, golds))
    layer = fit_evidential(crf_tagger, golds, epochs=12, batch_size=8)
    assert float(_evidential_nll(crf_tagger, layer, golds)) < first  # it learns
    assert all(torch.equal(before[k], v) for k, v in crf_tagger.state_dict().items())  # the tagger stays frozen
    head = create_uncertainty_head("evidential", model=layer)
    preds, scores = UncertaintyEstimator(TaggerPredictor(crf_tagger), {"evidential": head}).score(posts)
    _check(preds, scores)


def _evidential_nll(module, layer, golds):
    from refineg.datamodules.encoding import encode_posts

    pred = TaggerPredictor(module)
    enc = encode_posts(golds, pred.tokenizer, {lab: i for i, lab in enumerate(module.labels)}, 128)
    batch = pred.collate(enc)
    with torch.no_grad():
        alpha = layer(module.tagger.word_states(**batch))
    return evidential_loss(alpha, batch["labels"], batch["word_mask"] & (batch["labels"] >= 0), 0.0)


def test_temperature_scaling_recovers_a_known_temperature(crf_tagger):
    """Emissions sampled from softmax(logits / 2.5) are best explained by T = 2.5."""
    head = make_softmax_head(crf_tagger)
    torch.manual_seed(0)
    logits = torch.randn(40, 30, len(head.labels)) * 3
    tags = torch.distributions.Categorical(logits=logits / 2.5).sample()
    mask = torch.ones(40, 30, dtype=torch.bool)
    t = TemperatureScaler().fit_emissions(head, [(logits, tags, mask)])
    assert t == pytest.approx(2.5, rel=0.15)
    assert torch.allclose(TemperatureScaler(2.0)(logits), logits / 2)


def make_softmax_head(module):
    from refineg.modules.heads import create_head

    return create_head("softmax", hidden_size=4, labels=module.labels)


def test_temperature_fit_on_posts_and_round_trip(crf_tagger, posts, tmp_path):
    golds = gold_from_predictions(TaggerPredictor(crf_tagger).predict(posts, progress=False), every=3)
    scaler = TemperatureScaler()
    t = scaler.fit(crf_tagger, golds)
    assert t > 0 and math.isfinite(t) and t != 1.0
    assert all(p.requires_grad for p in crf_tagger.parameters())
    scaler.save(tmp_path / "t.json")
    assert TemperatureScaler.load(tmp_path / "t.json").temperature == pytest.approx(t)


def test_missed_entity_detector_on_hand_made_probabilities(crf_tagger):
    labels = crf_tagger.labels  # O, B-PER, I-PER, B-LOC, I-LOC, ...
    probs = torch.zeros(1, 6, len(labels))
    probs[0, :, 0] = 1.0
    probs[0, 1, :] = 0
    probs[0, 1, labels.index("B-LOC")] = 0.7
    probs[0, 1, 0] = 0.3
    probs[0, 2, :] = 0
    probs[0, 2, labels.index("I-LOC")] = 0.6
    probs[0, 2, 0] = 0.4
    probs[0, 4, :] = 0
    probs[0, 4, labels.index("B-PER")] = 0.9  # inside a predicted entity: not a candidate
    probs[0, 4, 0] = 0.1
    ctx = BatchContext(
        crf_tagger, {}, torch.zeros(1, 6, len(labels)), torch.ones(1, 6, dtype=torch.bool), [[(4, 5, "PER")]]
    )
    ctx.__dict__["token_probs"] = probs  # cached_property: hand-made probabilities
    assert MissedEntityDetector(0.5).candidates(ctx) == [[{"start": 1, "end": 3, "type": "LOC", "score": 0.65}]]
    assert MissedEntityDetector(0.65).candidates(ctx) == [[{"start": 1, "end": 2, "type": "LOC", "score": 0.7}]]
    assert MissedEntityDetector(0.5, max_words=1).candidates(ctx) == [[]]


def test_entity_uncertainty_fields():
    assert EntityUncertainty(0.5, None, 0.25).fields() == {"type": 0.25}
