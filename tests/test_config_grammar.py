"""The one config grammar and loader (refineg.config.load_typed) and the ``refineg train`` command.

Groups, dotted keys, ``+=`` appends, ``None`` as null, typos named in the error, mandatory values, ``defaults`` lists in
files, the pipeline's nested training config, the same grammar for every command, and ``refineg train`` /
``train.py`` (W&B's ``${args_no_hyphens}`` and ``${args}``) training for real on the bundled sample.
"""

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from refineg.config import Group, TrainConfig, load_config, load_typed, parse_override
from refineg.stages.grounding.config import load_ground_config
from refineg.stages.grounding.region_fit import load_fit_config
from refineg.stages.pipeline import load_pipeline_config
from refineg.stages.refinement import load_refine_config
from refineg.stages.selftrain import load_selftrain_config
from refineg.stages.synthesis import load_synthesis_config
from refineg.stages.zeroshot import load_zeroshot_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "refineg" / "configs"
SAMPLE = "configs/pipeline/refineg_sample.yaml"


def test_parse_override_forms():
    assert parse_override("data.root=/x") == ("data.root", "/x", False)
    assert parse_override("--data.root=/x") == ("data.root", "/x", False)  # W&B's ${args}
    assert parse_override("data.test=None") == ("data.test", "null", False)  # ${args_no_hyphens} writes str(None)
    assert parse_override("logger.tags+=a=b") == ("logger.tags", "a=b", True)  # only the first '=' splits
    for bad in ("data.root", "=1", "+=1"):
        with pytest.raises(ValueError):
            parse_override(bad)


def test_groups_merge_their_files_and_the_last_choice_wins():
    default = yaml.safe_load((CONFIGS / "default.yaml").read_text())
    cfg = load_config([])
    assert isinstance(cfg, TrainConfig) and cfg.data.batch_size == default["data"]["batch_size"] != 32
    twitter = yaml.safe_load((CONFIGS / "data" / "twitter_gmner.yaml").read_text())
    cfg = load_config(["data=sample", "data=twitter_gmner", "data.root=/r"])
    assert cfg.data.name == "twitter_gmner" == twitter["name"] and cfg.data.root == "/r"
    # experiment= merges at the top: it sets model, data and trainer keys at once
    paper = yaml.safe_load((CONFIGS / "experiment" / "paper_tagger.yaml").read_text())
    cfg = load_config(["experiment=paper_tagger", "data.root=/r", "trainer.max_epochs=2"])
    assert cfg.model.encoder == paper["model"]["encoder"] and cfg.model.casing is False
    assert cfg.trainer.max_epochs == 2 and paper["trainer"]["max_epochs"] == 15  # the dotted key comes last
    assert cfg.cuda_graph is True and cfg.data.pad_to_multiple_of == 16
    with pytest.raises(ValueError, match=r"unknown model config 'nope'; known: .*minilm_crf"):
        load_config(["model=nope"])


def test_dotted_keys_yaml_values_append_and_none():
    cfg = load_config(
        ["model.head_kwargs={a: 1}", "data.types=[PER, LOC]", "logger.tags+=x", "logger.tags+=y", "data.test=None"]
    )
    assert cfg.model.head_kwargs == {"a": 1} and cfg.data.types == ["PER", "LOC"]
    assert cfg.logger.tags == ["x", "y"] and cfg.data.test is None
    cfg = load_config(["data.types+=MISC"])
    assert cfg.data.types == ["PER", "LOC", "ORG", "OTHER", "MISC"]
    with pytest.raises(ValueError, match=r"logger\+=x: '\+=' appends to a list, logger is not one"):
        load_config(["logger+=x"])
    with pytest.raises(ValueError, match=r"data.batch_size"):
        load_config(["data.batch_size+=3"])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["data.batchsize=3"], r"Key 'batchsize' not in 'DataConfig'.*\(key data.batchsize\)"),
        (["trainer.max_epoch=3"], r"Did you mean: 'max_epochs'\?.*\(key trainer.max_epoch\)"),
        (["epochs=3"], r"Key 'epochs' not in 'TrainConfig'"),
        (["data.batch_size=many"], r"data.batch_size"),
        (["model.casing=perhaps"], r"model.casing"),
        (["data.types=[PER"], r"bad configuration"),
        (["data.root"], r"not key=value"),
    ],
)
def test_a_typo_is_an_error_naming_the_key(overrides, needle):
    with pytest.raises(ValueError, match=needle):
        load_config(overrides)


