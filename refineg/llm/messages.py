"""Chat messages with text and image parts, and the result of one chat call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class TextPart:
    """A piece of text inside a message."""

    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image inside a message.

    Args:
        image: A PIL image or a path to an image file. Backends resize it so that its longest side is at most the
            configured ``max_side`` before sending; box coordinates in the prompt must then be in *sent* pixels
            (see :class:`refineg.llm.images.ImageScale`).
    """

    image: Image.Image | str | Path


Part = TextPart | ImagePart


@dataclass(frozen=True)
class Message:
    """One chat turn.

    Args:
        role: ``"system"``, ``"user"`` or ``"assistant"``.
        content: Plain text, or an ordered sequence of text and image parts.
    """

    role: Role
    content: str | tuple[Part, ...]

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"unknown chat role {self.role!r}")
        if not isinstance(self.content, str):
            parts = tuple(self.content)
            for part in parts:
                if not isinstance(part, (TextPart, ImagePart)):
                    raise TypeError(f"message parts must be TextPart or ImagePart, got {type(part).__name__}")
            object.__setattr__(self, "content", parts)

    @property
    def parts(self) -> tuple[Part, ...]:
        """The content as a tuple of parts (plain text becomes one :class:`TextPart`)."""
        if isinstance(self.content, str):
            return (TextPart(self.content),)
        return self.content  # type: ignore[return-value]

    @property
    def images(self) -> list[ImagePart]:
        """The image parts of this message, in order."""
        return [p for p in self.parts if isinstance(p, ImagePart)]

    @property
    def text(self) -> str:
        """The concatenated text parts (images left out)."""
        return "".join(p.text for p in self.parts if isinstance(p, TextPart))

    def content_parts(self, image_part: Callable[[ImagePart], dict[str, Any]]) -> list[dict[str, Any]]:
        """The parts as chat-template dicts: ``{"type": "text", ...}`` for text, ``image_part(p)`` for images."""
        return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else image_part(p) for p in self.parts]


def _to_parts(items: tuple[str | Image.Image | Path | Part, ...]) -> str | tuple[Part, ...]:
    if len(items) == 1 and isinstance(items[0], str):
        return items[0]
    parts: list[Part] = []
    for item in items:
        if isinstance(item, (TextPart, ImagePart)):
            parts.append(item)
        elif isinstance(item, str):
            parts.append(TextPart(item))
        elif isinstance(item, (Image.Image, Path)):
            parts.append(ImagePart(item))
        else:
            raise TypeError(f"cannot make a message part from {type(item).__name__}")
    return tuple(parts)


def system(text: str) -> Message:
    """A system message."""
    return Message("system", text)


def user(*items: str | Image.Image | Path | Part) -> Message:
    """A user message; strings become text parts, PIL images and ``Path`` objects become image parts.

    A plain ``str`` is always text: wrap an image path as ``Path(...)`` or ``ImagePart(...)``.
    """
    return Message("user", _to_parts(items))


def assistant(text: str) -> Message:
    """An assistant message (e.g. a demonstration's answer)."""
    return Message("assistant", text)


ResultStatus = Literal["ok", "failed", "budget_exhausted"]


@dataclass
class ChatResult:
    """What one chat request produced.

    Failures are values, not exceptions: after the last retry a request comes back with ``status="failed"`` and
    ``error`` set, so a caller can fall back (e.g. keep the small model's prediction) and the run goes on.

    Attributes:
        text: The answer text; ``None`` when the request failed.
        prompt_tokens: Tokens in the prompt, as reported by the backend (0 when unknown or failed).
        completion_tokens: Tokens in the answer.
        latency_s: Wall-clock seconds from the request to the result, retries and back-off included; for a
            cache hit the lookup time.
        cached: The answer came from the persistent cache (no backend call).
        status: ``"ok"``, ``"failed"`` or ``"budget_exhausted"`` (the call cap or token cap was reached).
        error: ``"<kind>: <message>"`` for a failure (kinds: ``rate_limit``, ``server_error``, ``timeout``,
            ``connection``, ``invalid_json``, ``truncated``, ``bad_request``, ``auth``, ``budget_exhausted``,
            ``error``); never contains the API key.
        attempts: Backend calls made for this request (0 for a cache hit).
        finish_reason: The backend's reason to stop (``"stop"``, ``"length"``, ...), when known.
        parsed: The JSON value extracted from ``text`` when the request asked for JSON.
        retried: Failed attempts of this request that were tried again, by kind (e.g. ``{"invalid_json": 1}``
            when an answer without a fitting JSON value was asked again).
    """

    text: str | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cached: bool = False
    status: ResultStatus = "ok"
    error: str | None = None
    attempts: int = 0
    finish_reason: str | None = None
    parsed: Any = field(default=None, repr=False)
    retried: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The request produced an answer."""
        return self.status == "ok"

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def error_kind(self) -> str | None:
        """The failure kind (the part of ``error`` before the colon), or ``None``."""
        if self.error is None:
            return None
        return self.error.split(":", 1)[0]
