"""Logging to stderr without colour codes, and progress bars that stay quiet when nobody is watching."""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

_CONFIGURED = False


def get_logger(name: str = "dataflow") -> logging.Logger:
    global _CONFIGURED
    root = logging.getLogger("dataflow")
    if not _CONFIGURED:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[dataflow] %(levelname)s %(message)s"))
        root.addHandler(handler)
        root.setLevel(os.environ.get("DATAFLOW_LOG_LEVEL", "INFO").upper())
        root.propagate = False
        _CONFIGURED = True
    return logging.getLogger(name if name.startswith("dataflow") else f"dataflow.{name}")


def progress(iterable=None, *, total: int | None = None, desc: str = "", unit: str = "img"):
    """A tqdm bar on stderr; hidden when stderr is not a terminal unless DATAFLOW_PROGRESS=1."""
    flag = os.environ.get("DATAFLOW_PROGRESS")
    disable = (flag == "0") if flag is not None else (None if sys.stderr.isatty() else True)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        file=sys.stderr,
        dynamic_ncols=True,
        mininterval=0.5,
    )
