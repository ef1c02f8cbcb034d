"""Process-group set-up for one or several processes, on CUDA (NCCL) or the CPU (gloo).

`python script.py` runs one process with no process group at all; `torchrun` sets RANK,
WORLD_SIZE and LOCAL_RANK and a rendezvous, and `init()` joins it. Nothing here assumes CUDA,
and no fixed port is used: torchrun's --standalone or --rdzv-endpoint chooses it.
"""

from __future__ import annotations

import datetime
import os
import sys
from typing import Callable, TypeVar

import torch
import torch.distributed as torch_dist

from dnnlib.util import UserError

T = TypeVar('T')

#----------------------------------------------------------------------------
# Joining the process group.

def default_device() -> torch.device:
    return torch.device('cuda' if torch.cuda.is_available() else 'cpu')

def resolve_device(name: str | None) -> torch.device:
    """The device named by --device ('cuda', 'cpu', 'cuda:1', 'mps', None for the default); under
    torchrun each process takes the CUDA device of its local rank. A device that is unknown or not
    present is a UserError naming the option."""
    if name in (None, '', 'auto'):
        device = default_device()
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, ValueError):
            raise UserError(f'--device={name}: not a device; expected cpu, cuda, cuda:N or mps') from None
    if device.type == 'cuda':
        if not torch.cuda.is_available():
            raise UserError(f'--device={name}: CUDA is not available on this machine')
        if device.index is None:
            device = torch.device('cuda', int(os.environ.get('LOCAL_RANK', '0')))
        if device.index >= torch.cuda.device_count():
            raise UserError(f'--device={name}: this machine has {torch.cuda.device_count()} CUDA device(s); '
                            f'cuda:{device.index} is not one of them')
        torch.cuda.set_device(device)
    elif device.type == 'mps':
        if not (hasattr(torch.backends, 'mps') and torch.backends.mps.is_available()):
            raise UserError(f'--device={name}: MPS is not available on this machine')
    elif device.type != 'cpu':
        raise UserError(f'--device={name}: {device.type} devices are not supported; expected cpu, cuda or mps')
    return device

def init(device: torch.device | None = None, timeout_minutes: float = 30) -> None:
    """Join the process group set up by torchrun, if any; a no-op for a single process."""
    if get_world_size() <= 1 or torch_dist.is_initialized():
        return
    device = device or default_device()
    backend = 'nccl' if device.type == 'cuda' else 'gloo'
    torch_dist.init_process_group(backend=backend, init_method='env://',
                                  timeout=datetime.timedelta(minutes=timeout_minutes))

def deinit() -> None:
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()

#----------------------------------------------------------------------------
# Queries that also work without a process group.

def get_rank() -> int:
    return torch_dist.get_rank() if torch_dist.is_initialized() else int(os.environ.get('RANK', '0'))

def get_world_size() -> int:
    return torch_dist.get_world_size() if torch_dist.is_initialized() else int(os.environ.get('WORLD_SIZE', '1'))

def barrier() -> None:
    if torch_dist.is_initialized():
        torch_dist.barrier()

def print0(*args, **kwargs) -> None:
    if get_rank() == 0:
        print(*args, **kwargs)
        sys.stdout.flush()

def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes in place (no-op for one process)."""
    if torch_dist.is_initialized():
        torch_dist.all_reduce(tensor)
    return tensor

def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    if torch_dist.is_initialized():
        torch_dist.broadcast(tensor, src=src)
    return tensor

#----------------------------------------------------------------------------
# Collectives that let a failure on one rank end every rank with one line.

def any_rank(flag: bool) -> bool:
    """True on every rank when any rank says True (collective). The tensor lives where the backend
    wants it: on this process's CUDA device for NCCL, else on the CPU."""
    if not torch_dist.is_initialized() or get_world_size() == 1:
        return flag
    nccl = torch_dist.get_backend() == 'nccl'
    device = torch.device('cuda', torch.cuda.current_device()) if nccl else torch.device('cpu')
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    return all_reduce_sum(t).item() > 0

def rank0_first(load: Callable[[], T], what: str) -> T:
    """`load()` on rank 0 first (a download fills the cache once), then on the others. When it fails
    on rank 0, the others stop with a UserError instead of waiting at a barrier that never comes."""
    result = rank0_only(load, f'to load {what}')
    return result if get_rank() == 0 else load()

def rank0_only(func: Callable[[], T], what: str) -> T | None:
    """`func()` on rank 0 alone (checks of what only rank 0 writes); its result there, None on the
    others. When it fails, the others stop too, with one line pointing to rank 0's message. Without a
    process group (a library call under torchrun that did not join one) there is nothing to wait for."""
    if get_rank() == 0:
        try:
            result = func()
        except BaseException:
            any_rank(False)
            raise
        any_rank(True)
        return result
    if torch_dist.is_initialized() and not any_rank(False):
        raise UserError(f'rank 0 failed {what}; see its message')
    return None

#----------------------------------------------------------------------------
