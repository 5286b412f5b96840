"""Labelling, rule filters, the consistency filter, the train/dev split and the config of the synthesis stage."""

import pytest

from refineg.data import Entity, Example
from refineg.stages.synthesis import (
    GenericMentionRule,
    NearDuplicateIndex,
    SynthesisReport,
    TypeMapper,
    check_consistency,
    disagreement,
    label_text,
    load_synthesis_config,
    reject_generic,
    remove_duplicates,
    split_by_seed,
    within_length,
)
from tests.stages.conftest import post

MAPPER = TypeMapper(["PER", "LOC", "ORG", "OTHER"], {"PERSON": "PER", "CITY": "LOC"}, "OTHER")


def spans(entities, tokens):
    return [(" ".join(tokens[e.start : e.end]), e.type) for e in entities]


def test_labelling_longest_first_without_overlaps():
    report = SynthesisReport()
    tokens, ents = label_text(
        "Michelle Obama and Obama met in New York , not York",
        [("Obama", "PER"), ("Michelle Obama", "PER"), ("York", "LOC"), ("New York", "LOC")],
        MAPPER,
        report,
    )
    # "Michelle Obama" claims tokens 0-1 first, so "Obama" takes its next free occurrence; same for York
    assert spans(ents, tokens) == [("Michelle Obama", "PER"), ("Obama", "PER"), ("New York", "LOC"), ("York", "LOC")]
    assert [e.start for e in ents] == [0, 3, 6, 10]
    assert not report.dropped_entities


def test_labelling_type_mapping_and_not_found_counted():
    report = SynthesisReport()
    tokens, ents = label_text(
        "Obama flew from Chicago to the Louvre yesterday",
        [
            ("Obama", "person"),
            ("Chicago", "City"),
            ("Louvre", "MUSEUM"),
            ("Paris", "LOC"),
            ("Chicago", "LOC"),
            ("  ", "PER"),
        ],
        MAPPER,
        report,
    )
    assert spans(ents, tokens) == [("Obama", "PER"), ("Chicago", "LOC"), ("Louvre", "OTHER")]
    # second "Chicago" has no free occurrence left; "Paris" is not in the text
    assert report.dropped_entities == {"not_found": 2, "empty_name": 1}
    assert report.mapped_types == {"person->PER": 1, "City->LOC": 1, "MUSEUM->OTHER": 1}


def test_labelling_unknown_type_dropped_without_default():
    report = SynthesisReport()
    _, ents = label_text(
        "Obama likes Louvre", [("Obama", "PER"), ("Louvre", "MUSEUM")], TypeMapper(["PER"], {}, None), report
    )
    assert [e.type for e in ents] == ["PER"] and report.dropped_entities == {"type_unknown": 1}


def test_generic_rule_lexicon_strip_and_patterns():
    rule = GenericMentionRule(["police", "fighter jet"], [r"\d+"], ["the", "two", "our"])
    assert rule("police") and rule("The Police") and rule("two fighter jet") and rule("2024")
    assert not rule("Beatles") and not rule("The Beatles") and not rule("F-35A fighter jet")
    assert not rule("Police Academy")


@pytest.mark.parametrize("action", ["drop_entity", "drop_post"])
def test_generic_mentions_rejected(action):
    rule = GenericMentionRule(["police"], [], ["the"])
    examples = [
        post("a", "the police arrested Smith", (0, 2, "ORG"), (3, 4, "PER")),
        post("b", "Smith called NASA", (0, 1, "PER"), (2, 3, "ORG")),
    ]
    report = SynthesisReport()
    kept = reject_generic(examples, rule, action, report)
    if action == "drop_entity":
        assert [len(e.entities) for e in kept] == [1, 2] and kept[0].entities[0].type == "PER"
        assert report.dropped_entities == {"generic_mention": 1} and not report.rejected_posts
    else:
        assert [e.id for e in kept] == ["b"] and report.rejected_posts == {"generic_mention": 1}


def test_length_bounds():
    report = SynthesisReport()
    kept = within_length([post("a", "one two"), post("b", "one two three"), post("c", "1 2 3 4 5 6")], 3, 5, report)
    assert [e.id for e in kept] == ["b"] and report.rejected_posts == {"too_short": 1, "too_long": 1}


def test_duplicates_and_near_duplicates():
    seeds = [post("g", "Obama visits London today with his wife and daughters")]
    candidates = [
        post("s1", "Obama visits London today with his wife and daughters"),  # copy of the seed
        post("s2", "obama visits london today , with his wife and daughters !"),  # same words: copy of the seed
        post("s3", "Obama visits London today with his wife and daughters again"),  # near copy of the seed
        post("s4", "Taylor Swift sings in Paris tonight for her many fans there"),
        post("s5", "taylor swift sings in paris tonight for her many fans there ."),  # exact duplicate of s4
        post("s6", "Taylor Swift sings in Paris tonight for her many fans there again"),  # near duplicate of s4
        post("s7", "Taylor Swift cancels the Berlin concert because of the storm"),  # different enough
    ]
    report = SynthesisReport()
    kept = remove_duplicates(candidates, seeds, 0.7, report)
    assert [e.id for e in kept] == ["s4", "s7"]
    assert report.rejected_posts == {"copy_of_seed": 2, "near_copy_of_seed": 1, "duplicate": 1, "near_duplicate": 1}
    # exact-only mode keeps the near duplicates
    report = SynthesisReport()
    kept = remove_duplicates(candidates, seeds, None, report)
    assert [e.id for e in kept] == ["s3", "s4", "s6", "s7"]


