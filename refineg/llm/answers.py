"""Typed answers of the MLLM prompts (pydantic v2): validation of every answer, and the schema sent to the server.

One :class:`AnswerFormat` per prompt kind: ``span_check`` and ``type_box_check`` (refinement), ``grounding``,
``zeroshot`` and ``synthesis``. Each wraps a pydantic model that

- validates a decoded answer (``ChatBackend.chat(..., answer=fmt)``): an answer that does not validate is invalid
  (``invalid_json``), counted and asked again like an answer without JSON. Validation is lenient about the forms
  the stage parsers already read (a bare list for a wrapped one, ``bbox`` for ``bounding_box``, one flat box for a
  list of boxes, ``null`` for no box), and a list answer is valid when at least one of its items is (or it is
  empty): the stage parsers then read the decoded value as before and count the items they drop;
- gives the JSON Schema sent with ``llm.structured_output``: :meth:`AnswerFormat.schema` is the model's schema
  made strict in the way OpenAI's ``strict: true`` requires (an object at the root, every property required,
  ``additionalProperties: false`` everywhere, no defaults). Answers rooted in a list in the prompts (grounding,
  zero-shot, synthesis) are wrapped in an object (``{"entities": [...]}``, ``{"samples": [...]}``) there.

:func:`structured_params` turns a format and a mode into the request parameters.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

_NONE_WORDS = {"", "null", "none", "n/a", "na", "no", "[]"}
_BOX_KEYS = ("bounding_box", "bounding_boxes", "boxes", "box", "bbox")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")

#: A box coordinate: a finite JSON number (``true`` and ``"12"`` are not numbers).
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]
#: ``[x1, y1, x2, y2]`` in the model's coordinates.
Box = Annotated[list[Coordinate], Field(min_length=4, max_length=4)]
NoBox = Literal["Null"]


def _is_none_word(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_WORDS)


def _flat_box(value: Any) -> Any:
    """``{"xmin", ...}`` -> ``[x1, y1, x2, y2]``; anything else unchanged."""
    if isinstance(value, dict) and all(k in value for k in _CORNERS):
        return [value[k] for k in _CORNERS]
    return value


def _box_list(value: Any) -> Any:
    """A ``bounding_box`` value as a list of boxes: none -> ``[]``, one flat box -> ``[box]``."""
    if _is_none_word(value):
        return []
    value = _flat_box(value)
    if isinstance(value, list) and value and all(not isinstance(v, (list, dict)) for v in value):
        return [value]
    if isinstance(value, list):
        return [_flat_box(v) for v in value]
    return value


def _rename(data: Any, target: str, aliases: tuple[str, ...]) -> Any:
    """``data`` with the first present key of ``aliases`` renamed to ``target`` (when ``target`` is absent)."""
    if isinstance(data, dict) and target not in data:
        key = next((k for k in aliases if k in data), None)
        if key is not None:
            data = {**data, target: data[key]}
    return data


def _wrap(
    data: Any, key: str, item_keys: tuple[str, ...], list_keys: tuple[str, ...], item_model: type[BaseModel]
) -> Any:
    """The envelope of a list answer, rid of the items that do not validate.

    A bare list becomes ``{key: list}``, an object holding the list under another name or one item is wrapped.
    Items that do not validate are left out (the stage parsers count them as dropped); a non-empty list of which
    none validates is invalid, so that the answer is asked again.
    """
    if isinstance(data, list):
        data = {key: data}
    elif isinstance(data, dict) and key not in data:
        inner = next((data[k] for k in list_keys if isinstance(data.get(k), list)), None)
        if inner is not None:
            data = {key: inner}
        elif any(k in data for k in item_keys):
            data = {key: [data]}
    if isinstance(data, dict) and isinstance(data.get(key), list) and data[key]:
        good = []
        first_error: ValidationError | None = None
        for item in data[key]:
            try:
                item_model.model_validate(item)
            except ValidationError as err:
                first_error = first_error or err
                continue
            good.append(item)
        if not good:
            assert first_error is not None
            loc = ".".join(map(str, first_error.errors()[0]["loc"]))
            raise ValueError(f"no usable item ({loc or 'item'}: {first_error.errors()[0]['msg']})")
        data = {**data, key: good}
    return data


class _Answer(BaseModel):
    """Base of the answer models: unknown keys are ignored when validating (the strict schema forbids them)."""

    model_config = ConfigDict(extra="ignore")


# ------------------------------------------------------------------------------------------------- refinement
class SpanCheckAnswer(_Answer):
    """Refinement, span check: ``{"reasoning_process", "corrected_entity"}`` (``"Null"``: not an entity)."""

    reasoning_process: str = ""
    corrected_entity: str

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("corrected_entity", "") is None:
            data = {**data, "corrected_entity": "Null"}
        return data


class TypeBoxCheckAnswer(_Answer):
    """Refinement, type-and-box check: ``{"reasoning_process", "corrected_type", "corrected_bounding_box"}``.

    The box is ``[x1, y1, x2, y2]`` in the model's coordinates, or ``"Null"``. At least one of the two corrections
    must be present when validating (the schema sent requires both).
    """

    reasoning_process: str = ""
    corrected_type: str | None = None
    corrected_bounding_box: Box | NoBox | None = None

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if not any(k in data for k in ("corrected_type", "corrected_bounding_box")):
            raise ValueError("neither corrected_type nor corrected_bounding_box")
        box = data.get("corrected_bounding_box")
        if "corrected_bounding_box" in data and (_is_none_word(box) or box == []):
            data = {**data, "corrected_bounding_box": "Null"}
        elif isinstance(box, list) and len(box) == 1 and isinstance(box[0], list):
            data = {**data, "corrected_bounding_box": box[0]}
        else:
            data = {**data, "corrected_bounding_box": _flat_box(box)} if box is not None else data
        return data


# -------------------------------------------------------------------------------------------------- grounding
class GroundingItem(_Answer):
    """One entity of a grounding answer: its name, type and boxes (``[]``: not shown)."""

    entity: str = ""
    entity_type: str = ""
    bounding_box: list[Box] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        data = _rename(data, "bounding_box", _BOX_KEYS[1:])
        if isinstance(data, dict):
            if "entity" not in data and "bounding_box" not in data:
                raise ValueError("an item needs an entity name or a box")
            if "bounding_box" in data:
                data = {**data, "bounding_box": _box_list(data["bounding_box"])}
            if data.get("entity_type") is None and "entity_type" in data:
                data = {**data, "entity_type": ""}
        return data


class GroundingAnswer(_Answer):
    """Grounding: ``{"entities": [{"entity", "entity_type", "bounding_box": [[x1, y1, x2, y2], ...]}]}``.

    Validation also takes the prompts' bare list, a list under ``results`` / ``answer``, or one item, and leaves
    out items that do not validate (the grounding parser counts them) as long as one does.
    """

    entities: list[GroundingItem]

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        return _wrap(data, "entities", ("entity", *_BOX_KEYS), ("results", "answer"), GroundingItem)


# -------------------------------------------------------------------------------------------------- zero-shot
class ZeroShotItem(_Answer):
    """One entity of a zero-shot answer: words, type and one box (``[]``: not shown)."""

    entity: str
    entity_type: str = ""
    bounding_box: Box | Annotated[list[float], Field(max_length=0)] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        data = _rename(_rename(data, "entity_type", ("type",)), "bounding_box", ("box", "bbox"))
        if isinstance(data, dict) and "bounding_box" in data:
            box = data["bounding_box"]
            if _is_none_word(box):
                box = []
            elif isinstance(box, list) and len(box) == 1 and isinstance(box[0], list):
                box = box[0]
            data = {**data, "bounding_box": _flat_box(box)}
        if isinstance(data, dict) and data.get("entity_type") is None and "entity_type" in data:
            data = {**data, "entity_type": ""}
        return data


class ZeroShotAnswer(_Answer):
    """Zero-shot: ``{"entities": [{"entity", "entity_type", "bounding_box": [x1, y1, x2, y2] or []}]}``.

    Validation also takes the prompt's bare list, a list under ``entity_list`` / ``results``, or one item, and
    leaves out items that do not validate (the zero-shot parser counts them) as long as one does.
    """

    entities: list[ZeroShotItem]

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        return _wrap(data, "entities", ("entity",), ("entity_list", "results"), ZeroShotItem)


# -------------------------------------------------------------------------------------------------- synthesis
class SynthesisEntity(_Answer):
    """An entity of a synthesised post: the exact string and its type."""

    name: str
    type: str


class SynthesisSample(_Answer):
    """A synthesised post and its entities."""

    text: str
    entity: list[SynthesisEntity] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        data = _rename(data, "entity", ("entities",))
        if isinstance(data, dict) and data.get("entity", []) is None:
            data = {**data, "entity": []}
        return data


#: Keys under which a synthesis answer may hold its list of samples (as the synthesis parser reads them).
SYNTHESIS_LIST_KEYS = ("samples", "posts", "data", "texts", "results", "items", "output")


class SynthesisAnswer(_Answer):
    """Synthesis: ``{"samples": [{"text", "entity": [{"name", "type"}]}]}``.

    Validation also takes the prompt's bare list, a list under ``posts`` / ``data`` / ..., or one sample, and
    leaves out samples that do not validate (the synthesis parser counts them) as long as one does.
    """

    samples: list[SynthesisSample]

    @model_validator(mode="before")
    @classmethod
    def _lenient(cls, data: Any) -> Any:
        return _wrap(data, "samples", ("text",), SYNTHESIS_LIST_KEYS[1:], SynthesisSample)


# ------------------------------------------------------------------------------------------------- the formats
def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of a pydantic JSON Schema in the form OpenAI's ``strict: true`` accepts.

    Every object lists all its properties as ``required`` and gets ``additionalProperties: false``; ``default``
    and ``title`` / ``description`` annotations are dropped, ``const`` becomes a one-value ``enum`` and ``null``
    alternatives are removed. Properties that are optional (or ``None``) when validating thus become required
    (and non-null) for the model.
    """
    out = copy.deepcopy(schema)

    def visit(node: Any) -> None:
        if not isinstance(node, dict):
            return
        for key in ("default", "title", "description"):
            node.pop(key, None)
        if "anyOf" in node:
            node["anyOf"] = [sub for sub in node["anyOf"] if sub != {"type": "null"}]
            if len(node["anyOf"]) == 1:
                node.update(node.pop("anyOf")[0])
        if "const" in node:
            node["enum"] = [node.pop("const")]
        if node.get("type") == "object" or "properties" in node:
            props = node.get("properties", {})
            node["required"] = list(props)
            node["additionalProperties"] = False
            for sub in props.values():
                visit(sub)
        for key in ("items", "additionalItems", "not"):
            visit(node.get(key))
        for key in ("anyOf", "oneOf", "allOf", "prefixItems"):
            for sub in node.get(key, []):
                visit(sub)
        for sub in node.get("$defs", {}).values():
            visit(sub)

    visit(out)
    return out


