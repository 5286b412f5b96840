"""Backend implementations; importing this package registers them."""

from . import hf_backend, openai_backend, replay

__all__ = ["hf_backend", "openai_backend", "replay"]
