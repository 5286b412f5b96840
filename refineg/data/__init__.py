"""Canonical GMNER data model, readers and writers."""

from refineg.data.bio import bio_labels, entities_to_tags, tags_to_entities, tags_to_spans
from refineg.data.errors import DataFormatError, ReadReport
from refineg.data.formats import create_data_format, list_data_formats, read_examples
from refineg.data.jsonl import read_jsonl, write_jsonl
from refineg.data.schema import Entity, Example

__all__ = [
    "DataFormatError",
    "Entity",
    "Example",
    "ReadReport",
    "bio_labels",
    "create_data_format",
    "entities_to_tags",
    "list_data_formats",
    "read_examples",
    "read_jsonl",
    "tags_to_entities",
    "tags_to_spans",
    "write_jsonl",
]
