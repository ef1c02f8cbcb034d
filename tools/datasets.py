"""The library of dataset_tool.py's EDM commands (the command line is dataset_tool.py): image sources
(folders, zips, CIFAR-10's tarball, MNIST's idx files), `convert_dataset` (into EDM's layout, written
atomically) and `describe_dataset` (`info`). SFBD's `split` and `merge` are sfbd/dataset_commands.py's.
"""

from __future__ import annotations

import gzip
import os
import pickle
import tarfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import PIL.Image
from tqdm import tqdm

from dnnlib.outputs import OutputFile, ToolOutputs
from dnnlib.util import UserError
from sfbd.observations import dataset_fname, encode_png, write_datasets
from training.dataset import (METADATA_FNAME, NPY_EXT, DatasetFiles, ImageFolderDataset, file_ext,
    image_extensions, labels_in_order, load_metadata, parse_labels, read_image)

#----------------------------------------------------------------------------
# An image source is a count and an iterator of dicts: `img` ([H, W, C] uint8),
# `label` (int, list of numbers or None) and `name` (where the image came
# from, for messages). The iterator stops after `max_images`.

ImageSource = tuple[int, Iterator[dict]]

def _limited(count: int, max_images: int | None) -> int:
    return count if max_images is None else min(count, max_images)

#----------------------------------------------------------------------------
# CIFAR-10 python tarball: the training batches data_batch_1 .. data_batch_5,
# each a pickled dict with `data` (uint8 [n, 3072], channel-major 32x32) and
# `labels`. The pickles may only build numpy arrays, nothing else.

class _ArrayUnpickler(pickle.Unpickler):
    _allowed = {
        ('numpy', 'ndarray'), ('numpy', 'dtype'),
        ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
        ('numpy.core.multiarray', 'scalar'), ('numpy._core.multiarray', 'scalar'),
        ('_codecs', 'encode'), # Python 3 writes bytes this way in protocol 2.
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._allowed:
            raise pickle.UnpicklingError(f'refusing to load {module}.{name}')
        return super().find_class(module, name)

CIFAR10_CLASSES = 10

def open_cifar10(tarball: str, *, max_images: int | None) -> ImageSource:
    images, labels = [], []
    try:
        with tarfile.open(tarball, 'r:gz') as tar:
            for batch in range(1, 6):
                member = f'cifar-10-batches-py/data_batch_{batch}'
                try:
                    f = tar.extractfile(member)
                except KeyError:
                    raise UserError(f'{tarball}: no {member} inside; expected the CIFAR-10 python tarball') from None
                with f:
                    data = _ArrayUnpickler(f, encoding='latin1').load()
                batch_images = np.asarray(data['data'])
                if batch_images.dtype != np.uint8 or batch_images.ndim != 2 or batch_images.shape[1] != 3 * 32 * 32:
                    raise UserError(f'{tarball}: {member} holds {batch_images.dtype} {list(batch_images.shape)}, expected uint8 [N, 3072]')
                batch_labels = np.asarray(data['labels'])
                if len(batch_labels) != len(batch_images):
                    raise UserError(f'{tarball}: {member} has {len(batch_images)} images but {len(batch_labels)} labels')
                if batch_labels.ndim != 1 or batch_labels.dtype.kind not in 'iu' or \
                        (len(batch_labels) and not 0 <= batch_labels.min() <= batch_labels.max() < CIFAR10_CLASSES):
                    raise UserError(f'{tarball}: {member} holds labels that are not CIFAR-10 classes '
                                    f'(integers 0-{CIFAR10_CLASSES - 1})')
                images.append(batch_images.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)) # NCHW => NHWC
                labels.extend(int(x) for x in batch_labels)
    except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError) as e:
        raise UserError(f'{tarball}: cannot read the CIFAR-10 tarball ({type(e).__name__}: {e})') from None
    images = np.concatenate(images)
    count = _limited(len(images), max_images)

    def iterate() -> Iterator[dict]:
        for idx in range(count):
            yield dict(img=images[idx], label=labels[idx], name=f'{tarball} image {idx}')
    return count, iterate()

#----------------------------------------------------------------------------
# MNIST: train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz beside it.
# The 28x28 digits are padded with black to 32x32, as in EDM.

def _read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
    try:
        with gzip.open(path, 'rb') as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise UserError(f'{path}: cannot read ({e})') from None
    header = 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], 'big') != magic:
        raise UserError(f'{path}: not an IDX file of the expected kind (magic number {magic})')
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], 'big') for i in range(ndim)]
    if len(data) - header != int(np.prod(shape)):
        raise UserError(f'{path}: holds {len(data) - header} bytes of data, the header says {shape}')
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)

