import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'refineg[onnx]')")
pytest.importorskip("onnxscript", reason="onnxscript not installed (the torch ONNX exporter needs it)")

from refineg.inference.predictor import TaggerPredictor  # noqa: E402
from tests.refine_helpers import make_tiny_tagger, sample_posts  # noqa: E402


@pytest.fixture(scope="module")
def tagger(tiny_encoder):
    return make_tiny_tagger(tiny_encoder, "crf")


@pytest.fixture(scope="module")
def onnx_predictor(tagger, tmp_path_factory):
    return TaggerPredictor(tagger, batch_size=5, runtime="onnx", onnx_cache_dir=tmp_path_factory.mktemp("onnx"))


def test_onnx_emissions_match_torch_on_batches_of_different_shapes(tagger, onnx_predictor):
    posts = sample_posts(n=23)
    shapes = set()
    for batch_size in (1, 5, 8):
        onnx_predictor.batch_size = batch_size
        for _, batch in onnx_predictor.batches(posts):
            onnx_em, states = onnx_predictor.run(batch)
            with torch.inference_mode():
                torch_em = tagger(batch)
            assert states is None  # no groundability head
            assert onnx_em.shape == torch_em.shape
            torch.testing.assert_close(onnx_em, torch_em, atol=1e-4, rtol=1e-4)
            shapes.add((tuple(batch["input_ids"].shape), tuple(batch["word_index"].shape)))
    assert len({s[0][0] for s in shapes}) >= 3 and len({s[0][1] for s in shapes}) >= 5  # batch and length vary


def test_onnx_predictions_equal_torch_predictions(tagger, onnx_predictor):
    posts = sample_posts(n=23)
    onnx_predictor.batch_size = 4
    a = TaggerPredictor(tagger, batch_size=4).predict(posts, progress=False)
    b = onnx_predictor.predict(posts, progress=False)
    assert [p.id for p in b] == [p.id for p in posts]
    assert sum(len(p.entities) for p in a) > 10  # the tiny tagger does tag entities
    for x, y in zip(a, b):
        assert [(e.start, e.end, e.type) for e in x.entities] == [(e.start, e.end, e.type) for e in y.entities]
        assert [e.score for e in x.entities] == pytest.approx([e.score for e in y.entities], abs=1e-4)


def test_export_is_cached_by_weights_and_redone_when_they_change(tagger, onnx_predictor, tmp_path):
    again = TaggerPredictor(tagger, runtime="onnx", onnx_cache_dir=onnx_predictor.onnx.path.parent)
    assert again.onnx.path == onnx_predictor.onnx.path
    changed = make_tiny_tagger(str(tagger.hparams.model["encoder"]), "crf", seed=1)
    other = TaggerPredictor(changed, runtime="onnx", onnx_cache_dir=onnx_predictor.onnx.path.parent)
    assert other.onnx.path != onnx_predictor.onnx.path and other.onnx.path.is_file()
    posts = sample_posts(n=6)
    _, batch = next(other.batches(posts))
    with torch.inference_mode():
        torch.testing.assert_close(other.run(batch)[0], changed(batch), atol=1e-4, rtol=1e-4)


def test_unknown_runtime_is_an_error(tagger):
    with pytest.raises(ValueError, match="supported: torch, onnx"):
        TaggerPredictor(tagger, runtime="tensorrt")


def test_cli_predict_with_onnx_runtime_writes_the_torch_predictions(tagger, onnx_predictor, tmp_path, monkeypatch):
    from refineg.cli import main
    from refineg.data import read_jsonl, write_jsonl
    from tests.refine_helpers import save_checkpoint

    posts = sample_posts(n=10)
    write_jsonl(posts, tmp_path / "posts.jsonl")
    ckpt = save_checkpoint(tagger, tmp_path / "tiny.ckpt")
    cache = onnx_predictor.onnx.path.parent
    before = {p.name for p in cache.iterdir()}
    monkeypatch.setenv("REFINEG_ONNX_CACHE", str(cache))
    assert (
        main(
            [
                "predict",
                "--ckpt",
                str(ckpt),
                "--input",
                str(tmp_path / "posts.jsonl"),
                "--out",
                str(tmp_path / "pred.jsonl"),
                "--runtime",
                "onnx",
                "--batch-size",
                "3",
            ]
        )
        == 0
    )
    assert {p.name for p in cache.iterdir()} == before  # same weights: the cached export was reused
    want = TaggerPredictor(tagger, batch_size=3).predict(posts, progress=False)
    got = read_jsonl(tmp_path / "pred.jsonl")
    assert [[(e.start, e.end, e.type) for e in p.entities] for p in got] == [
        [(e.start, e.end, e.type) for e in p.entities] for p in want
    ]


def test_onnx_int8_quantises_the_exported_matmuls_and_tags_nearly_the_same(tagger, onnx_predictor):
    import onnx

    posts = sample_posts(n=12)
    int8 = TaggerPredictor(
        tagger, batch_size=4, runtime="onnx", quantize="int8", onnx_cache_dir=onnx_predictor.onnx.path.parent
    )
    assert int8.onnx.path.name.endswith("-int8v1.onnx")
    ops = {n.op_type for n in onnx.load(str(int8.onnx.path)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    onnx_predictor.batch_size = 4
    a, b = onnx_predictor.predict(posts, progress=False), int8.predict(posts, progress=False)
    same = sum(
        [(e.start, e.end, e.type) for e in x.entities] == [(e.start, e.end, e.type) for e in y.entities]
        for x, y in zip(a, b)
    )
    assert same >= len(posts) - 2


def test_export_and_quantisation_log_their_passes_only_at_debug(tagger, onnx_predictor, tmp_path, caplog):
    import logging

    from refineg.inference.onnx_runtime import OnnxEmissions, export_emission_graph, export_logs_as_debug

    _, batch = next(onnx_predictor.batches(sample_posts(n=2)))
    with caplog.at_level(logging.INFO):
        path = export_emission_graph(tagger.tagger, batch, tmp_path / "e.onnx")
        OnnxEmissions._quantized(path)
    assert path.is_file() and not [r for r in caplog.records if r.levelno < logging.WARNING]
    assert logging.getLogger("onnx_ir").level == logging.NOTSET  # levels are restored afterwards
    assert not logging.getLogger().filters
    caplog.clear()
    with caplog.at_level(logging.DEBUG), export_logs_as_debug():  # -v still shows them
        logging.getLogger("onnx_ir.passes.x").info("pass 1")
        logging.info("root line")
    assert [r.getMessage() for r in caplog.records] == ["pass 1", "root line"]
