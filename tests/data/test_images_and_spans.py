"""The one image loader (refineg/data/images.py) and the one span projector (refineg/data/spans.py)."""

import re

import pytest
from PIL import Image

from refineg.data import DataFormatError, Entity
from refineg.data.images import ImageError, image_size, load_image
from refineg.data.spans import locate_span, locate_spans, map_spans, normalize_name, squash
from refineg.errors import error_line, is_expected_error


def test_missing_and_unreadable_files_raise_one_error_naming_the_file(tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError) as err:
        load_image(missing)
    assert str(err.value) == f"{missing}: image not found" and err.value.reason == "image not found"
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    for call in (load_image, image_size):
        with pytest.raises(ImageError, match=re.escape(f"{broken}: unreadable image (UnidentifiedImageError")):
            call(broken)
    # the command line reports it as one line (exit status 2); callers that treat bad images as missing catch OSError
    assert isinstance(err.value, DataFormatError) and isinstance(err.value, OSError)
    assert is_expected_error(err.value) and error_line(err.value) == f"error: {missing}: image not found"


def test_rgb_by_default_and_the_stored_mode_on_request(tmp_path):
    path = tmp_path / "p.png"
    Image.new("P", (7, 5), 3).save(path)
    rgb = load_image(path)
    assert rgb.mode == "RGB" and rgb.size == (7, 5)
    assert load_image(path, rgb=False).mode == "P"
    assert image_size(path) == (7, 5)
    grey = Image.new("L", (4, 4), 9)
    assert load_image(grey).mode == "RGB" and load_image(grey, rgb=False) is grey


def test_exif_orientation_is_not_applied(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (40, 10), (200, 10, 10)).save(path, exif=exif.tobytes())
    assert Image.open(path).getexif()[0x0112] == 6
    assert load_image(path).size == (40, 10) and image_size(path) == (40, 10)  # the stored pixel grid


def test_the_two_normalisations():
    assert squash("New \t York\u00a0City") == "newyorkcity"
    assert normalize_name("  New \t York\n") == "new york"
    assert normalize_name(12) == "12"


def test_matchers_from_strict_to_lenient():
    tokens = ["I", "love", "New", "York", "and", "new", "york", "pizza"]
    assert locate_spans(tokens, ["New York", "pizza", "Boston"]) == [(2, 4), (7, 8), None]
    # exact occurrences first, then a case- and space-blind pass over what is left, never overlapping
    assert map_spans(tokens, ["NEW YORK", "New York", "newyork"]) == [(5, 7), (2, 4), None]
    ent = Entity(2, 3, "LOC")
    assert locate_span(tokens, "new york", ent, max_change=1) == (2, 4)
    assert locate_span(tokens, "new york", ent, max_change=0) is None