@dataclass
class _Inner:
    size: int = 1
    name: str = "a"

    def validate(self):
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")
        return self


@dataclass
class _Outer:
    GROUPS: ClassVar[dict[str, Group]] = {"inner": Group("inner", node="inner", default="small", record="choice")}

    choice: str = ""
    inner: _Inner = field(default_factory=_Inner)
    tags: list[str] = field(default_factory=list)


@dataclass
class _Top:
    BASE: ClassVar[str] = "top.yaml"

    outer: _Outer = field(default_factory=_Outer)
    seed: int = 0


def test_nested_schemas_keep_their_groups_base_files_and_validation(tmp_path):
    (tmp_path / "inner").mkdir()
    (tmp_path / "inner" / "small.yaml").write_text("size: 2\n")
    (tmp_path / "inner" / "big.yaml").write_text("size: 200\nname: b\n")
    (tmp_path / "top.yaml").write_text("seed: 7\n")
    cfg = load_typed(_Top, [], config_dir=tmp_path)
    assert (cfg.seed, cfg.outer.inner.size, cfg.outer.choice) == (7, 2, "small")  # base file, default group, record
    cfg = load_typed(_Top, ["outer.inner=big", "outer.inner.size=3"], config_dir=tmp_path)
    assert (cfg.outer.inner.size, cfg.outer.inner.name, cfg.outer.choice) == (3, "b", "big")
    layer = tmp_path / "layer.yaml"
    layer.write_text("outer:\n  defaults: [inner=big]\n  tags: [t]\n")
    cfg = load_typed(_Top, ["outer.tags+=u"], layer, config_dir=tmp_path)
    assert (cfg.outer.inner.size, cfg.outer.tags) == (200, ["t", "u"])
    cfg = load_typed(_Top, ["outer.inner=small"], layer, config_dir=tmp_path)  # an override beats the file's choice
    assert cfg.outer.inner.size == 2
    with pytest.raises(ValueError, match=r"outer.inner: size must be >= 0, got -1"):
        load_typed(_Top, ["outer.inner.size=-1"], config_dir=tmp_path)
    layer.write_text("outer:\n  defaults: [nothing=big]\n")
    with pytest.raises(ValueError, match=r"outer.nothing is not a config group"):
        load_typed(_Top, [], layer, config_dir=tmp_path)
    (tmp_path / "top.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="top.yaml not found"):
        load_typed(_Top, [], config_dir=tmp_path)


@dataclass
class _Needs:
    path: str = "???"  # OmegaConf's mandatory value


@dataclass
class _HasNeeds:
    needs: _Needs = field(default_factory=_Needs)


def test_a_mandatory_value_left_unset_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"needs.path is not set \(\?\?\? in its file\): add needs.path=VALUE"):
        load_typed(_HasNeeds, [])
    assert load_typed(_HasNeeds, ["needs.path=z"]).needs.path == "z"
    assert load_typed(_HasNeeds, [], {"needs": {"path": "y"}}).needs.path == "y"


