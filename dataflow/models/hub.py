"""Where a Hugging Face model's files come from: a local folder, the local HF cache, or a first-use download.

``resolve_model_dir(name, what, repo_hint)`` is the one place every model loader asks. A folder (anything
``save_pretrained`` wrote) is used as it is; a Hub id is looked up in the local cache and, when it is not
there, downloaded into it once, as transformers does, unless downloads are off: ``HF_HUB_OFFLINE=1`` (or
``TRANSFORMERS_OFFLINE=1``) in the environment, or ``local_files_only=True`` from the caller. Only the
files a model loads are fetched (configs, safetensors weights, tokenizer and processor files, chat
templates), never code: no remote code is ever run. A model that cannot be had raises
``ModelNotFoundError`` saying what was tried and how to provide it.

``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE`` and ``HF_TOKEN`` are read when a model is resolved, not when
this module is imported, so a process can change them.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dataflow.log import get_logger

logger = get_logger("dataflow.models")

__all__ = [
    "ModelNotFoundError",
    "downloads_allowed",
    "hf_cache_dir",
    "looks_like_path",
    "model_problem",
    "resolve_model_dir",
]

_TRUE = {"1", "on", "yes", "true"}
# What from_pretrained reads; *.bin only when a repo has no safetensors (fetched in a second pass).
MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.jinja"]
LEGACY_WEIGHTS = ["*.bin"]


class ModelNotFoundError(FileNotFoundError):
    """A model (or its weights) cannot be had: not on local disk and not downloadable; the message says how
    to provide it."""


_LOCAL_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("dataflow_models_local_only", default=False)


@contextmanager
def local_only() -> Iterator[None]:
    """Within the block, models count as available only when on disk (the check of a config's optional steps)."""
    token = _LOCAL_ONLY.set(True)
    try:
        yield
    finally:
        _LOCAL_ONLY.reset(token)


def downloads_allowed(local_files_only: bool | None = None) -> bool:
    """False when the caller said ``local_files_only=True``, inside :func:`local_only`, or when the environment
    turns the Hub off."""
    if local_files_only or _LOCAL_ONLY.get():
        return False
    return not any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> str:
    """The Hugging Face hub cache folder this process reads and downloads into (HF_HUB_CACHE, HF_HOME)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return os.path.join(os.path.expanduser(os.environ["HF_HOME"]), "hub")
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub comes with transformers
        return os.path.join(os.path.expanduser("~"), ".cache", "huggingface", "hub")


def looks_like_path(name: str) -> bool:
    """A name meant as a folder (absolute, relative with ./ or ../, ~, or an OS separator other than /)."""
    return name.startswith((".", "/", "~")) or os.sep != "/" and os.sep in name or Path(name).is_absolute()


def _message(name: str, what: str, repo_hint: str, reason: str, offline: bool) -> str:
    repo_id = repo_hint if looks_like_path(name) else name
    if offline and _LOCAL_ONLY.get():
        why = "only models already on disk count here"
    elif offline:
        why = "downloads are off (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or local_files_only=True)"
    else:
        why = "and it could not be downloaded"
    return (
        f"{what} {name!r} was not found on local disk ({reason}); {why}. Either:\n"
        "  1. pass the path of a local folder holding the model (config.json, weights, tokenizer and "
        "processor files, as written by save_pretrained), or\n"
        "  2. download it once, on a machine with network access, into the Hugging Face cache read here "
        f"({hf_cache_dir()}; set HF_HOME to move it):\n"
        f"       hf download {repo_id}    (older huggingface_hub: huggingface-cli download {repo_id})\n"
    )


def _download(name: str, cache: str) -> Path:
    """Fetch the model's loadable files into the cache; a repo without safetensors gets its *.bin too."""
    from huggingface_hub import snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or None
    logger.info("downloading %s into %s (first use; HF_HUB_OFFLINE=1 turns downloads off)", name, cache)
    kwargs = {"cache_dir": cache, "endpoint": endpoint, "token": os.environ.get("HF_TOKEN") or None}
    folder = Path(snapshot_download(name, allow_patterns=MODEL_FILES, **kwargs))
    if not any(folder.rglob("*.safetensors")):
        folder = Path(snapshot_download(name, allow_patterns=LEGACY_WEIGHTS, **kwargs))
    return folder


def resolve_model_dir(
    model_name: str | os.PathLike,
    what: str = "model",
    repo_hint: str = "openai/clip-vit-base-patch32",
    *,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool | None = None,
) -> Path:
    """The local folder of a transformers model: the folder itself, its snapshot in the HF cache, or (when
    downloads are allowed) a fresh download into that cache.

    ``what`` names the model in the error, ``repo_hint`` is the repo id its download hint shows when
    ``model_name`` is a path; ``cache_dir`` replaces the HF cache.
    """
    name = os.fspath(model_name)
    path = Path(name).expanduser()
    offline = not downloads_allowed(local_files_only)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(_message(name, what, repo_hint, f"folder {path} has no config.json", True))
        return path
    if looks_like_path(name) or path.exists():
        raise ModelNotFoundError(_message(name, what, repo_hint, f"no folder at {path.resolve()}", True))
    from huggingface_hub import snapshot_download

    cache = os.path.expanduser(os.fspath(cache_dir)) if cache_dir else hf_cache_dir()
    try:
        return Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
    except Exception as exc:  # not a valid repo id, or not in the local cache
        reason = f"no folder at {path.resolve()} and not in the HF cache {cache}"
        if offline:
            raise ModelNotFoundError(_message(name, what, repo_hint, reason, True)) from exc
    try:
        return _download(name, cache)
    except Exception as exc:  # network down, unknown repo, gated repo without a token
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        message = _message(name, what, repo_hint, f"{reason}; download: {detail}", False)
        raise ModelNotFoundError(message) from exc


def model_problem(
    model_name, what: str = "model", repo_hint: str = "openai/clip-vit-base-patch32", **options
) -> str | None:
    """Why ``model_name`` cannot be loaded, or None when it is on disk or will be downloaded on first use.
    Loads and downloads nothing (for ``compile()`` and ``dataflow run --check``)."""
    if model_name is None or not str(model_name):
        return "no model given"
    name = os.fspath(model_name)
    try:
        if downloads_allowed(options.get("local_files_only")) and not looks_like_path(name):
            if Path(name).expanduser().exists():
                resolve_model_dir(name, what, repo_hint, local_files_only=True, cache_dir=options.get("cache_dir"))
            return None  # a Hub id: found in the cache or fetched at first use
        resolve_model_dir(name, what, repo_hint, local_files_only=True, cache_dir=options.get("cache_dir"))
    except ModelNotFoundError as exc:
        return str(exc).strip()
    except ImportError as exc:
        from dataflow import install_hint

        return f"cannot look for it: {exc.name or exc} is not installed ({install_hint('clip')})"
    return None


def incomplete_model(model_name, folder: Path, exc: Exception, what: str, repo_hint: str) -> ModelNotFoundError:
    """The error for a folder whose weights, tokenizer or processor files are missing."""
    return ModelNotFoundError(
        _message(os.fspath(model_name), what, repo_hint, f"incomplete model in {folder}: {exc}", True)
    )
