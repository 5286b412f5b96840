"""Subword encoding of posts with first-subword alignment, casing features, and dynamic-padding collation."""

from __future__ import annotations

import bisect
import logging
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from refineg.data.bio import entities_to_tags
from refineg.data.files import inside_folder
from refineg.data.images import load_image
from refineg.data.schema import Example

logger = logging.getLogger(__name__)
CASING = ("pad", "lower", "title", "upper", "mixed", "numeric", "has_digit", "other")


def casing_class(word: str) -> int:
    """Index into :data:`CASING` of a word's shape (lower, Title, UPPER, mIxed, 123, a1, other)."""
    if word.isdigit():
        return 5
    letters = [c for c in word if c.isalpha()]
    if any(c.isdigit() for c in word):
        return 6
    if not letters:
        return 7
    if all(c.islower() for c in letters):
        return 1
    if all(c.isupper() for c in letters):
        return 3 if len(letters) > 1 else 2
    if letters[0].isupper() and all(c.islower() for c in letters[1:]):
        return 2
    return 4


@dataclass
class EncodedPost:
    """A post ready for batching.

    Attributes:
        index: Position of the post in its dataset.
        input_ids: Subword ids with special tokens, truncated to ``max_length``.
        word_starts: Per kept word, the position of its first subword (words without pieces reuse the previous
            position, so word masks stay left-aligned).
        word_pieces: Per kept word, ``(first, last_exclusive)`` subword positions (for word dropout).
        casing: Casing class per kept word.
        labels: Label id per kept word (-100 when unlabelled).
        weight: Loss weight of the post.
        image: Image file path (read only by image-aware models), or ``None``.
        word_ends: Per kept word, the position after its last subword (its first subword + 1 when it has none).
        entities: Gold entities inside the kept words as ``(start, end_exclusive, type_id, has_box)`` (groundability
            targets; type ids follow the order of the ``B-`` labels).
        targets: Per kept word, a label distribution (soft pseudo-labels; an all-zero row = unlabelled word), or
            ``None`` for the hard ``labels`` (where ``-100`` at a kept word also means unlabelled).
    """

    index: int
    input_ids: list[int]
    word_starts: list[int]
    word_pieces: list[tuple[int, int]]
    casing: list[int]
    labels: list[int]
    weight: float = 1.0
    image: str | None = None
    word_ends: list[int] = field(default_factory=list)
    entities: list[tuple[int, int, int, int]] = field(default_factory=list)
    targets: list[list[float]] | None = None

    @property
    def partial(self) -> bool:
        """Whether the post has soft targets or unlabelled kept words (the loss then needs ``targets``)."""
        return self.targets is not None or -100 in self.labels


def target_rows(post: EncodedPost, num_labels: int) -> np.ndarray:
    """``(W, K)`` label distribution per kept word: the soft targets, or one-hot labels (unlabelled words: zeros)."""
    if post.targets is not None:
        return np.asarray(post.targets, dtype=np.float32).reshape(len(post.word_starts), num_labels)
    rows = np.zeros((len(post.word_starts), num_labels), np.float32)
    labels = np.asarray(post.labels, dtype=np.int64)
    known = labels >= 0
    rows[np.nonzero(known)[0], labels[known]] = 1.0
    return rows


