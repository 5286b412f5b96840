"""Candidate boxes for region scoring: a proposals file, selective search, MTCNN faces or a multi-scale grid.

Every source returns boxes ``[xmin, ymin, xmax, ymax]`` in original image pixels, clipped to the image and at
least ``min_size`` pixels wide and high. Sources register in :data:`PROPOSALS`; build one with
:func:`create_proposals`.

Proposals file format (``file`` source), either

* JSONL, one object per image: ``{"image": "1015763.jpg", "boxes": [[x1, y1, x2, y2], ...], "scores": [...]}``
  (``scores`` optional, same length as ``boxes``; higher is better), or
* JSON, one object mapping image keys to box lists: ``{"1015763.jpg": [[x1, y1, x2, y2], ...], ...}``.

An image is looked up by the post's ``image`` field, then by its file stem (``1015763``), then by the post id.
Boxes are in original image pixels (e.g. VinVL detections exported per image).
"""

from __future__ import annotations

import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from refineg.data.schema import Box
from refineg.registry import Registry

logger = logging.getLogger(__name__)

PROPOSALS = Registry("proposal source")

FACENET_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0"


def create_proposals(name: str, **kwargs: Any) -> ProposalSource:
    """Builds the proposal source registered as ``name`` (see :func:`list_proposals`)."""
    return PROPOSALS.create(name, **kwargs)


def list_proposals(pattern: str = "*") -> list[str]:
    """Registered proposal source names matching ``pattern``."""
    return PROPOSALS.list(pattern)


def clean_boxes(
    boxes: Sequence[Sequence[float]] | np.ndarray,
    width: int,
    height: int,
    min_size: float = 1.0,
    max_boxes: int | None = None,
) -> list[Box]:
    """Clips boxes to the image, drops degenerate ones and exact duplicates, keeps the order.

    Args:
        boxes: ``(N, 4)`` xyxy in original image pixels.
        width: Image width in pixels.
        height: Image height in pixels.
        min_size: Least width and height (pixels) of a kept box.
        max_boxes: Keep at most this many (the first ones).

    Returns:
        Boxes as lists of 4 floats.
    """
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(arr):
        return []
    arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width)
    arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height)
    keep = ((arr[:, 2] - arr[:, 0]) >= min_size) & ((arr[:, 3] - arr[:, 1]) >= min_size)
    out: list[Box] = []
    seen: set[tuple[float, ...]] = set()
    for box in arr[keep]:
        key = tuple(np.round(box, 2))
        if key in seen:
            continue
        seen.add(key)
        out.append([float(v) for v in box])
        if max_boxes is not None and len(out) >= max_boxes:
            break
    return out


class ProposalSource(ABC):
    """Proposes candidate boxes for the entities of one image.

    Attributes:
        per_type: ``True`` when the boxes depend on the entity type (callers cache per type, else per image).
    """

    per_type: bool = False

    @abstractmethod
    def propose(self, image: Image.Image, image_key: Sequence[str], entity_type: str) -> list[Box]:
        """Candidate boxes for an entity of ``entity_type`` shown in ``image``.

        Args:
            image: The post image (RGB).
            image_key: Names the image may be stored under (file name, stem, post id), tried in order.
            entity_type: The entity's type (``"PER"``, ...).

        Returns:
            Boxes ``[xmin, ymin, xmax, ymax]`` in original image pixels, clipped, non-degenerate.
        """

    def cache_key(self, entity_type: str) -> str:
        """Entities of the same post whose keys agree share one call to :meth:`propose`."""
        return entity_type if self.per_type else ""


@PROPOSALS.register("grid")
class GridProposals(ProposalSource):
    """Windows of a multi-scale sliding grid.

    Args:
        scales: At scale ``n`` a window is ``1/n`` of the image width and height.
        overlap: Fraction of a window shared with its neighbour (0 = tiling, 0.5 = half-window stride).
        min_size: Least box side in pixels.

    With the defaults (scales 1, 2, 3; overlap 0.5) an image gets 1 + 9 + 25 = 35 boxes.
    """

    def __init__(self, scales: Sequence[int] = (1, 2, 3), overlap: float = 0.5, min_size: float = 4.0) -> None:
        if not 0 <= overlap < 1:
            raise ValueError(f"grid overlap must be in [0, 1), got {overlap}")
        if not scales or any(int(s) < 1 for s in scales):
            raise ValueError(f"grid scales must be positive integers, got {list(scales)}")
        self.scales = [int(s) for s in scales]
        self.overlap = float(overlap)
        self.min_size = float(min_size)

    def propose(self, image: Image.Image, image_key: Sequence[str], entity_type: str) -> list[Box]:
        """See :meth:`ProposalSource.propose`."""
        width, height = image.size
        boxes = []
        for n in self.scales:
            steps = 1 if n == 1 else round((n - 1) / (1 - self.overlap)) + 1
            for iy in range(steps):
                for ix in range(steps):
                    x0 = ix * (1 - 1 / n) / max(steps - 1, 1)
                    y0 = iy * (1 - 1 / n) / max(steps - 1, 1)
                    boxes.append([x0 * width, y0 * height, (x0 + 1 / n) * width, (y0 + 1 / n) * height])
        return clean_boxes(boxes, width, height, self.min_size)


