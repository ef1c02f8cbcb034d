"""Dataset commands for SFBD: `split` a dataset into a clean part and noisy observations, and
`merge` several datasets into one. Registered as subcommands of dataset_tool.py:

    python dataset_tool.py split --source=cifar10.zip --clean=clean.zip --noisy=noisy.zip \\
        --clean-fraction=0.04 --sigma=0.59 --seed=0
    python dataset_tool.py merge --source=clean.zip --source=denoised --dest=merged.zip

`split --sigma=LO:HI` gives every observation its own noise level, drawn uniformly from [LO, HI)
independently of the image (recorded per file in dataset.json); `merge` keeps per-image levels.

Both write their outputs under temporary names and rename them into place when complete, and
neither overwrites an existing dataset. The observation format is described in docs/observations.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
from typing import Any

import click
import numpy as np
import tqdm

from dnnlib.cli import FiniteFloat
from dnnlib.outputs import check_apart, check_distinct
from dnnlib.util import EasyDict, UserError, report_user_errors
from sfbd.observations import (add_noise, commit_together, dataset_fname, encode_npy, encode_png, raw_labels,
                               read_listing, split_record, write_datasets)
from training.dataset import NPY_EXT, DatasetFiles, ImageFolderDataset, file_ext, read_image, read_npy

#----------------------------------------------------------------------------
# Random choices of a split. The clean images are the first M of a seeded
# permutation. The noise of image i comes from its own stream keyed by
# (noise key, i), so it depends neither on M nor on the order of processing.
#
# The noise key is the secret that protects the originals: whoever knows it
# regenerates every draw and subtracts it (y - sigma*e = x, exactly). It is
# therefore fresh randomness from the operating system (128 bits) that is
# written nowhere, unless an experiment asks for reproducible noise with
# --noise-seed; such a set must not be published, since a seed, unlike 128
# bits, is found by trying.

def choose_clean(num_images: int, num_clean: int, seed: int) -> np.ndarray:
    """Sorted source indices of the images kept clean."""
    order = np.random.default_rng([seed, 0]).permutation(num_images)
    return np.sort(order[:num_clean])

def secret_noise_key() -> int:
    return secrets.randbits(128)

def noise_rng(noise_key: int, index: int) -> np.random.Generator:
    return np.random.default_rng([noise_key, 1, index])

# The noise level of image i for --sigma=LO:HI: uniform on [LO, HI), from a
# stream of its own keyed by (seed, i), drawn without looking at the image.
def noise_level(sigma: float | tuple[float, float], seed: int, index: int) -> float:
    if isinstance(sigma, tuple):
        return float(np.random.default_rng([seed, 2, index]).uniform(sigma[0], sigma[1]))
    return sigma

def describe_sigma(sigma: float | tuple[float, float]) -> str:
    return f'sigma {sigma[0]:g} to {sigma[1]:g}, per image' if isinstance(sigma, tuple) else f'sigma {sigma:g}'

#----------------------------------------------------------------------------
# --sigma: one noise level, or a range LO:HI for per-image levels.

class SigmaType(click.ParamType):
    name = 'FLOAT|LO:HI'

    def convert(self, value: Any, param: Any, ctx: Any) -> float | tuple[float, float]:
        if isinstance(value, (float, tuple)):
            return value
        parts = str(value).split(':')
        if len(parts) > 2 or not all(part.strip() for part in parts):
            self.fail(f'{value!r}: give one noise level or a range LO:HI such as 0.2:0.8', param, ctx)
        levels = [FiniteFloat(min=0, min_open=True).convert(part, param, ctx) for part in parts]
        if len(levels) == 1:
            return levels[0]
        if not levels[0] < levels[1]:
            self.fail(f'{value!r}: the range LO:HI needs LO < HI (for one level give one number)', param, ctx)
        return (levels[0], levels[1])

#----------------------------------------------------------------------------
# Split: every source image goes to exactly one part. Clean images are
# re-encoded as PNG; the others become observations. Both parts are numbered
# afresh in source order and carry the source's labels. The clean originals
# of the noisy part are not written anywhere; each part's dataset.json records
# only the name of every image's source file (sfbd.observations.split_record),
# so that an experiment can put originals beside results (denoise.py --originals).

# The two parts are renamed into place one after the other; a split killed
# between the two renames (SIGKILL: nothing can clean up) leaves one part
# alone, which a rerun names instead of only refusing to overwrite it.
def check_not_half_published(clean_dest: str, noisy_dest: str) -> None:
    for there, option, missing, other in ((clean_dest, '--clean', noisy_dest, '--noisy'),
                                          (noisy_dest, '--noisy', clean_dest, '--clean')):
        if os.path.exists(there) and not os.path.exists(missing):
            try:
                record = read_listing(there)[1].get('split')
            except UserError:
                continue
            if isinstance(record, dict) and record.get('part') == option[2:]:
                raise UserError(f'{option}={there}: is the {option[2:]} part of an earlier split, and {other}={missing} '
                                'does not exist (a split stopped between its last two steps leaves one part alone); '
                                'delete it and split again')

MAX_SIGMA = 1e30  # Observations are stored as float32 (largest 3.4e38): their noise must fit.

def split_dataset(source: str, clean_dest: str, noisy_dest: str, sigma: float | tuple[float, float], seed: int = 0,
                  clean_count: int | None = None, clean_fraction: float | None = None,
                  noise_seed: int | None = None, verbose: bool = True) -> dict:
    """Split `source` into an image dataset `clean_dest` and an observation set `noisy_dest`, with
    noise level `sigma`, or per-image levels uniform on (LO, HI) when `sigma` is a pair.
    Give exactly one of `clean_count` and `clean_fraction`. `seed` fixes the choice of clean images
    (and the per-image levels); the noise is secret unless `noise_seed` fixes it (experiments only).
    Returns {'clean': M, 'noisy': N - M}."""
    if (clean_count is None) == (clean_fraction is None):
        raise UserError('split: give exactly one of --clean-count and --clean-fraction')
    if isinstance(sigma, tuple):
        if not (len(sigma) == 2 and 0 < sigma[0] < sigma[1] <= MAX_SIGMA):
            raise UserError(f'split: --sigma={sigma[0]}:{sigma[1]} needs 0 < LO < HI <= {MAX_SIGMA:g}')
    elif not 0 < sigma <= MAX_SIGMA:
        raise UserError(f'split: --sigma must be positive and at most {MAX_SIGMA:g}, got {sigma}')
    check_apart([(clean_dest, '--clean'), (noisy_dest, '--noisy')], [(source, '--source')])
    check_not_half_published(clean_dest, noisy_dest)
    dataset = ImageFolderDataset(source)
    if dataset.is_float:
        raise UserError(f'--source={source}: holds .npy arrays; split needs a dataset of 8-bit images')
    fnames, metadata = read_listing(source)
    labels = raw_labels(source, fnames, metadata)
    num_images = len(fnames)
    num_clean = clean_count if clean_count is not None else int(round(clean_fraction * num_images))
    if not 1 <= num_clean < num_images:
        raise UserError(f'split: {num_clean} clean images out of {num_images}; both parts must be non-empty')

    noise_key = secret_noise_key() if noise_seed is None else noise_seed
    is_clean = np.zeros(num_images, dtype=bool)
    is_clean[choose_clean(num_images, num_clean, seed)] = True
    clean_labels: list = []  # [name, label] pairs of each part, in order.
    noisy_labels: list = []
    clean_sources: list = []  # [name, source file name] pairs of each part.
    noisy_sources: list = []
    noisy_sigmas: dict = {}  # Name -> noise level, for per-image levels.
    with write_datasets((clean_dest, '--clean'), (noisy_dest, '--noisy'), inputs=[(source, '--source')]) as (clean, noisy):
        for idx in tqdm.trange(num_images, unit='img', disable=not verbose, desc='split'):
            image, _label = dataset[idx]
            label = None if labels is None else labels[idx]
            if is_clean[idx]:
                name = dataset_fname(len(clean_labels), '.png')
                clean.add(name, encode_png(image))
                clean_labels.append([name, label])
                clean_sources.append([name, fnames[idx]])
            else:
                name = dataset_fname(len(noisy_labels), '.npy')
                level = noise_level(sigma, seed, idx)
                noisy.add(name, encode_npy(add_noise(image, level, noise_rng(noise_key, idx))))
                noisy_labels.append([name, label])
                noisy_sources.append([name, fnames[idx]])
                noisy_sigmas[name] = level
        source_path = os.path.abspath(source)
        # One id for both parts. With secret noise it is new for every split: two splits of one seed
        # share their names, sizes and labels, and only this tells a re-made set from the one before
        # (denoise.py and training identify a set by its dataset.json and listing). Seeded noise gives
        # the same pixels for the same settings, and so the same id.
        if noise_seed is None:
            split_id, noise = secrets.token_hex(16), 'secret'
        else:
            settings = json.dumps([source_path, seed, noise_seed, sigma, num_clean, num_images])
            split_id, noise = hashlib.sha256(settings.encode()).hexdigest()[:32], 'seeded'
        commit_together([clean, noisy], [dict(labels=None if labels is None else clean_labels,
                                              split=split_record(source_path, seed, 'clean', clean_sources, noise, split_id)),
                                         dict(sigma=noisy_sigmas if isinstance(sigma, tuple) else sigma,
                                              labels=None if labels is None else noisy_labels,
                                              split=split_record(source_path, seed, 'noisy', noisy_sources, noise, split_id))])
    dataset.close()
    return dict(clean=len(clean_labels), noisy=len(noisy_labels))

#----------------------------------------------------------------------------
# Merge: the images of several datasets, one after another, renumbered so that
# names are unique; files are copied byte for byte, labels and noise levels
# travel with them. The parts must agree on image shape and kind (8-bit
# images or .npy arrays), all or none must have labels, and all or none must
# record a noise level. The merged set records one sigma when all images
# share it, and otherwise the level of each image (a mapping).

def merge_datasets(sources: list[str], dest: str, verbose: bool = True) -> int:
    """Merge `sources` into a new dataset `dest`; returns the number of images."""
    if not sources:
        raise UserError('merge: give at least one --source')
    check_distinct([(source, '--source') for source in sources])
    check_apart([(dest, '--dest')], [(source, '--source') for source in sources])
    parts = []
    for source in sources:
        fnames, metadata = read_listing(source)
        dataset = ImageFolderDataset(source, use_labels=(metadata.get('labels') is not None))
        dataset.close()
        parts.append(EasyDict(source=source, dataset=dataset, fnames=fnames, sigmas=dataset.sigmas,
                              labels=raw_labels(source, fnames, metadata)))

    first = parts[0]
    for part in parts[1:]:
        where = f'--source={part.source}'
        if part.dataset.image_shape != first.dataset.image_shape:
            raise UserError(f'{where}: images are {part.dataset.image_shape} (C, H, W), '
                            f'but {first.source} has {first.dataset.image_shape}')
        if part.dataset.is_float != first.dataset.is_float:
            raise UserError(f'{where}: mixes .npy arrays and 8-bit images with {first.source}')
        if (part.labels is None) != (first.labels is None):
            raise UserError(f'{where}: all parts or none must have labels, and {first.source} '
                            f'{"has none" if first.labels is None else "has them"}')
        if part.labels is not None and (part.dataset.has_onehot_labels != first.dataset.has_onehot_labels or
                (not part.dataset.has_onehot_labels and part.dataset.label_shape != first.dataset.label_shape)):
            raise UserError(f'{where}: labels of another kind than those of {first.source}')
        if (part.sigmas is None) != (first.sigmas is None):
            raise UserError(f'{where}: all parts or none must record a noise level ("sigma"), and {first.source} '
                            f'{"records none" if first.sigmas is None else "does"}')

    merged_labels = []
    merged_sigmas: dict = {}
    with write_datasets((dest, '--dest'), inputs=[(source, '--source') for source in sources]) as (writer,):
        with tqdm.tqdm(total=sum(len(part.fnames) for part in parts), unit='img', disable=not verbose, desc='merge') as bar:
            for part in parts:
                files = DatasetFiles(part.source)
                for k, fname in enumerate(part.fnames):
                    name = dataset_fname(len(merged_labels), file_ext(fname))
                    data = files.read(fname)
                    decode = read_npy if file_ext(fname) == NPY_EXT else read_image
                    decode(io.BytesIO(data), files.where(fname))  # Copied byte for byte, but only if it decodes.
                    writer.add(name, data)
                    merged_labels.append([name, None if part.labels is None else part.labels[k]])
                    if part.sigmas is not None:
                        merged_sigmas[name] = float(part.sigmas[k])
                    bar.update(1)
                files.close()
        metadata = dict(labels=None if first.labels is None else merged_labels)
        if first.sigmas is not None:
            levels = set(merged_sigmas.values())
            metadata['sigma'] = levels.pop() if len(levels) == 1 else merged_sigmas
        writer.commit(metadata)
    return len(merged_labels)

#----------------------------------------------------------------------------
# Command-line front ends, registered in dataset_tool.py.

@click.command()
@click.option('--source',          help='Dataset to split: directory or zip of 8-bit images', metavar='PATH', type=str, required=True)
@click.option('--clean',           help='Output for the clean part (directory, or .zip)', metavar='PATH',   type=str, required=True)
@click.option('--noisy',           help='Output for the noisy observations (directory, or .zip)', metavar='PATH', type=str, required=True)
@click.option('--clean-fraction',  help='Share of the images kept clean', metavar='FLOAT',                  type=FiniteFloat(min=0, max=1, min_open=True, max_open=True))
@click.option('--clean-count',     help='Number of images kept clean', metavar='INT',                       type=click.IntRange(min=1))
@click.option('--sigma',           help='Noise level of the observations in [-1, 1] pixel units, or LO:HI for a level per image drawn uniformly', metavar='FLOAT|LO:HI', type=SigmaType(), required=True)
@click.option('--seed',            help='Seed for the choice of clean images (and the levels of --sigma=LO:HI)', metavar='INT', type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--noise-seed',      help='Seed for the noise, for reproducible experiments only: whoever knows or guesses it removes the noise  [default: secret, from the OS]', metavar='INT', type=click.IntRange(min=0))
@report_user_errors
def split(source: str, clean: str, noisy: str, clean_fraction: float | None, clean_count: int | None,
          sigma: float | tuple[float, float], seed: int, noise_seed: int | None) -> None:
    """Split a dataset into clean images and noisy observations (SFBD's setting).

    \b
    Every image goes to exactly one part: a chosen few stay clean (an EDM image
    dataset), the rest become observations y = x/127.5 - 1 + sigma*e stored as
    float32 .npy arrays (docs/observations.md). --seed fixes the choice; the
    noise is drawn from 128 secret bits that are written nowhere, so the
    observations can be published: nobody, this tool included, can take the
    noise out again. --noise-seed makes the noise reproducible instead, for
    experiments on data that is public anyway. Labels travel with their images.
    --sigma=LO:HI gives each observation its own noise level, uniform on
    [LO, HI) and independent of the image, recorded per file in dataset.json.

    \b
    Example:
    python dataset_tool.py split --source=cifar10-32x32.zip --clean=clean.zip \\
        --noisy=noisy.zip --clean-fraction=0.04 --sigma=0.59 --seed=0
    """
    counts = split_dataset(source, clean, noisy, sigma, seed, clean_count=clean_count, clean_fraction=clean_fraction,
                           noise_seed=noise_seed)
    print(f'{counts["clean"]} clean images in {clean}, {counts["noisy"]} observations ({describe_sigma(sigma)}) in {noisy}')

@click.command()
@click.option('--source', 'sources', help='Dataset to merge (repeat for each)', metavar='PATH',  type=str, multiple=True, required=True)
@click.option('--dest',              help='Output dataset (directory, or .zip)', metavar='PATH',  type=str, required=True)
@report_user_errors
def merge(sources: tuple[str, ...], dest: str) -> None:
    """Merge datasets into one, renumbering the images and keeping their labels.

    \b
    Example:
    python dataset_tool.py merge --source=clean.zip --source=round-001/denoised --dest=merged.zip
    """
    count = merge_datasets(list(sources), dest)
    print(f'{count} images from {len(sources)} datasets in {dest}')

#----------------------------------------------------------------------------
