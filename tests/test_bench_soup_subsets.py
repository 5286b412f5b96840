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
    save_checkpoint(make_tiny_tagger(tiny_encoder, head="softmax"), tmp_path / "soft-s1" / "best-01.ckpt")
    gold = sample_posts("dev", 20)
    write_jsonl(gold, tmp_path / "dev.jsonl")
    out = tmp_path / "scores.json"
    pools = [f"a={tmp_path}/run-s{{}}/best-*.ckpt", f"b={tmp_path}/soft-s{{}}/best-*.ckpt"]
    got = soup_subsets.main(
        ["--dev", str(tmp_path / "dev.jsonl"), "--pool", *pools, "--out", str(out)]
        + ["--set", "a1,a2", "a1,a9", "a1,a1", "a1,b1", "a1,a2,a3"]
    )
    assert list(got) == ["a1,a2", "a1,a2,a3"]
    assert json.loads(out.read_text()) == got
    for spec, members in (("a1,a2", [1, 2]), ("a1,a2,a3", [1, 2, 3])):
        soup = load_tagger(write_soup([paths[s] for s in members], tmp_path / f"{spec}.ckpt"))
        f1 = evaluate_examples(gold, TaggerPredictor(soup).predict(gold, progress=False))["mner"]["f1"]
        assert got[spec] == pytest.approx(100 * f1, abs=0.006)
    printed = capsys.readouterr().out
    assert "skipped a1,a9: member a9: 0 checkpoints match" in printed
    assert "skipped a1,a1: a soup needs 2 or more different members" in printed
    assert "skipped a1,b1: " in printed and "model.head='softmax'" in printed
    with pytest.raises(ValueError, match="expected <pool><seed>"):
        soup_subsets.member_path("b1", {"a": "x{}"})


def test_bad_pools_and_a_missing_dev_file_are_one_line_errors(tmp_path):
    """A pool without ``=`` or without ``{}`` (every seed would name the same file) and a missing ``--dev``."""
    (tmp_path / "only.ckpt").write_bytes(b"")
    dev = tmp_path / "dev.jsonl"
    dev.write_text("")
    base = ["--out", str(tmp_path / "o.json"), "--set", "a1,a2"]
    for dev_file, pool, message in [
        (dev, f"{tmp_path}/s{{}}.ckpt", r"^error: --pool '.*s\{\}\.ckpt': expected NAME=GLOB"),
        (dev, f"a={tmp_path}/only.ckpt", r"^error: --pool 'a=.*only\.ckpt': expected NAME=GLOB.*\{\} for the seed"),
        (dev, f"a1={tmp_path}/s{{}}.ckpt", r"^error: --pool 'a1=.*': expected NAME=GLOB with a NAME of letters"),
        (tmp_path / "missing.jsonl", f"a={tmp_path}/s{{}}.ckpt", r"^error: .*missing\.jsonl: file not found$"),
    ]:
        with pytest.raises(SystemExit, match=message):
            soup_subsets.main(["--dev", str(dev_file), "--pool", pool, *base])
    assert not (tmp_path / "o.json").exists()


def test_a_glob_with_other_braces_takes_the_seed_only_at_the_empty_pair(tmp_path):
    (tmp_path / "run{x}-s12").mkdir()
    ckpt = tmp_path / "run{x}-s12" / "best.ckpt"
    ckpt.write_bytes(b"")
    assert soup_subsets.member_path("a12", {"a": f"{tmp_path}/run{{x}}-s{{}}/best.ckpt"}) == ckpt
    with pytest.raises(ValueError, match="0 checkpoints match"):  # s1 is not s12
        soup_subsets.member_path("a1", {"a": f"{tmp_path}/run{{x}}-s{{}}/best.ckpt"})
