"""The configuration tree shipped inside the package, and how a path a user names is matched to it.

The YAML files and prompt folders live in ``refineg/configs/`` (the repository's top-level ``configs`` is a link to
it) and are found through ``importlib.resources``, so a wheel, an editable install and a checkout read the same files
from any working folder. A path a user passes (``--config configs/pipeline/x.yaml``, ``prompts_dir=...``) is used
as given when it exists, absolute or relative to the working folder; only when it does not, a relative path that
starts with ``configs/`` is looked up in the packaged tree, so the README's commands also work outside a checkout.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

PREFIX = "configs"  # how users and docs spell the packaged tree


@functools.cache
def config_root() -> Path:
    """The packaged configuration folder: ``default.yaml``, one folder per config group, ``prompts/``."""
    root = resources.files("refineg") / PREFIX
    if isinstance(root, Path):
        return root
    # refineg imported from a zip archive: the loaders need real files, so copy the tree out once per process
    out = Path(tempfile.mkdtemp(prefix="refineg-configs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    _copy_tree(root, out)
    return out


def builtin_path(rel: str | Path) -> Path:
    """``rel`` inside the packaged configuration folder, e.g. ``builtin_path("prompts/grounding")``."""
    return config_root() / rel


def resolve_path(path: str | Path) -> Path:
    """A user's path as given where it exists, else its packaged copy (``configs/a/b`` -> ``builtin_path("a/b")``).

    A path that exists in neither place comes back unchanged, so the caller's error names what the user typed.
    """
    given = Path(path)
    if given.exists() or given.is_absolute() or given.parts[:1] != (PREFIX,):
        return given
    packaged = builtin_path(Path(*given.parts[1:]))
    return packaged if packaged.exists() else given


def _copy_tree(src: Traversable, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for item in src.iterdir():
        if item.is_dir():
            _copy_tree(item, dst / item.name)
        else:
            (dst / item.name).write_bytes(item.read_bytes())
