import json
import logging
import time

import pytest
from PIL import Image

from refineg.llm import ReplayMissError, create_llm_backend, system, user
from refineg.llm.usage import USAGE_FILENAME


def make(server, tmp_path=None, **kw):
    opts = {"model": "test-model", "base_url": server.base_url, "api_key_env": "REFINEG_TEST_NO_KEY"}
    if tmp_path is not None:
        opts["cache_path"] = str(tmp_path / "cache.sqlite")
    opts.update(kw)
    return create_llm_backend("openai", **opts)


def test_chat_returns_text_and_usage(chat_server):
    llm = make(chat_server)
    result = llm.chat([system("be brief"), user("hello there")], expect_json=True)
    assert result.ok, result.error
    assert json.loads(result.text) == {"echo": "hello there", "n_images": 0}
    assert result.parsed == {"echo": "hello there", "n_images": 0}
    assert result.prompt_tokens == 4 and result.completion_tokens == len(result.text.split()) == 5
    assert result.attempts == 1 and not result.cached and result.latency_s > 0
    body = chat_server.bodies[0]
    assert body["model"] == "test-model" and body["temperature"] == 0.0 and body["max_tokens"] == 1024
    assert body["messages"][0] == {"role": "system", "content": "be brief"}


def test_extra_params_reach_the_body(chat_server):
    llm = make(chat_server, extra={"top_k": 7, "repetition_penalty": 1.05}, top_p=0.9, seed=3)
    assert llm.chat([user("x")], max_tokens=12).ok
    body = chat_server.bodies[0]
    assert (body["top_k"], body["repetition_penalty"], body["top_p"], body["seed"], body["max_tokens"]) == (
        7, 1.05, 0.9, 3, 12)  # fmt: skip


def test_images_arrive_as_resized_jpeg_data_urls(chat_server, tmp_path):
    big = Image.new("RGB", (1600, 900), (200, 30, 30))
    path = tmp_path / "small.png"
    Image.new("RGBA", (300, 200), (0, 0, 255, 128)).save(path)
    llm = make(chat_server, max_side=1000)
    result = llm.chat([user(big, "what is shown?", path)])
    assert result.ok, result.error
    assert json.loads(result.text)["n_images"] == 2
    # The server decoded both data URLs as JPEG: the big one shrunk to longest side 1000, the small one kept.
    assert chat_server.image_sizes == [[(1000, 562), (300, 200)]]
    parts = chat_server.bodies[0]["messages"][0]["content"]
    assert [p["type"] for p in parts] == ["image_url", "text", "image_url"]
    assert llm.image_scale(big).sent_size == (1000, 562)


def test_chat_many_keeps_order_runs_concurrently_and_dedupes(chat_server):
    chat_server.delay_s = 0.2
    llm = make(chat_server)
    prompts = [f"p{i}" for i in range(8)] + ["p0"]
    start = time.perf_counter()
    results = llm.chat_many([[user(p)] for p in prompts], concurrency=8, progress=False)
    elapsed = time.perf_counter() - start
    assert [json.loads(r.text)["echo"] for r in results] == prompts
    assert chat_server.max_in_flight == 8
    assert elapsed < 0.2 * 8 / 2  # far below the sequential 1.6 s
    assert chat_server.total == 8  # the repeated prompt was sent once
    assert results[-1].cached and results[-1].attempts == 0


@pytest.mark.parametrize(
    ("fault", "kind"),
    [("500", "server_error"), ("503", "server_error"), ("garbage", "invalid_response"),
     ("garbage_json", "invalid_response"), ("drop", "connection"), ("429:0", "rate_limit")],
)  # fmt: skip
def test_transient_faults_are_retried(chat_server, fast_retry, fault, kind, caplog):
    chat_server.faults = [fault, fault]
    llm = make(chat_server, **fast_retry)
    with caplog.at_level(logging.INFO, logger="refineg.llm"):
        result = llm.chat([user("hi")])
    assert result.ok, result.error
    assert result.attempts == 3
    assert chat_server.total == 3
    assert any(kind in rec.getMessage() for rec in caplog.records)


def test_timeout_is_retried(chat_server):
    chat_server.faults = ["delay:1.0"]
    llm = make(chat_server, timeout_s=0.3, backoff_base_s=0.01)
    result = llm.chat([user("slow")])
    assert result.ok and result.attempts == 2


def test_retry_after_is_honoured(chat_server):
    chat_server.faults = ["429:1"]
    llm = make(chat_server, backoff_base_s=0.01, backoff_max_s=0.02)
    start = time.perf_counter()
    result = llm.chat([user("hi")])
    assert result.ok and result.attempts == 2
    assert time.perf_counter() - start >= 1.0  # backoff alone would wait 0.02 s


