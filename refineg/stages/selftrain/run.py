"""Self-training rounds: label the pool with the teacher, keep the confident pseudo-labels, retrain, stop on dev.

Run folder (``<runs_dir>/<run_name>/``)::

    selftrain.json          the config and one record per finished round (rewritten after each round)
    pool_gold.jsonl         the hidden labels of a pool from the training split (oracle simulations only)
    llm_cache.sqlite        with delegation: the answers of every round (a check asked before is never paid again)
    llm_spend.jsonl         with delegation: the spend ledger, so refine.llm budgets cover the whole run
    round0/                 train.py run folder of the round-0 tagger (gold + synthetic, no pseudo-labels)
    round<r>/pseudo.jsonl   the pseudo-labelled posts of round r (r >= 1), then its train.py run folder
    labels/<key>/           the teacher's labels of the pool, read again when the run continues (unless
                            ``selftrain.label_cache`` names a folder shared with other runs; :mod:`.label_cache`)

Round 0 is the gold-only baseline (gold + ``data.synthetic`` when a mixing mode uses it). Round ``r >= 1`` labels
the pool with the teacher (the best round so far, or the previous one), keeps pseudo-labels by uncertainty
(:mod:`.select`), optionally delegates the uncertain ones to a refinement backend, and trains a tagger on gold +
synthetic + pseudo-labelled posts through ``data.mixing`` (``gold_only`` becomes ``concat``). Rounds stop when dev
MNER F1 has not improved by more than ``min_delta`` for ``patience`` rounds, or after ``rounds`` rounds.
A rerun with the same ``run_name`` continues after the last finished round (an unfinished round resumes from its
``last.ckpt``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from refineg.config import as_dictconfig
from refineg.data import Example, bio_labels, write_jsonl
from refineg.errors import UsageError

from .config import SelfTrainConfig
from .label_cache import Labels, cached_labels, label_key
from .pool import UnlabeledPool, build_pool
from .select import pseudo_label_quality, select_pseudo_labels

logger = logging.getLogger(__name__)

STATE = "selftrain.json"
TEACHER = "teacher.json"  # in a round's folder: the checkpoints whose ensemble labelled its pool
#: Config sections that must not change when a run is continued (the stopping rule and the extra ensemble members
#: of later rounds may).
FIXED = ("seed", "data", "model", "optim", "selftrain", "refine")
# ensemble: each round records its teacher's members; label_cache: where labels are kept, not what they are
STOPPING = ("rounds", "patience", "min_delta", "ensemble", "label_cache")
UNVERIFIED = ("failed", "budget_exhausted", "invalid")


def check_config(cfg: Any) -> SelfTrainConfig:
    """The :class:`SelfTrainConfig` of ``cfg`` (an object or a ``DictConfig`` view), checked by its ``validate()``.

    Raises:
        UsageError: A value out of range, an unknown choice or a training setting the rounds cannot use.
    """
    obj = cfg if isinstance(cfg, SelfTrainConfig) else OmegaConf.to_object(OmegaConf.merge(SelfTrainConfig, cfg))
    try:
        return obj.validate()
    except ValueError as err:
        raise UsageError(str(err)) from None


def _fingerprint(cfg: DictConfig) -> dict[str, Any]:
    out = {k: OmegaConf.to_container(cfg[k], resolve=True) if k != "seed" else cfg.seed for k in FIXED}
    out["selftrain"] = {k: v for k, v in out["selftrain"].items() if k not in STOPPING}
    return out


def same_settings(recorded: Any, current: Any, default: Any) -> bool:
    """Whether a run folder's recorded fingerprint matches this run's.

    A key the record lacks was added to the configuration after the run started; it matches when this run leaves it
    at its default (``default``: the fingerprint of the default configuration), so older runs can be continued.
    """
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return recorded == current
    if any(key not in current for key in recorded):
        return False
    defaults = default if isinstance(default, dict) else {}
    for key, value in current.items():
        if key in recorded:
            if not same_settings(recorded[key], value, defaults.get(key)):
                return False
        elif key not in defaults or defaults[key] != value:
            return False
    return True


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, path)


def _device(cfg: DictConfig) -> str:
    use_gpu = str(cfg.trainer.accelerator) in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "cuda" if use_gpu else "cpu"


def label_pool(
    est: Any, posts: list[Example], cfg: DictConfig
) -> tuple[list[Example], list[list[list[float]]] | None, list[str]]:
    """The teacher's predictions of the pool with the head's uncertainty per entity (and CRF marginals).

    Args:
        est: The teacher, from :func:`teacher_estimator` (one checkpoint or the ensemble of several).
        posts: The pool.
        cfg: The run's config (``selftrain.head``, ``selftrain.soft_targets``, ``selftrain.outside_min``).

    Returns:
        Predicted posts (entities with ``uncertainty``), per post one label distribution per word when
        ``selftrain.soft_targets`` or ``selftrain.outside_min`` needs them (words cut off by ``data.max_length``
        get ``O``; CRF marginals, or softmax probabilities for a softmax head), and the label inventory.
    """
    from refineg.inference.uncertainty.estimator import assemble_predictions

    st = cfg.selftrain
    labels = list(est.module.labels)
    spans: list[Any] = [None] * len(posts)
    scores: list[Any] = [None] * len(posts)
    rows: list[Any] = [None] * len(posts)
    head = est.heads[st.head]
    need_rows = st.soft_targets or st.outside_min is not None
    with torch.inference_mode():
        for idx, kept, ctx in est.contexts(posts, progress=bool(cfg.trainer.enable_progress_bar), desc="pool"):
            for i, post_scores in zip(idx, head.score(ctx)):
                scores[i] = post_scores
            probs = ctx.token_probs.float().cpu() if need_rows else None
            for b, (i, post_spans) in enumerate(zip(idx, kept)):
                spans[i] = post_spans
                if probs is not None:
                    n = len(posts[i].tokens)
                    words = min(n, int(ctx.mask[b].sum()))
                    outside = [1.0] + [0.0] * (len(labels) - 1)
                    rows[i] = probs[b, :words].tolist() + [list(outside) for _ in range(n - words)]
    preds = assemble_predictions(posts, spans, {st.head: scores})
    return preds, (rows if need_rows else None), labels


def label_with(members: list[str], pool: UnlabeledPool, cfg: DictConfig) -> Labels:
    """Labels the pool with the teacher of ``members`` (:func:`label_pool`); an ensemble's dev score comes along."""
    est = teacher_estimator(members, cfg)
    preds, rows, labels = label_pool(est, pool.posts, cfg)
    dev_f1 = teacher_dev_f1(est, cfg) if len(members) > 1 else None
    est.module.to("cpu")  # frees the GPU for the round's training
    del est
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {"preds": preds, "rows": rows, "labels": labels, "teacher_dev_mner_f1": dev_f1}


