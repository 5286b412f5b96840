"""The contract every grounder (MLLM in-context grounding, open_clip region scorer, ...) implements.

A grounder receives posts whose entities are already typed (the tagger's or the refinement stage's output) and
returns, per entity, the boxes that show it in original image pixels (``[]`` = none). Grounders register in
:data:`GROUNDERS` and are built with :func:`create_grounder`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from refineg.data import Example
from refineg.data.files import inside_folder
from refineg.data.schema import Box
from refineg.registry import Registry

GROUNDERS = Registry("grounder")


@dataclass
class GroundingQuery:
    """One post to ground.

    Attributes:
        post: The post; ``post.entities`` are the entities to ground (their ``boxes`` are ignored).
        image: The post's image, loaded lazily by the caller; ``None`` when it is missing.
        demos: In-context demonstrations (labelled pool posts) chosen by the context selector; grounders that
            do not use them ignore them.
        demo_images: Images of ``demos`` in the same order (``None`` where missing).
    """

    post: Example
    image: Image.Image | None
    demos: Sequence[Example] = ()
    demo_images: Sequence[Image.Image | None] = ()


@dataclass
class GroundingResult:
    """A grounder's answer for one post.

    Attributes:
        boxes: Per entity of ``query.post.entities`` (same order), the boxes in original image pixels;
            ``[]`` means none.
        status: ``ok``, ``no_image`` (answered none because the image is missing) or ``failed`` (backend failure:
            answered none, counted).
        info: Free-form details (raw answer, scores, error message) kept in the output for inspection.
    """

    boxes: list[list[Box]]
    status: str = "ok"
    info: dict[str, Any] = field(default_factory=dict)


class Grounder(ABC):
    """Maps entities to boxes.

    Attributes:
        label: Human-readable name written into every output (``"clip ViT-B-32 (random weights)"``, ...).
    """

    label: str = "grounder"
    #: Set by the grounding runner: called with the number of posts a grounder has just finished (its progress
    #: bar's update). Grounders call :meth:`posts_done`; the runner accounts for posts a grounder does not report.
    on_posts_done: Callable[[int], None] | None = None

    @abstractmethod
    def ground(self, queries: Sequence[GroundingQuery]) -> list[GroundingResult]:
        """Grounds every entity of every query; one result per query, in order."""

    def posts_done(self, n: int = 1) -> None:
        """Reports ``n`` more queries answered (for the runner's per-post progress bar)."""
        if self.on_posts_done is not None and n:
            self.on_posts_done(n)


def create_grounder(name: str, **kwargs: Any) -> Grounder:
    """Builds the grounder registered as ``name`` (see :func:`list_grounders`)."""
    return GROUNDERS.create(name, **kwargs)


def list_grounders(pattern: str = "*") -> list[str]:
    """Registered grounder names matching ``pattern``."""
    return GROUNDERS.list(pattern)


def image_path(images_dir: str | Path | None, post: Example, source: str | Path | None = None) -> Path | None:
    """Where ``post``'s image would be under ``images_dir``; ``None`` when either is unset.

    Raises:
        DataFormatError: The image name would leave ``images_dir`` (``../x``, an absolute path; see
            :func:`refineg.data.files.inside_folder`); the message names ``source`` (the posts' file) and the post.
    """
    if images_dir is None or not post.image:
        return None
    return inside_folder(images_dir, post.image, "image", source=source, record=post.id)
