"""PostCollator's bulk scatter against a plain per-post reference on real sample posts."""

import random

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer

from refineg.config import SAMPLE_ROOT
from refineg.data import Example, bio_labels
from refineg.data.twitter_gmner import TWITTER_GMNER_TYPES, read_twitter_gmner
from refineg.datamodules.encoding import EncodedPost, PostCollator, encode_posts
from refineg.weights import resolve_encoder

IDS = {t: i for i, t in enumerate(bio_labels(list(TWITTER_GMNER_TYPES)))}


def reference(posts, pad_id, unk_id, word_dropout=0.0, multiple=0, image_transform=None):
    """Pads one post at a time into Python lists (one random.random() per word with pieces, in order)."""
    s_len = max(len(p.input_ids) for p in posts)
    w_len = max(1, max(len(p.word_starts) for p in posts))
    if multiple > 1:
        s_len = (s_len + multiple - 1) // multiple * multiple
        w_len = (w_len + multiple - 1) // multiple * multiple
    rows = {k: [] for k in ("input_ids", "attention_mask", "word_index", "word_mask", "casing", "labels", "word_end")}
    for p in posts:
        ids = list(p.input_ids)
        if word_dropout > 0:
            for lo, hi in p.word_pieces:
                if hi > lo and random.random() < word_dropout:
                    for i in range(lo, hi):
                        ids[i] = unk_id
        s_pad, n = s_len - len(ids), len(p.word_starts)
        w_pad = w_len - n
        rows["input_ids"].append(ids + [pad_id] * s_pad)
        rows["attention_mask"].append([1] * len(ids) + [0] * s_pad)
        rows["word_index"].append(list(p.word_starts) + [0] * w_pad)
        rows["word_mask"].append([True] + [i < n for i in range(1, w_len)])
        rows["casing"].append(list(p.casing) + [0] * w_pad)
        rows["labels"].append(list(p.labels) + [-100] * w_pad)
        ends = list(p.word_ends) if p.word_ends else [s + 1 for s in p.word_starts]
        rows["word_end"].append(ends + [1] * w_pad)
    out = {k: torch.tensor(v, dtype=torch.bool if k == "word_mask" else torch.long) for k, v in rows.items()}
    spans, types, grounded = [], [], []
    for b, p in enumerate(posts):
        for start, end, type_id, has_box in p.entities:
            spans.append([b, start, end])
            types.append(type_id)
            grounded.append(float(has_box))
    out["weight"] = torch.tensor([float(p.weight) for p in posts], dtype=torch.float32)
    out["index"] = torch.tensor([p.index for p in posts], dtype=torch.long)
    out["entity_spans"] = torch.tensor(spans, dtype=torch.long).reshape(-1, 3)
    out["entity_types"] = torch.tensor(types, dtype=torch.long)
    out["entity_grounded"] = torch.tensor(grounded, dtype=torch.float32)
    if image_transform is not None:
        pixels = []
        for p in posts:
            if p.image:
                with Image.open(p.image) as raw:
                    pixels.append(image_transform(raw.convert("RGB")))
            else:
                pixels.append(None)
        shape = next(x.shape for x in pixels if x is not None)
        out["pixel_values"] = torch.stack([torch.zeros(shape) if x is None else x for x in pixels])
        out["image_mask"] = torch.tensor([x is not None for x in pixels])
    return out


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert torch.equal(got[k], want[k]), k


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(resolve_encoder("minilm"))


@pytest.fixture(scope="module")
def posts(tok):
    train = read_twitter_gmner(SAMPLE_ROOT / "txt" / "train.txt", SAMPLE_ROOT / "xml")
    dev = read_twitter_gmner(SAMPLE_ROOT / "txt" / "dev.txt", SAMPLE_ROOT / "xml")
    out = encode_posts(train, tok, IDS, max_length=128, weights=[0.5 + (i % 3) for i in range(len(train))])
    out += encode_posts(dev[:60], tok, IDS, max_length=12)  # truncated posts
    out += encode_posts(dev[60:80], tok, None, max_length=64)  # unlabelled (prediction) posts
    out += encode_posts(
        [Example("cut", ["x"] * 5), Example("zw", ["hello", "\u200b", "world"])], tok, IDS, max_length=2
    )  # no word kept
    out += encode_posts([Example("zw2", ["a", "\u200b", "b", "\u200b"])], tok, IDS, max_length=16)  # pieceless words
    assert any(not p.word_starts for p in out) and any(p.entities for p in out)
    assert any(hi == lo for p in out for lo, hi in p.word_pieces)
    out.append(
        EncodedPost(
            index=999, input_ids=[101, 7592, 102], word_starts=[1], word_pieces=[(1, 2)], casing=[1], labels=[0]
        )
    )  # no word_ends: falls back to start + 1
    return out


@pytest.mark.parametrize("multiple", [0, 8])
@pytest.mark.parametrize("word_dropout", [0.0, 0.3])
def test_matches_reference(tok, posts, word_dropout, multiple):
    rng = random.Random(0)
    batches = [posts[:32], posts[-40:], [posts[-1]], rng.sample(posts, 200)]
    collate = PostCollator(tok.pad_token_id, tok.unk_token_id, word_dropout, pad_to_multiple_of=multiple)
    for seed, batch in enumerate(batches):
        random.seed(seed)
        want = reference(batch, tok.pad_token_id, tok.unk_token_id, word_dropout, multiple)
        after_reference = random.random()
        random.seed(seed)
        got = collate(batch)
        assert random.random() == after_reference  # same number of draws, so later draws are unchanged
        assert_same(got, want)
        if word_dropout and len(batch) > 1:
            assert (got["input_ids"] == tok.unk_token_id).sum() > 0
        if multiple:
            assert got["input_ids"].shape[1] % multiple == 0 and got["word_mask"].shape[1] % multiple == 0


def test_matches_reference_with_images(tok, posts, tmp_path):
    Image.new("RGB", (20, 10), (200, 30, 10)).save(tmp_path / "a.jpg")
    batch = [
        EncodedPost(**{**vars(p), "image": str(tmp_path / "a.jpg") if i % 2 else None}) for i, p in enumerate(posts[:6])
    ]

    def transform(img):
        return torch.tensor(list(img.resize((4, 4)).getdata()), dtype=torch.float32).T.reshape(3, 4, 4)

    random.seed(3)
    got = PostCollator(tok.pad_token_id, tok.unk_token_id, 0.2, image_transform=transform)(batch)
    random.seed(3)
    assert_same(got, reference(batch, tok.pad_token_id, tok.unk_token_id, 0.2, image_transform=transform))
    assert got["image_mask"].tolist() == [False, True] * 3 and got["pixel_values"][1].sum() > 0


def test_field_length_mismatch_is_an_error():
    import numpy as np

    from refineg.datamodules.encoding import _scatter

    mask = np.array([[True, True, False], [True, False, False]])
    np.testing.assert_array_equal(_scatter([[1, 2], [3]], mask, -1), [[1, 2, -1], [3, -1, -1]])
    with pytest.raises(ValueError, match="4 values for 3 positions"):
        _scatter([[1, 2, 9], [3]], mask, -1)
