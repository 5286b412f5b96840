"""The LLM-free swap synthesiser: valid spans, preserved types, determinism, gazetteer file."""

import pytest

from refineg.data.tokenize import word_tokenize
from refineg.stages.synthesis import SwapSynthesizer, SynthesisReport, build_gazetteer, create_synthesizer
from refineg.stages.synthesis.swap_synthesizer import recombine, swap_mentions
from tests.stages.conftest import post

TYPES = ["PER", "LOC", "ORG", "OTHER"]


def seeds():
    return [
        post("1", "Obama visits London with Michelle Obama today", (0, 1, "PER"), (2, 3, "LOC"), (4, 6, "PER")),
        post(
            "2", "Taylor Swift plays Wembley Stadium tonight with Coldplay", (0, 2, "PER"), (3, 5, "LOC"), (7, 8, "ORG")
        ),
        post("3", "NASA launches a new rocket from Florida this morning", (0, 1, "ORG"), (6, 7, "LOC")),
        post("4", "what a lovely day at the beach with friends"),
        post("5", "so tired after work , going to bed early tonight"),
    ]


def test_swap_mentions_spans_follow_new_lengths():
    import random

    s = seeds()[0]
    gaz = {"PER": [("Obama",), ("Kim", "Jong", "Un")], "LOC": [("London",), ("New", "York")]}
    tokens, ents, swaps = swap_mentions(s.tokens, s.entities, gaz, random.Random(0))
    assert tokens[:4] == ["Kim", "Jong", "Un", "visits"]
    assert [(" ".join(tokens[e.start : e.end]), e.type) for e in ents] == [
        ("Kim Jong Un", "PER"),
        ("New York", "LOC"),
        ("Obama", "PER"),
    ]
    assert swaps == [["Obama", "Kim Jong Un"], ["London", "New York"], ["Michelle Obama", "Obama"]]


def test_recombine_cuts_outside_entities():
    import random

    a, b = seeds()[0], seeds()[1]
    for seed in range(20):
        tokens, ents = recombine(a, b, random.Random(seed))
        for e in ents:  # every entity is a whole mention of a or b
            surface = tuple(tokens[e.start : e.end])
            assert surface in {tuple(s.tokens[x.start : x.end]) for s in (a, b) for x in s.entities}


def test_swap_output_valid_types_preserved_and_deterministic():
    synth = create_synthesizer("swap", types=TYPES, per_seed=6, recombine_prob=0.5, seed=3, progress=False)
    assert isinstance(synth, SwapSynthesizer)
    report = SynthesisReport()
    out = synth.synthesize(seeds(), report)
    assert report.requested == 30 and report.produced == len(out) > 20
    gaz = build_gazetteer(seeds(), TYPES)
    seed_tokens = {tuple(s.tokens) for s in seeds()}
    for ex in out:
        ex.validate()
        assert ex.source == "synthetic" and tuple(ex.tokens) not in seed_tokens
        assert ex.meta["seed_id"] in {"1", "2", "3", "4", "5"} and ex.meta["synthesizer"] == "swap"
        for ent in ex.entities:  # each label is a gazetteer mention of the same type
            assert tuple(ex.tokens[ent.start : ent.end]) in gaz[ent.type]
        new_mentions = [new for _, new in ex.meta["swaps"]]
        surfaces = [" ".join(ex.tokens[e.start : e.end]) for e in ex.entities]
        assert all(m in surfaces for m in new_mentions)
    entity_free = [ex for ex in out if ex.meta["seed_id"] in {"4", "5"}]
    assert entity_free and all(not ex.entities and "partner_id" in ex.meta for ex in entity_free)
    assert len({tuple(ex.tokens) for ex in out}) == len(out)
    again = create_synthesizer("swap", types=TYPES, per_seed=6, recombine_prob=0.5, seed=3, progress=False)
    assert [e.to_dict() for e in again.synthesize(seeds(), SynthesisReport())] == [e.to_dict() for e in out]
    other = create_synthesizer("swap", types=TYPES, per_seed=6, recombine_prob=0.5, seed=4, progress=False)
    assert [e.tokens for e in other.synthesize(seeds(), SynthesisReport())] != [e.tokens for e in out]


def test_swap_counts_impossible_requests():
    # one seed, one mention, nothing to swap it with and no partner: no new post can be made
    synth = SwapSynthesizer(TYPES, per_seed=2, seed=0, progress=False)
    report = SynthesisReport()
    assert synth.synthesize([post("1", "Obama is here", (0, 1, "PER"))], report) == []
    assert report.rejected_posts == {"no_new_variant": 2} and report.requested == 2


def test_gazetteer_file(tmp_path):
    path = tmp_path / "gaz.tsv"
    path.write_text("PER\tAngela Merkel\nLOC\tSão Paulo\n\n", encoding="utf-8")
    gaz = build_gazetteer(seeds(), TYPES, path)
    assert ("Angela", "Merkel") in gaz["PER"] and tuple(word_tokenize("São Paulo")) in gaz["LOC"]
    assert gaz["PER"][0] == ("Obama",)
    path.write_text("PERSON\tAngela Merkel\n")
    with pytest.raises(ValueError, match="gaz.tsv:1"):
        build_gazetteer(seeds(), TYPES, path)