def test_the_pipeline_nests_a_typed_training_config():
    cfg = load_pipeline_config(SAMPLE, ["train.trainer.max_epochs=1", "train.model=minilm_softmax"])
    direct = load_config(
        [
            "data=sample",
            "model=minilm_crf",
            "trainer.max_epochs=3",
            "data.batch_size=16",
            "logger.wandb=false",
            "trainer.max_epochs=1",
            "model=minilm_softmax",
        ]
    )
    plain = {k: v for k, v in asdict(cfg.train).items() if k not in ("checkpoint", "mixing")}
    assert plain == asdict(direct)  # the section is exactly what refineg train loads from the same choices
    assert cfg.train.model.head == "softmax" and cfg.train.trainer.max_epochs == 1
    assert asdict(cfg.train.training_config(["seed=3"])) == {**asdict(direct), "seed": 3}
    full = "configs/pipeline/refineg_twitter_full.yaml"
    cfg = load_pipeline_config(full, ["train.data.root=/data/tw", "train.data.gold_limit=None"])
    assert cfg.train.data.name == "twitter_gmner" and cfg.train.data.root == "/data/tw"
    assert cfg.train.model.encoder == "FacebookAI/xlm-roberta-large" and cfg.train.cuda_graph is True
    assert cfg.ground.mllm.llm.max_tokens == 512  # configs/grounding/default.yaml is the ground section's base
    with pytest.raises(ValueError, match="needs its folder: add train.data.root="):
        load_pipeline_config(full)
    with pytest.raises(ValueError, match=r"set train.data.root=/x"):
        load_pipeline_config(SAMPLE, ["train+=data.root=/x"])  # the old list grammar points at the new key
    with pytest.raises(ValueError, match=r"\(key train.trainer.max_epoch\)"):
        load_pipeline_config(SAMPLE, ["train.trainer.max_epoch=1"])
    with pytest.raises(ValueError, match="moved to configs/pipeline/refineg_sample.yaml"):
        load_pipeline_config("configs/experiment/refineg_sample.yaml")


def test_the_pipeline_nests_synthesis_and_grounding_configs():
    cfg = load_pipeline_config(
        "configs/pipeline/refineg_ccks.yaml",
        ["train.data.root=/d", "synthesis.n_reuse=3", "ground.selector.k=5", "ground.grounder.name=clip"],
    )
    ccks = yaml.safe_load((CONFIGS / "synthesis" / "ccks_military.yaml").read_text())
    assert cfg.synthesis.domain == "ccks_military" and cfg.synthesis.types == ccks["types"]
    assert cfg.synthesis.n_reuse == 3 and cfg.synthesis.llm.base_url == "http://localhost:8000/v1"
    assert (cfg.ground.selector.k, cfg.ground.grounder.name) == (5, "clip")
    with pytest.raises(ValueError, match=r"synthesis: n_reuse and n_new must be >= 0 and not both 0"):
        load_pipeline_config(SAMPLE, ["synthesis.n_reuse=0", "synthesis.n_new=0"])
    with pytest.raises(ValueError, match=r"ground.grounder.name must be one of"):
        load_pipeline_config(SAMPLE, ["ground.grounder.name=gpt"])


# every command's loader: (loader, a valid dotted key, a list key that += extends, a nullable key)
LOADERS = {
    "train": (load_config, "trainer.max_epochs=2", "logger.tags", "data.test"),
    "synthesize": (load_synthesis_config, "n_reuse=2", "filters.generic_lexicon", "max_seeds"),
    "refine": (load_refine_config, "tau=0.25", "types", "delegation_rate"),
    "ground": (load_ground_config, "selector.k=2", "never_grounded", "groundability_threshold"),
    "zeroshot": (load_zeroshot_config, "max_posts=2", "types", "images_dir"),
    "fit-region-scorer": (load_fit_config, "head.epochs=2", "templates", "train"),
    "pipeline": (lambda o: load_pipeline_config(SAMPLE, o), "refine.tau=0.25", "train.logger.tags", "images"),
    "selftrain": (load_selftrain_config, "selftrain.rounds=2", "refine.types", "selftrain.epochs"),
}


@pytest.mark.parametrize("command", sorted(LOADERS))
def test_every_command_takes_the_same_grammar(command):
    loader, dotted, list_key, nullable = LOADERS[command]

    def get(cfg, key):
        for part in key.split("."):
            cfg = getattr(cfg, part)
        return cfg

    key, value = dotted.split("=")
    assert str(get(loader([dotted]), key)) == value
    before = list(get(loader([]), list_key))
    assert list(get(loader([f"{list_key}+=NEW"]), list_key)) == [*before, "NEW"]
    assert get(loader([f"--{nullable}=None"]), nullable) is None  # ${args}: --key; str(None)
    typo = f"{key}x"
    with pytest.raises(ValueError) as err:
        loader([f"{typo}=1"])
    assert f"'{typo.rsplit('.', 1)[-1]}'" in str(err.value) and typo in str(err.value)  # names the key, dotted
    with pytest.raises(ValueError, match="not key=value"):
        loader(["nokey"])


