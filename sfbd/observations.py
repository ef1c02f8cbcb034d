"""Noisy observation sets: what a copyright holder releases instead of the images.

An observation set is laid out like an EDM dataset (a directory or an uncompressed zip), but each
image is replaced by one float32 `.npy` array of shape [C, H, W] holding

    y = x / 127.5 - 1 + sigma * e,     e ~ N(0, I),

the 8-bit image x in the network's [-1, 1] units plus Gaussian noise, not clipped. Files are named
`00000/img00000000.npy`, `00000/img00000001.npy`, ..., 1000 to a folder, and `dataset.json` records
the noise level next to EDM's labels:

    {"sigma": 0.59, "labels": [["00000/img00000000.npy", 6], ...]}      ("labels": null if none)

or, when every observation has its own noise level, a mapping from file name to level:

    {"sigma": {"00000/img00000000.npy": 0.41, "00000/img00000001.npy": 0.77, ...}, "labels": ...}

Reading goes through training.dataset, which knows `.npy` arrays; this module adds the checks that
make a dataset an observation set, EDM's file naming, and an atomic writer for whole datasets that
the dataset commands (`split`, `merge`) share. See docs/observations.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
import zipfile
from typing import Any, Iterator, Sequence

import numpy as np
import PIL.Image
import torch

from dnnlib.outputs import check_apart, check_output_file
from dnnlib.util import UserError, current_umask, is_environment_error
from training.dataset import (METADATA_FNAME, NPY_EXT, DatasetFiles, ImageFolderDataset, file_ext, is_dataset_file,
                              labels_in_order, load_metadata, parse_labels)

#----------------------------------------------------------------------------
# EDM's file naming: image i is `{i // 1000 * 1000:05d}/img{i:08d}.ext`, so a
# folder never holds more than 1000 images.

def dataset_fname(index: int, ext: str) -> str:
    return f'{index // 1000:05d}/img{index:08d}{ext}'

def with_ext(fname: str, ext: str) -> str:
    """The same relative name with another extension (`00000/img00000003.npy` -> `.png`)."""
    return os.path.splitext(fname)[0] + ext

#----------------------------------------------------------------------------
# Encoding single files.

def encode_png(image: np.ndarray) -> bytes:
    """A [C, H, W] uint8 image (C = 1 or 3) as PNG bytes."""
    image = np.asarray(image).transpose(1, 2, 0)
    pil = PIL.Image.fromarray(image[:, :, 0], 'L') if image.shape[2] == 1 else PIL.Image.fromarray(image, 'RGB')
    buffer = io.BytesIO()
    pil.save(buffer, format='png', compress_level=0)
    return buffer.getvalue()

def encode_npy(array: np.ndarray) -> bytes:
    """A [C, H, W] array as `.npy` bytes, float32."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()

#----------------------------------------------------------------------------
# The forward (blurring) step of SFBD: one noise draw per image, in float64,
# stored as float32. `rng` decides the noise; callers give each image its own.

def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    x = np.asarray(image, dtype=np.float64) / 127.5 - 1
    return (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)

#----------------------------------------------------------------------------
# Writing a whole dataset atomically: files go to a temporary directory or zip
# beside the destination, which is renamed into place only when everything,
# dataset.json included, has been written. A failure (a full or read-only
# disk included) leaves no destination and no temporary.

