"""The MLLM grounder end to end: run_ground and `refineg ground` against the loopback OpenAI-compatible server."""

import json
import logging
import os
import re
import socket
from pathlib import Path

import pytest
import torch
from PIL import Image

from refineg.cli import main
from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.stages.grounding import run_ground
from refineg.stages.grounding.mllm import MLLMGrounder
from tests.llm.chat_server import ChatServer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"

# canned answers in the pixels of the sent image (200 x 100 originals sent at max_side 100: factor 0.5)
ANSWERS = {
    "Obama visits Apple in Paris": [
        {"entity": "Obama", "entity_type": "PER", "bounding_box": [[10, 5, 40, 45]]},
        {"entity": "Apple", "entity_type": "ORG", "bounding_box": []},
    ],
    "Musk and Tesla": [
        {"entity": "Tesla", "entity_type": "ORG", "bounding_box": [[0, 0, 60, 30], [50, 20, 100, 60]]},
        {"entity": "Musk", "entity_type": "PER", "bounding_box": [1, 1, 9, 9]},
    ],  # Musk: not asked
}


def _ent(tokens, name, etype, boxes=(), groundable=None):
    start = tokens.index(name.split()[0])
    return Entity(start, start + len(name.split()), etype, [list(b) for b in boxes], groundable=groundable)


def _post(pid, text, ents, image=True, source="predicted"):
    tokens = text.split()
    return Example(pid, tokens, f"{pid}.jpg" if image else None, [_ent(tokens, *e) for e in ents], source=source)


@pytest.fixture
def data(tmp_path):
    import open_clip

    torch.set_num_threads(1)
    if "refineg-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)
    img = tmp_path / "img"
    img.mkdir()
    preds = [
        _post("p1", "Obama visits Apple in Paris", [("Obama", "PER"), ("Apple", "ORG"), ("Paris", "LOC")]),
        _post("p2", "Musk and Tesla", [("Musk", "PER", (), 0.2), ("Tesla", "ORG", (), 0.9)]),
        _post("p3", "Trump speaks", [("Trump", "PER")]),  # its image file is missing
        _post("p4", "Berlin is cold", [("Berlin", "LOC")]),  # nothing to ask
        _post("p5", "Biden meets Macron", [("Biden", "PER"), ("Macron", "PER")]),  # the server answers prose
    ]
    pool = [
        _post("g1", "Obama waves at the crowd", [("Obama", "PER", [(20, 10, 100, 60)])], source="gold"),
        _post("g2", "Tesla unveils a car", [("Tesla", "ORG", [(0, 0, 200, 100)])], source="gold"),
        _post("g3", "Snow in Berlin", [("Berlin", "LOC")], source="gold"),
        _post("p1", "Obama visits Apple in Paris", [("Obama", "PER", [(2, 2, 50, 50)])], source="gold"),
    ]
    for p in preds + pool:
        if p.id != "p3":
            Image.new("RGB", (200, 100), (len(p.id) * 40, ord(p.id[-1]) % 255, 90)).save(img / f"{p.id}.jpg")
    write_jsonl(preds, tmp_path / "pred.jsonl")
    write_jsonl(pool, tmp_path / "pool.jsonl")
    return tmp_path


@pytest.fixture
def server():
    srv = ChatServer().start()
    seen = []

    def respond(prompt, n_images):
        sentence = re.search(r"Post: (.*)", prompt).group(1)
        seen.append((sentence, n_images))
        if sentence in ANSWERS:
            return "Here you go:\n" + json.dumps(ANSWERS[sentence])
        return "I cannot see anything useful."

    srv.responder = respond
    srv.seen = seen
    yield srv
    srv.stop()


def _overrides(base_url, *extra):
    return [
        f"mllm.llm.base_url={base_url}",
        "mllm.llm.model=test-vl",
        "mllm.llm.api_key_env=''",
        "mllm.llm.max_side=100",
        "mllm.llm.max_retries=0",
        "mllm.llm.backoff_base_s=0.01",
        "mllm.max_boxes=2",
        "groundability_threshold=0.5",
        "selector.k=2",
        "selector.image_model=refineg-tiny-vit",
        *extra,
    ]


