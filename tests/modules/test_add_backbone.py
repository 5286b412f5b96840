"""Adding a backbone is one file plus a config: the two blocks of docs/extending.md ("A backbone"), end to end."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from refineg.config import CONFIG_DIR, load_config
from refineg.modules.backbones import BACKBONES

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "extending.md"


def backbone_blocks() -> tuple[str, str]:
    """The Python file and the YAML config of the backbone section."""
    section = re.split(r"^## ", DOC.read_text(), flags=re.M)[1]
    assert section.startswith("A backbone")
    [code] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    [yaml] = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    return code, yaml


def test_one_file_and_one_config_train_and_reload(tiny_encoder, tmp_path, monkeypatch):
    from refineg.training import train

    code, yaml = backbone_blocks()
    assert "imports: [refineg.modules.bilstm]" in yaml and "backbone: hf_bilstm" in yaml
    src = tmp_path / "src"
    src.mkdir()
    (src / "bilstm.py").write_text(code)
    configs = tmp_path / "configs"
    shutil.copytree(CONFIG_DIR, configs)
    (configs / "model" / "minilm_bilstm.yaml").write_text(yaml)
    monkeypatch.syspath_prepend(str(src))
    monkeypatch.delenv("REFINEG_RUN_NAME", raising=False)
    # the registration lands in a copy of the registry, so that later tests see the built-in backbones only
    monkeypatch.setattr(BACKBONES, "_factories", dict(BACKBONES._factories))
    monkeypatch.delitem(sys.modules, "bilstm", raising=False)  # a module of that name from elsewhere

    overrides = [
        "model=minilm_bilstm",
        "model.imports=[bilstm]",  # the file's module name here (the docs put it in refineg/modules/)
        f"model.encoder={tiny_encoder}",
        "model.backbone_kwargs.lstm_size=12",
        "data.gold_limit=32",
        "data.batch_size=16",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        "logger.wandb=false",
        "predict=false",
        f"runs_dir={tmp_path / 'runs'}",
        "run_name=bilstm",
    ]
    cfg = load_config(overrides, config_dir=configs)
    assert cfg.model.backbone == "hf_bilstm" and cfg.model.backbone_kwargs == {"lstm_size": 12}
    train(cfg)
    ckpt = tmp_path / "runs" / "bilstm" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    from refineg.inference.predictor import load_tagger

    module = load_tagger(ckpt)
    assert type(module.tagger.backbone).__name__ == "HFBiLSTMEncoder"
    assert module.tagger.backbone.hidden_size == 24 and module.hparams.model["imports"] == ["bilstm"]

    # a fresh process finds the class through the checkpoint's model.imports, given the file on its path
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    cmd = [sys.executable, "-m", "refineg.cli", "predict", "--ckpt", str(ckpt), "--text", "Obama visits Paris"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()  # one line per entity, or "no entity found in 3 words"
    env["PYTHONPATH"] = str(ROOT)  # without the file the checkpoint cannot be rebuilt
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode != 0 and "No module named 'bilstm'" in proc.stderr
