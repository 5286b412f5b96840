"""Flickr30k Entities reader: a tiny set drawn in code, bad files, ``refineg convert``, the real set in ../shared."""

from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from refineg.cli import main
from refineg.data import DataFormatError, ReadReport, read_jsonl
from refineg.data.flickr30k import FLICKR30K_TYPES, read_flickr30k_entities
from refineg.data.formats import create_data_format

SHARED_F30K = Path(__file__).resolve().parents[2].parent / "shared/data/flickr30k-entities"

SENTENCES = {
    "100": "[/EN#1/people A man] in [/EN#2/clothing a red hat] rides [/EN#3/animals/scene a horse] .\n"
    "[/EN#4/people Two riders] near [/EN#0/notvisual each other] on [/EN#5/scene the beach]\n",
    "200": "[/EN#7/vehicles A bus] passes [/EN#8/other a sign]\n\n"
    "[/EN#7/vehicles/scene The bus] is [/EN#9/other red] .\n",
}


def _object(names, box=None):
    names = "".join(f"<name>{n}</name>" for n in names)
    if box is None:
        return f"<object>{names}<nobndbox>1</nobndbox><scene>1</scene></object>"
    coords = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object>{names}<bndbox>{coords}</bndbox></object>"


def _xml(size, objects):
    return (
        f"<annotation>\n<filename>x.jpg</filename>\n<size><width>{size[0]}</width><height>{size[1]}</height>"
        f"<depth>3</depth></size>\n" + "\n".join(objects) + "\n</annotation>\n"
    )


ANNOTATIONS = {
    # stated 400x300, file 200x100: x scaled by 1/2, y by 1/3
    "100": (
        (400, 300),
        (200, 100),
        [
            _object([1, 4], [10, 20, 110, 220]),
            _object([4], [201, 21, 301, 121]),
            _object([2], [30, 15, 90, 45]),
            _object([3], [150, 100, 420, 310]),
            _object([5]),
        ],
    ),
    # file matches the stated size
    "200": (
        (120, 90),
        (120, 90),
        [_object([7], [1, 2, 60, 50]), _object([8], [70, 10, 110, 40]), _object([8], [5, 60, 20, 85])],
    ),
}


@pytest.fixture
def root(tmp_path):
    base = tmp_path / "f30k"
    for sub in ("Sentences", "Annotations", "images"):
        (base / sub).mkdir(parents=True)
    (base / "ids.txt").write_text("100\n200\n")
    for image_id, text in SENTENCES.items():
        (base / "Sentences" / f"{image_id}.txt").write_text(text)
    for image_id, (stated, actual, objects) in ANNOTATIONS.items():
        (base / "Annotations" / f"{image_id}.xml").write_text(_xml(stated, objects))
        Image.new("RGB", actual, (90, 120, 200)).save(base / "images" / f"{image_id}.jpg")
    return base


def _summary(example):
    return [(e.text(example.tokens), e.type, e.boxes) for e in example.entities]


def test_reads_posts_spans_types_and_scaled_boxes(root):
    report = ReadReport()
    posts = {p.id: p for p in read_flickr30k_entities(root, report=report)}
    assert list(posts) == ["100_0", "100_1", "200_0", "200_2"]  # blank caption line 1 of 200 skipped
    p = posts["100_0"]
    assert p.image == "100.jpg" and p.image_size == (200, 100)
    assert p.tokens == ["A", "man", "in", "a", "red", "hat", "rides", "a", "horse", "."]
    assert [(e.start, e.end) for e in p.entities] == [(0, 2), (3, 6), (7, 9)]
    assert _summary(p) == [
        ("A man", "people", [[5.0, 6.67, 55.0, 73.33]]),
        ("a red hat", "clothing", [[15.0, 5.0, 45.0, 15.0]]),
        ("a horse", "animals", [[75.0, 33.33, 200.0, 100.0]]),  # first type; 420x310 clipped to the 200x100 file
    ]
    assert report.counts == {"box_outside_image": 1}
    # object named 1 and 4 belongs to both entities; 4 has a second box; 0/notvisual and a nobndbox id: none
    assert _summary(posts["100_1"]) == [
        ("Two riders", "people", [[5.0, 6.67, 55.0, 73.33], [100.5, 7.0, 150.5, 40.33]]),
        ("each other", "notvisual", []),
        ("the beach", "scene", []),
    ]
    assert posts["100_1"].tokens == ["Two", "riders", "near", "each", "other", "on", "the", "beach"]
    assert posts["200_0"].image_size == (120, 90)
    assert _summary(posts["200_0"]) == [
        ("A bus", "vehicles", [[1.0, 2.0, 60.0, 50.0]]),
        ("a sign", "other", [[70.0, 10.0, 110.0, 40.0], [5.0, 60.0, 20.0, 85.0]]),
    ]
    assert _summary(posts["200_2"]) == [("The bus", "vehicles", [[1.0, 2.0, 60.0, 50.0]]), ("red", "other", [])]
    # the entities of different captions do not share box lists
    posts["200_0"].entities[0].boxes[0][0] = 0.0
    assert posts["200_2"].entities[0].boxes == [[1.0, 2.0, 60.0, 50.0]]
    for post in posts.values():
        post.validate()


