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
import fnmatch
import json
import os
import re
import time
import zipfile
from typing import Any, Callable, Iterator, Sequence

import click
import numpy as np
import torch
import tqdm

from dnnlib.cli import IntList
from dnnlib.outputs import OutputClaim, any_file, append_line, check_apart, check_output_dir, check_output_file
from dnnlib.util import UserError, atomic_write, is_url, open_url, report_user_errors, save_png
from generate import sampler_options
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.detector import DEFAULT_DETECTOR, Detector, load_detector
from torch_utils.frechet import frechet_distance
from torch_utils.persistence import load_network
from training.generation import image_path as generated_image_path
from training.generation import rank_batches
from training.sampler import check_finite, check_sampler_options, generate_images, to_uint8

#----------------------------------------------------------------------------
# The detector (torch_utils/detector.py) defaults to the TorchScript Inception;
# EDM's own pickle of the same network is accepted when named explicitly.

SNAPSHOT_PATTERN = 'network-snapshot-*.pkl'
DEFAULT_NUM_IMAGES = 50000
OPTIONS_FNAME = 'fid_options.json'  # Record of a calc --outdir: which network, seeds and sampler made the images.

#----------------------------------------------------------------------------
# Let rank 0 do something first (a download, say) while the other ranks wait,
# then let them follow and find the file in the cache.

@contextlib.contextmanager
def rank0_first() -> Iterator[None]:
    if dist.get_rank() != 0:
        dist.barrier()
    yield
    if dist.get_rank() == 0:
        dist.barrier()

#----------------------------------------------------------------------------
# Running first and second moments of features: sum of features, sum of
# outer products and count, in float64, summed over processes at the end.

class FeatureStats:
    def __init__(self, dim: int, device: torch.device | str = 'cpu'):
        self.dim = dim
        self.count = torch.zeros([], dtype=torch.float64, device=device)
        self.sum = torch.zeros([dim], dtype=torch.float64, device=device)
        self.outer = torch.zeros([dim, dim], dtype=torch.float64, device=device)

    def append(self, features: torch.Tensor) -> None:
        features = features.to(device=self.sum.device, dtype=torch.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f'expected features of shape [N, {self.dim}], got {list(features.shape)}')
        self.count += features.shape[0]
        self.sum += features.sum(0)
        self.outer += features.T @ features

    def all_reduce(self) -> None:
        """Sum the statistics of all processes (every process must call it)."""
        for tensor in (self.count, self.sum, self.outer):
            dist.all_reduce_sum(tensor)

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance (divided by N-1) as float64 numpy arrays."""
        n = float(self.count)
        if n < 2:
            raise ValueError(f'statistics need at least 2 images, got {int(n)}')
        mu = self.sum / n
        sigma = (self.outer - n * torch.outer(mu, mu)) / (n - 1)
        return mu.cpu().numpy(), sigma.cpu().numpy()

#----------------------------------------------------------------------------
# The Frechet distance between the two Gaussians (EDM's name and arguments),
# from the eigenvalues of the symmetric S1^(1/2) S2 S1^(1/2) rather than the
# matrix square root of S1 S2: the same value, several times faster (see
# torch_utils/frechet.py).

def calculate_fid_from_inception_stats(mu: np.ndarray, sigma: np.ndarray,
                                       mu_ref: np.ndarray, sigma_ref: np.ndarray) -> float:
    # Never report a NaN score as if it were one.
    if not all(np.isfinite(x).all() for x in (mu, sigma, mu_ref, sigma_ref)):
        raise UserError('the FID came out nan: the feature statistics hold NaN or infinite values')
    try:
        total = frechet_distance(mu, sigma, mu_ref, sigma_ref)
    except (np.linalg.LinAlgError, ValueError) as e:
        raise UserError(f'the FID cannot be computed: the eigendecomposition failed ({e})') from None
    if not np.isfinite(total):
        raise UserError(f'the FID came out {total}: the covariances have no usable square root')
    return total

#----------------------------------------------------------------------------
# Reference statistics: an `.npz` with `mu` [D] and `sigma` [D, D], from a
# path or URL (EDM's published files load unchanged).

def load_ref_stats(ref: str) -> tuple[np.ndarray, np.ndarray]:
    with open_url(ref) as f:
        if not zipfile.is_zipfile(f):
            raise UserError(f'{ref}: not an .npz file (FID reference statistics are an .npz with "mu" and "sigma")')
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as data:
                missing = [key for key in ('mu', 'sigma') if key not in data.files]
                if missing:
                    raise UserError(f'{ref}: no "{missing[0]}" array; not FID reference statistics '
                                    f'(it holds {", ".join(data.files) or "nothing"})')
                mu, sigma = np.asarray(data['mu'], np.float64), np.asarray(data['sigma'], np.float64)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f'{ref}: not a readable .npz file ({e})') from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f'{ref}: "mu" has shape {list(mu.shape)} and "sigma" {list(sigma.shape)}; '
                        'expected [D] and [D, D]')
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f'{ref}: "mu" or "sigma" holds NaN or infinite values')
    tolerance = 1e-6 * max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > tolerance or np.diag(sigma).min() < -tolerance:
        raise UserError(f'{ref}: "sigma" is not a covariance matrix (not symmetric, or negative variances)')
    return mu, sigma

def save_ref_stats(dest: str, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Write `mu` and `sigma` as EDM's reference `.npz`, atomically."""
    with atomic_write(dest, 'wb') as f:
        np.savez(f, mu=mu, sigma=sigma)

