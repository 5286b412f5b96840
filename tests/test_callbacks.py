"""TrainThroughput's timing windows exclude validation (epoch end and mid-epoch)."""

import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from refineg.callbacks import TrainThroughput

VAL_SLEEP = 0.4


class _Posts(Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.ones(4, dtype=torch.long), "attention_mask": torch.ones(4, dtype=torch.long)}


class _SlowValidation(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch["input_ids"].float()).sum()

    def validation_step(self, batch, batch_idx):
        time.sleep(VAL_SLEEP)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(_Posts(40), batch_size=4)

    def val_dataloader(self):
        return DataLoader(_Posts(4), batch_size=4)


def _packed(posts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """All posts of a batch in one row, as ``data.pack_length`` batches them."""
    return {
        "input_ids": torch.cat([p["input_ids"] for p in posts])[None],
        "attention_mask": torch.cat([p["attention_mask"] for p in posts])[None],
        "weight": torch.ones(len(posts)),
    }


class _PackedRows(_SlowValidation):
    def training_step(self, batch, batch_idx):
        return self.lin(batch["input_ids"].float().reshape(-1, 4)).sum()

    def train_dataloader(self):
        return DataLoader(_Posts(40), batch_size=4, collate_fn=_packed)


def _measure(module: L.LightningModule | None = None, **trainer_kwargs) -> dict[str, float]:
    meter = TrainThroughput(warmup=2)
    trainer = L.Trainer(
        max_epochs=2,
        callbacks=[meter],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=1,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(module or _SlowValidation())
    return meter.summary


def test_epoch_end_validation_is_not_timed():
    summary = _measure()
    # windows: epoch 0 batches 3..10, epoch 1 batches 2..10 -> 17 batches of 4 posts
    assert summary["posts"] == 68
    assert summary["seconds"] < VAL_SLEEP  # two validations (0.8 s) would be inside an unclosed window


def test_packed_rows_count_posts_not_rows():
    summary = _measure(_PackedRows())
    assert summary["posts"] == 68  # 17 batches, one row of 4 posts each
    assert summary["tokens_per_s"] * summary["seconds"] == pytest.approx(68 * 4)


def test_mid_epoch_validation_is_not_timed():
    summary = _measure(val_check_interval=5)
    # validation after batch 5 closes the window; it reopens at batch 6's end (batch 6 is not counted)
    assert summary["posts"] == 4 * (3 + 4 + 4 + 4)  # epoch 0: 3..5, 7..10; epoch 1: 2..5, 7..10
    assert summary["seconds"] < VAL_SLEEP
