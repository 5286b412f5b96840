"""Image preparation for (M)LLM prompts: resize, JPEG/base64 encoding, content hashes, box rescaling.

ReFineG sends images whose longest side is at most 1000 px, scales demonstration boxes by the same factor and
maps the boxes the model returns back to original pixels. :class:`ImageScale` holds the exact per-axis factors
(the resized width and height are rounded to whole pixels, so x and y factors can differ slightly).
"""

from __future__ import annotations

import base64
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from refineg.data.images import image_size, load_image

from .boxes import BoxConvention


def fit_longest_side(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """Size after shrinking ``(width, height)`` so the longest side is at most ``max_side`` (never enlarges).

    Args:
        width: Original width in pixels.
        height: Original height in pixels.
        max_side: Limit for the longest side; ``None`` or ``<= 0`` keeps the size.

    Returns:
        ``(new_width, new_height)``, each at least 1 px.
    """
    if not max_side or max_side <= 0 or max(width, height) <= max_side:
        return width, height
    factor = max_side / max(width, height)
    return max(1, round(width * factor)), max(1, round(height * factor))


@dataclass(frozen=True)
class ImageScale:
    """Maps boxes between original-image pixels and the coordinates the model uses for the image actually sent.

    The model's coordinates follow ``convention`` (:mod:`refineg.llm.boxes`); with the default ``pixel`` they are
    the pixels of the resized image sent.

    Attributes:
        original_size: ``(width, height)`` of the original image.
        sent_size: ``(width, height)`` of the resized image sent to the model.
        convention: The box coordinate convention of the model.
    """

    original_size: tuple[int, int]
    sent_size: tuple[int, int]
    convention: BoxConvention = field(default_factory=BoxConvention)

    @classmethod
    def for_image(
        cls,
        source: Image.Image | str | Path | tuple[int, int],
        max_side: int | None,
        convention: BoxConvention | None = None,
    ) -> ImageScale:
        """The scale a backend with ``max_side`` applies to ``source`` (an image, a path, or a ``(w, h)`` size)."""
        if isinstance(source, tuple):
            width, height = source
        else:
            width, height = image_size(source)
        return cls((width, height), fit_longest_side(width, height, max_side), convention or BoxConvention())

    @property
    def factors(self) -> tuple[float, float]:
        """``(sx, sy)``: sent pixels per original pixel along x and y."""
        return self.sent_size[0] / self.original_size[0], self.sent_size[1] / self.original_size[1]

    @property
    def frame(self) -> tuple[float, float]:
        """``(fw, fh)``: the range of the model's coordinates along x and y (the sent size for ``pixel``)."""
        return self.convention.frame(self.sent_size)

    def to_sent(self, box: Sequence[float], *, round_to_int: bool = False) -> list[float]:
        """An ``[xmin, ymin, xmax, ymax]`` box from original pixels to the model's coordinates.

        Args:
            box: Box in original pixels.
            round_to_int: Round as a model writes it (whole numbers; 4 decimals for ``norm1``).
        """
        return self.convention.to_model(box, self.original_size, self.sent_size, rounded=round_to_int)

    def format_box(self, box: Sequence[float]) -> list[int] | list[float]:
        """An original-pixel box as the JSON numbers a model would write (demonstration answers)."""
        return self.convention.format_box(self.to_sent(box, round_to_int=True))

    def to_original(self, box: Sequence[float], *, round_to_int: bool = True, clip: bool = True) -> list[float]:
        """An ``[xmin, ymin, xmax, ymax]`` box from the model's coordinates back to original pixels.

        Args:
            box: Box in the model's coordinates (as the model answered).
            round_to_int: Round to whole pixels (ReFineG does).
            clip: Clip to the original image's bounds.
        """
        return self.convention.to_original(
            box, self.original_size, self.sent_size, round_to_int=round_to_int, clip=clip
        )

    def box_note(self) -> str:
        """The convention and this image's coordinate range, for a prompt."""
        return f"{self.convention.describe()}; {self.convention.describe_range(self.sent_size)}"


def resize_longest_side(image: Image.Image, max_side: int | None) -> Image.Image:
    """Shrinks ``image`` (Lanczos) so its longest side is at most ``max_side``; returns it unchanged otherwise."""
    size = fit_longest_side(*image.size, max_side)
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.LANCZOS)


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """JPEG bytes of ``image`` (converted to RGB first: JPEG has no alpha or palette)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def jpeg_data_url(data: bytes) -> str:
    """A ``data:image/jpeg;base64,...`` URL holding ``data``."""
    return "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to send.

    Attributes:
        image: The resized RGB image.
        scale: Original <-> sent box mapping.
    """

    image: Image.Image
    scale: ImageScale

    def jpeg(self, quality: int = 90) -> bytes:
        """JPEG bytes of the resized image."""
        return encode_jpeg(self.image, quality)

    def data_url(self, quality: int = 90) -> str:
        """The resized image as a base64 JPEG data URL."""
        return jpeg_data_url(self.jpeg(quality))


def prepare_image(source: Image.Image | str | Path, max_side: int | None) -> PreparedImage:
    """Loads ``source``, converts it to RGB and shrinks it to ``max_side`` (``scale`` in ``pixel`` coordinates)."""
    img = load_image(source, rgb=False)
    original = img.size
    if img.mode != "RGB":
        img = img.convert("RGB")
    img = resize_longest_side(img, max_side)
    return PreparedImage(img, ImageScale(original, img.size))


def image_content_hash(source: Image.Image | str | Path) -> str:
    """SHA-256 of an image's decoded pixels (mode, size and bytes), so a path and the same image in memory agree."""
    img = load_image(source, rgb=False)
    h = hashlib.sha256()
    h.update(f"{img.mode}:{img.size[0]}x{img.size[1]}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()
