"""End-to-end training on the bundled sample with a tiny encoder: run folder, reload, resume, DDP equality."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from refineg.config import load_config
from refineg.data import read_jsonl
from refineg.modules.tagger_module import TaggerModule

ROOT = Path(__file__).resolve().parents[1]
TYPES = ["PER", "LOC", "ORG", "OTHER"]


def tiny_args(encoder, runs, name, **extra):
    args = {
        "model.encoder": encoder,
        "model.dropout": 0.0,
        "data.gold_limit": 64,
        "data.batch_size": 16,
        "data.eval_batch_size": 32,
        "trainer.max_epochs": 2,
        "logger.wandb": "false",
        "trainer.enable_progress_bar": "false",
        "runs_dir": str(runs),
        "run_name": name,
        "optim.encoder_lr": 1e-3,
        "trainer.accelerator": "cpu",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def train_tiny_steps(encoder, runs, name, **extra) -> dict:
    """Trains the tiny encoder for 4 steps (32 posts, batch 8, one epoch, clipping 0.05); returns ``last.ckpt``."""
    import torch

    from refineg.training import train

    os.environ.pop("REFINEG_RUN_NAME", None)
    steps = {
        "data.gold_limit": 32,
        "data.batch_size": 8,
        "trainer.max_epochs": 1,
        "predict": "false",
        "data.eval_batch_size": 64,
        "trainer.gradient_clip_val": 0.05,
    }
    train(load_config(tiny_args(encoder, runs, name, **{**steps, **extra})))
    return torch.load(runs / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)


@pytest.fixture(scope="module")
def trained(tiny_encoder, tmp_path_factory):
    from refineg.training import train

    runs = tmp_path_factory.mktemp("runs")
    os.environ.pop("REFINEG_RUN_NAME", None)
    os.environ["WANDB_MODE"] = "offline"
    result = train(load_config(tiny_args(tiny_encoder, runs, "single", **{"logger.wandb": "true"})))
    return runs / "single", result


def test_run_folder_contents(trained):
    run_dir, result = trained
    for name in (
        "config.yaml",
        "metrics.json",
        "predictions_dev.jsonl",
        "predictions_test.jsonl",
        "gold_ids.json",
        "checkpoints/last.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    assert len(json.loads((run_dir / "gold_ids.json").read_text())) == 64
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["dev"]) >= {"gmner", "mner", "eeg", "per_type"}
    preds = read_jsonl(run_dir / "predictions_dev.jsonl")
    assert len(preds) == 150 and all(p.source == "predicted" for p in preds)
    assert all(e.score is not None and 0 <= e.score <= 1 for p in preds for e in p.entities)
    # the Lightning-logged dev F1 of the best epoch equals the score recomputed from the written predictions
    assert metrics["best_val_mner_f1"] == pytest.approx(metrics["dev"]["mner"]["f1"], abs=1e-6)
    assert list((run_dir / "csv").glob("version_*/metrics.csv"))
    assert list((run_dir / "wandb").glob("offline-run-*"))  # W&B logged offline, no key needed
    assert metrics["train_throughput"]["posts_per_s"] > 0


def test_checkpoint_reloads_without_arguments(trained):
    run_dir, _ = trained
    module = TaggerModule.load_from_checkpoint(str(run_dir / "checkpoints" / "last.ckpt"), weights_only=False)
    assert module.types == ["PER", "LOC", "ORG", "OTHER"] and module.hparams.model["head"] == "crf"


def test_best_checkpoint_keeps_weights_and_config_only(trained, tmp_path, capsys):
    import torch

    from refineg.cli import main

    run_dir, result = trained
    best, last = Path(result["best_checkpoint"]), run_dir / "checkpoints" / "last.ckpt"
    lean, full = (torch.load(p, map_location="cpu", weights_only=False) for p in (best, last))
    assert "optimizer_states" not in lean and "lr_schedulers" not in lean
    assert full["optimizer_states"] and full["lr_schedulers"]  # last.ckpt stays resumable
    assert lean["state_dict"].keys() == full["state_dict"].keys() and lean["hyper_parameters"]["types"] == TYPES
    assert best.stat().st_size < 0.5 * last.stat().st_size  # Adam's two moments per weight are gone
    module = TaggerModule.load_from_checkpoint(str(best), weights_only=False)
    assert module.hparams.model["head"] == "crf"
    assert main(["predict", "--ckpt", str(best), "--text", "Obama visits Paris", "--device", "cpu"]) == 0


def test_release_without_test_file_trains_without_test_split(tiny_encoder, tmp_path):
    import shutil

    from refineg.config import SAMPLE_ROOT
    from refineg.training import train

    root = tmp_path / "release"  # a release folder like the README's, without txt/test.txt
    (root / "txt").mkdir(parents=True)
    for split in ("train", "dev"):
        shutil.copy(SAMPLE_ROOT / "txt" / f"{split}.txt", root / "txt" / f"{split}.txt")
    shutil.copytree(SAMPLE_ROOT / "xml", root / "xml")
    os.environ.pop("REFINEG_RUN_NAME", None)
    args = tiny_args(tiny_encoder, tmp_path / "runs", "notest", **{"data.gold_limit": 16, "trainer.max_epochs": 1})
    result = train(load_config(["data=twitter_gmner", f"data.root={root}", *args]))
    run_dir = tmp_path / "runs" / "notest"
    assert "dev" in result and "test" not in result and not (run_dir / "predictions_test.jsonl").exists()
    assert load_config([]).data.test and OmegaConf.load(run_dir / "config.yaml").data.test is None


def test_resume_from_last(trained, tiny_encoder, tmp_path):
    import shutil

    import torch

    from refineg.training import train

    run_dir = tmp_path / "resumed"
    shutil.copytree(trained[0], run_dir)
    runs = run_dir.parent
    before = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    os.environ.pop("REFINEG_RUN_NAME", None)
    result = train(
        load_config(tiny_args(tiny_encoder, runs, "resumed", **{"trainer.max_epochs": 3, "ckpt_path": "last"}))
    )
    after = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert after["epoch"] == before["epoch"] + 1  # one more epoch on top of the saved ones
    assert after["global_step"] == before["global_step"] + 4  # 64 posts / batch 16
    assert result["run_dir"] == str(run_dir)
    # the copied folder's best checkpoint and score are still known: a lower score after resuming does not replace them,
    # and a better one replaces the copied file (Lightning forgets both when the checkpoint's dirpath is another one)
    assert len(list((run_dir / "checkpoints").glob("best-*.ckpt"))) == 1
    assert Path(result["best_checkpoint"]).parent == run_dir / "checkpoints"
    assert result["best_val_mner_f1"] >= trained[1]["best_val_mner_f1"]


def test_misspelt_override_is_an_error(capsys):
    sys.path.insert(0, str(ROOT))
    from train import main

    assert main(["trainer.max_epoch=3"]) == 2
    assert "max_epochs" in capsys.readouterr().err  # the message suggests the right key
    assert main(["data=no_such_data"]) == 2


def test_predict_cli(trained, tmp_path, capsys):
    from refineg.cli import main

    run_dir, _ = trained
    ckpt = str(run_dir / "checkpoints" / "last.ckpt")
    sample = ROOT / "refineg" / "assets" / "sample" / "twitter-gmner" / "txt" / "dev.txt"
    assert main(["predict", "--ckpt", ckpt, "--input", str(sample), "--out", str(tmp_path / "p.jsonl")]) == 0
    preds = read_jsonl(tmp_path / "p.jsonl")
    assert len(preds) == 150 and preds[0].id == read_jsonl(run_dir / "predictions_dev.jsonl")[0].id
    assert main(["predict", "--ckpt", ckpt, "--text", "Obama visits Paris"]) == 0


def _train_ddp(encoder, runs, name, **extra) -> Path:
    """Runs train.py with 2 CPU processes (gloo) in a subprocess on a free port; returns the run folder."""
    import socket

    with socket.socket() as sock:  # a fixed default port can still be taken by the previous DDP run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "MASTER_PORT": str(port)}
    env.pop("REFINEG_RUN_NAME", None)
    args = tiny_args(encoder, runs, name, **{"trainer.devices": 2, "trainer.strategy": "ddp", **extra})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], capture_output=True, text=True, timeout=600, env=env, cwd=runs
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Initializing distributed: GLOBAL_RANK: 1" in proc.stderr + proc.stdout
    return runs / name


@pytest.mark.slow
def test_ddp_two_processes_match_single_process(trained, tiny_encoder, tmp_path):
    """2 CPU processes (gloo) with the same global batches give the same dev/test metrics as one process."""
    run_dir, _ = trained
    single = json.loads((run_dir / "metrics.json").read_text())
    ddp = json.loads((_train_ddp(tiny_encoder, tmp_path, "ddp") / "metrics.json").read_text())
    for split in ("dev", "test"):
        for task in ("gmner", "mner", "eeg"):
            assert ddp[split][task]["f1"] == pytest.approx(single[split][task]["f1"], abs=1e-9), (split, task)


@pytest.mark.slow
def test_ddp_with_packed_batches_trains_the_single_process_weights(trained, tiny_encoder, tmp_path):
    """Each rank packs its share of a global batch into its own rows: the weights still match one process."""
    import torch

    run_dir, _ = trained
    ddp_dir = _train_ddp(tiny_encoder, tmp_path, "ddp_packed", **{"data.pack_length": 128, "predict": "false"})
    single, ddp = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for d in (run_dir, ddp_dir)
    )
    floats = [k for k in single if single[k].is_floating_point()]
    assert len(floats) > 10
    for key in floats:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


def test_ddp_strategy_from_config():
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    from refineg.training import ddp_strategy

    cfg = load_config(["ddp.comm_hook=bf16", "ddp.bucket_cap_mb=100", "ddp.static_graph=true"])
    strategy = ddp_strategy(cfg.ddp)
    assert strategy._ddp_comm_hook is default_hooks.bf16_compress_hook
    assert strategy._ddp_kwargs == {"bucket_cap_mb": 100, "gradient_as_bucket_view": True, "static_graph": True}
    assert type(strategy).__name__ == "SameStreamDDPStrategy"
    assert type(ddp_strategy(load_config(["ddp.side_stream=true"]).ddp)).__name__ == "DDPStrategy"
    with pytest.raises(ValueError, match="ddp.comm_hook='int4'"):
        ddp_strategy(load_config(["ddp.comm_hook=int4"]).ddp)


@pytest.mark.slow
def test_ddp_with_active_embedding_rows_trains_the_single_process_weights(trained, tiny_encoder, tmp_path):
    """``optim.embedding_rows=active`` under DDP (same ids on both ranks): the weights of one process, full table."""
    import torch

    run_dir, _ = trained
    ddp_dir = _train_ddp(tiny_encoder, tmp_path, "ddp_active", **{"optim.embedding_rows": "active", "predict": "false"})
    single, ddp = (
        torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
        for d in (run_dir, ddp_dir)
    )
    assert set(ddp) == set(single)
    for key in (k for k in single if single[k].is_floating_point()):
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-4, atol=1e-5, msg=key)


def test_validation_every_n_epochs_keeps_the_best_of_the_validated_epochs(tiny_encoder, tmp_path, caplog):
    """``trainer.check_val_every_n_epoch=2`` over 5 epochs: dev is scored after epochs 2 and 4 only; last.ckpt and
    the log's warnings still cover epoch 5."""
    import csv
    import logging

    import torch

    from refineg.training import train

    os.environ.pop("REFINEG_RUN_NAME", None)
    extra = {"trainer.max_epochs": 5, "trainer.check_val_every_n_epoch": 2, "data.gold_limit": 16, "predict": "false"}
    with caplog.at_level(logging.WARNING):
        result = train(load_config(tiny_args(tiny_encoder, tmp_path / "runs", "every2", **extra)))
    # 16 posts at batch 16 for 5 epochs: 5 optimiser steps, far too few, and the log says so
    assert "this run trains 5 optimiser steps in all (trainer.max_epochs=5)" in caplog.text
    assert "the last 1 of trainer.max_epochs=5 epochs are never scored on dev" in caplog.text
    (log,) = (tmp_path / "runs" / "every2" / "csv").glob("version_*/metrics.csv")
    rows = [r for r in csv.DictReader(log.open()) if r.get("val/mner_f1")]
    assert [int(r["epoch"]) for r in rows] == [1, 3]
    assert Path(result["best_checkpoint"]).name in {"best-01.ckpt", "best-03.ckpt"}
    ckpt = tmp_path / "runs" / "every2" / "checkpoints" / "last.ckpt"
    last = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert last["epoch"] == 4 and last["global_step"] == 5  # written after the unscored fifth epoch too


