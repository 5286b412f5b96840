import json

import pytest
from PIL import Image

from refineg.data import Entity, Example, read_jsonl, write_jsonl
from refineg.stages.refinement import (
    Answer,
    OracleBackend,
    RefineConfig,
    RefinementBackend,
    create_refinement_backend,
    load_refine_config,
    locate_span,
    refine_examples,
    select_delegated,
)
from tests.llm.chat_server import ChatServer

TOKENS = ["Barack", "Obama", "visits", "New", "York", "City", "today"]


def _pred(*ents, pid="p1", tokens=TOKENS, image=None):
    return Example(
        pid,
        list(tokens),
        image,
        [Entity(s, e, t, uncertainty=u) for s, e, t, u in ents],
        source="predicted",
        image_size=(100, 80) if image else None,
    )


class Scripted(RefinementBackend):
    """Answers from a dict keyed by (check, start, end); anything else fails."""

    label = "scripted (test)"

    def __init__(self, answers):
        self.answers, self.calls = answers, []

    def _answer(self, check, queries):
        out = []
        for q in queries:
            self.calls.append((check, q.entity.start, q.entity.end))
            a = self.answers.get((check, q.entity.start, q.entity.end))
            out.append(
                a
                if isinstance(a, Answer)
                else Answer("ok", a)
                if a is not None
                else Answer("failed", None, "server_error")
            )
        return out

    def span_check(self, queries, types):
        return self._answer("span", queries)

    def type_check(self, queries, types):
        return self._answer("type", queries)


def test_selection_by_tau_rate_budget_and_random():
    preds = [_pred((0, 2, "PER", 0.9), (3, 6, "LOC", 0.2)), _pred((0, 1, "ORG", 0.6), (2, 3, "PER", 0.5), pid="p2")]
    sel = lambda **kw: [(d.post, d.entity) for d in select_delegated(preds, RefineConfig(**kw))[0]]  # noqa: E731
    assert sel() == [(0, 0), (1, 0)]  # u > 0.5, most uncertain first; 0.5 itself is kept
    assert sel(tau=0.1) == [(0, 0), (1, 0), (1, 1), (0, 1)]
    assert sel(delegation_rate=0.5) == [(0, 0), (1, 0)]
    assert sel(delegation_rate=0.25) == [(0, 0)]
    assert sel(delegation_rate=0.0) == []
    assert sel(tau=0.1, call_budget=3) == [(0, 0)]  # 2 checks per entity: 2 fit, the next needs 4
    assert sel(tau=0.1, call_budget=3, checks=["type"]) == [(0, 0), (1, 0), (1, 1)]
    delegated, counts = select_delegated(preds, RefineConfig(tau=0.1, call_budget=3))
    assert counts == {"entities": 4, "selected": 4, "over_budget": 3}
    rand = sel(tau=0.55, random_delegation=True, seed=3)
    assert len(rand) == 2 and rand == sel(tau=0.55, random_delegation=True, seed=3)
    preds[0].meta["uncertainty"] = {"head": "x", "fields": [{"span": 0.1, "type": 0.9}, {"span": 0.7, "type": 0.1}]}
    preds[1].meta["uncertainty"] = {"head": "x", "fields": [{"span": 0.0, "type": 0.0}, {"span": 0.0, "type": 0.0}]}
    d, _ = select_delegated(preds, RefineConfig(per_field=True))
    assert [(x.post, x.entity, x.checks) for x in d] == [(0, 0, ("type",)), (0, 1, ("span",))]
    with pytest.raises(ValueError, match="no uncertainty"):
        select_delegated([_pred((0, 2, "PER", None))], RefineConfig())


def test_locate_span_rules():
    ent = Entity(3, 5, "LOC")
    assert locate_span(TOKENS, "New York City", ent, 2) == (3, 6)
    assert locate_span(TOKENS, "new  york", ent, 2) == (3, 5)
    assert locate_span(TOKENS, "Barack Obama", ent, 2) is None  # does not overlap the checked span
    assert locate_span(TOKENS, "Paris", ent, 2) is None
    assert locate_span(TOKENS, "visits New York City today", ent, 1) is None  # moves the start by 1, end by 2


