"""Frechet Inception Distance (FID), computed the way EDM computes it, with more ways to feed it.

`ref` turns a dataset into reference statistics (`mu`, `sigma` of the detector's features, saved
as an `.npz` that EDM's published reference files share). `calc` scores a folder or zip of images
against such a file, or generates the images itself from a network pickle (or from every snapshot
of a run directory) without writing them to disk, optionally over several disjoint seed sets.

The detector defaults to NVIDIA's Inception-v3 in TorchScript form, the twin of the pickle EDM
downloads and the file StyleGAN2-ADA, clean-fid and k-diffusion use. Loading it runs no Python
code from the file, and its sha256 is checked every time it is loaded (torch_utils/detector.py).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import time
from typing import Any, Callable, Sequence

import click
import torch

from dnnlib.cli import IntList
from dnnlib.outputs import OutputClaim, any_file, check_apart, check_output_dir, check_output_file
from dnnlib.util import UserError, is_url, report_user_errors
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.detector import DEFAULT_DETECTOR, Detector, load_detector
from torch_utils.persistence import load_network
from metrics.fid import (append_json, calculate_fid_from_inception_stats, calculate_inception_stats,
                                check_image_count, dataset_stats, format_int_list, image_subsets, list_snapshots,
                                load_ref_stats, network_stats, open_image_dataset, rank0_first, save_ref_stats,
                                snapshot_kimg, summarize)
from tools.options import sampler_options
from training.sampler import check_sampler_options

# EDM's entry points keep their names here (`fid.calculate_inception_stats`, ...); they live in training/fid_stats.py.
__all__ = ['calculate_fid_from_inception_stats', 'calculate_inception_stats', 'calc', 'ref', 'main']

#----------------------------------------------------------------------------
# The detector (torch_utils/detector.py) defaults to the TorchScript Inception;
# EDM's own pickle of the same network is accepted when named explicitly.

DEFAULT_NUM_IMAGES = 50000
OPTIONS_FNAME = 'fid_options.json'  # Record of a calc --outdir: which network, seeds and sampler made the images.

#----------------------------------------------------------------------------

@click.group()
def main() -> None:
    """Frechet Inception Distance (FID), as EDM computes it.

    \b
    Examples:
    # Score 50,000 images generated from a network, without writing them
    python fid.py calc --network=runs/00000-.../network-snapshot-002000.pkl \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz
    \b
    # Every snapshot of a run, on 8 GPUs, best of three seed sets each
    torchrun --standalone --nproc_per_node=8 -- fid.py calc --network=runs/00000-... \\
        --ref=fid-refs/cifar10-32x32.npz --repeats=3
    \b
    # Score a folder (or zip) of images
    python fid.py calc --images=fid-tmp --ref=fid-refs/cifar10-32x32.npz
    \b
    # Reference statistics of a dataset
    python fid.py ref --data=datasets/cifar10-32x32.zip --dest=fid-refs/cifar10-32x32.npz
    \b
    Under torchrun, put -- before fid.py when passing --num: torchrun would
    otherwise take --num as an abbreviation of its own --numa-binding.
    A .pkl detector (such as EDM's inception-2015-12-05.pkl) is taken only
    when named with --detector: unpickling it RUNS CODE STORED IN THE FILE,
    as EDM does. The default is its TorchScript twin, which runs none.
    """

#----------------------------------------------------------------------------
# Options shared by both commands: the detector, the batch size, data-loading
# workers and the device.

def _check_sha256(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r'[0-9a-fA-F]{64}', value):
        raise click.BadParameter('expected 64 hexadecimal digits')
    return value

def detector_options(func: Callable) -> Callable:
    options = [
        click.option('--detector', help='Feature detector: TorchScript file, or a .pkl (unpickling it runs code stored in it)  [default: NVIDIA\'s Inception-v3, TorchScript]', metavar='PT|PKL|URL', type=str, default=DEFAULT_DETECTOR),
        click.option('--detector-sha256', 'detector_sha256', help='Expected sha256 of the detector file  [default: checked for the default detector only]', metavar='HEX', type=str, callback=_check_sha256),
        click.option('--batch', 'max_batch_size', help='Maximum batch size per process', metavar='INT', type=click.IntRange(min=1), default=64, show_default=True),
        click.option('--workers', 'num_workers', help='Data-loading worker processes', metavar='INT', type=click.IntRange(min=0), default=3, show_default=True),
        click.option('--device', help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str, default=None),
        click.option('--fast', help='Fast path: inference mode, non-blocking copies, channels-last on a GPU; --network samples with generate.py --fast\'s network (docs/performance.md)', is_flag=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func

# Join the process group, then load the detector (rank 0 downloads first). The
# commands read every other input in between, so that a bad one is not
# reported as a detector that cannot be had.
def _init_device(device_name: str | None) -> torch.device:
    device = dist.resolve_device(device_name)
    dist.init(device)
    return device

def _load_detector(device: torch.device, detector: str, detector_sha256: str | None, fast: bool = False) -> Detector:
    dist.print0(f'Reading detector "{detector}"...')
    settings = fast_lib.fast_settings(device) if fast else None
    with rank0_first():
        return load_detector(detector, detector_sha256, device=device, verbose=(dist.get_rank() == 0), fast=settings)

def _setup(device_name: str | None, detector: str, detector_sha256: str | None,
           fast: bool = False) -> tuple[torch.device, Detector]:
    device = _init_device(device_name)
    return device, _load_detector(device, detector, detector_sha256, fast)

#----------------------------------------------------------------------------
# The seed sets of --network, one per repeat: --seeds split into consecutive
# runs of --num, or by default seed, seed+1, ... (set k starts at seed + k*num).

def network_seed_sets(seeds: list[int] | None, seed: int | None, num: int | None,
                      repeats: int) -> list[list[int]]:
    if seeds is not None and seed is not None:
        raise UserError('give --seed or --seeds, not both')
    if seeds is None:
        num = num or DEFAULT_NUM_IMAGES
        seeds = list(range(seed or 0, (seed or 0) + num * repeats))
    if not seeds:
        raise UserError('--seeds names no seeds')
    num = num or len(seeds) // repeats
    if num < 2 or len(seeds) < num * repeats:
        raise UserError(f'--seeds gives {len(seeds)} seeds, but --num={max(num, 2)}'
                        + (f' x --repeats={repeats}' if repeats > 1 else '') + f' needs {max(num, 2) * repeats}')
    return [seeds[k * num:(k + 1) * num] for k in range(repeats)]

# The table of a run directory: one row per snapshot, then the best one.
def print_snapshot_table(results: list[dict], repeats: int) -> None:
    spread = repeats > 1
    print(f'{"snapshot":<32} {"kimg":>8} {"FID":>10}' + (f' {"mean":>10} {"std":>10}' if spread else ''))
    for rec in results:
        kimg = '-' if rec['kimg'] is None else rec['kimg']
        row = f'{os.path.basename(rec["network"]):<32} {kimg:>8} {rec["fid"]:>10.4f}'
        print(row + (f' {rec["mean"]:>10.4f} {rec["std"]:>10.4f}' if spread else ''))
    best = min(results, key=lambda rec: rec['fid'])
    print(f'Best: {os.path.basename(best["network"])} (kimg {"-" if best["kimg"] is None else best["kimg"]})')

#----------------------------------------------------------------------------

@main.command()
@click.option('--images', 'image_path',   help='Images to score: directory or zip', metavar='DIR|ZIP',               type=str)
@click.option('--network', 'network',     help='Network pickle, or a run directory to score each snapshot', metavar='PKL|URL|DIR', type=str)
@click.option('--ref', 'ref_path',        help='Reference statistics of the dataset', metavar='NPZ|URL',             type=str, required=True)
@click.option('--num', 'num',             help=f'Number of images per score  [default: {DEFAULT_NUM_IMAGES}, or the --seeds count]', metavar='INT', type=click.IntRange(min=2))
@click.option('--seed',                   help='First seed (--network) or seed of the image subset (--images)  [default: 0]', metavar='INT', type=click.IntRange(min=0))
@click.option('--seeds',                  help='Seeds to generate  [default: seed to seed+num*repeats-1]', metavar='LIST', type=IntList())
@click.option('--repeats',                help='Scores to take: --network, seed sets of --num new images each (EDM\'s protocol: 3); --images, disjoint subsets of --num images of the folder; report min, mean, std', metavar='INT', type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--snapshots',              help='Snapshots of a run directory to score  [default: all]', metavar='GLOB', type=str)
@click.option('--outdir',                 help='Also save the generated images here, 1000 per subfolder', metavar='DIR', type=str)
@click.option('--json', 'json_path',      help='Append one JSON record per score to this file', metavar='FILE', type=str)
@detector_options
@sampler_options
@report_user_errors
def calc(image_path: str | None, network: str | None, ref_path: str, num: int | None, seed: int | None,
         seeds: list[int] | None, repeats: int, snapshots: str | None, outdir: str | None, json_path: str | None,
         detector: str, detector_sha256: str | None, max_batch_size: int, num_workers: int,
         device: str | None, fast: bool, **sampler_kwargs: Any) -> None:
    """Calculate FID of images, or of a network's samples.

    The FID is the last line printed: with --repeats, the minimum over the repeats; for a run
    directory, the best snapshot. The sampler options apply to --network. Network pickles are
    read as data only.

    \b
    --repeats=K means two different things:
      --network  K seed sets of --num seeds each (seed .. seed+num-1, then the
                 next num, ...): K fresh draws of --num images from the model.
                 The minimum over 3 sets of 50,000 is EDM's published protocol.
      --images   K disjoint random subsets of --num images of the one folder
                 (chosen with --seed; the folder needs K x num images). The
                 spread says how much the score depends on which of these images
                 are scored; it is not EDM's protocol, and FID rises as fewer
                 images are scored, so do not report the minimum over subsets of
                 one folder as a 3-seed-set FID.
    """
    # Check the options before any work is done.
    if (image_path is None) == (network is None):
        raise UserError('give exactly one of --images and --network')
    is_rundir = network is not None and not is_url(network) and os.path.isdir(network)
    if image_path is not None:
        for name, value in (('--seeds', seeds), ('--snapshots', snapshots), ('--outdir', outdir)):
            if value is not None:
                raise UserError(f'{name} needs --network; it does not apply to --images')
    elif snapshots is not None and not is_rundir:
        raise UserError(f'--snapshots needs --network to be a run directory, not {network}')
    if network is not None:
        seed_sets = network_seed_sets(seeds, seed, num, repeats)
        num = len(seed_sets[0])
        pkls = list_snapshots(network, snapshots) if is_rundir else [network]
    num = num or DEFAULT_NUM_IMAGES
    seed = seed or 0
    inputs = [(image_path, '--images'), (network, '--network'), (ref_path, '--ref'), (detector, '--detector')]
    check_apart([(outdir, '--outdir'), (json_path, '--json')], inputs)
    if json_path is not None:
        check_output_file(json_path, '--json')
    claim = contextlib.nullcontext()
    if outdir is not None:
        check_output_dir(outdir, '--outdir', 'fid.py calc', [OPTIONS_FNAME])
        images_record = dict(network=network if is_url(network) else os.path.abspath(network), snapshots=snapshots,
                             seeds=format_int_list([s for ss in seed_sets for s in ss]),
                             sampler={k: v for k, v in sampler_kwargs.items() if v is not None})
        claim = OutputClaim(outdir, '--outdir', OPTIONS_FNAME, images_record, command='fid.py calc',
                            has_outputs=lambda: any_file(outdir, ['.png']))

    # The images, the reference statistics, the network files, then the detector: all before the
    # long part, and the detector (a download) last, so that a bad input is named as such.
    dataset = open_image_dataset(image_path) if image_path is not None else None
    device_obj = _init_device(device)
    dist.print0(f'Reading reference statistics "{ref_path}"...')
    with rank0_first():
        mu_ref, sigma_ref = load_ref_stats(ref_path)
    if network is not None:
        missing = [pkl for pkl in pkls if not is_url(pkl) and not os.path.isfile(pkl)]
        if missing:
            raise UserError(f'--network={missing[0]}: no such file')
    det = _load_detector(device_obj, detector, detector_sha256, fast)

    def check_dim(image_shape: Sequence[int]) -> int:
        dim = det.feature_dim(image_shape)
        if dim != mu_ref.shape[0]:
            raise UserError(f'{ref_path}: statistics of {mu_ref.shape[0]} features, but the detector '
                            f'{detector} gives {dim}')
        return dim

    # One JSON record per score: what was scored, how, and the result.
    def record(fids: Sequence[float], start: float, **fields: Any) -> dict:
        return dict(fields, **summarize(fids), ref=ref_path, num=num, repeats=repeats,
                    detector=detector, detector_sha256=det.sha256, world_size=dist.get_world_size(),
                    device=str(device_obj), time=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                    seconds=round(time.time() - start, 3))

    results: list[dict] = []
    if image_path is not None:
        # A folder or zip of images: disjoint random subsets of --num images.
        check_image_count(image_path, len(dataset), num, repeats)
        dim = check_dim(dataset.image_shape)
        start, fids = time.time(), []
        for k, indices in enumerate(image_subsets(len(dataset), num, repeats, seed)):
            dist.print0(f'Scoring {num} of {len(dataset)} images from "{image_path}"'
                        + (f' (subset {k + 1} of {repeats})...' if repeats > 1 else '...'))
            mu, sigma = dataset_stats(dataset, indices, det, max_batch_size=max_batch_size, num_workers=num_workers,
                                      device=device_obj, feature_dim=dim)
            fids.append(calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref))
            if repeats > 1:
                dist.print0(f'Subset {k + 1}: FID {fids[-1]:g}')
        results.append(record(fids, start, images=image_path, seed=seed))
    else:
        # One network, or each chosen snapshot of a run directory, on every seed set.
        with claim:
            for pkl in pkls:
                dist.print0(f'Reading network "{pkl}"...')
                with rank0_first():
                    net = load_network(pkl).to(device_obj)
                if det.fast is not None:
                    net = fast_lib.prepare_sampling_network(net, det.fast)
                if net.img_channels not in (1, 3):
                    raise UserError(f'{pkl}: the network makes {net.img_channels}-channel images; FID needs 1 or 3')
                dim = check_dim([net.img_channels, net.img_resolution, net.img_resolution])
                check_sampler_options(net, sampler_kwargs)
                subdir = outdir
                if outdir is not None and is_rundir:
                    subdir = os.path.join(outdir, os.path.splitext(os.path.basename(pkl))[0])
                start, fids = time.time(), []
                for set_seeds in seed_sets:
                    dist.print0(f'Generating and scoring {num} images (seeds {format_int_list(set_seeds)})...')
                    mu, sigma = network_stats(net, set_seeds, det, max_batch_size=max_batch_size, device=device_obj,
                                              outdir=subdir, feature_dim=dim, **sampler_kwargs)
                    fids.append(calculate_fid_from_inception_stats(mu, sigma, mu_ref, sigma_ref))
                    if repeats > 1 or is_rundir:
                        dist.print0(f'{os.path.basename(pkl)}, seeds {format_int_list(set_seeds)}: FID {fids[-1]:g}')
                del net
                results.append(record(fids, start, network=pkl, kimg=snapshot_kimg(pkl),
                                      seeds=format_int_list([s for ss in seed_sets for s in ss]),
                                      sampler={k: v for k, v in sampler_kwargs.items() if v is not None}))

    # Report: the JSON records, a table for a run directory or the spread of
    # repeats, and the FID alone on the last line.
    if dist.get_rank() == 0:
        if json_path is not None:
            for rec in results:
                append_json(json_path, rec)
        if is_rundir:
            print_snapshot_table(results, repeats)
        elif repeats > 1:
            rec = results[0]
            kind = 'image subsets of the folder' if image_path is not None else 'seed sets'
            print(f'FID over {repeats} disjoint {kind}: min {rec["fid"]:g}, mean {rec["mean"]:g}, std {rec["std"]:g}')
        print(f'{min(rec["fid"] for rec in results):g}', flush=True)
    dist.barrier()
    dist.deinit()

#----------------------------------------------------------------------------

@main.command()
@click.option('--data', 'dataset_path', help='Dataset: directory or zip', metavar='DIR|ZIP', type=str, required=True)
@click.option('--dest', 'dest_path',    help='Where to write the statistics', metavar='NPZ', type=str, required=True)
@detector_options
@report_user_errors
def ref(dataset_path: str, dest_path: str, detector: str, detector_sha256: str | None,
        max_batch_size: int, num_workers: int, device: str | None, fast: bool) -> None:
    """Reference statistics of every image of a dataset, for 'calc'."""
    check_apart([(dest_path, '--dest')], [(dataset_path, '--data'), (detector, '--detector')])
    check_output_file(dest_path, '--dest')
    dataset = open_image_dataset(dataset_path)
    check_image_count(dataset_path, len(dataset), len(dataset), 1)
    device_obj, det = _setup(device, detector, detector_sha256, fast)
    dist.print0(f'Calculating statistics of {len(dataset)} images from "{dataset_path}"...')
    mu, sigma = dataset_stats(dataset, range(len(dataset)), det, max_batch_size=max_batch_size,
                              num_workers=num_workers, device=device_obj)
    dist.print0(f'Writing reference statistics to "{dest_path}"...')
    if dist.get_rank() == 0:
        save_ref_stats(dest_path, mu, sigma)
    dist.barrier()
    dist.deinit()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