def test_best_dev_f1_logged_is_the_best_validated_epoch_across_a_resume(tiny_encoder, tmp_path):
    """``val/mner_f1_best`` (what sweeps rank trials by) is the running best of the epochs' ``val/mner_f1``: the
    sanity check's two dev batches do not count, and a run resumed between validations keeps the epochs scored
    before it stopped."""
    import csv

    from refineg.training import train

    os.environ.pop("REFINEG_RUN_NAME", None)
    extra = {"trainer.check_val_every_n_epoch": 2, "data.gold_limit": 32, "predict": "false", "optim.ema": 0.9}
    extra["seed"] = 3
    train(load_config(tiny_args(tiny_encoder, tmp_path, "every2", **{**extra, "trainer.max_epochs": 3})))
    # stopped after the unscored third epoch; resumed for a fourth, scored one
    train(
        load_config(
            tiny_args(tiny_encoder, tmp_path, "every2", **{**extra, "trainer.max_epochs": 4, "ckpt_path": "last"})
        )
    )
    rows = []
    for log in sorted((tmp_path / "every2" / "csv").glob("version_*/metrics.csv")):  # version_1: the resumed run
        rows += [r for r in csv.DictReader(log.open()) if r.get("val/mner_f1")]
    assert [int(r["epoch"]) for r in rows] == [1, 3]
    scores = [float(r["val/mner_f1"]) for r in rows]
    assert [float(r["val/mner_f1_best"]) for r in rows] == pytest.approx([scores[0], max(scores)])