def test_merge_outcomes_on_hand_made_cases():
    preds = [_pred((0, 1, "PER", 0.9), (3, 5, "ORG", 0.8), (6, 7, "OTHER", 0.7)), _pred((0, 2, "PER", 0.95), pid="p2")]
    backend = Scripted(
        {
            ("span", 0, 1): {"reasoning_process": "..", "corrected_entity": "Barack Obama"},
            ("span", 3, 5): {"reasoning_process": "..", "corrected_entity": "Mars Base Alpha"},  # invented
            ("span", 6, 7): {"reasoning_process": "..", "corrected_entity": "Null"},
            ("type", 0, 2): {"reasoning_process": "..", "corrected_type": "per", "corrected_bounding_box": "Null"},
            ("type", 3, 5): {
                "reasoning_process": "..",
                "corrected_type": "LOC",
                "corrected_bounding_box": [1, 2, 3, 4],
            },
            # p2: span check fails (no answer scripted), type check answers an unknown type
        }
    )
    backend.answers[("type", 0, 2)] = backend.answers[("type", 0, 2)]
    out, report = refine_examples(preds, RefineConfig(tau=0.5), backend)
    assert [(e.start, e.end, e.type) for e in out[0].entities] == [(0, 2, "PER"), (3, 5, "LOC")]
    assert out[0].entities[1].boxes == []  # no image: boxes of the answer are ignored
    assert [(e.start, e.end, e.type) for e in out[1].entities] == [(0, 2, "PER")]  # failure: kept
    assert report["outcomes"]["span/corrected"] == 1 and report["outcomes"]["span/rejected_invented"] == 1
    assert report["outcomes"]["span/dropped"] == 1 and report["outcomes"]["span/failed"] == 1
    assert report["backend_failures_kept_small_model"] >= 1
    assert report["delegated"] == 4 and report["entities"] == 4
    assert preds[0].entities[0].end == 1  # input untouched
    assert out[0].meta["refinement_backend"] == "scripted (test)"
    checked = out[0].meta["refinement"]["checked"]
    assert checked[0]["outcomes"] == ["corrected", "type_kept"]
    # never adds: the number of entities can only go down without the missed-entity detector
    assert sum(len(p.entities) for p in out) <= sum(len(p.entities) for p in preds)


def test_overlapping_correction_is_rejected_and_drop_can_be_refused():
    preds = [_pred((0, 2, "PER", 0.9), (3, 5, "LOC", 0.1))]
    backend = Scripted(
        {("span", 0, 2): {"corrected_entity": "Obama visits New"}, ("type", 0, 2): {"corrected_type": "PER"}}
    )
    out, report = refine_examples(preds, RefineConfig(), backend)
    assert report["outcomes"]["span/rejected_overlap"] == 1 and out[0].entities[0].span == (0, 2)
    backend = Scripted({("span", 0, 2): {"corrected_entity": None}, ("type", 0, 2): {"corrected_type": "PER"}})
    out, report = refine_examples(preds, RefineConfig(allow_drop=False), backend)
    assert report["outcomes"]["span/drop_refused"] == 1 and len(out[0].entities) == 2


def test_missed_candidates_are_added_only_when_confirmed():
    pred = _pred((0, 2, "PER", 0.1))
    pred.meta["missed_candidates"] = [
        {"start": 3, "end": 5, "type": "LOC", "score": 0.7},
        {"start": 6, "end": 7, "type": "OTHER", "score": 0.6},
    ]
    backend = Scripted(
        {
            ("span", 3, 5): {"corrected_entity": "New York City"},
            ("span", 6, 7): {"corrected_entity": "Null"},
            ("type", 3, 6): {"corrected_type": "LOC"},
        }
    )
    out, report = refine_examples([pred], RefineConfig(), backend)
    assert [(e.start, e.end, e.type) for e in out[0].entities] == [(0, 2, "PER")]  # detector off by default
    out, report = refine_examples([pred], RefineConfig(missed=True), backend)
    assert [(e.start, e.end, e.type) for e in out[0].entities] == [(0, 2, "PER"), (3, 6, "LOC")]
    assert report["missed_candidates"] == 2 and report["missed_added"] == 1


