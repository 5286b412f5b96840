"""W&B sweep files: every shipped sweep parses and expands; grid/random expansion; W&B command macros."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from refineg.config import load_config
from refineg.sweeps import load_sweep
from refineg.sweeps.spec import sample_parameter

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def test_shipped_sweeps_exist():
    names = {p.stem for p in SHIPPED}
    assert {"backbones", "heads", "uncertainty_heads", "mixing", "thresholds"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_sweep_parses_and_expands(path):
    raw = yaml.safe_load(path.read_text())
    assert raw["command"][-1] == "${args_no_hyphens}"  # W&B agent writes key=value, as train.py reads
    spec = load_sweep(path)
    trials = spec.expand()
    assert len(trials) >= 1 and spec.goal == "maximize"
    assert (ROOT / spec.program).is_file()
    argv = spec.command_for(trials[0])
    assert argv[:3] == ["/usr/bin/env", sys.executable, spec.program]
    if spec.program == "train.py":
        # every trial's overrides are keys the typed training config has (a typo would be an error)
        for trial in trials:
            load_config([f"{k}={v}" for k, v in trial.items()])
        assert spec.metric == "val/mner_f1_best"
    else:
        from refineg.stages.refinement import load_refine_config
        from refineg.sweeps.refine_trial import TRIAL_KEYS

        for trial in trials:
            load_refine_config([f"{k}={v}" for k, v in trial.items() if k not in TRIAL_KEYS])


def test_backbone_and_head_sweeps_use_real_registry_names():
    from refineg.inference.uncertainty import list_uncertainty_heads
    from refineg.modules.heads import HEADS

    models = load_sweep(ROOT / "configs/sweeps/backbones.yaml").parameters["model"]["values"]
    assert all((ROOT / "configs" / "model" / f"{m}.yaml").is_file() for m in models)
    assert set(load_sweep(ROOT / "configs/sweeps/heads.yaml").parameters["model.head"]["values"]) <= set(HEADS.list())
    heads = load_sweep(ROOT / "configs/sweeps/uncertainty_heads.yaml").parameters["head"]["values"]
    assert set(heads) <= set(list_uncertainty_heads())


def test_grid_is_the_cartesian_product_in_order(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "program": "train.py",
                "method": "grid",
                "metric": {"name": "m"},
                "parameters": {"a": {"values": [1, 2]}, "b": {"values": ["x", "y", None]}, "c": {"value": True}},
            }
        )
    )
    spec = load_sweep(path)
    assert spec.goal == "minimize"  # W&B's default goal
    trials = spec.expand()
    assert len(trials) == 6 and trials[0] == {"a": 1, "b": "x", "c": True} and trials[-1]["b"] is None
    assert spec.expand(count=2) == trials[:2]
    # default command is W&B's: ${env} ${interpreter} ${program} ${args}, values as Python str()
    assert spec.command_for(trials[2])[2:] == ["train.py", "--a=1", "--b=None", "--c=True"]
    cfg = load_config(["data.test=None", "model.casing=False"])  # what ${args_no_hyphens} produces
    assert cfg.data.test is None and cfg.model.casing is False
    fixed = load_sweep(path, {"a": "7"})
    assert [t["a"] for t in fixed.expand()] == ["7"] * 3


def test_random_search_is_seeded_and_respects_bounds():
    spec = load_sweep(ROOT / "configs/sweeps/optim_random.yaml")
    trials = spec.expand()
    assert len(trials) == spec.run_cap == 8
    assert trials == spec.expand(seed=0) and trials != spec.expand(seed=1)
    assert len(spec.expand(count=3)) == 3
    for t in trials:
        assert 1e-5 <= t["optim.encoder_lr"] <= 3e-4 and 1e-3 <= t["optim.crf_lr"] <= 1e-1
        assert t["optim.warmup_ratio"] in (0.0, 0.1) and 0.0 <= t["model.dropout"] <= 0.3
    # log-uniform: about half the draws below the geometric mean
    import random

    rng = random.Random(0)
    draws = [
        sample_parameter("lr", {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2}, rng)
        for _ in range(2000)
    ]
    assert 0.45 < sum(d < 1e-3 for d in draws) / len(draws) < 0.55
    ints = {sample_parameter("n", {"distribution": "int_uniform", "min": 1, "max": 3}, rng) for _ in range(200)}
    assert ints == {1, 2, 3}
    q = sample_parameter("q", {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2.5}, rng)
    assert math.isclose(q / 2.5, round(q / 2.5))


def test_bad_sweeps_are_errors(tmp_path):
    def load(**raw):
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(raw))
        return load_sweep(path)

    base = {"program": "train.py", "metric": {"name": "m", "goal": "maximize"}, "parameters": {"a": {"value": 1}}}
    with pytest.raises(ValueError, match="method"):
        load(**{**base, "method": "hyperband"})
    with pytest.raises(ValueError, match="run_cap"):
        load(**{**base, "method": "random"}).expand()
    with pytest.raises(ValueError, match="grid search needs"):
        uniform = {"a": {"distribution": "uniform", "min": 0, "max": 1}}
        load(**{**base, "method": "grid", "parameters": uniform}).expand()
    with pytest.raises(ValueError, match="not supported"):
        spec = load(**{**base, "method": "grid", "command": ["${interpreter}", "${args_json}"]})
        spec.command_for({"a": 1})
    with pytest.raises(ValueError, match="missing 'program'"):
        load(method="grid", metric={"name": "m"}, parameters={})


def test_an_install_without_the_scripts_runs_the_packaged_programs(tmp_path):
    """From a wheel there is no train.py or tools/: the local runner runs the same programs as modules."""
    train = load_sweep(ROOT / "configs/sweeps/heads.yaml")
    trial = train.expand()[0]
    assert train.command_for(trial, cwd=ROOT)[2] == "train.py"
    assert train.command_for(trial, cwd=tmp_path)[2:6] == ["-m", "refineg.cli", "train", "model.head=softmax"]
    refine = load_sweep(ROOT / "configs/sweeps/thresholds.yaml")
    assert refine.command_for(refine.expand()[0], cwd=tmp_path)[2:4] == ["-m", "refineg.sweeps.refine_trial"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "refineg.sweeps.refine_trial", f"source={tmp_path / 'nowhere'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and out.stdout.startswith("error:") and "nowhere" in out.stdout