@dataclass(frozen=True)
class AnswerFormat:
    """The answer of one prompt kind.

    Attributes:
        name: Schema name sent to the server (``[a-zA-Z0-9_-]``, as OpenAI requires).
        model: The pydantic model that validates a decoded answer.
    """

    name: str
    model: type[BaseModel]

    @cached_property
    def schema(self) -> dict[str, Any]:
        """The strict JSON Schema of :attr:`model` (see :func:`strict_schema`)."""
        return strict_schema(self.model.model_json_schema())

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 (16 hex digits) of the schema: part of the cache key, so a changed schema asks again."""
        blob = json.dumps(self.schema, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def validate(self, value: Any) -> BaseModel:
        """The validated answer.

        Raises:
            ValueError: ``value`` does not fit (the message names the first problems).
        """
        try:
            return self.model.model_validate(value)
        except ValidationError as err:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}" for e in err.errors()[:3])
            raise ValueError(f"answer does not fit the {self.name} schema ({problems})") from None

    def accepts(self, value: Any) -> bool:
        """Whether a decoded JSON value fits this answer."""
        try:
            self.model.model_validate(value)
        except ValidationError:
            return False
        return True


SPAN_CHECK = AnswerFormat("refineg_span_check", SpanCheckAnswer)
TYPE_BOX_CHECK = AnswerFormat("refineg_type_box_check", TypeBoxCheckAnswer)
GROUNDING = AnswerFormat("refineg_grounding", GroundingAnswer)
ZEROSHOT = AnswerFormat("refineg_zeroshot", ZeroShotAnswer)
SYNTHESIS = AnswerFormat("refineg_synthesis", SynthesisAnswer)
#: Every answer format, by prompt kind.
ANSWER_FORMATS = {
    "span_check": SPAN_CHECK,
    "type_box_check": TYPE_BOX_CHECK,
    "grounding": GROUNDING,
    "zeroshot": ZEROSHOT,
    "synthesis": SYNTHESIS,
}


def structured_params(fmt: AnswerFormat, mode: str) -> dict[str, Any]:
    """The request parameters that ask the server for ``fmt`` in ``mode``.

    ``json_schema``: ``{"response_format": {"type": "json_schema", "json_schema": {"name", "schema", "strict":
    true}}}`` (OpenAI, vLLM, SGLang). ``guided_json``: ``{"guided_json": schema}`` (the OpenAI backend sends it in
    ``extra_body``; vLLM before 0.12). ``off``: none.
    """
    if mode == "json_schema":
        spec = {"name": fmt.name, "schema": fmt.schema, "strict": True}
        return {"response_format": {"type": "json_schema", "json_schema": spec}}
    if mode == "guided_json":
        return {"guided_json": fmt.schema}
    if mode == "off":
        return {}
    raise ValueError(f"unknown structured_output mode {mode!r}")
