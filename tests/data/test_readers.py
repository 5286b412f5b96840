import json
import logging

import pytest

from refineg.data import DataFormatError, Entity, Example, ReadReport, read_jsonl, write_jsonl
from refineg.data.ccks import read_ccks, write_ccks
from refineg.data.conll import read_conll, write_conll
from refineg.data.formats import create_data_format, list_data_formats
from refineg.data.twitter_gmner import read_twitter_gmner, write_twitter_gmner
from tests.conftest import FIXTURES

GMNER = FIXTURES / "twitter_gmner"


def _gmner(report=None):
    return read_twitter_gmner(GMNER / "txt" / "sample.txt", GMNER / "xml", report=report)


def test_twitter_gmner_reader_boxes_and_name_matching(caplog):
    report = ReadReport()
    with caplog.at_level(logging.WARNING):
        posts = {ex.id: ex for ex in _gmner(report)}
    assert list(posts) == ["101", "102", "103", "104"]
    p = posts["101"]
    assert p.image == "101.jpg" and p.image_size == (400, 300)
    bieber, selena, ny = p.entities
    assert (bieber.start, bieber.end, bieber.type) == (1, 3, "PER")
    # names differing in spacing/case match; two objects -> two boxes
    assert bieber.boxes == [[10, 20, 110, 220], [200, 20, 300, 220]]
    # box outside the 400x300 image is clipped and counted
    assert selena.boxes == [[150, 50, 400, 250]]
    assert ny.boxes == [] and ny.type == "LOC"
    # the same surface twice in a post: both mentions get the box
    a1, chelsea, a2 = posts["102"].entities
    assert a1.boxes == a2.boxes == [[0, 0, 320, 240]] and chelsea.boxes == []
    assert posts["103"].entities == [] and posts["104"].entities[0].type == "OTHER"
    assert report.counts == {"box_outside_image": 1, "xml_object_unmatched": 1}
    assert "101.xml" in caplog.text and "Taylor" in caplog.text


def test_twitter_gmner_round_trip(tmp_path):
    posts = _gmner()
    write_twitter_gmner(posts, tmp_path / "txt" / "out.txt", tmp_path / "xml")
    assert sorted(p.name for p in (tmp_path / "xml").iterdir()) == ["101.xml", "102.xml"]
    again = read_twitter_gmner(tmp_path / "txt" / "out.txt", tmp_path / "xml")
    assert [e.to_dict() for e in again] == [e.to_dict() for e in posts]


def test_jsonl_round_trip_and_optional_fields(tmp_path):
    posts = _gmner()
    posts[0].entities[0].score = 0.75
    posts[0].entities[0].uncertainty = 0.25
    write_jsonl(posts, tmp_path / "a.jsonl")
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert set(first) >= {"id", "tokens", "image", "entities", "source"}
    assert first["entities"][0]["score"] == 0.75 and "score" not in first["entities"][1]
    again = read_jsonl(tmp_path / "a.jsonl")
    assert [e.to_dict() for e in again] == [e.to_dict() for e in posts]


def test_conll_twitter2015_type_map_and_round_trip(tmp_path):
    posts = read_conll(FIXTURES / "twitter2015_sample.txt")
    assert [(e.start, e.end, e.type) for e in posts[0].entities] == [(3, 4, "ORG"), (5, 7, "OTHER")]
    kept = read_conll(FIXTURES / "twitter2015_sample.txt", type_map={})
    assert kept[0].entities[1].type == "MISC"
    write_conll(posts, tmp_path / "o.txt")
    assert "Super\tB-OTHER" in (tmp_path / "o.txt").read_text()
    assert [e.to_dict() for e in read_conll(tmp_path / "o.txt")] == [e.to_dict() for e in posts]


def test_ccks_reader_bnd_and_bndbox_and_round_trip(tmp_path):
    report = ReadReport()
    posts = {
        e.id: e
        for e in read_ccks(
            FIXTURES / "ccks" / "sample_text.json", FIXTURES / "ccks" / "sample_entity.json", report=report
        )
    }
    c1 = posts["c1"]
    got = {(e.text(c1.tokens), e.type): e.boxes for e in c1.entities}
    assert got == {
        ("USS Nimitz", "vessel"): [[10, 10, 200, 120]],
        ("F-35", "aircraft"): [[220, 5, 300, 60], [310, 5, 380, 60]],
        ("Taiwan Strait", "location"): [],
    }
    c2 = posts["c2"]
    assert [(e.start, e.end) for e in c2.entities] == [(1, 3)]
    assert posts["c3"].entities == [] and not report.counts
    write_ccks(posts.values(), tmp_path / "t.json", tmp_path / "e.json", box_key="bndbox")
    again = read_ccks(tmp_path / "t.json", tmp_path / "e.json")
    assert [e.to_dict() for e in again] == [e.to_dict() for e in posts.values()]


