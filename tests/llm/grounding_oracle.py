"""A grounding oracle for the loopback chat server: answers each grounding chat with the gold boxes.

``GroundingOracle(posts).install(server)`` makes a :class:`~tests.llm.chat_server.ChatServer` answer every
chat-completions request of the ``mllm`` grounder the way a perfect MLLM would, in the pixels of the images it
actually received, and reject (HTTP 400, recorded in ``server.errors``) a request that a real model could not
answer right. Per request it:

- walks the turns: ``system``, then ``(user, assistant)`` per demonstration, then the query's ``user`` turn; every
  user turn must hold exactly one image (a base64 JPEG data URL, decoded here) and the prompt text;
- identifies the post of each user turn by its ``Post:`` line (the sentence) and checks that the image received
  is that post's picture: its aspect ratio matches the gold frame within a pixel of rounding, and it differs
  little from the gold picture when both are area-averaged to at most 64 px on the long side (mean absolute
  difference, 0-255);
- checks that the ``Image size: W x H`` line states the size of the image received, and that the prompt states
  the box convention the oracle answers in (``box_format``): the system rules describe it and the ``Box
  coordinates:`` line gives the coordinate range for the image received;
- checks each demonstration's assistant answer: the same entities in the same order, and every box inside the
  coordinate frame of the demonstration image as received and equal to the demonstration's gold box converted to
  that frame within ``demo_tolerance`` (in the convention's units);
- answers the query's entities (the ``Entities:`` line) in the paper's format ``[{"entity", "entity_type",
  "bounding_box"}]``: gold boxes converted from the gold frame to the convention's frame for the query image
  received (the last image of the request), rounded as a model would (whole numbers; 3 decimals for ``norm1``);
  one box flat ``[x1, y1, x2, y2]``, several as a list of boxes, none as ``[]``. When the request carries a
  response schema (``response_format`` or ``guided_json``), the answer takes the schema's form instead
  (``{"entities": [...]}``, every ``bounding_box`` a list of boxes) and is checked against the schema.

The convention frames are computed here, independently of refineg: ``pixel``: the received size; ``norm1000``:
1000 x 1000; ``norm1``: 1 x 1; ``qwen2.5-vl``: the received size with each side rounded to a multiple of 28 and
the area brought within ``[min_pixels, max_pixels]`` (Qwen2.5-VL's processor rule). Nothing about the original
image size travels with the request: the scale comes from the decoded image's size and the gold frame the oracle
holds.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.llm.chat_server import BadRequest, ChatServer, decode_image_url
from tests.llm.schema_server import requested_schema, validate

_SIZE = re.compile(r"Image size: (\d+) x (\d+)")
_RANGE = re.compile(r"Box coordinates: ([^.\n]*)")
# what the system rules must say for each convention
_RULE_WORDS = {
    "pixel": "pixel coordinates of the attached image",
    "norm1000": "integers from 0 to 1000",
    "norm1": "decimals from 0 to 1",
    "qwen2.5-vl": "absolute pixel coordinates of the image as you see it",
}


def qwen_grid(size: tuple[int, int], min_pixels: int = 3136, max_pixels: int = 12845056) -> tuple[int, int]:
    """``(w, h)`` Qwen2.5-VL's processor resizes a ``size`` image to: sides to multiples of 28, area bounded."""
    w, h = size
    grid = [max(28, 28 * round(v / 28)) for v in (w, h)]
    area = grid[0] * grid[1]
    if area > max_pixels or area < min_pixels:
        k = math.sqrt(max_pixels / (w * h)) if area > max_pixels else math.sqrt(min_pixels / (w * h))
        step = math.floor if area > max_pixels else math.ceil
        grid = [28 * step(v * k / 28) for v in (w, h)]
    return grid[0], grid[1]


def convention_frame(box_format: str, size: tuple[int, int], min_pixels: int, max_pixels: int) -> tuple[float, float]:
    """The coordinate frame ``(fw, fh)`` of ``box_format`` for an image received at ``size``."""
    if box_format == "pixel":
        return float(size[0]), float(size[1])
    if box_format == "norm1000":
        return 1000.0, 1000.0
    if box_format == "norm1":
        return 1.0, 1.0
    if box_format == "qwen2.5-vl":
        gw, gh = qwen_grid(size, min_pixels, max_pixels)
        return float(gw), float(gh)
    raise ValueError(box_format)


_POST = re.compile(r"^Post: (.*)$", re.M)
_ENTITIES = re.compile(r"^Entities: (.*)$", re.M)


@dataclass
class GoldPost:
    """What the oracle knows of one post.

    Attributes:
        sentence: The post text as the prompt shows it (tokens joined by spaces); the post's key.
        frame: ``(width, height)`` of the pixel frame the gold boxes are given in (e.g. an annotation's
            ``<size>``); any frame with the picture's aspect ratio works.
        entities: ``(surface, type, boxes)`` per entity in post order; ``boxes`` in ``frame`` pixels.
        picture: The post's picture (any size with the frame's aspect ratio), to check the pixels received.
    """

    sentence: str
    frame: tuple[int, int]
    entities: list[tuple[str, str, list[list[float]]]]
    picture: Image.Image | None = None