def _train_args(encoder, runs, name):
    return [
        f"model.encoder={encoder}",
        "data.gold_limit=32",
        "data.batch_size=16",
        "data.eval_batch_size=32",
        "data.test=None",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=False",
        "logger.wandb=False",
        f"runs_dir={runs}",
        f"run_name={name}",
    ]


def test_refineg_train_and_train_py_train_the_same_run(tiny_encoder, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REFINEG_RUN_NAME"}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}  # this checkout's refineg, from any folder
    runs = tmp_path / "runs"
    cli = [sys.executable, "-m", "refineg.cli", "train", *_train_args(tiny_encoder, runs, "cli")]
    py_args = [f"--{a}" if a.startswith(("data.", "trainer.")) else a for a in _train_args(tiny_encoder, runs, "py")]
    script = [sys.executable, str(ROOT / "train.py"), *py_args]  # ${args}: --key=value items mixed with key=value
    for cmd in (cli, script):
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "MNER" in proc.stdout  # the dev score table
    a, b = (json.loads((runs / n / "metrics.json").read_text()) for n in ("cli", "py"))
    assert a["best_val_mner_f1"] == b["best_val_mner_f1"]
    saved = yaml.safe_load((runs / "cli" / "config.yaml").read_text())
    assert saved["data"]["gold_limit"] == 32 and saved["data"]["test"] is None and saved["model"]["encoder"]


@pytest.mark.parametrize("entry", ["cli", "script"])
def test_a_bad_training_key_is_one_line_and_status_2(entry, tmp_path):
    cmd = [sys.executable, "-m", "refineg.cli", "train"] if entry == "cli" else [sys.executable, str(ROOT / "train.py")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [*cmd, "trainer.max_epoch=1"], capture_output=True, text=True, cwd=tmp_path, timeout=300, env=env
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: bad configuration: Key 'max_epoch' not in 'TrainerConfig'")
    assert "(key trainer.max_epoch)" in lines[-1]
    proc = subprocess.run(
        [sys.executable, "-m", "refineg.cli", "report", str(tmp_path), "--bogus=1"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 2 and "unrecognized arguments: --bogus=1" in proc.stderr  # only train takes --key=v


def test_selftrain_nests_the_delegations_refine_config():
    cfg = load_selftrain_config(
        ["selftrain.refine_backend=oracle", "refine.gold=g.jsonl", "refine.llm.model=M", "refine.checks=[span]"]
    )
    assert cfg.refine.llm.model == "M" and cfg.refine.checks == ["span"] and cfg.selftrain.refine_backend == "oracle"
    assert cfg.data.batch_size == load_config([]).data.batch_size  # the training keys come from the same files
    with pytest.raises(ValueError, match=r"\(key refine.tua\)"):
        load_selftrain_config(["refine.tua=0.3"])
    with pytest.raises(ValueError, match="refine: tau must be in"):
        load_selftrain_config(["refine.tau=3"])  # the nested RefineConfig validates itself
    with pytest.raises(ValueError, match="selftrain.soft_targets=true uses CRF marginals"):
        load_selftrain_config(["selftrain.soft_targets=true", "model.head=softmax"])
    with pytest.raises(ValueError, match=r"Key 'selftrain' not in 'TrainConfig'"):
        load_config(["selftrain.rounds=2"])  # refineg train has no self-training keys


def test_a_preset_name_set_as_a_plain_value_is_refused(tmp_path):
    from refineg.stages.pipeline.config import load_pipeline_config

    layer = tmp_path / "p.yaml"
    layer.write_text("synthesis:\n  domain: ccks_military\n")
    with pytest.raises(ValueError, match=r"synthesis.domain=ccks_military was set as a plain value.*defaults: \["):
        load_pipeline_config(str(layer), [])
    picked = load_pipeline_config(None, ["synthesis.domain=ccks_military"])
    assert picked.synthesis.domain == "ccks_military" and "vehicle" in picked.synthesis.types
