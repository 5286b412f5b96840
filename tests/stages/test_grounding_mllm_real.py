"""`refineg ground` round trip on real photos of mixed sizes through the loopback grounding oracle.

The oracle (tests/llm/grounding_oracle.py) answers each chat with the gold boxes in the coordinates of the query
image it received, in the box convention under test (``llm.box_format``: pixels of the image sent, 0-1000,
0-1, or Qwen2.5-VL's resized grid), and rejects chats whose demonstration boxes are not in that convention for the
demonstration images it received, or whose prompt does not state the convention. Whatever `refineg ground`
returns must then lie on the gold boxes after resizing, demonstration conversion and mapping back. With a
response schema in the request (``llm.structured_output``) the oracle answers in the schema's form and checks the
answer against it. The Flickr30k Entities photos come from ../shared (skipped when absent); a drawn-image variant
always runs.
"""

import json
import os
import re
from collections import defaultdict
from pathlib import Path

import pytest
import torch
from defusedxml import ElementTree
from PIL import Image, ImageDraw

from refineg.cli import main
from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.metrics import box_iou
from tests.llm.chat_server import ChatServer
from tests.llm.grounding_oracle import GoldPost, GroundingOracle

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SHARED_FLICKR = Path(__file__).resolve().parents[3] / "shared" / "data" / "flickr30k-entities"
OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"
FLICKR_TYPES = ["people", "clothing", "bodyparts", "animals", "vehicles", "instruments", "scene", "other", "notvisual"]

_PHRASE = re.compile(r"\[/EN#(\d+)/([^\s\]]+) ([^\]]*)\]")


def flickr_post(root: Path, fid: str, caption: int = 0) -> tuple[Example, GoldPost]:
    """Post ``fid`` with one caption: gold boxes in the pixels of the file present, and the oracle's view.

    The oracle holds the boxes in the annotation's ``<size>`` frame (the original photo), the post holds them
    scaled to the image file here (526 of the photos are shrunk to ~200 px).
    """
    ann = ElementTree.parse(root / "Annotations" / f"{fid}.xml").getroot()
    frame = (int(ann.findtext("size/width")), int(ann.findtext("size/height")))
    boxes: dict[str, list[list[float]]] = defaultdict(list)
    for obj in ann.iter("object"):
        bb = obj.find("bndbox")
        if bb is not None:
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            for name in obj.iter("name"):
                boxes[name.text].append(box)
    line = (root / "Sentences" / f"{fid}.txt").read_text(encoding="utf-8").splitlines()[caption]
    tokens: list[str] = []
    spans = []
    pos = 0
    for m in _PHRASE.finditer(line):
        tokens += line[pos : m.start()].split()
        start = len(tokens)
        tokens += m.group(3).split()
        etype = m.group(2).split("/")[0]
        spans.append((start, len(tokens), etype, [] if etype == "notvisual" else boxes.get(m.group(1), [])))
        pos = m.end()
    tokens += line[pos:].split()
    with Image.open(root / "images" / f"{fid}.jpg") as img:
        img.load()
        picture = img.copy()
    sx, sy = picture.width / frame[0], picture.height / frame[1]
    entities = [Entity(s, e, t, [[b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy] for b in bs]) for s, e, t, bs in spans]
    post = Example(fid, tokens, f"{fid}.jpg", entities, source="gold")
    gold = GoldPost(" ".join(tokens), frame, [(" ".join(tokens[s:e]), t, bs) for s, e, t, bs in spans], picture)
    return post, gold


