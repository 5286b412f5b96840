"""The LLM synthesiser end to end against the loopback chat server, resume from the cache, CLI."""

import json

import pytest

from refineg.cli import main
from refineg.data import read_jsonl, write_jsonl
from refineg.stages.synthesis import load_synthesis_config, parse_answer, run_synthesis
from refineg.stages.synthesis.prompts import PromptSet, default_prompt_dir
from refineg.stages.synthesis.report import SynthesisReport
from tests.stages.conftest import post

OBAMA = [
    {
        "text": "Obama spoke in London about jobs and the economy this morning",
        "entity": [{"name": "Obama", "type": "PER"}, {"name": "London", "type": "LOC"}],
    },
    {
        "text": "Barack Obama met the police chief in Chicago last night after the game",
        "entity": [
            {"name": "Barack Obama", "type": "PERSON"},
            {"name": "police", "type": "ORG"},
            {"name": "Chicago", "type": "CITY"},
        ],
    },
    {
        "text": "Fans cheered for Obama at the rally near Wembley Stadium on Sunday",
        "entity": [{"name": "Obama", "type": "PER"}, {"name": "Wembley Arena", "type": "LOC"}],
    },
    {
        "text": "Obama spoke in London about jobs and the economy this morning",  # duplicate
        "entity": [{"name": "Obama", "type": "PER"}],
    },
    {"text": "Obama !", "entity": [{"name": "Obama", "type": "PER"}]},  # too short
    {"entity": []},  # no text
    {
        "text": "Michelle Obama and Obama visited the Louvre in Paris during their trip this week",
        "entity": [
            {"name": "Obama", "type": "PER"},
            {"name": "Michelle Obama", "type": "PER"},
            {"name": "Louvre", "type": "MUSEUM"},
            "Paris",
        ],
    },
]
BEACH = [
    {"text": "such a lovely lazy afternoon at the beach with my friends", "entity": []},
    {"text": "the sea was cold but the sun was warm and the ice cream was great", "entity": []},
]


def respond(prompt, n_images):
    if "Obama" in prompt:
        return json.dumps(OBAMA)
    if "lovely day" in prompt:
        return "Sure, here you go:\n```json\n" + json.dumps({"samples": BEACH}) + "\n```"
    if "iPhone" in prompt:
        return json.dumps({"answer": "I cannot help with that"})  # JSON, but no samples: malformed answer
    return "no JSON at all"  # retried, then a failed request


SEEDS = [
    post("1", "Obama visits London with Michelle today", (0, 1, "PER"), (2, 3, "LOC"), (4, 5, "PER")),
    post("2", "what a lovely day at the beach"),
    post("3", "Apple launches the new iPhone in California", (0, 1, "ORG"), (4, 5, "OTHER"), (6, 7, "LOC")),
    post("4", "Real Madrid beat Barcelona at the Bernabeu", (0, 2, "ORG"), (3, 4, "ORG"), (6, 7, "LOC")),
]


def overrides(server, tmp_path, *extra):
    return [
        f"llm.base_url={server.base_url}",
        "llm.model=canned-llm",
        "llm.api_key_env=''",
        "llm.max_retries=1",
        "llm.backoff_base_s=0.01",
        "llm.backoff_max_s=0.02",
        "llm.timeout_s=5",
        "n_reuse=5",
        "n_new=3",
        "progress=false",
        *extra,
    ]


@pytest.fixture
def canned(chat_server):
    chat_server.responder = respond
    return chat_server


def test_llm_path_end_to_end(canned, tmp_path):
    cfg = load_synthesis_config(overrides(canned, tmp_path))
    out = run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=SEEDS)
    r = out.report
    assert r.requested == 32 and r.produced == 6 + 2  # 6 Obama samples with text, 2 beach samples
    # iPhone: JSON without samples does not fit the expected answer: retried, then counted as invalid
    assert r.requests == {"ok": 2, "failed:invalid_json": 2}
    assert r.rejected_posts == {"malformed_sample": 1, "duplicate": 1, "too_short": 1}
    assert r.dropped_entities == {"generic_mention": 1, "not_found": 1, "malformed_entity": 1}
    assert r.mapped_types == {"PERSON->PER": 1, "CITY->LOC": 1, "MUSEUM->OTHER": 1}
    posts = read_jsonl(out.train)
    assert len(posts) == 6 and r.kept == {"train": 6}
    by_text = {" ".join(p.tokens): [(" ".join(p.tokens[e.start : e.end]), e.type) for e in p.entities] for p in posts}
    assert by_text["Barack Obama met the police chief in Chicago last night after the game"] == [
        ("Barack Obama", "PER"),
        ("Chicago", "LOC"),
    ]
    assert by_text["Michelle Obama and Obama visited the Louvre in Paris during their trip this week"] == [
        ("Michelle Obama", "PER"),
        ("Obama", "PER"),
        ("Louvre", "OTHER"),
    ]
    assert by_text["such a lovely lazy afternoon at the beach with my friends"] == []
    prompt_hash = PromptSet.load(default_prompt_dir("twitter_gmner")).hash
    for p in posts:
        assert p.source == "synthetic" and p.id.startswith(f"syn-{p.meta['seed_id']}-")
        assert p.meta["backend"] == "openai" and p.meta["model"] == "canned-llm"
        assert p.meta["prompt_hash"] == prompt_hash
    saved = json.loads(out.report_json.read_text())
    assert saved["per_type"]["train"] == {"LOC": 2, "OTHER": 1, "PER": 5}
    assert saved["rejected_posts"]["duplicate"] == 1 and "too_short" in out.report_txt.read_text()
    # the prompt carried the seed, its entities and the counts
    body = next(b for b in canned.bodies if "Obama visits London" in b["messages"][1]["content"])
    assert '"name": "Michelle", "type": "PER"' in body["messages"][1]["content"]
    assert "5 posts that mention" in body["messages"][1]["content"] and "3 posts" in body["messages"][1]["content"]
    assert "Not entities" in body["messages"][0]["content"] and body["temperature"] == pytest.approx(0.1)


