"""Errors and warning counters for data readers: every message names the file and line (or record id)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """Bad input data; the message starts with ``file:line`` or ``file[id]``.

    Args:
        path: File that holds the problem.
        message: What is wrong.
        line: 1-based line number, when the format has lines.
        record: Record (post) id, when the format has no lines.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None, record: str | None = None) -> None:
        where = str(path)
        if line is not None:
            where += f":{line}"
        if record is not None:
            where += f" [id {record}]"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.record = str(path), line, record


@dataclass
class ReadReport:
    """Warnings collected while reading; each kind is counted and the first few are logged with their place.

    Attributes:
        counts: Number of warnings per kind (e.g. ``"box_outside_image"``).
        examples: Up to ``max_logged`` messages per kind.
    """

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    max_logged: int = 5

    def warn(self, kind: str, message: str) -> None:
        """Counts one warning of ``kind`` and logs it while fewer than ``max_logged`` were seen."""
        self.counts[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.max_logged:
            shown.append(message)
            logger.warning("%s", message)

    def summary(self) -> str:
        """One line per warning kind with its count; empty when there were none."""
        return "\n".join(f"{kind}: {n}" for kind, n in sorted(self.counts.items()))
