"""Figures for the reports: matplotlib's object-oriented API on its Agg canvas (no pyplot, no
display, no global state), each figure written atomically as a PNG."""

from __future__ import annotations

import io

from matplotlib.figure import Figure

from dnnlib.util import atomic_write_bytes

#----------------------------------------------------------------------------

def new_figure(width: float = 6.4, height: float = 4.0) -> Figure:
    """A figure of the given size in inches, drawn at 100 dpi."""
    return Figure(figsize=(width, height), dpi=100, layout='constrained')

def save_figure(fig: Figure, path: str, text: dict[str, str] | None = None) -> None:
    """Write the figure as a PNG, atomically; `text` adds PNG text chunks (keyword -> value)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', metadata=text)
    atomic_write_bytes(path, buffer.getvalue())

#----------------------------------------------------------------------------
