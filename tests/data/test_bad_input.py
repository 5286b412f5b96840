"""Issue 16: bad input is an error naming file and line (or record id), or a counted warning; never a traceback
from deep inside, never silently accepted, and names from data never leave their folder."""

import json
import math
import re

import pytest

from refineg.data import DataFormatError, Entity, Example, ReadReport, read_jsonl, write_jsonl
from refineg.data.ccks import read_ccks, write_ccks
from refineg.data.conll import read_conll, write_conll
from refineg.data.flickr30k import read_flickr30k_entities
from refineg.data.twitter_gmner import read_twitter_gmner, write_twitter_gmner


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def _line(**fields):
    record = {"id": "1", "tokens": ["Obama", "in", "Paris"], "entities": []}
    record.update(fields)
    return json.dumps(record)


def _jsonl_error(tmp_path, line, message):
    path = _write(tmp_path / "bad.jsonl", _line(id="0") + "\n" + line + "\n")
    with pytest.raises(DataFormatError, match=message) as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:2:"), str(err.value)
    assert "\n" not in str(err.value)


# ---- non-UTF-8 bytes: every reader names file and line ---------------------------------------------------------


def test_non_utf8_conll_and_twitter_gmner_txt(tmp_path):
    path = _write(tmp_path / "a.txt", b"IMGID:1\nhello\tO\nw\xe9rld\tO\n")
    for read in (lambda: read_conll(path), lambda: read_twitter_gmner(path, None)):
        with pytest.raises(DataFormatError, match=r"not UTF-8 text: byte 0xe9 at column 2") as err:
            read()
        assert str(err.value).startswith(f"{path}:3:")


def test_non_utf8_jsonl(tmp_path):
    path = _write(tmp_path / "a.jsonl", (_line(id="0") + "\n").encode() + b'{"id": "\xff"}\n')
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        read_jsonl(path)
    assert str(err.value).startswith(f"{path}:2:")


def test_non_utf8_ccks(tmp_path):
    good_text = json.dumps({"1": {"text": "the F-35 flew"}})
    bad = b'{"1": {"text": "the F-35 flew"},\n "2": {"text": "\xff"}}'
    _write(tmp_path / "e.json", json.dumps({"1": []}))
    _write(tmp_path / "t.json", bad)
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")
    assert str(err.value).startswith(f"{tmp_path / 't.json'}:2:")
    _write(tmp_path / "t.json", good_text)
    _write(tmp_path / "e.json", b'{"1": [{"name": "\xe9", "label": "other"}]}')
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")
    assert str(err.value).startswith(f"{tmp_path / 'e.json'}:1:")


def test_non_utf8_flickr30k(tmp_path):
    _write(tmp_path / "ids.txt", b"1\n\xff2\n")
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        read_flickr30k_entities(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'ids.txt'}:2:")
    _write(tmp_path / "ids.txt", "1\n")
    _write(tmp_path / "Annotations" / "1.xml", "<annotation></annotation>")
    _write(tmp_path / "Sentences" / "1.txt", b"A [/EN#1/people man] .\nA \xe9 dog .\n")
    with pytest.raises(DataFormatError, match="not UTF-8") as err:
        read_flickr30k_entities(tmp_path)
    assert str(err.value).startswith(f"{tmp_path / 'Sentences' / '1.txt'}:2:")


# ---- XML: entity bombs and external entities are data errors ---------------------------------------------------


@pytest.mark.parametrize(
    "xml",
    [
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;&a;">]><annotation>&b;</annotation>',
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]><annotation>&e;</annotation>',
    ],
)
def test_xml_entities_are_a_data_format_error(tmp_path, xml):
    txt = _write(tmp_path / "a.txt", "IMGID:7\nObama\tB-PER\n")
    _write(tmp_path / "xml" / "7.xml", xml)
    with pytest.raises(DataFormatError, match="(?i)entit") as err:
        read_twitter_gmner(txt, tmp_path / "xml")
    assert str(err.value).startswith(str(tmp_path / "xml" / "7.xml"))


