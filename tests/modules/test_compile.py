import pytest
import torch
from transformers import AutoTokenizer

from refineg.data import bio_labels
from refineg.data.schema import Entity, Example
from refineg.datamodules.encoding import PostCollator, encode_posts
from refineg.modules.backbones import create_backbone
from refineg.modules.compile import compile_tagger
from refineg.modules.heads import create_head
from refineg.modules.tagger import SequenceTagger

LABELS = bio_labels(["PER", "LOC"])


def _posts():
    posts = [
        Example("a", ["Justin", "Bieber", "in", "NYC", "tonight", "!"], entities=[Entity(0, 2, "PER")]),
        Example("b", ["hi", "Paris"], entities=[Entity(1, 2, "LOC")]),
    ]
    return posts


def _tagger(encoder):
    torch.manual_seed(0)
    backbone = create_backbone("hf", encoder=encoder)
    return SequenceTagger(backbone, create_head("crf", hidden_size=backbone.hidden_size, labels=LABELS)).eval()


def test_padding_to_a_multiple_keeps_the_loss_and_emissions(tiny_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    enc = encode_posts(_posts(), tok, {t: i for i, t in enumerate(LABELS)}, 32)
    plain, padded = PostCollator(tok.pad_token_id)(enc), PostCollator(tok.pad_token_id, pad_to_multiple_of=16)(enc)
    assert padded["input_ids"].shape[1] == 16 and padded["word_mask"].shape[1] == 16
    assert plain["input_ids"].shape[1] < 16
    tagger = _tagger(tiny_encoder)
    with torch.no_grad():
        e1, e2 = tagger(**plain), tagger(**padded)
        torch.testing.assert_close(e2[:, : e1.shape[1]], e1, atol=1e-5, rtol=1e-4)
        l1 = tagger.head.loss(e1, plain["labels"], plain["word_mask"])
        l2 = tagger.head.loss(e2, padded["labels"], padded["word_mask"])
    torch.testing.assert_close(l1, l2, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["tagger"])
def test_compiled_tagger_matches_eager(tiny_encoder, mode):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    batch = PostCollator(tok.pad_token_id)(encode_posts(_posts(), tok, {t: i for i, t in enumerate(LABELS)}, 32))
    eager, compiled = _tagger(tiny_encoder), compile_tagger(_tagger(tiny_encoder), mode)
    e1, e2 = eager(**batch), compiled(**batch)
    torch.testing.assert_close(e2, e1, atol=1e-4, rtol=1e-4)
    l1 = eager.head.loss(e1, batch["labels"], batch["word_mask"]).sum()
    l2 = compiled.head.loss(e2, batch["labels"], batch["word_mask"]).sum()
    torch.testing.assert_close(l2, l1, atol=1e-4, rtol=1e-4)
    l1.backward()
    l2.backward()
    g1 = eager.backbone.model.embeddings.word_embeddings.weight.grad
    g2 = compiled.backbone.model.embeddings.word_embeddings.weight.grad
    torch.testing.assert_close(g2, g1, atol=1e-4, rtol=1e-3)


def test_unknown_compile_mode_lists_the_known_ones(tiny_encoder):
    with pytest.raises(ValueError, match="none, backbone, layers, tagger, cudagraphs"):
        compile_tagger(_tagger(tiny_encoder), "max")
    assert compile_tagger(_tagger(tiny_encoder), False) is not None
