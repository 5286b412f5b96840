"""The stages of ``refineg pipeline``, one function each, and the chain a :class:`PipelineConfig` asks for.

Run folder layout (``<runs_dir>/<name>/``)::

    data/{train,dev,test,eval}.jsonl      gold posts (train: the gold_limit sample; eval: the scored split)
    synthesize/synthetic.jsonl            synthetic training posts (+ report)
    data/unlabeled.jsonl                  self-training pool from the training split (stages.selftrain)
    train/tagger.json, train/tagger/      the chosen checkpoint; the training (or self-training) run folder
    predict/predictions.jsonl             tagger predictions with an uncertainty per entity
    refine/refined.jsonl                  after delegation to the MLLM (+ refined.report.json, llm_usage.json)
    ground/grounded.jsonl                 after grounding
    zeroshot/zeroshot.jsonl               the zero-shot MLLM baseline (mode=zeroshot)
    variants/<name>/refine|ground/...     each variant's refine and ground outputs (scored as refine@<name>, ...)
    evaluate/metrics.json                 GMNER/MNER/EEG of every prediction file above (``simulated``: the files
                                          that rest on simulated refinement answers)
    stages/<stage>.json                   stamps: fingerprint, wall time, info
    timings.json, summary.json, config.yaml
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from refineg.config import TrainConfig, as_dictconfig, resolve_data_root
from refineg.data import read_jsonl, write_jsonl
from refineg.stages.grounding.config import GroundConfig
from refineg.stages.selftrain.config import SelfTrainConfig

from .config import PipelineConfig, variant_config
from .run import Stage, StageFailedError, file_signature, write_json_atomic

logger = logging.getLogger(__name__)

PREDICTION_FILES = {
    "predict": "predict/predictions.jsonl",
    "refine": "refine/refined.jsonl",
    "ground": "ground/grounded.jsonl",
    "zeroshot": "zeroshot/zeroshot.jsonl",
}


def prediction_file(source: str) -> str:
    """The prediction file of a scored source, relative to the run folder.

    ``refine`` -> ``refine/refined.jsonl``; ``ground@release`` -> ``variants/release/ground/grounded.jsonl``.
    """
    stage, _, variant = source.partition("@")
    return f"variants/{variant}/{PREDICTION_FILES[stage]}" if variant else PREDICTION_FILES[stage]


def train_config(cfg: PipelineConfig, extra: list[str] | None = None) -> TrainConfig:
    """The training config of the run: the ``train`` section, the pipeline's seed, then ``extra`` overrides."""
    return cfg.train.training_config([f"seed={cfg.seed}", *(extra or [])])


def data_sources(data: Any) -> dict[str, Any]:
    """Signatures of the gold files a ``data`` node reads (see :func:`file_signature`)."""
    data = as_dictconfig(data)
    root = resolve_data_root(data)
    out = {split: file_signature(root / data[split]) for split in ("train", "dev", "test") if data.get(split)}
    if data.format == "twitter-gmner" and data.xml_dir:
        out["xml_dir"] = file_signature(root / data.xml_dir)
    return out


