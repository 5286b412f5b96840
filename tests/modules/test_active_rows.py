"""``optim.embedding_rows=active``: training only the word-embedding rows of training ids equals AdamW on the table."""

import csv

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoTokenizer, BertModel

from refineg.config import as_dictconfig, load_config
from refineg.data import bio_labels
from refineg.datamodules.encoding import PostCollator, encode_posts
from refineg.datamodules.gmner import read_split
from refineg.modules.active_rows import ActiveRowsEmbedding, activate_rows, track_decay
from refineg.modules.tagger_module import TaggerModule
from tests.test_train import tiny_args, train_tiny_steps

EMBEDDING = "tagger.backbone.model.embeddings.word_embeddings.weight"


def _run(encoder, runs, name, **extra):
    """Trains the tiny BERT for 4 steps (weight decay large enough to move unseen rows); returns the last checkpoint."""
    steps = {
        "trainer.log_every_n_steps": 2,
        "optim.encoder_lr": 0.01,
        "optim.weight_decay": 0.5,
        "optim.warmup_ratio": 0.5,
    }
    return train_tiny_steps(encoder, runs, name, **{**steps, **extra})


@pytest.fixture(scope="module")
def runs(tiny_encoder, tmp_path_factory):
    """The same 4 steps with the full table and with active rows, each with and without the step graph."""
    folder = tmp_path_factory.mktemp("active_rows")
    out = {}
    for graph in ("false", "true"):
        for rows in ("all", "active"):
            name = f"{rows}-graph{graph}"
            out[name] = _run(tiny_encoder, folder, name, cuda_graph=graph, **{"optim.embedding_rows": rows})
    return folder, out