@PROPOSALS.register("selective_search")
class SelectiveSearchProposals(ProposalSource):
    """OpenCV selective search (``cv2.ximgproc``, fast mode) on a downscaled copy of the image.

    Args:
        max_boxes: Keep the first ``max_boxes`` proposals (selective search ranks them).
        max_side: The image is shrunk so its longer side is at most this (pixels) before the search;
            boxes are mapped back to original pixels.
        min_area: Drop boxes smaller than this fraction of the image area.
        include_full: Add the whole image as the first candidate.

    Raises:
        ImportError: ``cv2.ximgproc`` is missing (install ``opencv-contrib-python-headless``).
    """

    def __init__(
        self, max_boxes: int = 100, max_side: int = 384, min_area: float = 0.01, include_full: bool = True
    ) -> None:
        try:
            import cv2

            cv2.ximgproc.segmentation.createSelectiveSearchSegmentation  # noqa: B018
        except (ImportError, AttributeError):
            raise ImportError(
                "selective search needs cv2.ximgproc: pip install "
                "'opencv-contrib-python-headless>=4.8' (or refineg[grounding])"
            ) from None
        self.max_boxes = int(max_boxes)
        self.max_side = int(max_side)
        self.min_area = float(min_area)
        self.include_full = bool(include_full)

    def propose(self, image: Image.Image, image_key: Sequence[str], entity_type: str) -> list[Box]:
        """See :meth:`ProposalSource.propose`."""
        import cv2

        width, height = image.size
        scale = min(1.0, self.max_side / max(width, height))
        small = image if scale == 1.0 else image.resize((max(1, round(width * scale)), max(1, round(height * scale))))
        search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
        search.setBaseImage(cv2.cvtColor(np.asarray(small.convert("RGB")), cv2.COLOR_RGB2BGR))
        search.switchToSelectiveSearchFast()
        rects = np.asarray(search.process(), dtype=np.float64).reshape(-1, 4)  # x, y, w, h in the small image
        rects = rects[rects[:, 2] * rects[:, 3] >= self.min_area * small.size[0] * small.size[1]]
        boxes = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1) / scale
        if self.include_full:
            boxes = np.concatenate([[[0.0, 0.0, width, height]], boxes])
        return clean_boxes(boxes, width, height, min_size=2.0, max_boxes=self.max_boxes)


@PROPOSALS.register("file")
class FileProposals(ProposalSource):
    """Boxes read from a JSON or JSONL proposals file (format in the module docstring).

    Args:
        path: The proposals file.
        max_boxes: Keep the best ``max_boxes`` per image (by ``scores`` when given, else file order).
        min_score: Drop boxes scored below this (only where scores are given).
        fallback: Source used for images the file lacks (``None``: no candidates, the entity is answered none).
        fallback_kwargs: Keyword arguments of the fallback source.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: A malformed line or entry (names file and line).
    """

    def __init__(
        self,
        path: str,
        max_boxes: int = 100,
        min_score: float | None = None,
        fallback: str | None = None,
        fallback_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"proposals file not found: {self.path}")
        self.max_boxes = int(max_boxes)
        self.min_score = min_score
        self.fallback = create_proposals(fallback, **(fallback_kwargs or {})) if fallback else None
        self.per_type = bool(self.fallback and self.fallback.per_type)
        self.boxes: dict[str, np.ndarray] = self._read()
        self._missing_logged = False

    def _read(self) -> dict[str, np.ndarray]:
        text = self.path.read_text(encoding="utf-8")
        entries: list[tuple[str, Any, Any]] = []
        if self.path.suffix == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}: not JSON ({err})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{self.path}: expected an object mapping image keys to box lists")
            entries = [(str(k), v, None) for k, v in data.items()]
        else:
            for lineno, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    entries.append((str(rec["image"]), rec["boxes"], rec.get("scores")))
                except (json.JSONDecodeError, KeyError, TypeError) as err:
                    msg = f"{self.path}:{lineno}: expected {{'image': ..., 'boxes': [...]}} ({err})"
                    raise ValueError(msg) from None
        out = {}
        for key, boxes, scores in entries:
            try:
                arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
            except ValueError:
                raise ValueError(f"{self.path}: image {key!r}: boxes must be [[x1, y1, x2, y2], ...]") from None
            if scores is not None:
                sc = np.asarray(scores, dtype=np.float64).reshape(-1)
                if len(sc) != len(arr):
                    raise ValueError(f"{self.path}: image {key!r}: {len(sc)} scores for {len(arr)} boxes")
                if self.min_score is not None:
                    arr, sc = arr[sc >= self.min_score], sc[sc >= self.min_score]
                arr = arr[np.argsort(-sc, kind="stable")]
            out[key] = arr
        logger.info("read proposals of %d images from %s", len(out), self.path)
        return out

    def propose(self, image: Image.Image, image_key: Sequence[str], entity_type: str) -> list[Box]:
        """See :meth:`ProposalSource.propose`."""
        for key in image_key:
            if key in self.boxes:
                return clean_boxes(self.boxes[key], *image.size, max_boxes=self.max_boxes)
        if not self._missing_logged:
            logger.warning("%s has no boxes for image %s (further misses not logged)", self.path, list(image_key))
            self._missing_logged = True
        return self.fallback.propose(image, image_key, entity_type) if self.fallback else []