def encode_posts(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    label_ids: dict[str, int] | None,
    max_length: int = 128,
    weights: Sequence[float] | None = None,
    image_dir: str | Path | None = None,
    batch: int = 512,
) -> list[EncodedPost]:
    """Tokenises posts (pre-split words) with a fast tokenizer and aligns each word to its first subword.

    Words cut off by ``max_length`` are dropped from the encoding (the decoder tags them ``O``).
    ``label_ids=None`` encodes without labels (prediction). With ``image_dir`` each post records
    ``image_dir / example.image``.

    Raises:
        KeyError: With labels, an entity type outside ``label_ids`` (the post is named).
        DataFormatError: An image name that would leave ``image_dir``.
    """
    out: list[EncodedPost] = []
    type_ids = {t[2:]: i for i, t in enumerate(t for t in (label_ids or {}) if t.startswith("B-"))}
    for lo in range(0, len(examples), batch):
        chunk = examples[lo : lo + batch]
        enc = tokenizer(
            [list(ex.tokens) for ex in chunk], is_split_into_words=True, truncation=True, max_length=max_length
        )
        for k, ex in enumerate(chunk):
            word_ids = enc.word_ids(k)
            firsts: dict[int, int] = {}
            lasts: dict[int, int] = {}
            for pos, w in enumerate(word_ids):
                if w is not None:
                    firsts.setdefault(w, pos)
                    lasts[w] = pos + 1
            kept = max(firsts) + 1 if firsts else 0
            starts, pieces, prev = [], [], 0
            for w in range(kept):
                if w in firsts:
                    prev = firsts[w]
                    pieces.append((firsts[w], lasts[w]))
                else:
                    pieces.append((prev, prev))
                starts.append(prev)
            entities = []
            if label_ids is not None:
                tags = entities_to_tags(len(ex.tokens), ex.entities)[:kept]
                unknown = next((t for t in tags if t not in label_ids), None)
                if unknown is not None:
                    raise KeyError(
                        f"post {ex.id}: entity type {unknown[2:]!r} is not one of the tagger's types {sorted(type_ids)}"
                    )
                labels = [label_ids[t] for t in tags]
                entities = [
                    (e.start, e.end, type_ids[e.type], int(bool(e.boxes)))
                    for e in ex.entities
                    if e.end <= kept and e.type in type_ids
                ]
            else:
                labels = [-100] * kept
            out.append(
                EncodedPost(
                    index=lo + k,
                    input_ids=enc["input_ids"][k],
                    word_starts=starts,
                    word_pieces=pieces,
                    casing=[casing_class(t) for t in ex.tokens[:kept]],
                    labels=labels,
                    weight=1.0 if weights is None else float(weights[lo + k]),
                    image=str(inside_folder(image_dir, ex.image, "image", record=ex.id))
                    if image_dir and ex.image
                    else None,
                    word_ends=[max(hi, first + 1) for (_, hi), first in zip(pieces, starts)],
                    entities=entities,
                )
            )
    return out


def _scatter(rows: Iterable[Sequence[int]], mask: np.ndarray, fill: int) -> np.ndarray:
    """A ``mask``-shaped int64 array of ``fill`` whose True positions take the concatenated ``rows``.

    Boolean-mask assignment fills row by row, so left-aligned masks of the rows' lengths put each row in its line.
    """
    out = np.full(mask.shape, fill, dtype=np.int64)
    flat = np.fromiter(chain.from_iterable(rows), np.int64)
    if flat.size != int(mask.sum()):  # a field longer or shorter than its post's words/subwords would shift rows
        raise ValueError(
            f"collator: {flat.size} values for {int(mask.sum())} positions (a post's fields disagree in length)"
        )
    out[mask] = flat
    return out


