"""Heatmaps for the terminal (rich) and for PNG files (matplotlib, Agg), and row clustering.

The terminal form prints every cell as a number (value x 100, `·` for an exact zero) on a
background shade, so it stays readable without colour (pipes, logs) and fits a given width:
columns that do not fit are summarised by their groups (or equal bins), and the caller is told
so. Callers with many rows cluster them first (`cluster_rows`) and say so.
"""

from __future__ import annotations

import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from rich.style import Style
from rich.text import Text

from cft.files.atomic import atomic_write_with

CELL = 4  # characters per cell: " 100", "  83", " 1.5", "   ·"


@dataclass
class Heat:
    values: np.ndarray  # [R, C]
    row_labels: list[str]
    col_labels: list[str]
    row_groups: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, end) over rows
    col_groups: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, end) over columns
    extra: list[tuple[str, list[str]]] = field(default_factory=list)  # right-hand text columns (header, cells)
    vmax: float = 1.0
    col_reduce: str = "sum"  # how columns are summarised when they do not fit: sum (routes) or mean


def _rgb(value: float, vmax: float) -> tuple[int, int, int]:
    from matplotlib import colormaps  # matplotlib costs ~0.5 s to import: only PNG and colour paths pay it

    x = 0.0 if vmax <= 0 else min(max(value / vmax, 0.0), 1.0) ** 0.5  # square-root shading, as in the PNGs
    r, g, b, _ = colormaps["viridis"](x)
    return int(r * 255), int(g * 255), int(b * 255)


def _cell(value: float, vmax: float) -> Text:
    if value == 0:
        return Text("   ·", style=Style(color="grey50"))
    shown = 100.0 * value / vmax if vmax > 0 else 0.0
    r, g, b = _rgb(value, vmax)
    light = 0.299 * r + 0.587 * g + 0.114 * b > 140
    if shown >= 9.95:
        text = f"{min(shown, 999):4.0f}"
    else:  # small values keep a decimal: a 1.5% route to another bundle must not read as 0
        text = f"{shown:4.1f}" if shown >= 0.05 else " 0.0"
    return Text(text, style=Style(bgcolor=f"rgb({r},{g},{b})", color="black" if light else "white"))


def _fit(label: str, width: int) -> str:
    return label if len(label) <= width else label[: max(width - 1, 0)] + "…"


def spaced_ticks(ticks: list[tuple[float, str]], min_gap: float) -> list[tuple[float, str]]:
    """The ticks (position, label), in position order, that lie at least `min_gap` after the last one
    kept: labels of small neighbouring clusters would otherwise print over each other."""
    kept: list[tuple[float, str]] = []
    for position, label in sorted(ticks):
        if not kept or position - kept[-1][0] >= min_gap:
            kept.append((position, label))
    return kept


