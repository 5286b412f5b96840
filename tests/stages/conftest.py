import pytest

from refineg.data import Entity, Example
from tests.llm.chat_server import ChatServer


@pytest.fixture
def chat_server():
    server = ChatServer().start()
    yield server
    server.stop()


def post(pid, text, *entities, source="gold"):
    """A post from whitespace-separated text and (start, end, type) spans."""
    return Example(pid, text.split(), entities=[Entity(s, e, t) for s, e, t in entities], source=source)
