"""``torch.compile`` strategies for the tagger, chosen by name (``compile=<mode>`` in the training config).

Short posts make the tagger's step launch-bound (thousands of small kernels, the GPU mostly idle), so the useful
strategies are the ones that cut kernel launches and Python overhead:

- ``none``: eager.
- ``backbone``: the whole encoder as one dynamic-shape graph.
- ``layers``: each transformer layer compiled on its own (regional compilation: one compile reused by all layers,
  so compile time stays low).
- ``tagger``: encoder and emission head compiled as one dynamic-shape graph (the CRF loss stays eager: its
  recursion over words would recompile for every post length).
- ``cudagraphs``: like ``tagger`` with CUDA graphs (``mode="reduce-overhead"``); pad batches to a multiple
  (``data.pad_to_multiple_of``) so only a few shapes are ever recorded.

``backbone``, ``layers`` and ``tagger`` also combine with ``cuda_graph=true``, which records the whole training step
(:mod:`refineg.modules.step_graph`) with the compiled kernels inside it. The first batch of each shape runs before
recording, so compilation and autotuning never happen during a capture; inductor's own random-number code is
replaced by eager random ops (``fallback_random``), which capture handles.
"""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)

COMPILE_MODES = ("none", "backbone", "layers", "tagger", "cudagraphs")


def _layer_list(module: nn.Module) -> nn.ModuleList:
    """The longest ``nn.ModuleList`` inside ``module`` (the stack of transformer layers)."""
    lists = [m for m in module.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(module).__name__} has no nn.ModuleList of layers to compile")
    return max(lists, key=len)


def compile_tagger(tagger: nn.Module, mode: str | bool, cuda_graph: bool = False) -> nn.Module:
    """Compiles parts of ``tagger`` in place according to ``mode`` (see the module docstring).

    Args:
        tagger: A :class:`refineg.modules.tagger.SequenceTagger`.
        mode: One of :data:`COMPILE_MODES`; ``True``/``"true"`` mean ``layers``, ``False``/``"false"`` ``none``.
        cuda_graph: The training step will be recorded as CUDA graphs (``cuda_graph=true``).

    Returns:
        The same tagger.

    Raises:
        ValueError: An unknown mode, or ``cudagraphs`` (graphs of its own) with ``cuda_graph``.
    """
    mode = {"true": "layers", "false": "none"}.get(str(mode).lower(), str(mode).lower())
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "none":
        return tagger
    if cuda_graph:
        if mode == "cudagraphs":
            raise ValueError(
                "compile=cudagraphs records CUDA graphs of its own; with cuda_graph=true use compile=layers, "
                "backbone or tagger"
            )
        import torch._inductor.config

        torch._inductor.config.fallback_random = True
    if mode == "backbone":
        tagger.backbone.compile(dynamic=True)
    elif mode == "layers":
        for layer in _layer_list(tagger.backbone):
            layer.compile(dynamic=True)
    else:
        tagger.compile(dynamic=True, **({"mode": "reduce-overhead"} if mode == "cudagraphs" else {}))
    logger.info("torch.compile: %s", mode)
    return tagger