def pack_rows(lengths: Sequence[int], row_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Places sequences into rows of ``row_length`` slots, best fit in decreasing length order.

    Returns:
        Per sequence its row and its offset in the row, and the number of rows.

    Raises:
        ValueError: A sequence is longer than a row.
    """
    row, offset = np.zeros(len(lengths), np.int64), np.zeros(len(lengths), np.int64)
    fill: list[int] = []
    rooms: list[tuple[int, int]] = []  # (free slots, row) of rows with room left, sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[i]
        if n > row_length:
            raise ValueError(
                f"a post of {n} subwords does not fit a packed row of {row_length} (data.pack_length "
                "must be at least data.max_length)"
            )
        k = bisect.bisect_left(rooms, (n, -1))  # the fullest row that still has room
        if k == len(rooms):
            r = len(fill)
            fill.append(0)
        else:
            r = rooms.pop(k)[1]
        row[i], offset[i] = r, fill[r]
        fill[r] += n
        if fill[r] < row_length:
            bisect.insort(rooms, (row_length - fill[r], r))
    return row, offset, len(fill)


def packed_cu_seqlens(segment_ids: np.ndarray, n_posts: int) -> np.ndarray:
    """Sequence boundaries of packed rows in flattened order, padded to a length fixed by the batch's shape.

    Args:
        segment_ids: ``(R, L)`` segment of each slot (posts numbered from 1, padding 0).
        n_posts: Posts in the batch.

    Returns:
        ``(n_posts + R + 1,)`` int32 cumulative offsets: each post and each row's padding tail is one sequence,
        then empty sequences at ``R * L``.
    """
    rows, length = segment_ids.shape
    flat = segment_ids.reshape(-1)
    change = np.ones(flat.size, bool)
    change[1:] = flat[1:] != flat[:-1]
    change[::length] = True  # a row never continues the previous one
    starts = np.flatnonzero(change)
    out = np.full(n_posts + rows + 1, flat.size, np.int32)
    out[: starts.size] = starts
    return out


class PostCollator:
    """Pads a list of :class:`EncodedPost` into tensors; optional word dropout (training only).

    Args:
        pad_id: Tokenizer pad id.
        unk_id: Id that replaces every piece of a dropped word.
        word_dropout: Probability of dropping each word.
        image_transform: PIL image -> ``(3, H, W)`` tensor; when set, batches carry ``pixel_values`` and
            ``image_mask`` (False for posts whose image is missing or unreadable: those are tagged text-only).
        pad_to_multiple_of: Round the padded subword and word lengths up to a multiple of this (0 = off), so that
            compiled graphs and CUDA graphs see few distinct shapes. With packing it rounds the word length only.
        pack_length: Pack several posts into each row of this many subwords (0 = one post per row): the encoder
            then computes almost no padding. Packed batches add ``position_ids`` and ``segment_ids`` ``(R, L)``
            (a post attends only within its segment), and ``word_index`` points into the flattened ``R * L``
            subwords; see :meth:`refineg.modules.tagger.SequenceTagger.encode`.
        num_labels: Size of the label inventory. When set (training), a batch with soft or partial labels (see
            :attr:`EncodedPost.partial`) also carries ``targets`` ``(B, W, K)``; 0 (prediction): never.
    """

    def __init__(
        self,
        pad_id: int,
        unk_id: int | None = None,
        word_dropout: float = 0.0,
        image_transform: Callable[[Image.Image], torch.Tensor] | None = None,
        pad_to_multiple_of: int = 0,
        pack_length: int = 0,
        num_labels: int = 0,
    ) -> None:
        self.pad_id, self.unk_id, self.word_dropout = pad_id, unk_id, word_dropout
        self.num_labels = num_labels
        self.image_transform = image_transform
        self.multiple = pad_to_multiple_of
        self.pack_length = pack_length
        self.missing_images = 0

    def _images(self, posts: Sequence[EncodedPost]) -> tuple[torch.Tensor, torch.Tensor]:
        pixels, present = [], []
        for p in posts:
            img = None
            if p.image and Path(p.image).is_file():
                try:
                    img = self.image_transform(load_image(p.image))
                except OSError as err:
                    logger.warning("%s: unreadable image (%s); post tagged text-only", p.image, err)
            if img is None:
                self.missing_images += 1
            pixels.append(img)
            present.append(img is not None)
        shape = next((x.shape for x in pixels if x is not None), None)
        if shape is None:
            shape = self.image_transform(Image.new("RGB", (32, 32))).shape
        pixels = [x if x is not None else torch.zeros(shape) for x in pixels]
        return torch.stack(pixels), torch.tensor(present)

    def __call__(self, posts: Sequence[EncodedPost]) -> dict[str, torch.Tensor]:
        """Pads posts into a batch.

        Returns:
            ``input_ids``/``attention_mask`` ``(B, S)``, ``word_index``/``word_mask``/``casing``/``labels``
            ``(B, W)``, ``weight`` and ``index`` ``(B,)``, plus ``pixel_values``/``image_mask`` with images.
            Groundability targets: ``word_end`` ``(B, W)`` (see :attr:`EncodedPost.word_ends`), ``entity_spans``
            ``(N, 3)`` ``[post, start, end_exclusive]`` word positions, ``entity_types`` ``(N,)`` and
            ``entity_grounded`` ``(N,)`` (1.0 when the gold entity has a box). Packed (``pack_length``):
            ``input_ids``/``attention_mask``/``position_ids``/``segment_ids`` are ``(R, pack_length)``, and
            ``cu_seqlens`` ``(B + R + 1,)`` int32 holds the posts' boundaries for variable-length attention
            (:func:`packed_cu_seqlens`).
        """
        s_lens = np.array([len(p.input_ids) for p in posts])
        w_lens = np.array([len(p.word_starts) for p in posts])
        s_len, w_len = int(s_lens.max()), max(1, int(w_lens.max()))
        if self.multiple > 1:
            s_len, w_len = (-(-n // self.multiple) * self.multiple for n in (s_len, w_len))
        words = np.arange(w_len) < w_lens[:, None]  # (B, W) kept words
        packed: dict[str, np.ndarray] = {}
        if self.pack_length:
            row, offset, rows = pack_rows(s_lens.tolist(), self.pack_length)
            start = row * self.pack_length + offset  # flat position of each post's first subword
            within = np.arange(int(s_lens.sum())) - np.repeat(np.cumsum(s_lens) - s_lens, s_lens)
            flat = np.repeat(start, s_lens) + within
            shape = (rows, self.pack_length)
            input_ids = np.full(rows * self.pack_length, self.pad_id, np.int64)
            input_ids[flat] = np.fromiter(chain.from_iterable(p.input_ids for p in posts), np.int64, flat.size)
            tokens = np.zeros(rows * self.pack_length, bool)
            tokens[flat] = True
            segment = np.repeat(np.arange(1, len(posts) + 1), s_lens)  # 0 = padding
            for name, values in (("position_ids", within), ("segment_ids", segment)):
                packed[name] = np.zeros(rows * self.pack_length, np.int64)
                packed[name][flat] = values
            input_ids, tokens = input_ids.reshape(shape), tokens.reshape(shape)
            packed = {k: v.reshape(shape) for k, v in packed.items()}
            packed["cu_seqlens"] = packed_cu_seqlens(packed["segment_ids"], len(posts))
        else:
            start = np.arange(len(posts)) * s_len
            tokens = np.arange(s_len) < s_lens[:, None]  # (B, S) real subwords
            input_ids = _scatter((p.input_ids for p in posts), tokens, self.pad_id)
        if self.word_dropout > 0 and self.unk_id is not None:
            # One random.random() per word with pieces, posts and words in order (as a per-post loop would draw);
            # the flat positions of every piece of the dropped words take the unknown id.
            dropped = [
                start[b] + i
                for b, p in enumerate(posts)
                for lo, hi in p.word_pieces
                if hi > lo and random.random() < self.word_dropout
                for i in range(lo, hi)
            ]
            input_ids.reshape(-1)[dropped] = self.unk_id
        word_index = _scatter((p.word_starts for p in posts), words, 0)
        if self.pack_length:
            word_index += start[:, None]
        casing = _scatter((p.casing for p in posts), words, 0)
        labels = _scatter((p.labels for p in posts), words, -100)
        word_end = _scatter((p.word_ends or [x + 1 for x in p.word_starts] for p in posts), words, 1)
        # A post whose words were all cut keeps one masked-in position so CRF masks stay valid.
        words[:, 0] = True
        ents = [(b, s, e, t, g) for b, p in enumerate(posts) for s, e, t, g in p.entities]
        arrays = {
            "input_ids": input_ids,
            "attention_mask": tokens.astype(np.int64),
            "word_index": word_index,
            "word_mask": words,
            "casing": casing,
            "labels": labels,
        }
        batch = {k: torch.from_numpy(v) for k, v in {**arrays, **packed}.items()}
        batch.update(
            weight=torch.tensor([p.weight for p in posts]),
            index=torch.tensor([p.index for p in posts]),
            word_end=torch.from_numpy(word_end),
            entity_spans=torch.tensor([r[:3] for r in ents], dtype=torch.long).reshape(-1, 3),
            entity_types=torch.tensor([r[3] for r in ents], dtype=torch.long),
            entity_grounded=torch.tensor([float(r[4]) for r in ents]),
        )
        if self.num_labels and any(p.partial for p in posts):
            # soft or partial labels: per-word label distributions (B, W, K), all zero where a word is unlabelled
            k = self.num_labels
            targets = np.zeros((len(posts), w_len, k), np.float32)
            for b, p in enumerate(posts):
                targets[b, : len(p.word_starts)] = target_rows(p, k)
            batch["targets"] = torch.from_numpy(targets)
        if self.image_transform is not None:
            batch["pixel_values"], batch["image_mask"] = self._images(posts)
        return batch
