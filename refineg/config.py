"""Typed training configuration: dataclass schemas, YAML group files and ``key=value`` overrides.

``load_config(["data=twitter_gmner", "data.root=/data/gmner", "trainer.max_epochs=15"])`` starts from the
schema defaults (the embedded default run), merges ``configs/default.yaml``, then each group file named by a
``group=name`` override (``configs/<group>/<name>.yaml``), then the dotted overrides. A key that the schema does not
have is an error. The string ``None`` means null (W&B's ``${args_no_hyphens}`` writes Python ``str()`` values).
``configs/`` is the package's own tree (``refineg/configs``, see ``refineg.resources``), wherever refineg is installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from refineg.resources import config_root

T = TypeVar("T")

CONFIG_DIR = config_root()  # the packaged configs; the stages' built-in prompt folders are under CONFIG_DIR/prompts
SAMPLE_ROOT = Path(__file__).resolve().parent / "assets" / "sample" / "twitter-gmner"
GROUPS = ("data", "model", "experiment")


@dataclass
class DataConfig:
    """Where the gold and synthetic posts come from and how they are batched."""

    name: str = "sample"
    format: str = "twitter-gmner"  # twitter-gmner | conll | jsonl | ccks
    root: str | None = None  # folder the split paths are relative to; None = the bundled sample
    train: str = "txt/train.txt"
    dev: str = "txt/dev.txt"
    test: str | None = "txt/test.txt"
    xml_dir: str | None = "xml"
    image_dir: str | None = None  # folder of <id>.jpg; used only by image-aware backbones
    types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "OTHER"])
    synthetic: str | None = None  # canonical JSONL of synthetic posts
    mixing: str = "gold_only"  # gold_only | concat | ratio | two_stage
    synthetic_ratio: float = 0.5  # ratio mode: share of synthetic posts in every batch
    synthetic_weight: float = 1.0  # loss weight of synthetic posts
    synthetic_epochs: int = 1  # two_stage mode: epochs on synthetic data before gold fine-tuning
    gold_limit: int | None = None  # fixed seeded sample of this many gold training posts
    pseudo: str | None = None  # canonical JSONL of pseudo-labelled posts (self-training; pooled with the synthetic)
    pseudo_weight: float = 1.0  # loss weight of pseudo-labelled posts
    unlabeled: str | None = None  # unlabelled posts for self-training (any readable format; labels are ignored)
    unlabeled_format: str | None = None  # None: from the name (.jsonl, .json = ccks, .txt = data.format or conll)
    unlabeled_from_train: bool = False  # experiments: the training posts outside gold_limit, labels hidden
    unlabeled_limit: int | None = None  # seeded sample of this many unlabelled posts
    unlabeled_hidden_gold: bool = False  # score pseudo-labels against the labels data.unlabeled carries (never trained)
    batch_size: int = 32  # global; divided by the world size
    eval_batch_size: int = 64
    max_length: int = 128  # subword tokens per post
    bucket: bool = True  # length-bucketed batches
    pad_to_multiple_of: int = 0  # pad subword and word lengths up to a multiple (fewer shapes for CUDA graphs)
    pack_length: int = 0  # pack several posts into rows of this many subwords (0 = off; >= max_length)
    num_workers: int = 0


@dataclass
class ModelConfig:
    """The small tagger: encoder backbone, tagging head and features."""

    backbone: str = "hf"  # registry name: hf | hf_image (refineg.modules.backbones.BACKBONES)
    encoder: str = "minilm"  # Hugging Face hub name or local folder; "minilm" = packaged all-MiniLM-L6-v2
    head: str = "crf"  # registry name: softmax | crf (refineg.modules.heads.HEADS)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # more keyword arguments for the backbone factory
    imports: list[str] = field(default_factory=list)  # modules imported first: they register new components by name
    head_kwargs: dict[str, Any] = field(default_factory=dict)  # more keyword arguments for the head factory
    casing: bool = True  # casing-feature embedding (the default encoder is uncased)
    dropout: float = 0.1
    word_dropout: float = 0.0  # probability of replacing a word by the unknown token while training
    # image_* / freeze_image: short names for backbone factories that take them (hf_image); see BACKBONE_KEY_ALIASES
    image_encoder: str = "timm"  # hf_image only: timm | open_clip
    image_model: str = "resnet50"
    image_pretrained: str | None = None  # timm: true/false or checkpoint path; open_clip: tag or checkpoint path
    freeze_image: bool = True
    image_size: int | None = None  # timm input resolution (None: the model's default)
    gradient_checkpointing: bool = False
    groundability: bool = False  # auxiliary head: does each entity have a box at all? (Entity.groundable)
    groundability_head: str = "span_mlp"  # registry name (refineg.modules.groundability)
    groundability_hidden: int = 256  # MLP hidden width
    groundability_weight: float = 1.0  # BCE weight added to the tagging loss
    groundability_kwargs: dict[str, Any] = field(default_factory=dict)  # more keyword arguments for that head
    init_from: str | None = None  # Lightning checkpoint whose tagger weights start this run (new heads stay random)
    freeze_tagger: bool = False  # train only the groundability head; backbone, casing and tagging head stay fixed


@dataclass
class OptimConfig:
    """AdamW with separate learning rates, linear warmup and decay."""

    encoder_lr: float = 1e-4
    head_lr: float = 1e-3
    crf_lr: float = 5e-2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    fused: bool | None = None  # None: fused AdamW (CUDA and CPU) unless fp16 precision


@dataclass
class TrainerConfig:
    """Arguments passed to ``lightning.Trainer``."""

    max_epochs: int = 8
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str = "32-true"
    gradient_clip_val: float = 1.0
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    limit_train_batches: float | None = None
    limit_val_batches: float | None = None
    enable_progress_bar: bool = True
    deterministic: bool = False


@dataclass
class DDPConfig:
    """DistributedDataParallel settings, used when ``trainer.strategy=ddp``."""

    comm_hook: str = "none"  # none | bf16 | fp16: 16-bit gradient all-reduce (GPUs only: Lightning skips it on CPU)
    bucket_cap_mb: int = 25  # gradient bucket size: larger buckets mean fewer, bigger all-reduces
    gradient_as_bucket_view: bool = True  # gradients live in the all-reduce buckets (no copy, less memory)
    static_graph: bool = False  # the same parameters are used every step (lets DDP skip bookkeeping)
    side_stream: bool = False  # wrap the model on a side stream, as Lightning does (slower: see training.py)


@dataclass
class LoggerConfig:
    """CSV logging always; W&B offline unless the environment provides credentials or a mode."""

    wandb: bool = True
    project: str = "refineg"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class SelfTrainConfig:
    """Self-training rounds of ``refineg selftrain`` (see :mod:`refineg.stages.selftrain`)."""

    rounds: int = 3  # most pseudo-labelling rounds after the round-0 model (trained on gold + synthetic only)
    head: str = "crf_marginal"  # uncertainty head (registry name) that scores each pseudo-labelled entity
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    tau: float = 0.2  # an entity with uncertainty <= tau is confident
    selection: str = "entity"  # entity: keep confident entities | post: keep posts whose entities are all confident
    uncertain: str = "mask"  # entity selection, posts with uncertain entities: mask | drop_entity | drop_post
    empty_posts: bool = True  # keep pool posts where the teacher finds no entity (all words O)
    soft_targets: bool = False  # train on the teacher's per-word CRF marginals instead of its decoded labels
    # a word outside the kept entities counts as O only when the teacher's P(O) >= outside_min, else it is left
    # unlabelled (the teacher's missed entities then do not train as O); None: every such word is O
    outside_min: float | None = None
    epochs: int | None = None  # trainer.max_epochs of the pseudo-labelling rounds (None: the same as round 0)
    init: str = "scratch"  # scratch: every round starts from the pretrained encoder | teacher: from the teacher
    teacher: str = "best"  # best: the best round so far labels the pool | last: the previous round
    patience: int = 1  # stop after this many rounds without a dev MNER F1 gain of more than min_delta
    min_delta: float = 0.0
    refine_backend: str = "none"  # none | mllm | oracle | noisy-oracle: delegate uncertain pseudo-labels
    # RefineConfig key=value items for the delegation (the CLI takes them as refine.KEY=VALUE)
    refine_overrides: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """Everything ``train.py`` needs."""

    seed: int = 42
    run_name: str | None = None  # default: <data>-<head>-<timestamp>
    runs_dir: str = "runs"
    ckpt_path: str | None = None  # "last" resumes the run's last checkpoint
    compile: str = "none"  # none | backbone | layers | tagger | cudagraphs (refineg/modules/compile.py)
    cuda_graph: bool = False  # record the training step as CUDA graphs (one GPU; refineg/modules/step_graph.py)
    cuda_graph_shapes: int = 16  # at most this many batch shapes are recorded (4 bytes/parameter each)
    cudnn_attention: bool = False  # True: SDPA may pick cuDNN (its per-length planning halved GPU posts/s here)
    predict: bool = True  # write dev/test predictions as JSONL
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ddp: DDPConfig = field(default_factory=DDPConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    selftrain: SelfTrainConfig = field(default_factory=SelfTrainConfig)


def parse_override(raw: str) -> tuple[str, str]:
    """Splits a ``key=value`` (or ``--key=value``) override; the value ``None`` becomes ``null``.

    Raises:
        ValueError: No ``=`` in the override.
    """
    item = raw.lstrip("-")
    if "=" not in item:
        raise ValueError(f"override {raw!r} is not key=value")
    key, value = item.split("=", 1)
    return key, "null" if value == "None" else value


def build_typed_config(schema: type[T], overrides: Sequence[str] | None = None, *layers: Any, what: str = "") -> T:
    """A typed config object: the dataclass ``schema``, then each layer, then ``key=value`` overrides.

    Args:
        schema: A dataclass whose fields type-check every value.
        overrides: ``key=value`` items (dotted keys; ``None`` means null).
        layers: Dicts, ``DictConfig`` objects or YAML file paths merged in order; ``None`` layers are skipped.
        what: Name used in error messages (``"grounding"`` -> "bad grounding configuration: ...").

    Raises:
        ValueError: A misspelt key, a wrongly typed value or a malformed override.
    """
    cfg = OmegaConf.structured(schema)
    dotlist = ["=".join(parse_override(raw)) for raw in overrides or []]
    try:
        for layer in layers:
            if layer is not None:
                cfg = OmegaConf.merge(cfg, OmegaConf.load(layer) if isinstance(layer, (str, Path)) else layer)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except (ConfigKeyError, ValidationError) as err:
        name = f"{what} " if what else ""
        raise ValueError(f"bad {name}configuration: {err.msg if hasattr(err, 'msg') else err}") from None
    return OmegaConf.to_object(cfg)  # type: ignore[return-value]


def group_file(group: str, name: str, config_dir: Path) -> Path:
    """``configs/<group>/<name>.yaml``; an unknown name raises and lists the known ones."""
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ValueError(f"unknown {group} config {name!r}; known: {', '.join(known) or '(none)'}")
    return path


def load_config(overrides: list[str] | None = None, config_dir: str | Path = CONFIG_DIR) -> DictConfig:
    """Builds the typed config from defaults, YAML files and ``key=value`` overrides.

    Raises:
        ValueError: A misspelt key, a value of the wrong type, an unknown group name or a malformed override.
        FileNotFoundError: ``config_dir`` has no ``default.yaml`` (for the packaged one: a broken install).
    """
    config_dir = Path(config_dir)
    cfg = OmegaConf.structured(TrainConfig)
    if not (config_dir / "default.yaml").is_file():
        raise FileNotFoundError(f"{config_dir / 'default.yaml'} not found: the default run's settings are missing")
    files: list[tuple[str | None, Path]] = [(None, config_dir / "default.yaml")]
    dotlist = []
    for raw in overrides or []:
        key, value = parse_override(raw)
        if key in GROUPS:
            files.append((None if key == "experiment" else key, group_file(key, value, config_dir)))
        else:
            dotlist.append(f"{key}={value}")
    try:
        for node, path in files:
            loaded = OmegaConf.load(path)
            cfg = OmegaConf.merge(cfg, loaded if node is None else {node: loaded})
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
    except (ConfigKeyError, ValidationError) as err:
        raise ValueError(f"bad configuration: {err.msg if hasattr(err, 'msg') else err}") from None
    return cfg


def resolve_data_root(data: DictConfig) -> Path:
    """The folder the split paths of a ``data`` node are relative to (the bundled sample when ``root`` is null)."""
    return Path(data.root).expanduser() if data.root else SAMPLE_ROOT
