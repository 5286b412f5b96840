"""``replay`` backend: answers only from the response cache, for exact re-runs and CI."""

from __future__ import annotations

from typing import Any

from ..base import ChatBackend, Completion, Conversation, ReplayMissError
from ..config import LLMConfig
from ..factory import register_backend


@register_backend("replay")
class ReplayBackend(ChatBackend):
    """Serves the answers another backend stored in ``config.cache_path``; makes no call.

    Cache keys are computed as for ``config.replay_of`` (default ``openai``) with the same model, sampling
    parameters and image size, so a run repeated with ``backend=replay`` reproduces the recorded one exactly.
    A request the cache does not hold raises :class:`~refineg.llm.base.ReplayMissError`, which names the
    request and the cache.
    """

    name = "replay"
    cache_only = True

    def __init__(self, config: LLMConfig, **kwargs: Any) -> None:
        if not config.cache_path and kwargs.get("cache") is None:
            raise ValueError("the replay backend needs cache_path (the cache of a recorded run)")
        super().__init__(config, **kwargs)

    def _cache_identity(self) -> str:
        return self.config.replay_of

    def _complete(self, messages: Conversation, params: dict[str, Any]) -> Completion:
        raise ReplayMissError("the replay backend makes no calls")  # unreachable: misses raise in the lookup
