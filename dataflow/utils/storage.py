"""DataFlow-compatible import path: ``from dataflow.utils.storage import FileStorage`` and the other storages
DataFlow defines there (``DataFlowStorage``, ``LazyFileStorage``, ``BatchedFileStorage``,
``StreamBatchedFileStorage``, ``DummyStorage``)."""

from dataflow.storage import FileStorage, StorageError
from dataflow.storage.base import DataFlowStorage
from dataflow.storage.dataflow_storages import (
    BatchedFileStorage,
    DummyStorage,
    LazyFileStorage,
    StreamBatchedFileStorage,
)

__all__ = [
    "DataFlowStorage",
    "FileStorage",
    "LazyFileStorage",
    "BatchedFileStorage",
    "StreamBatchedFileStorage",
    "DummyStorage",
    "StorageError",
]
