"""Refinement mode ``release``: no gate, whole posts sent, the answered entity list replaces the tagger's."""

import json
import re

import pytest
from PIL import Image

from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.stages.refinement import find_spans, load_refine_config, replace_entities, run_refine

TOKENS = ["Barack", "Obama", "visits", "New", "York", "City", "today"]


def _pred(pid, tokens, *ents, image=None):
    return Example(
        pid,
        list(tokens),
        image,
        [Entity(s, e, t, uncertainty=u) for s, e, t, u in ents],
        source="predicted",
        image_size=(100, 80) if image else None,
    )


def test_find_spans_and_replacement_rules():
    tokens = ["Paris", "loves", "Paris", "Saint-Germain", "in", "Paris"]
    assert find_spans(tokens, "paris") == [(0, 1), (2, 3), (5, 6)]
    assert find_spans(tokens, "Paris Saint-Germain") == [(2, 4)]
    assert find_spans(tokens, "Lyon") == [] and find_spans(tokens, " ") == []
    post = _pred("p", tokens, (5, 6, "LOC", 0.1), (0, 1, "PER", 0.9))
    post.entities[0].boxes = [[1.0, 2.0, 3.0, 4.0]]
    items = [
        {"entity": "Paris", "entity_type": "LOC", "bounding_box": []},  # the tagger's occurrence (5, 6) wins
        {"entity": "Paris Saint-Germain", "entity_type": "ORG", "bounding_box": [[0, 0, 9, 9]]},
        {"entity": "Saint-Germain", "entity_type": "ORG"},  # overlaps the entity placed just before
        {"entity": "Lyon", "entity_type": "LOC"},  # not in the post
        {"entity": "loves", "entity_type": "EMOTION"},  # not in the inventory
    ]
    new, counts = replace_entities(post, items, ["PER", "LOC", "ORG", "OTHER"])
    assert [(e.start, e.end, e.type, e.boxes) for e in new] == [(2, 4, "ORG", [[0, 0, 9, 9]]), (5, 6, "LOC", [])]
    assert counts == {
        "same": 1,
        "new_span": 1,
        "rejected_overlap": 1,
        "rejected_not_in_post": 1,
        "rejected_type": 1,
        "removed": 1,  # the tagger's PER "Paris" at 0
    }
    new, _ = replace_entities(post, items[:1], ["LOC"], use_boxes=False)
    assert new[0].boxes == [[1.0, 2.0, 3.0, 4.0]]  # use_boxes=false: the tagger's box of the same span stays