def teacher_estimator(ckpts: str | list[str], cfg: DictConfig) -> Any:
    """An ``UncertaintyEstimator`` with ``selftrain.head`` over one checkpoint or the ensemble of several."""
    from refineg.inference.predictor import TaggerPredictor, load_tagger
    from refineg.inference.uncertainty import UncertaintyEstimator, create_uncertainty_head

    paths = [ckpts] if isinstance(ckpts, str) else list(ckpts)
    if len(paths) > 1:
        from refineg.inference.ensemble import ensemble_tagger

        module = ensemble_tagger(paths)
    else:
        module = load_tagger(paths[0])
    predictor = TaggerPredictor(
        module, batch_size=cfg.data.eval_batch_size, max_length=cfg.data.max_length, device=_device(cfg)
    )
    st = cfg.selftrain
    return UncertaintyEstimator(predictor, {st.head: create_uncertainty_head(st.head, **dict(st.head_kwargs))})


def check_ensemble_members(paths: list[str], cfg: DictConfig) -> None:
    """Checks that every ``selftrain.ensemble`` checkpoint can join an ensemble with this run's rounds' taggers.

    The same encoder, entity types and tagging head (:class:`~refineg.inference.ensemble.EnsembleTagger` averages
    the heads), and no groundability head (ensembles tag only).

    Raises:
        DataFormatError: A file that is not a tagger checkpoint.
        UsageError: A member with another encoder, other entity types or another head, or with a groundability
            head.
    """
    from refineg.inference.predictor import load_tagger

    for path in paths:
        member = load_tagger(path)
        encoder, types = member.hparams.model["encoder"], list(member.types)
        if encoder != cfg.model.encoder or types != list(cfg.data.types):
            raise UsageError(
                f"selftrain.ensemble: {path} is a tagger of encoder {encoder!r} and types {types}; this run trains "
                f"{cfg.model.encoder!r} with types {list(cfg.data.types)}"
            )
        head = member.hparams.model.get("head", "crf")
        if head != cfg.model.head:
            raise UsageError(
                f"selftrain.ensemble: {path} is a tagger with model.head={head}; this run trains model.head="
                f"{cfg.model.head} (an ensemble averages its members' heads)"
            )
        if member.tagger.groundability is not None:
            raise UsageError(f"selftrain.ensemble: {path} has a groundability head; ensembles tag only")


