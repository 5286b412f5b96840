"""Registry of data formats: one reader (and writer) per on-disk layout, created by name."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refineg.data.ccks import read_ccks, write_ccks
from refineg.data.conll import read_conll, write_conll
from refineg.data.errors import ReadReport
from refineg.data.flickr30k import read_flickr30k_entities
from refineg.data.jsonl import read_jsonl, write_jsonl
from refineg.data.schema import Example
from refineg.data.twitter_gmner import read_twitter_gmner, write_twitter_gmner
from refineg.registry import Registry

DATA_FORMATS = Registry("data format")


#: ``split_reader(path, root, data, report)``: one training split at ``path``; ``root`` is the data folder, ``data``
#: the ``data`` config (``types``, ``xml_dir``, ...), ``report`` collects reader warnings.
SplitReader = Callable[[Path, Path, Mapping[str, Any], ReadReport], list[Example]]


@dataclass(frozen=True)
class DataFormat:
    """A reader and a writer; ``paths`` names the path arguments both take (``out_`` prefixed for the writer).

    ``writer`` is ``None`` for a read-only format. ``split_reader`` (:data:`SplitReader`) reads a training split
    from a ``data`` config (``data.format=<name>`` in ``train.py``); ``None``: not a training format (convert it to
    JSONL first).
    """

    name: str
    reader: Any
    writer: Any | None
    paths: tuple[str, ...]
    split_reader: SplitReader | None = None


def _register(fmt: DataFormat) -> None:
    DATA_FORMATS.register(fmt.name)(lambda: fmt)


def _jsonl_split(path: Path, root: Path, data: Mapping[str, Any], report: ReadReport) -> list[Example]:
    return read_jsonl(path, types=list(data["types"]), report=report)


def _twitter_gmner_split(path: Path, root: Path, data: Mapping[str, Any], report: ReadReport) -> list[Example]:
    xml = root / data["xml_dir"] if data.get("xml_dir") else None
    return read_twitter_gmner(path, xml, types=list(data["types"]), report=report)


def _conll_split(path: Path, root: Path, data: Mapping[str, Any], report: ReadReport) -> list[Example]:
    return read_conll(path, types=list(data["types"]))


_register(DataFormat("jsonl", read_jsonl, write_jsonl, ("path",), _jsonl_split))
_register(
    DataFormat("twitter-gmner", read_twitter_gmner, write_twitter_gmner, ("txt", "xml_dir"), _twitter_gmner_split)
)
_register(DataFormat("conll", read_conll, write_conll, ("path",), _conll_split))
_register(DataFormat("ccks", read_ccks, write_ccks, ("text_json", "entity_json")))
_register(DataFormat("flickr30k-entities", read_flickr30k_entities, None, ("root",)))


def create_data_format(name: str) -> DataFormat:
    """Returns the :class:`DataFormat` registered as ``name``; unknown names raise and list the known ones."""
    return DATA_FORMATS.create(name)


def list_data_formats() -> list[str]:
    """Names of the registered data formats."""
    return DATA_FORMATS.list()


def read_examples(name: str, **kwargs: Any) -> list[Example]:
    """Reads examples with the reader of format ``name`` (keyword arguments as that reader takes)."""
    return create_data_format(name).reader(**kwargs)
