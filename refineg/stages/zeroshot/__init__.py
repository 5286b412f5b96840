"""The zero-shot MLLM baseline (ReFineG's GPT-4o comparison): the MLLM alone extracts entities, types and boxes.

``config.py`` (:class:`ZeroShotConfig`), ``prompts.py`` (:class:`ZeroShotPrompts`), ``run.py`` (the entry point
:func:`run_zeroshot`, answer parsing and mapping); the MLLM comes from the ``LLM_BACKENDS`` registry.
"""

from refineg.data.spans import map_spans

from .config import ZeroShotConfig, load_zeroshot_config
from .prompts import ZeroShotPrompts
from .run import entities_from_answer, is_zeroshot_answer, run_zeroshot, zeroshot_examples

__all__ = [
    "ZeroShotConfig",
    "ZeroShotPrompts",
    "entities_from_answer",
    "is_zeroshot_answer",
    "load_zeroshot_config",
    "map_spans",
    "run_zeroshot",
    "zeroshot_examples",
]