def check_round_teacher(round_dir: Path, r: int, members: list[str]) -> None:
    """Refuses to continue a round that started training with other teacher members (``selftrain.ensemble``).

    A continued run may add ensemble members, but a round already trained (partly or fully) before an interruption
    keeps the pseudo-labels it trained on: they are relabelled only by the same teacher.

    Raises:
        UsageError: ``round_dir`` records other teacher members and holds training output.
    """
    recorded = round_dir / TEACHER
    trained = (round_dir / "metrics.json").is_file() or (round_dir / "checkpoints").is_dir()
    if not (trained and recorded.is_file()):
        return
    before = json.loads(recorded.read_text())
    if before != members:
        raise UsageError(
            f"round {r} started training with the pseudo-labels of teacher {before} ({recorded}); this run's "
            f"teacher is {members}: continue with the same selftrain.ensemble, or remove {round_dir} to redo the round"
        )


def teacher_dev_f1(est: Any, cfg: DictConfig) -> float:
    """Dev MNER F1 of the teacher (an ensemble's own score, which no training round records)."""
    from refineg.datamodules.gmner import read_split
    from refineg.metrics import evaluate_examples

    dev = read_split(cfg.data, "dev")
    preds = est.predictor.predict(dev, progress=False)
    return evaluate_examples(dev, preds, list(cfg.data.types))["mner"]["f1"]


def delegate(
    preds: list[Example],
    cfg: DictConfig,
    work_dir: Path,
    types: list[str],
    pool_gold: Path | None = None,
    llm_dir: Path | None = None,
) -> tuple[list[Example], dict]:
    """Sends the uncertain pseudo-labels (``u > tau``) to the refinement backend ``selftrain.refine_backend``.

    Entities the backend checked (kept or corrected) count as confident (``meta["verified"]``); in a post where a
    check got no usable answer, the unchecked entities keep their uncertainty. ``work_dir`` gets the round's
    refinement outputs and ``llm_dir`` (default ``work_dir``; the run folder, so that every round shares them) the
    LLM response cache and spend ledger, so no round pays again for a check an earlier round asked;
    ``pool_gold`` (the hidden labels of a training-split pool) answers the simulations unless
    ``refine.gold`` is set.
    """
    from refineg.stages.refinement import create_refinement_backend, load_refine_config, refine_examples

    cfg = as_dictconfig(cfg)
    st = cfg.selftrain
    fixed: dict[str, Any] = {"backend": st.refine_backend, "tau": st.tau, "types": types, "run_dir": str(work_dir)}
    if cfg.refine.gold is None and pool_gold is not None and pool_gold.is_file():
        fixed["gold"] = str(pool_gold)
    try:
        rcfg = load_refine_config([], OmegaConf.to_container(cfg.refine, resolve=True), fixed)
    except ValueError as err:
        raise UsageError(f"refine: {err}") from None
    work_dir.mkdir(parents=True, exist_ok=True)
    backend = create_refinement_backend(rcfg, run_dir=llm_dir or work_dir)
    try:
        refined, report = refine_examples(preds, rcfg, backend, types)
        report["usage"] = backend.usage()
    finally:
        backend.close()
    for before, after in zip(preds, refined):
        confident = {(e.start, e.end, e.type) for e in before.entities if (e.uncertainty or 0.0) <= st.tau}
        checked = after.meta["refinement"]["checked"]
        if any(o in UNVERIFIED for entry in checked for o in entry["outcomes"]):
            continue
        after.meta["verified"] = [
            j for j, e in enumerate(after.entities) if (e.start, e.end, e.type) not in confident and checked
        ]
    return refined, report


