"""Names of the network snapshots and training states in a run directory, by training position.

As in EDM, a file is named by the thousands of images trained so far, rounded down:
`network-snapshot-000200.pkl` and `training-state-000200.pt` for any position from 200,000 to
200,999 images. Only one position may have that name: when it is already taken by a file of another
position (a stop in the middle of a tick, ticks shorter than 1 kimg), the name also carries the
images past the kimg, `network-snapshot-000200.520.pkl` for 200,520 images (200.520 kimg). No file
ever replaces one of another position. Within one kimg the plain name is the earliest position, so
that ordering names by (kimg, images past it) orders the files by position.
"""

from __future__ import annotations

import os
import re
from typing import Callable

SNAPSHOT_PREFIX, SNAPSHOT_EXT = 'network-snapshot', '.pkl'
STATE_PREFIX, STATE_EXT = 'training-state', '.pt'
_NAME = re.compile(r'^(network-snapshot|training-state)-(\d+)(?:\.(\d{3}))?(\.pkl|\.pt)$')

#----------------------------------------------------------------------------
# Reading names.

def position_key(name: str, prefix: str | None = None) -> tuple[int, int] | None:
    """Sort key of a snapshot or state file name, in training order: (kimg, images past it, or -1
    for the plain name); None for other names (or, with `prefix`, another kind)."""
    m = _NAME.fullmatch(os.path.basename(name))
    if m is None or (prefix is not None and m.group(1) != prefix) or \
            (m.group(4) != (SNAPSHOT_EXT if m.group(1) == SNAPSHOT_PREFIX else STATE_EXT)):
        return None
    return int(m.group(2)), -1 if m.group(3) is None else int(m.group(3))

def file_kimg(name: str) -> int | float | None:
    """The kimg a name states: whole (rounded down) for EDM's plain names, exact for the others."""
    key = position_key(name)
    if key is None:
        return None
    return key[0] if key[1] < 0 else key[0] + key[1] / 1000

def newest(run_dir: str, prefix: str) -> str | None:
    """Path of the file of this kind (SNAPSHOT_PREFIX or STATE_PREFIX) furthest in training, or None."""
    if not os.path.isdir(run_dir):
        return None
    found = [(key, name) for name in os.listdir(run_dir) if (key := position_key(name, prefix)) is not None]
    return os.path.join(run_dir, max(found)[1]) if found else None

def in_order(paths: list[str]) -> list[str]:
    """Snapshot or state paths in training order (names of other forms last, by name)."""
    def order(path: str) -> tuple:
        key = position_key(path)
        return (key is None, key or (0, 0), os.path.basename(path))
    return sorted(paths, key=order)

#----------------------------------------------------------------------------
# Choosing names. A writer keeps one Namer per run directory: it remembers the
# positions of the files it wrote, so that writing a position again (the same
# snapshot twice) keeps its name. A plain name that existed before the writer
# started is taken unless `same_position` says the file is of this position.

class Namer:
    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.written: dict[str, int] = {}  # File name -> position (images) it was written at.

    def path(self, prefix: str, nimg: int, same_position: Callable[[str, int], bool] | None = None) -> str:
        """The path for the file of kind `prefix` at `nimg` images."""
        ext = SNAPSHOT_EXT if prefix == SNAPSHOT_PREFIX else STATE_EXT
        plain = f'{prefix}-{nimg // 1000:06d}{ext}'
        taken = os.path.exists(os.path.join(self.run_dir, plain))
        if taken and plain in self.written:
            taken = self.written[plain] != nimg
        elif taken and same_position is not None:
            taken = not same_position(os.path.join(self.run_dir, plain), nimg)
        name = plain if not taken else f'{prefix}-{nimg // 1000:06d}.{nimg % 1000:03d}{ext}'
        self.written[name] = nimg
        return os.path.join(self.run_dir, name)

#----------------------------------------------------------------------------
