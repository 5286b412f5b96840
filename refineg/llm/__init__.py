"""LLM and MLLM backends: one chat interface with a persistent cache, retries, budgets and usage accounting.

Example:
    >>> from refineg.llm import create_llm_backend, system, user
    >>> llm = create_llm_backend("openai", model="Qwen/Qwen2.5-VL-72B-Instruct",
    ...                          base_url="http://localhost:8000/v1", cache_path="runs/llm_cache.sqlite")
    >>> result = llm.chat([system("You are a careful annotator."), user("Answer in JSON.")], expect_json=True)
"""

from . import backends  # noqa: E402,F401,I001  (registers openai, hf, replay; needs the names above first)
from .base import ChatBackend, Completion, ReplayMissError
from .cache import CachedResponse, ResponseCache, request_key, request_material
from .config import LLMConfig
from .factory import LLM_BACKENDS, build_llm_backend, create_llm_backend, list_llm_backends, register_backend
from .faults import BackendError, RetryPolicy
from .images import ImageScale, PreparedImage, fit_longest_side, prepare_image
from .json_extract import JSONExtractionError, extract_json
from .messages import ChatResult, ImagePart, Message, TextPart, assistant, system, user
from .usage import Budget, UsageMeter

__all__ = [
    "LLM_BACKENDS",
    "BackendError",
    "Budget",
    "CachedResponse",
    "ChatBackend",
    "ChatResult",
    "Completion",
    "ImagePart",
    "ImageScale",
    "JSONExtractionError",
    "LLMConfig",
    "Message",
    "PreparedImage",
    "ReplayMissError",
    "ResponseCache",
    "RetryPolicy",
    "TextPart",
    "UsageMeter",
    "assistant",
    "build_llm_backend",
    "create_llm_backend",
    "extract_json",
    "fit_longest_side",
    "list_llm_backends",
    "prepare_image",
    "register_backend",
    "request_key",
    "request_material",
    "system",
    "user",
]
