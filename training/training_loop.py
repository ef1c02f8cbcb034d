"""The training loop: EDM's denoiser training, resumable to the step, on any device.

One process trains alone; under torchrun the processes split every batch and DistributedDataParallel
keeps their replicas identical. Progress is written as EDM does (`stats.jsonl`, network snapshots,
training states), and a training state holds everything needed to continue exactly where it was
written: network, EMA, optimizer, counters, the data sampler's position and every random generator.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import os
import random
import signal
import time
import zipfile
from typing import Any, Callable, Iterator

import numpy as np
import psutil
import torch

from dnnlib.util import UserError, atomic_write, construct_class_by_name, format_time, is_url
from torch_utils import distributed as dist
from torch_utils import edm_state, misc, persistence, training_stats, workers
from torch_utils import fast as fast_lib
from torch_utils.fast import FastSettings
from training import resume, run_files
from training.networks import UNetBlock
from training.dataset import images_to_float
from training.extra_data import ExtraData, make_extra_data, split_batch, start_batches

FINISHED = 'finished'    # training_loop() return value: the duration was reached.
PREEMPTED = 'preempted'  # training_loop() return value: stopped on request, state saved.

STATE_FORMAT = 'sfbd-training-state-v1'

#----------------------------------------------------------------------------
# Training states in a run directory: the newest is the one furthest in
# training (file names by position: training/run_files.py).

def find_latest_state(run_dir: str) -> str | None:
    """Path of the newest `training-state-*.pt` in `run_dir`, or None."""
    return run_files.newest(run_dir, run_files.STATE_PREFIX)

def state_nimg(path: str) -> int | None:
    """The training position (images) of a training state, ours or EDM's; None if unreadable."""
    if edm_state.is_edm_training_state(path):
        m = edm_state.STATE_PATTERN.match(os.path.basename(path))
        return int(m.group(1)) * 1000 if m else None
    try:
        state = misc.load_plain(path, map_location='cpu', mmap=True)
        return int(state['cur_nimg']) if isinstance(state, dict) and state.get('format') == STATE_FORMAT else None
    except Exception:  # Truncated or foreign files: reported when a run loads them.
        return None

# Where a run began, as its training states record it (read without loading
# the tensors): `resumed_from`, the state outside the run directory that it was
# first resumed from (--resume), None for a run that began afresh. Returns
# (recorded, origin); states written before the key existed record nothing.
def state_origin(path: str) -> tuple[bool, str | None]:
    try:
        state = misc.load_plain(path, map_location='cpu', mmap=True)
    except Exception:  # Truncated or foreign files: reported when a run loads them.
        return False, None
    if not isinstance(state, dict) or 'resumed_from' not in state:
        return False, None
    return True, state['resumed_from']

# How a --transfer source is recorded in training states: URLs as given,
# local files by absolute path.
def transfer_source_id(source: str | None) -> str | None:
    if source is None:
        return None
    return source if is_url(source) else os.path.abspath(source)

#----------------------------------------------------------------------------
# Random generators: per-process seeding, and their states as plain data
# (tensors, ints, lists) that torch.load(weights_only=True) accepts.

def _seed_process(seed: int, rank: int) -> None:
    process_seed = int(np.random.SeedSequence([seed, rank]).generate_state(1)[0]) & 0x7FFFFFFF
    random.seed(process_seed)
    np.random.seed(process_seed)
    torch.manual_seed(process_seed)

def _rng_state(device: torch.device) -> dict[str, Any]:
    _name, keys, pos, has_gauss, gauss = np.random.get_state()
    return dict(
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state(device) if device.type == 'cuda' else None,
        numpy=dict(keys=torch.from_numpy(keys.astype(np.int64)), pos=int(pos), has_gauss=int(has_gauss), gauss=float(gauss)),
        python=[list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    )

def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda' and state.get('cuda') is not None:
        torch.cuda.set_rng_state(state['cuda'], device)
    n = state['numpy']
    np.random.set_state(('MT19937', n['keys'].numpy().astype(np.uint32), n['pos'], n['has_gauss'], n['gauss']))
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state['python']))

def _gather(obj: Any) -> list[Any]:
    # The same object from every rank, in rank order (collective).
    if not torch.distributed.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out

# Data-loading workers leave preemption signals to the training process, which
# finishes its step, saves and then stops them: a signal sent to the whole
# process group (a Ctrl-C in the terminal too) must not kill them mid-step.
# SIGUSR1 and SIGINT are ignored; SIGTERM ends a worker only after a grace
# period, so that nothing can wait on it forever.
def _shield_from_stop_signals(_worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, 'SIGUSR1'):
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    if hasattr(signal, 'alarm'):
        signal.signal(signal.SIGTERM, lambda _signum, _frame: signal.alarm(30))

# A training worker ends with the training process (torch_utils/workers.py),
# is shielded from stop signals, and takes those that arrived while it started.
def _init_worker(worker_id: int, parent_pid: int, shield: bool) -> None:
    workers.end_with_parent(parent_pid)
    if shield:
        _shield_from_stop_signals(worker_id)
    if STOP_SIGNALS:  # Held since the fork (_stop_signals_held): one sent meanwhile arrives now.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

# A worker starts with PyTorch's own SIGTERM handler, which ends it, and runs
# the shield above only later: a signal sent to the process group in between
# (a job preempted while its loader starts) would kill it and fail the step.
# So the stop signals are held while the loader starts its workers (a mask
# that a spawned worker inherits too); a worker takes any that arrived once
# shielded, and the training process once the workers are started.
# Multiprocessing's resource tracker, started with the first spawned process,
# unblocks SIGTERM behind it, so it is started first.
STOP_SIGNALS = {sig for sig in (getattr(signal, 'SIGTERM', None), getattr(signal, 'SIGUSR1', None), signal.SIGINT)
                if sig is not None} if hasattr(signal, 'pthread_sigmask') else set()

