"""``cuda_graph=true``: the recorded training step trains exactly like Lightning's automatic optimisation."""

import gc
import logging
import weakref

import pytest
import torch

from refineg.config import load_config
from refineg.data import Entity, Example, bio_labels, write_jsonl
from refineg.modules.step_graph import GraphedStep
from refineg.stages.selftrain import select_pseudo_labels
from tests.test_train import tiny_args, train_tiny_steps


def _final_weights(encoder, runs, name, **extra):
    ckpt = train_tiny_steps(encoder, runs, name, **extra)
    return ckpt["state_dict"], ckpt["global_step"]


def test_step_graph_mode_matches_automatic_optimisation(tiny_encoder, tmp_path):
    auto, auto_steps = _final_weights(tiny_encoder, tmp_path, "auto")
    graph, graph_steps = _final_weights(tiny_encoder, tmp_path, "graph", cuda_graph="true")
    init = torch.load(tmp_path / "auto" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert graph_steps == auto_steps == 4  # Lightning counts the manual optimizer steps
    crf = "tagger.head.crf.transitions"
    for key in auto:
        torch.testing.assert_close(graph[key], auto[key], rtol=1e-5, atol=1e-6, msg=key)
    assert init[crf].abs().sum() > 0


ACCELERATORS = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("accelerator", ACCELERATORS)
@pytest.mark.parametrize("extra", [{"optim.ema": 0.9}, {"model.rdrop": 1.0, "optim.ema": 0.9}], ids=["ema", "rdrop"])
def test_step_graph_mode_matches_with_ema_and_rdrop(tiny_encoder, tmp_path, extra, accelerator):
    """R-Drop's second pass is recorded with the step; the EMA's swaps keep the recorded weights' storage."""
    extra = {**extra, "trainer.accelerator": accelerator}
    auto, auto_steps = _final_weights(tiny_encoder, tmp_path, "auto", **extra)
    graph, graph_steps = _final_weights(tiny_encoder, tmp_path, "graph", cuda_graph="true", **extra)
    assert graph_steps == auto_steps == 4
    for key in auto:
        torch.testing.assert_close(graph[key].cpu(), auto[key].cpu(), rtol=1e-4, atol=1e-5, msg=key)


def _pseudo_file(path):
    """Eight pool posts as a self-training round writes them: four with soft targets, four with a masked entity."""
    labels = bio_labels(["PER", "LOC", "ORG", "OTHER"])
    words = "Anna met Bob in Rome with Acme staff".split()
    gen = torch.Generator().manual_seed(0)
    soft, partial = [], []
    for i in range(8):
        ents = [Entity(0, 1, "PER", uncertainty=0.05), Entity(2, 3, "PER", uncertainty=0.1 + 0.1 * i)]
        ents += [Entity(4, 5, "LOC", uncertainty=0.1), Entity(6, 7, "ORG", uncertainty=0.1)]
        post = Example(f"pool{i}", words[: 7 + i % 2], None, ents[: 3 + i % 2], source="predicted")
        if i % 2:
            partial.append(post)
        else:
            rows = torch.rand(len(post.tokens), len(labels), generator=gen).softmax(-1).tolist()
            soft.append((post, rows))
    kept_soft, _ = select_pseudo_labels([p for p, _ in soft], 0.2, marginals=[r for _, r in soft], labels=labels)
    kept_partial, _ = select_pseudo_labels(partial, 0.2, uncertain="mask")
    assert all("word_targets" in p.meta["pseudo"] for p in kept_soft)
    assert any(p.meta["pseudo"].get("unlabeled") for p in kept_partial)
    write_jsonl([*kept_soft, *kept_partial], path)
    return path


@pytest.mark.parametrize("accelerator", ACCELERATORS)
def test_step_graph_mode_matches_on_soft_and_partial_pseudo_labels(tiny_encoder, tmp_path, accelerator, caplog):
    """Self-training batches (``targets``: soft and partial pseudo-labels) record and replay their own graphs."""
    extra = {
        "trainer.accelerator": accelerator,
        "trainer.max_epochs": 2,
        "data.pseudo": _pseudo_file(tmp_path / "pseudo.jsonl"),
        "data.mixing": "concat",
        "data.pad_to_multiple_of": 64,  # few shapes, so that the GPU records graphs and replays them
        "model.rdrop": 1.0,
        "model.marginal_kd": 1.0,
    }
    auto, auto_steps = _final_weights(tiny_encoder, tmp_path, "auto", **extra)
    with caplog.at_level(logging.INFO, logger="refineg.modules.step_graph"):
        graph, graph_steps = _final_weights(tiny_encoder, tmp_path, "graph", cuda_graph="true", **extra)
    assert graph_steps == auto_steps == 10  # (32 gold + 8 pseudo-labelled posts) / 8 per batch x 2 epochs
    for key in auto:
        torch.testing.assert_close(graph[key].cpu(), auto[key].cpu(), rtol=1e-4, atol=1e-5, msg=key)
    if accelerator == "gpu":
        assert "'targets': (8, 64, 9)" in caplog.text  # a graph of a batch with pseudo-labels was recorded


def test_step_graphs_go_when_training_returns(tiny_encoder, tmp_path, monkeypatch):
    """Self-training trains its rounds in one process: a round's step graphs (GPU memory) must not outlive it."""
    made = []
    init = GraphedStep.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        made.append(weakref.ref(self))

    monkeypatch.setattr(GraphedStep, "__init__", recording_init)
    gc.disable()  # the module and its trainer refer to each other: only a garbage collection would free them
    try:
        train_tiny_steps(tiny_encoder, tmp_path, "freed", cuda_graph="true")
        assert len(made) == 1 and made[0]() is None
    finally:
        gc.enable()


def test_clipping_and_signatures():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 1)
    step = GraphedStep(lambda b: (lin(b["input_ids"].float()) ** 2).sum() * 100, list(lin.parameters()), clip=0.5)
    batch = {"input_ids": torch.randn(3, 4), "weight": torch.ones(3), "index": torch.arange(3)}
    loss = step(batch)
    norm = torch.cat([p.grad.flatten() for p in lin.parameters()]).norm()
    assert loss.item() > 0 and norm == pytest.approx(0.5, rel=1e-4)
    assert GraphedStep.signature(batch) == (("input_ids", (3, 4), torch.float32), ("weight", (3,), torch.float32))
    with_targets = {**batch, "targets": torch.zeros(3, 4, 9)}  # pseudo-labels: never the graph of a hard-label batch
    assert GraphedStep.signature(with_targets) != GraphedStep.signature(batch)
    assert step.eager_steps == 1 and step.replays == 0


