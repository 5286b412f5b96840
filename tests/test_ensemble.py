"""Tagger ensembles (refineg.inference.ensemble): one CRF whose distribution is the members' geometric mean."""

import itertools

import pytest
import torch

from refineg.inference.ensemble import EnsembleTagger, ensemble_tagger
from refineg.inference.predictor import TaggerPredictor
from tests.refine_helpers import make_tiny_tagger, sample_posts, save_checkpoint


def path_log_probs(crf, em):
    """log p(y) of every tag path of one post (``em``: (T, K)), by enumeration."""
    start, trans, end = crf._potentials()
    scores = {}
    for path in itertools.product(range(em.shape[1]), repeat=em.shape[0]):
        s = start[path[0]] + end[path[-1]] + sum(em[t, k] for t, k in enumerate(path))
        scores[path] = s + sum(trans[a, b] for a, b in zip(path, path[1:]))
    values = torch.stack(list(scores.values())).double()
    return dict(zip(scores, (values - torch.logsumexp(values, 0)).tolist()))


def test_ensemble_crf_is_the_normalised_geometric_mean_of_the_members(tiny_encoder):
    members = [make_tiny_tagger(tiny_encoder, seed=s, gain=3.0) for s in (0, 1, 2)]
    with torch.no_grad():  # members with different transition scores, so that the average matters
        for k, m in enumerate(members):
            m.tagger.head.crf.transitions.normal_(generator=torch.Generator().manual_seed(k))
            m.tagger.head.crf.start.uniform_(-1, 1)
    ens = EnsembleTagger([m.tagger for m in members]).eval()
    predictor = TaggerPredictor(members[0], batch_size=8)
    _, batch = next(predictor.batches(sample_posts("dev", 4)))
    with torch.no_grad():
        ems = [m(batch) for m in members]
        em_ens = ens(**batch)
    post, words = 0, 3  # 3 words x 9 labels: 729 paths
    em_cut = [e[post, :words] for e in ems]
    per_member = [path_log_probs(m.tagger.head.crf, e) for m, e in zip(members, em_cut)]
    geo = {y: sum(lp[y] for lp in per_member) / len(members) for y in per_member[0]}
    norm = torch.logsumexp(torch.tensor([v for v in geo.values()], dtype=torch.float64), 0).item()
    want = {y: v - norm for y, v in geo.items()}
    got = path_log_probs(ens.head.crf, em_ens[post, :words])
    worst = max(abs(got[y] - want[y]) for y in want if want[y] > -30)
    assert worst < 1e-4
    # the members really differ, so this is not the trivial case
    assert max(abs(per_member[0][y] - per_member[1][y]) for y in want if want[y] > -30) > 0.1
    # decoding is the ensemble distribution's mode
    mask = torch.ones(1, words, dtype=torch.bool)
    decoded = ens.head.decode(em_ens[post : post + 1, :words], mask)[0]
    assert tuple(decoded) == max(got, key=got.get)


def test_ensemble_of_copies_predicts_like_the_member_and_checkpoints_load(tiny_encoder, tmp_path):
    one = make_tiny_tagger(tiny_encoder, seed=3)
    paths = [save_checkpoint(one, tmp_path / f"m{k}.ckpt") for k in range(2)]
    posts = sample_posts("dev", 20)
    alone = TaggerPredictor(one).predict(posts, progress=False)
    both = TaggerPredictor(ensemble_tagger(paths)).predict(posts, progress=False)
    spans = [[(e.start, e.end, e.type) for e in p.entities] for p in alone]
    assert sum(map(len, spans)) > 5
    assert [[(e.start, e.end, e.type) for e in p.entities] for p in both] == spans


def test_ensemble_refuses_members_that_do_not_fit(tiny_encoder, tmp_path):
    crf = save_checkpoint(make_tiny_tagger(tiny_encoder, seed=0), tmp_path / "crf.ckpt")
    softmax = make_tiny_tagger(tiny_encoder, head="softmax", seed=1)
    with pytest.raises(ValueError, match="at least 2"):
        ensemble_tagger([crf])
    with pytest.raises(ValueError, match="member 1: its head"):
        EnsembleTagger([make_tiny_tagger(tiny_encoder).tagger, softmax.tagger])


def test_predict_cli_tags_with_an_ensemble_of_checkpoints(tiny_encoder, tmp_path, capsys):
    from refineg.cli import main
    from refineg.data import read_jsonl, write_jsonl

    a = save_checkpoint(make_tiny_tagger(tiny_encoder, seed=4), tmp_path / "a.ckpt")
    b = save_checkpoint(make_tiny_tagger(tiny_encoder, seed=5), tmp_path / "b.ckpt")
    write_jsonl(sample_posts("dev", 12), tmp_path / "posts.jsonl")
    args = ["--input", str(tmp_path / "posts.jsonl"), "--device", "cpu"]
    assert main(["predict", "--ckpt", str(a), str(b), *args, "--out", str(tmp_path / "ens.jsonl")]) == 0
    got = read_jsonl(tmp_path / "ens.jsonl")
    want = TaggerPredictor(ensemble_tagger([a, b])).predict(sample_posts("dev", 12), progress=False)
    assert [[(e.start, e.end, e.type) for e in p.entities] for p in got] == [
        [(e.start, e.end, e.type) for e in p.entities] for p in want
    ]
    single = TaggerPredictor(make_tiny_tagger(tiny_encoder, seed=4)).predict(sample_posts("dev", 12), progress=False)
    assert [[(e.start, e.end, e.type) for e in p.entities] for p in got] != [
        [(e.start, e.end, e.type) for e in p.entities] for p in single
    ]
    # the option repeated is the same ensemble, not the last checkpoint alone
    assert main(["predict", "--ckpt", str(a), "--ckpt", str(b), *args, "--out", str(tmp_path / "rep.jsonl")]) == 0
    assert [p.entities for p in read_jsonl(tmp_path / "rep.jsonl")] == [p.entities for p in got]
    assert main(["predict", "--ckpt", str(a), str(b), *args, "--out", "x.jsonl", "--quantize", "int8"]) == 2
    assert "take one --ckpt" in capsys.readouterr().err
