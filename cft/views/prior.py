"""The prior as a terminal heatmap and as a labelled PNG (large matrices clustered into blocks).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from rich.text import Text

from cft.views.heatmap import Heat, Panel, cluster_rows, render_heat, save_png, summarise_columns


def _cluster_blocks(matrix: np.ndarray, names: Sequence[str], max_rows: int):
    """Order (and, past max_rows, cluster) tasks by their relation rows."""
    order, cluster = cluster_rows(matrix, max_rows)
    if len(set(cluster.tolist())) == len(names):
        return order, [[int(i)] for i in order]
    members = [[int(i) for i in order if cluster[i] == c] for c in range(int(cluster.max()) + 1)]
    return order, members


def prior_terminal(
    matrix: np.ndarray, names: Sequence[str], description: str, width: int, max_rows: int = 40, groups: Sequence[tuple[str, int, int]] = ()
) -> list:
    """Terminal heatmap of a relation matrix; more than `max_rows` tasks are clustered into blocks."""
    a = np.asarray(matrix, dtype=np.float64)
    t = len(names)
    off = a - np.diag(np.diag(a))
    edges = int((off > 0).sum() // 2)
    lines = [Text(f"{description}: {t} tasks, {edges} of {t * (t - 1) // 2} pairs linked, strongest link {off.max(initial=0):.3f}", style="bold")]
    vmax = float(off.max(initial=0)) or 1.0
    if t > max_rows:
        _, members = _cluster_blocks(off, names, max_rows)
        values = np.array([[off[np.ix_(m, n)].mean() for n in members] for m in members])
        labels = [names[m[0]] if len(m) == 1 else f"{names[m[0]]} +{len(m) - 1}" for m in members]
        cols = [str(i + 1) for i in range(len(members))]
        lines.append(Text(
            f"{t} tasks do not fit: shown as {len(members)} clusters of tasks with similar relations (hierarchical clustering); "
            "a cell is the mean link between two clusters; rows and columns are numbered alike.", style="yellow"))
        w = len(str(len(labels)))
        heat = Heat(values, [f"{i + 1:>{w}} {lab}" for i, lab in enumerate(labels)], cols, vmax=vmax, col_reduce="mean")
    else:
        w = len(str(t))
        heat = Heat(off, [f"{i + 1:>{w}} {n}" for i, n in enumerate(names)], [str(i + 1) for i in range(t)], list(groups), list(groups), vmax=vmax, col_reduce="mean")
    lines.append(Text("cells: link / strongest link x 100 (· = none); the diagonal (self) is left blank; columns numbered as rows", style="dim"))
    heat, note = summarise_columns(heat, width)
    if note:
        lines.append(Text(note, style="yellow"))
    lines.extend(render_heat(heat))
    return lines


def prior_png(
    matrix: np.ndarray, names: Sequence[str], description: str, path: str | Path, max_labels: int = 60, groups: Sequence[tuple[str, int, int]] = ()
) -> None:
    a = np.asarray(matrix, dtype=np.float64)
    off = a - np.diag(np.diag(a))
    t = len(names)
    vmax = float(off.max(initial=0)) or 1.0
    if t > max_labels:
        order, members = _cluster_blocks(off, names, max_labels)
        ordered = off[np.ix_(order, order)]
        ticks, pos = [], 0
        for m in members:
            ticks.append((pos + (len(m) - 1) / 2, names[m[0]] if len(m) == 1 else f"{names[m[0]]} +{len(m) - 1}"))
            pos += len(m)
        panel = Panel(ordered, f"{t} tasks, ordered by hierarchical clustering into {len(members)} clusters; a tick labels a cluster's centre where it fits", None, [], row_ticks=ticks, vmax=vmax, colorbar_label="relation")
    else:
        panel = Panel(off, f"{t} tasks (diagonal left at 0)", list(names), list(names), list(groups), list(groups), vmax=vmax, colorbar_label="relation")
    save_png(path, [panel], title=f"task relation matrix: {description}")
