"""Typed configuration of ``refineg pipeline``: one section per stage, each the typed config of that stage.

``load_pipeline_config("configs/pipeline/refineg_sample.yaml", ["refine.tau=0.3", "train.trainer.max_epochs=2"])``
starts from the schema defaults (with ``configs/default.yaml`` under ``train`` and ``configs/grounding/default.yaml``
under ``ground``), merges the experiment file, then the overrides, with the one grammar of :mod:`refineg.config`:
``train`` is a whole training config (``train.data=twitter_gmner train.data.root=/data train.model=minilm_crf``),
``synthesis`` a whole synthesis config (``synthesis.domain=ccks_military``), ``refine``, ``ground`` and ``zeroshot``
those of their commands. In an experiment file a section chooses its groups with ``defaults: [data=NAME, ...]``. A
key the schema does not have is an error naming the key; the string ``None`` means null.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from refineg.config import TrainConfig, load_typed, parse_override
from refineg.llm import LLMConfig
from refineg.resources import builtin_path, resolve_path
from refineg.stages.grounding.config import GroundConfig
from refineg.stages.refinement.config import RefineConfig
from refineg.stages.selftrain.config import SelfTrainConfig, SelfTrainSettings
from refineg.stages.synthesis.config import SynthesisConfig
from refineg.stages.zeroshot import ZeroShotConfig

# Optional[...]: OmegaConf reads these annotations at run time (see refineg/llm/config.py).

MODES = ("refineg", "zeroshot")
GROUNDERS = ("mllm", "clip")
STAGE_NAMES = ("data", "synthesize", "train", "predict", "refine", "ground", "zeroshot", "evaluate")


@dataclass
class StageSwitches:
    """Which stages run; a switched-off stage passes its input through (the paper's ablations).

    Attributes:
        synthesize: Make synthetic training posts from the gold training posts (off = "without synthesis").
        refine: Delegate uncertain entities to the MLLM (off = "without refinement").
        ground: Ground entities to boxes (off = the tagger's / refinement's boxes are scored as they are).
        selftrain: Train the tagger by self-training (``refineg selftrain``: round 0 on the gold (+ synthetic) posts,
            then rounds on gold + pseudo-labelled unlabelled posts, section ``selftrain``); the best round's tagger
            goes on to predict. The pool is ``train.data.unlabeled=FILE`` or, with ``train.data.gold_limit``,
            ``train.data.unlabeled_from_train=true`` (the training posts outside the gold sample, labels hidden).
    """

    synthesize: bool = False
    refine: bool = True
    ground: bool = True
    selftrain: bool = False


@dataclass
class DataStage:
    """Which gold posts the run uses (read through the training config's ``data`` section).

    Attributes:
        eval_split: Split that is predicted, refined, grounded and scored: ``dev`` (tuning) or ``test``.
        eval_limit: Only the first this many posts of ``eval_split`` (pilots and tests); ``None`` for all.
    """

    eval_split: str = "dev"
    eval_limit: Optional[int] = None  # noqa: UP045


@dataclass
class SynthesisStage(SynthesisConfig):
    """``refineg synthesize`` inside the pipeline: every synthesis key, plus ``reuse``.

    The seeds are always the run's gold training posts; ``seed`` and ``progress`` are the pipeline's.

    Attributes:
        reuse: An existing synthetic JSONL to use instead of synthesising (its size and mtime enter the
            fingerprint).
    """

    reuse: Optional[str] = None  # noqa: UP045


@dataclass
class TrainStage(TrainConfig):
    """The tagger's training inside the pipeline: every ``refineg train`` key, plus ``checkpoint`` and ``mixing``.

    The run folder, the gold files and the seed are set by the pipeline.

    Attributes:
        checkpoint: A trained tagger checkpoint to load instead of training (its size and mtime enter the
            fingerprint).
        mixing: How synthetic posts join the gold ones when ``stages.synthesize`` is on (``data.mixing``).
    """

    checkpoint: Optional[str] = None  # noqa: UP045
    mixing: str = "concat"

    def training_config(self, overrides: list[str] | None = None) -> TrainConfig:
        """The plain :class:`TrainConfig` of this section, with ``overrides`` applied."""
        values = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("checkpoint", "mixing")}
        return load_typed(TrainConfig, overrides, values, what="training")


@dataclass
class PredictStage:
    """Tagging the evaluated posts with an uncertainty per entity.

    Attributes:
        head: Uncertainty head (``refineg.inference.uncertainty``; ``crf_marginal`` needs a CRF tagger).
        head_kwargs: Its keyword arguments.
        temperature: Temperature-scaler JSON written by ``refineg calibrate``; ``None`` for none.
        batch_size: Posts per forward pass.
        max_length: Subword budget per post.
    """

    head: str = "crf_marginal"
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    temperature: Optional[str] = None  # noqa: UP045
    batch_size: int = 64
    max_length: int = 128


@dataclass
class PipelineConfig:
    """Everything ``refineg pipeline`` needs.

    Attributes:
        name: Run name; the run folder is ``<runs_dir>/<name>``.
        runs_dir: Parent folder of run folders.
        mode: ``refineg`` (data -> [synthesize] -> train -> predict -> [refine] -> [ground] -> evaluate) or
            ``zeroshot`` (data -> zeroshot -> evaluate: the MLLM alone).
        seed: Seed of the gold sample, training and simulations.
        images: Folder of post images (``<id>.jpg``), used by refine, ground and zeroshot; ``None`` for none.
        match: Scorer: ``span`` (token spans, Twitter-GMNER) or ``name`` (surface string + label, CCKS2025).
        progress: Progress bars.
        stages: Stage switches.
        mllm: The MLLM shared by refine, ground and zeroshot (experiment files point ``refine.llm`` and
            ``zeroshot.llm`` at it with ``${mllm}``).
        data: Which gold posts.
        synthesis: Synthesis stage.
        train: Training stage.
        selftrain: Self-training rounds (``stages.selftrain``; every ``selftrain.*`` key of ``refineg selftrain``;
            a delegating ``selftrain.refine_backend`` uses the ``refine`` section's settings).
        predict: Prediction stage.
        refine: Refinement settings (every ``refineg refine`` key; ``head``/``ckpt`` are not used: the predict
            stage computes uncertainties; ``gold`` defaults to the evaluated gold posts for the simulations).
        ground: Grounding stage (every ``refineg ground`` key; its ``mllm.llm`` takes the values that ``mllm`` sets).
        zeroshot: Zero-shot baseline settings (``mode=zeroshot``).
        variants: Further refine/ground chains run side by side on the same predictions, ``{name: [key=value,
            ...]}`` with keys of ``refine.``, ``ground.``, ``mllm.``, ``stages.refine`` and ``stages.ground`` (e.g.
            ``{release: [refine.mode=release, ground.selector.entity_similarity=release]}``). Each writes
            ``variants/<name>/`` and is scored as ``refine@<name>`` / ``ground@<name>`` next to the main chain.
    """

    name: str = "sample"
    runs_dir: str = "runs"
    mode: str = "refineg"
    seed: int = 42
    images: Optional[str] = None  # noqa: UP045
    match: str = "span"
    progress: bool = True
    stages: StageSwitches = field(default_factory=StageSwitches)
    mllm: LLMConfig = field(default_factory=LLMConfig)
    data: DataStage = field(default_factory=DataStage)
    synthesis: SynthesisStage = field(default_factory=SynthesisStage)
    train: TrainStage = field(default_factory=TrainStage)
    selftrain: SelfTrainSettings = field(default_factory=SelfTrainSettings)
    predict: PredictStage = field(default_factory=PredictStage)
    refine: RefineConfig = field(default_factory=RefineConfig)
    ground: GroundConfig = field(default_factory=GroundConfig)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    variants: dict[str, list[str]] = field(default_factory=dict)

    def validate(self) -> PipelineConfig:
        """Checks values the schema's types cannot (the nested sections validate themselves); returns ``self``.

        Raises:
            ValueError: Unknown mode, split, scorer or grounder, or a full-data training config without its folder.
        """
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.data.eval_split not in ("dev", "test"):
            raise ValueError(f"data.eval_split must be dev or test, got {self.data.eval_split!r}")
        if self.match not in ("span", "name"):
            raise ValueError(f"match must be span or name, got {self.match!r}")
        if self.ground.grounder.name not in GROUNDERS:
            raise ValueError(f"ground.grounder.name must be one of {GROUNDERS}, got {self.ground.grounder.name!r}")
        if self.train.data.root is None and self.train.data.name != "sample":
            # a null root means the bundled sample: never let a full-data experiment fall back to it silently
            raise ValueError(f"data {self.train.data.name!r} needs its folder: add train.data.root=/path/to/data")
        if self.variants and self.mode != "refineg":
            raise ValueError("variants need mode=refineg (they re-run refine and ground on the tagger's predictions)")
        for name in self.variants:
            variant_config(self, name)  # a bad key fails now, not after training
        if self.stages.selftrain:
            if self.mode != "refineg":
                raise ValueError("stages.selftrain trains the tagger: it needs mode=refineg")
            if self.train.checkpoint:
                raise ValueError("stages.selftrain trains the tagger itself: leave train.checkpoint unset")
            if not (self.train.data.unlabeled or self.train.data.unlabeled_from_train):
                raise ValueError(
                    "stages.selftrain needs unlabelled posts: train.data.unlabeled=FILE or (with "
                    "train.data.gold_limit) train.data.unlabeled_from_train=true"
                )
            self.selftrain_config()  # a training setting the rounds cannot use fails now
        return self

    def selftrain_config(self, overrides: list[str] | None = None) -> SelfTrainConfig:
        """The ``refineg selftrain`` settings of ``stages.selftrain``: ``train``, ``selftrain``, ``refine``, overrides.

        Raises:
            ValueError: ``stages.selftrain: <what the self-training config refuses>``.
        """
        values = {
            **dataclasses.asdict(self.train.training_config([f"seed={self.seed}"])),
            "selftrain": dataclasses.asdict(self.selftrain),
            "refine": dataclasses.asdict(self.refine),
        }
        try:
            return load_typed(SelfTrainConfig, overrides, values, what="self-training")
        except ValueError as err:  # its training keys are the pipeline's train.* keys
            raise ValueError(f"stages.selftrain: {err} (training keys: train.*, e.g. train.trainer.strategy)") from None

    @property
    def run_dir(self) -> Path:
        """``<runs_dir>/<name>``."""
        return Path(self.runs_dir) / self.name


VARIANT_KEYS = ("refine.", "ground.", "mllm.", "stages.refine", "stages.ground")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def variant_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """The pipeline config of variant ``name``: ``cfg`` with the variant's overrides (and no variants).

    The overrides use the one grammar of :mod:`refineg.config` (``ground.selector.entity_similarity=release``).

    Raises:
        ValueError: A bad variant name, an override outside the refine/ground/mllm keys, or a bad value.
    """
    if not name or not set(name) <= NAME_CHARS:
        raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-'")
    items = list(cfg.variants[name])
    for raw in items:
        if not parse_override(raw).key.startswith(VARIANT_KEYS):
            raise ValueError(
                f"variants.{name}: {raw!r} - a variant may only change {', '.join(k.rstrip('.') for k in VARIANT_KEYS)}"
            )
    try:
        out = load_typed(PipelineConfig, items, dataclasses.replace(cfg, variants={}), what="pipeline")
    except ValueError as err:
        raise ValueError(f"variants.{name}: {err}") from None
    if not (out.stages.refine or out.stages.ground):
        raise ValueError(f"variants.{name}: switches off both refine and ground, so it has nothing to run")
    return out


def load_pipeline_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Builds the typed pipeline config from the schema, an experiment YAML file and ``key=value`` overrides.

    Args:
        path: Experiment file (``configs/pipeline/refineg_*.yaml``: used as given where it exists, else the
            packaged copy); ``None`` for the schema defaults.
        overrides: ``key=value`` items (the grammar of :mod:`refineg.config`).

    Raises:
        ValueError: A misspelt key, a wrongly typed value, a bad value or a malformed override.
    """
    if path is not None and not resolve_path(path).is_file():
        moved = builtin_path(Path("pipeline") / Path(path).name)
        hint = f" (pipeline experiments moved to configs/pipeline/{moved.name})" if moved.is_file() else ""
        raise ValueError(f"experiment file {path} not found{hint}")
    return load_typed(PipelineConfig, overrides, path, what="pipeline")
