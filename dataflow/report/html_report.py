"""``build_report``: one self-contained HTML file that shows what a pipeline kept, dropped and why.

Sections: the steps table; duplicate groups (each kept image beside the images removed as its duplicates);
a histogram of every numeric score column with the filters' thresholds marked and sample thumbnails from
both ends and around each threshold; rejected rows by reason; unreadable images. Thumbnails are small
JPEG data URIs, at most ``max_thumbnails`` distinct images whatever the size of the cache, and every
string that comes from the data is escaped.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import html
import math
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataflow.report.cache import (
    DUPLICATE_REASONS,
    UNREADABLE_REASONS,
    CacheView,
    ReportWriteError,
    Table,
    Threshold,
    display_image,
    fmt_number,
    is_score_name,
    numeric_values,
)
from dataflow.report.format import (
    allocate,
    detail_text,
    fill_budget,
    largest,
    measure_text,
    op_summary,
    short_text,
    smallest,
)
from dataflow.report.groups import DuplicateGroup, duplicate_groups
from dataflow.report.svg import COLORS, LABELS, histogram_svg
from dataflow.storage.atomic import atomic_write_bytes

READY_ATTRIBUTE = "data-report-state"  # set to "ready" by the page's script once it has run without error


def esc(value: Any) -> str:
    """Text (or an attribute value) from the data, escaped for HTML."""
    return html.escape(str(value), quote=True)


def build_report(
    cache_path: str | os.PathLike,
    out: str | os.PathLike | None = None,
    prefix: str | None = None,
    *,
    max_thumbnails: int = 400,
    max_groups: int = 50,
    thumb_size: int = 128,
) -> Path:
    """Write an HTML report of the pipeline cached in ``cache_path`` and return its path.

    ``out`` defaults to ``<cache_path>/<prefix>_report.html``. ``prefix`` picks the pipeline when the folder
    holds several. At most ``max_thumbnails`` distinct images are embedded and ``max_groups`` duplicate groups
    shown with pictures (the next ones as paths only), so the file stays small for millions of rows.
    """
    from dataflow.report.thumbs import ThumbnailStore

    started = time.perf_counter()
    view = CacheView.open(cache_path, prefix)
    store = ThumbnailStore(max_thumbnails=max_thumbnails, size=thumb_size)
    r = _Renderer(view, store, max_groups=max_groups)
    alloc = r.plan()

    store.ceiling = alloc["groups"]
    groups = r.groups_section()
    pairs = r.pairs_section()  # mostly the groups' own images, embedded once
    store.ceiling = alloc["groups"] + alloc["rejected"]
    rejected = r.rejected_section()
    unreadable = r.unreadable_section()
    store.ceiling = store.max_thumbnails
    scores = r.scores_section()
    steps = r.steps_section()
    store.materialize()

    body = "\n".join([r.header(), steps, groups, pairs, scores, rejected, unreadable])
    footer = (
        f"<footer>Built by <code>dataflow report</code> in {time.perf_counter() - started:.2f} s · "
        f"{store.embedded()} thumbnails embedded (cap {store.max_thumbnails})"
        f"{f' · {store.omitted} not embedded' if store.omitted else ''}</footer>"
    )
    page = _asset("page.html").format(
        title=esc(f"dataflow report: {view.prefix}"),
        css=_asset("report.css"),
        thumbs_css=store.css(),
        body=store.fill(body),
        footer=footer,
        script=_asset("report.js").rstrip("\n"),
    )
    target = Path(out) if out is not None else view.path / f"{view.prefix}_report.html"
    _write_page(target, page.encode("utf-8"), in_cache=out is None)
    return target


def _write_page(target: Path, data: bytes, *, in_cache: bool) -> None:
    """Write the page atomically, or a ``ReportWriteError`` saying why not and where to write it instead."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
    except OSError as exc:
        why = {
            errno.EACCES: "permission denied",
            errno.EPERM: "permission denied",
            errno.EROFS: "read-only file system",
            errno.ENOSPC: "no space left on device",
            errno.EDQUOT: "disk quota exceeded",
            errno.EISDIR: "a folder is in the way",
            errno.ENOTDIR: "a file is in the way",
            errno.EEXIST: "a file is in the way",  # mkdir of its folder
        }.get(exc.errno, exc.strerror or str(exc))
        if in_cache:
            hint = "the cache folder is not writable; pass --out FILE (out= in Python) to write it elsewhere"
        else:
            hint = "choose another --out FILE (out= in Python)"
        raise ReportWriteError(f"cannot write the report to {target} ({why}): {hint}") from None
    # The temp file behind an atomic write is private; a report is for reading. A file system without modes
    # refuses: the report is written all the same.
    with contextlib.suppress(OSError):
        os.chmod(target, 0o644)


