"""The zero-shot MLLM baseline against the loopback OpenAI-compatible server, with canned and malformed answers."""

import json

import pytest
from PIL import Image

from refineg.cli import main
from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.metrics import evaluate_examples
from refineg.stages.zeroshot import load_zeroshot_config, map_spans, run_zeroshot
from tests.llm.chat_server import ChatServer

POSTS = {
    "a": "Barack Obama met Angela Merkel in Berlin today",
    "b": "Nothing to see here",
    "c": "RT @nasa : Artemis launch from Florida",
    "d": "Messi scores again for Inter Miami",
    "e": "Server trouble for this one",
    "f": "Apple and apple pie",
}

ANSWERS = {
    # exact + case-blind + renamed type + invented + unknown type + malformed box
    "a": json.dumps(
        [
            {"entity": "Barack Obama", "entity_type": "PER", "bounding_box": [10, 10, 50, 40]},
            {"entity": "angela  merkel", "entity_type": "person", "bounding_box": []},
            {"entity": "Berlin", "entity_type": "LOC", "bounding_box": [5, 5]},
            {"entity": "Paris", "entity_type": "LOC", "bounding_box": []},
            {"entity": "today", "entity_type": "TIME", "bounding_box": []},
            "not an object",
        ]
    ),
    "c": "Sure, here you go:\n```json\n"
    + json.dumps(
        {
            "entities": [
                {"entity": "@nasa", "entity_type": "ORG", "bounding_box": [[0, 0, 100, 50]]},
                {"entity": "Artemis", "entity_type": "OTHER", "bounding_box": "Null"},
                {"entity": "Florida", "entity_type": "LOC", "bounding_box": [60, 20, 40, 10]},
            ]
        }
    )
    + "\n```",
    "d": json.dumps(
        [
            {"entity": "Messi", "entity_type": "PER", "bounding_box": [1, 2, 30, 40]},
            {"entity": "Inter Miami", "entity_type": "ORG", "bounding_box": None},
        ]
    ),
    "f": json.dumps(
        [
            {"entity": "apple", "entity_type": "ORG", "bounding_box": []},
            {"entity": "Apple", "entity_type": "ORG", "bounding_box": []},
        ]
    ),
}


@pytest.fixture
def server():
    srv = ChatServer().start()

    def respond(prompt, n_images):
        for pid, text in POSTS.items():
            if f"Post: {text}\n" in prompt:
                return ANSWERS.get(pid, "[]")
        raise AssertionError(f"unexpected prompt {prompt!r}")

    srv.responder = respond
    yield srv
    srv.stop()


def test_map_spans_exact_then_case_blind_without_overlap():
    tokens = "Apple and apple pie in New York".split()
    assert map_spans(tokens, ["apple", "Apple", "new york", "pie"]) == [(2, 3), (0, 1), (5, 7), (3, 4)]
    # exact matches are placed first (the project's locator), so an exact "York" takes its word before the
    # case-blind "new york" is looked for
    assert map_spans(tokens, ["new york", "York", "APPLE PIE"]) == [None, (6, 7), (2, 4)]


