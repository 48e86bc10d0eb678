"""Logging to stderr without colour codes, and progress: a bar on a terminal, a log line now and then elsewhere."""

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
    """A tqdm bar on a terminal; elsewhere (a log file, CI, a job scheduler) one log line every
    ``DATAFLOW_PROGRESS_INTERVAL`` seconds (default 30), nothing for a step shorter than that.

    ``DATAFLOW_PROGRESS=0`` turns both off; ``DATAFLOW_PROGRESS=1`` draws the bar even off a terminal.
    """
    flag = os.environ.get("DATAFLOW_PROGRESS")
    common = {"total": total, "desc": desc, "unit": unit, "disable": flag == "0"}
    if flag == "1" or (flag is None and sys.stderr.isatty()):
        return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, mininterval=0.5, **common)
    interval = _interval()
    return _LogLines(iterable, file=_Discard(), mininterval=interval, delay=interval, bar_format=_LINE, **common)


_LINE = "{desc}: {n_fmt}/{total_fmt} {unit} ({percentage:.0f}%) in {elapsed}, {rate_fmt}, about {remaining} left"


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get("DATAFLOW_PROGRESS_INTERVAL", "30")))
    except ValueError:
        return 30.0


class _LogLines(tqdm):
    """Progress as log lines: what a terminal bar redraws in place would fill a log with carriage returns."""

    _shown = -1

    def display(self, msg=None, pos=None):
        if self.n != self._shown:  # close() shows the last state again
            self._shown = self.n
            get_logger("progress").info(msg or self.format_meter(**self.format_dict).strip())
        return True


class _Discard:
    """Where tqdm's own writes go for ``_LogLines`` (the lines go through the logger instead)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
