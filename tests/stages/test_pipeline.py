"""``refineg pipeline`` end to end on the bundled sample: tiny tagger, loopback MLLM server, a SIGKILL between
stages, up-to-date skipping, one changed refine key, the oracle simulation and the zero-shot mode."""

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from refineg.data import read_jsonl
from refineg.stages.pipeline import load_pipeline_config, run_pipeline
from tests.llm.chat_server import ChatServer

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "configs" / "pipeline" / "refineg_sample.yaml"


def _respond(prompt, n_images):
    if "corrected_entity" in prompt:  # span check: the tagger's span is refused as no entity
        return json.dumps({"reasoning_process": "r", "corrected_entity": "Null"})
    return json.dumps({"reasoning_process": "r", "corrected_type": "ORG", "corrected_bounding_box": "Null"})


@pytest.fixture
def server():
    srv = ChatServer(delay_s=0.1).start()
    srv.responder = _respond
    yield srv
    srv.stop()


def _tiny_run(encoder, runs, name):
    """A run of the tiny tagger: 48 gold posts, 1 epoch, 24 evaluated dev posts."""
    return [
        f"runs_dir={runs}",
        f"name={name}",
        "progress=false",
        f"train.model.encoder={encoder}",
        "train.data.gold_limit=48",
        "train.trainer.max_epochs=1",
        "train.data.test=null",
        "train.data.eval_batch_size=64",
        "data.eval_limit=24",
    ]


def _overrides(encoder, runs, server, *extra):
    return [
        *_tiny_run(encoder, runs, "run"),
        "refine.backend=mllm",
        "refine.delegation_rate=0.2",
        "refine.allow_drop=false",
        f"mllm.base_url={server.base_url}",
        "mllm.model=test-vl",
        "mllm.api_key_env=''",
        "mllm.max_retries=0",
        "stages.ground=false",
        *extra,
    ]


def _status(summary):
    return {k: v["status"] for k, v in summary["timings"]["stages"].items()}


@pytest.mark.slow
def test_pipeline_killed_resumed_skipped_and_rerun_from_refine(tiny_encoder, tmp_path, server):
    overrides = _overrides(tiny_encoder, tmp_path, server)
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "refineg.cli", "pipeline", "--config", str(SAMPLE), *overrides],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stamp = run_dir / "stages" / "train.json"
    deadline = time.time() + 240
    while not stamp.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert stamp.is_file(), proc.stderr.read()[-3000:] if proc.poll() is not None else "train never finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "stages" / "evaluate.json").exists()  # killed before the end

    # resumed: the finished stages are kept, the rest runs
    cfg = load_pipeline_config(SAMPLE, overrides)
    summary = run_pipeline(cfg)
    status = _status(summary)
    assert status["data"] == status["train"] == "skipped"
    assert status["refine"] == status["evaluate"] == "ran" and "ground" not in status
    preds = read_jsonl(run_dir / "predict" / "predictions.jsonl")
    refined = read_jsonl(run_dir / "refine" / "refined.jsonl")
    report = json.loads((run_dir / "refine" / "refined.report.json").read_text())
    n = sum(len(p.entities) for p in preds)
    assert len(preds) == 24 and n > 0 and report["delegated"] == round(0.2 * n)
    # every delegated entity kept its span (drop refused) and got the server's type; the others are unchanged
    checked = {(p.id, c["start"], c["end"]) for p in refined for c in p.meta["refinement"]["checked"]}
    assert len(checked) == report["delegated"]
    for p, r in zip(preds, refined):
        assert [(e.start, e.end) for e in p.entities] == [(e.start, e.end) for e in r.entities]
        for e, f in zip(p.entities, r.entities):
            assert f.type == ("ORG" if (p.id, e.start, e.end) in checked else e.type)
    assert report["outcomes"]["span/drop_refused"] == report["delegated"]
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert set(metrics["by_stage"]) == {"predict", "refine"} and metrics["final"] == "refine"
    assert summary["scores"]["mner"] == metrics["by_stage"]["refine"]["mner"]["f1"]
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["stages"]["train"]["last_run_wall_s"] > 0 and timings["stages"]["train"]["wall_s"] == 0

    # nothing changed: everything is skipped and the MLLM is not asked again
    asked = server.total
    summary = run_pipeline(load_pipeline_config(SAMPLE, overrides))
    assert set(_status(summary).values()) == {"skipped"} and server.total == asked

    # one refine key changed: refine and evaluate run again, nothing upstream; the oracle simulation is scored
    summary = run_pipeline(load_pipeline_config(SAMPLE, [*overrides, "refine.backend=oracle"]))
    assert _status(summary) == {
        "data": "skipped",
        "train": "skipped",
        "predict": "skipped",
        "refine": "ran",
        "evaluate": "ran",
    }
    assert server.total == asked
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    before, after = metrics["by_stage"]["predict"]["counts"]["mner"], metrics["by_stage"]["refine"]["counts"]["mner"]
    assert after["tp"] >= before["tp"] and after["predicted"] <= before["predicted"]
    assert after != before  # the oracle dropped or fixed something
    assert summary["stages"]["refine"]["info"]["simulated"] is True


