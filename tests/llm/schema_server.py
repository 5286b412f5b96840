"""Structured outputs on the loopback chat server: a server that enforces the schema, one that ignores it.

:class:`SchemaEnforcer` is a ``body_responder`` for :class:`~tests.llm.chat_server.ChatServer` that behaves like a
server with guided decoding (OpenAI ``strict``, vLLM, SGLang):

- it finds the schema in ``response_format`` (``{"type": "json_schema", "json_schema": {"name", "schema",
  "strict"}}``) or in ``guided_json`` (vLLM's extra parameter, merged into the body by the client);
- it answers HTTP 400 when a schema is required and none was sent, when ``response_format`` is malformed (wrong
  type, bad name, ``strict`` not true) or when the schema is not one that strict mode accepts (:func:`strict_problems`:
  an object at the root; every object closed with ``additionalProperties: false`` and listing all its properties as
  required; only supported keywords);
- it answers only JSON that validates against the schema (:func:`validate`, written here from the JSON Schema
  rules, independent of pydantic): the test's ``answer`` callback says what the "model" means, and an answer the
  schema does not allow is refused (recorded in ``violations``), as a constrained decoder could never emit it.

:func:`ignoring` makes a server that ignores any schema and answers prose around a fenced JSON value.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

from tests.llm.chat_server import BadRequest

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_KEYWORDS = {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "anyOf",
    "enum",
    "$ref",
    "$defs",
    "minItems",
    "maxItems",
    "description",
    "title",
}
_TYPES = {
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _resolve(node: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    if not ref.startswith("#/$defs/"):
        raise ValueError(f"unsupported $ref {ref!r}")
    return root["$defs"][ref[len("#/$defs/") :]]


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, path: str = "$") -> list[str]:
    """Problems of ``value`` under ``schema`` (the keywords of :data:`_KEYWORDS`); empty when it validates."""
    root = schema if root is None else root
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        if all(validate(value, sub, root, path) for sub in schema["anyOf"]):
            return [f"{path}: matches no anyOf branch"]
        return []
    problems = []
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{path}: not of type {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{path}: {value!r} not in {schema['enum']}")
    if isinstance(value, dict) and kind == "object":
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            if key not in value:
                problems.append(f"{path}: missing {key!r}")
        for key, sub in value.items():
            if key in props:
                problems += validate(sub, props[key], root, f"{path}.{key}")
            elif schema.get("additionalProperties", True) is False:
                problems.append(f"{path}: unexpected key {key!r}")
    if isinstance(value, list) and kind == "array":
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            problems.append(f"{path}: {len(value)} items outside [{schema.get('minItems')}, {schema.get('maxItems')}]")
        for i, item in enumerate(value):
            problems += validate(item, schema.get("items", {}), root, f"{path}[{i}]")
    return problems


def strict_problems(schema: dict[str, Any]) -> list[str]:
    """Why strict mode would refuse ``schema`` (empty when it would accept it)."""
    problems = []
    if schema.get("type") != "object":
        problems.append("the root must be an object")

    def visit(node: Any, path: str) -> None:
        if not isinstance(node, dict):
            problems.append(f"{path}: not a schema object")
            return
        unknown = set(node) - _KEYWORDS
        if unknown:
            problems.append(f"{path}: unsupported keywords {sorted(unknown)}")
        if node.get("type") == "object":
            props = node.get("properties")
            if not isinstance(props, dict):
                problems.append(f"{path}: object without properties")
                props = {}
            if node.get("additionalProperties") is not False:
                problems.append(f"{path}: additionalProperties must be false")
            if sorted(node.get("required", [])) != sorted(props):
                problems.append(f"{path}: every property must be required")
            for key, sub in props.items():
                visit(sub, f"{path}.{key}")
        if "items" in node:
            visit(node["items"], f"{path}[]")
        for i, sub in enumerate(node.get("anyOf", [])):
            visit(sub, f"{path}|{i}")
        if "$ref" in node and not str(node["$ref"]).startswith("#/$defs/"):
            problems.append(f"{path}: unsupported $ref")

    visit(schema, "$")
    for name, sub in schema.get("$defs", {}).items():
        visit(sub, f"$defs.{name}")
    return problems


def requested_schema(body: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any] | None]:
    """``(mode, name, schema)`` the request asks for: ``json_schema`` or ``guided_json``; raises BadRequest when a
    ``response_format`` is malformed."""
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
            raise BadRequest(f"response_format must have type json_schema, got {fmt!r:.80}")
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise BadRequest("response_format.json_schema.schema is missing")
        if not isinstance(spec.get("name"), str) or not _NAME.match(spec["name"]):
            raise BadRequest(f"response_format.json_schema.name {spec.get('name')!r} is invalid")
        if spec.get("strict") is not True:
            raise BadRequest("response_format.json_schema.strict must be true")
        return "json_schema", spec["name"], spec["schema"]
    if "guided_json" in body:
        if not isinstance(body["guided_json"], dict):
            raise BadRequest("guided_json must be a JSON schema object")
        return "guided_json", None, body["guided_json"]
    return None, None, None


class SchemaEnforcer:
    """A body responder that answers only schema-valid JSON (see the module docstring).

    Args:
        answer: ``(body, schema name or None) -> JSON value``: what the model means to answer.
        require: Answer HTTP 400 to a request without a schema.
    """

    def __init__(self, answer: Callable[[dict[str, Any], str | None], Any], require: bool = True) -> None:
        self.answer = answer
        self.require = require
        self.lock = threading.Lock()
        self.modes: list[str] = []
        self.violations: list[str] = []

    def __call__(self, body: dict[str, Any]) -> str:
        mode, name, schema = requested_schema(body)
        if schema is None:
            if self.require:
                raise BadRequest("this server needs a response schema (response_format or guided_json)")
            return json.dumps(self.answer(body, None))
        problems = strict_problems(schema)
        if problems:
            raise BadRequest(f"schema refused: {'; '.join(problems[:3])}")
        value = self.answer(body, name)
        bad = validate(value, schema)
        if bad:
            with self.lock:
                self.violations.append("; ".join(bad[:3]))
            raise BadRequest(f"the decoder cannot emit this answer: {bad[:3]}")
        with self.lock:
            self.modes.append(mode)
        return json.dumps(value)


def ignoring(answer: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], str]:
    """A body responder that ignores any schema: prose, then the JSON value in a code fence, then more prose."""

    def respond(body: dict[str, Any]) -> str:
        value = json.dumps(answer(body))
        prose = "Let me look at the post first (draft numbers: [1, 2]).\nHere is my answer:"
        return f"{prose}\n```json\n{value}\n```\nDone."

    return respond
