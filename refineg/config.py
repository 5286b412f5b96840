"""One configuration grammar and one loader for every command.

train, synthesize, refine, ground, zeroshot, fit-region-scorer and pipeline all load their settings here.

A command's settings are a typed dataclass schema (an OmegaConf structured config) whose ``validate()`` method, next
to the fields, checks what the types cannot. :func:`load_typed` builds one from, in this order:

1. the schema's defaults, then its ``BASE`` file (``configs/default.yaml`` for training);
2. the files of its config groups (``GROUPS``): ``data=twitter_gmner`` merges ``configs/data/twitter_gmner.yaml``
   into ``data``; ``experiment=paper_tagger`` merges ``configs/experiment/paper_tagger.yaml`` at the top;
3. layers: YAML files (an experiment file), dicts or dataclass objects; a ``defaults: [group=name, ...]`` list in a
   layer chooses groups of the node it sits in;
4. ``key=value`` overrides: ``group=name``, dotted keys ``a.b=value`` (YAML values: ``[a, b]``, ``{k: v}``,
   ``null``), ``a.b+=value`` appends to a list; the value ``None`` means null (W&B's ``${args_no_hyphens}`` writes
   Python ``str()`` values); a leading ``--`` is ignored.

Nested schemas keep their groups and base file under their own key: the pipeline nests a whole training config, so
``train.data=twitter_gmner train.data.root=/data`` configures it. A key the schema does not have is an error naming
the key; so is a mandatory value (``???``) left unset. Every loader returns the dataclass object.

``configs/`` is the package's own tree (``refineg/configs``, see ``refineg.resources``), wherever refineg is installed.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, TypeVar

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from refineg.resources import config_root, resolve_path

T = TypeVar("T")

#: ``data.mixing`` values: how gold and synthetic posts share the batches (see refineg.datamodules.gmner).
MIXING_MODES = ("gold_only", "concat", "ratio", "two_stage")
#: ``optim.embedding_rows`` values (see refineg.modules.active_rows).
EMBEDDING_ROWS = ("all", "active")

CONFIG_DIR = config_root()  # the packaged configs; the stages' built-in prompt folders are under CONFIG_DIR/prompts
SAMPLE_ROOT = Path(__file__).resolve().parent / "assets" / "sample" / "twitter-gmner"


@dataclass(frozen=True)
class Group:
    """A config group of a schema: ``KEY=NAME`` merges ``configs/<folder>/NAME.yaml`` at ``node``.

    Attributes:
        folder: Folder of the group's files under ``configs/``.
        node: Dotted key inside the schema where a file merges; ``""`` = the schema itself.
        default: Name chosen when none is given (``None``: no file).
        record: A field of the schema that keeps the chosen name (synthesis ``domain``).
    """

    folder: str
    node: str = ""
    default: str | None = None
    record: str | None = None


class Override(NamedTuple):
    """One parsed ``key=value`` (or ``key+=value``) item."""

    key: str
    value: str
    append: bool = False


def parse_override(raw: str) -> Override:
    """Splits a ``key=value``, ``key+=value`` (append) or ``--key=value`` item; the value ``None`` becomes ``null``.

    Raises:
        ValueError: No ``=`` in the item, or no key.
    """
    item = raw.lstrip("-")
    if "=" not in item:
        raise ValueError(f"override {raw!r} is not key=value")
    key, value = item.split("=", 1)
    append = key.endswith("+")
    key = key[:-1] if append else key
    if not key:
        raise ValueError(f"override {raw!r} has no key")
    return Override(key, "null" if value == "None" else value, append)


def config_error_message(err: Exception, what: str = "") -> str:
    """``bad <what> configuration: <reason> (key <dotted key>)`` on one line, for an OmegaConf or YAML error."""
    text = str(getattr(err, "msg", None) or err)
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(err).__name__)
    if isinstance(err, yaml.YAMLError):
        first = f"a value is not valid YAML ({' '.join(part.strip() for part in text.splitlines() if part.strip())})"
    key = getattr(err, "full_key", None)
    where = f" (key {key})" if key and str(key) not in first else ""
    return f"bad {what + ' ' if what else ''}configuration: {first}{where}"


def group_file(group: str, name: str, config_dir: Path) -> Path:
    """``configs/<group>/<name>.yaml``; an unknown name raises and lists the known ones."""
    path = config_dir / group / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (config_dir / group).glob("*.yaml"))
        raise ValueError(f"unknown {group} config {name!r}; known: {', '.join(known) or '(none)'}")
    return path


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else prefix or key


def _nested_types(schema: type) -> Iterable[tuple[str, type]]:
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if dataclasses.is_dataclass(hints.get(f.name)):
            yield f.name, hints[f.name]


def schema_layout(schema: type, prefix: str = "") -> tuple[list[tuple[str, str]], dict[str, tuple[str, Group]]]:
    """The base files and groups of ``schema`` and of every schema nested in it, keyed by their dotted path.

    Returns:
        ``[(node, base file)]`` deepest first, and ``{group key: (node of the schema, Group)}``.
    """
    bases: list[tuple[str, str]] = []
    groups: dict[str, tuple[str, Group]] = {}
    for name, sub in _nested_types(schema):
        sub_bases, sub_groups = schema_layout(sub, _join(prefix, name))
        bases += sub_bases
        groups.update(sub_groups)
    if getattr(schema, "BASE", None):
        bases.append((prefix, schema.BASE))
    for key, group in getattr(schema, "GROUPS", {}).items():
        groups[_join(prefix, key)] = (prefix, group)
    return bases, groups


def _at(node: str, value: Any) -> Any:
    for part in reversed(node.split(".") if node else []):
        value = {part: value}
    return value


def _as_layer(layer: Any) -> DictConfig:
    if isinstance(layer, (str, Path)):
        path = resolve_path(layer)
        if not path.is_file():
            raise ValueError(f"config file {layer} not found")
        return OmegaConf.load(path)
    if dataclasses.is_dataclass(layer):
        return OmegaConf.structured(layer)
    return OmegaConf.create(layer)


def _pop_defaults(node: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Removes every ``defaults: [group=name]`` list from a layer; returns ``(dotted group key, name)`` pairs."""
    found: list[tuple[str, str]] = []
    if not isinstance(node, DictConfig):
        return found
    if "defaults" in node and not OmegaConf.is_interpolation(node, "defaults"):
        items = node.pop("defaults")
        if not isinstance(items, ListConfig):
            raise ValueError(f"{_join(prefix, 'defaults')} must be a list of group=name items")
        for raw in items:
            ov = parse_override(str(raw))
            found.append((_join(prefix, ov.key), ov.value))
    for key in list(node.keys()):
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue
        if isinstance(node[key], DictConfig):
            found += _pop_defaults(node[key], _join(prefix, str(key)))
    return found