def test_release_mode_against_loopback_server(tmp_path, chat_server):
    """Every post with a prediction is sent whatever its uncertainty; the answer replaces the tagger's list; the
    gated mode on the same file sends only the uncertain entities' checks."""
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 80), "white").save(tmp_path / "img" / "p1.jpg")
    preds = [
        _pred("p1", TOKENS, (1, 2, "ORG", 0.9), (3, 5, "LOC", 0.1), image="p1.jpg"),
        _pred("p2", ["nothing", "here"]),  # no prediction: never sent
        _pred("p3", ["Apple", "sues", "Samsung"], (0, 1, "ORG", 0.01)),  # confident, no image
        _pred("p4", ["Lakers", "win", "again"], (0, 1, "PER", 0.02)),  # confident; the server answers garbage
    ]
    write_jsonl(preds, tmp_path / "pred.jsonl")
    sent = []

    def respond(prompt, n_images):
        sentence = re.search(r"^Post: (.*)$", prompt, re.M).group(1)
        sent.append((sentence, n_images))
        if sentence.startswith("Barack"):
            assert "50 x 40" in prompt  # the 100 x 80 image is sent at max_side 50
            return json.dumps(
                [
                    {"entity": "Barack Obama", "entity_type": "PER", "bounding_box": [5, 5, 25, 30]},
                    {"entity": "New York City", "entity_type": "LOC", "bounding_box": []},
                    {"entity": "Paris", "entity_type": "LOC", "bounding_box": []},
                ]
            )
        if sentence.startswith("Apple"):
            return json.dumps([{"entity": "Samsung", "entity_type": "ORG", "bounding_box": []}])
        return "no JSON here"

    chat_server.responder = respond
    llm = [
        f"llm.base_url={chat_server.base_url}",
        "llm.model=test-vl",
        "llm.api_key_env=''",
        "llm.max_side=50",
        "llm.max_retries=0",
        "llm.backoff_base_s=0.01",
        "llm.backoff_max_s=0.02",
    ]
    cfg = load_refine_config(["mode=release", f"images_dir={tmp_path / 'img'}", f"run_dir={tmp_path / 'r'}", *llm])
    report = run_refine(cfg, tmp_path / "pred.jsonl", tmp_path / "r" / "out.jsonl")
    assert sorted(sent) == [("Apple sues Samsung", 0), (" ".join(TOKENS), 1), ("Lakers win again", 0)]
    out = {p.id: p for p in read_jsonl(tmp_path / "r" / "out.jsonl")}
    assert [(e.start, e.end, e.type, e.boxes) for e in out["p1"].entities] == [
        (0, 2, "PER", [[10.0, 10.0, 50.0, 60.0]]),  # sent pixels x 2
        (3, 6, "LOC", []),
    ]
    assert [(e.start, e.end, e.type) for e in out["p3"].entities] == [(2, 3, "ORG")]  # Apple replaced by Samsung
    assert [(e.start, e.end, e.type) for e in out["p4"].entities] == [(0, 1, "PER")]  # no usable answer: kept
    assert out["p2"].entities == [] and out["p2"].meta["refinement"]["sent"] is False
    assert out["p1"].meta["refinement"]["tagger_entities"] == [
        {"start": 1, "end": 2, "type": "ORG"},
        {"start": 3, "end": 5, "type": "LOC"},
    ]
    assert out["p4"].meta["refinement"]["outcome"] != "replaced"
    assert report["mode"] == "release" and report["posts_sent"] == 3 and report["posts_replaced"] == 2
    assert report["delegated"] == report["entities"] == 4 and report["entities_after"] == 4
    assert report["backend_failures_kept_small_model"] == 1
    assert report["outcomes"] == {"new_span": 3, "rejected_not_in_post": 1, "removed": 3}

    # the gated default on the same file: only p1's uncertain Obama (u 0.9 > tau 0.5) is checked
    sent.clear()
    chat_server.responder = lambda prompt, n: json.dumps(
        {"reasoning_process": "r", "corrected_entity": "Barack Obama"}
        if "corrected_entity" in prompt
        else {"reasoning_process": "r", "corrected_type": "PER", "corrected_bounding_box": "Null"}
    )
    before = chat_server.total
    gated = load_refine_config([f"images_dir={tmp_path / 'img'}", f"run_dir={tmp_path / 'g'}", *llm])
    assert gated.mode == "gated"
    report = run_refine(gated, tmp_path / "pred.jsonl", tmp_path / "g" / "out.jsonl")
    assert chat_server.total - before == 2 and report["delegated"] == 1  # one span + one type check
    out = {p.id: p for p in read_jsonl(tmp_path / "g" / "out.jsonl")}
    assert [(e.start, e.end, e.type) for e in out["p3"].entities] == [(0, 1, "ORG")]


def test_release_mode_with_the_oracle_is_a_labelled_simulation(tmp_path, capsys):
    gold = [
        Example("p1", TOKENS, None, [Entity(0, 2, "PER", boxes=[[1, 2, 30, 40]]), Entity(3, 6, "LOC")]),
        Example("p2", ["Apple", "sues", "Samsung"], None, [Entity(0, 1, "ORG")]),
    ]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    write_jsonl([_pred("p1", TOKENS, (1, 2, "ORG", 0.0)), _pred("p2", gold[1].tokens)], tmp_path / "pred.jsonl")
    cfg = load_refine_config(["mode=release", "backend=oracle", f"gold={tmp_path / 'gold.jsonl'}"])
    report = run_refine(cfg, tmp_path / "pred.jsonl", tmp_path / "out.jsonl")
    out = read_jsonl(tmp_path / "out.jsonl")
    assert [(e.start, e.end, e.type, e.boxes) for e in out[0].entities] == [
        (0, 2, "PER", [[1, 2, 30, 40]]),
        (3, 6, "LOC", []),
    ]
    assert out[1].entities == []  # no prediction, not sent: the gold ORG is not added
    assert report["simulated"] is True and "simulation" in out[0].meta["refinement"]["backend"]
    from refineg.cli import main

    code = main(
        ["refine", "--pred", str(tmp_path / "pred.jsonl"), "--out", str(tmp_path / "cli.jsonl"),
         "--gold", str(tmp_path / "gold.jsonl"), "mode=release", "backend=oracle"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0 and "SIMULATION" in printed
    assert "release mode: 1 of 2 posts sent, 1 entity lists replaced (1 -> 2 entities)" in printed
    # after: 2 of the 3 gold entities (P 1, R 2/3), the box of the PER the gold one, the LOC rightly without a box
    assert "MNER F1: 0.00 -> 80.00" in printed and "GMNER F1: 0.00 -> 80.00" in printed


def test_unknown_mode_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown mode 'relase'; known: gated, release"):
        load_refine_config(["mode=relase"])
