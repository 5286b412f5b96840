"""Grounding prompts: the system rules and the per-post text (``string.Template`` files), and the chat they build.

The chat is: system rules; per demonstration a user turn (its image and text with its gold entities) and an
assistant turn (its gold answer as JSON, boxes in the pixels of the image as sent); then the query's user turn.
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
from refineg.llm.prompt_files import read_prompt_folder

FILES = ("system.txt", "query.txt")


@dataclass(frozen=True)
class GroundingPrompts:
    """The prompt files of a prompts folder.

    ``system.txt`` placeholders: ``$types``, ``$never_grounded`` (comma-separated). ``query.txt``: ``$sentence``,
    ``$entities`` (a JSON array of ``{"entity", "entity_type"}``) and ``$image_size`` (``W x H`` as sent).
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

    def system_text(self, types: Sequence[str], never_grounded: Sequence[str]) -> str:
        """The system rules."""
        return self.system.safe_substitute(types=", ".join(types), never_grounded=", ".join(never_grounded) or "none")

    def query_text(self, post: Example, sent_size: tuple[int, int]) -> str:
        """The user text of ``post`` (its entities are the ones to ground)."""
        ents = [{"entity": e.text(post.tokens), "entity_type": e.type} for e in post.entities]
        return self.query.safe_substitute(
            sentence=" ".join(post.tokens),
            entities=json.dumps(ents, ensure_ascii=False),
            image_size=f"{sent_size[0]} x {sent_size[1]}",
        )


def demo_answer(post: Example, scale: ImageScale) -> str:
    """The gold answer of a demonstration as JSON, boxes scaled to the sent image and rounded to whole pixels."""
    items = [
        {
            "entity": e.text(post.tokens),
            "entity_type": e.type,
            "bounding_box": [[int(v) for v in scale.to_sent(b, round_to_int=True)] for b in e.boxes],
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
        scale: Original <-> sent mapping of ``image``.
        demos: ``(post, image, scale)`` of each demonstration (gold entities and boxes), best first.
        types: Entity type inventory.
        never_grounded: Types that never get a box.
    """
    messages = [system(prompts.system_text(types, never_grounded))]
    for demo, demo_image, demo_scale in demos:
        messages.append(user(demo_image, prompts.query_text(demo, demo_scale.sent_size)))
        messages.append(assistant(demo_answer(demo, demo_scale)))
    messages.append(user(image, prompts.query_text(query, scale.sent_size)))
    return messages