def cluster_rows(features: np.ndarray, max_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical clustering (average linkage) of rows into at most `max_clusters` groups.

    Returns (order, cluster): a row order that keeps clusters contiguous (dendrogram leaves),
    and each row's cluster number 0..k-1, numbered in that order."""
    n = features.shape[0]
    if n <= 1 or max_clusters >= n:
        return np.arange(n), np.arange(n)
    from scipy.cluster.hierarchy import ClusterWarning, fcluster, leaves_list, linkage

    x = np.asarray(features, dtype=np.float64)
    if np.allclose(x, x[0]):
        return np.arange(n), np.zeros(n, dtype=int)
    with warnings.catch_warnings():
        # rows of a symmetric prior are features here, not a distance matrix, whatever scipy guesses
        warnings.simplefilter("ignore", ClusterWarning)
        tree = linkage(x, method="average", metric="euclidean")
    raw = fcluster(tree, t=max(max_clusters, 1), criterion="maxclust")
    leaves = leaves_list(tree)
    # order clusters by where their first leaf appears; rows within a cluster by leaf order
    first = {}
    for pos, row in enumerate(leaves):
        first.setdefault(raw[row], pos)
    rank = {c: i for i, c in enumerate(sorted(first, key=first.get))}
    cluster = np.array([rank[c] for c in raw])
    position = np.empty(n, dtype=int)
    position[leaves] = np.arange(n)
    order = np.lexsort((position, cluster))
    return order, cluster


def summarise_columns(heat: Heat, width: int) -> tuple[Heat, Optional[str]]:
    """The heatmap itself when it fits `width`, else one with columns summarised (and a note)."""
    if _width(heat) <= width:
        return heat, None
    reduce = np.sum if heat.col_reduce == "sum" else np.mean
    verb = "summed" if heat.col_reduce == "sum" else "averaged"
    if len(heat.col_groups) > 1:
        groups = heat.col_groups
        values = np.stack([reduce(heat.values[:, a:b], axis=1) for _, a, b in groups], axis=1)
        labels = [_fit(name, CELL) for name, _, _ in groups]
        candidate = Heat(values, heat.row_labels, labels, heat.row_groups, [], heat.extra, heat.vmax if heat.col_reduce == "mean" else max(heat.vmax, float(values.max(initial=0))), heat.col_reduce)
        if _width(candidate) <= width:
            legend = ", ".join(f"{_fit(name, CELL)}={name}" for name, _, _ in groups)
            return candidate, f"{heat.values.shape[1]} columns do not fit in {width} characters: each group's columns are {verb} ({legend})."
    fixed = _width(Heat(heat.values[:, :0], heat.row_labels, [], heat.row_groups, [], heat.extra))
    bins = max(1, (width - fixed) // CELL)
    edges = np.linspace(0, heat.values.shape[1], bins + 1).round().astype(int)
    spans = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    values = np.stack([reduce(heat.values[:, a:b], axis=1) for a, b in spans], axis=1)
    vmax = heat.vmax if heat.col_reduce == "mean" else max(heat.vmax, float(values.max(initial=0)))
    candidate = Heat(values, heat.row_labels, [str(i) for i in range(len(spans))], heat.row_groups, [], heat.extra, vmax, heat.col_reduce)
    note = f"{heat.values.shape[1]} columns do not fit in {width} characters: shown as {len(spans)} bins of consecutive columns, {verb} (--json has every value)."
    return candidate, note


def _label_width(heat: Heat) -> int:
    return min(max([len(r) for r in heat.row_labels] + [4]), 18)


def _extra_widths(heat: Heat) -> list[int]:
    return [max([len(h)] + [len(c) for c in cells]) for h, cells in heat.extra]


def _width(heat: Heat) -> int:
    separators = max(len(heat.col_groups) - 1, 0)
    return _label_width(heat) + 1 + heat.values.shape[1] * CELL + separators + sum(w + 1 for w in _extra_widths(heat))


def render_heat(heat: Heat) -> list[Text]:
    """Lines of text: group header, column labels, then rows (with row-group rules)."""
    lw = _label_width(heat)
    ew = _extra_widths(heat)
    cols = heat.values.shape[1]
    boundaries = {b for _, _, b in heat.col_groups[:-1]} if heat.col_groups else set()
    lines: list[Text] = []

    def row_prefix(label: str) -> Text:
        return Text(f"{_fit(label, lw):<{lw}} ")

    if heat.col_groups:
        line = Text(" " * (lw + 1))
        for gi, (name, a, b) in enumerate(heat.col_groups):
            span = (b - a) * CELL
            line.append(f"{_fit(name, span):^{span}}", style="bold")
            if gi < len(heat.col_groups) - 1:
                line.append("│")
        lines.append(line)
    header = Text(" " * (lw + 1))
    for j in range(cols):
        if j in boundaries:
            header.append("│")
        header.append(f"{_fit(heat.col_labels[j], CELL):>{CELL}}", style="dim")
    for (h, _), w in zip(heat.extra, ew):
        header.append(f" {h:>{w}}", style="dim")
    lines.append(header)
    groups = heat.row_groups or [("", 0, heat.values.shape[0])]
    total_width = _width(heat)
    for name, a, b in groups:
        if heat.row_groups and len(heat.row_groups) > 1:
            rule = f"── {name} "
            lines.append(Text(_fit(rule + "─" * max(total_width - len(rule), 0), total_width), style="dim"))
        for i in range(a, b):
            line = row_prefix(heat.row_labels[i])
            for j in range(cols):
                if j in boundaries:
                    line.append("│", style="dim")
                line.append_text(_cell(float(heat.values[i, j]), heat.vmax))
            for (_, cells), w in zip(heat.extra, ew):
                line.append(f" {cells[i]:>{w}}")
            lines.append(line)
    return lines


@dataclass
class Panel:
    values: np.ndarray
    title: str
    row_labels: Optional[list[str]]  # None: too many rows for labels
    col_labels: list[str]
    row_groups: list[tuple[str, int, int]] = field(default_factory=list)
    col_groups: list[tuple[str, int, int]] = field(default_factory=list)
    row_ticks: Optional[list[tuple[float, str]]] = None  # custom ticks (e.g. cluster centres)
    vmax: float = 1.0
    colorbar_label: str = ""
    gamma: float = 0.5  # colour scale: value ** gamma, so that small weights stay visible


def save_png(
    path: str | Path, panels: Sequence[Panel], *, title: str, history: Optional[dict] = None, note: str = "", bars: Optional[dict] = None
) -> None:
    """One heatmap panel per entry (with group boundaries and a colour bar), plus, when given,
    line plots of `history` = {"epochs": [...], "series": {name: {label: [...]}}} and a bar chart
    `bars` = {"title", "labels" (or None), "values", "groups": [(name, start, end)]}."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazy: see _rgb
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    n = len(panels)
    rows = max(p.values.shape[0] for p in panels)
    cols_per = max(p.values.shape[1] for p in panels)
    label_len = max((len(s) for p in panels for s in (p.row_labels or [])), default=8)
    panel_w = max(2.8, 0.32 * cols_per + 1.2)
    panel_h = max(3.0, min(0.2 * rows + 1.5, 16.0))
    ncols = min(n, max(1, int(16 // (panel_w + 0.08 * label_len + 0.6)) or 1))
    nrows = int(np.ceil(n / ncols))
    hist_rows = (1 if history else 0) + (1 if bars else 0)
    fig_w = ncols * (panel_w + 0.08 * label_len + 0.9)
    fig_h = nrows * panel_h + hist_rows * 3.2 + 1.0 + (0.3 if note else 0)
    fig_w = max(fig_w, 6.5)
    wrap = max(40, int(fig_w * 13))  # characters per line of a 10-point title
    heading = "\n".join(textwrap.wrap(title, wrap) + (textwrap.wrap(note, int(wrap * 1.1)) if note else []))
    fig = Figure(figsize=(fig_w, fig_h + 0.18 * heading.count("\n")), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(nrows + hist_rows, ncols, height_ratios=[panel_h] * nrows + [3.2] * hist_rows)
    extra_row = nrows
    fig.suptitle(heading, fontsize=10)
    for k, panel in enumerate(panels):
        ax = fig.add_subplot(grid[k // ncols, k % ncols])
        norm = PowerNorm(gamma=panel.gamma, vmin=0.0, vmax=panel.vmax)
        image = ax.imshow(panel.values, aspect="auto", cmap="viridis", norm=norm, interpolation="nearest")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xticks(range(len(panel.col_labels)))
        ax.set_xticklabels(panel.col_labels, fontsize=6, rotation=90 if max((len(c) for c in panel.col_labels), default=0) > 3 else 0)
        if panel.row_labels is not None:
            ax.set_yticks(range(len(panel.row_labels)))
            ax.set_yticklabels(panel.row_labels, fontsize=max(4, min(7, int(260 / max(len(panel.row_labels), 1)))))
        elif panel.row_ticks:
            size = max(4, min(7, int(260 / max(len(panel.row_ticks), 1))))
            # about 0.8 of the panel's height is the image: rows per inch there, times a label's height
            gap = panel.values.shape[0] / (0.8 * panel_h) * size * 1.3 / 72
            ticks = spaced_ticks(panel.row_ticks, gap)
            ax.set_yticks([t for t, _ in ticks])
            ax.set_yticklabels([s for _, s in ticks], fontsize=size)
        else:
            ax.set_yticks([])
        for _, _, end in panel.col_groups[:-1]:
            ax.axvline(end - 0.5, color="white", linewidth=1.6)
        for _, _, end in panel.row_groups[:-1]:
            ax.axhline(end - 0.5, color="white", linewidth=1.6)
        if len(panel.col_groups) > 1:
            top = ax.secondary_xaxis("top")
            top.set_xticks([(a + b - 1) / 2 for _, a, b in panel.col_groups])
            top.set_xticklabels([name for name, _, _ in panel.col_groups], fontsize=7)
            top.tick_params(length=0)
        if len(panel.row_groups) > 1:
            right = ax.secondary_yaxis("right")
            right.set_yticks([(a + b - 1) / 2 for _, a, b in panel.row_groups])
            right.set_yticklabels([name for name, _, _ in panel.row_groups], fontsize=7, rotation=90, va="center")
            right.tick_params(length=0)
        bar = fig.colorbar(image, ax=ax, fraction=0.05, pad=0.08 if len(panel.row_groups) > 1 else 0.02)
        bar.ax.tick_params(labelsize=6)
        if panel.colorbar_label:
            bar.set_label(panel.colorbar_label, fontsize=7)
    if bars:
        ax = fig.add_subplot(grid[extra_row, :])
        values = np.asarray(bars["values"], dtype=float)
        colours = np.zeros(len(values), dtype=int)
        for gi, (_, a, b) in enumerate(bars.get("groups") or []):
            colours[a:b] = gi
        ax.bar(np.arange(len(values)), values, color=[f"C{c % 10}" for c in colours], width=0.8)
        for name, a, b in bars.get("groups") or []:
            ax.text((a + b - 1) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        if bars.get("labels"):
            ax.set_xticks(range(len(values)))
            ax.set_xticklabels(bars["labels"], fontsize=max(4, min(7, int(300 / max(len(values), 1)))), rotation=90)
        else:
            ax.set_xticks([])
        ax.set_xlim(-0.6, len(values) - 0.4)
        ax.set_title(bars["title"], fontsize=9, pad=14)
        ax.tick_params(axis="y", labelsize=7)
        extra_row += 1
    if history:
        series = list(history["series"].items())
        sub = grid[extra_row, :].subgridspec(1, len(series))
        for k, (name, lines) in enumerate(series):
            ax = fig.add_subplot(sub[0, k])
            for label, values in lines.items():
                ax.plot(history["epochs"], values, marker="o", markersize=2.5, linewidth=1.2, label=label)
            ax.set_xlabel("epoch", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(name, fontsize=9)
            ax.tick_params(labelsize=7)
            ax.legend(fontsize=6, ncol=2)
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=130))
