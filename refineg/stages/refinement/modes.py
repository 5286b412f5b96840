"""Refinement modes by name, picked by ``refine.mode``.

``gated`` is refineg's uncertainty gate (the default); ``release`` is the released scripts' behaviour (every post
with a predicted entity is sent, the MLLM's entity list replaces the tagger's).

A mode is a function ``(preds, cfg, backend, types) -> (refined posts, report)``.
"""

from __future__ import annotations

from refineg.registry import Registry

REFINEMENT_MODES = Registry("refinement mode")


def list_refinement_modes() -> list[str]:
    """Names of the registered refinement modes."""
    return REFINEMENT_MODES.list()
