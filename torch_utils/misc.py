"""Small training helpers: an endless resumable data sampler, parameter copying, replica checks
and a module summary table."""

from __future__ import annotations

import contextlib
import re
import warnings
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from torch_utils import distributed as dist

#----------------------------------------------------------------------------
# Endless stream of dataset indices, split between processes.
#
# All processes walk the same global stream; the process of rank r keeps the
# positions p with p % num_replicas == r. With shuffling, the stream starts from
# a seeded permutation, and each time a slot is read its item trades places with
# a pseudo-random slot among the last `window_size * len(dataset)` ones, so the
# order drifts from one pass to the next instead of repeating (EDM's scheme).
# The swap offsets are a hash of (seed, position) rather than the draws of a
# stateful generator, so the whole state is the current order and position.
#
# The DataLoader reads ahead of the training loop. `__iter__` therefore works on
# a private copy of the state, and the loop moves the sampler's own state with
# `advance()` as it consumes batches; `state_dict()` is then exactly the point
# the loop has reached, and a run resumed from it sees the same items next.

def _swap_offsets(seed: int, positions: np.ndarray, window: int) -> np.ndarray:
    # A splitmix64-style mix of (seed, position), reduced to [0, window).
    with np.errstate(over='ignore'):
        z = positions.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z ^= np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * np.uint64(0xD1B54A32D192ED03)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    return (z % np.uint64(window)).astype(np.int64)

class InfiniteSampler(torch.utils.data.Sampler):
    """Indices for `torch.utils.data.DataLoader(sampler=...)`, forever.

    Args:
        dataset:       anything with a length (only `len()` is used).
        rank:          this process's rank.
        num_replicas:  number of processes sharing the stream.
        shuffle:       shuffle the order (otherwise 0, 1, 2, ... repeating).
        seed:          seed of the shuffle; every process must use the same one.
        window_size:   fraction of the dataset over which items drift between passes.
    """

    def __init__(self, dataset: Sequence[Any], rank: int = 0, num_replicas: int = 1,
                 shuffle: bool = True, seed: int = 0, window_size: float = 0.5):
        size = len(dataset)
        if size <= 0:
            raise ValueError('InfiniteSampler: the dataset is empty')
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f'InfiniteSampler: rank {rank} is not in [0, {num_replicas})')
        if not 0 <= window_size <= 1:
            raise ValueError(f'InfiniteSampler: window_size={window_size} is not in [0, 1]')
        super().__init__()
        self.size = size
        self.rank = rank
        self.num_replicas = num_replicas
        self.shuffle = shuffle
        self.seed = int(seed)
        self.window = int(np.rint(size * window_size)) if shuffle else 0
        self.order = np.arange(size, dtype=np.int64)
        if shuffle:
            np.random.RandomState(self.seed % (1 << 32)).shuffle(self.order)
        self.position = 0  # Global stream position reached by the training loop.

    # Walk the stream from `position`, permuting `order` in place; returns the
    # indices of this rank met on the way when `collect` is set.
    def _walk(self, order: np.ndarray, position: int, count: int, collect: bool) -> list[int]:
        mine: list[int] = []
        offsets = _swap_offsets(self.seed, np.arange(position, position + count), self.window) \
            if self.window >= 2 else None
        for k in range(count):
            slot = (position + k) % self.size
            if collect and (position + k) % self.num_replicas == self.rank:
                mine.append(int(order[slot]))
            if offsets is not None:
                other = (slot - offsets[k]) % self.size
                order[slot], order[other] = order[other], order[slot]
        return mine

    def __iter__(self) -> Iterator[int]:
        order = self.order.copy()
        position = self.position
        chunk = 1024 * self.num_replicas
        while True:
            yield from self._walk(order, position, chunk, collect=True)
            position += chunk

    def advance(self, num_items: int) -> None:
        """Record that this process consumed `num_items` indices (every process the same number)."""
        steps = num_items * self.num_replicas
        self._walk(self.order, self.position, steps, collect=False)
        self.position += steps

    def state_dict(self) -> dict[str, Any]:
        # Plain data (a tensor and ints) so that torch.load(weights_only=True) reads it.
        return dict(size=self.size, seed=self.seed, shuffle=self.shuffle, window=self.window,
                    position=self.position, order=torch.from_numpy(self.order.copy()))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state['size']) != self.size:
            raise ValueError(f'sampler state is for a dataset of {state["size"]} items, not {self.size}')
        self.seed = int(state['seed'])
        self.shuffle = bool(state['shuffle'])
        self.window = int(state['window'])
        self.position = int(state['position'])
        self.order = state['order'].numpy().astype(np.int64, copy=True)

#----------------------------------------------------------------------------
# torch.load() of plain data only (tensors, numbers, strings, lists, dicts):
# training states, and the storages inside network pickles. Older torch (2.1
# among them) warns on each such load that TypedStorage is deprecated, a line
# on stderr that the user can do nothing about; it is left out here.

def load_plain(f: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='TypedStorage is deprecated', category=UserWarning)
        return torch.load(f, weights_only=True, **kwargs)

#----------------------------------------------------------------------------
# Parameters and buffers.

