"""Issue 16 at the command line: expected failures are one `error: ...` line with exit status 2, names from data
never leave their folder, and `refineg evaluate` scores overlapping predictions the way peers do."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from refineg.cli import main
from refineg.data import Entity, Example, write_jsonl
from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
TOKENS = ["Obama", "meets", "Merkel", "in", "Berlin"]


def one_error_line(capsys, *needles):
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def _jsonl(path, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---- errors instead of tracebacks ------------------------------------------------------------------------------


def test_convert_non_utf8_is_one_line(tmp_path, capsys):
    bad = tmp_path / "a.txt"
    bad.write_bytes(b"IMGID:1\nw\xe9rld\tO\n")
    assert main(["convert", "--format", "conll", "--txt", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    one_error_line(capsys, f"{bad}:2: not UTF-8")


def test_convert_xml_entity_bomb_is_one_line(tmp_path, capsys):
    (tmp_path / "xml").mkdir()
    (tmp_path / "a.txt").write_text("IMGID:7\nObama\tB-PER\n")
    (tmp_path / "xml" / "7.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aa"><!ENTITY b "&a;&a;">]><annotation>&b;</annotation>'
    )
    assert (
        main(
            [
                "convert",
                "--format",
                "twitter-gmner",
                "--txt",
                str(tmp_path / "a.txt"),
                "--xml-dir",
                str(tmp_path / "xml"),
                "--out",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    one_error_line(capsys, "7.xml", "invalid xml")


@pytest.mark.parametrize("field, value", [("image_size", 5), ("meta", [1, 2]), ("image", 12345)])
def test_convert_mistyped_jsonl_is_one_line(tmp_path, capsys, field, value):
    path = _jsonl(tmp_path / "a.jsonl", {"id": "1", "tokens": ["a"], field: value})
    assert main(["convert", "--format", "jsonl", "--input", str(path), "--out", str(tmp_path / "o.jsonl")]) == 2
    one_error_line(capsys, f"{path}:1:", field)


def test_predict_missing_or_foreign_checkpoint_is_one_line(tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    assert main(["predict", "--ckpt", str(missing), "--text", "Obama in Paris"]) == 2
    one_error_line(capsys, f"{missing}: checkpoint not found")
    as_json = _jsonl(tmp_path / "preds.jsonl", {"id": "1", "tokens": ["a"]})
    assert main(["predict", "--ckpt", str(as_json), "--text", "Obama in Paris"]) == 2
    one_error_line(capsys, f"{as_json}: not a PyTorch checkpoint")


def test_predict_onnx_without_the_extra_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    assert main(["predict", "--ckpt", str(tmp_path / "any.ckpt"), "--text", "Obama", "--runtime", "onnx"]) == 2
    one_error_line(capsys, "pip install 'refineg[onnx]'")


@pytest.fixture
def tiny_ckpt(tiny_encoder, tmp_path):
    from tests.refine_helpers import make_tiny_tagger, save_checkpoint

    return save_checkpoint(make_tiny_tagger(tiny_encoder, "crf"), tmp_path / "tiny.ckpt")


def test_calibrate_checks_every_checkpoint_as_predict_does(tmp_path, tiny_ckpt, capsys):
    """The checkpoint, ensemble members and the evidential layer: missing, or a file of another kind (JSON, garbage),
    on every path through calibrate (default heads, --head-kwargs, --ensemble, --evidential, --fit-evidential)."""
    data = _jsonl(
        tmp_path / "dev.jsonl", {"id": "1", "tokens": TOKENS, "entities": [{"start": 0, "end": 1, "type": "PER"}]}
    )
    missing, garbage = tmp_path / "missing.ckpt", tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    base = ["calibrate", "--data", str(data), "--out-dir", str(tmp_path / "cal")]
    cases = [
        ([str(missing), "--ensemble", str(tiny_ckpt)], f"{missing}: checkpoint not found"),
        ([str(data), "--fit-evidential", str(data)], f"{data}: not a PyTorch checkpoint"),
        ([str(data), "--head-kwargs", '{"entropy": {}}'], f"{data}: not a PyTorch checkpoint"),
        ([str(tiny_ckpt), "--ensemble", str(tiny_ckpt), str(data)], f"{data}: not a PyTorch checkpoint"),
        ([str(tiny_ckpt), "--ensemble", str(tiny_ckpt), str(missing)], f"{missing}: checkpoint not found"),
        ([str(tiny_ckpt), "--evidential", str(garbage)], f"{garbage}: not a PyTorch evidential layer"),
        ([str(tiny_ckpt), "--evidential", str(missing)], f"{missing}: evidential layer not found"),
        ([str(tiny_ckpt), "--head-kwargs", "{bad"], "--head-kwargs is not JSON"),
        ([str(tiny_ckpt), "--head-kwargs", "[1]"], "--head-kwargs must be a JSON object"),
    ]
    for ckpt_and_options, needle in cases:
        assert main([*base, "--ckpt", *ckpt_and_options]) == 2, ckpt_and_options
        one_error_line(capsys, needle)
    assert not (tmp_path / "cal").exists()  # nothing was started


def _preds_with_uncertainty(tmp_path, uncertainty):
    post = Example("p1", TOKENS, None, [Entity(0, 1, "PER", uncertainty=uncertainty)], source="predicted")
    write_jsonl([post], tmp_path / "pred.jsonl")
    return tmp_path / "pred.jsonl"


def test_refine_without_uncertainty_is_one_line(tmp_path, capsys):
    pred = _preds_with_uncertainty(tmp_path, None)
    assert main(["refine", "--pred", str(pred), "--out", str(tmp_path / "o.jsonl")]) == 2
    one_error_line(capsys, f"{pred} [id p1]", "no uncertainty", "ckpt=")


def test_refine_replay_cache_miss_is_one_line(tmp_path, capsys):
    pred = _preds_with_uncertainty(tmp_path, 0.9)
    assert (
        main(
            [
                "refine",
                "--pred",
                str(pred),
                "--out",
                str(tmp_path / "o.jsonl"),
                "llm.backend=replay",
                f"llm.cache_path={tmp_path / 'cache.sqlite'}",
                "llm.model=m",
            ]
        )
        == 2
    )
    one_error_line(capsys, "replay: no cached answer")


@pytest.mark.parametrize(
    "train_text, needle",
    [
        (
            b'{"id": "1", "tokens": ["Pizza"], "entities": [{"start": 0, "end": 1, "type": "FOOD"}]}\n',
            "train.jsonl:1: post 1: unknown entity type 'FOOD'",
        ),
        (b'{"id": "1", "tokens": ["w\xe9"]}\n', "train.jsonl:1: not UTF-8"),
        (b"", "train.jsonl: no posts to train on"),
    ],
)
def test_train_py_data_errors_are_one_line(tmp_path, tiny_encoder, train_text, needle):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_bytes(train_text)
    _jsonl(
        tmp_path / "data" / "dev.jsonl",
        {"id": "d1", "tokens": TOKENS, "entities": [{"start": 0, "end": 1, "type": "PER"}]},
    )
    args = [
        f"model.encoder={tiny_encoder}",
        "data.format=jsonl",
        f"data.root={tmp_path / 'data'}",
        "data.train=train.jsonl",
        "data.dev=dev.jsonl",
        "data.test=null",
        "logger.wandb=false",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        "trainer.enable_progress_bar=false",
        f"runs_dir={tmp_path / 'runs'}",
        "run_name=r",
    ]
    env = {k: v for k, v in os.environ.items() if k != "REFINEG_RUN_NAME"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "HF_HUB_OFFLINE": "1"},
        timeout=600,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and proc.stderr.rstrip().endswith(errors[0]) and needle in errors[0], proc.stderr


@pytest.mark.parametrize(
    "args, needle",
    [
        (["refine", "--pred", "p.jsonl", "--out", "o.jsonl", "tau=abc"], "bad refine configuration"),
        (["zeroshot", "--data", "p.jsonl", "--out", "o.jsonl", "llm.modle=x"], "modle"),
        (["synthesize", "--seeds", "p.jsonl", "--out", "o.jsonl", "n_reuze=1"], "n_reuze"),
        (["ground", "--pred", "p.jsonl", "--pool", "p.jsonl", "--out", "o.jsonl", "selector.kk=2"], "kk"),
        (["pipeline", "--config", "missing.yaml"], "missing.yaml not found"),
        (["pipeline", "refine.tua=0.3"], "tua"),
        (["fit-region-scorer", "--data", "p.jsonl", "--images", ".", "--out", "s.pt", "heads.epochs=3"], "heads"),
        (["sweep", "p.jsonl"], "p.jsonl: not valid YAML"),
        (["sweep", "p.jsonl", "--set", "novalue"], "--set expects key=value"),
        (["report", "missing_dir"], "missing_dir is not a folder"),
        (
            ["convert", "--format", "jsonl", "--input", "p.jsonl", "--out", "o", "--to", "flickr30k-entities"],
            "read-only",
        ),
        (["convert", "--format", "conll", "--txt", "a.txt", "--out", "o.jsonl", "--type-map", "MISC"], "FROM=TO"),
        (["convert", "--format", "ccks", "--out", "o.jsonl"], "--text-json is required"),
        (["predict", "--ckpt", "x.ckpt", "--input", "p.jsonl"], "--out is required with --input"),
        (["predict", "--ckpt", "x.ckpt", "--input", "p.jsonl", "--out", "o.jsonl", "--format", "xml"], "--format must"),
        (
            ["visualize", "--pred", "p.jsonl", "--gold", "p.jsonl", "--out", "v", "--calibration", "p.jsonl"],
            "p.jsonl:2: invalid JSON",
        ),
        (
            ["visualize", "--pred", "p.jsonl", "--gold", "p.jsonl", "--out", "v", "--calibration", "c.json"],
            "no 'heads'",
        ),
    ],
)
def test_usage_and_config_errors_exit_2_like_every_bad_input(tmp_path, capsys, monkeypatch, args, needle):
    """Settings that do not parse or fit (status 2, as argparse's own usage errors), not status 1, which means
    "an LLM stage got no answer"; bad calibration files for visualize are data errors, before anything is drawn."""
    monkeypatch.chdir(tmp_path)
    _jsonl(tmp_path / "p.jsonl", {"id": "1", "tokens": TOKENS}, {"id": "2", "tokens": TOKENS})
    (tmp_path / "c.json").write_text('{"bins": 10}')
    assert main(args) == 2
    one_error_line(capsys, needle)
    assert not (tmp_path / "v").exists()


def _train_script():
    return load_script("train.py", "train_script")


@pytest.mark.parametrize(
    "override, needle",
    [
        ("trainer.max_epochs=abc", "'abc' of type 'str' could not be converted to Integer (key trainer.max_epochs)"),
        ("trainer.max_epoch=2", "Did you mean: 'max_epochs'? (key trainer.max_epoch)"),
        ("model.dropout=[1", "a value is not valid YAML"),
        ("data.batch_size=-1", "bad configuration: data.batch_size=-1 must be at least 1"),
        ("trainer.max_epochs=0", "bad configuration: trainer.max_epochs=0 must be at least 1"),
        ("data.mixing=weird", "data.mixing='weird' is not one of gold_only, concat, ratio, two_stage"),
        ("data.mixing=concat", "data.mixing=concat needs data.synthetic=<file.jsonl>"),
        ("data.pack_length=8", "data.pack_length=8 is shorter than data.max_length=128"),
        ("model.freeze_tagger=true", "model.freeze_tagger=true leaves nothing to train"),
        ("trainer.precision=99", "bad trainer settings (trainer.*): Precision '99' is invalid"),
        ("model.encoder=/no/such/encoder", "encoder '/no/such/encoder': no such model folder"),
    ],
)
def test_train_py_config_errors_are_one_line(tmp_path, tiny_encoder, capsys, monkeypatch, override, needle):
    """Bad settings of every kind (type, range, combination, Lightning's own checks, an encoder that is not there)
    are one `error:` line with status 2, before any data is read or any epoch runs."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REFINEG_RUN_NAME", raising=False)
    monkeypatch.setattr(logging.root, "handlers", [])  # main()'s basicConfig logs to this test's stderr only
    for logger in list(logging.root.manager.loggerDict.values()):  # not to the closed stderr of an earlier test
        for handler in getattr(logger, "handlers", []):
            if type(handler) is logging.StreamHandler:
                monkeypatch.setattr(handler, "stream", sys.stderr)
    base = [f"model.encoder={tiny_encoder}", "logger.wandb=false", f"runs_dir={tmp_path / 'runs'}", "run_name=r"]
    assert _train_script().main([*base, "trainer.accelerator=cpu", override]) == 2
    err = capsys.readouterr().err  # log lines may come first
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(errors) == 1 and err.rstrip().endswith(errors[0]), err
    assert needle in errors[0], errors[0]
    assert not (tmp_path / "runs" / "r" / "checkpoints").exists()


# ---- paths -----------------------------------------------------------------------------------------------------


def test_convert_to_twitter_gmner_refuses_ids_that_leave_the_xml_folder(tmp_path, capsys):
    path = _jsonl(
        tmp_path / "a.jsonl",
        {
            "id": "../../escaped",
            "tokens": ["Obama"],
            "entities": [{"start": 0, "end": 1, "type": "PER", "boxes": [[1, 1, 5, 5]]}],
        },
    )
    out = tmp_path / "o" / "p"
    assert (
        main(
            [
                "convert",
                "--format",
                "jsonl",
                "--input",
                str(path),
                "--to",
                "twitter-gmner",
                "--out",
                str(out / "t.txt"),
                "--out-xml-dir",
                str(out / "xml"),
            ]
        )
        == 2
    )
    one_error_line(capsys, "[id ../../escaped]", "'..' part")
    assert not list(tmp_path.rglob("*.xml"))


def test_convert_twitter_gmner_without_xml_dir_needs_text_only(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("IMGID:7\nObama\tB-PER\n")
    args = [
        "convert",
        "--format",
        "twitter-gmner",
        "--txt",
        str(tmp_path / "a.txt"),
        "--out",
        str(tmp_path / "o.jsonl"),
    ]
    assert main(args) == 2
    one_error_line(capsys, "--xml-dir", "--text-only")
    assert not (tmp_path / "o.jsonl").exists()
    assert main([*args, "--text-only"]) == 0
    assert "1 entities (0 with boxes)" in capsys.readouterr().out


@pytest.fixture
def ground_data(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "secret.png").write_bytes(b"not for the MLLM")
    Image.new("RGB", (20, 10)).save(tmp_path / "img" / "ok.jpg")
    ok = Example("ok", TOKENS, "ok.jpg", [Entity(0, 1, "PER")], source="predicted")
    write_jsonl([ok], tmp_path / "pool.jsonl")
    return tmp_path, ok


@pytest.mark.parametrize("image", ["../secret.png", "{tmp}/secret.png"])
@pytest.mark.parametrize("where", ["pred", "pool"])
def test_ground_refuses_images_outside_the_image_folder(ground_data, capsys, image, where):
    tmp_path, ok = ground_data
    bad = Example("bad", TOKENS, image.format(tmp=tmp_path), [Entity(0, 1, "PER")], source="predicted")
    write_jsonl([ok, bad], tmp_path / f"{where}.jsonl")
    if where == "pool":
        write_jsonl([ok], tmp_path / "pred.jsonl")
    rc = main(
        [
            "ground",
            "--pred",
            str(tmp_path / "pred.jsonl"),
            "--pool",
            str(tmp_path / "pool.jsonl"),
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "out" / "g.jsonl"),
            "mllm.llm.base_url=http://127.0.0.1:9/v1",
            "mllm.llm.model=m",
            "mllm.llm.max_retries=0",
            "selector.mode=text",
        ]
    )
    assert rc == 2
    one_error_line(capsys, f"{tmp_path / (where + '.jsonl')} [id bad]: image")
    assert not (tmp_path / "out" / "g.jsonl").exists()


def test_visualize_refuses_images_outside_the_image_folder(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (20, 10), "red").save(tmp_path / "secret.png")
    write_jsonl([Example("a", TOKENS, "../secret.png", [])], tmp_path / "gold.jsonl")
    write_jsonl([], tmp_path / "pred.jsonl")
    assert (
        main(
            [
                "visualize",
                "--pred",
                str(tmp_path / "pred.jsonl"),
                "--gold",
                str(tmp_path / "gold.jsonl"),
                "--images",
                str(tmp_path / "img"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    one_error_line(capsys, "[id a]: image '../secret.png'")


# ---- silently accepted bad data, and scoring the way peers do ----------------------------------------------


def test_evaluate_refuses_predictions_with_other_tokens(tmp_path, capsys):
    gold = _jsonl(tmp_path / "g.jsonl", {"id": "1", "tokens": TOKENS, "entities": []})
    pred = _jsonl(
        tmp_path / "p.jsonl", {"id": "1", "tokens": ["Someone", "else"], "entities": [], "source": "predicted"}
    )
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred)]) == 2
    one_error_line(capsys, str(pred), "post 1", "tokens differ")
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--match", "name"]) == 0  # names: allowed


def test_evaluate_scores_overlapping_and_duplicate_predictions(tmp_path, capsys):
    ents = [{"start": 0, "end": 1, "type": "PER"}, {"start": 2, "end": 3, "type": "PER"}]
    gold = _jsonl(tmp_path / "g.jsonl", {"id": "1", "tokens": TOKENS, "entities": ents})
    pred = _jsonl(
        tmp_path / "p.jsonl",
        {
            "id": "1",
            "tokens": TOKENS,
            "source": "predicted",
            "entities": [
                {"start": 0, "end": 1, "type": "PER"},
                {"start": 0, "end": 1, "type": "PER"},  # a duplicate
                {"start": 2, "end": 4, "type": "PER"},
                {"start": 2, "end": 3, "type": "PER"},
            ],
        },
    )  # overlapping spans
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred), "--json"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["counts"]["mner"] == {"tp": 2, "predicted": 4, "gold": 2}  # every predicted triple counts
    assert result["mner"]["precision"] == 0.5 and result["mner"]["recall"] == 1.0
    assert result["overlapping_predictions"] == {"entities": 2, "posts": 1}
    assert main(["evaluate", "--gold", str(gold), "--pred", str(pred)]) == 0
    assert "2 predicted entities (in 1 post) overlap or repeat an earlier one" in capsys.readouterr().out
    # gold files stay strict
    assert main(["evaluate", "--gold", str(pred), "--pred", str(gold)]) == 2
    one_error_line(capsys, f"{pred}:1:", "overlaps the previous one")


def test_refine_oracle_without_gold_is_one_line(tmp_path, capsys):
    pred = _preds_with_uncertainty(tmp_path, 0.9)
    assert main(["refine", "--pred", str(pred), "--out", str(tmp_path / "o.jsonl"), "backend=oracle"]) == 2
    one_error_line(capsys, "oracle backend simulates an MLLM from gold data", "gold=")
