"""Grounding prompts: the system rules and the per-post text (``string.Template`` files), and the chat they build.

The chat is: system rules; per demonstration a user turn (its image and text with its gold entities) and an
assistant turn (its gold answer as JSON, boxes in the model's coordinates: ``llm.box_format``, by default the pixels
of the image as sent); then the query's user turn.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from PIL import Image

from refineg.data import Example
from refineg.llm import ImageScale, Message, assistant, system, user
from refineg.llm.boxes import BoxConvention
from refineg.llm.prompt_files import read_prompt_folder

FILES = ("system.txt", "query.txt")


@dataclass(frozen=True)
class GroundingPrompts:
    """The prompt files of a prompts folder.

    ``system.txt`` placeholders: ``$types``, ``$never_grounded`` (comma-separated), ``$box_format`` (what box
    coordinates are, :meth:`refineg.llm.boxes.BoxConvention.describe`). ``query.txt``: ``$sentence``, ``$entities``
    (a JSON array of ``{"entity", "entity_type"}``), ``$image_size`` (``W x H`` as sent) and ``$box_range`` (the
    coordinate range for this image, :meth:`refineg.llm.boxes.BoxConvention.describe_range`).
    """

    system: Template
    query: Template

    @classmethod
    def load(cls, folder: str | Path) -> GroundingPrompts:
        """Reads ``system.txt`` and ``query.txt`` from ``folder``.

        Raises:
            FileNotFoundError: A file is missing (the message names it).
        """
        text = read_prompt_folder(folder, FILES)
        return cls(Template(text["system.txt"]), Template(text["query.txt"]))

    def system_text(
        self, types: Sequence[str], never_grounded: Sequence[str], convention: BoxConvention | None = None
    ) -> str:
        """The system rules (``convention``: the model's box coordinates, default ``pixel``)."""
        return self.system.safe_substitute(
            types=", ".join(types),
            never_grounded=", ".join(never_grounded) or "none",
            box_format=(convention or BoxConvention()).describe(),
        )

    def query_text(self, post: Example, scale: ImageScale) -> str:
        """The user text of ``post`` (its entities are the ones to ground) with its image as ``scale`` sends it."""
        ents = [{"entity": e.text(post.tokens), "entity_type": e.type} for e in post.entities]
        return self.query.safe_substitute(
            sentence=" ".join(post.tokens),
            entities=json.dumps(ents, ensure_ascii=False),
            image_size=f"{scale.sent_size[0]} x {scale.sent_size[1]}",
            box_range=scale.convention.describe_range(scale.sent_size),
        )


def demo_answer(post: Example, scale: ImageScale) -> str:
    """The gold answer of a demonstration as JSON, boxes in the model's coordinates.

    Boxes are rounded as a model writes them: whole numbers, 4 decimals for ``norm1``.
    """
    items = [
        {
            "entity": e.text(post.tokens),
            "entity_type": e.type,
            "bounding_box": [scale.format_box(b) for b in e.boxes],
        }
        for e in post.entities
    ]
    return json.dumps(items, ensure_ascii=False)


def build_chat(
    prompts: GroundingPrompts,
    query: Example,
    image: Image.Image,
    scale: ImageScale,
    demos: Sequence[tuple[Example, Image.Image, ImageScale]],
    types: Sequence[str],
    never_grounded: Sequence[str],
) -> list[Message]:
    """The grounding conversation of one post.

    Args:
        prompts: The prompt templates.
        query: The post; its ``entities`` are those to ground.
        image: The post's image (original pixels; the backend shrinks it to ``scale.sent_size``).
        scale: Original <-> model-coordinate mapping of ``image`` (its convention is stated in the rules).
        demos: ``(post, image, scale)`` of each demonstration (gold entities and boxes), best first.
        types: Entity type inventory.
        never_grounded: Types that never get a box.
    """
    messages = [system(prompts.system_text(types, never_grounded, scale.convention))]
    for demo, demo_image, demo_scale in demos:
        messages.append(user(demo_image, prompts.query_text(demo, demo_scale)))
        messages.append(assistant(demo_answer(demo, demo_scale)))
    messages.append(user(image, prompts.query_text(query, scale)))
    return messages
