"""WeightEMA (``optim.ema``): the average's values, what validation and checkpoints see, and resuming."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from refineg.callbacks import WeightEMA
from refineg.config import load_config
from refineg.modules.tagger_module import TaggerModule

DECAY = 0.5


class _Toy(L.LightningModule):
    """A linear model whose validation records the weights it is scored with."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)
        self.seen_in_validation: list[torch.Tensor] = []
        self.raw_after_step: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        return ((self.lin(x).squeeze(-1) - y) ** 2).mean()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.raw_after_step.append(self.lin.weight.detach().clone())

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            self.seen_in_validation.append(self.lin.weight.detach().clone())
        self.log("val_epoch", float(self.current_epoch))  # the last epoch is the best checkpoint

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(24, 3, generator=g)
    return DataLoader(TensorDataset(x, x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3), batch_size=6)


def _fit(tmp_path, epochs: int, ema: bool = True, ckpt_path=None, model=None, **trainer_kwargs):
    model = model or _Toy()
    callbacks = [
        ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val_epoch", mode="max", save_weights_only=True),
        ModelCheckpoint(dirpath=tmp_path, filename="last", monitor=None),
    ]
    callbacks += [WeightEMA(DECAY)] if ema else []
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        **trainer_kwargs,
    )
    trainer.fit(model, _loader(), _loader(), ckpt_path=ckpt_path)
    return model, callbacks[-1]


def _expected_average(init: torch.Tensor, raw: list[torch.Tensor]) -> list[torch.Tensor]:
    avg, out = init.clone(), []
    for n, w in enumerate(raw):
        d = min(DECAY, (1 + n) / (10 + n))
        avg = d * avg + (1 - d) * w
        out.append(avg.clone())
    return out


def test_validation_and_checkpoints_use_the_average_and_training_the_raw_weights(tmp_path):
    init = _Toy().lin.weight.detach().clone()
    plain, _ = _fit(tmp_path / "plain", 2, ema=False)
    model, _ = _fit(tmp_path / "ema", 2)
    # training itself is unchanged: the raw weights follow the run without averaging step by step
    assert len(model.raw_after_step) == 8
    for a, b in zip(model.raw_after_step, plain.raw_after_step):
        torch.testing.assert_close(a, b)
    expected = _expected_average(init, model.raw_after_step)
    # validation at each epoch end scores the average after that epoch's 4 steps
    torch.testing.assert_close(model.seen_in_validation[0], expected[3])
    torch.testing.assert_close(model.seen_in_validation[1], expected[7])
    assert not torch.allclose(expected[7], model.raw_after_step[-1])
    # the weights-only best checkpoint and the model after fitting hold the average
    best = torch.load(tmp_path / "ema" / "best.ckpt", weights_only=False)
    torch.testing.assert_close(best["state_dict"]["lin.weight"], expected[7])
    torch.testing.assert_close(model.lin.weight.detach(), expected[7])


def test_resuming_from_last_continues_the_average_and_the_raw_weights(tmp_path):
    straight, straight_cb = _fit(tmp_path / "straight", 2)
    _fit(tmp_path / "split", 1)
    resumed, resumed_cb = _fit(tmp_path / "split", 2, ckpt_path=str(tmp_path / "split" / "last.ckpt"))
    torch.testing.assert_close(resumed.lin.weight.detach(), straight.lin.weight.detach())
    for a, b in zip(resumed_cb.other, straight_cb.other):  # the raw weights, after the final swap
        torch.testing.assert_close(a, b)
    assert resumed_cb.updates == straight_cb.updates == 8


def test_without_validation_the_checkpoints_still_hold_the_average(tmp_path):
    """``limit_val_batches=0``: ``last.ckpt`` is written at the training epoch's end, after the final step.

    ``train()`` then tests and predicts with ``last.ckpt`` (there is no best one), so it must hold the average.
    """
    init = _Toy().lin.weight.detach().clone()
    model, callback = _fit(tmp_path, 2, limit_val_batches=0)
    assert model.seen_in_validation == []
    expected = _expected_average(init, model.raw_after_step)
    last = torch.load(tmp_path / "last.ckpt", weights_only=False)
    torch.testing.assert_close(last["state_dict"]["lin.weight"], expected[7])
    torch.testing.assert_close(model.lin.weight.detach(), expected[7])
    torch.testing.assert_close(callback.other[0], model.raw_after_step[-1])


def test_resuming_with_gradient_accumulation_adds_no_update(tmp_path):
    """The first batch after resuming (no optimiser step yet with ``accumulate_grad_batches=2``) leaves the average."""
    straight, straight_cb = _fit(tmp_path / "straight", 2, accumulate_grad_batches=2)
    _fit(tmp_path / "split", 1, accumulate_grad_batches=2)
    last = str(tmp_path / "split" / "last.ckpt")
    resumed, resumed_cb = _fit(tmp_path / "split", 2, ckpt_path=last, accumulate_grad_batches=2)
    assert resumed_cb.updates == straight_cb.updates == 4  # 2 epochs x 4 batches / 2
    torch.testing.assert_close(resumed.lin.weight.detach(), straight.lin.weight.detach())


def test_ema_config_is_checked():
    with pytest.raises(ValueError, match=r"optim.ema=1.0 must be in \[0, 1\)"):
        load_config(["optim.ema=1"])
    with pytest.raises(ValueError, match="EMA decay must be in"):
        WeightEMA(0.0)


def test_train_with_ema_writes_the_average_to_the_best_checkpoint(tiny_encoder, tmp_path):
    from refineg.training import train
    from tests.test_train import tiny_args

    extra = {"optim.ema": 0.9, "data.test": "null", "trainer.max_epochs": 2}
    result = train(load_config(tiny_args(tiny_encoder, tmp_path, "ema", **extra)))
    last = torch.load(tmp_path / "ema" / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in last["callbacks"].items() if k.startswith("WeightEMA"))
    assert state["swapped"] and state["updates"] == 8  # 2 epochs x 4 batches; the average is in the model
    module = TaggerModule.load_from_checkpoint(tmp_path / "ema" / "checkpoints" / "last.ckpt")
    trained = [k for k, p in module.named_parameters() if p.requires_grad]
    assert len(trained) == len(state["other"])
    # the raw weights (kept by the callback) differ from the averaged ones the checkpoint holds
    assert sum(not torch.equal(a, last["state_dict"][k]) for a, k in zip(state["other"], trained)) > len(trained) / 2
    best = torch.load(result["best_checkpoint"], weights_only=False)
    assert "callbacks" not in best and best["state_dict"].keys() == last["state_dict"].keys()
