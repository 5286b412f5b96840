"""The ``mllm`` grounder: in-context grounding by a multimodal LLM with selected demonstrations (ReFineG stage 3)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from refineg.config import CONFIG_DIR
from refineg.llm import LLMConfig, UsageMeter, build_llm_backend
from refineg.llm.answers import GROUNDING

from .base import GROUNDERS, Grounder, GroundingQuery, GroundingResult
from .parse import is_grounding_answer, parse_answer
from .prompts import GroundingPrompts, build_chat

log = logging.getLogger(__name__)


@GROUNDERS.register("mllm")
class MLLMGrounder(Grounder):
    """Asks an MLLM for the boxes of every entity of a post in one chat, with demonstrations.

    Images are sent shrunk to ``llm.max_side``; demonstration boxes are written in the model's coordinates
    (``llm.box_format``: pixels of the sent image by default) and the answer's boxes are mapped back to original
    pixels, clipped to the image, rid of degenerate ones and cut to
    ``max_boxes`` per entity (:mod:`.parse`). A failed request answers none for the post's entities
    (``status="failed"``). Demonstrations whose image is missing are left out of the chat.

    Args:
        llm: The backend settings (an :class:`LLMConfig`, a mapping or an OmegaConf node).
        prompts_dir: Folder with ``system.txt`` and ``query.txt``.
        types: Entity type inventory named in the rules.
        never_grounded: Types the rules say never get a box.
        max_boxes: Most boxes kept per entity.
        min_box_side: Least box width and height in original pixels.
        max_area_fraction: Drop boxes covering more than this share of the image (``None``: keep).
        run_dir: Folder for ``llm_usage.json``.
        usage: A usage meter shared with other stages.
    """

    #: The run asks the context selector for demonstrations for this grounder.
    uses_demos = True

    def __init__(
        self,
        llm: LLMConfig | Mapping[str, Any] | Any = None,
        prompts_dir: str | Path = CONFIG_DIR / "prompts" / "grounding",
        types: Sequence[str] = ("PER", "LOC", "ORG", "OTHER"),
        never_grounded: Sequence[str] = ("LOC",),
        max_boxes: int = 1,
        min_box_side: float = 2.0,
        max_area_fraction: float | None = None,
        run_dir: str | Path | None = None,
        usage: UsageMeter | None = None,
    ) -> None:
        self.prompts = GroundingPrompts.load(prompts_dir)
        self.llm = build_llm_backend(llm if llm is not None else LLMConfig(), usage=usage, run_dir=run_dir)
        self.types, self.never_grounded = list(types), list(never_grounded)
        self.max_boxes, self.min_box_side, self.max_area_fraction = max_boxes, min_box_side, max_area_fraction
        self.label = f"mllm {self.llm.config.backend}:{self.llm.config.model}"

    def ground(self, queries: Sequence[GroundingQuery]) -> list[GroundingResult]:
        """Grounds every entity of every query (one chat per query with an image and at least one entity)."""
        results: list[GroundingResult | None] = [None] * len(queries)
        convs, asked, scales, demo_ids = [], [], [], []
        for i, q in enumerate(queries):
            if not q.post.entities:
                results[i] = GroundingResult([], "ok", {"note": "no entity"})
                self.posts_done(1)
                continue
            if q.image is None:
                results[i] = GroundingResult([[] for _ in q.post.entities], "no_image")
                self.posts_done(1)
                continue
            scale = self.llm.image_scale(q.image)
            demos = []
            for demo, demo_img in zip(q.demos, q.demo_images, strict=True):
                if demo_img is not None:
                    demos.append((demo, demo_img, self.llm.image_scale(demo_img)))
            convs.append(build_chat(self.prompts, q.post, q.image, scale, demos, self.types, self.never_grounded))
            asked.append(i)
            scales.append(scale)
            demo_ids.append([d.id for d, _, _ in demos])
        if convs:
            answers = self.llm.chat_many(
                convs,
                stage="grounding",
                json_accept=is_grounding_answer,
                answer=GROUNDING,
                items=[queries[i].post.id for i in asked],
                progress=False,
                on_done=self.posts_done,
            )
        else:
            answers = []
        for i, scale, demos, answer in zip(asked, scales, demo_ids, answers, strict=True):
            post = queries[i].post
            empty = [[] for _ in post.entities]
            info: dict[str, Any] = {"demos": demos, "cached": answer.cached}
            if not answer.ok:
                info["error"] = answer.error
                results[i] = GroundingResult(empty, "failed", info)
                continue
            names = [(e.text(post.tokens), e.type) for e in post.entities]
            parsed = parse_answer(
                answer.parsed, names, scale, self.max_boxes, self.min_box_side, self.max_area_fraction
            )
            info["answer"] = answer.text
            if parsed.problems:
                info["problems"] = parsed.problems
                log.debug("post %s: grounding answer problems: %s", post.id, parsed.problems)
            if parsed.unusable:
                info["unusable"] = parsed.unusable
            results[i] = GroundingResult(parsed.boxes, "ok", info)
        return [r for r in results if r is not None]

    def usage(self) -> dict[str, Any]:
        """Calls, tokens and failures so far (the backend's usage meter)."""
        return self.llm.usage.to_dict()

    def close(self) -> None:
        """Writes ``llm_usage.json`` and closes the cache."""
        self.llm.close()
