"""Charts as data, drawn as SVG by hand (no dependency; inline in HTML pages, hover text via SVG
<title>) or as PNG with matplotlib (the optional extra `apex-plan[plot]`).

Why hand-written SVG: a report must open offline with nothing outside the file, draw in well under
a second, and print sharply; a few hundred lines of SVG do that with no CDN, no browser and no
heavy import. PNG needs a rasteriser, so there matplotlib (Agg backend) draws the same `Chart`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

from apex_plan.errors import InputError

# Okabe & Ito's colour-blind-safe palette ("Color Universal Design", 2008), black last
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")


@dataclass(frozen=True)
class Series:
    """Points or a polyline; `tips` is the hover text of each point, `names` a visible label."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    kind: str = "points"            # points | line | step
    color: str = PALETTE[0]
    marker: str = "circle"          # circle | diamond (points only)
    tips: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    dashed: bool = False


@dataclass(frozen=True)
class Rule:
    """A reference line across the plot, e.g. an SLO limit."""

    axis: str                       # x: vertical line at x=value; y: horizontal line
    value: float
    label: str
    color: str = "#B00020"


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: tuple[Series, ...] = ()
    rules: tuple[Rule, ...] = ()
    y_max: float | None = None
    x_max: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Bars:
    """Horizontal stacked bars: one row per category, one segment per part."""

    title: str
    unit: str
    categories: tuple[str, ...]
    parts: tuple[tuple[str, tuple[float, ...]], ...]    # (part label, value per category)
    totals: tuple[float | None, ...] = field(default=())  # optional outline length per category
    show_values: bool = False                              # write each bar's total at its end


