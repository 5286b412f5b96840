"""Usage accounting per stage (calls, tokens, latency, failures) and call/token budgets.

A budget with a ledger (``<run folder>/llm_spend.jsonl``, one line per backend call, appended *before* the call is
sent, and one per answer's tokens) counts what earlier runs of the same folder spent, so rerunning a run does not
reset its budget, and a killed run cannot have spent a call that the ledger lacks.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .messages import ChatResult

log = logging.getLogger(__name__)

USAGE_FILENAME = "llm_usage.json"
#: The spend ledger of a run folder (see :class:`Budget`).
SPEND_FILENAME = "llm_spend.jsonl"
_MAX_FAILURES_KEPT = 200


@dataclass
class StageUsage:
    """Totals for one stage (``synthesis``, ``refinement``, ``grounding``, ...).

    Attributes:
        requests: Requests answered (cache hits, successes and failures).
        calls: Backend calls made (retries count; cache hits do not).
        cache_hits: Requests answered from the cache.
        ok: Requests with an answer.
        failed: Requests that failed after their retries.
        budget_exhausted: Requests refused because the budget was spent.
        prompt_tokens: Prompt tokens of answered, non-cached requests.
        completion_tokens: Completion tokens of answered, non-cached requests.
        latency_s: Summed wall-clock seconds of non-cached requests.
        failures_by_kind: Failed requests per error kind.
        retries_by_kind: Failed attempts that were tried again, per error kind (e.g. answers without a fitting
            JSON value), whatever the request's final outcome.
    """

    requests: int = 0
    calls: int = 0
    cache_hits: int = 0
    ok: int = 0
    failed: int = 0
    budget_exhausted: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    failures_by_kind: dict[str, int] = field(default_factory=dict)
    retries_by_kind: dict[str, int] = field(default_factory=dict)


class UsageMeter:
    """Thread-safe usage totals per stage; writes ``llm_usage.json`` into a run folder.

    Args:
        run_dir: Folder of the run; ``None`` keeps the totals in memory only.
    """

    def __init__(self, run_dir: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._lock = threading.Lock()
        self._stages: dict[str, StageUsage] = {}
        self._failures: list[dict[str, Any]] = []

    def record(self, stage: str, result: ChatResult, item: Any = None) -> None:
        """Adds one finished request to ``stage``'s totals.

        Args:
            stage: Stage name.
            result: The request's result.
            item: Optional identifier of the request (index, sample id) kept with failures for the summary.
        """
        with self._lock:
            s = self._stages.setdefault(stage, StageUsage())
            s.requests += 1
            s.calls += result.attempts
            for kind, n in result.retried.items():
                s.retries_by_kind[kind] = s.retries_by_kind.get(kind, 0) + n
            if result.cached:
                s.cache_hits += 1
            else:
                s.prompt_tokens += result.prompt_tokens
                s.completion_tokens += result.completion_tokens
                s.latency_s += result.latency_s
            if result.status == "ok":
                s.ok += 1
                return
            if result.status == "budget_exhausted":
                s.budget_exhausted += 1
            else:
                s.failed += 1
            kind = result.error_kind or "error"
            s.failures_by_kind[kind] = s.failures_by_kind.get(kind, 0) + 1
            if len(self._failures) < _MAX_FAILURES_KEPT:
                self._failures.append({"stage": stage, "item": item, "status": result.status, "error": result.error})

    def stage(self, stage: str) -> StageUsage:
        """A copy of ``stage``'s totals (zeros if it has none)."""
        with self._lock:
            s = self._stages.get(stage, StageUsage())
            return StageUsage(
                **{
                    **asdict(s),
                    "failures_by_kind": dict(s.failures_by_kind),
                    "retries_by_kind": dict(s.retries_by_kind),
                }
            )

    def to_dict(self) -> dict[str, Any]:
        """Totals per stage plus ``total`` and the first failures, JSON-ready."""
        with self._lock:
            stages = {name: asdict(s) for name, s in sorted(self._stages.items())}
            failures = list(self._failures)
        total = StageUsage()
        for s in stages.values():
            for key in ("requests", "calls", "cache_hits", "ok", "failed", "budget_exhausted"):
                setattr(total, key, getattr(total, key) + s[key])
            total.prompt_tokens += s["prompt_tokens"]
            total.completion_tokens += s["completion_tokens"]
            total.latency_s += s["latency_s"]
            for kind, n in s["failures_by_kind"].items():
                total.failures_by_kind[kind] = total.failures_by_kind.get(kind, 0) + n
            for kind, n in s["retries_by_kind"].items():
                total.retries_by_kind[kind] = total.retries_by_kind.get(kind, 0) + n
        for s in [*stages.values(), asdict(total)]:
            live = s["requests"] - s["cache_hits"]
            s["mean_latency_s"] = s["latency_s"] / live if live else 0.0
        return {"stages": stages, "total": {**asdict(total), "mean_latency_s": _mean(total)}, "failures": failures}

    def summary(self) -> str:
        """One line per stage: requests, cache hits, failures by kind, tokens."""
        data = self.to_dict()
        lines = []
        for name, s in [*data["stages"].items(), ("total", data["total"])]:
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(s["failures_by_kind"].items())) or "none"
            retried = ", ".join(f"{k}={v}" for k, v in sorted(s["retries_by_kind"].items()))
            lines.append(
                f"{name}: {s['requests']} requests, {s['calls']} calls, {s['cache_hits']} cached, {s['ok']} ok, "
                f"{s['failed']} failed, {s['budget_exhausted']} over budget (failures: {kinds}"
                f"{'; retried: ' + retried if retried else ''}); "
                f"tokens {s['prompt_tokens']} prompt + {s['completion_tokens']} completion"
            )
        return "\n".join(lines)

    def write(self, path: str | Path | None = None, extra: dict[str, Any] | None = None) -> Path | None:
        """Writes the totals as JSON (atomically: a temporary file then a rename).

        Args:
            path: Target file; default ``<run_dir>/llm_usage.json``. With neither, nothing is written.
            extra: More top-level keys (the backend adds its ``budget``).

        Returns:
            The written path, or ``None``.
        """
        if path is None:
            if self.run_dir is None:
                return None
            path = self.run_dir / USAGE_FILENAME
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_text(json.dumps({**self.to_dict(), **(extra or {})}, indent=2, default=str))
        os.replace(tmp, path)
        return path