def open_mnist(images_gz: str, *, max_images: int | None) -> ImageSource:
    labels_gz = os.path.join(os.path.dirname(images_gz), 'train-labels-idx1-ubyte.gz')
    if not os.path.isfile(labels_gz):
        raise UserError(f'{labels_gz}: no such file (MNIST labels belong beside {os.path.basename(images_gz)})')
    images = _read_idx(images_gz, magic=0x803, ndim=3)
    labels = _read_idx(labels_gz, magic=0x801, ndim=1)
    if len(labels) != len(images):
        raise UserError(f'{labels_gz}: has {len(labels)} labels for {len(images)} images')
    images = np.pad(images, [(0, 0), (2, 2), (2, 2)])[..., np.newaxis]
    count = _limited(len(images), max_images)

    def iterate() -> Iterator[dict]:
        for idx in range(count):
            yield dict(img=images[idx], label=int(labels[idx]), name=f'{images_gz} image {idx}')
    return count, iterate()

#----------------------------------------------------------------------------
# A directory or zip of image files, in the order of their relative paths.
# Labels come from dataset.json; without that file, from the names of the
# top-level folders when there are several (one class per folder), unless
# they are all numbers: EDM's layout (00000/, 00001/) and generate.py
# --subdirs (000000/, 001000/) number chunks of images, not classes. When
# everything lies in one folder (`zip -r photos.zip photos/` makes that),
# that folder is the top: its dataset.json or class folders count.

def _single_top_folder(names: Sequence[str]) -> str:
    tops = {name.split('/')[0] if '/' in name else None for name in names}
    return f'{tops.pop()}/' if len(tops) == 1 and None not in tops else ''

def open_image_files(source: str, *, max_images: int | None) -> ImageSource:
    files = DatasetFiles(source)
    extensions = image_extensions()
    if any(file_ext(name) == NPY_EXT for name in files.names):
        raise UserError(f'{source}: holds .npy arrays; convert reads image files only')
    fnames = [name for name in files.names if file_ext(name) in extensions]
    if not fnames:
        raise UserError(f'{source}: no image files found')

    top = _single_top_folder(files.names)
    relative = [name[len(top):] for name in fnames]  # The names below the top, as labels name them.
    metadata_name = top + METADATA_FNAME
    metadata = load_metadata(files, metadata_name)
    if metadata_name in files.names:
        entries, labels = metadata.get('labels'), {}
        if entries is not None:  # Every image needs a valid label, as training reads them; none dropped silently.
            parse_labels(entries, relative, files.where(metadata_name))
            labels = dict(zip(fnames, labels_in_order(entries, relative, files.where(metadata_name))))
    else:
        folders = sorted({name.split('/')[0] for name in relative if '/' in name})
        class_of = {folder: idx for idx, folder in enumerate(folders)}
        numbered = all(folder.isdigit() for folder in folders)  # EDM's and generate.py's chunks of 1000, not classes.
        labels = {name: class_of[rel.split('/')[0]] for name, rel in zip(fnames, relative) if '/' in rel} \
            if len(folders) > 1 and not numbered else {}
        loose = next((name for name, rel in zip(fnames, relative) if '/' not in rel), None)
        if labels and loose is not None:  # Its class is unknown: the folders' labels would be dropped for all.
            raise UserError(f'{files.where(loose)}: an image beside the class folders ({", ".join(folders[:3])}'
                            f'{", ..." if len(folders) > 3 else ""}); move it into one, or give a dataset.json')
    count = _limited(len(fnames), max_images)

    def iterate() -> Iterator[dict]:
        try:
            for name in fnames[:count]:
                with files.open(name) as f:
                    img = read_image(f, files.where(name))
                yield dict(img=img, label=labels.get(name), name=files.where(name))
        finally:
            files.close()
    return count, iterate()

#----------------------------------------------------------------------------
# Pick the reader from the source path, as EDM's dataset_tool does.

def open_source(source: str, *, max_images: int | None = None) -> ImageSource:
    if os.path.isdir(source):
        if os.path.isfile(os.path.join(source, 'train-images-idx3-ubyte.gz')):
            return open_mnist(os.path.join(source, 'train-images-idx3-ubyte.gz'), max_images=max_images)
        return open_image_files(source, max_images=max_images)
    if not os.path.isfile(source):
        raise UserError(f'{source}: no such file or directory')
    if os.path.basename(source) == 'train-images-idx3-ubyte.gz':
        return open_mnist(source, max_images=max_images)
    if source.lower().endswith('.tar.gz'):
        return open_cifar10(source, max_images=max_images)
    if file_ext(source) == '.zip':
        return open_image_files(source, max_images=max_images)
    raise UserError(f'{source}: unknown source; expected a directory, a .zip, cifar-10-python.tar.gz or train-images-idx3-ubyte.gz')

#----------------------------------------------------------------------------
# Crop and resize. The returned function maps [H, W, C] uint8 to [H', W', C]
# uint8, or to None for an image that center-crop-wide cannot fill.

def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    if img.shape[1] == width and img.shape[0] == height:
        return img
    pil = PIL.Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    return np.asarray(pil.resize((width, height), PIL.Image.Resampling.LANCZOS)).reshape(height, width, -1)

