import numpy as np
import pytest
import torch

from refineg.datamodules.encoding import CASING
from refineg.inference.predictor import TaggerPredictor
from refineg.inference.uncertainty import (
    BatchContext,
    EntityUncertainty,
    ErrorPredictor,
    UncertaintyEstimator,
    collect_features,
    create_uncertainty_head,
    cross_fit,
    fit_error_predictor,
)
from refineg.inference.uncertainty.learned import build_members, entity_features, feature_names
from refineg.stages.refinement.calibration import auroc, entity_errors
from tests.refine_helpers import gold_from_predictions, make_tiny_tagger, sample_posts

MEMBERS = {"crf_marginal": {}, "max_prob_min": {}}


@pytest.fixture(scope="module")
def crf_tagger(tiny_encoder):
    return make_tiny_tagger(tiny_encoder, "crf")


def _errors(preds, golds):
    errs = entity_errors(preds, golds)
    return {t: [e[t] for e in errs] for t in ("total", "span", "type")}


def test_cross_fit_never_scores_a_row_with_a_model_that_saw_it():
    """Pure-noise labels: a flexible in-sample fit looks predictive, the out-of-fold scores do not."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 80))
    y = rng.random(300) < 0.3
    groups = np.arange(300) // 2  # two rows per "post"
    names = [f"f{i}" for i in range(80)]
    in_sample = fit_error_predictor(x, {"total": y.tolist()}, {}, {}, names, c=100.0).predict(x)
    oof = cross_fit(x, {"total": y.tolist()}, groups, {}, {}, names, folds=5, c=100.0)["total"]
    assert auroc(in_sample, y) > 0.85
    assert abs(auroc(oof, y) - 0.5) < 0.1
    assert not np.isnan(oof).any()


def test_cross_fit_learns_a_real_signal_and_leaves_none_type_rows_out():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 3))
    y = rng.random(400) < 1 / (1 + np.exp(-3 * x[:, 0]))
    type_err = [None if k % 3 == 0 else bool(x[k, 1] > 0) for k in range(400)]
    out = cross_fit(x, {"total": y.tolist(), "type": type_err}, np.arange(400), {}, {}, ["a", "b", "c"], folds=4)
    assert auroc(out["total"], y) > 0.8
    kept = [k for k in range(400) if type_err[k] is not None]
    assert auroc(out["type"][kept], [type_err[k] for k in kept]) > 0.9
    model = fit_error_predictor(x, {"total": y.tolist()}, {}, {}, ["a", "b", "c"])
    w = model.weights()
    assert w["a"] > 1.0 and abs(w["b"]) < 0.3  # the model leans on the informative feature only
    with pytest.raises(ValueError, match="total"):
        fit_error_predictor(x, {"type": type_err}, {}, {}, ["a", "b", "c"])


def test_entity_features_on_a_hand_made_batch(crf_tagger):
    labels = crf_tagger.labels  # O, B-PER, I-PER, B-LOC, ...
    probs = torch.zeros(1, 4, len(labels))
    probs[0, :, 0] = 1.0
    probs[0, 1] = 0
    probs[0, 1, labels.index("B-PER")] = 0.8
    probs[0, 1, 0] = 0.2
    probs[0, 2] = 0
    probs[0, 2, labels.index("I-PER")] = 0.6
    probs[0, 2, 0] = 0.4
    # words: "@" (other), Title, lower, UPPER
    batch = {"casing": torch.tensor([[CASING.index(c) for c in ("other", "title", "lower", "upper")]])}
    ctx = BatchContext(
        crf_tagger, batch, torch.zeros(1, 4, len(labels)), torch.ones(1, 4, dtype=torch.bool), [[(1, 2, "PER")]]
    )
    ctx.__dict__["token_probs"] = probs
    row = entity_features(ctx, {"m": [[EntityUncertainty(0.5, 0.2, 0.1)]]}, {"m": ["total", "span"]})[0][0]
    names = feature_names(["m"], {"m": ["total", "span"]}, crf_tagger.types)
    got = dict(zip(names, row))
    assert len(row) == len(names)
    assert got["m.total"] == pytest.approx(0.0)
    assert got["m.span"] == pytest.approx(np.log(0.2 / 0.8))
    assert got["boundary.begin"] == pytest.approx(np.log(0.8 / 0.2))
    assert got["boundary.end"] == pytest.approx(np.log(0.4 / 0.6))  # next word is I-PER with 0.6
    assert got["log_words"] == 0.0 and got["log_post_words"] == pytest.approx(np.log(4))
    assert got["type=PER"] == 1.0 and got["type=LOC"] == 0.0
    assert got["case=title"] == 1.0 and got["case=lower"] == 0.0
    assert got["prev=other"] == 1.0 and got["prev=none"] == 0.0


def test_learned_head_fits_saves_and_scores_like_its_features(crf_tagger, tmp_path):
    posts = sample_posts(n=24)
    golds = gold_from_predictions(TaggerPredictor(crf_tagger).predict(posts, progress=False), every=3)
    est = UncertaintyEstimator(TaggerPredictor(crf_tagger), build_members(MEMBERS))
    preds, member_scores, x, names, fields = collect_features(est, golds)
    n = sum(len(p.entities) for p in preds)
    assert x.shape == (n, len(names)) and n > 30
    assert fields == {"crf_marginal": ["total", "span", "type"], "max_prob_min": ["total", "span", "type"]}
    assert [e.uncertainty for p in preds for e in p.entities] == [
        round(u.total, 6) for post in member_scores["crf_marginal"] for u in post
    ]
    errors = _errors(preds, golds)
    model = fit_error_predictor(x, errors, MEMBERS, fields, names)
    model.save(tmp_path / "learned.json")
    again = ErrorPredictor.load(tmp_path / "learned.json")
    assert again.models == model.models and again.members == MEMBERS
    head = create_uncertainty_head("learned", path=tmp_path / "learned.json")
    _, scores = UncertaintyEstimator(TaggerPredictor(crf_tagger), {"learned": head}).score(golds)
    flat = [u for post in scores["learned"] for u in post]
    assert [u.total for u in flat] == pytest.approx(model.predict(x).tolist(), abs=1e-6)
    assert all(0 <= v <= 1 for u in flat for v in (u.total, u.span, u.type))
    assert auroc([u.total for u in flat], errors["total"]) > 0.6  # fitted on these posts: it must fit them
    with pytest.raises(ValueError, match="exactly one"):
        create_uncertainty_head("learned")
