"""Image grids for looking at results: each cell shows several versions of one image side by side
(e.g. observation | denoised), cells are laid out row by row. Also reading the PNGs back."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import PIL.Image

from dnnlib.util import save_png

#----------------------------------------------------------------------------
# `columns` are uint8 arrays [N, C, H, W] of equal shape: version k of image n
# is columns[k][n]. A one-pixel gap separates the versions of a cell and a
# two-pixel gap separates cells.

def comparison_grid(columns: Sequence[np.ndarray], cells_per_row: int = 8) -> np.ndarray:
    """An [H, W, C] uint8 image of the cells."""
    stack = np.stack([np.asarray(c, dtype=np.uint8) for c in columns], axis=1)  # [N, K, C, H, W]
    n, k, c, h, w = stack.shape
    per_row = max(1, min(cells_per_row, n))
    rows = -(-n // per_row)
    cell_w = k * w + (k - 1)
    grid = np.full([rows * (h + 2) - 2, per_row * (cell_w + 2) - 2, c], 255, dtype=np.uint8)
    for i in range(n):
        top, left = (i // per_row) * (h + 2), (i % per_row) * (cell_w + 2)
        for j in range(k):
            x0 = left + j * (w + 1)
            grid[top:top + h, x0:x0 + w] = stack[i, j].transpose(1, 2, 0)
    return grid

def save_comparison_grid(path: str, columns: Sequence[np.ndarray], cells_per_row: int = 8) -> None:
    save_png(path, comparison_grid(columns, cells_per_row))

def load_png(path: str) -> np.ndarray:
    """An 8-bit PNG as a [C, H, W] uint8 array (C = 1 or 3, as stored)."""
    with PIL.Image.open(path) as img:
        return np.asarray(img).reshape(img.size[1], img.size[0], -1).transpose(2, 0, 1)

#----------------------------------------------------------------------------
