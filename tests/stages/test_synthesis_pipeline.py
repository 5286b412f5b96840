"""The consistency filter with a tagger really trained on the seeds (tiny encoder, one epoch)."""

import json

from refineg.data import read_jsonl
from refineg.stages.synthesis import load_synthesis_config, run_synthesis


def test_swap_with_trained_consistency_tagger(tiny_encoder, tmp_path):
    cfg = load_synthesis_config(
        [
            "synthesizer=swap",
            "data=sample",
            "max_seeds=24",
            "swap.per_seed=2",
            "progress=false",
            "consistency.mode=relabel",
            "consistency.threshold=0.5",
            "consistency.fill_min_score=0.99",
            f"consistency.train.model.encoder={tiny_encoder}",
            "consistency.train.trainer.max_epochs=1",
            "consistency.train.data.batch_size=8",
            "consistency.train.trainer.enable_progress_bar=false",
            "consistency.train.trainer.accelerator=cpu",
            "consistency.train.model.head=softmax",
        ]
    )
    out = run_synthesis(cfg, tmp_path / "syn.jsonl")
    ckpts = list((tmp_path / "syn_work" / "consistency" / "tagger" / "checkpoints").glob("best-*.ckpt"))
    assert len(ckpts) == 1
    report = json.loads(out.report_json.read_text())
    posts = read_jsonl(out.train)
    assert report["kept"]["train"] == len(posts) > 0
    # an untrained-for-long tagger confirms few swapped labels: posts get relabelled, none dropped
    assert report["relabelled_posts"] == sum(bool(p.meta.get("relabelled")) for p in posts) > 0
    assert "inconsistent_with_tagger" not in report["rejected_posts"]
