"""Typed configuration of ``refineg refine`` (an OmegaConf structured config with ``key=value`` overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from refineg.config import CONFIG_DIR, load_typed
from refineg.llm import LLMConfig

# Optional[...] rather than ``X | None``: OmegaConf reads these annotations at run time (see refineg/llm/config.py).

CHECKS = ("span", "type")


@dataclass
class RefineConfig:
    """What to delegate to the MLLM and how.

    Attributes:
        mode: A registered refinement mode (:mod:`.modes`): ``gated`` (refineg: entities over the uncertainty gate
            get span and type/box checks, merged under strict rules) or ``release`` (the released scripts: no gate,
            every post with a predicted entity is sent with the grounding prompt and the answered entity list
            replaces the tagger's; :mod:`.release`).
        head: Uncertainty head to compute with ``ckpt``; ``None`` uses the ``uncertainty`` already in the file.
        ckpt: Tagger checkpoint for ``head`` (its predictions replace the file's entities, same posts).
        head_kwargs: Keyword arguments of the head (e.g. ``{samples: 8, dropout: 0.1}`` for ``mc_dropout``).
        temperature: Temperature-scaler JSON written by ``refineg calibrate`` (applied before the head).
        tau: Entities with uncertainty ``u <= tau`` are kept, the others delegated (ReFineG: 0.5).
        delegation_rate: Instead of ``tau``: delegate this share of the predicted entities, most uncertain first.
        call_budget: Most MLLM requests of the run; the most uncertain delegated entities are served first, the
            rest keep the small model's answer (counted as ``over_budget``).
        per_field: Run the span check only for entities whose span uncertainty exceeds ``tau`` and the type check
            only where the type uncertainty does (needs a head with per-field values; ``tau`` mode only).
        checks: Which checks delegated entities get: ``span`` (boundaries) and/or ``type`` (type and box).
        types: Entity type inventory (replaced by the checkpoint's when ``ckpt`` is set).
        backend: ``mllm`` (a real model through ``llm``), ``oracle`` or ``noisy-oracle`` (simulations from ``gold``).
        llm: The MLLM backend (see docs/llm-backends.md).
        gold: Gold canonical JSONL (simulation backends only).
        oracle_accuracy: ``noisy-oracle``: probability of the gold answer (otherwise it keeps or corrupts).
        seed: Seed of the simulations and of random delegation.
        random_delegation: Delegate a random subset (same size as the uncertainty rule would) - the baseline.
        prompts_dir: Folder with ``system.txt``, ``span_check.txt`` and ``type_box_check.txt``.
        images_dir: Folder of post images (``Example.image`` is relative to it); ``None`` sends no image.
        max_boundary_change: A corrected span may move each boundary by at most this many words.
        allow_drop: Remove an entity when the span check answers that it is no entity.
        use_boxes: Keep the box of a type check (in original pixels); otherwise boxes are left unchanged.
        missed: Also send the missed-entity candidates of ``meta["missed_candidates"]`` (needs ``ckpt``/``head``
            or a file that has them) for confirmation; off by default, ReFineG only checks predicted entities.
        missed_threshold: Least non-O probability of a missed-entity candidate's words.
        never_grounded: ``release`` mode: types the grounding prompt says never get a box.
        release_prompts_dir: ``release`` mode: folder with the grounding prompt's ``system.txt`` and ``query.txt``.
        run_dir: The run folder (default: the output file's folder): ``llm_usage.json``, the spend ledger that
            ``llm.max_calls`` counts across reruns, and the response cache ``llm_cache.sqlite`` unless
            ``llm.cache_path`` is set.
    """

    mode: str = "gated"
    head: Optional[str] = None  # noqa: UP045
    ckpt: Optional[str] = None  # noqa: UP045
    head_kwargs: dict[str, Any] = field(default_factory=dict)
    temperature: Optional[str] = None  # noqa: UP045
    tau: float = 0.5
    delegation_rate: Optional[float] = None  # noqa: UP045
    call_budget: Optional[int] = None  # noqa: UP045
    per_field: bool = False
    checks: list[str] = field(default_factory=lambda: list(CHECKS))
    types: list[str] = field(default_factory=lambda: ["PER", "LOC", "ORG", "OTHER"])
    backend: str = "mllm"
    llm: LLMConfig = field(default_factory=LLMConfig)
    gold: Optional[str] = None  # noqa: UP045
    oracle_accuracy: float = 0.8
    seed: int = 0
    random_delegation: bool = False
    prompts_dir: str = str(CONFIG_DIR / "prompts" / "refinement")
    images_dir: Optional[str] = None  # noqa: UP045
    max_boundary_change: int = 2
    allow_drop: bool = True
    use_boxes: bool = True
    missed: bool = False
    missed_threshold: float = 0.5
    never_grounded: list[str] = field(default_factory=lambda: ["LOC"])
    release_prompts_dir: str = str(CONFIG_DIR / "prompts" / "grounding")
    run_dir: Optional[str] = None  # noqa: UP045

    def validate(self) -> RefineConfig:
        """Checks value ranges; returns ``self``.

        Raises:
            ValueError: A value out of range, an unknown check name or an unknown mode.
        """
        from .modes import list_refinement_modes

        if self.mode not in list_refinement_modes():
            raise ValueError(f"refine mode: unknown mode {self.mode!r}; known: {', '.join(list_refinement_modes())}")
        if not 0 <= self.tau <= 1:
            raise ValueError(f"tau must be in [0, 1], got {self.tau}")
        if self.delegation_rate is not None and not 0 <= self.delegation_rate <= 1:
            raise ValueError(f"delegation_rate must be in [0, 1], got {self.delegation_rate}")
        if self.call_budget is not None and self.call_budget < 0:
            raise ValueError("call_budget must be >= 0")
        bad = [c for c in self.checks if c not in CHECKS]
        if bad or not self.checks:
            raise ValueError(f"checks must be a non-empty subset of {CHECKS}, got {list(self.checks)}")
        if self.per_field and self.delegation_rate is not None:
            raise ValueError("per_field works with tau only, not with delegation_rate")
        if not 0 <= self.oracle_accuracy <= 1:
            raise ValueError("oracle_accuracy must be in [0, 1]")
        return self


def load_refine_config(
    overrides: list[str] | None = None, *layers: Any, base: dict[str, Any] | None = None
) -> RefineConfig:
    """Builds a :class:`RefineConfig` from ``base``, ``layers`` (dicts, YAML files) and ``key=value`` overrides.

    The grammar of :mod:`refineg.config` (``None`` means null, ``checks+=type`` appends, a misspelt key is an error).

    Raises:
        ValueError: Unknown key, wrong type, malformed override or value out of range.
    """
    return load_typed(RefineConfig, overrides, base, *layers, what="refine")