@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    if not STOP_SIGNALS:
        yield
        return
    from multiprocessing import resource_tracker
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)

#----------------------------------------------------------------------------
# Starting weights from a network pickle (--transfer): EDM's and ours, read as
# data. Every tensor the pickle has under the same name and shape is copied
# (EDM copies by name, and stops at a tensor of another shape); the others
# (e.g. the label embedding of a network with another label dimension) keep
# their initial values and are listed. Only a network of
# another resolution or channel count is refused. Weights of another
# preconditioning (VP, VE, iDDPM into EDM) are copied as in EDM, but they were
# trained for other input and output scalings, so the log says so.

def _load_transfer(source: str, net: torch.nn.Module, device: torch.device) -> None:
    src = dist.rank0_first(lambda: persistence.load_network_pickle(source, keys=['ema'])['ema'], 'the network pickle')
    have = (getattr(src, 'img_resolution', None), getattr(src, 'img_channels', None))
    want = (net.img_resolution, net.img_channels)
    if None in have:
        raise UserError(f'--transfer: the "ema" of {source} is a {type(src).__name__}, not a preconditioned network '
                        '(EDMPrecond, VPPrecond, VEPrecond, iDDPMPrecond)')
    if have != want:
        raise UserError(f'--transfer: {source} holds a {have[0]}x{have[0]} network with {have[1]} channels, but the '
                        f'dataset needs {want[0]}x{want[0]} with {want[1]} channels')
    kept = misc.copy_params_and_buffers(src_module=src, dst_module=net, require_all=False, skip_other_shapes=True)
    dst_tensors = dict(misc.named_params_and_buffers(net))
    src_tensors = dict(misc.named_params_and_buffers(src))
    if len(kept) == len(dst_tensors):
        raise UserError(f'--transfer: {source} shares no tensor with the network of these options')
    dist.print0(f'Copied {len(dst_tensors) - len(kept)} of {len(dst_tensors)} tensors from the pickle.')
    if type(src).__name__ != type(net).__name__:
        dist.print0(f'Note: the pickle\'s network is {type(src).__name__}, this run\'s {type(net).__name__}: the '
                    'copied weights were trained for another preconditioning (see --precond).')
    if kept:
        dist.print0(f'{len(kept)} tensors keep their initial values (not in the pickle, or of another shape there):')
        for name in kept:
            there = f'{list(src_tensors[name].shape)} in the pickle' if name in src_tensors else 'not in the pickle'
            dist.print0(f'  {name} {list(dst_tensors[name].shape)}: {there}')
    unused = [name for name in src_tensors if name not in dst_tensors]
    if unused:
        dist.print0(f'Not used from the pickle ({len(unused)}): {", ".join(unused)}')

#----------------------------------------------------------------------------
# Training states: plain state dicts, written atomically by rank 0, read with
# torch.load(weights_only=True).

def check_state_file(path: str) -> None:
    """A cheap look at a --resume file before anything is loaded: a torch.save archive at least."""
    if not os.path.isfile(path):
        raise UserError(f'{path}: no such file')
    if not zipfile.is_zipfile(path):
        hint = '; a network pickle is given to --transfer' if path.endswith('.pkl') else ''
        raise UserError(f'{path}: not a training state of this project (not a torch.save archive{hint})')

def _load_state(path: str) -> dict[str, Any]:
    check_state_file(path)
    try:
        state = misc.load_plain(path, map_location='cpu')
    except Exception as e:  # Truncated files, EDM's whole-module states, ...
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise UserError(f'{path}: not a training state of this project ({type(e).__name__}'
                        + (f': {lines[0]}' if lines else '') + ')') from None
    if not isinstance(state, dict) or state.get('format') != STATE_FORMAT:
        raise UserError(f'{path}: not a training state of this project')
    return state

# A run continues on the data it started with: the state's fingerprint of the
# data (Dataset.fingerprint; absent in older states) must match, the paths
# aside (data copied elsewhere is the same data).
def _check_same_data(recorded: list[dict] | None, current: list[dict], state_path: str, allow: bool) -> None:
    def essence(fingerprint: list[dict]) -> list[tuple]:
        return [(d.get('name'), d.get('files'), d.get('bytes'), d.get('metadata_sha256')) for d in fingerprint]
    if not recorded or not current or allow or essence(recorded) == essence(current):
        return
    def describe(fingerprint: list[dict]) -> str:
        return ' + '.join(f'{d["name"]} ({d["files"]} files, {d["bytes"]} bytes)' for d in fingerprint)
    raise UserError(f'--data: {state_path} was written while training on {describe(recorded)}, but the data is now '
                    f'{describe(current)}; add --allow-data-change to continue on this data')

def _save_state(path: str, state: dict[str, Any]) -> None:
    with atomic_write(path, 'wb') as f:
        save_to_file(state, f)

# torch.save into an open file, failing with the file's own error. torch
# writes through the file's write() but reports a failed write (a full disk)
# as a RuntimeError ("unexpected pos ...") that no longer says why; the
# OSError kept here lets atomic_write name the file and the cause.
def save_to_file(obj: Any, f: Any) -> None:
    failed: list[OSError] = []
    class Writer:
        def write(self, data: Any) -> int:
            try:
                return f.write(data)
            except OSError as e:
                failed.append(e)
                raise
        def flush(self) -> None:
            f.flush()
    try:
        torch.save(obj, Writer())
    except RuntimeError:
        if failed:
            raise failed[0] from None
        raise

