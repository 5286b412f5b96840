"""The open_clip region scorer (grounder ``clip``), its proposal sources, threshold fitting, split and CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from refineg.cli import main
from refineg.data import Entity, Example, read_jsonl
from refineg.stages.grounding import GroundingQuery, create_grounder, list_grounders
from refineg.stages.grounding.proposals import create_proposals, list_proposals
from refineg.stages.grounding.region_fit import fit_threshold, grounding_report, split_by_image
from refineg.stages.grounding.region_head import apply_deltas
from tests.stages.grounding_scenes import make_scenes, write_scenes

OPEN_CLIP_ASSETS = Path(__file__).resolve().parents[1] / "assets" / "open_clip"
TINY = "refineg-tiny-vit"


@pytest.fixture(scope="module", autouse=True)
def _tiny_open_clip_config():
    import open_clip

    torch.set_num_threads(1)
    if TINY not in open_clip.list_models():
        open_clip.add_model_config(OPEN_CLIP_ASSETS)


@pytest.fixture(scope="module")
def astronaut():
    from skimage import data

    return Image.fromarray(data.astronaut())


def _check_boxes(boxes, width, height):
    for x1, y1, x2, y2 in boxes:
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def test_registries():
    assert "clip" in list_grounders()
    assert list_proposals() == ["file", "grid", "mtcnn", "selective_search"]


def test_grid_proposals_cover_the_image_at_each_scale():
    img = Image.new("RGB", (300, 200))
    boxes = create_proposals("grid").propose(img, [], "PER")
    assert len(boxes) == 1 + 9 + 25
    assert boxes[0] == [0.0, 0.0, 300.0, 200.0]
    _check_boxes(boxes, 300, 200)
    tiles = create_proposals("grid", scales=[2], overlap=0.0).propose(img, [], "LOC")
    assert tiles == [[0, 0, 150, 100], [150, 0, 300, 100], [0, 100, 150, 200], [150, 100, 300, 200]]


def test_selective_search_proposals(astronaut):
    src = create_proposals("selective_search", max_boxes=30, max_side=128, min_area=0.02)
    boxes = src.propose(astronaut, [], "OTHER")
    assert 5 <= len(boxes) <= 30
    assert boxes[0] == [0.0, 0.0, 512.0, 512.0]
    _check_boxes(boxes, 512, 512)
    areas = [(b[2] - b[0]) * (b[3] - b[1]) / 512**2 for b in boxes]
    assert min(areas) >= 0.015  # min_area of the downscaled image, up to rounding
    assert len({tuple(b) for b in boxes}) == len(boxes)


def test_mtcnn_finds_the_astronauts_face_for_per_only(astronaut):
    src = create_proposals("mtcnn", fallback="grid")
    per = src.propose(astronaut, [], "PER")
    assert len(per) == 3  # face, head and shoulders, upper body
    x1, y1, x2, y2 = per[0]
    assert 150 < (x1 + x2) / 2 < 300 and 50 < (y1 + y2) / 2 < 200 and 40 < x2 - x1 < 150
    assert per[1][0] < x1 and per[1][3] > y2 and per[2][3] > per[1][3]
    _check_boxes(per, 512, 512)
    assert src.propose(astronaut, [], "LOC") == create_proposals("grid").propose(astronaut, [], "LOC")
    assert src.cache_key("PER") != src.cache_key("ORG") == src.cache_key("LOC")
    blank = Image.new("RGB", (120, 90), (128, 128, 128))
    assert len(src.propose(blank, [], "PER")) == 35  # no face: fallback


def test_file_proposals_jsonl_json_lookup_and_errors(tmp_path):
    img = Image.new("RGB", (100, 80))
    jsonl = tmp_path / "props.jsonl"
    jsonl.write_text(
        json.dumps(
            {
                "image": "1015763.jpg",
                "boxes": [[0, 0, 10, 10], [5, 5, 150, 60], [1, 1, 1, 9]],
                "scores": [0.2, 0.9, 0.5],
            }
        )
        + "\n\n"
        + json.dumps({"image": "post7", "boxes": [[10, 10, 20, 20]]})
        + "\n"
    )
    src = create_proposals("file", path=str(jsonl), min_score=0.1)
    # sorted by score, clipped to the image, the zero-width box dropped
    assert src.propose(img, ["x/1015763.jpg", "1015763.jpg"], "PER") == [[5, 5, 100, 60], [0, 0, 10, 10]]
    assert src.propose(img, ["other.jpg", "other", "post7"], "PER") == [[10, 10, 20, 20]]
    assert src.propose(img, ["nope"], "PER") == []
    assert len(create_proposals("file", path=str(jsonl), fallback="grid").propose(img, ["nope"], "PER")) == 35
    assert create_proposals("file", path=str(jsonl), min_score=0.3).propose(img, ["1015763.jpg"], "PER") == [
        [5, 5, 100, 60]
    ]
    as_json = tmp_path / "props.json"
    as_json.write_text(json.dumps({"a": [[1, 2, 30, 40]]}))
    assert create_proposals("file", path=str(as_json)).propose(img, ["a"], "LOC") == [[1, 2, 30, 40]]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "a", "boxes": []}) + "\n" + json.dumps({"boxes": []}) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        create_proposals("file", path=str(bad))
    with pytest.raises(ValueError, match="2 scores for 1 boxes"):
        (tmp_path / "s.jsonl").write_text(json.dumps({"image": "a", "boxes": [[0, 0, 5, 5]], "scores": [1, 2]}))
        create_proposals("file", path=str(tmp_path / "s.jsonl"))


def _post():
    return Example(
        "p1",
        "Astronaut Eileen Collins with NASA".split(),
        image="a.jpg",
        entities=[Entity(1, 3, "PER"), Entity(4, 5, "ORG")],
    )


def test_clip_grounder_answers_a_candidate_box_or_none(astronaut):
    grounder = create_grounder("clip", model_name=TINY)
    assert grounder.label == f"clip {TINY} (random weights), grid proposals, cosine scores"
    assert grounder.embedder.pretrained is None and grounder.head is None and grounder.threshold is None
    grid = create_proposals("grid").propose(astronaut, [], "")
    small = astronaut.resize((200, 120))
    ok, missing, other = grounder.ground(
        [GroundingQuery(_post(), astronaut), GroundingQuery(_post(), None), GroundingQuery(_post(), small)]
    )
    assert ok.status == "ok" and len(ok.boxes) == 2
    # answered boxes are proposals, rounded to 0.01 px
    assert all(len(b) == 1 and any(b[0] == pytest.approx(g, abs=0.005) for g in grid) for b in ok.boxes)
    assert all(v == round(v, 2) for b in [*ok.boxes, *other.boxes] for v in b[0])  # no 899.9999999999999
    assert ok.info["candidates"] == [35, 35] and all(-1 <= s <= 1 for s in ok.info["best_scores"])
    assert other.status == "ok" and all(len(b) == 1 for b in other.boxes)
    _check_boxes([b[0] for b in other.boxes], 200, 120)
    assert missing.status == "no_image" and missing.boxes == [[], []]

    # one set of region features per image, shared by its entities (and by posts through a cache)
    cache = {}
    cands = grounder.candidates(_post(), astronaut, cache=cache)
    assert cands[0].group is cands[1].group and len(cache) == 1
    assert grounder.candidates(_post(), astronaut, cache=cache)[0].group is cands[0].group
    assert cands[0].boxes == grid and cands[0].group.size == (512, 512)
    assert cands[0].group.regions.shape == (35, 32) and cands[0].group.image.shape == (32,)
    # sentence context (the default): the entity's text feature is [prompt feature, post text feature]
    assert grounder.sentence_context and grounder.text_dim == 64
    assert cands[0].text.shape == (64,) and cands[0].type == "PER"

    # the prompt feature is the mean of its prompts' text embeddings, the rest the whole post's embedding
    clip = grounder.embedder.clip
    prompts = grounder.prompts(_post())
    assert prompts[0] == ["a photo of Eileen Collins, a person.", "Eileen Collins"]
    with torch.no_grad():
        expected_text = clip.model.encode_text(clip.tokenizer(prompts[0])).mean(0)
        expected_post = clip.model.encode_text(clip.tokenizer(["Astronaut Eileen Collins with NASA"]))[0]
    assert torch.allclose(cands[0].text[:32], expected_text, atol=1e-5)
    assert torch.allclose(cands[0].text[32:], expected_post, atol=1e-5)
    assert torch.allclose(cands[1].text[32:], expected_post, atol=1e-5)
    plain = create_grounder("clip", model_name=TINY, sentence_context=False)
    assert plain.candidates(_post(), astronaut)[0].text.shape == (32,)

    # the reported best score is the cosine of the answered box's region feature with the entity's prompts
    for cand, boxes, best in zip(cands, ok.boxes, ok.info["best_scores"]):
        scores = F.normalize(cand.group.regions, dim=-1) @ F.normalize(cand.text[:32], dim=0)
        assert boxes[0] == pytest.approx(cand.boxes[int(scores.argmax())], abs=0.005)
        assert best == pytest.approx(float(scores.max()), abs=1e-5)

    high, low = sorted(ok.info["best_scores"], reverse=True)
    assert high > low  # random towers still tell the two prompts apart
    grounder.threshold = (high + low) / 2
    answered = grounder.ground([GroundingQuery(_post(), astronaut)])[0]
    assert [bool(b) for b in answered.boxes] == [s >= grounder.threshold for s in ok.info["best_scores"]]
    assert sum(bool(b) for b in answered.boxes) == 1 and answered.info["threshold"] == grounder.threshold
    assert answered.info["best_scores"] == ok.info["best_scores"]  # scores are reported even when not answered
    grounder.threshold = low - 1e-6  # inclusive (scores are reported rounded to 6 decimals)
    assert all(grounder.ground([GroundingQuery(_post(), astronaut)])[0].boxes)
    grounder.threshold = 2.0  # above any cosine
    assert grounder.ground([GroundingQuery(_post(), astronaut)])[0].boxes == [[], []]


def test_prompts_use_text_and_type_word():
    from refineg.stages.grounding.clip_scorer import DEFAULT_TYPE_WORDS, entity_prompts

    prompts = entity_prompts(
        "Eileen Collins", "PER", ["a photo of {text}, a {type_word}.", "{type}: {text}"], DEFAULT_TYPE_WORDS
    )
    assert prompts == ["a photo of Eileen Collins, a person.", "PER: Eileen Collins"]
    assert entity_prompts("Lisbon", "CITY", ["{text}, a {type_word}"], DEFAULT_TYPE_WORDS) == ["Lisbon, a city"]


def test_weights_are_never_fetched_silently(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_grounder("clip", model_name=TINY, pretrained=str(tmp_path / "missing.bin"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="may download"):
        create_grounder("clip", model_name="ViT-B-32", pretrained="openai")


def test_fit_threshold_maximises_grounding_accuracy():
    # answering the two best (both right) and none for the rest (gold none) is perfect
    thr, acc = fit_threshold(
        [0.9, 0.8, 0.7, 0.6, None], [True, True, False, False, False], [False, False, True, True, True]
    )
    assert thr == pytest.approx(0.75) and acc == 1.0
    thr, acc = fit_threshold([0.3, 0.2], [True, True], [False, False])
    assert thr is None and acc == 1.0  # always answer
    thr, acc = fit_threshold([0.3, 0.2], [False, False], [True, True])
    assert thr > 0.3 and acc == 1.0  # never answer
    # equal scores cannot be split; the tie between both cuts goes to answering
    thr, acc = fit_threshold([0.5, 0.5], [True, False], [False, True])
    assert thr is None and acc == 0.5
    # 0.4 right, 0.35 wrong-but-gold-has-a-box, 0.1 gold none: the best cut is below 0.35 or at 0.375 (2/3 each)
    thr, acc = fit_threshold([0.4, 0.35, 0.1], [True, False, False], [False, False, True])
    assert acc == pytest.approx(2 / 3) and thr == pytest.approx(0.225)
    assert fit_threshold([], [], []) == (None, 0.0)
    with pytest.raises(ValueError, match="differ in length"):
        fit_threshold([0.1], [True, False], [False])


def test_grounding_report_counts_acc_none_accuracy_and_types():
    gold = [("PER", [[0, 0, 10, 10]]), ("PER", [[0, 0, 10, 10]]), ("LOC", [[20, 20, 40, 40]]), ("LOC", []), ("PER", [])]
    answers = [
        (0.9, [0, 0, 10, 9]),  # IoU 0.9: hit
        (0.8, [5, 0, 15, 10]),  # IoU 1/3: miss
        (0.2, [20, 20, 40, 40]),  # right box, but below a 0.5 threshold
        (0.7, [0, 0, 5, 5]),  # gold none, answered above 0.5: wrong
        (None, None),
    ]  # no candidate: none, right
    rep = grounding_report(answers, gold, threshold=0.5)
    assert (rep["acc"], rep["with_box"], rep["none_acc"], rep["without_box"]) == (pytest.approx(1 / 3), 3, 0.5, 2)
    assert rep["accuracy"] == pytest.approx(2 / 5)
    assert rep["per_type"]["PER"] == {
        "acc": 0.5,
        "with_box": 2,
        "none_acc": 1.0,
        "without_box": 1,
        "accuracy": pytest.approx(2 / 3),
    }
    assert rep["per_type"]["LOC"] == {"acc": 0.0, "with_box": 1, "none_acc": 0.0, "without_box": 1, "accuracy": 0.0}
    always = grounding_report(answers, gold, threshold=None)
    assert (always["acc"], always["none_acc"]) == (pytest.approx(2 / 3), 0.5)
    assert grounding_report([], [], None) == {
        "acc": None,
        "with_box": 0,
        "none_acc": None,
        "without_box": 0,
        "accuracy": None,
        "per_type": {},
    }


def test_split_by_image_keeps_each_image_on_one_side():
    rng = np.random.default_rng(0)
    posts = [
        Example(f"p{i}-{k}", ["x"], image=f"img{i}.jpg") for i in range(20) for k in range(int(rng.integers(1, 4)))
    ]  # 1-3 captions per image
    posts += [Example("noimg-a", ["x"]), Example("noimg-b", ["x"])]  # no image: each post is its own group
    train, dev = split_by_image(posts, dev_fraction=0.25, seed=3)
    key = lambda p: p.image or p.id  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in dev}
    assert len({key(p) for p in dev}) == round(0.25 * 22)
    assert sorted(p.id for p in train + dev) == sorted(p.id for p in posts)
    # each side keeps the input order, and the split is seeded
    train_ids, dev_ids = {p.id for p in train}, {p.id for p in dev}
    assert [p.id for p in train] == [p.id for p in posts if p.id in train_ids]
    assert [p.id for p in dev] == [p.id for p in posts if p.id in dev_ids]
    again = split_by_image(list(reversed(posts)), dev_fraction=0.25, seed=3)
    assert {key(p) for p in again[1]} == {key(p) for p in dev}
    assert {key(p) for p in split_by_image(posts, 0.25, seed=4)[1]} != {key(p) for p in dev}
    assert len({key(p) for p in split_by_image(posts, 0.5, seed=3)[1]}) == 11
    assert len(split_by_image(posts, 0.0, seed=3)[1]) >= 1  # dev is never empty


def _ground_entities(grounder, posts, images_dir):
    """Per entity (posts with an image), ``(best score, answered box)`` through :meth:`ground` and its gold."""
    got, gold = [], []
    for post in posts:
        path = Path(images_dir) / post.image
        if not path.is_file():
            continue
        result = grounder.ground([GroundingQuery(post, Image.open(path).convert("RGB"))])[0]
        for ent, boxes, best in zip(post.entities, result.boxes, result.info["best_scores"]):
            got.append((best, boxes[0] if boxes else None))
            gold.append((ent.type, ent.boxes))
    return got, gold


def test_cli_fit_region_scorer_trains_head_saves_state_and_grounder_loads_it(tmp_path, capsys):
    train_scenes = make_scenes(24, seed=5)
    train_posts, props = write_scenes(train_scenes, tmp_path, "train")
    dev_scenes = make_scenes(8, seed=6)
    dev_posts, _ = write_scenes(dev_scenes, tmp_path, "dev")
    # one dev post without image; one entity with no gold box, on an image another post also asks about
    lines = dev_posts.read_text().splitlines()
    extra = Example("noimg", ["the", "rocket"], image="gone.png", entities=[Entity(1, 2, "OTHER", boxes=[])])
    absent = Example(
        "absent",
        ["no", "telescope", "here"],
        image=dev_scenes[0].post.image,
        entities=[Entity(1, 2, "OTHER", boxes=[])],
    )
    dev_posts.write_text("\n".join(lines + [json.dumps(extra.to_dict()), json.dumps(absent.to_dict())]) + "\n")
    out = tmp_path / "scorer.pt"
    rc = main(
        [
            "fit-region-scorer",
            "--data",
            str(dev_posts),
            "--images",
            str(tmp_path),
            "--out",
            str(out),
            "--train",
            str(train_posts),
            f"model_name={TINY}",
            "proposals=file",
            f"proposal_kwargs.path={props}",
            "head.epochs=3",
            "head.hidden=32",
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "(1 posts without image left out)" in printed and "trained head" in printed
    assert "dev Acc@0.5" in printed and "none-accuracy" in printed
    assert "split by image" not in printed  # --train given: no split, nothing written
    assert not out.with_suffix(".train.jsonl").exists() and not out.with_suffix(".dev.jsonl").exists()

    state = torch.load(out, weights_only=True)
    fit = state["fit"]
    n_dev = sum(len(s.post.entities) for s in dev_scenes)
    assert fit["dev_entities"] == n_dev + 1 and fit["dev_posts_without_image"] == 1
    assert fit["train_entities"] == sum(len(s.post.entities) for s in train_scenes)
    assert fit["types"] == sorted({e.type for s in train_scenes for e in s.post.entities}) == ["OTHER", "PER"]
    assert fit["split"] == {"train": str(train_posts), "dev": str(dev_posts)} and fit["dev_fraction"] is None
    dev = fit["dev"]
    assert (dev["with_box"], dev["without_box"]) == (n_dev, 1)
    assert set(dev["per_type"]) == {"OTHER", "PER"} and dev["per_type"]["OTHER"]["without_box"] == 1
    assert sum(r["with_box"] for r in dev["per_type"].values()) == n_dev
    # the fitted threshold is the best cut: at least as good as always answering and as never answering
    assert fit["dev_accuracy"] == pytest.approx(dev["accuracy"])
    assert fit["dev_accuracy"] >= max(fit["dev_always_answer"]["accuracy"], 1 / (n_dev + 1))
    assert fit["dev_always_answer"]["none_acc"] == 0.0 and "val/acc" in fit["head_metrics"]
    assert state["format"] == "refineg-region-scorer/2" and state["threshold"] == fit["threshold"]
    assert state["head"]["config"]["hidden"] == 32 and state["head"]["config"]["refine"] is True
    assert state["model_name"] == TINY and state["pretrained"] is None and state["proposals"] == "file"

    # random towers (pretrained=None) are not in the state file: the fit built them right after seeding torch
    # with `seed` (0), so the same seed rebuilds the same towers here
    torch.manual_seed(0)
    grounder = create_grounder("clip", state=str(out))
    assert grounder.head is not None and not grounder.head.training and grounder.threshold == fit["threshold"]
    assert grounder.proposal_name == "file" and grounder.proposal_kwargs == {"path": str(props)}
    assert grounder.label == f"clip {TINY} (random weights), file proposals, trained head scores"
    # the loaded state reproduces the dev report through `ground`
    got, gold = _ground_entities(grounder, read_jsonl(dev_posts), tmp_path)
    assert len(got) == n_dev + 1
    again = grounding_report(got, gold, None)
    assert (again["acc"], again["none_acc"]) == (pytest.approx(dev["acc"]), pytest.approx(dev["none_acc"]))

    # the reported best score is the head's probability of the answered box, moved by its deltas
    scene = dev_scenes[0]
    result = grounder.ground([GroundingQuery(scene.post, scene.image)])[0]
    cands = grounder.candidates(scene.post, scene.image)
    probs, deltas = grounder.head.predict(cands)
    assert probs.shape == (len(cands), len(scene.candidates) + 1)
    assert torch.allclose(probs.sum(-1), torch.ones(len(cands)))
    for row, (boxes, best) in enumerate(zip(result.boxes, result.info["best_scores"])):
        k = int(probs[row, 1:].argmax())
        assert best == pytest.approx(float(probs[row, 1 + k]), abs=1e-5) and 0 < best < 1
        refined = apply_deltas(cands[row].boxes[k], deltas[row, k].tolist(), *scene.image.size)
        answered = grounder.threshold is None or best >= grounder.threshold
        assert boxes == ([pytest.approx(refined, abs=0.006)] if answered else [])
    grounder.threshold = max(result.info["best_scores"]) + 1e-3
    assert grounder.ground([GroundingQuery(scene.post, scene.image)])[0].boxes == [[] for _ in cands]
    grounder.threshold = None
    assert all(grounder.ground([GroundingQuery(scene.post, scene.image)])[0].boxes)

    with pytest.raises(ValueError, match="fitted with open_clip"):
        create_grounder("clip", state=str(out), model_name="ViT-B-32")
    not_state = tmp_path / "other.pt"
    torch.save({"format": "something-else"}, not_state)
    with pytest.raises(ValueError, match="not a region scorer state file"):
        create_grounder("clip", state=str(not_state))
    assert (
        main(
            [
                "fit-region-scorer",
                "--data",
                str(dev_posts),
                "--images",
                str(tmp_path),
                "--out",
                str(out),
                "heads.epochs=3",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "bad fit-region-scorer configuration" in err, err


def test_fit_without_train_splits_by_image_and_ground_uses_the_state(tmp_path, capsys):
    """No ``--train``: a seeded split by image written next to the state; the state plugs into `refineg ground`."""
    scenes = make_scenes(6, seed=7)
    posts_path, props = write_scenes(scenes, tmp_path, "all")
    # two more captions of two photos: the split must keep them with their image
    second = [
        Example(f"{s.post.id}-b", s.post.tokens, image=s.post.image, entities=s.post.entities[:1]) for s in scenes[:2]
    ]
    posts_path.write_text(posts_path.read_text() + "".join(json.dumps(p.to_dict()) + "\n" for p in second))
    posts = read_jsonl(posts_path)
    state = tmp_path / "fit" / "scorer.pt"
    assert (
        main(
            [
                "fit-region-scorer",
                "--data",
                str(posts_path),
                "--images",
                str(tmp_path),
                "--out",
                str(state),
                f"model_name={TINY}",
                "proposals=file",
                f"proposal_kwargs.path={props}",
                "dev_fraction=0.34",
                "split_seed=1",
                "head.epochs=3",
                "head.hidden=32",
                "head.refine=false",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    train_path, dev_path = state.with_suffix(".train.jsonl"), state.with_suffix(".dev.jsonl")
    assert f"split by image (seed 1): {train_path}, {dev_path}" in printed
    train, dev = read_jsonl(train_path), read_jsonl(dev_path)
    assert not {p.image for p in train} & {p.image for p in dev}
    assert len({p.image for p in dev}) == round(0.34 * 6) == 2
    assert sorted(p.id for p in train + dev) == sorted(p.id for p in posts)
    assert [p.id for p in dev] == [p.id for p in split_by_image(posts, 0.34, 1)[1]]
    fit = torch.load(state, weights_only=True)["fit"]
    assert fit["split"] == {"train": str(train_path), "dev": str(dev_path)}
    assert (fit["dev_fraction"], fit["split_seed"], fit["dev_images"]) == (0.34, 1, 2)
    assert fit["dev_entities"] == sum(len(p.entities) for p in dev)
    assert fit["train_entities"] == sum(len(p.entities) for p in train)
    assert fit["config"]["head"]["refine"] is False

    out = tmp_path / "grounded.jsonl"
    rc = main(
        [
            "ground",
            "--pred",
            str(posts_path),
            "--pool",
            str(posts_path),
            "--images",
            str(tmp_path),
            "--out",
            str(out),
            "grounder.name=clip",
            f"grounder.kwargs.state={state}",
            "selector.mode=none",
            "never_grounded=[]",
        ]
    )
    assert rc == 0
    gold = {p.id: p for p in posts}
    grounded = read_jsonl(out)
    assert [p.id for p in grounded] == list(gold)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    assert summary["entities"] == sum(len(p.entities) for p in posts)
    candidates = {
        tuple(round(float(v), 2) for v in b)
        for line in props.read_text().splitlines()
        for b in json.loads(line)["boxes"]
    }  # answers are rounded to 0.01 px
    for post in grounded:
        assert [(e.start, e.end, e.type) for e in post.entities] == [
            (e.start, e.end, e.type) for e in gold[post.id].entities
        ]
        for ent in post.entities:  # without refinement, an answer is one of the proposals
            assert len(ent.boxes) <= 1 and all(tuple(b) in candidates for b in ent.boxes)
