"""Denoising an observation set into PNG files: denoise.py's work as library functions (bench.py
times the loop, and other SFBD code can call it).

`denoise_images` is the loop: each process takes its share of the given observations batch by batch,
runs the backward sampler (sfbd/backward.py) from each observation and writes the result atomically
as an 8-bit PNG under the observation's own name. On the fast path (torch_utils/fast.py) the
network is the prepared one, the next batch is read and the last one written on background threads
while a batch is denoised, and a compiled network gets batches of one size.

`denoise_command` is a whole run of denoise.py with its output and resume rules (shards, the options
record, the images still missing, dataset.json, the --grid picture); denoise.py's docstring states
them. Not here: the backward sampler itself (sfbd/backward.py) and the command line (denoise.py,
tools/denoise_setup.py).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import time
from typing import Any

import numpy as np
import torch
import tqdm

from dnnlib.outputs import OutputDir, OutputFile, ToolOutputs, is_complete_png
from dnnlib.util import UserError, atomic_write, file_sha256
from sfbd.backward import GRID_KEYS, backward_sample, grid_groups, image_seeds
from sfbd.grids import choose_images, is_comparison_grid, load_png, read_originals, save_comparison_grid
from sfbd.observations import ObservationSet, listing_digest, with_ext
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.fast import FastSettings
from torch_utils.persistence import load_network
from training.dataset import METADATA_FNAME
from training.generation import rank_batches, save_pngs, save_pngs_later
from training.sampler import ABLATION_KEYS, StackedRandomGenerator, check_finite, check_sampler_options, to_uint8

OPTIONS_FNAME = 'denoise_options.json'
DEFAULT_BATCH = 64  # denoise.py's --batch, unless --fast sizes it to the device.

#----------------------------------------------------------------------------
# Shards: task I of N takes the contiguous index range [I*n//N, (I+1)*n//N),
# so the N ranges cover the set once, whatever n and N are.

def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' as (I, N), with 0 <= I < N."""
    try:
        index, count = (int(part) for part in str(text).split('/'))
    except ValueError:
        raise UserError(f'"{text}" is not of the form I/N, e.g. 0/4') from None
    if not 0 <= index < count:
        raise UserError(f'"{text}" needs 0 <= I < N')
    return index, count