def validate_tree(obj: Any, path: str = "") -> None:
    """Calls ``validate()`` on every nested config object, innermost first; errors name the node.

    Raises:
        ValueError: ``<node>: <problem>`` from the first ``validate()`` that fails.
    """
    if not dataclasses.is_dataclass(obj):
        return
    for f in dataclasses.fields(obj):
        validate_tree(getattr(obj, f.name), _join(path, f.name))
    check = getattr(obj, "validate", None)
    if callable(check):
        try:
            check()
        except ValueError as err:
            raise ValueError(f"{path}: {err}" if path and not str(err).startswith(path) else str(err)) from None


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
    # seed of that sample (None: the run's seed); fix it to vary only the training seed (the unlabelled_limit sample of
    # the self-training pool still follows the run's seed)
    gold_seed: int | None = None
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
    # R-Drop: two training passes with different dropout masks; their mean loss + rdrop x the symmetric KL of their
    # per-word label distributions (0: off, one pass; > 0 doubles the training forward and backward cost)
    rdrop: float = 0.0
    # token-level distillation on soft pseudo-label targets (a teacher's marginals): + marginal_kd x the cross-entropy
    # of the tagger's per-word label distribution (CRF marginals) against them; the path loss alone learns only the
    # teacher's most likely labels (0: off; one-hot and unlabelled words are unaffected)
    marginal_kd: float = 0.0
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
    # seed of the new layers' random initial weights (None: they follow ``seed``); runs that share it and differ in
    # ``seed`` start from the same weights and see other batch orders and dropout masks, so their trained weights can
    # be averaged into one tagger (``refineg soup``)
    init_seed: int | None = None
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
    # all | active: train only the input word embedding's rows of ids in the training data (same result as `all`;
    # less optimiser work for a large vocabulary; see refineg.modules.active_rows)
    embedding_rows: str = "all"
    # > 0: validation, checkpoints and predictions use an exponential moving average of the weights with this decay
    # (e.g. 0.999 spans ~1000 steps; refineg.callbacks.WeightEMA); 0: off
    ema: float = 0.0


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
    check_val_every_n_epoch: int = 1  # validate (and keep the best checkpoint) every N epochs: long runs on few posts
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
class TrainConfig:
    """Everything ``refineg train`` (``train.py``) needs.

    ``configs/default.yaml`` is merged first; groups: ``data=NAME``, ``model=NAME`` (``configs/data``,
    ``configs/model``) and ``experiment=NAME`` (``configs/experiment``: a whole training recipe).
    """

    BASE: ClassVar[str] = "default.yaml"
    GROUPS: ClassVar[dict[str, Group]] = {
        "data": Group("data", node="data"),
        "model": Group("model", node="model"),
        "experiment": Group("experiment"),
    }

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

    def validate(self) -> TrainConfig:
        """Checks the values no run can use (:func:`check_train_config`); returns ``self``.

        Raises:
            ValueError: ``bad configuration: <key>=<value> ...`` naming the first such value.
        """
        check_train_config(self)
        return self


