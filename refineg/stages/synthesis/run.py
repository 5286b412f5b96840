"""The synthesis stage end to end: seeds -> synthesiser -> labels -> filters -> split -> JSONL + report."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from refineg.config import as_dictconfig
from refineg.data import Example, read_jsonl, write_jsonl
from refineg.stages.synthesis.base import SYNTHESIZERS, Synthesizer
from refineg.stages.synthesis.config import SynthesisConfig
from refineg.stages.synthesis.consistency import Predictor, check_consistency, train_seed_tagger
from refineg.stages.synthesis.filters import GenericMentionRule, reject_generic, remove_duplicates, within_length
from refineg.stages.synthesis.report import SynthesisReport

logger = logging.getLogger(__name__)


@dataclass
class SynthesisOutput:
    """Files written by :func:`run_synthesis`.

    Attributes:
        train: Synthetic training posts (the ``--out`` file; ``data.synthetic`` of a training run).
        dev: Synthetic dev posts (``<stem>.dev.jsonl``) when ``dev_fraction > 0``.
        report_json: ``<stem>.report.json``.
        report_txt: ``<stem>.report.txt``.
        work_dir: ``<stem>_work/``: LLM cache, ``llm_usage.json``, the consistency tagger.
        report: The counters.
    """

    train: Path
    dev: Path | None
    report_json: Path
    report_txt: Path
    work_dir: Path
    report: SynthesisReport


def load_seeds(cfg: DictConfig) -> list[Example]:
    """The gold seeds, then only the first ``cfg.max_seeds`` of them.

    From ``cfg.seeds`` (canonical JSONL), or else the training split of ``cfg.data`` with the same
    ``data.gold_limit`` sample that training draws for ``cfg.seed`` (or ``data.gold_seed``).

    Raises:
        ValueError: A seed has a type outside ``cfg.types``.
    """
    if cfg.seeds:
        seeds = read_jsonl(cfg.seeds)
    else:
        from refineg.datamodules.gmner import gold_posts, read_split

        seeds = gold_posts(read_split(cfg.data, "train"), cfg.data, cfg.seed)
    if cfg.max_seeds is not None:
        seeds = seeds[: cfg.max_seeds]
    bad = sorted({e.type for s in seeds for e in s.entities} - set(cfg.types))
    if bad:
        raise ValueError(f"seed entity types {bad} are not in types {list(cfg.types)}; pick the matching domain")
    return seeds


def build_synthesizer(cfg: DictConfig, work_dir: Path) -> Synthesizer:
    """The synthesiser named by ``cfg.synthesizer``, built from the config."""
    return SYNTHESIZERS.get(cfg.synthesizer).from_config(cfg, work_dir)


def split_by_seed(examples: list[Example], dev_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Sends the posts of ``round(dev_fraction * seeds)`` randomly chosen seeds to dev, the rest to train.

    Keeping each seed's posts on one side stops near-copies of a training post from inflating dev scores.
    """
    if dev_fraction <= 0:
        return examples, []
    seed_ids = sorted({ex.meta.get("seed_id", ex.id) for ex in examples})
    random.Random(seed).shuffle(seed_ids)
    dev_ids = set(seed_ids[: round(dev_fraction * len(seed_ids))])
    dev = [ex for ex in examples if ex.meta.get("seed_id", ex.id) in dev_ids]
    train = [ex for ex in examples if ex.meta.get("seed_id", ex.id) not in dev_ids]
    return train, dev


def apply_filters(
    candidates: list[Example],
    seeds: list[Example],
    cfg: DictConfig,
    report: SynthesisReport,
    predictor: Predictor | None = None,
) -> list[Example]:
    """Generic mentions, length bounds, duplicates, then (when enabled) the consistency filter."""
    f = cfg.filters
    kept = candidates
    if f.generic:
        rule = GenericMentionRule(f.generic_lexicon, f.generic_patterns, f.generic_strip)
        kept = reject_generic(kept, rule, f.generic_action, report)
    kept = within_length(kept, f.min_tokens, f.max_tokens, report)
    if f.dedup:
        kept = remove_duplicates(kept, seeds, f.near_dup_threshold, report)
    if cfg.consistency.mode != "off" and kept:
        c = cfg.consistency
        if predictor is None:
            raise ValueError("consistency filter enabled without a predictor")
        kept = check_consistency(
            kept, predictor, c.mode, c.threshold, c.fill_unlabelled, c.fill_min_score, report, progress=cfg.progress
        )
    for ex in kept:
        ex.validate()
    return kept


def _consistency_predictor(cfg: DictConfig, seeds: list[Example], work_dir: Path) -> Predictor:
    from refineg.inference.predictor import TaggerPredictor

    c = cfg.consistency
    ckpt = c.checkpoint or train_seed_tagger(seeds, list(cfg.types), work_dir / "consistency", c.dev, c.train, cfg.seed)
    return TaggerPredictor.from_checkpoint(ckpt, batch_size=c.batch_size, device="cpu")


def run_synthesis(
    cfg: SynthesisConfig | DictConfig, out: str | Path, seeds: list[Example] | None = None
) -> SynthesisOutput:
    """Runs the stage and writes ``out``, ``<stem>.dev.jsonl`` (with ``dev_fraction``) and the report files.

    Args:
        cfg: A :class:`~refineg.stages.synthesis.config.SynthesisConfig` (or a ``DictConfig`` view of one).
        out: Output JSONL of synthetic training posts.
        seeds: Gold seeds; default :func:`load_seeds`.
    """
    cfg = as_dictconfig(cfg)
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".jsonl" else out
    work_dir = stem.with_name(stem.name + "_work")
    work_dir.mkdir(parents=True, exist_ok=True)
    seeds = load_seeds(cfg) if seeds is None else seeds
    report = SynthesisReport(settings=OmegaConf.to_container(cfg, resolve=True))
    report.seeds = len(seeds)
    report.seeds_without_entities = sum(not s.entities for s in seeds)
    candidates = build_synthesizer(cfg, work_dir).synthesize(seeds, report)
    logger.info("%d candidate posts from %d seeds", len(candidates), len(seeds))
    predictor = _consistency_predictor(cfg, seeds, work_dir) if cfg.consistency.mode != "off" else None
    kept = apply_filters(candidates, seeds, cfg, report, predictor)
    train, dev = split_by_seed(kept, cfg.dev_fraction, cfg.seed)
    write_jsonl(train, out)
    report.record_output("train", train)
    dev_path = None
    if cfg.dev_fraction > 0:
        dev_path = stem.with_name(stem.name + ".dev.jsonl")
        write_jsonl(dev, dev_path)
        report.record_output("dev", dev)
    report_json, report_txt = report.write(stem)
    return SynthesisOutput(out, dev_path, report_json, report_txt, work_dir, report)
