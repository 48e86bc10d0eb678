"""Step storage: FileStorage, formats, manifests, atomic writes, rejected-rows sidecars."""

from dataflow.storage.file_storage import CallInfo, FileStorage, StorageError
from dataflow.storage.formats import CACHE_TYPES, MalformedRowError, StorageFormatError
from dataflow.storage.lock import CacheFolderError, CacheLockedError

__all__ = [
    "FileStorage",
    "StorageError",
    "CacheLockedError",
    "CacheFolderError",
    "StorageFormatError",
    "MalformedRowError",
    "CallInfo",
    "CACHE_TYPES",
]
