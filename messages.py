"""specbert's messages: one ``logging`` logger, ``specbert`` (its modules log to children of it), whose level
the command line sets with ``-v``/``-q``; progress bars follow that level."""

from __future__ import annotations

import logging

log = logging.getLogger("specbert")


def progress_bars() -> bool:
    """Progress bars are messages of level INFO: shown unless the ``specbert`` logger is set above it (the
    command line's ``-q``); a Python program that configures no logging gets them too."""
    return log.level == logging.NOTSET or log.isEnabledFor(logging.INFO)
