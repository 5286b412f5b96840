"""Box coordinate conventions of MLLMs: original-image pixels <-> the coordinates a model reads and writes.

Models answer boxes in different frames. Each convention here is a frame of size ``(fw, fh)`` laid over the image,
so that a model coordinate is ``x_model = x_original * fw / W`` (``W``: original width; likewise for y):

- ``pixel``: pixels of the image as sent (after the backend shrank it to ``max_side``); refineg's default.
- ``norm1000``: integers 0-1000 along each axis (Qwen2-VL, InternVL2/2.5, MiniCPM-V, CogVLM).
- ``norm1``: floats 0-1 along each axis.
- ``qwen2.5-vl``: absolute pixels of the grid Qwen2.5-VL's processor resizes the sent image to: each side rounded
  to a multiple of 28 with the area kept within ``[min_pixels, max_pixels]`` (:func:`smart_resize`).

:class:`BoxConvention` converts both ways for one image; :class:`refineg.llm.images.ImageScale` carries one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import BOX_FORMATS

#: Side multiple of Qwen2(.5)-VL's vision grid: 14-pixel patches merged 2 x 2.
QWEN_FACTOR = 28
#: Qwen2.5-VL's processor defaults (4 and 16384 tokens of 28 x 28 pixels).
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28
#: Decimals of ``norm1`` coordinates written into prompts.
NORM1_DECIMALS = 4


def smart_resize(
    height: int,
    width: int,
    factor: int = QWEN_FACTOR,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
) -> tuple[int, int]:
    """The ``(height, width)`` Qwen2-VL / Qwen2.5-VL's image processor resizes an image of this size to.

    Each side is rounded to the nearest multiple of ``factor`` (at least ``factor``). When the rounded area
    exceeds ``max_pixels``, both sides are scaled by ``sqrt(height * width / max_pixels)`` and rounded *down* to
    multiples of ``factor``; when it falls short of ``min_pixels``, scaled up by ``sqrt(min_pixels / (height *
    width))`` and rounded *up*. Python's ``round`` (half to even) is the rule the processor uses.

    Raises:
        ValueError: A side is not positive, or the aspect ratio exceeds 200 (the processor refuses those).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width} x {height}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.1f} exceeds Qwen's limit of 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class BoxConvention:
    """One coordinate convention (see the module docstring) and its conversions.

    Attributes:
        name: ``pixel``, ``norm1000``, ``norm1`` or ``qwen2.5-vl``.
        min_pixels: ``qwen2.5-vl``: the processor's ``min_pixels``.
        max_pixels: ``qwen2.5-vl``: the processor's ``max_pixels``.
    """

    name: str = "pixel"
    min_pixels: int = QWEN_MIN_PIXELS
    max_pixels: int = QWEN_MAX_PIXELS

    def __post_init__(self) -> None:
        if self.name not in BOX_FORMATS:
            raise ValueError(f"unknown box_format {self.name!r}; choose one of {list(BOX_FORMATS)}")

    @classmethod
    def from_config(cls, config: Any) -> BoxConvention:
        """The convention an :class:`~refineg.llm.config.LLMConfig` names."""
        return cls(config.box_format, config.min_pixels, config.max_pixels)

    @property
    def integer(self) -> bool:
        """Whether coordinates are whole numbers (all but ``norm1``)."""
        return self.name != "norm1"

    def frame(self, sent_size: tuple[int, int]) -> tuple[float, float]:
        """``(fw, fh)``: the coordinate range along x and y for an image sent at ``sent_size`` = ``(w, h)``."""
        if self.name == "pixel":
            return float(sent_size[0]), float(sent_size[1])
        if self.name == "norm1000":
            return 1000.0, 1000.0
        if self.name == "norm1":
            return 1.0, 1.0
        h, w = smart_resize(sent_size[1], sent_size[0], QWEN_FACTOR, self.min_pixels, self.max_pixels)
        return float(w), float(h)

    def to_model(
        self,
        box: Sequence[float],
        original_size: tuple[int, int],
        sent_size: tuple[int, int],
        *,
        rounded: bool = False,
    ) -> list[float]:
        """An original-pixel ``[x1, y1, x2, y2]`` box in this convention.

        Args:
            box: The box in original pixels.
            original_size: ``(W, H)`` of the original image.
            sent_size: ``(w, h)`` of the image as sent.
            rounded: Round as a model writes it: whole numbers, or :data:`NORM1_DECIMALS` decimals for ``norm1``.
        """
        fw, fh = self.frame(sent_size)
        sx, sy = fw / original_size[0], fh / original_size[1]
        out = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        if not rounded:
            return out
        if self.integer:
            return [float(round(v)) for v in out]
        return [round(v, NORM1_DECIMALS) for v in out]

    def to_original(
        self,
        box: Sequence[float],
        original_size: tuple[int, int],
        sent_size: tuple[int, int],
        *,
        round_to_int: bool = True,
        clip: bool = True,
    ) -> list[float]:
        """A box in this convention (as a model answered it) in original pixels.

        Args:
            box: ``[x1, y1, x2, y2]`` in this convention.
            original_size: ``(W, H)`` of the original image.
            sent_size: ``(w, h)`` of the image as sent.
            round_to_int: Round to whole original pixels (ReFineG does).
            clip: Clip to the original image's bounds.
        """
        fw, fh = self.frame(sent_size)
        sx, sy = original_size[0] / fw, original_size[1] / fh
        out = [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]
        if clip:
            w, h = original_size
            out = [min(max(v, 0.0), float(lim)) for v, lim in zip(out, (w, h, w, h), strict=True)]
        return [float(round(v)) for v in out] if round_to_int else out

    def format_box(self, box: Sequence[float]) -> list[int] | list[float]:
        """A box already in this convention as JSON-ready numbers (ints, or rounded floats for ``norm1``)."""
        if self.integer:
            return [int(round(v)) for v in box]
        return [round(float(v), NORM1_DECIMALS) for v in box]

    def describe(self) -> str:
        """What the coordinates of a box ``[xmin, ymin, xmax, ymax]`` are, for a prompt (no image size)."""
        return {
            "pixel": "pixel coordinates of the attached image",
            "norm1000": "coordinates normalised to the image size: integers from 0 to 1000, where 0 is the left "
            "(top) edge and 1000 the right (bottom) edge, whatever the image's size",
            "norm1": "coordinates normalised to the image size: decimals from 0 to 1, where 0 is the left (top) "
            "edge and 1 the right (bottom) edge, whatever the image's size",
            "qwen2.5-vl": "absolute pixel coordinates of the image as you see it (after your own resizing)",
        }[self.name]

    def describe_range(self, sent_size: tuple[int, int]) -> str:
        """The coordinate range for an image sent at ``sent_size``, for a prompt (``x 0-812, y 0-560``)."""
        fw, fh = self.frame(sent_size)
        if self.integer:
            return f"x from 0 to {int(fw)}, y from 0 to {int(fh)}"
        return "x and y from 0 to 1"
