"""Turning an LLM sample (text + entity strings) into a labelled post on the project's tokenisation."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from refineg.data import Entity
from refineg.data.spans import locate_spans
from refineg.data.tokenize import word_tokenize
from refineg.stages.synthesis.report import SynthesisReport


class TypeMapper:
    """Maps an LLM's type names onto the inventory.

    A type in the inventory (case-insensitive) maps to itself, then ``type_map`` (case-insensitive keys) applies,
    then ``default_type``; with ``default_type=None`` the type is unknown and the entity is dropped.

    Args:
        types: The inventory, e.g. ``["PER", "LOC", "ORG", "OTHER"]``.
        type_map: Renames, e.g. ``{"PERSON": "PER"}``.
        default_type: Type of any other name, or ``None``.
    """

    def __init__(
        self, types: Sequence[str], type_map: Mapping[str, str] | None = None, default_type: str | None = None
    ) -> None:
        self.types = list(types)
        self._lookup = {t.casefold(): t for t in self.types}
        self._map = {k.casefold(): v for k, v in (type_map or {}).items()}
        self.default_type = default_type

    def __call__(self, name: str) -> tuple[str | None, bool]:
        """``(type, renamed)``: the inventory type (``None`` when unknown) and whether it differs from ``name``."""
        key = name.strip().casefold()
        if key in self._lookup:
            return self._lookup[key], self._lookup[key] != name
        if key in self._map:
            return self._map[key], True
        return self.default_type, self.default_type is not None


def label_text(
    text: str, mentions: Sequence[tuple[str, str]], mapper: TypeMapper, report: SynthesisReport
) -> tuple[list[str], list[Entity]]:
    """Tokenises ``text`` and labels its mentions.

    Mentions are located by exact token match, longest first, without overlaps
    (:func:`refineg.data.spans.locate_spans`); a mention listed twice labels two occurrences. Counted in
    ``report.dropped_entities``: ``empty_name``, ``type_unknown`` (no mapping) and ``not_found`` (no free
    occurrence in the text, e.g. the LLM changed the spelling or the mention overlaps a longer one).
    Renamed types are counted in ``report.mapped_types``.

    Args:
        text: The sample's text.
        mentions: ``(name, type)`` pairs as the LLM gave them.
        mapper: Type mapping onto the inventory.
        report: Counters to update.

    Returns:
        ``(tokens, entities)`` with entities sorted by start.
    """
    tokens = word_tokenize(text)
    names, types = [], []
    for name, raw_type in mentions:
        if not word_tokenize(name):
            report.drop_entity("empty_name")
            continue
        etype, renamed = mapper(raw_type)
        if etype is None:
            report.drop_entity("type_unknown")
            continue
        if renamed:
            report.mapped_types[f"{raw_type}->{etype}"] += 1
        names.append(name)
        types.append(etype)
    entities = []
    for span, etype in zip(locate_spans(tokens, names), types):
        if span is None:
            report.drop_entity("not_found")
        else:
            entities.append(Entity(span[0], span[1], etype))
    return tokens, sorted(entities, key=lambda e: e.start)