def no_answer_problem(total: dict[str, Any] | None) -> str | None:
    """Why a stage's LLM work came to nothing, or ``None`` when it did not.

    Args:
        total: The ``total`` section of a stage's usage (``requests``, ``ok``, ``failures_by_kind``), or ``None``
            when no LLM was involved.

    Returns:
        ``"none of the N LLM requests got an answer (kind=n, ...)"`` when requests were sent and none was
        answered (a cached answer counts as answered), else ``None``.
    """
    if not total or not total.get("requests") or total.get("ok"):
        return None
    kinds = ", ".join(f"{k}={v}" for k, v in sorted((total.get("failures_by_kind") or {}).items())) or "unknown"
    return f"none of the {total['requests']} LLM requests got an answer ({kinds})"


def _mean(total: StageUsage) -> float:
    live = total.requests - total.cache_hits
    return total.latency_s / live if live else 0.0


def read_spend(ledger: str | Path) -> tuple[int, int]:
    """``(calls, tokens)`` recorded in a spend ledger (``(0, 0)`` when it does not exist; torn lines are skipped)."""
    calls = tokens = 0
    try:
        with Path(ledger).open(encoding="utf-8") as fh:
            for line in fh:
                try:
                    entry = json.loads(line)
                    calls += int(entry.get("calls", 0))
                    tokens += int(entry.get("tokens", 0))
                except (ValueError, TypeError, AttributeError):
                    continue
    except FileNotFoundError:
        pass
    return calls, tokens


