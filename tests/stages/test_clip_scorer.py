"""The open_clip region scorer (grounder ``clip``), its proposal sources, threshold fitting and CLI."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from refineg.cli import main
from refineg.data import Entity, Example, read_jsonl
from refineg.stages.grounding import GroundingQuery, create_grounder, list_grounders
from refineg.stages.grounding.proposals import create_proposals, list_proposals
from refineg.stages.grounding.region_fit import fit_threshold
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
    jsonl.write_text(json.dumps({"image": "1015763.jpg", "boxes": [[0, 0, 10, 10], [5, 5, 150, 60], [1, 1, 1, 9]],
                                 "scores": [0.2, 0.9, 0.5]}) + "\n\n"
                     + json.dumps({"image": "post7", "boxes": [[10, 10, 20, 20]]}) + "\n")
    src = create_proposals("file", path=str(jsonl), min_score=0.1)
    # sorted by score, clipped to the image, the zero-width box dropped
    assert src.propose(img, ["x/1015763.jpg", "1015763.jpg"], "PER") == [[5, 5, 100, 60], [0, 0, 10, 10]]
    assert src.propose(img, ["other.jpg", "other", "post7"], "PER") == [[10, 10, 20, 20]]
    assert src.propose(img, ["nope"], "PER") == []
    assert len(create_proposals("file", path=str(jsonl), fallback="grid").propose(img, ["nope"], "PER")) == 35
    assert create_proposals("file", path=str(jsonl), min_score=0.3).propose(img, ["1015763.jpg"], "PER") == [
        [5, 5, 100, 60]]
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
    return Example("p1", "Astronaut Eileen Collins with NASA".split(), image="a.jpg",
                   entities=[Entity(1, 3, "PER"), Entity(4, 5, "ORG")])


def test_clip_grounder_answers_a_candidate_box_or_none(astronaut):
    grounder = create_grounder("clip", model_name=TINY)
    assert grounder.label == f"clip {TINY} (random weights), grid proposals, cosine scores"
    grid = create_proposals("grid").propose(astronaut, [], "")
    small = astronaut.resize((200, 120))
    ok, missing, other = grounder.ground([GroundingQuery(_post(), astronaut), GroundingQuery(_post(), None),
                                          GroundingQuery(_post(), small)])
    assert ok.status == "ok" and len(ok.boxes) == 2
    assert all(len(b) == 1 and b[0] in grid for b in ok.boxes)
    assert ok.info["candidates"] == [35, 35] and all(-1 <= s <= 1 for s in ok.info["best_scores"])
    _check_boxes([b[0] for b in other.boxes], 200, 120)
    assert missing.status == "no_image" and missing.boxes == [[], []]

    # the reported best score is the cosine of the answered crop with the entity's prompts
    cands = grounder.candidates(_post(), astronaut)
    scores = cands[0].crops @ cands[0].text
    assert ok.boxes[0][0] == cands[0].boxes[int(scores.argmax())]
    assert ok.info["best_scores"][0] == pytest.approx(float(scores.max()), abs=1e-5)

    grounder.threshold = float(np.mean(ok.info["best_scores"]))
    high, low = sorted(ok.info["best_scores"], reverse=True)
    answered = grounder.ground([GroundingQuery(_post(), astronaut)])[0].boxes
    assert [bool(b) for b in answered] == [s >= grounder.threshold for s in ok.info["best_scores"]]
    grounder.threshold = 2.0  # above any cosine
    assert grounder.ground([GroundingQuery(_post(), astronaut)])[0].boxes == [[], []]


def test_prompts_use_text_and_type_word():
    from refineg.stages.grounding.clip_scorer import DEFAULT_TYPE_WORDS, entity_prompts

    prompts = entity_prompts("Eileen Collins", "PER", ["a photo of {text}, a {type_word}.", "{type}: {text}"],
                             DEFAULT_TYPE_WORDS)
    assert prompts == ["a photo of Eileen Collins, a person.", "PER: Eileen Collins"]


def test_weights_are_never_fetched_silently(monkeypatch, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        create_grounder("clip", model_name=TINY, pretrained=str(tmp_path / "missing.bin"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ValueError, match="may download"):
        create_grounder("clip", model_name="ViT-B-32", pretrained="openai")


def test_fit_threshold_maximises_grounding_accuracy():
    # answering the two best (both right) and none for the rest (gold none) is perfect
    thr, acc = fit_threshold([0.9, 0.8, 0.7, 0.6, None], [True, True, False, False, False],
                             [False, False, True, True, True])
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


def test_cli_fit_region_scorer_trains_head_saves_state_and_grounder_loads_it(tmp_path, capsys):
    train_scenes = make_scenes(24, seed=5)
    train_posts, props = write_scenes(train_scenes, tmp_path, "train")
    dev_scenes = make_scenes(8, seed=6)
    dev_posts, _ = write_scenes(dev_scenes, tmp_path, "dev")
    # one dev post without image, one entity with no gold box
    lines = dev_posts.read_text().splitlines()
    extra = Example("noimg", ["the", "rocket"], image="gone.png", entities=[Entity(1, 2, "OTHER", boxes=[])])
    dev_posts.write_text("\n".join(lines + [json.dumps(extra.to_dict())]) + "\n")
    out = tmp_path / "scorer.pt"
    rc = main(["fit-region-scorer", "--data", str(dev_posts), "--images", str(tmp_path), "--out", str(out),
               "--train", str(train_posts), f"model_name={TINY}", "proposals=file", f"proposal_kwargs.path={props}",
               "head.epochs=3", "head.hidden=32"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "1 posts without image left out" in printed and "trained head" in printed

    state = torch.load(out, weights_only=True)
    fit = state["fit"]
    assert fit["dev_entities"] == sum(len(s.post.entities) for s in dev_scenes)
    assert fit["train_entities"] == sum(len(s.post.entities) for s in train_scenes)
    assert fit["dev_accuracy"] >= max(fit["dev_accuracy_always_answer"], fit["dev_accuracy_always_none"])
    assert state["head"]["config"]["hidden"] == 32 and state["model_name"] == TINY and state["pretrained"] is None

    grounder = create_grounder("clip", state=str(out))
    assert grounder.head is not None and grounder.threshold == fit["threshold"]
    assert grounder.proposal_name == "file" and "trained head" in grounder.label
    scene = dev_scenes[0]
    result = grounder.ground([GroundingQuery(scene.post, scene.image)])[0]
    for cand, boxes, best in zip(grounder.candidates(scene.post, scene.image), result.boxes,
                                 result.info["best_scores"]):
        probs = grounder.head.box_probs(cand)
        assert best == pytest.approx(float(probs.max()), abs=1e-5) and 0 < best < 1
        assert boxes == ([cand.boxes[int(probs.argmax())]] if grounder.threshold is None
                         or best >= grounder.threshold else [])
    with pytest.raises(ValueError, match="fitted with open_clip"):
        create_grounder("clip", state=str(out), model_name="ViT-B-32")
    with pytest.raises(SystemExit, match="bad fit-region-scorer configuration"):
        main(["fit-region-scorer", "--data", str(dev_posts), "--images", str(tmp_path), "--out", str(out),
              "heads.epochs=3"])


def test_ground_command_with_the_clip_grounder_and_a_fitted_state(tmp_path, capsys):
    """`refineg ground grounder.name=clip`: the fitted state file plugs into the grounding runner unchanged."""
    dev_posts, props = write_scenes(make_scenes(6, seed=7), tmp_path, "dev")
    state = tmp_path / "scorer.pt"
    assert main(["fit-region-scorer", "--data", str(dev_posts), "--images", str(tmp_path), "--out", str(state),
                 f"model_name={TINY}", "proposals=file", f"proposal_kwargs.path={props}"]) == 0
    out = tmp_path / "grounded.jsonl"
    rc = main(["ground", "--pred", str(dev_posts), "--pool", str(dev_posts), "--images", str(tmp_path),
               "--out", str(out), "grounder.name=clip", f"grounder.kwargs.state={state}", "selector.mode=none",
               "never_grounded=[]"])
    assert rc == 0
    gold = {p.id: p for p in read_jsonl(dev_posts)}
    grounded = read_jsonl(out)
    assert [p.id for p in grounded] == list(gold)
    summary = json.loads(out.with_suffix(".summary.json").read_text())
    n_ents = sum(len(p.entities) for p in gold.values())
    assert summary["entities"] == n_ents
    candidates = {tuple(map(float, b)) for line in props.read_text().splitlines()
                  for b in json.loads(line)["boxes"]}
    for post in grounded:
        assert [(e.start, e.end, e.type) for e in post.entities] == \
            [(e.start, e.end, e.type) for e in gold[post.id].entities]
        for ent in post.entities:
            assert len(ent.boxes) <= 1 and all(tuple(b) in candidates for b in ent.boxes)
