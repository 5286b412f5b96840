"""Canonical JSONL reader and writer (one :class:`Example` per line)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from refineg.data.errors import DataFormatError
from refineg.data.schema import Example


def read_jsonl(path: str | Path) -> list[Example]:
    """Reads canonical JSONL; blank lines are skipped.

    Raises:
        DataFormatError: Missing file, bad JSON, an invalid record or a duplicate id, naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    examples: list[Example] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                example = Example.from_dict(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataFormatError(path, f"invalid JSON ({err.msg} at column {err.colno})", line=lineno) from None
            except ValueError as err:
                raise DataFormatError(path, str(err), line=lineno) from None
            if example.id in seen:
                raise DataFormatError(path, f"duplicate post id {example.id!r} (first on line {seen[example.id]})",
                                      line=lineno)
            seen[example.id] = lineno
            examples.append(example)
    return examples


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Writes examples as canonical JSONL atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for example in examples:
            fh.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
    os.replace(tmp, path)
