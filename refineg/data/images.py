"""The one place that opens image files.

Rules, the same for every reader (data readers, the collator, the grounding and refinement stages, the MLLM
prompts, the visualiser):

* A missing or unreadable file raises :class:`ImageError`, a :class:`~refineg.data.errors.DataFormatError` that
  names the file (and an ``OSError``, so callers that treat a bad image as missing catch it as before).
* EXIF orientation is never applied: GMNER and Flickr30k Entities boxes are annotated in the stored pixel grid, so
  the pixels, the sizes and the boxes all stay in that grid.
* :func:`load_image` returns a fully read RGB copy (the file is closed); ``rgb=False`` keeps the stored mode, for
  content hashes that must not change (:func:`refineg.llm.images.image_content_hash` keys the LLM cache).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, UnidentifiedImageError

from refineg.data.errors import DataFormatError


class ImageError(DataFormatError, OSError):
    """An image file is missing or cannot be decoded; the message starts with the file name.

    Attributes:
        reason: The message without the file name (``"image not found"``, ``"unreadable image (...)"``).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(path, reason)
        self.reason = reason


def _open_error(path: Path, err: Exception) -> ImageError:
    if isinstance(err, FileNotFoundError) or not path.exists():
        return ImageError(path, "image not found")
    return ImageError(path, f"unreadable image ({type(err).__name__}: {err})")


def load_image(source: Image.Image | str | Path, rgb: bool = True) -> Image.Image:
    """Returns ``source`` as a PIL image; a path is opened, fully read and closed.

    Args:
        source: An image (returned as it is, converted to RGB when ``rgb``) or a file path.
        rgb: Convert to RGB (default); ``False`` keeps the stored mode.

    Raises:
        ImageError: The file is missing or unreadable.
    """
    if isinstance(source, Image.Image):
        return source.convert("RGB") if rgb and source.mode != "RGB" else source
    path = Path(source)
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB") if rgb else img.copy()
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _open_error(path, err) from None


def image_size(source: Image.Image | str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image or image file (only the file's header is read).

    Raises:
        ImageError: The file is missing or unreadable.
    """
    if isinstance(source, Image.Image):
        return source.size
    path = Path(source)
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise _open_error(path, err) from None