class Budget:
    """A cap on backend calls and/or tokens, shared by all threads of one backend (or several, if passed).

    Calls are reserved before they are made, so the call cap is never exceeded. Tokens are known only after a
    call returns, so the token cap stops *new* calls once reached; calls already in flight may overshoot it by at
    most one answer each.

    With a ``ledger`` file the budget spans runs: it starts from what the ledger records, and appends one line per
    reserved call (before the call is sent) and one per answer's tokens, each written straight to the file, so a
    killed process leaves no sent call unrecorded. Processes running *at the same time* on one ledger append
    safely but do not see each other's spend until they restart.

    Args:
        max_calls: Most backend calls (retries included); ``None`` for no cap.
        max_tokens: Most prompt + completion tokens; ``None`` for no cap.
        ledger: Spend ledger (``<run folder>/llm_spend.jsonl``); ``None`` counts this process only.

    Attributes:
        calls: Calls spent, earlier runs included.
        tokens: Tokens spent, earlier runs included.
        earlier_calls: Calls the ledger held when the budget was created.
        earlier_tokens: Tokens the ledger held when the budget was created.
    """

    def __init__(
        self, max_calls: int | None = None, max_tokens: int | None = None, ledger: str | Path | None = None
    ) -> None:
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.ledger = Path(ledger) if ledger is not None else None
        self.earlier_calls, self.earlier_tokens = read_spend(self.ledger) if self.ledger is not None else (0, 0)
        self.calls = self.earlier_calls
        self.tokens = self.earlier_tokens
        self._lock = threading.Lock()
        self._warned = False
        self._fd: int | None = None
        self._ledger_failed = False

    def _record(self, **entry: int) -> None:
        """Appends one ledger line (caller holds the lock); a failing ledger is reported once, not raised."""
        if self.ledger is None or self._ledger_failed:
            return
        line = json.dumps({**entry, "time": round(time.time(), 3), "pid": os.getpid()}) + "\n"
        try:
            if self._fd is None:
                self.ledger.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(self._fd, line.encode())
        except OSError as err:
            self._ledger_failed = True
            log.error(
                "LLM spend ledger %s cannot be written (%s): spend of this run will not count in reruns",
                self.ledger,
                err,
            )

    def close(self) -> None:
        """Closes the ledger file (it is reopened on the next call)."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def to_dict(self) -> dict[str, Any]:
        """Caps and spend, earlier runs included, JSON-ready."""
        with self._lock:
            return {
                "max_calls": self.max_calls,
                "max_tokens": self.max_tokens,
                "calls": self.calls,
                "tokens": self.tokens,
                "earlier_calls": self.earlier_calls,
                "earlier_tokens": self.earlier_tokens,
                "ledger": str(self.ledger) if self.ledger else None,
            }

    def try_acquire_call(self) -> bool:
        """Reserves one call; ``False`` (and a single warning) once either cap is reached."""
        with self._lock:
            over_calls = self.max_calls is not None and self.calls >= self.max_calls
            over_tokens = self.max_tokens is not None and self.tokens >= self.max_tokens
            if over_calls or over_tokens:
                if not self._warned:
                    self._warned = True
                    earlier = (
                        f"; {self.earlier_calls} calls and {self.earlier_tokens} tokens by earlier runs ({self.ledger})"
                        if self.earlier_calls or self.earlier_tokens
                        else ""
                    )
                    log.warning(
                        "LLM budget exhausted (%d/%s calls, %d/%s tokens%s): further requests are not sent",
                        self.calls,
                        self.max_calls,
                        self.tokens,
                        self.max_tokens,
                        earlier,
                    )
                return False
            self.calls += 1
            self._record(calls=1)
            return True

    def add_tokens(self, n: int) -> None:
        """Counts ``n`` tokens spent by a finished call."""
        with self._lock:
            self.tokens += n
            if n:
                self._record(tokens=n)

    @property
    def exhausted(self) -> bool:
        """Whether no further call would be allowed."""
        with self._lock:
            return (self.max_calls is not None and self.calls >= self.max_calls) or (
                self.max_tokens is not None and self.tokens >= self.max_tokens
            )
