"""Notebook helper in the spirit of imagededup's ``plot_duplicates``: one image's duplicate group, drawn."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from dataflow.media import ImageLoadError, load_image, resolve_path
from dataflow.report.cache import CacheView, display_image


def duplicate_group(
    cache_path: str | os.PathLike, image: str | os.PathLike, prefix: str | None = None, step: int | None = None
) -> dict:
    """The duplicate group that holds ``image``, kept or removed, from the rejected rows' provenance.

    ``image`` is the path as stored in the image column (or a path that resolves to the same file).
    ``step`` picks the dedup step; by default the last step whose group holds the image. Returns a dict
    with ``step``, ``operator``, ``reason``, ``kept`` (path), ``kept_source``, ``image_base`` and
    ``members``: a list of ``{"image", "source", "measure", "value"}`` for the removed images, closest first.
    Raises ``ValueError`` when no group holds the image.
    """
    view = CacheView.open(cache_path, prefix, read_steps=False)
    wanted = os.fspath(image)
    steps = [
        s
        for s, t in sorted(view.rejected.items(), reverse=True)
        if "duplicate_of" in t.df.columns and (step is None or s == step)
    ]
    for s in steps:
        tab = view.rejected[s]
        df = tab.df
        base = tab.image_base or view.image_base(s)
        disp = tab.display_images(view.image_key)
        dup_raw = df["duplicate_of"].to_numpy(dtype=object)
        dup = np.array([display_image(v) if v is not None else None for v in dup_raw], dtype=object)
        kept, row = _match(wanted, dup, base), None
        if kept is None:
            row = _match_row(wanted, disp, base)
            if row is None:
                continue
            kept = dup[row]
            if kept is None or kept == "<none>":
                continue
        rows = np.flatnonzero(dup == kept)
        if "group" in df.columns:  # near duplicates: the matched row's group (several groups may keep one path)
            anchor = row if row is not None else rows[0]
            rows = np.flatnonzero((df["group"] == df["group"].iat[anchor]).to_numpy() & (dup == kept))
        measure = "distance" if "distance" in df.columns else "similarity" if "similarity" in df.columns else None
        values = [float(df[measure].iat[r]) if measure else None for r in rows]
        order = sorted(
            range(len(rows)), key=lambda i: values[i] if measure == "distance" else -values[i] if measure else 0
        )
        members = [
            {
                "image": disp[rows[i]],
                "source": df[view.image_key].iat[rows[i]] if view.image_key in df.columns else disp[rows[i]],
                "measure": measure,
                "value": values[i],
            }
            for i in order
        ]
        return {
            "step": s,
            "operator": view.operator(s),
            "reason": str(df["reason"].iat[rows[0]]),
            "kept": kept,
            "kept_source": dup_raw[rows[0]],
            "image_base": base,
            "members": members,
        }
    raise ValueError(
        f"{wanted} is in no duplicate group of {view.path} (prefix {view.prefix!r}"
        f"{f', step {step}' if step is not None else ''}): no rejected row names it or is it"
    )


def plot_duplicates(
    cache_path: str | os.PathLike,
    image: str | os.PathLike,
    prefix: str | None = None,
    step: int | None = None,
    *,
    max_images: int = 12,
    figsize: tuple[float, float] | None = None,
):
    """Draw ``image``'s duplicate group: the kept image first, then the removed ones with their distance or
    similarity. Needs matplotlib (imported only here). Returns the matplotlib ``Figure``."""
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError(
            "plot_duplicates needs matplotlib, which is not installed: pip install matplotlib "
            "(the HTML report, `dataflow report CACHE_DIR`, needs nothing extra)"
        ) from None
    group = duplicate_group(cache_path, image, prefix=prefix, step=step)
    wanted = os.fspath(image)
    items: list[tuple[str, Any, str]] = [(group["kept"], group["kept_source"], "kept")]
    for m in group["members"][: max(max_images - 1, 0)]:
        label = (
            "exact copy"
            if m["measure"] is None
            else (f"distance {m['value']:g}" if m["measure"] == "distance" else f"similarity {m['value']:.4f}")
        )
        items.append((m["image"], m["source"], label))
    n = len(items)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=figsize or (3.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (path, source, label) in zip(axes.flat, items):
        try:
            ax.imshow(load_image(source, base_dir=group["image_base"], draft_size=512))
        except ImageLoadError as exc:
            ax.text(0.5, 0.5, exc.reason, ha="center", va="center", color="#c0392b", transform=ax.transAxes)
        name = Path(path).name or path
        mine = path == wanted or (isinstance(path, str) and _same_file(path, wanted, group["image_base"]))
        ax.set_title(
            f"{name}\n{label}",
            fontsize=9,
            color="#2e7d32" if label == "kept" else "#1d2230",
            fontweight="bold" if mine else "normal",
        )
    more = len(group["members"]) + 1 - n
    fig.suptitle(
        f"step {group['step']} {group['operator']}: {len(group['members']) + 1} images"
        + (f" ({more} more not drawn)" if more > 0 else ""),
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def _match(wanted: str, values: np.ndarray, base: str | None) -> str | None:
    if (values == wanted).any():
        return wanted
    target = _resolved(wanted, None)
    for v in dict.fromkeys(v for v in values if isinstance(v, str)):
        if _resolved(v, base) == target:
            return v
    return None


def _match_row(wanted: str, values: np.ndarray, base: str | None) -> int | None:
    hit = np.flatnonzero(values == wanted)
    if len(hit):
        return int(hit[0])
    target = _resolved(wanted, None)
    for i, v in enumerate(values):
        if isinstance(v, str) and _resolved(v, base) == target:
            return i
    return None


def _same_file(a: str, b: str, base: str | None) -> bool:
    return _resolved(a, base) == _resolved(b, None)


def _resolved(path: str, base: str | None) -> str:
    try:
        return str(resolve_path(path, base).resolve())
    except (OSError, ValueError):
        return path