@dataclass
class Seen:
    """One answered request: the query post's sentence and the sizes of the images received."""

    sentence: str
    size: tuple[int, int]
    demos: list[tuple[str, tuple[int, int]]] = field(default_factory=list)


def _scaled(box: Sequence[float], frame: tuple[int, int], size: tuple[int, int]) -> list[float]:
    sx, sy = size[0] / frame[0], size[1] / frame[1]
    return [box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy]


def _box_list(value: Any) -> list[list[float]]:
    """Boxes of a ``bounding_box`` value: ``[]``, one flat box or a list of boxes."""
    if not value:
        return []
    if all(isinstance(v, (int, float)) for v in value):
        return [list(value)]
    return [list(b) for b in value]


class GroundingOracle:
    """Answers grounding chats with gold boxes (see the module docstring).

    Args:
        posts: Every post the server may see, queries and demonstrations alike (sentences must be unique).
        demo_tolerance_px: Largest allowed difference between a demonstration box as sent and its gold box scaled
            to the received image.
        pixel_tolerance: Largest allowed mean absolute difference between the received image and the gold
            picture, both area-averaged to at most 64 px on the long side.
    """

    def __init__(
        self,
        posts: Sequence[GoldPost],
        demo_tolerance_px: float = 1.0,
        pixel_tolerance: float = 8.0,
        box_format: str = "pixel",
        min_pixels: int = 3136,
        max_pixels: int = 12845056,
    ):
        self.posts = {p.sentence: p for p in posts}
        if len(self.posts) != len(posts):
            raise ValueError("oracle posts need unique sentences")
        self.box_format, self.min_pixels, self.max_pixels = box_format, min_pixels, max_pixels
        # in the convention's units: one unit for whole-number conventions, 0.001 for norm1
        self.demo_tolerance = demo_tolerance_px * (0.001 if box_format == "norm1" else 1.0)
        self.structured: list[str | None] = []  # the schema mode of each answered request
        self.pixel_tolerance = pixel_tolerance
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.pixel_diffs: list[float] = []  # mean absolute differences of the accepted images

    def install(self, server: ChatServer) -> GroundingOracle:
        """Makes ``server`` answer through this oracle; returns ``self``."""
        server.body_responder = self
        return self

    def _user_turn(self, message: dict[str, Any], role: str) -> tuple[GoldPost, tuple[int, int], str]:
        content = message.get("content")
        if isinstance(content, str):
            raise BadRequest(f"{role}: a user turn without an image")
        urls = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
        text = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        if len(urls) != 1:
            raise BadRequest(f"{role}: {len(urls)} images in one user turn")
        try:
            image = decode_image_url(urls[0])
        except ValueError as err:
            raise BadRequest(f"{role}: {err}") from None
        post_line = _POST.search(text)
        if post_line is None or post_line.group(1) not in self.posts:
            raise BadRequest(f"{role}: unknown post {post_line.group(1) if post_line else text!r}")
        gold = self.posts[post_line.group(1)]
        size = image.size
        stated = _SIZE.search(text)
        if stated is None or (int(stated.group(1)), int(stated.group(2))) != size:
            raise BadRequest(
                f"{role} {gold.sentence!r}: prompt states "
                f"{stated.group(0) if stated else 'no image size'}, image received is {size}"
            )
        self._check_picture(gold, image, role)
        fw, fh = self.frame(size)
        want = "x and y from 0 to 1" if self.box_format == "norm1" else f"x from 0 to {int(fw)}, y from 0 to {int(fh)}"
        stated_range = _RANGE.search(text)
        if stated_range is None or stated_range.group(1) != want:
            raise BadRequest(
                f"{role} {gold.sentence!r}: prompt states box coordinates "
                f"{stated_range.group(1) if stated_range else 'nowhere'!r}, the {self.box_format} frame is {want!r}"
            )
        return gold, size, text

    def frame(self, size: tuple[int, int]) -> tuple[float, float]:
        """The coordinate frame of the oracle's convention for an image received at ``size``."""
        return convention_frame(self.box_format, size, self.min_pixels, self.max_pixels)

    def _model_box(self, box: Sequence[float], gold: GoldPost, size: tuple[int, int], digits: int | None) -> list:
        out = _scaled(box, gold.frame, self.frame(size))
        if self.box_format == "norm1":
            return [round(v, 3) for v in out] if digits is not None else out
        return [round(v) for v in out] if digits is not None else out

    def _check_picture(self, gold: GoldPost, image: Image.Image, role: str) -> None:
        (w, h), (fw, fh) = image.size, gold.frame
        if abs(w * fh / fw - h) > 1 and abs(h * fw / fh - w) > 1:
            raise BadRequest(
                f"{role} {gold.sentence!r}: image received {w}x{h} does not have the aspect of the {fw}x{fh} frame"
            )
        if gold.picture is None:
            return
        # compared as area averages at most 64 px on the long side: JPEG and resampling noise average out
        small = (max(1, round(w * min(1.0, 64 / max(w, h)))), max(1, round(h * min(1.0, 64 / max(w, h)))))
        ref, got = (
            np.asarray(im.convert("RGB").resize(small, Image.Resampling.BOX), dtype=np.float32)
            for im in (gold.picture, image)
        )
        diff = float(np.abs(ref - got).mean())
        if diff > self.pixel_tolerance:
            raise BadRequest(
                f"{role} {gold.sentence!r}: the image received is not this post's picture "
                f"(mean absolute difference {diff:.1f})"
            )
        with self.lock:
            self.pixel_diffs.append(diff)

    def _check_demo(self, gold: GoldPost, size: tuple[int, int], answer: str, role: str) -> None:
        try:
            items = json.loads(answer)
        except json.JSONDecodeError as err:
            raise BadRequest(f"{role} {gold.sentence!r}: answer is not JSON ({err})") from None
        names = [(i.get("entity"), i.get("entity_type")) for i in items]
        if names != [(n, t) for n, t, _ in gold.entities]:
            raise BadRequest(f"{role} {gold.sentence!r}: answer entities {names} are not the gold ones")
        w, h = self.frame(size)
        for item, (name, _, boxes) in zip(items, gold.entities, strict=True):
            sent = _box_list(item.get("bounding_box"))
            if len(sent) != len(boxes):
                raise BadRequest(f"{role} {gold.sentence!r}, {name!r}: {len(sent)} boxes for {len(boxes)} gold")
            for box, gold_box in zip(sent, boxes, strict=True):
                if not (0 <= box[0] < box[2] <= w and 0 <= box[1] < box[3] <= h):
                    raise BadRequest(
                        f"{role} {gold.sentence!r}, {name!r}: box {box} is not inside the {w}x{h} {self.box_format} "
                        f"frame of the image received"
                    )
                want = self._model_box(gold_box, gold, size, None)
                if max(abs(a - b) for a, b in zip(box, want, strict=True)) > self.demo_tolerance:
                    raise BadRequest(
                        f"{role} {gold.sentence!r}, {name!r}: box {box} is not the gold box "
                        f"{[round(v, 4) for v in want]} in the {w}x{h} {self.box_format} frame of the image received"
                    )

    def _answer(self, gold: GoldPost, size: tuple[int, int], text: str, wrapped: bool) -> list | dict:
        asked_line = _ENTITIES.search(text)
        if asked_line is None:
            raise BadRequest(f"query {gold.sentence!r}: no Entities line")
        asked = json.loads(asked_line.group(1))
        free = list(gold.entities)
        items = []
        for item in asked:
            match = next((e for e in free if e[0] == item["entity"]), None)
            if match is None:
                raise BadRequest(f"query {gold.sentence!r}: entity {item['entity']!r} is not in the gold post")
            free.remove(match)
            boxes = [self._model_box(b, gold, size, 0) for b in match[2]]
            items.append(
                {
                    "entity": item["entity"],
                    "entity_type": item["entity_type"],
                    "bounding_box": boxes[0] if len(boxes) == 1 and not wrapped else boxes,
                }
            )
        return {"entities": items} if wrapped else items

    def __call__(self, body: dict[str, Any]) -> str:
        mode, _, schema = requested_schema(body)
        rules = " ".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "system")
        if _RULE_WORDS[self.box_format] not in rules:
            raise BadRequest(f"the system rules do not state the {self.box_format} box convention")
        turns = [m for m in body.get("messages", []) if m.get("role") != "system"]
        if not turns or len(turns) % 2 != 1:
            raise BadRequest(f"expected (user, assistant) pairs and a final user turn, got {len(turns)} turns")
        demos = []
        for n in range(0, len(turns) - 1, 2):
            user, reply = turns[n], turns[n + 1]
            if user.get("role") != "user" or reply.get("role") != "assistant":
                raise BadRequest(f"demonstration {n // 2}: roles {user.get('role')}, {reply.get('role')}")
            gold, size, _ = self._user_turn(user, f"demonstration {n // 2}")
            self._check_demo(gold, size, reply["content"], f"demonstration {n // 2}")
            demos.append((gold.sentence, size))
        if turns[-1].get("role") != "user":
            raise BadRequest("the last turn is not the user's")
        gold, size, text = self._user_turn(turns[-1], "query")
        answer = self._answer(gold, size, text, wrapped=schema is not None)
        if schema is not None:
            problems = validate(answer, schema)
            if problems:
                raise BadRequest(f"query {gold.sentence!r}: the schema sent does not allow the answer: {problems[:3]}")
        with self.lock:
            self.seen.append(Seen(gold.sentence, size, demos))
            self.structured.append(mode)
        return json.dumps(answer)
