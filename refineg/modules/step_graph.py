"""The training step's forward, loss, backward and gradient clipping as one CUDA graph per batch shape.

At the paper's batch size (32 short posts) a tagger step is a few milliseconds of GPU math behind thousands of
kernel launches, the CRF's per-word recursion and autograd's bookkeeping, all paid in Python on the CPU. Recording
the step once per padded batch shape and replaying it makes that cost one ``replay()`` call.

How it works (``cuda_graph=true`` in the training config; see
:meth:`refineg.modules.tagger_module.TaggerModule.use_step_graph`):

- The batch's tensors that the step reads are its *signature*; pad batches to a multiple
  (``data.pad_to_multiple_of``) so only a few signatures occur.
- The first time a signature occurs the step runs eagerly (on a side stream, as CUDA graph capture requires as
  warm-up). The second time it is recorded: gradients are set to ``None`` first, so backward writes them into the
  graph's own memory, and the graph's gradient tensors are kept. Every later time the batch is copied into the
  graph's input buffers and the graph is replayed.
- After a replay the parameters' ``.grad`` point at that graph's gradients, so the optimizer step (fused AdamW,
  a handful of kernels) and the learning-rate schedule run eagerly through Lightning as usual.
- All graphs share one memory pool. That is safe because every replay is self-contained: it reads only the
  parameters and its input buffers (outside the pool) and its results (loss, gradients) are used before the next
  replay. Each graph keeps its own gradient tensors, so every recorded shape costs 4 bytes per trained parameter
  (2.2 GB for XLM-R-large with its 250k-word embedding) on top of the activations; ``max_graphs`` caps that, and
  shapes beyond the cap run eagerly.

On a CPU (tests) every step runs eagerly through the same code path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: Batch entries a tagging step reads; everything else (indices, groundability targets) is ignored. ``targets``
#: (soft or partial pseudo-labels) is part of the signature, so a batch with them never replays a graph recorded
#: without them (which would train on the hard ``labels`` instead).
STEP_KEYS = (
    "input_ids",
    "attention_mask",
    "word_index",
    "word_mask",
    "casing",
    "labels",
    "targets",
    "weight",
    "pixel_values",
    "image_mask",
    "position_ids",
    "segment_ids",
    "cu_seqlens",
)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, Tensor]
    loss: Tensor
    grads: list[Tensor | None]


class GraphedStep:
    """Runs ``loss_fn(batch)`` + backward + clipping, replayed from a CUDA graph per batch signature.

    Args:
        loss_fn: Maps a batch dict to a scalar loss (the forward pass and the loss; no ``backward``).
        params: The trained parameters (their ``.grad`` are written).
        clip: Clip the gradients' global norm to this value (``None``/0: no clipping).
        max_graphs: Signatures beyond this many run eagerly (bounds memory and recording time).
    """

    def __init__(
        self,
        loss_fn: Callable[[dict[str, Tensor]], Tensor],
        params: list[nn.Parameter],
        clip: float | None = None,
        max_graphs: int = 16,
    ) -> None:
        self.loss_fn = loss_fn
        self.params = list(params)
        self.clip = clip or None
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, _Graph] = {}
        self.seen: set[tuple] = set()
        self.replays = 0
        self.eager_steps = 0
        self._pool = None
        self._warned_full = False
        self._stream: torch.cuda.Stream | None = None

    @staticmethod
    def signature(batch: dict[str, Tensor]) -> tuple:
        """The shapes and dtypes of the step's batch entries (one graph per distinct signature)."""
        return tuple((k, tuple(batch[k].shape), batch[k].dtype) for k in STEP_KEYS if k in batch)

    def __call__(self, batch: dict[str, Tensor]) -> Tensor:
        """Computes the loss and leaves the (clipped) gradients in the parameters' ``.grad``.

        Returns:
            The detached scalar loss.
        """
        device = batch["input_ids"].device
        if device.type != "cuda":
            return self._eager(batch)
        key = self.signature(batch)
        entry = self.graphs.get(key)
        if entry is None:
            if key not in self.seen or len(self.graphs) >= self.max_graphs:
                if key in self.seen and not self._warned_full:
                    self._warned_full = True
                    logger.warning(
                        "%d CUDA graphs recorded (cuda_graph_shapes); further batch shapes run eagerly: "
                        "raise data.pad_to_multiple_of for fewer shapes",
                        self.max_graphs,
                    )
                self.seen.add(key)
                return self._on_side_stream(self._eager, batch)
            entry = self._record(key, batch)
        for name, buf in entry.inputs.items():
            buf.copy_(batch[name], non_blocking=True)
        entry.graph.replay()
        self.replays += 1
        for param, grad in zip(self.params, entry.grads):
            param.grad = grad
        return entry.loss.detach().clone()

    def _autocast(self, device: torch.device) -> torch.autocast:
        """The caller's autocast setting, without the weight-cast cache (which must not outlive a capture)."""
        enabled = torch.is_autocast_enabled(device.type)
        dtype = torch.get_autocast_dtype(device.type) if enabled else None
        return torch.autocast(device.type, dtype=dtype, enabled=enabled, cache_enabled=False)

    def _backward(self, batch: dict[str, Tensor]) -> Tensor:
        with self._autocast(batch["input_ids"].device):
            loss = self.loss_fn(batch)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        return loss

    def _eager(self, batch: dict[str, Tensor]) -> Tensor:
        for param in self.params:
            param.grad = None
        self.eager_steps += 1
        return self._backward(batch).detach()

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _on_side_stream(self, fn: Callable[[dict[str, Tensor]], Tensor], batch: dict[str, Tensor]) -> Tensor:
        stream = self._side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            out = fn(batch)
        torch.cuda.current_stream().wait_stream(stream)
        return out

    def _record(self, key: tuple, batch: dict[str, Tensor]) -> _Graph:
        inputs = {k: batch[k].clone() for k, *_ in key}
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        for param in self.params:
            param.grad = None
        torch.cuda.synchronize()
        # thread_local: data-loader pin-memory threads keep using CUDA while this thread records
        with torch.cuda.graph(graph, pool=self._pool, stream=self._side_stream(), capture_error_mode="thread_local"):
            loss = self._backward(inputs)
        entry = _Graph(graph, inputs, loss, [p.grad for p in self.params])
        self.graphs[key] = entry
        logger.info("recorded CUDA graph %d for batch shape %s", len(self.graphs), dict((k, s) for k, s, _ in key))
        return entry
