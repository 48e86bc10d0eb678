"""Inline SVG histograms drawn by hand: stacked bars (kept / rejected here / rejected elsewhere) and
threshold lines."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

import numpy as np

from dataflow.report.cache import Threshold, fmt_number

COLORS = ("#4c78a8", "#e45756", "#b8b8b8")  # kept, rejected by a filter on this column, rejected by another step
LABELS = ("kept", "rejected by this threshold's step", "rejected at another step")


@dataclass
class Axis:
    lo: float
    hi: float
    edges: np.ndarray
    integer: bool
    clipped_low: bool
    clipped_high: bool


def choose_axis(values: np.ndarray, thresholds: list[Threshold], bins: int = 40) -> Axis:
    """Bin edges over the data (central 99% when the tails are far out), widened to show nearby thresholds."""
    vmin, vmax = float(values.min()), float(values.max())
    lo, hi = vmin, vmax
    if len(values) >= 200:
        qlo, qhi = (float(q) for q in np.quantile(values, [0.005, 0.995]))
        if qhi > qlo and (vmax - vmin) > 4 * (qhi - qlo):
            lo, hi = qlo, qhi
    span = hi - lo
    for t in thresholds:
        # a threshold far outside the data would squash the bars; it is drawn at the edge instead
        if lo - 2 * max(span, abs(lo) * 0.1, 1e-12) <= t.value <= hi + 2 * max(span, abs(hi) * 0.1, 1e-12):
            lo, hi = min(lo, t.value), max(hi, t.value)
    integer = bool(np.all(np.equal(np.mod(values[:100_000], 1), 0))) and (hi - lo) <= bins
    if integer:
        edges = np.arange(math.floor(lo) - 0.5, math.ceil(hi) + 1.0, 1.0)
    elif hi > lo:
        edges = np.linspace(lo, hi, bins + 1)
    else:
        pad = abs(lo) * 0.05 or 0.5
        edges = np.linspace(lo - pad, hi + pad, 3)
    return Axis(float(edges[0]), float(edges[-1]), edges, integer, vmin < edges[0], vmax > edges[-1])


def histogram_svg(
    parts: list[np.ndarray], thresholds: list[Threshold], column: str, width: int = 400, height: int = 150
) -> str:
    """Stacked histogram of ``parts`` (finite values per status) with threshold lines."""
    allv = np.concatenate(parts) if parts else np.empty(0)
    if not len(allv):
        return '<p class="muted">no values</p>'
    axis = choose_axis(allv, thresholds)
    nb = len(axis.edges) - 1
    counts = np.stack(
        [
            np.histogram(np.clip(p, axis.lo, axis.hi), bins=axis.edges)[0] if len(p) else np.zeros(nb, dtype=np.int64)
            for p in parts
        ]
    )
    total = counts.sum(axis=0)
    top = max(int(total.max()), 1)
    ml, mr, mt, mb = 38, 8, 18, 24  # margins: left (y labels), right, top (threshold labels), bottom (x labels)
    pw, ph = width - ml - mr, height - mt - mb
    bw = pw / nb
    w = max(min(bw - 1, 36.0), 1.0)  # a few integer bins stay bars, not blocks

    def x_of(v: float) -> float:
        return ml + (v - axis.lo) / (axis.hi - axis.lo) * pw

    out = [
        f'<svg class="hist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{html.escape("histogram of " + column, quote=True)}">'
    ]
    out.append(f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" class="ax"/>')
    out.append(f'<text x="{ml - 4}" y="{mt + 4}" class="yl">{top}</text>')
    out.append(f'<text x="{ml - 4}" y="{mt + ph}" class="yl">0</text>')
    for i in range(nb):
        if not total[i]:
            continue
        a, b = axis.edges[i], axis.edges[i + 1]
        rng = f"{fmt_number(a + 0.5)}" if axis.integer else f"[{fmt_number(a)}, {fmt_number(b)})"
        if i == 0 and axis.clipped_low:
            rng = f"≤ {fmt_number(b)} (includes values below the axis)"
        if i == nb - 1 and axis.clipped_high:
            rng = f"≥ {fmt_number(a)} (includes values above the axis)"
        tip = ", ".join(
            f"{lab} {int(c)}" for lab, c in zip(("kept", "rejected here", "rejected elsewhere"), counts[:, i]) if c
        )
        y = mt + ph
        out.append(f"<g><title>{html.escape(column)} {html.escape(rng)}: {html.escape(tip)}</title>")
        for k in range(len(parts)):
            c = int(counts[k, i])
            if not c:
                continue
            h = max(c / top * ph, 1.0)
            y -= h
            out.append(
                f'<rect x="{ml + i * bw + 0.5 + (bw - 1 - w) / 2:.1f}" y="{y:.1f}" width="{w:.1f}" '
                f'height="{h:.1f}" fill="{COLORS[k]}"/>'
            )
        out.append("</g>")
    # x labels: the ends and the middle
    for v, anchor in ((axis.lo, "start"), ((axis.lo + axis.hi) / 2, "middle"), (axis.hi, "end")):
        label = fmt_number(
            v + (0.5 if axis.integer and anchor == "start" else -0.5 if axis.integer and anchor == "end" else 0)
        )
        if anchor == "start" and axis.clipped_low:
            label = "≤" + label
        if anchor == "end" and axis.clipped_high:
            label = "≥" + label
        out.append(
            f'<text x="{x_of(v):.1f}" y="{height - 6}" text-anchor="{anchor}" class="xl">{html.escape(label)}</text>'
        )
    for t in thresholds:
        inside = axis.lo <= t.value <= axis.hi
        x = x_of(min(max(t.value, axis.lo), axis.hi))
        label = t.label if inside else (f"{t.label} →" if t.value > axis.hi else f"← {t.label}")
        anchor = "end" if x > ml + pw * 0.7 else "start"
        dx = -3 if anchor == "end" else 3
        out.append(
            f'<g class="thr"><title>{html.escape(f"step {t.step} {t.operator}: {t.param} = {t.value:g}")}'
            f'</title><line x1="{x:.1f}" y1="{mt - 4}" x2="{x:.1f}" y2="{mt + ph}"/>'
            f'<text x="{x + dx:.1f}" y="{mt - 6}" text-anchor="{anchor}">{html.escape(label)}</text></g>'
        )
    out.append("</svg>")
    return "".join(out)
