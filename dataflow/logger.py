"""DataFlow's logger module path: ``from dataflow.logger import get_logger`` (also ``from dataflow import
get_logger``).

DataFlow's ``get_logger(level=None)`` returns its one ``"DataFlow"`` logger, with a ``success`` method (level
25, ``SUCCESS``) that its operators call. Here it returns this package's ``"dataflow"`` logger (stderr, no
colour codes off a terminal) with the same ``success``; ``level``, when given, sets its level, and leaving it
out keeps the level the command line (``-q`` / ``-v``) or ``DATAFLOW_LOG_LEVEL`` chose.
"""

from __future__ import annotations

import logging

from dataflow.log import get_logger as _package_logger

SUCCESS = 25
logging.addLevelName(SUCCESS, "SUCCESS")

__all__ = ["SUCCESS", "get_logger"]


def get_logger(level: str | int | None = None) -> logging.Logger:
    """The ``dataflow`` logger, with ``logger.success(msg, *args)`` as DataFlow's has."""
    logger = _package_logger("dataflow")
    if level is not None:
        logger.setLevel(level.upper() if isinstance(level, str) else level)
    if not hasattr(logger, "success"):
        logger.success = _success.__get__(logger)
    return logger


def _success(self: logging.Logger, msg: object, *args, **kwargs) -> None:
    if self.isEnabledFor(SUCCESS):
        kwargs.setdefault("stacklevel", 2)
        self._log(SUCCESS, msg, args, **kwargs)
