import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from tests.llm.chat_server import ChatServer  # noqa: E402


@pytest.fixture
def chat_server():
    server = ChatServer().start()
    yield server
    server.stop()


@pytest.fixture
def fast_retry():
    """Config keys that keep retry back-off short in tests."""
    return {"backoff_base_s": 0.01, "backoff_max_s": 0.05, "timeout_s": 5.0}
