"""Log levels shared by every entry point (``refineg``, ``train.py``, sweep trials)."""

from __future__ import annotations

import logging

#: Libraries that log routine detail at INFO: httpx one line per HTTP request (every MLLM call); the openai client
#: of 3.x sends its requests through httpx2, which logs the same line under its own name.
CHATTY_LOGGERS = ("httpx", "httpx2")


def quiet_chatty_loggers(verbose: bool) -> None:
    """Shows the INFO lines of :data:`CHATTY_LOGGERS` only with debug logging (``-v``)."""
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)
