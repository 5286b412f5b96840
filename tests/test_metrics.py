import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from seqeval.metrics import f1_score, precision_score, recall_score

from refineg.data import Entity, Example, tags_to_entities, write_jsonl
from refineg.metrics import GMNERMetrics, box_iou, evaluate_examples

TOKENS = ["a", "b", "c", "d", "e", "f"]


def ex(pid, *ents, source="gold"):
    return Example(pid, TOKENS, entities=list(ents), source=source)


def scores(golds, preds, **kw):
    return evaluate_examples(golds, preds, **kw)


def test_iou_exactly_half_counts():
    # gold 0..2 x 0..1 (area 2), pred 0..1 x 0..1 (area 1): IoU = 1/2
    assert box_iou([0, 0, 1, 1], [0, 0, 2, 1]) == 0.5
    gold = [ex("1", Entity(0, 1, "PER", [[0, 0, 2, 1]]))]
    hit = [ex("1", Entity(0, 1, "PER", [[0, 0, 1, 1]]))]
    miss = [ex("1", Entity(0, 1, "PER", [[0, 0, 0.99, 1]]))]
    assert scores(gold, hit)["gmner"]["f1"] == 1.0
    assert scores(gold, miss)["gmner"]["f1"] == 0.0
    assert scores(gold, miss)["mner"]["f1"] == 1.0


def test_hand_computed_case():
    gold = [
        ex(
            "1",
            Entity(0, 2, "PER", [[0, 0, 10, 10], [50, 50, 60, 60]]),  # several gold boxes
            Entity(3, 4, "LOC"),  # no box
            Entity(4, 6, "ORG", [[0, 0, 4, 4]]),
        ),
        ex("2", Entity(1, 2, "OTHER")),
    ]
    pred = [
        ex(
            "1",
            Entity(0, 2, "PER", [[51, 51, 60, 60]]),  # matches the 2nd gold box: all correct
            Entity(3, 4, "LOC", [[0, 0, 5, 5]]),  # box vs none: MNER ok, GMNER/EEG wrong
            Entity(4, 6, "PER", [[0, 0, 4, 4]]),  # wrong type: EEG ok only
            source="predicted",
        ),
        ex("2", Entity(1, 3, "OTHER"), source="predicted"),  # partial span: wrong everywhere
    ]
    r = scores(gold, pred)
    assert r["counts"]["gmner"] == {"tp": 1, "predicted": 4, "gold": 4}
    assert r["counts"]["mner"] == {"tp": 2, "predicted": 4, "gold": 4}
    assert r["counts"]["eeg"] == {"tp": 2, "predicted": 4, "gold": 4}
    assert r["gmner"] == {"precision": 0.25, "recall": 0.25, "f1": 0.25}
    assert r["mner"]["f1"] == 0.5
    assert r["per_type"]["PER"]["mner_f1"] == pytest.approx(2 * 0.5 * 1 / 1.5)  # P 1/2, R 1/1
    assert r["per_type"]["LOC"]["gmner_f1"] == 0.0 and r["per_type"]["LOC"]["mner_f1"] == 1.0
    assert r["per_type"]["ORG"] == {"gmner_f1": 0.0, "mner_f1": 0.0, "support": 1}


def test_none_vs_none_and_first_box_judged():
    gold = [ex("1", Entity(0, 1, "PER"), Entity(2, 3, "ORG", [[0, 0, 10, 10]]))]
    pred = [ex("1", Entity(0, 1, "PER"), Entity(2, 3, "ORG", [[90, 90, 99, 99], [0, 0, 10, 10]]))]
    r = scores(gold, pred)
    assert r["counts"]["gmner"]["tp"] == 1  # only the none-vs-none entity: the first predicted box is wrong


def test_missing_prediction_counts_empty_and_unknown_id_errors():
    gold = [ex("1", Entity(0, 1, "PER")), ex("2", Entity(0, 1, "LOC"))]
    r = scores(gold, [ex("1", Entity(0, 1, "PER"))])
    assert r["mner"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="not in the gold data.*'3'"):
        scores(gold, [ex("3")])


def test_name_matching_ccks_style():
    gold = [Example("1", ["USS", "Nimitz", "and", "USS", "Nimitz"], entities=[Entity(0, 2, "vessel")])]
    pred = [Example("1", ["USS", "Nimitz", "and", "USS", "Nimitz"], entities=[Entity(3, 5, "vessel")])]
    assert scores(gold, pred, match="name")["gmner"]["f1"] == 1.0
    assert scores(gold, pred, match="span")["gmner"]["f1"] == 0.0
    # one gold matches one prediction only
    pred2 = [Example("1", pred[0].tokens, entities=[Entity(0, 2, "vessel"), Entity(3, 5, "vessel")])]
    assert scores(gold, pred2, match="name")["counts"]["gmner"] == {"tp": 1, "predicted": 2, "gold": 1}