# ---- mistyped JSONL fields, deep nesting, CCKS shapes ----------------------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        (_line(image_size=5), "image_size"),
        (_line(image_size=["a", 3]), "image_size"),
        (_line(meta=[1, 2]), "'meta' must be a JSON object"),
        (_line(image=12345), "'image' must be a string or null"),
        (_line(id=None), "'id' must be a string"),
        (_line(entities=5), "'entities' must be a list"),
        (_line(entities=[{"start": 0.7, "end": 1, "type": "PER"}]), "start"),
        (_line(entities=[{"start": 0, "end": 1, "type": None}]), "type"),
        (_line(tokens=["Obama", "New York"]), r"token 1 \('New York'\) contains whitespace"),
        (_line(tokens=["Obama", "a\tb"]), "contains whitespace"),
        (_line(tokens=["Obama", "a\nb"]), "contains whitespace"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_mistyped_jsonl_fields(tmp_path, line, message):
    _jsonl_error(tmp_path, line, message)


def test_ccks_entity_value_must_be_a_list(tmp_path):
    _write(tmp_path / "t.json", json.dumps({"1": {"text": "the F-35 flew"}}))
    _write(tmp_path / "e.json", json.dumps({"1": 5}))
    with pytest.raises(DataFormatError, match=r"e.json \[id 1\]: expected a list of entities"):
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")
    _write(tmp_path / "e.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataFormatError, match="nested too deeply"):
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")


def test_unknown_type_in_jsonl_with_an_inventory(tmp_path):
    ent = [{"start": 0, "end": 1, "type": "FOOD"}]
    path = _write(tmp_path / "a.jsonl", _line(id="0") + "\n" + _line(entities=ent) + "\n")
    assert read_jsonl(path)[1].entities[0].type == "FOOD"  # no inventory: any type
    with pytest.raises(DataFormatError, match=r"unknown entity type 'FOOD'; allowed: \['LOC', 'PER'\]") as err:
        read_jsonl(path, types=["PER", "LOC"])
    assert str(err.value).startswith(f"{path}:2:")


# ---- silently accepted bad data --------------------------------------------------------------------------------


def test_infinite_coordinates_are_errors_everywhere(tmp_path):
    inf_box = [{"start": 0, "end": 1, "type": "PER", "boxes": [[0, 0, float("inf"), 5]]}]
    _jsonl_error(tmp_path, _line(entities=inf_box), "finite")
    _jsonl_error(tmp_path, _line(entities=inf_box).replace("Infinity", "1e999"), "finite")
    _write(tmp_path / "t.json", json.dumps({"1": {"text": "the F-35 flew"}}))
    _write(
        tmp_path / "e.json",
        json.dumps(
            {"1": [{"name": "F-35", "label": "aircraft", "bnd": {"xmin": 0, "ymin": 0, "xmax": "inf", "ymax": 5}}]}
        ),
    )
    with pytest.raises(DataFormatError, match=r"\[id 1\].*finite"):
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")
    txt = _write(tmp_path / "a.txt", "IMGID:7\nObama\tB-PER\n")
    _write(
        tmp_path / "xml" / "7.xml",
        "<annotation><object><name>Obama</name><bndbox><xmin>0</xmin><ymin>0</ymin>"
        "<xmax>inf</xmax><ymax>5</ymax></bndbox></object></annotation>",
    )
    with pytest.raises(DataFormatError, match="finite"):
        read_twitter_gmner(txt, tmp_path / "xml")
    with pytest.raises(ValueError, match="finite"):
        Example("1", ["a"], entities=[Entity(0, 1, "PER", [[0, 0, math.inf, 1]])]).validate()


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_jsonl_non_standard_constants_are_refused_on_read(tmp_path, constant):
    """Python's json module reads NaN and Infinity anywhere (here in ``meta``, which no other check looks at)."""
    _jsonl_error(tmp_path, _line(meta={"conf": 1}).replace("1}", constant + "}"), f"{constant} is not a JSON number")


@pytest.mark.parametrize(
    "post, field",
    [
        (Example("p7", ["a"], entities=[Entity(0, 1, "PER", score=math.nan)]), "entities[0].score is nan"),
        (Example("p7", ["a"], entities=[Entity(0, 1, "PER", uncertainty=math.inf)]), "entities[0].uncertainty is inf"),
        (Example("p7", ["a"], entities=[Entity(0, 1, "PER", [[0, 0, math.inf, 4]])]), "entities[0].boxes[0][2] is inf"),
        (Example("p7", ["a"], meta={"refinement": {"p": -math.inf}}), "meta.refinement.p is -inf"),
    ],
)
def test_writers_refuse_numbers_json_cannot_hold(tmp_path, post, field):
    """No writer leaves ``NaN`` or ``Infinity`` in a file (the readers would refuse it); the old file stays."""
    out = _write(tmp_path / "o.jsonl", _line() + "\n")
    with pytest.raises(DataFormatError, match=r"\[id p7\]: " + re.escape(field) + ", not a finite number"):
        write_jsonl([Example("ok", ["b"]), post], out)
    assert out.read_text() == _line() + "\n" and not list(tmp_path.glob("*.tmp"))
    if post.entities and post.entities[0].boxes:
        with pytest.raises(DataFormatError, match=r"\[id p7\]: .*not a finite number"):
            write_ccks([post], tmp_path / "t.json", tmp_path / "e.json")
        with pytest.raises(DataFormatError, match=r"\[id p7\]: .*is not finite"):
            write_twitter_gmner([post], tmp_path / "g.txt", tmp_path / "xml")
        assert not (tmp_path / "t.json").exists() and not (tmp_path / "g.txt").exists()


def test_jsonl_boxes_outside_the_image_are_clipped_with_a_warning(tmp_path):
    ents = [
        {"start": 0, "end": 1, "type": "PER", "boxes": [[-5, 10, 50, 60]]},
        {"start": 2, "end": 3, "type": "LOC", "boxes": [[20, 20, 150, 90]]},
    ]
    path = _write(tmp_path / "a.jsonl", _line(entities=ents, image_size=[100, 80]) + "\n")
    report = ReadReport()
    post = read_jsonl(path, report=report)[0]
    assert post.entities[0].boxes == [[0, 10, 50, 60]] and post.entities[1].boxes == [[20, 20, 100, 80]]
    assert report.counts == {"box_outside_image": 2}
    assert f"{path}:1:" in report.examples["box_outside_image"][0]
    # no image size: only negative coordinates are clipped
    path = _write(tmp_path / "b.jsonl", _line(entities=ents) + "\n")
    report = ReadReport()
    assert read_jsonl(path, report=report)[0].entities[1].boxes == [[20, 20, 150, 90]]
    assert report.counts == {"box_outside_image": 1}
    # wholly outside: an error, as in the xml reader
    for box, size in (([-50, -50, -10, -10], None), ([200, 10, 300, 60], [100, 80])):
        line = _line(
            entities=[{"start": 0, "end": 1, "type": "PER", "boxes": [box]}], **({"image_size": size} if size else {})
        )
        _jsonl_error(tmp_path, line, "entirely outside the image")


def test_ccks_negative_boxes_are_clipped_with_a_warning(tmp_path):
    _write(tmp_path / "t.json", json.dumps({"1": {"text": "the F-35 flew"}}))
    _write(
        tmp_path / "e.json",
        json.dumps(
            {"1": [{"name": "F-35", "label": "aircraft", "bnd": {"xmin": -4, "ymin": 2, "xmax": 30, "ymax": 40}}]}
        ),
    )
    report = ReadReport()
    post = read_ccks(tmp_path / "t.json", tmp_path / "e.json", report=report)[0]
    assert post.entities[0].boxes == [[0, 2, 30, 40]] and report.counts == {"box_outside_image": 1}
    _write(
        tmp_path / "e.json",
        json.dumps(
            {"1": [{"name": "F-35", "label": "aircraft", "bnd": {"xmin": -40, "ymin": -20, "xmax": -3, "ymax": -1}}]}
        ),
    )
    with pytest.raises(DataFormatError, match=r"\[id 1\].*entirely outside the image"):
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")


def test_three_column_and_whitespace_conll_lines(tmp_path):
    path = _write(tmp_path / "a.txt", "IMGID:1\nhello\tO\nNew\tNNP\tB-LOC\n")
    with pytest.raises(DataFormatError, match="expected 'token<TAB>tag', found 3 tab-separated columns") as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:3:")
    path = _write(tmp_path / "b.txt", "IMGID:1\nNew York\tB-LOC\n")
    with pytest.raises(DataFormatError, match="contains whitespace") as err:
        read_conll(path)
    assert str(err.value).startswith(f"{path}:2:")


def test_conll_writer_refuses_tokens_it_could_not_read_back(tmp_path):
    for token in ("a\tb", "a\nb", "a b"):
        with pytest.raises(DataFormatError, match=r"\[id 1\].*contains whitespace"):
            write_conll([Example("1", ["x", token])], tmp_path / "o.txt")


# ---- paths: names from data stay inside their folder -----------------------------------------------------------


def test_inside_folder_helper(tmp_path):
    from refineg.data.files import inside_folder

    assert inside_folder(tmp_path, "a.jpg") == tmp_path / "a.jpg"
    assert inside_folder(tmp_path, "2015/a.jpg") == tmp_path / "2015" / "a.jpg"
    assert inside_folder(tmp_path, "..a.jpg", file_name=True) == tmp_path / "..a.jpg"
    for name, message in (
        ("../x.jpg", r"'\.\.' part"),
        ("a/../../x.jpg", r"'\.\.' part"),
        ("..\\x.jpg", r"'\.\.' part"),
        ("/etc/passwd", "absolute"),
        ("\\\\host\\x", "absolute"),
        ("C:x.jpg", "absolute"),
        ("a\0.jpg", "NUL"),
        (12345, "not a non-empty string"),
        ("", "not a non-empty string"),
    ):
        with pytest.raises(DataFormatError, match=message) as err:
            inside_folder(tmp_path, name, "image", source="p.jsonl", record="7")
        assert str(err.value).startswith("p.jsonl [id 7]: image ")
    with pytest.raises(DataFormatError, match="not a plain file name"):
        inside_folder(tmp_path, "a/b.xml", "post id", file_name=True)


def test_twitter_gmner_reader_refuses_ids_that_leave_the_xml_folder(tmp_path):
    (tmp_path / "xml").mkdir()
    _write(
        tmp_path / "secret.xml",
        "<annotation><object><name>Obama</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>",
    )
    txt = _write(tmp_path / "a.txt", "IMGID:1\nhi\tO\n\nIMGID:../secret\nObama\tB-PER\n")
    with pytest.raises(DataFormatError, match=r"'\.\.' part") as err:
        read_twitter_gmner(txt, tmp_path / "xml")
    assert str(err.value).startswith(f"{txt}:4:")
    assert read_twitter_gmner(txt, None)[1].id == "../secret"  # no xml folder: nothing is opened


def test_twitter_gmner_writer_refuses_ids_that_leave_the_xml_folder(tmp_path):
    posts = [
        Example("1", ["Obama"], entities=[Entity(0, 1, "PER", [[1, 1, 5, 5]])]),
        Example("../../evil", ["Obama"], entities=[Entity(0, 1, "PER", [[1, 1, 5, 5]])]),
    ]
    out = tmp_path / "deep" / "er"
    with pytest.raises(DataFormatError, match=r"\[id \.\./\.\./evil\]: post id"):
        write_twitter_gmner(posts, out / "o.txt", out / "xml")
    assert not list(tmp_path.rglob("*.xml")) and not (out / "o.txt").exists()  # nothing written at all


def test_jsonl_round_trip_keeps_valid_data(tmp_path):
    posts = [
        Example(
            "1",
            ["Obama", "in", "Paris"],
            "1.jpg",
            [Entity(0, 1, "PER", [[0, 0, 10.5, 20]], score=0.5)],
            image_size=(100, 80),
            meta={"k": [1]},
        ),
        Example("2", ["x"], None, []),
    ]
    write_jsonl(posts, tmp_path / "a.jsonl")
    assert [p.to_dict() for p in read_jsonl(tmp_path / "a.jsonl")] == [p.to_dict() for p in posts]
    path = _write(
        tmp_path / "b.jsonl",
        json.dumps(
            {
                "id": 5,
                "tokens": ["a"],
                "entities": [{"start": 0.0, "end": 1, "type": "PER", "boxes": [[0, 0, 2, 2]]}],
                "meta": None,
            }
        )
        + "\n",
    )
    post = read_jsonl(path)[0]
    assert post.id == "5" and post.entities[0].start == 0 and post.meta == {}
