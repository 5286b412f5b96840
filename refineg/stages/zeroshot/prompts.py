"""The zero-shot baseline's prompt files: ``system.txt`` and ``user.txt`` of a prompts folder."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from string import Template

from refineg.llm import ImageScale
from refineg.llm.boxes import BoxConvention
from refineg.llm.prompt_files import read_prompt_folder


@dataclass(frozen=True)
class ZeroShotPrompts:
    """``system.txt`` and ``user.txt`` of a prompts folder (``string.Template`` placeholders)."""

    system: Template
    user: Template

    @classmethod
    def load(cls, folder: str | Path) -> ZeroShotPrompts:
        """Reads both files from ``folder``.

        Raises:
            FileNotFoundError: A file is missing (the message names it).
        """
        text = read_prompt_folder(folder, ("system.txt", "user.txt"))
        return cls(Template(text["system.txt"]), Template(text["user.txt"]))

    def render(
        self, tokens: Sequence[str], types: Sequence[str], scale: ImageScale | None, convention: BoxConvention
    ) -> tuple[str, str]:
        """``(system text, user text)`` for one post.

        Args:
            tokens: The post's words.
            types: Type inventory.
            scale: The image as sent and the model's box coordinates, or ``None`` without an image.
            convention: The model's box coordinates (``$box_format`` in the rules).
        """
        note = (
            f"The post's image is attached ({scale.sent_size[0]} x {scale.sent_size[1]} pixels; box coordinates: "
            f"{scale.convention.describe_range(scale.sent_size)})."
            if scale
            else "This post has no image: every bounding_box is []."
        )
        values = {
            "types": ", ".join(types),
            "sentence": " ".join(tokens),
            "image_note": note,
            "box_format": convention.describe(),
        }
        return self.system.safe_substitute(values), self.user.safe_substitute(values)
