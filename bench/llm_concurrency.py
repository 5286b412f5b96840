"""Posts/s of ``refineg refine`` and ``refineg ground`` against an emulated GPU model server, vs the release's client.

Run from the repository root (a few minutes on 2 CPU cores):

    python bench/llm_concurrency.py --json docs/benchmarks-llm-concurrency.json

The server is the loopback chat server of the tests (``tests/llm/chat_server.py``) in its own process, with a
latency model of a GPU server doing continuous batching: a request first waits ``prefill_s + prefill_per_token_s *
prompt_tokens`` (times the slowdown below), then decodes its answer token by token, each token taking
``per_token_s * f(n)`` where ``n`` is the number of requests in flight at that moment and ``f(n) = 1 + alpha * (n -
1)``: a batch of 64 decodes each sequence ``1 + 63 * alpha`` times slower than a batch of one, but 64 at once.
Answers are what a model would say (the entity unchanged, its type and one box, the grounding list), each with a
``reasoning_process`` of ``--reasoning-words`` words, so that the completion has a realistic length.

Each measured run is its own process (so its peak RSS is its own): the stage code itself (``run_refine`` with
``tau=0``, every entity delegated: a span check and a type/box check each; ``run_ground`` with the ``mllm`` grounder,
one request per post, no demonstrations; ``--ground-chunk-sizes``) at each ``--concurrency``, and the baseline: what
the released scripts do, one synchronous request after the other with the bare ``openai`` client (the grounding
request of each post, and for refine the same span and type checks one by one). Posts are the bundled Twitter-GMNER
sample (gold entities standing in for predictions), each paired with a real photo of ``--images`` (Flickr30k
Entities).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULT_IMAGES = REPO.parent / "shared" / "data" / "flickr30k-entities" / "images"
_SPAN = re.compile(r'The tagger marked the words "(.*)" as one named entity')
_TYPE = re.compile(r'The tagger says that "(.*)" is a named entity of type (\S+)\.')
_ENTITIES = re.compile(r"^Entities: (.*)$", re.M)


# ------------------------------------------------------------------------------------------------------- server
class GPULatency:
    """Service time of an emulated GPU server (see the module docstring); thread-safe, sleeps in the handler."""

    def __init__(self, prefill_s: float, prefill_per_token_s: float, per_token_s: float, alpha: float, step: int):
        self.prefill_s, self.prefill_per_token_s = prefill_s, prefill_per_token_s
        self.per_token_s, self.alpha, self.step = per_token_s, alpha, step

    def slowdown(self, server) -> float:
        with server.lock:
            n = max(1, server.in_flight)
        return 1.0 + self.alpha * (n - 1)

    def __call__(self, server, prompt_tokens: int, completion_tokens: int) -> None:
        time.sleep((self.prefill_s + self.prefill_per_token_s * prompt_tokens) * self.slowdown(server))
        left = completion_tokens
        while left > 0:  # decode in steps of a few tokens, each at the slowdown of the moment
            k = min(self.step, left)
            time.sleep(k * self.per_token_s * self.slowdown(server))
            left -= k


def model_answer(prompt: str, words: int) -> str:
    """The answer a cooperative model gives to a refinement check or a grounding request."""
    reasoning = " ".join(["word"] * words)
    if m := _SPAN.search(prompt):
        return json.dumps({"reasoning_process": reasoning, "corrected_entity": m.group(1)})
    if m := _TYPE.search(prompt):
        return json.dumps(
            {"reasoning_process": reasoning, "corrected_type": m.group(2), "corrected_bounding_box": [10, 12, 80, 90]}
        )
    if m := _ENTITIES.search(prompt):
        items = json.loads(m.group(1))
        per = max(1, words // max(1, len(items)))
        return json.dumps(
            [{**it, "reasoning": " ".join(["word"] * per), "bounding_box": [[10, 12, 80, 90]]} for it in items]
        )
    return json.dumps({"reasoning_process": reasoning})


def serve(args: argparse.Namespace) -> None:
    from tests.llm.chat_server import ChatServer

    server = ChatServer(0)
    server.latency = GPULatency(args.prefill_s, args.prefill_per_token_s, args.per_token_s, args.alpha, args.step)
    server.responder = lambda prompt, n_images: model_answer(prompt, args.reasoning_words)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


# --------------------------------------------------------------------------------------------------------- data
def write_posts(folder: Path, images: Path, n_posts: int, n_pool: int) -> dict[str, str]:
    """Sample posts with gold entities as predictions (uncertainty 1), each with a photo of ``images``."""
    from PIL import Image

    from refineg.data import write_jsonl
    from tests.refine_helpers import sample_posts

    photos = sorted(p.name for p in images.iterdir() if p.suffix.lower() == ".jpg")
    posts = [p for p in sample_posts("train", 10_000) if p.entities][: n_posts + n_pool]
    if len(posts) < n_posts + n_pool or len(photos) < len(posts):
        raise SystemExit(f"need {n_posts + n_pool} posts with entities and photos, have {len(posts)} / {len(photos)}")
    for post, photo in zip(posts, photos):
        post.image = photo
        with Image.open(images / photo) as im:
            post.image_size = im.size
        for e in post.entities:
            e.uncertainty = 1.0
            e.boxes = [[1.0, 1.0, float(post.image_size[0] - 1), float(post.image_size[1] - 1)]]
    out = {"posts": str(folder / "posts.jsonl"), "pool": str(folder / "pool.jsonl")}
    write_jsonl(posts[:n_posts], out["posts"])
    write_jsonl(posts[n_posts:], out["pool"])
    return out


# ------------------------------------------------------------------------------------------------------ workers
def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _llm_overrides(prefix: str, base_url: str, concurrency: int) -> list[str]:
    return [
        f"{prefix}base_url={base_url}",
        f"{prefix}model=bench-vl",
        f"{prefix}api_key_env=''",
        f"{prefix}concurrency={concurrency}",
        f"{prefix}max_retries=0",
        f"{prefix}timeout_s=300",
    ]


def run_stage(
    stage: str, concurrency: int, data: dict[str, str], images: str, base_url: str, work: Path, chunk: int = 0
) -> dict:
    """One measured run of the refine or ground stage code in this process (``chunk``: ground's chunk_size; 0 keeps
    the stage's default)."""
    from refineg.data import read_jsonl

    n_posts = len(read_jsonl(data["posts"]))
    rss_before = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    if stage == "refine":
        from refineg.stages.refinement import load_refine_config, run_refine

        cfg = load_refine_config(
            ["tau=0", f"images_dir={images}", f"run_dir={work}", *_llm_overrides("llm.", base_url, concurrency)]
        )
        report = run_refine(cfg, data["posts"], work / "refined.jsonl")
        usage, failed = report["usage"]["total"], report["backend_failures_kept_small_model"]
    else:
        from refineg.stages.grounding import run_ground

        summary = run_ground(
            data["posts"],
            data["pool"],
            work / "grounded.jsonl",
            images=images,
            overrides=[
                "selector.mode=none",
                *([f"chunk_size={chunk}"] if chunk else []),
                *_llm_overrides("mllm.llm.", base_url, concurrency),
            ],
        )
        usage, failed = summary["usage"]["total"], summary["posts_failed"]
    seconds = time.perf_counter() - start
    return {
        "client": f"refineg {stage}" + (f" (chunk_size {chunk})" if stage == "ground" and chunk else ""),
        "concurrency": concurrency,
        "posts": n_posts,
        "requests": usage["requests"],
        "failed": failed,
        "seconds": seconds,
        "posts_per_s": n_posts / seconds,
        "tokens_per_post": (usage["prompt_tokens"] + usage["completion_tokens"]) / n_posts,
        "client_cpu_s": time.process_time() - cpu,
        "rss_before_mib": rss_before,
        "peak_rss_mib": _rss_mib(),
    }


def run_release_client(stage: str, data: dict[str, str], images: str, base_url: str) -> dict:
    """The released scripts' way: one synchronous ``openai`` request after the other, same prompts."""
    import openai
    from PIL import Image

    from refineg.config import CONFIG_DIR
    from refineg.data import read_jsonl
    from refineg.llm import ImageScale
    from refineg.stages.grounding.prompts import GroundingPrompts
    from refineg.stages.refinement import RefinementPrompts

    posts = read_jsonl(data["posts"])
    client = openai.OpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=300)
    ground = GroundingPrompts.load(CONFIG_DIR / "prompts" / "grounding")
    refine = RefinementPrompts.load(CONFIG_DIR / "prompts" / "refinement")
    types = ["PER", "LOC", "ORG", "OTHER"]
    rss_before = _rss_mib()
    start, cpu = time.perf_counter(), time.process_time()
    requests, tokens = 0, 0

    def ask(system_text: str, text: str, image_path: str) -> dict:
        nonlocal requests, tokens
        with Image.open(image_path) as im:  # the release shrinks to <= 1000 px and sends a JPEG data URL
            im = im.convert("RGB")
            im.thumbnail((1000, 1000))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=90)
        url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()
        reply = client.chat.completions.create(
            model="bench-vl",
            temperature=0.1,
            messages=[
                {"role": "system", "content": system_text},
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}],
                },
            ],
        )
        requests += 1
        tokens += reply.usage.total_tokens
        return json.loads(reply.choices[0].message.content)

    for post in posts:
        path = str(Path(images) / post.image)
        scale = ImageScale.for_image(tuple(post.image_size), 1000)  # pixels of the image as sent
        if stage == "ground":
            ask(ground.system_text(types, ["LOC"]), ground.query_text(post, scale), path)
            continue
        for e in post.entities:
            name = e.text(post.tokens)
            ask(refine.system, refine.span(post.tokens, name, e.type, types), path)
            ask(refine.system, refine.type_box(post.tokens, name, e.type, types, scale), path)
    seconds = time.perf_counter() - start
    return {
        "client": f"release (sequential) {stage}",
        "concurrency": 1,
        "posts": len(posts),
        "requests": requests,
        "failed": 0,
        "seconds": seconds,
        "posts_per_s": len(posts) / seconds,
        "tokens_per_post": tokens / len(posts),
        "client_cpu_s": time.process_time() - cpu,
        "rss_before_mib": rss_before,
        "peak_rss_mib": _rss_mib(),
    }