def load_typed(
    schema: type[T],
    overrides: Sequence[str] | None = None,
    *layers: Any,
    config_dir: str | Path | None = None,
    what: str = "",
) -> T:
    """The one loader: a validated ``schema`` object from its base file, groups, ``layers`` and overrides.

    Args:
        schema: A dataclass (fields typed for OmegaConf; optional ``BASE``, ``GROUPS`` and ``validate()``).
        overrides: ``group=name``, ``a.b=value`` and ``a.b+=value`` items (see the module docstring).
        layers: YAML file paths, dicts or dataclass objects merged in order after the group files; ``None`` skipped.
        config_dir: Folder of ``default.yaml`` and the group folders (default: the packaged ``configs``).
        what: Name in error messages (``"grounding"`` -> ``bad grounding configuration: ...``).

    Raises:
        ValueError: A misspelt key, a wrongly typed value, an unknown group name, a malformed override, a mandatory
            value left unset or a value its schema's ``validate()`` refuses.
        FileNotFoundError: A schema's base file is missing (for the packaged one: a broken install).
    """
    config_dir = Path(config_dir) if config_dir is not None else CONFIG_DIR
    bases, groups = schema_layout(schema)
    chosen = {key: group.default for key, (_, group) in groups.items() if group.default is not None}
    bodies, dotlist, appends = [], [], []
    try:
        for layer in layers:
            if layer is None:
                continue
            body = _as_layer(layer)
            for key, name in _pop_defaults(body):
                if key not in groups:
                    raise ValueError(f"defaults: {key} is not a config group; known: {', '.join(groups) or '(none)'}")
                chosen[key] = name
            bodies.append(body)
        for raw in overrides or []:
            ov = parse_override(raw)
            if ov.key in groups and not ov.append:
                chosen.pop(ov.key, None)  # the last choice of a group is merged where it was named
                chosen[ov.key] = ov.value
            elif ov.append:
                appends.append(ov)
            else:
                dotlist.append(f"{ov.key}={ov.value}")
        cfg = OmegaConf.structured(schema)
        for node, rel in sorted(bases, key=lambda b: -b[0].count(".") - bool(b[0])):
            path = config_dir / rel
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found: the default settings of {schema.__name__} are missing")
            cfg = OmegaConf.merge(cfg, _at(node, OmegaConf.load(path)))
        for key, name in chosen.items():
            if name in (None, "null"):
                continue
            node, group = groups[key]
            cfg = OmegaConf.merge(
                cfg, _at(_join(node, group.node), OmegaConf.load(group_file(group.folder, name, config_dir)))
            )
            if group.record:
                OmegaConf.update(cfg, _join(node, group.record), name)
        for body in bodies:
            cfg = OmegaConf.merge(cfg, body)
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(dotlist))
        for key, (node, group) in groups.items():  # a preset's name set as a plain value would not load the preset
            name = chosen.get(key)
            recorded = OmegaConf.select(cfg, _join(node, group.record)) if group.record else None
            if group.record and name not in (None, "null") and recorded != name:
                raise ValueError(
                    f"{_join(node, group.record)}={recorded} was set as a plain value, which does not load that "
                    f"preset: choose it as a group ({key}={recorded} on the command line, or "
                    f"defaults: [{key}={recorded}] in a YAML file)"
                )
        for ov in appends:
            target = OmegaConf.select(cfg, ov.key, throw_on_missing=False)
            if not isinstance(target, ListConfig):
                example = ov.value if "=" in ov.value else "KEY=VALUE"
                hint = f" (a section: set {ov.key}.{example})" if isinstance(target, DictConfig) else ""
                raise ValueError(f"{ov.key}+={ov.value}: '+=' appends to a list, {ov.key} is not one{hint}")
            target.append(OmegaConf.from_dotlist([f"v={ov.value}"]).v)
        missing = _missing_keys(cfg)
        if missing:
            raise ValueError(f"{missing[0]} is not set (??? in its file): add {missing[0]}=VALUE")
        out = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as err:
        raise ValueError(config_error_message(err, what)) from None
    except (OmegaConfBaseException, yaml.YAMLError) as err:
        raise ValueError(config_error_message(err, what)) from None
    validate_tree(out)
    return out  # type: ignore[return-value]