def test_run_ground_end_to_end_and_rerun_repeats_no_answered_call(data, server):
    out = data / "run" / "G.jsonl"
    summary = run_ground(data / "pred.jsonl", data / "pool.jsonl", out, data / "img", _overrides(server.base_url))
    posts = {p.id: p for p in read_jsonl(out)}
    assert list(posts) == ["p1", "p2", "p3", "p4", "p5"]
    p1 = posts["p1"]
    assert [e.boxes for e in p1.entities] == [[[20.0, 10.0, 80.0, 90.0]], [], []]
    assert p1.meta["grounding"]["reasons"] == ["grounded", "model_none", "never_grounded_type"]
    assert "p1" not in p1.meta["grounding"]["demos"] and len(p1.meta["grounding"]["demos"]) == 2
    # Tesla: two boxes, the second clipped to the 200 x 100 image; Musk below the groundability threshold
    assert [e.boxes for e in posts["p2"].entities] == [[], [[0.0, 0.0, 120.0, 60.0], [100.0, 40.0, 200.0, 100.0]]]
    assert posts["p2"].meta["grounding"]["reasons"] == ["below_groundability", "grounded"]
    assert any("not asked" in p for p in posts["p2"].meta["grounding"]["problems"])
    assert posts["p3"].meta["grounding"]["reasons"] == ["no_image"] and not posts["p3"].meta["grounding"]["image"]
    assert posts["p4"].meta["grounding"]["status"] == "not_asked"
    assert posts["p5"].meta["grounding"]["status"] == "failed" and all(not e.boxes for e in posts["p5"].entities)
    assert "invalid_json" in posts["p5"].meta["grounding"]["error"]

    assert summary["posts"] == 5 and summary["entities"] == 9 and summary["posts_without_image"] == 1
    assert summary["grounded"] == 2 and summary["boxes"] == 3 and summary["posts_failed"] == 1
    assert summary["none_by_reason"] == {
        "never_grounded_type": 2,
        "below_groundability": 1,
        "no_image": 1,
        "model_none": 1,
        "answer_problem": 0,
        "failed": 2,
    }
    assert summary["mllm"]["requests"] == 3 and summary["mllm"]["ok"] == 2 and summary["mllm"]["failed"] == 1
    assert summary["mllm"]["prompt_tokens"] > 0 and "random weights" in summary["selector"]
    assert json.loads((data / "run" / "G.summary.json").read_text())["grounded"] == 2
    assert (data / "run" / "grounding_index.pt").is_file() and (data / "run" / "llm_usage.json").is_file()
    assert not (data / "run" / "G.jsonl.partial").exists()

    # every query carried its 2 demonstrations and its own image; LOC/low-groundability entities were not asked
    assert sorted(s for s, _ in server.seen) == ["Biden meets Macron", "Musk and Tesla", "Obama visits Apple in Paris"]
    assert {n for _, n in server.seen} == {3}
    p2_body = next(b for b in server.bodies if "Musk and Tesla" in json.dumps(b["messages"][-1]))
    assert '"entity": "Musk"' not in json.dumps(p2_body["messages"][-1])
    demo_answers = [m["content"] for m in p2_body["messages"] if m["role"] == "assistant"]
    assert len(demo_answers) == 2
    g2_answer = '[{"entity": "Tesla", "entity_type": "ORG", "bounding_box": [[0, 0, 100, 50]]}]'
    assert g2_answer in demo_answers  # the gold box scaled to the 100 x 50 sent image

    # a re-run answers from the cache: only the failed post is asked again
    before = server.total
    again = run_ground(data / "pred.jsonl", data / "pool.jsonl", out, data / "img", _overrides(server.base_url))
    assert server.total == before + 1
    assert again["mllm"]["cache_hits"] == 2 and again["grounded"] == 2
    assert [[e.boxes for e in p.entities] for p in read_jsonl(out)] == [
        [e.boxes for e in p.entities] for p in posts.values()
    ]


def test_progress_bar_moves_per_post_not_per_chunk(data, server, monkeypatch):
    """All 5 posts fit one chunk (chunk_size 64): the bar still advances as each asked post gets its answer."""
    import refineg.stages.grounding.run as run_module

    updates = []

    class RecordingBar:
        def __init__(self, *args, initial=0, **kwargs):
            self.n = initial

        def update(self, n=1):
            updates.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(run_module, "tqdm", RecordingBar)
    summary = run_ground(
        data / "pred.jsonl", data / "pool.jsonl", data / "G.jsonl", data / "img", _overrides(server.base_url)
    )
    asked = summary["posts_asked"]
    assert asked >= 2 and summary["mllm"]["requests"] == asked
    assert sum(updates) == summary["posts"] == 5
    assert sorted(updates).count(1) >= asked and len(updates) >= asked + 1, updates  # one step per answered post