def test_refused_connection_fails_cleanly(fast_retry):
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    llm = create_llm_backend("openai", model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=2, **fast_retry)
    result = llm.chat([user("anyone?")])
    assert result.status == "failed" and result.error_kind == "connection" and result.attempts == 3
    assert result.text is None


def test_last_retry_marks_item_failed_and_batch_goes_on(chat_server, fast_retry, tmp_path):
    chat_server.rules["bad"] = ["500"] * 10
    llm = make(chat_server, tmp_path, max_retries=2, run_dir=tmp_path / "run", **fast_retry)
    results = llm.chat_many([[user("a")], [user("bad")], [user("b")]], progress=False, stage="grounding")
    assert [r.status for r in results] == ["ok", "failed", "ok"]
    assert results[1].error_kind == "server_error" and results[1].attempts == 3
    usage = json.loads((tmp_path / "run" / USAGE_FILENAME).read_text())
    g = usage["stages"]["grounding"]
    assert (g["requests"], g["ok"], g["failed"], g["calls"]) == (3, 2, 1, 5)
    assert g["failures_by_kind"] == {"server_error": 1}
    assert usage["failures"][0]["item"] == 1
    assert "1 failed" in llm.usage.summary()
    # Failures are not cached: a rerun asks again (and now succeeds).
    chat_server.rules["bad"] = []
    again = llm.chat_many([[user("a")], [user("bad")], [user("b")]], progress=False)
    assert [r.cached for r in again] == [True, False, True] and again[1].ok


def test_permanent_errors_are_not_retried(chat_server, fast_retry):
    chat_server.faults = ["echo_auth"]
    result = make(chat_server, **fast_retry).chat([user("hi")])
    assert result.status == "failed" and result.error_kind == "bad_request" and result.attempts == 1
    chat_server.expected_key = "something-else"
    result = make(chat_server, **fast_retry).chat([user("hi")])
    assert result.error_kind == "auth" and result.attempts == 1


@pytest.mark.parametrize(("fault", "kind"), [("notjson", "invalid_json"), ("truncated", "truncated")])
def test_non_json_and_truncated_answers_are_retried_when_json_expected(chat_server, fast_retry, fault, kind):
    chat_server.faults = [fault]
    result = make(chat_server, **fast_retry).chat([user("j")], expect_json=True)
    assert result.ok and result.attempts == 2 and result.parsed["echo"] == "j"
    chat_server.faults = [fault] * 3
    result = make(chat_server, max_retries=2, **fast_retry).chat([user("j2")], expect_json=True)
    assert result.status == "failed" and result.error_kind == kind
    # Without expect_json the same answer is accepted as it is.
    chat_server.faults = [fault]
    assert make(chat_server, **fast_retry).chat([user("j3")]).attempts == 1


def test_chatty_answer_is_parsed(chat_server):
    chat_server.faults = ["chatty"]
    result = make(chat_server).chat([user("c")], expect_json=True)
    assert result.ok and result.attempts == 1 and result.parsed == {"echo": "c", "n_images": 0}


def test_cache_hit_skips_the_server(chat_server, tmp_path):
    img = Image.new("RGB", (64, 48), (1, 2, 3))
    conv = [system("s"), user(img, "cached?")]
    first = make(chat_server, tmp_path).chat(conv)
    second = make(chat_server, tmp_path).chat([system("s"), user(img.copy(), "cached?")])
    assert chat_server.total == 1
    assert second.cached and second.text == first.text and second.attempts == 0
    assert second.prompt_tokens == first.prompt_tokens
    # Another sampling parameter, max_side or model is another key.
    make(chat_server, tmp_path).chat(conv, temperature=0.5)
    make(chat_server, tmp_path, max_side=32).chat(conv)
    make(chat_server, tmp_path, model="other").chat(conv)
    assert chat_server.total == 4


def test_call_budget_stops_cleanly(chat_server, tmp_path):
    llm = make(chat_server, max_calls=3, run_dir=tmp_path)
    results = llm.chat_many([[user(f"q{i}")] for i in range(5)], concurrency=1, progress=False, stage="refinement")
    assert [r.status for r in results].count("ok") == 3
    assert [r.status for r in results].count("budget_exhausted") == 2
    assert chat_server.total == 3
    refused = next(r for r in results if not r.ok)
    assert refused.error_kind == "budget_exhausted" and refused.attempts == 0
    usage = json.loads((tmp_path / USAGE_FILENAME).read_text())
    assert usage["stages"]["refinement"]["budget_exhausted"] == 2