def test_best_dev_f1_travels_in_the_checkpoint_to_the_resumed_fit(tiny_encoder):
    """The best dev MNER F1 so far is saved with the checkpoint and counts again when a fit resumes from it."""
    from dataclasses import asdict

    import lightning as L
    import torch
    from lightning.pytorch.trainer.states import TrainerFn

    from refineg.config import ModelConfig, OptimConfig

    model, optim = asdict(ModelConfig(encoder=tiny_encoder)), asdict(OptimConfig())
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    trainer.state.fn = TrainerFn.FITTING
    stopped = TaggerModule(model, optim, TYPES)
    for score in (0.42, 0.31):
        stopped.val_f1_best.update(torch.tensor(score))
    checkpoint: dict = {}
    stopped.on_save_checkpoint(checkpoint)
    assert checkpoint["val_mner_f1_best"] == pytest.approx(0.42)
    resumed = TaggerModule(model, optim, TYPES)
    resumed.trainer = trainer
    resumed.on_load_checkpoint(checkpoint)
    resumed.on_fit_start()
    resumed.val_f1_best.update(torch.tensor(0.35))  # the resumed run's first scored epoch
    assert float(resumed.val_f1_best.compute()) == pytest.approx(0.42)
    fresh = TaggerModule(model, optim, TYPES)  # a run that never scored saves no best
    fresh.on_save_checkpoint(checkpoint := {})
    assert "val_mner_f1_best" not in checkpoint
