"""Stage 2 of ReFineG: uncertainty-based delegation of predicted entities to a frozen MLLM.

Entities with uncertainty ``u <= tau`` (or outside the most uncertain ``delegation_rate``) keep the small model's
answer; the others get a span check and a type-and-box check by the MLLM (or by a simulation: ``oracle``,
``noisy-oracle``), whose answers are merged under strict rules (:mod:`.merge`). ``mode=release`` does what the
released scripts do instead (:mod:`.release`).
"""

from .base import (
    REFINEMENT_BACKENDS,
    Answer,
    MLLMBackend,
    NoisyOracleBackend,
    OracleBackend,
    PostQuery,
    Query,
    RefinementBackend,
    create_refinement_backend,
    list_refinement_backends,
)
from .calibration import auroc, ece, entity_errors, field_report, head_report, reliability, risk_coverage
from .config import RefineConfig, load_refine_config
from .delegation import Delegation, select_delegated
from .merge import locate_span, merge_span, merge_type
from .modes import REFINEMENT_MODES, list_refinement_modes
from .prompts import RefinementPrompts
from .release import find_spans, refine_release, replace_entities
from .run import refine_examples, run_refine, with_uncertainty

__all__ = [
    "REFINEMENT_BACKENDS",
    "REFINEMENT_MODES",
    "PostQuery",
    "Answer",
    "Delegation",
    "MLLMBackend",
    "NoisyOracleBackend",
    "OracleBackend",
    "Query",
    "RefineConfig",
    "RefinementBackend",
    "RefinementPrompts",
    "auroc",
    "create_refinement_backend",
    "ece",
    "entity_errors",
    "field_report",
    "head_report",
    "find_spans",
    "list_refinement_backends",
    "list_refinement_modes",
    "load_refine_config",
    "locate_span",
    "merge_span",
    "merge_type",
    "refine_examples",
    "refine_release",
    "replace_entities",
    "reliability",
    "risk_coverage",
    "run_refine",
    "select_delegated",
    "with_uncertainty",
]