def drawn_post(pid: str, size: tuple[int, int], text: str, ents, seed: int) -> tuple[Example, GoldPost]:
    """A post whose picture is drawn here: a noisy background and a filled rectangle per gold box.

    ``ents``: ``(first word, number of words, type, boxes)``; boxes in the drawn picture's pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    w, h = size
    base = torch.randint(40, 216, (3,), generator=gen)
    noise = torch.randint(-25, 26, (h, w, 3), generator=gen)
    picture = Image.fromarray((base + noise).clamp(0, 255).to(torch.uint8).numpy())
    draw = ImageDraw.Draw(picture)
    for k, (_, _, _, boxes) in enumerate(ents):
        colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=gen))
        for box in boxes:
            draw.rectangle(box, fill=colour, outline=(255 - 60 * k % 255, 0, 0), width=3)
    tokens = text.split()
    entities = []
    for word, n, etype, boxes in ents:
        start = tokens.index(word)
        entities.append(Entity(start, start + n, etype, [[float(v) for v in b] for b in boxes]))
    post = Example(pid, tokens, f"{pid}.png", entities, source="gold")
    gold = GoldPost(text, size, [(" ".join(tokens[e.start : e.end]), e.type, e.boxes) for e in entities], picture)
    return post, gold


def drawn_posts() -> tuple[list[tuple[Example, GoldPost]], list[tuple[Example, GoldPost]]]:
    """Queries of mixed sizes (wide, tall, odd) and a pool of demonstrations, all drawn here."""
    queries = [
        drawn_post(
            "q-wide",
            (1600, 900),
            "Obama meets Merkel near the Reichstag in Berlin",
            [
                ("Obama", 1, "PER", [(100, 150, 520, 860)]),
                ("Merkel", 1, "PER", [(700, 120, 1130, 880)]),
                ("Reichstag", 1, "ORG", [(1200, 40, 1590, 400), (1250, 500, 1500, 700)]),
                ("Berlin", 1, "LOC", []),
            ],
            1,
        ),
        drawn_post(
            "q-tall",
            (300, 500),
            "Messi lifts the World Cup trophy",
            [("Messi", 1, "PER", [(20, 60, 190, 490)]), ("World", 3, "OTHER", [])],
            2,
        ),
        drawn_post(
            "q-odd",
            (999, 1001),
            "A Tesla car parked by Apple headquarters",
            [("Tesla", 1, "ORG", [(33, 517, 611, 987)]), ("Apple", 1, "ORG", [(640, 11, 998, 473)])],
            3,
        ),
    ]
    pool = [
        drawn_post(
            "g-vga",
            (640, 480),
            "Merkel speaks at the Bundestag",
            [("Merkel", 1, "PER", [(50, 40, 300, 470)]), ("Bundestag", 1, "ORG", [(320, 10, 630, 300)])],
            4,
        ),
        drawn_post(
            "g-tiny",
            (120, 80),
            "Obama waves in Chicago",
            [("Obama", 1, "PER", [(10, 5, 60, 78)]), ("Chicago", 1, "LOC", [])],
            5,
        ),
        drawn_post(
            "g-big",
            (1200, 1300),
            "Tesla opens a factory near Apple offices",
            [("Tesla", 1, "ORG", [(100, 700, 1100, 1250)]), ("Apple", 1, "ORG", [])],
            6,
        ),
    ]
    return queries, pool


@pytest.fixture
def oracle_server():
    server = ChatServer().start()
    yield server
    server.stop()


def _ground(
    tmp_path: Path,
    server: ChatServer,
    queries,
    pool,
    images: Path,
    *extra: str,
    image_of: dict[str, str] | None = None,
    box_format: str = "pixel",
    max_pixels: int = 12845056,
    grounder_box_format: str | None = None,
) -> tuple[dict, list, GroundingOracle]:
    """Writes the posts, installs the oracle, runs `refineg ground`; returns the summary, grounded posts, oracle.

    The predicted posts are the gold queries without boxes (``image_of`` swaps their image files); the oracle and
    grounder use ``box_format`` (and ``max_pixels`` for ``qwen2.5-vl``); ``grounder_box_format`` gives the
    grounder another one.
    """
    oracle = GroundingOracle([g for _, g in queries + pool], box_format=box_format, max_pixels=max_pixels).install(
        server
    )
    preds = []
    for post, _ in queries:
        pred = Example.from_dict(post.to_dict())
        pred.source = "predicted"
        pred.image = (image_of or {}).get(pred.id, pred.image)
        for ent in pred.entities:
            ent.boxes = []
        preds.append(pred)
    write_jsonl(preds, tmp_path / "pred.jsonl")
    write_jsonl([p for p, _ in pool], tmp_path / "pool.jsonl")
    out = tmp_path / "run" / "G.jsonl"
    rc = main(
        [
            "ground",
            "--pred",
            str(tmp_path / "pred.jsonl"),
            "--pool",
            str(tmp_path / "pool.jsonl"),
            "--images",
            str(images),
            "--out",
            str(out),
            f"mllm.llm.base_url={server.base_url}",
            "mllm.llm.model=test-vl",
            "mllm.llm.api_key_env=''",
            "mllm.llm.max_retries=0",
            "mllm.max_boxes=10",
            "selector.k=2",
            f"mllm.llm.box_format={grounder_box_format or box_format}",
            f"mllm.llm.max_pixels={max_pixels}",
            *extra,
        ]
    )
    summary = json.loads(out.with_name("G.summary.json").read_text())
    # rc 1 only when every request failed (the outputs are written all the same)
    assert rc == (1 if summary["posts_asked"] and summary["posts_failed"] == summary["posts_asked"] else 0)
    return summary, read_jsonl(out), oracle


def _check_on_gold(
    summary: dict,
    grounded: list[Example],
    queries,
    never_grounded: set[str],
    max_side: int,
    oracle: GroundingOracle | None = None,
) -> list[float]:
    """Every box on its gold box, none where gold has none, and the summary counts; returns the IoUs.

    On gold: IoU >= 0.95, and each coordinate within what the roundings allow: half a unit of the model's
    coordinates (the oracle answers whole units of the convention's frame for the image it received, 0.001 for
    ``norm1``) plus half an original pixel (ReFineG rounds the mapped-back box). Boxes of a few units cannot reach
    IoU 0.95 through these two roundings, so the photos and drawings have boxes large enough for their sizes; the
    coordinate bound holds for any box.
    """
    gold = {p.id: p for p, _ in queries}
    pictures = {p.id: g.picture.size for p, g in queries}
    ious = []
    counts = {"entities": 0, "grounded": 0, "boxes": 0, "never_grounded_type": 0, "model_none": 0}
    assert [p.id for p in grounded] == [p.id for p, _ in queries]
    for post in grounded:
        meta = post.meta["grounding"]
        assert meta["status"] == "ok" and not meta.get("problems"), (post.id, meta)
        assert len(meta["demos"]) == 2 and post.id not in meta["demos"]
        answer = json.loads(meta["answer"])  # the paper's format, or the schema's wrapped form, as the oracle answered
        if oracle is not None and oracle.structured[0] is not None:
            assert set(answer) == {"entities"}
            answer = answer["entities"]
        assert answer and all(set(item) == {"entity", "entity_type", "bounding_box"} for item in answer)
        for ent, want, reason in zip(post.entities, gold[post.id].entities, meta["reasons"], strict=True):
            counts["entities"] += 1
            if want.type in never_grounded:
                assert reason == "never_grounded_type" and ent.boxes == []
                counts["never_grounded_type"] += 1
            elif not want.boxes:
                assert reason == "model_none" and ent.boxes == [], (post.id, ent, reason)
                counts["model_none"] += 1
            else:
                assert reason == "grounded" and len(ent.boxes) == len(want.boxes), (post.id, ent, want)
                (w, h), sent = pictures[post.id], _sent_size(pictures[post.id], max_side)
                fw, fh = oracle.frame(sent) if oracle is not None else sent
                unit = 0.001 if oracle is not None and oracle.box_format == "norm1" else 1.0
                slack = [0.5 * unit * w / fw + 0.5 + 1e-6, 0.5 * unit * h / fh + 0.5 + 1e-6] * 2
                counts["grounded"] += 1
                counts["boxes"] += len(ent.boxes)
                for got, box in zip(ent.boxes, want.boxes, strict=True):
                    ious.append(box_iou(got, box))
                    assert ious[-1] >= 0.95, (post.id, ent.text(post.tokens), got, box, ious[-1])
                    assert all(abs(a - b) <= e for a, b, e in zip(got, box, slack)), (post.id, got, box, slack)
    assert summary["posts"] == len(queries) and summary["posts_asked"] == len(queries)
    assert summary["posts_failed"] == 0 and summary["posts_without_image"] == 0
    assert summary["posts_with_answer_problems"] == 0 and summary["entities_failed"] == 0
    assert {k: summary[k] for k in ("entities", "grounded", "boxes")} == {
        k: counts[k] for k in ("entities", "grounded", "boxes")
    }
    assert summary["none_by_reason"] == {
        "never_grounded_type": counts["never_grounded_type"],
        "below_groundability": 0,
        "no_image": 0,
        "model_none": counts["model_none"],
        "answer_problem": 0,
        "failed": 0,
    }
    assert summary["mllm"]["requests"] == len(queries) and summary["mllm"]["ok"] == len(queries)
    return ious


def _sent_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    from refineg.llm import fit_longest_side

    return fit_longest_side(*size, max_side)


def _check_received(oracle: GroundingOracle, queries, pool, sizes: dict[str, tuple[int, int]], max_side: int):
    """One request per query, each with its image and 2 demonstrations, every image shrunk to `max_side` (if
    larger) with its aspect kept to the pixel."""
    by_sentence = {g.sentence: p.id for p, g in queries + pool}
    assert sorted(by_sentence[s.sentence] for s in oracle.seen) == sorted(p.id for p, _ in queries)
    for seen in oracle.seen:
        assert len(seen.demos) == 2
        for sentence, got in [(seen.sentence, seen.size), *seen.demos]:
            (w, h), long = sizes[by_sentence[sentence]], max(sizes[by_sentence[sentence]])
            if long <= max_side:
                assert got == (w, h)
            else:
                assert max(got) == max_side and abs(min(got) - min(w, h) * max_side / long) <= 0.5 + 1e-9
                assert (got[0] >= got[1]) == (w >= h)


# ---------------------------------------------------------------------------------------------- real photos
# queries: three ~200 px photos (shrunk from 500 px originals: 146 x 200, 200 x 150, 180 x 118) and three full-size
# ones (417 x 279, 375 x 500, 500 x 332), with entities of one to five boxes, without box and `notvisual` ones;
# demonstrations from four other photos of both kinds. max_side 150 resizes every photo, 256 the full-size ones,
# 1000 none.
REAL_QUERIES = [
    ("1248940539", 0),
    ("1253264731", 0),
    ("114051287", 1),
    ("1732436777", 2),
    ("1802092493", 0),
    ("2074244690", 0),
]
REAL_POOL = [("1024138940", 1), ("1056359656", 1), ("172092461", 0), ("1773928579", 0)]


@pytest.fixture(scope="module")
def flickr():
    if not (SHARED_FLICKR / "images").is_dir():
        pytest.skip(f"Flickr30k Entities photos not found at {SHARED_FLICKR}")
    return ([flickr_post(SHARED_FLICKR, *q) for q in REAL_QUERIES], [flickr_post(SHARED_FLICKR, *q) for q in REAL_POOL])


@pytest.mark.parametrize("max_side", [150, 256, 1000])
def test_real_photos_come_back_on_gold(tmp_path, oracle_server, flickr, max_side):
    """Pixel boxes of the image sent (the default convention), sent with the response schema (the default)."""
    queries, pool = flickr
    sizes = {p.id: g.picture.size for p, g in queries + pool}
    assert {max(s) for s in sizes.values()} >= {200, 500}  # both shrunk and full-size photos
    summary, grounded, oracle = _ground(
        tmp_path,
        oracle_server,
        queries,
        pool,
        SHARED_FLICKR / "images",
        f"mllm.llm.max_side={max_side}",
        "selector.mode=text",
        f"types=[{','.join(FLICKR_TYPES)}]",
        "never_grounded=[notvisual]",
    )
    assert oracle_server.errors == []
    _check_received(oracle, queries, pool, sizes, max_side)
    resized = [p.id for p, g in queries if max(g.picture.size) > max_side]
    assert len(resized) == {150: 6, 256: 3, 1000: 0}[max_side]
    ious = _check_on_gold(summary, grounded, queries, {"notvisual"}, max_side, oracle)
    assert summary["grounded"] >= 12 and summary["none_by_reason"]["never_grounded_type"] >= 1
    assert oracle.structured == ["json_schema"] * len(queries)
    print(
        f"max_side {max_side}: {len(ious)} boxes, min IoU {min(ious):.4f}, resized queries {resized}, "
        f"largest pixel difference {max(oracle.pixel_diffs):.2f}"
    )


# every convention on the real photos; qwen2.5-vl with a small max_pixels as well (its grid then shrinks the image)
CONVENTION_CASES = [
    ("norm1000", 12845056, 1000),
    ("norm1", 12845056, 256),
    ("qwen2.5-vl", 12845056, 1000),
    ("qwen2.5-vl", 40_000, 256),
]


@pytest.mark.parametrize(("box_format", "max_pixels", "max_side"), CONVENTION_CASES)
def test_real_photos_come_back_on_gold_in_every_convention(
    tmp_path, oracle_server, flickr, box_format, max_pixels, max_side
):
    queries, pool = flickr
    sizes = {p.id: g.picture.size for p, g in queries + pool}
    summary, grounded, oracle = _ground(
        tmp_path,
        oracle_server,
        queries,
        pool,
        SHARED_FLICKR / "images",
        f"mllm.llm.max_side={max_side}",
        "selector.mode=text",
        f"types=[{','.join(FLICKR_TYPES)}]",
        "never_grounded=[notvisual]",
        box_format=box_format,
        max_pixels=max_pixels,
    )
    assert oracle_server.errors == []
    _check_received(oracle, queries, pool, sizes, max_side)
    ious = _check_on_gold(summary, grounded, queries, {"notvisual"}, max_side, oracle)
    assert summary["grounded"] >= 12
    if box_format == "qwen2.5-vl":  # the grid differs from the image sent for every photo here
        assert all(oracle.frame(s.size) != s.size for s in oracle.seen)
    print(f"{box_format} (max_pixels {max_pixels}), max_side {max_side}: {len(ious)} boxes, min IoU {min(ious):.4f}")


# ---------------------------------------------------------------------------------------------- drawn images
@pytest.fixture
def drawn(tmp_path):
    import open_clip

    torch.set_num_threads(1)
    if "refineg-tiny-vit" not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)
    queries, pool = drawn_posts()
    folder = tmp_path / "img"
    folder.mkdir()
    for post, gold in queries + pool:
        gold.picture.save(folder / post.image)
    return queries, pool, folder


def _drawn_overrides(max_side: int) -> list[str]:
    return [f"mllm.llm.max_side={max_side}", "selector.mode=multimodal", "selector.image_model=refineg-tiny-vit"]


DRAWN_CASES = [
    ("pixel", 1000, "json_schema"),
    ("pixel", 300, "off"),
    ("pixel", 300, "guided_json"),
    ("norm1000", 1000, "json_schema"),
    ("norm1000", 300, "off"),
    ("norm1", 1000, "guided_json"),
    ("norm1", 300, "json_schema"),
    ("qwen2.5-vl", 1000, "json_schema"),
    ("qwen2.5-vl", 300, "off"),
]


@pytest.mark.parametrize(("box_format", "max_side", "structured"), DRAWN_CASES)
def test_drawn_images_come_back_on_gold(tmp_path, oracle_server, drawn, box_format, max_side, structured):
    queries, pool, folder = drawn
    sizes = {p.id: g.picture.size for p, g in queries + pool}
    summary, grounded, oracle = _ground(
        tmp_path,
        oracle_server,
        queries,
        pool,
        folder,
        *_drawn_overrides(max_side),
        f"mllm.llm.structured_output={structured}",
        box_format=box_format,
    )
    assert oracle_server.errors == []
    _check_received(oracle, queries, pool, sizes, max_side)
    # max_side 1000: 1600 x 900 -> 1000 x 562 and 999 x 1001 -> 998 x 1000 are resized, 300 x 500 is not
    resized = [p.id for p, g in queries if max(g.picture.size) > max_side]
    assert resized == (["q-wide", "q-odd"] if max_side == 1000 else ["q-wide", "q-tall", "q-odd"])
    ious = _check_on_gold(summary, grounded, queries, {"LOC"}, max_side, oracle)
    assert summary["grounded"] == 6 and summary["boxes"] == 7
    assert summary["none_by_reason"]["never_grounded_type"] == 1 and summary["none_by_reason"]["model_none"] == 1
    assert "random weights" in summary["selector"]
    assert oracle.structured == [None if structured == "off" else structured] * 3
    print(f"drawn, {box_format}, max_side {max_side}, {structured}: {len(ious)} boxes, min IoU {min(ious):.4f}")


@pytest.mark.parametrize(
    "fault", ["unscaled_demo_boxes", "demo_boxes_for_another_size", "wrong_images", "another_box_format"]
)
def test_oracle_rejects_what_a_real_model_would_get_wrong(tmp_path, oracle_server, drawn, monkeypatch, fault):
    """The server's checks bite: demonstration boxes in original pixels or scaled for a 10% smaller image, a query
    sent with another image, or a grounder speaking pixels to a norm1000 model."""
    from refineg.llm import ImageScale
    from refineg.stages.grounding import prompts

    queries, pool, folder = drawn
    image_of = None
    real = prompts.demo_answer
    if fault == "unscaled_demo_boxes":
        monkeypatch.setattr(
            prompts, "demo_answer", lambda post, scale: real(post, ImageScale(scale.original_size, scale.original_size))
        )
    elif fault == "demo_boxes_for_another_size":
        monkeypatch.setattr(
            prompts,
            "demo_answer",
            lambda post, scale: real(
                post,
                ImageScale(scale.original_size, (round(scale.sent_size[0] * 0.9), round(scale.sent_size[1] * 0.9))),
            ),
        )
    elif fault == "another_box_format":
        summary, grounded, _ = _ground(
            tmp_path, oracle_server, queries, pool, folder, *_drawn_overrides(100), box_format="norm1000",
            grounder_box_format="pixel",
        )  # fmt: skip
        assert summary["posts_failed"] == 3 and len(oracle_server.errors) == 3
        assert all("do not state the norm1000 box convention" in e for e in oracle_server.errors)
        return
    else:  # q-wide gets q-odd's picture (another aspect), q-odd a different drawing of its own size
        _, decoy = drawn_post("decoy", (999, 1001), "decoy", [], 7)
        decoy.picture.save(folder / "decoy.png")
        image_of = {"q-wide": "q-odd.png", "q-odd": "decoy.png"}
    summary, grounded, _ = _ground(
        tmp_path, oracle_server, queries, pool, folder, *_drawn_overrides(100), image_of=image_of
    )
    errors = oracle_server.errors
    if fault != "wrong_images":  # every demonstration image is resized at max_side 100
        assert summary["posts_failed"] == 3 and len(errors) == 3
        why = "is not inside" if fault == "unscaled_demo_boxes" else "is not the gold box"
        assert all(why in e for e in errors), errors
    else:
        assert summary["posts_failed"] == 2 and len(errors) == 2
        assert any("does not have the aspect" in e for e in errors), errors
        assert any("is not this post's picture" in e for e in errors), errors
        assert [p.meta["grounding"]["status"] for p in grounded] == ["failed", "ok", "failed"]
    assert all("400" in p.meta["grounding"]["error"] for p in grounded if p.meta["grounding"]["status"] == "failed")