def test_rerun_makes_no_request_and_split(canned, tmp_path):
    cfg = load_synthesis_config(overrides(canned, tmp_path, "dev_fraction=0.25"))
    first = run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=SEEDS)
    sent = canned.total
    assert sent == 4 + 2  # one request per seed, plus the retries of the two answers without samples
    second = run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=SEEDS)
    # answered requests come from the cache; only the failed ones are retried (failures are not cached)
    assert canned.total - sent == 4
    assert second.report.requests["cached"] == 2
    assert first.train.read_text() == second.train.read_text()
    train, dev = read_jsonl(first.train), read_jsonl(first.dev)
    assert first.dev.name == "syn.dev.jsonl" and len(train) + len(dev) == 6
    assert not {p.meta["seed_id"] for p in train} & {p.meta["seed_id"] for p in dev}
    assert (tmp_path / "syn_work" / "llm_cache.sqlite").is_file()
    assert (tmp_path / "syn_work" / "llm_usage.json").is_file()


def test_rerun_after_success_sends_nothing(chat_server, tmp_path):
    chat_server.responder = lambda prompt, n: json.dumps(BEACH)
    cfg = load_synthesis_config(overrides(chat_server, tmp_path))
    run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=SEEDS)
    sent = chat_server.total
    assert sent == 4
    run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=SEEDS)
    assert chat_server.total == sent


def test_parse_answer_shapes():
    report = SynthesisReport()
    assert parse_answer({"text": "a b", "entities": [{"name": "a", "type": "PER"}]}, report) == [
        ("a b", [("a", "PER")])
    ]
    assert parse_answer("just a string", report) is None
    assert parse_answer({"posts": [{"text": "x", "entity": {"name": "x", "type": "LOC"}}]}, report) == [
        ("x", [("x", "LOC")])
    ]
    assert parse_answer([1, {"text": ""}], report) == [] and report.rejected_posts == {"malformed_sample": 2}


def test_cli_llm_and_swap(canned, tmp_path, capsys):
    seeds = tmp_path / "gold.jsonl"
    write_jsonl(SEEDS, seeds)
    rc = main(["synthesize", "--seeds", str(seeds), "--out", str(tmp_path / "llm.jsonl"), *overrides(canned, tmp_path)])
    printed = capsys.readouterr().out
    assert rc == 0 and "requested 32" in printed and "generic_mention" in printed
    assert len(read_jsonl(tmp_path / "llm.jsonl")) == 6
    rc = main(
        [
            "synthesize",
            "--seeds",
            str(seeds),
            "--out",
            str(tmp_path / "swap.jsonl"),
            "synthesizer=swap",
            "swap.per_seed=3",
            "progress=false",
            "dev_fraction=0.25",
        ]
    )
    assert rc == 0 and read_jsonl(tmp_path / "swap.jsonl") and read_jsonl(tmp_path / "swap.dev.jsonl")
    assert json.loads((tmp_path / "swap.report.json").read_text())["requested"] == 12
    assert main(["synthesize", "--seeds", str(seeds), "--out", str(tmp_path / "x.jsonl"), "n_reuze=1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "n_reuze" in err, err


def test_seeds_from_data_config_match_training_sample(tmp_path):
    from refineg.config import load_config
    from refineg.datamodules.gmner import read_split, sample_gold

    cfg = load_synthesis_config(["data=sample", "data.gold_limit=30", "seed=7", "max_seeds=10"])
    from refineg.stages.synthesis import load_seeds

    seeds = load_seeds(cfg)
    train = load_config(["data.gold_limit=30", "seed=7"])
    expected = sample_gold(read_split(train.data, "train"), 30, 7)[:10]
    assert [s.id for s in seeds] == [s.id for s in expected]
    with pytest.raises(ValueError, match="not in types"):
        load_seeds(load_synthesis_config(["data=sample", "domain=ccks_military", "max_seeds=5"]))


def test_hostile_answer_is_an_invalid_answer(chat_server, tmp_path):
    """A 50,000-bracket answer fails its seed's request (counted), it does not crash the run or its rerun."""
    chat_server.responder = lambda prompt, n: "[" * 50_000 if "Obama" in prompt else json.dumps(BEACH)
    cfg = load_synthesis_config(overrides(chat_server, tmp_path))
    for _ in range(2):
        out = run_synthesis(cfg, tmp_path / "syn.jsonl", seeds=SEEDS)
        assert out.report.requests["failed:invalid_json"] == 1
    assert len(read_jsonl(out.train)) == 2  # the beach posts, once (the other seeds' answers are duplicates)


def test_cli_exits_nonzero_when_no_request_succeeds(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    seeds = tmp_path / "gold.jsonl"
    write_jsonl(SEEDS, seeds)
    rc = main(
        [
            "synthesize",
            "--seeds",
            str(seeds),
            "--out",
            str(tmp_path / "syn.jsonl"),
            f"llm.base_url={dead}",
            "llm.model=m",
            "llm.api_key_env=''",
            "llm.max_retries=0",
            "progress=false",
        ]
    )
    printed = capsys.readouterr()
    assert rc == 1 and "wrote" in printed.out
    assert printed.err.strip().splitlines()[-1] == (
        "error: synthesize: none of the 4 LLM requests got an answer (connection=4); wrote 0 posts"
    )
    assert read_jsonl(tmp_path / "syn.jsonl") == [] and (tmp_path / "syn.report.json").is_file()
