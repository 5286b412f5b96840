"""The unlabelled pool of self-training: ``data.unlabeled``, or the training posts outside the gold sample."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig

from refineg.config import resolve_data_root
from refineg.data import Example, ReadReport, read_jsonl
from refineg.data.formats import create_data_format
from refineg.datamodules.gmner import gold_posts, read_split
from refineg.errors import UsageError

logger = logging.getLogger(__name__)

#: File name suffix -> format of an unlabelled file (``data.unlabeled_format`` overrides it).
SUFFIX_FORMATS = {".jsonl": "jsonl", ".json": "ccks"}


@dataclass
class UnlabeledPool:
    """Posts to pseudo-label, without labels.

    Attributes:
        posts: The pool's posts; every one has no entities.
        hidden: The withheld gold posts by id when the pool comes from the training split
            (``data.unlabeled_from_train``), or the file's own labels with ``data.unlabeled_hidden_gold``: used
            only to measure pseudo-label precision, never for training.
        source: Where the posts come from (for reports).
    """

    posts: list[Example]
    hidden: dict[str, Example] | None
    source: str


def unlabeled_format(data: DictConfig, path: Path) -> str:
    """The format of ``data.unlabeled``: ``data.unlabeled_format``, else from the name (a folder is Flickr30k)."""
    if data.unlabeled_format:
        return str(data.unlabeled_format)
    if path.is_dir():
        return "flickr30k-entities"
    if path.suffix == ".txt":
        return data.format if data.format in ("twitter-gmner", "conll") else "conll"
    if path.suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[path.suffix]
    raise UsageError(f"data.unlabeled={path}: cannot tell its format from the name; set data.unlabeled_format=NAME")


def read_unlabeled(data: DictConfig) -> list[Example]:
    """Reads ``data.unlabeled`` (relative paths are relative to ``data.root``, like the splits); labels are ignored.

    Raises:
        FileNotFoundError: The file does not exist.
        UsageError: A name whose format cannot be told.
        KeyError: An unknown ``data.unlabeled_format`` (the message lists the registered formats).
        DataFormatError: Unreadable content (named by file and line).
    """
    path = resolve_data_root(data) / str(data.unlabeled)
    if not path.exists():
        raise FileNotFoundError(f"data.unlabeled={data.unlabeled}: {path} not found")
    fmt = unlabeled_format(data, path)
    data_format = create_data_format(fmt)  # an unknown name raises and lists the registered formats
    report = ReadReport()
    # every reader with the type check off: the labels are dropped anyway
    if fmt == "jsonl":
        posts = read_jsonl(path, report=report, allow_overlaps=True)
    elif fmt in ("twitter-gmner", "ccks"):
        posts = data_format.reader(path, None, types=None, report=report)
    elif fmt == "conll":
        posts = data_format.reader(path, types=None)
    elif fmt == "flickr30k-entities":
        posts = data_format.reader(path, report=report)
    else:
        posts = data_format.reader(path)
    return posts


def build_pool(data: DictConfig, seed: int) -> UnlabeledPool:
    """The unlabelled pool for a data config and training seed.

    ``data.unlabeled_from_train``: the training posts that the gold sample of ``data.gold_limit`` and ``seed`` (or
    ``data.gold_seed``) leaves out (exactly the complement of what training draws), their labels hidden.
    ``data.unlabeled_limit`` keeps a sample of the pool drawn with ``seed``.

    Raises:
        UsageError: Neither or both pool sources, or a training-split pool without ``data.gold_limit``.
    """
    if data.unlabeled and data.unlabeled_from_train:
        raise UsageError("set data.unlabeled=FILE or data.unlabeled_from_train=true, not both")
    hidden: dict[str, Example] | None = None
    if data.unlabeled_from_train:
        train = read_split(data, "train")
        if data.gold_limit is None or data.gold_limit >= len(train):
            raise UsageError(
                "data.unlabeled_from_train=true needs data.gold_limit below the number of training posts "
                f"({len(train)}): the pool is the training posts outside the gold sample"
            )
        gold_ids = {e.id for e in gold_posts(train, data, seed)}
        rest = [e for e in train if e.id not in gold_ids]
        hidden = {e.id: e for e in rest}
        source = f"training posts outside the {len(gold_ids)} gold posts (labels hidden)"
    elif data.unlabeled:
        rest = read_unlabeled(data)
        source = str(data.unlabeled)
        if len({e.id for e in rest}) != len(rest):
            raise UsageError(f"data.unlabeled={data.unlabeled}: post ids must be unique")
        if data.unlabeled_hidden_gold:  # e.g. the training posts themselves (self-distillation on full data)
            hidden = {e.id: e for e in rest}
    else:
        raise UsageError("self-training needs unlabelled posts: data.unlabeled=FILE or data.unlabeled_from_train=true")
    if data.unlabeled_limit is not None and data.unlabeled_limit < len(rest):
        rest = random.Random(seed).sample(rest, data.unlabeled_limit)
        if hidden is not None:
            hidden = {e.id: hidden[e.id] for e in rest}
    posts = [Example(e.id, list(e.tokens), e.image, [], source="predicted", image_size=e.image_size) for e in rest]
    logger.info("unlabelled pool: %d posts from %s", len(posts), source)
    return UnlabeledPool(posts, hidden, source)