def test_token_budget_stops_cleanly(chat_server):
    llm = make(chat_server, max_tokens_budget=10)  # each answer here costs 1 + 4 tokens
    results = [llm.chat([user(f"t{i}")]) for i in range(4)]
    assert [r.total_tokens for r in results[:2]] == [5, 5]
    assert [r.status for r in results] == ["ok", "ok", "budget_exhausted", "budget_exhausted"]
    assert chat_server.total == 2 and llm.budget.tokens == 10


def test_replay_serves_recorded_answers_and_misses_loudly(chat_server, tmp_path):
    recorded = make(chat_server, tmp_path).chat_many([[user("r1")], [user("r2")]], progress=False)
    replay = create_llm_backend("replay", model="test-model", cache_path=str(tmp_path / "cache.sqlite"))
    again = replay.chat_many([[user("r1")], [user("r2")]], progress=False, expect_json=True)
    assert [r.text for r in again] == [r.text for r in recorded] and all(r.cached for r in again)
    assert chat_server.total == 2
    with pytest.raises(ReplayMissError, match="no cached answer.*test-model.*'r3'"):
        replay.chat([user("r3")])
    with pytest.raises(ReplayMissError):
        replay.chat_many([[user("r1")], [user("r4")]], progress=False)
    with pytest.raises(ValueError, match="cache_path"):
        create_llm_backend("replay", model="test-model")


def test_duplicates_of_a_failure_are_failures_and_the_batch_logs_a_summary(chat_server, fast_retry, caplog):
    chat_server.rules["bad"] = ["500"] * 10
    llm = make(chat_server, max_retries=1, **fast_retry)
    with caplog.at_level(logging.WARNING, logger="refineg.llm"):
        results = llm.chat_many([[user("bad")], [user("ok")], [user("bad")]], progress=False, stage="grounding")
    assert [r.status for r in results] == ["failed", "ok", "failed"]
    assert not results[2].cached and results[2].attempts == 0
    assert chat_server.received["bad"] == 2  # sent once (with its retry), not once per copy
    assert "llm grounding: 2 of 3 requests got no answer (server_error=2)" in caplog.text


def test_a_failed_cache_write_keeps_the_answer(chat_server, tmp_path, monkeypatch, caplog):
    import sqlite3

    llm = make(chat_server, tmp_path)

    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(llm.cache, "put", disk_full)
    result = llm.chat([user("keep me")])
    assert result.ok and json.loads(result.text)["echo"] == "keep me"
    assert "cache write failed" in caplog.text


def test_achat_from_asyncio(chat_server):
    import asyncio

    chat_server.delay_s = 0.2
    llm = make(chat_server)

    async def main():
        return await asyncio.gather(*(llm.achat([user(f"a{i}")]) for i in range(4)))

    start = time.perf_counter()
    results = asyncio.run(main())
    assert [json.loads(r.text)["echo"] for r in results] == ["a0", "a1", "a2", "a3"]
    assert time.perf_counter() - start < 0.6  # ran concurrently (sequential: 0.8 s)


def test_budget_spans_runs_of_a_folder(chat_server, tmp_path):
    """max_calls / max_tokens_budget count what earlier runs of the same run folder spent (its spend ledger)."""
    from refineg.llm.usage import SPEND_FILENAME, read_spend

    chat_server.rules = {f"q{i}": ["500"] for i in range(3)}  # failed calls cost a call too
    for run in range(3):
        llm = make(chat_server, max_calls=4, max_retries=0, run_dir=tmp_path / "run")
        results = llm.chat_many([[user(f"q{i}")] for i in range(3)], concurrency=1, progress=False)
        llm.close()
        if run == 0:
            assert [r.status for r in results] == ["failed"] * 3
        assert chat_server.total == min(4, 3 * (run + 1))  # the second run has one call left, the third none
    usage = json.loads((tmp_path / "run" / USAGE_FILENAME).read_text())
    assert usage["budget"]["calls"] == 4 and usage["budget"]["max_calls"] == 4
    assert read_spend(tmp_path / "run" / SPEND_FILENAME) == (4, 5)  # 3 failed calls, 1 answer of 1 + 4 tokens
    assert usage["budget"]["earlier_calls"] == 4 and results[0].status == "budget_exhausted"
    # another folder is another run with its own budget; tokens count across runs too
    other = make(chat_server, max_tokens_budget=7, run_dir=tmp_path / "other")
    assert other.chat([user("t0")]).ok and other.chat([user("t1")]).ok  # 5 tokens each
    other.close()
    again = make(chat_server, max_tokens_budget=7, run_dir=tmp_path / "other")
    assert again.chat([user("t2")]).status == "budget_exhausted" and again.budget.tokens == 10
