import pytest
import torch

from refineg.predictor import TaggerPredictor, quantize_encoder
from tests.refine_helpers import make_tiny_tagger, sample_posts


def test_int8_predictor_quantises_encoder_linears_and_tags_the_same_posts(tiny_encoder):
    posts = sample_posts(n=12)
    plain = TaggerPredictor(make_tiny_tagger(tiny_encoder, "crf"), batch_size=4)
    module = make_tiny_tagger(tiny_encoder, "crf")
    int8 = TaggerPredictor(module, batch_size=4, quantize="int8")
    linears = [m for m in module.tagger.backbone.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(linears) == 2 * 6  # tiny BERT: 2 layers x (q, k, v, attention out, intermediate, output)
    assert isinstance(module.tagger.head.emission, torch.nn.Linear)  # the head stays float32
    a, b = plain.predict(posts, progress=False), int8.predict(posts, progress=False)
    assert [p.id for p in b] == [p.id for p in posts]
    # int8 rounding moves scores a little, not the decoded spans of a tiny model's confident tags
    same = sum([(e.start, e.end, e.type) for e in x.entities] == [(e.start, e.end, e.type) for e in y.entities]
               for x, y in zip(a, b))
    assert same >= len(posts) - 2


def test_unknown_quantisation_is_an_error(tiny_encoder):
    with pytest.raises(ValueError, match="supported: int8"):
        quantize_encoder(make_tiny_tagger(tiny_encoder, "crf"), "fp8")