def test_grounded_pipeline(tiny_encoder, tmp_path, server):
    if importlib.util.find_spec("refineg.stages.grounding.run") is None:
        pytest.skip("grounding runner refineg.stages.grounding.run.run_ground is not merged yet")
    overrides = _overrides(
        tiny_encoder,
        tmp_path,
        server,
        "stages.ground=true",
        "stages.refine=false",
        "ground.grounder.name=mllm",
        "ground.selector.mode=random",
    )
    summary = run_pipeline(load_pipeline_config(SAMPLE, overrides))
    assert _status(summary)["ground"] == "ran"
    run_dir = tmp_path / "run"
    preds, grounded = (read_jsonl(run_dir / f) for f in ("predict/predictions.jsonl", "ground/grounded.jsonl"))
    assert [[(e.start, e.end) for e in p.entities] for p in preds] == [
        [(e.start, e.end) for e in p.entities] for p in grounded
    ]
    summary = run_pipeline(load_pipeline_config(SAMPLE, [*overrides, "ground.selector.mode=none"]))
    assert _status(summary)["predict"] == "skipped" and _status(summary)["ground"] == "ran"


def test_zeroshot_mode(tmp_path):
    """mode=zeroshot: data -> zeroshot -> evaluate; the server answers with the gold entities of each post."""
    gold = {p.id: p for p in read_jsonl_sample(6)}

    def respond(prompt, n_images):
        post = next(p for p in gold.values() if f"Post: {' '.join(p.tokens)}\n" in prompt)
        return json.dumps(
            [{"entity": e.text(post.tokens), "entity_type": e.type, "bounding_box": []} for e in post.entities]
        )

    srv = ChatServer().start()
    srv.responder = respond
    try:
        summary = run_pipeline(
            load_pipeline_config(
                SAMPLE,
                [
                    f"runs_dir={tmp_path}",
                    "name=z",
                    "mode=zeroshot",
                    "data.eval_limit=6",
                    "progress=false",
                    f"mllm.base_url={srv.base_url}",
                    "mllm.model=test-vl",
                    "mllm.api_key_env=''",
                ],
            )
        )
    finally:
        srv.stop()
    assert list(summary["timings"]["stages"]) == ["data", "zeroshot", "evaluate"]
    assert summary["final"] == "zeroshot" and summary["scores"]["mner"] == pytest.approx(1.0)
    n_boxed = sum(1 for p in gold.values() for e in p.entities if e.boxes)
    counts = json.loads((tmp_path / "z" / "evaluate" / "metrics.json").read_text())["by_stage"]["zeroshot"]["counts"]
    assert counts["gmner"]["tp"] == counts["mner"]["gold"] - n_boxed  # no image sent, so no box
    assert summary["stages"]["zeroshot"]["info"]["usage"]["total"]["requests"] == 6


