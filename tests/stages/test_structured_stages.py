"""Refinement, zero-shot and synthesis against a loopback server that enforces the response schema.

The server (tests/llm/schema_server.py) refuses requests without a strict schema and answers only JSON the schema
allows: the schema's wrapped form (``{"entities": [...]}``, ``{"samples": [...]}``), boxes in the convention the
stage was configured with. The stages must read those answers as they read the prompts' own form, and map the
boxes back to original pixels. Grounding has its own round trip (tests/stages/test_grounding_mllm_real.py).
"""

import re

import pytest
from PIL import Image

from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.stages.refinement import load_refine_config, run_refine
from refineg.stages.synthesis import load_synthesis_config, run_synthesis
from refineg.stages.zeroshot import load_zeroshot_config, run_zeroshot
from tests.llm.schema_server import SchemaEnforcer

TOKENS = ["Barack", "Obama", "visits", "New", "York", "City", "today"]


def _llm(server, *extra):
    return [
        f"llm.base_url={server.base_url}",
        "llm.model=test-vl",
        "llm.api_key_env=''",
        "llm.max_retries=0",
        "llm.max_side=50",
        *extra,
    ]


def _texts(body):
    out = []
    for m in body["messages"]:
        content = m["content"]
        out.append(content if isinstance(content, str) else "".join(p.get("text", "") for p in content))
    return "\n".join(out)


@pytest.mark.parametrize(
    ("box_format", "box"), [("norm1", [0.1, 0.125, 0.5, 0.75]), ("norm1000", [100, 125, 500, 750])]
)
def test_refinement_reads_schema_answers_in_the_box_convention(tmp_path, chat_server, box_format, box):
    """100 x 80 image sent at 50 x 40; the model answers a normalised box: [10, 10, 50, 60] in original pixels."""

    def answer(body, name):
        text = _texts(body)
        if name == "refineg_span_check":
            marked = re.search(r'marked the words "([^"]+)"', text).group(1)
            return {"reasoning_process": "r", "corrected_entity": "Barack Obama" if marked == "Obama" else marked}
        assert name == "refineg_type_box_check"
        want = "integers from 0 to 1000" if box_format == "norm1000" else "decimals from 0 to 1"
        assert want in text  # the prompt states the convention
        return {"reasoning_process": "r", "corrected_type": "PER", "corrected_bounding_box": box}

    enforcer = SchemaEnforcer(answer)
    chat_server.body_responder = enforcer
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 80), "white").save(tmp_path / "img" / "p1.jpg")
    pred = Example(
        "p1",
        TOKENS,
        "p1.jpg",
        [Entity(1, 2, "ORG", uncertainty=0.9)],
        source="predicted",
        image_size=(100, 80),
    )
    write_jsonl([pred], tmp_path / "pred.jsonl")
    cfg = load_refine_config([f"images_dir={tmp_path / 'img'}", *_llm(chat_server, f"llm.box_format={box_format}")])
    run_refine(cfg, tmp_path / "pred.jsonl", tmp_path / "out.jsonl")
    out = read_jsonl(tmp_path / "out.jsonl")[0]
    assert [(e.start, e.end, e.type, e.boxes) for e in out.entities] == [(0, 2, "PER", [[10.0, 10.0, 50.0, 60.0]])]
    assert enforcer.modes == ["json_schema", "json_schema"] and chat_server.errors == []


@pytest.mark.parametrize("box_format", ["pixel", "norm1000", "qwen2.5-vl"])
def test_zeroshot_reads_schema_answers_in_the_box_convention(tmp_path, chat_server, box_format):
    """A 200 x 100 image sent at 50 x 25. Its gold box [40, 20, 120, 80] in each convention: pixels of the sent
    image ([10, 5, 30, 20]), 0-1000 ([200, 200, 600, 800]), Qwen2.5-VL's grid (50 x 25 rounds to 56 x 28, under 3136
    pixels, so both sides are scaled by sqrt(3136 / 1250) and rounded up: 84 x 56; [17, 11, 50, 45])."""
    boxes = {"pixel": [10, 5, 30, 20], "norm1000": [200, 200, 600, 800], "qwen2.5-vl": [17, 11, 50, 45]}

    def answer(body, name):
        assert name == "refineg_zeroshot"
        return {
            "entities": [
                {"entity": "Barack Obama", "entity_type": "PER", "bounding_box": boxes[box_format]},
                {"entity": "New York City", "entity_type": "LOC", "bounding_box": []},
            ]
        }

    enforcer = SchemaEnforcer(answer)
    chat_server.body_responder = enforcer
    (tmp_path / "img").mkdir()
    Image.new("RGB", (200, 100), "white").save(tmp_path / "img" / "z.jpg")
    write_jsonl([Example("z", TOKENS, "z.jpg", [], source="gold")], tmp_path / "posts.jsonl")
    cfg = load_zeroshot_config([*_llm(chat_server, f"llm.box_format={box_format}"), f"images_dir={tmp_path / 'img'}"])
    report = run_zeroshot(cfg, tmp_path / "posts.jsonl", tmp_path / "z.jsonl", progress=False)
    out = read_jsonl(tmp_path / "z.jsonl")[0]
    got = [(e.start, e.end, e.type, e.boxes) for e in out.entities]
    assert got[1] == (3, 6, "LOC", [])
    assert got[0][:3] == (0, 2, "PER")
    # back to original pixels; qwen's 17 and 50 of 84 are 40.5 and 119.05 px, rounded
    want = {"pixel": [40, 20, 120, 80], "norm1000": [40, 20, 120, 80], "qwen2.5-vl": [40, 20, 119, 80]}[box_format]
    assert got[0][3] == [want], got
    assert report["posts_ok"] == 1 and enforcer.modes == ["json_schema"] and chat_server.errors == []


def test_synthesis_reads_schema_answers(tmp_path, chat_server):
    def answer(body, name):
        assert name == "refineg_synthesis"
        return {
            "samples": [
                {"text": "Barack Obama lands in Paris for two days of talks this week", "entity": [
                    {"name": "Barack Obama", "type": "PER"}, {"name": "Paris", "type": "LOC"}]},
                {"text": "Apple shows its new phone to a big crowd in California this morning", "entity": [
                    {"name": "Apple", "type": "ORG"}]},
            ]
        }  # fmt: skip

    enforcer = SchemaEnforcer(answer)
    chat_server.body_responder = enforcer
    seed = Example("1", "Obama visits London today".split(), None, [Entity(0, 1, "PER")], source="gold")
    cfg = load_synthesis_config(
        [
            f"llm.base_url={chat_server.base_url}",
            "llm.model=canned-llm",
            "llm.api_key_env=''",
            "llm.max_retries=0",
            "n_reuse=1",
            "n_new=1",
            "progress=false",
        ]
    )
    out = run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=[seed])
    assert out.report.produced == 2 and out.report.requests == {"ok": 1}
    posts = {}
    for p in read_jsonl(out.train):
        posts[" ".join(p.tokens)] = [(" ".join(p.tokens[e.start : e.end]), e.type) for e in p.entities]
    assert posts["Barack Obama lands in Paris for two days of talks this week"] == [
        ("Barack Obama", "PER"),
        ("Paris", "LOC"),
    ]
    assert enforcer.modes == ["json_schema"] and chat_server.errors == []
