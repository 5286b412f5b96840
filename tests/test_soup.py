"""Model soups (refineg.inference.soup, ``refineg soup``) and the shared initial weights they need (model.init_seed)."""

import logging

import pytest
import torch

from refineg.data import DataFormatError, write_jsonl
from refineg.inference.predictor import TaggerPredictor, load_tagger
from refineg.inference.soup import soup_checkpoint, write_soup
from refineg.modules.tagger_module import TaggerModule
from tests.refine_helpers import OPTIM, TYPES, make_tiny_tagger, sample_posts, save_checkpoint


def tiny_module(encoder: str, global_seed: int, init_seed: int | None) -> TaggerModule:
    torch.manual_seed(global_seed)
    model = {"backbone": "hf", "encoder": encoder, "head": "crf", "casing": True, "init_seed": init_seed}
    return TaggerModule(model, OPTIM, TYPES)


def spans(preds):
    return [[(e.start, e.end, e.type) for e in p.entities] for p in preds]


def test_init_seed_gives_runs_of_other_seeds_the_same_initial_weights(tiny_encoder):
    a, b = tiny_module(tiny_encoder, 1, 7), tiny_module(tiny_encoder, 2, 7)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(pa, pb), name
    # without it the new layers follow the global seed
    c, d = tiny_module(tiny_encoder, 1, None), tiny_module(tiny_encoder, 2, None)
    assert not torch.equal(c.tagger.head.emission.weight, d.tagger.head.emission.weight)
    assert not torch.equal(c.tagger.head.emission.weight, a.tagger.head.emission.weight)
    # the global random stream (batch order, dropout) is left where the run's seed put it
    tiny_module(tiny_encoder, 5, 7)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))


def test_init_seed_leaves_the_accelerator_generators_to_the_run_seed(tiny_encoder, monkeypatch):
    """The GPU draws dropout masks from the CUDA generator: building under ``init_seed`` must not reseed it."""
    if torch.cuda.is_available():
        for seed in (1, 2):
            torch.manual_seed(seed)
            expected = torch.rand(4, device="cuda")
            tiny_module(tiny_encoder, seed, 7)
            assert torch.equal(torch.rand(4, device="cuda"), expected), seed
    seeded = []
    real = torch.cuda.manual_seed_all
    monkeypatch.setattr(torch.cuda, "manual_seed_all", lambda seed: (seeded.append(seed), real(seed))[1])
    tiny_module(tiny_encoder, 3, 7)  # torch.manual_seed(3), then the build
    assert seeded == [3]  # the run's seed only; the build's init_seed stayed on the CPU generator


def test_soup_weights_are_the_members_mean_and_the_checkpoint_is_for_inference(tiny_encoder, tmp_path):
    members = [make_tiny_tagger(tiny_encoder, seed=s) for s in (0, 1, 2)]
    for m in members:
        m.hparams.model["init_seed"] = 0
    paths = [save_checkpoint(m, tmp_path / f"m{k}.ckpt") for k, m in enumerate(members)]
    ckpt = soup_checkpoint(paths)
    assert ckpt["soup"] == {"members": [str(p) for p in paths]}
    assert not {"optimizer_states", "lr_schedulers", "loops", "callbacks"} & ckpt.keys()
    soup = load_tagger(write_soup(paths, tmp_path / "out" / "soup.ckpt"))
    states = [m.state_dict() for m in members]
    for name, value in soup.state_dict().items():
        stacked = torch.stack([s[name] for s in states])
        if value.is_floating_point():
            torch.testing.assert_close(value, stacked.float().mean(0), rtol=0, atol=1e-6)
            if name == "tagger.head.emission.weight":  # the members differ, so the mean is not one of them
                assert not torch.equal(value, states[0][name])
        else:
            assert torch.equal(value, states[0][name])
    # the soup of copies of one tagger tags like it
    one = save_checkpoint(members[1], tmp_path / "one.ckpt")
    copies = load_tagger(write_soup([one, one], tmp_path / "copies.ckpt"))
    posts = sample_posts("dev", 20)
    alone = spans(TaggerPredictor(members[1]).predict(posts, progress=False))
    assert sum(map(len, alone)) > 5
    assert spans(TaggerPredictor(copies).predict(posts, progress=False)) == alone


