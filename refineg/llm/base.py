"""The chat interface every backend implements, and the one wrapper that adds cache, retries and budget.

A backend implements only :meth:`ChatBackend._complete` (one conversation, one attempt) and, if it can generate
several conversations at once, :meth:`ChatBackend._complete_batch`. Everything else (cache lookup and store,
retries with back-off, JSON validation, budget, usage accounting, concurrency, progress) lives here, once.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from .answers import AnswerFormat, structured_params
from .boxes import BoxConvention
from .cache import CachedResponse, ResponseCache, request_key, request_material
from .config import LLMConfig
from .faults import BackendError, RetryPolicy, redact
from .images import ImageScale
from .json_extract import JSONExtractionError, extract_json
from .messages import ChatResult, ImagePart, Message
from .usage import SPEND_FILENAME, Budget, UsageMeter

log = logging.getLogger(__name__)

Conversation = Sequence[Message]
_USAGE_WRITE_EVERY_S = 5.0


@dataclass(frozen=True)
class Completion:
    """One successful backend attempt.

    Attributes:
        text: Answer text.
        prompt_tokens: Prompt tokens (0 when the backend does not say).
        completion_tokens: Completion tokens.
        finish_reason: ``"stop"``, ``"length"``, ... when known.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None


class _Progress:
    """A tqdm bar that also tells ``on_done`` how many results came (see ``chat_many``)."""

    def __init__(self, bar: Any, on_done: Callable[[int], None] | None) -> None:
        self.bar, self.on_done = bar, on_done

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        if self.on_done is not None:
            self.on_done(n)

    def close(self) -> None:
        self.bar.close()


class ReplayMissError(LookupError):
    """A cache-only backend was asked something its cache does not hold."""


@dataclass
class _Request:
    messages: Conversation
    params: dict[str, Any]
    material: dict[str, Any]
    key: str
    expect_json: bool
    json_type: Any
    json_accept: Callable[[Any], bool] | None = None
    answer: AnswerFormat | None = None


