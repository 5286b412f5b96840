"""Paid calls across runs of the LLM stages: the default response cache, a SIGKILL mid-run, budgets across reruns,
and the exit status of a run in which no request succeeded. All against the loopback chat server."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from refineg.cli import main
from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.llm.usage import SPEND_FILENAME, read_spend

REPO = Path(__file__).resolve().parents[2]
NAMES = [f"Name{i}" for i in range(12)]


def _preds(path):
    posts = [
        Example(
            f"p{i}",
            [name, "visits", "Paris", "today"],
            None,
            [Entity(0, 1, "PER", uncertainty=0.9)],
            source="predicted",
        )
        for i, name in enumerate(NAMES)
    ]
    write_jsonl(posts, path)
    return path


def _refine_answers(prompt, n_images):
    name = next(n for n in NAMES if f'"{n}"' in prompt)
    if "corrected_entity" in prompt:
        return json.dumps({"reasoning_process": "r", "corrected_entity": name})
    return json.dumps({"reasoning_process": "r", "corrected_type": "PER", "corrected_bounding_box": "Null"})


def _llm(server, *extra):
    return [f"llm.base_url={server.base_url}", "llm.model=test-vl", "llm.api_key_env=''", "llm.max_retries=0", *extra]


def test_refine_killed_mid_run_repeats_no_answered_call(chat_server, tmp_path):
    """`refineg refine` without llm.cache_path, SIGKILLed after some answers, then run again: no prompt answered
    before the kill reaches the server a second time (the cache lives in the run folder by default)."""
    chat_server.responder = _refine_answers
    chat_server.delay_s = 0.3
    pred, out = _preds(tmp_path / "pred.jsonl"), tmp_path / "run" / "refined.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "refineg.cli",
        "refine",
        "--pred",
        str(pred),
        "--out",
        str(out),
        *_llm(chat_server, "llm.concurrency=1"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # starting the CLI (torch, scipy) takes minutes on a loaded machine
    while True:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "the child made too few requests in time"
        with chat_server.lock:
            answered = {p for p, c in chat_server.counts.items() if c}
            in_flight = sum(chat_server.received.values()) - sum(chat_server.counts.values())
            if len(answered) >= 5 and in_flight == 1:
                # one request at a time: the child sent this one after storing every earlier answer
                os.kill(first.pid, signal.SIGKILL)
                break
        time.sleep(0.01)
    first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL and not out.exists()
    sent_before_kill = sum(chat_server.received.values())
    ledger_after_kill = read_spend(tmp_path / "run" / SPEND_FILENAME)[0]

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert {p: chat_server.counts[p] for p in answered} == {p: 1 for p in answered}
    assert (tmp_path / "run" / "llm_cache.sqlite").is_file()
    # every call that reached the server before the kill, the one in flight included, was in the spend ledger
    assert ledger_after_kill == sent_before_kill
    assert len(chat_server.counts) == 2 * len(NAMES)  # every check was answered, once per prompt but the one
    assert sum(chat_server.counts.values()) <= 2 * len(NAMES) + 1  # in flight at the kill
    refined = read_jsonl(out)
    assert [p.meta["refinement"]["checked"][0]["outcomes"] for p in refined] == [["kept", "type_kept"]] * len(NAMES)


def test_zeroshot_rerun_is_answered_from_the_default_cache(chat_server, tmp_path, capsys):
    chat_server.responder = lambda prompt, n: json.dumps(
        [{"entity": "Paris", "entity_type": "LOC", "bounding_box": []}]
    )
    posts = tmp_path / "posts.jsonl"
    write_jsonl([Example(f"z{i}", ["Hello", "Paris", str(i)]) for i in range(3)], posts)
    args = ["zeroshot", "--data", str(posts), "--out", str(tmp_path / "run" / "z.jsonl"), *_llm(chat_server)]
    assert main(args) == 0 and chat_server.total == 3
    assert main(args) == 0 and chat_server.total == 3
    report = json.loads((tmp_path / "run" / "z.report.json").read_text())
    assert report["usage"]["total"]["cache_hits"] == 3 and report["entities_kept"] == 3
    assert (tmp_path / "run" / "llm_cache.sqlite").is_file()


def test_refine_budget_counts_spend_across_reruns(chat_server, tmp_path):
    """Three runs of one refine run folder with llm.max_calls=10 spend 10 calls in all, not 10 per run."""
    chat_server.responder = _refine_answers
    args = [
        "refine",
        "--pred",
        str(_preds(tmp_path / "pred.jsonl")),
        "--out",
        str(tmp_path / "run" / "r.jsonl"),
        *_llm(chat_server, "llm.max_calls=10", "llm.concurrency=1"),
    ]
    budgets = []
    for _ in range(3):
        assert main(args) == 0
        assert chat_server.total == 10  # in all, not per run
        report = json.loads((tmp_path / "run" / "r.report.json").read_text())
        assert report["outcomes"]["span/kept"] == 10 and report["outcomes"]["span/budget_exhausted"] == 2
        budgets.append(json.loads((tmp_path / "run" / "llm_usage.json").read_text()).get("budget"))
    assert [(b["calls"], b["earlier_calls"], b["max_calls"]) for b in budgets] == [
        (10, 0, 10),
        (10, 10, 10),
        (10, 10, 10),
    ]


def _dead_url():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_refine_and_zeroshot_exit_nonzero_when_no_request_succeeds(tmp_path, capsys):
    dead = [f"llm.base_url={_dead_url()}", "llm.model=m", "llm.api_key_env=''", "llm.max_retries=0"]
    out = tmp_path / "r" / "refined.jsonl"
    assert main(["refine", "--pred", str(_preds(tmp_path / "pred.jsonl")), "--out", str(out), *dead]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"error: refine: none of the 24 LLM requests got an answer (connection=24); {out} keeps the "
        "small model's answers"
    )
    assert [len(p.entities) for p in read_jsonl(out)] == [1] * len(NAMES)  # written all the same
    posts = tmp_path / "posts.jsonl"
    write_jsonl([Example(f"z{i}", ["Hello", "Paris", str(i)]) for i in range(3)], posts)
    out = tmp_path / "z" / "z.jsonl"
    assert main(["zeroshot", "--data", str(posts), "--out", str(out), *dead]) == 1
    assert "error: zeroshot: none of the 3 LLM requests got an answer (connection=3)" in capsys.readouterr().err
    assert len(read_jsonl(out)) == 3 and out.with_suffix(".report.json").is_file()


def test_a_partly_answered_run_exits_zero(chat_server, tmp_path):
    chat_server.responder = _refine_answers
    args = [
        "refine",
        "--pred",
        str(_preds(tmp_path / "pred.jsonl")),
        "--out",
        str(tmp_path / "r.jsonl"),
        *_llm(chat_server, "llm.max_calls=3"),
    ]
    assert main(args) == 0  # 3 answers, the rest over budget: something succeeded
