"""Twitter-style CoNLL files: ``IMGID:<id>`` header, ``token<TAB>tag`` lines, blank line between posts.

Used by Twitter-GMNER's ``txt/`` files and by Twitter-2015 / Twitter-2017 (whose ``MISC`` type is mapped through a
configurable type map, ``MISC -> OTHER`` by default).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from refineg.data.bio import entities_to_tags, split_tag, tags_to_entities
from refineg.data.errors import DataFormatError
from refineg.data.files import iter_lines
from refineg.data.schema import Example

TWITTER_MNER_TYPE_MAP = {"MISC": "OTHER"}


@dataclass
class ConllPost:
    """One post as read from a CoNLL file: id, tokens, tags and the line its header was on."""

    id: str
    tokens: list[str]
    tags: list[str]
    line: int


def iter_conll_posts(
    path: str | Path, type_map: Mapping[str, str] | None = None, types: Iterable[str] | None = None
) -> list[ConllPost]:
    """Parses a Twitter-style CoNLL file.

    Args:
        path: The ``.txt`` file.
        type_map: Renames entity types while reading (e.g. ``{"MISC": "OTHER"}``).
        types: Allowed types after mapping; a tag of another type is an error. ``None`` allows any.

    Raises:
        DataFormatError: Missing file, bytes that are not UTF-8, a line without exactly one tab, a token with
            whitespace, an unknown tag, a token before the first header, or a duplicate post id; the message names
            file and line.
    """
    path = Path(path)
    type_map = dict(type_map or {})
    allowed = set(types) if types is not None else None
    posts: list[ConllPost] = []
    seen: dict[str, int] = {}
    current: ConllPost | None = None
    for lineno, raw in iter_lines(path):
        line = raw.rstrip("\r")
        if not line.strip():
            continue
        if line.startswith("IMGID:"):
            post_id = line[len("IMGID:") :].strip()
            if post_id in seen:
                raise DataFormatError(
                    path, f"duplicate post id {post_id!r} (first on line {seen[post_id]})", line=lineno
                )
            seen[post_id] = lineno
            current = ConllPost(post_id, [], [], lineno)
            posts.append(current)
            continue
        if "\t" not in line:
            raise DataFormatError(path, f"expected 'token<TAB>tag', found no tab in {line!r}", line=lineno)
        columns = line.split("\t")
        if len(columns) > 2:
            raise DataFormatError(
                path, f"expected 'token<TAB>tag', found {len(columns)} tab-separated columns in {line!r}", line=lineno
            )
        if current is None:
            raise DataFormatError(path, "token line before the first 'IMGID:' header", line=lineno)
        token, tag = columns
        if any(c.isspace() for c in token):
            raise DataFormatError(
                path, f"token {token!r} contains whitespace (tokens are whitespace-free)", line=lineno
            )
        tag = tag.strip()
        try:
            prefix, etype = split_tag(tag)
        except ValueError as err:
            raise DataFormatError(path, str(err), line=lineno) from None
        if prefix != "O":
            etype = type_map.get(etype, etype)
            if allowed is not None and etype not in allowed:
                raise DataFormatError(
                    path, f"unknown entity type {etype!r} in tag {tag!r}; allowed: {sorted(allowed)}", line=lineno
                )
            tag = f"{prefix}-{etype}"
        current.tokens.append(token)
        current.tags.append(tag)
    return posts


def read_conll(
    path: str | Path,
    type_map: Mapping[str, str] | None = None,
    types: Iterable[str] | None = None,
    source: str = "gold",
) -> list[Example]:
    """Reads a Twitter-2015/2017-style CoNLL file into examples without boxes (image ``<id>.jpg``).

    ``type_map`` defaults to ``{"MISC": "OTHER"}``.
    """
    type_map = TWITTER_MNER_TYPE_MAP if type_map is None else type_map
    return [
        Example(id=p.id, tokens=p.tokens, image=f"{p.id}.jpg", entities=tags_to_entities(p.tags), source=source)
        for p in iter_conll_posts(path, type_map=type_map, types=types)
    ]


def write_conll(examples: Iterable[Example], path: str | Path) -> None:
    """Writes examples as Twitter-style CoNLL BIO (``IMGID:<id>``, ``token<TAB>tag``, blank line).

    Raises:
        DataFormatError: A token with whitespace or an id with a line break, which could not be read back; nothing
            is written then.
    """
    path = Path(path)
    examples = list(examples)
    for ex in examples:
        bad = next((t for t in ex.tokens if any(c.isspace() for c in t)), None)
        if bad is not None:
            raise DataFormatError(
                path, f"token {bad!r} contains whitespace; a CoNLL file could not hold it", record=ex.id
            )
        if ex.id != ex.id.strip() or any(c in ex.id for c in "\r\n"):
            raise DataFormatError(
                path,
                "the post id has a line break or surrounding whitespace; a CoNLL 'IMGID:' line could not hold it",
                record=repr(ex.id),
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            fh.write(f"IMGID:{ex.id}\n")
            for token, tag in zip(ex.tokens, entities_to_tags(len(ex.tokens), ex.entities)):
                fh.write(f"{token}\t{tag}\n")
            fh.write("\n")