def run_data(cfg: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Writes the gold posts of the run as canonical JSONL (``data/``)."""
    from refineg.datamodules.gmner import gold_posts, has_test_split, read_split

    data = as_dictconfig(train_config(cfg).data)
    out = run_dir / "data"
    counts = {}
    for split in ("train", "dev", "test"):
        if not data.get(split) or (split == "test" and not has_test_split(data)):
            continue
        posts = read_split(data, split)
        if split == "train":
            everything, posts = posts, gold_posts(posts, data, cfg.seed)
            if pool_from_train(cfg):
                gold_ids = {e.id for e in posts}
                rest = [e for e in everything if e.id not in gold_ids]
                if not rest:
                    raise ValueError(
                        "train.data.unlabeled_from_train=true needs train.data.gold_limit below the number of "
                        f"training posts ({len(everything)}): the pool is the training posts outside the gold sample"
                    )
                write_jsonl(rest, out / "unlabeled.jsonl")  # labels kept: scored against, never trained on
                counts["unlabeled"] = len(rest)
        write_jsonl(posts, out / f"{split}.jsonl")
        counts[split] = len(posts)
        if split == cfg.data.eval_split:
            posts = posts[: cfg.data.eval_limit] if cfg.data.eval_limit is not None else posts
            write_jsonl(posts, out / "eval.jsonl")
            counts["eval"] = len(posts)
    if "eval" not in counts:
        raise ValueError(
            f"data.eval_split={cfg.data.eval_split} but the data config has no {cfg.data.eval_split} split"
        )
    return {"posts": counts, "types": list(data.types)}


def pool_from_train(cfg: PipelineConfig) -> bool:
    """Whether the data stage writes the self-training pool (``data/unlabeled.jsonl``) from the training split."""
    return cfg.mode == "refineg" and cfg.stages.selftrain and bool(cfg.train.data.unlabeled_from_train)


def unlabeled_source(cfg: PipelineConfig) -> Path | None:
    """The outside file of the self-training pool (``train.data.unlabeled``, resolved like the splits), if any."""
    data = cfg.train.data
    if not cfg.stages.selftrain or data.unlabeled_from_train or not data.unlabeled:
        return None
    return resolve_data_root(as_dictconfig(data)) / str(data.unlabeled)


def selftrain_config(cfg: PipelineConfig, run_dir: Path, extra: list[str] | None = None) -> SelfTrainConfig:
    """The ``refineg selftrain`` settings of the train stage: the ``train``, ``selftrain`` and ``refine`` sections.

    The rounds read the run's gold posts (``data/``) and the pool: ``data/unlabeled.jsonl`` (training posts outside
    the gold sample, scored against their hidden labels) or ``train.data.unlabeled``.
    """
    if pool_from_train(cfg):
        pool = [
            f"data.unlabeled={run_dir / 'data' / 'unlabeled.jsonl'}",
            "data.unlabeled_format=jsonl",
            "data.unlabeled_from_train=false",
            "data.unlabeled_hidden_gold=true",
        ]
    else:
        pool = [f"data.unlabeled={unlabeled_source(cfg)}"]
    return cfg.selftrain_config([*_train_data_overrides(cfg, run_dir), *pool, *(extra or [])])


def run_synthesize(cfg: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Synthesises training posts from the run's gold training posts, or copies ``synthesis.reuse``."""
    out = run_dir / "synthesize" / "synthetic.jsonl"
    if cfg.synthesis.reuse:
        posts = read_jsonl(cfg.synthesis.reuse)
        write_jsonl(posts, out)
        return {"reused": cfg.synthesis.reuse, "posts": len(posts)}
    from refineg.stages.synthesis import run_synthesis

    scfg = copy.deepcopy(cfg.synthesis)
    scfg.seeds, scfg.seed, scfg.progress = str(run_dir / "data" / "train.jsonl"), cfg.seed, cfg.progress
    result = run_synthesis(scfg, out)
    info = {"posts": len(read_jsonl(out)), "report": str(result.report_json)}
    _fail_without_answers(result.report.request_total(), info, f"{out.relative_to(run_dir)} holds what was made")
    return info


def _fail_without_answers(total: dict[str, Any] | None, info: dict[str, Any], kept: str) -> None:
    """Raises :class:`StageFailedError` when the stage sent LLM requests and none got an answer.

    Args:
        total: The stage's LLM usage ``total`` (``None`` without an LLM).
        info: The stage's info dict.
        kept: What the stage wrote all the same, for the message.
    """
    from refineg.llm.usage import no_answer_problem

    problem = no_answer_problem(total)
    if problem is not None:
        raise StageFailedError(f"{problem}; {kept}; the stage is not marked done, so a rerun asks again", info)


def _train_data_overrides(cfg: PipelineConfig, run_dir: Path) -> list[str]:
    data_dir = run_dir / "data"
    items = [
        "data.format=jsonl",
        f"data.root={data_dir}",
        "data.train=train.jsonl",
        "data.dev=dev.jsonl",
        "data.test=" + ("test.jsonl" if (data_dir / "test.jsonl").is_file() else "null"),
        "data.xml_dir=null",
        "data.gold_limit=null",
    ]
    if cfg.stages.synthesize:
        items += [f"data.synthetic={run_dir / 'synthesize' / 'synthetic.jsonl'}", f"data.mixing={cfg.train.mixing}"]
    return items