def _round_cfg(cfg: DictConfig, run_dir: Path, r: int, pseudo: Path | None, init: str | None) -> DictConfig:
    rc = copy.deepcopy(cfg)
    rc.runs_dir, rc.run_name, rc.predict = str(run_dir), f"round{r}", False
    rc.data.test = None  # dev only: the rounds are chosen on dev and the test split stays untouched
    if pseudo is not None:
        rc.data.pseudo = str(pseudo)
        if rc.data.mixing == "gold_only":
            rc.data.mixing = "concat"
    if init is not None:
        rc.model.init_from = init
    if r > 0 and cfg.selftrain.epochs is not None:  # e.g. round 0 trains many epochs on few gold posts
        rc.trainer.max_epochs, rc.trainer.check_val_every_n_epoch = cfg.selftrain.epochs, 1
    last = run_dir / f"round{r}" / "checkpoints" / "last.ckpt"
    rc.ckpt_path = "last" if last.is_file() else None
    return rc


def _train_round(rc: DictConfig) -> dict[str, Any]:
    from refineg.training import train

    metrics = Path(rc.runs_dir) / rc.run_name / "metrics.json"
    if metrics.is_file():  # trained before an interruption that came before the round was recorded
        return json.loads(metrics.read_text())
    os.environ.pop("REFINEG_RUN_NAME", None)
    try:
        return train(rc)
    finally:  # train() names the run through the environment; later runs of this process pick their own name
        os.environ.pop("REFINEG_RUN_NAME", None)


