"""Small `refineg` CLI behaviours: --version, predict --limit / no entity, quiet httpx logs, refine --gold feeding the
simulation, the pipeline's simulation notice and a failed sweep trial's error line."""

import json
import logging

import pytest
import yaml

from refineg import __version__
from refineg.cli import CHATTY_LOGGERS, main
from refineg.data import Entity, Example, read_jsonl, write_jsonl
from tests.refine_helpers import make_tiny_tagger, sample_posts, save_checkpoint


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"refineg {__version__}"


@pytest.fixture(scope="module")
def silent_ckpt(tiny_encoder, tmp_path_factory):
    """A tagger whose emissions always favour O: it finds no entity."""
    return save_checkpoint(make_tiny_tagger(tiny_encoder, gain=0.0), tmp_path_factory.mktemp("ckpt") / "o.ckpt")


def test_predict_limit_and_no_entity_message(silent_ckpt, tmp_path, capsys):
    write_jsonl(sample_posts("dev", 12), tmp_path / "in.jsonl")
    args = ["predict", "--ckpt", str(silent_ckpt), "--device", "cpu"]
    assert main([*args, "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "p.jsonl"), "--limit", "5"]) == 0
    assert [p.id for p in read_jsonl(tmp_path / "p.jsonl")] == [p.id for p in sample_posts("dev", 5)]
    capsys.readouterr()
    assert main([*args, "--text", "Obama visits Paris"]) == 0
    assert capsys.readouterr().out.strip() == "no entity found in 3 words"
    assert main([*args, "--input", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "q.jsonl"), "--limit", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --limit must be >= 1, got 0"


def test_httpx_request_lines_only_with_verbose(tmp_path):
    gold = [Example("p1", ["Obama"], entities=[Entity(0, 1, "PER")])]
    write_jsonl(gold, tmp_path / "g.jsonl")
    httpx_logger = logging.getLogger("httpx")
    before = httpx_logger.level
    try:
        assert main(["evaluate", "--gold", str(tmp_path / "g.jsonl"), "--pred", str(tmp_path / "g.jsonl")]) == 0
        assert not httpx_logger.isEnabledFor(logging.INFO) and httpx_logger.isEnabledFor(logging.WARNING)
        assert main(["-v", "evaluate", "--gold", str(tmp_path / "g.jsonl"), "--pred", str(tmp_path / "g.jsonl")]) == 0
        assert httpx_logger.level == logging.NOTSET
    finally:
        httpx_logger.setLevel(before)


def test_no_http_request_line_per_llm_call_without_verbose(tmp_path, caplog):
    """A real request through the installed openai client (whose transport may log as httpx or httpx2): its
    "HTTP Request" INFO line shows only with -v."""
    from tests.llm.chat_server import ChatServer

    write_jsonl([Example("p1", ["Hello", "Paris"])], tmp_path / "p.jsonl")
    srv = ChatServer().start()
    srv.responder = lambda prompt, n_images: "[]"
    levels = {name: logging.getLogger(name).level for name in CHATTY_LOGGERS}
    caplog.set_level(logging.INFO)
    try:
        for verbose in ([], ["-v"]):
            caplog.clear()
            args = [
                "zeroshot",
                "--data",
                str(tmp_path / "p.jsonl"),
                "--out",
                str(tmp_path / f"run{len(verbose)}" / "z.jsonl"),
            ]
            llm = [f"llm.base_url={srv.base_url}", "llm.model=m", "llm.api_key_env=''", "llm.max_retries=0"]
            assert main([*verbose, *args, *llm]) == 0
            lines = [r for r in caplog.records if r.getMessage().startswith("HTTP Request: POST")]
            assert len(lines) == (1 if verbose else 0), [(r.name, r.getMessage()) for r in lines]
    finally:
        srv.stop()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def test_refine_gold_option_feeds_the_simulated_backend(tmp_path, capsys):
    tokens = ["Barack", "Obama", "visits", "Paris"]
    gold = [Example("p1", tokens, entities=[Entity(0, 2, "PER"), Entity(3, 4, "LOC")], source="gold")]
    pred = [
        Example(
            "p1",
            tokens,
            entities=[Entity(1, 2, "ORG", uncertainty=0.9), Entity(3, 4, "LOC", uncertainty=0.1)],
            source="predicted",
        )
    ]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    write_jsonl(pred, tmp_path / "pred.jsonl")
    rc = main(
        [
            "refine",
            "--pred",
            str(tmp_path / "pred.jsonl"),
            "--out",
            str(tmp_path / "out.jsonl"),
            "--gold",
            str(tmp_path / "gold.jsonl"),
            "backend=oracle",
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "SIMULATION: answers come from oracle (simulation)" in out
    assert "MNER F1: 50.00 -> 100.00  (simulation: oracle (simulation))" in out
    assert [(e.start, e.end, e.type) for e in read_jsonl(tmp_path / "out.jsonl")[0].entities] == [
        (0, 2, "PER"),
        (3, 4, "LOC"),
    ]
    report = json.loads((tmp_path / "out.report.json").read_text())
    assert report["config"]["gold"] == str(tmp_path / "gold.jsonl")


def test_pipeline_console_says_when_scores_are_simulated(monkeypatch, capsys, tmp_path):
    import refineg.stages.pipeline as pipeline

    summary = {
        "run_dir": str(tmp_path),
        "final": "ground",
        "scores": {"gmner": 0.5, "mner": 0.75, "eeg": 0.6},
        "simulated": {"refine": "oracle (simulation)", "ground": "oracle (simulation)"},
        "timings": {"stages": {"refine": {"status": "ran", "wall_s": 1.0, "last_run_wall_s": 1.0}}},
    }
    monkeypatch.setattr(pipeline, "load_pipeline_config", lambda config, overrides: None)
    monkeypatch.setattr(pipeline, "run_pipeline", lambda cfg: summary)
    assert main(["pipeline"]) == 0
    out = capsys.readouterr().out
    assert "ground (SIMULATION): GMNER F1 50.00  MNER F1 75.00" in out
    assert (
        "SIMULATION: the refine stage's answers come from oracle (simulation), not from an MLLM; the scores of "
        "refine and ground are simulated"
    ) in out
    summary["simulated"] = {}
    assert main(["pipeline"]) == 0
    assert "SIMULATION" not in capsys.readouterr().out


def test_failed_sweep_trial_prints_its_last_error_line(tmp_path, capsys):
    script = tmp_path / "trial.py"
    script.write_text(
        "import sys\nprint('working...')\nprint('error: source=runs/x does not exist', file=sys.stderr)\nsys.exit(2)\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "program": str(script),
                "method": "grid",
                "metric": {"name": "m", "goal": "maximize"},
                "parameters": {"x": {"value": 1}},
                "command": ["${interpreter}", "${program}", "${args_no_hyphens}"],
            }
        )
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path / "out")]) == 1
    lines = capsys.readouterr().out.splitlines()
    row = next(i for i, line in enumerate(lines) if line.rstrip().endswith("failed"))
    assert lines[row + 1].strip() == "error: source=runs/x does not exist"


def test_refine_trial_names_the_command_that_makes_a_missing_source(tmp_path):
    from refineg.sweeps.refine_trial import run_refine_trial

    with pytest.raises(FileNotFoundError, match=r"python train.py run_name=sample-crf runs_dir="):
        run_refine_trial([f"source={tmp_path / 'runs' / 'sample-crf'}", f"runs_dir={tmp_path / 'out'}"])
