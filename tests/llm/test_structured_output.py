"""Structured outputs: the typed answers, the schema each mode sends, and servers that enforce or ignore it."""

import json

import pytest

from refineg.llm import create_llm_backend, system, user
from refineg.llm.answers import (
    ANSWER_FORMATS,
    GROUNDING,
    SPAN_CHECK,
    TYPE_BOX_CHECK,
    AnswerFormat,
    GroundingAnswer,
    structured_params,
)
from refineg.llm.cache import iter_materials
from tests.llm.schema_server import SchemaEnforcer, ignoring, strict_problems, validate

# What a model means to answer, per prompt kind: as the schema wants it (wrapped) and as the prompts show it.
CANONICAL = {
    "refineg_span_check": {"reasoning_process": "a city", "corrected_entity": "New York"},
    "refineg_type_box_check": {
        "reasoning_process": "a person",
        "corrected_type": "PER",
        "corrected_bounding_box": [10, 20, 110.5, 220],
    },
    "refineg_grounding": {
        "entities": [
            {"entity": "Obama", "entity_type": "PER", "bounding_box": [[1, 2, 30, 40], [50, 60, 70, 80]]},
            {"entity": "Paris", "entity_type": "LOC", "bounding_box": []},
        ]
    },
    "refineg_zeroshot": {
        "entities": [
            {"entity": "Obama", "entity_type": "PER", "bounding_box": [1, 2, 30, 40]},
            {"entity": "Paris", "entity_type": "LOC", "bounding_box": []},
        ]
    },
    "refineg_synthesis": {
        "samples": [{"text": "Obama lands in Paris", "entity": [{"name": "Obama", "type": "PER"}]}],
    },
}
# The prompts' own form: lists bare at the root, one flat box, "Null".
PROMPT_FORM = {
    "refineg_span_check": CANONICAL["refineg_span_check"],
    "refineg_type_box_check": {"reasoning_process": "-", "corrected_type": "PER", "corrected_bounding_box": "Null"},
    "refineg_grounding": [{"entity": "Obama", "entity_type": "PER", "bounding_box": [1, 2, 30, 40]}],
    "refineg_zeroshot": [{"entity": "Obama", "type": "PER", "box": [[1, 2, 30, 40]]}],
    "refineg_synthesis": [{"text": "Obama lands in Paris", "entities": [{"name": "Obama", "type": "PER"}]}],
}
# Not answers of that kind (each would be retried).
WRONG = {
    "refineg_span_check": {"answer": "New York"},
    "refineg_type_box_check": {"corrected_type": "PER", "corrected_bounding_box": [1, 2, 3]},
    "refineg_grounding": [{"entity": "Obama", "bounding_box": [1, 2, "x", 4]}],
    "refineg_zeroshot": [{"name": "Obama"}],
    "refineg_synthesis": {"answer": "I cannot help with that"},
}


def make(server, tmp_path=None, **kw):
    opts = {"model": "test-vl", "base_url": server.base_url, "api_key_env": "", "max_retries": 0}
    if tmp_path is not None:
        opts["cache_path"] = str(tmp_path / "cache.sqlite")
    opts.update(kw)
    return create_llm_backend("openai", **opts)


def _kind(name):
    return next(f for f in ANSWER_FORMATS.values() if f.name == name)


@pytest.mark.parametrize("name", sorted(CANONICAL))
def test_schemas_are_strict_and_agree_with_the_models(name):
    fmt = _kind(name)
    assert strict_problems(fmt.schema) == []
    assert validate(CANONICAL[name], fmt.schema) == [] and fmt.accepts(CANONICAL[name])
    assert fmt.accepts(PROMPT_FORM[name])  # validation reads the prompts' form too
    assert not fmt.accepts(WRONG[name])
    # what the schema allows, the model accepts: the wrong answer, wrapped as the schema wants, fails both
    wrapped = WRONG[name] if isinstance(WRONG[name], dict) else {"entities": WRONG[name]}
    assert validate(wrapped, fmt.schema) != [] and not fmt.accepts(wrapped)


def test_list_answers_keep_the_items_that_validate():
    # one bad box among good items: valid (the grounding parser drops and counts the bad item)
    mixed = [{"entity": "A", "bounding_box": [1, 2, 3]}, {"entity": "B", "bbox": None}]
    assert GROUNDING.accepts(mixed)
    assert GROUNDING.validate(mixed) == GroundingAnswer(entities=[{"entity": "B", "bounding_box": []}])
    with pytest.raises(ValueError, match="no usable item"):
        GROUNDING.validate(mixed[:1])
    assert GROUNDING.accepts([]) and not GROUNDING.accepts([1, 2])
    # a box coordinate is a finite JSON number
    for bad in ([True, 1, 2, 3], [1, 2, 3, float("inf")], ["1", 2, 3, 4]):
        assert not TYPE_BOX_CHECK.accepts({"corrected_type": "PER", "corrected_bounding_box": bad})


