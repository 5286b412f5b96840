"""Typed configuration of an LLM / MLLM backend (an OmegaConf structured-config schema)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

#: Values of ``LLMConfig.structured_output``.
STRUCTURED_OUTPUT_MODES = ("json_schema", "guided_json", "off")
#: Values of ``LLMConfig.box_format``.
BOX_FORMATS = ("pixel", "norm1000", "norm1", "qwen2.5-vl")

# OmegaConf reads these annotations at run time and does not accept ``X | None`` on every Python version we
# support, hence ``Optional``.


@dataclass
class LLMConfig:
    """Settings of one LLM backend; ``OmegaConf.structured(LLMConfig)`` turns it into a config schema.

    The API key itself is never part of the config: only the *name* of the environment variable that holds it.

    Attributes:
        backend: Registered backend name: ``openai``, ``hf`` or ``replay``.
        model: Model name as the server knows it (``openai``), or a local folder / hub id (``hf``).
        base_url: OpenAI-compatible endpoint, e.g. ``http://localhost:8000/v1`` (vLLM); ``None`` for OpenAI.
        api_key_env: Name of the environment variable holding the API key; empty for none.
        max_side: Images are shrunk so that their longest side is at most this many pixels (ReFineG: 1000).
        jpeg_quality: JPEG quality of images sent as data URLs.
        timeout_s: Per-call timeout in seconds (``openai``).
        max_retries: Retries of a transient failure after the first attempt.
        backoff_base_s: First retry delay; doubles with each retry (with jitter).
        backoff_max_s: Cap on the retry delay.
        concurrency: Requests in flight at once in ``chat_many`` (``openai``).
        batch_size: Conversations generated together (``hf``).
        cache_path: SQLite response cache file. ``None``: ``<run folder>/llm_cache.sqlite`` when the backend is
            built for a run folder (``build_llm_backend(..., run_dir=...)``, which every stage does), else no
            cache (``replay`` requires one).
        temperature: Sampling temperature (0 = greedy).
        max_tokens: Most completion tokens per answer.
        top_p: Nucleus sampling mass; ``None`` leaves the server default.
        seed: Sampling seed passed to the server / generator; ``None`` for none.
        extra: Further sampling parameters: sent in the request body (``openai``; e.g. vLLM's ``top_k``,
            ``repetition_penalty``) or passed to ``generate`` (``hf``). They are part of the cache key.
        max_calls: Cap on backend calls (retries count; cache hits do not); ``None`` for no cap. With a run folder
            the cap covers every run of that folder (spend ledger ``llm_spend.jsonl``), not only this process.
        max_tokens_budget: Cap on prompt + completion tokens, counted like ``max_calls``; ``None`` for no cap.
        device: ``hf``: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"`` (CUDA when available).
        dtype: ``hf``: ``"auto"``, ``"float32"``, ``"bfloat16"`` or ``"float16"``.
        gguf_file: ``hf``: GGUF file name inside the ``model`` folder, for quantised causal LMs.
        trust_remote_code: ``hf``: allow model code shipped with the checkpoint.
        replay_of: ``replay``: the backend whose cached answers are replayed (part of the cache key).
        structured_output: How a stage's answer schema reaches the server (:mod:`refineg.llm.answers`):
            ``json_schema`` (default; ``response_format={"type": "json_schema", ...}``: OpenAI, vLLM >= 0.6,
            SGLang), ``guided_json`` (``extra_body={"guided_json": schema}``: vLLM before 0.12) or ``off`` (the
            schema is not sent; the answer is parsed from the text). Every mode validates the answer against
            the schema's model. Part of the cache key.
        box_format: The coordinates the model answers boxes in (:mod:`refineg.llm.boxes`): ``pixel`` (pixels of
            the image sent), ``norm1000`` (integers 0-1000), ``norm1`` (floats 0-1) or ``qwen2.5-vl`` (pixels of
            the grid Qwen2.5-VL's processor resizes the sent image to).
        min_pixels: ``qwen2.5-vl`` boxes: the processor's ``min_pixels`` (Qwen2.5-VL's default 3136 = 4 * 28 * 28).
        max_pixels: ``qwen2.5-vl`` boxes: the processor's ``max_pixels`` (default 12845056 = 16384 * 28 * 28).
    """

    backend: str = "openai"
    model: str = ""
    base_url: Optional[str] = None  # noqa: UP045
    api_key_env: str = "OPENAI_API_KEY"
    max_side: int = 1000
    jpeg_quality: int = 90
    timeout_s: float = 60.0
    max_retries: int = 3
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    concurrency: int = 8
    batch_size: int = 8
    cache_path: Optional[str] = None  # noqa: UP045
    temperature: float = 0.0
    max_tokens: int = 1024
    top_p: Optional[float] = None  # noqa: UP045
    seed: Optional[int] = None  # noqa: UP045
    extra: dict[str, Any] = field(default_factory=dict)
    max_calls: Optional[int] = None  # noqa: UP045
    max_tokens_budget: Optional[int] = None  # noqa: UP045
    device: str = "cpu"
    dtype: str = "auto"
    gguf_file: Optional[str] = None  # noqa: UP045
    trust_remote_code: bool = False
    replay_of: str = "openai"
    structured_output: str = "json_schema"
    box_format: str = "pixel"
    min_pixels: int = 3136
    max_pixels: int = 12845056

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("concurrency and batch_size must be >= 1")
        if str(self.structured_output).lower() == "false":
            # YAML 1.1 (OmegaConf's override parser) reads a bare `off` as false: the user wrote `off`
            self.structured_output = "off"
        if self.structured_output not in STRUCTURED_OUTPUT_MODES:
            raise ValueError(
                f"unknown structured_output {self.structured_output!r}; choose one of {list(STRUCTURED_OUTPUT_MODES)}"
            )
        if self.box_format not in BOX_FORMATS:
            raise ValueError(f"unknown box_format {self.box_format!r}; choose one of {list(BOX_FORMATS)}")
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError("min_pixels and max_pixels must satisfy 0 < min_pixels <= max_pixels")

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | Any) -> LLMConfig:
        """Builds a config from a mapping, an OmegaConf ``DictConfig`` or an ``LLMConfig``.

        Raises:
            TypeError: A key is not a field of :class:`LLMConfig` (a typo is an error, not a silent default).
        """
        if isinstance(options, LLMConfig):
            return dataclasses.replace(options)
        if not isinstance(options, Mapping):
            from omegaconf import OmegaConf  # only needed for DictConfig input

            options = OmegaConf.to_container(options, resolve=True)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown LLM config key(s) {unknown}; known keys: {sorted(names)}")
        values = dict(options)
        if values.get("extra") is not None:
            values["extra"] = dict(values["extra"])
        return cls(**values)
