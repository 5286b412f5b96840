"""Reading data files safely, and keeping names from data inside their folder.

UTF-8 text and JSON whose faults are :class:`DataFormatError` s naming file and line; names (post ids, image
names) that must stay inside the folder they belong to.
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from refineg.data.errors import DataFormatError

# Bytes that are not UTF-8 decode to these lone surrogates under errors="surrogateescape".
_ESCAPED = re.compile("[\udc80-\udcff]")


def _bad_byte(path: str | Path, line: int, column: int, byte: int) -> DataFormatError:
    return DataFormatError(
        path, f"not UTF-8 text: byte 0x{byte:02x} at column {column} (re-encode the file as UTF-8)", line=line
    )


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """``(line number, line without its end)`` of a UTF-8 text file (LF, CR LF and CR end lines).

    Raises:
        DataFormatError: The file is missing, or a line holds bytes that are not UTF-8 (file, line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    with path.open(encoding="utf-8", errors="surrogateescape") as fh:
        for lineno, raw in enumerate(fh, start=1):
            line = raw.rstrip("\n")
            bad = _ESCAPED.search(line)
            if bad:
                raise _bad_byte(path, lineno, bad.start() + 1, ord(bad.group()) - 0xDC00)
            yield lineno, line


def read_text(path: str | Path) -> str:
    """The whole UTF-8 text of ``path``.

    Raises:
        DataFormatError: The file is missing or holds bytes that are not UTF-8 (file, line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_start = data.rfind(b"\n", 0, err.start) + 1
        raise _bad_byte(
            path, data.count(b"\n", 0, err.start) + 1, err.start - line_start + 1, data[err.start]
        ) from None


class _NonStandardConstant(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    raise _NonStandardConstant(name)


def parse_json(text: str, path: str | Path, line: int | None = None) -> Any:
    """``json.loads(text)`` of standard JSON; faults become :class:`DataFormatError` s at ``path``.

    ``NaN``, ``Infinity`` and ``-Infinity`` (which Python's json module accepts and writes, but JSON does not have)
    are refused.

    Args:
        text: The JSON text.
        path: The file it comes from.
        line: The line of ``path`` that holds ``text`` (JSONL); ``None`` for a whole-file document.

    Raises:
        DataFormatError: Invalid JSON (with its line and column), a non-standard constant, or nesting too deep to
            parse.
    """
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except _NonStandardConstant as err:
        raise DataFormatError(
            path, f"invalid JSON ({err.args[0]} is not a JSON number; numbers must be finite)", line=line
        ) from None
    except json.JSONDecodeError as err:
        where = f" at column {err.colno}" if line is not None else ""
        raise DataFormatError(
            path, f"invalid JSON ({err.msg}{where})", line=line if line is not None else err.lineno
        ) from None
    except RecursionError:
        raise DataFormatError(path, "invalid JSON (nested too deeply to read)", line=line) from None


def non_finite_field(value: Any, where: str = "") -> tuple[str, float] | None:
    """The place (``entities[0].score``) and value of the first number in ``value`` that is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "value", value
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for place, item in items:
        found = non_finite_field(item, place)
        if found is not None:
            return found
    return None


def dump_json(value: Any, path: str | Path, record: str | None = None, **kwargs: Any) -> str:
    """``json.dumps(value, **kwargs)`` that refuses NaN and infinities (no ``NaN``/``Infinity`` in a written file).

    Args:
        value: What to write.
        path: The file it is written to, for the message.
        record: The post id it belongs to, for the message.
        **kwargs: More :func:`json.dumps` arguments (``ensure_ascii``, ``indent``).

    Raises:
        DataFormatError: ``value`` holds a number that is not finite (the message names its place).
    """
    try:
        return json.dumps(value, allow_nan=False, **kwargs)
    except ValueError:
        place, number = non_finite_field(value) or ("a number", math.nan)
        raise DataFormatError(
            path, f"{place} is {number}, not a finite number (JSON has none), so nothing is written", record=record
        ) from None


def load_json(path: str | Path) -> Any:
    """The JSON document of a UTF-8 file (see :func:`read_text` and :func:`parse_json`)."""
    return parse_json(read_text(path), path)


def torch_archive(
    path: str | Path, what: str = "checkpoint", written_by: str = "a .ckpt file written by train.py"
) -> Path:
    """``path`` after checking that it is a file ``torch.save`` could have written (a zip archive).

    Args:
        path: The file.
        what: What it should be, for the message.
        written_by: What writes such files, for the message.

    Raises:
        DataFormatError: The file is missing or is not a zip archive (e.g. a JSON file given as a checkpoint).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, f"{what} not found")
    if not zipfile.is_zipfile(path):
        raise DataFormatError(path, f"not a PyTorch {what} (expected {written_by})")
    return path


def inside_folder(
    folder: str | Path,
    name: Any,
    what: str = "name",
    *,
    file_name: bool = False,
    source: str | Path | None = None,
    line: int | None = None,
    record: str | None = None,
) -> Path:
    r"""``folder / name`` for a ``name`` taken from data (an image name, a post id), which must stay inside ``folder``.

    Refused: anything but a non-empty string; a NUL character; an absolute name (``/x``, ``\x``, ``C:x``); a
    ``..`` part (``/`` and ``\`` both separate parts). The check is on the name, so links inside the folder are
    followed as its owner made them. With ``file_name`` the name must be one plain file name (no separator, not
    ``.``): for file names made from post ids.

    Args:
        folder: The folder the name belongs to.
        name: The name.
        what: What the name is, for the message (``"image"``, ``"post id"``).
        file_name: Require a single file name.
        source: The file the name was read from, for the message (default: ``folder``).
        line: The line of ``source`` that holds the name.
        record: The post (record) id that holds the name.

    Raises:
        DataFormatError: The name is refused; the message names the source, its line or record, and the name.
    """
    problem = None
    if not isinstance(name, str) or not name:
        problem = f"{what} {name!r} is not a non-empty string"
    elif "\0" in name:
        problem = f"{what} {name!r} contains a NUL character"
    else:
        parts = re.split(r"[\\/]", name)
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            problem = f"{what} {name!r} is an absolute path; names are relative to {folder}"
        elif ".." in parts:
            problem = f"{what} {name!r} has a '..' part, which could leave {folder}"
        elif file_name and (len(parts) > 1 or name == "."):
            problem = f"{what} {name!r} is not a plain file name (it would name a path below {folder})"
    if problem is not None:
        raise DataFormatError(source if source is not None else folder, problem, line=line, record=record)
    return Path(folder) / name
