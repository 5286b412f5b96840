"""Twitter-GMNER (NUSTM/GMNER, v1 and v2.0): CoNLL ``txt`` file plus a folder of Pascal-VOC ``xml`` files.

Each ``<object>`` of ``xml/<id>.xml`` names an entity by its surface text; names are matched to the post's
entities ignoring spaces and case, every entity with that surface gets the box, and several objects with one name
give that entity several boxes. Posts without an xml file have no groundable entity.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path

from defusedxml import DefusedXmlException
from defusedxml import ElementTree as SafeET

from refineg.data.bio import tags_to_entities
from refineg.data.conll import iter_conll_posts, write_conll
from refineg.data.errors import DataFormatError, ReadReport
from refineg.data.files import inside_folder
from refineg.data.schema import Box, Example, box_problem

TWITTER_GMNER_TYPES = ("PER", "LOC", "ORG", "OTHER")


def normalise_name(text: str) -> str:
    """Key used to match xml object names to entity surfaces: lower case, all whitespace removed."""
    return re.sub(r"\s+", "", text).lower()


def read_voc_xml(path: Path, report: ReadReport) -> tuple[tuple[int, int] | None, list[tuple[str, Box]]]:
    """Reads one Pascal-VOC file.

    Returns:
        ``(width, height)`` (``None`` when absent) and ``(object name, box)`` pairs in file order. Boxes that stick
        out of the stated image size are clipped to it and counted as ``box_outside_image`` warnings.

    Raises:
        DataFormatError: Unparsable xml (entities and DTDs included), a missing, non-numeric or infinite coordinate,
            or an inverted box.
    """
    try:
        root = SafeET.parse(path).getroot()
    except (ET.ParseError, DefusedXmlException) as err:  # entities and DTDs are refused by defusedxml
        raise DataFormatError(path, f"invalid xml ({err})", line=getattr(err, "position", (None,))[0]) from None
    size = None
    size_el = root.find("size")
    if size_el is not None:
        try:
            width, height = int(float(size_el.findtext("width"))), int(float(size_el.findtext("height")))
            size = (width, height) if width > 0 and height > 0 else None
        except (TypeError, ValueError):
            report.warn("bad_image_size", f"{path}: <size> is not numeric; boxes are not checked against it")
    objects: list[tuple[str, Box]] = []
    for index, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        where = f"object {index} ({name!r})"
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataFormatError(path, f"{where} has no <bndbox>")
        try:
            box = [float(bnd.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            values = [bnd.findtext(k) for k in ("xmin", "ymin", "xmax", "ymax")]
            raise DataFormatError(path, f"{where}: non-numeric or missing box coordinate {values}") from None
        problem = box_problem(box)
        if problem is not None:
            raise DataFormatError(path, f"{where}: {problem}")
        if size is not None:
            clipped = [
                max(0.0, min(box[0], size[0])),
                max(0.0, min(box[1], size[1])),
                max(0.0, min(box[2], size[0])),
                max(0.0, min(box[3], size[1])),
            ]
            if clipped != box:
                report.warn(
                    "box_outside_image",
                    f"{path}: {where}: box {box} outside the {size[0]}x{size[1]} image; clipped to {clipped}",
                )
                if not (clipped[0] < clipped[2] and clipped[1] < clipped[3]):
                    raise DataFormatError(path, f"{where}: box {box} lies entirely outside the image")
                box = clipped
        objects.append((name, box))
    return size, objects


def read_twitter_gmner(
    txt: str | Path,
    xml_dir: str | Path | None,
    types: Iterable[str] = TWITTER_GMNER_TYPES,
    report: ReadReport | None = None,
) -> list[Example]:
    """Reads a Twitter-GMNER split.

    Args:
        txt: ``txt/{train,dev,test}.txt``.
        xml_dir: The ``xml`` folder (``None``: text only, no boxes).
        types: Allowed entity types.
        report: Collects warnings (``xml_object_unmatched``, ``box_outside_image``, ...); a fresh one if ``None``.

    Raises:
        DataFormatError: See :func:`refineg.data.conll.iter_conll_posts` and :func:`read_voc_xml`; also a post id
            that would name an xml file outside ``xml_dir`` (``IMGID:../x``).
    """
    report = report if report is not None else ReadReport()
    xml_dir = Path(xml_dir) if xml_dir is not None else None
    if xml_dir is not None and not xml_dir.is_dir():
        raise DataFormatError(xml_dir, "xml folder not found")
    examples = []
    for post in iter_conll_posts(txt, types=types):
        example = Example(id=post.id, tokens=post.tokens, image=f"{post.id}.jpg", entities=tags_to_entities(post.tags))
        xml_path = None
        if xml_dir is not None:
            xml_path = inside_folder(
                xml_dir, f"{post.id}.xml", "post id's xml file", file_name=True, source=txt, line=post.line
            )
        if xml_path is not None and xml_path.is_file():
            example.image_size, objects = read_voc_xml(xml_path, report)
            by_name: dict[str, list] = {}
            for ent in example.entities:
                by_name.setdefault(normalise_name(ent.text(post.tokens)), []).append(ent)
            for name, box in objects:
                matches = by_name.get(normalise_name(name))
                if not matches:
                    report.warn(
                        "xml_object_unmatched",
                        f"{xml_path}: object {name!r} matches no entity of post "
                        f"{post.id} (txt line {post.line}); box ignored",
                    )
                    continue
                for ent in matches:
                    ent.boxes.append(box)
        examples.append(example)
    return examples


def write_voc_xml(example: Example, path: Path) -> None:
    """Writes the boxes of ``example`` as a Pascal-VOC file (one ``<object>`` per box)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "filename").text = example.image or f"{example.id}.jpg"
    if example.image_size is not None:
        size = ET.SubElement(root, "size")
        ET.SubElement(size, "width").text = str(example.image_size[0])
        ET.SubElement(size, "height").text = str(example.image_size[1])
        ET.SubElement(size, "depth").text = "3"
    written: set[tuple[str, tuple[float, ...]]] = set()
    for ent in example.entities:
        name = ent.text(example.tokens)
        for box in ent.boxes:
            key = (normalise_name(name), tuple(box))
            if key in written:  # the same surface twice in a post shares its objects
                continue
            written.add(key)
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = name
            bnd = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bnd, tag).text = f"{value:g}"
    ET.indent(root)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=False)


def write_twitter_gmner(examples: Iterable[Example], txt: str | Path, xml_dir: str | Path) -> None:
    """Writes a Twitter-GMNER split: the CoNLL ``txt`` and one xml per post that has a box.

    Raises:
        DataFormatError: A post id that is not a plain file name (``../x``, ``a/b``: its xml would land outside or
            below ``xml_dir``), a box coordinate that is not finite, or see :func:`refineg.data.conll.write_conll`;
            nothing is written then.
    """
    examples = list(examples)
    xml_dir = Path(xml_dir)
    for ex in examples:
        for ent in ex.entities:
            for box in ent.boxes:
                if not all(math.isfinite(v) for v in box):
                    raise DataFormatError(
                        xml_dir, f"entity {ent.text(ex.tokens)!r}: box {box} is not finite", record=ex.id
                    )
    xml_paths = [
        inside_folder(xml_dir, f"{ex.id}.xml", "post id's xml file", file_name=True, record=ex.id)
        if any(ent.boxes for ent in ex.entities)
        else None
        for ex in examples
    ]
    write_conll(examples, txt)
    xml_dir.mkdir(parents=True, exist_ok=True)
    for ex, path in zip(examples, xml_paths):
        if path is not None:
            write_voc_xml(ex, path)
