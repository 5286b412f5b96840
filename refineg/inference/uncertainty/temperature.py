"""Temperature scaling (Guo et al., 2017) of a tagger's emissions, fitted on dev by minimising the head's own NLL."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from refineg.data import Example

logger = logging.getLogger(__name__)


class TemperatureScaler(nn.Module):
    """Divides emissions by a single temperature ``T > 0`` (stored as ``log T``).

    For a CRF tagger only the emissions are scaled (transitions keep their trained values), which is what the
    uncertainty heads consume; decoding of the predictions themselves always uses the unscaled emissions.

    Args:
        temperature: Initial temperature.
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.log_t = nn.Parameter(torch.tensor(float(temperature)).log())

    @property
    def temperature(self) -> float:
        """The current temperature."""
        return float(self.log_t.exp())

    def forward(self, emissions: Tensor) -> Tensor:
        """``emissions / T`` (any shape)."""
        return emissions / self.log_t.exp().to(emissions.dtype)

    def fit_emissions(
        self, head: nn.Module, batches: Sequence[tuple[Tensor, Tensor, Tensor]], max_iter: int = 100
    ) -> float:
        """Fits ``T`` by L-BFGS on precomputed ``(emissions, tags, mask)`` batches, minimising ``head.loss``.

        Returns:
            The fitted temperature.
        """
        opt = torch.optim.LBFGS([self.log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")
        words = sum(int(m.sum()) for _, _, m in batches)

        def closure() -> Tensor:
            opt.zero_grad()
            loss = sum(head.loss(self(em), tags, mask).sum() for em, tags, mask in batches) / max(1, words)
            loss.backward()
            return loss

        with torch.enable_grad():
            before = float(closure())
            opt.step(closure)
            after = float(closure())
        logger.info("temperature %.3f (per-word NLL %.4f -> %.4f)", self.temperature, before, after)
        return self.temperature

    def fit(self, module: Any, examples: Sequence[Example], batch_size: int = 64, max_length: int = 128) -> float:
        """Fits ``T`` on labelled posts (dev) with a trained ``TaggerModule``; returns it."""
        from refineg.inference.predictor import TaggerPredictor

        predictor = TaggerPredictor(module, batch_size=batch_size, max_length=max_length)
        batches = []
        with torch.no_grad():
            for _, batch in predictor.batches(examples, labels=True):
                batches.append((module(batch).float().detach(), batch["labels"], batch["word_mask"]))
        self.to(module.device)
        frozen = [(p, p.requires_grad) for p in module.parameters()]
        for p, _ in frozen:  # only T is fitted; keep the tagger's .grad untouched
            p.requires_grad_(False)
        try:
            return self.fit_emissions(module.tagger.head, batches)
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)

    def save(self, path: str | Path) -> None:
        """Writes ``{"temperature": T}`` as JSON."""
        Path(path).write_text(json.dumps({"temperature": self.temperature}))

    @classmethod
    def load(cls, path: str | Path) -> TemperatureScaler:
        """Reads a file written by :meth:`save`."""
        return cls(float(json.loads(Path(path).read_text())["temperature"]))