class DatasetWriter:
    def __init__(self, dest: str, option: str = '--dest'):
        self.dest = os.path.normpath(dest)
        self.option = option
        if os.path.exists(self.dest):
            raise UserError(f'{option}={dest}: already exists; datasets are never overwritten, choose a new name or delete it')
        check_output_file(self.dest, option)
        self.is_zip = file_ext(self.dest) == '.zip'
        self.tmp: str | None = None
        self._zip: zipfile.ZipFile | None = None
        self.names: set[str] = set()
        with self._errors_named():
            parent = os.path.dirname(os.path.abspath(self.dest))
            os.makedirs(parent, exist_ok=True)
            prefix = '.' + os.path.basename(self.dest) + '.'
            if self.is_zip:
                fd, self.tmp = tempfile.mkstemp(prefix=prefix, suffix='.tmp', dir=parent)
                os.close(fd)
                self._zip = zipfile.ZipFile(self.tmp, 'w', compression=zipfile.ZIP_STORED)
            else:
                self.tmp = tempfile.mkdtemp(prefix=prefix, suffix='.tmp', dir=parent)
            # The temporary is private to its owner; the dataset gets the usual permissions.
            os.chmod(self.tmp, (0o777 if not self.is_zip else 0o666) & ~current_umask())

    @contextlib.contextmanager
    def _errors_named(self) -> Iterator[None]:
        # A full or read-only disk: remove the temporary, then one line naming the destination.
        try:
            yield
        except OSError as e:
            if not is_environment_error(e):
                raise
            self.abort()
            raise UserError(f'{self.option}={self.dest}: cannot write ({e.strerror})') from None

    def add(self, name: str, data: bytes) -> None:
        if name in self.names:
            raise ValueError(f'{name} written twice')
        self.names.add(name)
        with self._errors_named():
            if self._zip is not None:
                self._zip.writestr(name, data)
            else:
                path = os.path.join(self.tmp, *name.split('/'))
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as f:
                    f.write(data)

    def finish(self, metadata: dict) -> None:
        """Write dataset.json and close the temporary; `publish` then moves it into place."""
        self.add(METADATA_FNAME, json.dumps(metadata).encode('utf-8'))
        with self._errors_named():
            if self._zip is not None:
                self._zip.close()
                self._zip = None

    def publish(self) -> None:
        if os.path.exists(self.dest):
            self.abort()
            raise UserError(f'{self.option}={self.dest}: appeared while the dataset was being written; nothing was written')
        with self._errors_named():
            os.rename(self.tmp, self.dest)
        self.tmp = None

    def commit(self, metadata: dict) -> None:
        """Write dataset.json and move the dataset to its destination."""
        self.finish(metadata)
        self.publish()

    def abort(self) -> None:
        if self._zip is not None:
            with contextlib.suppress(OSError):
                self._zip.close()
            self._zip = None
        if self.tmp is not None and os.path.isdir(self.tmp):
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp is not None and os.path.exists(self.tmp):
            with contextlib.suppress(OSError):
                os.remove(self.tmp)
        self.tmp = None

def commit_together(writers: Sequence[DatasetWriter], metadata: Sequence[dict]) -> None:
    """Commit several datasets all or none: every one is finished before any is moved into place,
    and one that cannot be moved takes the others back."""
    for writer, meta in zip(writers, metadata):
        writer.finish(meta)
    published: list[DatasetWriter] = []
    try:
        for writer in writers:
            tmp = writer.tmp
            writer.publish()
            writer.tmp = tmp  # Where to put it back, should a later one fail.
            published.append(writer)
    except BaseException:
        for writer in published:
            with contextlib.suppress(OSError):
                os.rename(writer.dest, writer.tmp)
        for writer in writers:
            writer.abort()
        raise
    for writer in writers:
        writer.tmp = None

@contextlib.contextmanager
def write_datasets(*dests: tuple[str, str], inputs: Sequence[tuple[str, str]] = ()) -> Iterator[list[DatasetWriter]]:
    """Writers for several datasets given as (path, option name); all are removed if any write fails.
    The body calls `commit` on a single writer, or `commit_together` on several, when the content is
    complete. Nothing is written when a destination is, holds or lies in another or in an input."""
    check_apart(dests, inputs)
    writers: list[DatasetWriter] = []
    try:
        for dest, option in dests:
            writers.append(DatasetWriter(dest, option))
        yield writers
    except BaseException:
        for writer in writers:
            writer.abort()
        raise

#----------------------------------------------------------------------------
# Image files of a dataset, in the order training.dataset reads them, and the
# raw label of each (as written in dataset.json: a class index or a list).

def read_listing(path: str) -> tuple[list[str], dict]:
    """The image files of the dataset at `path` and its parsed dataset.json ({} when it has none)."""
    files = DatasetFiles(path)
    try:
        return [fname for fname in files.names if is_dataset_file(fname)], load_metadata(files)
    finally:
        files.close()

# What a set is, cheaply: its dataset.json (noise levels, labels, the split's
# seed, sources and id) and the name and size of every file, not their pixels.
# A set that `split` made again at the same path differs (a new id), whatever
# its seed.
def listing_digest(path: str) -> str:
    files = DatasetFiles(path)
    try:
        digest = hashlib.sha256()
        for name in sorted(files.names):
            digest.update(f'{name}\0{files.size(name)}\n'.encode('utf-8'))
        if METADATA_FNAME in files.names:
            digest.update(files.read(METADATA_FNAME))
    finally:
        files.close()
    return digest.hexdigest()

def raw_labels(path: str, fnames: list[str], metadata: dict) -> list[Any] | None:
    """Label entries of dataset.json in the order of `fnames`, or None when the dataset has none."""
    entries = metadata.get('labels')
    if entries is None:
        return None
    where = os.path.join(path, METADATA_FNAME)
    parse_labels(entries, fnames, where)  # Checked as training reads them: what is written can be trained on.
    return labels_in_order(entries, fnames, where)

