"""The training run behind ``train.py``: run folder, loggers, checkpoints, fit, test and prediction files."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel

from refineg.callbacks import RunCheckpoint, TrainThroughput, WeightEMA
from refineg.config import TrainConfig, as_dictconfig
from refineg.data import write_jsonl
from refineg.datamodules.gmner import GMNERDataModule, has_test_split
from refineg.errors import UsageError
from refineg.inference.predictor import TaggerPredictor
from refineg.metrics import evaluate_examples, format_scores
from refineg.modules.backbones import PACKABLE
from refineg.modules.compile import compile_tagger
from refineg.modules.tagger_module import TaggerModule

logger = logging.getLogger(__name__)
RUN_ENV = "REFINEG_RUN_NAME"


def resolve_run_dir(cfg: DictConfig) -> Path:
    """Picks the run folder; every DDP rank agrees through the ``REFINEG_RUN_NAME`` environment variable.

    ``ckpt_path=last`` without ``run_name`` resumes the most recent run that has a ``last.ckpt``.
    """
    runs = Path(cfg.runs_dir)
    name = cfg.run_name or os.environ.get(RUN_ENV)
    if name is None and cfg.ckpt_path == "last":
        candidates = sorted(runs.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise FileNotFoundError(f"ckpt_path=last: no run with checkpoints/last.ckpt under {runs}/")
        name = candidates[-1].parents[1].name
    if name is None:
        name = f"{cfg.data.name}-{cfg.model.head}-{time.strftime('%Y%m%d-%H%M%S')}"
    os.environ[RUN_ENV] = name
    return runs / name


def _loggers(cfg: DictConfig, run_dir: Path) -> list:
    loggers: list = [CSVLogger(save_dir=str(run_dir), name="csv")]
    if cfg.logger.wandb:
        if not (os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE")):
            os.environ["WANDB_MODE"] = "offline"
        loggers.append(
            WandbLogger(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                name=run_dir.name,
                save_dir=str(run_dir),
                tags=list(cfg.logger.tags),
                config=OmegaConf.to_container(cfg, resolve=True),
            )
        )
    return loggers


class SameStreamDDPStrategy(DDPStrategy):
    """Lightning's DDP, but the model is wrapped on the current CUDA stream.

    Lightning builds ``DistributedDataParallel`` on a fresh side stream. DDP keeps the parameters' gradient
    accumulators created there, so every backward then hands each gradient across streams (torch warns: "The
    AccumulateGrad node's stream does not match the stream of the node that produced the incoming gradient"),
    an extra synchronisation per parameter per step.
    """

    def _setup_model(self, model: torch.nn.Module) -> DistributedDataParallel:
        return DistributedDataParallel(module=model, device_ids=self.determine_ddp_device_ids(), **self._ddp_kwargs)


def ddp_strategy(ddp: DictConfig) -> DDPStrategy:
    """Lightning's DDP strategy with the ``ddp`` config (gradient compression hook, buckets, static graph).

    Raises:
        ValueError: Unknown ``ddp.comm_hook``.
    """
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    hooks = {"none": None, "bf16": default_hooks.bf16_compress_hook, "fp16": default_hooks.fp16_compress_hook}
    if ddp.comm_hook not in hooks:
        raise UsageError(f"ddp.comm_hook={ddp.comm_hook!r}: choose one of {', '.join(hooks)}")
    cls = DDPStrategy if ddp.side_stream else SameStreamDDPStrategy
    return cls(
        ddp_comm_hook=hooks[ddp.comm_hook],
        bucket_cap_mb=ddp.bucket_cap_mb,
        gradient_as_bucket_view=ddp.gradient_as_bucket_view,
        static_graph=ddp.static_graph,
    )


def train(cfg: TrainConfig | DictConfig) -> dict[str, Any]:
    """Trains, tests and writes the run folder; returns the metrics written to ``metrics.json``.

    Args:
        cfg: The training config (:func:`refineg.config.load_config`; a ``DictConfig`` view of one also works).
    """
    cfg = as_dictconfig(cfg)
    run_dir = resolve_run_dir(cfg)
    L.seed_everything(cfg.seed, workers=True)
    ckpt_dir = run_dir / "checkpoints"
    ckpt_path = cfg.ckpt_path
    if ckpt_path == "last":
        ckpt_path = str(ckpt_dir / "last.ckpt")
        if not Path(ckpt_path).is_file():
            raise FileNotFoundError(f"ckpt_path=last: {ckpt_path} does not exist")
    if cfg.data.test and not has_test_split(cfg.data):
        cfg.data.test = None  # a release without txt/test.txt: the run folder's config.yaml says there was none
    if cfg.data.pack_length and cfg.model.groundability:
        raise UsageError(
            "data.pack_length does not combine with model.groundability=true (the head reads whole "
            "posts' subword states): set data.pack_length=0"
        )
    module = TaggerModule(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), list(cfg.data.types))
    if cfg.data.pack_length and not getattr(module.tagger.backbone, "supports_packing", False):
        raise UsageError(
            f"data.pack_length needs model.backbone=hf with an encoder of a family in {PACKABLE} "
            f"(this run: {cfg.model.backbone}, {cfg.model.encoder}); the image-aware backbone and "
            "other encoders need one post per row: set data.pack_length=0"
        )
    if cfg.model.init_from:
        module.load_tagger_weights(cfg.model.init_from)
    dm = GMNERDataModule(
        cfg.data,
        cfg.model.encoder,
        cfg.model.word_dropout,
        cfg.seed,
        run_dir,
        image_transform=getattr(module.tagger.backbone, "image_transform", None),
    )
    compile_tagger(module.tagger, cfg.compile, cuda_graph=cfg.cuda_graph)
    # a frozen tagger's MNER F1 never moves: pick the epoch by the head being trained
    monitor = "val/groundability_auroc" if cfg.model.freeze_tagger else "val/mner_f1"
    # the best checkpoint is for inference: weights and hyper-parameters only (a third of the size); last.ckpt keeps
    # the optimiser and scheduler state that resuming needs
    checkpoint = RunCheckpoint(
        dirpath=ckpt_dir,
        filename="best-{epoch:02d}",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        save_weights_only=True,
    )
    # Lightning's save_last only copies when the best checkpoint changes; resuming needs every epoch's state.
    # validating every N epochs, Lightning would write last.ckpt only after validation: every epoch's state is kept
    last = RunCheckpoint(
        dirpath=ckpt_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        save_on_train_epoch_end=True if cfg.trainer.check_val_every_n_epoch > 1 else None,
    )
    throughput = TrainThroughput()
    trainer_kwargs = {k: v for k, v in OmegaConf.to_container(cfg.trainer).items() if v is not None}
    if trainer_kwargs.get("strategy") == "ddp":
        trainer_kwargs["strategy"] = ddp_strategy(cfg.ddp)
    if cfg.cuda_graph:
        if str(cfg.trainer.precision) in ("16", "16-mixed"):
            raise UsageError(
                "cuda_graph=true does not scale the loss, so fp16's gradient scaler would divide unscaled "
                "gradients by its scale: use trainer.precision=bf16-mixed or 32-true"
            )
        if cfg.model.gradient_checkpointing:
            raise UsageError(
                "cuda_graph=true does not combine with model.gradient_checkpointing (recomputation "
                "saves and restores RNG state, which a CUDA graph capture cannot)"
            )
        if cfg.trainer.accumulate_grad_batches != 1:
            raise UsageError(
                "cuda_graph=true needs trainer.accumulate_grad_batches=1 (each replay overwrites the gradients)"
            )
        module.use_step_graph(clip=trainer_kwargs.pop("gradient_clip_val", None), max_graphs=cfg.cuda_graph_shapes)
        if cfg.data.pad_to_multiple_of <= 1:
            logger.warning(
                "cuda_graph=true records one graph per batch shape: set data.pad_to_multiple_of "
                "(e.g. 16) so that few shapes occur"
            )
    every, epochs = cfg.trainer.check_val_every_n_epoch, cfg.trainer.max_epochs
    unscored = epochs % every if every > 1 else 0
    if unscored:
        logger.warning(
            "trainer.check_val_every_n_epoch=%d: the last %d of trainer.max_epochs=%d epochs are never scored on dev, "
            "so the best checkpoint cannot come from them",
            every,
            unscored,
            epochs,
        )
    try:
        trainer = L.Trainer(
            default_root_dir=str(run_dir),
            logger=_loggers(cfg, run_dir),
            callbacks=[checkpoint, last, LearningRateMonitor("step"), throughput]
            + ([WeightEMA(cfg.optim.ema)] if cfg.optim.ema else []),
            use_distributed_sampler=False,
            reload_dataloaders_every_n_epochs=1 if cfg.data.mixing == "two_stage" else 0,
            **trainer_kwargs,
        )
    except (ValueError, MisconfigurationException) as err:  # Lightning checks the trainer.* values here
        raise UsageError(f"bad trainer settings (trainer.*): {err}") from err
    if cfg.cuda_graph and (trainer.world_size > 1 or not isinstance(trainer.strategy, SingleDeviceStrategy)):
        raise UsageError(
            f"cuda_graph=true runs on one device without DDP; this run has {trainer.world_size} "
            f"device(s) with {type(trainer.strategy).__name__} (use trainer.devices=1 "
            "trainer.strategy=auto, or cuda_graph=false)"
        )
    if trainer.is_global_zero:
        run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run_dir / "config.yaml")
    dm.setup("fit")
    module.gold = {"dev": dm.examples["dev"], "test": dm.examples.get("test", [])}
    n_params = sum(p.numel() for p in module.parameters())
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
    for lg in trainer.loggers:
        lg.log_hyperparams({"params/total": n_params, "params/trainable": n_train})
    torch.backends.cuda.enable_cudnn_sdp(cfg.cudnn_attention)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    # the step graphs (cuda_graph=true) hold their gradients and memory pool on the GPU; the module and the trainer
    # refer to each other, so without this they would stay until a garbage collection (self-training's next round)
    module.step_graph = None
    best = checkpoint.best_model_path or last.best_model_path
    if "test" in dm.examples:
        trainer.test(module, datamodule=dm, ckpt_path=best or None, verbose=False)
    result: dict[str, Any] = {
        "run_dir": str(run_dir),
        "best_checkpoint": best,
        f"best_{monitor.replace('/', '_')}": float(checkpoint.best_model_score or 0.0),
        "train_throughput": throughput.summary,
    }
    if trainer.is_global_zero and not cfg.predict:
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    if trainer.is_global_zero and cfg.predict:
        predictor = TaggerPredictor.from_checkpoint(
            best, batch_size=cfg.data.eval_batch_size, max_length=cfg.data.max_length
        )
        for split in ("dev", "test"):
            if split not in dm.examples:
                continue
            preds = predictor.predict(dm.examples[split], progress=cfg.trainer.enable_progress_bar)
            write_jsonl(preds, run_dir / f"predictions_{split}.jsonl")
            result[split] = evaluate_examples(dm.examples[split], preds, types=list(cfg.data.types))
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def print_summary(result: dict[str, Any]) -> None:
    """Prints the dev/test score tables of a finished run."""
    print(f"\nrun folder: {result['run_dir']}\nbest checkpoint: {result['best_checkpoint']}")
    for split in ("dev", "test"):
        if split in result:
            m = result[split]["mner"]
            print(f"\n== {split}: MNER P {100 * m['precision']:.2f}  R {100 * m['recall']:.2f}  F1 {100 * m['f1']:.2f}")
            print(format_scores(result[split]))
