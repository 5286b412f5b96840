from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refineg.modules.fusion import ImageTextFusion
from refineg.modules.image_encoders import (
    IMAGE_ENCODERS,
    ImageEncoder,
    OpenClipImageEncoder,
    TimmImageEncoder,
    create_image_encoder,
    list_image_encoders,
)

OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"
TINY_OPEN_CLIP = "refineg-tiny-vit"


@pytest.fixture(scope="module", autouse=True)
def _tiny_open_clip_config():
    import open_clip

    if TINY_OPEN_CLIP not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)


# (registry name, case id, kwargs, expected token count for the default transform size)
TINY_ENCODERS = [
    ("timm", "test_vit", {"model_name": "test_vit", "img_size": 64}, 1 + (64 // 16) ** 2),
    ("timm", "test_resnet", {"model_name": "test_resnet", "img_size": 64}, (64 // 32) ** 2),
    ("open_clip", "tiny_vit", {"model_name": TINY_OPEN_CLIP}, (32 // 8) ** 2),
]


def _photo() -> Image.Image:
    try:
        from skimage import data

        return Image.fromarray(data.astronaut())
    except ImportError:
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, size=(90, 120, 3), dtype=np.uint8)
        return Image.fromarray(pixels, mode="RGB")


def test_every_registered_encoder_has_a_tiny_case():
    assert set(list_image_encoders()) == {"open_clip", "timm"}
    assert {name for name, *_ in TINY_ENCODERS} == set(list_image_encoders())


@pytest.mark.parametrize(
    ("name", "kwargs", "num_tokens"),
    [(n, k, t) for n, _, k, t in TINY_ENCODERS],
    ids=[c for _, c, _, _ in TINY_ENCODERS],
)
def test_encoder_builds_transforms_and_runs(name, kwargs, num_tokens):
    encoder = create_image_encoder(name, **kwargs)
    assert isinstance(encoder, ImageEncoder)
    assert isinstance(encoder, IMAGE_ENCODERS.get(name))

    pixels = encoder.transform(_photo())
    assert isinstance(pixels, torch.Tensor) and pixels.dtype == torch.float32
    assert pixels.shape[0] == 3
    size = kwargs.get("img_size", 32)
    assert tuple(pixels.shape) == (3, size, size)

    # Batch of one in train mode: a frozen tower stays in eval, so BatchNorm does not fail.
    encoder.train()
    tokens = encoder(pixels.unsqueeze(0))
    assert tokens.shape == (1, num_tokens, encoder.out_dim)
    assert torch.isfinite(tokens).all()

    tokens2 = encoder(torch.stack([pixels, pixels.flip(-1)]))
    assert tokens2.shape == (2, num_tokens, encoder.out_dim)
    torch.testing.assert_close(tokens2[0], tokens[0], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "kwargs"), [(n, k) for n, _, k, _ in TINY_ENCODERS], ids=[c for _, c, _, _ in TINY_ENCODERS]
)
def test_frozen_tower_has_no_trainable_params_and_stays_in_eval(name, kwargs):
    encoder = create_image_encoder(name, **kwargs)
    assert encoder.frozen
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert encoder.training
    assert not any(m.training for m in encoder.modules() if m is not encoder)
    images = torch.randn(1, 3, kwargs.get("img_size", 32), kwargs.get("img_size", 32))
    assert not encoder(images).requires_grad


def test_unfrozen_tower_trains():
    encoder = create_image_encoder("timm", model_name="test_resnet", img_size=64, freeze=False)
    assert all(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert all(m.training for m in encoder.modules())
    tokens = encoder(torch.randn(2, 3, 64, 64))
    tokens.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())
    encoder.eval()
    assert not any(m.training for m in encoder.modules())


def test_timm_vit_keeps_class_token_first():
    encoder = TimmImageEncoder("test_vit", img_size=64)
    assert encoder.num_prefix_tokens == 1
    assert encoder.out_dim == encoder.model.num_features


def test_open_clip_returns_patch_tokens():
    encoder = OpenClipImageEncoder(TINY_OPEN_CLIP)
    assert encoder.returns_tokens
    assert encoder.out_dim == 32
    assert not hasattr(encoder, "text") and not any("token_embedding" in n for n, _ in encoder.named_parameters())


def test_unknown_encoder_name_lists_known_names():
    with pytest.raises(KeyError, match="open_clip.*timm"):
        create_image_encoder("no-such-encoder")


def test_missing_local_checkpoint_fails_loudly(tmp_path):
    missing = tmp_path / "missing.pt"
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_image_encoder("open_clip", model_name=TINY_OPEN_CLIP, pretrained=str(missing))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        create_image_encoder("timm", model_name="test_vit", checkpoint_path=str(missing))


def test_unknown_open_clip_tag_fails_without_download():
    with pytest.raises(RuntimeError, match="no_such_tag"):
        create_image_encoder("open_clip", model_name=TINY_OPEN_CLIP, pretrained="no_such_tag")


def test_local_checkpoints_load(tmp_path):
    import open_clip
    import timm

    clip = open_clip.create_model(TINY_OPEN_CLIP, pretrained=None)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    encoder = create_image_encoder("open_clip", model_name=TINY_OPEN_CLIP, pretrained=str(tmp_path / "clip.pt"))
    torch.testing.assert_close(encoder.visual.conv1.weight, clip.visual.conv1.weight)

    vit = timm.create_model("test_vit", img_size=64)  # with a classifier head, which the encoder drops
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    encoder = create_image_encoder(
        "timm", model_name="test_vit", img_size=64, checkpoint_path=str(tmp_path / "vit.pth")
    )
    torch.testing.assert_close(encoder.model.patch_embed.proj.weight, vit.patch_embed.proj.weight)


# ---------------------------------------------------------------------------------------------------- fusion


def _fusion_inputs(batch=3, seq=5, hidden=16, num_tokens=7, image_dim=12):
    gen = torch.Generator().manual_seed(0)
    text = torch.randn(batch, seq, hidden, generator=gen)
    image = torch.randn(batch, num_tokens, image_dim, generator=gen)
    return text, image


def test_fusion_shape_and_identity_at_init():
    fusion = ImageTextFusion(hidden_size=16, image_dim=12, num_heads=4)
    text, image = _fusion_inputs()
    out = fusion(text, image)
    assert out.shape == text.shape
    assert torch.equal(out, text)  # gate starts at 0: a fresh model is text-only
    assert fusion(text, None) is text


def test_fusion_rows_without_image_unchanged_exactly():
    torch.manual_seed(0)
    fusion = ImageTextFusion(hidden_size=16, image_dim=12, num_heads=4, dropout=0.1).train()
    with torch.no_grad():
        fusion.gate.fill_(0.7)
    text, image = _fusion_inputs()
    image[1] = float("nan")  # a placeholder for the missing image must not leak anywhere
    mask = torch.tensor([True, False, True])
    out = fusion(text, image, mask)
    assert torch.equal(out[1], text[1])
    assert not torch.allclose(out[0], text[0])
    assert not torch.allclose(out[2], text[2])
    assert torch.isfinite(out).all()

    none = fusion(text, image, torch.zeros(3, dtype=torch.bool))
    assert torch.equal(none, text)


def test_fusion_gradients_reach_gate_and_projection():
    fusion = ImageTextFusion(hidden_size=16, image_dim=12, num_heads=2)
    text, image = _fusion_inputs()
    text.requires_grad_(True)
    mask = torch.tensor([True, False, True])

    fusion(text, image, mask).pow(2).sum().backward()
    assert fusion.gate.grad is not None and fusion.gate.grad.abs() > 0  # learns to open from 0

    fusion.zero_grad()
    with torch.no_grad():
        fusion.gate.fill_(0.5)
    fusion(text, image, mask).pow(2).sum().backward()
    assert fusion.gate.grad.abs() > 0
    assert fusion.image_proj.weight.grad is not None and fusion.image_proj.weight.grad.abs().sum() > 0
    assert fusion.cross_attn.in_proj_weight.grad.abs().sum() > 0


def test_fusion_batch_of_one_and_encoder_integration():
    encoder = create_image_encoder("timm", model_name="test_resnet", img_size=64)
    fusion = ImageTextFusion(hidden_size=8, image_dim=encoder.out_dim, num_heads=2).train()
    with torch.no_grad():
        fusion.gate.fill_(1.0)
    tokens = encoder(encoder.transform(_photo()).unsqueeze(0))
    text = torch.randn(1, 4, 8)
    out = fusion(text, tokens, torch.tensor([True]))
    assert out.shape == (1, 4, 8)
    assert not torch.equal(out, text)
    assert torch.equal(fusion(text, tokens, torch.tensor([False])), text)


def test_fusion_rejects_bad_heads_and_mask():
    with pytest.raises(ValueError, match="divisible"):
        ImageTextFusion(hidden_size=10, image_dim=4, num_heads=4)
    fusion = ImageTextFusion(hidden_size=8, image_dim=4, num_heads=2)
    with pytest.raises(ValueError, match="image_mask"):
        fusion(torch.randn(2, 3, 8), torch.randn(2, 5, 4), torch.ones(3, dtype=torch.bool))
