"""Persistent response cache: SQLite in WAL mode, one committed row per completed call.

Why SQLite/WAL: every answer is committed on its own as soon as it arrives, so killing the process (even with
SIGKILL) loses no completed call and a restart repeats none; several processes may read and write the same file
at once (SQLite's locking serialises writers, WAL lets readers go on meanwhile). ``synchronous=NORMAL`` keeps a
committed row across a process crash; only a power cut or kernel crash could lose the last commits (use
``synchronous="FULL"`` for that).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image

from .images import image_content_hash
from .messages import ImagePart, Message, TextPart

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT,
    latency_s REAL NOT NULL,
    created REAL NOT NULL,
    request TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class CachedResponse:
    """A stored answer.

    Attributes:
        text: Answer text.
        prompt_tokens: Prompt tokens of the original call.
        completion_tokens: Completion tokens of the original call.
        finish_reason: The original call's reason to stop.
        latency_s: Latency of the original call in seconds.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    latency_s: float = 0.0


@lru_cache(maxsize=4096)
def _file_image_hash(path: str, mtime_ns: int, size: int) -> str:
    return image_content_hash(path)


def _image_hash(source: Image.Image | str | Path) -> str:
    if isinstance(source, Image.Image):
        return image_content_hash(source)
    st = Path(source).stat()
    return _file_image_hash(str(Path(source).resolve()), st.st_mtime_ns, st.st_size)


def messages_fingerprint(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """A JSON-ready description of ``messages`` with every image replaced by the SHA-256 of its pixels."""
    out = []
    for m in messages:
        parts: list[dict[str, str]] = []
        for p in m.parts:
            if isinstance(p, TextPart):
                parts.append({"type": "text", "text": p.text})
            elif isinstance(p, ImagePart):
                parts.append({"type": "image", "sha256": _image_hash(p.image)})
        out.append({"role": m.role, "content": parts})
    return out


def request_material(
    backend: str, model: str, messages: Sequence[Message], params: Mapping[str, Any]
) -> dict[str, Any]:
    """What a cache key is computed from: backend, model, messages (images by content hash) and params.

    Args:
        backend: Backend name (``openai``, ``hf``).
        model: Model name or path.
        messages: The conversation.
        params: Everything else that changes the answer: sampling parameters and image preparation
            (``max_side``, JPEG quality). Keys with value ``None`` are dropped so that an unset parameter and a
            missing one give the same key.
    """
    clean = {k: v for k, v in sorted(params.items()) if v is not None}
    return {"backend": backend, "model": model, "messages": messages_fingerprint(messages), "params": clean}


def request_key(material: Mapping[str, Any]) -> str:
    """SHA-256 hex digest of the canonical JSON of ``material``."""
    blob = json.dumps(material, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers keyed by :func:`request_key`, stored in one SQLite file.

    Safe to share between threads (one connection per thread) and between processes.

    Args:
        path: SQLite file; parent folders are created.
        synchronous: SQLite ``synchronous`` setting (``"NORMAL"`` survives process crashes; ``"FULL"`` also
            survives power loss, at some cost per write).
        busy_timeout_s: How long a writer waits for another process's write lock.
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL", busy_timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"unknown SQLite synchronous mode {synchronous!r}")
        self.synchronous = synchronous.upper()
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()
        self._conn()  # create the schema now, so errors surface at construction

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        # isolation_level=None: autocommit, so every INSERT is its own committed transaction.
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout_s, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
        deadline = time.monotonic() + self.busy_timeout_s
        while True:
            try:
                # Switching to WAL takes an exclusive lock, which a concurrent opener may hold for a moment.
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute(_SCHEMA)
                break
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        self._local.conn = conn
        with self._all_lock:
            self._all.append(conn)
        return conn

    def get(self, key: str) -> CachedResponse | None:
        """The stored answer for ``key``, or ``None``."""
        row = (
            self._conn()
            .execute(
                "SELECT text, prompt_tokens, completion_tokens, finish_reason, latency_s FROM responses WHERE key=?",
                (key,),
            )
            .fetchone()
        )
        return CachedResponse(*row) if row else None

    def put(self, key: str, response: CachedResponse, material: Mapping[str, Any]) -> None:
        """Stores (or replaces) the answer for ``key`` and commits it before returning.

        Args:
            key: :func:`request_key` of ``material``.
            response: The answer.
            material: The request description (kept for inspection; images appear only as hashes).
        """
        self._conn().execute(
            "INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                key,
                str(material.get("backend", "")),
                str(material.get("model", "")),
                response.text,
                int(response.prompt_tokens),
                int(response.completion_tokens),
                response.finish_reason,
                float(response.latency_s),
                time.time(),
                json.dumps(material, sort_keys=True, ensure_ascii=False, default=str),
            ),
        )

    def delete(self, key: str) -> None:
        """Removes ``key`` (e.g. an answer later found unusable)."""
        self._conn().execute("DELETE FROM responses WHERE key=?", (key,))

    def keys(self) -> list[str]:
        """All stored keys."""
        return [r[0] for r in self._conn().execute("SELECT key FROM responses")]

    def __contains__(self, key: str) -> bool:
        return self._conn().execute("SELECT 1 FROM responses WHERE key=?", (key,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._conn().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def integrity_ok(self) -> bool:
        """Whether SQLite's ``PRAGMA integrity_check`` passes."""
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def close(self) -> None:
        """Closes every thread's connection."""
        with self._all_lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:  # closed from another thread already
                pass
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"ResponseCache({str(self.path)!r})"


def iter_materials(cache: ResponseCache) -> Iterable[tuple[str, dict[str, Any]]]:
    """Yields ``(key, request material)`` for every stored answer (for inspection and tests)."""
    for key, request in cache._conn().execute("SELECT key, request FROM responses"):
        yield key, json.loads(request)
