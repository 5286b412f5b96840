"""bench/selftrain.py ``--ensemble``: which taggers of the other seeds join a run's teacher in each round."""

import argparse
import json
from pathlib import Path

import pytest

from tests.conftest import load_script


def _bench_module():
    return load_script("bench/selftrain.py", "bench_selftrain")


def _write_state(runs: Path, name: str, rounds: int) -> None:
    """A run's ``selftrain.json`` as ``refineg selftrain`` writes it after ``rounds`` finished rounds."""
    recs = [{"round": r, "checkpoint": f"{runs}/{name}/round{r}/checkpoints/best-00.ckpt"} for r in range(rounds)]
    (runs / name).mkdir(parents=True)
    (runs / name / "selftrain.json").write_text(json.dumps({"rounds": recs, "best_round": 0}))


def test_teacher_members_are_the_same_variants_runs_of_the_other_seeds(tmp_path):
    """A variant may change round-0 training (``--variant ema=optim.ema=0.9``): its round-1 teacher is its own."""
    bench = _bench_module()
    jobs = {f"g64-{v}-s{s}": {"group": f"g64-{v}", "seed": s} for v in ("base", "ema") for s in (1, 2, 3)}
    family = list(jobs)  # launch order: every base run before the ema runs
    for name in family:
        _write_state(tmp_path, name, 0 if name == "g64-ema-s3" else 2)  # ema-s3's round 0 did not finish
    args = argparse.Namespace(runs_dir=str(tmp_path))

    def ckpt(name, r):
        return f"{tmp_path}/{name}/round{r}/checkpoints/best-00.ckpt"

    # round 1: seed 2's ema run; seed 3's ema run has no round 0, so the base run of seed 3 stands in
    assert bench.teacher_members(args, jobs, family, "g64-ema-s1", 1) == [ckpt("g64-ema-s2", 0), ckpt("g64-base-s3", 0)]
    assert bench.teacher_members(args, jobs, family, "g64-base-s1", 1) == [
        ckpt("g64-base-s2", 0),
        ckpt("g64-base-s3", 0),
    ]
    # later rounds: the same variant's runs only
    assert bench.teacher_members(args, jobs, family, "g64-ema-s1", 2) == [ckpt("g64-ema-s2", 1)]


def test_soup_scores_every_round_that_all_runs_of_a_group_finished(tiny_encoder, tmp_path):
    """``--soup``: one weight average per group and round, scored on dev; the members keep their runs' own scores."""
    import os

    from refineg.data import write_jsonl
    from refineg.inference.predictor import TaggerPredictor, load_tagger
    from refineg.metrics import evaluate_examples
    from tests.refine_helpers import make_tiny_tagger, sample_posts, save_checkpoint

    bench = _bench_module()
    runs = tmp_path / "runs"
    jobs = {f"g64-soft-s{s}": {"group": "g64-soft", "seed": s} for s in (1, 2)}
    for k, name in enumerate(jobs):
        rounds = 2 if k == 0 else 1  # seed 2 did not finish round 1: only round 0 is souped
        recs = []
        for r in range(rounds):
            ckpt = save_checkpoint(make_tiny_tagger(tiny_encoder, seed=10 * k + r), tmp_path / f"{name}-{r}.ckpt")
            recs.append({"round": r, "checkpoint": str(ckpt), "dev_mner_f1": 0.25 + 0.125 * k})
        (runs / name).mkdir(parents=True)
        config = {"data": {"max_length": 6}}  # the runs' dev scores were taken at 6 subwords a post
        (runs / name / "selftrain.json").write_text(json.dumps({"config": config, "rounds": recs}))
    first = make_tiny_tagger(tiny_encoder, seed=0)  # the "dev" labels are its tags
    gold = TaggerPredictor(first).predict(sample_posts("dev", 20), progress=False)
    write_jsonl(gold, tmp_path / "dev.jsonl")
    args = argparse.Namespace(runs_dir=str(runs), data_root=str(tmp_path), dev="dev.jsonl")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = bench.soups(args, jobs, env)
    assert list(out) == ["g64-soft"] and list(out["g64-soft"]) == ["0"]
    soup = out["g64-soft"]["0"]
    assert soup["members"] == [25.0, 37.5]
    assert Path(soup["checkpoint"]).is_file() and Path(soup["checkpoint"]).parent == runs
    scores = {}
    for max_length in (6, 128):  # the soup is tagged at the runs' data.max_length, like its members
        tagged = TaggerPredictor(load_tagger(soup["checkpoint"]), max_length=max_length).predict(gold, progress=False)
        scores[max_length] = 100 * evaluate_examples(gold, tagged)["mner"]["f1"]
    assert abs(scores[6] - scores[128]) > 1
    assert 0 < soup["soup"] < 100 and soup["soup"] == pytest.approx(scores[6], abs=0.006)