def test_a_stage_without_any_answer_fails_is_kept_and_retried(tmp_path, capsys):
    """Every zeroshot request gets HTTP 500: `refineg pipeline` exits 1 with one error line, keeps the stage's
    output, does not mark the stage done and runs nothing after it; the rerun asks again and finishes."""
    from refineg.cli import main

    gold = {p.id: p for p in read_jsonl_sample(3)}

    def respond(prompt, n_images):
        post = next(p for p in gold.values() if f"Post: {' '.join(p.tokens)}\n" in prompt)
        return json.dumps([{"entity": e.text(post.tokens), "entity_type": e.type} for e in post.entities])

    srv = ChatServer().start()
    srv.responder = respond
    srv.faults = ["500"] * 3
    args = [
        "pipeline",
        "--config",
        str(SAMPLE),
        f"runs_dir={tmp_path}",
        "name=z",
        "mode=zeroshot",
        "data.eval_limit=3",
        "progress=false",
        f"mllm.base_url={srv.base_url}",
        "mllm.model=test-vl",
        "mllm.api_key_env=''",
        "mllm.max_retries=0",
    ]
    run_dir = tmp_path / "z"
    try:
        assert main(args) == 1
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(
            "error: pipeline: stage zeroshot: none of the 3 LLM requests got an answer (server_error=3); "
            "zeroshot/zeroshot.jsonl has no entities for the failed posts"
        ), err
        assert len(read_jsonl(run_dir / "zeroshot" / "zeroshot.jsonl")) == 3  # kept
        assert sorted(p.name for p in (run_dir / "stages").iterdir()) == ["data.json"]  # not marked done
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["failed"]["stage"] == "zeroshot" and _status(summary) == {"data": "ran", "zeroshot": "failed"}
        assert not (run_dir / "evaluate").exists()

        assert main(args) == 0  # the rerun asks again (failures were not cached) and goes on
        summary = json.loads((run_dir / "summary.json").read_text())
        assert _status(summary) == {"data": "skipped", "zeroshot": "ran", "evaluate": "ran"}
        assert "failed" not in summary and summary["scores"]["mner"] == pytest.approx(1.0)
        assert srv.total == 6
    finally:
        srv.stop()


def test_a_stage_whose_input_ran_again_runs_again(tmp_path):
    """A stamp that matches is not enough when an input stage ran in this invocation (its artifact changed)."""
    from refineg.stages.pipeline import Stage, StageRunner

    made = []

    def stage(name, inputs):
        def run(fp):
            made.append(name)
            (tmp_path / f"{name}.txt").write_text(str(len(made)))
            return {}

        return Stage(name, {}, inputs, [f"{name}.txt"], run)

    chain = [stage("a", []), stage("b", ["a"])]
    StageRunner(tmp_path).run(chain)
    (tmp_path / "stages" / "a.json").unlink()  # e.g. a failed or killed rerun of a left no stamp
    outcomes = StageRunner(tmp_path).run(chain)
    assert [o.status for o in outcomes] == ["ran", "ran"] and made == ["a", "b", "a", "b"]


def read_jsonl_sample(n):
    from tests.refine_helpers import sample_posts

    return sample_posts("dev", n)


def test_config_errors():
    with pytest.raises(ValueError, match="tau"):
        load_pipeline_config(SAMPLE, ["refine.tua=0.3"])
    with pytest.raises(ValueError, match="max_epoch"):
        load_pipeline_config(SAMPLE, ["train.trainer.max_epoch=2"])
    with pytest.raises(ValueError, match="data.root"):
        load_pipeline_config(ROOT / "configs" / "pipeline" / "refineg_twitter_full.yaml")
    with pytest.raises(ValueError, match="mode"):
        load_pipeline_config(SAMPLE, ["mode=gpt4o"])
    cfg = load_pipeline_config(SAMPLE, ["mllm.model=M", "train.model.head=softmax"])
    assert cfg.refine.llm.model == cfg.zeroshot.llm.model == "M" and cfg.train.model.head == "softmax"


