"""Box coordinate conventions: Qwen's smart_resize rule, original <-> model conversions, rounding and clipping."""

import random

import pytest

from refineg.llm import ImageScale, LLMConfig, create_llm_backend
from refineg.llm.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, BoxConvention, smart_resize

CONVENTIONS = ["pixel", "norm1000", "norm1", "qwen2.5-vl"]


def test_smart_resize_known_sizes():
    # (height, width) -> (height, width): each side to the nearest multiple of 28
    assert smart_resize(1080, 1920) == (1092, 1932)
    assert smart_resize(562, 1000) == (560, 1008)
    # 28 x 56 = 1568 px < min 3136: both sides scaled by sqrt(2) and rounded up (1.41 -> 2, 2.83 -> 3)
    assert smart_resize(28, 56) == (56, 84)
    # Python's round is half to even: 42 / 28 = 1.5 -> 2, 70 / 28 = 2.5 -> 2
    assert smart_resize(42, 280) == (56, 280)
    assert smart_resize(70, 280) == (56, 280)
    # too many pixels: scaled down by sqrt(area / max_pixels) and rounded *down*
    assert smart_resize(1000, 2000, max_pixels=200_000) == (308, 616)
    # too few: scaled up and rounded *up*
    assert smart_resize(10, 20, min_pixels=10_000) == (84, 168)


def test_smart_resize_bounds_hold_for_many_sizes():
    rng = random.Random(0)
    for _ in range(2000):
        h, w = rng.randint(1, 5000), rng.randint(1, 5000)
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ValueError, match="aspect ratio"):
                smart_resize(h, w)
            continue
        lo, hi = rng.choice([(QWEN_MIN_PIXELS, QWEN_MAX_PIXELS), (256 * 28 * 28, 1280 * 28 * 28)])
        rh, rw = smart_resize(h, w, min_pixels=lo, max_pixels=hi)
        assert rh % 28 == 0 and rw % 28 == 0 and rh >= 28 and rw >= 28
        assert rh * rw <= hi, (h, w, rh, rw)
        assert rh * rw >= lo, (h, w, rh, rw)
        if min(rh, rw) > 28:  # (a side held at the 28-pixel minimum cannot keep the aspect)
            # the aspect ratio is kept up to the rounding of each side to 28 pixels (at most 28 pixels each)
            assert abs(rw / rh - w / h) <= (w / h) * (28 / (rh - 28) + 28 / (rw - 28)) * 1.01, (h, w, rh, rw)


def test_frames():
    sent = (1000, 562)
    assert BoxConvention("pixel").frame(sent) == (1000.0, 562.0)
    assert BoxConvention("norm1000").frame(sent) == (1000.0, 1000.0)
    assert BoxConvention("norm1").frame(sent) == (1.0, 1.0)
    assert BoxConvention("qwen2.5-vl").frame(sent) == (1008.0, 560.0)
    assert BoxConvention("qwen2.5-vl", 3136, 200_000).frame(sent) == (588.0, 308.0)
    with pytest.raises(ValueError, match="box_format"):
        BoxConvention("xyxy")


@pytest.mark.parametrize("name", CONVENTIONS)
def test_round_trip_error_is_at_most_the_rounding(name):
    """Original -> model coordinates rounded as a model writes them -> original: each coordinate within half a
    model unit (in original pixels) plus half a pixel (the final rounding)."""
    rng = random.Random(1)
    conv = BoxConvention(name)
    for _ in range(500):
        orig = (rng.randint(20, 4000), rng.randint(20, 4000))
        if max(orig) / min(orig) > 150:
            continue
        scale = ImageScale.for_image(orig, rng.choice([None, 1000, 448]), conv)
        fw, fh = scale.frame
        w, h = orig
        x1, y1 = rng.uniform(0, w - 2), rng.uniform(0, h - 2)
        box = [x1, y1, rng.uniform(x1 + 1, w), rng.uniform(y1 + 1, h)]
        sent = scale.format_box(box)
        if name == "norm1":
            assert all(isinstance(v, float) and 0 <= v <= 1 and round(v, 4) == v for v in sent)
        else:
            assert all(isinstance(v, int) for v in sent)
            assert 0 <= sent[0] <= sent[2] <= fw and 0 <= sent[1] <= sent[3] <= fh
        back = scale.to_original(sent)
        unit = 1e-4 if name == "norm1" else 1.0
        slack = [0.5 * unit * w / fw + 0.5 + 1e-6, 0.5 * unit * h / fh + 0.5 + 1e-6] * 2
        assert all(abs(a - b) <= s for a, b, s in zip(back, box, slack, strict=True)), (name, orig, box, sent, back)
        assert back == [float(round(v)) for v in back]


def test_known_values_per_convention():
    orig, sent = (2000, 1000), (1000, 500)
    box = [200.0, 100.0, 1000.0, 900.0]
    want = {
        "pixel": [100, 50, 500, 450],
        "norm1000": [100, 100, 500, 900],
        "norm1": [0.1, 0.1, 0.5, 0.9],
        # the 1000 x 500 image becomes 1008 x 504 in Qwen2.5-VL's grid
        "qwen2.5-vl": [101, 50, 504, 454],
    }
    for name, expected in want.items():
        scale = ImageScale(orig, sent, BoxConvention(name))
        assert scale.format_box(box) == expected, name
        assert scale.to_sent(box) == pytest.approx(
            [v * f for v, f in zip(box, [scale.frame[0] / 2000, scale.frame[1] / 1000] * 2)]
        )
    # answers outside the frame are clipped to the image; rounding is to whole original pixels
    assert ImageScale(orig, sent, BoxConvention("norm1000")).to_original([-50, 10, 1200, 999.6]) == [0, 10, 2000, 1000]
    assert ImageScale(orig, sent, BoxConvention("norm1")).to_original([0.12345, 0, 2, 0.5]) == [247, 0, 2000, 500]
    assert ImageScale(orig, sent, BoxConvention("norm1")).to_original([0.12345, 0, 1, 0.5], round_to_int=False) == [
        pytest.approx(246.9),
        0.0,
        2000.0,
        500.0,
    ]
    raw = ImageScale(orig, sent, BoxConvention("pixel")).to_original([-5, -5, 600, 600], clip=False)
    assert raw == [-10, -10, 1200, 1200]


def test_pixel_is_the_old_behaviour():
    scale = ImageScale((1600, 900), (1000, 562))
    assert scale.convention.name == "pixel"
    sx, sy = 1000 / 1600, 562 / 900
    assert scale.to_sent([100, 150, 520, 860]) == pytest.approx([100 * sx, 150 * sy, 520 * sx, 860 * sy])
    assert scale.to_original([62, 94, 325, 537]) == [round(62 / sx), round(94 / sy), round(325 / sx), round(537 / sy)]


def test_backend_scale_carries_the_configured_convention(tmp_path):
    llm = create_llm_backend(
        "replay", model="m", cache_path=str(tmp_path / "c.sqlite"), box_format="qwen2.5-vl", max_pixels=100_000
    )
    scale = llm.image_scale((1600, 900))
    assert scale.sent_size == (1000, 562) and scale.convention == BoxConvention("qwen2.5-vl", 3136, 100_000)
    assert scale.frame == (420.0, 224.0)
    assert "x from 0 to 420, y from 0 to 224" in scale.box_note()
    llm.close()
    with pytest.raises(ValueError, match="box_format"):
        LLMConfig(box_format="xywh")
    with pytest.raises(ValueError, match="min_pixels"):
        LLMConfig(min_pixels=10, max_pixels=5)