def test_structured_params_per_mode():
    assert structured_params(SPAN_CHECK, "json_schema") == {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "refineg_span_check", "schema": SPAN_CHECK.schema, "strict": True},
        }
    }
    assert structured_params(SPAN_CHECK, "guided_json") == {"guided_json": SPAN_CHECK.schema}
    assert structured_params(SPAN_CHECK, "off") == {}
    with pytest.raises(ValueError, match="mode"):
        structured_params(SPAN_CHECK, "grammar")


@pytest.mark.parametrize("mode", ["json_schema", "guided_json"])
def test_enforcing_server_gets_the_schema_and_answers_only_valid_json(chat_server, mode):
    enforcer = SchemaEnforcer(lambda body, name: CANONICAL[name or body["_kind"]])
    chat_server.body_responder = enforcer
    llm = make(chat_server, structured_output=mode)
    for name in sorted(CANONICAL):
        fmt = _kind(name)
        result = llm.chat([system("rules"), user(f"post for {name}")], answer=fmt, _kind=name)
        assert result.ok, result.error
        assert result.parsed == CANONICAL[name] and json.loads(result.text) == CANONICAL[name]
    assert enforcer.modes == [mode] * 5 and enforcer.violations == [] and chat_server.errors == []
    for body, name in zip(chat_server.bodies, sorted(CANONICAL), strict=True):
        if mode == "json_schema":
            assert body["response_format"]["json_schema"] == {
                "name": name,
                "schema": _kind(name).schema,
                "strict": True,
            }
            assert "guided_json" not in body
        else:
            assert body["guided_json"] == _kind(name).schema and "response_format" not in body
    llm.close()


def test_enforcing_server_refuses_missing_and_malformed_schemas(chat_server):
    chat_server.body_responder = SchemaEnforcer(lambda body, name: CANONICAL["refineg_span_check"])
    # off sends no schema: this server refuses the request (400, not retried)
    off = make(chat_server, structured_output="off")
    result = off.chat([user("no schema")], answer=SPAN_CHECK)
    assert not result.ok and result.error_kind == "bad_request" and result.attempts == 1
    assert "response_format" not in chat_server.bodies[-1] and "guided_json" not in chat_server.bodies[-1]
    off.close()
    # a non-strict schema (open object) and a bad name are refused too
    llm = make(chat_server)
    loose = {"type": "object", "properties": {"corrected_entity": {"type": "string"}}}
    for spec in (
        {"name": "x", "schema": loose, "strict": True},
        {"name": "bad name!", "schema": SPAN_CHECK.schema, "strict": True},
        {"name": "x", "schema": {"type": "array", "items": {"type": "string"}}, "strict": True},
        {"name": "x", "schema": SPAN_CHECK.schema},
    ):
        result = llm.chat([user(json.dumps(spec))], response_format={"type": "json_schema", "json_schema": spec})
        assert not result.ok and result.error_kind == "bad_request", spec
    assert len(chat_server.errors) == 5
    assert any("additionalProperties must be false" in e for e in chat_server.errors)
    assert any("the root must be an object" in e for e in chat_server.errors)
    assert any("strict must be true" in e for e in chat_server.errors)
    llm.close()


def test_enforcing_server_never_emits_what_the_schema_forbids(chat_server):
    enforcer = SchemaEnforcer(lambda body, name: {"entities": WRONG["refineg_grounding"]})
    chat_server.body_responder = enforcer
    llm = make(chat_server)
    result = llm.chat([user("q")], answer=GROUNDING)
    assert not result.ok and len(enforcer.violations) == 1 and "missing 'entity_type'" in enforcer.violations[0]
    llm.close()


@pytest.mark.parametrize("mode", ["json_schema", "guided_json", "off"])
def test_ignoring_server_prose_and_json_works_in_every_mode(chat_server, mode):
    """A server that ignores the schema answers prose around the prompts' form: the answer is found (past a
    decoy list in the prose) and validated the same way."""
    chat_server.body_responder = ignoring(lambda body: PROMPT_FORM[body["_kind"]])
    llm = make(chat_server, structured_output=mode)
    for name in sorted(CANONICAL):
        result = llm.chat([user(f"post for {name}")], answer=_kind(name), _kind=name)
        assert result.ok, (name, result.error)
        assert result.parsed == PROMPT_FORM[name]
        assert "Here is my answer" in result.text
    llm.close()


