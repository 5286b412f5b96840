"""Prompt folders: the stages keep their prompts as text files with ``$placeholders`` under ``configs/prompts/``.

The built-in folders are part of the package (``refineg.resources``); a folder a user names wins where it exists.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from refineg.resources import resolve_path


def read_prompt_folder(folder: str | Path, names: Sequence[str]) -> dict[str, str]:
    """Reads the files ``names`` of ``folder`` (UTF-8, outer whitespace stripped).

    ``folder`` is used as given where it exists; a missing ``configs/...`` folder is read from the package.

    Raises:
        FileNotFoundError: Some files are missing; the message names them and the full set the folder needs.
    """
    folder = resolve_path(folder)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"prompt folder {folder} lacks {missing} (a prompt set needs {list(names)})")
    return {name: (folder / name).read_text(encoding="utf-8").strip() for name in names}
