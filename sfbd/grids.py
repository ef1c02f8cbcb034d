"""Image grids for looking at results: each cell shows several versions of one image side by side
(e.g. original | observation | denoised), cells are laid out row by row. Also choosing the images
to show, reading the PNGs back, and reading the originals of an experiment's observations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np
import PIL.Image

from dnnlib.util import UserError, save_png
from training.dataset import DatasetFiles, read_image

if TYPE_CHECKING:
    from sfbd.observations import ObservationSet

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

# A saved grid says what it is in a PNG text chunk, so that a rerun may replace
# its own picture but no other file (an image of a dataset, say).
GRID_TEXT = {'Software': 'SFBD-EDM comparison grid'}

def save_comparison_grid(path: str, columns: Sequence[np.ndarray], cells_per_row: int = 8) -> None:
    save_png(path, comparison_grid(columns, cells_per_row), text=GRID_TEXT)

def is_comparison_grid(path: str) -> bool:
    """Is `path` a picture that `save_comparison_grid` wrote?"""
    try:
        with PIL.Image.open(path) as img:
            return img.format == 'PNG' and all(img.info.get(k) == v for k, v in GRID_TEXT.items())
    except (OSError, ValueError, PIL.UnidentifiedImageError):
        return False

def load_png(path: str) -> np.ndarray:
    """An 8-bit PNG as a [C, H, W] uint8 array (C = 1 or 3, as stored)."""
    with PIL.Image.open(path) as img:
        return np.asarray(img).reshape(img.size[1], img.size[0], -1).transpose(2, 0, 1)

#----------------------------------------------------------------------------
# Which images to show: `count` of `num_items`, a seeded random choice from
# the whole set (all of them when there are fewer), in index order.

def choose_images(num_items: int, count: int, seed: int) -> list[int]:
    chosen = np.random.default_rng(seed).choice(num_items, size=min(count, num_items), replace=False)
    return sorted(int(i) for i in chosen)

#----------------------------------------------------------------------------
# The originals of observations made by `dataset_tool.py split`, read from the
# split's source dataset by the names the split recorded. For pictures only:
# they are never written into a dataset.

def read_originals(obs: 'ObservationSet', source: str, indices: Sequence[int]) -> np.ndarray:
    """[N, C, H, W] uint8 source images of observations `indices`."""
    names = obs.source_names(list(indices))
    files = DatasetFiles(source)
    try:
        known = set(files.names)
        recorded = (obs.split or {}).get('source')
        images = []
        for name in names:
            if name not in known:
                raise UserError(f'--originals={source}: has no {name}, which the split of --data={obs.path} '
                                f'took from {recorded}; give that split\'s source dataset')
            with files.open(name) as f:
                images.append(read_image(f, files.where(name)).transpose(2, 0, 1))
    finally:
        files.close()
    stack = np.stack(images) if images else np.zeros([0, *obs.image_shape], dtype=np.uint8)
    if list(stack.shape[1:]) != list(obs.image_shape):
        raise UserError(f'--originals={source}: images are {list(stack.shape[1:])} (C, H, W), the observations of '
                        f'--data={obs.path} {list(obs.image_shape)}')
    return stack

#----------------------------------------------------------------------------