def _gold():
    return Example(
        "p1",
        list(TOKENS),
        "p1.jpg",
        [Entity(0, 2, "PER", [[10, 10, 50, 60]]), Entity(3, 6, "LOC")],
        image_size=(100, 80),
    )


def test_oracle_fixes_what_it_sees_and_is_labelled_simulation(tmp_path):
    write_jsonl([_gold()], tmp_path / "gold.jsonl")
    preds = [_pred((0, 1, "ORG", 0.9), (3, 5, "LOC", 0.8), (6, 7, "OTHER", 0.7), image="p1.jpg")]
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 80)).save(tmp_path / "img" / "p1.jpg")
    cfg = RefineConfig(backend="oracle", gold=str(tmp_path / "gold.jsonl"), images_dir=str(tmp_path / "img"))
    backend = create_refinement_backend(cfg)
    assert isinstance(backend, OracleBackend) and backend.simulated
    out, report = refine_examples(preds, cfg, backend)
    assert [(e.start, e.end, e.type, e.boxes) for e in out[0].entities] == [
        (0, 2, "PER", [[10, 10, 50, 60]]),
        (3, 6, "LOC", []),
    ]
    assert report["backend"] == "oracle (simulation)" and report["simulated"]
    assert out[0].meta["refinement_backend"] == "oracle (simulation)"
    with pytest.raises(ValueError, match="gold"):
        create_refinement_backend(RefineConfig(backend="oracle"))
    noisy = RefineConfig(backend="noisy-oracle", gold=str(tmp_path / "gold.jsonl"), oracle_accuracy=1.0)
    out2, rep2 = refine_examples(preds, noisy, create_refinement_backend(noisy))
    assert [(e.start, e.end, e.type) for e in out2[0].entities] == [(0, 2, "PER"), (3, 6, "LOC")]
    assert "simulation" in rep2["backend"]
    never = RefineConfig(backend="noisy-oracle", gold=str(tmp_path / "gold.jsonl"), oracle_accuracy=0.0, seed=1)
    out3, _ = refine_examples(preds, never, create_refinement_backend(never))
    assert out3 == refine_examples(preds, never, create_refinement_backend(never))[0]  # seeded


def test_config_overrides_are_typed():
    cfg = load_refine_config(["tau=0.3", "llm.model=m", "checks=[type]", "delegation_rate=None"])
    assert cfg.tau == 0.3 and cfg.llm.model == "m" and cfg.checks == ["type"]
    with pytest.raises(ValueError, match="Did you mean"):
        load_refine_config(["tua=0.3"])
    with pytest.raises(ValueError, match="tau"):
        load_refine_config(["tau=2"])
    with pytest.raises(ValueError, match="checks"):
        load_refine_config(["checks=[box]"])