#----------------------------------------------------------------------------
# Images from a dataset (a directory or zip, as training reads them). Float
# `.npy` datasets are quantised the way generated images are saved.

def open_image_dataset(path: str) -> Any:
    from training.dataset import ImageFolderDataset
    dataset = ImageFolderDataset(path=path)
    if dataset.sigma_text:
        raise UserError(f'{path}: is an observation set (noisy, sigma {dataset.sigma_text} in dataset.json), not images')
    if dataset.num_channels not in (1, 3):
        raise UserError(f'{path}: images have {dataset.num_channels} channels; FID needs 1 or 3')
    return dataset

# Disjoint subsets of `num` images each: shuffle all indices with the seed and
# cut consecutive slices, each sorted. The first slice is the subset EDM's
# dataset picks with max_size=num and the same seed; all images when num = N.
def image_subsets(num_images: int, num: int, repeats: int, seed: int) -> list[np.ndarray]:
    order = np.arange(num_images, dtype=np.int64)
    if num * repeats < num_images:
        np.random.RandomState(seed % (1 << 31)).shuffle(order)
    return [np.sort(order[k * num:(k + 1) * num]) for k in range(repeats)]

# Enough images for `repeats` disjoint subsets of `num`, and at least 2 each.
def check_image_count(path: str, found: int, num: int, repeats: int) -> None:
    if num < 2:
        raise UserError(f'{path}: statistics need at least 2 images, got {num}')
    if found < num * repeats:
        wanted = f'--num={num}' + (f' x --repeats={repeats}' if repeats > 1 else '')
        raise UserError(f'{path}: found {found} images, but {wanted} asks for {num * repeats}')

