import random

import pytest
from seqeval.metrics.sequence_labeling import get_entities

from refineg.data.bio import entities_to_tags, split_tag, tags_to_entities, tags_to_spans


def test_conlleval_rules_on_hand_cases():
    assert tags_to_spans(["B-PER", "I-PER", "O"]) == [(0, 2, "PER")]
    # I- after O starts a chunk; I- of another type starts a new chunk
    assert tags_to_spans(["O", "I-LOC", "I-LOC", "I-PER"]) == [(1, 3, "LOC"), (3, 4, "PER")]
    assert tags_to_spans(["B-ORG", "B-ORG"]) == [(0, 1, "ORG"), (1, 2, "ORG")]
    assert tags_to_spans(["B-ORG", "I-ORG"]) == [(0, 2, "ORG")]
    assert tags_to_spans([]) == []


def test_matches_seqeval_on_random_sequences():
    rng = random.Random(0)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-OTHER", "I-OTHER"]
    for _ in range(2000):
        seq = [rng.choice(tags) for _ in range(rng.randint(0, 12))]
        expected = sorted((s, e + 1, t) for t, s, e in get_entities(seq))
        assert sorted(tags_to_spans(seq)) == expected, seq


def test_round_trip_tags():
    tags = ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "I-LOC"]
    assert entities_to_tags(len(tags), tags_to_entities(tags)) == tags


@pytest.mark.parametrize("bad", ["X-PER", "B-", "b-PER", "PER", ""])
def test_unknown_tag_raises(bad):
    with pytest.raises(ValueError, match="unknown tag"):
        split_tag(bad)
