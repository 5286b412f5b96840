"""Flickr30k Entities reader: captions with typed, bracketed phrases tied to Pascal-VOC boxes of the image.

Layout of ``root``: ``ids.txt`` (one image id a line), ``Sentences/<id>.txt`` (one caption a line, phrases as
``[/EN#<entity id>/<type>[/<type>...] words]``), ``Annotations/<id>.xml`` (``<size>``, then ``<object>`` s with one
or more ``<name>`` entity ids and a ``<bndbox>`` or ``<nobndbox>``) and ``images/<id>.jpg``.

Every caption becomes one post ``<id>_<line index>``; every phrase one entity typed by its first type. An entity
gets every box of its entity id (an object with several names belongs to each of them); entity id ``0`` and type
``notvisual`` get none. Boxes are scaled from the ``<size>`` of the xml to the pixels of the image file present
(many copies are shrunk), rounded to 0.01 px and clipped to the image.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from refineg.data.errors import DataFormatError, ReadReport
from refineg.data.files import inside_folder, read_text
from refineg.data.images import ImageError, image_size
from refineg.data.schema import Box, Entity, Example

FLICKR30K_TYPES = (
    "people",
    "clothing",
    "bodyparts",
    "animals",
    "vehicles",
    "instruments",
    "scene",
    "other",
    "notvisual",
)
PHRASE_HEAD = re.compile(r"\[/EN#(\d+)/([^\s\[\]]+)")


def parse_caption(line: str, path: Path, lineno: int, types: Iterable[str]) -> tuple[list[str], list[tuple]]:
    """Splits one marked-up caption into tokens and phrases.

    Returns:
        The whitespace tokens without markup, and ``(start, end, entity id, first type)`` per phrase.

    Raises:
        DataFormatError: Unbalanced or nested brackets, a malformed phrase head, an empty phrase or an unknown type.
    """
    tokens: list[str] = []
    phrases: list[tuple] = []
    head = None  # (start, entity id, type) of the open phrase
    for tok in line.split():
        if tok.startswith("["):
            match = PHRASE_HEAD.fullmatch(tok)
            if head is not None or match is None:
                raise DataFormatError(path, f"nested phrase or malformed phrase head {tok!r}", line=lineno)
            unknown = [t for t in match.group(2).split("/") if t not in types]
            if unknown:
                raise DataFormatError(path, f"unknown type(s) {unknown} in {tok!r}", line=lineno)
            head = (len(tokens), match.group(1), match.group(2).split("/")[0])
            continue
        closes = tok.endswith("]") and head is not None
        word = tok[:-1] if closes else tok
        if "[" in word or "]" in word:
            raise DataFormatError(path, f"unbalanced bracket in {tok!r}", line=lineno)
        if word:
            tokens.append(word)
        if closes:
            if len(tokens) == head[0]:
                raise DataFormatError(path, f"empty phrase [/EN#{head[1]}/{head[2]} ]", line=lineno)
            phrases.append((head[0], len(tokens), head[1], head[2]))
            head = None
    if head is not None:
        raise DataFormatError(path, f"phrase /EN#{head[1]} is not closed with ']'", line=lineno)
    return tokens, phrases


def read_boxes(xml_path: Path, image_path: Path, report: ReadReport) -> tuple[dict[str, list[Box]], tuple | None]:
    """Reads the boxes of one image, scaled to the pixels of ``image_path``.

    Returns:
        Boxes by entity id, and the ``(width, height)`` of the image file (``None`` when there is no box and
        no file).

    Raises:
        DataFormatError: Missing or invalid xml, a bad ``<size>``, a non-numeric or inverted box, a box entirely
            outside the image, or a missing or unreadable image file when there are boxes to scale.
    """
    if not xml_path.is_file():
        raise DataFormatError(xml_path, "file not found")
    try:
        root = SafeET.parse(xml_path).getroot()
    except (ET.ParseError, DefusedXmlException) as err:
        raise DataFormatError(xml_path, f"invalid xml ({err})", line=getattr(err, "position", (None,))[0]) from None
    objects = [(i, obj) for i, obj in enumerate(root.iter("object"), start=1) if obj.find("bndbox") is not None]
    if not objects and not image_path.is_file():
        return {}, None
    try:
        width, height = image_size(image_path)
    except ImageError as err:
        raise DataFormatError(
            image_path, f"image needed to scale the boxes of {xml_path.name} ({err.reason})"
        ) from None
    if not objects:
        return {}, (width, height)
    try:
        stated = (float(root.findtext("size/width")), float(root.findtext("size/height")))
    except (TypeError, ValueError):
        stated = (0.0, 0.0)
    if min(stated) <= 0:
        raise DataFormatError(xml_path, "missing or non-numeric <size><width>/<height>")
    sx, sy = width / stated[0], height / stated[1]
    boxes: dict[str, list[Box]] = {}
    for index, obj in objects:
        names = [(n.text or "").strip() for n in obj.findall("name")]
        where = f"object {index} (names {names})"
        bnd = obj.find("bndbox")
        try:
            raw = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            values = [bnd.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            raise DataFormatError(xml_path, f"{where}: non-numeric or missing box coordinate {values}") from None
        if not (raw[0] < raw[2] and raw[1] < raw[3]):
            raise DataFormatError(xml_path, f"{where}: inverted or empty box {raw}")
        box = [round(v * s, 2) for v, s in zip(raw, (sx, sy, sx, sy))]
        clipped = [min(max(v, 0.0), float(limit)) for v, limit in zip(box, (width, height, width, height))]
        if clipped != box:
            if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
                raise DataFormatError(xml_path, f"{where}: box {raw} lies entirely outside the image")
            report.warn(
                "box_outside_image",
                f"{xml_path}: {where}: box {box} (scaled) outside the {width}x{height} "
                f"image {image_path.name}; clipped to {clipped}",
            )
        for name in names:
            boxes.setdefault(name, []).append(clipped)
    return boxes, (width, height)


def read_image_ids(root: Path) -> list[str]:
    """The image ids of ``root/ids.txt`` in file order (blank lines skipped; duplicates are an error)."""
    path = root / "ids.txt"
    seen: dict[str, int] = {}
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        image_id = line.strip()
        if image_id in seen:
            raise DataFormatError(
                path, f"duplicate image id {image_id!r} (first on line {seen[image_id]})", line=lineno
            )
        if image_id:
            inside_folder(
                root / "images", f"{image_id}.jpg", "image id's file", file_name=True, source=path, line=lineno
            )
            seen[image_id] = lineno
    return list(seen)


def read_flickr30k_entities(
    root: str | Path,
    report: ReadReport | None = None,
    ids: Iterable[str] | None = None,
    types: Iterable[str] = FLICKR30K_TYPES,
) -> list[Example]:
    """Reads Flickr30k Entities: one post per caption, in image order then caption order.

    Args:
        root: Folder with ``ids.txt``, ``Sentences/``, ``Annotations/`` and ``images/``.
        report: Collects ``box_outside_image`` warnings (boxes clipped to the image); a fresh one if ``None``.
        ids: Image ids to read, in this order (default: those of ``ids.txt``).
        types: Allowed phrase types.

    Returns:
        Posts ``<image id>_<caption line index>`` with ``image="<image id>.jpg"`` and ``image_size`` the size of
        that file (``None`` only for an image without any box whose file is absent).

    Raises:
        DataFormatError: See :func:`parse_caption` and :func:`read_boxes`; also a missing ``ids.txt`` or
            ``Sentences`` file, bytes that are not UTF-8, or an image id that is not a plain file name.
    """
    report = report if report is not None else ReadReport()
    root, types = Path(root), set(types)
    examples = []
    for image_id in read_image_ids(root) if ids is None else [str(i) for i in ids]:
        sentences, annotations, image = (
            inside_folder(root / folder, f"{image_id}{suffix}", "image id's file", file_name=True)
            for folder, suffix in (("Sentences", ".txt"), ("Annotations", ".xml"), ("images", ".jpg"))
        )
        captions = read_text(sentences).splitlines()
        boxes, size = read_boxes(annotations, image, report)
        for index, line in enumerate(captions):
            if not line.strip():
                continue
            tokens, phrases = parse_caption(line, sentences, index + 1, types)
            entities = [
                Entity(
                    start,
                    end,
                    etype,
                    [] if etype == "notvisual" or eid == "0" else [list(b) for b in boxes.get(eid, [])],
                )
                for start, end, eid, etype in phrases
            ]
            examples.append(
                Example(
                    id=f"{image_id}_{index}", tokens=tokens, image=f"{image_id}.jpg", entities=entities, image_size=size
                )
            )
    return examples
