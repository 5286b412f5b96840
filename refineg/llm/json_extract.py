"""JSON from LLM answers that wrap it in code fences or chat, with a JSON parser (never ``eval``)."""

from __future__ import annotations

import json
import re
from typing import Any

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)```", re.DOTALL)
# A comma directly before a closing bracket is the commonest near-JSON slip of LLMs; only outside strings.
_STRING_OR_TRAILING_COMMA = re.compile(r'"(?:[^"\\]|\\.)*"|,(\s*[}\]])', re.DOTALL)


class JSONExtractionError(ValueError):
    """The answer holds no JSON value of the expected type."""


def _drop_trailing_commas(text: str) -> str:
    return _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(0), text)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return json.loads(_drop_trailing_commas(text))


def _type_ok(value: Any, expect: type | tuple[type, ...] | None) -> bool:
    return expect is None or isinstance(value, expect)


def _scan(text: str, expect: type | tuple[type, ...] | None) -> Any:
    """First JSON object or array that starts at some ``{``/``[`` in ``text`` and decodes completely."""
    decoder = json.JSONDecoder()
    for start, ch in enumerate(text):
        if ch not in "{[":
            continue
        for candidate in (text[start:], _drop_trailing_commas(text[start:])):
            try:
                value, _ = decoder.raw_decode(candidate)
            except json.JSONDecodeError:
                continue
            if _type_ok(value, expect):
                return value
            break
    raise JSONExtractionError("no JSON value found")


def extract_json(text: str, expect: type | tuple[type, ...] | None = (dict, list)) -> Any:
    """Extracts the JSON value an LLM answer carries.

    Tries, in order: the whole answer; each fenced code block (````json ... ````, ```` ... ````); the first
    object or array embedded in surrounding prose. Trailing commas before ``}``/``]`` are tolerated.

    Args:
        text: The answer text.
        expect: Accepted type(s) of the top-level value; ``None`` accepts any JSON value. By default an object
            or an array, so that a bare number inside prose is not taken for the answer.

    Returns:
        The decoded value.

    Raises:
        JSONExtractionError: No JSON value of the expected type is found (for example a truncated answer).
    """
    if text is None:
        raise JSONExtractionError("empty answer")
    stripped = text.strip()
    if not stripped:
        raise JSONExtractionError("empty answer")
    try:
        value = _loads(stripped)
        if _type_ok(value, expect):
            return value
    except json.JSONDecodeError:
        pass
    for match in _FENCE.finditer(stripped):
        block = match.group(2).strip()
        try:
            value = _loads(block)
        except json.JSONDecodeError:
            continue
        if _type_ok(value, expect):
            return value
    try:
        return _scan(stripped, expect)
    except JSONExtractionError:
        pass
    snippet = stripped[:80].replace("\n", " ")
    raise JSONExtractionError(f"no JSON {_describe(expect)} in answer starting {snippet!r}")


def _describe(expect: type | tuple[type, ...] | None) -> str:
    if expect is None:
        return "value"
    types = expect if isinstance(expect, tuple) else (expect,)
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)
