"""Packed batches (``data.pack_length``): several posts per encoder row give the same outputs as one per row."""

import os
import random

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, XLMRobertaConfig, XLMRobertaModel

from refineg.config import load_config
from refineg.data import bio_labels
from refineg.datamodules.encoding import PostCollator, encode_posts, pack_rows
from refineg.datamodules.gmner import read_split
from refineg.modules.backbones import HFTextEncoder
from refineg.modules.heads import create_head
from refineg.modules.tagger import SequenceTagger
from tests.test_train import tiny_args

TYPES = ["PER", "LOC", "ORG", "OTHER"]
LABELS = bio_labels(TYPES)


def test_pack_rows_places_every_sequence_once_without_overlap():
    rng = random.Random(0)
    lengths = [rng.randint(3, 40) for _ in range(300)]
    row, offset, rows = pack_rows(lengths, 64)
    used = np.zeros((rows, 64), int)
    for n, r, o in zip(lengths, row, offset):
        assert o + n <= 64
        used[r, o : o + n] += 1
    assert used.max() == 1 and used.sum() == sum(lengths)
    assert rows == -(-sum(lengths) // 64)  # here best fit decreasing needs no row more than the subwords fill
    with pytest.raises(ValueError, match="does not fit a packed row of 64"):
        pack_rows([10, 65], 64)


def _sample_posts(n=24):
    cfg = load_config([])
    return read_split(cfg.data, "dev")[:n]


@pytest.fixture(scope="module")
def tiny_xlmr(tiny_encoder, tmp_path_factory):
    """A tiny XLM-R (RoBERTa positions start at padding_idx + 1 = 2) with the tiny BERT's WordPiece tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_xlmr")
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    tok.save_pretrained(folder)
    torch.manual_seed(1)
    config = XLMRobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=160,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=1,
    )
    XLMRobertaModel(config).save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize(
    "which,attn,packed",
    [("bert", "sdpa", "mask"), ("bert", "eager", "mask"), ("xlmr", "sdpa", "mask"), ("xlmr", "eager", "mask")]
    + [("bert", "sdpa", "varlen"), ("xlmr", "sdpa", "varlen")],  # off the GPU: block-diagonal SDPA from segments
)
def test_packed_emissions_loss_and_gradients_equal_unpacked(tiny_encoder, tiny_xlmr, which, attn, packed):
    encoder = tiny_encoder if which == "bert" else tiny_xlmr
    tok = AutoTokenizer.from_pretrained(encoder)
    enc = encode_posts(_sample_posts(), tok, {t: i for i, t in enumerate(LABELS)}, 48)
    backbone = HFTextEncoder(encoder, attn_implementation=attn, packed_attention=packed)
    assert backbone.position_offset == (0 if which == "bert" else 2)
    tagger = SequenceTagger(backbone, create_head("crf", hidden_size=32, labels=LABELS), dropout=0.0)
    plain = PostCollator(tok.pad_token_id)(enc)
    packed = PostCollator(tok.pad_token_id, pack_length=64)(enc)
    assert packed["input_ids"].shape[1] == 64
    assert packed["input_ids"].numel() < plain["input_ids"].numel()  # fewer subword slots than padding
    for key in ("word_mask", "labels", "casing"):
        assert torch.equal(packed[key], plain[key])
    results = []
    for batch in (plain, packed):
        tagger.zero_grad()
        emissions = tagger(**batch)
        loss = tagger.head.loss(emissions, batch["labels"], batch["word_mask"]).sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in tagger.named_parameters() if p.grad is not None}
        results.append((emissions[batch["word_mask"]], loss, grads))
    (e1, l1, g1), (e2, l2, g2) = results
    torch.testing.assert_close(e2, e1, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_word_dropout_drops_the_same_words(tiny_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    enc = encode_posts(_sample_posts(40), tok, {t: i for i, t in enumerate(LABELS)}, 48)
    batches = []
    for pack in (0, 48):
        random.seed(7)
        batches.append(PostCollator(tok.pad_token_id, tok.unk_token_id, word_dropout=0.3, pack_length=pack)(enc))
    plain, packed = batches
    flat, seg = packed["input_ids"].reshape(-1), packed["segment_ids"].reshape(-1)
    dropped = 0
    for b, post in enumerate(enc):
        row = flat[seg == b + 1]  # a post's subwords stay contiguous and in order
        assert torch.equal(row, plain["input_ids"][b, : len(post.input_ids)])
        assert torch.equal(packed["position_ids"].reshape(-1)[seg == b + 1], torch.arange(len(post.input_ids)))
        dropped += int((row == tok.unk_token_id).sum()) - post.input_ids.count(tok.unk_token_id)
    assert dropped > 20


def _train(encoder, runs, name, **extra):
    from refineg.training import train

    os.environ.pop("REFINEG_RUN_NAME", None)
    args = tiny_args(
        encoder,
        runs,
        name,
        **{
            "data.gold_limit": 128,
            "data.batch_size": 16,
            "trainer.max_epochs": 3,
            "predict": "false",
            "optim.head_lr": 1e-2,
            **extra,
        },
    )
    score = train(load_config(args))["best_val_mner_f1"]
    ckpt = torch.load(runs / name / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], ckpt["global_step"], score


@pytest.mark.parametrize("attention", ["mask", "varlen"])
def test_packed_training_and_validation_match_unpacked(tiny_encoder, tmp_path, attention):
    plain, steps, plain_f1 = _train(tiny_encoder, tmp_path, "plain")
    extra = {"data.pack_length": 128, "model.backbone_kwargs.packed_attention": attention}
    packed, packed_steps, packed_f1 = _train(tiny_encoder, tmp_path, "packed", **extra)
    assert steps == packed_steps == 24
    for key in plain:
        torch.testing.assert_close(packed[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)
    assert packed_f1 == pytest.approx(plain_f1, abs=1e-6) and plain_f1 > 0  # dev batches are packed too


def test_unchecked_encoder_families_refuse_packed_rows(tmp_path):
    from transformers import ModernBertConfig, ModernBertModel

    config = ModernBertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        local_attention=8,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        cls_token_id=1,
        sep_token_id=2,
    )
    ModernBertModel(config).save_pretrained(tmp_path)
    backbone = HFTextEncoder(str(tmp_path), pretrained=False)
    assert not backbone.supports_packing
    ids = torch.ones(1, 16, dtype=torch.long)
    assert backbone(ids, torch.ones_like(ids)).shape == (1, 16, 32)  # one post per row still works
    with pytest.raises(ValueError, match="this encoder is 'modernbert'.*set data.pack_length=0"):
        backbone(ids, torch.ones_like(ids), position_ids=torch.arange(16)[None], segment_ids=torch.ones_like(ids))


def test_packing_refusals(tiny_encoder, tmp_path):
    from refineg.training import train

    with pytest.raises(ValueError, match="shorter than data.max_length=128"):
        train(load_config(tiny_args(tiny_encoder, tmp_path, "short", **{"data.pack_length": 64})))
    with pytest.raises(ValueError, match="groundability"):
        train(
            load_config(
                tiny_args(tiny_encoder, tmp_path, "gr", **{"data.pack_length": 128, "model.groundability": "true"})
            )
        )
    with pytest.raises(ValueError, match="needs model.backbone=hf.*the image-aware backbone"):
        train(
            load_config(
                tiny_args(
                    tiny_encoder,
                    tmp_path,
                    "img",
                    **{
                        "data.pack_length": 128,
                        "model.backbone": "hf_image",
                        "model.image_model": "test_resnet",
                        "model.image_size": 32,
                    },
                )
            )
        )


def test_packed_attention_choices_are_checked(tiny_encoder):
    with pytest.raises(ValueError, match="'mask' or 'varlen', not 'flex'"):
        HFTextEncoder(tiny_encoder, packed_attention="flex")
    with pytest.raises(ValueError, match="runs with sdpa attention, not 'eager'"):
        HFTextEncoder(tiny_encoder, attn_implementation="eager", packed_attention="varlen")
    assert HFTextEncoder(tiny_encoder, packed_attention="varlen").model.config._attn_implementation == "refineg_packed"


def test_cu_seqlens_mark_every_post_and_padding_tail_with_a_fixed_length():
    from refineg.datamodules.encoding import packed_cu_seqlens

    segments = np.array([[1, 1, 1, 2, 2, 0], [3, 3, 3, 3, 4, 4], [5, 0, 0, 0, 0, 0]])
    cu = packed_cu_seqlens(segments, n_posts=5)
    assert cu.dtype == np.int32 and cu.shape == (5 + 3 + 1,)
    # posts 1..5 and the padding tails of rows 0 and 2; the rest are empty sequences at R * L = 18
    assert cu.tolist() == [0, 3, 5, 6, 10, 12, 13, 18, 18]


def test_collated_cu_seqlens_cover_each_post_exactly(tiny_encoder):
    tok = AutoTokenizer.from_pretrained(tiny_encoder)
    enc = encode_posts(_sample_posts(40), tok, {t: i for i, t in enumerate(LABELS)}, 48)
    batch = PostCollator(tok.pad_token_id, pack_length=64)(enc)
    cu, seg = batch["cu_seqlens"].numpy(), batch["segment_ids"].reshape(-1).numpy()
    rows = batch["segment_ids"].shape[0]
    assert cu.shape == (len(enc) + rows + 1,) and cu[-1] == seg.size and (np.diff(cu) >= 0).all()
    spans = {int(seg[a]): (a, b) for a, b in zip(cu[:-1], cu[1:]) if b > a and seg[a] > 0}
    assert len(spans) == len(enc)
    for i, post in enumerate(enc):
        a, b = spans[i + 1]
        assert b - a == len(post.input_ids) and (seg[a:b] == i + 1).all()


def _packed_and_plain_on_gpu(encoder, training):
    tok = AutoTokenizer.from_pretrained(encoder)
    enc = encode_posts(_sample_posts(), tok, {t: i for i, t in enumerate(LABELS)}, 48)
    torch.manual_seed(0)
    backbone = HFTextEncoder(encoder, packed_attention="varlen")
    tagger = SequenceTagger(backbone, create_head("crf", hidden_size=32, labels=LABELS), dropout=0.0).cuda()
    tagger.train(training)
    batches = [PostCollator(tok.pad_token_id, pack_length=p)(enc) for p in (0, 64)]
    return tagger, [{k: v.cuda() for k, v in b.items()} for b in batches]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("which", ["bert", "xlmr"])
def test_varlen_flash_attention_equals_unpacked_on_gpu(tiny_encoder, tiny_xlmr, which, monkeypatch):
    from refineg.modules import packed_attention

    calls = []
    real = torch.ops.aten._flash_attention_forward

    class Spy:
        def __call__(self, *a, **k):
            calls.append(a[3].shape)
            return real(*a, **k)

    tagger, (plain, packed) = _packed_and_plain_on_gpu(tiny_encoder if which == "bert" else tiny_xlmr, False)
    monkeypatch.setattr(packed_attention, "_flash_forward", Spy())
    results = []
    for batch in (plain, packed):
        tagger.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            emissions = tagger(**batch)
            loss = tagger.head.loss(emissions.float(), batch["labels"], batch["word_mask"]).sum()
        loss.backward()
        grads = {n: p.grad.float().clone() for n, p in tagger.named_parameters() if p.grad is not None}
        results.append((emissions[batch["word_mask"]].float(), loss, grads))
    assert calls and all(c == packed["cu_seqlens"].shape for c in calls)  # every layer ran the varlen kernel
    (e1, l1, g1), (e2, l2, g2) = results
    torch.testing.assert_close(e2, e1, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(l2, l1, rtol=1e-2, atol=1e-2)
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=5e-2, atol=5e-3, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_varlen_packed_step_replays_as_a_cuda_graph(tiny_encoder):
    from refineg.modules.step_graph import GraphedStep

    tagger, (_, packed) = _packed_and_plain_on_gpu(tiny_encoder, True)
    params = [p for p in tagger.parameters() if p.requires_grad]

    def loss_fn(b):
        return tagger.head.loss(tagger(**b).float(), b["labels"], b["word_mask"]).mean()

    step = GraphedStep(loss_fn, params, clip=1.0)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        losses = [step(packed) for _ in range(4)]
    assert step.eager_steps == 1 and step.replays == 2 and len(step.graphs) == 1
    assert all(torch.isfinite(x) for x in losses)
    torch.testing.assert_close(losses[3], losses[2])  # same batch, same weights: the replay is deterministic
