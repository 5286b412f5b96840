"""Fault kinds, bounded retries with exponential back-off and jitter, and secret redaction.

Backends translate their library's exceptions into :class:`BackendError` with a ``kind``; the shared wrapper in
:mod:`refineg.llm.base` decides from the kind whether to retry and how long to wait.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

#: Kinds worth another attempt: the same request may succeed later.
TRANSIENT_KINDS = frozenset(
    {"rate_limit", "server_error", "timeout", "connection", "invalid_response", "invalid_json", "truncated"}
)
#: Kinds that fail at once: the request itself is wrong, or the credentials are.
PERMANENT_KINDS = frozenset({"bad_request", "auth", "not_found", "error"})


class BackendError(Exception):
    """A backend call failed.

    Args:
        kind: One of :data:`TRANSIENT_KINDS` or :data:`PERMANENT_KINDS`.
        message: What happened (must not contain secrets; the wrapper redacts known secrets again anyway).
        retry_after_s: Server-requested wait before the next attempt (HTTP ``Retry-After``), if any.
    """

    def __init__(self, kind: str, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message
        self.retry_after_s = retry_after_s

    @property
    def transient(self) -> bool:
        """Whether another attempt may succeed."""
        return self.kind in TRANSIENT_KINDS


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from ``Retry-After`` (delta-seconds or HTTP date) or ``retry-after-ms``; ``None`` if absent.

    Args:
        headers: Response headers (case-insensitive mapping such as ``httpx.Headers``, or a plain dict).
        now: Current POSIX time for HTTP dates (default ``time.time()``).
    """
    if not headers:
        return None
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000.0)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures.

    Attributes:
        max_retries: Extra attempts after the first (so at most ``max_retries + 1`` calls per request).
        backoff_base_s: Delay before the first retry; doubles with each further retry.
        backoff_max_s: Cap on the exponential delay.
        jitter: Fraction of the delay drawn at random (0 = none, 1 = "full jitter"), so that many workers that
            failed together do not retry together.
        max_retry_after_s: Longest server-requested wait honoured; a longer ``Retry-After`` is cut to this.
    """

    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    jitter: float = 0.5
    max_retry_after_s: float = 120.0

    def delay(self, retry_index: int, retry_after_s: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number ``retry_index`` (0-based).

        The exponential delay is ``min(backoff_max_s, backoff_base_s * 2**retry_index)``, of which a ``jitter``
        fraction is random. A server's ``Retry-After`` is a lower bound (capped at ``max_retry_after_s``).
        """
        rng = rng or random
        exp = min(self.backoff_max_s, self.backoff_base_s * (2**retry_index))
        wait = exp * (1.0 - self.jitter) + exp * self.jitter * rng.random()
        if retry_after_s is not None:
            wait = max(wait, min(retry_after_s, self.max_retry_after_s))
        return wait


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every occurrence of each (non-trivial) secret replaced by ``***``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