def test_soup_refuses_members_that_do_not_fit_and_warns_without_a_shared_init_seed(tiny_encoder, tmp_path, caplog):
    crf = save_checkpoint(make_tiny_tagger(tiny_encoder, seed=0), tmp_path / "crf.ckpt")
    other = save_checkpoint(make_tiny_tagger(tiny_encoder, seed=1), tmp_path / "other.ckpt")
    softmax = save_checkpoint(make_tiny_tagger(tiny_encoder, head="softmax"), tmp_path / "softmax.ckpt")
    with pytest.raises(ValueError, match=r"softmax.ckpt: model.head='softmax', but .*crf.ckpt has 'crf'"):
        soup_checkpoint([crf, softmax])
    model = {"backbone": "hf", "encoder": tiny_encoder, "head": "crf", "casing": True}
    fewer = TaggerModule(model, OPTIM, TYPES[:3])
    with pytest.raises(ValueError, match="entity types"):
        soup_checkpoint([crf, save_checkpoint(fewer, tmp_path / "fewer.ckpt")])
    (tmp_path / "notes.ckpt").write_text("{}")
    with pytest.raises(DataFormatError, match="notes.ckpt"):
        soup_checkpoint([crf, tmp_path / "notes.ckpt"])
    torch.save({"state_dict": {}}, tmp_path / "weights_only.ckpt")  # a PyTorch archive, but no tagger's
    with pytest.raises(DataFormatError, match="weights_only.ckpt: not a tagger checkpoint"):
        soup_checkpoint([crf, tmp_path / "weights_only.ckpt"])
    with caplog.at_level(logging.WARNING, logger="refineg.inference.soup"):
        soup_checkpoint([crf, other])
    assert "model.init_seed" in caplog.text


def test_soup_refuses_other_image_towers_and_accepts_training_only_differences(tiny_encoder, tmp_path):
    """Image-tower settings decide the tower's weights and inputs even where the weight shapes agree."""
    pytest.importorskip("timm")

    def saved(name: str, **model) -> str:
        model = {"backbone": "hf", "encoder": tiny_encoder, "head": "crf", "casing": True, "init_seed": 0, **model}
        return save_checkpoint(TaggerModule(model, OPTIM, TYPES), tmp_path / f"{name}.ckpt")

    image = {"backbone": "hf_image", "image_encoder": "timm", "image_model": "test_resnet"}
    small, large = saved("small", **image, image_size=32), saved("large", **image, image_size=64)
    with pytest.raises(ValueError, match=r"large.ckpt: model.image_size=64, but .*small.ckpt has 32"):
        soup_checkpoint([small, large])
    # how they were trained, and image settings that a text-only backbone never reads, do not matter
    text = saved("text", dropout=0.1)
    other = saved("other", dropout=0.3, rdrop=1.0, image_model="resnet18", image_size=64)
    soup = soup_checkpoint([text, other])
    assert soup["hyper_parameters"]["model"]["dropout"] == 0.1 and len(soup["soup"]["members"]) == 2
    trained = saved("trained", **image, image_size=32, freeze_image=False)  # only decides what trains
    assert soup_checkpoint([small, trained])["soup"]["members"] == [str(small), str(trained)]


