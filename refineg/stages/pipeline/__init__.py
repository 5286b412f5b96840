"""``refineg pipeline``: synthesise -> train -> predict with uncertainty -> refine -> ground -> evaluate.

Each stage is skipped when its artifact is up to date (see :mod:`refineg.stages.pipeline.run`).
"""

from .config import PipelineConfig, load_pipeline_config
from .run import Stage, StageFailedError, StageOutcome, StageRunner, run_pipeline
from .stages import build_stages, call_run_ground

__all__ = [
    "PipelineConfig",
    "Stage",
    "StageFailedError",
    "StageOutcome",
    "StageRunner",
    "build_stages",
    "call_run_ground",
    "load_pipeline_config",
    "run_pipeline",
]