def run_selftrain(cfg: SelfTrainConfig | DictConfig) -> dict[str, Any]:
    """Runs (or continues) the self-training rounds of ``cfg``; returns the state written to ``selftrain.json``.

    Args:
        cfg: The settings (:func:`~refineg.stages.selftrain.config.load_selftrain_config`).
    """
    cfg = as_dictconfig(check_config(cfg))
    st = cfg.selftrain
    name = cfg.run_name or f"selftrain-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.runs_dir) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE
    fingerprint = _fingerprint(cfg)
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if not same_settings(
            state.get("fingerprint"), fingerprint, _fingerprint(OmegaConf.structured(SelfTrainConfig))
        ):
            raise UsageError(
                f"{state_path}: written by another configuration (seed, data, model, optim or selftrain differ); "
                "use another run_name"
            )
        logger.info("continuing %s after round %d", run_dir, len(state["rounds"]) - 1)
    else:
        state = {"fingerprint": fingerprint, "config": OmegaConf.to_container(cfg, resolve=True), "rounds": []}
    state.pop("stopped", None)
    # the pool and the extra teacher members are read before any training, so that a bad setting fails at once
    pool: UnlabeledPool | None = build_pool(cfg.data, cfg.seed) if st.rounds > 0 else None
    if st.ensemble and st.rounds > 0:
        check_ensemble_members(list(st.ensemble), cfg)
    if pool is not None and pool.hidden is not None and st.refine_backend in ("oracle", "noisy-oracle"):
        write_jsonl(pool.hidden.values(), run_dir / "pool_gold.jsonl")
    types = list(cfg.data.types)
    while True:
        rounds = state["rounds"]
        r = len(rounds)
        stop = stop_reason(rounds, st.rounds, st.patience, st.min_delta)
        if stop:
            state["stopped"] = stop
            break
        start = time.time()
        record: dict[str, Any] = {"round": r}
        if r == 0:
            rc = _round_cfg(cfg, run_dir, 0, None, None)
        else:
            assert pool is not None
            teacher = pick_teacher(rounds, st.teacher)
            record["teacher_round"] = teacher
            ckpt = rounds[teacher]["checkpoint"]
            members = [ckpt, *st.ensemble]
            check_round_teacher(run_dir / f"round{r}", r, members)
            if st.ensemble:
                record["teacher_members"] = members
            folder = Path(st.label_cache) if st.label_cache else run_dir / "labels"
            key = label_key(members, pool.posts, cfg)
            labelled, record["labels_cached"] = cached_labels(folder, key, partial(label_with, members, pool, cfg))
            preds, marginals, labels = labelled["preds"], labelled["rows"], labelled["labels"]
            if labelled["teacher_dev_mner_f1"] is not None:
                record["teacher_dev_mner_f1"] = labelled["teacher_dev_mner_f1"]
            record["label_seconds"] = round(time.time() - start, 1)
            if st.refine_backend != "none":
                preds, report = delegate(
                    preds, cfg, run_dir / f"round{r}", types, run_dir / "pool_gold.jsonl", llm_dir=run_dir
                )
                record["refinement"] = report
                if report["simulated"]:
                    record["refinement_note"] = f"SIMULATION: {report['backend']} answered, not an MLLM"
            kept, counts = select_pseudo_labels(
                preds,
                st.tau,
                st.selection,
                st.uncertain,
                st.empty_posts,
                marginals,
                labels or bio_labels(types),
                r,
                soft=st.soft_targets,
                outside_min=st.outside_min,
            )
            record["pseudo"] = counts
            if pool.hidden is not None:
                record["pseudo_quality"] = pseudo_label_quality(preds, kept, pool.hidden, st.tau)
            pseudo = run_dir / f"round{r}" / "pseudo.jsonl"
            write_jsonl(kept, pseudo)
            (run_dir / f"round{r}" / TEACHER).write_text(json.dumps(members))
            rc = _round_cfg(cfg, run_dir, r, pseudo, ckpt if st.init == "teacher" else None)
        result = _train_round(rc)
        record.update(
            dev_mner_f1=float(result.get("best_val_mner_f1", 0.0)),
            checkpoint=result["best_checkpoint"],
            run_dir=result["run_dir"],
            train_throughput=result.get("train_throughput"),
            seconds=round(time.time() - start, 1),
        )
        rounds.append(record)
        state["best_round"] = pick_teacher(rounds, "best")
        _write_state(state_path, state)
        logger.info("round %d: dev MNER F1 %.4f (%.0f s)", r, record["dev_mner_f1"], record["seconds"])
    state["best_round"] = pick_teacher(state["rounds"], "best")
    state["best_dev_mner_f1"] = state["rounds"][state["best_round"]]["dev_mner_f1"]
    state["gold_only_dev_mner_f1"] = state["rounds"][0]["dev_mner_f1"]
    _write_state(state_path, state)
    return state


def pick_teacher(rounds: list[dict[str, Any]], rule: str) -> int:
    """Index of the teacher round: the best dev MNER F1 so far (earliest on ties), or the last round."""
    if rule == "last":
        return len(rounds) - 1
    return max(range(len(rounds)), key=lambda k: (rounds[k]["dev_mner_f1"], -k))


def stop_reason(rounds: list[dict[str, Any]], max_rounds: int, patience: int, min_delta: float) -> str | None:
    """Why no further round runs (``None``: run the next one).

    Round 0 always runs; after ``max_rounds`` pseudo-labelling rounds, or when the last ``patience`` rounds all
    failed to beat the best earlier dev MNER F1 by more than ``min_delta``, the rounds stop.
    """
    if not rounds:
        return None
    if len(rounds) > max_rounds:
        return f"max_rounds: {max_rounds} pseudo-labelling round(s) done"
    if len(rounds) > patience:
        before = max(r["dev_mner_f1"] for r in rounds[:-patience])
        if all(r["dev_mner_f1"] <= before + min_delta for r in rounds[-patience:]):
            return f"dev: no gain over {before:.4f} (+{min_delta}) in the last {patience} round(s)"
    return None