def run_train(cfg: PipelineConfig, run_dir: Path, fp: str) -> dict[str, Any]:
    """Trains the tagger on the run's gold (+ synthetic) posts, or points at ``train.checkpoint``.

    An interrupted training of the same fingerprint resumes from its ``last.ckpt``.
    """
    out = run_dir / "train" / "tagger.json"
    if cfg.train.checkpoint:
        info = {"checkpoint": str(cfg.train.checkpoint), "trained": False}
        write_json_atomic(out, info)
        return info
    from refineg.training import train

    tagger_dir = run_dir / "train" / "tagger"
    attempt = run_dir / "train" / "attempt.json"
    same = attempt.is_file() and json.loads(attempt.read_text()).get("fingerprint") == fp
    if cfg.stages.selftrain:
        return _run_selftrain(cfg, run_dir, tagger_dir, attempt, fp, same and tagger_dir.is_dir())
    resume = (tagger_dir / "checkpoints" / "last.ckpt").is_file() and same
    if not resume and tagger_dir.exists():
        shutil.rmtree(tagger_dir)
    write_json_atomic(attempt, {"fingerprint": fp})
    tcfg = train_config(
        cfg,
        [
            *_train_data_overrides(cfg, run_dir),
            f"runs_dir={run_dir / 'train'}",
            "run_name=tagger",
            "predict=false",
            *(["ckpt_path=last"] if resume else []),
            f"trainer.enable_progress_bar={cfg.progress}",
        ],
    )
    if resume:
        logger.info("train: resuming the interrupted training from %s", tagger_dir / "checkpoints" / "last.ckpt")
    result = train(tcfg)
    info = {
        "checkpoint": result["best_checkpoint"],
        "trained": True,
        "resumed": resume,
        "best_val_mner_f1": result["best_val_mner_f1"],
        "train_throughput": result.get("train_throughput"),
    }
    write_json_atomic(out, info)
    return info


def _run_selftrain(
    cfg: PipelineConfig, run_dir: Path, tagger_dir: Path, attempt: Path, fp: str, resume: bool
) -> dict[str, Any]:
    """The train stage with ``stages.selftrain``: ``refineg selftrain`` in ``train/tagger/``, its best round on.

    An interrupted run of the same fingerprint continues after its last finished round (and inside a round from
    that round's ``last.ckpt``).
    """
    from refineg.stages.selftrain import run_selftrain

    if not resume and tagger_dir.exists():
        shutil.rmtree(tagger_dir)
    write_json_atomic(attempt, {"fingerprint": fp})
    extra = [f"runs_dir={run_dir / 'train'}", "run_name=tagger", f"trainer.enable_progress_bar={cfg.progress}"]
    state = run_selftrain(selftrain_config(cfg, run_dir, extra))
    best = state["rounds"][state["best_round"]]
    info = {
        "checkpoint": best["checkpoint"],
        "trained": True,
        "resumed": resume,
        "best_val_mner_f1": best["dev_mner_f1"],
        "selftrain": {
            "best_round": state["best_round"],
            "gold_only_dev_mner_f1": state["gold_only_dev_mner_f1"],
            "dev_mner_f1_per_round": [r["dev_mner_f1"] for r in state["rounds"]],
            "stopped": state.get("stopped"),
        },
    }
    write_json_atomic(run_dir / "train" / "tagger.json", info)
    return info


def checkpoint_of(run_dir: Path) -> str:
    """The tagger checkpoint chosen by the train stage."""
    return json.loads((run_dir / "train" / "tagger.json").read_text())["checkpoint"]


def run_predict(cfg: PipelineConfig, run_dir: Path) -> dict[str, Any]:
    """Tags the evaluated posts and scores every entity with ``predict.head``."""
    from refineg.inference.uncertainty import UncertaintyEstimator

    p = cfg.predict
    est = UncertaintyEstimator.from_checkpoint(
        checkpoint_of(run_dir),
        p.head,
        dict(p.head_kwargs),
        p.temperature,
        batch_size=p.batch_size,
        max_length=p.max_length,
    )
    preds = est.predict(read_jsonl(run_dir / "data" / "eval.jsonl"), progress=cfg.progress)
    write_jsonl(preds, run_dir / PREDICTION_FILES["predict"])
    return {"posts": len(preds), "entities": sum(len(x.entities) for x in preds), "head": p.head}


