"""Training statistics: scalars reported during a tick, summarised over all processes.

A `Collector` accumulates, for every named statistic, the count, sum and sum of squares of the
values reported to it. `update()` folds those counters together across processes (one
all-reduce) and turns them into the per-tick summaries `{num, mean, std}` that the training loop
prints and appends to `stats.jsonl`.

The training loop owns its collector and reports to it directly. Code that cannot be handed a
collector (a loss or a network deep inside a call) may use the module-level `report()` and
`report0()`, which forward to `default_collector`; that is the only shared state here, and it
is visible by name.

Names follow EDM: `Loss/loss`, `Progress/tick`, `Progress/kimg`, `Timing/sec_per_kimg`,
`Resources/peak_gpu_mem_gb`, ...
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch

from dnnlib.util import EasyDict
from torch_utils import distributed as dist

#----------------------------------------------------------------------------
# The three running moments kept per statistic: count, sum, sum of squares.
# float64 keeps long ticks of float32 losses from losing precision.

_MOMENTS = 3
_DTYPE = torch.float64

def _moments_of(value: Any) -> torch.Tensor | None:
    # Flatten anything tensor-like into [count, sum, sum of squares] on its own
    # device, without a host round trip (no GPU sync per report).
    values = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value, dtype=_DTYPE)
    if values.numel() == 0:
        return None
    values = values.flatten().to(_DTYPE)
    return torch.stack([values.new_full((), float(values.numel())), values.sum(), values.square().sum()])

#----------------------------------------------------------------------------
# The collector.

class Collector:
    """Running moments of named statistics, summarised once per `update()`.

    Args:
        regex:          only names matching this regular expression (fully) are kept.
        keep_previous:  keep the last summary of a statistic that got no values since the
                        previous `update()` (instead of reporting it as empty).
        device:         device used to combine the counters across processes; None picks the
                        CUDA device in use for NCCL and the CPU for gloo.
    """

    def __init__(self, regex: str = '.*', keep_previous: bool = True, device: torch.device | None = None):
        self._regex = re.compile(regex)
        self._keep_previous = keep_previous
        self._device = device
        self._pending: dict[str, dict[torch.device, torch.Tensor]] = {}  # name -> device -> moments
        self._summary: dict[str, tuple[float, float, float]] = {}        # name -> (num, sum, sumsq)

    # Reporting ---------------------------------------------------------------

    def report(self, name: str, value: Any) -> Any:
        """Add the scalars in `value` (tensor, array, list or number) to statistic `name` and
        return `value` unchanged. An empty value only registers the name."""
        if not self._regex.fullmatch(name):
            return value
        per_device = self._pending.setdefault(name, {})
        moments = _moments_of(value)
        if moments is not None:
            if moments.device in per_device:
                per_device[moments.device].add_(moments)
            else:
                per_device[moments.device] = moments
        return value

    def report0(self, name: str, value: Any) -> Any:
        """Like `report()`, but only the values of rank 0 count (other ranks register the name)."""
        self.report(name, value if dist.get_rank() == 0 else [])
        return value

    # Summarising -------------------------------------------------------------

    def _sync_device(self) -> torch.device:
        if self._device is not None:
            return self._device
        if torch.distributed.is_initialized() and torch.distributed.get_backend() == 'nccl':
            return torch.device('cuda', torch.cuda.current_device())
        return torch.device('cpu')

    def update(self) -> None:
        """Combine what every process reported since the last call into the visible summaries.

        Collective: with several processes every rank must call it at the same point. The
        ranks need not have reported the same names; the union is used."""
        names = sorted(self._pending)
        if torch.distributed.is_initialized() and dist.get_world_size() > 1:
            gathered: list[Any] = [None] * dist.get_world_size()
            torch.distributed.all_gather_object(gathered, names)
            names = sorted(set().union(*gathered))

        device = self._sync_device()
        totals = torch.zeros([len(names), _MOMENTS], dtype=_DTYPE, device=device)
        for row, name in enumerate(names):
            for moments in self._pending.get(name, {}).values():
                totals[row] += moments.to(device)
        dist.all_reduce_sum(totals)
        totals = totals.cpu().tolist()

        if not self._keep_previous:
            self._summary.clear()
        for name, (num, total, total_sq) in zip(names, totals):
            if num > 0 or name not in self._summary:
                self._summary[name] = (num, total, total_sq)
        self._pending.clear()

    # Queries (all refer to the summaries of the last `update()`) ---------------

    def names(self) -> list[str]:
        return sorted(self._summary)

    def num(self, name: str) -> int:
        return int(self._summary.get(name, (0, 0, 0))[0])

    def mean(self, name: str) -> float:
        num, total, _ = self._summary.get(name, (0, 0, 0))
        return total / num if num > 0 else float('nan')

    def std(self, name: str) -> float:
        num, total, total_sq = self._summary.get(name, (0, 0, 0))
        if num == 0 or not math.isfinite(total):
            return float('nan')
        if num == 1:
            return 0.0
        mean = total / num
        return float(np.sqrt(max(total_sq / num - mean * mean, 0.0)))

    def as_dict(self) -> EasyDict:
        """`{name: {num, mean, std}}` for every statistic, the layout of a `stats.jsonl` line."""
        return EasyDict({name: EasyDict(num=self.num(name), mean=self.mean(name), std=self.std(name))
                         for name in self.names()})

    def __getitem__(self, name: str) -> float:
        return self.mean(name)

#----------------------------------------------------------------------------
# Module-level reporting for code that has no collector at hand (EDM's
# `training_stats.report`). The training loop drains `default_collector`
# each tick together with its own.

default_collector = Collector()

def report(name: str, value: Any) -> Any:
    return default_collector.report(name, value)

def report0(name: str, value: Any) -> Any:
    return default_collector.report0(name, value)

#----------------------------------------------------------------------------
