"""A built wheel installed outside the checkout carries every config group, the default run and every prompt folder.

The wheel is built from a copy of the sources (no build/ or egg-info left in the checkout), installed with
``pip install --no-deps --target``, and read by a child interpreter whose working folder is a temporary one: the
checkout is not importable there, while the venv's other packages (torch, omegaconf ...) are.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "refineg" / "configs"

# Runs in the child: loads everything through the installed package and prints it as JSON. Relative
# ``configs/...`` paths are what the README's commands pass; the working folder has no such folder.
CHILD = r"""
import dataclasses, json, sys
from pathlib import Path

from omegaconf import OmegaConf

import refineg
from refineg.config import TrainConfig, load_config
from refineg.llm.prompt_files import read_prompt_folder
from refineg.resources import config_root
from refineg.stages.grounding.config import MLLMGrounderConfig, load_ground_config
from refineg.stages.grounding.prompts import GroundingPrompts
from refineg.stages.pipeline import load_pipeline_config
from refineg.stages.refinement.config import RefineConfig
from refineg.stages.refinement.prompts import RefinementPrompts
from refineg.stages.synthesis import load_synthesis_config
from refineg.stages.synthesis.prompts import PromptSet, default_prompt_dir
from refineg.stages.zeroshot import ZeroShotConfig, ZeroShotPrompts
from refineg.sweeps import load_sweep

plain = lambda cfg: OmegaConf.to_container(cfg) if OmegaConf.is_config(cfg) else dataclasses.asdict(cfg)
root = config_root()
out = {"refineg_file": refineg.__file__, "config_root": str(root), "default": plain(load_config([])),
       "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()), "configs": {},
       "prompts": {}, "stage_prompts": {}}
for group in ("data", "model"):
    for f in sorted((root / group).glob("*.yaml")):
        out["configs"][f"{group}/{f.name}"] = plain(load_config([f"{group}={f.stem}"]))[group]
for f in sorted((root / "experiment").glob("*.yaml")):  # training recipes (refineg train experiment=NAME)
    assert set(OmegaConf.load(f)) <= set(TrainConfig.__dataclass_fields__), f
    out["configs"][f"experiment/{f.name}"] = plain(load_config([f"experiment={f.stem}"]))
for f in sorted((root / "pipeline").glob("*.yaml")):  # pipeline experiments; full-data ones need a data folder
    cfg = plain(load_pipeline_config(f"configs/pipeline/{f.name}", ["train.data.root=/data/x"]))
    out["configs"][f"pipeline/{f.name}"] = cfg
for f in sorted((root / "synthesis").glob("*.yaml")):
    out["configs"][f"synthesis/{f.name}"] = plain(load_synthesis_config([f"domain={f.stem}"]))
    out["stage_prompts"][f"synthesis/{f.stem}"] = str(PromptSet.load(default_prompt_dir(f.stem)).folder)
out["configs"]["grounding/default.yaml"] = plain(load_ground_config())
for f in sorted((root / "sweeps").glob("*.yaml")):
    spec = load_sweep(f"configs/sweeps/{f.name}")
    out["configs"][f"sweeps/{f.name}"] = {"program": spec.program, "parameters": spec.parameters}
for folder in sorted({p.parent for p in (root / "prompts").rglob("*.txt")}):
    rel = str(folder.relative_to(root))
    out["prompts"][rel] = read_prompt_folder(f"configs/{rel}", sorted(p.name for p in folder.glob("*.txt")))
for name, cfg, loader in [("refinement", RefineConfig(), RefinementPrompts), ("zeroshot", ZeroShotConfig(),
                          ZeroShotPrompts), ("grounding", MLLMGrounderConfig(), GroundingPrompts)]:
    loader.load(cfg.prompts_dir)
    out["stage_prompts"][name] = cfg.prompts_dir
print(json.dumps(out, default=str))
"""


def within(expected, actual, where: str = "") -> None:
    """Every key of ``expected`` (a loaded YAML file) is in ``actual`` with the same value.

    ``???`` (a value the user must give) is skipped: OmegaConf's merge keeps the value it had before. So is a
    ``defaults`` list (the group choices of a section; the groups' files are checked on their own).
    """
    if expected == "???":
        return
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r} is not a mapping"
        for key, value in expected.items():
            if key == "defaults":
                continue
            assert key in actual, f"{where}.{key} missing"
            within(value, actual[key], f"{where}.{key}")
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def yaml_file(rel: str):
    if rel.startswith("sweeps/"):  # W&B files: ${...} are W&B's macros
        return yaml.safe_load((CONFIGS / rel).read_text())
    return OmegaConf.to_container(OmegaConf.load(CONFIGS / rel), resolve=True)  # ${mllm} etc. within the file


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    pytest.importorskip("setuptools", minversion="70.1")  # builds the wheel itself (bdist_wheel), no network
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "refineg", src / "refineg", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)], check=True, cwd=tmp
    )
    (wheel,) = (tmp / "dist").glob("refineg-*.whl")
    site = tmp / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--no-compile", "--target", str(site), str(wheel)], check=True, cwd=tmp
    )
    shutil.rmtree(src)  # the copied sources must not be found instead of the installed package
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1", "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", CHILD], cwd=tmp, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-4000:]
    return site, json.loads(run.stdout.splitlines()[-1])


def test_the_installed_package_is_the_one_read(installed):
    site, out = installed
    assert Path(out["refineg_file"]).is_relative_to(site)
    assert Path(out["config_root"]) == site / "refineg" / "configs"


def test_every_config_and_prompt_file_ships(installed):
    _, out = installed
    shipped = sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.rglob("*") if p.is_file())
    assert out["files"] == shipped


def test_default_run_is_the_packaged_default_yaml(installed):
    _, out = installed
    within(yaml_file("default.yaml"), out["default"], "default")
    assert out["default"]["data"]["batch_size"] != 32  # not the schema's batch size: default.yaml was read


def test_every_config_group_loads_from_the_wheel(installed):
    _, out = installed
    groups = {p.parent.name for p in CONFIGS.glob("*/*.yaml")}
    assert groups == {"data", "model", "experiment", "pipeline", "grounding", "synthesis", "sweeps"}
    assert sorted(out["configs"]) == sorted(str(p.relative_to(CONFIGS)) for p in CONFIGS.glob("*/*.yaml"))
    for rel, loaded in out["configs"].items():
        expected = yaml_file(rel)
        if rel.startswith("sweeps/"):
            expected = {"program": expected["program"], "parameters": expected["parameters"]}
        within(expected, loaded, rel)


def test_every_prompt_folder_reads_from_the_wheel(installed):
    site, out = installed
    folders = sorted({str(p.parent.relative_to(CONFIGS)) for p in (CONFIGS / "prompts").rglob("*.txt")})
    assert sorted(out["prompts"]) == folders
    for rel, texts in out["prompts"].items():
        assert texts == {p.name: p.read_text(encoding="utf-8").strip() for p in (CONFIGS / rel).glob("*.txt")}
    stages = {"refinement", "zeroshot", "grounding"} | {f"synthesis/{p.stem}" for p in CONFIGS.glob("synthesis/*")}
    assert set(out["stage_prompts"]) == stages
    for folder in out["stage_prompts"].values():  # the stages' built-in prompt folders are the installed ones
        assert Path(folder).is_relative_to(site / "refineg" / "configs" / "prompts")
