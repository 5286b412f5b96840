"""Typed configuration of the synthesis stage (``refineg synthesize``), with domain presets and overrides.

``load_synthesis_config(["domain=ccks_military", "llm.model=qwen-max", "n_reuse=10"])`` starts from the schema
defaults, merges the domain preset ``configs/synthesis/<domain>.yaml`` (types, type map, generic-mention lexicon),
then a ``data=NAME`` group file (``configs/data/NAME.yaml``, for seeds taken from a training data config), then the
dotted overrides. A key the schema does not have is an error; the string ``None`` means null.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from refineg.config import DataConfig, Group, TrainConfig, load_typed
from refineg.llm.config import LLMConfig

# OmegaConf reads these annotations at run time; ``Optional`` keeps Python 3.10 happy (as in LLMConfig).


def _synthesis_llm() -> LLMConfig:
    # ReFineG: one call per seed at temperature 0.1; 30 samples need a long answer.
    return LLMConfig(temperature=0.1, max_tokens=4096)


@dataclass
class FilterConfig:
    """Rule filters applied to every synthetic post (LLM or swap).

    Attributes:
        generic: Reject generic mentions (lexicon entries or patterns, matched case-insensitively on the whole
            mention).
        generic_action: ``drop_entity`` removes the label (the words stay, unlabelled, as the guideline says they
            are not entities) or ``drop_post`` rejects the whole post.
        generic_lexicon: Generic mentions, e.g. ``soldier``, ``fighter jet``.
        generic_patterns: Regular expressions (full match, case-insensitive) for generic mentions.
        generic_strip: Leading words (determiners, numerals) removed before the lexicon look-up, so that
            ``the police`` and ``two tanks`` count as ``police`` and ``tanks``; repeated as long as one matches.
        min_tokens: Shortest post kept (tokens, punctuation included).
        max_tokens: Longest post kept.
        dedup: Remove exact duplicates (lower-cased tokens without punctuation) of another synthetic post or a seed.
        near_dup_threshold: Word-trigram Jaccard similarity at or above which a post is a near duplicate of an
            earlier kept post or of a seed; ``None`` turns near-duplicate removal off.
    """

    generic: bool = True
    generic_action: str = "drop_entity"
    generic_lexicon: list[str] = field(default_factory=list)
    generic_patterns: list[str] = field(default_factory=list)
    generic_strip: list[str] = field(
        default_factory=lambda: [
            "the",
            "a",
            "an",
            "this",
            "that",
            "these",
            "those",
            "my",
            "our",
            "your",
            "their",
            "his",
            "her",
            "its",
        ]
    )
    min_tokens: int = 5
    max_tokens: int = 64
    dedup: bool = True
    near_dup_threshold: Optional[float] = 0.8  # noqa: UP045


@dataclass
class ConsistencyConfig:
    """The consistency filter: a tagger trained on the gold seeds tags every synthetic post.

    Attributes:
        mode: ``off``; ``drop``: posts whose labels disagree with the tagger beyond ``threshold`` are removed;
            ``relabel``: their labels are replaced by the tagger's.
        threshold: Highest tolerated disagreement: the share of the post's labelled entities that the tagger does
            not predict with the same span and type (0 = every label confirmed, 1 = none).
        fill_unlabelled: Add tagger entities that overlap no label of a kept post (the LLM lists only some
            entities, so its posts are partly unlabelled).
        fill_min_score: Lowest tagger confidence for a filled entity.
        checkpoint: A trained tagger checkpoint; ``None`` trains one on the seeds first.
        dev: Canonical JSONL of dev posts to pick the tagger's best epoch; ``None`` uses the seeds themselves.
        train: The tagger's training config (every ``refineg train`` key and group, e.g.
            ``consistency.train.trainer.max_epochs=5``, ``consistency.train.model=minilm_softmax``); its data files,
            types, run folder and seed are set by the stage.
        batch_size: Posts per tagging batch.
    """

    mode: str = "off"
    threshold: float = 0.5
    fill_unlabelled: bool = True
    fill_min_score: float = 0.5
    checkpoint: Optional[str] = None  # noqa: UP045
    dev: Optional[str] = None  # noqa: UP045
    train: TrainConfig = field(default_factory=TrainConfig)
    batch_size: int = 64


@dataclass
class SwapConfig:
    """The LLM-free synthesiser: gazetteer mention swapping and context recombination.

    Attributes:
        per_seed: New posts per seed.
        gazetteer: Optional TSV file of extra mentions, one ``TYPE<TAB>mention`` per line.
        recombine_prob: Probability that a post joins the beginning of its seed to the end of another seed
            (cut outside entities) before the mentions are swapped.
        max_tries: Attempts per requested post before giving up on a seed (duplicates are retried).
    """

    per_seed: int = 10
    gazetteer: Optional[str] = None  # noqa: UP045
    recombine_prob: float = 0.3
    max_tries: int = 5


@dataclass
class SynthesisConfig:
    """Everything ``refineg synthesize`` needs.

    Attributes:
        synthesizer: Registered synthesiser: ``llm`` or ``swap``.
        domain: Domain preset (``configs/synthesis/<domain>.yaml``) and prompt set name.
        prompts: Prompt folder; ``None`` means ``configs/prompts/synthesis/<domain>``.
        types: Entity type inventory.
        type_map: Case-insensitive renames of LLM types outside the inventory (``PERSON: PER``).
        default_type: Type for any other unknown type (ReFineG maps them to ``other``); ``None`` drops them.
        n_reuse: LLM samples per seed that reuse the seed's entities in new contexts.
        n_new: LLM samples per seed built around new, specifically named entities of the seed's types.
        seeds: Canonical JSONL of gold seeds; ``None`` takes the training split of ``data`` (with its
            ``gold_limit`` sample drawn with ``data.gold_seed`` or else ``seed``, exactly as training does).
        max_seeds: Use only the first this many seeds (pilots); ``None`` for all.
        seed: Random seed: gold sample, swap choices, train/dev split.
        dev_fraction: Share of seeds whose posts go to a synthetic dev file (ReFineG: 0.25, a 3:1 split); 0 for
            none. All posts of one seed land on the same side.
        data: Training data config (only used when ``seeds`` is ``None``).
        llm: LLM backend (``llm`` synthesiser); ``llm.cache_path: null`` puts the cache next to the output.
        filters: Rule filters.
        consistency: Consistency filter.
        swap: LLM-free synthesiser settings.
        progress: Show progress bars.
    """

    GROUPS: ClassVar[dict[str, Group]] = {
        "domain": Group("synthesis", default="twitter_gmner", record="domain"),
        "data": Group("data", node="data"),
    }

    synthesizer: str = "llm"
    domain: str = "twitter_gmner"
    prompts: Optional[str] = None  # noqa: UP045
    types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "OTHER"])
    type_map: dict[str, str] = field(default_factory=dict)
    default_type: Optional[str] = "OTHER"  # noqa: UP045
    n_reuse: int = 20
    n_new: int = 10
    seeds: Optional[str] = None  # noqa: UP045
    max_seeds: Optional[int] = None  # noqa: UP045
    seed: int = 42
    dev_fraction: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    llm: LLMConfig = field(default_factory=_synthesis_llm)
    filters: FilterConfig = field(default_factory=FilterConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    swap: SwapConfig = field(default_factory=SwapConfig)
    progress: bool = True

    def validate(self) -> SynthesisConfig:
        """Checks values the schema's types cannot catch (unknown modes, bad ranges); returns ``self``.

        Raises:
            ValueError: The first such value.
        """
        cfg = self
        if cfg.filters.generic_action not in ("drop_entity", "drop_post"):
            raise ValueError(
                f"filters.generic_action must be drop_entity or drop_post, got {cfg.filters.generic_action!r}"
            )
        if cfg.consistency.mode not in ("off", "drop", "relabel"):
            raise ValueError(f"consistency.mode must be off, drop or relabel, got {cfg.consistency.mode!r}")
        if not 0.0 <= cfg.dev_fraction < 1.0:
            raise ValueError(f"dev_fraction must be in [0, 1), got {cfg.dev_fraction}")
        if cfg.n_reuse < 0 or cfg.n_new < 0 or cfg.n_reuse + cfg.n_new == 0:
            raise ValueError("n_reuse and n_new must be >= 0 and not both 0")
        if cfg.default_type is not None and cfg.default_type not in cfg.types:
            raise ValueError(f"default_type {cfg.default_type!r} is not in types {list(cfg.types)}")
        bad = {k: v for k, v in cfg.type_map.items() if v not in cfg.types}
        if bad:
            raise ValueError(f"type_map targets outside types {list(cfg.types)}: {bad}")
        return self


def load_synthesis_config(
    overrides: Sequence[str] | None = None, *layers: Any, config_dir: str | Path | None = None
) -> SynthesisConfig:
    """Builds the typed synthesis config from the schema, the domain preset, a data group and overrides.

    Args:
        overrides: ``key=value`` items; ``domain=NAME`` and ``data=NAME`` pick preset files.
        layers: YAML files, dicts or config objects merged before the overrides.
        config_dir: Folder holding ``synthesis/`` and ``data/`` (default: the packaged ``configs``).

    Raises:
        ValueError: A misspelt key, a wrongly typed value, an unknown preset or a malformed override.
    """
    return load_typed(SynthesisConfig, overrides, *layers, config_dir=config_dir, what="synthesis")
