"""Canonical JSONL reader and writer (one :class:`Example` per line)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from refineg.data.errors import DataFormatError, ReadReport
from refineg.data.files import dump_json, iter_lines, parse_json
from refineg.data.schema import Example, clip_box


def read_jsonl(
    path: str | Path, types: Iterable[str] | None = None, report: ReadReport | None = None, allow_overlaps: bool = False
) -> list[Example]:
    """Reads canonical JSONL; blank lines are skipped.

    Boxes that stick out of the image (negative coordinates, or beyond ``image_size`` when it is given) are clipped
    to it and counted as ``box_outside_image`` warnings, as the xml readers do.

    Args:
        path: The file.
        types: Allowed entity types (``None`` allows any).
        report: Collects the warnings; a fresh one if ``None``.
        allow_overlaps: Accept overlapping and duplicate entities (predictions to score); gold files stay strict.

    Raises:
        DataFormatError: Missing file, bytes that are not UTF-8, bad JSON, an invalid record, an unknown entity type,
            a box entirely outside the image or a duplicate id, naming file and line.
    """
    path = Path(path)
    report = report if report is not None else ReadReport()
    allowed = set(types) if types is not None else None
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        record = parse_json(line, path, line=lineno)
        try:
            example = Example.from_dict(record, allow_overlaps=allow_overlaps)
        except ValueError as err:
            raise DataFormatError(path, str(err), line=lineno) from None
        if example.id in seen:
            raise DataFormatError(
                path, f"duplicate post id {example.id!r} (first on line {seen[example.id]})", line=lineno
            )
        seen[example.id] = lineno
        for ent in example.entities:
            if allowed is not None and ent.type not in allowed:
                raise DataFormatError(
                    path,
                    f"post {example.id}: unknown entity type {ent.type!r}; allowed: {sorted(allowed)}",
                    line=lineno,
                )
            for k, box in enumerate(ent.boxes):
                clipped = clip_box(box, example.image_size)
                if clipped == box:
                    continue
                size = example.image_size
                image = "the image" + (f" ({size[0]}x{size[1]})" if size is not None else " (negative coordinates)")
                where = f"post {example.id}, entity {ent.text(example.tokens)!r}: box {box}"
                if clipped is None:
                    raise DataFormatError(path, f"{where} lies entirely outside {image}", line=lineno)
                report.warn("box_outside_image", f"{path}:{lineno}: {where} outside {image}; clipped to {clipped}")
                ent.boxes[k] = clipped
        examples.append(example)
    return examples


def write_jsonl(examples: Iterable[Example], path: str | Path) -> None:
    """Writes examples as canonical JSONL atomically (a temporary file renamed into place).

    Raises:
        DataFormatError: A post holds a number that is not finite (NaN or infinity, which JSON cannot hold: a score,
            a box coordinate, a value in ``meta``); the message names the post and the field, and ``path`` is left
            as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            for example in examples:
                fh.write(dump_json(example.to_dict(), path, record=example.id, ensure_ascii=False) + "\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
