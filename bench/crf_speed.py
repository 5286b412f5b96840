"""Micro-benchmark: refineg LinearChainCRF vs pytorch-crf (torchcrf.CRF) on CPU.

Usage: python bench/crf_speed.py [--batch 32] [--steps 40] [--tags 9] [--iters 50] [--threads N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from refineg.modules.crf import LinearChainCRF

LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-MISC", "I-MISC"]


def time_ms(fn: Callable[[], object], iters: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(3):  # best of 3 repeats of `iters` calls
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - start) / iters * 1e3)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--tags", type=int, default=9)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    num_tags = args.tags
    ours = LinearChainCRF.from_bio_labels(LABELS) if num_tags == len(LABELS) else LinearChainCRF(num_tags)
    emissions = torch.randn(args.batch, args.steps, num_tags, requires_grad=True)
    lengths = torch.randint(args.steps // 2, args.steps + 1, (args.batch,))
    lengths[0] = args.steps
    mask = torch.arange(args.steps)[None] < lengths[:, None]
    tags = torch.randint(num_tags, (args.batch, args.steps))

    print(
        f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
        f"batch={args.batch} T={args.steps} K={num_tags} (lengths {args.steps // 2}..{args.steps}), "
        f"ms per call (best of 3 x {args.iters})"
    )
    rows: list[tuple[str, Callable[[], object]]] = [
        ("refineg nll fwd", lambda: ours.nll(emissions, tags, mask)),
        ("refineg nll fwd+bwd", lambda: ours.nll(emissions, tags, mask).backward()),
        ("refineg decode", lambda: ours.decode(emissions, mask)),
    ]
    try:
        import torchcrf
    except ImportError:
        print("torchcrf (pytorch-crf) not installed: reference rows skipped")
    else:
        ref = torchcrf.CRF(num_tags, batch_first=True)
        with torch.no_grad():
            ref.start_transitions.copy_(ours.start)
            ref.end_transitions.copy_(ours.end)
            ref.transitions.copy_(ours.transitions)
        rows += [
            ("torchcrf nll fwd", lambda: -ref(emissions, tags, mask, reduction="mean")),
            ("torchcrf nll fwd+bwd", lambda: (-ref(emissions, tags, mask, reduction="mean")).backward()),
            ("torchcrf decode", lambda: ref.decode(emissions, mask)),
        ]
    for name, fn in rows:
        print(f"{name:<24}{time_ms(fn, args.iters):8.3f} ms")


if __name__ == "__main__":
    main()