def test_zeroshot_against_loopback_server(server, tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for pid in ("a", "b", "c", "e", "f"):  # d has no image file
        Image.new("RGB", (200, 100), "white").save(images / f"{pid}.jpg")
    posts = [Example(pid, text.split(), f"{pid}.jpg") for pid, text in POSTS.items()]
    write_jsonl(posts, tmp_path / "posts.jsonl")
    cfg = load_zeroshot_config(
        [
            f"llm.base_url={server.base_url}",
            "llm.model=test-vl",
            "llm.api_key_env=''",
            "llm.max_side=100",
            "llm.max_retries=0",
            f"images_dir={images}",
        ]
    )
    # b's answer is prose (unparseable), e's request fails with a server error
    from refineg.llm import ImageScale
    from refineg.llm.boxes import BoxConvention
    from refineg.stages.zeroshot import ZeroShotPrompts

    prompts = ZeroShotPrompts.load(cfg.prompts_dir)
    for pid, fault in (("b", "notjson"), ("e", "500")):
        scale = ImageScale((200, 100), (100, 50))
        _, user_text = prompts.render(POSTS[pid].split(), cfg.types, scale, BoxConvention())
        server.rules[user_text] = [fault]
    report = run_zeroshot(cfg, tmp_path / "posts.jsonl", tmp_path / "z.jsonl", progress=False)
    out = {p.id: p for p in read_jsonl(tmp_path / "z.jsonl")}
    spans = {pid: [(e.start, e.end, e.type, e.boxes) for e in p.entities] for pid, p in out.items()}
    # boxes come back in sent pixels (the 200 x 100 image is sent as 100 x 50): x2 to original pixels
    assert spans["a"] == [(0, 2, "PER", [[20.0, 20.0, 100.0, 80.0]]), (3, 5, "PER", []), (6, 7, "LOC", [])]
    assert spans["b"] == [] and out["b"].meta["zeroshot"]["status"] == "unparseable"
    assert spans["e"] == [] and out["e"].meta["zeroshot"]["status"] == "failed"
    assert spans["c"] == [(1, 2, "ORG", [[0.0, 0.0, 200.0, 100.0]]), (3, 4, "OTHER", []), (6, 7, "LOC", [])]
    assert spans["d"] == [(0, 1, "PER", []), (4, 6, "ORG", [])]  # no image: the box is not used
    assert spans["f"] == [(0, 1, "ORG", []), (2, 3, "ORG", [])]
    assert out["a"].image_size == (200, 100) and out["d"].meta["zeroshot"]["image_sent"] is False
    assert report["posts"] == 6 and report["images_sent"] == 5
    assert (report["posts_ok"], report["posts_unparseable"], report["posts_failed"]) == (4, 1, 1)
    assert report["entities_returned"] == 6 + 3 + 2 + 2 and report["entities_kept"] == 3 + 3 + 2 + 2
    assert report["dropped_or_changed"] == {
        "item_invalid": 1,
        "type_invalid": 1,
        "unlocated": 1,
        "box_invalid": 2,
        "box_without_image": 1,
    }
    assert report["usage"]["total"]["requests"] == 6
    # one image per request that had one; the system prompt lists the inventory
    assert sorted(len(s) for s in server.image_sizes) == [0, 1, 1, 1, 1]  # e's failed request is not recorded
    assert "PER, LOC, ORG, OTHER" in server.bodies[0]["messages"][0]["content"]
    assert (tmp_path / "z.report.json").is_file() and (tmp_path / "llm_usage.json").is_file()

    # the same scorer as every other system
    gold = [
        Example(
            "a",
            POSTS["a"].split(),
            "a.jpg",
            [Entity(0, 2, "PER", [[18, 22, 100, 80]]), Entity(3, 5, "PER"), Entity(6, 7, "LOC", [[0, 0, 10, 10]])],
        ),
        Example("d", POSTS["d"].split(), None, [Entity(0, 1, "PER")]),
    ]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    scores = evaluate_examples(gold, [out["a"], out["d"]])
    assert scores["counts"]["mner"] == {"tp": 4, "predicted": 5, "gold": 4}
    assert scores["counts"]["gmner"]["tp"] == 3  # Berlin's box was malformed, so it has none: region wrong


def test_zeroshot_cli_uses_the_cache(server, tmp_path, capsys):
    posts = [Example("d", POSTS["d"].split()), Example("f", POSTS["f"].split())]
    write_jsonl(posts, tmp_path / "posts.jsonl")
    write_jsonl(
        [
            Example("d", POSTS["d"].split(), None, [Entity(0, 1, "PER"), Entity(4, 6, "ORG")]),
            Example("f", POSTS["f"].split(), None, [Entity(0, 1, "ORG")]),
        ],
        tmp_path / "gold.jsonl",
    )
    args = [
        "zeroshot",
        "--data",
        str(tmp_path / "posts.jsonl"),
        "--out",
        str(tmp_path / "z.jsonl"),
        "--gold",
        str(tmp_path / "gold.jsonl"),
        f"llm.base_url={server.base_url}",
        "llm.model=test-vl",
        "llm.api_key_env=''",
        f"llm.cache_path={tmp_path / 'cache.sqlite'}",
    ]
    assert main(["zeroshot", "--data", "x", "--out", "y", "llm.modle=x"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "modle" in err, err
    assert main(args) == 0
    assert main(args) == 0  # answered from the cache: no new request
    assert server.total == 2
    out = capsys.readouterr().out
    assert "2 posts (0 with image): 2 answered, 0 unparseable, 0 failed; 4 of 4 returned entities kept" in out
    mner = next(line.split() for line in out.splitlines() if line.startswith("MNER"))
    assert mner == ["MNER", "75.00", "100.00", "85.71"]  # 3 of 4 predictions right (f's "apple" is no entity)
    assert read_jsonl(tmp_path / "z.jsonl")[0].entities[1].type == "ORG"


def test_hostile_answers_are_unparseable_not_crashes(tmp_path):
    """Single-quoted JSON is not read as its inner box list, a 50,000-bracket answer is unparseable, and an item
    without a bounding_box key (an image was sent) is counted."""
    srv = ChatServer().start()
    answers = {
        "a": "{'entity': 'Barack Obama', 'entity_type': 'PER', 'bounding_box': [10, 10, 50, 40]}",
        "b": "[" * 50_000,
        "d": json.dumps([{"entity": "Messi", "entity_type": "PER", "region": [1, 2, 30, 40]}]),
    }
    srv.responder = lambda prompt, n: next(answers[pid] for pid, text in POSTS.items() if f"Post: {text}\n" in prompt)
    try:
        images = tmp_path / "img"
        images.mkdir()
        for pid in answers:
            Image.new("RGB", (200, 100), "white").save(images / f"{pid}.jpg")
        write_jsonl([Example(pid, POSTS[pid].split(), f"{pid}.jpg") for pid in answers], tmp_path / "posts.jsonl")
        cfg = load_zeroshot_config(
            [
                f"llm.base_url={srv.base_url}",
                "llm.model=test-vl",
                "llm.api_key_env=''",
                "llm.max_retries=1",
                "llm.backoff_base_s=0.01",
                f"images_dir={images}",
            ]
        )
        report = run_zeroshot(cfg, tmp_path / "posts.jsonl", tmp_path / "z.jsonl", progress=False)
        out = {p.id: p for p in read_jsonl(tmp_path / "z.jsonl")}
        assert out["a"].meta["zeroshot"]["status"] == "unparseable" and out["a"].entities == []
        assert out["b"].meta["zeroshot"]["status"] == "unparseable"
        assert [(e.start, e.end, e.boxes) for e in out["d"].entities] == [(0, 1, [])]
        assert (report["posts_ok"], report["posts_unparseable"]) == (1, 2)
        assert report["dropped_or_changed"] == {"box_missing": 1}
        assert report["usage"]["total"]["retries_by_kind"] == {"invalid_json": 2}
    finally:
        srv.stop()