@PROPOSALS.register("mtcnn")
class MtcnnProposals(ProposalSource):
    """Faces found by MTCNN (``facenet-pytorch``, weights inside the wheel) for PER entities.

    Each face gives the face box and, with ``person_boxes``, a rough head-and-shoulders and upper-body box
    below it (gold PER boxes usually frame the person, not the face). Other types, and PER entities in images
    without a detected face, get the ``fallback`` source's boxes.

    Args:
        types: Entity types that use face boxes.
        fallback: Source for the other types and face-less images (``None``: no candidates).
        fallback_kwargs: Keyword arguments of the fallback source.
        min_face_size: Least face side in pixels searched for.
        min_prob: Least MTCNN face probability.
        person_boxes: Add the widened boxes described above.
        add_fallback: Also append the fallback's boxes for PER entities when faces are found.
        device: Torch device of MTCNN.

    Raises:
        ImportError: facenet-pytorch is missing; the message gives the install command.
    """

    per_type = True

    def __init__(
        self,
        types: Sequence[str] = ("PER",),
        fallback: str | None = "grid",
        fallback_kwargs: dict[str, Any] | None = None,
        min_face_size: int = 20,
        min_prob: float = 0.9,
        person_boxes: bool = True,
        add_fallback: bool = False,
        device: str = "cpu",
    ) -> None:
        try:
            from facenet_pytorch import MTCNN
        except ImportError:
            raise ImportError(
                f"the mtcnn proposal source needs facenet-pytorch; install it without its "
                f"dependencies (its pins would replace torch): {FACENET_INSTALL}"
            ) from None
        self.types = set(types)
        self.detector = MTCNN(keep_all=True, min_face_size=int(min_face_size), device=device)
        self.min_prob = float(min_prob)
        self.person_boxes = bool(person_boxes)
        self.add_fallback = bool(add_fallback)
        self.fallback = create_proposals(fallback, **(fallback_kwargs or {})) if fallback else None

    def cache_key(self, entity_type: str) -> str:
        """One cache entry for face types, one for the others."""
        return "face" if entity_type in self.types else "other"

    def faces(self, image: Image.Image) -> np.ndarray:
        """``(F, 4)`` face boxes in original pixels with probability >= ``min_prob``, most probable first."""
        boxes, probs = self.detector.detect(image.convert("RGB"))
        if boxes is None:
            return np.zeros((0, 4))
        probs = np.asarray(probs, dtype=np.float64)
        keep = probs >= self.min_prob
        return np.asarray(boxes, dtype=np.float64)[keep][np.argsort(-probs[keep], kind="stable")]

    def propose(self, image: Image.Image, image_key: Sequence[str], entity_type: str) -> list[Box]:
        """See :meth:`ProposalSource.propose`."""
        fallback = (lambda: self.fallback.propose(image, image_key, entity_type)) if self.fallback else list
        if entity_type not in self.types:
            return fallback()
        faces = self.faces(image)
        if not len(faces):
            return fallback()
        boxes = []
        for x1, y1, x2, y2 in faces:
            w, h = x2 - x1, y2 - y1
            boxes.append([x1, y1, x2, y2])
            if self.person_boxes:
                boxes.append([x1 - w, y1 - 0.5 * h, x2 + w, y2 + 2.5 * h])  # head and shoulders
                boxes.append([x1 - 1.5 * w, y1 - 0.5 * h, x2 + 1.5 * w, y2 + 6 * h])  # upper body
        out = clean_boxes(boxes, *image.size, min_size=2.0)
        return out + (fallback() if self.add_fallback else [])
