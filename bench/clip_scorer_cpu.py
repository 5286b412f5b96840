"""CPU time per post of the open_clip region scorer (grounder ``clip``) for each proposal source.

ViT-B-32 with random weights (pretrained=None): the weights do not change the time, only the answers. Posts are
real scikit-image photos (astronaut, coffee, chelsea, rocket, camera, ...) resized to 640 px on the long side, each
with two entities (one PER, one OTHER), so the ``mtcnn`` source runs the face detector for PER and its grid
fallback for OTHER. The ``file`` source reads a generated JSONL of ``--file-boxes`` random boxes per image (the
format a VinVL export would have). Every source is timed on the same posts: one warm-up post, then ``--posts`` posts;
the median, min and max of the per-post wall time and process CPU time are reported, with the proposal step timed on
its own.

Usage:
    HF_HUB_OFFLINE=1 python bench/clip_scorer_cpu.py --threads 2 --posts 8
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)

SOURCES = ("grid", "mtcnn", "file", "selective_search")  # cheapest first: partial runs keep the first ones
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "cat",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
)


def _posts(n: int):
    from PIL import Image
    from skimage import data

    from refineg.data import Entity, Example

    out = []
    for i in range(n):
        name = PHOTOS[i % len(PHOTOS)]
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        scale = 640 / max(img.size)
        img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)))
        post = Example(
            f"bench-{i}",
            f"Jane Doe posted a picture of the {name}".split(),
            image=f"{name}-{i}.jpg",
            entities=[Entity(0, 2, "PER"), Entity(7, 8, "OTHER")],
        )
        out.append((post, img))
    return out


def _file_proposals(posts, n_boxes: int, folder: Path) -> Path:
    rng = np.random.default_rng(0)
    path = folder / "proposals.jsonl"
    with path.open("w") as fp:
        for post, img in posts:
            w, h = img.size
            xy = rng.uniform(0, 1, size=(n_boxes, 2)) * [w * 0.8, h * 0.8]
            wh = rng.uniform(0.1, 0.5, size=(n_boxes, 2)) * [w, h]
            boxes = np.concatenate([xy, xy + wh], axis=1).round(1).tolist()
            fp.write(
                json.dumps({"image": post.image, "boxes": boxes, "scores": rng.uniform(size=n_boxes).tolist()}) + "\n"
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--posts", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--file-boxes", type=int, default=50)
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--out", default="docs/benchmarks-clip-scorer-cpu.json")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from refineg.stages.grounding import GroundingQuery, create_grounder
    from refineg.stages.grounding.clip_scorer import image_keys

    posts = _posts(args.posts + 1)
    tmp = Path(tempfile.mkdtemp())
    kwargs = {
        "file": {"path": str(_file_proposals(posts, args.file_boxes, tmp))},
        "selective_search": {},
        "mtcnn": {"fallback": "grid"},
        "grid": {},
    }
    results = {}
    for source in args.sources.split(","):
        grounder = create_grounder("clip", model_name=args.model, proposals=source, proposal_kwargs=kwargs[source])
        walls, cpus, props, cands = [], [], [], []
        for i, (post, img) in enumerate(posts):
            w0, c0 = time.perf_counter(), time.process_time()
            result = grounder.ground([GroundingQuery(post, img)])[0]
            wall, cpu = time.perf_counter() - w0, time.process_time() - c0
            p0 = time.perf_counter()
            for key in {grounder.proposals.cache_key(e.type): e.type for e in post.entities}.values():
                grounder.proposals.propose(img, image_keys(post), key)
            prop = time.perf_counter() - p0
            if i == 0:
                continue  # warm-up
            walls.append(wall)
            cpus.append(cpu)
            props.append(prop)
            cands.append(
                sum(
                    set_size
                    for set_size in {
                        grounder.proposals.cache_key(e.type): n
                        for e, n in zip(post.entities, result.info["candidates"])
                    }.values()
                )
            )
        results[source] = {
            "label": grounder.label,
            "posts": len(walls),
            "wall_s_median": statistics.median(walls),
            "wall_s_min": min(walls),
            "wall_s_max": max(walls),
            "cpu_s_median": statistics.median(cpus),
            "proposals_wall_s_median": statistics.median(props),
            "crops_per_post_median": statistics.median(cands),
        }
        print(f"{source}: {results[source]}", flush=True)
        _write(args, results)
    _table(results)


def _write(args: argparse.Namespace, results: dict) -> None:
    import open_clip
    import torch

    report = {
        "command": "HF_HUB_OFFLINE=1 python " + shlex.join(sys.argv),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "torch_threads": args.threads,
        "python": platform.python_version(),
        "versions": {
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "opencv": __import__("cv2").__version__,
            "facenet_pytorch": _version("facenet-pytorch"),
        },
        "model": args.model,
        "pretrained": None,
        "entities_per_post": 2,
        "file_boxes": args.file_boxes,
        "note": "2 CPU cores shared with other jobs during the run; random weights (timing only)",
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def _table(results: dict) -> None:
    print("\n| source | crops/post | wall s/post (median) | min-max | CPU s/post | proposals s |")
    print("|---|---|---|---|---|---|")
    for source, r in results.items():
        print(
            f"| `{source}` | {r['crops_per_post_median']:.0f} | {r['wall_s_median']:.2f} | "
            f"{r['wall_s_min']:.2f}-{r['wall_s_max']:.2f} | {r['cpu_s_median']:.2f} | "
            f"{r['proposals_wall_s_median']:.2f} |"
        )


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
