"""The premise check of SFBD: does a model reproduce images it must not?

For every generated image, find its nearest and second-nearest neighbour in a reference set (the
clean training images; in an experiment also the originals of the noisy observations, which the
model never saw), exactly, in a feature space:

    pixel       the image itself in [-1, 1] units: C*H*W features;
    inception   the 2048 pool features of FID's detector (torch_utils/detector.py).

Distances are root-mean-square feature differences, ||a - b|| / sqrt(D). An image counts as a copy
of a reference set when

    d(x, NN_1) < threshold * d(x, NN_2),        threshold = 1/3 by default,

the relative-distance criterion with which Gu et al., "On Memorization in Diffusion Models" (TMLR
2025), count memorised samples of EDM models (nearest over second-nearest l2 distance of pixels,
below 1/3). A sample far closer to one reference image than to any other is a copy of that image;
a sample that is merely typical of a dense part of the data lies about as close to several.

The search is exact: every distance is computed, in float64 blocks on the device, and the few
closest candidates of each image are measured again directly, so an exact copy has distance 0.
`memorization.py` is the command line (its option table and messages; its run is
`memorization_command` here); `sfbd.report` runs the same check on every SFBD round. Not here: the
detector (torch_utils/detector.py) and the output rules (dnnlib/outputs.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from typing import Any, Sequence

import click
import numpy as np
import torch
import tqdm

from dnnlib.outputs import OutputDir, OutputFile, ToolOutputs, check_distinct
from dnnlib.util import EasyDict, UserError, atomic_write
from sfbd.observations import read_listing
from sfbd.plots import new_figure, save_figure
from torch_utils import distributed as dist
from torch_utils.detector import DEFAULT_DETECTOR, Detector, load_detector
from torch_utils.persistence import load_network
from training.dataset import ImageFolderDataset
from training.sampler import generate_images, to_uint8

FEATURES = ('pixel', 'inception')
DEFAULT_THRESHOLD = 1 / 3
CRITERION = 'nearest < threshold x second-nearest distance (Gu et al., On Memorization in Diffusion Models)'

#----------------------------------------------------------------------------
# Feature spaces. Pixels have the call contract of the detector: uint8
# [N, C, H, W] images in, float64 [N, D] features out.

class PixelFeatures:
    def __init__(self, device: torch.device | str = 'cpu'):
        self.device = torch.device(device)
        self.source = 'pixel'

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f'pixel features take uint8 images, not {images.dtype}')
        return images.to(self.device, torch.float64).flatten(1) / 127.5 - 1

    def feature_dim(self, image_shape: Sequence[int]) -> int:
        return int(np.prod(image_shape))

def load_feature_space(kind: str, device: torch.device | str = 'cpu', detector: str = DEFAULT_DETECTOR,
                       detector_sha256: str | None = None, verbose: bool = True) -> PixelFeatures | Detector:
    if kind == 'pixel':
        return PixelFeatures(device)
    if kind == 'inception':
        return load_detector(detector, detector_sha256, device=device, verbose=verbose)
    raise ValueError(f'features must be one of {"|".join(FEATURES)}, not {kind!r}')

#----------------------------------------------------------------------------
# Image sets: a directory or zip of 8-bit images (a dataset, or a folder of
# generated images) read by relative file name, or images held in memory.

class ImageSet:
    def __init__(self, path: str, option: str = '--train'):
        self.path = path
        self.names, _metadata = read_listing(path)
        self.dataset = ImageFolderDataset(path)
        if self.dataset.sigma_text:
            raise UserError(f'{option}={path}: is an observation set (noisy images, sigma {self.dataset.sigma_text} in '
                            'dataset.json); the memorisation check compares clean images (e.g. the split\'s source)')
        if self.dataset.is_float:
            raise UserError(f'{option}={path}: holds .npy arrays; the memorisation check compares 8-bit images')

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_shape(self) -> list[int]:
        return list(self.dataset.image_shape)

    def load(self, indices: Sequence[int]) -> np.ndarray:
        """Images [B, C, H, W] uint8."""
        return np.stack([self.dataset[int(i)][0] for i in indices])

class MemoryImageSet:
    def __init__(self, path: str, names: list[str], images: np.ndarray):
        self.path, self.names, self.images = path, names, np.asarray(images, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def image_shape(self) -> list[int]:
        return list(self.images.shape[1:])

    def load(self, indices: Sequence[int]) -> np.ndarray:
        return self.images[np.asarray(indices, dtype=np.int64)]

# A network's images for the given seeds with generate.py's sampler and
# per-seed protocol, [N, C, H, W] uint8 on the CPU.
def sample_images(net: torch.nn.Module, seeds: Sequence[int], device: torch.device | str = 'cpu',
                  max_batch_size: int = 256, verbose: bool = False, **sampler_kwargs: Any) -> np.ndarray:
    batches = [list(seeds[s:s + max_batch_size]) for s in range(0, len(seeds), max_batch_size)]
    images = [to_uint8(generate_images(net, batch, device=device, **sampler_kwargs)).cpu().numpy()
              for batch in tqdm.tqdm(batches, unit='batch', desc='Generating', disable=not verbose)]
    return np.concatenate(images)

def generated_image_set(net: torch.nn.Module, network: str, seeds: Sequence[int], **kwargs: Any) -> MemoryImageSet:
    """The images of `seeds`, named as generate.py names its files (000123.png)."""
    return MemoryImageSet(network, [f'{seed:06d}.png' for seed in seeds], sample_images(net, seeds, **kwargs))

def image_features(images: ImageSet | MemoryImageSet, space: PixelFeatures | Detector, batch_size: int = 256,
                   verbose: bool = False, desc: str = 'Features') -> torch.Tensor:
    """Features of every image of a set, float32 [N, D] on the CPU."""
    chunks = [range(s, min(s + batch_size, len(images))) for s in range(0, len(images), batch_size)]
    return torch.cat([space.features(torch.from_numpy(images.load(chunk))).to('cpu', torch.float32)
                      for chunk in tqdm.tqdm(chunks, unit='batch', desc=desc, disable=not verbose)])

#----------------------------------------------------------------------------
# Exact nearest and second-nearest references of every query. Squared
# distances |q|^2 + |r|^2 - 2 q.r in float64 blocks of at most `block_bytes`
# select a few candidates per query; those are measured again as |q - r|^2,
# which is exact for copies and free of cancellation, and sorted (ties: the
# lower index first).

@torch.no_grad()
def nearest_two(queries: torch.Tensor, refs: torch.Tensor, device: torch.device | str = 'cpu',
                block_bytes: int = 1 << 28, candidates: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """RMS distances (float64 [N, 2]) and indices (int64 [N, 2]) of the two nearest references."""
    (n, dim), m = queries.shape, refs.shape[0]
    if m < 2:
        raise ValueError(f'need at least 2 reference images, got {m}')
    if refs.shape[1] != dim:
        raise ValueError(f'queries have {dim} features, references {refs.shape[1]}')
    device = torch.device(device)
    k = min(candidates, m)
    refs = refs.to(device)
    query_block = max(1, min(n, block_bytes // (8 * dim * k)))
    ref_block = max(1, min(m, block_bytes // (8 * max(dim, query_block))))
    distances = torch.empty([n, 2], dtype=torch.float64)
    indices = torch.empty([n, 2], dtype=torch.int64)
    for q0 in range(0, n, query_block):
        q = queries[q0:q0 + query_block].to(device, torch.float64)
        q_norm = (q * q).sum(1)
        best_d = q.new_empty([len(q), 0])
        best_i = torch.empty([len(q), 0], dtype=torch.int64, device=device)
        for r0 in range(0, m, ref_block):
            r = refs[r0:r0 + ref_block].to(torch.float64)
            d2 = (q_norm[:, None] + (r * r).sum(1)[None, :] - 2 * (q @ r.T)).clamp_(min=0)
            values, where = d2.topk(min(k, len(r)), dim=1, largest=False)
            best_d, best_i = torch.cat([best_d, values], 1), torch.cat([best_i, where + r0], 1)
            if best_d.shape[1] > k:
                best_d, keep = best_d.topk(k, dim=1, largest=False)
                best_i = best_i.gather(1, keep)
        best_i, _order = best_i.sort(dim=1)
        exact = ((q[:, None, :] - refs[best_i].to(torch.float64)) ** 2).sum(-1)
        exact, order = exact.sort(dim=1, stable=True)
        distances[q0:q0 + len(q)] = (exact[:, :2] / dim).sqrt().cpu()
        indices[q0:q0 + len(q)] = best_i.gather(1, order)[:, :2].cpu()
    return distances, indices

# The criterion: nearest over second-nearest distance (0 for an exact copy,
# also when the reference set holds the image twice).
def distance_ratio(distances: torch.Tensor) -> torch.Tensor:
    nearest, second = distances[:, 0], distances[:, 1]
    return torch.where(nearest > 0, nearest / second.clamp(min=torch.finfo(second.dtype).tiny), 0)

#----------------------------------------------------------------------------
# The check: one match per reference set. A match holds, for every sample,
# its nearest reference, both distances, the ratio and the verdict.

def match_reference(sample_features: torch.Tensor, reference: ImageSet | MemoryImageSet,
                    reference_features: torch.Tensor, threshold: float = DEFAULT_THRESHOLD,
                    device: torch.device | str = 'cpu') -> EasyDict:
    distances, indices = nearest_two(sample_features, reference_features, device=device)
    ratio = distance_ratio(distances)
    return EasyDict(path=reference.path, reference=reference, num_references=len(reference),
                    nearest=indices[:, 0].numpy(), distance=distances[:, 0].numpy(),
                    second_distance=distances[:, 1].numpy(), ratio=ratio.numpy(),
                    is_copy=(ratio < threshold).numpy())

def open_references(reference_paths: Sequence[str]) -> list[ImageSet]:
    """Open the reference sets; each needs two images or more."""
    references = []
    for path in reference_paths:
        reference = ImageSet(path, '--train')
        if len(reference) < 2:
            raise UserError(f'--train={path}: holds {len(reference)} image; the criterion needs the second-nearest '
                            'reference, so a reference set needs at least 2')
        references.append(reference)
    return references

# Pixel distances need samples and references of one shape.
def check_shapes(references: Sequence[ImageSet | MemoryImageSet], sample_shape: Sequence[int],
                 space: PixelFeatures | Detector, samples: str = 'the samples') -> None:
    for reference in references:
        if isinstance(space, PixelFeatures) and list(reference.image_shape) != list(sample_shape):
            raise UserError(f'--train={reference.path}: images are {reference.image_shape} (C, H, W), {samples} '
                            f'{list(sample_shape)}; pixel features need one shape (--features=inception does not)')

def check_memorization(samples: ImageSet | MemoryImageSet, references: Sequence[ImageSet | MemoryImageSet],
                       space: PixelFeatures | Detector, threshold: float = DEFAULT_THRESHOLD, batch_size: int = 256,
                       device: torch.device | str = 'cpu', verbose: bool = False) -> list[EasyDict]:
    """Match every sample against every reference set (see the module docstring)."""
    check_shapes(references, samples.image_shape, space)
    sample_features = image_features(samples, space, batch_size, verbose, desc='Features of the samples')
    matches = []
    for reference in references:
        features = image_features(reference, space, batch_size, verbose, desc=f'Features of {reference.path}')
        matches.append(match_reference(sample_features, reference, features, threshold, device))
    return matches

def summarize_match(match: EasyDict) -> dict:
    copies = int(match.is_copy.sum())
    return dict(path=match.path, references=match.num_references, images=len(match.is_copy), copies=copies,
                fraction=copies / max(len(match.is_copy), 1), median_distance=float(np.median(match.distance)))

#----------------------------------------------------------------------------
# Outputs: the table, the JSON record, the pairs and the histograms.

def format_table(matches: Sequence[EasyDict]) -> str:
    rows = [summarize_match(match) for match in matches]
    width = max([len('reference set')] + [len(row['path']) for row in rows])
    lines = [f'{"reference set":<{width}} {"references":>10} {"images":>8} {"copies":>8} {"fraction":>9} {"median distance":>16}']
    for row in rows:
        lines.append(f'{row["path"]:<{width}} {row["references"]:>10} {row["images"]:>8} {row["copies"]:>8} '
                     f'{row["fraction"]:>9.2%} {row["median_distance"]:>16.4f}')
    return '\n'.join(lines)

def result_record(samples: ImageSet | MemoryImageSet, matches: Sequence[EasyDict], features: str,
                  threshold: float) -> dict:
    """The JSON record: totals, one summary per reference set, and one entry per image and set
    (`image` and `nearest` are file names relative to their sets)."""
    any_copy = np.zeros(len(samples), dtype=bool)
    for match in matches:
        any_copy |= match.is_copy
    images = [dict(image=samples.names[i], nearest=match.reference.names[int(match.nearest[i])],
                   reference_set=match.path, distance=float(match.distance[i]),
                   second_distance=float(match.second_distance[i]), ratio=float(match.ratio[i]),
                   copy=bool(match.is_copy[i]))
              for i in range(len(samples)) for match in matches]
    return dict(num_images=len(samples), num_copies=int(any_copy.sum()), features=features, threshold=threshold,
                criterion=CRITERION, samples=samples.path, reference_sets=[summarize_match(m) for m in matches],
                images=images)

def save_json(path: str, record: dict) -> None:
    with atomic_write(path, 'w') as f:
        json.dump(record, f, indent=1)

# What a rerun may replace: a JSON object with the keys of `result_record`.
# Anything else (another JSON file, a dataset, a figure) is not ours.
RESULT_KEYS = frozenset(['num_images', 'num_copies', 'features', 'threshold', 'criterion', 'reference_sets', 'images'])

def is_result_file(path: str) -> bool:
    """Is `path` a --json output of memorization.py?"""
    try:
        with open(path, 'rb') as f:
            if not f.read(64).lstrip().startswith(b'{'):
                return False  # Not even a JSON object: not read further.
            f.seek(0)
            record = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and RESULT_KEYS <= record.keys()

# Side by side, with a one-pixel white gap: [C, H, 2W+1] -> [H, 2W+1, C].
def _pair(sample: np.ndarray, reference: np.ndarray) -> np.ndarray:
    gap = np.full([sample.shape[0], sample.shape[1], 1], 255, dtype=np.uint8)
    return np.concatenate([sample, gap, reference], axis=2).transpose(1, 2, 0)

def save_pairs_figure(path: str, samples: ImageSet | MemoryImageSet, matches: Sequence[EasyDict], count: int = 8,
                      text: dict[str, str] | None = None) -> None:
    """For each reference set, the `count` samples most like copies (smallest ratio): sample |
    nearest reference, titled with the ratio (red: counted as a copy). `text`: PNG text chunks."""
    fig = new_figure(1.5 * count, 1.45 * len(matches) + 0.3)
    for subfig, match in zip(np.atleast_1d(fig.subfigures(len(matches), 1)), matches):
        subfig.suptitle(f'{match.path}: {int(match.is_copy.sum())} copies among {len(match.is_copy)} samples',
                        fontsize=9)
        order = np.argsort(match.ratio, kind='stable')[:count]
        references = match.reference.load(match.nearest[order]) if len(order) else []
        shown = samples.load(order) if len(order) else []
        for j, ax in enumerate(subfig.subplots(1, count, squeeze=False)[0]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(order):
                ax.set_axis_off()
                continue
            pair = _pair(shown[j], references[j])
            ax.imshow(pair[:, :, 0] if pair.shape[2] == 1 else pair, cmap='gray', vmin=0, vmax=255,
                      interpolation='nearest')
            ax.set_title(f'{match.ratio[order[j]]:.3f}', fontsize=9, color='red' if match.is_copy[order[j]] else 'black')
    fig.suptitle('sample | nearest reference, ratio nearest/second-nearest distance (red: copy)', fontsize=10)
    save_figure(fig, path, text)

def save_distance_histograms(path: str, matches: Sequence[EasyDict], threshold: float) -> None:
    """Nearest distances and ratios of all samples, one histogram per reference set."""
    fig = new_figure(10, 3.6)
    left, right = fig.subplots(1, 2)
    bins = np.linspace(0, max(max(float(match.distance.max()) for match in matches), 1e-9) * 1.02, 41)
    for match in matches:
        label = f'{short_path(match.path)}: {int(match.is_copy.sum())} copies of {len(match.is_copy)}'
        left.hist(match.distance, bins=bins, histtype='step', linewidth=1.5, label=label)
        right.hist(match.ratio, bins=np.linspace(0, 1, 41), histtype='step', linewidth=1.5, label=label)
    right.axvline(threshold, color='red', linestyle='--', linewidth=1, label=f'threshold {threshold:.3g}')
    left.set_xlabel('distance to the nearest reference (RMS per feature)')
    right.set_xlabel('nearest / second-nearest distance')
    for ax in (left, right):
        ax.set_ylabel('samples')
        ax.legend(fontsize=8)
    save_figure(fig, path)

def short_path(path: str, length: int = 32) -> str:
    path = os.path.normpath(path)
    return path if len(path) <= length else '...' + path[-(length - 3):]

#----------------------------------------------------------------------------
# Threshold values as fractions ("1/3") or decimals; the click type of the
# --threshold options of memorization.py and sfbd.report.

def parse_threshold(text: str | float) -> float:
    try:
        if isinstance(text, str) and '/' in text:
            num, den = text.split('/')
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise UserError(f'"{text}" is not a number or a fraction such as 1/3') from None
    if not (math.isfinite(value) and 0 < value <= 1):
        raise UserError(f'"{text}": the threshold must lie in (0, 1]')
    return value

class ThresholdType(click.ParamType):
    name = 'FLOAT'

    def convert(self, value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_threshold(value)
        except UserError as e:
            self.fail(str(e), param, ctx)

#----------------------------------------------------------------------------
# A whole run of memorization.py: the outputs placed by the output rules, the
# inputs read (bad ones fail before the long part), the images generated or
# read, the search, and the outputs written. Returns the matches, for the
# table, and the files written.

FIGURES = ['pairs.png', 'distances.png']  # What memorization.py's --outdir receives.

def memorization_command(*, image_path: str | None, network_pkl: str | None, seeds: list[int] | None,
                         train_paths: Sequence[str], features: str, threshold: float, outdir: str | None,
                         json_path: str | None, max_batch_size: int, device: str | None, detector: str | None,
                         detector_sha256: str | None, sampler_kwargs: dict) -> tuple[list[EasyDict], list[str]]:
    if dist.get_world_size() > 1:
        raise UserError('memorization.py runs in one process; run it without torchrun')
    if (image_path is None) == (network_pkl is None):
        raise UserError('give exactly one of --images and --network')
    if image_path is not None and seeds is not None:
        raise UserError('--seeds needs --network; it does not apply to --images')
    if features != 'inception' and (detector is not None or detector_sha256 is not None):
        raise UserError('--detector and --detector-sha256 apply to --features=inception only')
    inputs = [(image_path, '--images'), (network_pkl, '--network'), (detector, '--detector'),
              *[(path, '--train') for path in train_paths]]
    check_distinct([(image_path, '--images'), *[(path, '--train') for path in train_paths]])  # Samples are not references.
    markers = FIGURES + [os.path.basename(json_path or FIGURES[0])]
    ToolOutputs('memorization.py', [OutputFile(json_path, '--json', is_result_file),  # Only our own earlier output.
                                    OutputDir(outdir, '--outdir', markers=markers)],
                inputs, nested=True).check()  # The JSON may go into --outdir.
    device_obj = dist.resolve_device(device)

    references = open_references(train_paths)
    space = load_feature_space(features, device_obj, detector or DEFAULT_DETECTOR, detector_sha256)
    if image_path is not None:
        samples = ImageSet(image_path, '--images')
    else:
        seeds = list(range(10000)) if seeds is None else seeds
        if not seeds:
            raise UserError('--seeds names no seeds')
        print(f'Loading network from "{network_pkl}"...')
        net = load_network(network_pkl).to(device_obj)
        shape = [net.img_channels, net.img_resolution, net.img_resolution]
        check_shapes(references, shape, space)  # Before sampling, which may take long.
        print(f'Generating {len(seeds)} images...')
        samples = generated_image_set(net, network_pkl, seeds, device=device_obj, max_batch_size=max_batch_size,
                                      verbose=True, **sampler_kwargs)
        del net

    matches = check_memorization(samples, references, space, threshold, max_batch_size, device_obj, verbose=True)
    wrote = save_results(outdir, json_path, samples, matches, result_record(samples, matches, features, threshold),
                         threshold)
    return matches, wrote

# The figures and the JSON are written under hidden temporary names first and
# renamed into place together at the end, so that a failure or a stop (a full
# disk, SIGTERM) leaves the outputs of the run before, all of them, and a
# folder this run made goes again; the outputs of one run never sit beside
# another's but for the instant of the renames.
def save_results(outdir: str | None, json_path: str | None, samples: Any, matches: list[EasyDict], record: dict,
                 threshold: float) -> list[str]:
    made = outdir is not None and not os.path.isdir(outdir)
    staged: list[tuple[str, str]] = []  # (temporary, final) paths.
    def stage(path: str) -> str:
        directory, name = os.path.split(os.path.abspath(path))
        staged.append((os.path.join(directory, f'.{name}.{uuid.uuid4().hex[:8]}.tmp'), path))
        return staged[-1][0]
    try:
        if outdir is not None:
            pairs, histograms = (os.path.join(outdir, name) for name in FIGURES)
            save_pairs_figure(stage(pairs), samples, matches)
            save_distance_histograms(stage(histograms), matches, threshold)
        if json_path is not None:
            save_json(stage(json_path), record)
        wrote = [final for _tmp, final in staged]
        while staged:
            os.replace(*staged[0])
            staged.pop(0)
    except BaseException:
        for tmp, _final in staged:
            with contextlib.suppress(OSError):
                os.remove(tmp)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(outdir)
        raise
    return wrote

#----------------------------------------------------------------------------
