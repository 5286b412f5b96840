"""Typed configuration of ``refineg zeroshot`` (the zero-shot MLLM baseline), loaded by :mod:`refineg.config`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from refineg.config import CONFIG_DIR, load_typed
from refineg.llm import LLMConfig

# Optional[...]: OmegaConf reads these annotations at run time (see refineg/llm/config.py).


def _default_type_map() -> dict[str, str]:
    return {"PERSON": "PER", "LOCATION": "LOC", "ORGANIZATION": "ORG", "ORGANISATION": "ORG", "MISC": "OTHER"}


@dataclass
class ZeroShotConfig:
    """Settings of the zero-shot baseline.

    Attributes:
        llm: The MLLM (see docs/llm-backends.md).
        types: Entity type inventory (answers with another type are dropped after ``type_map``).
        type_map: Case-insensitive renames applied to answered types before the inventory check (a target
            outside ``types`` is dropped like any unknown type).
        prompts_dir: Folder with ``system.txt`` and ``user.txt`` (placeholders ``$types``, ``$sentence``,
            ``$image_note``, ``$box_format``).
        images_dir: Folder of post images (``Example.image`` is relative to it); ``None`` sends text only.
        max_posts: Only the first this many posts (pilots); ``None`` for all.
        run_dir: The run folder (default: the output file's folder): ``llm_usage.json``, the spend ledger that
            ``llm.max_calls`` counts across reruns, and the response cache ``llm_cache.sqlite`` unless
            ``llm.cache_path`` is set.
    """

    llm: LLMConfig = field(default_factory=LLMConfig)
    types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "OTHER"])
    type_map: dict[str, str] = field(default_factory=_default_type_map)
    prompts_dir: str = str(CONFIG_DIR / "prompts" / "zeroshot")
    images_dir: Optional[str] = None  # noqa: UP045
    max_posts: Optional[int] = None  # noqa: UP045
    run_dir: Optional[str] = None  # noqa: UP045

    def validate(self) -> ZeroShotConfig:
        """Checks values; returns ``self``.

        Raises:
            ValueError: Empty type inventory or a negative ``max_posts``.
        """
        if not self.types:
            raise ValueError("types must not be empty")
        if self.max_posts is not None and self.max_posts < 0:
            raise ValueError("max_posts must be >= 0")
        return self


def load_zeroshot_config(overrides: list[str] | None = None, base: dict[str, Any] | None = None) -> ZeroShotConfig:
    """Builds a :class:`ZeroShotConfig` from ``base`` values and ``key=value`` overrides (``llm.model=...``).

    Raises:
        ValueError: Unknown key, wrong type, malformed override or a value out of range.
    """
    return load_typed(ZeroShotConfig, overrides, base, what="zeroshot")