def _missing_keys(cfg: DictConfig) -> list[str]:
    return sorted(OmegaConf.missing_keys(cfg))


def as_dictconfig(cfg: Any) -> DictConfig:
    """A typed ``DictConfig`` view of a config object; a ``DictConfig`` is returned as it is.

    Lightning's hyper-parameters, ``OmegaConf.save`` and the data readers take this view of the training config.
    """
    return cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)


def load_config(overrides: Sequence[str] | None = None, config_dir: str | Path | None = None) -> TrainConfig:
    """The training config (:class:`TrainConfig`) from ``configs/default.yaml``, groups and ``key=value`` overrides.

    Raises:
        ValueError: A misspelt key, a value of the wrong type, an unknown group name or a malformed override.
        FileNotFoundError: ``config_dir`` has no ``default.yaml`` (for the packaged one: a broken install).
    """
    return load_typed(TrainConfig, overrides, config_dir=config_dir)


def check_train_config(cfg: Any) -> None:
    """Refuses values that the schema's types let through but no run can use (before anything is loaded).

    Args:
        cfg: A :class:`TrainConfig` (or a ``DictConfig`` view of one).

    Raises:
        ValueError: ``bad configuration: <key>=<value> ...`` naming the first such value.
    """

    def get(key: str) -> Any:
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)
        return node

    at_least_one = [
        "data.batch_size",
        "data.eval_batch_size",
        "data.max_length",
        "trainer.max_epochs",
        "trainer.accumulate_grad_batches",
        "trainer.log_every_n_steps",
    ]
    problems = [f"{key}={get(key)} must be at least 1" for key in at_least_one if get(key) < 1]
    if cfg.data.gold_limit is not None and cfg.data.gold_limit < 1:
        problems.append(f"data.gold_limit={cfg.data.gold_limit} must be at least 1 (or null: every post)")
    for key in ("data.num_workers", "data.pad_to_multiple_of", "data.pack_length", "data.synthetic_epochs"):
        if get(key) < 0:
            problems.append(f"{key}={get(key)} must not be negative")
    if cfg.optim.embedding_rows not in EMBEDDING_ROWS:
        problems.append(f"optim.embedding_rows={cfg.optim.embedding_rows!r} is not one of {', '.join(EMBEDDING_ROWS)}")
    if cfg.data.mixing not in MIXING_MODES:
        problems.append(f"data.mixing={cfg.data.mixing!r} is not one of {', '.join(MIXING_MODES)}")
    if not 0 < cfg.data.synthetic_ratio < 1:
        problems.append(f"data.synthetic_ratio={cfg.data.synthetic_ratio} must be between 0 and 1 (exclusive)")
    if not 0 <= cfg.model.dropout < 1 or not 0 <= cfg.model.word_dropout < 1:
        problems.append(
            f"model.dropout={cfg.model.dropout} and model.word_dropout={cfg.model.word_dropout} must be in [0, 1)"
        )
    if not 0 <= cfg.optim.ema < 1:
        problems.append(f"optim.ema={cfg.optim.ema} must be in [0, 1) (0: off)")
    if cfg.model.marginal_kd < 0:
        problems.append(f"model.marginal_kd={cfg.model.marginal_kd} must not be negative (0: off)")
    if cfg.model.rdrop < 0:
        problems.append(f"model.rdrop={cfg.model.rdrop} must not be negative (0: off)")
    if cfg.model.rdrop > 0 and cfg.model.groundability:
        problems.append("model.rdrop does not combine with model.groundability=true (its step shares one pass)")
    if not cfg.data.types:
        problems.append("data.types is empty: name at least one entity type")
    if problems:
        raise ValueError(f"bad configuration: {problems[0]}")


def resolve_data_root(data: Any) -> Path:
    """The folder the split paths of a ``data`` node are relative to (the bundled sample when ``root`` is null)."""
    return Path(data.root).expanduser() if data.root else SAMPLE_ROOT
