"""Who answers the delegated checks: a real MLLM, or a simulation built from gold data.

Every backend answers a list of :class:`Query` with one :class:`Answer` each, in the JSON shape of the prompts
(``{"reasoning_process", "corrected_entity"}`` / ``{"reasoning_process", "corrected_type",
"corrected_bounding_box"}``), boxes in original image pixels. Simulations say so in ``label`` ("... (simulation)"),
which ends up in every output.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from refineg.data import Entity, Example, read_jsonl
from refineg.errors import UsageError
from refineg.llm import build_llm_backend, system, user
from refineg.llm.answers import SPAN_CHECK, TYPE_BOX_CHECK, AnswerFormat
from refineg.registry import Registry

from .config import RefineConfig
from .prompts import RefinementPrompts

REFINEMENT_BACKENDS = Registry("refinement backend")


@dataclass
class Query:
    """One check of one entity.

    Attributes:
        post: The post (tokens, image name, size).
        entity: The entity to check (for a type check: after the span check's correction).
        image: Path of the post's image, or ``None``.
    """

    post: Example
    entity: Entity
    image: Path | None = None


@dataclass
class PostQuery:
    """One post sent whole (refinement mode ``release``).

    Attributes:
        post: The post with the tagger's entities.
        image: Path of the post's image, or ``None``.
    """

    post: Example
    image: Path | None = None


@dataclass
class Answer:
    """The backend's answer to a :class:`Query`.

    Attributes:
        status: ``ok``, ``failed`` or ``budget_exhausted``.
        parsed: The decoded JSON object (``ok`` only).
        error: Failure message.
    """

    status: str
    parsed: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """The backend answered with a JSON object."""
        return self.status == "ok" and isinstance(self.parsed, dict)


class RefinementBackend:
    """Base class of the check answerers."""

    #: Shown in every output; simulations end in "(simulation)".
    label: str = ""
    simulated: bool = False

    def span_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:
        """Answers span checks."""
        raise NotImplementedError

    def type_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:
        """Answers type-and-box checks."""
        raise NotImplementedError

    def entity_list(self, queries: Sequence[PostQuery], types: list[str], never_grounded: list[str]) -> list[Answer]:
        """Answers whole posts (mode ``release``).

        Each answer's ``parsed`` is ``{"entities": [{"entity", "entity_type", "bounding_box"}]}``, boxes a list in
        original image pixels.
        """
        raise NotImplementedError(f"{type(self).__name__} does not answer whole posts (refinement mode release)")

    def usage(self) -> dict[str, Any]:
        """Calls and tokens spent (empty for simulations)."""
        return {}

    def close(self) -> None:
        """Releases resources (writes ``llm_usage.json`` for the MLLM)."""


def create_refinement_backend(cfg: RefineConfig, run_dir: str | Path | None = None) -> RefinementBackend:
    """Builds the backend named by ``cfg.backend``.

    Raises:
        KeyError: Unknown name (the message lists the known ones).
    """
    return REFINEMENT_BACKENDS.create(cfg.backend, cfg=cfg, run_dir=run_dir)


def list_refinement_backends() -> list[str]:
    """Names of the registered refinement backends."""
    return REFINEMENT_BACKENDS.list()


@REFINEMENT_BACKENDS.register("mllm")
class MLLMBackend(RefinementBackend):
    """Asks a multimodal LLM (any :mod:`refineg.llm` backend) with the chain-of-thought prompts.

    Prompts come from ``cfg.prompts_dir``; boxes come back in the model's coordinates (``llm.box_format``) and are
    mapped to original pixels. Answers are validated against :data:`refineg.llm.answers.SPAN_CHECK` /
    :data:`~refineg.llm.answers.TYPE_BOX_CHECK` (sent as the response schema unless ``llm.structured_output=off``).
    """

    def __init__(self, cfg: RefineConfig, run_dir: str | Path | None = None) -> None:
        self.prompts = RefinementPrompts.load(cfg.prompts_dir)
        self.llm = build_llm_backend(cfg.llm, run_dir=run_dir)
        self.label = f"mllm {cfg.llm.backend}:{cfg.llm.model}"
        self.release_prompts_dir = cfg.release_prompts_dir

    def _ask(self, convs: list, queries: Sequence[Query], keys: tuple[str, ...], answer: AnswerFormat) -> list[Answer]:
        if not convs:
            return []
        items = [f"{q.post.id}:{q.entity.start}-{q.entity.end}" for q in queries]
        # the answer is the JSON object with one of the check's keys (not an object from the reasoning); an
        # answer without one is invalid, retried and counted by the LLM layer
        results = self.llm.chat_many(
            convs,
            stage="refinement",
            json_accept=lambda v: any(k in v for k in keys),
            answer=answer,
            items=items,
            progress=False,
        )
        return [Answer("ok", r.parsed) if r.ok else Answer(r.status, None, r.error) for r in results]

    def span_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:  # noqa: D102
        convs = []
        for q in queries:
            text = self.prompts.span(q.post.tokens, q.entity.text(q.post.tokens), q.entity.type, types)
            parts = [q.image, text] if q.image is not None else [text]
            convs.append([system(self.prompts.system), user(*parts)])
        return self._ask(convs, queries, ("corrected_entity",), SPAN_CHECK)

    def type_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:  # noqa: D102
        convs, scales = [], []
        for q in queries:
            scale = self.llm.image_scale(q.image) if q.image is not None else None
            text = self.prompts.type_box(q.post.tokens, q.entity.text(q.post.tokens), q.entity.type, types, scale)
            parts = [q.image, text] if q.image is not None else [text]
            convs.append([system(self.prompts.system), user(*parts)])
            scales.append(scale)
        answers = self._ask(convs, queries, ("corrected_type", "corrected_bounding_box"), TYPE_BOX_CHECK)
        for ans, scale in zip(answers, scales):
            box = ans.parsed.get("corrected_bounding_box") if ans.ok else None
            if isinstance(box, list):
                if scale is None or not _is_box(box):
                    ans.parsed["corrected_bounding_box"] = "invalid"
                else:
                    ans.parsed["corrected_bounding_box"] = scale.to_original([float(v) for v in box])
        return answers

    def entity_list(  # noqa: D102
        self, queries: Sequence[PostQuery], types: list[str], never_grounded: list[str]
    ) -> list[Answer]:
        from refineg.llm.answers import GROUNDING
        from refineg.stages.grounding.parse import clean_boxes, is_grounding_answer, raw_boxes
        from refineg.stages.grounding.prompts import GroundingPrompts, build_chat

        prompts = GroundingPrompts.load(self.release_prompts_dir)
        convs, scales = [], []
        for q in queries:
            scale = self.llm.image_scale(q.image) if q.image is not None else None
            if scale is not None:  # the grounding chat without demonstrations, boxes in the model's convention
                convs.append(build_chat(prompts, q.post, q.image, scale, [], types, never_grounded))
            else:
                ents = [{"entity": e.text(q.post.tokens), "entity_type": e.type} for e in q.post.entities]
                text = prompts.query.safe_substitute(
                    sentence=" ".join(q.post.tokens),
                    entities=json.dumps(ents, ensure_ascii=False),
                    image_size="no image",
                    box_range="none (no image: answer [] for every box)",
                )
                convs.append([system(prompts.system_text(types, never_grounded)), user(text)])
            scales.append(scale)
        results = self.llm.chat_many(
            convs,
            stage="refinement",
            json_accept=is_grounding_answer,
            answer=GROUNDING,
            items=[q.post.id for q in queries],
            progress=False,
        )
        answers = []
        for r, scale in zip(results, scales, strict=True):
            if not r.ok:
                answers.append(Answer(r.status, None, r.error))
                continue
            value = r.parsed
            if isinstance(value, dict):
                value = next(
                    (value[k] for k in ("entities", "results", "answer") if isinstance(value.get(k), list)), [value]
                )
            items = []
            for item in value:
                if not isinstance(item, dict) or "entity" not in item:
                    continue
                key = next((k for k in ("bounding_box", "bounding_boxes", "boxes", "box", "bbox") if k in item), None)
                boxes: list = []
                if scale is not None and key is not None:
                    boxes, _ = clean_boxes(raw_boxes(item[key])[0], scale, max_boxes=1)  # the release keeps one
                items.append({"entity": item["entity"], "entity_type": item.get("entity_type"), "bounding_box": boxes})
            answers.append(Answer("ok", {"entities": items}))
        return answers

    def usage(self) -> dict[str, Any]:  # noqa: D102
        return self.llm.usage.to_dict()

    def close(self) -> None:  # noqa: D102
        self.llm.close()


def _is_box(box: Any) -> bool:
    return (
        isinstance(box, list)
        and len(box) == 4
        and all(isinstance(v, (int, float)) for v in box)
        and box[0] < box[2]
        and box[1] < box[3]
    )


def _overlap(a: Entity, b: Entity) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start))


@REFINEMENT_BACKENDS.register("oracle")
class OracleBackend(RefinementBackend):
    """Simulation: answers every check with the gold correction (``cfg.gold``).

    Span check: the text of the gold entity that overlaps the checked span most (ties: the nearest start), or
    ``Null`` when none overlaps. Type check: the type and first box of the gold entity with exactly this span;
    without one, the type is kept and the box is ``Null``.
    """

    label = "oracle (simulation)"
    simulated = True

    def __init__(self, cfg: RefineConfig, run_dir: str | Path | None = None) -> None:
        if not cfg.gold:
            raise UsageError(f"the {cfg.backend} backend simulates an MLLM from gold data: set gold=<dev.jsonl>")
        self.gold = {ex.id: ex for ex in read_jsonl(cfg.gold)}

    def _gold_post(self, q: Query | str) -> Example:
        pid = q if isinstance(q, str) else q.post.id
        if pid not in self.gold:
            raise KeyError(f"post {pid!r} is not in the gold file")
        return self.gold[pid]

    def gold_span(self, q: Query) -> dict[str, Any]:
        """The gold span-check answer."""
        g = self._gold_post(q)
        best = max(g.entities, key=lambda e: (_overlap(e, q.entity), -abs(e.start - q.entity.start)), default=None)
        if best is None or _overlap(best, q.entity) == 0:
            return {"reasoning_process": "simulation: no gold entity here", "corrected_entity": "Null"}
        return {"reasoning_process": "simulation: gold entity", "corrected_entity": best.text(g.tokens)}

    def gold_type(self, q: Query) -> dict[str, Any]:
        """The gold type-and-box answer."""
        g = self._gold_post(q)
        same = next((e for e in g.entities if e.span == q.entity.span), None)
        if same is None:
            return {
                "reasoning_process": "simulation: span not in gold",
                "corrected_type": q.entity.type,
                "corrected_bounding_box": "Null",
            }
        return {
            "reasoning_process": "simulation: gold entity",
            "corrected_type": same.type,
            "corrected_bounding_box": list(same.boxes[0]) if same.boxes else "Null",
        }

    def gold_list(self, q: PostQuery) -> dict[str, Any]:
        """The gold entity list of the post (mode ``release``), first box each."""
        g = self._gold_post(q.post.id)
        items = [
            {"entity": e.text(g.tokens), "entity_type": e.type, "bounding_box": [list(b) for b in e.boxes[:1]]}
            for e in g.entities
        ]
        return {"entities": items}

    def entity_list(  # noqa: D102
        self, queries: Sequence[PostQuery], types: list[str], never_grounded: list[str]
    ) -> list[Answer]:
        return [Answer("ok", self.gold_list(q)) for q in queries]

    def span_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:  # noqa: D102
        return [Answer("ok", self.gold_span(q)) for q in queries]

    def type_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:  # noqa: D102
        return [Answer("ok", self.gold_type(q)) for q in queries]


@REFINEMENT_BACKENDS.register("noisy-oracle")
class NoisyOracleBackend(OracleBackend):
    """Simulation: the gold answer with probability ``cfg.oracle_accuracy``, else a kept or corrupted answer.

    Otherwise, with equal chance, it keeps the tagger's answer or corrupts it (span: one boundary moved by one
    word, or Null; type: another type, box Null). Draws are seeded per post, span and check (``cfg.seed``),
    so runs are repeatable.
    """

    def __init__(self, cfg: RefineConfig, run_dir: str | Path | None = None) -> None:
        super().__init__(cfg, run_dir)
        self.accuracy, self.seed = cfg.oracle_accuracy, cfg.seed
        self.label = f"noisy-oracle p={cfg.oracle_accuracy} (simulation)"

    def entity_list(  # noqa: D102
        self, queries: Sequence[PostQuery], types: list[str], never_grounded: list[str]
    ) -> list[Answer]:
        out = []
        for q in queries:  # the gold list with probability accuracy, else the tagger's list sent back unchanged
            key = f"{self.seed}|{q.post.id}|release".encode()
            rng = random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))
            if rng.random() < self.accuracy:
                out.append(Answer("ok", self.gold_list(q)))
                continue
            items = [
                {"entity": e.text(q.post.tokens), "entity_type": e.type, "bounding_box": [list(b) for b in e.boxes]}
                for e in q.post.entities
            ]
            out.append(Answer("ok", {"entities": items}))
        return out

    def _rng(self, q: Query, check: str) -> random.Random:
        key = f"{self.seed}|{q.post.id}|{q.entity.start}|{q.entity.end}|{check}".encode()
        return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))

    def span_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:  # noqa: D102
        out = []
        for q in queries:
            rng = self._rng(q, "span")
            if rng.random() < self.accuracy:
                out.append(Answer("ok", self.gold_span(q)))
                continue
            e, n = q.entity, len(q.post.tokens)
            if rng.random() < 0.5:
                text = e.text(q.post.tokens)
            else:
                moves = [(e.start - 1, e.end), (e.start + 1, e.end), (e.start, e.end - 1), (e.start, e.end + 1)]
                moves = [(s, t) for s, t in moves if 0 <= s < t <= n] + [None]
                pick = rng.choice(moves)
                text = "Null" if pick is None else " ".join(q.post.tokens[pick[0] : pick[1]])
            out.append(Answer("ok", {"reasoning_process": "simulation: noise", "corrected_entity": text}))
        return out

    def type_check(self, queries: Sequence[Query], types: list[str]) -> list[Answer]:  # noqa: D102
        out = []
        for q in queries:
            rng = self._rng(q, "type")
            if rng.random() < self.accuracy:
                out.append(Answer("ok", self.gold_type(q)))
                continue
            others = [t for t in types if t != q.entity.type]
            etype = q.entity.type if rng.random() < 0.5 or not others else rng.choice(others)
            out.append(
                Answer(
                    "ok",
                    {
                        "reasoning_process": "simulation: noise",
                        "corrected_type": etype,
                        "corrected_bounding_box": "Null",
                    },
                )
            )
        return out