def make_transform(transform: str | None, width: int | None, height: int | None) -> Callable[[np.ndarray], np.ndarray | None]:
    if transform is not None and (width is None or height is None):
        raise UserError(f'--transform={transform} needs --resolution=WxH')
    if transform == 'center-crop-wide' and height > width:
        raise UserError(f'--transform=center-crop-wide needs --resolution=WxH with W >= H (it centres each image on a '
                        f'WxW canvas), got {width}x{height}')

    def scale(img: np.ndarray) -> np.ndarray:
        return img if width is None else _resize(img, width, height)

    # The crops give RGB, grayscale images included, as EDM's do.
    def rgb(img: np.ndarray) -> np.ndarray:
        return img.repeat(3, axis=2) if img.shape[2] == 1 else img

    def center_crop(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        return _resize(rgb(img[top : top + side, left : left + side]), width, height)

    def center_crop_wide(img: np.ndarray) -> np.ndarray | None:
        h, w = img.shape[:2]
        crop_h = int(np.round(width * h / w))
        if w < width or crop_h < height:
            return None
        top = (h - crop_h) // 2
        img = _resize(rgb(img[top : top + crop_h]), width, height)
        canvas = np.zeros([width, width, img.shape[2]], dtype=np.uint8)
        canvas[(width - height) // 2 : (width - height) // 2 + height] = img
        return canvas

    return {None: scale, 'center-crop': center_crop, 'center-crop-wide': center_crop_wide}[transform]

#----------------------------------------------------------------------------
# Conversion proper: every image must come out square, power-of-two sized and
# RGB or grayscale, all alike. Returns the number of images written.

def convert_dataset(source: str, dest: str, max_images: int | None = None, transform: str | None = None,
        resolution: tuple[int, int] | None = None) -> int:
    transform_image = make_transform(transform, *(resolution or (None, None)))
    ToolOutputs('dataset_tool.py convert', [OutputFile(dest, '--dest')], [(source, '--source')]).check_apart()
    count, items = open_source(source, max_images=max_images)
    labels = []
    first = None # (name, height, width, channels) of the first image written.
    with write_datasets((dest, '--dest'), inputs=[(source, '--source')]) as (writer,):
        for item in tqdm(items, total=count, unit='img', desc='Converting'):
            img = transform_image(item['img'])
            if img is None:
                continue
            h, w, c = img.shape
            if first is None:
                if h != w:
                    raise UserError(f'{item["name"]}: becomes {w}x{h}; images must be square (see --transform and --resolution)')
                if c not in (1, 3):
                    raise UserError(f'{item["name"]}: has {c} channels; images must be RGB or grayscale')
                if w & (w - 1) != 0:
                    raise UserError(f'{item["name"]}: becomes {w}x{h}; the size must be a power of two (see --resolution)')
                first = (item['name'], h, w, c)
            elif (h, w) != first[1:3]:
                raise UserError(f'{item["name"]}: becomes {w}x{h}, but {first[0]} became {first[2]}x{first[1]}; all '
                                'images must be alike (see --resolution)')
            elif c != first[3]:
                kinds = {1: 'grayscale', 3: 'RGB'}
                raise UserError(f'{item["name"]}: is {kinds[c]}, but {first[0]} is {kinds[first[3]]}; all images must be '
                                'alike (--transform=center-crop makes every image RGB)')
            fname = dataset_fname(len(labels), '.png')
            writer.add(fname, encode_png(img.transpose(2, 0, 1)))
            labels.append([fname, item['label']])
        if not labels:
            skipped = ' (center-crop-wide skips images narrower than W or too short to fill H)' \
                if transform == 'center-crop-wide' else ''
            raise UserError(f'{source}: no images to write{skipped}')
        writer.commit(dict(labels=labels if all(label is not None for _, label in labels) else None))
    return len(labels)

#----------------------------------------------------------------------------
# Summary of a dataset, read through the training code: every image is
# decoded once, so a dataset that passes will also load in training.

def describe_dataset(source: str) -> dict:
    files = DatasetFiles(source)
    try:
        has_labels = load_metadata(files).get('labels') is not None
    finally:
        files.close()
    dataset = ImageFolderDataset(path=source, use_labels=has_labels)
    try:
        lo, hi = np.inf, -np.inf
        for idx in tqdm(range(len(dataset)), unit='img', desc='Reading', leave=False):
            image, _label = dataset[idx]
            lo, hi = min(lo, image.min()), max(hi, image.max())
    finally:
        dataset.close()
    if not dataset.has_labels:
        labels = 'none'
    elif dataset.has_onehot_labels:
        labels = f'{dataset.label_dim} classes'
    else:
        labels = f'vectors of {dataset.label_dim}'
    return dict(
        path=source,
        images=len(dataset),
        resolution=dataset.resolution,
        channels=dataset.num_channels,
        labels=labels,
        type='float32 (.npy)' if dataset.is_float else 'uint8 (image files)',
        min=float(lo),
        max=float(hi),
        sigma=dataset.sigma,
        sigma_min=None if dataset.sigmas is None else float(dataset.sigmas.min()),
        sigma_max=None if dataset.sigmas is None else float(dataset.sigmas.max()),
    )

