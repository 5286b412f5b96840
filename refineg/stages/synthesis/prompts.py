"""Synthesis prompt sets: text files per domain, filled in per seed.

A prompt set is a folder (``configs/prompts/synthesis/<domain>/``) with

- ``role.txt``: who the model is (system message, first part);
- ``guideline.txt``: the entity types with named examples and the "not an entity" rules (system message);
- ``task.txt``: the request for a seed with entities; ``task_no_entities.txt``: for a seed without entities;
- ``output_format.txt``: the JSON the answer must be.

Placeholders (``string.Template``): ``$seed_text``, ``$seed_entities`` (a JSON list of ``{"name", "type"}``),
``$n_reuse``, ``$n_new``, ``$n_total``, ``$types``. A missing placeholder value is an error.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from string import Template

from refineg.config import CONFIG_DIR
from refineg.data import Example
from refineg.llm import Message, system, user
from refineg.llm.prompt_files import read_prompt_folder

PROMPT_FILES = ("role.txt", "guideline.txt", "task.txt", "task_no_entities.txt", "output_format.txt")


def default_prompt_dir(domain: str) -> Path:
    """``configs/prompts/synthesis/<domain>``."""
    return CONFIG_DIR / "prompts" / "synthesis" / domain


@dataclass(frozen=True)
class PromptSet:
    """The templates of one domain and their hash.

    Attributes:
        folder: Where the files were read.
        role, guideline, task, task_no_entities, output_format: The templates.
        hash: First 16 hex digits of the SHA-256 of the five files (names and contents), recorded in the meta of
            every synthetic post so that data made with different prompts can be told apart.
    """

    folder: Path
    role: str
    guideline: str
    task: str
    task_no_entities: str
    output_format: str
    hash: str

    @classmethod
    def load(cls, folder: str | Path) -> PromptSet:
        """Reads the five files of ``folder``.

        Raises:
            FileNotFoundError: A file is missing (the message lists the expected ones).
        """
        folder = Path(folder)
        texts = read_prompt_folder(folder, PROMPT_FILES)
        digest = hashlib.sha256()
        for name in PROMPT_FILES:
            digest.update(name.encode() + b"\0" + texts[name].encode() + b"\0")
        return cls(folder, *(texts[name] for name in PROMPT_FILES), hash=digest.hexdigest()[:16])

    def conversation(self, seed: Example, n_reuse: int, n_new: int, types: list[str]) -> list[Message]:
        """The chat for one seed: system = role + guideline, user = task + output format."""
        entities = [{"name": e.text(seed.tokens), "type": e.type} for e in seed.entities]
        values = {
            "seed_text": " ".join(seed.tokens),
            "seed_entities": json.dumps(entities, ensure_ascii=False),
            "n_reuse": n_reuse,
            "n_new": n_new,
            "n_total": n_reuse + n_new,
            "types": ", ".join(types),
        }
        task = self.task if seed.entities else self.task_no_entities
        fill = lambda text: Template(text).substitute(values)  # noqa: E731
        return [
            system(fill(self.role) + "\n\n" + fill(self.guideline)),
            user(fill(task) + "\n\n" + fill(self.output_format)),
        ]
