"""Training callbacks."""

from __future__ import annotations

import time

import lightning as L
import torch


class TrainThroughput(L.Callback):
    """Measures training posts/s and subword tokens/s (all ranks together), skipping the run's first ``warmup`` steps.

    Time is taken between consecutive training-batch ends of the same epoch (data loading included, validation and
    each epoch's first batch excluded) and logged as ``train/posts_per_s`` and ``train/tokens_per_s``;
    :attr:`summary` holds the totals.

    Args:
        warmup: Steps of the run to skip (compilation, allocator warm-up).
    """

    def __init__(self, warmup: int = 5) -> None:
        self.warmup = warmup
        self.seconds = 0.0
        self.posts = 0
        self.tokens = 0
        self._last: float | None = None
        self._seen = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:  # noqa: D102
        self._last = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: D102
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        now = time.perf_counter()
        self._seen += 1
        if self._last is not None and self._seen > self.warmup:
            self.seconds += now - self._last
            self.posts += int(batch["input_ids"].shape[0]) * trainer.world_size
            self.tokens += int(batch["attention_mask"].sum()) * trainer.world_size
            if self.seconds > 0:
                pl_module.log_dict({"train/posts_per_s": self.posts / self.seconds,
                                    "train/tokens_per_s": self.tokens / self.seconds}, rank_zero_only=True)
        self._last = now

    @property
    def summary(self) -> dict[str, float]:
        """``posts_per_s``, ``tokens_per_s`` and the measured ``seconds`` / ``posts``."""
        if self.seconds == 0:
            return {}
        return {"posts_per_s": self.posts / self.seconds, "tokens_per_s": self.tokens / self.seconds,
                "seconds": self.seconds, "posts": self.posts}