def worker(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import openai  # noqa: F401  (imports outside the timed part: the openai package alone takes 1-4 s here)

    import refineg.stages.grounding  # noqa: F401
    import refineg.stages.refinement  # noqa: F401

    data = json.loads(args.data)
    c = args.concurrency[0]
    work = Path(tempfile.mkdtemp(prefix=f"bench_{args.worker}_{args.stage}_{c}_", dir=args.workdir))
    if args.worker == "release":
        row = run_release_client(args.stage, data, args.images, args.base_url)
    elif args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        row = profiler.runcall(run_stage, args.stage, c, data, args.images, args.base_url, work, args.chunk)
        out = Path(args.profile) / f"{args.stage}_c{c}_chunk{args.chunk}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as fh:
            pstats.Stats(profiler, stream=fh).sort_stats("cumulative").print_stats(40)
    else:
        row = run_stage(args.stage, c, data, args.images, args.base_url, work, args.chunk)
    print("RESULT " + json.dumps(row), flush=True)


# --------------------------------------------------------------------------------------------------------- main
def _spawn_worker(
    kind: str, stage: str, c: int, data: dict, args: argparse.Namespace, base_url: str, tmp: Path, chunk: int = 0
):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--stage", stage,
           "--concurrency", str(c), "--data", json.dumps(data), "--images", str(args.images),
           "--base-url", base_url, "--workdir", str(tmp), "--chunk", str(chunk)]  # fmt: skip
    if args.profile and kind == "stage":
        cmd += ["--profile", str(args.profile)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"worker {kind} {stage} c={c} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--stages", nargs="+", default=["refine", "ground"], choices=["refine", "ground"])
    parser.add_argument("--posts", type=int, default=256, help="posts per run at the highest concurrency")
    parser.add_argument("--min-posts", type=int, default=16, help="posts per run at concurrency 1 and baseline")
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    parser.add_argument("--prefill-s", type=float, default=0.1)
    parser.add_argument("--prefill-per-token-s", type=float, default=0.00005)
    parser.add_argument("--per-token-s", type=float, default=0.005)
    parser.add_argument("--alpha", type=float, default=0.015)
    parser.add_argument("--step", type=int, default=8, help="tokens decoded per emulated step")
    parser.add_argument("--reasoning-words", type=int, default=60)
    parser.add_argument(
        "--ground-chunk-sizes", type=int, nargs="+", default=[0], help="ground's chunk_size (0: the stage's default)"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--profile", type=Path, help="write a cProfile summary of each stage run (main thread) here")
    # internal: the server process and the worker processes
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["stage", "release"], help=argparse.SUPPRESS)
    parser.add_argument("--stage", default="refine", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if args.worker:
        worker(args)
        return

    server_cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", "--prefill-s", str(args.prefill_s),
                  "--prefill-per-token-s", str(args.prefill_per_token_s), "--per-token-s", str(args.per_token_s),
                  "--alpha", str(args.alpha), "--step", str(args.step),
                  "--reasoning-words", str(args.reasoning_words)]  # fmt: skip
    server = subprocess.Popen(
        server_cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True
    )
    line = server.stdout.readline()
    if not line.startswith("PORT "):
        server.kill()
        raise SystemExit(f"server did not start: {line!r}")
    base_url = f"http://127.0.0.1:{int(line.split()[1])}/v1"
    rows = []
    load = [os.getloadavg()[0]]
    stop = threading.Event()

    def sample_load() -> None:
        while not stop.wait(5):
            load.append(os.getloadavg()[0])

    threading.Thread(target=sample_load, daemon=True).start()
    start = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sets = {}
            for n in sorted({max(args.min_posts, min(args.posts, 4 * c)) for c in args.concurrency} | {args.min_posts}):
                folder = tmp / f"data_{n}"
                folder.mkdir()
                sets[n] = write_posts(folder, args.images, n, 8)
            for stage in args.stages:
                baseline = _spawn_worker("release", stage, 1, sets[args.min_posts], args, base_url, tmp)
                rows.append(baseline)
                print(json.dumps(baseline), flush=True)
                for chunk in args.ground_chunk_sizes if stage == "ground" else [0]:
                    for c in args.concurrency:
                        n = max(args.min_posts, min(args.posts, 4 * c))
                        row = _spawn_worker("stage", stage, c, sets[n], args, base_url, tmp, chunk)
                        row["speedup_vs_release"] = row["posts_per_s"] / baseline["posts_per_s"]
                        row["requests_speedup_vs_release"] = (row["requests"] / row["seconds"]) / (
                            baseline["requests"] / baseline["seconds"]
                        )
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        stop.set()
        server.kill()
        server.wait()
    wall = time.perf_counter() - start

    print()
    print(f"emulated GPU server: prefill {args.prefill_s}s + {args.prefill_per_token_s}s/prompt token, "
          f"{args.per_token_s * 1000:.1f} ms/token x (1 + {args.alpha} (in flight - 1)); "
          f"{args.reasoning_words} words of reasoning per answer")  # fmt: skip
    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average {min(load):.1f}-{max(load):.1f}")
    print()
    print("| client | concurrency | posts | requests | seconds | posts/s | x release | requests/s | x release "
          "| tokens/post | client CPU s | peak RSS MiB (before run) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speed = f"{r.get('speedup_vs_release', 1.0):.1f}"
        rspeed = f"{r.get('requests_speedup_vs_release', 1.0):.1f}"
        print(f"| {r['client']} | {r['concurrency']} | {r['posts']} | {r['requests']} | {r['seconds']:.1f} | "
              f"{r['posts_per_s']:.2f} | {speed} | {r['requests'] / r['seconds']:.1f} | {rspeed} | "
              f"{r['tokens_per_post']:.0f} | {r['client_cpu_s']:.1f} | "
              f"{r['peak_rss_mib']:.0f} ({r['rss_before_mib']:.0f}) |")  # fmt: skip
    if args.json:
        settings = {k: getattr(args, k) for k in ("prefill_s", "prefill_per_token_s", "per_token_s", "alpha", "step",
                                                   "reasoning_words", "posts", "min_posts", "concurrency",
                                                   "ground_chunk_sizes")}  # fmt: skip
        meta = {"python": platform.python_version(), "cpus": os.cpu_count(),
                "load_average_min_max": [min(load), max(load)], "wall_s": wall,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
        args.json.write_text(json.dumps({"settings": settings, "machine": meta, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