def test_refusals(tiny_encoder, tmp_path):
    from refineg.training import train

    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        train(
            load_config(
                tiny_args(tiny_encoder, tmp_path, "acc", cuda_graph="true", **{"trainer.accumulate_grad_batches": 2})
            )
        )
    with pytest.raises(ValueError, match="gradient scaler"):
        train(
            load_config(
                tiny_args(tiny_encoder, tmp_path, "fp16", cuda_graph="true", **{"trainer.precision": "16-mixed"})
            )
        )
    with pytest.raises(ValueError, match="without DDP"):
        train(
            load_config(
                tiny_args(
                    tiny_encoder,
                    tmp_path,
                    "ddp1",
                    cuda_graph="true",
                    **{"trainer.strategy": "ddp", "trainer.devices": 1},
                )
            )
        )
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        train(
            load_config(
                tiny_args(tiny_encoder, tmp_path, "gc", cuda_graph="true", **{"model.gradient_checkpointing": "true"})
            )
        )
    with pytest.raises(ValueError, match="compile=cudagraphs records CUDA graphs of its own"):
        train(load_config(tiny_args(tiny_encoder, tmp_path, "cl", cuda_graph="true", compile="cudagraphs")))
    with pytest.raises(ValueError, match="tagging only"):
        train(
            load_config(tiny_args(tiny_encoder, tmp_path, "gr", cuda_graph="true", **{"model.groundability": "true"}))
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replayed_gradients_equal_eager_on_gpu():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Embedding(50, 16), torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 1)
    ).cuda()
    params = list(net.parameters())

    def loss_fn(b):
        return (net(b["input_ids"]).squeeze(-1) * b["weight"][:, None]).pow(2).mean()

    step = GraphedStep(loss_fn, params, clip=1.0)
    for i in range(6):
        batch = {
            "input_ids": torch.randint(0, 50, (4, 8 if i % 2 else 16), device="cuda"),
            "weight": torch.rand(4, device="cuda"),
        }
        loss = step(batch)
        got = [p.grad.clone() for p in params]
        for p in params:
            p.grad = None
        want = loss_fn(batch)
        want.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        torch.testing.assert_close(loss, want.detach())
        del want  # an autograd graph kept alive pins AccumulateGrad to this stream and would break the next capture
        for g, p in zip(got, params):
            torch.testing.assert_close(g, p.grad)
        with torch.no_grad():  # move the weights, as an optimizer would, so stale replays would be caught
            for p in params:
                p.add_(torch.randn_like(p) * 0.01)
    assert step.eager_steps == 2 and len(step.graphs) == 2 and step.replays == 4