def named_params_and_buffers(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    return list(module.named_parameters()) + list(module.named_buffers())

@torch.no_grad()
def copy_params_and_buffers(src_module: torch.nn.Module, dst_module: torch.nn.Module,
                            require_all: bool = False, skip_other_shapes: bool = False) -> list[str]:
    """Copy every tensor of `dst_module` that `src_module` has under the same name and shape.
    Returns the names of the tensors left as they were. A tensor of another shape in the source
    is an error, unless `skip_other_shapes` (then it is left too)."""
    source = dict(named_params_and_buffers(src_module))
    left = []
    for name, tensor in named_params_and_buffers(dst_module):
        if name not in source:
            if require_all:
                raise KeyError(f'copy_params_and_buffers: source has no tensor "{name}"')
            left.append(name)
            continue
        if source[name].shape != tensor.shape:
            if not skip_other_shapes:
                raise ValueError(f'copy_params_and_buffers: "{name}" has shape {tuple(source[name].shape)} '
                                 f'in the source and {tuple(tensor.shape)} in the destination')
            left.append(name)
            continue
        tensor.copy_(source[name])
    return left

def tensor_mismatch(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> str | None:
    """Why `tensors` cannot replace a module's `expected` state dict one for one: the first tensor
    missing, extra or of another shape, as a phrase ('lacks tensor "x" (and 2 more)'); None when
    every name and shape fits."""
    missing = [k for k in expected if k not in tensors]
    extra = [k for k in tensors if k not in expected]
    wrong = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    for names, what in ((missing, 'lacks tensor'), (extra, 'has the unexpected tensor'), (wrong, 'has another shape of')):
        if names:
            more = f' (and {len(names) - 1} more)' if len(names) > 1 else ''
            shapes = f' ({tuple(tensors[names[0]].shape)}, expected {tuple(expected[names[0]].shape)})' if names is wrong else ''
            return f'{what} "{names[0]}"{shapes}{more}'
    return None

#----------------------------------------------------------------------------
# Gradient synchronisation only on the last accumulation round.

@contextlib.contextmanager
def ddp_sync(module: torch.nn.Module, sync: bool) -> Iterator[None]:
    if sync or not isinstance(module, torch.nn.parallel.DistributedDataParallel):
        yield
    else:
        with module.no_sync():
            yield

#----------------------------------------------------------------------------
# Check that every process holds the same tensors: each rank compares its own
# copy with rank 0's. Raises naming the first tensor that differs.

@torch.no_grad()
def check_ddp_consistency(module: torch.nn.Module, ignore_regex: str | None = None) -> int:
    """Compare `module`'s parameters and buffers with rank 0's; returns how many were checked."""
    if not torch.distributed.is_initialized() or dist.get_world_size() == 1:
        return 0
    checked = 0
    for name, tensor in named_params_and_buffers(module):
        full_name = f'{type(module).__name__}.{name}'
        if ignore_regex is not None and re.fullmatch(ignore_regex, full_name):
            continue
        mine = tensor.detach()
        if mine.is_floating_point():
            mine = torch.nan_to_num(mine)
        reference = mine.clone()
        dist.broadcast(reference, src=0)
        if not torch.equal(mine, reference):
            raise RuntimeError(f'replicas differ: rank {dist.get_rank()} has a different "{full_name}" from rank 0')
        checked += 1
    return checked

#----------------------------------------------------------------------------
# Print a table of the module hierarchy: parameters, buffers, output shape and
# dtype of each submodule down to `max_nesting` levels, for one forward pass.

def print_module_summary(module: torch.nn.Module, inputs: Sequence[Any], max_nesting: int = 3) -> Any:
    rows: list[tuple[torch.nn.Module, list[torch.Tensor]]] = []
    depth = [0]

    def enter(_module, _inputs):
        depth[0] += 1

    def leave(mod, _inputs, outputs):
        depth[0] -= 1
        if depth[0] <= max_nesting:
            outs = outputs if isinstance(outputs, (tuple, list)) else [outputs]
            rows.append((mod, [t for t in outs if isinstance(t, torch.Tensor)]))

    handles = [m.register_forward_pre_hook(enter) for m in module.modules()]
    handles += [m.register_forward_hook(leave) for m in module.modules()]
    try:
        outputs = module(*inputs)
    finally:
        for handle in handles:
            handle.remove()

    # Count each tensor once, at the innermost module that owns it.
    names = {mod: name for name, mod in module.named_modules()}
    seen: set[int] = set()
    table = [(type(module).__name__, 'Parameters', 'Buffers', 'Output shape', 'Datatype')]
    total_params = total_buffers = 0
    for mod, outs in rows:
        params = [t for t in mod.parameters() if id(t) not in seen]
        buffers = [t for t in mod.buffers() if id(t) not in seen]
        new_outs = [t for t in outs if id(t) not in seen]
        seen.update(id(t) for t in params + buffers + new_outs)
        if not (params or buffers or new_outs):
            continue
        num_params = sum(t.numel() for t in params)
        num_buffers = sum(t.numel() for t in buffers)
        total_params += num_params
        total_buffers += num_buffers
        label = '<top-level>' if mod is module else names.get(mod, '?')
        shape = str(list(outs[0].shape)) if outs else '-'
        dtype = str(outs[0].dtype).removeprefix('torch.') if outs else '-'
        table.append((label, str(num_params or '-'), str(num_buffers or '-'), shape, dtype))
    table.append(('Total', str(total_params), str(total_buffers), '-', '-'))

    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    rule = '  '.join('-' * w for w in widths)
    lines = ['  '.join(cell.ljust(w) for cell, w in zip(row, widths)) for row in table]
    print('\n' + '\n'.join([lines[0], rule] + lines[1:-1] + [rule, lines[-1]]) + '\n')
    return outputs

#----------------------------------------------------------------------------
