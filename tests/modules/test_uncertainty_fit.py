"""Uncertainty heads that learn: fit / save / load on the head class, and ``refineg calibrate --fit HEAD=FILE``."""

import json

import pytest

from refineg.cli import main
from refineg.data import write_jsonl
from refineg.inference.predictor import TaggerPredictor
from refineg.inference.uncertainty import UNCERTAINTY_HEADS, UncertaintyEstimator, create_uncertainty_head
from tests.refine_helpers import gold_from_predictions, make_tiny_tagger, sample_posts, save_checkpoint


@pytest.fixture(scope="module")
def crf_tagger(tiny_encoder):
    return make_tiny_tagger(tiny_encoder, "crf")


@pytest.fixture(scope="module")
def golds(crf_tagger):
    return gold_from_predictions(TaggerPredictor(crf_tagger).predict(sample_posts(n=12), progress=False), every=2)


def test_which_heads_need_fitting():
    fitted = sorted(n for n in UNCERTAINTY_HEADS.list() if UNCERTAINTY_HEADS.get(n).needs_fit)
    assert fitted == ["evidential", "learned"]
    with pytest.raises(NotImplementedError, match="entropy"):
        UNCERTAINTY_HEADS.get("entropy").fit(None, [])


@pytest.mark.parametrize(
    ("name", "kwargs", "suffix"),
    [
        ("evidential", {"epochs": 2, "batch_size": 8}, ".pt"),
        ("learned", {"members": {"max_prob_mean": {}, "crf_marginal": {}}}, ".json"),
    ],
)
def test_fit_save_load_gives_the_same_scores(crf_tagger, golds, tmp_path, name, kwargs, suffix):
    head_cls = UNCERTAINTY_HEADS.get(name)
    assert head_cls.state_suffix == suffix
    head = head_cls.fit(crf_tagger, golds, **kwargs)
    path = tmp_path / f"{name}{suffix}"
    head.save(path)
    again = head_cls.load(path)
    by_name = create_uncertainty_head(name, path=str(path))
    predictor = TaggerPredictor(crf_tagger)
    scores = {}
    for label, h in (("fitted", head), ("loaded", again), ("by_name", by_name)):
        _, per_head = UncertaintyEstimator(predictor, {name: h}).score(golds)
        scores[label] = [round(u.total, 6) for post in per_head[name] for u in post]
    assert len(scores["fitted"]) > 15
    assert scores["fitted"] == scores["loaded"] == scores["by_name"]
    assert len(set(scores["fitted"])) > 2  # not a constant
    assert all(0 <= s <= 1 for s in scores["fitted"])


def test_calibrate_fit_flag_and_its_alias_write_the_same_layer(crf_tagger, golds, tmp_path):
    ckpt = save_checkpoint(crf_tagger, tmp_path / "tiny.ckpt")
    write_jsonl(golds, tmp_path / "dev.jsonl")
    common = ["calibrate", "--ckpt", str(ckpt), "--data", str(tmp_path / "dev.jsonl"), "--heads", "max_prob_mean"]
    kwargs = ["--head-kwargs", '{"fit_evidential": {"epochs": 2, "batch_size": 8}}']
    dev = str(tmp_path / "dev.jsonl")
    assert main([*common, *kwargs, "--out-dir", str(tmp_path / "a"), "--fit", f"evidential={dev}"]) == 0
    assert main([*common, *kwargs, "--out-dir", str(tmp_path / "b"), "--fit-evidential", dev]) == 0
    a = json.loads((tmp_path / "a" / "calibration.json").read_text())
    b = json.loads((tmp_path / "b" / "calibration.json").read_text())
    assert set(a["heads"]) == {"max_prob_mean", "evidential"}
    assert a["heads"]["evidential"]["total"] == b["heads"]["evidential"]["total"]
    assert (tmp_path / "a" / "evidential.pt").read_bytes() == (tmp_path / "b" / "evidential.pt").read_bytes()


def test_calibrate_fit_refuses_a_head_that_learns_nothing(crf_tagger, golds, tmp_path, capsys):
    ckpt = save_checkpoint(crf_tagger, tmp_path / "tiny.ckpt")
    write_jsonl(golds, tmp_path / "dev.jsonl")
    base = ["calibrate", "--ckpt", str(ckpt), "--data", str(tmp_path / "dev.jsonl"), "--out-dir", str(tmp_path / "c")]
    assert main([*base, "--fit", f"entropy={tmp_path / 'dev.jsonl'}"]) == 2
    assert "error: --fit entropy: this uncertainty head learns nothing" in capsys.readouterr().err
    assert main([*base, "--fit", "evidential"]) == 2
    assert "expected HEAD=TRAIN_JSONL" in capsys.readouterr().err