def _plain(config: Any) -> Any:
    # Options as JSON-style plain data (EasyDicts and tuples become dicts and lists).
    return json.loads(json.dumps(config))

# The 2-norm of all gradients together (torch.nn.utils.get_total_norm of
# torch >= 2.6, written out for older versions): the norms of all tensors in
# one multi-tensor kernel, then the norm of those.
def _total_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    if not tensors:
        return torch.zeros([])
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm([t.detach() for t in tensors])))

def _total(stats: training_stats.Collector, name: str) -> int:
    # Sum of a 0/1 statistic over the last tick (a count).
    return int(round(stats.num(name) * stats.mean(name))) if stats.num(name) else 0

#----------------------------------------------------------------------------
# One optimizer step, the body of the training loop (bench.py times this very
# function): the gradients of one batch, accumulated over rounds of at most
# batch_gpu images; the learning-rate warm-up; non-finite gradients counted,
# then clamped as EDM does so that one bad batch does not ruin the weights;
# Adam; and the weight average, whose half-life in images is capped while
# training is young at a fraction of the images seen so far. In Online SFBD
# the buffer's denoised images take their slots in each batch, their loss
# weighted by the ramp (training/extra_data.py). Nothing here waits for the
# device (the extra data's slots aside): statistics stay on it until the end of the tick.

def training_step(
    cur_nimg:           int,                # Images seen before this step, all processes together.
    *,
    ddp:                torch.nn.Module,    # The network as trained: DistributedDataParallel, or the network itself.
    net:                torch.nn.Module,    # The network itself (the parameters the optimizer updates).
    ema:                torch.nn.Module,    # The weight average.
    compute_loss:       Callable[[torch.Tensor, torch.Tensor], torch.Tensor], # (images, labels) -> loss [N, C, H, W].
    optimizer:          torch.optim.Optimizer,
    batches:            Iterator,           # The data loader's iterator: (images, labels) of batch_gpu items.
    sampler:            misc.InfiniteSampler, # The loader's sampler, advanced as batches are consumed.
    stats:              training_stats.Collector,
    device:             torch.device,
    batch_size:         int,                # Images per step over all processes.
    batch_gpu:          int,                # Images per accumulation round on this process.
    num_accumulation_rounds: int,           # Rounds per step on this process.
    loss_scaling:       float,              # Loss scale factor.
    lr:                 float,              # Learning rate after the warm-up.
    lr_rampup_kimg:     float,              # Linear warm-up length; 0 = none.
    ema_halflife_kimg:  float,              # Half-life of the weight average.
    ema_rampup_ratio:   float | None,       # Cap of the half-life as a fraction of the images seen; None = no cap.
    fast:               FastSettings | None = None, # Fast-path settings; None = the faithful path.
    extra:              ExtraData | None = None, # Extra data mixed into the batches (Online SFBD's buffer) and their loss weights; None = none.
) -> None:
    batch_gpu_total = batch_gpu * num_accumulation_rounds
    optimizer.zero_grad(set_to_none=True)
    for round_idx in range(num_accumulation_rounds):
        with misc.ddp_sync(ddp, sync=(round_idx == num_accumulation_rounds - 1)):
            images, labels, keys = split_batch(next(batches), extra)  # Extra data's items also carry their keys.
            if fast is None:
                images, labels = images.to(device), labels.to(device)
            else:
                images, labels = fast_lib.to_device(images, device, fast), fast_lib.to_device(labels, device, fast)
            images = images_to_float(images)  # uint8 -> x/127.5 - 1; float data as it is.
            if extra is not None:  # Extra images in their slots, and their loss weights.
                images, loss_weights = extra.compose(images, keys, cur_nimg)
            loss = compute_loss(images, labels)
            stats.report('Loss/loss', loss)  # The denoising loss, as in every run; the weighted one of extra data apart.
            if extra is not None:
                loss = loss * loss_weights
                stats.report('Loss/weighted', loss)
            stats.report('Loss/nonfinite', (~torch.isfinite(loss.flatten(1).sum(dim=1))).float())
            loss.sum().mul(loss_scaling / batch_gpu_total).backward()
        sampler.advance(batch_gpu)

    # Learning rate, non-finite gradients, Adam.
    lr_ramp = min(cur_nimg / (lr_rampup_kimg * 1000), 1) if lr_rampup_kimg > 0 else 1
    for group in optimizer.param_groups:
        group['lr'] = lr * lr_ramp
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    grad_norm = _total_norm(grads)
    nonfinite = ~torch.isfinite(grad_norm)
    stats.report0('Loss/nonfinite_grad', nonfinite.float())
    # EDM cleans every gradient; the fast path only when the norm shows a
    # non-finite value (the same numbers: finite values pass unchanged), which
    # costs one wait for the device instead of a kernel per parameter.
    if fast is None or bool(nonfinite):
        for grad in grads:
            torch.nan_to_num(grad, nan=0, posinf=1e5, neginf=-1e5, out=grad)
    optimizer.step()

    # Weight average.
    halflife_nimg = ema_halflife_kimg * 1000
    if ema_rampup_ratio is not None:
        halflife_nimg = min(halflife_nimg, ema_rampup_ratio * cur_nimg)
    update_ema(ema, net, 0.5 ** (batch_size / max(halflife_nimg, 1e-8)), fast)

