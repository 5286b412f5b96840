"""The LLM backend registry and the functions that build backends by name or from a config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..registry import Registry
from .config import LLMConfig
from .usage import Budget, UsageMeter

#: Registered backends: ``openai``, ``hf``, ``replay``.
LLM_BACKENDS = Registry("llm backend")

_RUNTIME_KEYS = ("usage", "run_dir", "cache", "budget")
#: The response cache of a run folder when ``cache_path`` is not set (see :func:`build_llm_backend`).
CACHE_FILENAME = "llm_cache.sqlite"


def register_backend(name: str) -> Callable[[type], type]:
    """Class decorator: registers a :class:`~refineg.llm.base.ChatBackend` subclass under ``name``.

    The registered factory takes the :class:`LLMConfig` fields as keyword arguments (``backend`` is set to
    ``name``) plus the runtime objects ``usage``, ``run_dir``, ``cache`` and ``budget``.
    """

    def wrap(cls: type) -> type:
        def factory(**kwargs: Any) -> Any:
            runtime = {k: kwargs.pop(k) for k in _RUNTIME_KEYS if k in kwargs}
            config = LLMConfig.from_options({**kwargs, "backend": name})
            return cls(config, **runtime)

        factory.__doc__ = f"Builds a {cls.__name__} from LLMConfig keyword arguments."
        LLM_BACKENDS.register(name)(factory)
        return cls

    return wrap


def create_llm_backend(name: str, **cfg: Any) -> Any:
    """Builds the backend registered as ``name``.

    Args:
        name: ``openai``, ``hf`` or ``replay``.
        **cfg: :class:`LLMConfig` fields, and optionally ``usage`` (a shared :class:`UsageMeter`), ``run_dir``,
            ``cache`` and ``budget``.

    Raises:
        KeyError: Unknown backend name (the message lists the known ones).
        TypeError: Unknown config key.
    """
    return LLM_BACKENDS.create(name, **cfg)


def build_llm_backend(
    config: LLMConfig | Any,
    *,
    usage: UsageMeter | None = None,
    run_dir: str | Path | None = None,
    budget: Budget | None = None,
) -> Any:
    """Builds the backend a config (``LLMConfig``, mapping or OmegaConf node) names in ``backend``.

    This is how the stages build their backends, so it gives every stage a response cache: when
    ``cache_path`` is not set and there is a run folder (``run_dir``, else the one of ``usage``), answers are
    cached in ``<run folder>/llm_cache.sqlite``. A killed and restarted run therefore repeats no answered call.
    """
    cfg = LLMConfig.from_options(config)
    folder = run_dir if run_dir is not None else (usage.run_dir if usage is not None else None)
    if cfg.cache_path is None and folder is not None:
        cfg.cache_path = str(Path(folder) / CACHE_FILENAME)
    options = {k: v for k, v in vars(cfg).items() if k != "backend"}
    runtime = {k: v for k, v in (("usage", usage), ("run_dir", run_dir), ("budget", budget)) if v is not None}
    return create_llm_backend(cfg.backend, **options, **runtime)


def list_llm_backends(pattern: str = "*") -> list[str]:
    """Names of the registered backends matching ``pattern``."""
    return LLM_BACKENDS.list(pattern)
