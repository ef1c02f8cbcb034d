"""The fast path: `--fast` of train.py, generate.py and denoise.py (and `--fast` of fid.py).

The default (faithful) path computes what EDM computes. The fast path uses what current PyTorch
offers for speed, each item chosen per device type because what helps one device can hurt
another. The choices below were measured with bench.py (docs/performance.md):

    item                      CUDA                                 CPU
    network precision         bfloat16 (float16 where the GPU      float32: bfloat16 ran 8x slower on
                              has no bfloat16, or where the        an AVX2 CPU (no AMX)
                              network was trained in float16)
    memory format             channels-last                        unchanged: no gain measured
    torch.compile             the network (training: forward and   no: compiling a small DDPM++ step
                              backward; sampling: forward); the    took 250 s and ran no faster
                              loss's random draws and the
                              augmentation stay eager
    compile cache             ~/.cache/dnnlib/torch-compile (or    -
                              $DNNLIB_CACHE_DIR/...), not /tmp:
                              later jobs compile from it
    [1, 1] resampling         average pooling and nearest-         EDM's convolutions, so that the
                              neighbour upsampling instead of      CPU's fast path stays bit-identical
                              depthwise (transposed) convolutions  to the faithful one
    gradient clean-up         one foreach norm; non-finite values  the same
                              replaced only when the norm says
                              there are any
    TF32 matmuls/convolutions allowed                              -
    cuDNN algorithm search    benchmark mode (training and         -
                              sampling), PyTorch's limit of 10
    Adam                      fused kernel                         foreach kernels
    weight average (EMA)      one foreach lerp                     one foreach lerp
    host <-> device copies    pinned memory, non-blocking          -
    PNG writing, data reading background threads, overlapped       background threads
    sampling batch            sized to the free GPU memory         --batch's default
    stop polling (several     every 16 steps, not every step       the same
    processes)

Samplers keep their state in float64 on both paths: only the network is evaluated at lower
precision. Training states, snapshots and options files are the same on both paths, so a run
may switch paths when it resumes.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import math
import os
import warnings
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

import dnnlib

#----------------------------------------------------------------------------
# The settings of the fast path on one device: plain data (recorded by
# bench.py), with per-field overrides for tests and experiments.

COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')  # torch.compile's.

@dataclasses.dataclass(frozen=True)
class FastSettings:
    dtype:                 str | None    # Network compute dtype: 'bfloat16', 'float16', or None for float32.
    channels_last:         bool          # Networks and their image inputs in channels-last memory format?
    compile:               bool          # torch.compile the network (sampling and training)?
    compile_backend:       str           # torch.compile backend: 'inductor'; 'aot_eager' needs no C compiler (tests).
    compile_mode:          str | None    # torch.compile mode, e.g. 'max-autotune-no-cudagraphs'; None = the default.
    compile_regions:       bool          # Training: compile each block of the network on its own instead of the whole?
    pool_resample:         bool          # [1, 1] resampling filters as average pooling and nearest upsampling?
    tf32:                  bool          # Allow TF32 in float32 matmuls and convolutions?
    optimizer:             str           # Adam implementation: 'fused' or 'foreach'.
    pin_memory:            bool          # Pinned host buffers and non-blocking copies?
    background_io:         bool          # Read inputs and write PNGs on background threads?
    device_batch:          bool          # Size sampling batches to the free device memory?
    stop_poll_steps:       int           # With several processes, poll the stop flag every this many steps.
    cudnn_benchmark_limit: int | None    # cuDNN algorithms timed per convolution shape; 0 = all, None = PyTorch's (10).
    compile_cache:         str | None    # Directory of inductor's compiled code, kept between runs; None = PyTorch's (/tmp).

    def __post_init__(self) -> None:  # Overrides come from users (bench.py --set): name the bad one.
        if self.dtype not in (None, 'float32', 'bfloat16', 'float16'):
            raise ValueError(f'dtype={self.dtype}: float32, bfloat16, float16 or none')
        if self.optimizer not in ('fused', 'foreach'):
            raise ValueError(f'optimizer={self.optimizer}: fused or foreach')
        if self.stop_poll_steps < 1:
            raise ValueError(f'stop_poll_steps={self.stop_poll_steps}: at least 1')
        if self.cudnn_benchmark_limit is not None and self.cudnn_benchmark_limit < 0:
            raise ValueError(f'cudnn_benchmark_limit={self.cudnn_benchmark_limit}: 0 (every algorithm) or more')
        if self.compile:
            import torch._dynamo
            if self.compile_backend not in torch._dynamo.list_backends(exclude_tags=()):  # Debugging ones too.
                raise ValueError(f'compile_backend={self.compile_backend}: a torch.compile backend, such as '
                                 f'{", ".join(torch._dynamo.list_backends())}')
            if self.compile_mode is not None and self.compile_backend != 'inductor':
                raise ValueError(f'compile_mode={self.compile_mode}: a mode of inductor; none for '
                                 f'compile_backend={self.compile_backend}')
        if self.compile_mode is not None and self.compile_mode not in COMPILE_MODES:
            raise ValueError(f'compile_mode={self.compile_mode}: one of {", ".join(COMPILE_MODES)}, or none')

def fast_settings(device: torch.device | str, **overrides: Any) -> FastSettings:
    """The fast path's choices for `device` (see the table above), with `overrides` applied."""
    device = torch.device(device)
    if device.type == 'cuda':
        bf16 = torch.cuda.is_bf16_supported()
        settings = FastSettings(dtype='bfloat16' if bf16 else 'float16', channels_last=True, compile=True,
                                compile_backend='inductor', compile_mode=None, compile_regions=False,
                                pool_resample=True, tf32=True, optimizer='fused', pin_memory=True, background_io=True,
                                device_batch=True, stop_poll_steps=16, cudnn_benchmark_limit=None,
                                compile_cache=default_compile_cache())
    else:
        settings = FastSettings(dtype=None, channels_last=False, compile=False, compile_backend='inductor',
                                compile_mode=None, compile_regions=False, pool_resample=False, tf32=False,
                                optimizer='foreach',
                                pin_memory=False, background_io=True, device_batch=False, stop_poll_steps=16,
                                cudnn_benchmark_limit=None, compile_cache=default_compile_cache())
    return dataclasses.replace(settings, **overrides)