#----------------------------------------------------------------------------
# Provenance written by `dataset_tool.py split` under "split" in each part's
# dataset.json: the source dataset, the seed of the choice of clean images,
# which part this is, for every file of the part the name of the source image
# it came from, as [name, source name] pairs like EDM's labels, and whether the
# noise is secret or came from --noise-seed (the noise seed itself is never
# written), and a random id shared by the two parts of one split. Names only:
# nothing of the source images is in the part. Readers that do not know the
# key ignore it.

def split_record(source: str, seed: int, part: str, names: list[list[str]], noise: str, split_id: str) -> dict:
    return dict(source=source, seed=seed, part=part, source_names=names, noise=noise, id=split_id)

#----------------------------------------------------------------------------
# Reading an observation set: a dataset of .npy arrays whose dataset.json
# records a positive sigma, for all or per image. Arrays are checked as they
# are read (float, [C,H,W] like the first, finite) by training.dataset.

# Each observation's denoised image is written under its name with `.png`; two
# names that would give one output (`a.npy` and `a.NPY`, or names that differ
# only in case, one file on macOS and Windows) are refused before any work.
def check_output_names(path: str, option: str, fnames: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for fname in fnames:
        key = with_ext(fname, '.png').casefold()
        if key in seen:
            raise UserError(f'{option}={path}: {seen[key]} and {fname} would both be denoised to '
                            f'{with_ext(fname, ".png")}; rename one of them')
        seen[key] = fname

class ObservationSet:
    def __init__(self, path: str, option: str = '--data', cache: bool = False):
        self.path = path
        self.fnames, metadata = read_listing(path)
        check_output_names(path, option, self.fnames)
        self.dataset = ImageFolderDataset(path, use_labels=(metadata.get('labels') is not None), cache=cache)
        if len(self.fnames) != len(self.dataset):
            raise RuntimeError(f'{path}: listed {len(self.fnames)} files, the dataset holds {len(self.dataset)}')
        if not self.dataset.is_float:
            raise UserError(f'{option}={path}: holds 8-bit images, not observations; an observation set holds '
                            f'float32 {NPY_EXT} arrays (see docs/observations.md)')
        sigmas = self.dataset.sigmas
        if sigmas is None:
            raise UserError(f'{option}={path}: {METADATA_FNAME} records no "sigma", so this is not an observation set '
                            '(see docs/observations.md)')
        bad = np.flatnonzero(~(np.isfinite(sigmas) & (sigmas > 0)))
        if len(bad):
            name = '' if self.dataset.sigma is not None else f' of {self.fnames[bad[0]]}'
            raise UserError(f'{option}={path}: "sigma"{name} in {METADATA_FNAME} must be positive, got {sigmas[bad[0]]:g}')
        self.sigmas = sigmas                # Noise level of each observation, float64 [N].
        self.sigma = self.dataset.sigma     # The one level of all observations; None when they differ.
        self.labels = raw_labels(path, self.fnames, metadata)
        self.split = metadata.get('split') if isinstance(metadata.get('split'), dict) else None

    def __len__(self) -> int:
        return len(self.fnames)

    @property
    def sigma_range(self) -> tuple[float, float]:
        return float(self.sigmas.min()), float(self.sigmas.max())

    @property
    def image_shape(self) -> list[int]:
        return self.dataset.image_shape

    @property
    def label_dim(self) -> int:
        return self.dataset.label_dim

    def source_names(self, indices: list[int]) -> list[str]:
        """Names of the source images of observations `indices`, as `split` recorded them."""
        pairs = (self.split or {}).get('source_names')
        if not isinstance(pairs, list):
            raise UserError(f'--data={self.path}: {METADATA_FNAME} records no source images ("split"); only sets made '
                            'by dataset_tool.py split (of this version) name their originals')
        by_name = {str(pair[0]): str(pair[1]) for pair in pairs if isinstance(pair, list) and len(pair) == 2}
        missing = [self.fnames[i] for i in indices if self.fnames[i] not in by_name]
        if missing:
            raise UserError(f'--data={self.path}: {METADATA_FNAME} records no source image for {missing[0]}')
        return [by_name[self.fnames[i]] for i in indices]

    def load(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Observations [B, C, H, W] float32 and their label vectors [B, label_dim] (None without labels)."""
        items = [self.dataset[i] for i in indices]
        y = torch.from_numpy(np.stack([image for image, _label in items]))
        labels = torch.from_numpy(np.stack([label for _image, label in items])) if self.dataset.has_labels else None
        return y, labels

    def close(self) -> None:
        self.dataset.close()

#----------------------------------------------------------------------------
