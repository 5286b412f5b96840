"""Typed configuration of ``refineg pipeline``: one section per stage, stage switches and ``key=value`` overrides.

``load_pipeline_config("configs/experiment/refineg_sample.yaml", ["refine.tau=0.3", "stages.ground=false"])``
starts from the schema defaults, merges the experiment file, then the dotted overrides. A key the schema does not
have is an error; the string ``None`` means null. ``train+=KEY=VALUE`` (also ``synthesis+=``, ``ground+=``) appends
one item to that section's ``overrides`` list instead of replacing the list. Sections that hold another command's
overrides (``train.overrides``, ``synthesis.overrides``) are checked by loading that command's config at once, so
their typos fail early too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, InterpolationResolutionError, ValidationError

from refineg.config import parse_override
from refineg.llm import LLMConfig
from refineg.resources import resolve_path
from refineg.stages.refinement.config import RefineConfig
from refineg.stages.zeroshot import ZeroShotConfig

# Optional[...]: OmegaConf reads these annotations at run time (see refineg/llm/config.py).

MODES = ("refineg", "zeroshot")
APPENDABLE = ("train", "synthesis", "ground")
STAGE_NAMES = ("data", "synthesize", "train", "predict", "refine", "ground", "zeroshot", "evaluate")


@dataclass
class StageSwitches:
    """Which stages run; a switched-off stage passes its input through (the paper's ablations).

    Attributes:
        synthesize: Make synthetic training posts from the gold training posts (off = "without synthesis").
        refine: Delegate uncertain entities to the MLLM (off = "without refinement").
        ground: Ground entities to boxes (off = the tagger's / refinement's boxes are scored as they are).
    """

    synthesize: bool = False
    refine: bool = True
    ground: bool = True


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
class SynthesisStage:
    """``refineg synthesize`` inside the pipeline.

    Attributes:
        overrides: ``key=value`` items of the synthesis config (``synthesizer=swap``, ``domain=ccks_military``,
            ``llm.model=...``); the seeds are always the run's gold training posts.
        reuse: An existing synthetic JSONL to use instead of synthesising (its size and mtime enter the
            fingerprint).
    """

    overrides: list[str] = field(default_factory=list)
    reuse: Optional[str] = None  # noqa: UP045


@dataclass
class TrainStage:
    """``train.py`` inside the pipeline.

    Attributes:
        overrides: ``key=value`` items of the training config (``data=twitter_gmner``, ``data.root=...``,
            ``model=minilm_crf``, ``trainer.max_epochs=15``); the run folder and the gold files are set by the
            pipeline.
        checkpoint: A trained tagger checkpoint to load instead of training (its size and mtime enter the
            fingerprint).
        mixing: How synthetic posts join the gold ones when ``stages.synthesize`` is on (``data.mixing``).
    """

    overrides: list[str] = field(default_factory=list)
    checkpoint: Optional[str] = None  # noqa: UP045
    mixing: str = "concat"


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
class GroundStage:
    """The grounding stage (``refineg.stages.grounding``).

    Attributes:
        grounder: ``mllm`` (in-context MLLM grounding) or ``clip`` (the open_clip region scorer).
        selector: Demonstration choice: ``multimodal`` (text + image + entity similarity), ``text``, ``random`` or
            ``none`` (no demonstrations).
        overrides: Further ``key=value`` items of the grounding config.
    """

    grounder: str = "mllm"
    selector: str = "multimodal"
    overrides: list[str] = field(default_factory=list)


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
        predict: Prediction stage.
        refine: Refinement settings (every ``refineg refine`` key; ``head``/``ckpt`` are not used: the predict
            stage computes uncertainties; ``gold`` defaults to the evaluated gold posts for the simulations).
        ground: Grounding stage.
        zeroshot: Zero-shot baseline settings (``mode=zeroshot``).
        variants: Further refine/ground chains run side by side on the same predictions, ``{name: [key=value,
            ...]}`` with keys of ``refine.``, ``ground.``, ``mllm.``, ``stages.refine`` and ``stages.ground`` (e.g.
            ``{release: [refine.mode=release, ground+=selector.entity_similarity=release]}``). Each writes
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
    predict: PredictStage = field(default_factory=PredictStage)
    refine: RefineConfig = field(default_factory=RefineConfig)
    ground: GroundStage = field(default_factory=GroundStage)
    zeroshot: ZeroShotConfig = field(default_factory=ZeroShotConfig)
    variants: dict[str, list[str]] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        """``<runs_dir>/<name>``."""
        return Path(self.runs_dir) / self.name


def check_pipeline_config(cfg: PipelineConfig) -> PipelineConfig:
    """Checks values the schema's types cannot, and the overrides of the nested commands; returns ``cfg``.

    Raises:
        ValueError: Unknown mode, split, scorer, grounder or selector, or a bad nested override.
    """
    from refineg.config import load_config
    from refineg.stages.synthesis import load_synthesis_config

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {cfg.mode!r}")
    if cfg.data.eval_split not in ("dev", "test"):
        raise ValueError(f"data.eval_split must be dev or test, got {cfg.data.eval_split!r}")
    if cfg.match not in ("span", "name"):
        raise ValueError(f"match must be span or name, got {cfg.match!r}")
    if cfg.ground.grounder not in ("mllm", "clip"):
        raise ValueError(f"ground.grounder must be mllm or clip, got {cfg.ground.grounder!r}")
    if cfg.ground.selector not in ("multimodal", "text", "random", "none"):
        raise ValueError(f"ground.selector must be multimodal, text, random or none, got {cfg.ground.selector!r}")
    tcfg = load_config(list(cfg.train.overrides))  # raises ValueError on a bad training key
    missing = sorted(OmegaConf.missing_keys(tcfg))
    if missing:
        raise ValueError(f"the training config leaves {missing} unset (???): add e.g. train+={missing[0]}=VALUE")
    if tcfg.data.root is None and tcfg.data.name != "sample":
        # a null root means the bundled sample: never let a full-data experiment fall back to it silently
        raise ValueError(f"data {tcfg.data.name!r} needs its folder: add train+=data.root=/path/to/data")
    if cfg.stages.synthesize and cfg.synthesis.reuse is None:
        load_synthesis_config(list(cfg.synthesis.overrides))
    cfg.refine.validate()
    cfg.zeroshot.validate()
    if cfg.variants and cfg.mode != "refineg":
        raise ValueError("variants need mode=refineg (they re-run refine and ground on the tagger's predictions)")
    for name in cfg.variants:
        variant_config(cfg, name)  # a bad key fails now, not after training
    return cfg


VARIANT_KEYS = ("refine.", "ground.", "mllm.", "stages.refine", "stages.ground", "ground+")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def variant_config(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """The pipeline config of variant ``name``: ``cfg`` with the variant's overrides (and no variants).

    Raises:
        ValueError: A bad variant name, an override outside the refine/ground/mllm keys, or a bad value.
    """
    if not name or not set(name) <= NAME_CHARS:
        raise ValueError(f"variant name {name!r}: use letters, digits, '_' and '-'")
    items = list(cfg.variants[name])
    for raw in items:
        key, _ = parse_override(raw)
        if not key.startswith(VARIANT_KEYS):
            raise ValueError(
                f"variants.{name}: {raw!r} - a variant may only change {', '.join(k.rstrip('.') for k in VARIANT_KEYS)}"
            )
    base = OmegaConf.structured(cfg)
    base.variants = {}
    dotlist, appended = [], []
    for raw in items:
        key, value = parse_override(raw)
        if key.endswith("+"):
            appended.append((key[:-1], value))
        else:
            dotlist.append(f"{key}={value}")
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(dotlist))
        for section, item in appended:
            merged[section].overrides.append(item)
        out: PipelineConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    except (ConfigKeyError, ValidationError, InterpolationResolutionError) as err:
        raise ValueError(f"variants.{name}: {err.msg if hasattr(err, 'msg') else err}") from None
    out.refine.validate()
    if out.ground.grounder not in ("mllm", "clip"):
        raise ValueError(f"variants.{name}: ground.grounder must be mllm or clip, got {out.ground.grounder!r}")
    if not (out.stages.refine or out.stages.ground):
        raise ValueError(f"variants.{name}: switches off both refine and ground, so it has nothing to run")
    return out


def load_pipeline_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Builds the typed pipeline config from the schema, an experiment YAML file and ``key=value`` overrides.

    Args:
        path: Experiment file (``configs/experiment/refineg_*.yaml``: used as given where it exists, else the
            packaged copy); ``None`` for the schema defaults.
        overrides: ``key=value`` items (dotted keys; list values in YAML syntax, e.g. ``train.overrides=[a=1]``).

    Raises:
        ValueError: A misspelt key, a wrongly typed value, a bad value or a malformed override.
    """
    cfg = OmegaConf.structured(PipelineConfig)
    dotlist, appended = [], []
    for raw in overrides or []:
        key, value = parse_override(raw)
        if key.endswith("+"):
            if key[:-1] not in APPENDABLE:
                raise ValueError(f"{raw!r}: '+=' appends to {', '.join(APPENDABLE)} only")
            appended.append((key[:-1], value))
        else:
            dotlist.append(f"{key}={value}")
    try:
        if path is not None:
            if not resolve_path(path).is_file():
                raise ValueError(f"experiment file {path} not found")
            cfg = OmegaConf.merge(cfg, OmegaConf.load(resolve_path(path)))
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
        for section, item in appended:
            cfg[section].overrides.append(item)
        out: PipelineConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except (ConfigKeyError, ValidationError, InterpolationResolutionError) as err:
        raise ValueError(f"bad pipeline configuration: {err.msg if hasattr(err, 'msg') else err}") from None
    return check_pipeline_config(out)
