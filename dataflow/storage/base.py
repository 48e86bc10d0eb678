"""DataFlow's storage base class, and which cache folders the running pipeline already holds the lock of."""

from __future__ import annotations

import contextvars
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pandas as pd


class DataFlowStorage(ABC):
    """The storage interface of DataFlow (``dataflow.utils.storage.DataFlowStorage``): ``read``, ``write`` and
    ``get_keys_from_dataframe``. Every storage here derives from it, so ``isinstance`` checks and type hints
    written for DataFlow hold; a user storage that implements the three methods works with the operators."""

    @abstractmethod
    def get_keys_from_dataframe(self) -> list[str]:
        """The column names of the data the storage holds now."""

    @abstractmethod
    def read(self, output_type: str = "dataframe") -> Any:
        """The data, as a ``"dataframe"`` or a list of row dicts (``"dict"``)."""

    @abstractmethod
    def write(self, data: Any) -> Any:
        """Store ``data`` (a DataFrame or a list of row dicts)."""

    def note(self, key: str, value: Any) -> None:
        """Record a fact about the running call (a file storage puts it in the step's manifest); a storage
        without manifests keeps nothing."""
        return None

    def journal(self, name: str = "rows"):
        """Where a slow step keeps the rows it has finished (``dataflow.storage.journal``); a storage
        without files keeps none."""
        from dataflow.storage.journal import NullJournal

        return NullJournal()

    def __repr__(self) -> str:
        shown = []
        for key, value in vars(self).items():
            if key.startswith("_"):
                continue
            text = f"<DataFrame shape={value.shape}>" if isinstance(value, pd.DataFrame) else repr(value)
            shown.append(f"{key}={text[:97] + '...' if len(text) > 100 else text}")
        return f"{type(self).__name__}({', '.join(shown)})"


# The cache folders whose lock the pipeline running in this context holds (its forward() took them): a storage
# that writes outside an operator call (LazyFileStorage.flush_all) takes the lock itself only when it is not here.
_HELD: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("dataflow_held_folders", default=frozenset())


def _key(folder: str | os.PathLike) -> str:
    return os.path.normcase(os.path.abspath(os.fspath(folder)))


@contextmanager
def holding_cache_folders(folders: Iterable[str | os.PathLike]) -> Iterator[None]:
    """Mark ``folders`` as locked by the caller (a pipeline's ``forward()``) for the duration of the block."""
    token = _HELD.set(_HELD.get() | {_key(f) for f in folders})
    try:
        yield
    finally:
        _HELD.reset(token)


def cache_folder_held(folder: str | os.PathLike) -> bool:
    """Whether the running pipeline already holds the lock of ``folder``."""
    return _key(folder) in _HELD.get()
