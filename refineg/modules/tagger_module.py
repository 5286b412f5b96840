"""LightningModule around :class:`SequenceTagger`: loss, MNER/GMNER metrics per stage, optimisation."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torchmetrics import MaxMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from refineg.data import Entity, Example, bio_labels
from refineg.errors import UsageError
from refineg.metrics import GMNERMetrics
from refineg.modules.active_rows import ActiveRowsEmbedding, activate_rows, track_decay
from refineg.modules.backbones import BACKBONES
from refineg.modules.groundability import create_groundability_head
from refineg.modules.heads import create_head
from refineg.modules.step_graph import GraphedStep
from refineg.modules.tagger import SequenceTagger

logger = logging.getLogger(__name__)
#: Fewer optimiser steps than this in a whole run draw a warning (under-training with few gold posts).
FEW_STEPS = 200
warnings.filterwarnings("ignore", message=r".*when logging on epoch level in distributed setting.*")


#: Flat ``model.*`` keys that predate ``model.backbone_kwargs`` (:class:`refineg.config.ModelConfig`). Each is
#: passed to a backbone factory whose signature names it, so ``model.image_model=...`` and old checkpoints work.
BACKBONE_KEY_ALIASES = ("image_encoder", "image_model", "image_pretrained", "freeze_image", "image_size")


def factory_parameters(factory: Any) -> set[str] | None:
    """Names of the keyword parameters ``factory`` declares, or ``None`` when it takes ``**kwargs`` (any name)."""
    params = inspect.signature(factory).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params}


def build_tagger(model: dict[str, Any], labels: list[str], pretrained: bool = True) -> SequenceTagger:
    """Builds the tagger described by a ``model`` config dict for a BIO label inventory.

    Every component comes from its registry by name with keyword arguments; nothing here knows a component name.
    The modules of ``model.imports`` are imported first, so a component in a file of its own registers itself (and a
    checkpoint, which saves this dict, finds it again).
    The backbone factory gets ``encoder``, ``pretrained``, ``gradient_checkpointing``, those of
    :data:`BACKBONE_KEY_ALIASES` its signature names, then ``model.backbone_kwargs``; the head gets
    ``hidden_size``, ``labels`` and ``model.head_kwargs``; the optional groundability head gets ``hidden_size``,
    ``num_types``, ``hidden``, ``dropout`` and ``model.groundability_kwargs``. With ``model.init_seed`` set, the
    layers that do not come pretrained draw their initial weights from that seed, whatever the global seed.
    """
    for name in model.get("imports") or []:
        importlib.import_module(name)
    if model.get("init_seed") is not None:
        # the layers are built on the CPU: seed (and afterwards restore) the CPU generator only. torch.manual_seed
        # would also reseed the accelerators' generators, which fork_rng(devices=[]) does not restore, so every run
        # of one init_seed would draw the same dropout masks on the GPU whatever its seed
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(model["init_seed"])
            return build_tagger({**model, "init_seed": None}, labels, pretrained)
    factory = BACKBONES.get(model["backbone"])
    kwargs: dict[str, Any] = {
        "encoder": model["encoder"],
        "pretrained": pretrained,
        "gradient_checkpointing": model.get("gradient_checkpointing", False),
    }
    accepted = factory_parameters(factory)
    if accepted is not None:
        kwargs.update({k: model[k] for k in BACKBONE_KEY_ALIASES if k in model and k in accepted})
    kwargs.update(model.get("backbone_kwargs") or {})
    backbone = factory(**kwargs)
    head = create_head(
        model["head"], hidden_size=backbone.hidden_size, labels=labels, **(model.get("head_kwargs") or {})
    )
    groundability = None
    if model.get("groundability", False):
        groundability = create_groundability_head(
            model.get("groundability_head", "span_mlp"),
            hidden_size=backbone.hidden_size,
            num_types=(len(labels) - 1) // 2,
            hidden=model.get("groundability_hidden", 256),
            dropout=model.get("dropout", 0.1),
            **(model.get("groundability_kwargs") or {}),
        )
    tagger = SequenceTagger(
        backbone, head, casing=model.get("casing", True), dropout=model.get("dropout", 0.1), groundability=groundability
    )
    return tagger.train()  # from_pretrained leaves encoders in eval mode


def word_kl(first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-post ``(B,)`` symmetric KL between two passes' per-word label distributions, for R-Drop (``model.rdrop``).

    The distributions are the softmax of the emissions; the two directions' KL are averaged, then the post's words.
    """
    p, q = first.float().log_softmax(-1), second.float().log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1) + (q.exp() * (q - p)).sum(-1)
    mask = mask.to(kl.dtype)
    return (kl * mask).sum(1) / mask.sum(1).clamp(min=1) / 2


