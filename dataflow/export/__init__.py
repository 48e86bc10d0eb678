"""Export the kept rows of a cache step as a dataset other tools read: an image folder (copies, symlinks or
hard links), WebDataset tar shards, a Hugging Face Parquet dataset, or JSON lines.

    from dataflow.export import export
    result = export("./cache", "./out", format="webdataset")

Every format writes ``DIR/export_manifest.json``. See docs/export.md.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import dataflow
from dataflow.export.common import (
    DEFAULT_SHARD_SIZE,
    FORMATS,
    MANIFEST_NAME,
    ExportError,
    ExportResult,
    MissingImagesError,
    Run,
    logger,
    now,
    prepare_out_dir,
    write_export_manifest,
)
from dataflow.export.source import StepSource

__all__ = ["export", "ExportResult", "ExportError", "MissingImagesError", "FORMATS", "DEFAULT_SHARD_SIZE"]


def export(
    cache_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    format: str = "folder",
    *,
    step: int | None = None,
    prefix: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    image_key: str | None = None,
    text_key: str | None = None,
    overwrite: bool = False,
    skip_missing: bool = False,
) -> ExportResult:
    """Export the rows of one step of ``cache_dir`` into ``out_dir``, with their captions and every score column.

    Parameters:
        format: ``folder`` (images copied byte for byte + metadata.jsonl, Hugging Face imagefolder layout),
            ``symlink`` / ``hardlink`` (the same with links to the image files), ``webdataset`` (tar shards),
            ``hf`` (Parquet shards with an ``Image`` feature) or ``jsonl``.
        step: the step to export (default: the last one written).
        prefix: the pipeline's ``file_name_prefix``, needed when the folder holds several.
        shard_size: samples per shard (webdataset, hf).
        image_key: the image column (default: the pipeline's ``input_image_key``, else ``image``).
        text_key: the caption column (default: the pipeline's ``input_text_key``, else caption / text / prompt).
        overwrite: replace a previous export in ``out_dir`` (never a folder that holds no export manifest).
        skip_missing: accept rows whose image cannot be read being left out (they are listed either way).

    Raises ``ExportError`` when nothing can be exported (no such step, several prefixes, ``out_dir`` not empty)
    and ``MissingImagesError`` (with ``.result``) after exporting when rows were left out without
    ``skip_missing``.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if not isinstance(shard_size, int) or isinstance(shard_size, bool) or shard_size < 1:
        raise ExportError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
    started, started_at = time.perf_counter(), now()
    src = StepSource.open(cache_dir, step=step, prefix=prefix, image_key=image_key, text_key=text_key)
    out = Path(out_dir)
    prepare_out_dir(out, overwrite=overwrite, protected=[src.cache, src.image_base])
    run = Run(src, out, format, shard_size=shard_size)
    manifest = {
        "format": format,
        "status": "running",
        "source": src.describe(),
        "options": {"shard_size": shard_size, "skip_missing": skip_missing},
        "dataflow_version": dataflow.__version__,
        "started_at": started_at,
    }
    manifest_path = out / MANIFEST_NAME
    write_export_manifest(manifest_path, manifest)  # marks the folder as an export even if this one is killed
    logger.info("exporting step %d of %s (%s rows) as %s to %s", src.step, src.prefix, src.row_count, format, out)
    try:
        _writer(format)(run)
    except OSError as exc:  # a full disk, a folder made read-only, a step file gone: no traceback, the cause
        raise ExportError(f"export to {out} failed: {exc}") from exc
    seconds = time.perf_counter() - started
    result = ExportResult(
        format=format,
        out_dir=out,
        cache_dir=src.cache,
        prefix=src.prefix,
        step=src.step,
        rows=run.rows,
        rows_in_step=run.rows + len(run.failures),
        failures=run.failures,
        bytes_written=run.bytes_written,
        files=run.files,
        images=dict(sorted(run.images.items())),
        seconds=seconds,
        manifest_path=manifest_path,
    )
    manifest.update(
        {
            "status": "complete" if result.ok else ("complete, rows skipped" if skip_missing else "rows missing"),
            "rows": result.rows,
            "rows_in_step": result.rows_in_step,
            "failed_rows": len(result.failures),
            "bytes_written": result.bytes_written,
            "images": result.images,
            "files": [str(p.relative_to(out)) for p in result.files],
            **run.extra,
            "failures": result.failures,
            "finished_at": now(),
            "seconds": round(seconds, 3),
        }
    )
    write_export_manifest(manifest_path, manifest)
    if result.failures:
        if not skip_missing:
            raise MissingImagesError(result)
        logger.warning(
            "%d rows left out, their image could not be read (listed in %s)", len(result.failures), manifest_path
        )
    return result


def _writer(format: str):
    if format in ("folder", "symlink", "hardlink"):
        from dataflow.export import folder

        mode = {"folder": "copy"}.get(format, format)
        return lambda run: folder.write(run, mode)
    if format == "webdataset":
        from dataflow.export import webdataset

        return webdataset.write
    if format == "hf":
        from dataflow.export import hf

        return hf.write
    from dataflow.export import jsonl

    return jsonl.write
