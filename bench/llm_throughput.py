"""Throughput of the ``openai`` backend against the loopback chat server, and cache-hit latency.

Run from the repository root:

    python bench/llm_throughput.py --delay 0.05 --concurrency 1 8 32

The server (``tests/llm/chat_server.py``) runs in its own process and answers every request after ``--delay``
seconds, so the ideal rate at concurrency c is ``c / delay`` requests/s; the table reports how close the backend
(client, threads, retry/budget/usage wrapper) comes to it. Cache-hit latency is measured with a SQLite cache
filled beforehand: single ``chat`` calls (p50/p95) and a ``chat_many`` over hits only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from refineg.llm import create_llm_backend, user  # noqa: E402


def start_server(delay: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.llm.chat_server", "--delay", str(delay)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def throughput(base_url: str, concurrency: int, n: int, tag: str) -> dict:
    llm = create_llm_backend("openai", model="bench", base_url=base_url, api_key_env="", concurrency=concurrency)
    convs = [[user(f"{tag} request {i}")] for i in range(n)]
    llm.chat_many(convs[: min(n, concurrency)], progress=False)  # warm up connections
    convs = [[user(f"{tag} timed request {i}")] for i in range(n)]
    start, cpu_start = time.perf_counter(), time.process_time()
    results = llm.chat_many(convs, progress=False)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    lat = [r.latency_s for r in results]
    return {"concurrency": concurrency, "requests": n, "seconds": elapsed, "rps": n / elapsed,
            "latency_p50_ms": 1000 * statistics.median(lat), "client_cpu_ms_per_request": 1000 * cpu / n}  # fmt: skip


def cache_hits(base_url: str, n: int, workdir: Path) -> dict:
    cache = str(workdir / "bench_cache.sqlite")
    llm = create_llm_backend("openai", model="bench", base_url=base_url, api_key_env="", cache_path=cache,
                             concurrency=32)  # fmt: skip
    convs = [[user(f"cached request {i}")] for i in range(n)]
    assert all(r.ok for r in llm.chat_many(convs, progress=False))
    single = []
    for conv in convs:
        start = time.perf_counter()
        r = llm.chat(conv)
        single.append(time.perf_counter() - start)
        assert r.cached
    start = time.perf_counter()
    results = llm.chat_many(convs, progress=False)
    many_s = time.perf_counter() - start
    assert all(r.cached for r in results)
    single.sort()
    return {"requests": n, "chat_p50_ms": 1000 * statistics.median(single),
            "chat_p95_ms": 1000 * single[int(0.95 * (n - 1))], "chat_many_rps": n / many_s}  # fmt: skip


def image_cache_hits(base_url: str, workdir: Path, reps: int = 30) -> dict:
    """Cache-hit latency of a conversation with one 1200x900 photo-like image, in memory and as a file."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (900, 1200, 3), dtype=np.uint8))
    path = workdir / "photo.jpg"
    image.save(path, quality=90)
    llm = create_llm_backend("openai", model="bench", base_url=base_url, api_key_env="",
                             cache_path=str(workdir / "image_cache.sqlite"))  # fmt: skip
    out = {}
    for name, source in (("pil", image), ("path", path)):
        conv = [user(source, "where is the entity?")]
        assert llm.chat(conv).ok
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            assert llm.chat(conv).cached
            times.append(time.perf_counter() - start)
        out[f"{name}_p50_ms"] = 1000 * statistics.median(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay", type=float, default=0.05, help="simulated server latency in seconds")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=4.0, help="target length of each timed run at ideal speed")
    parser.add_argument("--cache-requests", type=int, default=500)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    server, base_url = start_server(args.delay)
    try:
        rows = []
        for c in args.concurrency:
            n = max(c, int(args.seconds * c / args.delay))
            rows.append(throughput(base_url, c, n, f"c{c}"))
        with tempfile.TemporaryDirectory() as tmp:
            hits = cache_hits(base_url, args.cache_requests, Path(tmp))
            image_hits = image_cache_hits(base_url, Path(tmp))
    finally:
        server.kill()
        server.wait()

    print(f"openai backend vs loopback server, {args.delay * 1000:.0f} ms simulated latency")
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print()
    print("| concurrency | requests | seconds | requests/s | ideal requests/s | efficiency | p50 latency (ms) "
          "| client CPU per request (ms) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        ideal = r["concurrency"] / args.delay
        cells = [
            r["concurrency"],
            r["requests"],
            f"{r['seconds']:.2f}",
            f"{r['rps']:.1f}",
            f"{ideal:.0f}",
            f"{r['rps'] / ideal:.0%}",
            f"{r['latency_p50_ms']:.1f}",
            f"{r['client_cpu_ms_per_request']:.2f}",
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    print()
    print(f"cache hits ({hits['requests']} requests): chat() p50 {hits['chat_p50_ms']:.3f} ms, "
          f"p95 {hits['chat_p95_ms']:.3f} ms; chat_many over hits {hits['chat_many_rps']:.0f} requests/s")  # fmt: skip
    print(f"cache hits with one 1200x900 image: PIL image p50 {image_hits['pil_p50_ms']:.2f} ms, "
          f"JPEG file p50 {image_hits['path_p50_ms']:.2f} ms")  # fmt: skip
    if args.json:
        results = {"delay_s": args.delay, "throughput": rows, "cache_hits": hits, "image_cache_hits": image_hits}
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
