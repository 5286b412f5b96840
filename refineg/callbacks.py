"""Training callbacks."""

from __future__ import annotations

import os
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class TrainThroughput(L.Callback):
    """Measures training posts/s and subword tokens/s (all ranks together), skipping the run's first ``warmup`` steps.

    Time runs in windows of consecutive training steps: a window opens at a training-batch end (after the run's
    first ``warmup`` steps; each epoch's first batch is never counted) and closes when validation starts or the
    epoch ends. The GPU is synchronised only when a window opens or closes, never per step, so the measurement does
    not stop the CPU from queueing the next step while the GPU runs the current one. Data loading is included,
    validation excluded. ``train/posts_per_s`` and ``train/tokens_per_s`` are logged at each epoch end;
    :attr:`summary` holds the totals.

    Args:
        warmup: Steps of the run to skip (compilation, CUDA graph recording, allocator warm-up).
    """

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.seconds = 0.0
        self.posts = 0
        self.tokens = 0
        self._seen = 0
        self._t0: float | None = None
        self._posts = 0
        self._tokens: torch.Tensor | int = 0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        self._seen += 1
        if self._t0 is not None:
            # packed batches hold several posts per row: count posts by their loss weights
            self._posts += int(batch["weight"].shape[0] if "weight" in batch else batch["input_ids"].shape[0])
            self._tokens = self._tokens + batch["attention_mask"].sum()  # stays on the device until the window closes
        elif self._seen >= self.warmup:
            self._t0 = self._sync(pl_module)

    def _close(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is None:
            return
        self.seconds += self._sync(pl_module) - self._t0
        self.posts += self._posts * trainer.world_size
        self.tokens += int(self._tokens) * trainer.world_size
        self._t0, self._posts, self._tokens = None, 0, 0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # Lightning sets the stage to VALIDATING before this hook (trainer.training is False here), so close the
        # window unconditionally: outside a training window (sanity check, trainer.validate) this is a no-op.
        self._close(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._close(trainer, pl_module)
        if self.seconds > 0:
            pl_module.log_dict(
                {"train/posts_per_s": self.posts / self.seconds, "train/tokens_per_s": self.tokens / self.seconds},
                rank_zero_only=True,
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._close(trainer, pl_module)

    @property
    def summary(self) -> dict[str, float]:
        """``posts_per_s``, ``tokens_per_s`` and the measured ``seconds`` / ``posts``."""
        if self.seconds == 0:
            return {}
        return {
            "posts_per_s": self.posts / self.seconds,
            "tokens_per_s": self.tokens / self.seconds,
            "seconds": self.seconds,
            "posts": self.posts,
        }


class WeightEMA(L.Callback):
    """Exponential moving average of the trainable weights; validation, checkpoints and predictions use the average.

    After each optimiser step the average moves towards the weights by ``1 - d``, with ``d = min(decay, (1 + n) /
    (10 + n))`` after ``n`` updates (so early averages are not dominated by the initial weights). When validation
    starts during fitting, and when a training epoch ends, the average is swapped into the model, and it stays there
    until the next training batch: the checkpoints written at validation end (the best one included) or, without
    validation, at the epoch's end hold the averaged weights, so
    ``refineg predict`` and ``trainer.test`` use them with no extra step. Resuming restores the raw weights, the
    average and ``n`` from ``last.ckpt`` (this callback's state). Only parameters that train are averaged; buffers and
    frozen weights are left as they are. (Lightning's ``WeightAveraging`` swaps back before a weights-only best
    checkpoint is written, which would store the raw weights under the averaged score.)

    With ``optim.embedding_rows=active`` the rows of ids never seen in training are not parameters: they take the
    current lazy weight decay, not its average, so the result differs slightly from ``all``.

    Args:
        decay: The largest ``d``; the average spans about ``1 / (1 - decay)`` steps.
    """

    def __init__(self, decay: float) -> None:
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.other: list[torch.Tensor] | None = None  # the average, or the raw weights while the average is swapped in
        self.swapped = False
        self._last_step = -1
        self._pending: list[torch.Tensor] | None = None  # a checkpoint's ``other``, until fitting starts

    @staticmethod
    def _params(pl_module: L.LightningModule) -> list[torch.Tensor]:
        return [p for p in pl_module.parameters() if p.requires_grad]

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        params = self._params(pl_module)
        if self._pending is not None:  # resumed: the checkpoint's tensors, on the weights' devices
            saved = self._pending
            if len(saved) != len(params) or any(s.shape != p.shape for s, p in zip(saved, params)):
                raise ValueError("optim.ema: the checkpoint's averaged weights do not fit this model")
            self.other = [s.to(device=p.device, dtype=p.dtype) for s, p in zip(saved, params)]
            self._pending = None
        else:
            self.other = [p.detach().clone() for p in params]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # here, not in on_fit_start: a resumed run's global_step is restored between the two
        self._last_step = trainer.global_step

    def _swap(self, pl_module: L.LightningModule) -> None:
        with torch.no_grad():
            for p, o in zip(self._params(pl_module), self.other):
                tmp = p.detach().clone()
                p.copy_(o)  # in place: a recorded CUDA graph keeps pointing at the same storage
                o.copy_(tmp)
        self.swapped = not self.swapped

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: D102
        if self.swapped:
            self._swap(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        if trainer.global_step == self._last_step:  # no optimiser step (gradient accumulation)
            return
        self._last_step = trainer.global_step
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            torch._foreach_lerp_(self.other, [p.detach() for p in self._params(pl_module)], 1 - d)
        self.updates += 1

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if trainer.state.fn == "fit" and self.other is not None and not self.swapped:
            self._swap(pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        # without validation (limit_val_batches=0) the checkpoints are written after this hook (monitoring callbacks
        # run last): they too hold the average; the next training batch swaps the raw weights back
        if not self.swapped:
            self._swap(pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        if not self.swapped:  # the model leaves fitting with the averaged weights
            self._swap(pl_module)

    def state_dict(self) -> dict:  # noqa: D102
        other = [o.detach().cpu() for o in self.other] if self.other is not None else None
        return {"decay": self.decay, "updates": self.updates, "swapped": self.swapped, "other": other}

    def load_state_dict(self, state_dict: dict) -> None:  # noqa: D102
        self.updates, self.swapped = state_dict["updates"], state_dict["swapped"]
        if self.other is None:
            self._pending = state_dict["other"]
            return
        with torch.no_grad():  # a strategy that restores after fitting started
            for o, s in zip(self.other, state_dict["other"]):
                o.copy_(s)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps its best score when a run folder is resumed from another place.

    Lightning keeps only ``best_model_path`` (the old folder's) when the saved ``dirpath`` differs from this one, so a
    copied or moved run folder would forget the best score and keep the first checkpoint scored after resuming as the
    best, however low. Here the saved paths are moved to this ``dirpath`` first (the checkpoints travel with the run
    folder, ``<run>/checkpoints``).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # noqa: D102
        saved = state_dict.get("dirpath")
        if saved is not None and self.dirpath is not None and saved != self.dirpath:

            def moved(path: str) -> str:
                return os.path.join(self.dirpath, os.path.relpath(path, saved)) if path else path

            state_dict = {
                **state_dict,
                "dirpath": self.dirpath,
                "best_k_models": {moved(k): v for k, v in state_dict.get("best_k_models", {}).items()},
                **{
                    key: moved(state_dict[key])
                    for key in ("best_model_path", "kth_best_model_path", "last_model_path")
                    if key in state_dict
                },
            }
        super().load_state_dict(state_dict)
