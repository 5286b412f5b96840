import pytest
import torch

from refineg.inference.predictor import TaggerPredictor
from refineg.inference.quantize import FullRangeDynamicLinear, quantize_encoder
from tests.refine_helpers import make_tiny_tagger, sample_posts


def _emissions(predictor: TaggerPredictor, posts) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [predictor.run(batch)[0] for _, batch in predictor.batches(posts)]


def _spans(preds) -> list[list[tuple[int, int, str]]]:
    return [[(e.start, e.end, e.type) for e in p.entities] for p in preds]


def test_int8_predictor_quantises_encoder_linears_per_channel_and_tags_the_same_posts(tiny_encoder):
    posts = sample_posts(n=12)
    plain = TaggerPredictor(make_tiny_tagger(tiny_encoder, "crf"), batch_size=4)
    module = make_tiny_tagger(tiny_encoder, "crf")
    int8 = TaggerPredictor(module, batch_size=4, quantize="int8")
    linears = [m for m in module.tagger.backbone.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(linears) == 2 * 6  # tiny BERT: 2 layers x (q, k, v, attention out, intermediate, output)
    assert all(type(m) is FullRangeDynamicLinear for m in linears)
    assert isinstance(module.tagger.head.emission, torch.nn.Linear)  # the head stays float32
    for lin in linears:
        w = lin.weight()
        assert w.qscheme() == torch.per_channel_affine and w.q_per_channel_axis() == 0
        assert (w.q_per_channel_zero_points() == 0).all()  # symmetric
        assert w.q_per_channel_scales().shape == (lin.out_features,)
        assert w.q_per_channel_scales().unique().numel() > 1  # one scale per output row, not one per matrix
        ints = w.int_repr()
        assert ints.min() >= -64 and ints.max() <= 63  # 7-bit weights (no int16 overflow with 8-bit inputs)
        assert ints.abs().amax(dim=1).min() >= 63  # each row uses its full range
    ref, got = _emissions(plain, posts), _emissions(int8, posts)  # emissions stay close to float32
    err = max((a - b).abs().max().item() for a, b in zip(ref, got))
    assert 0 < err < 0.02 * max(a.abs().max().item() for a in ref)
    a, b = plain.predict(posts, progress=False), int8.predict(posts, progress=False)
    assert [p.id for p in b] == [p.id for p in posts]
    same = sum(x == y for x, y in zip(_spans(a), _spans(b)))
    assert same >= len(posts) - 1


def test_full_range_linear_quantises_inputs_to_8_bits_and_weights_per_row():
    from refineg.inference.quantize import _per_channel_qconfig

    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Linear(48, 16)).eval()
    with torch.no_grad():  # rows of very different magnitude, as in trained layers with outlier channels
        lin[0].weight.mul_(torch.logspace(-2, 0, 16).unsqueeze(1))
    q = torch.ao.quantization.quantize_dynamic(
        lin,
        {torch.nn.Linear: _per_channel_qconfig()},
        dtype=torch.qint8,
        mapping={torch.nn.Linear: FullRangeDynamicLinear},
    )[0]
    per_tensor = torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)[0]
    x = torch.randn(10, 48) * 3
    w = q.weight().dequantize()
    bias = lin[0].bias.detach()

    def reference(reduce_range: bool) -> torch.Tensor:
        xq = torch.quantize_per_tensor_dynamic(x, torch.quint8, reduce_range=reduce_range).dequantize()
        return xq @ w.T + bias

    with torch.inference_mode():
        y = q(x)
    assert y.dtype == torch.float32 and y.shape == (10, 16)
    full, reduced = (y - reference(False)).abs().max().item(), (y - reference(True)).abs().max().item()
    assert full < 1e-4  # exactly uint8 [0, 255] inputs x the 7-bit weights, accumulated in int32
    assert reduced > 10 * full
    exact = lin(x)
    assert (y - exact).abs().max().item() < 0.05 * exact.abs().max().item()
    # relative error of the small-magnitude rows: per-row scales keep them, one scale per matrix does not
    small = slice(0, 4)
    rel = ((y - exact)[:, small].norm() / exact[:, small].norm()).item()
    rel_pt = ((per_tensor(x) - exact)[:, small].norm() / exact[:, small].norm()).item()
    assert rel < 0.05 and rel < rel_pt / 3


def test_per_tensor_scheme_is_torch_default_dynamic_quantisation(tiny_encoder):
    module = quantize_encoder(make_tiny_tagger(tiny_encoder, "crf"), "int8-per-tensor")
    linears = [m for m in module.tagger.backbone.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(linears) == 12 and not any(isinstance(m, FullRangeDynamicLinear) for m in linears)
    assert all(m.weight().qscheme() == torch.per_tensor_affine for m in linears)


def test_unknown_quantisation_is_an_error(tiny_encoder):
    with pytest.raises(ValueError, match="supported: int8, int8-per-tensor"):
        quantize_encoder(make_tiny_tagger(tiny_encoder, "crf"), "fp8")
