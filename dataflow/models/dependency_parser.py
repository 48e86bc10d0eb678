"""A Universal Dependencies parser for captions: stanza's English pipeline, loaded from local files only.

``load_stanza_parser(resources_dir)`` gives a callable ``text -> stanza.Document`` (tokenize, pos, lemma,
depparse, on the cpu, as DataFlow-MM's Caption-as-Teacher filter builds it). Nothing is downloaded:
stanza reads its models from ``resources_dir`` (default: ``$STANZA_RESOURCES_DIR`` or
``~/stanza_resources``, stanza's own default), and a missing package or model is one clear error saying
how to provide it.

A parsed document is anything shaped like stanza's: ``doc.sentences``, each with ``words`` that have
``id`` (1-based), ``head`` (0 for the root), ``upos``, ``deprel``, ``lemma`` and ``text``.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["default_resources_dir", "load_stanza_parser", "parser_problem"]

PROCESSORS = "tokenize,pos,lemma,depparse"


def default_resources_dir() -> Path:
    """stanza's default model folder: ``$STANZA_RESOURCES_DIR``, else ``~/stanza_resources``."""
    return Path(os.environ.get("STANZA_RESOURCES_DIR") or Path.home() / "stanza_resources").expanduser()


def _how_to(folder: Path) -> str:
    return (
        "pip install stanza, then, once on a machine with network access: "
        f"python -c \"import stanza; stanza.download('en', model_dir='{folder}')\" "
        "(or pass parser=<a callable returning a stanza-shaped Document>)"
    )


def parser_problem(resources_dir: str | os.PathLike | None = None) -> str | None:
    """Why stanza's English parser cannot be loaded from local files (one line), or None; loads nothing."""
    folder = Path(resources_dir).expanduser() if resources_dir else default_resources_dir()
    if importlib.util.find_spec("stanza") is None:
        return f"stanza is not installed: {_how_to(folder)}"
    if not (folder / "resources.json").is_file() or not (folder / "en").is_dir():
        return f"stanza's English models were not found in {folder}: {_how_to(folder)}"
    return None


def load_stanza_parser(resources_dir: str | os.PathLike | None = None) -> Callable[[str], Any]:
    """stanza's English ``Pipeline`` (tokenize, pos, lemma, depparse; cpu), from local files only."""
    from dataflow.models.clip import ModelNotFoundError

    problem = parser_problem(resources_dir)
    if problem:
        if "not installed" in problem:
            raise ImportError(problem)
        raise ModelNotFoundError(problem)
    import stanza

    folder = Path(resources_dir).expanduser() if resources_dir else default_resources_dir()
    try:
        return stanza.Pipeline(
            lang="en", processors=PROCESSORS, dir=str(folder), use_gpu=False, verbose=False, download_method=None
        )
    except Exception as exc:  # a processor's model file missing from an otherwise present folder
        reason = f"stanza's English pipeline could not load from {folder} ({exc})"
        raise ModelNotFoundError(f"{reason}: {_how_to(folder)}") from exc
