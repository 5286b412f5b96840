"""Train a small GMNER tagger: ``python train.py [group=name] [key=value ...]`` = ``refineg train ...``.

A thin entry point kept for ``wandb sweep`` files (``program: train.py``, ``${args_no_hyphens}``) and the README;
configs/ and refineg/config.py document the arguments.
"""

import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str]) -> int:
    """Runs ``refineg train`` with ``argv``; returns its exit status (2 with one ``error: ...`` line on bad input)."""
    from refineg.cli import main as cli_main

    return cli_main(["train", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
