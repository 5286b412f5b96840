"""Local sweep runner: a real two-trial grid of train.py processes (tiny encoder), resume, failures."""

import csv
import json
import sys
from pathlib import Path

import pytest
import yaml

from refineg.sweeps import load_sweep, read_metric, run_sweep, trial_name

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "data.gold_limit": 32,
    "data.batch_size": 16,
    "data.eval_batch_size": 64,
    "data.test": None,
    "trainer.max_epochs": 1,
    "trainer.accelerator": "cpu",
    "trainer.enable_progress_bar": False,
    "logger.wandb": False,
    "optim.encoder_lr": 1e-3,
    "model.dropout": 0.0,
    "predict": False,
    "trainer.limit_val_batches": 1,
}


def write_spec(path: Path, **spec) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def grid(tiny_encoder, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    params = {
        "model.head": {"values": ["softmax", "crf"]},
        "model.encoder": {"value": tiny_encoder},
        **{k: {"value": v} for k, v in TINY.items()},
    }
    spec_path = write_spec(
        tmp / "heads_tiny.yaml",
        program="train.py",
        method="grid",
        metric={"name": "val/mner_f1_best", "goal": "maximize"},
        parameters=params,
        command=["${env}", "${interpreter}", "${program}", "${args_no_hyphens}"],
    )
    spec = load_sweep(spec_path)
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    results = run_sweep(spec, tmp / "out", cwd=ROOT, env=env, timeout_s=300)
    return spec, tmp / "out", results


def test_two_trials_ran_as_processes_and_are_ranked(grid):
    spec, out, results = grid
    assert [r.status for r in results] == ["done", "done"], [r.error for r in results]
    assert [r.params["model.head"] for r in results] == ["softmax", "crf"]
    for r in results:
        run_dir = out / "runs" / r.name
        assert r.name == trial_name("heads_tiny", r.index, r.params)
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["model"]["head"] == r.params["model.head"] and config["data"]["test"] is None
        assert config["run_name"] == r.name and config["logger"]["wandb"] is False
        metrics = json.loads((run_dir / "metrics.json").read_text())
        # the metric comes from the CSV log (what W&B would hold) and equals the checkpoint callback's best score
        assert r.metric == pytest.approx(metrics["best_val_mner_f1"], abs=1e-6)
        assert (out / "logs" / f"{r.name}.log").read_text().startswith("$ /usr/bin/env")
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 2 and [int(r["rank"]) for r in rows] == [1, 2]
    values = [float(r["val/mner_f1_best"]) for r in rows]
    assert values == sorted(values, reverse=True)
    assert {r["model.head"] for r in rows} == {"softmax", "crf"}
    md = (out / "results.md").read_text()
    assert "ranked by `val/mner_f1_best` (maximize)" in md
    best = min(results, key=lambda r: -r.metric)
    assert md.index(best.name) < md.index(next(r.name for r in results if r is not best))


def test_rerun_resumes_without_running(grid):
    spec, out, results = grid
    # a missing interpreter would make any re-run trial fail: resumed trials must not start a process
    spec.command = ["/nonexistent/python", "${program}", "${args_no_hyphens}"]
    again = run_sweep(spec, out, cwd=ROOT)
    assert [r.status for r in again] == ["resumed", "resumed"]
    assert [r.metric for r in again] == [r.metric for r in results]


def test_failed_trial_is_recorded_and_not_fatal(tmp_path):
    script = tmp_path / "trial.py"
    script.write_text(
        "import json, os, sys\n"
        "args = dict(a.split('=', 1) for a in sys.argv[1:])\n"
        "if args['x'] == '3':\n"
        "    print('x=3 is not allowed', file=sys.stderr); sys.exit(3)\n"
        "d = os.path.join(args['runs_dir'], args['run_name']); os.makedirs(d)\n"
        "json.dump({'score': {'value': float(args['x']) * 2, 'half': float(args['x']) / 2,"
        " 'none_seen': args['y'] == 'None'}},"
        " open(os.path.join(d, 'metrics.json'), 'w'))\n"
    )
    spec = load_sweep(
        write_spec(
            tmp_path / "s.yaml",
            program=str(script),
            method="grid",
            metric={"name": "score/value", "goal": "minimize"},
            parameters={"x": {"values": [2, 3, 1]}, "y": {"value": None}},
            command=["${interpreter}", "${program}", "${args_no_hyphens}"],
        )
    )
    results = run_sweep(spec, tmp_path / "out", cwd=tmp_path, columns=["score/half"])
    assert [r.status for r in results] == ["done", "failed", "done"]
    assert results[1].returncode == 3 and "x=3 is not allowed" in results[1].error
    assert [r.metric for r in results] == [4.0, None, 2.0]
    assert json.loads((tmp_path / "out/runs" / results[0].name / "metrics.json").read_text())["score"]["none_seen"]
    rows = list(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert [(r["x"], r["status"], r["rank"]) for r in rows] == [
        ("1", "done", "1"),
        ("2", "done", "2"),
        ("3", "failed", ""),
    ]
    assert rows[2]["returncode"] == "3"
    assert [r["score/half"] for r in rows] == ["0.5", "1.0", ""]
    assert (
        rows[0]["command"] == f"{sys.executable} {script} x=1 y=None runs_dir={tmp_path / 'out' / 'runs'} "
        f"run_name={results[2].name}"
    )
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Failed trials" in md and "x=3 is not allowed" in md
    assert "| **score/value** | score/half | status | s |" in md


def test_read_metric_nested_and_dotted(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps({"dev": {"gmner": {"f1": 0.25}}, "flag": True}))
    assert read_metric(tmp_path, "dev/gmner/f1") == 0.25
    assert read_metric(tmp_path, "dev.gmner.f1") == 0.25
    assert read_metric(tmp_path, "flag") is None and read_metric(tmp_path, "nope") is None


def test_cli_dry_run(capsys, tmp_path):
    from refineg.cli import main

    assert (
        main(
            [
                "sweep",
                str(ROOT / "configs/sweeps/heads.yaml"),
                "--dry-run",
                "--out",
                str(tmp_path),
                "--set",
                "trainer.max_epochs=1",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 8  # 2 heads x 2 casing x 2 word dropout
    assert all(f"{sys.executable} train.py model.head=" in line and "trainer.max_epochs=1" in line for line in lines)
    assert not (tmp_path / "results.csv").exists()
