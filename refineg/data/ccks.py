"""CCKS2025 GMNER JSON reader and writer.

``sample_text.json`` is ``{id: {"text": str}}``; ``sample_entity.json`` is
``{id: [{"name", "label", "bnd" | "bndbox": {xmin, ymin, xmax, ymax} | null}]}``.

Texts are tokenised with :func:`refineg.data.tokenize.word_tokenize`; entries with the same name and label become one
entity with several boxes; names are located by exact token match, longest first.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from refineg.data.errors import DataFormatError, ReadReport
from refineg.data.files import dump_json, load_json
from refineg.data.schema import Entity, Example, box_problem, clip_box
from refineg.data.spans import locate_spans
from refineg.data.tokenize import word_tokenize

CCKS_TYPES = ("vehicle", "aircraft", "vessel", "weapon", "location", "other")


def _load_json(path: Path) -> dict[str, Any]:
    data = load_json(path)
    if not isinstance(data, dict):
        raise DataFormatError(path, "expected a JSON object keyed by post id")
    return data


def _parse_box(raw: Any, path: Path, post_id: str, report: ReadReport) -> list[float] | None:
    """The box of one entry; negative coordinates are clipped to 0 (warning ``box_outside_image``)."""
    if raw in (None, "", "Null", "null", [], {}):
        return None
    try:
        box = (
            [float(raw[k]) for k in ("xmin", "ymin", "xmax", "ymax")]
            if isinstance(raw, dict)
            else [float(v) for v in raw]
        )
    except (KeyError, TypeError, ValueError):
        raise DataFormatError(path, f"non-numeric or incomplete box {raw!r}", record=post_id) from None
    problem = box_problem(box)
    if problem is not None:
        raise DataFormatError(path, f"{problem} (from {raw!r})", record=post_id)
    clipped = clip_box(box, None)
    if clipped is None:
        raise DataFormatError(path, f"box {box} lies entirely outside the image (negative coordinates)", record=post_id)
    if clipped != box:
        report.warn(
            "box_outside_image", f"{path} [id {post_id}]: box {box} has negative coordinates; clipped to {clipped}"
        )
    return clipped


def read_ccks(
    text_json: str | Path,
    entity_json: str | Path | None,
    types: Iterable[str] | None = CCKS_TYPES,
    report: ReadReport | None = None,
    source: str = "gold",
) -> list[Example]:
    """Reads CCKS2025-style JSON.

    Args:
        text_json: ``sample_text.json``.
        entity_json: ``sample_entity.json`` (``None`` for unlabelled test posts).
        types: Allowed labels (``None`` allows any).
        report: Collects ``entity_not_found`` warnings (names absent from the text are dropped and counted) and
            ``box_outside_image`` ones (negative coordinates are clipped to 0).
        source: Source recorded on every example.

    Raises:
        DataFormatError: Missing file, bytes that are not UTF-8, bad JSON, a bad box (non-numeric, not finite,
            inverted, entirely at negative coordinates), unknown label, entities that are not a list, or an entity
            post id without text.
    """
    report = report if report is not None else ReadReport()
    text_path, entity_path = Path(text_json), Path(entity_json) if entity_json is not None else None
    texts = _load_json(text_path)
    labels = _load_json(entity_path) if entity_path is not None else {}
    unknown_ids = sorted(set(labels) - set(texts))
    if unknown_ids:
        raise DataFormatError(
            entity_path, f"post id(s) without text in {text_path.name}: {unknown_ids[:5]}", record=unknown_ids[0]
        )
    allowed = set(types) if types is not None else None
    examples = []
    for post_id, value in texts.items():
        text = value.get("text") if isinstance(value, dict) else None
        if not isinstance(text, str):
            raise DataFormatError(text_path, 'expected {"text": str}', record=post_id)
        tokens = word_tokenize(text)
        grouped: dict[tuple[str, str], list[list[float]]] = {}
        items = labels.get(post_id, [])
        if not isinstance(items, list):
            raise DataFormatError(entity_path, f"expected a list of entities, got {items!r}", record=post_id)
        for item in items:
            if not isinstance(item, dict) or "name" not in item or "label" not in item:
                raise DataFormatError(entity_path, f"entity needs 'name' and 'label': {item!r}", record=post_id)
            label = str(item["label"])
            if allowed is not None and label not in allowed:
                raise DataFormatError(
                    entity_path, f"unknown label {label!r}; allowed: {sorted(allowed)}", record=post_id
                )
            boxes = grouped.setdefault((str(item["name"]), label), [])
            box = _parse_box(item.get("bnd", item.get("bndbox")), entity_path, post_id, report)
            if box is not None and box not in boxes:
                boxes.append(box)
        keys = list(grouped)
        entities = []
        for (name, label), span in zip(keys, locate_spans(tokens, [k[0] for k in keys])):
            if span is None:
                report.warn(
                    "entity_not_found", f"{entity_path} [id {post_id}]: entity {name!r} not found in the text; dropped"
                )
                continue
            entities.append(Entity(span[0], span[1], label, grouped[(name, label)]))
        examples.append(
            Example(
                id=str(post_id),
                tokens=tokens,
                image=f"{post_id}.jpg",
                entities=sorted(entities, key=lambda e: e.start),
                source=source,
            )
        )
    return examples


def write_ccks(
    examples: Iterable[Example], text_json: str | Path, entity_json: str | Path, box_key: str = "bnd"
) -> None:
    """Writes CCKS2025-style JSON; one entry per box (``null`` box for ungroundable entities).

    Raises:
        DataFormatError: A box coordinate that is not finite (JSON cannot hold it); nothing is written then.
    """
    texts, entities = {}, {}
    for ex in examples:
        texts[ex.id] = {"text": " ".join(ex.tokens)}
        rows = []
        for ent in ex.entities:
            boxes = ent.boxes or [None]
            for box in boxes:
                bnd = None if box is None else dict(zip(("xmin", "ymin", "xmax", "ymax"), box))
                rows.append({"name": ent.text(ex.tokens), "label": ent.type, box_key: bnd})
        dump_json(rows, entity_json, record=ex.id)  # refuses a non-finite box before anything is written
        entities[ex.id] = rows
    for path, data in ((text_json, texts), (entity_json, entities)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(dump_json(data, path, ensure_ascii=False, indent=1), encoding="utf-8")
