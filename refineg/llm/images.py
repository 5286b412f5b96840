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
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from refineg.data.images import image_size, load_image


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
    """Maps boxes between original-image pixels and the pixels of the image actually sent.

    Attributes:
        original_size: ``(width, height)`` of the original image.
        sent_size: ``(width, height)`` of the resized image sent to the model.
    """

    original_size: tuple[int, int]
    sent_size: tuple[int, int]

    @classmethod
    def for_image(cls, source: Image.Image | str | Path | tuple[int, int], max_side: int | None) -> ImageScale:
        """The scale a backend with ``max_side`` applies to ``source`` (an image, a path, or a ``(w, h)`` size)."""
        if isinstance(source, tuple):
            width, height = source
        else:
            width, height = image_size(source)
        return cls((width, height), fit_longest_side(width, height, max_side))

    @property
    def factors(self) -> tuple[float, float]:
        """``(sx, sy)``: sent pixels per original pixel along x and y."""
        return self.sent_size[0] / self.original_size[0], self.sent_size[1] / self.original_size[1]

    def to_sent(self, box: Sequence[float], *, round_to_int: bool = False) -> list[float]:
        """Scales an ``[xmin, ymin, xmax, ymax]`` box from original to sent pixels."""
        sx, sy = self.factors
        out = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        return [float(round(v)) for v in out] if round_to_int else out

    def to_original(self, box: Sequence[float], *, round_to_int: bool = True, clip: bool = True) -> list[float]:
        """Scales an ``[xmin, ymin, xmax, ymax]`` box from sent back to original pixels.

        Args:
            box: Box in sent-image pixels (as the model answered).
            round_to_int: Round to whole pixels (ReFineG does).
            clip: Clip to the original image's bounds.
        """
        sx, sy = self.factors
        out = [box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy]
        if clip:
            w, h = self.original_size
            limits = (w, h, w, h)
            out = [min(max(v, 0.0), float(lim)) for v, lim in zip(out, limits, strict=True)]
        return [float(round(v)) for v in out] if round_to_int else out


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
    """Loads ``source``, converts it to RGB and shrinks it to ``max_side``."""
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