def test_near_duplicate_jaccard_boundary():
    index = NearDuplicateIndex(0.5)
    index.add("a b c d e".split(), "synthetic")  # trigrams abc bcd cde
    assert index.match("a b c d x".split()) == ("near", "synthetic")  # 2 shared of 4 -> 0.5
    assert index.match("a b c x y".split()) is None  # 1 shared of 5 -> 0.2


class FakePredictor:
    """Answers with fixed entities per post id (what a gold-trained tagger would predict)."""

    def __init__(self, predictions):
        self.predictions = predictions

    def predict(self, examples, progress=True):
        out = []
        for e in examples:
            ents = [Entity(s, t, ty, score=sc) for s, t, ty, sc in self.predictions[e.id]]
            out.append(Example(e.id, e.tokens, entities=ents, source="predicted"))
        return out


def consistency_cases():
    examples = [
        # agrees: both labels confirmed; the tagger also finds "Paris" (unlabelled by the LLM)
        post("agree", "Obama met Macron in Paris", (0, 1, "PER"), (2, 3, "PER"), source="synthetic"),
        # 1 of 2 labels contradicted (type): disagreement 0.5
        post("half", "Obama visited Apple in Texas", (0, 1, "PER"), (2, 3, "LOC"), source="synthetic"),
        # both labels contradicted (generic "army" labelled ORG, wrong boundary): disagreement 1.0
        post("bad", "the army of Kim Jong Un", (1, 2, "ORG"), (4, 6, "PER"), source="synthetic"),
    ]
    predictor = FakePredictor(
        {
            "agree": [(0, 1, "PER", 0.99), (2, 3, "PER", 0.9), (4, 5, "LOC", 0.8)],
            "half": [(0, 1, "PER", 0.95), (2, 3, "ORG", 0.7), (4, 5, "LOC", 0.3)],
            "bad": [(3, 6, "PER", 0.9)],
        }
    )
    return examples, predictor


def test_disagreement():
    examples, _ = consistency_cases()
    assert disagreement(examples[1].entities, [Entity(0, 1, "PER"), Entity(2, 3, "ORG")]) == 0.5
    assert disagreement([], [Entity(0, 1, "PER")]) == 0.0


def test_consistency_drop():
    examples, predictor = consistency_cases()
    report = SynthesisReport()
    kept = check_consistency(examples, predictor, "drop", 0.5, True, 0.5, report)
    assert [e.id for e in kept] == ["agree", "half"]
    assert report.rejected_posts == {"inconsistent_with_tagger": 1}
    # "Paris" filled (0.8 >= 0.5); in "half" Texas is below the score floor, Apple overlaps a label
    assert [(e.start, e.type) for e in kept[0].entities] == [(0, "PER"), (2, "PER"), (4, "LOC")]
    assert [(e.start, e.type) for e in kept[1].entities] == [(0, "PER"), (2, "LOC")]
    assert report.filled_entities == 1
    strict = check_consistency(examples, predictor, "drop", 0.0, False, 0.5, SynthesisReport())
    assert [e.id for e in strict] == ["agree"] and len(strict[0].entities) == 2  # no fill


def test_consistency_relabel():
    examples, predictor = consistency_cases()
    report = SynthesisReport()
    kept = check_consistency(examples, predictor, "relabel", 0.4, True, 0.5, report)
    assert [e.id for e in kept] == ["agree", "half", "bad"]
    assert report.relabelled_posts == 2 and not report.rejected_posts
    # relabelled posts carry the tagger's confident entities (Texas at 0.3 left out)
    assert [(e.start, e.end, e.type) for e in kept[1].entities] == [(0, 1, "PER"), (2, 3, "ORG")]
    assert [(e.start, e.end, e.type) for e in kept[2].entities] == [(3, 6, "PER")]
    assert kept[2].meta["relabelled"] is True and "relabelled" not in kept[0].meta


def test_split_three_to_one_by_seed():
    examples = [post(f"s{i}-{k}", f"post {i} {k}", source="synthetic") for i in range(8) for k in range(3)]
    for ex in examples:
        ex.meta["seed_id"] = ex.id.split("-")[0]
    train, dev = split_by_seed(examples, 0.25, seed=1)
    dev_seeds = {e.meta["seed_id"] for e in dev}
    assert len(dev_seeds) == 2 and len(dev) == 6 and len(train) == 18
    assert not dev_seeds & {e.meta["seed_id"] for e in train}
    assert split_by_seed(examples, 0.25, seed=1) == (train, dev)
    assert split_by_seed(examples, 0.0, seed=1) == (examples, [])


def test_config_presets_and_errors():
    cfg = load_synthesis_config(["domain=ccks_military", "n_new=3"])
    assert cfg.types[0] == "vehicle" and cfg.default_type == "other" and cfg.n_new == 3
    assert "fighter jet" in cfg.filters.generic_lexicon and cfg.type_map["SHIP"] == "vessel"
    cfg = load_synthesis_config(["data=sample", "llm.max_calls=None"])
    assert cfg.data.name == "sample" and cfg.llm.max_calls is None and cfg.llm.temperature == pytest.approx(0.1)
    with pytest.raises(ValueError, match="n_reuze"):
        load_synthesis_config(["n_reuze=3"])
    with pytest.raises(ValueError, match="domain|synthesis"):
        load_synthesis_config(["domain=nope"])
    with pytest.raises(ValueError, match="consistency.mode"):
        load_synthesis_config(["consistency.mode=maybe"])
    with pytest.raises(ValueError, match="type_map"):
        load_synthesis_config(["type_map.PERSON=HUMAN"])
