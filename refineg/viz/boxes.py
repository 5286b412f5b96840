"""Gold and predicted entities drawn on the post image, side by side (PIL).

Layout of one post's PNG: two panels of the same size, gold on the left and the prediction on the right, with a
``GAP``-pixel white strip between them. Each panel is a ``HEADER``-pixel title strip, the image scaled so that its
longest side is at most ``max_side`` (never enlarged), and a footer with one ``LINE``-pixel line per entity
(``text (TYPE)``, plus ``no box`` for entities without a region). Boxes are coloured by type and labelled
``text (TYPE)``. A post whose image is missing gets a grey canvas of its ``image_size`` (or ``BLANK_SIZE``) with a
note, so boxes stay where they would be on the real image.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from refineg.data import Entity, Example
from refineg.data.files import inside_folder
from refineg.data.images import load_image

logger = logging.getLogger(__name__)

HEADER = 24
LINE = 16
GAP = 8
PAD = 4
BLANK_SIZE = (640, 480)
TYPE_COLOURS = {
    "PER": (230, 25, 75),
    "ORG": (0, 130, 200),
    "LOC": (60, 180, 75),
    "OTHER": (245, 130, 48),
    "MISC": (245, 130, 48),
}
_EXTRA_COLOURS = [(145, 30, 180), (70, 240, 240), (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40)]


def type_colour(etype: str) -> tuple[int, int, int]:
    """RGB colour of an entity type (fixed for the Twitter-GMNER types, stable per name for others)."""
    if etype in TYPE_COLOURS:
        return TYPE_COLOURS[etype]
    return _EXTRA_COLOURS[sum(map(ord, etype)) % len(_EXTRA_COLOURS)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


def load_post_image(post: Example, images_dir: str | Path | None) -> tuple[Image.Image, bool]:
    """The post's image as RGB, or a grey canvas with a note when it is missing.

    Returns:
        ``(image, found)``; the canvas has the post's ``image_size`` when known, else :data:`BLANK_SIZE`.

    Raises:
        DataFormatError: The image name would leave ``images_dir`` (see :func:`refineg.data.files.inside_folder`).
    """
    if images_dir and post.image:
        path = inside_folder(images_dir, post.image, "image", record=post.id)
        if path.is_file():
            return load_image(path), True
    size = tuple(post.image_size) if post.image_size else BLANK_SIZE
    canvas = Image.new("RGB", size, (200, 200, 200))
    note = f"image not available: {post.image or '(none)'}"
    fsize = max(12, size[0] // 40)
    ImageDraw.Draw(canvas).text((10, size[1] - fsize - 10), note, fill=(60, 60, 60), font=_font(fsize))
    return canvas, False


def panel_size(image_size: tuple[int, int], n_lines: int, max_side: int) -> tuple[int, int]:
    """``(width, height)`` of one panel for an image of ``image_size`` and a footer of ``n_lines`` lines."""
    w, h = image_size
    scale = min(1.0, max_side / max(w, h))
    return round(w * scale), HEADER + round(h * scale) + n_lines * LINE + PAD


def draw_panel(
    image: Image.Image, post: Example, entities: Sequence[Entity], title: str, n_lines: int, max_side: int = 640
) -> Image.Image:
    """One panel: title, the image with ``entities``' boxes, and the entity list.

    Args:
        image: The post image (original pixels; boxes are in these pixels).
        post: The post (tokens give the entity strings).
        entities: Entities to draw.
        title: Title strip text.
        n_lines: Footer lines (at least ``len(entities)``; both panels use the same so they line up).
        max_side: Longest image side in the panel (images are shrunk, never enlarged).
    """
    width, height = panel_size(image.size, n_lines, max_side)
    scale = min(1.0, max_side / max(image.size))
    body = image.resize((width, round(image.size[1] * scale))) if scale < 1 else image.copy()
    panel = Image.new("RGB", (width, height), (255, 255, 255))
    panel.paste(body, (0, HEADER))
    draw = ImageDraw.Draw(panel)
    font = _font(12)
    draw.text((PAD, 5), title, fill=(0, 0, 0), font=font)
    for ent in entities:
        colour = type_colour(ent.type)
        label = f"{ent.text(post.tokens)} ({ent.type})"
        for box in ent.boxes:
            x0, y0, x1, y1 = (v * scale for v in box)
            y0, y1 = y0 + HEADER, y1 + HEADER
            draw.rectangle([x0, y0, x1, y1], outline=colour, width=3)
            tw = draw.textlength(label, font=font)
            ty = max(HEADER, y0 - LINE)
            draw.rectangle([x0, ty, x0 + tw + 2 * PAD, ty + LINE - 2], fill=colour)
            draw.text((x0 + PAD, ty + 1), label, fill=(255, 255, 255), font=font)
    y = HEADER + body.size[1] + PAD // 2
    for ent in entities:
        suffix = "" if ent.boxes else "  - no box"
        draw.text((PAD, y), f"{ent.text(post.tokens)} ({ent.type}){suffix}", fill=type_colour(ent.type), font=font)
        y += LINE
    return panel


def draw_comparison(
    gold: Example, pred: Example | None, images_dir: str | Path | None = None, max_side: int = 640
) -> Image.Image:
    """Gold (left) and predicted (right) entities of one post on its image.

    Args:
        gold: The gold post.
        pred: The predicted post with the same id (``None``: an empty prediction).
        images_dir: Folder the posts' ``image`` names are relative to.
        max_side: Longest image side per panel in pixels.

    Returns:
        An RGB image of size ``(2 * panel_width + GAP, panel_height)``, see :func:`panel_size`.
    """
    image, _ = load_post_image(gold, images_dir)
    pred_entities = pred.entities if pred is not None else []
    n_lines = max(len(gold.entities), len(pred_entities), 1)
    left = draw_panel(image, gold, gold.entities, f"gold  {gold.id}", n_lines, max_side)
    src = pred if pred is not None else gold
    right = draw_panel(image, src, pred_entities, f"predicted  {gold.id}", n_lines, max_side)
    canvas = Image.new("RGB", (left.width + GAP + right.width, left.height), (255, 255, 255))
    canvas.paste(left, (0, 0))
    canvas.paste(right, (left.width + GAP, 0))
    return canvas


def draw_posts(
    golds: Sequence[Example],
    preds: Sequence[Example],
    out_dir: str | Path,
    images_dir: str | Path | None = None,
    ids: Sequence[str] | None = None,
    limit: int | None = None,
    max_side: int = 640,
) -> list[Path]:
    """Writes ``<out_dir>/<id>.png`` for each selected gold post.

    Args:
        golds: Gold posts.
        preds: Predicted posts (matched by id; a gold post without one gets an empty prediction).
        out_dir: Output folder.
        images_dir: Image folder.
        ids: Only these post ids (an unknown id raises).
        limit: At most this many posts (after ``ids``).
        max_side: Longest image side per panel.

    Returns:
        The written files, in gold order.

    Raises:
        KeyError: An id of ``ids`` is not among the gold posts.
    """
    by_id = {p.id: p for p in preds}
    selected = list(golds)
    if ids:
        known = {g.id for g in golds}
        missing = [i for i in ids if i not in known]
        if missing:
            raise KeyError(f"post id(s) not in the gold file: {', '.join(missing[:10])}")
        wanted = set(ids)
        selected = [g for g in golds if g.id in wanted]
    if limit is not None:
        selected = selected[:limit]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for gold in selected:
        path = out_dir / f"{_safe(gold.id)}.png"
        draw_comparison(gold, by_id.get(gold.id), images_dir, max_side).save(path)
        written.append(path)
    return written


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
