"""CPU time of ``PostCollator.__call__``: the per-post loop it replaced vs the bulk-scatter version.

Encodes the Twitter-GMNER train split once (``/work/shared/data/twitter-gmner`` when present, else the bundled
sample) with the packaged MiniLM tokenizer, draws fixed random batches of each size, checks that both collators give
identical batches, then times them in the same process with one torch thread.

Usage: HF_HUB_OFFLINE=1 python bench/collate_speed.py [--batch-sizes 32,512] [--batches 20] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoTokenizer

# This checkout's refineg (not another one installed in the environment) and bench/machine.py.
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from machine import cpu_model  # noqa: E402

from refineg.config import SAMPLE_ROOT  # noqa: E402
from refineg.data import bio_labels  # noqa: E402
from refineg.data.twitter_gmner import TWITTER_GMNER_TYPES, read_twitter_gmner  # noqa: E402
from refineg.datamodules.encoding import EncodedPost, PostCollator, encode_posts  # noqa: E402
from refineg.weights import resolve_encoder  # noqa: E402

FULL_ROOT = Path("/work/shared/data/twitter-gmner/Twitter10000_v2.0")


class BaselinePostCollator(PostCollator):
    """BASELINE: ``PostCollator.__call__`` as it was before the bulk-scatter rewrite (main at 830c83d).

    Per post: a Python list copy, word dropout on the list, and one ``torch.tensor`` plus slice assignment per field.
    """

    def __call__(self, posts: Sequence[EncodedPost]) -> dict[str, torch.Tensor]:
        bsz = len(posts)
        s_len = max(len(p.input_ids) for p in posts)
        w_len = max(1, max(len(p.word_starts) for p in posts))
        if self.multiple > 1:
            s_len, w_len = (-(-n // self.multiple) * self.multiple for n in (s_len, w_len))
        input_ids = torch.full((bsz, s_len), self.pad_id, dtype=torch.long)
        attention = torch.zeros((bsz, s_len), dtype=torch.long)
        word_index = torch.zeros((bsz, w_len), dtype=torch.long)
        word_mask = torch.zeros((bsz, w_len), dtype=torch.bool)
        casing = torch.zeros((bsz, w_len), dtype=torch.long)
        labels = torch.full((bsz, w_len), -100, dtype=torch.long)
        word_end = torch.ones((bsz, w_len), dtype=torch.long)
        ents = [(b, s, e, t, g) for b, p in enumerate(posts) for s, e, t, g in p.entities]
        for b, p in enumerate(posts):
            ids = list(p.input_ids)
            if self.word_dropout > 0 and self.unk_id is not None:
                for lo, hi in p.word_pieces:
                    if hi > lo and random.random() < self.word_dropout:
                        ids[lo:hi] = [self.unk_id] * (hi - lo)
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention[b, : len(ids)] = 1
            n = len(p.word_starts)
            if n:
                word_index[b, :n] = torch.tensor(p.word_starts)
                word_mask[b, :n] = True
                casing[b, :n] = torch.tensor(p.casing)
                labels[b, :n] = torch.tensor(p.labels)
                word_end[b, :n] = torch.tensor(p.word_ends or [x + 1 for x in p.word_starts])
        word_mask[:, 0] = True
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention,
            "word_index": word_index,
            "word_mask": word_mask,
            "casing": casing,
            "labels": labels,
            "weight": torch.tensor([p.weight for p in posts]),
            "index": torch.tensor([p.index for p in posts]),
            "word_end": word_end,
            "entity_spans": torch.tensor([r[:3] for r in ents], dtype=torch.long).reshape(-1, 3),
            "entity_types": torch.tensor([r[3] for r in ents], dtype=torch.long),
            "entity_grounded": torch.tensor([float(r[4]) for r in ents]),
        }
        return batch


def ms_per_batch(
    collators: Sequence[PostCollator], batches: list[list[EncodedPost]], repeats: int
) -> list[list[float]]:
    """Milliseconds per batch of each collator in each repetition (one pass over all ``batches``).

    The collators take turns within every repetition, after one warm-up pass each, so that a change in the machine's
    load hits them alike.
    """
    random.seed(0)
    times: list[list[float]] = [[] for _ in collators]
    for rep in range(repeats + 1):
        for collate, out in zip(collators, times):
            start = time.perf_counter()
            for b in batches:
                collate(b)
            if rep:
                out.append((time.perf_counter() - start) / len(batches) * 1e3)
    return times


def same_batches(old: PostCollator, new: PostCollator, batches: list[list[EncodedPost]]) -> bool:
    """Whether both collators give identical batches (keys, dtypes, shapes, values) under the same seed."""
    for b in batches:
        random.seed(1)
        x = old(b)
        random.seed(1)
        y = new(b)
        if list(x) != list(y) or any(x[k].dtype != y[k].dtype or not torch.equal(x[k], y[k]) for k in x):
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch-sizes", default="32,512")
    parser.add_argument("--batches", type=int, default=20, help="distinct random batches per size")
    parser.add_argument("--repeats", type=int, default=7, help="timed passes over the batches (median reported)")
    parser.add_argument("--out", default="docs/benchmarks-collate-cpu.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = FULL_ROOT if (FULL_ROOT / "txt" / "train.txt").is_file() else SAMPLE_ROOT
    examples = read_twitter_gmner(root / "txt" / "train.txt", root / "xml")
    label_ids = {t: i for i, t in enumerate(bio_labels(list(TWITTER_GMNER_TYPES)))}
    tok = AutoTokenizer.from_pretrained(resolve_encoder("minilm"))
    posts = encode_posts(examples, tok, label_ids, max_length=128)
    rng = random.Random(0)
    rows, cases = [], [(0.0, 0), (0.1, 0), (0.1, 8)]
    for bsz in (int(x) for x in args.batch_sizes.split(",")):
        batches = [rng.sample(posts, min(bsz, len(posts))) for _ in range(args.batches)]
        for dropout, multiple in cases:
            kw = dict(
                pad_id=tok.pad_token_id, unk_id=tok.unk_token_id, word_dropout=dropout, pad_to_multiple_of=multiple
            )
            old, new = BaselinePostCollator(**kw), PostCollator(**kw)
            if not same_batches(old, new, batches):
                raise SystemExit(f"batch {bsz}, word_dropout {dropout}, pad {multiple}: outputs differ")
            t_old, t_new = ms_per_batch([old, new], batches, args.repeats)
            m_old, m_new = statistics.median(t_old), statistics.median(t_new)
            rows.append(
                {
                    "batch": bsz,
                    "word_dropout": dropout,
                    "pad_to_multiple_of": multiple,
                    "baseline_ms": round(m_old, 3),
                    "new_ms": round(m_new, 3),
                    "speedup": round(m_old / m_new, 2),
                    "baseline_ms_all": [round(t, 3) for t in t_old],
                    "new_ms_all": [round(t, 3) for t in t_new],
                }
            )
    print(
        f"{len(posts)} train posts from {root}; CPU {cpu_model()}, torch {torch.__version__}, 1 thread; "
        f"median of {args.repeats} passes over {args.batches} batches; outputs identical"
    )
    print("| batch | word_dropout | pad_to_multiple_of | baseline ms/batch | new ms/batch | speedup |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['word_dropout']} | {r['pad_to_multiple_of']} | {r['baseline_ms']:.2f} | "
            f"{r['new_ms']:.2f} | {r['speedup']:.1f}x |"
        )
    result = {
        "command": "HF_HUB_OFFLINE=1 python " + " ".join(sys.argv),
        "data": str(root),
        "posts": len(posts),
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "date": datetime.date.today().isoformat(),
        "batches": args.batches,
        "repeats": args.repeats,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