def test_mner_matches_seqeval_on_random_bio():
    rng = random.Random(1)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
    g_seqs, p_seqs, golds, preds = [], [], [], []
    for i in range(300):
        n = rng.randint(1, 15)
        g = [rng.choice(tags) for _ in range(n)]
        p = [t if rng.random() < 0.7 else rng.choice(tags) for t in g]
        g_seqs.append(g)
        p_seqs.append(p)
        golds.append(Example(str(i), ["w"] * n, entities=tags_to_entities(g)))
        preds.append(Example(str(i), ["w"] * n, entities=tags_to_entities(p)))
    r = scores(golds, preds, types=["PER", "LOC", "ORG"])["mner"]
    assert r["precision"] == pytest.approx(precision_score(g_seqs, p_seqs))
    assert r["recall"] == pytest.approx(recall_score(g_seqs, p_seqs))
    assert r["f1"] == pytest.approx(f1_score(g_seqs, p_seqs))


def test_metric_object_accumulates_and_resets():
    m = GMNERMetrics(["PER"])
    m.update([ex("1", Entity(0, 1, "PER"))], [ex("1", Entity(0, 1, "PER"))])
    m.update([ex("2")], [ex("2", Entity(0, 1, "PER"))])
    out = m.compute()
    assert out["mner_recall"] == 0.5 and out["mner_precision"] == 1.0
    m.reset()
    assert int(m.counts.sum()) == 0
    with pytest.raises(ValueError, match="aligned"):
        m.update([ex("1")], [ex("2")])


DDP_SCRIPT = r"""
import sys, torch, torch.distributed as dist, torch.multiprocessing as mp
from refineg.data import Entity, Example
from refineg.metrics import GMNERMetrics

def golds():
    return [Example(str(i), ["a", "b", "c"], entities=[Entity(0, 1, "PER", [[0, 0, 10, 10]]), Entity(2, 3, "LOC")])
            for i in range(6)]

def preds():
    out = []
    for i in range(6):
        box = [[0, 0, 10, 10]] if i % 2 == 0 else [[50, 50, 60, 60]]
        ents = [Entity(0, 1, "PER", box)] + ([Entity(2, 3, "LOC")] if i % 3 else [])
        out.append(Example(str(i), ["a", "b", "c"], entities=ents, source="predicted"))
    return out

def work(rank, world, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    m = GMNERMetrics(["PER", "LOC"])
    m.update(preds()[rank::world], golds()[rank::world])
    res = {k: float(v) for k, v in m.compute().items()}
    if rank == 0:
        single = GMNERMetrics(["PER", "LOC"], sync_on_compute=False)
        single.update(preds(), golds())
        ref = {k: float(v) for k, v in single.compute().items()}
        assert res == ref, (res, ref)
        assert ref["gmner_precision"] != ref["mner_precision"]
        print("DDP_OK", res["gmner_f1"], res["mner_f1"])
    dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=(2, "file://" + sys.argv[1]), nprocs=2)
"""


def test_metric_sums_over_two_gloo_processes(tmp_path):
    script = tmp_path / "ddp_metric.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP_OK" in proc.stdout


def test_evaluate_cli_json(tmp_path, capsys):
    from refineg.cli import main

    gold = [ex("1", Entity(0, 1, "PER", [[0, 0, 2, 2]]), Entity(2, 3, "LOC"))]
    pred = [ex("1", Entity(0, 1, "PER"), Entity(2, 3, "LOC"), source="predicted")]
    write_jsonl(gold, tmp_path / "g.jsonl")
    write_jsonl(pred, tmp_path / "p.jsonl")
    assert main(["evaluate", "--gold", str(tmp_path / "g.jsonl"), "--pred", str(tmp_path / "p.jsonl"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["gmner"]["f1"] == 0.5 and out["mner"]["f1"] == 1.0 and out["eeg"]["recall"] == 0.5
    assert set(out["per_type"]) == {"LOC", "PER"}
    assert main(["evaluate", "--gold", str(tmp_path / "g.jsonl"), "--pred", str(tmp_path / "p.jsonl")]) == 0
    assert "GMNER" in capsys.readouterr().out
    write_jsonl([ex("9")], tmp_path / "bad.jsonl")
    assert main(["evaluate", "--gold", str(tmp_path / "g.jsonl"), "--pred", str(tmp_path / "bad.jsonl")]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_metric_states_are_tensors_for_sync():
    m = GMNERMetrics(["PER", "LOC"])
    assert isinstance(m.counts, torch.Tensor) and m.counts.shape == (3, 3, 3)