def shard_indices(num_items: int, shard: tuple[int, int]) -> range:
    index, count = shard
    return range(index * num_items // count, (index + 1) * num_items // count)

#----------------------------------------------------------------------------
# Sampler options per mode. The ODE takes all of EDM's options; the SDE has
# its own noise and takes only the grid options.

def mode_sampler_kwargs(mode: str, sampler_kwargs: dict) -> dict:
    kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    if mode == 'sde':
        for key in ABLATION_KEYS:
            if key in kwargs:
                raise UserError(f'--{key}: an ODE ablation option; it does not apply to --mode=sde')
        if kwargs.get('S_churn', 0) > 0:
            raise UserError('--S_churn: the ODE\'s churn does not apply to --mode=sde, which has its own noise')
        kwargs = {k: v for k, v in kwargs.items() if k in GRID_KEYS}
    return kwargs

#----------------------------------------------------------------------------
# The network must fit the observations: same resolution and channels, and a
# conditional network needs labels of its width (class indices may cover
# fewer classes than the network knows).

def check_network(net: torch.nn.Module, obs: ObservationSet, network_pkl: str, data: str) -> None:
    channels, height, _width = obs.image_shape
    if (net.img_channels, net.img_resolution) != (channels, height):
        raise UserError(f'--network={network_pkl}: expects {net.img_channels}x{net.img_resolution}x{net.img_resolution} '
                        f'images, but --data={data} holds {channels}x{height}x{height} observations')
    if net.label_dim:
        if obs.labels is None:
            raise UserError(f'--data={data}: has no labels, but the network is class-conditional '
                            f'({net.label_dim} classes)')
        if obs.label_dim > net.label_dim or (obs.label_dim < net.label_dim and not obs.dataset.has_onehot_labels):
            raise UserError(f'--data={data}: labels have {obs.label_dim} entries, the network expects {net.label_dim}')

#----------------------------------------------------------------------------
# The options record that claims an output directory. Everything that decides
# the images is compared; the network by content, so moving the file is fine
# (the claim ignores its path). The images are the outputs that depend on it.

def sigma_record(sigmas: np.ndarray) -> float | dict:
    """The noise levels of a run as recorded: the number when all are equal, else their range,
    count and a digest of the levels in file order (so that a set with other levels is refused)."""
    sigmas = np.asarray(sigmas, dtype='<f8')
    if len(sigmas) and np.all(sigmas == sigmas[0]):
        return float(sigmas[0])
    return dict(per_image=True, count=len(sigmas), min=float(sigmas.min()), max=float(sigmas.max()),
                sha256=hashlib.sha256(sigmas.tobytes()).hexdigest())

def describe_levels(sigma: float | np.ndarray) -> str:
    if np.ndim(sigma) == 0:
        return f'sigma {sigma:g}'
    return f'sigma {np.min(sigma):g} to {np.max(sigma):g} (per image)'

#----------------------------------------------------------------------------
# dataset.json of the outputs: the observation set's labels under the PNG
# names. Written only when every image is present.

def missing_outputs(outdir: str, obs: ObservationSet, indices: range | list[int]) -> list[int]:
    """Indices whose image is absent, empty, cut short, or not of the observations' size and channels."""
    shape = obs.image_shape
    return [i for i in indices if not is_complete_png(output_path(outdir, obs.fnames[i]), shape)]

def finalize_outdir(outdir: str, obs: ObservationSet) -> int:
    """Write dataset.json if the set is complete, remove it if not; returns the number of images still missing."""
    missing = missing_outputs(outdir, obs, range(len(obs)))
    if missing and os.path.isfile(os.path.join(outdir, METADATA_FNAME)):
        os.remove(os.path.join(outdir, METADATA_FNAME))  # An image went missing or was cut short.
    if not missing:
        labels = None if obs.labels is None else [[with_ext(f, '.png'), l] for f, l in zip(obs.fnames, obs.labels)]
        with atomic_write(os.path.join(outdir, METADATA_FNAME), 'w') as f:
            json.dump(dict(labels=labels), f)
    return len(missing)

#----------------------------------------------------------------------------
# Comparison picture (--grid): for images chosen anywhere in the set, each cell
# shows original | observation | denoised, the pipeline's order (the release
# writes clean | denoised | noisy, one file per image). The originals come
# from --originals only; they go into the picture, never into a dataset. The
# picture is written by whichever run finds every chosen image denoised.

def save_grid(path: str, outdir: str, obs: ObservationSet, indices: list[int], originals: np.ndarray | None = None) -> bool:
    """Write the picture of `indices` if every one is denoised; returns whether it was written."""
    if missing_outputs(outdir, obs, indices):
        return False
    y, _labels = obs.load(indices)
    columns = [to_uint8(y).numpy(), np.stack([load_png(output_path(outdir, obs.fnames[i])) for i in indices])]
    save_comparison_grid(path, columns if originals is None else [originals, *columns])
    return True

#----------------------------------------------------------------------------
# Where an observation's denoised image goes, and the labels a network takes
# (class indices may cover fewer classes than a conditional network knows).

def output_path(outdir: str, fname: str) -> str:
    return os.path.join(outdir, *with_ext(fname, '.png').split('/'))

def network_labels(net: torch.nn.Module, labels: torch.Tensor | None) -> torch.Tensor | None:
    if not net.label_dim or labels is None:
        return None
    return torch.nn.functional.pad(labels, (0, net.label_dim - labels.shape[1]))

#----------------------------------------------------------------------------
# The denoising loop of one process: its share of `todo`, batch by batch.
# With per-image noise levels, batches never mix images whose grids start at
# different nodes.

def denoise_images(net: torch.nn.Module, obs: ObservationSet, outdir: str, todo: list[int], *,
                   sigma: float | np.ndarray, mode: str, seed: int, max_batch_size: int, device: torch.device,
                   sampler_kwargs: dict, fast: FastSettings | None = None, progress: bool = True) -> int:
    """Denoise this process's part of `todo`; returns the number of images written. `sigma` is one
    noise level for all, or the level of every image of the set ([len(obs)])."""
    parts = [todo]
    if np.ndim(sigma) > 0:
        groups = grid_groups(net, torch.as_tensor(np.asarray(sigma)[todo]), mode, **sampler_kwargs) if todo else []
        parts = [[todo[int(k)] for k in group] for group in groups]
    batches = [batch for part in parts if part
               for batch in rank_batches(part, max_batch_size, dist.get_rank(), dist.get_world_size()) if batch]
    total = sum(len(b) for b in batches)

    def denoise(y: torch.Tensor, labels: torch.Tensor | None, indices: list[int]) -> torch.Tensor:
        rnd = StackedRandomGenerator(device, image_seeds(seed, indices))
        level = sigma if np.ndim(sigma) == 0 else torch.as_tensor(np.asarray(sigma)[indices])
        x = backward_sample(net, y, level, labels, mode=mode, randn_like=rnd.randn_like, **sampler_kwargs)
        check_finite(x, f'{obs.path}: observations {obs.fnames[indices[0]]} to {obs.fnames[indices[-1]]}')
        return x

    with tqdm.tqdm(total=total, unit='img', disable=(not progress or dist.get_rank() != 0), desc='denoise') as bar:
        if fast is None:
            for batch in batches:
                y, labels = obs.load(batch)
                labels = network_labels(net, labels)
                x = denoise(y.to(device), None if labels is None else labels.to(device), batch)
                save_pngs([output_path(outdir, obs.fnames[i]) for i in batch],
                          to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
                bar.update(len(batch))
            return total

        # Fast path: reading, denoising and writing overlap.
        size = max((len(b) for b in batches), default=0) if fast.compile else 0
        def load(batch: list[int]) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
            padded = fast_lib.pad_batch(batch, size)
            y, labels = obs.load(padded)
            if fast.pin_memory and device.type == 'cuda':
                y, labels = y.pin_memory(), None if labels is None else labels.pin_memory()
            return padded, y, labels
        with fast_lib.BackgroundWriter() as writer, torch.inference_mode():
            for batch, (padded, y, labels) in zip(batches, fast_lib.prefetch(load, batches)):
                labels = network_labels(net, labels)
                x = denoise(fast_lib.to_device(y, device, fast),
                            None if labels is None else fast_lib.to_device(labels, device, fast), padded)
                host = fast_lib.host_copy(to_uint8(x[:len(batch)]).permute(0, 2, 3, 1))
                save_pngs_later(writer, [output_path(outdir, obs.fnames[i]) for i in batch], host)
                bar.update(len(batch))
    return total

#----------------------------------------------------------------------------
# A whole run of denoise.py, messages included.

def denoise_command(network_pkl: str, data: str, outdir: str, *, sigma: float | None = None, force_sigma: bool = False,
                    mode: str = 'ode', seed: int = 0, shard: tuple[int, int] = (0, 1), max_batch_size: int | None = None,
                    device: str | None = None, fast: bool = False, grid: str | None = None, grid_count: int = 32,
                    grid_seed: int = 0, originals: str | None = None, finalize: bool = False,
                    sampler_kwargs: dict | None = None) -> int | None:
    """denoise.py's work: this task's shard of the observations denoised into `outdir` (nothing with
    `finalize`), then dataset.json and the --grid picture if the set is complete. Returns the number of images
    of the set still missing (on rank 0; None on the others). Joins the process group; the caller
    leaves it."""
    sampler_kwargs = dict(sampler_kwargs or {})
    # Where the outputs go: apart from the inputs, and writable.
    check_grid_options(grid, originals)
    outputs = ToolOutputs('denoise.py', [OutputDir(outdir, '--outdir', OPTIONS_FNAME), OutputFile(grid, '--grid', is_comparison_grid)],
                          [(data, '--data'), (network_pkl, '--network'), (originals, '--originals')])
    outputs.check()
    device = dist.resolve_device(device)
    dist.init(device)
    obs = ObservationSet(data)

    levels = noise_levels(obs, sigma, force_sigma, data)
    kwargs = mode_sampler_kwargs(mode, sampler_kwargs)
    indices = shard_indices(len(obs), shard)

    # The images of the --grid picture, and their originals, before any work.
    grid_indices = choose_images(len(obs), grid_count, grid_seed) if grid is not None else []
    grid_originals = read_originals(obs, originals, grid_indices) if originals is not None else None

    record = dict(network=network_pkl, network_sha256=file_sha256(network_pkl), data=os.path.abspath(data),
                  data_digest=listing_digest(data), num_observations=len(obs),
                  sigma=sigma_record(np.broadcast_to(levels, [len(obs)])), mode=mode, seed=seed, sampler=kwargs)

    # The network must fit the data; only then is the output directory claimed.
    net = None
    settings = fast_lib.fast_settings(device) if fast else None
    if not finalize:
        dist.print0(f'Loading network from "{network_pkl}"...')
        net = dist.rank0_first(lambda: load_network(network_pkl), f'the network {network_pkl}').to(device)
        check_network(net, obs, network_pkl, data)
        check_levels(net, levels, kwargs, sigma, data)
        max_batch_size = fast_lib.sampling_batch_size(net, device, settings, max_batch_size, DEFAULT_BATCH)
        if settings is not None:
            net = fast_lib.prepare_sampling_network(net, settings)
    missing = None
    with outputs.claim(record, create=not finalize, ignore=['network']):
        if net is not None:
            denoise_shard(net, obs, outdir, indices, shard=shard, sigma=levels, mode=mode, seed=seed,
                          max_batch_size=max_batch_size, device=device, sampler_kwargs=kwargs, fast=settings)

        if dist.get_rank() == 0:
            if grid is not None:
                report_grid(grid, outdir, obs, grid_indices, grid_originals, grid_seed)
            missing = finish_set(outdir, obs, finalize)
    obs.close()
    return missing

# --originals go into the --grid picture only.
def check_grid_options(grid: str | None, originals: str | None) -> None:
    if originals is not None and grid is None:
        raise UserError('--originals adds the originals to the --grid picture; give --grid too')

# The sampler options against a network's noise levels, and the observations'
# levels against the sampler's: each observation's backward pass runs from its
# own level, inside the sampler's range, down to --sigma_min.
def check_levels(net: Any, levels: float | np.ndarray, kwargs: dict, sigma: float | None, data: str) -> None:
    check_sampler_options(net, kwargs)
    highest, lowest = float(np.max(levels)), float(np.min(levels))
    top = min(kwargs.get('sigma_max', 80), float(net.sigma_max))
    if highest > top:
        source = '--sigma' if sigma is not None else f'--data={data}'
        raise UserError(f'{source}: noise level {highest:g} is above the highest noise level of the sampler '
                        f'({top:g}: --sigma_max, or the network\'s)')
    if kwargs.get('sigma_min') is not None and not kwargs['sigma_min'] < lowest:
        raise UserError(f'--sigma_min={kwargs["sigma_min"]:g} is not below the noise level of the observations '
                        f'({lowest:g}); the backward sampling runs from there down to --sigma_min')
    if lowest < float(net.sigma_min):  # Allowed, as in the release, but the network never trained there.
        dist.print0(f'Note: noise level {lowest:g} is below the lowest the network knows ({float(net.sigma_min):g}); '
                    'it denoises outside the range it was trained on.')

# What can be checked of a denoising run before its network exists (sfbd.rounds
# checks a round's --denoise-args so, before the pretraining): the options
# together, the device, the noise levels against the data, and the sampler
# against the widest range of levels a network may support.
class _AnyNetwork:
    sigma_min, sigma_max = 0.0, float('inf')

    @staticmethod
    def round_sigma(sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

def check_denoise_options(data: str, *, sigma: float | None = None, force_sigma: bool = False, mode: str = 'ode',
                          device: str | None = None, grid: str | None = None, originals: str | None = None,
                          sampler_kwargs: dict | None = None) -> None:
    check_grid_options(grid, originals)
    dist.resolve_device(device)
    obs = ObservationSet(data)
    try:
        levels = noise_levels(obs, sigma, force_sigma, data)
    finally:
        obs.close()
    check_levels(_AnyNetwork(), levels, mode_sampler_kwargs(mode, sampler_kwargs or {}), sigma, data)

# The same from denoise.py's parsed options (its click parameters, the sampler's among them).
def check_denoise_params(data: str, params: dict) -> None:
    own = set(inspect.signature(denoise_command).parameters)
    check_denoise_options(data, sigma=params.get('sigma'), force_sigma=params.get('force_sigma', False),
                          mode=params.get('mode', 'ode'), device=params.get('device'), grid=params.get('grid'),
                          originals=params.get('originals'),
                          sampler_kwargs={k: v for k, v in params.items() if k not in own})

# Noise levels: the set's own (one, or one per image) unless --sigma is forced.
def noise_levels(obs: ObservationSet, sigma: float | None, force_sigma: bool, data: str) -> float | np.ndarray:
    if sigma is None:
        return obs.sigma if obs.sigma is not None else obs.sigmas
    if obs.sigma is None and not force_sigma:
        lo, hi = obs.sigma_range
        raise UserError(f'--sigma={sigma}: --data={data} records a noise level per image ({lo:g} to {hi:g}); '
                        'add --force-sigma to denoise every image from --sigma anyway')
    if obs.sigma is not None and not math.isclose(sigma, obs.sigma, rel_tol=1e-6) and not force_sigma:
        raise UserError(f'--sigma={sigma} differs from the noise level {obs.sigma} recorded in --data={data}; '
                        'add --force-sigma to use it anyway')
    return sigma

# The --grid picture, once every image of it is there (any shard may be last).
def report_grid(grid: str, outdir: str, obs: ObservationSet, indices: list[int], originals: np.ndarray | None,
                grid_seed: int) -> None:
    if save_grid(grid, outdir, obs, indices, originals):
        print(f'Wrote {grid}: {len(indices)} images chosen with --grid-seed={grid_seed}, '
              + ('original | ' if originals is not None else '') + 'observation | denoised.')
    else:
        print(f'{grid}: not written yet, some of its images are left to other shards; the run that finds '
              'them all (or --finalize with the same --grid options) writes it.')

# Whoever finds the set complete writes dataset.json; returns the images still missing.
def finish_set(outdir: str, obs: ObservationSet, finalize: bool) -> int:
    missing = finalize_outdir(outdir, obs)
    if missing == 0:
        print(f'All {len(obs)} images are in "{outdir}"; wrote {METADATA_FNAME}.')
    elif finalize:
        raise UserError(f'--outdir={outdir}: {missing} of {len(obs)} images are still missing; '
                        'run the remaining shards first')
    else:
        print(f'{missing} of {len(obs)} images are left to other shards; the task that completes the set '
              f'writes {METADATA_FNAME} (or run with --finalize).')
    return missing

# This process's part of the shard: list what is missing (every process before
# any of them writes), then denoise it.
def denoise_shard(net: torch.nn.Module, obs: ObservationSet, outdir: str, indices: range, *, shard: tuple[int, int],
                  sigma: float | np.ndarray, mode: str, seed: int, max_batch_size: int, device: torch.device,
                  sampler_kwargs: dict, fast: FastSettings | None = None) -> None:
    todo = missing_outputs(outdir, obs, indices)
    dist.barrier()
    if todo and dist.get_rank() == 0 and os.path.isfile(os.path.join(outdir, METADATA_FNAME)):
        os.remove(os.path.join(outdir, METADATA_FNAME))  # The set is incomplete again.
    dist.print0(f'Denoising {len(todo)} of {len(indices)} observations (shard {shard[0]}/{shard[1]}, '
                f'{len(obs) - len(indices)} in other shards) at {describe_levels(sigma)} with the {mode.upper()} '
                f'sampler to "{outdir}"' + (' (fast path)' if fast is not None else '') + '...')
    start = time.time()
    count = denoise_images(net, obs, outdir, todo, sigma=sigma, mode=mode, seed=seed,
                           max_batch_size=max_batch_size, device=device, sampler_kwargs=sampler_kwargs, fast=fast)
    elapsed = time.time() - start
    count = int(dist.all_reduce_sum(torch.tensor([count], dtype=torch.int64, device=device)).item())
    if count:
        dist.print0(f'Denoised {count} images in {elapsed:.1f} s ({count / max(elapsed, 1e-9):.1f} img/s).')
    dist.barrier()

#----------------------------------------------------------------------------
