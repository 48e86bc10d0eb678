"""``first_entry_file_name="hf:<name or local path>[:config][:split]"``: a Hugging Face dataset as the input.

The spelling is DataFlow's: ``hf:openai/gsm8k:main:train``; one part after the name is the split
(``hf:name:test``), none means ``train``. A folder written by ``save_to_disk`` is opened with
``load_from_disk``; anything else goes to ``datasets.load_dataset`` (a hub name, a local data folder,
``HF_HUB_OFFLINE=1`` for the local cache only).

Images are not copied into the frame: each ``Image`` cell becomes a reference into the dataset's own
memory-mapped Arrow cache file (:mod:`dataflow.media.table_rows`), so a million-image dataset costs a
million short strings here and its bytes are read only by the steps that decode them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from dataflow.storage.formats import StorageFormatError

PREFIX = "hf:"


def is_hf(source) -> bool:
    return isinstance(source, str) and source.startswith(PREFIX)


def parse(source: str) -> tuple[str, str | None, str]:
    """``(name, config, split)`` as DataFlow reads them."""
    name, *parts = source[len(PREFIX) :].split(":")
    if not name:
        raise StorageFormatError(f"{source!r}: expected hf:<dataset name or local path>[:config][:split]")
    if len(parts) == 1:
        return name, None, parts[0]
    if len(parts) == 2:
        return name, parts[0] or None, parts[1]
    if parts:
        raise StorageFormatError(f"{source!r}: expected hf:<dataset name or local path>[:config][:split]")
    return name, None, "train"


def load(source: str):
    """The ``datasets.Dataset`` a spec names, or a clear error (no ``datasets``, no such dataset or split)."""
    try:
        import datasets
    except ImportError:
        from dataflow import install_hint

        needs = f"reading hf: inputs needs the datasets package: {install_hint('hf')}"
        raise StorageFormatError(f"{source}: {needs}") from None
    name, config, split = parse(source)
    local = Path(name).expanduser()
    try:
        if local.is_dir() and ((local / "state.json").is_file() or (local / "dataset_dict.json").is_file()):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise StorageFormatError(f"{source}: no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, config, split=split)
    except StorageFormatError:
        raise
    except Exception as exc:  # datasets raises many types: a missing dataset, split, config or network
        raise StorageFormatError(f"{source}: cannot load the dataset ({type(exc).__name__}: {exc})") from None
    if not isinstance(ds, datasets.Dataset):
        raise StorageFormatError(f"{source}: expected one split, got {type(ds).__name__}; add :<split>")
    return ds


def image_columns(ds) -> list[str]:
    import datasets

    return [name for name, feature in ds.features.items() if isinstance(feature, datasets.Image)]


def read_hf_input(source: str) -> pd.DataFrame:
    """The dataset as a frame; ``Image`` columns as references into its Arrow files (inline bytes only for
    a dataset that lives in memory)."""
    ds = load(source)
    images = image_columns(ds)
    others = [c for c in ds.column_names if c not in images]
    df = ds.select_columns(others).to_pandas() if others else pd.DataFrame(index=range(len(ds)))
    files = _arrow_files(ds)
    for column in images:
        values = _inline(ds, column) if files is None else _references(ds, column, files)
        df.insert(ds.column_names.index(column), column, pd.Series(values, dtype=object))
    return df


def _inline(ds, column: str) -> list:
    import datasets

    return ds.cast_column(column, datasets.Image(decode=False))[column]


def _arrow_files(ds) -> list[tuple[str, int]] | None:
    """``(arrow file, rows)`` in row order when the rows are exactly those files' rows; else None."""
    if getattr(ds, "_indices", None) is not None or not ds.cache_files:
        return None
    from dataflow.media.table_rows import _ArrowRows

    out = [(e["filename"], _ArrowRows(Path(e["filename"])).table.num_rows) for e in ds.cache_files]
    return out if sum(n for _, n in out) == len(ds) else None


def _references(ds, column: str, files: list[tuple[str, int]]) -> list:
    """Per row, a reference where the cell embeds bytes, else its ``{bytes: None, path}`` (never reading
    the bytes: only their validity and the paths leave Arrow)."""
    import pyarrow.compute as pc

    from dataflow.media.table_rows import reference

    cells = ds.data.column(column).combine_chunks()
    data, paths = cells.field("bytes"), cells.field("path").to_pylist()
    has_bytes = pc.and_(cells.is_valid(), pc.greater(pc.binary_length(data), 0))
    embedded = pc.fill_null(has_bytes, False).to_numpy(zero_copy_only=False)
    out, row = [], 0
    for path, rows in files:
        for local in range(rows):
            if embedded[row]:
                out.append(reference(path, local, column, paths[row]))
            else:
                out.append(None if not cells[row].is_valid else {"bytes": None, "path": paths[row]})
            row += 1
    return out


def hf_fingerprint_parts(source: str) -> list:
    """What decides whether an hf: input changed: its spec, and each Arrow file's stat (or the dataset's
    own fingerprint for one in memory)."""
    ds = load(source)
    files = ds.cache_files
    if not files:
        return [source, getattr(ds, "_fingerprint", None)]
    stats = []
    for entry in files:
        st = os.stat(entry["filename"])
        stats.append((entry["filename"], st.st_size, st.st_mtime_ns, st.st_ino))
    return [source, stats]


def hf_columns(source: str) -> list[str]:
    return list(load(source).column_names)


def hf_base(source: str) -> str:
    """Relative image paths inside a local dataset resolve against its folder; hub datasets hold absolute ones."""
    name = parse(source)[0]
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else os.getcwd()