def test_mllm_path_against_loopback_server(tmp_path):
    """Span and type checks go to a real HTTP server with the image; boxes come back in sent pixels and are mapped
    to original pixels; a server failure keeps the small model's answer; the call budget stops cleanly."""
    server = ChatServer().start()
    try:

        def respond(prompt, n_images):
            if "corrected_entity" in prompt:
                assert n_images == 1
                text = "Barack Obama" if '"Obama"' in prompt else "New York"
                return "Let me think.\n" + json.dumps({"reasoning_process": "r", "corrected_entity": text})
            assert "50 x 40" in prompt  # the 100 x 80 image is sent at max_side 50
            return json.dumps(
                {"reasoning_process": "r", "corrected_type": "PER", "corrected_bounding_box": [5, 5, 25, 30]}
            )

        server.responder = respond
        (tmp_path / "img").mkdir()
        Image.new("RGB", (100, 80), "white").save(tmp_path / "img" / "p1.jpg")
        preds = [
            _pred((1, 2, "ORG", 0.9), (3, 5, "LOC", 0.1), image="p1.jpg"),
            _pred((3, 5, "LOC", 0.8), pid="p2", image="p1.jpg"),
        ]
        write_jsonl(preds, tmp_path / "pred.jsonl")
        llm = [
            f"llm.base_url={server.base_url}",
            "llm.model=test-vl",
            "llm.api_key_env=''",
            "llm.max_side=50",
            "llm.backoff_base_s=0.01",
            "llm.backoff_max_s=0.02",
            "llm.max_retries=0",
        ]
        cfg = load_refine_config([f"images_dir={tmp_path / 'img'}", *llm])
        from refineg.stages.refinement import RefinementPrompts, run_refine

        p2_span = RefinementPrompts.load(cfg.prompts_dir).span(TOKENS, "New York", "LOC", cfg.types)
        server.rules[p2_span] = ["500"]  # p2's span check fails (no retries configured)
        report = run_refine(cfg, tmp_path / "pred.jsonl", tmp_path / "out.jsonl")
        out = read_jsonl(tmp_path / "out.jsonl")
        assert [(e.start, e.end, e.type) for e in out[0].entities] == [(0, 2, "PER"), (3, 5, "LOC")]
        assert out[0].entities[0].boxes == [[10.0, 10.0, 50.0, 60.0]]  # sent pixels x 2
        # p2: its span check failed, so the span stays; its type check still ran (the server answers PER)
        assert [(e.start, e.end, e.type) for e in out[1].entities] == [(3, 5, "PER")]
        assert report["outcomes"]["span/failed"] == 1 and report["backend_failures_kept_small_model"] == 1
        assert report["usage"]["total"]["ok"] >= 2 and not report["simulated"]
        assert (tmp_path / "out.report.json").is_file() and (tmp_path / "llm_usage.json").is_file()
        # call budget of the backend: the first request is answered, the rest come back budget_exhausted
        cfg = load_refine_config(
            [f"images_dir={tmp_path / 'img'}", *llm, "llm.max_calls=1", "run_dir=" + str(tmp_path / "b")]
        )
        report = run_refine(cfg, tmp_path / "pred.jsonl", tmp_path / "b" / "out.jsonl")
        assert (
            report["outcomes"].get("span/budget_exhausted", 0) + report["outcomes"].get("type/budget_exhausted", 0) >= 2
        )
        assert len(read_jsonl(tmp_path / "b" / "out.jsonl")) == 2
    finally:
        server.stop()


def test_mllm_hostile_answers_are_invalid_answers_not_crashes(tmp_path, chat_server):
    """A 50,000-bracket answer is an invalid answer (the small model's answer stays, the run finishes), the object
    with the check's key wins over other JSON in the answer, and a type answer without a box key is counted."""

    def respond(prompt, n_images):
        if "corrected_entity" in prompt:
            if '"Obama"' in prompt:
                return (
                    '{"step": 1, "note": "first the name"} so {"reasoning_process": "r", '
                    '"corrected_entity": "Barack Obama"}'
                )
            return "[" * 50_000  # New York's span check
        return json.dumps({"reasoning_process": "r", "corrected_type": "PER", "region": [5, 5, 25, 30]})

    chat_server.responder = respond
    (tmp_path / "img").mkdir()
    Image.new("RGB", (100, 80), "white").save(tmp_path / "img" / "p1.jpg")
    write_jsonl([_pred((1, 2, "ORG", 0.9), (3, 5, "LOC", 0.8), image="p1.jpg")], tmp_path / "pred.jsonl")
    from refineg.stages.refinement import run_refine

    cfg = load_refine_config(
        [
            f"images_dir={tmp_path / 'img'}",
            f"llm.base_url={chat_server.base_url}",
            "llm.model=test-vl",
            "llm.api_key_env=''",
            "llm.max_retries=1",
            "llm.backoff_base_s=0.01",
            "llm.backoff_max_s=0.02",
        ]
    )
    for _ in range(2):  # the rerun (the invalid answer is asked again) must not crash either
        report = run_refine(cfg, tmp_path / "pred.jsonl", tmp_path / "out.jsonl")
        out = read_jsonl(tmp_path / "out.jsonl")[0]
        assert [(e.start, e.end, e.type) for e in out.entities] == [(0, 2, "PER"), (3, 5, "PER")]
        assert report["outcomes"]["span/corrected"] == 1 and report["outcomes"]["span/failed"] == 1
        assert report["outcomes"]["type/box_missing"] == 2 and "type/box_set" not in report["outcomes"]
        usage = report["usage"]["total"]
        assert usage["failures_by_kind"] == {"invalid_json": 1} and usage["retries_by_kind"] == {"invalid_json": 1}
