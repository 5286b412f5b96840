"""refineg report on a real tiny run folder (training, calibration, a refinement trial, LLM usage) and on an
empty one; the refinement sweep trial script (tools/refine_trial.py) and its metrics."""

import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from refineg.cli import main
from refineg.config import load_config
from refineg.data import read_jsonl
from refineg.llm.messages import ChatResult
from refineg.llm.usage import UsageMeter
from refineg.metrics import evaluate_examples
from refineg.sweeps import load_sweep, read_metric
from refineg.sweeps.refine_trial import run_refine_trial

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run(tiny_encoder, tmp_path_factory):
    import torch

    from refineg.datamodules.gmner import read_split
    from refineg.stages.refinement.calibrate import calibrate
    from refineg.training import train

    torch.set_num_threads(1)
    runs = tmp_path_factory.mktemp("runs")
    os.environ.pop("REFINEG_RUN_NAME", None)
    overrides = {
        "model.encoder": tiny_encoder,
        "model.dropout": 0.0,
        "data.gold_limit": 48,
        "data.batch_size": 16,
        "data.test": None,
        "trainer.max_epochs": 2,
        "logger.wandb": False,
        "optim.encoder_lr": 1e-3,
        "trainer.enable_progress_bar": False,
        "trainer.accelerator": "cpu",
        "runs_dir": runs,
        "run_name": "tiny",
    }
    train(load_config([f"{k}={v}" for k, v in overrides.items()]))
    os.environ.pop("REFINEG_RUN_NAME", None)
    run_dir = runs / "tiny"
    ckpt = next((run_dir / "checkpoints").glob("best-*.ckpt"))
    golds = read_split(load_config([]).data, "dev")  # the bundled sample's dev posts, as the run read them
    calibrate(ckpt, golds, run_dir / "calibration", {"max_prob_mean": {}, "crf_marginal": {}}, batch_size=64)
    trial = run_refine_trial(
        [
            f"source={run_dir}",
            f"runs_dir={run_dir / 'refine'}",
            "run_name=tau05",
            "head=crf_marginal",
            "tau=0.5",
            "backend=oracle",
            "wandb=true",
        ]
    )
    meter = UsageMeter(run_dir / "grounding")
    meter.record("grounding", ChatResult("[]", prompt_tokens=1200, completion_tokens=80, attempts=1))
    meter.record("grounding", ChatResult(None, status="failed", error="timeout: slow", attempts=4))
    meter.write()
    # the grounding stage's summary layout (refineg ground, grounding branch: run.py summarise + usage)
    summary = {
        "posts": 150,
        "posts_without_image": 150,
        "posts_asked": 0,
        "posts_failed": 1,
        "entities": 240,
        "grounded": 0,
        "boxes": 0,
        "none_by_reason": {"no_image": 239, "failed": 1},
        "grounder": "mllm",
        "selector": "text 0.4 + image 0.2 + entity 0.6, k=3",
        "usage": meter.to_dict(),
    }
    (run_dir / "grounding" / "grounded_dev.summary.json").write_text(json.dumps(summary))
    return run_dir, golds, trial