# The weight average's step with decay beta: ema <- net.lerp(ema, beta), as EDM
# computes it, to the bit; the fast path in foreach kernels (the same numbers).
def update_ema(ema: torch.nn.Module, net: torch.nn.Module, beta: float, fast: FastSettings | None = None) -> None:
    with torch.no_grad():
        ema_params, net_params = list(ema.parameters()), [p.detach() for p in net.parameters()]
        if fast is None or not hasattr(torch, '_foreach_copy_'):
            for p_ema, p_net in zip(ema_params, net_params):
                p_ema.copy_(p_net.lerp(p_ema, beta))
        else:
            torch._foreach_copy_(ema_params, torch._foreach_lerp(net_params, ema_params, beta))

# The loss of a batch as training_step() wants it. Where the fast path
# compiles, it compiles the network (its forward and backward, 99% of the
# step's arithmetic) and leaves the loss's random draws and the augmentation
# eager: the augmentation's padding depends on the values drawn, which would
# break the graph and recompile it at every step; eager, the random numbers
# are also the faithful path's. One graph is compiled per run, with every
# graph break an error (DDP's own bucket split aside); with compile_regions,
# one per distinct shape of the network's blocks (torch_utils/fast.py).
def loss_function(loss_fn: Callable, ddp: torch.nn.Module, augment_pipe: Any,
                  fast: FastSettings | None = None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    net = ddp
    if fast is not None and fast.compile and fast.compile_regions:
        fast_lib.compile_regions(ddp, fast, UNetBlock)  # In place: `net` stays the module called.
    elif fast is not None and fast.compile:
        is_ddp = isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        net = fast_lib.compile_module(ddp, fast, fullgraph=not is_ddp)
    def compute_loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(net=net, images=images, labels=labels, augment_pipe=augment_pipe)
    return compute_loss

# The training data as an endless iterator of batches. The fast path keeps
# the workers alive and pins their batches for non-blocking copies. Workers
# are spawned unless the caller names another start method, as train.py does:
# fork copies a process that runs threads, and a fork server (Python 3.14's
# default) starts them without the stop signals held.
def start_data_loader(dataset_obj: Any, sampler: misc.InfiniteSampler, batch_gpu: int, data_loader_kwargs: dict,
                      worker_init_fn: Callable[[int], None] | None = None,
                      fast: FastSettings | None = None) -> Iterator:
    kwargs = dict(data_loader_kwargs)
    has_workers = kwargs.get('num_workers', 0) > 0
    if has_workers:
        kwargs.setdefault('multiprocessing_context', 'spawn')
        if worker_init_fn is None:
            worker_init_fn = functools.partial(workers.init_worker, parent_pid=os.getpid())
    if fast is not None:
        kwargs.update(persistent_workers=has_workers, pin_memory=fast.pin_memory)
    loader = torch.utils.data.DataLoader(dataset=dataset_obj, sampler=sampler, batch_size=batch_gpu,
                                         worker_init_fn=worker_init_fn, **kwargs)
    with _stop_signals_held():  # Workers start here.
        return iter(loader)

# Stop the workers of a loader started above: asked to finish, they exit at
# once. Deleting the loader does the same, but an error's traceback may keep
# it alive until the process exits, when multiprocessing sends the workers
# SIGTERM instead, which a shielded worker heeds only after its grace period.
def stop_data_loader(loader: Iterator) -> None:
    shutdown = getattr(loader, '_shutdown_workers', None)  # PyTorch's iterator over worker processes.
    if shutdown is not None:
        shutdown()

#----------------------------------------------------------------------------
# Setup of the training loop, part by part.

# The batch split: batch_size = batch_gpu * rounds of accumulation * processes.
# Returns batch_gpu and the rounds.
def split_batch_size(batch_size: int, batch_gpu: int | None, world_size: int) -> tuple[int, int]:
    if batch_size % world_size != 0:
        raise UserError(f'--batch={batch_size} does not divide evenly between {world_size} processes')
    batch_gpu_total = batch_size // world_size
    batch_gpu = min(batch_gpu or batch_gpu_total, batch_gpu_total)
    if batch_gpu_total % batch_gpu != 0:
        raise UserError(f'--batch-gpu={batch_gpu} does not divide the per-process batch of {batch_gpu_total} images')
    return batch_gpu, batch_gpu_total // batch_gpu

# The data: the dataset, the extra data mixed into it (Online SFBD: the clean
# images plus a buffer of denoised observations), and the sampler, whose
# position is part of the training state; the loader itself is started only
# once that position is final.
def _setup_data(dataset_kwargs: dict, extra_kwargs: dict | None, seed: int, batch_size: int, batch_gpu: int,
                device: torch.device) -> tuple[Any, ExtraData | None, misc.InfiniteSampler]:
    dist.print0('Loading dataset...')
    dataset_obj = construct_class_by_name(**dataset_kwargs)
    extra = None
    if extra_kwargs is not None:
        extra = make_extra_data(extra_kwargs, clean=dataset_obj, batch_size=batch_size, batch_gpu=batch_gpu, device=device)
        dataset_obj = extra.dataset
    sampler = misc.InfiniteSampler(dataset=dataset_obj, rank=dist.get_rank(), num_replicas=dist.get_world_size(), seed=seed)
    return dataset_obj, extra, sampler

# The network, the same initial weights on every rank, with a summary table of its layers.
def _build_network(network_kwargs: dict, dataset_obj: Any, seed: int, device: torch.device,
                   fast_settings: FastSettings | None, batch_gpu: int) -> torch.nn.Module:
    dist.print0('Constructing network...')
    interface_kwargs = dict(img_resolution=dataset_obj.resolution, img_channels=dataset_obj.num_channels,
                            label_dim=dataset_obj.label_dim)
    with torch.random.fork_rng(devices=[]):  # The same initial weights on every rank, bit for bit.
        torch.manual_seed(seed)
        net = construct_class_by_name(**network_kwargs, **interface_kwargs)
    net.to(device).train().requires_grad_(True)
    if fast_settings is not None:
        net = fast_lib.to_memory_format(net, fast_settings)
    if dist.get_rank() == 0:
        shape = [batch_gpu, net.img_channels, net.img_resolution, net.img_resolution]
        example = [torch.zeros(shape, device=device), torch.ones(shape[:1], device=device),
                   torch.zeros([batch_gpu, net.label_dim], device=device)]
        with torch.no_grad():
            misc.print_module_summary(net, example, max_nesting=2)
    return net

#----------------------------------------------------------------------------
# Continuing from a training state (resume_state_dump): EDM's, read as data,
# or ours: weights, optimizer, counters, data order, the extra data's state,
# and this process's random generators, restored once the loader has started.

@dataclasses.dataclass
class _Progress:
    cur_nimg:    int = 0                    # Images trained on.
    cur_tick:    int = 0                    # The next tick.
    transfer_id: str | None = None          # The --transfer source of the run (transfer_source_id).
    resumed_from: str | None = None         # The state elsewhere that the run began from (--resume), absolute.
    rng:         dict[str, Any] | None = None # This process's random generators to restore; None = as seeded.

def _resume(resume_state_dump: str | None, *, resume_from_run_dir: bool, resume_pkl: str | None, net: torch.nn.Module,
            ema: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: ExtraData | None, dataset_obj: Any,
            sampler: misc.InfiniteSampler, data_fingerprint: list[dict], allow_data_change: bool) -> _Progress:
    progress = _Progress(transfer_id=transfer_source_id(resume_pkl))
    if resume_state_dump is None:
        return progress
    if edm_state.is_edm_training_state(resume_state_dump):
        # EDM's state (read as data): weights and optimizer; the EMA from its
        # snapshot; the progress from its name. It records neither the data order
        # nor the random generators, which start afresh as they do in EDM.
        dist.print0(f'Loading EDM\'s training state from "{resume_state_dump}" (read as data)...')
        if resume_from_run_dir and resume_pkl is not None:
            raise UserError(f'--transfer={resume_pkl}: the run directory holds EDM\'s '
                            f'{os.path.basename(resume_state_dump)}; use a new --outdir for a new transfer')
        progress.cur_nimg = resume.restore_edm_state(resume_state_dump, net, ema, optimizer)
        progress.transfer_id = None
        progress.resumed_from = None if resume_from_run_dir else os.path.abspath(resume_state_dump)
        dist.print0(f'Continuing EDM\'s run at {progress.cur_nimg // 1000} kimg, the EMA from its snapshot; data order and '
                    'random generators start afresh.')
        return progress

    # This repository's state: everything it records.
    dist.print0(f'Loading training state from "{resume_state_dump}"...')
    state = _load_state(resume_state_dump)
    if resume_from_run_dir and resume_pkl is not None and state.get('transfer') != progress.transfer_id:
        origin = f'--transfer={state["transfer"]}' if state.get('transfer') else 'random weights'
        raise UserError(f'--transfer={resume_pkl}: the run directory holds {os.path.basename(resume_state_dump)} '
                        f'of a run that started from {origin}; use a new --outdir for a new transfer')
    progress.transfer_id = state.get('transfer')
    progress.resumed_from = state.get('resumed_from') if resume_from_run_dir else os.path.abspath(resume_state_dump)
    _check_same_data(state.get('data'), data_fingerprint, resume_state_dump, allow_data_change)
    if (extra is not None) != ('online' in state):
        raise UserError(f'{resume_state_dump}: ' + ('a run without --noisy; Online SFBD needs a new run (--transfer)'
                        if extra is not None else 'an Online SFBD run; give the same --noisy to continue it'))
    if extra is not None:
        extra.restore(state['online'], resume_state_dump)
    try:
        net.load_state_dict(state['net'])
        ema.load_state_dict(state['ema'])
        fast_lib.load_optimizer_state(optimizer, state['optimizer_state'])
    except (RuntimeError, ValueError, KeyError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{resume_state_dump}: the training state does not fit the network of these options '
                        f'({first_line})') from None
    progress.cur_nimg, progress.cur_tick = int(state['cur_nimg']), int(state['cur_tick'])
    if int(state['sampler']['size']) == len(dataset_obj):
        sampler.load_state_dict(state['sampler'])
    else:
        dist.print0(f'The dataset has {len(dataset_obj)} items, the state was written for '
                    f'{state["sampler"]["size"]}: the data order starts afresh.')
    if len(state.get('rng') or []) == dist.get_world_size():
        progress.rng = state['rng'][dist.get_rank()]
    else:
        dist.print0(f'The state was written by {len(state.get("rng") or [])} processes, not {dist.get_world_size()}: '
                    'random generators are seeded afresh.')
    return progress

#----------------------------------------------------------------------------
# The end of a tick: its statistics, summed over processes (the collector's
# and training_stats' default collector: stats.jsonl's line), and the tick
# line. Returns both and the tick's end time.

def end_tick(stats: training_stats.Collector, extra: ExtraData | None, device: torch.device, *, cur_tick: int,
             cur_nimg: int, total_kimg: float, start_time: float, tick_start_time: float, tick_start_nimg: int,
             maintenance_time: float) -> tuple[dict, str, float]:
    # Tick statistics, summed over processes.
    tick_end_time = time.time()
    tick_sec = tick_end_time - tick_start_time
    sec_per_kimg = tick_sec / (cur_nimg - tick_start_nimg) * 1000
    stats.report0('Progress/tick', cur_tick)
    stats.report0('Progress/kimg', cur_nimg / 1000)
    stats.report0('Timing/total_sec', tick_end_time - start_time)
    stats.report0('Timing/sec_per_tick', tick_sec)
    stats.report0('Timing/sec_per_kimg', sec_per_kimg)
    stats.report0('Timing/maintenance_sec', maintenance_time)
    stats.report0('Resources/cpu_mem_gb', psutil.Process(os.getpid()).memory_info().rss / 2**30)
    on_cuda = device.type == 'cuda'
    stats.report0('Resources/peak_gpu_mem_gb', torch.cuda.max_memory_allocated(device) / 2**30 if on_cuda else 0)
    stats.report0('Resources/peak_gpu_mem_reserved_gb', torch.cuda.max_memory_reserved(device) / 2**30 if on_cuda else 0)
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    extra_fields = extra.end_tick(stats, tick_sec, cur_nimg) if extra is not None else []
    stats.update()
    training_stats.default_collector.update()  # What code written for EDM reported through the module's functions.
    tick_stats = dict(training_stats.default_collector.as_dict(), **stats.as_dict())

    # Tick line: EDM's fields, the loss, non-finite counts and the time left.
    eta = max(total_kimg * 1000 - cur_nimg, 0) / 1000 * sec_per_kimg
    fields = [
        f'tick {cur_tick:<5d}',
        f'kimg {cur_nimg / 1000:<9.3f}',
        f'time {format_time(tick_end_time - start_time):<12s}',
        f'sec/tick {tick_sec:<7.1f}',
        f'sec/kimg {sec_per_kimg:<7.2f}',
        f'maintenance {maintenance_time:<6.1f}',
        f'cpumem {stats.mean("Resources/cpu_mem_gb"):<6.2f}',
        f'gpumem {stats.mean("Resources/peak_gpu_mem_gb"):<6.2f}',
        f'reserved {stats.mean("Resources/peak_gpu_mem_reserved_gb"):<6.2f}',
        f'loss {stats.mean("Loss/loss"):<8.4f}',
        f'nonfinite-loss {_total(stats, "Loss/nonfinite"):<3d}',
        f'nonfinite-grad {_total(stats, "Loss/nonfinite_grad"):<3d}',
        *extra_fields,
        f'eta {format_time(eta)}',
    ]
    return tick_stats, ' '.join(fields), tick_end_time

#----------------------------------------------------------------------------

def training_loop(
    run_dir:            str | None = '.',   # Output directory; only rank 0 writes to it (None on the others).
    dataset_kwargs:     dict | None = None, # Dataset class and options (class_name, path, ...).
    data_loader_kwargs: dict | None = None, # Options of torch.utils.data.DataLoader.
    network_kwargs:     dict | None = None, # Network class and options (class_name, model_type, ...).
    loss_kwargs:        dict | None = None, # Loss class and options.
    optimizer_kwargs:   dict | None = None, # Optimizer class and options (class_name, lr, betas, eps).
    augment_kwargs:     dict | None = None, # Augmentation pipeline class and options; None = no augmentation.
    online_kwargs:      dict | None = None, # Online SFBD (sfbd/online.py): observations and refresh options; None = off.
    seed:               int = 0,            # Seed of initialisation, data order and noise.
    batch_size:         int = 512,          # Images per optimizer step over all processes.
    batch_gpu:          int | None = None,  # Most images per pass on one device; None = no limit.
    total_kimg:         float = 200000,     # Training length in thousands of images.
    ema_halflife_kimg:  float = 500,        # Half-life of the weight average.
    ema_rampup_ratio:   float | None = 0.05,# Cap the half-life at this fraction of the images seen; None = no cap.
    lr_rampup_kimg:     float = 10000,      # Linear learning-rate warm-up; 0 = full rate from the first step.
    loss_scaling:       float = 1,          # Loss scale factor (float16 headroom).
    kimg_per_tick:      float = 50,         # Progress interval.
    snapshot_ticks:     int | None = 50,    # Network snapshot interval in ticks; None = none.
    state_dump_ticks:   int | None = 500,   # Training state interval in ticks; None = none.
    resume_pkl:         str | None = None,  # Network pickle to start from (--transfer); None = random weights.
    resume_state_dump:  str | None = None,  # Training state to continue from; None = start afresh.
    resume_from_run_dir: bool = False,      # The state was found in run_dir: refuse it if resume_pkl is given and differs.
    allow_data_change:  bool = False,       # Continue a training state on other data than it was written with?
    cudnn_benchmark:    bool = True,        # Let cuDNN pick kernels by timing them?
    device:             str | torch.device | None = None, # Training device; None = CUDA if available, else CPU.
    stop_requested:     Callable[[], bool] | None = None, # Polled after every step (see poll_interval); True = save and stop.
    start_run:          Callable[[], None] | None = None, # Called once all inputs are validated, before training.
    fast:               bool | FastSettings = False, # Fast path: True = the device's settings (torch_utils/fast.py).
) -> str:
    """Train until `total_kimg` (returns FINISHED) or until `stop_requested()` (returns PREEMPTED,
    after writing a network snapshot and a training state)."""
    dataset_kwargs = dict(dataset_kwargs or {})
    data_loader_kwargs = dict(data_loader_kwargs or {})
    network_kwargs = dict(network_kwargs or {})
    loss_kwargs = dict(loss_kwargs or {})
    optimizer_kwargs = dict(optimizer_kwargs or {})
    device = torch.device(device) if device is not None else dist.default_device()
    rank, world_size = dist.get_rank(), dist.get_world_size()
    fast_settings = fast if isinstance(fast, FastSettings) else fast_lib.fast_settings(device) if fast else None

    # Seeds and numerics: every process gets its own stream (different noise
    # and augmentations); the initial weights come from rank 0 through DDP.
    start_time = time.time()
    _seed_process(seed, rank)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    fast_lib.set_tf32(fast_settings is not None and fast_settings.tf32)
    fast_lib.set_cudnn_benchmark_limit(fast_settings)
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False

    # Batch split, data (with extra data: Online SFBD's buffer), network.
    batch_gpu, num_accumulation_rounds = split_batch_size(batch_size, batch_gpu, world_size)
    dataset_obj, extra, dataset_sampler = _setup_data(dataset_kwargs, online_kwargs, seed, batch_size, batch_gpu, device)
    data_fingerprint = dataset_obj.fingerprint()
    net = _build_network(network_kwargs, dataset_obj, seed, device, fast_settings, batch_gpu)

    # Loss, augmentation and optimizer.
    dist.print0('Setting up optimizer...')
    loss_fn = construct_class_by_name(**loss_kwargs)
    augment_pipe = construct_class_by_name(**augment_kwargs) if augment_kwargs is not None else None
    optimizer = construct_class_by_name(params=net.parameters(), **optimizer_kwargs,
                                             **fast_lib.optimizer_flags(fast_settings))

    # Starting weights (--transfer; a training state to resume from supersedes
    # them), then the weight average.
    if resume_pkl is not None and resume_state_dump is None:
        dist.print0(f'Loading network weights from "{resume_pkl}"...')
        _load_transfer(resume_pkl, net, device)
    ema = copy.deepcopy(net).to(device).eval().requires_grad_(False)

    # Continue from a training state: weights, optimizer, counters, data order
    # and (once the data loader has started) the random generators.
    progress = _resume(resume_state_dump, resume_from_run_dir=resume_from_run_dir, resume_pkl=resume_pkl, net=net,
                       ema=ema, optimizer=optimizer, extra=extra, dataset_obj=dataset_obj, sampler=dataset_sampler,
                       data_fingerprint=data_fingerprint, allow_data_change=allow_data_change)
    cur_nimg, cur_tick, transfer_id = progress.cur_nimg, progress.cur_tick, progress.transfer_id
    resumed_from = progress.resumed_from

    # Gradient averaging between processes. On the fast path the network
    # (not its weight average) computes at the fast path's precision.
    if fast_settings is not None:
        fast_lib.set_compute_dtype(net, fast_settings.dtype)
        fast_lib.set_pool_resample(net, fast_settings.pool_resample)
    ddp = net
    if torch.distributed.is_initialized() and world_size > 1:
        ddp = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == 'cuda' else None)

    # Snapshot (EMA network for sampling) and training state (for resuming),
    # both collective. Every rank first checks its EMA against rank 0's; then
    # rank 0 writes a CPU copy. (Copying a network may construct a fresh one,
    # which draws random numbers: the generators are shielded so that
    # snapshots do not change the run.) Named by position, never replacing a
    # file of another position (training/run_files.py).
    namer = run_files.Namer(run_dir) if rank == 0 else None
    def save_snapshot() -> None:
        data: dict[str, Any] = dict(ema=ema, loss_fn=loss_fn, augment_pipe=augment_pipe, dataset_kwargs=dict(dataset_kwargs))
        for value in data.values():
            if isinstance(value, torch.nn.Module):
                misc.check_ddp_consistency(value)
        if rank != 0:
            return
        for key, value in data.items():
            if isinstance(value, torch.nn.Module):
                with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
                    data[key] = copy.deepcopy(value).cpu().eval().requires_grad_(False)
        persistence.save_network_pickle(namer.path(run_files.SNAPSHOT_PREFIX, cur_nimg), data)

    def save_state() -> None:
        rng_states = _gather(_rng_state(device))
        if rank != 0:
            return
        state = dict(
            format=STATE_FORMAT, cur_nimg=cur_nimg, cur_tick=cur_tick + 1,  # The tick that comes next.
            batch_size=batch_size, world_size=world_size, seed=seed, transfer=transfer_id, resumed_from=resumed_from,
            net=net.state_dict(), ema=ema.state_dict(), optimizer_state=optimizer.state_dict(),
            sampler=dataset_sampler.state_dict(), rng=rng_states, data=data_fingerprint,
            schedule=dict(lr=optimizer_kwargs['lr'], lr_rampup_kimg=lr_rampup_kimg,  # Restored by a resume (training/resume.py).
                          ema_halflife_kimg=ema_halflife_kimg, ema_rampup_ratio=ema_rampup_ratio),
            options=_plain(dict(network_kwargs=network_kwargs, loss_kwargs=loss_kwargs,
                                augment_kwargs=augment_kwargs, dataset_kwargs=dataset_kwargs)))
        if extra is not None:
            state['online'] = extra.state_dict()
        _save_state(namer.path(run_files.STATE_PREFIX, cur_nimg, lambda path, nimg: state_nimg(path) == nimg), state)

    # Everything is in place: create the run directory (unless the run is
    # complete already); then the batches: the loader, the extra data made
    # with the starting network, the random generators restored
    # (training/extra_data.start_batches keeps that order).
    if cur_nimg >= total_kimg * 1000:
        dist.print0(f'Training already reached {cur_nimg / 1000:g} kimg of {total_kimg:g}; nothing to do.')
        return FINISHED
    if start_run is not None:
        start_run()
    worker_init_fn = functools.partial(_init_worker, parent_pid=os.getpid(), shield=stop_requested is not None)
    loaders: list[Iterator] = []  # Stopped at the end, whatever happens (stop_data_loader).
    def start_loader() -> Iterator:
        loaders.append(start_data_loader(dataset_obj, dataset_sampler, batch_gpu, data_loader_kwargs,
                                         worker_init_fn=worker_init_fn, fast=fast_settings))
        return loaders[-1]
    dataset_iterator = start_batches(
        extra,
        start_loader=start_loader,
        restore_rng=lambda: _set_rng_state(progress.rng, device) if progress.rng is not None else None,
        net=net, ema=ema, cur_nimg=cur_nimg, total_nimg=total_kimg * 1000)
    stats = training_stats.Collector()
    step = functools.partial(
        training_step, ddp=ddp, net=net, ema=ema, optimizer=optimizer, batches=dataset_iterator,
        compute_loss=loss_function(loss_fn, ddp, augment_pipe, fast_settings), sampler=dataset_sampler,
        stats=stats, device=device, batch_size=batch_size, batch_gpu=batch_gpu,
        num_accumulation_rounds=num_accumulation_rounds, loss_scaling=loss_scaling, lr=optimizer_kwargs['lr'],
        lr_rampup_kimg=lr_rampup_kimg, ema_halflife_kimg=ema_halflife_kimg, ema_rampup_ratio=ema_rampup_ratio,
        fast=fast_settings, extra=extra)

    # The stop flag is read after every step; with several processes that is
    # a collective, which the fast path makes only every few steps (and at
    # the end of every tick).
    poll_interval = fast_settings.stop_poll_steps if fast_settings is not None and world_size > 1 else 1

    # Train.
    dist.print0(f'Training for {total_kimg:g} kimg' + (f', from {cur_nimg / 1000:g} kimg' if cur_nimg else '') + '...')
    compiling = fast_settings is not None and fast_settings.compile
    if compiling:
        cache = fast_lib.use_compile_cache(fast_settings)
        dist.print0(f'Compiling the network (torch.compile, {fast_settings.compile_backend}) at the first step, '
                    'once per run: DDPM++ took 135 s on an H200 with an empty cache'
                    + (f'; compiled code is cached in {cache}' if cache else '') + '.')
    dist.print0()
    tick_start_nimg, tick_start_time = cur_nimg, time.time()
    maintenance_time = tick_start_time - start_time
    stats_jsonl = None
    num_steps = 0
    try:
        while True:

            # One optimizer step; then, is this the end of a tick? The first tick
            # ends after one step.
            step(cur_nimg)
            if compiling and num_steps == 0:  # The first step compiles.
                dist.print0(f'The first step, with compiling, took {time.time() - tick_start_time:.1f} s.')
            if extra is not None:  # Online SFBD: every few steps, denoise the next observations again.
                extra.after_step(net=net, ema=ema)
            cur_nimg += batch_size
            num_steps += 1
            done = cur_nimg >= total_kimg * 1000
            tick_due = cur_tick == 0 or cur_nimg >= tick_start_nimg + kimg_per_tick * 1000
            poll = stop_requested is not None and not done and (tick_due or num_steps % poll_interval == 0)
            preempted = poll and dist.any_rank(stop_requested())
            if not (done or preempted or tick_due):
                continue

            tick_stats, tick_line, tick_end_time = end_tick(
                stats, extra, device, cur_tick=cur_tick, cur_nimg=cur_nimg, total_kimg=total_kimg, start_time=start_time,
                tick_start_time=tick_start_time, tick_start_nimg=tick_start_nimg, maintenance_time=maintenance_time)
            dist.print0(tick_line)
            if preempted:
                dist.print0()
                dist.print0('Stop requested: saving a snapshot and a training state...')

            # Network snapshot and training state.
            # A stop request saves both even where the ticks turn them off (None): nothing is lost.
            if preempted or (snapshot_ticks is not None and (done or cur_tick % snapshot_ticks == 0)):
                save_snapshot()
            if preempted or (state_dump_ticks is not None and (done or (cur_tick != 0 and cur_tick % state_dump_ticks == 0))):
                save_state()
            if preempted:
                # Every process waits for rank 0's files: torchrun stops the others as soon as one exits 75.
                dist.barrier()

            # One line of stats.jsonl per tick.
            if rank == 0:
                if stats_jsonl is None:
                    os.makedirs(run_dir, exist_ok=True)
                    stats_jsonl = open(os.path.join(run_dir, 'stats.jsonl'), 'at')
                stats_jsonl.write(json.dumps(dict(tick_stats, timestamp=time.time())) + '\n')
                stats_jsonl.flush()

            # Next tick.
            cur_tick += 1
            tick_start_nimg, tick_start_time = cur_nimg, time.time()
            maintenance_time = tick_start_time - tick_end_time
            if done or preempted:
                break
    finally:
        del dataset_iterator
        for loader in loaders:  # Now, on errors too (a traceback would keep the loader alive).
            stop_data_loader(loader)
        if stats_jsonl is not None:
            stats_jsonl.close()

    if extra is not None and not preempted:
        dist.print0()
        for line in extra.final_lines(cur_nimg):  # Online SFBD: the refresh passes made, against the plan; a short run's note.
            dist.print0(line)
    dist.print0()
    dist.print0('Exiting...')
    return PREEMPTED if preempted else FINISHED

#----------------------------------------------------------------------------
