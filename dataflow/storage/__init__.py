"""Step storage: FileStorage, formats, manifests, atomic writes, rejected-rows sidecars."""

from dataflow.storage.file_storage import CallInfo, FileStorage, StorageError
from dataflow.storage.formats import CACHE_TYPES, MalformedRowError, StorageFormatError

__all__ = ["FileStorage", "StorageError", "StorageFormatError", "MalformedRowError", "CallInfo", "CACHE_TYPES"]
