import base64
import io
import json

import pytest
from PIL import Image

from refineg.llm import ImageScale, JSONExtractionError, extract_json, fit_longest_side, prepare_image
from refineg.llm.images import image_content_hash


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((1600, 900), 1000, (1000, 562)), ((900, 1600), 1000, (562, 1000)), ((1000, 1000), 1000, (1000, 1000)),
     ((640, 480), 1000, (640, 480)), ((3001, 7), 1000, (1000, 2)), ((5000, 1), 100, (100, 1)),
     ((1234, 567), None, (1234, 567))],
)  # fmt: skip
def test_fit_longest_side(size, max_side, expected):
    assert fit_longest_side(*size, max_side) == expected


def test_box_rescaling_uses_exact_per_axis_factors():
    scale = ImageScale.for_image((1600, 900), 1000)
    assert scale.sent_size == (1000, 562)
    sx, sy = scale.factors
    assert sx == 1000 / 1600 and sy == 562 / 900  # not the nominal 0.625 on y
    box = [160.0, 90.0, 1600.0, 900.0]
    sent = scale.to_sent(box)
    assert sent == pytest.approx([100.0, 56.2, 1000.0, 562.0])
    assert scale.to_original(sent, round_to_int=False) == pytest.approx(box)
    assert scale.to_original([100, 56, 1000, 562]) == [160.0, 90.0, 1600.0, 900.0]
    assert scale.to_original([-5, -5, 2000, 2000]) == [0.0, 0.0, 1600.0, 900.0]  # clipped to the image
    assert ImageScale.for_image((300, 200), 1000).factors == (1.0, 1.0)


def test_prepare_image_resizes_and_encodes(tmp_path):
    path = tmp_path / "p.png"
    Image.new("P", (2000, 1000)).save(path)
    prepared = prepare_image(path, 1000)
    assert prepared.image.size == (1000, 500) and prepared.image.mode == "RGB"
    assert prepared.scale == ImageScale((2000, 1000), (1000, 500))
    url = prepared.data_url(quality=80)
    assert url.startswith("data:image/jpeg;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        assert img.format == "JPEG" and img.size == (1000, 500)


def test_content_hash_follows_pixels(tmp_path):
    img = Image.new("RGB", (10, 10), (1, 2, 3))
    img.save(tmp_path / "a.png")
    assert image_content_hash(img) == image_content_hash(tmp_path / "a.png")
    assert image_content_hash(img) != image_content_hash(Image.new("RGB", (10, 10), (1, 2, 4)))


ANSWER = {"reasoning_process": "It is a ship {named} X.", "corrected_bounding_box": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(ANSWER),
        f"```json\n{json.dumps(ANSWER, indent=2)}\n```",
        f"Sure, thinking {{step by step}}. Final answer:\n```\n{json.dumps(ANSWER)}\n```\nAnything else?",
        f"The answer is {json.dumps(ANSWER)} as requested.",
        json.dumps(ANSWER)[:-1] + ",}",  # trailing comma
        f"Let me check [the span] first. {json.dumps(ANSWER)}",  # brackets in prose before the JSON
    ],
)
def test_extract_json_from_fenced_and_chatty_answers(text):
    assert extract_json(text) == ANSWER


def test_extract_json_lists_types_and_failures():
    assert extract_json('Entities: [{"entity": "A", "bounding_box": []},]') == [{"entity": "A", "bounding_box": []}]
    assert extract_json("42", expect=None) == 42
    assert extract_json('["a, ]", 1]') == ["a, ]", 1]  # a comma inside a string is left alone
    with pytest.raises(JSONExtractionError):
        extract_json("The answer is 42.")
    with pytest.raises(JSONExtractionError):
        extract_json('{"reasoning_process": "cut off mid')
    with pytest.raises(JSONExtractionError):
        extract_json("{'a': None}")  # Python literals are not JSON and are never evaluated
    with pytest.raises(JSONExtractionError):
        extract_json('["x"]', expect=dict)
    with pytest.raises(JSONExtractionError):
        extract_json("   ")
