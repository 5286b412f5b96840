"""Refinement prompts: text files with ``$placeholders`` (``string.Template``), filled per delegated entity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from string import Template

from refineg.llm import ImageScale
from refineg.llm.prompt_files import read_prompt_folder

FILES = ("system.txt", "span_check.txt", "type_box_check.txt")


@dataclass(frozen=True)
class RefinementPrompts:
    """The three prompt files of a prompts folder.

    Placeholders: ``$sentence``, ``$entity``, ``$type``, ``$types`` (comma-separated), ``$image_note``,
    ``$image_size`` (``W x H`` of the image as sent, or ``no image``) and ``$box_format`` (the box coordinate
    convention and this image's coordinate range, :meth:`refineg.llm.ImageScale.box_note`).
    """

    system: str
    span_check: Template
    type_box_check: Template

    @classmethod
    def load(cls, folder: str | Path) -> RefinementPrompts:
        """Reads ``system.txt``, ``span_check.txt`` and ``type_box_check.txt`` from ``folder``.

        Raises:
            FileNotFoundError: A file is missing (the message names it).
        """
        text = read_prompt_folder(folder, FILES)
        return cls(text["system.txt"], Template(text["span_check.txt"]), Template(text["type_box_check.txt"]))

    def span(self, tokens: list[str], entity: str, etype: str, types: list[str]) -> str:
        """The span-check user text."""
        return self.span_check.safe_substitute(
            sentence=" ".join(tokens), entity=entity, type=etype, types=", ".join(types)
        )

    def type_box(self, tokens: list[str], entity: str, etype: str, types: list[str], scale: ImageScale | None) -> str:
        """The type-and-box-check user text (``scale``: the image as sent and the box convention, or ``None``)."""
        note = "The image of the post is attached." if scale else "This post has no image: the box is Null."
        size = f"{scale.sent_size[0]} x {scale.sent_size[1]}" if scale else "no image"
        return self.type_box_check.safe_substitute(
            sentence=" ".join(tokens),
            entity=entity,
            type=etype,
            types=", ".join(types),
            image_note=note,
            image_size=size,
            box_format=scale.box_note() if scale else "no image",
        )
