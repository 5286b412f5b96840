"""Train a small GMNER tagger: ``python train.py [group=name] [key=value ...]`` (see configs/ and README)."""

import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str]) -> int:
    """Loads the config from ``key=value`` overrides and runs training."""
    from refineg.config import load_config
    from refineg.training import print_summary, train

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = train(cfg)
    if "dev" in result:
        print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
