"""DataFlow-compatible import path: ``from dataflow.utils.storage import FileStorage``."""

from dataflow.storage import FileStorage, StorageError

__all__ = ["FileStorage", "StorageError"]
