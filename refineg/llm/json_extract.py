"""JSON from LLM answers that wrap it in code fences, chat or reasoning, with a JSON parser (never ``eval``).

The search is linear in the answer's length: one left-to-right pass over the text finds every candidate object
or array (a small JSON lexer and pushdown automaton; see :func:`_candidate_spans`), and each candidate is decoded
by :mod:`json` once. Reasoning blocks (``<think>...</think>``) are removed first, values nested deeper than
:data:`MAX_DEPTH` are skipped, and nothing but :class:`JSONExtractionError` is ever raised for a bad answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

#: Deepest nesting of objects and arrays accepted; deeper values are skipped (an LLM answer needs a handful).
MAX_DEPTH = 64

_FENCE = re.compile(r"```[ \t]*+([A-Za-z0-9_-]*+)[ \t]*+\n?(.*?)```", re.DOTALL)
# A comma directly before a closing bracket is the commonest near-JSON slip of LLMs; only outside strings.
_STRING_OR_TRAILING_COMMA = re.compile(r'"(?:[^"\\]|\\.)*+"|,(\s*+[}\]])', re.DOTALL)
_REASONING_OPEN = re.compile(r"<(think|thinking|reasoning)\s*+>", re.IGNORECASE)
_REASONING_CLOSE = re.compile(r"</(think|thinking|reasoning)\s*+>", re.IGNORECASE)

# Lexer pieces; possessive quantifiers keep every match linear.
_OPENER = re.compile(r"[\[{]")
_SPACE = re.compile(r"[ \t\r\n]*+")
_STRING = re.compile(r'"(?:[^"\\]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"')
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?(?:[eE][+-]?[0-9]++)?")
_LITERAL = re.compile(r"true|false|null")
_BRACKET_OR_QUOTE = re.compile(r'[\[\]{}"]')

# Parser states: what may come next inside the innermost open container.
_VALUE, _VALUE_OR_CLOSE, _KEY_OR_CLOSE, _COLON, _AFTER = range(5)

JSONType = type | tuple[type, ...] | None


class JSONExtractionError(ValueError):
    """The answer holds no JSON value of the expected type (or none that fits the expected answer)."""


def strip_reasoning(text: str) -> str:
    """``text`` without reasoning blocks: ``<think>``, ``<thinking>`` or ``<reasoning>`` ... closing tag.

    A closing tag with no opening tag before it (chat templates often put the opening tag into the prompt) drops
    everything before it; an opening tag that is never closed drops everything after it (the answer was cut off
    while reasoning). Tags are matched case-insensitively. Linear in the length of ``text``.
    """
    first_open = _REASONING_OPEN.search(text)
    first_close = _REASONING_CLOSE.search(text)
    if first_close is not None and (first_open is None or first_close.start() < first_open.start()):
        text = text[first_close.end() :]
    out = []
    pos = 0
    while True:
        opened = _REASONING_OPEN.search(text, pos)
        if opened is None:
            out.append(text[pos:])
            break
        out.append(text[pos : opened.start()])
        closed = _REASONING_CLOSE.search(text, opened.end())
        if closed is None:
            break
        pos = closed.end()
    return "".join(out)


def _drop_trailing_commas(text: str) -> str:
    return _STRING_OR_TRAILING_COMMA.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(0), text)


def _decode(text: str) -> tuple[bool, Any]:
    """``(True, value)`` when ``text`` is one JSON value (trailing commas tolerated), else ``(False, None)``.

    Control characters inside strings are accepted (``strict=False``): LLMs write raw newlines into strings.
    ``RecursionError`` (deep nesting) and ``ValueError`` (e.g. a number beyond Python's digit limit) are not
    answers either.
    """
    try:
        return True, json.loads(text, strict=False)
    except (ValueError, RecursionError):
        pass
    if "," in text:
        try:
            return True, json.loads(_drop_trailing_commas(text), strict=False)
        except (ValueError, RecursionError):
            pass
    return False, None


def _too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests objects/arrays more than ``limit`` levels deep (iterative, linear)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (dict, list)):
            if depth > limit:
                return True
            items = v.values() if isinstance(v, dict) else v
            stack.extend((x, depth + 1) for x in items if isinstance(x, (dict, list)))
    return False


def _skip_nested(text: str, pos: int, depth: int) -> int:
    """Position after the container that is ``depth`` levels open at ``pos`` (an opening bracket), or the end."""
    n = len(text)
    while depth > 0:
        m = _BRACKET_OR_QUOTE.search(text, pos)
        if m is None:
            return n
        pos = m.start()
        c = text[pos]
        if c == '"':
            s = _STRING.match(text, pos)
            pos = s.end() if s is not None else pos + 1
            continue
        depth += 1 if c in "[{" else -1
        pos += 1
    return pos


def _candidate_spans(text: str) -> Iterator[tuple[int, int]]:
    """``(start, end)`` of every candidate object/array of ``text``, left to right, in one linear pass.

    Outside candidates (prose) only ``{`` and ``[`` matter. From one of them the text is lexed as JSON (strings,
    numbers, literals, punctuation) by a pushdown automaton that checks the grammar (a trailing comma before a
    closing bracket is allowed). A container that closes at the outer level is a candidate. At the first
    grammar error (or the end of the text) the open containers are abandoned: the complete containers directly
    inside them become candidates, and the search goes on in prose mode *from the error*, never from an earlier
    position, so each character is lexed once. A container opened deeper than :data:`MAX_DEPTH` levels is
    skipped whole.
    """
    n = len(text)
    pos = 0
    while True:
        found = _OPENER.search(text, pos)
        if found is None:
            return
        pos = found.start()
        # each open container: (its closing character, where it starts, complete containers directly inside it)
        stack: list[tuple[str, int, list[tuple[int, int]]]] = []
        state = _VALUE
        while True:
            pos = _SPACE.match(text, pos).end()
            if pos >= n:
                break
            c = text[pos]
            if state == _AFTER:
                if c == ",":
                    state = _KEY_OR_CLOSE if stack[-1][0] == "}" else _VALUE_OR_CLOSE
                    pos += 1
                    continue
                if c != stack[-1][0]:
                    break
            elif state == _COLON:
                if c != ":":
                    break
                state = _VALUE
                pos += 1
                continue
            elif state == _KEY_OR_CLOSE:
                if c == '"':
                    m = _STRING.match(text, pos)
                    if m is None:
                        break
                    pos, state = m.end(), _COLON
                    continue
                if c != "}":
                    break
            else:  # a value is expected (or, after "[" or a comma in an array, a "]")
                if c in "[{":
                    if len(stack) >= MAX_DEPTH:
                        for _, _, children in stack:
                            yield from children
                        pos = _skip_nested(text, pos, len(stack))
                        stack = []
                        break
                    stack.append(("]" if c == "[" else "}", pos, []))
                    state = _VALUE_OR_CLOSE if c == "[" else _KEY_OR_CLOSE
                    pos += 1
                    continue
                if not (c == "]" and state == _VALUE_OR_CLOSE):
                    m = _STRING.match(text, pos) if c == '"' else _NUMBER.match(text, pos) or _LITERAL.match(text, pos)
                    if m is None:
                        break
                    pos, state = m.end(), _AFTER
                    continue
            # c closes the innermost container
            _, start, _ = stack.pop()
            pos += 1
            if not stack:
                yield start, pos
                break
            stack[-1][2].append((start, pos))
            state = _AFTER
        for _, _, children in stack:  # a grammar error or the end of the text: the open containers fail
            yield from children


def _first_fit(value: Any, fits: Callable[[Any], bool]) -> tuple[bool, Any]:
    """``value`` if it fits, else the first object/array nested in it that does (document order)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if fits(v):
            return True, v
        items = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend(reversed([x for x in items if isinstance(x, (dict, list))]))
    return False, None


def extract_json(text: str | None, expect: JSONType = (dict, list), accept: Callable[[Any], bool] | None = None) -> Any:
    """Extracts the JSON value an LLM answer carries.

    Reasoning blocks (``<think>...</think>``, see :func:`strip_reasoning`) are removed first. Then the candidates
    are, in order: the whole answer; each fenced code block (````json ... ````, ```` ... ````); each object or
    array embedded in surrounding prose, left to right (:func:`_candidate_spans`). The first candidate of type
    ``expect`` for which ``accept`` is true wins; when a candidate does not fit, the objects and arrays nested in
    it are tried before the next candidate. Trailing commas before ``}``/``]`` and raw control characters in
    strings are tolerated. Time is linear in the length of ``text``.

    Args:
        text: The answer text.
        expect: Accepted type(s) of the value; ``None`` accepts any JSON value. By default an object or an array,
            so that a bare number inside prose is not taken for the answer.
        accept: Whether a decoded value fits the expected answer (e.g. "a list of objects with an ``entity``
            key"); values that do not fit are passed over, so a box list in the reasoning or the inner list of a
            single-quoted (non-JSON) object is not taken for the answer. An exception in ``accept`` counts as
            "does not fit".

    Returns:
        The decoded value.

    Raises:
        JSONExtractionError: No JSON value of the expected type that fits is found (for example a truncated
            answer, Python literals, a value nested deeper than :data:`MAX_DEPTH`).
    """
    if text is None:
        raise JSONExtractionError("empty answer")
    stripped = strip_reasoning(text).strip()
    if not stripped:
        raise JSONExtractionError("empty answer" if not text.strip() else "the answer is only reasoning")
    seen: list[Any] = []

    def fits(value: Any) -> bool:
        if expect is not None and not isinstance(value, expect):
            return False
        if accept is None:
            return True
        try:
            return bool(accept(value))
        except Exception:  # a validator that trips over an unexpected shape: the value does not fit
            return False

    def consider(value: Any) -> tuple[bool, Any]:
        if len(seen) < 3:
            seen.append(value)
        return _first_fit(value, fits)

    ok, value = _decode(stripped)
    whole_decoded = ok and not _too_deep(value)
    if whole_decoded:
        hit, found = consider(value)
        if hit:
            return found
    for match in _FENCE.finditer(stripped):
        ok, value = _decode(match.group(2).strip())
        if ok and not _too_deep(value):
            hit, found = consider(value)
            if hit:
                return found
    if not (whole_decoded and stripped[0] in "[{"):  # else the scan would find the same single candidate
        for start, end in _candidate_spans(stripped):
            ok, value = _decode(stripped[start:end])
            if ok:
                hit, found = consider(value)
                if hit:
                    return found
    snippet = stripped[:80].replace("\n", " ")
    if seen:
        shown = ", ".join(_short(v) for v in seen)
        raise JSONExtractionError(
            f"no JSON {_describe(expect)} that fits the expected answer (found {shown}) in answer starting {snippet!r}"
        )
    raise JSONExtractionError(f"no JSON {_describe(expect)} in answer starting {snippet!r}")


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(expect: JSONType) -> str:
    if expect is None:
        return "value"
    types = expect if isinstance(expect, tuple) else (expect,)
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return " or ".join(names.get(t, t.__name__) for t in types)