def _cache_default(llm: Any, run_dir: Path) -> Any:
    if llm.cache_path is None:
        llm = dataclasses.replace(llm, cache_path=str(run_dir / "llm_cache.sqlite"))
    return llm


def refine_settings(cfg: PipelineConfig, run_dir: Path, types: list[str], name: str = "refine") -> Any:
    """The :class:`RefineConfig` the refine stage ``name`` runs with (uncertainties come from the predict stage)."""
    r = copy.deepcopy(cfg.refine)
    r.head, r.ckpt, r.types = None, None, list(types)
    if r.backend != "mllm" and r.gold is None:
        r.gold = str(run_dir / "data" / "eval.jsonl")
    r.images_dir = r.images_dir or cfg.images
    r.run_dir = str((run_dir / prediction_file(name)).parent)
    r.llm = _cache_default(r.llm, run_dir)
    return r


def run_refine_stage(
    cfg: PipelineConfig, run_dir: Path, source: str, types: list[str], name: str = "refine"
) -> dict[str, Any]:
    """Refines ``source``'s predictions in ``cfg.refine.mode`` into stage ``name``'s output."""
    from refineg.stages.refinement import run_refine

    report = run_refine(
        refine_settings(cfg, run_dir, types, name),
        run_dir / prediction_file(source),
        run_dir / prediction_file(name),
        types,
    )
    info = {
        k: report[k]
        for k in (
            "mode",
            "backend",
            "simulated",
            "entities",
            "delegated",
            "delegation_rate",
            "posts_sent",
            "backend_failures_kept_small_model",
            "usage",
        )
        if k in report
    }
    total = (report.get("usage") or {}).get("total")
    _fail_without_answers(total, info, f"{prediction_file(name)} keeps the small model's answers")
    return info


def ground_settings(cfg: PipelineConfig, run_dir: Path) -> GroundConfig:
    """The :class:`GroundConfig` the ground stage runs with.

    That is the ``ground`` section, whose ``mllm.llm`` takes every value that the shared ``mllm`` sets away from its
    default (and the run folder's answer cache).
    """
    g = copy.deepcopy(cfg.ground)
    llm = _cache_default(cfg.mllm, run_dir)
    default = type(llm)()
    g.mllm.llm = dataclasses.replace(g.mllm.llm, **{k: v for k, v in vars(llm).items() if v != getattr(default, k)})
    return g


def call_run_ground(pred: Path, pool: Path, out: Path, images: str | None, settings: GroundConfig) -> dict[str, Any]:
    """The one place the pipeline calls the grounding stage (adjust here if its runner's signature changes).

    Raises:
        RuntimeError: The grounding runner ``refineg.stages.grounding.run.run_ground`` is not installed.
    """
    try:
        from refineg.stages.grounding.run import run_ground
    except ImportError as err:
        raise RuntimeError(
            "the grounding runner refineg.stages.grounding.run.run_ground is not available "
            f"({err}); run with stages.ground=false"
        ) from None
    return run_ground(str(pred), str(pool), str(out), images=images, cfg=settings) or {}


def run_ground_stage(cfg: PipelineConfig, run_dir: Path, source: str, name: str = "ground") -> dict[str, Any]:
    """Grounds the entities of ``source``'s predictions with the gold training posts as the demonstration pool."""
    summary = call_run_ground(
        run_dir / prediction_file(source),
        run_dir / "data" / "train.jsonl",
        run_dir / prediction_file(name),
        cfg.images,
        ground_settings(cfg, run_dir),
    )
    info = json.loads(json.dumps(summary, default=str))
    total = (info.get("usage") or {}).get("total")
    _fail_without_answers(total, info, f"{prediction_file(name)} answers none for the asked entities")
    return info


def run_zeroshot_stage(cfg: PipelineConfig, run_dir: Path, types: list[str]) -> dict[str, Any]:
    """The zero-shot MLLM baseline on the evaluated posts."""
    from refineg.stages.zeroshot import run_zeroshot

    z = copy.deepcopy(cfg.zeroshot)
    z.types = list(types)  # the gold inventory, as for every other stage
    z.images_dir = z.images_dir or cfg.images
    z.run_dir = str(run_dir / "zeroshot")
    z.llm = _cache_default(z.llm, run_dir)
    report = run_zeroshot(
        z, run_dir / "data" / "eval.jsonl", run_dir / PREDICTION_FILES["zeroshot"], progress=cfg.progress
    )
    info = {k: v for k, v in report.items() if k != "llm"}
    total = (report.get("usage") or {}).get("total")
    _fail_without_answers(total, info, f"{PREDICTION_FILES['zeroshot']} has no entities for the failed posts")
    return info


