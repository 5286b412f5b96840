"""Train a small GMNER tagger: ``python train.py [group=name] [key=value ...]`` (see configs/ and README)."""

import logging
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str]) -> int:
    """Loads the config from ``key=value`` overrides and runs training.

    A config error (a misspelt key, a value of the wrong type or out of range, settings that do not fit together,
    an encoder that cannot be loaded) and the expected errors of :mod:`refineg.errors` (bad data, an empty training
    file, a missing file) print one ``error: ...`` line and return 2.
    """
    from refineg.config import load_config
    from refineg.errors import error_line, run_reporting_errors

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(argv)
    except ValueError as err:
        print(error_line(err), file=sys.stderr)
        return 2
    return run_reporting_errors(lambda: _train(cfg))


def _train(cfg) -> int:
    from refineg.training import print_summary, train

    result = train(cfg)
    if "dev" in result:
        print_summary(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
