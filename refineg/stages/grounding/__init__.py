"""Stage 3 of ReFineG: ground each entity to boxes in the post image, or none."""

from .base import GROUNDERS, Grounder, GroundingQuery, GroundingResult, create_grounder, image_path, list_grounders

__all__ = ["GROUNDERS", "Grounder", "GroundingQuery", "GroundingResult", "create_grounder", "image_path",
           "list_grounders"]

# Registers the ``clip`` grounder.
from . import clip_scorer as _clip_scorer  # noqa: E402, F401
