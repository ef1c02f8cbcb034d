"""Denoise noisy observations with a trained network: SFBD's backward sampling.

Each observation y of an observation set (docs/observations.md) is taken back from its noise level
sigma to 0 by the reverse process of the given network, starting at y itself (sfbd/backward.py), and
saved as an 8-bit PNG under the observation's own name. A set may give each observation its own
sigma: every image then starts from its own level, on the same grid rule. The output directory is an EDM dataset,
ready for `train.py --data`, once every image is there.

Work can be split between independent tasks (`--shard=I/N`, e.g. one per SLURM array task) and,
inside a task, between processes (`torchrun`). All of them may write into one --outdir:

- every image is written atomically, so an image file is either complete or absent;
- a rerun denoises only the images that are missing, which also resumes interrupted tasks;
- the options are recorded in `denoise_options.json` once the network and the data have been
  checked; a run with other options (another network, noise levels, mode, seed, grid) into the same
  --outdir is refused, so images of different models never mix (per-image noise levels are
  recorded by range, count and digest). The record is written
  create-exclusively, so that of several tasks starting at once with different options only one
  goes on (dnnlib/outputs.py); a run that fails before writing an image takes its record back;
- --outdir must be new, empty or made by denoise.py, and apart from --data and --network: a
  dataset is never written into;
- an image that exists but is empty or cut short counts as missing;
- `dataset.json` (labels) is built from the observation set, not from the shards: whichever task
  finishes and finds every image present writes it, and `--finalize` writes it on demand (e.g. on a
  file system where tasks may not see each other's files at once). Its presence marks a complete set.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time

import click
import numpy as np
import torch

from dnnlib.cli import FiniteFloat
from dnnlib.outputs import OutputClaim, any_file, check_apart, check_output_dir, check_output_file, is_complete_png
from dnnlib.util import UserError, atomic_write, file_sha256, report_user_errors
from sfbd.backward import GRID_KEYS, MODES
from sfbd.denoising import denoise_images, output_path
from sfbd.grids import choose_images, load_png, read_originals, save_comparison_grid
from sfbd.observations import ObservationSet, with_ext
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.fast import FastSettings
from torch_utils.persistence import load_network
from training.dataset import METADATA_FNAME
from tools.options import sampler_options
from training.sampler import ABLATION_KEYS, check_sampler_options, to_uint8

OPTIONS_FNAME = 'denoise_options.json'
DEFAULT_BATCH = 64  # --batch, unless --fast sizes it to the device.

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

def _shard_option(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        return parse_shard(value)
    except UserError as e:
        raise click.BadParameter(str(e)) from None

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
# The claim of an output directory: the options record. Everything that
# decides the images is compared; the network by content, so moving the file
# is fine. The images are the outputs that depend on it.

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

def claim_outdir(outdir: str, record: dict, create: bool = True) -> OutputClaim:
    return OutputClaim(outdir, '--outdir', OPTIONS_FNAME, record, command='denoise.py', create=create,
                       has_outputs=lambda: any_file(outdir, ['.png']), ignore=['network'])

#----------------------------------------------------------------------------
# dataset.json of the outputs: the observation set's labels under the PNG
# names. Written only when every image is present.

def missing_outputs(outdir: str, obs: ObservationSet, indices: range | list[int]) -> list[int]:
    """Indices whose image is absent, empty or cut short."""
    return [i for i in indices if not is_complete_png(output_path(outdir, obs.fnames[i]))]

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

@click.command()
@click.option('--network', 'network_pkl',  help='Network pickle (this project\'s or EDM\'s)', metavar='PATH|URL',  type=str, required=True)
@click.option('--data',                    help='Observation set (docs/observations.md)', metavar='ZIP|DIR',      type=str, required=True)
@click.option('--outdir',                  help='Where to save the denoised images', metavar='DIR',              type=str, required=True)
@click.option('--sigma',                   help='Noise level of all observations  [default: the set\'s own, one or per image]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True))
@click.option('--force-sigma',             help='Allow a --sigma that differs from the set\'s own level(s)',    is_flag=True)
@click.option('--mode',                    help='Backward sampler: probability-flow ODE or reverse SDE',         type=click.Choice(MODES), default='ode', show_default=True)
@click.option('--seed',                    help='Seed of the per-image noise (SDE, churn)', metavar='INT',       type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--shard',                   help='Denoise only part I of N (0 <= I < N)', metavar='I/N',          type=str, callback=_shard_option, default='0/1', show_default=True)
@click.option('--batch', 'max_batch_size', help=f'Maximum batch size  [default: {DEFAULT_BATCH}; with --fast on a GPU, what fits]', metavar='INT', type=click.IntRange(min=1))
@click.option('--device',                  help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str, default=None)
@click.option('--fast',                    help='Fast path: the network in bf16, compiled, batches sized to the GPU, reading and writing overlapped (docs/performance.md)', is_flag=True)
@click.option('--grid',                    help='Also save a picture of [original |] observation | denoised for chosen images', metavar='PNG', type=str, default=None)
@click.option('--grid-count',              help='Images in the --grid picture, chosen anywhere in the set', metavar='INT', type=click.IntRange(min=1), default=32, show_default=True)
@click.option('--grid-seed',               help='Seed of the choice of --grid images', metavar='INT',            type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--originals',               help='Source dataset of the split that made --data: adds the originals to --grid', metavar='ZIP|DIR', type=str, default=None)
@click.option('--finalize',                help='Denoise nothing; write dataset.json if all shards are done',    is_flag=True)
@sampler_options
@report_user_errors
def main(network_pkl: str, data: str, outdir: str, sigma: float | None, force_sigma: bool, mode: str, seed: int,
         shard: tuple[int, int], max_batch_size: int | None, device: str | None, fast: bool, grid: str | None,
         grid_count: int, grid_seed: int, originals: str | None, finalize: bool, **sampler_kwargs) -> None:
    """Denoise an observation set with a trained network (SFBD's backward sampling).

    \b
    Examples:
    # Denoise CIFAR-10 observations (sigma from the set) with the release's ODE sampler
    python denoise.py --network=runs/sfbd/round-000-pretrain/network-snapshot-200000.pkl \\
        --data=noisy.zip --outdir=runs/sfbd/round-001/denoised
    \b
    # The same, as 4 independent tasks writing into one directory
    python denoise.py ... --shard=$SLURM_ARRAY_TASK_ID/4
    \b
    # On 2 GPUs
    torchrun --standalone --nproc_per_node=2 denoise.py ...
    \b
    # A picture of 16 images chosen with seed 3: original | observation | denoised
    # (--originals: the source dataset of `dataset_tool.py split`, read by name)
    python denoise.py ... --finalize --grid=grid.png --grid-count=16 --grid-seed=3 \\
        --originals=datasets/cifar10-32x32.zip
    \b
    # The fast path: the network in bfloat16 (the sampler stays in float64)
    python denoise.py ... --fast
    """
    # Where the outputs go: apart from the inputs, and writable.
    if originals is not None and grid is None:
        raise UserError('--originals adds the originals to the --grid picture; give --grid too')
    check_apart([(outdir, '--outdir'), (grid, '--grid')],
                [(data, '--data'), (network_pkl, '--network'), (originals, '--originals')])
    check_output_dir(outdir, '--outdir', 'denoise.py', [OPTIONS_FNAME])
    if grid is not None:
        check_output_file(grid, '--grid')
    device = dist.resolve_device(device)
    dist.init(device)
    obs = ObservationSet(data)

    # Noise levels: the set's own (one, or one per image) unless forced.
    if sigma is None:
        levels = obs.sigma if obs.sigma is not None else obs.sigmas
    elif obs.sigma is None and not force_sigma:
        lo, hi = obs.sigma_range
        raise UserError(f'--sigma={sigma}: --data={data} records a noise level per image ({lo:g} to {hi:g}); '
                        'add --force-sigma to denoise every image from --sigma anyway')
    elif obs.sigma is not None and not math.isclose(sigma, obs.sigma, rel_tol=1e-6) and not force_sigma:
        raise UserError(f'--sigma={sigma} differs from the noise level {obs.sigma} recorded in --data={data}; '
                        'add --force-sigma to use it anyway')
    else:
        levels = sigma
    kwargs = mode_sampler_kwargs(mode, sampler_kwargs)
    indices = shard_indices(len(obs), shard)

    # The images of the --grid picture, and their originals, before any work.
    grid_indices = choose_images(len(obs), grid_count, grid_seed) if grid is not None else []
    grid_originals = read_originals(obs, originals, grid_indices) if originals is not None else None

    record = dict(network=network_pkl, network_sha256=file_sha256(network_pkl), data=os.path.abspath(data),
                  num_observations=len(obs), sigma=sigma_record(np.broadcast_to(levels, [len(obs)])), mode=mode,
                  seed=seed, sampler=kwargs)

    # The network must fit the data; only then is the output directory claimed.
    net = None
    settings = fast_lib.fast_settings(device) if fast else None
    if not finalize:
        dist.print0(f'Loading network from "{network_pkl}"...')
        net = load_network(network_pkl).to(device)
        check_network(net, obs, network_pkl, data)
        check_sampler_options(net, kwargs)
        highest = float(np.max(levels))
        if highest > min(kwargs.get('sigma_max', 80), net.sigma_max):
            raise UserError(f'noise level {highest:g} is above the highest noise level of the sampler')
        max_batch_size = fast_lib.sampling_batch_size(net, device, settings, max_batch_size, DEFAULT_BATCH)
        if settings is not None:
            net = fast_lib.prepare_sampling_network(net, settings)
    with claim_outdir(outdir, record, create=not finalize):
        if net is not None:
            denoise_shard(net, obs, outdir, indices, shard=shard, sigma=levels, mode=mode, seed=seed,
                          max_batch_size=max_batch_size, device=device, sampler_kwargs=kwargs, fast=settings)

        # Whoever finds the set complete writes dataset.json.
        if dist.get_rank() == 0:
            if grid is not None:
                if save_grid(grid, outdir, obs, grid_indices, grid_originals):
                    print(f'Wrote {grid}: {len(grid_indices)} images chosen with --grid-seed={grid_seed}, '
                          + ('original | ' if grid_originals is not None else '') + 'observation | denoised.')
                else:
                    print(f'{grid}: not written yet, some of its images are left to other shards; the run that finds '
                          'them all (or --finalize with the same --grid options) writes it.')
            missing = finalize_outdir(outdir, obs)
            if missing == 0:
                print(f'All {len(obs)} images are in "{outdir}"; wrote {METADATA_FNAME}.')
            elif finalize:
                raise UserError(f'--outdir={outdir}: {missing} of {len(obs)} images are still missing; '
                                'run the remaining shards first')
            else:
                print(f'{missing} of {len(obs)} images are left to other shards; the task that completes the set '
                      f'writes {METADATA_FNAME} (or run with --finalize).')
    obs.close()
    dist.deinit()

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

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