def check_same_ids_on_every_rank(ids: list[int]) -> None:
    """Raises when torch.distributed runs and another rank holds a different id set (DDP needs equal parameters).

    Raises:
        UsageError: The ranks' ``(count, sum, hash)`` of ``ids`` differ.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    mine = (len(ids), sum(ids), hash(tuple(ids)))
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, mine)
    if any(other != mine for other in every):
        raise UsageError(
            f"optim.embedding_rows=active: the ranks' training data hold different subword ids {every} (each rank "
            "must encode the same training posts); use optim.embedding_rows=all"
        )


class TaggerModule(L.LightningModule):
    """Trains and evaluates a word-level BIO tagger.

    Args:
        model: ``model`` config as a plain dict (see :class:`refineg.config.ModelConfig`).
        optim: ``optim`` config as a plain dict (see :class:`refineg.config.OptimConfig`).
        types: Entity types; labels are ``bio_labels(types)``.
        pretrained: Load pretrained encoder weights (``False`` for throughput benchmarks).

    All arguments are saved as hyper-parameters, so ``TaggerModule.load_from_checkpoint(path)`` needs nothing else.
    """

    def __init__(self, model: dict[str, Any], optim: dict[str, Any], types: list[str], pretrained: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.types = list(types)
        self.labels = bio_labels(self.types)
        self.tagger = build_tagger(model, self.labels, pretrained=pretrained)
        self.val_metrics = GMNERMetrics(self.types)
        self.test_metrics = GMNERMetrics(self.types)
        self.val_f1_best = MaxMetric()
        self._val_f1_best_saved: float | None = None  # a resumed run's best dev MNER F1 before it stopped
        self.gold: dict[str, list[Example]] = {}
        # groundability head (optional): BCE on gold spans, AUROC/accuracy on dev gold spans
        self.frozen_tagger = bool(model.get("freeze_tagger", False))
        if self.frozen_tagger and self.tagger.groundability is None:
            raise UsageError("model.freeze_tagger=true leaves nothing to train without model.groundability=true")
        if self.frozen_tagger:
            for name, param in self.tagger.named_parameters():
                param.requires_grad_(name.startswith("groundability."))
            self.train(self.training)  # Lightning keeps the module's modes: fix the frozen parts to eval now
        self.step_graph: GraphedStep | None = None  # see use_step_graph
        self._step_loss: tuple[torch.Tensor, int] | None = None  # step-graph mode: (loss, posts) of the running step
        if self.tagger.groundability is not None:
            self.val_groundability_auroc = BinaryAUROC()
            self.val_groundability_acc = BinaryAccuracy()

    def train(self, mode: bool = True) -> TaggerModule:
        """Like :meth:`nn.Module.train`, but a frozen tagger (``model.freeze_tagger``) always stays in eval mode."""
        super().train(mode)
        if self.frozen_tagger:
            for name, child in self.tagger.named_children():
                if name != "groundability":
                    child.eval()
        return self

    def load_tagger_weights(self, path: str | Path) -> None:
        """Starts from the tagger of a Lightning checkpoint (``model.init_from``); a new groundability head stays.

        Raises:
            ValueError: The checkpoint's tagger does not fit this one (other than in the groundability head).
        """
        state = torch.load(str(path), map_location="cpu", weights_only=False)["state_dict"]
        tagger_state = {k[len("tagger.") :]: v for k, v in state.items() if k.startswith("tagger.")}
        missing, unexpected = self.tagger.load_state_dict(tagger_state, strict=False)
        bad = [k for k in missing + unexpected if not k.startswith("groundability.")]
        if bad:
            raise ValueError(f"{path}: tagger weights do not fit this model config: {bad[:8]}")
        logger.info("tagger weights from %s (%d groundability tensors left as initialised)", path, len(missing))

    def run(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, W, K)`` emissions and, with a groundability head, the ``(B, S, H)`` subword states (else None)."""
        if self.tagger.groundability is None:
            return self(batch), None
        states, words = self.tagger.encode(**batch)
        return self.tagger.head(self.tagger.dropout(words)), states

    def groundability_logits(
        self, batch: dict[str, torch.Tensor], states: torch.Tensor, spans: torch.Tensor, types: torch.Tensor
    ) -> torch.Tensor:
        """``(N,)`` logits of word spans ``(N, 3)`` ``[post, start, end]`` with type ids ``(N,)`` in a batch."""
        return self.tagger.groundability_logits(
            states, batch["attention_mask"], batch["word_index"], batch["word_end"], spans, types
        )

    def score_groundability(
        self, batch: dict[str, torch.Tensor], states: torch.Tensor, entities: list[list[Entity]]
    ) -> list[list[float | None]]:
        """Probability that each entity is shown, per post of the batch (None: type unknown or span cut off)."""
        kept = batch["word_mask"].sum(1).tolist()
        type_ids = {t: i for i, t in enumerate(self.types)}
        rows = [
            (b, e.start, e.end, type_ids[e.type], k)
            for b, ents in enumerate(entities)
            for k, e in enumerate(ents)
            if e.type in type_ids and e.end <= kept[b]
        ]
        out: list[list[float | None]] = [[None] * len(ents) for ents in entities]
        if not rows:
            return out
        table = torch.tensor(rows, device=states.device)
        probs = torch.sigmoid(self.groundability_logits(batch, states, table[:, :3], table[:, 3]).float()).tolist()
        for (b, *_, k), p in zip(rows, probs):
            out[b][k] = round(p, 6)
        return out

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(B, W, K)`` emissions for a collated batch."""
        return self.tagger(**batch)

    def on_fit_start(self) -> None:  # noqa: D102
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for module in self.tagger.modules():
                if isinstance(module, ActiveRowsEmbedding):  # DDP syncs parameters, not these buffers
                    dist.broadcast(module.full, src=0)
        # reset so that DDP-spawned metric states never share the first sync (see ENVIRONMENT.md)
        self.val_metrics.reset()
        self.val_f1_best.reset()
        if self._val_f1_best_saved is not None:  # resumed: the epochs scored before the stop still count
            self.val_f1_best.update(torch.tensor(self._val_f1_best_saved))
            self._val_f1_best_saved = None
        if self.tagger.groundability is not None:
            self.val_groundability_auroc.reset()
            self.val_groundability_acc.reset()

    def setup(self, stage: str) -> None:
        """With ``optim.embedding_rows=active``, swaps in the active-rows word embedding before fitting."""
        if stage != "fit" or self.hparams.optim.get("embedding_rows", "all") != "active":
            return
        dm = self.trainer.datamodule
        if not hasattr(dm, "train_token_ids"):
            raise UsageError(
                "optim.embedding_rows=active needs a datamodule with train_token_ids() (the training data's ids), "
                f"not {type(dm).__name__}: use optim.embedding_rows=all"
            )
        self.activate_embedding_rows(dm.train_token_ids())

    def activate_embedding_rows(self, active_ids: list[int]) -> ActiveRowsEmbedding | None:
        """Trains only the input word embedding's rows of ``active_ids`` (``optim.embedding_rows=active``).

        See :mod:`refineg.modules.active_rows`. Returns the new embedding, or ``None`` when the embedding is frozen.
        Call before the optimizer is built; the step graph (``cuda_graph=true``) is pointed at the new parameter.

        Raises:
            UsageError: The backbone has no Hugging Face input embedding, or DDP ranks hold different id sets.
        """
        model = next(
            (
                m
                for m in self.tagger.backbone.modules()
                if isinstance(
                    getattr(m, "get_input_embeddings", lambda: None)(), torch.nn.Embedding | ActiveRowsEmbedding
                )
            ),
            None,
        )
        if model is None:
            raise UsageError(
                f"optim.embedding_rows=active: backbone {type(self.tagger.backbone).__name__} has no Hugging Face "
                "input embedding; use optim.embedding_rows=all"
            )
        current = model.get_input_embeddings()
        if isinstance(current, ActiveRowsEmbedding):
            return current
        if not current.weight.requires_grad:
            return None
        check_same_ids_on_every_rank(active_ids)
        try:
            embedding = activate_rows(model, active_ids)
        except ValueError as err:
            raise UsageError(str(err)) from err
        if self.step_graph is not None:
            self.step_graph.params = [p for p in self.parameters() if p.requires_grad]
        # DDP would broadcast every buffer from rank 0 at each forward, the (V, H) table included; these are equal on
        # every rank by construction (the table is synced once in on_fit_start)
        prefix = next(name for name, m in self.named_modules() if m is embedding)
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
            self, [f"{prefix}.{b}" for b in ("full", "lookup", "active_ids", "decay")]
        )
        return embedding

    def _embedding_rows_digest(self) -> str | None:
        """``"<K> rows <sha1>"`` of the active embedding rows' ids, or ``None`` without ``embedding_rows=active``."""
        for module in self.tagger.modules():
            if isinstance(module, ActiveRowsEmbedding):
                ids = module.active_ids.cpu().numpy().tobytes()
                return f"{module.active_ids.numel()} rows {hashlib.sha1(ids).hexdigest()[:16]}"
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:  # noqa: D102
        digest = self._embedding_rows_digest()
        if digest is not None:  # the optimizer state holds one moment row per active id
            checkpoint["embedding_rows_active"] = digest
        best = float(self.val_f1_best.max_value)  # every rank updates it with the same (summed) score: no sync
        if best > float("-inf"):
            checkpoint["val_mner_f1_best"] = best

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keeps the saved best dev MNER F1 for a resumed fit and checks the trained embedding rows.

        Resuming is refused when the optimizer state was saved for other trained embedding rows.

        Raises:
            UsageError: ``optim.embedding_rows`` or (with ``active``) the training data's ids differ from the run that
                saved the checkpoint's optimizer state.
        """
        trainer = self._trainer
        if trainer is not None and trainer.state.fn == "fit":  # restored into the metric by on_fit_start
            self._val_f1_best_saved = checkpoint.get("val_mner_f1_best")
        if trainer is None or trainer.state.fn != "fit" or not checkpoint.get("optimizer_states"):
            return
        saved, mine = checkpoint.get("embedding_rows_active"), self._embedding_rows_digest()
        if saved != mine:
            raise UsageError(
                "cannot resume: the checkpoint's optimizer state was saved with "
                f"{'optim.embedding_rows=active (' + saved + ')' if saved else 'optim.embedding_rows=all'}, this run "
                f"has {'optim.embedding_rows=active (' + mine + ')' if mine else 'optim.embedding_rows=all'}; "
                "resume with the same setting and training data"
            )

    def use_step_graph(self, clip: float | None = None, max_graphs: int = 16) -> None:
        """Trains with the step recorded as CUDA graphs (``cuda_graph=true``; see :mod:`refineg.modules.step_graph`).

        Switches to manual optimisation: the graph does forward, loss, backward and clipping to ``clip``; the
        optimizer and schedule step eagerly. Runs eagerly on a CPU. At most ``max_graphs`` batch shapes are
        recorded (each keeps its own gradients: 4 bytes per trained parameter); others run eagerly.

        Raises:
            ValueError: With a groundability head (its targets change shape with every batch).
        """
        if self.tagger.groundability is not None:
            raise ValueError("cuda_graph=true supports tagging only; train model.groundability=true without it")
        self.automatic_optimization = False
        params = [p for p in self.parameters() if p.requires_grad]
        self.step_graph = GraphedStep(self.tagging_loss, params, clip=clip, max_graphs=max_graphs)

    def tagging_loss(self, batch: dict[str, torch.Tensor], emissions: torch.Tensor | None = None) -> torch.Tensor:
        """Post-weighted mean of the head's per-post loss over a batch (scalar); ``emissions`` reuses a forward pass.

        A batch with ``targets`` (soft or partial labels, see :class:`refineg.datamodules.encoding.PostCollator`)
        is scored with the head's :meth:`~refineg.modules.heads.TaggingHead.target_loss`.
        """
        rdrop = float(self.hparams.model.get("rdrop", 0.0)) if emissions is None and self.training else 0.0
        if emissions is None:
            emissions = self(batch)
        per_post = self._head_loss(batch, emissions)
        if rdrop > 0:  # R-Drop: a second pass with other dropout masks, and their agreement
            second = self(batch)
            per_post = (per_post + self._head_loss(batch, second)) / 2 + rdrop * word_kl(
                emissions, second, batch["word_mask"]
            )
        weight = batch["weight"].to(per_post.dtype)
        return (per_post * weight).sum() / weight.sum().clamp(min=1e-8)

    def _head_loss(self, batch: dict[str, torch.Tensor], emissions: torch.Tensor) -> torch.Tensor:
        """Per-post loss ``(B,)`` of the head against the batch's labels or (soft/partial) ``targets``."""
        if "targets" in batch:  # soft or partial (pseudo-)labels in the batch
            head, targets, mask = self.tagger.head, batch["targets"], batch["word_mask"]
            loss = head.target_loss(emissions, targets, mask)
            kd = float(self.hparams.model.get("marginal_kd", 0.0))
            return loss + kd * head.soft_cross_entropy(emissions, targets, mask) if kd > 0 else loss
        return self.tagger.head.loss(emissions, batch["labels"], batch["word_mask"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:  # noqa: D102
        if self.tagger.groundability is not None:
            return self._groundability_training_step(batch)
        if self.step_graph is not None:
            loss = self.step_graph(batch)
            self.optimizers().step()
            self.lr_schedulers().step()
            self._step_loss = (loss, len(batch["weight"]))  # logged in on_train_batch_end (see _logs_this_step)
            return loss
        loss = self.tagging_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["weight"]))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Step-graph mode: logs the step's loss where :meth:`_logs_this_step` says so.

        Decided here rather than in :meth:`training_step` because the callbacks' ``on_train_batch_end`` (a timer, a
        stopping rule) may set ``trainer.should_stop``, which makes Lightning write this step's logs too.
        """
        step_loss, self._step_loss = self._step_loss, None
        if step_loss is not None and self._logs_this_step(batch_idx):
            loss, size = step_loss
            # a CPU copy: Lightning turns progress-bar values into numbers after every batch, and a GPU value
            # (even a stale one) would make that a host sync per step
            self.log("train/loss", loss.cpu(), prog_bar=True, batch_size=size)

    def _logs_this_step(self, batch_idx: int) -> bool:
        """Whether the step-graph mode logs this step's loss: where Lightning writes logs, and each epoch's first step.

        The loggers only write ``train/loss`` at those steps (``trainer.log_every_n_steps``, or a stop), so what they
        record is the same as with a loss logged at every step; the progress bar shows the latest logged loss.
        """
        connector = getattr(self.trainer, "_logger_connector", None)
        should = getattr(connector, "should_update_logs", True)  # Lightning's own decision (private; else log)
        return batch_idx == 0 or bool(should)

    def _groundability_training_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tagging loss (unless frozen) + ``groundability_weight`` x BCE over the batch's gold entity spans."""
        with torch.set_grad_enabled(not self.frozen_tagger):
            states, words = self.tagger.encode(**batch)
        weight = batch["weight"]
        loss = states.new_zeros(())
        if not self.frozen_tagger:
            loss = self.tagging_loss(batch, self.tagger.head(self.tagger.dropout(words)))
            self.log("train/tagging_loss", loss, batch_size=len(weight))
        spans = batch["entity_spans"]
        if len(spans):
            logits = self.groundability_logits(batch, states, spans, batch["entity_types"]).float()
            per_entity = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, batch["entity_grounded"].float(), reduction="none"
            )
            w = weight[spans[:, 0]].float()
            bce = (per_entity * w).sum() / w.sum().clamp(min=1e-8)
            self.log("train/groundability_loss", bce, batch_size=len(weight))
            loss = loss + self.hparams.model.get("groundability_weight", 1.0) * bce
        else:  # no entity in the batch: keep the head in the graph (frozen backward, DDP's unused parameters)
            loss = loss + 0.0 * sum(p.sum() for p in self.tagger.groundability.parameters())
        self.log("train/loss", loss, prog_bar=True, batch_size=len(weight))
        return loss

    def decode(
        self,
        batch: dict[str, torch.Tensor],
        examples: list[Example],
        outputs: tuple[torch.Tensor, torch.Tensor | None] | None = None,
    ) -> list[Example]:
        """Predicted posts (entities with confidence scores) for a batch of the given examples.

        With a groundability head each entity also gets ``groundable``. ``outputs`` reuses a :meth:`run` result.
        """
        emissions, states = outputs if outputs is not None else self.run(batch)
        spans = self.tagger.head.decode_spans(emissions, batch["word_mask"])
        out = []
        for ex, post in zip(examples, spans):
            n = len(ex.tokens)
            ents = [Entity(s, e, t, score=round(float(c), 6)) for s, e, t, c in post if e <= n]
            out.append(Example(ex.id, ex.tokens, ex.image, ents, source="predicted", image_size=ex.image_size))
        if states is not None:
            for ex, probs in zip(out, self.score_groundability(batch, states, [ex.entities for ex in out])):
                for ent, p in zip(ex.entities, probs):
                    ent.groundable = p
        return out

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str, metric: GMNERMetrics) -> None:
        golds = [self.gold[split][i] for i in batch["index"].tolist()]
        outputs = self.run(batch)
        metric.update(self.decode(batch, golds, outputs), golds)
        if outputs[1] is not None and split == "dev" and len(batch["entity_spans"]):
            logits = self.groundability_logits(batch, outputs[1], batch["entity_spans"], batch["entity_types"])
            target = batch["entity_grounded"].long()
            self.val_groundability_auroc.update(logits.float().sigmoid(), target)
            self.val_groundability_acc.update(logits.float().sigmoid(), target)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "dev", self.val_metrics)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:  # noqa: D102
        self._eval_step(batch, "test", self.test_metrics)

    def _log_scores(self, stage: str, metric: GMNERMetrics) -> dict[str, torch.Tensor]:
        scores = metric.compute()
        metric.reset()
        for key, value in scores.items():
            if key.startswith("mner") or key.startswith("gmner_f1"):
                # already summed over ranks by the metric (every rank holds the global value): no sync needed
                self.log(f"{stage}/{key}", float(value), sync_dist=False)
        return scores

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        scores = self._log_scores("val", self.val_metrics)
        if not self.trainer.sanity_checking:  # the sanity check's two dev batches are no epoch's score
            self.val_f1_best(scores["mner_f1"].float())
            self.log("val/mner_f1_best", self.val_f1_best.compute(), prog_bar=True)
        if self.tagger.groundability is not None and self.val_groundability_auroc.update_called:
            self.log("val/groundability_auroc", self.val_groundability_auroc.compute(), prog_bar=True)
            self.log("val/groundability_acc", self.val_groundability_acc.compute())
            self.val_groundability_auroc.reset()
            self.val_groundability_acc.reset()

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_scores("test", self.test_metrics)

    def configure_optimizers(self):  # noqa: D102
        opt = self.hparams.optim
        groups: dict[str, list[torch.nn.Parameter]] = {"encoder": [], "crf": [], "head": []}
        for name, param in self.tagger.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("head.crf."):
                groups["crf"].append(param)
            elif name.startswith("backbone.") and ".fusion." not in name:
                groups["encoder"].append(param)
            else:
                groups["head"].append(param)
        lrs = {"encoder": opt["encoder_lr"], "crf": opt["crf_lr"], "head": opt["head_lr"]}
        param_groups = [
            {"params": ps, "lr": lrs[k], "name": k, "weight_decay": 0.0 if k == "crf" else opt["weight_decay"]}
            for k, ps in groups.items()
            if ps
        ]
        fused = opt.get("fused")
        if fused is None:  # fused AdamW (CUDA and CPU kernels), except with fp16's gradient scaler
            fused = self.device.type in ("cuda", "cpu") and not str(self.trainer.precision).startswith("16")
        optimizer = torch.optim.AdamW(param_groups, fused=bool(fused))
        total = self._total_steps()
        if total < FEW_STEPS and self.trainer.is_global_zero:
            logger.warning(
                "this run trains %d optimiser steps in all (trainer.max_epochs=%s): a tagger trained so few steps is "
                "usually far from converged; raise trainer.max_epochs (and trainer.check_val_every_n_epoch), or lower "
                "data.batch_size. At 100 gold posts, 1,309 steps gave 61.9 dev MNER F1 against 50.7 after 42 "
                "(docs/results.md)",
                total,
                self.trainer.max_epochs,
            )
        warmup = int(opt["warmup_ratio"] * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / max(1, warmup)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        for module in self.tagger.modules():
            if isinstance(module, ActiveRowsEmbedding):
                track_decay(optimizer, module)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clips by norm ourselves for fused AdamW, which Lightning's mixed-precision plugin refuses to clip.

        Fused AdamW is only chosen without a gradient scaler (fp32 or bf16), so the gradients are unscaled here.
        """
        if gradient_clip_val and optimizer.defaults.get("fused"):
            torch.nn.utils.clip_grad_norm_(self.parameters(), gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def _total_steps(self) -> int:
        trainer = self.trainer
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "steps_per_epoch") and trainer.max_epochs and trainer.max_epochs > 0:
            batches = sum(dm.steps_per_epoch(e) for e in range(trainer.max_epochs))
            return max(1, batches // max(1, trainer.accumulate_grad_batches))
        return max(1, int(trainer.estimated_stepping_batches))