@pytest.mark.parametrize("graph", ["false", "true"])
def test_active_rows_train_like_the_full_table(runs, tiny_encoder, graph):
    _, ckpts = runs
    full, active = ckpts[f"all-graph{graph}"], ckpts[f"active-graph{graph}"]
    assert full["global_step"] == active["global_step"] == 4
    assert set(full["state_dict"]) == set(active["state_dict"])  # the merged table under the ordinary key
    for key, value in full["state_dict"].items():
        torch.testing.assert_close(active["state_dict"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    # the rows of ids training never saw were only decayed, and they did move
    init = BertModel.from_pretrained(tiny_encoder).embeddings.word_embeddings.weight.detach()
    trained = active["state_dict"][EMBEDDING]
    changed = (trained - init).abs().amax(1)
    unseen = (trained - init * (trained[:, :1] / init[:, :1])).abs().amax(1) < 1e-6  # a row that is init x a factor
    assert unseen.sum() > 20000 and changed[unseen].min() > 0
    factor = trained[unseen] / init[unseen]
    torch.testing.assert_close(factor, factor[:1].expand_as(factor))  # one decay factor shared by every unseen row
    assert factor[0, 0] < 0.999


def test_checkpoint_of_active_rows_loads_into_a_plain_model(runs):
    folder, ckpts = runs
    plain = TaggerModule.load_from_checkpoint(folder / "active-graphfalse" / "checkpoints" / "last.ckpt")
    assert type(plain.tagger.backbone.model.get_input_embeddings()) is torch.nn.Embedding
    torch.testing.assert_close(
        plain.tagger.backbone.model.get_input_embeddings().weight.detach(),
        ckpts["all-graphfalse"]["state_dict"][EMBEDDING],
        rtol=1e-5,
        atol=1e-6,
    )


def test_step_graph_logs_the_loss_at_the_logging_steps(runs):
    """``cuda_graph=true`` logs the loss only where Lightning writes logs: same steps, same values as every step."""
    folder, _ = runs

    def losses(name):
        with open(folder / name / "csv" / "version_0" / "metrics.csv") as f:
            return {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}

    auto, graph = losses("all-graphfalse"), losses("all-graphtrue")
    assert sorted(auto) == sorted(graph) == [1, 3]  # log_every_n_steps=2: the 2nd and 4th step
    for step, value in auto.items():
        assert value > 0 and graph[step] == pytest.approx(value, rel=1e-5)
    assert auto[1] != pytest.approx(auto[3], rel=1e-3)  # different steps log different losses


def _batch(encoder, n=24):
    cfg = load_config([])
    tok = AutoTokenizer.from_pretrained(encoder)
    labels = {t: i for i, t in enumerate(bio_labels(list(cfg.data.types)))}
    posts = encode_posts(read_split(cfg.data, "dev")[:n], tok, labels, 64)
    return PostCollator(tok.pad_token_id)(posts), list(cfg.data.types)


def test_round_trip_and_unseen_ids_at_eval(tiny_encoder):
    batch, types = _batch(tiny_encoder)
    cfg = as_dictconfig(load_config([f"model.encoder={tiny_encoder}", "optim.embedding_rows=active"]))
    model, optim = OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim)
    torch.manual_seed(0)
    module = TaggerModule(model, optim, types).eval()
    ids = batch["input_ids"].unique()
    seen = ids[::2].tolist()  # half of the batch's ids are "training" ids, the other half unseen
    emb = module.activate_embedding_rows(seen)
    assert isinstance(emb, ActiveRowsEmbedding) and emb.rows.shape[0] == len([i for i in seen if i != 0])
    prefix = "tagger.backbone.model.embeddings.word_embeddings."
    assert module._ddp_params_and_buffers_to_ignore == [prefix + b for b in ("full", "lookup", "active_ids", "decay")]
    with torch.no_grad():  # as if trained: moved rows, decayed the rest
        emb.rows.add_(torch.randn_like(emb.rows))
        emb.decay_step(0.1, 0.5)
        emb.decay_step(0.1, 0.5)
    table = emb.merged_weight()
    unseen = ids[1::2]
    torch.testing.assert_close(table[unseen], emb.full[unseen] * 0.95**2)
    rows = emb(batch["input_ids"])
    torch.testing.assert_close(rows, table[batch["input_ids"]])
    with torch.no_grad():
        want = module(batch)
    # into a model without the option (strict), then back into an active one
    plain = TaggerModule(model, {**optim, "embedding_rows": "all"}, types).eval()
    plain.load_state_dict(module.state_dict())
    other = TaggerModule(model, optim, types).eval()
    other.activate_embedding_rows(seen)
    other.load_state_dict(plain.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(plain(batch), want)
        torch.testing.assert_close(other(batch), want)
    assert other.tagger.backbone.model.get_input_embeddings().decay == 1.0


@pytest.mark.parametrize("fused", [False, True])
def test_equals_adamw_on_the_full_table(fused):
    """Direct check against ``torch.optim.AdamW``: warm-up then decay schedule, rows seen only in some steps."""
    torch.manual_seed(0)
    vocab, dim, steps = 50, 8, 12
    full = torch.nn.Embedding(vocab, dim, padding_idx=0)
    emb = ActiveRowsEmbedding.replace(full, range(0, 30))  # ids 30.. never occur; 0 is padding
    assert emb.rows.shape[0] == 29 and emb.lookup[0] == -1
    head = torch.nn.Linear(dim, 1)
    head2 = torch.nn.Linear(dim, 1)
    head2.load_state_dict(head.state_dict())

    def optimizer(params, head_params):
        opt = torch.optim.AdamW(
            [{"params": params, "lr": 0.05, "weight_decay": 0.3}, {"params": head_params, "lr": 0.01}], fused=fused
        )
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4) * (1 - s / (steps + 1)))

    opt_a, sched_a = optimizer([full.weight], list(head.parameters()))
    opt_b, sched_b = optimizer([emb.rows], list(head2.parameters()))
    track_decay(opt_b, emb)
    for step in range(steps):
        ids = torch.randint(0, 10 if step % 2 else 30, (4, 6))  # odd steps touch only ids < 10
        for module, lin, opt, sched in ((full, head, opt_a, sched_a), (emb, head2, opt_b, sched_b)):
            opt.zero_grad()
            (lin(module(ids)).squeeze(-1) ** 2).mean().backward()
            opt.step()
            sched.step()
        torch.testing.assert_close(emb(ids), full(ids), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(emb.merged_weight(), full.weight.detach(), rtol=1e-5, atol=1e-6)
    assert (emb.merged_weight()[30:] - emb.full[30:]).abs().amax() > 1e-3  # unseen rows decayed


def test_refuses_other_embeddings():
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(10, 4)
            self.out = torch.nn.Linear(4, 10)

        def get_input_embeddings(self):
            return self.emb

    with pytest.raises(ValueError, match="needs an nn.Embedding"):
        activate_rows(Model(), [1, 2])
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        ActiveRowsEmbedding(torch.zeros(10, 4), [3, 10])
    with pytest.raises(ValueError, match="optim.embedding_rows='some' is not one of all, active"):
        load_config(["optim.embedding_rows=some"])


class RecordingTagger(TaggerModule):
    """A :class:`TaggerModule` that records its ``train/loss`` logs (step, value, device) and its training losses."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.logged: list[tuple[int, float, str]] = []
        self.losses: list[float] = []

    def log(self, name, value, *args, **kwargs):  # noqa: D102
        if name == "train/loss":
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
            self.logged.append((step, float(value), value.device.type))
        super().log(name, value, *args, **kwargs)

    def training_step(self, batch, batch_idx):  # noqa: D102
        loss = super().training_step(batch, batch_idx)
        self.losses.append(float(loss))
        return loss


def _recording_step_graph(encoder, runs, name):
    """A step-graph :class:`RecordingTagger` and its datamodule: 48 posts in batches of 8, no dev posts."""
    from refineg.datamodules.gmner import GMNERDataModule

    cfg = as_dictconfig(load_config(tiny_args(encoder, runs, name, **{"data.gold_limit": 48})))
    cfg.data.batch_size = 8
    module = RecordingTagger(OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim), list(cfg.data.types))
    module.use_step_graph(clip=1.0)
    dm = GMNERDataModule(cfg.data, cfg.model.encoder)
    dm.setup()
    dm.encoded["dev"] = dm.encoded["dev"][:0]
    return module, dm


def test_step_graph_logs_a_cpu_loss_only_at_logging_steps(tiny_encoder, tmp_path):
    """Between logging steps nothing is logged (no per-step host sync on a GPU); a logged value is that step's loss."""
    import lightning as L

    module, dm = _recording_step_graph(tiny_encoder, tmp_path, "rec")
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    assert len(module.losses) == 6
    # the first step (the progress bar's first value) and every 4th step (what the loggers write)
    assert [step for step, _, _ in module.logged] == [0, 3]
    for step, value, device in module.logged:
        assert device == "cpu" and value == module.losses[step]
    assert trainer.progress_bar_metrics["train/loss"] == pytest.approx(module.losses[3])


def test_step_graph_logs_the_loss_of_a_step_a_callback_stops_at(tiny_encoder, tmp_path):
    """A callback stopping the run in ``on_train_batch_end`` (a timer) makes Lightning write that step's logs."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    class StopAtThirdStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            trainer.should_stop = trainer.should_stop or batch_idx == 2

    module, dm = _recording_step_graph(tiny_encoder, tmp_path, "stop")
    logger = CSVLogger(tmp_path / "csv", name="", version=0)
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=6,
        log_every_n_steps=2,
        limit_val_batches=0,
        logger=logger,
        callbacks=[StopAtThirdStep()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(module, datamodule=dm)
    logger.save()
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        written = {int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")}
    assert len(module.losses) == 3 and sorted(written) == [1, 2]  # the 2nd step (log_every_n_steps) and the stop
    for step, value in written.items():
        assert value == pytest.approx(module.losses[step], rel=1e-6)
    assert module.losses[1] != pytest.approx(module.losses[2], rel=1e-3)


@pytest.mark.slow
def test_compiled_tagger_with_active_rows_matches_eager(tiny_encoder):
    """``compile=tagger`` traces the active-rows embedding too: same emissions and gradients as eager."""
    from refineg.modules.compile import compile_tagger

    batch, types = _batch(tiny_encoder, n=8)
    cfg = as_dictconfig(load_config([f"model.encoder={tiny_encoder}", "model.dropout=0.0"]))
    model, optim = OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.optim)
    taggers = []
    for _ in range(2):
        torch.manual_seed(0)
        module = TaggerModule(model, optim, types)
        emb = module.activate_embedding_rows(batch["input_ids"].unique()[::2].tolist())
        emb.decay_step(0.1, 0.5)
        taggers.append(module.tagger)
    compile_tagger(taggers[1], "tagger")
    losses = []
    for tagger in taggers:
        emissions = tagger(**batch)
        loss = tagger.head.loss(emissions, batch["labels"], batch["word_mask"]).sum()
        loss.backward()
        losses.append((emissions, loss))
    torch.testing.assert_close(losses[1][0], losses[0][0], atol=1e-4, rtol=1e-4)
    rows = [t.backbone.model.get_input_embeddings().rows.grad for t in taggers]
    assert rows[0].abs().sum() > 0
    torch.testing.assert_close(rows[1], rows[0], atol=1e-4, rtol=1e-3)


def _rank_checks_ids(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from refineg.modules.tagger_module import check_same_ids_on_every_rank

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        check_same_ids_on_every_rank([1, 2, 3])  # equal on both ranks: passes
        try:
            check_same_ids_on_every_rank([1, 2, 3 + rank])
            results[rank] = "passed"
        except ValueError as err:
            results[rank] = str(err)
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_ids_are_refused():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_rank_checks_ids, args=(port, results), nprocs=2)
    assert set(results) == {0, 1}
    for message in results.values():
        assert "the ranks' training data hold different subword ids" in message


def test_resuming_active_rows_continues_like_the_full_table(tiny_encoder, tmp_path):
    """Resuming (``ckpt_path=last``) restores the merged table and the compact optimizer state; a switch is refused."""
    import shutil

    from refineg.errors import UsageError

    final = {}
    for rows in ("all", "active"):
        _run(tiny_encoder, tmp_path, rows, **{"optim.embedding_rows": rows})
        ckpt = _run(
            tiny_encoder,
            tmp_path,
            rows,
            ckpt_path="last",
            **{"optim.embedding_rows": rows, "trainer.max_epochs": 2},
        )
        assert ckpt["global_step"] == 8 and ("embedding_rows_active" in ckpt) == (rows == "active")
        final[rows] = ckpt["state_dict"]
    for key, value in final["all"].items():
        torch.testing.assert_close(final["active"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    shutil.copytree(tmp_path / "all", tmp_path / "switch")
    with pytest.raises(UsageError, match="saved with optim.embedding_rows=all, this run has optim.embedding_rows=act"):
        _run(tiny_encoder, tmp_path, "switch", ckpt_path="last", **{"optim.embedding_rows": "active"})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_replayed_step_reads_the_live_rows_and_decay_on_gpu():
    """A recorded step (``cuda_graph=true``) sees the decay and rows changed outside the graph, like eager."""
    from refineg.modules.step_graph import GraphedStep

    torch.manual_seed(0)
    emb = ActiveRowsEmbedding.replace(torch.nn.Embedding(50, 16, padding_idx=0), range(25)).cuda()
    head = torch.nn.Linear(16, 1).cuda()
    params = [emb.rows, *head.parameters()]

    def loss_fn(b):
        return (head(emb(b["input_ids"])).squeeze(-1) * b["weight"][:, None]).pow(2).mean()

    step = GraphedStep(loss_fn, params, clip=1.0)
    for _ in range(6):
        batch = {"input_ids": torch.randint(0, 50, (4, 8), device="cuda"), "weight": torch.rand(4, device="cuda")}
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
        with torch.no_grad():  # what the optimizer and its step hook do between replays
            emb.decay_step(0.1, 0.5)
            for p in params:
                p.add_(torch.randn_like(p) * 0.01)
    assert step.eager_steps == 1 and step.replays == 5 and float(emb.decay) == pytest.approx(0.95**6)
