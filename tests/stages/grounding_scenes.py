"""Generated grounding scenes: real scikit-image photos pasted at known places, captions that name them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from refineg.data import Entity, Example
from refineg.stages.grounding.proposals import GridProposals

# photo name in skimage.data -> (caption words, entity type)
PHOTOS = {
    "astronaut": ("astronaut in a white spacesuit", "PER"),
    "coffee": ("cup of hot coffee", "OTHER"),
    "chelsea": ("Chelsea the tabby cat", "OTHER"),
    "rocket": ("rocket on the launch pad", "OTHER"),
    "camera": ("cameraman with a tripod", "PER"),
}


def load_photos() -> dict[str, Image.Image]:
    from skimage import data

    photos = {name: Image.fromarray(getattr(data, name)()).convert("RGB") for name in PHOTOS}
    for photo in photos.values():
        photo.thumbnail((128, 128))  # pasted at <= 84 px: shrink once, not per scene
    return photos


@dataclass
class Scene:
    post: Example
    image: Image.Image
    candidates: list[list[float]]  # pasted boxes and grid distractors, shuffled


def _overlaps(a, b, gap=4):
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _place(sizes, size, rng) -> list[list[float]]:
    """Non-overlapping boxes of the given ``(w, h)`` sizes inside a ``size`` square (rejection sampling)."""
    for _ in range(1000):
        boxes: list[list[float]] = []
        for w, h in sizes:
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            box = [float(x), float(y), float(x + w), float(y + h)]
            if any(_overlaps(box, b) for b in boxes):
                break
            boxes.append(box)
        if len(boxes) == len(sizes):
            return boxes
    raise RuntimeError("could not place the photos")


def make_scenes(n: int, seed: int, size: int = 224) -> list[Scene]:
    """``n`` scenes: 2-4 different photos (44-84 px sides) on a noisy coloured background, one entity each."""
    rng = np.random.default_rng(seed)
    photos = load_photos()
    names = list(PHOTOS)
    grid = GridProposals(scales=(1, 2, 3), overlap=0.5)
    scenes = []
    for i in range(n):
        k = int(rng.integers(2, 5))
        chosen = [names[j] for j in rng.permutation(len(names))[:k]]
        colour = rng.integers(0, 256, size=3)
        noise = rng.normal(0, 20, size=(size, size, 3))
        canvas = Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8))
        boxes = _place([tuple(int(v) for v in rng.integers(44, 85, size=2)) for _ in chosen], size, rng)
        for name, box in zip(chosen, boxes):
            x, y, x2, y2 = (int(v) for v in box)
            canvas.paste(photos[name].resize((x2 - x, y2 - y)), (x, y))
        tokens: list[str] = []
        entities = []
        for name, box in zip(chosen, boxes):
            words, etype = PHOTOS[name]
            tokens += ["look", "at", "the"] if not tokens else ["and", "the"]
            start = len(tokens)
            tokens += words.split()
            entities.append(Entity(start, len(tokens), etype, boxes=[box]))
        post = Example(f"scene-{seed}-{i}", tokens, image=f"scene-{seed}-{i}.png", entities=entities)
        cands = boxes + grid.propose(canvas, [], "")
        order = rng.permutation(len(cands))
        scenes.append(Scene(post, canvas, [cands[j] for j in order]))
    return scenes


def write_scenes(scenes: list[Scene], folder: Path, name: str) -> tuple[Path, Path]:
    """Writes images, ``<name>.jsonl`` posts and appends to ``proposals.jsonl`` (the ``file`` proposal format)."""
    folder.mkdir(parents=True, exist_ok=True)
    posts, props = folder / f"{name}.jsonl", folder / "proposals.jsonl"
    with posts.open("w") as fp, props.open("a") as fq:
        for s in scenes:
            s.image.save(folder / s.post.image)
            fp.write(json.dumps(s.post.to_dict()) + "\n")
            fq.write(json.dumps({"image": s.post.image, "boxes": s.candidates}) + "\n")
    return posts, props


def chance_rate(scenes: list[Scene], iou: float = 0.5) -> float:
    """Expected top-1 accuracy of picking a uniformly random candidate, over all entities."""
    from refineg.metrics import box_iou

    rates = [
        sum(box_iou(c, e.boxes[0]) >= iou for c in s.candidates) / len(s.candidates)
        for s in scenes
        for e in s.post.entities
    ]
    return float(np.mean(rates))
