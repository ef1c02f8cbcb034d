"""FID's statistics, as library functions: detector features of a dataset or of a network's samples,
their mean and covariance, reference statistics files, and the Frechet distance between two sets of
statistics (EDM's `calculate_fid_from_inception_stats` and `calculate_inception_stats`).

Also fid.py's work as library functions: `calc` in steps (`calc_plan`, `score_images`,
`score_network`, `calc_fid`) and `ref` (`ref_stats`). fid.py is the command line over them (its
option tables and messages); tools/report.py, tools/demo.py and tools/bench.py use the statistics too. Not
here: the detector (torch_utils/detector.py) and the distance's linear algebra (torch_utils/frechet.py).
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import functools
import json
import os
import time
import zipfile
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
import tqdm

from dnnlib.outputs import OutputDir, OutputFile, ToolOutputs, append_line, is_json_lines
from dnnlib.util import UserError, atomic_write, cached_path_for_url, file_sha256, is_url, open_url, save_png
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils import workers
from torch_utils.detector import Detector, load_detector
from torch_utils.frechet import frechet_distance
from torch_utils.persistence import load_network
from training import run_files
from training.generation import image_path as generated_image_path
from training.generation import rank_batches
from training.sampler import check_finite, check_sampler_options, generate_images, to_uint8

SNAPSHOT_PATTERN = 'network-snapshot-*.pkl'
DEFAULT_NUM_IMAGES = 50000  # fid.py calc's --num.
OPTIONS_FNAME = 'fid_options.json'  # Record of a calc --outdir: which network, seeds and sampler made the images.

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
    """`mu` and `sigma` of reference statistics (a path or URL), checked. A download that turns out not to
    be statistics (an error page, say) is removed from the cache, so that a later run fetches it again."""
    try:
        return _read_ref_stats(ref)
    except UserError as e:
        cached = cached_path_for_url(ref) if is_url(ref) else None
        if cached is None or not os.path.isfile(cached):
            raise
        os.remove(cached)
        raise UserError(f'{e} (the download was removed from the cache: {cached})') from None

def _read_ref_stats(ref: str) -> tuple[np.ndarray, np.ndarray]:
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
                mu, sigma = data['mu'], data['sigma']
                if not all(np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating) for a in (mu, sigma)):
                    raise UserError(f'{ref}: "mu" is {mu.dtype} and "sigma" {sigma.dtype}; expected real numbers')
                mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise UserError(f'{ref}: not a readable .npz file ({e})') from None
    if mu.ndim != 1 or mu.shape[0] == 0 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f'{ref}: "mu" has shape {list(mu.shape)} and "sigma" {list(sigma.shape)}; '
                        'expected [D] and [D, D]')
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f'{ref}: "mu" or "sigma" holds NaN or infinite values')
    tolerance = 1e-6 * max(float(np.abs(sigma).max()), 1e-300)
    if np.abs(sigma - sigma.T).max() > tolerance or np.diag(sigma).min() < -tolerance:
        raise UserError(f'{ref}: "sigma" is not a covariance matrix (not symmetric, or negative variances)')
    return mu, sigma

def is_ref_stats_file(path: str) -> bool:
    """Is `path` reference statistics as `save_ref_stats` writes them (what fid.py ref may replace)?"""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with np.load(path, allow_pickle=False) as data:
            return sorted(data.files) == ['mu', 'sigma']
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return False

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

def dataset_stats(dataset: Any, indices: Sequence[int], detector: Detector, *, max_batch_size: int = 64,
                  num_workers: int = 3, prefetch_factor: int = 2, device: torch.device | str = 'cpu',
                  feature_dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean and covariance of the dataset items `indices`, shared among all processes."""
    device = torch.device(device)
    indices = [int(i) for i in indices]
    if feature_dim is None:
        feature_dim = detector.feature_dim(dataset.image_shape)
    stats = FeatureStats(feature_dim, device)
    batches = [b for b in rank_batches(indices, max_batch_size, dist.get_rank(), dist.get_world_size()) if b]

    # Workers are spawned, as in training: forking a process that runs threads
    # can deadlock (Python 3.12+ warns of it). The parent's zip handle is closed
    # here; each worker, like the parent later, opens the zip on first use.
    dataset.close()
    pin_memory = detector.fast is not None and detector.fast.pin_memory and device.type == 'cuda'
    worker_kwargs = dict(prefetch_factor=prefetch_factor, multiprocessing_context='spawn',
                         worker_init_fn=functools.partial(workers.init_worker, parent_pid=os.getpid())) \
        if num_workers > 0 else {}
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=num_workers,
                                         pin_memory=pin_memory, **worker_kwargs)
    progress = tqdm.tqdm(total=len(batches), unit='batch', desc='Features', disable=(dist.get_rank() != 0))
    try:  # A worker's UserError comes wrapped in its traceback; the commands show its message (user_message).
        for images, _labels in loader:
            if images.dtype != torch.uint8:
                images = to_uint8(images)
            stats.append(detector.features(images))
            progress.update(1)
    finally:
        progress.close()
    stats.all_reduce()
    return stats.mean_cov()

