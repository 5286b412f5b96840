from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from refineg.config import DataConfig
from refineg.data import Entity, Example, write_jsonl
from refineg.datamodules.gmner import GMNERDataModule


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    path = tmp_path_factory.mktemp("syn") / "synthetic.jsonl"
    posts = [
        Example(
            f"s{i}",
            ["Obama", "visits", "Paris", str(i)],
            entities=[Entity(0, 1, "PER"), Entity(2, 3, "LOC")],
            source="synthetic",
        )
        for i in range(40)
    ]
    write_jsonl(posts, path)
    return str(path)


def make_dm(**overrides):
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig), {"test": None, "gold_limit": 32, "batch_size": 8, **overrides}
    )
    dm = GMNERDataModule(cfg, "minilm", seed=1)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=0)
    dm.setup()
    return dm


def _ids(dm, epoch=0):
    dm.trainer.current_epoch = epoch
    return [i for batch in dm.train_dataloader() for i in batch["index"].tolist()], dm.train_dataloader()


def test_gold_only_ignores_synthetic(synthetic):
    dm = make_dm(synthetic=synthetic)
    assert len(dm.encoded["synthetic"]) == 0 and len(dm.encoded["train"]) == 32
    ids, _ = _ids(dm)
    assert sorted(ids) == list(range(32))


def test_concat_with_weight(synthetic):
    dm = make_dm(synthetic=synthetic, mixing="concat", synthetic_weight=0.25)
    weights = {}
    for batch in dm.train_dataloader():
        for i, w in zip(batch["index"].tolist(), batch["weight"].tolist()):
            weights[i] = w
    assert len(weights) == 72
    assert {w for i, w in weights.items() if i >= 32} == {0.25} and {w for i, w in weights.items() if i < 32} == {1.0}


def test_ratio_mixing(synthetic):
    dm = make_dm(synthetic=synthetic, mixing="ratio", synthetic_ratio=0.5)
    batches = [b["index"].tolist() for b in dm.train_dataloader()]
    assert len(batches) == 8 and all(sum(i >= 32 for i in b) == 4 for b in batches)
    assert dm.steps_per_epoch(0) == 8


def test_two_stage(synthetic):
    dm = make_dm(synthetic=synthetic, mixing="two_stage", synthetic_epochs=1)
    first, _ = _ids(dm, epoch=0)
    second, _ = _ids(dm, epoch=1)
    assert len(first) == 40 and len(second) == 32
    assert dm.steps_per_epoch(0) == 5 and dm.steps_per_epoch(1) == 4


def test_mixing_without_synthetic_file_is_an_error():
    with pytest.raises(ValueError, match="needs data.synthetic"):
        make_dm(mixing="concat")
    with pytest.raises(ValueError, match="data.mixing must be one of"):
        make_dm(mixing="interleave")


def test_missing_test_split_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.test=null"):
        make_dm(test="txt/nope.txt")


def test_images_loaded_only_for_image_models(tmp_path):
    from PIL import Image

    from refineg.modules.image_encoders import create_image_encoder

    enc = create_image_encoder("timm", model_name="test_resnet", img_size=32)
    dm_text = make_dm(image_dir=str(tmp_path))
    assert "pixel_values" not in next(iter(dm_text.train_dataloader()))
    cfg = OmegaConf.merge(
        OmegaConf.structured(DataConfig), {"test": None, "gold_limit": 8, "batch_size": 8, "image_dir": str(tmp_path)}
    )
    dm = GMNERDataModule(cfg, "minilm", seed=1, image_transform=enc.transform)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, current_epoch=0)
    dm.setup()
    present = dm.examples["train"][0]
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / present.image)
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixel_values"].shape == (8, 3, 32, 32)
    by_index = dict(zip(batch["index"].tolist(), batch["image_mask"].tolist()))
    assert by_index[0] is True and sum(by_index.values()) == 1  # the others have no file: text-only


def test_release_without_the_default_test_file_has_no_test_split(tmp_path, caplog):
    import logging
    import shutil

    from refineg.config import SAMPLE_ROOT
    from refineg.datamodules.gmner import has_test_split

    (tmp_path / "txt").mkdir()
    for split in ("train", "dev"):
        shutil.copy(SAMPLE_ROOT / "txt" / f"{split}.txt", tmp_path / "txt" / f"{split}.txt")
    shutil.copytree(SAMPLE_ROOT / "xml", tmp_path / "xml")
    with caplog.at_level(logging.WARNING, logger="refineg.datamodules.gmner"):
        dm = make_dm(root=str(tmp_path), test="txt/test.txt")
    assert "test" not in dm.examples and len(dm.examples["dev"]) == 150
    assert f"{tmp_path / 'txt' / 'test.txt'} does not exist: no test split" in caplog.text
    cfg = OmegaConf.merge(OmegaConf.structured(DataConfig), {"root": str(tmp_path)})
    assert not has_test_split(cfg) and has_test_split(OmegaConf.structured(DataConfig))  # the sample has one
    with pytest.raises(FileNotFoundError, match="data.test=null"):  # a path of one's own must exist
        has_test_split(OmegaConf.merge(cfg, {"test": "txt/final.txt"}))
