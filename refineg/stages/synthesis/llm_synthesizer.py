"""ReFineG's LLM data synthesis: one call per gold seed asks for new labelled posts in the domain's style."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from refineg.data import Example
from refineg.llm import LLMConfig, build_llm_backend
from refineg.llm.answers import SYNTHESIS, SYNTHESIS_LIST_KEYS
from refineg.stages.synthesis.base import SYNTHESIZERS
from refineg.stages.synthesis.labelling import TypeMapper, label_text
from refineg.stages.synthesis.prompts import PromptSet, default_prompt_dir
from refineg.stages.synthesis.report import SynthesisReport

logger = logging.getLogger(__name__)
_LIST_KEYS = SYNTHESIS_LIST_KEYS


def is_samples_answer(parsed: Any) -> bool:
    """Whether a decoded JSON value has the shape :func:`parse_answer` reads (samples with a ``text``, or none)."""
    if isinstance(parsed, dict):
        if "text" in parsed:
            return True
        parsed = next((parsed[k] for k in _LIST_KEYS if isinstance(parsed.get(k), list)), None)
    return isinstance(parsed, list) and (not parsed or any(isinstance(i, dict) and "text" in i for i in parsed))


def parse_answer(parsed: Any, report: SynthesisReport) -> list[tuple[str, list[tuple[str, str]]]] | None:
    """Reads the samples of one answer: ``[{"text": str, "entity": [{"name": str, "type": str}]}]``.

    A top-level object holding such a list (under ``samples``, ``posts``, ``data``, ...) or a single sample object
    is accepted too; ``entities`` may stand for ``entity``. Counted in ``report``: a sample that is not an object
    with a non-empty ``text`` (``malformed_sample``), an entity that is not ``{"name": str, "type": str}``
    (``malformed_entity``).

    Returns:
        ``[(text, [(name, type), ...]), ...]``, or ``None`` when the answer holds no list of samples.
    """
    if isinstance(parsed, dict):
        if "text" in parsed:
            parsed = [parsed]
        else:
            parsed = next((parsed[k] for k in _LIST_KEYS if isinstance(parsed.get(k), list)), None)
    if not isinstance(parsed, list):
        return None
    samples = []
    for item in parsed:
        text = item.get("text") if isinstance(item, dict) else None
        if not isinstance(text, str) or not text.strip():
            report.reject("malformed_sample")
            continue
        raw = item.get("entity", item.get("entities")) or []
        mentions = []
        for ent in raw if isinstance(raw, list) else [raw]:
            if isinstance(ent, dict) and isinstance(ent.get("name"), str) and isinstance(ent.get("type"), str):
                mentions.append((ent["name"], ent["type"]))
            else:
                report.drop_entity("malformed_entity")
        samples.append((text, mentions))
    return samples


@SYNTHESIZERS.register("llm")
class LLMSynthesizer:
    """LLM synthesis: per seed, ``n_reuse`` posts reusing its entities and ``n_new`` posts with new named entities.

    Seeds without entities ask for ``n_reuse + n_new`` entity-free posts. Answers go through
    :func:`parse_answer` and :func:`~refineg.stages.synthesis.labelling.label_text`; each post records
    ``seed_id``, ``backend``, ``model``, ``prompt_hash`` and ``sample_index`` in ``meta``. The backend's response
    cache makes a rerun after a kill repeat no completed call.

    Args:
        llm: Backend config (``LLMConfig``, mapping or OmegaConf node).
        prompts: The domain's prompt set.
        types: Entity types.
        type_map: Renames of unknown types.
        default_type: Type of other unknown types (``None``: drop them).
        n_reuse: Posts per seed reusing the seed's entities.
        n_new: Posts per seed with new entities.
        run_dir: Folder for ``llm_usage.json``.
        progress: Show the request progress bar.
    """

    name = "llm"

    def __init__(
        self,
        llm: LLMConfig | Any,
        prompts: PromptSet,
        types: Sequence[str],
        type_map: dict[str, str] | None = None,
        default_type: str | None = None,
        n_reuse: int = 20,
        n_new: int = 10,
        run_dir: str | Path | None = None,
        progress: bool = True,
    ) -> None:
        self.config = LLMConfig.from_options(llm)
        self.prompts, self.types = prompts, list(types)
        self.mapper = TypeMapper(types, type_map, default_type)
        self.n_reuse, self.n_new, self.run_dir, self.progress = n_reuse, n_new, run_dir, progress

    @classmethod
    def from_config(cls, cfg: Any, work_dir: Path) -> LLMSynthesizer:
        """Builds from a :class:`~refineg.stages.synthesis.config.SynthesisConfig` node.

        ``llm.cache_path: null`` becomes ``work_dir/llm_cache.sqlite`` so that reruns are resumable.
        """
        from omegaconf import OmegaConf

        llm = OmegaConf.to_container(cfg.llm, resolve=True)
        if llm["cache_path"] is None:
            llm["cache_path"] = str(work_dir / "llm_cache.sqlite")
        prompts = PromptSet.load(cfg.prompts or default_prompt_dir(cfg.domain))
        return cls(
            llm,
            prompts,
            list(cfg.types),
            dict(cfg.type_map),
            cfg.default_type,
            cfg.n_reuse,
            cfg.n_new,
            work_dir,
            cfg.progress,
        )

    def synthesize(self, seeds: Sequence[Example], report: SynthesisReport) -> list[Example]:
        """Asks the LLM once per seed and labels the parsed samples (see the class docstring)."""
        n_total = self.n_reuse + self.n_new
        report.requested += n_total * len(seeds)
        conversations = [self.prompts.conversation(s, self.n_reuse, self.n_new, self.types) for s in seeds]
        backend = build_llm_backend(self.config, run_dir=self.run_dir)
        try:
            results = backend.chat_many(
                conversations,
                stage="synthesis",
                json_accept=is_samples_answer,
                answer=SYNTHESIS,
                items=[s.id for s in seeds],
                progress=self.progress,
            )
        finally:
            backend.close()
        base_meta = {
            "synthesizer": self.name,
            "backend": self.config.backend,
            "model": self.config.model,
            "prompt_hash": self.prompts.hash,
        }
        out: list[Example] = []
        for seed, result in zip(seeds, results, strict=True):
            if not result.ok:
                report.requests[result.status if result.status != "failed" else f"failed:{result.error_kind}"] += 1
                continue
            report.requests["cached" if result.cached else "ok"] += 1
            samples = parse_answer(result.parsed, report)
            if samples is None:
                report.requests["malformed_answer"] += 1
                continue
            if len(samples) > n_total:
                report.reject("beyond_requested_count", len(samples) - n_total)
                samples = samples[:n_total]
            report.produced += len(samples)
            for k, (text, mentions) in enumerate(samples):
                tokens, entities = label_text(text, mentions, self.mapper, report)
                meta = {**base_meta, "seed_id": seed.id, "sample_index": k}
                out.append(Example(f"syn-{seed.id}-{k}", tokens, None, entities, "synthetic", meta=meta))
        return out