# ------------------------------------------------------------------------------------------------
def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round ticks (1, 2, 2.5, 5 x 10^k) covering [lo, hi]."""
    span = hi - lo
    if span <= 0:
        span = abs(hi) or 1.0
    raw = span / n
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * mag >= raw * 0.999)
    first = math.floor(lo / step + 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-6 and len(ticks) < 50:
        ticks.append(round(t, 12))
        t += step
    if ticks[-1] < hi - 1e-12:
        ticks.append(round(t, 12))
    return ticks


def _num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-3:
        return f"{v:.3g}"
    return f"{v:.4g}"


def _bounds(chart: Chart) -> tuple[list[float], list[float]]:
    xs = [v for s in chart.series for v in s.x if math.isfinite(v)]
    ys = [v for s in chart.series for v in s.y if math.isfinite(v)]
    xs += [r.value for r in chart.rules if r.axis == "x"]
    ys += [r.value for r in chart.rules if r.axis == "y"]
    x_hi = chart.x_max if chart.x_max is not None else (max(xs) if xs else 1.0)
    y_hi = chart.y_max if chart.y_max is not None else (max(ys) * 1.05 if ys else 1.0)
    return nice_ticks(0.0, x_hi or 1.0), nice_ticks(0.0, y_hi or 1.0)


def _free_spot(placed: list[tuple[float, float]], x: float, y: float, step: float = 12.0) -> tuple[float, float]:
    """A label position near (x, y) that no earlier label occupies (coincident points stack upwards)."""
    while any(abs(x - px) < 24 and abs(y - py) < step for px, py in placed):
        y -= step
    placed.append((x, y))
    return x, y


def svg(chart: Chart, width: int = 560, height: int = 380, standalone: bool = False) -> str:
    """One chart as an SVG element (with the xmlns declaration when `standalone`)."""
    legend = [s for s in chart.series if s.label]
    rows = (len(legend) + 2) // 3
    left, right, top, bottom = 64, 16, 34, 48 + (14 if chart.note else 0) + 16 * rows
    pw, ph = width - left - right, height - top - bottom
    xt, yt = _bounds(chart)
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    def px(x: float) -> float:
        return left + (min(max(x, x0), x1) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return top + ph - (min(max(y, y0), y1) - y0) / (y1 - y0) * ph

    ns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    out = [f'<svg{ns} class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">{escape(chart.title)}</text>']
    for t in xt:
        out.append(f'<line x1="{px(t):.1f}" y1="{top}" x2="{px(t):.1f}" y2="{top + ph}" stroke="#e5e5e5"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 15}" text-anchor="middle">{_num(t)}</text>')
    for t in yt:
        out.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + pw}" y2="{py(t):.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_num(t)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(f'<text x="{left + pw / 2}" y="{top + ph + 32}" text-anchor="middle">{escape(chart.x_label)}</text>')
    out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
               f'{escape(chart.y_label)}</text>')
    for r in chart.rules:
        if r.axis == "x":
            x = px(r.value)
            out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + ph}" stroke="{r.color}" '
                       f'stroke-dasharray="6 4" stroke-width="1.5"><title>{escape(r.label)}</title></line>'
                       f'<text x="{x - 4:.1f}" y="{top + ph - 6}" text-anchor="end" fill="{r.color}">{escape(r.label)}</text>')
        else:
            y = py(r.value)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="{r.color}" '
                       f'stroke-dasharray="6 4" stroke-width="1.5"><title>{escape(r.label)}</title></line>'
                       f'<text x="{left + pw - 4}" y="{y - 4:.1f}" text-anchor="end" fill="{r.color}">{escape(r.label)}</text>')
    placed: list[tuple[float, float]] = []
    for s in chart.series:
        if s.kind in ("line", "step") and s.x:
            pts = []
            for i, (x, y) in enumerate(zip(s.x, s.y)):
                if s.kind == "step" and i:
                    pts.append(f"{px(x):.1f},{py(s.y[i - 1]):.1f}")
                pts.append(f"{px(x):.1f},{py(y):.1f}")
            dash = ' stroke-dasharray="4 3"' if s.dashed else ""
            out.append(f'<polyline class="series" fill="none" stroke="{s.color}" stroke-width="2"{dash} '
                       f'points="{" ".join(pts)}"><title>{escape(s.label)}</title></polyline>')
        elif s.kind == "points":
            for i, (x, y) in enumerate(zip(s.x, s.y)):
                if not (math.isfinite(x) and math.isfinite(y)):
                    continue
                cx, cy = px(x), py(y)
                tip = escape(s.tips[i]) if i < len(s.tips) else escape(f"{s.label}: ({_num(x)}, {_num(y)})")
                if s.marker == "diamond":
                    shape = (f'<path d="M{cx:.1f} {cy - 8:.1f} L{cx + 8:.1f} {cy:.1f} L{cx:.1f} {cy + 8:.1f} '
                             f'L{cx - 8:.1f} {cy:.1f} Z" fill="{s.color}" stroke="#000" stroke-width="1.2"/>')
                else:
                    shape = (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{s.color}" fill-opacity="0.8" '
                             f'stroke="#333" stroke-width="0.6"/>')
                label = ""
                if i < len(s.names) and s.names[i]:
                    lx, ly = _free_spot(placed, cx + 10, cy - 6)
                    label = f'<text x="{lx:.1f}" y="{ly:.1f}" font-weight="bold">{escape(s.names[i])}</text>'
                out.append(f'<g class="pt">{shape}{label}<title>{tip}</title></g>')
    # legend: three entries a row under the x-axis label, then the note
    col_w = pw / 3
    for k, s in enumerate(legend):
        lx, ly = left + (k % 3) * col_w, top + ph + 44 + (k // 3) * 16
        if s.kind == "points":
            mark = (f'<circle cx="{lx + 6}" cy="{ly + 4}" r="4.5" fill="{s.color}"/>' if s.marker == "circle" else
                    f'<path d="M{lx + 6} {ly - 3} L{lx + 13} {ly + 4} L{lx + 6} {ly + 11} L{lx - 1} {ly + 4} Z" '
                    f'fill="{s.color}" stroke="#000"/>')
        else:
            dash = ' stroke-dasharray="4 3"' if s.dashed else ""
            mark = f'<line x1="{lx}" y1="{ly + 4}" x2="{lx + 14}" y2="{ly + 4}" stroke="{s.color}" stroke-width="2"{dash}/>'
        out.append(f'{mark}<text x="{lx + 20}" y="{ly + 8}">{escape(s.label[:32])}</text>')
    if chart.note:
        out.append(f'<text x="{left}" y="{height - 6}" font-size="9" fill="#555">{escape(chart.note)}</text>')
    out.append("</svg>")
    return "".join(out)


def svg_row(charts: list[Chart], width: int = 560, height: int = 380) -> str:
    """Charts side by side in one standalone SVG document (for `--plot FILE.svg`)."""
    inner = []
    for i, c in enumerate(charts):
        inner.append(f'<g transform="translate({i * width} 0)">{svg(c, width, height)}</g>')
    total = width * len(charts)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="{total}" '
            f'height="{height}" viewBox="0 0 {total} {height}">{"".join(inner)}</svg>\n')


def bars_svg(b: Bars, width: int = 560, bar_h: int = 22) -> str:
    """Horizontal stacked bars with a legend; each segment's hover text gives its value."""
    # label column wide enough for the longest label (about 6 px per character at 11 px), within limits
    left, right, top = int(min(380, max(120, 6 * max((len(c) for c in b.categories), default=10) + 16))), 50, 34
    n = len(b.categories)
    legend_h = 20
    height = top + n * (bar_h + 10) + 30 + legend_h
    pw = width - left - right
    totals = [sum(v[i] for _, v in b.parts) for i in range(n)]
    outline = [b.totals[i] if i < len(b.totals) and b.totals[i] else 0.0 for i in range(n)]
    hi = max(totals + outline + [1e-9])
    ticks = nice_ticks(0.0, hi, 5)
    scale = pw / ticks[-1]
    out = [f'<svg class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'font-family="Helvetica, Arial, sans-serif" font-size="11">',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
           f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(b.title)}</text>']
    axis_y = top + n * (bar_h + 10)
    for t in ticks:
        x = left + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{axis_y}" stroke="#e5e5e5"/>'
                   f'<text x="{x:.1f}" y="{axis_y + 14}" text-anchor="middle">{_num(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{axis_y + 28}" text-anchor="middle">{escape(b.unit)}</text>')
    for i, cat in enumerate(b.categories):
        y = top + i * (bar_h + 10)
        out.append(f'<text x="{left - 6}" y="{y + bar_h / 2 + 4}" text-anchor="end">{escape(cat[:60])}</text>')
        x = left
        for j, (label, vals) in enumerate(b.parts):
            w = vals[i] * scale
            if w <= 0:
                continue
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{PALETTE[j % len(PALETTE)]}">'
                       f'<title>{escape(cat)}: {escape(label)} {_num(vals[i])} {escape(b.unit)}</title></rect>')
            x += w
        if b.show_values:
            out.append(f'<text x="{x + 4:.1f}" y="{y + bar_h / 2 + 4}">{_num(totals[i])}</text>')
        if outline[i]:
            out.append(f'<rect x="{left}" y="{y - 2}" width="{outline[i] * scale:.1f}" height="{bar_h + 4}" '
                       f'fill="none" stroke="#000" stroke-dasharray="3 2"><title>{escape(cat)}: total '
                       f'{_num(outline[i])} {escape(b.unit)}</title></rect>')
    lx = 8
    ly = height - 10
    for j, (label, _) in enumerate(b.parts):
        out.append(f'<rect x="{lx}" y="{ly - 9}" width="10" height="10" fill="{PALETTE[j % len(PALETTE)]}"/>'
                   f'<text x="{lx + 14}" y="{ly}">{escape(label)}</text>')
        lx += 14 + 7 * len(label) + 14
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------------------
def png(charts: list[Chart], path: str | Path, width_in: float = 6.0, height_in: float = 4.6) -> None:
    """Draw the charts side by side to a PNG with matplotlib's Agg backend (no display needed)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot", None, "PNG output needs matplotlib, which is not installed",
                         "pip install 'apex-plan[plot]', or write an .svg file instead") from None
    fig, axes = plt.subplots(1, len(charts), figsize=(width_in * len(charts), height_in), squeeze=False)
    for ax, c in zip(axes[0], charts):
        xt, yt = _bounds(c)
        for s in c.series:
            if s.kind == "points":
                ax.scatter(s.x, s.y, c=s.color, marker="D" if s.marker == "diamond" else "o",
                           s=70 if s.marker == "diamond" else 30, edgecolors="#333", linewidths=0.6, label=s.label or "_nolegend_",
                           zorder=3)
                spots: list[tuple[float, float]] = []
                for x, y, name in zip(s.x, s.y, s.names):
                    if name:
                        near = sum(1 for sx, sy in spots if abs(sx - x) <= 0.03 * abs(x) and abs(sy - y) <= 0.03 * abs(y))
                        dy = 5 - 10 * near
                        spots.append((x, y))
                        ax.annotate(name, (x, y), xytext=(6, dy), textcoords="offset points", fontsize=8,
                                    fontweight="bold")
            else:
                ax.plot(s.x, s.y, color=s.color, lw=2, ls="--" if s.dashed else "-", label=s.label or "_nolegend_",
                        drawstyle="steps-post" if s.kind == "step" else "default")
        for r in c.rules:
            if r.axis == "x":
                ax.axvline(r.value, color=r.color, ls="--", lw=1.5)
                ax.annotate(r.label, (r.value, yt[0]), xytext=(-4, 6), textcoords="offset points",
                            ha="right", color=r.color, fontsize=8)
            else:
                ax.axhline(r.value, color=r.color, ls="--", lw=1.5)
                ax.annotate(r.label, (xt[-1], r.value), xytext=(-4, 4), textcoords="offset points",
                            ha="right", color=r.color, fontsize=8)
        ax.set_xlim(xt[0], xt[-1])
        ax.set_ylim(yt[0], yt[-1])
        ax.set_title(c.title, fontsize=10, loc="left", fontweight="bold")
        ax.set_xlabel(c.x_label)
        ax.set_ylabel(c.y_label)
        ax.grid(color="#e5e5e5")
        if any(s.label for s in c.series):
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_plot(charts: list[Chart], path: str) -> None:
    """`--plot FILE.svg|png`: the charts side by side, format by suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".svg", ".png"):
        raise InputError("--plot", None, f"unknown image type '{suffix or path}'", "name the file .svg or .png")
    try:
        if suffix == ".svg":
            Path(path).write_text(svg_row(charts))
        else:
            png(charts, path)
    except OSError as e:
        raise InputError(path, None, f"cannot write: {e.strerror}", "choose a writable --plot path") from None