# A data-loading worker re-raises its error with a traceback in the message;
# the original message is on the last line, after the exception's name.
def _worker_message(e: UserError) -> str:
    lines = [line for line in str(e).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith('Caught '):
        return lines[-1].split(': ', 1)[-1]
    return str(e)

def dataset_stats(dataset: Any, indices: Sequence[int], detector: Detector, *, max_batch_size: int = 64,
                  num_workers: int = 3, device: torch.device | str = 'cpu',
                  feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of the dataset items `indices`, shared among all processes."""
    device = torch.device(device)
    indices = [int(i) for i in indices]
    if feature_dim is None:
        feature_dim = detector.feature_dim(dataset.image_shape)
    stats = FeatureStats(feature_dim, device)
    batches = [b for b in rank_batches(indices, max_batch_size, dist.get_rank(), dist.get_world_size()) if b]

    # Forked workers would share the parent's open zip file (and its file position);
    # closed here, it is opened again by each worker on first use.
    dataset.close()
    pin_memory = detector.fast is not None and detector.fast.pin_memory and device.type == 'cuda'
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         prefetch_factor=(2 if num_workers > 0 else None), pin_memory=pin_memory)
    progress = tqdm.tqdm(total=len(batches), unit='batch', desc='Features', disable=(dist.get_rank() != 0))
    try:
        for images, _labels in loader:
            if images.dtype != torch.uint8:
                images = to_uint8(images)
            stats.append(detector.features(images))
            progress.update(1)
    except UserError as e:
        raise UserError(_worker_message(e)) from None
    finally:
        progress.close()
    stats.all_reduce()
    return stats.mean_cov()

# EDM's entry point: statistics of a folder or zip, loading the default detector.
def calculate_inception_stats(image_path: str, num_expected: int | None = None, seed: int = 0,
                              max_batch_size: int = 64, num_workers: int = 3,
                              device: torch.device | str = 'cpu',
                              detector: Detector | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of `num_expected` images of a dataset (all when None), the subset chosen by `seed`."""
    if detector is None:
        with rank0_first():
            detector = load_detector(device=device, verbose=(dist.get_rank() == 0))
    dataset = open_image_dataset(image_path)
    num = len(dataset) if num_expected is None else num_expected
    check_image_count(image_path, len(dataset), num, 1)
    indices = image_subsets(len(dataset), num, 1, seed)[0]
    return dataset_stats(dataset, indices, detector, max_batch_size=max_batch_size,
                         num_workers=num_workers, device=device)

#----------------------------------------------------------------------------
# Images generated by a network with EDM's sampler and per-seed protocol,
# scored as they come; written as PNGs only when `outdir` is given.

def network_stats(net: torch.nn.Module, seeds: Sequence[int], detector: Detector, *, max_batch_size: int = 64,
                  device: torch.device | str = 'cpu', outdir: str | None = None,
                  feature_dim: int | None = None, **sampler_kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of the images of `seeds`, generated and shared by all processes."""
    device = torch.device(device)
    image_shape = [net.img_channels, net.img_resolution, net.img_resolution]
    if feature_dim is None:
        feature_dim = detector.feature_dim(image_shape)
    stats = FeatureStats(feature_dim, device)
    batches = rank_batches(list(seeds), max_batch_size, dist.get_rank(), dist.get_world_size())
    fast = detector.fast
    size = len(batches[0]) if fast is not None and fast.compile else 0  # One batch size for a compiled network.
    for batch_seeds in tqdm.tqdm(batches, unit='batch', desc='Generating', disable=(dist.get_rank() != 0)):
        if not batch_seeds:
            continue
        with torch.inference_mode() if fast is not None else contextlib.nullcontext():
            images = generate_images(net, fast_lib.pad_batch(batch_seeds, size), device=device, **sampler_kwargs)
        images = images[:len(batch_seeds)]
        check_finite(images, f'seeds {batch_seeds[0]}-{batch_seeds[-1]}')
        images = to_uint8(images)
        if outdir is not None:
            for seed, image in zip(batch_seeds, images.permute(0, 2, 3, 1).cpu().numpy()):
                save_png(generated_image_path(outdir, seed, True), image)
        stats.append(detector.features(images))
    stats.all_reduce()
    return stats.mean_cov()

#----------------------------------------------------------------------------
# Run directories: every snapshot, or those whose file name matches a glob,
# in the order of their names (which is the order of kimg).

def list_snapshots(rundir: str, pattern: str | None = None) -> list[str]:
    names = sorted(name for name in os.listdir(rundir) if fnmatch.fnmatch(name, SNAPSHOT_PATTERN))
    if not names:
        raise UserError(f'{rundir}: no {SNAPSHOT_PATTERN} in this directory')
    if pattern is not None:
        names = [name for name in names if fnmatch.fnmatch(name, pattern)]
        if not names:
            raise UserError(f'{rundir}: no snapshot matches --snapshots={pattern}')
    return [os.path.join(rundir, name) for name in names]

def snapshot_kimg(path: str) -> int | None:
    m = re.fullmatch(r'network-snapshot-(\d+)\.pkl', os.path.basename(path))
    return int(m.group(1)) if m else None

#----------------------------------------------------------------------------
# Small helpers for reports: seed lists as ranges, and the spread of scores.

def format_int_list(values: Sequence[int]) -> str:
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is not None and v == prev + 1:
            prev = v
            continue
        if start is not None:
            parts.append(f'{start}' if start == prev else f'{start}-{prev}')
        start = prev = v
    if start is not None:
        parts.append(f'{start}' if start == prev else f'{start}-{prev}')
    return ','.join(parts)

def summarize(fids: Sequence[float]) -> dict:
    """Minimum, mean and sample standard deviation (0 for a single score)."""
    values = np.asarray(fids, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    return dict(fid=float(values.min()), mean=float(values.mean()), std=std, fids=[float(x) for x in values])

# Records are appended one JSON object per line. Strict JSON has no infinity
# (S_max defaults to it), so non-finite numbers are written as strings.
def append_json(path: str, record: dict) -> None:
    def strict(value: Any) -> Any:
        if isinstance(value, float) and not np.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [strict(v) for v in value]
        return value
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    append_line(path, json.dumps(strict(record), allow_nan=False))

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

# Join the process group and load the detector (rank 0 downloads first).
def _setup(device_name: str | None, detector: str, detector_sha256: str | None,
           fast: bool = False) -> tuple[torch.device, Detector]:
    device = dist.resolve_device(device_name)
    dist.init(device)
    dist.print0(f'Reading detector "{detector}"...')
    settings = fast_lib.fast_settings(device) if fast else None
    with rank0_first():
        det = load_detector(detector, detector_sha256, device=device, verbose=(dist.get_rank() == 0), fast=settings)
    return device, det

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

    # The images, the detector and the reference statistics, all before the long part.
    dataset = open_image_dataset(image_path) if image_path is not None else None
    device_obj, det = _setup(device, detector, detector_sha256, fast)
    dist.print0(f'Reading reference statistics "{ref_path}"...')
    with rank0_first():
        mu_ref, sigma_ref = load_ref_stats(ref_path)

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
