"""Box rescaling, chat building and answer parsing of the MLLM grounder, on hand-made answers."""

import json

import pytest
from PIL import Image

from refineg.data import Entity, Example
from refineg.llm import ImageScale
from refineg.stages.grounding.config import MLLMGrounderConfig
from refineg.stages.grounding.parse import parse_answer, raw_boxes
from refineg.stages.grounding.prompts import GroundingPrompts, build_chat, demo_answer


@pytest.mark.parametrize("size", [(1600, 1200), (1001, 333), (640, 480), (999, 2000), (3000, 7)])
def test_box_rescaling_round_trips_exactly(size):
    scale = ImageScale.for_image(size, 1000)
    assert max(scale.sent_size) <= 1000
    w, h = size
    for box in ([0, 0, w, h], [1, 2, 37, 5], [w // 3, h // 4, w // 2, h - 1], [w - 2, h - 2, w, h]):
        sent = scale.to_sent(box)
        assert scale.to_original(sent) == [float(v) for v in box]


def _scale():
    return ImageScale((2000, 1000), (1000, 500))  # factor 0.5 on both axes


ENTS = [("Barack Obama", "PER"), ("Apple", "ORG"), ("Obama", "PER")]


def test_parse_well_formed_answer_maps_to_original_pixels():
    answer = [
        {"entity": "Barack Obama", "entity_type": "PER", "bounding_box": [[10, 20, 110, 220]]},
        {"entity": "apple ", "entity_type": "ORG", "bounding_box": []},
        {"entity": "Obama", "entity_type": "PER", "bounding_box": [5, 5, 50.4, 60]},
    ]
    out = parse_answer(answer, ENTS, _scale(), max_boxes=2)
    assert out.boxes == [[[20.0, 40.0, 220.0, 440.0]], [], [[10.0, 10.0, 101.0, 120.0]]]
    assert out.problems == [] and out.dropped == 0


def test_parse_several_boxes_clip_degenerate_and_limit():
    answer = [
        {
            "entity": "Barack Obama",
            "bounding_box": [
                [900, 400, 1200, 600],
                [10, 10, 11, 11],
                [0, 0, 40, 40],
                [0, 0, 40, 40],
                [100, 100, 200, 200],
            ],
        }
    ]
    out = parse_answer(answer, ENTS[:1], _scale(), max_boxes=2, min_side=4)
    # the first box is clipped to the 2000 x 1000 image; the 2 x 2 px box is degenerate; the duplicate counts once
    assert out.boxes == [[[1800.0, 800.0, 2000.0, 1000.0], [0.0, 0.0, 80.0, 80.0]]]
    assert out.dropped == 1 and "degenerate" in out.problems[0]
    assert parse_answer(answer, ENTS[:1], _scale(), max_boxes=1).boxes == [[[1800.0, 800.0, 2000.0, 1000.0]]]


def test_parse_box_shapes_and_none_words():
    assert raw_boxes({"xmin": 1, "ymin": "2", "xmax": 3, "ymax": 4}) == ([[1.0, 2.0, 3.0, 4.0]], [])
    for none in (None, "Null", "none", [], "  "):
        assert raw_boxes(none) == ([], [])
    boxes, problems = raw_boxes([1, 2, 3])
    assert boxes == [] and "malformed" in problems[0]
    boxes, problems = raw_boxes([[1, 2, 3, 4], ["a", 2, 3, 4], [float("nan"), 1, 2, 3]])
    assert boxes == [[1.0, 2.0, 3.0, 4.0]] and len(problems) == 2


@pytest.mark.parametrize(
    "answer, boxes, problem",
    [
        ("just text", [[], [], []], "not a list"),
        (42, [[], [], []], "not a list"),
        ([1, 2, 3], [[], [], []], "not an object"),
        ([{"entity": "Elon Musk", "bounding_box": [1, 1, 9, 9]}], [[], [], []], "was not asked"),
        ([{"entity": "Apple", "bounding_box": [50, 50, 10, 10]}], [[], [], []], "inverted"),
        ([{"entity": "Apple", "bounding_box": "top left"}], [[], [], []], "unreadable"),
        ([{"entity": "Apple", "bounding_box": [1, 2, 3, 4, 5]}], [[], [], []], "malformed"),
        ([{"entity": "Apple", "bounding_box": [2000, 900, 2100, 950]}], [[], [], []], "degenerate"),  # off the image
    ],
)
def test_parse_malformed_answers_give_none_and_a_note(answer, boxes, problem):
    out = parse_answer(answer, ENTS, _scale())
    assert out.boxes == boxes
    assert any(problem in p for p in out.problems), out.problems


def test_parse_positional_fallback_wrapped_object_and_repeated_names():
    # items without names are matched by position; an object wrapping the list is accepted
    answer = {"entities": [{"bounding_box": [0, 0, 10, 10]}, {"boxes": [[0, 0, 20, 20]]}]}
    out = parse_answer(answer, ENTS[:2], _scale())
    assert out.boxes == [[[0.0, 0.0, 20.0, 20.0]], [[0.0, 0.0, 40.0, 40.0]]]
    # the same name twice: items go to the occurrences in order
    ents = [("Obama", "PER"), ("Obama", "PER")]
    out = parse_answer(
        [{"entity": "Obama", "bounding_box": []}, {"entity": "Obama", "bounding_box": [0, 0, 5, 5]}], ents, _scale()
    )
    assert out.boxes == [[], [[0.0, 0.0, 10.0, 10.0]]]
    assert parse_answer([], ents, _scale()).problems == ["no answer for ['Obama', 'Obama']"]
    out = parse_answer(
        [{"entity": "Obama", "bounding_box": [0, 0, 500, 500]}], ents[:1], _scale(), max_area_fraction=0.2
    )  # 1000 x 1000 of 2000 x 1000 original px = 50 %
    assert out.boxes == [[]] and "covers more than" in out.problems[0]


def test_chat_layout_demo_boxes_in_sent_pixels():
    prompts = GroundingPrompts.load(MLLMGrounderConfig().prompts_dir)
    demo = Example(
        "d1",
        "Obama meets Merkel in Berlin".split(),
        entities=[Entity(0, 1, "PER", [[100, 50, 400, 650]]), Entity(2, 3, "PER"), Entity(4, 5, "LOC")],
    )
    query = Example("q1", "Musk visits Tesla".split(), entities=[Entity(0, 1, "PER"), Entity(2, 3, "ORG")])
    demo_img, query_img = Image.new("RGB", (2000, 1500)), Image.new("RGB", (800, 600))
    demo_scale, query_scale = ImageScale.for_image(demo_img, 1000), ImageScale.for_image(query_img, 1000)
    chat = build_chat(
        prompts, query, query_img, query_scale, [(demo, demo_img, demo_scale)], ["PER", "LOC", "ORG"], ["LOC"]
    )
    assert [m.role for m in chat] == ["system", "user", "assistant", "user"]
    assert "never given a box: LOC" in chat[0].text and "PER, LOC, ORG" in chat[0].text
    assert chat[1].images[0].image is demo_img and chat[3].images[0].image is query_img
    assert "1000 x 750" in chat[1].text and "800 x 600" in chat[3].text
    assert json.loads(chat[3].text.split("Entities: ")[1]) == [
        {"entity": "Musk", "entity_type": "PER"},
        {"entity": "Tesla", "entity_type": "ORG"},
    ]
    answer = json.loads(chat[2].text)
    assert answer == [
        {"entity": "Obama", "entity_type": "PER", "bounding_box": [[50, 25, 200, 325]]},
        {"entity": "Merkel", "entity_type": "PER", "bounding_box": []},
        {"entity": "Berlin", "entity_type": "LOC", "bounding_box": []},
    ]
    # the demo answer parses back to the gold boxes
    back = parse_answer(answer, [("Obama", "PER"), ("Merkel", "PER"), ("Berlin", "LOC")], demo_scale, max_boxes=3)
    assert back.boxes == [[[100.0, 50.0, 400.0, 650.0]], [], []]
    assert demo_answer(demo, demo_scale) == chat[2].text


def test_missing_prompt_file_is_named(tmp_path):
    (tmp_path / "system.txt").write_text("rules")
    with pytest.raises(FileNotFoundError, match="query.txt"):
        GroundingPrompts.load(tmp_path)