# EDM's entry point, with its arguments in its order: statistics of a folder or
# zip, loading the default detector; the device is CUDA where there is one.
def calculate_inception_stats(image_path: str, num_expected: int | None = None, seed: int = 0,
                              max_batch_size: int = 64, num_workers: int = 3, prefetch_factor: int = 2,
                              device: torch.device | str | None = None,
                              detector: Detector | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Statistics of `num_expected` images of a dataset (all when None), the subset chosen by `seed`."""
    device = dist.default_device() if device is None else torch.device(device)
    if detector is None:
        detector = dist.rank0_first(lambda: load_detector(device=device, verbose=(dist.get_rank() == 0)), 'the detector')
    dataset = open_image_dataset(image_path)
    num = len(dataset) if num_expected is None else num_expected
    check_image_count(image_path, len(dataset), num, 1)
    indices = image_subsets(len(dataset), num, 1, seed)[0]
    return dataset_stats(dataset, indices, detector, max_batch_size=max_batch_size,
                         num_workers=num_workers, prefetch_factor=prefetch_factor, device=device)

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
# in training order (the order of their names' positions, training/run_files.py).

def list_snapshots(rundir: str, pattern: str | None = None) -> list[str]:
    names = run_files.in_order([name for name in os.listdir(rundir) if fnmatch.fnmatch(name, SNAPSHOT_PATTERN)])
    if not names:
        raise UserError(f'{rundir}: no {SNAPSHOT_PATTERN} in this directory')
    if pattern is not None:
        names = [name for name in names if fnmatch.fnmatch(name, pattern)]
        if not names:
            raise UserError(f'{rundir}: no snapshot matches --snapshots={pattern}')
    return [os.path.join(rundir, name) for name in names]

def snapshot_kimg(path: str) -> int | float | None:
    return run_files.file_kimg(path) if run_files.position_key(path, run_files.SNAPSHOT_PREFIX) else None

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
# Join the process group, then load the detector (rank 0 downloads first). The
# commands read every other input in between, so that a bad one is not
# reported as a detector that cannot be had.

def init_device(device_name: str | None) -> torch.device:
    device = dist.resolve_device(device_name)
    dist.init(device)
    return device

def load_fid_detector(device: torch.device, detector: str, detector_sha256: str | None, fast: bool = False) -> Detector:
    dist.print0(f'Reading detector "{detector}"...')
    settings = fast_lib.fast_settings(device) if fast else None
    return dist.rank0_first(lambda: load_detector(detector, detector_sha256, device=device,
                                                  verbose=(dist.get_rank() == 0), fast=settings),
                            f'the detector {detector}')

def setup_detector(device_name: str | None, detector: str, detector_sha256: str | None,
                   fast: bool = False) -> tuple[torch.device, Detector]:
    device = init_device(device_name)
    return device, load_fid_detector(device, detector, detector_sha256, fast)

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


#----------------------------------------------------------------------------
# fid.py calc, step by step. First the plan: the options checked and resolved
# before any work is done, the outputs (--outdir's images, --json) placed by
# the output rules, and the record that claims --outdir.

class CalcPlan(NamedTuple):
    is_rundir:     bool                     # Is --network a run directory (each snapshot scored)?
    seed_sets:     list[list[int]] | None   # --network: the seeds of each repeat.
    pkls:          list[str] | None         # --network: the pickles to score.
    num:           int                      # Images per score.
    seed:          int                      # --images: seed of the subsets.
    outputs:       ToolOutputs              # --outdir and --json.
    images_record: dict | None              # The record of --outdir.

def calc_plan(*, image_path: str | None, network: str | None, ref_path: str, num: int | None, seed: int | None,
              seeds: list[int] | None, repeats: int, snapshots: str | None, outdir: str | None, json_path: str | None,
              detector: str, sampler_kwargs: dict) -> CalcPlan:
    if (image_path is None) == (network is None):
        raise UserError('give exactly one of --images and --network')
    is_rundir = network is not None and not is_url(network) and os.path.isdir(network)
    if image_path is not None:
        for name, value in (('--seeds', seeds), ('--snapshots', snapshots), ('--outdir', outdir)):
            if value is not None:
                raise UserError(f'{name} needs --network; it does not apply to --images')
    elif snapshots is not None and not is_rundir:
        raise UserError(f'--snapshots needs --network to be a run directory, not {network}')
    seed_sets, pkls = None, None
    if network is not None:
        seed_sets = network_seed_sets(seeds, seed, num, repeats)
        num = len(seed_sets[0])
        pkls = list_snapshots(network, snapshots) if is_rundir else [network]
    inputs = [(image_path, '--images'), (network, '--network'), (ref_path, '--ref'), (detector, '--detector')]
    outputs = ToolOutputs('fid.py calc', [OutputDir(outdir, '--outdir', OPTIONS_FNAME), OutputFile(json_path, '--json', is_json_lines)],
                          inputs, files_first=True)
    outputs.check()
    images_record = None
    if outdir is not None:
        images_record = dict(network=network if is_url(network) else os.path.abspath(network), snapshots=snapshots,
                             seeds=format_int_list([s for ss in seed_sets for s in ss]),
                             sampler={k: v for k, v in sampler_kwargs.items() if v is not None})
    return CalcPlan(is_rundir, seed_sets, pkls, num or DEFAULT_NUM_IMAGES, seed or 0, outputs, images_record)

#----------------------------------------------------------------------------
# What is scored against: the reference statistics and the detector, whose
# features must be as many as the statistics'.

class Scoring(NamedTuple):
    ref_path: str
    mu_ref:   np.ndarray
    sigma_ref: np.ndarray
    detector: str               # As given, for messages and records.
    det:      Detector
    device:   torch.device

    def check_dim(self, image_shape: Sequence[int]) -> int:
        dim = self.det.feature_dim(image_shape)
        if dim != self.mu_ref.shape[0]:
            raise UserError(f'{self.ref_path}: statistics of {self.mu_ref.shape[0]} features, but the detector '
                            f'{self.detector} gives {dim}')
        return dim

    def fid(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        return calculate_fid_from_inception_stats(mu, sigma, self.mu_ref, self.sigma_ref)

# One JSON record per score: what was scored, how, and the result.
def calc_record(scoring: Scoring, fids: Sequence[float], start: float, *, num: int, repeats: int, **fields: Any) -> dict:
    return dict(fields, **summarize(fids), ref=scoring.ref_path, num=num, repeats=repeats,
                detector=scoring.detector, detector_sha256=scoring.det.sha256, world_size=dist.get_world_size(),
                device=str(scoring.device), time=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                seconds=round(time.time() - start, 3))

#----------------------------------------------------------------------------
# The scores of --images: disjoint random subsets of --num images of a folder
# or zip; and of one network: one score per seed set, the images generated
# (and saved under `outdir` when given).

def score_images(scoring: Scoring, dataset: Any, image_path: str, *, num: int, repeats: int, seed: int,
                 max_batch_size: int, num_workers: int) -> dict:
    check_image_count(image_path, len(dataset), num, repeats)
    dim = scoring.check_dim(dataset.image_shape)
    start, fids = time.time(), []
    for k, indices in enumerate(image_subsets(len(dataset), num, repeats, seed)):
        dist.print0(f'Scoring {num} of {len(dataset)} images from "{image_path}"'
                    + (f' (subset {k + 1} of {repeats})...' if repeats > 1 else '...'))
        mu, sigma = dataset_stats(dataset, indices, scoring.det, max_batch_size=max_batch_size, num_workers=num_workers,
                                  device=scoring.device, feature_dim=dim)
        fids.append(scoring.fid(mu, sigma))
        if repeats > 1:
            dist.print0(f'Subset {k + 1}: FID {fids[-1]:g}')
    return calc_record(scoring, fids, start, num=num, repeats=repeats, images=image_path, seed=seed)

def score_network(scoring: Scoring, pkl: str, seed_sets: list[list[int]], *, num: int, outdir: str | None,
                  each: bool, max_batch_size: int, sampler_kwargs: dict) -> dict:
    dist.print0(f'Reading network "{pkl}"...')
    net = dist.rank0_first(lambda: load_network(pkl), f'the network {pkl}').to(scoring.device)
    if scoring.det.fast is not None:
        net = fast_lib.prepare_sampling_network(net, scoring.det.fast)
    if net.img_channels not in (1, 3):
        raise UserError(f'{pkl}: the network makes {net.img_channels}-channel images; FID needs 1 or 3')
    dim = scoring.check_dim([net.img_channels, net.img_resolution, net.img_resolution])
    check_sampler_options(net, sampler_kwargs)
    start, fids = time.time(), []
    for set_seeds in seed_sets:
        dist.print0(f'Generating and scoring {num} images (seeds {format_int_list(set_seeds)})...')
        mu, sigma = network_stats(net, set_seeds, scoring.det, max_batch_size=max_batch_size, device=scoring.device,
                                  outdir=outdir, feature_dim=dim, **sampler_kwargs)
        fids.append(scoring.fid(mu, sigma))
        if each:
            dist.print0(f'{os.path.basename(pkl)}, seeds {format_int_list(set_seeds)}: FID {fids[-1]:g}')
    del net
    return calc_record(scoring, fids, start, num=num, repeats=len(seed_sets), network=pkl, kimg=snapshot_kimg(pkl),
                       seeds=format_int_list([s for ss in seed_sets for s in ss]),
                       sampler={k: v for k, v in sampler_kwargs.items() if v is not None})

#----------------------------------------------------------------------------
# A whole fid.py calc: the plan, then the inputs read in the order that names
# a bad one as such (the images, the reference statistics, the network files,
# then the detector, a download, last), the scores, and --json appended by
# rank 0. Returns the plan and the records (one per network or snapshot, or
# one for --images); joins the process group, the caller leaves it.

def calc_fid(*, image_path: str | None, network: str | None, ref_path: str, num: int | None, seed: int | None,
             seeds: list[int] | None, repeats: int, snapshots: str | None, outdir: str | None, json_path: str | None,
             detector: str, detector_sha256: str | None, max_batch_size: int, num_workers: int, device: str | None,
             fast: bool, sampler_kwargs: dict) -> tuple[CalcPlan, list[dict]]:
    plan = calc_plan(image_path=image_path, network=network, ref_path=ref_path, num=num, seed=seed, seeds=seeds,
                     repeats=repeats, snapshots=snapshots, outdir=outdir, json_path=json_path, detector=detector,
                     sampler_kwargs=sampler_kwargs)
    dataset = open_image_dataset(image_path) if image_path is not None else None
    if dataset is not None:
        check_image_count(image_path, len(dataset), plan.num, repeats)  # Before any download.
    device_obj = init_device(device)
    dist.print0(f'Reading reference statistics "{ref_path}"...')
    mu_ref, sigma_ref = dist.rank0_first(lambda: load_ref_stats(ref_path), f'the reference statistics {ref_path}')
    if network is not None:
        missing = [pkl for pkl in plan.pkls if not is_url(pkl) and not os.path.isfile(pkl)]
        if missing:
            raise UserError(f'--network={missing[0]}: no such file')
    det = load_fid_detector(device_obj, detector, detector_sha256, fast)
    scoring = Scoring(ref_path, mu_ref, sigma_ref, detector, det, device_obj)
    if plan.images_record is not None and not plan.is_rundir:
        # A pickle's content too, as generate.py records it: images of another network at the same
        # path are not mixed into --outdir. (A run directory's snapshots are never replaced.)
        digest = dist.rank0_first(lambda: file_sha256(network), f'the network {network}')
        plan = plan._replace(images_record=dict(plan.images_record, network_sha256=digest))

    results: list[dict] = []
    if image_path is not None:
        results.append(score_images(scoring, dataset, image_path, num=plan.num, repeats=repeats, seed=plan.seed,
                                    max_batch_size=max_batch_size, num_workers=num_workers))
    else:
        with plan.outputs.claim(plan.images_record):
            for pkl in plan.pkls:
                subdir = outdir
                if outdir is not None and plan.is_rundir:
                    subdir = os.path.join(outdir, os.path.splitext(os.path.basename(pkl))[0])
                results.append(score_network(scoring, pkl, plan.seed_sets, num=plan.num, outdir=subdir,
                                             each=(repeats > 1 or plan.is_rundir), max_batch_size=max_batch_size,
                                             sampler_kwargs=sampler_kwargs))
    if dist.get_rank() == 0 and json_path is not None:
        for rec in results:
            append_json(json_path, rec)
    return plan, results

#----------------------------------------------------------------------------
# fid.py ref: statistics of every image of a dataset, written by rank 0.
# Joins the process group; the caller leaves it.

def ref_stats(dataset_path: str, dest_path: str, *, detector: str, detector_sha256: str | None, max_batch_size: int,
              num_workers: int, device: str | None, fast: bool) -> None:
    outputs = ToolOutputs('fid.py ref', [OutputFile(dest_path, '--dest', is_ref_stats_file)],
                          [(dataset_path, '--data'), (detector, '--detector')])
    outputs.check()
    dataset = open_image_dataset(dataset_path)
    check_image_count(dataset_path, len(dataset), len(dataset), 1)
    device_obj, det = setup_detector(device, detector, detector_sha256, fast)
    dist.print0(f'Calculating statistics of {len(dataset)} images from "{dataset_path}"...')
    mu, sigma = dataset_stats(dataset, range(len(dataset)), det, max_batch_size=max_batch_size,
                              num_workers=num_workers, device=device_obj)
    dist.print0(f'Writing reference statistics to "{dest_path}"...')
    if dist.get_rank() == 0:
        save_ref_stats(dest_path, mu, sigma)
    dist.barrier()

#----------------------------------------------------------------------------