def test_refine_trial_metrics(run):
    run_dir, golds, trial = run
    out = run_dir / "refine" / "tau05"
    saved = json.loads((out / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(trial))
    refined = evaluate_examples(golds, read_jsonl(out / "refined_dev.jsonl"))
    before = evaluate_examples(golds, read_jsonl(run_dir / "predictions_dev.jsonl"))
    assert saved["refined"]["mner_f1"] == pytest.approx(refined["mner"]["f1"])
    assert saved["before"]["gmner_f1"] == pytest.approx(before["gmner"]["f1"])
    report = json.loads((out / "refined_dev.report.json").read_text())
    assert saved["delegation_rate"] == report["delegation_rate"] and saved["simulated"] is True
    assert 0 < report["delegated"] <= report["entities"]  # an untrained-ish tagger is unsure of some entities
    assert saved["gain"]["mner_f1"] >= -1e-9  # oracle corrections never lower MNER F1
    assert read_metric(out, "refined/mner_f1") == pytest.approx(saved["refined"]["mner_f1"])
    assert list(out.glob("wandb/offline-run-*"))  # wandb=true logged offline


def test_shipped_threshold_sweep_points_at_the_trial_script(run):
    run_dir, _, _ = run
    spec = load_sweep(ROOT / "configs/sweeps/thresholds.yaml", {"source": str(run_dir)})
    trials = spec.expand()
    assert [t["tau"] for t in trials] == [0.1, 0.2, 0.3, 0.5, 0.7, 0.9]
    assert all(t["source"] == str(run_dir) for t in trials)
    assert spec.command_for(trials[0])[2:4] == ["tools/refine_trial.py", f"source={run_dir}"]


def test_report_page(run, capsys):
    from refineg.viz import build_report

    run_dir, _, trial = run
    assert main(["report", str(run_dir), "--posts", "2"]) == 0
    text = (run_dir / "report.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dev = metrics["dev"]
    m = dev["mner"]
    assert f"| MNER | {100 * m['precision']:.2f} | {100 * m['recall']:.2f} | {100 * m['f1']:.2f} |" in text
    for etype, s in dev["per_type"].items():
        assert f"| {etype} | {100 * s['gmner_f1']:.2f} | {100 * s['mner_f1']:.2f} | {s['support']} |" in text
    assert f"Best validation MNER F1: **{100 * metrics['best_val_mner_f1']:.2f}**" in text
    calib = json.loads((run_dir / "calibration" / "calibration.json").read_text())
    auroc = calib["heads"]["crf_marginal"]["total"]["auroc"]
    assert f"| crf_marginal | total | {calib['heads']['crf_marginal']['total']['n']} |" in text
    assert f"{auroc:.3f}" in text
    report = json.loads((run_dir / "refine" / "tau05" / "refined_dev.report.json").read_text())
    row = (
        f"| `refine/tau05/refined_dev.report.json` | oracle (simulation) | {report['entities']} | "
        f"{report['delegated']} | {100 * report['delegation_rate']:.2f} |"
    )
    assert row in text
    before, after = trial["before"]["mner_f1"], trial["refined"]["mner_f1"]
    assert f"MNER F1 {100 * before:.2f} -> {100 * after:.2f}" in text
    assert "Simulated scores of `refine/tau05/refined_dev.report.json` (%)" in text
    trial_text = build_report(run_dir / "refine" / "tau05", n_posts=0).read_text()  # the trial's own folder
    assert "### refinement trial, simulation (%)" in trial_text
    assert "the refined scores come from oracle (simulation), not from an MLLM" in trial_text
    # MLLM usage of the grounding stage: 2 requests, 5 calls, 1 failed, 1200 + 80 tokens
    assert "| grounding | 2 | 5 | 0 | 1 | 0 | 1200 | 80 |" in text
    assert "| total | 2 | 5 | 0 | 1 | 0 | 1200 | 80 |" in text
    assert (
        "| `grounding/grounded_dev.summary.json` | mllm | text 0.4 + image 0.2 + entity 0.6, k=3 | 150 | 150 | "
        "240 | 0 | 0 | 1 |"
    ) in text
    assert "answered none in `grounding/grounded_dev.summary.json`: no_image 239, failed 1" in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sum(p.startswith("report_assets/posts/") for p in images) == 2
    assert "report_assets/reliability_0.png" in images and "report_assets/risk_coverage_0.png" in images
    for rel in images:
        with Image.open(run_dir / rel) as img:
            assert img.format == "PNG"
    assert "no `" not in text  # every artifact kind was found


def test_report_of_empty_folder_says_what_is_missing(tmp_path):
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    for missing in (
        "no `config.yaml`",
        "no `metrics.json`",
        "no `calibration.json`",
        "no refinement report",
        "no grounding summary",
        "no `llm_usage.json`",
        "no `predictions_dev.jsonl`",
    ):
        assert missing in text


def test_report_to_wandb_offline(run, monkeypatch):
    run_dir, _, _ = run
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main(["report", str(run_dir), "--posts", "1", "--wandb"]) == 0
    [wb_run] = list((run_dir / "wandb").glob("offline-run-*"))
    [table] = list(wb_run.glob("files/media/table/report/scores_*.table.json"))
    data = json.loads(table.read_text())
    assert data["columns"] == ["split", "task", "precision", "recall", "f1"]
    dev = json.loads((run_dir / "metrics.json").read_text())["dev"]
    assert [r[:2] for r in data["data"]] == [["dev", "gmner"], ["dev", "mner"], ["dev", "eeg"]]
    assert data["data"][1][4] == pytest.approx(dev["mner"]["f1"])
    images = {p.parent.name + "/" + p.name.split("_")[0] for p in wb_run.glob("files/media/images/report/**/*.png")}
    assert {"report/reliability", "report/risk"} <= images and any(i.startswith("posts/") for i in images)


def test_report_of_a_pipeline_run(tmp_path):
    """A real `refineg pipeline` run folder (zero-shot mode, loopback MLLM server answering with the gold entities)."""
    from refineg.stages.pipeline import load_pipeline_config, run_pipeline
    from tests.llm.chat_server import ChatServer
    from tests.refine_helpers import sample_posts

    gold = sample_posts("dev", 4)

    def respond(prompt, n_images):
        post = next(p for p in gold if f"Post: {' '.join(p.tokens)}\n" in prompt)
        return json.dumps(
            [{"entity": e.text(post.tokens), "entity_type": e.type, "bounding_box": []} for e in post.entities[:1]]
        )

    srv = ChatServer().start()
    srv.responder = respond
    try:
        run_pipeline(
            load_pipeline_config(
                ROOT / "configs/pipeline/refineg_sample.yaml",
                [
                    f"runs_dir={tmp_path}",
                    "name=z",
                    "mode=zeroshot",
                    "data.eval_limit=4",
                    "progress=false",
                    f"mllm.base_url={srv.base_url}",
                    "mllm.model=test-vl",
                    "mllm.api_key_env=''",
                ],
            )
        )
    finally:
        srv.stop()
    run_dir = tmp_path / "z"
    assert main(["report", str(run_dir), "--posts", "2"]) == 0
    text = (run_dir / "report.md").read_text()
    metrics = json.loads((run_dir / "evaluate" / "metrics.json").read_text())["by_stage"]["zeroshot"]
    assert "| pipeline | z (mode zeroshot, seed 42) |" in text
    assert (
        f"| zeroshot | {100 * metrics['gmner']['f1']:.2f} | {100 * metrics['mner']['f1']:.2f} | "
        f"{100 * metrics['eeg']['f1']:.2f} |"
    ) in text
    assert "final: **zeroshot**" in text and "### final (zeroshot) scores (%)" in text
    assert "| total | 4 | 4 | 0 | 0 | 0 |" in text  # 4 MLLM requests, 4 calls, from the run's llm_usage.json
    drawings = re.findall(r"!\[[^\]]*\]\((report_assets/posts/[^)]+)\)", text)
    assert len(drawings) == 2 and "entities of 2 posts (zeroshot output)" in text
    for rel in drawings:
        with Image.open(run_dir / rel) as img:
            assert img.format == "PNG"


def _pipeline_metrics(run_dir, with_key):
    f1 = lambda v: {t: {"precision": v, "recall": v, "f1": v} for t in ("gmner", "mner", "eeg")}  # noqa: E731
    metrics = {
        "final": "ground",
        "split": "dev",
        "posts": 10,
        "match": "span",
        "by_stage": {"predict": f1(0.5), "refine": f1(0.75), "ground": f1(0.625)},
    }
    if with_key:
        label = "noisy-oracle p=0.8 (simulation)"
        metrics["simulated"] = {"refine": label, "ground": label}
    (run_dir / "evaluate").mkdir(parents=True)
    (run_dir / "evaluate" / "metrics.json").write_text(json.dumps(metrics))


@pytest.mark.parametrize("with_key", [True, False])
def test_pipeline_scores_say_which_outputs_are_simulated(tmp_path, with_key):
    from refineg.viz import build_report

    _pipeline_metrics(tmp_path, with_key)
    (tmp_path / "refine").mkdir()  # an older metrics.json without the key: the refine stage's report tells
    (tmp_path / "refine" / "refined.report.json").write_text(
        json.dumps({"backend": "noisy-oracle p=0.8 (simulation)", "simulated": True, "delegation_rate": 0.2})
    )
    text = build_report(tmp_path, n_posts=0).read_text()
    assert "final: **ground** (simulation)" in text
    assert (
        "**Simulation:** the refine stage's answers come from noisy-oracle p=0.8 (simulation), not from an MLLM" in text
    )
    assert "| predict | 50.00 |" in text and "| refine *(simulation)* | 75.00 |" in text
    assert "| ground *(simulation)* | 62.50 |" in text and "### final (ground, simulation) scores (%)" in text


def test_pipeline_scores_of_a_real_mllm_are_not_marked(tmp_path):
    from refineg.viz import build_report

    _pipeline_metrics(tmp_path, with_key=False)
    (tmp_path / "refine").mkdir()
    (tmp_path / "refine" / "refined.report.json").write_text(
        json.dumps({"backend": "mllm openai:m", "simulated": False, "delegation_rate": 0.2})
    )
    text = build_report(tmp_path, n_posts=0).read_text()
    assert "simulation" not in text.lower() and "| refine | 75.00 |" in text


def test_pipeline_evaluate_records_simulated_outputs(tmp_path):
    from refineg.stages.pipeline.stages import simulated_outputs

    (tmp_path / "refine").mkdir()
    report = tmp_path / "refine" / "refined.report.json"
    report.write_text(json.dumps({"backend": "oracle (simulation)", "simulated": True}))
    assert simulated_outputs(tmp_path, ["predict", "refine", "ground"]) == {
        "refine": "oracle (simulation)",
        "ground": "oracle (simulation)",
    }
    assert simulated_outputs(tmp_path, ["predict", "ground"]) == {}
    report.write_text(json.dumps({"backend": "mllm openai:m", "simulated": False}))
    assert simulated_outputs(tmp_path, ["predict", "refine"]) == {}