def simulated_outputs(run_dir: Path, sources: list[str]) -> dict[str, str]:
    """``{stage: backend label}`` of the prediction files that rest on simulated refinement answers.

    A simulated refine stage (oracle, noisy-oracle) makes its output and every later one of its chain (ground; a
    variant's chain is the sources ending in ``@<name>``) a simulation.
    """
    out: dict[str, str] = {}
    for refine in (s for s in sources if s.partition("@")[0] == "refine"):
        path = (run_dir / prediction_file(refine)).with_suffix(".report.json")
        report = json.loads(path.read_text()) if path.is_file() else {}
        if report.get("simulated"):
            variant = refine.partition("@")[2]
            chain = [s for s in sources if s.partition("@")[2] == variant]
            out |= {s: str(report.get("backend")) for s in chain[chain.index(refine) :]}
    return out


def run_evaluate(
    cfg: PipelineConfig, run_dir: Path, sources: list[str], types: list[str], final: str | None = None
) -> dict[str, Any]:
    """Scores every prediction file of the chains; ``final`` (default the last source) is the run's result."""
    from refineg.metrics import evaluate_examples

    golds = read_jsonl(run_dir / "data" / "eval.jsonl")
    by_stage = {
        s: evaluate_examples(golds, read_jsonl(run_dir / prediction_file(s)), types, cfg.match) for s in sources
    }
    simulated = simulated_outputs(run_dir, sources)
    final = final or sources[-1]
    variants = {}
    for s in sources:
        if "@" in s:
            variants[s.partition("@")[2]] = s  # the last source of each variant's chain is its result
    metrics = {
        "final": final,
        "variants": variants,
        "split": cfg.data.eval_split,
        "posts": len(golds),
        "match": cfg.match,
        "by_stage": by_stage,
        "simulated": simulated,
    }
    write_json_atomic(run_dir / "evaluate" / "metrics.json", metrics)
    return {
        "final": final,
        "variants": variants,
        "simulated": simulated,
        "f1": {s: {t: r[t]["f1"] for t in ("gmner", "mner", "eeg")} for s, r in by_stage.items()},
    }


def _section(obj: Any, drop: tuple[str, ...] = ()) -> Any:
    value = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
    return {k: v for k, v in value.items() if k not in drop} if isinstance(value, dict) else value


def _llm_section(llm: Any) -> dict[str, Any]:
    # where answers are cached, how many run at once and how long to wait do not change them
    return _section(llm, ("cache_path", "concurrency", "timeout_s", "max_retries", "backoff_base_s", "backoff_max_s"))


