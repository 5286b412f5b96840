"""Multimodal context selection: pick the labelled pool posts most similar to a query as demonstrations.

How the terms are combined is the registered rule ``selector.entity_similarity`` (:mod:`.similarity`). The default,
``best_match``, scores pool post ``p`` for query ``q`` (ReFineG's weights by default)::

    (w_text * cos(text_q, text_p) + w_image * cos(img_q, img_p) + w_entity * ent(q, p)) / (sum of used weights)

``ent(q, p)``: for each predicted entity string of ``q`` the best cosine with ``p``'s gold entity strings, pooled
over ``q``'s entities by ``max`` or ``mean`` (0 when ``p`` has no entity). The image term is dropped (and the
weights renormalised) where either image is missing, the entity term where ``q`` has no entity. ``release`` is the
released scripts' rule (pair sums with a same-label bonus, min-max normalised terms). The pool is
embedded once and saved with a fingerprint of its content and the encoders; a stale index is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from refineg.data import Example

from .config import SelectorConfig
from .encoders import ImageEncoder, TextEncoder
from .images import PostImages
from .similarity import SimilarityTerms, SimilarityWeights, best_match_entity, get_entity_similarity

log = logging.getLogger(__name__)

_SCORE_DECIMALS = 5  # scores are rounded before ranking so that float noise between batch shapes cannot reorder


def post_text(post: Example) -> str:
    """The post's text as the encoder sees it (tokens joined by spaces)."""
    return " ".join(post.tokens)


def entity_strings(post: Example) -> list[str]:
    """Surface strings of the post's entities, in order."""
    return [e.text(post.tokens) for e in post.entities]