def test_release_variants_side_by_side(tiny_encoder, tmp_path):
    """variants: the release's refinement (every post with a prediction sent, its list replaced) runs next to the
    gated default on the same predictions; an oracle variant is scored and labelled as a simulation."""
    sent_release = []

    def respond(prompt, n_images):
        if prompt.startswith("Image size:"):  # the grounding prompt: the release's refinement
            sentence = next(line[6:] for line in prompt.splitlines() if line.startswith("Post: "))
            sent_release.append(sentence)
            return json.dumps([{"entity": sentence.split()[0], "entity_type": "OTHER", "bounding_box": []}])
        return _respond(prompt, n_images)

    srv = ChatServer().start()
    srv.responder = respond
    try:
        overrides = _overrides(
            tiny_encoder,
            tmp_path,
            srv,
            "variants.release=[refine.mode=release]",
            "variants.oracle=[refine.mode=release, refine.backend=oracle]",
        )
        summary = run_pipeline(load_pipeline_config(SAMPLE, overrides))
    finally:
        srv.stop()
    status = _status(summary)
    assert status["refine"] == status["refine@release"] == status["refine@oracle"] == "ran"
    run_dir = tmp_path / "run"
    preds = read_jsonl(run_dir / "predict" / "predictions.jsonl")
    released = read_jsonl(run_dir / "variants" / "release" / "refine" / "refined.jsonl")
    with_entities = [p for p in preds if p.entities]
    assert with_entities  # (the unit tests cover posts without predictions: they are not sent)
    # exactly the posts with a predicted entity were sent, once each, whatever their uncertainty
    assert sorted(sent_release) == sorted(" ".join(p.tokens) for p in with_entities)
    for p, r in zip(preds, released):
        expected = [(0, 1, "OTHER")] if p.entities else []
        assert [(e.start, e.end, e.type) for e in r.entities] == expected, p.id
    gated = read_jsonl(run_dir / "refine" / "refined.jsonl")  # the gated default: spans untouched (drop refused)
    assert [[(e.start, e.end) for e in p.entities] for p in gated] == [
        [(e.start, e.end) for e in p.entities] for p in preds
    ]
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())
    assert list(metrics["by_stage"]) == ["predict", "refine", "refine@release", "refine@oracle"]
    assert metrics["final"] == "refine" and metrics["variants"] == {
        "release": "refine@release",
        "oracle": "refine@oracle",
    }
    assert list(metrics["simulated"]) == ["refine@oracle"]
    assert summary["variants"]["release"]["scores"]["mner"] == metrics["by_stage"]["refine@release"]["mner"]["f1"]
    from refineg.viz.report import build_report

    build_report(run_dir)
    report = (run_dir / "report.md").read_text()
    assert "| refine@release |" in report and "| refine@oracle *(simulation)* |" in report
    assert "| refine@release *(simulation)*" not in report


def test_variant_config_errors():
    from refineg.stages.pipeline.config import variant_config

    cfg = load_pipeline_config(
        SAMPLE, ["variants.release=[refine.mode=release, ground.selector.entity_similarity=release]"]
    )
    v = variant_config(cfg, "release")
    assert v.refine.mode == "release" and v.ground.selector.entity_similarity == "release"
    assert cfg.refine.mode == "gated" and cfg.ground.selector.entity_similarity == "best_match"
    with pytest.raises(ValueError, match="a variant may only change"):
        load_pipeline_config(SAMPLE, ["variants.x=[train.checkpoint=a.ckpt]"])
    with pytest.raises(ValueError, match="unknown mode 'relase'"):
        load_pipeline_config(SAMPLE, ["variants.x=[refine.mode=relase]"])
    with pytest.raises(ValueError, match="variant name"):
        load_pipeline_config(SAMPLE, ["variants={'a/b': [refine.mode=release]}"])


def test_editing_the_grounding_prompts_reruns_the_ground_stage(tmp_path):
    import shutil

    from refineg.config import CONFIG_DIR
    from refineg.stages.pipeline.run import fingerprint
    from refineg.stages.pipeline.stages import build_stages

    prompts = tmp_path / "gp"
    shutil.copytree(CONFIG_DIR / "prompts" / "grounding", prompts)
    cfg = load_pipeline_config(
        str(CONFIG_DIR / "pipeline" / "refineg_sample.yaml"),
        [f"ground.mllm.prompts_dir={prompts}", f"runs_dir={tmp_path / 'runs'}", "stages.ground=true"],
    )

    def fingerprints():
        return {s.name: fingerprint(s.name, s.section, {}, s.external) for s in build_stages(cfg)}

    before = fingerprints()
    (prompts / "query.txt").write_text((prompts / "query.txt").read_text() + "\nAnswer briefly.\n")
    after = fingerprints()
    assert before["ground"] != after["ground"] and before["predict"] == after["predict"]