#----------------------------------------------------------------------------
# Numerics switches. The faithful training loop turns TF32 off; the fast path
# allows it where the settings say so.

def set_tf32(allow: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allow
    torch.backends.cudnn.allow_tf32 = allow

# How many of cuDNN's algorithms benchmark mode times for each convolution
# shape (cuDNN's v8 interface; PyTorch's default is 10, 0 tries them all).
# Nearly all of DDPM++'s arithmetic is convolutions, so the fastest algorithm
# matters; a lever of bench.py (--set=cudnn_benchmark_limit=0).
PYTORCH_CUDNN_BENCHMARK_LIMIT = 10

def set_cudnn_benchmark_limit(settings: FastSettings | None) -> None:
    if settings is not None and settings.cudnn_benchmark_limit is not None and torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark_limit = settings.cudnn_benchmark_limit

# The networks of training/networks.py choose their compute dtype from their
# use_fp16 / use_bf16 attributes (EDM's mechanism: weights are cast to the
# dtype of the activations). Setting the attributes on a live network changes
# how it computes, not what its pickles record (they keep the constructor's).
# A network built for float16 or bfloat16 keeps its dtype.
def set_compute_dtype(net: torch.nn.Module, dtype: str | None) -> None:
    if dtype is None or not hasattr(net, 'use_fp16') or net.use_fp16 or getattr(net, 'use_bf16', False):
        return
    net.use_fp16 = dtype == 'float16'
    net.use_bf16 = dtype == 'bfloat16'

# Resampling with EDM's [1, 1] filter (DDPM++) averages each 2x2 block when
# downsampling and repeats each pixel 2x2 when upsampling: average pooling and
# nearest-neighbour upsampling compute the same, without the grouped
# (transposed) convolutions that cuDNN runs slowly. Set on the live network
# like the compute dtype (training/networks.py, Conv2d.pool_resample).
def set_pool_resample(net: torch.nn.Module, enabled: bool) -> None:
    for module in net.modules():
        fir = getattr(module, 'resample_filter', None)
        if hasattr(module, 'pool_resample') and isinstance(fir, torch.Tensor):
            module.pool_resample = enabled and fir.shape[-2:] == (2, 2) and bool((fir == 0.25).all())

# Inductor keeps the code it generates in an on-disk cache, keyed by the graph
# and the device, not by the weights. PyTorch's default place for it is under
# /tmp, which a cluster node clears between jobs, so every SLURM job (a resumed
# run, each SFBD round's update, each denoising job) would compile from
# scratch: the whole DDPM++ step took 135 s on an H200 with an empty cache.
# The fast path keeps it beside dnnlib's downloads instead, in the user's cache
# directory ($DNNLIB_CACHE_DIR, else ~/.cache/dnnlib), shared by the nodes; a
# TORCHINDUCTOR_CACHE_DIR of the user's own wins.
def default_compile_cache() -> str:
    return os.environ.get('TORCHINDUCTOR_CACHE_DIR') or dnnlib.util.make_cache_dir_path('torch-compile')

def use_compile_cache(settings: FastSettings) -> str | None:
    """Point inductor at the settings' cache directory; call before the first compile. Returns the
    directory in use, or None where PyTorch's own applies (another backend, or a directory that
    cannot be made, which costs the cache, not the run)."""
    if settings.compile_cache is None or settings.compile_backend != 'inductor':
        return None
    path = os.path.abspath(settings.compile_cache)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        warnings.warn(f'torch.compile cache {path}: {e.strerror or e}; using PyTorch\'s default')
        return None
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = path
    return path

def compile_module(module: torch.nn.Module, settings: FastSettings, fullgraph: bool = True) -> torch.nn.Module:
    """torch.compile(module) with the settings' backend and mode. `fullgraph` makes a graph break an
    error rather than a silent fall-back to eager for part of the network."""
    use_compile_cache(settings)
    return torch.compile(module, backend=settings.compile_backend, mode=settings.compile_mode, fullgraph=fullgraph)

# Regional compilation (FastSettings.compile_regions): every block of the
# network (modules of `region_type`, e.g. training/networks.py's UNetBlock)
# compiled on its own, in place, so that its state-dict names stay. Blocks of
# one shape share their compiled code, so a cold compile covers the distinct
# block shapes only (DDPM++ CIFAR-10: 14 graphs, against one graph of the
# whole network); the rest of the network runs eager. Shapes stay static
# (dynamo would otherwise turn the sizes of the second block shape into
# symbols), and dynamo's limit on recompiles of one function, which every
# further block shape uses up, is raised to the number of blocks.
def compile_regions(module: torch.nn.Module, settings: FastSettings, region_type: type) -> None:
    """Compile the `region_type` modules of `module` in place."""
    from torch._dynamo import config as dynamo_config
    regions = [m for m in module.modules() if isinstance(m, region_type)]
    use_compile_cache(settings)
    for m in regions:
        m.compile(backend=settings.compile_backend, mode=settings.compile_mode, fullgraph=True, dynamic=False)
    name = 'recompile_limit' if hasattr(dynamo_config, 'recompile_limit') else 'cache_size_limit'
    setattr(dynamo_config, name, max(getattr(dynamo_config, name), len(regions)))

def to_memory_format(module: torch.nn.Module, settings: FastSettings) -> torch.nn.Module:
    return module.to(memory_format=torch.channels_last) if settings.channels_last else module

def to_device(x: torch.Tensor, device: torch.device, settings: FastSettings) -> torch.Tensor:
    """A batch on its way to the network: non-blocking from pinned memory, channels-last for images."""
    x = x.to(device, non_blocking=settings.pin_memory and device.type == 'cuda')
    if settings.channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x

#----------------------------------------------------------------------------
# Sampling: a network as generate.py and denoise.py evaluate it on the fast
# path. Returns the network to call (a compiled wrapper forwards attribute
# reads such as img_resolution and round_sigma to the network).

def prepare_sampling_network(net: torch.nn.Module, settings: FastSettings) -> torch.nn.Module:
    net.eval().requires_grad_(False)
    if settings.tf32:
        set_tf32(True)
    torch.backends.cudnn.benchmark = True  # Fixed shapes: the batches are padded to one size (below).
    set_cudnn_benchmark_limit(settings)
    set_compute_dtype(net, settings.dtype)
    set_pool_resample(net, settings.pool_resample)
    net = to_memory_format(net, settings)
    if settings.compile:
        net = compile_module(net, settings)
    return net

# Batches of a compiled network are padded to one size (repeating the last
# item, whose extra results are dropped), so that a short last batch does not
# compile the network again.
def pad_batch(items: Sequence[Any], size: int) -> list[Any]:
    items = list(items)
    return items + [items[-1]] * (size - len(items)) if items and len(items) < size else items

# The sampling batch: the one requested (--batch), else the default, except
# on the fast path on a GPU: as many images as fit in half of the free memory,
# measured with one forward pass of 16 images (plus the sampler's float64
# state), a power of two between 1 and `cap`, the same on every rank.
def sampling_batch_size(net: torch.nn.Module, device: torch.device, settings: FastSettings | None,
                        requested: int | None, default: int, cap: int = 1024) -> int:
    if requested is not None:
        return requested
    if settings is None or not settings.device_batch or device.type != 'cuda':
        return default
    probe = 16
    shape = [net.img_channels, net.img_resolution, net.img_resolution]
    x = torch.zeros([probe, *shape], device=device)
    sigma = torch.ones([probe], device=device)
    labels = torch.zeros([probe, net.label_dim], device=device) if net.label_dim else None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        net(x, sigma, labels)
    per_image = (torch.cuda.max_memory_allocated(device) - base) / probe + 8 * math.prod(shape) * 8
    free, _total = torch.cuda.mem_get_info(device)
    batch = int(min(max(0.5 * free / per_image, 1), cap))
    batch = 2 ** int(math.log2(batch))
    if torch.distributed.is_initialized():
        agreed = torch.tensor([batch], device=device)
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
        batch = int(agreed.item())
    return batch

#----------------------------------------------------------------------------
# Training: the optimizer's implementation. A state loaded with
# load_state_dict() brings the flags of the run that wrote it, so they are
# set again after loading.

def optimizer_flags(settings: FastSettings | None) -> dict[str, bool]:
    if settings is None:
        return {}
    return dict(fused=True) if settings.optimizer == 'fused' else dict(foreach=True)

def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """optimizer.load_state_dict(state), keeping this optimizer's implementation (foreach, fused)
    and moving step counters to where that implementation keeps them."""
    keys = ('foreach', 'fused', 'capturable')
    kept = [{key: group[key] for key in keys if key in group} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flags in zip(optimizer.param_groups, kept):
        group.update(flags)
        on_device = bool(group.get('fused') or group.get('capturable'))
        for param in group['params']:
            param_state = optimizer.state.get(param, {})
            if isinstance(param_state.get('step'), torch.Tensor):
                param_state['step'] = param_state['step'].to(param.device if on_device else 'cpu')

#----------------------------------------------------------------------------
# Overlapped I/O. Device results go to the host without waiting (a pinned
# buffer and an event on CUDA); a writer thread turns them into files.

def host_copy(x: torch.Tensor) -> Callable[[], np.ndarray]:
    """Start copying `x` to the host; the returned function waits for the copy and gives the array."""
    if x.device.type != 'cuda':
        array = x.cpu().numpy()
        return lambda: array
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    def wait() -> np.ndarray:
        done.synchronize()
        return host.numpy()
    return wait

class BackgroundWriter:
    """Runs jobs (e.g. writing some PNGs) on `num_threads` threads, with at most `max_pending` not
    finished; a job waits for the oldest one to finish when there are more. Several threads because
    an atomic write ends with an fsync, which takes milliseconds that a thread spends waiting. An
    exception in a job is raised in the caller, by a later `submit()` or by `close()`; jobs not
    yet started are then dropped."""

    def __init__(self, num_threads: int = 8, max_pending: int = 32):
        self.max_pending = max_pending
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=num_threads, thread_name_prefix='writer')
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()

    def submit(self, job: Callable[..., Any], *args: Any) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(job, *args))

    def close(self) -> None:
        """Wait for every job; raise the first error."""
        try:
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> 'BackgroundWriter':
        return self

    def __exit__(self, exc_type: Any, *_rest: Any) -> None:
        if exc_type is None:
            self.close()
            return
        for future in self._pending:  # Already failing: stop, and keep the original error.
            future.cancel()
        with contextlib.suppress(Exception):
            self.close()

def prefetch(load: Callable[[Any], Any], items: Iterable[Any], depth: int = 2) -> Iterator[Any]:
    """`load(item)` for each item, in order, computed up to `depth` items ahead on a thread."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix='loader') as pool:
        pending: collections.deque[concurrent.futures.Future] = collections.deque()
        iterator = iter(items)
        try:
            for item in iterator:
                pending.append(pool.submit(load, item))
                if len(pending) > depth:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

#----------------------------------------------------------------------------
