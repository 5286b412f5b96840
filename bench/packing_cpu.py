"""CPU training speed of one post per row vs packed rows (``data.pack_length``), with ``train.py``'s own loop.

Each variant trains the default tagger (packaged all-MiniLM-L6-v2 + CRF, pretrained) for ``--steps`` timed steps
after 5 warm-up steps on the Twitter-GMNER train split, validation off, and reports ``TrainThroughput``'s real
subword tokens/s and posts/s. Variants run in turn, ``--repeats`` rounds, in this process. On a CPU the compute
grows with the subwords a step computes, pads included, so this measures what padding and packing cost.

Usage (repo root):
    HF_HUB_OFFLINE=1 python bench/packing_cpu.py --steps 30 --repeats 2 --out docs/benchmarks-packing-cpu.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from machine import cpu_model  # bench/machine.py (the script folder is on sys.path)

FULL_ROOT = "/work/shared/data/twitter-gmner/Twitter10000_v2.0"
#: name -> data overrides
VARIANTS = {
    "bucketed, no padding": {"data.bucket": "true", "data.pad_to_multiple_of": 0, "data.pack_length": 0},
    "bucketed, pad 16": {"data.bucket": "true", "data.pad_to_multiple_of": 16, "data.pack_length": 0},
    "packed 128, words pad 16": {"data.bucket": "false", "data.pad_to_multiple_of": 16, "data.pack_length": 128},
}


def run(name: str, args: argparse.Namespace, runs: str) -> dict:
    from refineg.config import load_config
    from refineg.training import train

    overrides = {
        "data": "twitter_gmner",
        "data.root": args.data_root,
        "data.test": "null",
        "data.batch_size": args.batch_size,
        "trainer.max_epochs": 1,
        "trainer.limit_train_batches": 5 + args.steps,
        "trainer.limit_val_batches": 0,
        "predict": "false",
        "logger.wandb": "false",
        "trainer.enable_progress_bar": "false",
        "trainer.accelerator": "cpu",
        "runs_dir": runs,
        "run_name": "".join(c if c.isalnum() else "_" for c in name),
        **VARIANTS[name],
    }
    os.environ.pop("REFINEG_RUN_NAME", None)
    result = train(load_config([f"{k}={v}" for k, v in overrides.items()]))
    return result["train_throughput"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-root", default=FULL_ROOT, help="Twitter-GMNER release folder")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30, help="timed steps per run (after 5 warm-up steps)")
    p.add_argument("--repeats", type=int, default=2, help="rounds over the variants")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/benchmarks-packing-cpu.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for rep in range(args.repeats):
            for name in VARIANTS:
                r = run(name, args, runs)
                rows.append({"variant": name, "round": rep, **VARIANTS[name], **r})
                print(
                    f"{name} (round {rep}): {r['tokens_per_s']:.0f} tokens/s, {r['posts_per_s']:.1f} posts/s",
                    flush=True,
                )
    meta = {
        "machine": cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "runs": rows}, indent=2))
    print("| variant | round | real tokens/s | posts/s |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['round']} | {r['tokens_per_s']:.0f} | {r['posts_per_s']:.1f} |")


if __name__ == "__main__":
    main()
