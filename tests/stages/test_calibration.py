import json

import pytest

from refineg.cli import main
from refineg.data import Entity, Example, write_jsonl
from refineg.stages.refinement import auroc, ece, entity_errors, risk_coverage
from tests.refine_helpers import gold_from_predictions, make_tiny_tagger, sample_posts, save_checkpoint


def test_auroc_hand_computed():
    # errors at u = 0.9, 0.4; correct at u = 0.5, 0.1: pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4
    assert auroc([0.9, 0.5, 0.4, 0.1], [True, False, True, False]) == pytest.approx(0.75)
    assert auroc([0.3, 0.3], [True, False]) == pytest.approx(0.5)  # a tie counts one half
    assert auroc([0.1, 0.9], [False, True]) == 1.0
    assert auroc([0.1, 0.2], [False, False]) is None


def test_ece_hand_computed():
    # confidences 0.95, 0.95 (bin 9, one right: acc 0.5) and 0.25 (bin 2, wrong: acc 0)
    # ECE = 2/3 * |0.5 - 0.95| + 1/3 * |0 - 0.25| = 0.3 + 0.08333
    assert ece([0.05, 0.05, 0.75], [False, True, True]) == pytest.approx(2 / 3 * 0.45 + 1 / 3 * 0.25)
    assert ece([0.0, 0.0], [False, False]) == pytest.approx(0.0)
    assert ece([], []) is None


def test_risk_coverage_and_aurc_hand_computed():
    rc = risk_coverage([0.1, 0.2, 0.3, 0.4], [False, True, False, True])
    assert rc["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert rc["risk"] == pytest.approx([0.0, 0.5, 1 / 3, 0.5])
    assert rc["aurc"] == pytest.approx((0 + 0.5 + 1 / 3 + 0.5) / 4)
    # ties broken by expectation: one constant score gives the error rate at every coverage
    assert risk_coverage([0.5] * 4, [True, False, False, False])["risk"] == pytest.approx([0.25] * 4)


def test_entity_errors_per_field():
    gold = [Example("a", ["x"] * 5, entities=[Entity(0, 2, "PER"), Entity(3, 4, "LOC")])]
    pred = [
        Example(
            "a", ["x"] * 5, entities=[Entity(0, 2, "PER"), Entity(3, 4, "ORG"), Entity(4, 5, "LOC")], source="predicted"
        )
    ]
    assert entity_errors(pred, gold) == [
        {"total": False, "span": False, "type": False},
        {"total": True, "span": False, "type": True},
        {"total": True, "span": True, "type": None},
    ]


def test_calibrate_cli_writes_report_and_pngs(tiny_encoder, tmp_path, capsys):
    module = make_tiny_tagger(tiny_encoder, "crf")
    ckpt = save_checkpoint(module, tmp_path / "tiny.ckpt")
    from refineg.inference.predictor import TaggerPredictor

    posts = sample_posts(n=12)
    write_jsonl(
        gold_from_predictions(TaggerPredictor(module).predict(posts, progress=False), every=2), tmp_path / "dev.jsonl"
    )
    rc = main(
        [
            "calibrate",
            "--ckpt",
            str(ckpt),
            "--data",
            str(tmp_path / "dev.jsonl"),
            "--out-dir",
            str(tmp_path / "cal"),
            "--heads",
            "max_prob_mean,crf_marginal,mc_dropout",
            "--head-kwargs",
            '{"mc_dropout": {"samples": 2}}',
            "--fit-temperature",
        ]
    )
    assert rc == 0
    report = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert set(report["heads"]) == {
        "max_prob_mean",
        "crf_marginal",
        "mc_dropout",
        "max_prob_mean@T",
        "crf_marginal@T",
        "mc_dropout@T",
    }
    for rep in report["heads"].values():
        for field in ("total", "span", "type"):
            r = rep[field]
            assert 0 <= r["ece"] <= 1 and 0 <= r["aurc"] <= 1
        assert 0 <= rep["total"]["auroc"] <= 1 and 0 <= rep["type"]["auroc"] <= 1
        assert rep["span"]["auroc"] is None and rep["span"]["error_rate"] == 0  # gold has every predicted span
        assert 0.4 <= rep["total"]["error_rate"] <= 0.6  # every second entity is wrong by construction
    assert report["temperature"] > 0 and (tmp_path / "cal" / "temperature.json").is_file()
    for name in ("reliability.png", "risk_coverage.png"):
        data = (tmp_path / "cal" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert "AUROC" in capsys.readouterr().out


def test_refine_cli_with_oracle_improves_f1(tiny_encoder, tmp_path, capsys):
    module = make_tiny_tagger(tiny_encoder, "crf")
    ckpt = save_checkpoint(module, tmp_path / "tiny.ckpt")
    from refineg.inference.predictor import TaggerPredictor

    posts = sample_posts(n=8)
    write_jsonl(posts, tmp_path / "dev.jsonl")
    write_jsonl(TaggerPredictor(module).predict(posts, progress=False), tmp_path / "pred.jsonl")
    rc = main(
        [
            "refine",
            "--pred",
            str(tmp_path / "pred.jsonl"),
            "--out",
            str(tmp_path / "ref.jsonl"),
            "--gold",
            str(tmp_path / "dev.jsonl"),
            f"ckpt={ckpt}",
            "head=crf_marginal",
            "delegation_rate=1.0",
            "backend=oracle",
            f"gold={tmp_path / 'dev.jsonl'}",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "SIMULATION" in out
    before, after = (
        [float(line.split()[2]) for line in out.splitlines() if line.startswith("MNER F1")][0],
        [float(line.split()[4]) for line in out.splitlines() if line.startswith("MNER F1")][0],
    )
    assert after > before
    report = json.loads((tmp_path / "ref.report.json").read_text())
    assert report["simulated"] and report["backend"] == "oracle (simulation)" and report["delegation_rate"] == 1.0