def test_invalid_answer_is_counted_and_asked_again(chat_server, fast_retry):
    answers = iter([WRONG["refineg_type_box_check"], CANONICAL["refineg_type_box_check"]])
    chat_server.body_responder = ignoring(lambda body: next(answers))
    llm = make(chat_server, max_retries=2, **fast_retry)
    result = llm.chat([user("type check")], answer=TYPE_BOX_CHECK, stage="refinement")
    assert result.ok and result.parsed == CANONICAL["refineg_type_box_check"]
    assert result.attempts == 2 and result.retried == {"invalid_json": 1}
    usage = llm.usage.to_dict()["stages"]["refinement"]
    assert usage["retries_by_kind"] == {"invalid_json": 1}
    llm.close()


def test_cache_key_holds_mode_and_schema(chat_server, tmp_path):
    """Same conversation: another mode or a changed schema asks the server again; the same one is a cache hit."""
    chat_server.body_responder = ignoring(lambda body: CANONICAL["refineg_span_check"])
    conv = [user("is New York an entity?")]
    for mode in ("json_schema", "guided_json", "off", "json_schema"):
        llm = make(chat_server, tmp_path, structured_output=mode)
        assert llm.chat(conv, answer=SPAN_CHECK).ok
        llm.close()
    assert chat_server.total == 3  # the second json_schema run was answered from the cache

    class Longer(SPAN_CHECK.model):  # the same name, one more field: another schema
        confidence: float = 1.0

    changed = AnswerFormat(SPAN_CHECK.name, Longer)
    assert changed.fingerprint != SPAN_CHECK.fingerprint
    llm = make(chat_server, tmp_path)
    first = llm.chat(conv, answer=changed)
    assert first.ok and not first.cached and chat_server.total == 4
    assert llm.chat(conv, answer=SPAN_CHECK).cached
    keys = {m["params"]["answer_format"]["schema"] for _, m in iter_materials(llm.cache)}
    assert keys == {SPAN_CHECK.fingerprint, changed.fingerprint}
    llm.close()


def test_off_survives_the_override_parser():
    """`llm.structured_output=off` on the command line: YAML reads a bare off as false; the config means off."""
    from refineg.llm import LLMConfig
    from refineg.stages.zeroshot import load_zeroshot_config

    cfg = load_zeroshot_config(["llm.structured_output=off", "llm.box_format=norm1000"])
    llm = LLMConfig.from_options(cfg.llm)
    assert (llm.structured_output, llm.box_format) == ("off", "norm1000")
    assert LLMConfig().structured_output == "json_schema"
    with pytest.raises(ValueError, match="structured_output"):
        LLMConfig(structured_output="grammar")


def test_an_invalid_answer_says_why(chat_server):
    chat_server.body_responder = ignoring(lambda body: WRONG["refineg_grounding"])
    llm = make(chat_server)
    result = llm.chat([user("where is Obama?")], answer=GROUNDING)
    assert result.error_kind == "invalid_json"
    assert "does not fit the refineg_grounding schema" in result.error and "bounding_box" in result.error
    llm.close()


def test_replay_reproduces_a_structured_run_and_misses_another_mode(chat_server, tmp_path):
    from refineg.llm import ReplayMissError

    chat_server.body_responder = SchemaEnforcer(lambda body, name: CANONICAL[name])
    conv = [user("is New York an entity?")]
    live = make(chat_server, tmp_path)
    assert live.chat(conv, answer=SPAN_CHECK).parsed == CANONICAL["refineg_span_check"]
    live.close()
    cache = str(tmp_path / "cache.sqlite")
    replay = create_llm_backend("replay", model="test-vl", cache_path=cache)
    hit = replay.chat(conv, answer=SPAN_CHECK)
    assert hit.cached and hit.parsed == CANONICAL["refineg_span_check"]
    replay.close()
    other = create_llm_backend("replay", model="test-vl", cache_path=cache, structured_output="guided_json")
    with pytest.raises(ReplayMissError) as err:
        other.chat(conv, answer=SPAN_CHECK)
    message = str(err.value)
    assert "'mode': 'guided_json'" in message and SPAN_CHECK.fingerprint in message
    assert "'properties'" not in message  # the schema is named by its fingerprint, not printed
    other.close()
    assert chat_server.total == 1
