"""dataflow: cached, resumable pipelines for curating image and image-text training sets."""

__version__ = "0.1.0"
# The distribution's name on PyPI ("dataflow" there is an unrelated project); the import package is `dataflow`.
DISTRIBUTION = "dataflow-curate"


version_info = tuple(int(p) if p.isdigit() else p for p in __version__.split("."))  # as DataFlow's: (0, 1, 0)


def __getattr__(name: str):
    # DataFlow's ``from dataflow import get_logger``; imported on first use, not with the package.
    if name == "get_logger":
        from dataflow.logger import get_logger

        return get_logger
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install_hint(extra: str) -> str:
    """The install line for an extra, from PyPI and from a checkout."""
    return f"pip install '{DISTRIBUTION}[{extra}]' (from a checkout: pip install -e '.[{extra}]')"


def _numba_cache_fallback() -> None:
    """Give numba a writable cache folder where it would find none, so that importing a kernel never fails.

    The kernels are compiled with ``@njit(cache=True)``. numba caches next to their source (``__pycache__``),
    else in the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``), else it raises at import ("cannot
    cache function ...: no locator available"): a read-only install with an unwritable or missing $HOME
    (containers, service accounts). Only then ``NUMBA_CACHE_DIR`` is pointed at a private folder in the temp
    directory (kept across runs). Runs at ``import dataflow``, before any kernel is defined, in well under a
    millisecond and without importing numba (the CLI does not need it).
    """
    import os
    import sys

    def usable(path: str) -> bool:  # as numba checks (caching._CacheLocator.ensure_cache_path), without a write
        try:
            os.makedirs(path, exist_ok=True)
        except (OSError, ValueError):  # ValueError: a path with a NUL byte
            return False
        return os.access(path, os.W_OK | os.X_OK)

    here = os.path.dirname(os.path.abspath(__file__))
    given = os.environ.get("NUMBA_CACHE_DIR")
    if given and usable(given):
        return
    if all(usable(os.path.join(here, *sub, "__pycache__")) for sub in (("algorithms",), ("engines", "ray"))):
        return
    if sys.platform == "win32":
        user = os.path.join(os.environ.get("LOCALAPPDATA") or os.path.expanduser("~"), "numba", "Cache")
    elif sys.platform == "darwin":
        user = os.path.join(os.path.expanduser("~/Library/Caches"), "numba")
    else:
        user = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "numba")
    if usable(user):
        return
    try:
        folder = _private_temp_folder(f"dataflow-numba-cache-{os.getuid() if hasattr(os, 'getuid') else 'user'}")
    except OSError:
        return  # no writable temp directory either: numba reports it
    os.environ["NUMBA_CACHE_DIR"] = folder  # child processes (workers) inherit it
    numba = sys.modules.get("numba")
    if numba is not None:  # imported before dataflow: its config was read already
        numba.config.CACHE_DIR = folder


def _private_temp_folder(name: str) -> str:
    """``<tmp>/<name>``, created 0700, or a fresh private one when that exists but is not ours alone (a
    shared temp directory: numba loads its cache with pickle, so nobody else may be able to write there)."""
    import contextlib
    import os
    import stat
    import tempfile

    path = os.path.join(tempfile.gettempdir(), name)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    owned = not hasattr(os, "getuid") or st.st_uid == os.getuid()
    if not stat.S_ISDIR(st.st_mode) or not owned or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        path = tempfile.mkdtemp(prefix=name + "-")
    tempfile.TemporaryFile(dir=path).close()
    return path


_numba_cache_fallback()
