"""The synthesiser registry and the interface every synthesiser implements."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from refineg.data import Example
from refineg.registry import Registry
from refineg.stages.synthesis.report import SynthesisReport

#: Registered synthesisers: ``llm`` (ReFineG's LLM data synthesis) and ``swap`` (LLM-free mention swapping).
SYNTHESIZERS = Registry("synthesizer")


class Synthesizer(Protocol):
    """Turns gold seeds into labelled candidate posts (``source="synthetic"``, provenance in ``meta``).

    Candidates are filtered afterwards (:mod:`refineg.stages.synthesis.filters`); a synthesiser only counts
    what it could not turn into a candidate.
    """

    name: str

    def synthesize(self, seeds: Sequence[Example], report: SynthesisReport) -> list[Example]:
        """Candidate posts for ``seeds``, with ``report.requested`` / ``report.produced`` updated."""
        ...


def create_synthesizer(name: str, **kwargs: Any) -> Synthesizer:
    """Builds the synthesiser registered as ``name`` (``llm`` or ``swap``).

    Raises:
        KeyError: Unknown name; the message lists the known ones.
    """
    return SYNTHESIZERS.create(name, **kwargs)


def list_synthesizers(pattern: str = "*") -> list[str]:
    """Names of the registered synthesisers matching ``pattern``."""
    return SYNTHESIZERS.list(pattern)