def _selftrain_overrides(encoder, runs, *extra):
    return [
        *_tiny_run(encoder, runs, "st"),
        "stages.refine=false",
        "stages.ground=false",
        "stages.selftrain=true",
        "train.data.unlabeled_from_train=true",
        "selftrain.rounds=1",
        "selftrain.tau=1.0",
        *extra,
    ]


def test_selftrain_switch_trains_the_tagger_by_self_training(tiny_encoder, tmp_path):
    """stages.selftrain: the data stage writes the pool (training posts outside the gold sample, labels kept), the
    train stage runs the self-training rounds and hands the best round's tagger to predict; a rerun skips it all."""
    from refineg.stages.pipeline.stages import build_stages

    cfg = load_pipeline_config(SAMPLE, _selftrain_overrides(tiny_encoder, tmp_path))
    summary = run_pipeline(cfg)
    run_dir = tmp_path / "st"
    gold, pool = read_jsonl(run_dir / "data" / "train.jsonl"), read_jsonl(run_dir / "data" / "unlabeled.jsonl")
    assert len(gold) == 48 and len(pool) == 600 - 48 and not {e.id for e in gold} & {e.id for e in pool}
    assert sum(len(e.entities) for e in pool) > 0  # the hidden labels the pseudo-labels are scored against
    info = json.loads((run_dir / "train" / "tagger.json").read_text())
    rounds = info["selftrain"]["dev_mner_f1_per_round"]
    assert len(rounds) == 2 and info["best_val_mner_f1"] == max(rounds)
    best = info["selftrain"]["best_round"]
    assert info["checkpoint"].startswith(str(run_dir / "train" / "tagger" / f"round{best}" / "checkpoints"))
    state = json.loads((run_dir / "train" / "tagger" / "selftrain.json").read_text())
    assert state["rounds"][1]["pseudo"]["posts"] == len(pool)  # tau=1 keeps every pool post
    assert state["rounds"][1]["pseudo_quality"]["precision_kept"] is not None
    assert _status(summary)["train"] == "ran" and summary["final"] == "predict" and "mner" in summary["scores"]
    again = run_pipeline(cfg)
    assert set(_status(again).values()) == {"skipped"}
    # a changed self-training key changes the train stage's fingerprint material, not the data stage's
    other = load_pipeline_config(SAMPLE, _selftrain_overrides(tiny_encoder, tmp_path, "selftrain.tau=0.3"))
    sections = [{s.name: s.section for s in build_stages(c)} for c in (cfg, other)]
    assert sections[0]["train"] != sections[1]["train"] and sections[0]["data"] == sections[1]["data"]


def test_selftrain_switch_config_errors(tmp_path):
    with pytest.raises(ValueError, match="stages.selftrain needs unlabelled posts"):
        load_pipeline_config(SAMPLE, ["stages.selftrain=true"])
    with pytest.raises(ValueError, match="leave train.checkpoint unset"):
        load_pipeline_config(SAMPLE, ["stages.selftrain=true", "train.data.unlabeled=x.jsonl", "train.checkpoint=a"])
    pool = ["stages.selftrain=true", "train.data.unlabeled=x.jsonl"]
    with pytest.raises(ValueError, match="stages.selftrain: selftrain.tau must be in"):
        load_pipeline_config(SAMPLE, [*pool, "selftrain.tau=2"])  # checked when loading, before any stage runs
    with pytest.raises(ValueError, match=r"stages.selftrain: self-training runs on one device .*train.trainer"):
        load_pipeline_config(SAMPLE, [*pool, "train.trainer.strategy=ddp"])
