"""Training callbacks."""

from __future__ import annotations

import time

import lightning as L
import torch


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
