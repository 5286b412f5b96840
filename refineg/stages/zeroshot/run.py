"""The zero-shot MLLM baseline (ReFineG's GPT-4o comparison): the MLLM alone extracts entities, types and boxes.

Per post one chat with the image and the post's words asks for a JSON list
``[{"entity", "entity_type", "bounding_box"}]``. Entity strings are mapped back to token spans (exact tokens first,
then ignoring case and spaces; longest first, no overlaps), types to the inventory, boxes from the model's
coordinates (``llm.box_format``) to original pixels. Whatever cannot be used is dropped and counted; an unparseable
or failed answer gives the post no entities. The output is canonical JSONL, scored by ``refineg evaluate`` like
every other system.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.data.files import inside_folder
from refineg.data.spans import map_spans
from refineg.llm import ImageScale, build_llm_backend, system, user
from refineg.llm.answers import ZEROSHOT
from refineg.llm.boxes import BoxConvention

from .config import ZeroShotConfig
from .prompts import ZeroShotPrompts

logger = logging.getLogger(__name__)


def _as_items(parsed: Any) -> list[Any] | None:
    if isinstance(parsed, list):
        return parsed
    if isinstance(parsed, dict):
        for key in ("entities", "entity_list", "results"):
            if isinstance(parsed.get(key), list):
                return parsed[key]
        if "entity" in parsed:
            return [parsed]
    return None


def is_zeroshot_answer(parsed: Any) -> bool:
    """Whether a decoded JSON value has the shape of an answer: entity objects (or none) in a list or wrapped."""
    items = _as_items(parsed)
    return items is not None and (not items or any(isinstance(i, dict) and "entity" in i for i in items))


def _box(raw: Any) -> list[float] | None | str:
    """A ``[x1, y1, x2, y2]`` box, ``None`` for "no box", or ``"invalid"``."""
    if raw is None or raw == [] or (isinstance(raw, str) and raw.strip().lower() in ("", "null", "none", "[]")):
        return None
    if isinstance(raw, list) and len(raw) == 1 and isinstance(raw[0], list):
        raw = raw[0]  # one box wrapped in a list
    if (
        isinstance(raw, list)
        and len(raw) == 4
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
        and raw[0] < raw[2]
        and raw[1] < raw[3]
    ):
        return [float(v) for v in raw]
    return "invalid"


def entities_from_answer(
    items: Sequence[Any],
    tokens: Sequence[str],
    types: Sequence[str],
    type_map: dict[str, str],
    scale: ImageScale | None,
    counts: Counter[str],
) -> list[Entity]:
    """Turns the answered items of one post into entities (counting every item dropped or changed).

    Args:
        items: The decoded JSON list.
        tokens: The post's tokens.
        types: Type inventory.
        type_map: Renames of answered types (case-insensitive keys).
        scale: Sent-to-original box mapping of the post's image, or ``None`` when no image was sent.
        counts: Receives ``item_invalid``, ``type_invalid``, ``unlocated``, ``box_invalid``, ``box_missing`` (an
            image was sent but the item has no ``bounding_box`` key), ``box_without_image``, ``kept`` and
            ``boxed``.

    Returns:
        Entities sorted by start; boxes in original pixels.
    """
    by_upper = {t.upper(): t for t in types}
    renames = {k.upper(): v for k, v in type_map.items()}
    usable: list[tuple[str, str, Any]] = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("entity"), str) or not item["entity"].strip():
            counts["item_invalid"] += 1
            continue
        raw_type = str(item.get("entity_type", item.get("type", ""))).strip().upper()
        etype = by_upper.get(raw_type) or by_upper.get(renames.get(raw_type, "").upper())
        if etype is None:
            counts["type_invalid"] += 1
            continue
        has_box = "bounding_box" in item or "box" in item
        usable.append((item["entity"].strip(), etype, item.get("bounding_box", item.get("box")), has_box))
    spans = map_spans(tokens, [name for name, _, _, _ in usable])
    out = []
    for (_, etype, raw_box, has_box), span in zip(usable, spans):
        if span is None:
            counts["unlocated"] += 1
            continue
        ent = Entity(span[0], span[1], etype)
        box = _box(raw_box)
        if not has_box and scale is not None:
            counts["box_missing"] += 1
        elif box == "invalid":
            counts["box_invalid"] += 1
        elif box is not None and scale is None:
            counts["box_without_image"] += 1
        elif box is not None:
            orig = scale.to_original(box)
            if orig[0] < orig[2] and orig[1] < orig[3]:
                ent.boxes = [orig]
                counts["boxed"] += 1
            else:
                counts["box_invalid"] += 1
        counts["kept"] += 1
        out.append(ent)
    return sorted(out, key=lambda e: e.start)


def zeroshot_examples(
    posts: Sequence[Example], cfg: ZeroShotConfig, llm: Any, progress: bool = True
) -> tuple[list[Example], dict[str, Any]]:
    """Asks ``llm`` (a :mod:`refineg.llm` backend) for the entities of every post.

    Returns:
        Predicted posts (same ids and order; ``meta["zeroshot"]`` holds the answer status) and a report with post
        and entity counts.
    """
    prompts = ZeroShotPrompts.load(cfg.prompts_dir)
    convention = BoxConvention.from_config(llm.config)
    convs, scales = [], []
    for post in posts:
        path = (
            inside_folder(cfg.images_dir, post.image, "image", record=post.id)
            if cfg.images_dir and post.image
            else None
        )
        scale = llm.image_scale(path) if path is not None and path.is_file() else None
        sys_text, user_text = prompts.render(post.tokens, cfg.types, scale, convention)
        convs.append([system(sys_text), user(path, user_text) if scale else user(user_text)])
        scales.append(scale)
    results = llm.chat_many(
        convs,
        stage="zeroshot",
        json_accept=is_zeroshot_answer,
        answer=ZEROSHOT,
        items=[p.id for p in posts],
        progress=progress,
    )
    counts: Counter[str] = Counter()
    preds = []
    for post, scale, result in zip(posts, scales, results):
        items = _as_items(result.parsed) if result.ok else None
        if result.ok and items is not None:
            status = "ok"
            counts["returned"] += len(items)
            ents = entities_from_answer(items, post.tokens, cfg.types, cfg.type_map, scale, counts)
        else:
            status = (
                "failed"
                if not result.ok and not (result.error or "").startswith(("invalid_json", "truncated"))
                else "unparseable"
            )
            ents = []
        counts[f"posts_{status}"] += 1
        size = scale.original_size if scale else post.image_size
        preds.append(
            Example(
                post.id,
                list(post.tokens),
                post.image,
                ents,
                source="predicted",
                image_size=size,
                meta={"zeroshot": {"status": status, "image_sent": scale is not None}},
            )
        )
    report = {
        "posts": len(posts),
        "images_sent": sum(s is not None for s in scales),
        "posts_ok": counts.pop("posts_ok", 0),
        "posts_unparseable": counts.pop("posts_unparseable", 0),
        "posts_failed": counts.pop("posts_failed", 0),
        "entities_returned": counts.pop("returned", 0),
        "entities_kept": counts.pop("kept", 0),
        "entities_boxed": counts.pop("boxed", 0),
        "dropped_or_changed": dict(sorted(counts.items())),
    }
    if report["posts_unparseable"] or report["posts_failed"]:
        logger.warning(
            "zeroshot: %d unparseable and %d failed answer(s) gave their posts no entities",
            report["posts_unparseable"],
            report["posts_failed"],
        )
    return preds, report


def run_zeroshot(
    cfg: ZeroShotConfig, data_path: str | Path, out_path: str | Path, progress: bool = True
) -> dict[str, Any]:
    """``refineg zeroshot``: reads posts, asks the MLLM, writes ``out_path`` and ``<out>.report.json``."""
    cfg.validate()
    out_path = Path(out_path)
    posts = read_jsonl(data_path)
    if cfg.max_posts is not None:
        posts = posts[: cfg.max_posts]
    llm = build_llm_backend(cfg.llm, run_dir=cfg.run_dir or out_path.parent)
    try:
        preds, report = zeroshot_examples(posts, cfg, llm, progress)
        report["usage"] = llm.usage.to_dict()
    finally:
        llm.close()
    report["llm"] = {k: v for k, v in vars(cfg.llm).items() if k not in ("extra",)}
    write_jsonl(preds, out_path)
    tmp = out_path.with_suffix(".report.json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(out_path.with_suffix(".report.json"))
    return report
