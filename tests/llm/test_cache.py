import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from refineg.llm import CachedResponse, ResponseCache, request_key, request_material, system, user
from refineg.llm.cache import iter_materials

REPO = Path(__file__).resolve().parents[2]


def child(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.llm.cache_child", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_put_get_and_persistence(tmp_path):
    path = tmp_path / "sub" / "c.sqlite"
    cache = ResponseCache(path)
    assert cache.get("k") is None and len(cache) == 0
    cache.put("k", CachedResponse("answer", 3, 4, "stop", 0.5), {"backend": "b", "model": "m"})
    cache.close()
    again = ResponseCache(path)
    assert again.get("k") == CachedResponse("answer", 3, 4, "stop", 0.5)
    assert "k" in again and len(again) == 1 and again.integrity_ok()
    assert again.path.exists() and again._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_key_depends_on_content_not_on_image_identity(tmp_path):
    img = Image.new("RGB", (40, 30), (9, 8, 7))
    img.save(tmp_path / "a.png")
    params = {"temperature": 0.0, "max_tokens": 5, "top_p": None}

    def key(messages, backend="openai", model="m", **p):
        return request_key(request_material(backend, model, messages, {**params, **p}))

    base = key([system("s"), user(img, "t")])
    assert base == key([system("s"), user(img.copy(), "t")])
    assert base == key([system("s"), user(tmp_path / "a.png", "t")])  # the file's pixels are the same
    assert base == key([system("s"), user(img, "t")], top_p=None, seed=None)  # unset == absent
    other = Image.new("RGB", (40, 30), (9, 8, 6))
    changed = [
        key([system("s"), user(other, "t")]),
        key([system("s"), user("t", img)]),
        key([system("S"), user(img, "t")]),
        key([system("s"), user(img, "t")], backend="hf"),
        key([system("s"), user(img, "t")], model="m2"),
        key([system("s"), user(img, "t")], temperature=0.1),
    ]
    assert len({base, *changed}) == 7


def test_sigkill_mid_run_repeats_no_completed_call_and_loses_none(chat_server, tmp_path):
    chat_server.delay_s = 0.03
    cache_path = str(tmp_path / "crash.sqlite")
    n = 60
    args = ("call", "--base-url", chat_server.base_url, "--cache", cache_path, "--n", str(n), "--concurrency", "4")
    first = child(*args)
    deadline = time.monotonic() + 30
    while sum(chat_server.counts.values()) < 20:
        assert first.poll() is None, first.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(first.pid, signal.SIGKILL)
    out, _ = first.communicate(timeout=10)
    assert first.returncode == -signal.SIGKILL
    reported_done = {line.split()[1] for line in out.splitlines() if line.startswith("done")}

    cache = ResponseCache(cache_path)
    assert cache.integrity_ok()
    cached_before = {m["messages"][0]["content"][0]["text"] for _, m in iter_materials(cache)}
    assert reported_done <= cached_before  # none lost: every call the child saw complete is stored
    assert 20 - 4 <= len(cached_before) < n  # killed mid-run (up to 4 answers were in flight)
    time.sleep(0.1)  # requests the dead child had sent still finish on the server (each takes 30 ms)
    while chat_server.in_flight:
        time.sleep(0.005)
    answered_before = dict(chat_server.counts)

    second = child(*args)
    out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err
    from_cache = {line.split()[1] for line in out.splitlines() if line.endswith(" 1")}
    assert from_cache == cached_before
    for prompt in cached_before:  # no completed call was sent again
        assert chat_server.counts[prompt] == 1
    assert len(cache) == n and cache.integrity_ok()
    # The only repeats are the few calls in flight at the kill (answered but never stored).
    repeated = [p for p, c in chat_server.counts.items() if c > 1]
    assert set(repeated) <= set(answered_before) - cached_before
    assert len(repeated) <= 4


def test_two_processes_write_concurrently_without_corruption(tmp_path):
    cache_path = str(tmp_path / "shared.sqlite")
    start_at = str(time.time() + 1.5)  # both begin writing at the same moment, after their imports
    a = child("write", "--cache", cache_path, "--start", "0", "--stop", "400", "--start-at", start_at)
    b = child("write", "--cache", cache_path, "--start", "200", "--stop", "600", "--start-at", start_at)
    for proc in (a, b):
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert out.strip() == "written"
    cache = ResponseCache(cache_path)
    assert cache.integrity_ok()
    assert len(cache) == 600
    for i in range(600):
        assert cache.get(f"k{i}") == CachedResponse(f"value of k{i}", i, 2 * i)
