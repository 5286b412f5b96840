"""Name-to-factory registries, one per component kind (timm-style ``create_*`` / ``list_*``)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any


class Registry:
    """Maps names to factories for one kind of component.

    Args:
        kind: What the registry holds (``"backbone"``, ``"llm backend"``, ...); used in error messages.

    Example:
        >>> HEADS = Registry("head")
        >>> @HEADS.register("softmax")
        ... def softmax_head(hidden_size: int, num_labels: int): ...
        >>> HEADS.list()
        ['softmax']
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator that registers ``factory`` under ``name``; a name can be registered once."""

        def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
            if name in self._factories:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return wrap

    def get(self, name: str) -> Callable[..., Any]:
        """Returns the factory registered as ``name``.

        Raises:
            KeyError: ``name`` is unknown; the message lists the known names.
        """
        try:
            return self._factories[name]
        except KeyError:
            known = ", ".join(sorted(self._factories)) or "(none)"
            raise KeyError(f"unknown {self.kind} {name!r}; known {self.kind}s: {known}") from None

    def create(self, name: str, **kwargs: Any) -> Any:
        """Builds the component registered as ``name`` with ``kwargs``."""
        return self.get(name)(**kwargs)

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style ``pattern``."""
        return sorted(n for n in self._factories if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._factories
