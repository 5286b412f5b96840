"""Expected failures and how the command line reports them: one ``error: ...`` line on stderr, exit status 2.

Expected failures are problems with what the user gave, not bugs: bad data (:class:`DataFormatError`, whose message
starts with ``file:line`` or ``file [id X]``), options that do not fit together (:class:`UsageError`), a missing
file, an unknown registry name, a missing optional dependency (:class:`MissingExtraError`) and a cache miss of the
``replay`` LLM backend. Anything else keeps its traceback. ``refineg`` (:func:`refineg.cli.main`) and ``train.py``
both run through :func:`run_reporting_errors`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from refineg.data.errors import DataFormatError


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` command."""


class UsageError(ValueError):
    """Options that do not fit together, found after parsing (exit status 2, as argparse's own usage errors)."""


def is_expected_error(err: BaseException) -> bool:
    """Whether ``err`` is reported as one line (see the module docstring) rather than with a traceback."""
    if isinstance(err, (DataFormatError, UsageError, MissingExtraError, FileNotFoundError, KeyError)):
        return True
    llm = sys.modules.get("refineg.llm.base")  # not imported: no replay backend ran, so no miss can be raised
    return llm is not None and isinstance(err, llm.ReplayMissError)


def error_line(err: BaseException) -> str:
    """``error: <message>`` on one line (a ``KeyError`` 's message without the quotes ``str()`` adds)."""
    text = err.args[0] if isinstance(err, KeyError) and len(err.args) == 1 else err
    return "error: " + " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def run_reporting_errors(run: Callable[[], int]) -> int:
    """``run()``, or exit status 2 after printing :func:`error_line` when it raises an expected error."""
    try:
        return run()
    except Exception as err:
        if not is_expected_error(err):
            raise
        print(error_line(err), file=sys.stderr)
        return 2
