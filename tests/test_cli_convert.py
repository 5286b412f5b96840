import json

from refineg.cli import main
from refineg.data import read_jsonl
from tests.conftest import FIXTURES


def test_convert_every_format(tmp_path, capsys):
    g = FIXTURES / "twitter_gmner"
    assert (
        main(
            [
                "convert",
                "--format",
                "twitter-gmner",
                "--txt",
                str(g / "txt" / "sample.txt"),
                "--xml-dir",
                str(g / "xml"),
                "--out",
                str(tmp_path / "a.jsonl"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote 4 posts, 7 entities (4 with boxes)" in out and "xml_object_unmatched: 1" in out
    assert (
        main(
            [
                "convert",
                "--format",
                "jsonl",
                "--input",
                str(tmp_path / "a.jsonl"),
                "--to",
                "twitter-gmner",
                "--out",
                str(tmp_path / "b.txt"),
                "--out-xml-dir",
                str(tmp_path / "xml"),
            ]
        )
        == 0
    )
    assert (tmp_path / "xml" / "102.xml").is_file()
    assert (
        main(
            [
                "convert",
                "--format",
                "conll",
                "--txt",
                str(FIXTURES / "twitter2015_sample.txt"),
                "--out",
                str(tmp_path / "c.jsonl"),
            ]
        )
        == 0
    )
    assert read_jsonl(tmp_path / "c.jsonl")[0].entities[1].type == "OTHER"
    assert (
        main(
            [
                "convert",
                "--format",
                "ccks",
                "--text-json",
                str(FIXTURES / "ccks" / "sample_text.json"),
                "--entity-json",
                str(FIXTURES / "ccks" / "sample_entity.json"),
                "--out",
                str(tmp_path / "d.jsonl"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "convert",
                "--format",
                "jsonl",
                "--input",
                str(tmp_path / "d.jsonl"),
                "--to",
                "ccks",
                "--out",
                str(tmp_path / "t.json"),
                "--out-entity-json",
                str(tmp_path / "e.json"),
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "e.json").read_text())["c2"][0]["name"] == "Leopard 2"


def test_convert_bad_input_exits_2_with_place(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("IMGID:1\nfoo bar\n")
    assert main(["convert", "--format", "conll", "--txt", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
