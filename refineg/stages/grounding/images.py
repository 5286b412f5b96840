"""Lazy access to post images in an image folder (``Example.image`` is relative to it)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from refineg.data import Example
from refineg.data.images import load_image

from .base import image_path

log = logging.getLogger(__name__)


class PostImages:
    """Finds and loads post images on demand, keeping the last few in memory.

    Args:
        images_dir: Image folder; ``None`` means every image is missing.
        keep: Images kept in memory (least recently used are dropped).
    """

    def __init__(self, images_dir: str | Path | None, keep: int = 64) -> None:
        self.images_dir = Path(images_dir) if images_dir is not None else None
        if self.images_dir is not None and not self.images_dir.is_dir():
            raise FileNotFoundError(f"image folder {self.images_dir} does not exist")
        self.keep = keep
        self._cache: OrderedDict[Path, Image.Image] = OrderedDict()

    def path(self, post: Example) -> Path | None:
        """The post's image file, or ``None`` when the folder is unset, the post has none or the file is missing."""
        path = image_path(self.images_dir, post)
        return path if path is not None and path.is_file() else None

    def exists(self, post: Example) -> bool:
        """Whether the post's image file is there (the file is not opened)."""
        return self.path(post) is not None

    def load(self, post: Example) -> Image.Image | None:
        """The post's image, or ``None`` when it is missing or unreadable (an unreadable file is logged)."""
        path = self.path(post)
        if path is None:
            return None
        if path in self._cache:
            self._cache.move_to_end(path)
            return self._cache[path]
        try:
            img = load_image(path, rgb=False)  # the stored mode: LLM cache keys hash it
        except OSError as err:
            log.warning("post %s: cannot read image %s (%s); treated as missing", post.id, path, err)
            return None
        self._cache[path] = img
        if len(self._cache) > self.keep:
            self._cache.popitem(last=False)
        return img