def build_stages(cfg: PipelineConfig) -> list[Stage]:
    """The stage chain of ``cfg`` (mode and switches decide which stages exist and what each one reads)."""
    run_dir = cfg.run_dir
    tcfg = train_config(cfg)
    types = list(tcfg.data.types)
    data_section = {
        "data": dataclasses.asdict(tcfg.data),
        "seed": cfg.seed,
        "eval": _section(cfg.data),
        "pool_from_train": pool_from_train(cfg),
    }
    stages = [
        Stage(
            "data",
            data_section,
            [],
            ["data/train.jsonl", "data/dev.jsonl", "data/eval.jsonl"]
            + (["data/unlabeled.jsonl"] if pool_from_train(cfg) else []),
            lambda fp: run_data(cfg, run_dir),
            data_sources(tcfg.data),
        )
    ]
    if cfg.mode == "zeroshot":
        z = _section(cfg.zeroshot, ("run_dir", "llm", "types"))
        stages.append(
            Stage(
                "zeroshot",
                {"zeroshot": z, "llm": _llm_section(cfg.zeroshot.llm), "images": cfg.images},
                ["data"],
                [PREDICTION_FILES["zeroshot"]],
                lambda fp: run_zeroshot_stage(cfg, run_dir, types),
                {"images": file_signature(cfg.images), "prompts": file_signature(cfg.zeroshot.prompts_dir)},
            )
        )
        sources = ["zeroshot"]
    else:
        train_inputs = ["data"]
        if cfg.stages.synthesize:
            stages.append(
                Stage(
                    "synthesize",
                    _section(cfg.synthesis),
                    ["data"],
                    ["synthesize/synthetic.jsonl"],
                    lambda fp: run_synthesize(cfg, run_dir),
                    {"reuse": file_signature(cfg.synthesis.reuse)},
                )
            )
            train_inputs.append("synthesize")
        train_section = {
            "checkpoint": cfg.train.checkpoint,
            "mixing": cfg.train.mixing if cfg.stages.synthesize else None,
            "resolved": dataclasses.asdict(tcfg),
        }
        for volatile in ("run_name", "runs_dir", "ckpt_path", "predict", "logger"):
            train_section["resolved"].pop(volatile, None)
        train_section["resolved"].get("trainer", {}).pop("enable_progress_bar", None)
        if cfg.stages.selftrain:
            train_section["selftrain"] = _section(cfg.selftrain)
            if cfg.selftrain.refine_backend != "none":
                train_section["delegation"] = {
                    "refine": _section(cfg.refine, ("llm",)),
                    "llm": _llm_section(cfg.refine.llm),
                }
        stages.append(
            Stage(
                "train",
                train_section,
                train_inputs,
                ["train/tagger.json"],
                lambda fp: run_train(cfg, run_dir, fp),
                {
                    "checkpoint": file_signature(cfg.train.checkpoint),
                    "unlabeled": file_signature(unlabeled_source(cfg)),
                },
            )
        )
        stages.append(
            Stage(
                "predict",
                _section(cfg.predict),
                ["data", "train"],
                [PREDICTION_FILES["predict"]],
                lambda fp: run_predict(cfg, run_dir),
                {"temperature": file_signature(cfg.predict.temperature)},
            )
        )
        sources = ["predict"]
        sources += _refine_ground_chain(cfg, run_dir, types, stages, "")
        for variant in cfg.variants:
            sources += _refine_ground_chain(variant_config(cfg, variant), run_dir, types, stages, variant)
    final = next(s for s in reversed(sources) if "@" not in s)
    stages.append(
        Stage(
            "evaluate",
            {"match": cfg.match, "sources": sources},
            ["data", *sources],
            ["evaluate/metrics.json"],
            lambda fp: run_evaluate(cfg, run_dir, sources, types, final),
        )
    )
    return stages


def _refine_ground_chain(
    c: PipelineConfig, run_dir: Path, types: list[str], stages: list[Stage], variant: str
) -> list[str]:
    """Appends the refine and ground stages of one chain (``variant`` "" = the main one) reading the predictions.

    Returns:
        The chain's scored sources (``refine``, ``ground``; ``refine@<variant>``, ... for a variant).
    """
    suffix = f"@{variant}" if variant else ""
    src, sources = "predict", []
    if c.stages.refine:
        name = f"refine{suffix}"
        r = _section(c.refine, ("run_dir", "llm", "head", "ckpt"))
        stages.append(
            Stage(
                name,
                {"refine": r, "llm": _llm_section(c.refine.llm), "images": c.images},
                ["data", src],
                [prediction_file(name)],
                lambda fp, src=src, name=name: run_refine_stage(c, run_dir, src, types, name),
                {
                    "gold": file_signature(c.refine.gold),
                    "prompts": file_signature(c.refine.prompts_dir),
                    **(
                        {"release_prompts": file_signature(c.refine.release_prompts_dir)}
                        if c.refine.mode == "release"
                        else {}
                    ),
                },
            )
        )
        src = name
        sources.append(name)
    if c.stages.ground:
        name = f"ground{suffix}"
        stages.append(
            Stage(
                name,
                {"ground": _section(c.ground), "llm": _llm_section(c.mllm), "images": c.images},
                ["data", src],
                [prediction_file(name)],
                lambda fp, src=src, name=name: run_ground_stage(c, run_dir, src, name),
                {"images": file_signature(c.images), "prompts": file_signature(c.ground.mllm.prompts_dir)},
            )
        )
        sources.append(name)
    return sources
