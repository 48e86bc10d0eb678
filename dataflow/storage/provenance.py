"""The columns a rejected row gets to say why it was dropped, and an input's own columns of those names."""

from __future__ import annotations

from typing import Any

import pandas as pd

# Columns a rejected row gets to say why; an input column of the same name is kept as ``input_<name>``.
PROVENANCE_COLUMNS = ("reason", "detail", "duplicate_of", "linked_by", "group", "distance", "similarity")


def user_column_name(name: str, columns) -> str:
    """What an input column is called in a rejected file: itself, or ``input_<name>`` if provenance uses it."""
    if name not in PROVENANCE_COLUMNS:
        return name
    moved = f"input_{name}"
    while moved in columns:
        moved = f"input_{moved}"
    return moved


def keep_user_columns(frame: pd.DataFrame, names) -> pd.DataFrame:
    """``frame`` with its columns among ``names`` renamed out of the way of the provenance about to be
    written there (``reason`` -> ``input_reason``), so a user's own column is never overwritten."""
    clash = {n: user_column_name(n, frame.columns) for n in names if n in frame.columns}
    return frame.rename(columns=clash) if clash else frame


def row_name(value: Any, label: Any) -> Any:
    """How provenance (``duplicate_of``) names a row: its image path, the ``path`` of a Hugging Face image
    ``{"bytes", "path"}`` dict, else its row label; never the image bytes themselves."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("path"), str) and value["path"]:
        return value["path"]
    return label.item() if hasattr(label, "item") else label
