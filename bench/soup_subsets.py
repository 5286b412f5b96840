"""Dev MNER F1 of the weight averages (soups) of several sets of trained taggers, in one process.

``refineg soup --dev`` scores every member again for each soup; after a ``bench/selftrain.py --soup`` run the members
are scored already, so this scores only the soups. Members are named ``<pool><seed>``; a pool is a checkpoint glob with
``{}`` for the seed::

    python bench/soup_subsets.py --dev .devcarry/data/dev.jsonl --out subsets.json \
      --pool a='/tmp/rfull/full-kd-s{}/round1/checkpoints/best-*.ckpt' \
      --set a1,a2,a3 a4,a5,a6 a1,a2,a3,a4,a5,a6

Each soup's score is printed and ``--out`` (JSON) is rewritten after each, so a run stopped half-way keeps what it
scored. A set with a member whose checkpoint is missing, fewer than two different members, or members that do not
average (other architectures) is reported and skipped. A bad ``--pool`` or a missing ``--dev`` stops it at once with
one ``error:`` line.
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import tempfile
import time
from pathlib import Path

import torch

from refineg.data import DataFormatError, read_jsonl
from refineg.inference.predictor import checkpoint_mner_f1
from refineg.inference.soup import write_soup


def parse_pools(items: list[str]) -> dict[str, str]:
    """``NAME=GLOB`` items as ``{name: glob}``.

    Raises:
        SystemExit: One ``error:`` line for an item without ``=``, a name that is not letters (a digit would run into
            the seed) or a glob without ``{}`` (every seed would name the same checkpoint).
    """
    pools = {}
    for item in items:
        name, sep, pattern = item.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_]+", name) or "{}" not in pattern:
            raise SystemExit(
                f"error: --pool {item!r}: expected NAME=GLOB with a NAME of letters and {{}} for the seed in the GLOB"
            )
        pools[name] = pattern
    return pools


def member_path(name: str, pools: dict[str, str]) -> Path:
    """The checkpoint of member ``name`` (``<pool><seed>``): the pool's glob with the seed in place of ``{}``.

    Raises:
        ValueError: An unknown pool, or not exactly one checkpoint matches.
    """
    match = re.fullmatch(r"([A-Za-z_]+)(\d+)", name)
    if not match or match[1] not in pools:
        raise ValueError(f"member {name!r}: expected <pool><seed> with a pool of {sorted(pools)}")
    pattern = pools[match[1]].replace("{}", match[2])  # not str.format: other braces in a path stay as they are
    found = sorted(glob.glob(pattern))
    if len(found) != 1:
        raise ValueError(f"member {name}: {len(found)} checkpoints match {pattern}")
    return Path(found[0])


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Scores each ``--set``'s soup on ``--dev``; returns ``{set: dev MNER F1 (percent)}``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--dev", required=True, help="gold canonical JSONL to score on")
    p.add_argument("--pool", nargs="+", required=True, metavar="NAME=GLOB", help="checkpoint glob per pool, {} = seed")
    p.add_argument("--set", nargs="+", required=True, metavar="M1,M2,...", help="members of one soup (2 or more)")
    p.add_argument("--out", required=True, help="JSON file with the scores (rewritten after each soup)")
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    pools = parse_pools(args.pool)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        gold = read_jsonl(args.dev)
    except DataFormatError as err:
        raise SystemExit(f"error: {err}") from None
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as work:
        for spec in args.set:
            names = spec.split(",")
            started = time.time()
            try:
                if len(set(names)) != len(names) or len(names) < 2:
                    raise ValueError("a soup needs 2 or more different members")
                soup = write_soup([member_path(n, pools) for n in names], Path(work) / "soup.ckpt")
            except ValueError as err:  # a missing member, or members of other architectures
                print(f"skipped {spec}: {err}", flush=True)
                continue
            scores[spec] = round(100 * checkpoint_mner_f1(soup, gold, args.batch_size, device=device), 2)
            print(f"{scores[spec]:6.2f}  soup of {len(names)}: {spec}  ({time.time() - started:.0f} s)", flush=True)
            Path(args.out).write_text(json.dumps(scores, indent=1) + "\n")
    return scores


if __name__ == "__main__":
    main()
