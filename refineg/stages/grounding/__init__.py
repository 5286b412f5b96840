"""Stage 3 of ReFineG: ground each entity to boxes in the post image, or none."""

from .base import GROUNDERS, Grounder, GroundingQuery, GroundingResult, create_grounder, image_path, list_grounders

__all__ = [
    "GROUNDERS",
    "Grounder",
    "GroundingQuery",
    "GroundingResult",
    "create_grounder",
    "image_path",
    "list_grounders",
]

from . import mllm  # noqa: E402,F401  (registers the "mllm" grounder)
from .config import GroundConfig, load_ground_config  # noqa: E402
from .run import run_ground  # noqa: E402
from .selector import ContextSelector  # noqa: E402

__all__ += ["ContextSelector", "GroundConfig", "load_ground_config", "run_ground"]
# Registers the ``clip`` grounder.
from . import clip_scorer as _clip_scorer  # noqa: E402, F401
