"""Frechet Inception Distance (FID), computed the way EDM computes it, with more ways to feed it.

`ref` turns a dataset into reference statistics (`mu`, `sigma` of the detector's features, saved
as an `.npz` that EDM's published reference files share). `calc` scores a folder or zip of images
against such a file, or generates the images itself from a network pickle (or from every snapshot
of a run directory) without writing them to disk, optionally over several disjoint seed sets.

The detector defaults to NVIDIA's Inception-v3 in TorchScript form, the twin of the pickle EDM
downloads and the file StyleGAN2-ADA, clean-fid and k-diffusion use. Loading it runs no Python
code from the file, and its sha256 is checked every time it is loaded (torch_utils/detector.py).

The command line only: option tables, one call each of metrics/fid.py (`calc_fid`, `ref_stats`, which
apply the output rules and do the work) and the messages that report the scores.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import click

from dnnlib.cli import IntList
from dnnlib.util import report_user_errors
from metrics.fid import DEFAULT_NUM_IMAGES, calc_fid, calculate_fid_from_inception_stats, calculate_inception_stats, ref_stats
from tools.options import refuse_sampler_options_with_images, sampler_options
from torch_utils import distributed as dist
from torch_utils.detector import DEFAULT_DETECTOR

# EDM's entry points keep their names here (`fid.calculate_inception_stats`, ...); they live in metrics/fid.py.
__all__ = ['calculate_fid_from_inception_stats', 'calculate_inception_stats', 'calc', 'ref', 'main']

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
        click.option('--fast', help='Fast path: inference mode, non-blocking copies, channels-last on a GPU; calc --network also samples with generate.py --fast\'s network (docs/performance.md)', is_flag=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func

#----------------------------------------------------------------------------
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
@click.option('--seeds',                  help='Seeds to generate  [default: seed to seed+num*repeats-1]', metavar='LIST', type=IntList(distinct=True))
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
    directory, the best snapshot. The sampler options apply to --network (with --images they
    are refused). Network pickles are read as data only.

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
    refuse_sampler_options_with_images(image_path, sampler_kwargs)
    plan, results = calc_fid(image_path=image_path, network=network, ref_path=ref_path, num=num, seed=seed, seeds=seeds,
                             repeats=repeats, snapshots=snapshots, outdir=outdir, json_path=json_path, detector=detector,
                             detector_sha256=detector_sha256, max_batch_size=max_batch_size, num_workers=num_workers,
                             device=device, fast=fast, sampler_kwargs=sampler_kwargs)

    # Report (the JSON records are written): a table for a run directory or the
    # spread of repeats, and the FID alone on the last line.
    if dist.get_rank() == 0:
        if plan.is_rundir:
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
    ref_stats(dataset_path, dest_path, detector=detector, detector_sha256=detector_sha256, max_batch_size=max_batch_size,
              num_workers=num_workers, device=device, fast=fast)
    dist.deinit()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
