"""bench/selftrain.py ``--ensemble``: which taggers of the other seeds join a run's teacher in each round."""

import argparse
import json
from pathlib import Path

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