def test_ids_filter_and_registry(root):
    posts = create_data_format("flickr30k-entities").reader(root, ids=["200"])
    assert [p.id for p in posts] == ["200_0", "200_2"]
    assert create_data_format("flickr30k-entities").writer is None


@pytest.mark.parametrize(
    "name, text, line, message",
    [
        ("Sentences/100.txt", "ok .\n[/EN#1/people A man .\n", 2, "not closed"),
        ("Sentences/100.txt", "A man] .\n", 1, "unbalanced bracket"),
        ("Sentences/100.txt", "ok .\nok .\n[/EN#1/robots A robot] .\n", 3, r"unknown type\(s\) \['robots'\]"),
        ("Sentences/100.txt", "[/EN#1/people/robots A robot] .\n", 1, "unknown type"),
        ("Sentences/100.txt", "[/EN#1/people A [/EN#2/other b] c] .\n", 1, "nested phrase"),
        ("Sentences/100.txt", "[/EN#1/people ] .\n", 1, "empty phrase"),
        ("Sentences/100.txt", "[/EN#x/people A man] .\n", 1, "malformed phrase head"),
        ("Annotations/100.xml", "<annotation>\n<size>\n</annotation>\n", 3, "invalid xml"),
        ("ids.txt", "100\n200\n100\n", 3, "duplicate image id '100'"),
    ],
)
def test_bad_text_names_file_and_line(root, name, text, line, message):
    (root / name).write_text(text)
    with pytest.raises(DataFormatError, match=message) as err:
        read_flickr30k_entities(root)
    assert str(err.value).startswith(f"{root / name}:{line}: ")


def test_bad_boxes_missing_files(root):
    (root / "Annotations" / "200.xml").write_text(_xml((120, 90), [_object([7], [1, "two", 60, 50])]))
    with pytest.raises(DataFormatError, match=r"200.xml: object 1 \(names \['7'\]\): non-numeric"):
        read_flickr30k_entities(root)
    (root / "Annotations" / "200.xml").write_text(_xml((120, 90), [_object([7], [300, 200, 400, 300])]))
    with pytest.raises(DataFormatError, match="entirely outside the image"):
        read_flickr30k_entities(root)
    (root / "Annotations" / "200.xml").write_text(_xml(("?", 90), [_object([7], [1, 2, 60, 50])]))
    with pytest.raises(DataFormatError, match="non-numeric <size>"):
        read_flickr30k_entities(root)
    (root / "images" / "100.jpg").unlink()
    with pytest.raises(DataFormatError, match="image needed to scale the boxes of 100.xml") as err:
        read_flickr30k_entities(root)
    assert str(err.value).startswith(str(root / "images" / "100.jpg"))
    (root / "Sentences" / "100.txt").unlink()
    with pytest.raises(DataFormatError, match="file not found") as err:
        read_flickr30k_entities(root)
    assert str(err.value).startswith(str(root / "Sentences" / "100.txt"))


def test_image_without_boxes_needs_no_file(root):
    (root / "Annotations" / "200.xml").write_text(_xml((120, 90), [_object([7])]))
    (root / "images" / "200.jpg").unlink()
    posts = read_flickr30k_entities(root, ids=["200"])
    assert [p.image_size for p in posts] == [None, None]
    assert all(not e.boxes for p in posts for e in p.entities)


def test_convert_command_writes_jsonl(root, tmp_path, capsys):
    out = tmp_path / "all.jsonl"
    assert main(["convert", "--format", "flickr30k-entities", "--input", str(root), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 4 posts, 10 entities (7 with boxes) to {out}" in printed and "box_outside_image: 1" in printed
    assert [p.to_dict() for p in read_jsonl(out)] == [p.to_dict() for p in read_flickr30k_entities(root)]
    assert (
        main(
            [
                "convert",
                "--format",
                "jsonl",
                "--input",
                str(out),
                "--out",
                str(tmp_path / "x"),
                "--to",
                "flickr30k-entities",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "read-only" in err, err


@pytest.mark.skipif(not SHARED_F30K.is_dir(), reason=f"Flickr30k Entities not found at {SHARED_F30K}")
def test_real_set_counts():
    report = ReadReport()
    posts = read_flickr30k_entities(SHARED_F30K, report=report)
    entities = [e for p in posts for e in p.entities]
    assert len({p.image for p in posts}) == 800 and len(posts) == 4000 and len(entities) == 12582
    # "tied to at least one box": the phrase's entity id has a <bndbox> in the image's xml
    assert sum(1 for e in entities if e.boxes) == 10959
    assert Counter(e.type for e in entities) == {
        "people": 3516,
        "other": 2685,
        "scene": 2423,
        "clothing": 1328,
        "animals": 1230,
        "notvisual": 559,
        "bodyparts": 497,
        "vehicles": 320,
        "instruments": 24,
    }
    # 5,087 <bndbox>es; one (entity 206 of 1007129816) is named by no phrase
    assert len({(p.image, tuple(b)) for p in posts for e in p.entities for b in e.boxes}) == 5086
    assert not report.counts
    for post in posts:
        post.validate()


def test_data_config_loads():
    from refineg.config import load_config

    data = load_config(["data=flickr30k_entities", "data.root=/tmp/f30k"]).data
    assert data.format == "jsonl" and list(data.types) == list(FLICKR30K_TYPES) and data.test is None
