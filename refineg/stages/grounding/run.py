"""``refineg ground``: select demonstrations, ask the grounder, write the grounded posts and a summary.

The output grows one chunk of posts at a time in ``<out>.partial`` (flushed and synced), so a crash loses at most
the chunk in flight, and the LLM response cache makes re-asking that chunk free. A restart with the same inputs
and configuration resumes from the partial file; the finished file replaces it atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from refineg.data import Example, read_jsonl, write_jsonl
from refineg.data.files import dump_json

from .base import Grounder, GroundingQuery, create_grounder, image_path
from .config import GroundConfig, load_ground_config
from .images import PostImages
from .selector import ContextSelector

log = logging.getLogger(__name__)

#: Why an entity has no box (``meta["grounding"]["reasons"]``); ``grounded`` when it has one. ``model_none``: the
#: answer said none; ``answer_problem``: the answer's part for the entity was missing or unusable (no box key,
#: malformed or dropped boxes; see ``meta["grounding"]["problems"]``).
REASONS = (
    "grounded",
    "never_grounded_type",
    "below_groundability",
    "no_image",
    "model_none",
    "answer_problem",
    "failed",
)


def grounder_kwargs(cfg: GroundConfig, run_dir: Path) -> dict[str, Any]:
    """Keyword arguments for ``create_grounder(cfg.grounder.name, ...)``.

    The ``mllm`` section for ``mllm``, then ``grounder.kwargs`` on top. An unset LLM cache becomes
    ``<run_dir>/grounding_llm_cache.sqlite`` so that a re-run never repeats a call.
    """
    kwargs: dict[str, Any] = {}
    if cfg.grounder.name == "mllm":
        m = cfg.mllm
        llm = dataclasses.replace(m.llm)
        if llm.cache_path is None:
            llm.cache_path = str(run_dir / "grounding_llm_cache.sqlite")
        kwargs = {
            "llm": llm,
            "prompts_dir": m.prompts_dir,
            "types": list(cfg.types),
            "never_grounded": list(cfg.never_grounded),
            "max_boxes": m.max_boxes,
            "min_box_side": m.min_box_side,
            "max_area_fraction": m.max_area_fraction,
            "run_dir": run_dir,
        }
    kwargs.update(cfg.grounder.kwargs)
    return kwargs


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _run_fingerprint(cfg: GroundConfig, pred: Path, pool: Path, images: str | Path | None) -> str:
    material = {
        "cfg": dataclasses.asdict(cfg),
        "pred": _file_sha(pred),
        "pool": _file_sha(pool),
        "images": str(Path(images).resolve()) if images is not None else None,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def _load_partial(partial: Path, stamp: Path, fingerprint: str) -> list[Example]:
    """Posts finished by an earlier run with the same fingerprint; a torn last line is dropped."""
    if not partial.is_file() or not stamp.is_file() or stamp.read_text().strip() != fingerprint:
        return []
    done, good = [], []
    with partial.open(encoding="utf-8") as fh:
        for line in fh:
            try:
                done.append(Example.from_dict(json.loads(line)))
            except (json.JSONDecodeError, ValueError):
                log.warning("%s: dropping a torn line after %d finished posts", partial, len(done))
                break
            good.append(line if line.endswith("\n") else line + "\n")
    partial.write_text("".join(good), encoding="utf-8")
    return done


def _decide(post: Example, cfg: GroundConfig, has_image: bool) -> tuple[list[str | None], list[int]]:
    """Per entity: a reason to answer none without asking (or ``None``), and the indices to ask about."""
    reasons: list[str | None] = []
    ask = []
    for j, ent in enumerate(post.entities):
        if ent.type in cfg.never_grounded:
            reasons.append("never_grounded_type")
        elif (
            cfg.groundability_threshold is not None
            and ent.groundable is not None
            and ent.groundable < cfg.groundability_threshold
        ):
            reasons.append("below_groundability")
        elif not has_image:
            reasons.append("no_image")
        else:
            reasons.append(None)
            ask.append(j)
    return reasons, ask


def _check_groundability_input(preds: Sequence[Example], cfg: GroundConfig) -> int | None:
    """Entities that ``groundability_threshold`` cannot judge (no ``groundable`` value); warns when there are any.

    Returns ``None`` when no threshold is set.
    """
    if cfg.groundability_threshold is None:
        return None
    judged = [e for p in preds for e in p.entities if e.type not in cfg.never_grounded]
    missing = sum(1 for e in judged if e.groundable is None)
    hint = "the value comes from a tagger trained with model.groundability=true"
    if missing and missing == len(judged):
        log.warning(
            "groundability_threshold=%s does nothing: none of the %d entities has a groundable value, so "
            "every one is asked (%s)",
            cfg.groundability_threshold,
            missing,
            hint,
        )
    elif missing:
        log.warning(
            "groundability_threshold=%s: %d of %d entities have no groundable value and are always asked (%s)",
            cfg.groundability_threshold,
            missing,
            len(judged),
            hint,
        )
    return missing


def chunk_size(cfg: GroundConfig, grounder: Grounder) -> int:
    """Posts per step: ``cfg.chunk_size``, or when unset 4 x the grounder's LLM concurrency (at least 64).

    A step's requests go out together and the step waits for its slowest, so the server is under-filled during
    each step's tail; with four waves of ``concurrency`` requests per step that tail is a quarter as frequent as
    with one (``bench/llm_concurrency.py``: +20% posts/s at concurrency 64). Memory grows with the step, not the run.
    """
    if cfg.chunk_size is not None:
        return cfg.chunk_size
    llm_config = getattr(getattr(grounder, "llm", None), "config", None)
    return max(64, 4 * int(getattr(llm_config, "concurrency", 0) or 0))


def ground_chunk(
    posts: Sequence[Example],
    cfg: GroundConfig,
    grounder: Grounder,
    images: PostImages,
    selector: ContextSelector | None,
    pool: Sequence[Example],
) -> list[Example]:
    """Grounds a chunk of posts; returns copies with boxes and ``meta["grounding"]``."""
    out = [copy.deepcopy(p) for p in posts]
    plans = []
    for post in out:
        has_image = images.exists(post)
        reasons, ask = _decide(post, cfg, has_image)
        plans.append((reasons, ask, has_image))
        for ent in post.entities:
            ent.boxes = []
    todo = [i for i, (_, ask, _) in enumerate(plans) if ask]
    grounder.posts_done(len(out) - len(todo))  # posts that need no answer are done now
    query_images = [images.load(out[i]) for i in todo]
    demos: list[list[int]] = [[] for _ in todo]
    if selector is not None and todo:
        demos = selector.select([posts[i] for i in todo], query_images)
    queries = []
    demo_counts: dict[int, tuple[int, int]] = {}  # post -> (demonstrations selected, of them without an image)
    for i, img, demo_idx in zip(todo, query_images, demos, strict=True):
        asked = copy.deepcopy(out[i])
        asked.entities = [asked.entities[j] for j in plans[i][1]]
        demo_posts = [pool[d] for d in demo_idx]
        demo_images = [images.load(d) for d in demo_posts]
        if selector is not None:
            demo_counts[i] = (len(demo_posts), sum(1 for d in demo_images if d is None))
        queries.append(GroundingQuery(asked, img, demo_posts, demo_images))
    results = grounder.ground(queries) if queries else []
    if len(results) != len(queries):
        raise RuntimeError(f"grounder {grounder.label!r} returned {len(results)} results for {len(queries)} posts")
    by_post = dict(zip(todo, results, strict=True))
    for i, post in enumerate(out):
        reasons, ask, has_image = plans[i]
        meta: dict[str, Any] = {"grounder": grounder.label, "image": has_image}
        if i in demo_counts:
            meta["demos_selected"], meta["demos_without_image"] = demo_counts[i]
        res = by_post.get(i)
        if res is not None:
            if len(res.boxes) != len(ask):
                raise RuntimeError(
                    f"grounder {grounder.label!r}: post {post.id} got {len(res.boxes)} box lists "
                    f"for {len(ask)} entities"
                )
            unusable = set(res.info.get("unusable", ()))
            for k, (j, boxes) in enumerate(zip(ask, res.boxes, strict=True)):
                post.entities[j].boxes = [list(map(float, b)) for b in boxes]
                none = "answer_problem" if k in unusable else "model_none"
                reasons[j] = "grounded" if boxes else {"failed": "failed", "no_image": "no_image"}.get(res.status, none)
            meta["status"] = res.status
            meta.update({k: v for k, v in res.info.items() if k not in ("cached", "unusable")})
        else:
            meta["status"] = "not_asked"
        meta["reasons"] = reasons
        post.meta["grounding"] = meta
    return out


def summarise(posts: Sequence[Example]) -> dict[str, Any]:
    """Counts over grounded posts (from their ``meta["grounding"]``)."""
    reasons: Counter[str] = Counter({r: 0 for r in REASONS})
    status: Counter[str] = Counter()
    boxes = 0
    for post in posts:
        g = post.meta.get("grounding", {})
        status[g.get("status", "unknown")] += 1
        reasons.update(g.get("reasons", []))
        boxes += sum(len(e.boxes) for e in post.entities)
    return {
        "posts": len(posts),
        "posts_without_image": sum(1 for p in posts if not p.meta.get("grounding", {}).get("image", False)),
        "posts_asked": sum(v for k, v in status.items() if k not in ("not_asked", "unknown")),
        "posts_failed": status.get("failed", 0),
        "entities": sum(len(p.entities) for p in posts),
        "grounded": reasons["grounded"],
        "boxes": boxes,
        "none_by_reason": {k: reasons[k] for k in REASONS if k != "grounded"},
        "entities_failed": reasons["failed"],
        "posts_with_answer_problems": sum(1 for p in posts if p.meta.get("grounding", {}).get("problems")),
        **demo_summary(posts),
    }


def demo_summary(posts: Sequence[Example]) -> dict[str, int]:
    """Counts of the context selector's demonstrations over grounded posts.

    ``demos_selected``; ``demos_without_image``, whose image is missing (a grounder that shows images, like
    ``mllm``, leaves them out); ``posts_without_usable_demos``, asked posts left with none that has an image.
    """
    counts = [
        (g.get("demos_selected", 0), g.get("demos_without_image", 0))
        for g in (p.meta.get("grounding", {}) for p in posts)
    ]
    return {
        "demos_selected": sum(n for n, _ in counts),
        "demos_without_image": sum(m for _, m in counts),
        "posts_without_usable_demos": sum(1 for n, m in counts if n and n == m),
    }


def _usage_summary(grounder: Grounder) -> dict[str, Any]:
    usage = grounder.usage() if hasattr(grounder, "usage") else {}
    g = (usage.get("stages") or {}).get("grounding")
    if not g:
        return {"usage": usage} if usage else {}
    keys = ("requests", "calls", "cache_hits", "ok", "failed", "budget_exhausted", "prompt_tokens", "completion_tokens")
    return {"mllm": {k: g[k] for k in keys}, "usage": usage}


def run_ground(
    pred: str | Path,
    pool: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    overrides: Sequence[str] = (),
    cfg: GroundConfig | None = None,
) -> dict[str, Any]:
    """Grounds the entities of predicted posts and writes ``out`` and ``<out stem>.summary.json``.

    Args:
        pred: Predicted posts (canonical JSONL; their entities are grounded, existing boxes are replaced).
        pool: Labelled posts (canonical JSONL with gold boxes) to draw demonstrations from.
        out: Output canonical JSONL: the same posts, entity boxes in original pixels, ``meta["grounding"]``.
        images: Image folder (``Example.image`` is relative to it); ``None``: every image counts as missing.
        overrides: :class:`GroundConfig` ``key=value`` overrides (applied over ``cfg``).
        cfg: The settings (default: ``configs/grounding/default.yaml``).

    Returns:
        The summary: counts (posts, entities, grounded, none by reason, failures), the grounder and selector
        labels, MLLM calls and tokens of this process, and the resolved configuration.

    Raises:
        DataFormatError: A post of ``pred`` or ``pool`` whose image name would leave ``images`` (checked before
            anything is asked).
    """
    cfg = load_ground_config(list(overrides), cfg)
    pred, pool, out = Path(pred), Path(pool), Path(out)
    run_dir = Path(cfg.run_dir) if cfg.run_dir else out.parent
    run_dir.mkdir(parents=True, exist_ok=True)
    preds, pool_posts = read_jsonl(pred), read_jsonl(pool)
    for path, posts in ((pred, preds), (pool, pool_posts)):  # refuse image names leaving the folder, before any call
        for post in posts:
            image_path(images, post, source=path)
    store = PostImages(images)
    if images is None:
        log.warning("no image folder given: every post counts as having no image, all entities answer none")
    partial, stamp = out.with_name(out.name + ".partial"), out.with_name(out.name + ".partial.fingerprint")
    fingerprint = _run_fingerprint(cfg, pred, pool, images)
    done = _load_partial(partial, stamp, fingerprint)
    done_ids = {p.id for p in done}
    if done:
        log.info("resuming: %d of %d posts already grounded in %s", len(done), len(preds), partial)
    else:
        partial.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("", encoding="utf-8")
        stamp.write_text(fingerprint)
    todo = [p for p in preds if p.id not in done_ids]
    without_groundable = _check_groundability_input(preds, cfg)

    grounder = create_grounder(cfg.grounder.name, **grounder_kwargs(cfg, run_dir))
    try:
        selector = None
        if getattr(grounder, "uses_demos", False) and cfg.selector.mode != "none" and cfg.selector.k > 0 and todo:
            index_path = cfg.selector.index_path or run_dir / "grounding_index.pt"
            selector = ContextSelector(pool_posts, cfg.selector, store, index_path)  # index built on first use
            if images is not None and pool_posts and not any(store.exists(p) for p in pool_posts):
                log.warning(
                    "context selection: none of the %d pool posts has its image in %s, so the grounder "
                    "gets no demonstrations (the pool's images must be in the same folder as the posts')",
                    len(pool_posts),
                    images,
                )
        with (
            partial.open("a", encoding="utf-8") as fh,
            tqdm(total=len(preds), initial=len(done), desc="ground", unit="post") as bar,
        ):
            shown = [0]  # posts of the chunk in flight already on the bar

            def advance(n: int) -> None:
                n = min(n, len(chunk) - shown[0])  # a grounder that reports too many cannot overrun the chunk
                shown[0] += n
                bar.update(n)

            grounder.on_posts_done = advance  # the bar moves per post, not per chunk
            step = chunk_size(cfg, grounder)
            for lo in range(0, len(todo), step):
                chunk, shown[0] = todo[lo : lo + step], 0
                for post in ground_chunk(chunk, cfg, grounder, store, selector, pool_posts):
                    fh.write(dump_json(post.to_dict(), partial, record=post.id, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(len(chunk) - shown[0])  # posts the grounder did not report
        usage = _usage_summary(grounder)
    finally:
        if hasattr(grounder, "close"):
            grounder.close()
    finished = {p.id: p for p in read_jsonl(partial)}
    posts = [finished[p.id] for p in preds]
    write_jsonl(posts, out)
    partial.unlink()
    stamp.unlink()
    summary = {
        **summarise(posts),
        "resumed_posts": len(done),
        "entities_without_groundable": without_groundable,
        "grounder": grounder.label,
        "selector": selector.label if selector is not None else "none",
        **usage,
        "config": dataclasses.asdict(cfg),
    }
    if summary["demos_without_image"]:
        log.warning(
            "context selection: %d of %d chosen demonstrations have no image in %s and were left out; %d "
            "asked post(s) got no demonstration at all",
            summary["demos_without_image"],
            summary["demos_selected"],
            images,
            summary["posts_without_usable_demos"],
        )
    summary_path = out.with_name(out.stem + ".summary.json")
    summary_path.write_text(json.dumps(summary, indent=2, default=str))
    summary["summary_path"] = str(summary_path)
    log.info(
        "grounding: %d of %d entities grounded; summary %s", summary["grounded"], summary["entities"], summary_path
    )
    return summary