def test_soup_of_trained_batch_norm_towers_averages_their_statistics_whatever_their_step_counts(tiny_encoder, tmp_path):
    """``model.freeze_image=false``: best checkpoints of other epochs have other batch-norm step counters."""
    pytest.importorskip("timm")
    model = {"backbone": "hf_image", "encoder": tiny_encoder, "head": "crf", "casing": True, "image_encoder": "timm"}
    model |= {"image_model": "test_resnet", "image_size": 32, "freeze_image": False, "init_seed": 0}
    members = []
    for steps in (2, 3):
        member = TaggerModule(model, OPTIM, TYPES).train()
        for _ in range(steps):  # training passes of the tower update its running statistics and step counters
            member.tagger.backbone.image(torch.rand(2, 3, 32, 32))
        members.append(member)
    states = [m.state_dict() for m in members]
    counters = [k for k in states[0] if k.endswith(".num_batches_tracked")]
    assert counters and [int(s[counters[0]]) for s in states] == [2, 3]
    paths = [save_checkpoint(m, tmp_path / f"m{k}.ckpt") for k, m in enumerate(members)]
    soup = soup_checkpoint(paths)["state_dict"]
    stats = counters[0].replace("num_batches_tracked", "running_mean")
    torch.testing.assert_close(soup[stats], (states[0][stats] + states[1][stats]) / 2)
    assert int(soup[counters[0]]) == 2


def test_soup_cli_scores_members_and_soup_and_greedy_leaves_out_a_member_that_hurts(tiny_encoder, tmp_path, capsys):
    from refineg.cli import main

    good = make_tiny_tagger(tiny_encoder, seed=3)
    bad = make_tiny_tagger(tiny_encoder, seed=3)
    with torch.no_grad():  # the average of the two has zero emission weights: it tags nothing
        bad.tagger.head.emission.weight.neg_()
    a, b = save_checkpoint(good, tmp_path / "a.ckpt"), save_checkpoint(bad, tmp_path / "b.ckpt")
    gold = TaggerPredictor(good).predict(sample_posts("dev", 30), progress=False)  # a scores 100 on this "dev"
    assert sum(len(p.entities) for p in gold) > 5
    write_jsonl(gold, tmp_path / "dev.jsonl")
    common = ["--ckpt", str(a), str(b), "--dev", str(tmp_path / "dev.jsonl"), "--device", "cpu"]
    assert main(["soup", *common, "--out", str(tmp_path / "uniform.ckpt")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "100.00" and lines[0].endswith("a.ckpt")
    assert float(lines[2].split()[0]) < 100.0 and "soup of 2" in lines[2]
    assert main(["soup", *common, "--greedy", "--out", str(tmp_path / "greedy.ckpt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-2:] == ["kept", str(a)] and out[1].split()[-3:] == ["left", "out", str(b)]
    assert out[-1].split()[0] == "100.00" and "soup of 1" in out[-1]
    greedy = load_tagger(tmp_path / "greedy.ckpt")
    torch.testing.assert_close(greedy.tagger.head.emission.weight, good.tagger.head.emission.weight)
    assert not list(tmp_path.glob("greedy-*.ckpt"))  # the trial soups are removed


def test_soup_cli_errors_are_one_line(tiny_encoder, tmp_path, capsys):
    from refineg.cli import main

    a = save_checkpoint(make_tiny_tagger(tiny_encoder), tmp_path / "a.ckpt")
    assert main(["soup", "--ckpt", str(a), "--out", str(tmp_path / "s.ckpt")]) == 2
    assert "at least 2 checkpoints" in capsys.readouterr().err
    assert main(["soup", "--ckpt", str(a), str(a), "--greedy", "--out", str(tmp_path / "s.ckpt")]) == 2
    assert "--greedy needs --dev" in capsys.readouterr().err
    assert not (tmp_path / "s.ckpt").exists()
    folder = tmp_path / "soups"
    folder.mkdir()
    for greedy in ([], ["--greedy", "--dev", str(tmp_path / "no-dev.jsonl")]):  # refused before reading --dev
        assert main(["soup", "--ckpt", str(a), str(a), *greedy, "--out", str(folder)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1] == f"error: {folder} is a folder: name the checkpoint file to write"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.ckpt", "soups"]  # no soup left beside it
    with pytest.raises(ValueError, match="is a folder"):
        write_soup([a, a], folder)