# ---------------------------------------------------------------------------------------------- rendering
class _Renderer:
    def __init__(self, view: CacheView, store, max_groups: int):
        self.view = view
        self.store = store
        self.max_groups = max_groups
        self.n_groups = 0
        self.n_group_rows = 0
        self.n_unreadable = 0
        self.groups: list[DuplicateGroup] = []
        self.reasons: list[tuple[int, str, int]] = []
        self.columns: list[tuple[str, Table]] = []
        self.alloc: dict[str, int] = {}
        self.has_pairs = False

    def plan(self) -> dict[str, int]:
        """Find the groups, reasons and score columns, and share the thumbnail cap between the sections."""
        v = self.view
        self.groups, self.n_groups, self.n_group_rows = duplicate_groups(v, self.max_groups + 500)
        for step, m in v.manifests.items():
            reasons = dict(m.get("rejected_reasons") or {})
            if not reasons and int(m.get("rows_rejected") or 0) and step in v.rejected:
                reasons = {str(k): int(n) for k, n in v.rejected[step].df["reason"].value_counts().items()}
            self.reasons += [(step, str(r), int(n)) for r, n in reasons.items()]
        self.columns = self.score_columns()
        thresholds = v.thresholds()
        need = {
            "groups": sum(min(g.size, 6) for g in self.groups[: self.max_groups]),
            "rejected": sum(
                min(n, 6) for s, r, n in self.reasons if r not in DUPLICATE_REASONS and r not in UNREADABLE_REASONS
            ),
            "scores": sum(6 + 4 * len(thresholds.get(c, [])) for c, _ in self.columns),
        }
        self.need = need
        self.alloc = allocate(need, self.store.max_thumbnails)
        return self.alloc

    # ------------------------------------------------------------------ helpers
    def thumb(
        self,
        tab: Table,
        row: int,
        caption_html: str,
        *,
        placeholder: str | None = None,
        extra_class: str = "",
        with_text: bool = True,
    ) -> str:
        images = tab.values(self.view.image_key)
        value = images[row] if images is not None else None
        label = tab.display_images(self.view.image_key)[row]
        return self.figure(
            value,
            tab.image_base or self.view.image_base(tab.step),
            label,
            caption_html,
            placeholder=placeholder,
            extra_class=extra_class,
            text=self.caption_text(tab, row) if with_text else None,
        )

    def figure(
        self,
        source: Any,
        base: str | None,
        label: str,
        caption_html: str,
        *,
        placeholder: str | None = None,
        extra_class: str = "",
        text: str | None = None,
        overlay: str = "",
    ) -> str:
        token = self.store.ref(source, base, label, placeholder=placeholder)
        if overlay:  # drawn over the thumbnail in the image's own pixel coordinates (see pairs_section)
            token = f'<span class="pvbox">{token}{overlay}</span>'
        name = label.rsplit("/", 1)[-1] or label
        cap = f'<span class="c" title="{esc(text)}">{esc(text)}</span>' if text else ""
        return (
            f'<figure class="tf {extra_class}" data-image="{esc(label)}">{token}<figcaption>'
            f'<span class="p" title="{esc(label)}">{esc(name)}</span>{caption_html}{cap}</figcaption></figure>'
        )

    def caption_text(self, tab: Table, row: int) -> str | None:
        texts = tab.values(self.view.text_key) if self.view.text_key else None
        if texts is None:
            return None
        value = texts[row]
        if isinstance(value, (list, tuple, np.ndarray)):
            value = " | ".join(map(str, value))
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        return str(value)[:300]

    # ------------------------------------------------------------------ header
    def header(self) -> str:
        v = self.view
        first, last = v.manifests[min(v.manifests)], v.manifests[v.last_step]
        rejected = sum(int(m.get("rows_rejected") or 0) for m in v.manifests.values())
        facts = [
            ("rows in", fmt_number(first.get("rows_in"))),
            ("rows out", fmt_number(last.get("rows_out"))),
            ("rejected", fmt_number(rejected)),
            ("duplicate groups", fmt_number(self.n_groups)),
            ("unreadable", fmt_number(self.n_unreadable)),
            ("steps", str(len(v.manifests))),
        ]
        cells = "".join(f'<div class="kpi"><b>{esc(n)}</b><span>{esc(k)}</span></div>' for k, n in facts)
        entry = first.get("first_entry_file_name") or ""
        pairs_link = '<a href="#pairs">Verified pairs</a>' if self.has_pairs else ""
        return (
            f'<header><h1>dataflow report <span class="muted">· {esc(v.prefix)}</span></h1>'
            f'<p class="muted">cache <code>{esc(v.path.resolve())}</code> · input <code>{esc(entry)}</code> · '
            f'written {esc(last.get("written_at", ""))}</p><div class="kpis">{cells}</div>'
            f'<nav><a href="#steps">Steps</a><a href="#duplicates">Duplicate groups</a>'
            f"{pairs_link}"
            f'<a href="#scores">Score distributions</a><a href="#rejected">Rejected rows</a>'
            f'<a href="#unreadable">Unreadable images</a></nav></header>'
        )

    # ------------------------------------------------------------------ steps
    def steps_section(self) -> str:
        rows = []
        for step, m in self.view.manifests.items():
            params = "".join(
                f'<span class="kv">{esc(k)}=<b>{esc(short_text(p))}</b></span>'
                for k, p in (m.get("params") or {}).items()
                if p is not None
            )
            keys = {**(m.get("input_keys") or {}), **(m.get("output_keys") or {})}
            keys_html = "".join(
                f'<span class="kv key">{esc(k)}=<b>{esc(short_text(p))}</b></span>'
                for k, p in keys.items()
                if p is not None
            )
            reasons = m.get("rejected_reasons") or {}
            rej = fmt_number(m.get("rows_rejected"))
            if reasons:
                spans = " ".join(f"<span>{esc(r)} {int(n)}</span>" for r, n in reasons.items())
                rej += f'<div class="reasons">{spans}</div>'
            new = m.get("new_columns") or []
            new_html = esc(", ".join(new[:5]) + (f" … +{len(new) - 5}" if len(new) > 5 else "")) if new else "-"
            rows.append(
                f'<tr data-step="{step}"><td class="n">{step}</td><td><b>{esc(m.get("operator", "?"))}</b></td>'
                f'<td class="params">{params}{keys_html}</td><td class="n">{fmt_number(m.get("rows_in"))}</td>'
                f'<td class="n">{fmt_number(m.get("rows_out"))}</td><td class="n">{rej}</td>'
                f'<td class="n">{float(m.get("seconds") or 0):.2f}</td>'
                f'<td class="cols" title="{esc(", ".join(new))}">{new_html}</td></tr>'
            )
        return (
            f'<section id="steps"><h2>Steps</h2><div class="scroll"><table class="steps"><thead><tr>'
            f'<th class="n">step</th><th>operator</th><th>parameters and keys</th><th class="n">rows in</th>'
            f'<th class="n">rows out</th><th class="n">rejected</th><th class="n">seconds</th>'
            f"<th>new columns</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table></div></section>"
        )

    # ------------------------------------------------------------------ duplicate groups
    def groups_section(self) -> str:
        v = self.view
        groups = self.groups
        head = '<section id="duplicates"><h2>Duplicate groups</h2>'
        if not groups:
            return head + '<p class="muted">No step removed duplicates.</p></section>'
        shown, more = groups[: self.max_groups], groups[self.max_groups :]
        fates = self._later_fates(shown)
        per_group = fill_budget([g.size for g in shown], self.alloc.get("groups", 0), 2, 6)
        cards = []
        for g in shown:
            tab = v.rejected[g.step]
            meta = v.manifests[g.step]
            reason = str(tab.df["reason"].iat[int(g.rows[0])]) if "reason" in tab.df.columns else "duplicate"
            base = tab.image_base or v.image_base(g.step)
            fate = fates.get((g.step, g.kept))
            fate_html = f'<span class="badge warn">{esc(fate)}</span>' if fate else ""
            # a filter run without an image key names the kept row by its index, not by an image
            by_index = not isinstance(g.kept_source, (str, dict, bytes))
            kept_fig = self.figure(
                g.kept_source,
                base,
                f"row {g.kept}" if by_index else g.kept,
                f'<span class="m ok">kept{fate_html}</span>',
                extra_class="kept",
                placeholder="row index" if by_index else None,
            )
            figs, rest = [], []
            for i, row in enumerate(g.rows):
                row = int(row)
                measure = measure_text(tab, row, g.measure)
                if i < per_group - 1:
                    figs.append(self.thumb(tab, row, f'<span class="m">{esc(measure)}</span>', extra_class="dup"))
                elif len(rest) < 50:
                    label = tab.display_images(v.image_key)[row]
                    rest.append(
                        f'<li data-image="{esc(label)}"><code>{esc(label)}</code> '
                        f'<span class="muted">{esc(measure)}</span></li>'
                    )
            hidden = len(g.rows) - (per_group - 1) - len(rest)
            extra = ""
            if rest:
                extra = (
                    f"<details><summary>{len(g.rows) - len(figs)} more removed as its duplicates</summary>"
                    f'<ul class="paths">{"".join(rest)}'
                    f"{f'<li>… and {hidden} more</li>' if hidden > 0 else ''}</ul></details>"
                )
            search = " ".join([g.kept, *tab.display_images(v.image_key)[g.rows[:50]]]).lower()
            params = op_summary(meta)
            cards.append(
                f'<div class="group" data-step="{g.step}" data-kept="{esc(g.kept)}" data-size="{g.size}" '
                f'data-search="{esc(search)}"><div class="ghead"><b>{g.size} images</b> · step {g.step} '
                f'{esc(meta.get("operator", "?"))} <span class="muted">{esc(params)}</span> · '
                f'<span class="badge">{esc(reason)}</span></div><div class="strip">{kept_fig}'
                f'<div class="arrow" title="removed as duplicates of the kept image">←</div>{"".join(figs)}'
                f"</div>{extra}</div>"
            )
        note = (
            f'<p class="muted">{self.n_groups} groups, {self.n_group_rows} rows removed as duplicates; largest '
            f"first. Each kept image (left) is shown beside the images removed as its duplicates, with their "
            f"Hamming distance or similarity.</p>"
        )
        search_box = (
            '<p class="filter"><input id="group-filter" type="search" placeholder="filter groups by path…" '
            'aria-label="filter groups by path"> <span id="group-filter-count" class="muted"></span></p>'
        )
        tail = ""
        if more:
            trs = "".join(
                f'<tr class="gmore" data-step="{g.step}" data-kept="{esc(g.kept)}">'
                f'<td class="n">{g.size}</td>'
                f'<td class="n">{g.step}</td><td><code>{esc(g.kept)}</code></td><td>'
                + esc(", ".join(v.rejected[g.step].display_images(v.image_key)[g.rows[:4]]))
                + (" …" if len(g.rows) > 4 else "")
                + "</td></tr>"
                for g in more
            )
            tail += (
                f'<details class="more"><summary>groups {len(shown) + 1} to {len(shown) + len(more)} (paths only)'
                f"</summary><table><thead><tr><th>size</th><th>step</th><th>kept</th><th>removed</th></tr></thead>"
                f"<tbody>{trs}</tbody></table></details>"
            )
        left = self.n_groups - len(groups)
        if left > 0:
            steps = sorted({s for s, t in v.rejected.items() if "duplicate_of" in t.df.columns})
            cmd = " ; ".join(f"dataflow inspect {v.path} --prefix {v.prefix} --step {s} --rejected" for s in steps)
            tail += f'<p class="muted">{left} more groups not listed here: <code>{esc(cmd)}</code></p>'
        return head + note + search_box + "".join(cards) + tail + "</section>"

    # ------------------------------------------------------------------ verified pairs
    def pairs_section(self, max_pairs: int = 12) -> str:
        """Rejected rows whose operator declared a ``pair_view``: the kept image with the row's box drawn on
        it, beside the row, with the declared facts. Empty when no step declares one."""
        v = self.view
        cards = []
        for step, decl in v.pair_views().items():
            tab = v.rejected[step]
            boxes, kept = tab.values(decl["box"]), tab.values("duplicate_of")
            rows = [i for i in range(len(tab.df)) if _box(boxes[i]) is not None and _is_source(kept[i])]
            if not rows:
                continue
            picks = [rows[i] for i in np.unique(np.linspace(0, len(rows) - 1, min(max_pairs, len(rows))).astype(int))]
            base = tab.image_base or v.image_base(step)
            for row in picks:
                x0, y0, x1, y1 = _box(boxes[row])
                size = _image_size(kept[row], base)
                overlay = ""
                if size is not None:
                    overlay = (
                        f'<svg class="pvsvg" viewBox="0 0 {size[0]} {size[1]}" preserveAspectRatio="xMidYMid meet" '
                        f'aria-hidden="true"><rect x="{x0:g}" y="{y0:g}" width="{x1 - x0:g}" height="{y1 - y0:g}"/>'
                        f"</svg>"
                    )
                label = display_image(kept[row])
                facts = " · ".join(
                    f"{name} {fmt_number(_as_number(tab.values(name)[row]))}"
                    for name in decl["facts"]
                    if tab.values(name) is not None
                )
                box_text = f"box [{x0:g}, {y0:g}, {x1:g}, {y1:g}]"
                kept_fig = self.figure(
                    kept[row],
                    base,
                    label,
                    f'<span class="m ok">kept · {esc(box_text)}</span>',
                    extra_class="kept",
                    overlay=overlay,
                )
                dup_fig = self.thumb(
                    tab, row, f'<span class="m">{esc(facts)}</span>', extra_class="dup", with_text=False
                )
                cards.append(
                    f'<div class="pair" data-step="{step}" data-kept="{esc(label)}" '
                    f'data-box="{x0:g},{y0:g},{x1:g},{y1:g}">{kept_fig}'
                    f'<div class="arrow" title="the removed image lies inside the box">←</div>{dup_fig}</div>'
                )
        if not cards:
            return ""
        self.has_pairs = True
        return (
            '<section id="pairs"><h2>Verified pairs</h2><p class="muted">Why two images matched: each removed '
            "image (right) and the kept image it duplicates (left), with the removed image's extent drawn on the "
            f'kept one, as the step measured it.</p><div class="pairs">{"".join(cards)}</div></section>'
        )

    def _later_fates(self, groups: list[DuplicateGroup]) -> dict[tuple[int, str], str]:
        """For kept images that a later step removed after all: what happened to them."""
        want: dict[str, list[int]] = {}
        for g in groups:
            want.setdefault(g.kept, []).append(g.step)
        out: dict[tuple[int, str], str] = {}
        first_step = min((g.step for g in groups), default=0)
        for step, tab in sorted(self.view.rejected.items()):
            if step <= first_step:
                continue
            disp = tab.display_images(self.view.image_key)
            hit = np.flatnonzero(pd.Series(disp).isin(list(want)).to_numpy())
            if not len(hit):
                continue
            keys, first = np.unique(disp[hit].astype(str), return_index=True)
            reasons = tab.values("reason")
            for key, row in zip(keys, hit[first]):
                for s in want[key]:
                    if step > s and (s, key) not in out:
                        out[(s, key)] = f"removed later at step {step}: {reasons[row] if reasons is not None else '?'}"
        return out

    # ------------------------------------------------------------------ rejected rows
    def rejected_section(self) -> str:
        v = self.view
        rows, blocks = [], []
        pairs = self.reasons
        for step, reason, n in pairs:
            m = v.manifests[step]
            rows_in = int(m.get("rows_in") or 0)
            share = f"{100 * n / rows_in:.1f}%" if rows_in else "-"
            rows.append(
                f'<tr data-step="{step}" data-reason="{esc(reason)}"><td class="n">{step}</td>'
                f'<td>{esc(m.get("operator", "?"))}</td><td><span class="badge">{esc(reason)}</span></td>'
                f'<td class="n count">{n}</td><td class="n">{share}</td></tr>'
            )
        if not rows:
            return (
                '<section id="rejected"><h2>Rejected rows</h2><p class="muted">No step rejected any row.</p></section>'
            )
        sample_pairs = [(s, r, n) for s, r, n in pairs if r not in DUPLICATE_REASONS and s in v.rejected]
        per_reason = fill_budget(
            [n for s, r, n in sample_pairs if r not in UNREADABLE_REASONS], self.alloc.get("rejected", 0), 1, 6
        )
        for step, reason, n in sample_pairs:
            tab = v.rejected[step]
            idx = np.flatnonzero((tab.df["reason"].astype(str) == reason).to_numpy())
            if not len(idx):
                continue
            picks = idx[np.unique(np.linspace(0, len(idx) - 1, min(per_reason, len(idx))).astype(int))]
            figs = []
            for row in picks:
                row = int(row)
                ph = reason if reason in UNREADABLE_REASONS else None
                figs.append(
                    self.thumb(tab, row, f'<span class="m">{esc(detail_text(tab.df, row))}</span>', placeholder=ph)
                )
            blocks.append(
                f'<div class="rblock" data-step="{step}" data-reason="{esc(reason)}"><h4>step {step} · '
                f'{esc(v.operator(step))} · <span class="badge">{esc(reason)}</span> '
                f'<span class="muted">{n} {"row" if n == 1 else "rows"}'
                f"{f', {len(picks)} shown' if len(picks) < n else ''}</span></h4>"
                f'<div class="strip">{"".join(figs)}</div></div>'
            )
        dup_note = ""
        if any(r in DUPLICATE_REASONS for _, r, _ in pairs):
            dup_note = (
                '<p class="muted">Duplicates are shown by group above, in '
                '<a href="#duplicates">Duplicate groups</a>.</p>'
            )
        return (
            f'<section id="rejected"><h2>Rejected rows by reason</h2><table class="reasons-table"><thead><tr>'
            f'<th class="n">step</th><th>operator</th><th>reason</th><th class="n">rows</th>'
            f'<th class="n">of step input</th></tr></thead><tbody>{"".join(rows)}</tbody></table>{dup_note}'
            f'<div class="rblocks">{"".join(blocks)}</div></section>'
        )

    # ------------------------------------------------------------------ unreadable
    def unreadable_section(self) -> str:
        v = self.view
        items = []  # (table, row, reason)
        counts: dict[str, int] = {}
        for step, tab in sorted(v.rejected.items()):
            if "reason" not in tab.df.columns:
                continue
            reason = tab.df["reason"].astype(str)
            mask = reason.isin(list(UNREADABLE_REASONS)).to_numpy()
            for r, n in reason[mask].value_counts().items():
                counts[r] = counts.get(r, 0) + int(n)
            values = reason.to_numpy()
            for row in np.flatnonzero(mask)[: max(200 - len(items), 0)]:
                items.append((tab, int(row), values[row], f"rejected at step {step}"))
        last = v.steps.get(v.last_step)
        still = 0
        if last is not None and "image_error" in last.df.columns:
            err = last.df["image_error"]
            mask = err.notna().to_numpy()
            still = int(mask.sum())
            for r, n in err[mask].astype(str).value_counts().items():
                counts[r] = counts.get(r, 0) + int(n)
            values = err.to_numpy(dtype=object)
            for row in np.flatnonzero(mask)[: max(200 - len(items), 0)]:
                items.append((last, int(row), str(values[row]), f"still in step {v.last_step}"))
        self.n_unreadable = sum(counts.values())
        head = '<section id="unreadable"><h2>Unreadable images</h2>'
        if not items:
            return head + '<p class="muted">Every image could be read.</p></section>'
        summary = ", ".join(f'<span class="badge">{esc(r)}</span> {n}' for r, n in sorted(counts.items()))
        trs = []
        for tab, row, reason, where in items:
            label = tab.display_images(v.image_key)[row]
            detail = detail_text(tab.df, row)
            trs.append(
                f'<tr data-reason="{esc(reason)}" data-image="{esc(label)}"><td><span class="th ph bad sm" '
                f'title="{esc(label)}">{esc(reason)}</span></td>'
                f'<td><span class="badge">{esc(reason)}</span></td><td><code>{esc(label)}</code></td>'
                f'<td>{esc(detail)}</td><td class="muted">{esc(where)}</td></tr>'
            )
        more = self.n_unreadable - len(items)
        note = f'<p class="muted">{more} more not listed.</p>' if more > 0 else ""
        still_note = (
            (
                f'<p class="muted">{still} rows of the last step still carry an <code>image_error</code>; '
                f"a filter step would move them to its rejected file.</p>"
            )
            if still
            else ""
        )
        return (
            f'{head}<p>{summary}</p>{still_note}<table class="unreadable"><thead><tr><th></th><th>reason</th>'
            f"<th>image</th><th>detail</th><th>where</th></tr></thead><tbody>{''.join(trs)}</tbody></table>"
            f"{note}</section>"
        )

    # ------------------------------------------------------------------ score distributions
    def score_columns(self) -> list[tuple[str, Table]]:
        """(column, the latest step table holding it), threshold columns first."""
        v = self.view
        group_keys = v.group_keys()
        thresholds = v.thresholds()
        found: dict[str, Table] = {}
        for step in sorted(v.steps, reverse=True):
            tab = v.steps[step]
            for col in tab.df.columns:
                col = str(col)
                if col in found or col == v.image_key or not is_score_name(col, group_keys):
                    continue
                if numeric_values(tab.df[col].head(2000)) is not None:
                    found[col] = tab
        with_t = sorted((c for c in found if c in thresholds), key=lambda c: min(t.step for t in thresholds[c]))
        return [(c, found[c]) for c in with_t] + [(c, t) for c, t in found.items() if c not in thresholds]

    def scores_section(self) -> str:
        v = self.view
        thresholds = v.thresholds()
        columns = self.columns
        head = '<section id="scores"><h2>Score distributions</h2>'
        if not columns:
            return head + '<p class="muted">No numeric score columns.</p></section>'
        legend = "".join(
            f'<span class="sw" style="background:{c}"></span>{esc(lab)} ' for c, lab in zip(COLORS, LABELS)
        )
        scale = min(1.0, self.alloc.get("scores", 0) / max(self.need["scores"], 1))
        k_end, k_thr = max(1, round(3 * scale)), max(1, round(2 * scale))
        cards = []
        for col, tab in columns:
            cards.append(self._score_card(col, tab, thresholds.get(col, []), k_end, k_thr))
        return (
            f'{head}<p class="muted">Every numeric column of step {v.last_step} (and columns only earlier steps '
            f"hold), over the rows kept and the rows rejected after the column was written. Red lines are "
            f'filter thresholds; hover a bar for its counts.</p><p class="legend">{legend}</p>'
            f'<div class="cards">{"".join(cards)}</div></section>'
        )

    def _score_card(self, col: str, kept_tab: Table, thr: list[Threshold], k_end: int, k_thr: int) -> str:
        v = self.view
        thr_steps = {t.step for t in thr}
        tabs: list[Table] = [kept_tab]
        statuses = [0]
        for step, tab in sorted(v.rejected.items()):
            if step <= kept_tab.step and col in tab.df.columns:
                tabs.append(tab)
                statuses.append(1 if step in thr_steps else 2)
        vals, tab_ids, rows = [], [], []
        for i, tab in enumerate(tabs):
            x = numeric_values(tab.df[col])
            if x is None:
                continue
            ok = np.flatnonzero(np.isfinite(x))
            vals.append(x[ok])
            tab_ids.append(np.full(len(ok), i, dtype=np.int32))
            rows.append(ok)
        values = np.concatenate(vals) if vals else np.empty(0)
        tab_id = np.concatenate(tab_ids) if tab_ids else np.empty(0, np.int32)
        row = np.concatenate(rows) if rows else np.empty(0, np.int64)
        status = np.array(statuses, dtype=np.int8)[tab_id] if len(tab_id) else np.empty(0, np.int8)
        n_rows = sum(len(t.df) for t in tabs)
        missing = n_rows - len(values)
        parts = [values[status == k] for k in range(3)]
        svg = histogram_svg(parts, thr, col)
        stats = ""
        if len(values):
            stats = (
                f"n {len(values)} ({len(parts[0])} kept) · missing {missing} · "
                f"min {fmt_number(values.min())} · "
                f"median {fmt_number(float(np.median(values)))} · max {fmt_number(values.max())}"
            )
        badges = "".join(
            f'<span class="badge thr" title="{esc(t.operator)}">step {t.step}: {esc(t.label)}</span>' for t in thr
        )
        strips = self._score_strips(col, values, tab_id, row, status, tabs, thr, k_end, k_thr) if len(values) else ""
        wide = " wide" if thr else ""
        return (
            f'<div class="card{wide}" data-column="{esc(col)}"><h3>{esc(col)} {badges}</h3>'
            f'<p class="stats muted">{stats}</p><div class="cbody"><div class="chart">{svg}</div>{strips}</div>'
            f"</div>"
        )

    def _score_strips(self, col, values, tab_id, row, status, tabs, thr, k_end, k_thr) -> str:
        if not self.store.has_room():
            return '<p class="muted small">thumbnail cap reached: no samples for this column</p>'
        groups: list[tuple[str, np.ndarray]] = [("lowest", smallest(values, k_end))]
        for t in thr:
            low = np.flatnonzero(values < t.value) if t.side != "max" else np.flatnonzero(values <= t.value)
            high = np.flatnonzero(values >= t.value) if t.side != "max" else np.flatnonzero(values > t.value)
            near = np.concatenate([low[largest(values[low], k_thr)], high[smallest(values[high], k_thr)]])
            groups.append((f"around {t.label}", near))
        groups.append(("highest", largest(values, k_end)))
        lowest = {int(p) for p in groups[0][1]}
        merged: list[tuple[str, np.ndarray]] = []
        for label, picks in groups:  # a strip that only repeats the one before it joins its label instead
            if merged and len(picks) and set(picks.tolist()) <= set(merged[-1][1].tolist()):
                merged[-1] = (f"{merged[-1][0]} · {label}", merged[-1][1])
            else:
                merged.append((label, picks))
        out = []
        for label, picks in merged:
            figs = []
            for p in picks:
                p = int(p)
                if label == "highest" and p in lowest:
                    continue
                tab = tabs[int(tab_id[p])]
                st = int(status[p])
                state = "kept" if st == 0 else f"rej. step {tab.step}"
                cls = "ok" if st == 0 else "bad"
                figs.append(
                    self.thumb(
                        tab,
                        int(row[p]),
                        f'<span class="m v">{esc(fmt_number(values[p]))}</span><span class="{cls}">{esc(state)}</span>',
                        extra_class="sm",
                        with_text=False,
                    )
                )
            if figs:
                out.append(
                    f'<div class="sgroup"><div class="slabel">{esc(label)}</div><div class="strip sm">'
                    f"{''.join(figs)}</div></div>"
                )
        return f'<div class="samples">{"".join(out)}</div>'


# ---------------------------------------------------------------------------------------------- page
@functools.cache
def _asset(name: str) -> str:
    """A file of ``dataflow/report/assets`` (the page template, its stylesheet and script)."""
    return (resources.files("dataflow.report") / "assets" / name).read_text(encoding="utf-8")


def _box(value: Any) -> tuple[float, float, float, float] | None:
    """``[x0, y0, x1, y1]`` as four finite numbers with x0 <= x1 and y0 <= y1, else None."""
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) != 4:
        return None
    try:
        x0, y0, x1, y1 = (float(t) for t in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(t) for t in (x0, y0, x1, y1)) or x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1, y1


def _is_source(value: Any) -> bool:
    return isinstance(value, (str, dict)) and bool(value)


def _as_number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _image_size(source: Any, base: str | None) -> tuple[int, int] | None:
    """The displayed (width, height) of an image from its header, or None when it cannot be read."""
    from dataflow.media import image_info

    try:
        info = image_info(source, base, check_truncation=False)
    except Exception:  # a report never fails on one image
        return None
    return int(info["width"]), int(info["height"])
