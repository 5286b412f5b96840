"""Rebuilds the bundled Twitter-GMNER sample (refineg/assets/sample/twitter-gmner) from a local release.

Usage: python tools/make_sample.py /path/to/Twitter10000_v2.0
"""

import random
import shutil
import sys
from pathlib import Path

from refineg.data.twitter_gmner import read_twitter_gmner, write_twitter_gmner

OUT = Path(__file__).resolve().parents[1] / "refineg" / "assets" / "sample" / "twitter-gmner"


def main(root: str) -> None:
    """Samples the splits from the release at ``root`` and writes them in the Twitter-GMNER layout."""
    root_path = Path(root)
    train = read_twitter_gmner(root_path / "txt" / "train.txt", root_path / "xml")
    dev = read_twitter_gmner(root_path / "txt" / "dev.txt", root_path / "xml")
    rng = random.Random(2025)
    picked = rng.sample(train, 750)
    splits = {"train": picked[:600], "dev": picked[600:], "test": rng.sample(dev, 150)}
    shutil.rmtree(OUT, ignore_errors=True)
    for name, examples in splits.items():
        write_twitter_gmner(examples, OUT / "txt" / f"{name}.txt", OUT / "xml")
        print(name, len(examples), sum(len(e.entities) for e in examples))


if __name__ == "__main__":
    main(sys.argv[1])
