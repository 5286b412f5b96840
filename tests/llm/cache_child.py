"""Child processes for the cache crash and concurrency tests.

``call``: makes chat calls through the openai backend with a cache, printing ``done <prompt> <cached>`` after each.
``write``: writes cache entries ``k<start>..k<stop-1>`` directly, starting at a given wall-clock time.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from refineg.llm import CachedResponse, ResponseCache, create_llm_backend, user


def call(args: argparse.Namespace) -> None:
    llm = create_llm_backend(
        "openai", model="crash-model", base_url=args.base_url, cache_path=args.cache, api_key_env="", max_retries=0
    )

    lock = threading.Lock()

    def one(prompt: str) -> None:
        result = llm.chat([user(prompt)])
        if not result.ok:
            raise SystemExit(f"call failed: {result.error}")
        with lock:  # one whole line per write: lines from several threads must not interleave
            sys.stdout.write(f"done {prompt} {int(result.cached)}\n")
            sys.stdout.flush()

    with ThreadPoolExecutor(args.concurrency) as pool:
        list(pool.map(one, [f"p{i}" for i in range(args.n)]))


def write(args: argparse.Namespace) -> None:
    cache = ResponseCache(args.cache)
    while time.time() < args.start_at:
        time.sleep(0.001)
    for i in range(args.start, args.stop):
        key = f"k{i}"
        cache.put(key, CachedResponse(f"value of {key}", i, 2 * i), {"backend": "test", "model": "m", "i": i})
        if i % 10 == 0:  # read while the other process writes
            assert cache.get(f"k{args.start}").text == f"value of k{args.start}"
    print("written", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("call")
    c.add_argument("--base-url", required=True)
    c.add_argument("--cache", required=True)
    c.add_argument("--n", type=int, default=60)
    c.add_argument("--concurrency", type=int, default=4)
    w = sub.add_parser("write")
    w.add_argument("--cache", required=True)
    w.add_argument("--start", type=int, required=True)
    w.add_argument("--stop", type=int, required=True)
    w.add_argument("--start-at", type=float, required=True)
    args = parser.parse_args()
    call(args) if args.mode == "call" else write(args)


if __name__ == "__main__":
    sys.exit(main())