class ContextSelector:
    """Chooses ``k`` demonstrations per query from a labelled pool.

    Args:
        pool: Labelled posts (gold entities and boxes).
        cfg: Selection settings (mode, weights, k, encoders).
        images: Image access for the pool (and the queries).
        index_path: Where the pool index is saved and looked for; ``None`` keeps it in memory only.
        text_encoder: A ready text encoder (default: built from ``cfg``).
        image_encoder: A ready image encoder (default: built from ``cfg`` in ``multimodal`` mode with
            ``w_image > 0``).
    """

    def __init__(
        self,
        pool: Sequence[Example],
        cfg: SelectorConfig,
        images: PostImages,
        index_path: str | Path | None = None,
        text_encoder: TextEncoder | None = None,
        image_encoder: ImageEncoder | None = None,
    ) -> None:
        self.pool, self.cfg, self.images = list(pool), cfg, images
        self.index_path = Path(index_path) if index_path is not None else None
        self.text_encoder = text_encoder
        self.image_encoder = image_encoder
        self.index: dict[str, Any] | None = None
        self._uses_text = cfg.mode in ("multimodal", "text") and cfg.k > 0
        self._uses_image = cfg.mode == "multimodal" and cfg.w_image > 0 and cfg.k > 0
        if self._uses_text and self.text_encoder is None:
            self.text_encoder = TextEncoder(cfg.text_encoder, cfg.text_max_length, cfg.batch_size, cfg.device)
        if self._uses_image and self.image_encoder is None:
            self.image_encoder = ImageEncoder(cfg.image_model, cfg.image_pretrained, cfg.batch_size, cfg.device)
        self._pool_ids = [p.id for p in self.pool]
        # labels of the pool's gold entities in the index's order (``ent``/``ent_owner``): the release's label bonus
        self._pool_ent_types = [e.type for p in self.pool for e in p.entities]
        self._rule = get_entity_similarity(cfg.entity_similarity)
        self._weights = SimilarityWeights(
            cfg.w_text, cfg.w_image, cfg.w_entity, cfg.entity_pooling, cfg.same_label_bonus
        )

    @property
    def label(self) -> str:
        """What selects: mode, k and the encoders (the image tower says when its weights are random)."""
        parts = [f"{self.cfg.mode} k={self.cfg.k}"]
        if self.cfg.mode == "multimodal":
            weights = f"w=({self.cfg.w_text}, {self.cfg.w_image}, {self.cfg.w_entity})"
            if self.cfg.entity_similarity == "best_match":
                parts.append(f"{weights} entity pooling {self.cfg.entity_pooling}")
            else:
                parts.append(f"{weights} similarity {self.cfg.entity_similarity}")
        for enc in (self.text_encoder, self.image_encoder):
            if enc is not None:
                parts.append(enc.label)
        return "; ".join(parts)

    # ------------------------------------------------------------------------------------------------------ index
    def fingerprint(self, has_image: list[bool]) -> str:
        """SHA-256 of the pool content, its image availability, the mode and the encoders."""
        h = hashlib.sha256()
        for post, present in zip(self.pool, has_image, strict=True):
            record = [post.id, post.tokens, post.image, present, [(e.start, e.end, e.type) for e in post.entities]]
            h.update(json.dumps(record, ensure_ascii=False).encode())
        h.update(f"|{self.cfg.mode}|{self.cfg.text_max_length}".encode())
        if self.text_encoder is not None:
            h.update(self.text_encoder.fingerprint.encode())
        if self.image_encoder is not None:
            h.update(self.image_encoder.fingerprint.encode())
        return h.hexdigest()

    def build_index(self) -> dict[str, Any]:
        """Loads the saved pool index when its fingerprint matches, else embeds the pool and saves it.

        Returns:
            ``{"fingerprint", "text": (N, D), "image": (N, Di), "has_image": (N,) bool, "ent": (M, D),
            "ent_owner": (M,) pool index of each gold entity string}`` (tensors absent when the mode needs none).
        """
        if self.index is not None:
            return self.index
        has_image = [self.images.exists(p) for p in self.pool] if self._uses_image else [False] * len(self.pool)
        fp = self.fingerprint(has_image)
        if self.index_path is not None and self.index_path.is_file():
            saved = torch.load(self.index_path, map_location="cpu", weights_only=True)
            if saved.get("fingerprint") == fp:
                log.info("context selection: reusing the pool index %s", self.index_path)
                self.index = saved
                return saved
            log.info("context selection: %s is stale (pool or encoders changed); rebuilding", self.index_path)
        index: dict[str, Any] = {"fingerprint": fp, "has_image": torch.tensor(has_image, dtype=torch.bool)}
        if self._uses_text:
            assert self.text_encoder is not None
            log.info("context selection: embedding %d pool posts", len(self.pool))
            index["text"] = self.text_encoder.encode([post_text(p) for p in self.pool], progress=True)
            strings, owners = [], []
            for i, p in enumerate(self.pool):
                for s in entity_strings(p):
                    strings.append(s)
                    owners.append(i)
            index["ent"] = self.text_encoder.encode(strings, progress=True)
            index["ent_owner"] = torch.tensor(owners, dtype=torch.long)
        if self._uses_image:
            assert self.image_encoder is not None
            paths = [self.images.path(p) for p in self.pool]
            present = [path for path in paths if path is not None]
            unique = list(dict.fromkeys(present))  # posts that share a photo (Flickr: 5 captions) encode it once
            slot = {path: i for i, path in enumerate(unique)}
            emb = self.image_encoder.encode(unique, progress=True)
            if present:
                emb = emb[torch.tensor([slot[path] for path in present], dtype=torch.long)]
            full = torch.zeros(len(self.pool), emb.shape[1] if len(present) else 1)
            if present:
                full[index["has_image"]] = emb
            index["image"] = full
        if self.index_path is not None:
            self.index_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.index_path.with_name(self.index_path.name + ".tmp")
            torch.save(index, tmp)
            tmp.replace(self.index_path)
            log.info("context selection: saved the pool index to %s", self.index_path)
        self.index = index
        return index

    # ---------------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def scores(self, queries: Sequence[Example], images: Sequence[Image.Image | None] | None = None) -> Tensor:
        """Similarity of every query to every pool post, ``(B, N)``; the query's own post gets ``-inf``.

        Args:
            queries: Posts whose ``entities`` are the predicted ones.
            images: The queries' images (``None`` where missing); only used in ``multimodal`` mode.
        """
        if not self._uses_text:
            raise RuntimeError(f"mode {self.cfg.mode!r} with k={self.cfg.k} does not score")
        index = self.build_index()
        assert self.text_encoder is not None
        cfg, n, b = self.cfg, len(self.pool), len(queries)
        text = self.text_encoder.encode([post_text(q) for q in queries]) @ index["text"].T  # (B, N)
        own = torch.tensor([[pid == q.id for pid in self._pool_ids] for q in queries], dtype=torch.bool).reshape(b, n)
        if cfg.mode == "text":
            total = text.clone()
        else:
            terms = self._entity_terms(queries, index, text, own)
            if self._uses_image and images is not None:
                img_ok = torch.tensor([im is not None for im in images], dtype=torch.bool)
                img = torch.zeros(b, n)
                if img_ok.any():
                    assert self.image_encoder is not None
                    given = [im for im in images if im is not None]
                    slots: dict[int, int] = {}  # one encoding per distinct image object (PostImages caches them)
                    order = [slots.setdefault(id(im), len(slots)) for im in given]
                    firsts = [given[order.index(j)] for j in range(len(slots))]
                    q_img = self.image_encoder.encode(firsts)[torch.tensor(order, dtype=torch.long)]
                    img[img_ok] = q_img @ index["image"].T
                terms.image = img
                terms.image_ok = img_ok[:, None] & index["has_image"][None, :]  # (B, N)
            total = self._rule(terms, self._weights)
        return total.masked_fill(own, float("-inf"))

    def _entity_scores(self, queries: Sequence[Example], index: dict[str, Any]) -> Tensor:
        """``best_match``'s entity term ``(B, N)`` (NaN for a query without entities)."""
        b, n = len(queries), len(self.pool)
        terms = self._entity_terms(queries, index, torch.zeros(b, n), torch.zeros(b, n, dtype=torch.bool))
        return best_match_entity(terms, self.cfg.entity_pooling)

    def _entity_terms(
        self, queries: Sequence[Example], index: dict[str, Any], text: Tensor, own: Tensor
    ) -> SimilarityTerms:
        """The :class:`SimilarityTerms` of ``queries``: every (predicted, pool gold) entity pair's cosine and label."""
        assert self.text_encoder is not None
        strings, owner, types = [], [], []
        for qi, q in enumerate(queries):
            for e, s in zip(q.entities, entity_strings(q), strict=True):
                strings.append(s)
                owner.append(qi)
                types.append(e.type)
        ent_owner: Tensor = index["ent_owner"]
        if strings:
            q_ent = self.text_encoder.encode(strings)  # (Eq, D)
            pair_cos = q_ent @ index["ent"].T  # (Eq, M)
        else:
            pair_cos = torch.zeros(0, ent_owner.numel())
        same = torch.tensor([[t == pt for pt in self._pool_ent_types] for t in types], dtype=torch.bool).reshape(
            len(types), len(self._pool_ent_types)
        )
        return SimilarityTerms(
            text=text,
            pair_cos=pair_cos,
            pair_same_label=same,
            query_owner=torch.tensor(owner, dtype=torch.long),
            pool_owner=ent_owner,
            own=own,
        )

    def select(self, queries: Sequence[Example], images: Sequence[Image.Image | None] | None = None) -> list[list[int]]:
        """Pool indices of the demonstrations of each query, best first (the query's own post never).

        Args:
            queries: Posts with their predicted entities.
            images: Their images (``None`` where missing); ``multimodal`` mode only.
        """
        k = self.cfg.k
        if self.cfg.mode == "none" or k == 0 or not queries:
            return [[] for _ in queries]
        if self.cfg.mode == "random":
            out = []
            for q in queries:
                candidates = [i for i, pid in enumerate(self._pool_ids) if pid != q.id]
                rng = random.Random(f"{self.cfg.seed}|{q.id}")  # per query: the same demos on every run
                out.append(rng.sample(candidates, min(k, len(candidates))))
            return out
        total = torch.round(self.scores(queries, images), decimals=_SCORE_DECIMALS)
        order = torch.sort(-total, dim=1, stable=True).indices[:, :k]  # ties: lower pool index first
        out = []
        for row, idx in zip(total, order):
            out.append([int(i) for i in idx if torch.isfinite(row[i])])
        return out
