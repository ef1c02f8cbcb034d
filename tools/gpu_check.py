"""The summary that scripts/gpu_check.sh writes at its end: bench.py's records as docs/performance.md's
tables and profiles, then train.py's tick lines and its training speed against bench.py's.

Issue 17 asks that the real command keep up with the benchmark: `train.py --fast` on a zip dataset with
its defaults reaches at least 90% of bench.py's fast training figure at the same batch, measured from its
own tick lines. A tick line's sec/kimg covers the tick's steps (the first tick is the first step alone,
compiling included), so the last tick after the first gives the speed of the running loop.
"""

from __future__ import annotations

import os
import re
from typing import Any, Sequence

from tools.bench import format_profile, markdown_tables, read_records

TRAIN_PY_TARGET = 0.9   # train.py's speed against bench.py's, as issue 17 asks.

#----------------------------------------------------------------------------
# train.py's log: the lines that say how the run went, and its speed per tick.

_TICK = re.compile(r'^tick (\d+)\s.*\bsec/kimg ([0-9.]+)')

def run_lines(log_text: str) -> list[str]:
    """The compile announcement, the first step's time and the tick lines of a train.py log."""
    keep = ('tick ', 'Compiling', 'The first step')
    return [line for line in log_text.splitlines() if line.startswith(keep)]

def tick_speeds(log_text: str) -> list[tuple[int, float]]:
    """(tick, images per second) of every tick line after the first."""
    speeds = []
    for line in log_text.splitlines():
        match = _TICK.match(line)
        if match and int(match[1]) > 0 and float(match[2]) > 0:
            speeds.append((int(match[1]), 1000 / float(match[2])))
    return speeds

def train_py_verdict(log_text: str, records: Sequence[dict[str, Any]], batch: int) -> str:
    """One line: train.py's speed at its last tick against bench.py's fast training step at `batch`."""
    speeds = tick_speeds(log_text)
    if not speeds:
        return 'train.py: no tick after the first, so no speed to compare.'
    tick, img_per_s = speeds[-1]
    bench_fast = [r for r in records if r.get('what') == 'train' and r.get('path') == 'fast' and r.get('batch') == batch]
    if not bench_fast:
        return f'train.py: {img_per_s:,.0f} img/s at tick {tick}; bench.py measured no fast training step at batch {batch}.'
    reference = bench_fast[0]['img_per_s']
    share = img_per_s / reference
    verdict = 'reaches' if share >= TRAIN_PY_TARGET else 'falls short of'
    return (f'train.py --fast: {img_per_s:,.0f} img/s at tick {tick}, {share:.0%} of bench.py\'s fast training step at '
            f'batch {batch} ({reference:,.0f} img/s); {verdict} the {TRAIN_PY_TARGET:.0%} that issue 17 asks for.')

#----------------------------------------------------------------------------
# The whole summary, from the files the check wrote (either may be missing:
# a step that ran out of time leaves less).

def check_summary(records_path: str, train_log_path: str, batch: int) -> str:
    """Markdown: train.py's lines and verdict (none when `train_log_path` is empty: the levers), then
    the records' tables and profiles."""
    has_records = os.path.isfile(records_path) and os.path.getsize(records_path) > 0
    records = read_records(records_path, 'records') if has_records else []
    parts = []
    if train_log_path:
        if os.path.isfile(train_log_path):
            with open(train_log_path, encoding='utf-8', errors='replace') as f:
                log_text = f.read()
            parts += ['## train.py --fast', '', '```', *run_lines(log_text), '```', '',
                      train_py_verdict(log_text, records, batch), '']
        else:
            parts += ['## train.py --fast', '', 'train.py wrote no log.', '']
    parts += ['## bench.py records', '']
    if records:
        parts.append(markdown_tables(records))
        parts += ['```\n' + format_profile(r) + '\n```' for r in records if 'profile' in r]
    else:
        parts.append('No records: no bench.py step finished.')
    return '\n'.join(parts) + '\n'

#----------------------------------------------------------------------------