class ChatBackend(ABC):
    """Chat with an LLM or MLLM: messages (text and image parts) in, :class:`ChatResult` out.

    Every request goes through the same steps: the persistent cache (a hit costs no call), the budget (a spent
    budget returns ``status="budget_exhausted"``), the backend call, JSON validation when asked for, bounded
    retries of transient failures, and usage accounting. Failures are returned, never raised, except for
    programming errors and a cache miss of the ``replay`` backend.

    Args:
        config: Backend settings.
        usage: Usage meter to record into (share one across the backends of a run); default a new one writing to
            ``run_dir``.
        run_dir: Run folder for ``llm_usage.json`` when ``usage`` is not given.
        cache: Response cache; default opened from ``config.cache_path`` (none when that is ``None``).
        budget: Call/token budget; default from ``config.max_calls`` / ``config.max_tokens_budget``, counted across
            runs of the usage meter's run folder (ledger ``<run_dir>/llm_spend.jsonl``).
    """

    #: Registry name; also the backend part of cache keys.
    name: ClassVar[str] = ""
    #: Whether the backend generates several conversations in one :meth:`_complete_batch` call.
    batched: ClassVar[bool] = False
    #: Whether the backend only answers from the cache (a miss raises :class:`ReplayMissError`).
    cache_only: ClassVar[bool] = False

    def __init__(
        self,
        config: LLMConfig,
        *,
        usage: UsageMeter | None = None,
        run_dir: str | Path | None = None,
        cache: ResponseCache | None = None,
        budget: Budget | None = None,
    ) -> None:
        self.config = config
        self.usage = usage if usage is not None else UsageMeter(run_dir)
        self.cache = cache if cache is not None else (ResponseCache(config.cache_path) if config.cache_path else None)
        if budget is None:
            ledger = self.usage.run_dir / SPEND_FILENAME if self.usage.run_dir is not None else None
            budget = Budget(config.max_calls, config.max_tokens_budget, ledger)
        self.budget = budget
        self.retry = RetryPolicy(config.max_retries, config.backoff_base_s, config.backoff_max_s)
        self._secrets: list[str] = []
        self._rng = random.Random()
        self._last_usage_write = 0.0
        self._usage_lock = threading.Lock()

    # ----------------------------------------------------------------------------------------------- backend API
    @abstractmethod
    def _complete(self, messages: Conversation, params: dict[str, Any]) -> Completion:
        """Makes one attempt at one conversation.

        Args:
            messages: The conversation.
            params: Sampling parameters (``temperature``, ``max_tokens``, ``top_p``, ``seed`` and ``extra`` keys).

        Raises:
            BackendError: The attempt failed; its ``kind`` decides whether the wrapper retries.
        """

    def _complete_batch(self, batch: Sequence[Conversation], params: dict[str, Any]) -> list[Completion | BackendError]:
        """One attempt at several conversations; by default one :meth:`_complete` each."""
        out: list[Completion | BackendError] = []
        for messages in batch:
            try:
                out.append(self._complete(messages, params))
            except BackendError as err:
                out.append(err)
        return out

    def _cache_identity(self) -> str:
        """The backend name used in cache keys (``replay`` uses the name of the backend it replays)."""
        return self.name

    # ------------------------------------------------------------------------------------------------ public API
    def image_scale(self, image: Any) -> ImageScale:
        """How this backend scales ``image`` (a PIL image, path or ``(w, h)``), in its model's box coordinates.

        The scale carries ``config.box_format``: map boxes between original pixels and the model with it.
        """
        return ImageScale.for_image(image, self.config.max_side, BoxConvention.from_config(self.config))

    def sampling_params(self, **overrides: Any) -> dict[str, Any]:
        """The sampling parameters of a request: config values, ``config.extra``, then ``overrides``."""
        c = self.config
        params: dict[str, Any] = {"temperature": c.temperature, "max_tokens": c.max_tokens}
        if c.top_p is not None:
            params["top_p"] = c.top_p
        if c.seed is not None:
            params["seed"] = c.seed
        params.update(c.extra or {})
        params.update({k: v for k, v in overrides.items() if v is not None})  # None: keep the default
        return params

    def chat(
        self,
        messages: Conversation,
        *,
        stage: str = "default",
        expect_json: bool = False,
        json_type: Any = (dict, list),
        json_accept: Callable[[Any], bool] | None = None,
        answer: AnswerFormat | None = None,
        item: Any = None,
        **params: Any,
    ) -> ChatResult:
        """Answers one conversation.

        Args:
            messages: The conversation.
            stage: Usage-accounting bucket (``synthesis``, ``refinement``, ``grounding``, ...).
            expect_json: The answer must carry JSON: a non-JSON or truncated answer is retried, and the decoded
                value is returned in ``ChatResult.parsed``.
            json_type: Accepted JSON type(s) of the answer when ``expect_json``.
            json_accept: When ``expect_json``: whether a decoded value fits the expected answer (its shape, its
                keys). The first JSON value in the answer that fits is taken (so a box list in the model's
                reasoning is passed over); an answer with none is invalid (``invalid_json``) and retried.
            answer: The typed answer of the prompt (:mod:`refineg.llm.answers`). It implies ``expect_json`` (an object
                or a list: ``json_type`` is not used); the
                answer must validate against its model (as well as fit ``json_accept``), and unless
                ``config.structured_output`` is ``off`` its schema is sent with the request. The schema and the
                mode are part of the cache key, so a changed schema never replays an old answer.
            item: Identifier kept with a failure in the usage summary.
            **params: Per-call sampling overrides (``temperature``, ``max_tokens``, ...); ``None`` keeps the
                configured value.

        Returns:
            The result; ``status`` tells success, failure or an exhausted budget.
        """
        req = self._request(messages, params, expect_json, json_type, json_accept, answer)
        result = self._lookup(req)
        if result is None:
            result = self._run(req)
        self.usage.record(stage, result, item)
        self._maybe_write_usage()
        return result

    def chat_many(
        self,
        conversations: Sequence[Conversation],
        *,
        concurrency: int | None = None,
        progress: bool = True,
        stage: str = "default",
        expect_json: bool = False,
        json_type: Any = (dict, list),
        json_accept: Callable[[Any], bool] | None = None,
        answer: AnswerFormat | None = None,
        items: Sequence[Any] | None = None,
        on_done: Callable[[int], None] | None = None,
        **params: Any,
    ) -> list[ChatResult]:
        """Answers many conversations, in order, with up to ``concurrency`` requests in flight.

        Identical requests are sent once. Batched backends (``hf``) generate ``config.batch_size``
        conversations at a time instead of using threads.

        Args:
            conversations: The conversations.
            concurrency: Requests in flight; default ``config.concurrency``.
            progress: Show a tqdm progress bar.
            stage: Usage-accounting bucket.
            expect_json: See :meth:`chat`.
            json_type: See :meth:`chat`.
            json_accept: See :meth:`chat`.
            answer: See :meth:`chat`.
            items: Identifiers of the conversations for the failure summary (default their indices).
            on_done: Called with ``1`` as each conversation gets its result (a caller's progress bar).
            **params: Per-call sampling overrides.

        Returns:
            One result per conversation, in input order.
        """
        n = len(conversations)
        ids = list(items) if items is not None else list(range(n))
        results: list[ChatResult | None] = [None] * n
        first_of: dict[str, int] = {}
        duplicates: list[tuple[int, int]] = []
        pending: list[tuple[int, _Request]] = []
        bar = _Progress(tqdm(total=n, desc=f"llm {stage}", unit="req", disable=not progress, leave=False), on_done)
        try:
            for i, messages in enumerate(conversations):
                req = self._request(messages, params, expect_json, json_type, json_accept, answer)
                if req.key in first_of:
                    duplicates.append((i, first_of[req.key]))
                    continue
                first_of[req.key] = i
                hit = self._lookup(req)
                if hit is not None:
                    results[i] = hit
                    bar.update(1)
                else:
                    pending.append((i, req))
            if pending and self.batched:
                self._run_batched(pending, results, bar)
            elif pending:
                workers = max(1, min(concurrency or self.config.concurrency, len(pending)))
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"llm-{self.name}")
                try:
                    futures = {pool.submit(self._run, req): i for i, req in pending}
                    for fut in as_completed(futures):
                        results[futures[fut]] = fut.result()
                        bar.update(1)
                except BaseException:
                    # Ctrl-C or a bug: drop queued requests instead of finishing them; answered ones are cached.
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
                pool.shutdown(wait=True)
            for i, j in duplicates:
                src = results[j]
                assert src is not None
                results[i] = replace(
                    src, cached=src.ok, attempts=0, latency_s=0.0, parsed=copy.deepcopy(src.parsed), retried={}
                )
                bar.update(1)
        finally:
            bar.close()
        final = [r for r in results if r is not None]
        assert len(final) == n
        for item, result in zip(ids, final, strict=True):
            self.usage.record(stage, result, item)
        failed = Counter(r.error_kind for r in final if not r.ok)
        if failed:
            kinds = ", ".join(f"{k}={v}" for k, v in sorted(failed.items()))
            log.warning("llm %s: %d of %d requests got no answer (%s)", stage, sum(failed.values()), n, kinds)
        self.write_usage()
        return final

    async def achat(self, messages: Conversation, **kwargs: Any) -> ChatResult:
        """:meth:`chat` for asyncio code: runs in a worker thread, so the event loop stays free.

        Bound concurrency with an ``asyncio.Semaphore`` in the caller, or use :meth:`chat_many`.
        """
        return await asyncio.to_thread(self.chat, messages, **kwargs)

    def write_usage(self) -> Path | None:
        """Writes the usage totals into the run folder now (also done after every ``chat_many``)."""
        with self._usage_lock:
            self._last_usage_write = time.monotonic()
            return self.usage.write(extra={"budget": self.budget.to_dict()})

    def close(self) -> None:
        """Writes usage, closes the spend ledger and the cache."""
        self.write_usage()
        self.budget.close()
        if self.cache is not None:
            self.cache.close()

    def __enter__(self) -> ChatBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.config.model!r}, base_url={self.config.base_url!r})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Pickling (e.g. into a checkpoint) keeps only the config, which names the key's variable, never the key.
        return _rebuild_backend, (type(self), asdict(self.config))

    # ------------------------------------------------------------------------------------------------- internals
    def _request(
        self,
        messages: Conversation,
        overrides: dict[str, Any],
        expect_json: bool,
        json_type: Any,
        json_accept: Callable[[Any], bool] | None = None,
        answer: AnswerFormat | None = None,
    ) -> _Request:
        messages = list(messages)
        if not messages or not all(isinstance(m, Message) for m in messages):
            raise TypeError("a conversation is a non-empty sequence of refineg.llm.Message")
        params = self.sampling_params(**overrides)
        if answer is not None:
            expect_json, json_type = True, (dict, list)
            json_accept = _both(answer.accepts, json_accept)
            mode = self.config.structured_output
            params.update(structured_params(answer, mode))
        key_params = dict(params)
        if answer is not None:
            # the schema decides which answers are valid even when it is not sent: a changed one asks again
            key_params["answer_format"] = {"name": answer.name, "schema": answer.fingerprint, "mode": mode}
        if any(isinstance(p, ImagePart) for m in messages for p in m.parts):
            # How images are prepared changes what the model sees; it matters only when there are images.
            key_params["image_max_side"] = self.config.max_side
            key_params["image_jpeg_quality"] = self.config.jpeg_quality
        material = request_material(self._cache_identity(), self.config.model, messages, key_params)
        key = request_key(material)
        return _Request(messages, params, material, key, expect_json, json_type, json_accept, answer)

    def _lookup(self, req: _Request) -> ChatResult | None:
        if self.cache is None:
            if self.cache_only:
                raise ReplayMissError(f"{self.name} backend needs cache_path")
            return None
        start = time.perf_counter()
        hit = self.cache.get(req.key)
        if hit is None:
            if self.cache_only:
                raise ReplayMissError(self._miss_message(req))
            return None
        result = ChatResult(
            text=hit.text,
            prompt_tokens=hit.prompt_tokens,
            completion_tokens=hit.completion_tokens,
            cached=True,
            finish_reason=hit.finish_reason,
        )
        if req.expect_json:
            try:
                result.parsed = self._extract(req, hit.text)
            except JSONExtractionError as err:
                if self.cache_only:
                    return self._failed(f"invalid_json: {err}", 0, start)
                return None  # stored by a caller that did not need JSON: ask again
        result.latency_s = time.perf_counter() - start
        return result

    def _miss_message(self, req: _Request) -> str:
        first_text = next((m.text for m in req.messages if m.role == "user"), "")[:60]
        size = len(self.cache) if self.cache is not None else 0
        # the schema itself is long; its fingerprint is in params["answer_format"]
        params = {k: v for k, v in req.material["params"].items() if k not in ("response_format", "guided_json")}
        return (
            f"replay: no cached answer for request {req.key[:16]} (backend={req.material['backend']!r}, "
            f"model={req.material['model']!r}, params={params}, first user text {first_text!r}); "
            f"the cache {self.cache!r} holds {size} answers. Record it by running the live backend with the same "
            "config, or check that model, sampling parameters and max_side match the recorded run."
        )

    def _failed(
        self, error: str, attempts: int, start: float, status: str = "failed", retried: Counter[str] | None = None
    ) -> ChatResult:
        return ChatResult(
            text=None,
            status=status,  # type: ignore[arg-type]
            error=redact(error, self._secrets),
            attempts=attempts,
            latency_s=time.perf_counter() - start,
            retried=dict(retried or {}),
        )

    @staticmethod
    def _extract(req: _Request, text: str) -> Any:
        """The JSON value of ``text`` that fits ``req``; any failure is a :class:`JSONExtractionError`."""
        try:
            return extract_json(text, req.json_type, req.json_accept)
        except JSONExtractionError as err:
            if req.answer is None:
                raise
            try:  # say why the answer's first JSON value is not a valid answer
                req.answer.validate(extract_json(text, req.json_type))
            except (ValueError, JSONExtractionError) as why:
                if not isinstance(why, JSONExtractionError):
                    raise JSONExtractionError(f"{err}; {why}") from None
            raise
        except Exception as err:  # never let an odd answer crash the caller's batch
            raise JSONExtractionError(f"unreadable answer ({type(err).__name__})") from None

    def _validate(self, req: _Request, completion: Completion) -> Any:
        """Decoded JSON of ``completion`` (or ``None`` when JSON is not expected)."""
        if not req.expect_json:
            return None
        try:
            return self._extract(req, completion.text)
        except JSONExtractionError as err:
            kind = "truncated" if completion.finish_reason == "length" else "invalid_json"
            raise BackendError(kind, str(err)) from None

    def _attempt(self, req: _Request) -> Completion | BackendError:
        try:
            return self._complete(req.messages, req.params)
        except BackendError as err:
            return err
        except Exception as err:  # a bug or an unmapped library error: fail this item, keep the run going
            log.error("LLM backend %s raised %s", self.name, redact(repr(err), self._secrets))
            return BackendError("error", f"{type(err).__name__}: {err}")

    def _run(
        self, req: _Request, first: Completion | BackendError | None = None, start: float | None = None
    ) -> ChatResult:
        """Attempts ``req`` until success, a permanent failure, the last retry, or an exhausted budget.

        Args:
            req: The request.
            first: Outcome of an attempt already made (and paid for) by a batched call.
            start: ``time.perf_counter()`` when the request began (default now).
        """
        start = time.perf_counter() if start is None else start
        attempts = 0
        last: BackendError | None = None
        retried: Counter[str] = Counter()  # failed attempts that were tried again, by kind
        for attempt in range(self.retry.max_retries + 1):
            if attempt == 0 and first is not None:
                outcome = first
            else:
                if not self.budget.try_acquire_call():
                    why = "budget_exhausted: call or token budget spent"
                    if last is not None:
                        why += f" (after {last.kind})"
                    return self._failed(why, attempts, start, status="budget_exhausted", retried=retried)
                outcome = self._attempt(req)
            attempts += 1
            if isinstance(outcome, Completion):
                self.budget.add_tokens(outcome.prompt_tokens + outcome.completion_tokens)
                try:
                    parsed = self._validate(req, outcome)
                except BackendError as err:
                    outcome = err
                else:
                    latency = time.perf_counter() - start
                    if self.cache is not None:
                        stored = CachedResponse(
                            outcome.text,
                            outcome.prompt_tokens,
                            outcome.completion_tokens,
                            outcome.finish_reason,
                            latency,
                        )
                        try:
                            self.cache.put(req.key, stored, req.material)
                        except sqlite3.Error as err:  # keep the answer; only a re-run would miss it
                            log.error("LLM cache write failed (%s): answer kept but not cached", err)
                    return ChatResult(
                        text=outcome.text,
                        prompt_tokens=outcome.prompt_tokens,
                        completion_tokens=outcome.completion_tokens,
                        latency_s=latency,
                        attempts=attempts,
                        finish_reason=outcome.finish_reason,
                        parsed=parsed,
                        retried=dict(retried),
                    )
            last = outcome
            message = redact(outcome.message, self._secrets)
            if not outcome.transient:
                log.warning("LLM request failed (%s, not retried): %s", outcome.kind, message[:300])
                return self._failed(f"{outcome.kind}: {message}", attempts, start, retried=retried)
            if attempt < self.retry.max_retries:
                retried[outcome.kind] += 1
                wait = self.retry.delay(attempt, outcome.retry_after_s, self._rng)
                log.info(
                    "LLM request: %s (%s); retry %d/%d in %.2fs",
                    outcome.kind,
                    message[:200],
                    attempt + 1,
                    self.retry.max_retries,
                    wait,
                )
                time.sleep(wait)
        assert last is not None
        message = redact(last.message, self._secrets)
        log.warning("LLM request failed after %d attempts (%s): %s", attempts, last.kind, message[:300])
        return self._failed(f"{last.kind}: {message}", attempts, start, retried=retried)

    def _run_batched(self, pending: list[tuple[int, _Request]], results: list[ChatResult | None], bar: Any) -> None:
        """First attempts in batches of ``config.batch_size`` (same sampling params), retries one by one."""
        size = self.config.batch_size
        for lo in range(0, len(pending), size):
            chunk = pending[lo : lo + size]
            granted = []
            for i, req in chunk:
                if self.budget.try_acquire_call():
                    granted.append((i, req))
                else:
                    results[i] = self._failed(
                        "budget_exhausted: call or token budget spent", 0, time.perf_counter(), "budget_exhausted"
                    )
                    bar.update(1)
            if not granted:
                continue
            start = time.perf_counter()
            try:
                outcomes = self._complete_batch([req.messages for _, req in granted], granted[0][1].params)
            except Exception as err:  # e.g. out of memory for the whole batch: each item gets its own attempts
                log.error("LLM batch of %d failed: %s", len(granted), redact(repr(err), self._secrets))
                for i, req in granted:
                    results[i] = self._run(req)
                    bar.update(1)
                continue
            for (i, req), outcome in zip(granted, outcomes, strict=True):
                results[i] = self._run(req, first=outcome, start=start)
                bar.update(1)

    def _maybe_write_usage(self) -> None:
        if self.usage.run_dir is not None and time.monotonic() - self._last_usage_write > _USAGE_WRITE_EVERY_S:
            self.write_usage()


def _both(first: Callable[[Any], bool], second: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
    if second is None:
        return first
    return lambda value: first(value) and second(value)


def _rebuild_backend(cls: type[ChatBackend], config: dict[str, Any]) -> ChatBackend:
    return cls(LLMConfig(**config))
