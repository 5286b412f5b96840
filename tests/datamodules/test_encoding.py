import torch
from transformers import AutoTokenizer

from refineg.data import Entity, Example, bio_labels
from refineg.datamodules.encoding import CASING, PostCollator, casing_class, encode_posts
from refineg.weights import resolve_encoder

LABELS = bio_labels(["PER", "LOC"])
IDS = {t: i for i, t in enumerate(LABELS)}


def tok():
    return AutoTokenizer.from_pretrained(resolve_encoder("minilm"))


def test_first_subword_alignment_and_labels():
    t = tok()
    ex = Example("1", ["Kardashianization", "of", "New", "York"], entities=[Entity(2, 4, "LOC")])
    (enc,) = encode_posts([ex], t, IDS, max_length=64)
    pieces = t(ex.tokens, is_split_into_words=True)
    word_ids = pieces.word_ids()
    assert enc.word_starts == [word_ids.index(w) for w in range(4)]
    assert enc.word_pieces[0][1] - enc.word_pieces[0][0] > 1  # split into several pieces
    assert enc.labels == [IDS["O"], IDS["O"], IDS["B-LOC"], IDS["I-LOC"]]
    assert enc.casing == [CASING.index("title"), CASING.index("lower"), CASING.index("title"), CASING.index("title")]


def test_truncation_drops_trailing_words_and_empty_words_keep_alignment():
    t = tok()
    ex = Example("1", ["a"] * 50)
    (enc,) = encode_posts([ex], t, IDS, max_length=10)
    assert len(enc.word_starts) == 8 and len(enc.input_ids) == 10
    ex2 = Example("2", ["hello", "\u200b", "world"])  # a zero-width word yields no subword
    (enc2,) = encode_posts([ex2], t, IDS, max_length=10)
    assert len(enc2.word_starts) == 3 and enc2.word_starts[1] == enc2.word_starts[0]


def test_casing_classes():
    assert [CASING[casing_class(w)] for w in ["obama", "Obama", "NASA", "iPhone", "2024", "A1", "!!", "I"]] == [
        "lower",
        "title",
        "upper",
        "mixed",
        "numeric",
        "has_digit",
        "other",
        "title",
    ]


def test_collator_pads_and_word_dropout():
    t = tok()
    posts = encode_posts([Example("1", ["a", "b", "c"]), Example("2", ["d"])], t, IDS, 16)
    batch = PostCollator(t.pad_token_id)(posts)
    assert batch["input_ids"].shape == (2, 5) and batch["word_mask"].tolist() == [[True] * 3, [True, False, False]]
    assert batch["labels"][1, 1:].tolist() == [-100, -100]
    torch.manual_seed(0)
    import random

    random.seed(0)
    dropped = PostCollator(t.pad_token_id, t.unk_token_id, word_dropout=1.0)(posts)
    assert (dropped["input_ids"][0, 1:4] == t.unk_token_id).all()
    assert dropped["input_ids"][0, 0] == t.cls_token_id