def test_crash_resumes_from_the_partial_output(data, server, monkeypatch):
    out = data / "crash" / "G.jsonl"
    real = MLLMGrounder.ground
    calls = []

    def flaky(self, queries):
        calls.append(len(queries))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash")
        return real(self, queries)

    monkeypatch.setattr(MLLMGrounder, "ground", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_ground(
            data / "pred.jsonl", data / "pool.jsonl", out, data / "img", _overrides(server.base_url, "chunk_size=2")
        )
    assert [p.id for p in read_jsonl(out.with_name("G.jsonl.partial"))] == ["p1", "p2", "p3", "p4"]
    monkeypatch.setattr(MLLMGrounder, "ground", real)
    asked_before = sorted(s for s, _ in server.seen)
    summary = run_ground(
        data / "pred.jsonl", data / "pool.jsonl", out, data / "img", _overrides(server.base_url, "chunk_size=2")
    )
    assert sorted(s for s, _ in server.seen) == sorted([*asked_before, "Biden meets Macron"])  # only p5 again
    assert summary["resumed_posts"] == 4 and summary["posts"] == 5 and summary["grounded"] == 2
    assert [p.id for p in read_jsonl(out)] == ["p1", "p2", "p3", "p4", "p5"]


def test_failing_backend_keeps_none_counts_it_and_exits_nonzero_via_cli(data, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    out = data / "dead" / "G.jsonl"
    rc = main(
        [
            "ground",
            "--pred",
            str(data / "pred.jsonl"),
            "--pool",
            str(data / "pool.jsonl"),
            "--images",
            str(data / "img"),
            "--out",
            str(out),
            *_overrides(dead, "selector.mode=text", "mllm.llm.timeout_s=2"),
        ]
    )
    assert rc == 1  # no request got an answer: an error, though the output is written
    summary = json.loads((data / "dead" / "G.summary.json").read_text())
    assert summary["posts_failed"] == 3 and summary["entities_failed"] == 5 and summary["grounded"] == 0
    assert summary["mllm"]["failed"] == 3 and summary["mllm"]["ok"] == 0
    assert all(not e.boxes for p in read_jsonl(out) for e in p.entities)
    printed = capsys.readouterr()
    assert "3 posts failed" in printed.out and "none: failed" in printed.out
    assert printed.err.strip().splitlines()[-1] == (
        f"error: ground: none of the 3 LLM requests got an answer "
        f"(connection=3); {out} answers none for the asked entities"
    )


def test_missing_image_folder_answers_none_without_calls(data, server):
    summary = run_ground(
        data / "pred.jsonl",
        data / "pool.jsonl",
        data / "noimg" / "G.jsonl",
        None,
        _overrides(server.base_url, "selector.mode=random"),
    )
    assert server.total == 0 and summary["posts_without_image"] == 5 and summary["grounded"] == 0
    assert summary["none_by_reason"]["no_image"] == 6  # every entity the grounder would have been asked about
    assert "mllm" not in summary or summary["mllm"]["requests"] == 0


def test_groundability_threshold_warns_about_entities_without_a_value(data, server, caplog):
    from refineg.stages.grounding.config import GroundConfig
    from refineg.stages.grounding.run import _check_groundability_input

    with caplog.at_level(logging.WARNING, logger="refineg.stages.grounding.run"):
        summary = run_ground(
            data / "pred.jsonl",
            data / "pool.jsonl",
            data / "gt" / "G.jsonl",
            data / "img",
            _overrides(server.base_url, "selector.mode=random"),
        )
    # 7 entities of grounded types (LOC never is), 2 of them (p2's) with a groundable value
    assert summary["entities_without_groundable"] == 5
    assert "groundability_threshold=0.5: 5 of 7 entities have no groundable value" in caplog.text
    preds = [p for p in read_jsonl(data / "pred.jsonl") if p.id != "p2"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="refineg.stages.grounding.run"):
        assert _check_groundability_input(preds, GroundConfig(groundability_threshold=0.5)) == 5
        assert "groundability_threshold=0.5 does nothing: none of the 5 entities" in caplog.text
        caplog.clear()
        assert _check_groundability_input(preds, GroundConfig()) is None and not caplog.text


def test_demonstrations_without_images_are_counted_and_warned_about(data, server, caplog):
    pool = read_jsonl(data / "pool.jsonl")
    for post in pool:
        post.image = f"elsewhere-{post.id}.jpg"  # the pool's images are not in the image folder
    write_jsonl(pool, data / "pool_noimg.jsonl")
    with caplog.at_level(logging.WARNING, logger="refineg.stages.grounding.run"):
        summary = run_ground(
            data / "pred.jsonl",
            data / "pool_noimg.jsonl",
            data / "nd" / "G.jsonl",
            data / "img",
            _overrides(server.base_url, "selector.mode=random"),
        )
    # p1, p2 and p5 are asked, each with k=2 random demonstrations, none of which has an image
    assert summary["demos_selected"] == 6 and summary["demos_without_image"] == 6
    assert summary["posts_without_usable_demos"] == 3
    assert "none of the 4 pool posts has its image" in caplog.text
    assert "6 of 6 chosen demonstrations have no image" in caplog.text
    assert {n for _, n in server.seen} == {1}  # only the query's own image was sent
    posts = {p.id: p for p in read_jsonl(data / "nd" / "G.jsonl")}
    assert posts["p1"].meta["grounding"]["demos_without_image"] == 2 and posts["p1"].meta["grounding"]["demos"] == []
    assert "demos_selected" not in posts["p4"].meta["grounding"]  # nothing asked, nothing selected

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="refineg.stages.grounding.run"):
        summary = run_ground(
            data / "pred.jsonl",
            data / "pool.jsonl",
            data / "wd" / "G.jsonl",
            data / "img",
            _overrides(server.base_url, "selector.mode=random"),
        )
    assert summary["demos_selected"] == 6 and summary["demos_without_image"] == 0
    assert "demonstrations" not in caplog.text


def test_hostile_answers_are_invalid_or_counted_never_a_crash(data, chat_server):
    """Reasoning before the answer is skipped, an item with a wrong box key is a counted problem (not a silent
    none), and a 50,000-bracket answer fails its post cleanly, in the first run and in the rerun."""
    answers = {
        "Obama visits Apple in Paris": "<think>Obama stands at [10, 10], Apple is a logo.</think>\n"
        + json.dumps(ANSWERS["Obama visits Apple in Paris"]),
        "Musk and Tesla": json.dumps([{"entity": "Tesla", "entity_type": "ORG", "region": [0, 0, 60, 30]}]),
        "Biden meets Macron": "[" * 50_000,
    }
    chat_server.responder = lambda prompt, n: answers[re.search(r"Post: (.*)", prompt).group(1)]
    out = data / "hostile" / "G.jsonl"
    for _ in range(2):
        summary = run_ground(
            data / "pred.jsonl",
            data / "pool.jsonl",
            out,
            data / "img",
            _overrides(chat_server.base_url, "selector.mode=random"),
        )
        posts = {p.id: p for p in read_jsonl(out)}
        assert [e.boxes for e in posts["p1"].entities] == [[[20.0, 10.0, 80.0, 90.0]], [], []]
        assert posts["p1"].meta["grounding"]["reasons"] == ["grounded", "model_none", "never_grounded_type"]
        assert posts["p2"].meta["grounding"]["reasons"] == ["below_groundability", "answer_problem"]
        assert any("no box key" in p and "region" in p for p in posts["p2"].meta["grounding"]["problems"])
        assert posts["p5"].meta["grounding"]["status"] == "failed"
        assert "invalid_json" in posts["p5"].meta["grounding"]["error"]
        assert summary["none_by_reason"]["answer_problem"] == 1 and summary["none_by_reason"]["failed"] == 2
        assert summary["posts_with_answer_problems"] == 1 and summary["grounded"] == 1


def test_chunk_size_defaults_to_four_waves_of_the_llm_concurrency():
    from refineg.llm import LLMConfig
    from refineg.stages.grounding.config import load_ground_config
    from refineg.stages.grounding.run import chunk_size

    def grounder(concurrency):
        llm = LLMConfig(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="", concurrency=concurrency)
        return MLLMGrounder(llm=llm)

    cfg = load_ground_config()
    assert cfg.chunk_size is None
    assert chunk_size(cfg, grounder(32)) == 128 and chunk_size(cfg, grounder(64)) == 256
    assert chunk_size(cfg, grounder(8)) == 64  # at least 64
    assert chunk_size(cfg, object()) == 64  # a grounder without an LLM backend
    assert chunk_size(load_ground_config(["chunk_size=5"]), grounder(64)) == 5  # a set value is kept
    with pytest.raises(ValueError, match="chunk_size"):
        load_ground_config(["chunk_size=0"])
