"""refineg visualize: side-by-side PNGs of gold and predicted boxes, calibration plots, W&B offline logging."""

import json
import time

import pytest
from PIL import Image

from refineg.cli import main
from refineg.data import Entity, Example, write_jsonl
from refineg.viz.boxes import BLANK_SIZE, GAP, HEADER, LINE, PAD, type_colour

BG = (10, 20, 30)


@pytest.fixture()
def posts(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    Image.new("RGB", (320, 240), BG).save(images / "a.jpg", quality=100)
    Image.new("RGB", (1280, 960), BG).save(images / "big.jpg", quality=100)
    tokens = ["Obama", "meets", "Merkel", "in", "Berlin"]
    gold = [
        Example(
            "a",
            tokens,
            "a.jpg",
            [Entity(0, 1, "PER", [[20, 30, 120, 200]]), Entity(2, 3, "PER"), Entity(4, 5, "LOC")],
            image_size=(320, 240),
        ),
        Example("big", tokens, "big.jpg", [Entity(0, 1, "PER", [[100, 100, 700, 900]])]),
        Example("gone", tokens, "missing.jpg", [Entity(0, 1, "ORG", [[10, 10, 50, 50]])], image_size=(200, 100)),
        Example("noimg", tokens, None, []),
    ]
    pred = [
        Example("a", tokens, "a.jpg", [Entity(0, 1, "PER", [[200, 30, 300, 200]], score=0.9)], source="predicted"),
        Example("big", tokens, "big.jpg", [], source="predicted"),
    ]
    write_jsonl(gold, tmp_path / "gold.jsonl")
    write_jsonl(pred, tmp_path / "pred.jsonl")
    return tmp_path


def run_visualize(tmp_path, *extra):
    return main(
        [
            "visualize",
            "--pred",
            str(tmp_path / "pred.jsonl"),
            "--gold",
            str(tmp_path / "gold.jsonl"),
            "--images",
            str(tmp_path / "img"),
            "--out",
            str(tmp_path / "out"),
            *extra,
        ]
    )


def close(a, b, tol=40):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_side_by_side_png_size_and_boxes(posts, capsys):
    assert run_visualize(posts) == 0
    assert "wrote 4 post drawings" in capsys.readouterr().out
    with Image.open(posts / "out" / "a.png") as img:
        assert img.format == "PNG"
        # two 320-wide panels and the gap; header + image + 3 entity lines (gold has 3, prediction 1) + padding
        assert img.size == (2 * 320 + GAP, HEADER + 240 + 3 * LINE + PAD)
        rgb = img.convert("RGB")
        left_edge = rgb.getpixel((20, HEADER + 100))  # gold box's left side, left panel
        assert close(left_edge, type_colour("PER"), 5)
        assert close(rgb.getpixel((320 + GAP + 20, HEADER + 100)), BG)  # no predicted box there
        assert close(rgb.getpixel((320 + GAP + 200, HEADER + 100)), type_colour("PER"), 5)  # predicted box
        assert close(rgb.getpixel((200, HEADER + 100)), BG)  # ... which gold does not have
        assert close(rgb.getpixel((70, HEADER + 120)), BG)  # inside the box the photo shows through
    with Image.open(posts / "out" / "big.png") as img:  # shrunk to 640 px, never enlarged
        assert img.size == (2 * 640 + GAP, HEADER + 480 + LINE + PAD)
        assert close(img.convert("RGB").getpixel((50, HEADER + 300)), type_colour("PER"), 5)  # 100 px / 2
    with Image.open(posts / "out" / "gone.png") as img:  # image missing: grey canvas of the stated size
        assert img.size == (2 * 200 + GAP, HEADER + 100 + LINE + PAD)
        assert close(img.convert("RGB").getpixel((150, HEADER + 50)), (200, 200, 200), 2)
    with Image.open(posts / "out" / "noimg.png") as img:
        assert img.size == (2 * BLANK_SIZE[0] + GAP, HEADER + BLANK_SIZE[1] + LINE + PAD)


def test_ids_and_limit(posts):
    assert run_visualize(posts, "--ids", "big", "a", "--limit", "1") == 0
    assert sorted(p.name for p in (posts / "out").iterdir()) == ["a.png"]  # gold order, then the limit
    assert run_visualize(posts, "--ids", "nope") == 2  # unknown id: a clear error


def test_calibration_plots_and_wandb_offline(posts, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(posts)
    curve = {"coverage": [0.5, 1.0], "risk": [0.0, 0.5], "aurc": 0.25}
    rel = {"confidence": [0.2, 0.8], "accuracy": [0.1, 0.9]}
    calib = {"heads": {"entropy": {"total": {"reliability": rel, "ece": 0.1, "risk_coverage": curve, "aurc": 0.25}}}}
    (posts / "calibration.json").write_text(json.dumps(calib))
    assert run_visualize(posts, "--calibration", str(posts / "calibration.json"), "--wandb", "--limit", "2") == 0
    for name in ("reliability.png", "risk_coverage.png"):
        with Image.open(posts / "out" / name) as img:
            assert img.format == "PNG" and img.size[0] > 100
    runs = list((posts / "out" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    tables = list(runs[0].glob("files/media/table/posts_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["id", "text", "gold", "predicted", "comparison"]
    assert [row[0] for row in table["data"]] == ["a", "big"]
    assert table["data"][0][2] == "Obama (PER, box); Merkel (PER); Berlin (LOC)"
    plots = sorted(p.name.split("_0_")[0] for p in runs[0].glob("files/media/images/calibration/*.png"))
    assert plots == ["reliability", "risk_coverage"]
    # the table's images travel in a run_table artifact (uploaded by `wandb sync`); its manifest names them
    # (the W&B service may still be writing the record file when finish() returns: wait for it)
    deadline = time.monotonic() + 30
    while True:
        record = next(runs[0].glob("run-*.wandb")).read_bytes()
        if b"/big.png" in record or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"run_table" in record and b"/a.png" in record and b"/big.png" in record
