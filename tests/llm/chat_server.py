"""A loopback server speaking the OpenAI chat-completions protocol, with injectable faults.

Used by the tests (in a thread) and by ``bench/llm_throughput.py`` (as a subprocess:
``python -m tests.llm.chat_server --delay 0.05`` prints ``PORT <n>`` and serves until killed).

Faults are consumed per request, first from ``rules[<last user text>]`` (a list, for faults aimed at one
prompt), then from the global ``faults`` list. A fault is one of:

- ``"429"`` / ``"429:<seconds>"``: HTTP 429 with ``Retry-After`` (default 1).
- ``"500"``, ``"503"``: server error.
- ``"garbage"``: HTTP 200 with an HTML body; ``"garbage_json"``: 200, JSON content type, broken body.
- ``"drop"``: close the connection without answering.
- ``"delay:<seconds>"``: answer normally after a pause (to trigger client timeouts).
- ``"notjson"``: a prose answer; ``"chatty"``: the JSON answer wrapped in prose and a code fence;
  ``"truncated"``: the JSON answer cut in half with ``finish_reason="length"``.
- ``"echo_auth"``: HTTP 400 whose body repeats the request's Authorization header (a leaky server).

``body_responder`` (when set) answers from the whole request body instead of ``responder``; a :class:`BadRequest`
it raises answers HTTP 400 and is recorded in ``errors`` (``tests/llm/grounding_oracle.py`` uses it).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


def _last_user_text(body: dict[str, Any]) -> str:
    for message in reversed(body.get("messages", [])):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        return "".join(p.get("text", "") for p in content if p.get("type") == "text")
    return ""


def _all_text(body: dict[str, Any]) -> str:
    texts = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            texts.append(content)
        else:
            texts.extend(p.get("text", "") for p in content if p.get("type") == "text")
    return " ".join(texts)


class BadRequest(ValueError):
    """Raised by a ``body_responder`` for a request it rejects (answered with HTTP 400 and recorded)."""


def decode_image_url(url: str) -> Image.Image:
    """The decoded image of a base64 JPEG data URL; raises ValueError for anything else."""
    prefix = "data:image/jpeg;base64,"
    if not url.startswith(prefix):
        raise ValueError("image is not a base64 JPEG data URL")
    with Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :], validate=True))) as img:
        if img.format != "JPEG":
            raise ValueError(f"image is {img.format}, not JPEG")
        img.load()
        return img.copy()


def _decode_images(body: dict[str, Any]) -> list[tuple[int, int]]:
    """Sizes of all image parts; raises ValueError unless each is a base64 JPEG data URL."""
    sizes = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, str):
            continue
        for part in content:
            if part.get("type") == "image_url":
                sizes.append(decode_image_url(part["image_url"]["url"]).size)
    return sizes


class ChatServer(ThreadingHTTPServer):
    """The server; its attributes steer and record it (all access under ``lock``)."""

    daemon_threads = True
    request_queue_size = 256

    def __init__(self, port: int = 0, delay_s: float = 0.0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.faults: list[str] = []
        self.rules: dict[str, list[str]] = {}
        self.expected_key: str | None = None
        # answer text for (last user text, number of images); None = answer_for (a JSON echo of the prompt)
        self.responder: Callable[[str, int], str] | None = None
        # answer text from the whole request body (takes precedence over responder); BadRequest -> HTTP 400
        self.body_responder: Callable[[dict[str, Any]], str] | None = None
        self.errors: list[str] = []  # messages of the BadRequests raised by body_responder
        # called as latency(server, prompt_tokens, completion_tokens) before a 200 answer is sent; it sleeps to
        # emulate a model server's service time (bench/llm_concurrency.py); None = answer at once
        self.latency: Callable[[ChatServer, int, int], None] | None = None
        self.counts: Counter[str] = Counter()  # completed (answered 200) requests per last user text
        self.received: Counter[str] = Counter()  # every request per last user text, faults included
        self.bodies: list[dict[str, Any]] = []
        self.image_sizes: list[list[tuple[int, int]]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.received.values())

    def start(self) -> ChatServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def next_fault(self, prompt: str) -> str | None:
        with self.lock:
            rule = self.rules.get(prompt)
            if rule:
                return rule.pop(0)
            if self.faults:
                return self.faults.pop(0)
        return None


def answer_for(prompt: str, n_images: int) -> str:
    """The server's normal answer: a JSON object echoing the prompt."""
    return json.dumps({"echo": prompt, "n_images": n_images})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    # Headers and body go out in two writes; without TCP_NODELAY, Nagle + delayed ACK add ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: ChatServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str, headers: dict | None = None) -> None:
        self._send(
            status,
            json.dumps({"error": {"message": message, "type": "test", "code": status}}).encode(),
            headers=headers,
        )

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        srv = self.server
        with srv.lock:
            srv.in_flight += 1
            srv.max_in_flight = max(srv.max_in_flight, srv.in_flight)
        try:
            self._handle(raw)
        finally:
            with srv.lock:
                srv.in_flight -= 1

    def _handle(self, raw: bytes) -> None:
        srv = self.server
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}")
            return
        body = json.loads(raw)
        prompt = _last_user_text(body)
        with srv.lock:
            srv.received[prompt] += 1
            srv.bodies.append(body)
        auth = self.headers.get("Authorization", "")
        fault = srv.next_fault(prompt)
        if srv.delay_s:
            time.sleep(srv.delay_s)
        if srv.expected_key is not None and auth != f"Bearer {srv.expected_key}":
            self._error(401, "wrong API key")
            return
        if fault == "echo_auth":
            self._error(400, f"bad request; you sent Authorization: {auth}")
            return
        if fault is not None and fault.startswith("429"):
            wait = fault.split(":", 1)[1] if ":" in fault else "1"
            self._error(429, "slow down", headers={"Retry-After": wait})
            return
        if fault in ("500", "503"):
            self._error(int(fault), "server trouble")
            return
        if fault == "garbage":
            self._send(200, b"<html><body>proxy error</body></html>", content_type="text/html")
            return
        if fault == "garbage_json":
            self._send(200, b'{"choices": [{"mess', content_type="application/json")
            return
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)  # socket.SHUT_RDWR: the client sees the connection end with no answer
            return
        if fault is not None and fault.startswith("delay:"):
            time.sleep(float(fault.split(":", 1)[1]))
        try:
            sizes = _decode_images(body)
        except Exception as err:  # any decoding problem is the client's fault
            self._error(400, f"bad image: {err}")
            return
        if srv.body_responder is not None:
            try:
                content = srv.body_responder(body)
            except BadRequest as err:
                with srv.lock:
                    srv.errors.append(str(err))
                self._error(400, f"rejected: {err}")
                return
        else:
            content = (srv.responder or answer_for)(prompt, len(sizes))
        finish = "stop"
        if fault == "notjson":
            content = "I am sorry, I cannot answer in JSON today."
        elif fault == "chatty":
            content = f"Sure! Here is the answer:\n```json\n{content}\n```\nHope this helps."
        elif fault == "truncated":
            content, finish = content[: len(content) // 2], "length"
        with srv.lock:
            srv.counts[prompt] += 1
            srv.image_sizes.append(sizes)
        prompt_tokens = len(_all_text(body).split()) + 85 * len(sizes)
        if srv.latency is not None:
            srv.latency(srv, prompt_tokens, len(content.split()))
        reply = {
            "id": f"chatcmpl-{srv.total}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", ""),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(content.split()),
                "total_tokens": prompt_tokens + len(content.split()),
            },
        }
        self._send(200, json.dumps(reply).encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    server = ChatServer(args.port, args.delay)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
