"""JSON extraction from hostile answers: deep nesting, long bracket-laden prose, reasoning blocks, near-JSON."""

import json
import time

import pytest

from refineg.llm import JSONExtractionError, create_llm_backend, extract_json, user
from refineg.llm.json_extract import MAX_DEPTH, strip_reasoning
from refineg.llm.usage import USAGE_FILENAME

GROUNDING = [{"entity": "Obama", "entity_type": "PER", "bounding_box": [10, 20, 30, 40]}]


def grounding_like(value):
    """A list in which some item is an object: the shape of a grounding answer."""
    return isinstance(value, list) and (not value or any(isinstance(v, dict) for v in value))


def prose_with_brackets(n=176_000):
    unit = "The box [x] of {y} is near the [left, side] and {the note}. "
    return (unit * (n // len(unit) + 1))[:n]


@pytest.mark.parametrize(
    "text", ["[" * 50_000, "[" * 50_000 + "]" * 50_000, '{"a":' * 30_000, "Sure: " + "[" * 5_000 + "1" + "]" * 5_000]
)
def test_deeply_nested_answer_is_invalid_not_a_crash(text):
    with pytest.raises(JSONExtractionError):
        extract_json(text)


def test_nesting_up_to_the_limit_is_read():
    value = json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)
    assert extract_json("[" * MAX_DEPTH + "]" * MAX_DEPTH) == value
    assert extract_json("x " + "[" * MAX_DEPTH + "]" * MAX_DEPTH) == value


@pytest.mark.parametrize("accept", [None, grounding_like])
@pytest.mark.parametrize(
    "unit",
    [
        "The box [x] of {y} is near the [left, side] and {the note}. ",
        "[1] ",
        '[{"a":1} x',
        '{"a": [',
        '["',
        "```json\n[1,",
    ],
)
def test_extraction_is_linear_in_the_answer_length(unit, accept):
    text = (unit * (176_000 // len(unit) + 1))[:176_000]
    start = time.perf_counter()
    try:
        extract_json(text, **({"accept": accept} if accept else {}))
    except JSONExtractionError:
        pass
    # the quadratic search took 9-14 s for the first of these on the project machine; linear takes < 0.6 s
    assert time.perf_counter() - start < 3.0


def test_reasoning_blocks_are_skipped():
    answer = json.dumps(GROUNDING)
    assert extract_json(f"<think>Obama is at [10, 10], maybe.</think>\n{answer}") == GROUNDING
    assert extract_json(f"<THINKING>\n[10, 10]\n</THINKING> Answer: {answer}") == GROUNDING
    # the chat template opened the block: only its end is in the answer
    assert extract_json(f"Obama stands left [10, 10].</think>\n\n{answer}") == GROUNDING
    with pytest.raises(JSONExtractionError, match="only reasoning"):
        extract_json("<think>The box is [10, 10] and then I ran out of tok")
    assert strip_reasoning("a<think>b</think>c<think>d</think>e") == "ace"


def test_the_value_that_fits_the_expected_answer_is_preferred():
    single_quoted = "{'entity': 'Obama', 'entity_type': 'PER', 'bounding_box': [10, 20, 30, 40]}"
    assert extract_json(single_quoted) == [10, 20, 30, 40]  # the only JSON in it ...
    with pytest.raises(JSONExtractionError, match="fits the expected answer"):
        extract_json(single_quoted, accept=grounding_like)  # ... is not a grounding answer
    chatty = f'Step 1 gives [10, 10] and {{"step": 1}}. Final: {json.dumps(GROUNDING)}'
    assert extract_json(chatty) == [10, 10]
    assert extract_json(chatty, accept=grounding_like) == GROUNDING

    def span_answer(v):
        return "corrected_entity" in v

    assert extract_json('{"step": 1} then {"corrected_entity": "X"}', dict, span_answer) == {"corrected_entity": "X"}
    assert extract_json('{"result": {"corrected_entity": "X"}}', dict, span_answer) == {"corrected_entity": "X"}
    assert extract_json('[{"corrected_entity": "X"}]', dict) == {"corrected_entity": "X"}  # wrapped in a list
    with pytest.raises(JSONExtractionError):
        extract_json("[1, 2]", accept=lambda v: v["entity"])  # a validator that raises: does not fit


def test_broken_containers_give_up_their_complete_parts():
    assert extract_json('[{"entity": "A"} and then some prose]') == {"entity": "A"}
    assert extract_json('Answer: [{"entity": "A", "bounding_box": [1, 2, 3, 4]}, {"entity": "B", "boun') == {
        "entity": "A",
        "bounding_box": [1, 2, 3, 4],
    }
    assert extract_json('{"text": "line one\nline two",}') == {"text": "line one\nline two"}  # raw newline, comma
    assert extract_json('Look [here]: {"a": [1, 2,], "b": "x ] y"}') == {"a": [1, 2], "b": "x ] y"}


def _backend(server, tmp_path, **kw):
    return create_llm_backend(
        "openai",
        model="m",
        base_url=server.base_url,
        api_key_env="",
        max_retries=1,
        backoff_base_s=0.01,
        backoff_max_s=0.02,
        cache_path=str(tmp_path / "c.sqlite"),
        run_dir=tmp_path,
        **kw,
    )


def test_a_hostile_answer_is_an_invalid_answer_and_is_counted(chat_server, tmp_path):
    answers = {
        "deep": ["[" * 50_000, "[" * 50_000],
        "think": ["<think>[10, 10]</think> " + json.dumps(GROUNDING)],
        "quoted": ["{'entity': 'Obama', 'bounding_box': [1, 2, 3, 4]}", json.dumps(GROUNDING)],
    }
    chat_server.responder = lambda prompt, n: answers[prompt].pop(0)
    llm = _backend(chat_server, tmp_path)
    results = llm.chat_many(
        [[user(p)] for p in answers], progress=False, stage="grounding", expect_json=True, json_accept=grounding_like
    )
    deep, think, quoted = results
    assert deep.status == "failed" and deep.error_kind == "invalid_json" and deep.attempts == 2
    assert think.ok and think.parsed == GROUNDING and think.attempts == 1
    assert quoted.ok and quoted.parsed == GROUNDING and quoted.attempts == 2 and quoted.retried == {"invalid_json": 1}
    llm.close()
    usage = json.loads((tmp_path / USAGE_FILENAME).read_text())["stages"]["grounding"]
    assert usage["failures_by_kind"] == {"invalid_json": 1} and usage["retries_by_kind"] == {"invalid_json": 2}
    # a rerun answers the good ones from the cache and asks the deep one again, without crashing
    answers["deep"] = ["[" * 50_000] * 2
    again = _backend(chat_server, tmp_path).chat_many(
        [[user(p)] for p in answers], progress=False, expect_json=True, json_accept=grounding_like
    )
    assert [r.cached for r in again] == [False, True, True] and again[0].error_kind == "invalid_json"
