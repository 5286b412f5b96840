"""``openai`` backend: any OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, LM Studio, hosted)."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..base import ChatBackend, Completion, Conversation
from ..config import LLMConfig
from ..factory import register_backend
from ..faults import BackendError, parse_retry_after
from ..images import prepare_image
from ..messages import ImagePart

log = logging.getLogger(__name__)

# Parameters the chat-completions endpoint takes as named arguments; anything else goes in the request body
# through ``extra_body`` (how vLLM/SGLang accept ``top_k``, ``repetition_penalty``, ``guided_json``...).
_NAMED_PARAMS = frozenset(
    {"temperature", "max_tokens", "top_p", "seed", "stop", "presence_penalty", "frequency_penalty", "n",
     "logit_bias", "response_format", "logprobs", "top_logprobs", "user"}
)  # fmt: skip
_MAX_ERROR_CHARS = 500


@register_backend("openai")
class OpenAIBackend(ChatBackend):
    """Chat through the official ``openai`` client against ``config.base_url``.

    Images are shrunk to ``config.max_side`` and sent as base64 JPEG data URLs. The API key is read from the
    environment variable named by ``config.api_key_env`` when the backend is built; it is held only by the client
    and is redacted from every error message. When the variable is unset, the placeholder ``EMPTY`` is sent
    (local servers accept any key). The client's own retries are off: the shared wrapper retries.
    """

    name = "openai"

    def __init__(self, config: LLMConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        import openai  # imported here so that refineg.llm loads without it

        if not config.model:
            raise ValueError("the openai backend needs config.model (the model name the server serves)")
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        if key:
            self._secrets.append(key)
        else:
            log.info("environment variable %r is unset or empty: sending no real API key", config.api_key_env)
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=key or "EMPTY", base_url=config.base_url, timeout=config.timeout_s, max_retries=0
        )

    def _image_url_part(self, part: ImagePart) -> dict[str, Any]:
        url = prepare_image(part.image, self.config.max_side).data_url(self.config.jpeg_quality)
        return {"type": "image_url", "image_url": {"url": url}}

    def to_openai_messages(self, messages: Conversation) -> list[dict[str, Any]]:
        """``messages`` in the chat-completions wire format (images as resized base64 JPEG data URLs)."""
        out: list[dict[str, Any]] = []
        for m in messages:
            if isinstance(m.content, str):
                out.append({"role": m.role, "content": m.content})
                continue
            out.append({"role": m.role, "content": m.content_parts(self._image_url_part)})
        return out

    def _complete(self, messages: Conversation, params: dict[str, Any]) -> Completion:
        named = {k: v for k, v in params.items() if k in _NAMED_PARAMS}
        extra = {k: v for k, v in params.items() if k not in _NAMED_PARAMS}
        try:
            response = self._client.chat.completions.create(
                model=self.config.model,
                messages=self.to_openai_messages(messages),  # type: ignore[arg-type]
                extra_body=extra or None,
                **named,
            )
        except self._openai.APIError as err:
            raise self._map_error(err) from None
        except ValueError as err:  # a body announced as JSON that does not parse
            raise BackendError("invalid_response", f"unparseable response body ({type(err).__name__})") from None
        return self._parse(response)

    def _parse(self, response: Any) -> Completion:
        if isinstance(response, str):  # the client returns the raw text of a non-JSON body
            raise BackendError("invalid_response", f"non-JSON response body: {response[:100]!r}")
        try:
            choice = response.choices[0]
            text = choice.message.content
        except (AttributeError, IndexError, TypeError, KeyError):
            raise BackendError("invalid_response", "response has no choices[0].message") from None
        if text is None:
            raise BackendError("invalid_response", "response has no message content")
        usage = getattr(response, "usage", None)
        return Completion(
            text=text,
            prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            finish_reason=getattr(choice, "finish_reason", None),
        )

    def _map_error(self, err: Exception) -> BackendError:
        o = self._openai
        text = str(err)[:_MAX_ERROR_CHARS]
        if isinstance(err, o.APITimeoutError):  # before APIConnectionError, its base class
            return BackendError("timeout", f"no answer within {self.config.timeout_s}s")
        if isinstance(err, o.APIConnectionError):
            cause = err.__cause__ or err.__context__
            return BackendError("connection", f"{text} ({type(cause).__name__ if cause else 'no cause'})")
        if isinstance(err, o.APIResponseValidationError):
            return BackendError("invalid_response", text)
        if isinstance(err, o.APIStatusError):
            status = err.status_code
            retry_after = parse_retry_after(err.response.headers)
            if status == 429:
                return BackendError("rate_limit", f"HTTP 429: {text}", retry_after)
            if status >= 500 or status in (408, 409):
                return BackendError("server_error", f"HTTP {status}: {text}", retry_after)
            if status in (401, 403):
                return BackendError("auth", f"HTTP {status}: {text}")
            if status == 404:
                return BackendError("not_found", f"HTTP 404 (model {self.config.model!r}?): {text}")
            return BackendError("bad_request", f"HTTP {status}: {text}")
        return BackendError("error", f"{type(err).__name__}: {text}")

    def close(self) -> None:
        """Closes the HTTP client, then writes usage and closes the cache."""
        try:
            self._client.close()
        finally:
            super().close()