def test_format_registry_lists_and_rejects_unknown():
    assert list_data_formats() == ["ccks", "conll", "flickr30k-entities", "jsonl", "twitter-gmner"]
    with pytest.raises(KeyError, match="known data formats: ccks, conll, flickr30k-entities, jsonl, twitter-gmner"):
        create_data_format("brat")


# ---- bad input: each names file and line (or id) -------------------------------------------------------------


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("IMGID:1\nhello world\n", 2, "no tab"),
        ("IMGID:1\nhello\tB-FOO\n", 2, "unknown entity type 'FOO'"),
        ("IMGID:1\nhello\tX-PER\n", 2, "unknown tag 'X-PER'"),
        ("IMGID:1\na\tO\n\nIMGID:1\nb\tO\n", 4, "duplicate post id '1'"),
        ("a\tO\n", 1, "before the first 'IMGID:'"),
    ],
)
def test_bad_conll(tmp_path, text, line, message):
    path = _write(tmp_path, "bad.txt", text)
    with pytest.raises(DataFormatError, match=message) as err:
        read_twitter_gmner(path, None)
    assert str(err.value).startswith(f"{path}:{line}:")


@pytest.mark.parametrize(
    "bndbox, message",
    [
        ("<xmin>a</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>", "non-numeric"),
        ("<xmin>9</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax>", "inverted"),
        ("<xmin>900</xmin><ymin>1</ymin><xmax>950</xmax><ymax>5</ymax>", "entirely outside"),
    ],
)
def test_bad_xml_box(tmp_path, bndbox, message):
    txt = _write(tmp_path, "a.txt", "IMGID:7\nObama\tB-PER\n")
    (tmp_path / "xml").mkdir()
    _write(
        tmp_path / "xml",
        "7.xml",
        "<annotation><size><width>100</width><height>100</height></size><object>"
        f"<name>Obama</name><bndbox>{bndbox}</bndbox></object></annotation>",
    )
    with pytest.raises(DataFormatError, match=message) as err:
        read_twitter_gmner(txt, tmp_path / "xml")
    assert "7.xml" in str(err.value) and "Obama" in str(err.value)


def test_xml_is_parsed_safely(tmp_path):
    txt = _write(tmp_path, "a.txt", "IMGID:7\nObama\tB-PER\n")
    (tmp_path / "xml").mkdir()
    _write(tmp_path / "xml", "7.xml", '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><annotation>&e;</annotation>')
    with pytest.raises(Exception, match="(?i)entit"):
        read_twitter_gmner(txt, tmp_path / "xml")


def test_missing_files(tmp_path):
    with pytest.raises(DataFormatError, match="file not found"):
        read_twitter_gmner(tmp_path / "nope.txt", None)
    with pytest.raises(DataFormatError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")
    with pytest.raises(DataFormatError, match="xml folder not found"):
        read_twitter_gmner(_write(tmp_path, "a.txt", "IMGID:1\na\tO\n"), tmp_path / "noxml")


def test_bad_jsonl_lines(tmp_path):
    good = json.dumps(Example("1", ["a", "b"], entities=[Entity(0, 1, "PER")]).to_dict())
    cases = {
        "{not json": "invalid JSON",
        json.dumps({"id": "2", "tokens": ["a"], "entities": [{"start": 0, "end": 3, "type": "PER"}]}): "outside",
        json.dumps(
            {"id": "2", "tokens": ["a"], "entities": [{"start": 0, "end": 1, "type": "PER", "boxes": [[5, 5, 1, 1]]}]}
        ): "inverted",
        json.dumps(
            {"id": "2", "tokens": ["a"], "entities": [{"start": 0, "end": 1, "type": "P", "boxes": [["x", 1, 2, 3]]}]}
        ): "bad entity",
        json.dumps({"tokens": ["a"]}): "missing field",
        good: "duplicate post id '1'",
    }
    for line, message in cases.items():
        path = _write(tmp_path, "bad.jsonl", good + "\n\n" + line + "\n")
        with pytest.raises(DataFormatError, match=message) as err:
            read_jsonl(path)
        assert str(err.value).startswith(f"{path}:3:"), str(err.value)


def test_ccks_errors_name_the_record(tmp_path):
    _write(tmp_path, "t.json", json.dumps({"9": {"text": "the F-35 flew"}}))
    _write(tmp_path, "e.json", json.dumps({"9": [{"name": "F-35", "label": "aircraft", "bnd": {"xmin": "?"}}]}))
    with pytest.raises(DataFormatError, match=r"e.json \[id 9\]: non-numeric"):
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")
    _write(tmp_path, "e.json", json.dumps({"9": [{"name": "F-22", "label": "aircraft", "bnd": None}]}))
    report = ReadReport()
    posts = read_ccks(tmp_path / "t.json", tmp_path / "e.json", report=report)
    assert posts[0].entities == [] and report.counts == {"entity_not_found": 1}
    _write(tmp_path, "e.json", json.dumps({"9": [{"name": "F-35", "label": "tank", "bnd": None}]}))
    with pytest.raises(DataFormatError, match="unknown label 'tank'"):
        read_ccks(tmp_path / "t.json", tmp_path / "e.json")
