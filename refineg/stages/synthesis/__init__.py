"""Stage 1 of ReFineG: domain-aware data synthesis from gold seeds, with conflict control.

Example:
    >>> from refineg.stages.synthesis import load_synthesis_config, run_synthesis
    >>> cfg = load_synthesis_config(["synthesizer=swap", "seeds=gold.jsonl"])
    >>> output = run_synthesis(cfg, "synthetic.jsonl")
    >>> print(output.report.table())
"""

from refineg.stages.synthesis.base import SYNTHESIZERS, Synthesizer, create_synthesizer, list_synthesizers
from refineg.stages.synthesis.config import (
    ConsistencyConfig,
    FilterConfig,
    SwapConfig,
    SynthesisConfig,
    load_synthesis_config,
)
from refineg.stages.synthesis.consistency import check_consistency, disagreement, train_seed_tagger
from refineg.stages.synthesis.filters import (
    GenericMentionRule,
    NearDuplicateIndex,
    reject_generic,
    remove_duplicates,
    within_length,
)
from refineg.stages.synthesis.labelling import TypeMapper, label_text
from refineg.stages.synthesis.llm_synthesizer import LLMSynthesizer, parse_answer
from refineg.stages.synthesis.prompts import PromptSet, default_prompt_dir
from refineg.stages.synthesis.report import SynthesisReport
from refineg.stages.synthesis.run import (
    SynthesisOutput,
    apply_filters,
    build_synthesizer,
    load_seeds,
    run_synthesis,
    split_by_seed,
)
from refineg.stages.synthesis.swap_synthesizer import SwapSynthesizer, build_gazetteer

__all__ = [
    "SYNTHESIZERS",
    "ConsistencyConfig",
    "FilterConfig",
    "GenericMentionRule",
    "LLMSynthesizer",
    "NearDuplicateIndex",
    "PromptSet",
    "SwapConfig",
    "SwapSynthesizer",
    "SynthesisConfig",
    "SynthesisOutput",
    "SynthesisReport",
    "Synthesizer",
    "TypeMapper",
    "apply_filters",
    "build_gazetteer",
    "build_synthesizer",
    "check_consistency",
    "create_synthesizer",
    "default_prompt_dir",
    "disagreement",
    "label_text",
    "list_synthesizers",
    "load_seeds",
    "load_synthesis_config",
    "parse_answer",
    "reject_generic",
    "remove_duplicates",
    "run_synthesis",
    "split_by_seed",
    "train_seed_tagger",
    "within_length",
]
