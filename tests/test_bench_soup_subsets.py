"""bench/soup_subsets.py: the soups of named sets of checkpoints, scored on dev in one process."""

import json
import sys
from pathlib import Path

import pytest

from refineg.data import write_jsonl
from refineg.inference.predictor import TaggerPredictor, load_tagger
from refineg.inference.soup import write_soup
from refineg.metrics import evaluate_examples
from tests.refine_helpers import make_tiny_tagger, sample_posts, save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import soup_subsets  # noqa: E402


def test_scores_each_set_like_refineg_soup_and_skips_sets_with_missing_members(tiny_encoder, tmp_path, capsys):
    paths = {}
    for seed in (1, 2, 3):
        module = make_tiny_tagger(tiny_encoder, seed=seed)
        module.hparams.model["init_seed"] = 0
        paths[seed] = save_checkpoint(module, tmp_path / f"run-s{seed}" / "best-01.ckpt")
    gold = sample_posts("dev", 20)
    write_jsonl(gold, tmp_path / "dev.jsonl")
    out = tmp_path / "scores.json"
    pool = f"a={tmp_path}/run-s{{}}/best-*.ckpt"
    got = soup_subsets.main(
        ["--dev", str(tmp_path / "dev.jsonl"), "--pool", pool, "--set", "a1,a2", "a1,a9", "a1,a2,a3", "--out", str(out)]
    )
    assert list(got) == ["a1,a2", "a1,a2,a3"]
    assert json.loads(out.read_text()) == got
    for spec, members in (("a1,a2", [1, 2]), ("a1,a2,a3", [1, 2, 3])):
        soup = load_tagger(write_soup([paths[s] for s in members], tmp_path / f"{spec}.ckpt"))
        f1 = evaluate_examples(gold, TaggerPredictor(soup).predict(gold, progress=False))["mner"]["f1"]
        assert got[spec] == pytest.approx(100 * f1, abs=0.006)
    assert "skipped a1,a9: member a9: 0 checkpoints match" in capsys.readouterr().out
    with pytest.raises(ValueError, match="expected <pool><seed>"):
        soup_subsets.member_path("b1", {"a": "x{}"})
