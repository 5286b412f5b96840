import pytest
import torch

from refineg.data import bio_labels
from refineg.data.schema import Example
from refineg.datamodules.encoding import PostCollator, encode_posts
from refineg.modules.backbones import create_backbone, list_backbones
from refineg.modules.heads import create_head, list_heads
from refineg.modules.tagger import SequenceTagger

LABELS = bio_labels(["PER", "LOC"])


def _batch(tokenizer, with_labels=True):
    posts = [Example("a", ["Justin", "Bieberization", "in", "NYC"]), Example("b", ["hi"])]
    posts[0].entities = []
    enc = encode_posts(posts, tokenizer, {t: i for i, t in enumerate(LABELS)} if with_labels else None, 32)
    return PostCollator(tokenizer.pad_token_id)(enc)


TINY_BACKBONES = {
    "hf": {},
    "hf_image": {"image_encoder": "timm", "image_model": "test_resnet", "image_size": 32},
}


def test_every_backbone_has_a_tiny_config():
    assert sorted(TINY_BACKBONES) == list_backbones()


@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
@pytest.mark.parametrize("head", ["softmax", "crf"])
def test_every_backbone_and_head_runs_forward(tiny_encoder, name, head):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    backbone = create_backbone(name, encoder=tiny_encoder, **TINY_BACKBONES[name])
    tagger = SequenceTagger(backbone, create_head(head, hidden_size=backbone.hidden_size, labels=LABELS))
    batch = _batch(tok)
    if name == "hf_image":
        batch["pixel_values"] = torch.rand(2, 3, 32, 32)
        batch["image_mask"] = torch.tensor([True, False])
    emissions = tagger(**batch)
    assert emissions.shape == (2, 4, len(LABELS))
    loss = tagger.head.loss(emissions, batch["labels"], batch["word_mask"])
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.sum().backward()
    spans = tagger.head.decode_spans(emissions, batch["word_mask"])
    assert len(spans) == 2 and all(0 <= c <= 1 for post in spans for *_, c in post)


def test_unknown_names_list_the_known_ones():
    with pytest.raises(KeyError, match="known backbones: hf, hf_image"):
        create_backbone("resnet", encoder="x")
    with pytest.raises(KeyError, match="known heads: crf, softmax"):
        create_head("mlp", hidden_size=4, labels=LABELS)
    assert list_heads() == ["crf", "softmax"]


def test_softmax_head_decode_and_confidence():
    head = create_head("softmax", hidden_size=2, labels=LABELS)
    em = torch.full((1, 3, 5), -10.0)
    em[0, 0, 1] = 10  # B-PER
    em[0, 1, 2] = 10  # I-PER
    em[0, 2, 0] = 10  # O
    (spans,) = head.decode_spans(em, torch.tensor([[True, True, True]]))
    assert [(s, e, t) for s, e, t, _ in spans] == [(0, 2, "PER")]
    assert spans[0][3] == pytest.approx(1.0, abs=1e-6)


def test_crf_head_confidence_is_the_span_marginal():
    torch.manual_seed(0)
    head = create_head("crf", hidden_size=2, labels=LABELS)
    em = torch.randn(1, 4, 5)
    em[0, 0, 1] += 6
    mask = torch.ones(1, 4, dtype=torch.bool)
    (spans,) = head.decode_spans(em, mask)
    s, e, t, conf = spans[0]
    rows = torch.tensor([[0, s, e, head.types.index(t)]])
    assert conf == pytest.approx(float(head.crf.span_marginals(em, mask, rows, head.type_tags)[0]))
