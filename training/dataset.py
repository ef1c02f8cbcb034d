"""Training data in EDM's dataset layout.

A dataset is a directory or a zip holding image files (any depth, read in the order of their
relative paths) and an optional `dataset.json` with labels. Besides 8-bit images (PNG, JPEG, ...)
a dataset may hold float arrays saved as `.npy` files of shape [C, H, W], already in the
network's [-1, 1] units: noisy observations y = x/127.5 - 1 + sigma*e, or denoised outputs kept
at full precision. `dataset.json` may then record the noise level under `"sigma"`: one number,
or a mapping from file name to number when each observation has its own.

Every item is `(image, label)`: the image a [C, H, W] numpy array, uint8 for image files and
float32 for `.npy` files; the label a float32 vector (one-hot for integer class labels).
`images_to_float()` turns a batch of either kind into float32 in [-1, 1] units.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import io
import json
import math
import os
import posixpath
import zipfile
from typing import IO, Any, Sequence

import numpy as np
import PIL.Image
import torch

import dnnlib
from dnnlib.outputs import png_header
from dnnlib.util import UserError, construct_class_by_name

try:
    import pyspng
except ImportError:
    pyspng = None

#----------------------------------------------------------------------------
# File kinds. Raster images go through PIL; `.npy` files hold float arrays.

NPY_EXT = '.npy'
METADATA_FNAME = 'dataset.json'

def file_ext(fname: str) -> str:
    return os.path.splitext(fname)[1].lower()

@functools.cache
def image_extensions() -> frozenset[str]:
    """Extensions of the raster formats PIL can read, lower case with the dot."""
    PIL.Image.init()
    return frozenset(PIL.Image.EXTENSION)

def is_dataset_file(fname: str) -> bool:
    """Is `fname` an image of a dataset (a raster image or a `.npy` array)?"""
    ext = file_ext(fname)
    return ext == NPY_EXT or ext in image_extensions()

#----------------------------------------------------------------------------
# Read access to the files of a directory or a zip. Names are relative paths
# with forward slashes, sorted. Hidden files and folders (a name starting with a
# dot: `.DS_Store`, macOS's `._a.png`, `.ipynb_checkpoints/`, this repository's
# temporaries) and `__MACOSX/` are not part of a dataset. Links to folders are
# followed, each folder once. A zip member's name must stay inside the dataset
# (no absolute path, no `..`) and be unique, since every name leads to a file
# read or written. The zip handle is opened on first use and left out of
# pickles, so that every data-loader worker opens its own.

def is_hidden(name: str) -> bool:
    """Is a relative path hidden: one of its parts starts with a dot, or is __MACOSX?"""
    return any(part.startswith('.') or part == '__MACOSX' for part in name.split('/') if part not in ('', '.'))

def _walk_files(path: str) -> list[str]:
    names = []
    seen = {os.path.realpath(path)}
    for root, dirs, files in os.walk(path, followlinks=True):
        kept = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if not is_hidden(d) and real not in seen:
                seen.add(real)
                kept.append(d)
        dirs[:] = kept
        names += [os.path.relpath(os.path.join(root, fname), path).replace(os.sep, '/')
                  for fname in files if not is_hidden(fname)]
    return names

def _check_member_names(path: str, names: list[str]) -> None:
    for name in names:
        parts = name.split('/')
        if name.startswith('/') or '\\' in name or '..' in parts or (len(parts[0]) == 2 and parts[0][1] == ':'):
            raise UserError(f'{path}: the member {name!r} points outside the archive (an absolute path, a drive, a '
                            f'backslash or ".."); a dataset zip holds relative paths only')
    seen = set()
    for name in names:
        key = posixpath.normpath(name)  # `./a.png` and `a//b.png` name `a.png` and `a/b.png` again.
        if key in seen:
            raise UserError(f'{path}: the member {name!r} is in the zip more than once')
        seen.add(key)

class DatasetFiles:
    def __init__(self, path: str):
        self.path = path
        self._zipfile = None
        self._zip_pid = os.getpid()
        if os.path.isdir(path):
            self.kind = 'dir'
            names = _walk_files(path)
        elif os.path.isfile(path) and file_ext(path) == '.zip':
            self.kind = 'zip'
            names = [name for name in self._get_zipfile().namelist() if not name.endswith('/')]
            _check_member_names(path, names)
            names = [name for name in names if not is_hidden(name)]
        elif os.path.exists(path):
            raise UserError(f'{path}: a dataset must be a directory or a .zip file')
        else:
            raise UserError(f'{path}: no such directory or zip file')
        self.names = sorted(names)

    def _get_zipfile(self) -> zipfile.ZipFile:
        # A handle inherited through fork() shares its file offset with the parent: reopen.
        if self._zipfile is not None and self._zip_pid != os.getpid():
            self._zipfile = None
        if self._zipfile is None:
            try:
                self._zip_pid = os.getpid()
                self._zipfile = zipfile.ZipFile(self.path)
            except (zipfile.BadZipFile, OSError) as e:
                raise UserError(f'{self.path}: cannot read the zip file ({e})') from None
        return self._zipfile

    def where(self, name: str) -> str:
        """Name of a member for messages: the dataset path joined with the member name."""
        return os.path.join(self.path, name)

    # A member that cannot be opened (a dangling link, a loop of links, no
    # permission; an encrypted zip member or one of an unknown compression
    # method) is a UserError that names it.
    def open(self, name: str) -> IO[bytes]:
        try:
            if self.kind == 'dir':
                return open(os.path.join(self.path, name), 'rb')
            return self._get_zipfile().open(name, 'r')
        except UserError:
            raise
        except (OSError, RuntimeError, NotImplementedError, zipfile.BadZipFile) as e:
            reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise UserError(f'{self.where(name)}: cannot read ({reason})') from None

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            return f.read()

    def size(self, name: str) -> int:
        """Size of a member in bytes, from the directory entry or the zip's central directory."""
        if self.kind == 'dir':
            return os.path.getsize(os.path.join(self.path, name))
        return self._get_zipfile().getinfo(name).file_size

    def close(self) -> None:
        if self._zipfile is not None:
            self._zipfile.close()
            self._zipfile = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _zipfile=None)

#----------------------------------------------------------------------------
# Decoding single files. Every failure is a UserError that names the file.
# Images come back as [H, W, C] uint8, grayscale or RGB, as EDM's dataset tool
# requires; palette, bilevel, CMYK and YCbCr images are converted to RGB or L.
# Other pixel formats are refused, whichever decoder would read them: an alpha
# channel (LA, RGBA: no tool can write or score such a network's images),
# 16-bit PNGs (PIL would cut RGB ones to 8 bits and refuse grayscale ones) and
# float images. pyspng, where installed, decodes what has a PNG signature.

_MODE_CHANNELS = {'L': 1, 'RGB': 3}
_MODE_CONVERSIONS = {'1': 'L', 'P': 'RGB', 'CMYK': 'RGB', 'YCbCr': 'RGB'}
FORMAT_HINT = 'datasets hold 8-bit grayscale or RGB images'

def _target_mode(mode: str, where: str) -> str:
    target = _MODE_CONVERSIONS.get(mode, mode)
    if target in ('LA', 'RGBA', 'PA'):
        raise UserError(f'{where}: the image has an alpha channel (mode {mode!r}); {FORMAT_HINT}')
    if target not in _MODE_CHANNELS:
        raise UserError(f'{where}: unsupported pixel format {mode!r}; {FORMAT_HINT}')
    return target

_PNG_COLOR_CHANNELS = {0: 1, 2: 3, 3: 3} # PNG color type => channels after decoding (palette => RGB).

def _check_png_depth(header: tuple[int, int, int, int] | None, where: str) -> None:
    if header is not None and header[2] == 16:
        raise UserError(f'{where}: a 16-bit PNG; {FORMAT_HINT}')

def _pil_message(e: Exception) -> str:
    if isinstance(e, PIL.UnidentifiedImageError):
        return 'not an image format that PIL can read'
    return str(e)

def probe_image(f: IO[bytes], where: str) -> tuple[int, int, int]:
    """Read only the header of an image file: (channels, height, width)."""
    # 8-bit PNG: the IHDR chunk right after the signature says it all, at a third of PIL's cost.
    try:
        head = f.read(26)  # Of a small zip member, this reads it all and checks its CRC.
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f'{where}: not a readable image ({e})') from None
    header = png_header(head)
    _check_png_depth(header, where)
    if header is not None and header[2] == 8 and header[3] in _PNG_COLOR_CHANNELS:
        width, height, _depth, color = header
        return _PNG_COLOR_CHANNELS[color], height, width
    f.seek(0)
    try:
        with PIL.Image.open(f) as img:
            mode, (width, height) = img.mode, img.size
    except Exception as e: # PIL raises many kinds of errors for broken files.
        raise UserError(f'{where}: not a readable image ({_pil_message(e)})') from None
    return _MODE_CHANNELS[_target_mode(mode, where)], height, width

def read_image(f: IO[bytes], where: str, use_pyspng: bool = False) -> np.ndarray:
    """Decode an image file to a [H, W, C] uint8 array."""
    try:
        data = f.read()
        header = png_header(data[:26])
        _check_png_depth(header, where)
        if use_pyspng and pyspng is not None and header is not None:
            image = pyspng.load(data)
            if image.ndim == 3 and image.shape[2] in (2, 4):
                raise UserError(f'{where}: the image has an alpha channel; {FORMAT_HINT}')
        else:
            with PIL.Image.open(io.BytesIO(data)) as img:
                target = _target_mode(img.mode, where)
                image = np.array(img if img.mode == target else img.convert(target))
    except UserError:
        raise
    except Exception as e: # Truncated or corrupt data.
        raise UserError(f'{where}: cannot decode the image ({_pil_message(e)})') from None
    if image.dtype != np.uint8:
        raise UserError(f'{where}: unsupported pixel format {image.dtype}; {FORMAT_HINT}')
    return image.reshape(image.shape[0], image.shape[1], -1)

def probe_npy(f: IO[bytes], where: str) -> tuple[int, int, int]:
    """Read only the header of a `.npy` file: (channels, height, width)."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    except Exception as e:
        raise UserError(f'{where}: not a readable .npy file ({e})') from None
    _check_npy_layout(shape, dtype, where)
    return tuple(int(x) for x in shape)

def _check_npy_layout(shape: tuple, dtype: np.dtype, where: str) -> None:
    if not np.issubdtype(dtype, np.floating):
        raise UserError(f'{where}: array has dtype {dtype}, expected float32 (or another float type)')
    if len(shape) != 3:
        raise UserError(f'{where}: array has shape {list(shape)}, expected [C, H, W]')

def read_npy(f: IO[bytes], where: str) -> np.ndarray:
    """Load a `.npy` file holding a finite float [C, H, W] array, returned as float32."""
    try:
        array = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except Exception as e:
        raise UserError(f'{where}: not a readable .npy file ({e})') from None
    _check_npy_layout(array.shape, array.dtype, where)
    if not np.all(np.isfinite(array)):
        raise UserError(f'{where}: array holds NaN or infinite values')
    return array.astype(np.float32, copy=False)

#----------------------------------------------------------------------------
# dataset.json: an object with optional "labels" (a list of [file name, label]
# pairs, or null) and optional "sigma" (the noise level of the observations:
# a number, a {file name: number} mapping, or null).

# A JSON number as a finite float, else None (JSON integers may exceed any float).
def _finite(value: Any) -> float | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None

def _is_level(value: Any) -> bool:
    level = _finite(value)
    return level is not None and level >= 0

def load_metadata(files: DatasetFiles, name: str = METADATA_FNAME) -> dict:
    """The checked contents of `dataset.json` (or of the member `name`), or {} when there is none."""
    if name not in files.names:
        return {}
    where = files.where(name)
    try:
        metadata = json.loads(files.read(name))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise UserError(f'{where}: not valid JSON ({e})') from None
    if not isinstance(metadata, dict):
        raise UserError(f'{where}: expected a JSON object')
    sigma = metadata.get('sigma')
    if isinstance(sigma, dict):
        bad = next((name for name, value in sigma.items() if not _is_level(value)), None)
        if bad is not None:
            raise UserError(f'{where}: "sigma" of {bad} must be a finite non-negative number, got {sigma[bad]!r}')
    elif sigma is not None and not _is_level(sigma):
        raise UserError(f'{where}: "sigma" must be a finite non-negative number, a mapping from file names to numbers, '
                        f'or null, got {sigma!r}')
    labels = metadata.get('labels')
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, list) and len(x) == 2 for x in labels)):
        raise UserError(f'{where}: "labels" must be a list of [file name, label] pairs or null')
    return metadata

def sigmas_in_order(mapping: dict, fnames: Sequence[str], where: str) -> np.ndarray:
    """Per-image noise levels of a "sigma" mapping (from `where`) in the order of `fnames`, float64 [N].
    Every file needs a level, and every level a file."""
    by_name = {str(name).replace('\\', '/'): float(value) for name, value in mapping.items()}
    missing = [fname for fname in fnames if fname not in by_name]
    if missing:
        raise UserError(f'{where}: "sigma" gives no noise level for {missing[0]} ({len(missing)} images have none)')
    if len(by_name) > len(fnames):
        extra = sorted(set(by_name) - set(fnames))
        raise UserError(f'{where}: "sigma" names {extra[0]}, which is not in the dataset ({len(extra)} such names)')
    return np.array([by_name[fname] for fname in fnames], dtype=np.float64)

def labels_in_order(entries: list, fnames: Sequence[str], where: str) -> list:
    """The labels of `entries` ([file name, label] pairs from `where`) in the order of `fnames`; each file must have one."""
    by_name: dict[str, Any] = {}
    for name, label in entries:
        key = str(name).replace('\\', '/')
        if key in by_name:
            raise UserError(f'{where}: "labels" names {key} more than once')
        by_name[key] = label
    missing = [fname for fname in fnames if fname not in by_name]
    if missing:
        raise UserError(f'{where}: no label for {missing[0]} ({len(missing)} images have none)')
    return [by_name[fname] for fname in fnames]

# Turn the label entries into an array in image order: int64 [N] for class
# indices (one-hot later), float32 [N, D] for vectors. Class indices are
# bounded so that a stray huge number cannot ask for a one-hot of that width.

MAX_CLASSES = 1 << 16
def parse_labels(entries: list, fnames: Sequence[str], where: str) -> np.ndarray:
    labels = labels_in_order(entries, fnames, where)

    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)
    if all(is_number(x) for x in labels):
        if not all(_finite(x) is not None and float(x).is_integer() and x >= 0 for x in labels):
            raise UserError(f'{where}: class labels must be non-negative integers')
        if max(labels) >= MAX_CLASSES:
            raise UserError(f'{where}: class label {int(max(labels))} is out of range; labels are class indices below {MAX_CLASSES}')
        return np.asarray(labels, dtype=np.int64)
    if all(isinstance(x, list) and all(is_number(v) for v in x) for x in labels):
        if len({len(x) for x in labels}) != 1:
            raise UserError(f'{where}: label vectors differ in length')
        if not labels[0]:  # Width 0 would condition on nothing: --cond would train an unconditional network.
            raise UserError(f'{where}: label vectors are empty')
        largest = float(np.finfo(np.float32).max)
        if not all(_finite(v) is not None and abs(float(v)) <= largest for x in labels for v in x):
            raise UserError(f'{where}: label vectors hold NaN or infinite values, or values beyond float32\'s range')
        return np.asarray(labels, dtype=np.float32).reshape(len(labels), -1)
    raise UserError(f'{where}: each label must be an integer class or a list of numbers, all of one kind')

#----------------------------------------------------------------------------
# Base class: indexing, the max_size subset, x-flipped copies, caching and
# labels. Subclasses load raw images by raw index and may provide labels.

class Dataset(torch.utils.data.Dataset, abc.ABC):
    _is_float = False   # Subclasses holding float images set this to True.
    _sigma = None       # Noise level of the observations, when the dataset records one for all.
    _sigmas = None      # Per-image noise levels [raw N], when the dataset records a mapping.

    def __init__(self,
        name:           str,                # Name of the dataset.
        raw_shape:      Sequence[int],      # Shape of the raw image data, [N, C, H, W].
        max_size:       int | None = None,  # Keep at most this many images, a seeded random subset. None = all. Applied before xflip.
        use_labels:     bool = False,       # Read conditioning labels? False = label dimension is zero.
        xflip:          bool = False,       # Double the dataset with x-flipped copies. Applied after max_size.
        random_seed:    int = 0,            # Seed for choosing the max_size subset.
        cache:          bool = False,       # Keep decoded images in CPU memory?
    ):
        self._name = name
        self._raw_shape = [int(x) for x in raw_shape]
        self._use_labels = bool(use_labels)
        self._cache = bool(cache)
        self._cached_images = dict() # {raw_idx: np.ndarray}
        if self._raw_shape[0] == 0:
            raise UserError(f'{self._location()}: the dataset is empty')
        if max_size is not None and max_size < 1:
            raise UserError(f'{self._location()}: max_size must be at least 1, got {max_size}')

        # Subset: shuffle all raw indices with the seed, keep the first max_size, restore their order.
        self._raw_idx = np.arange(self._raw_shape[0], dtype=np.int64)
        if max_size is not None and max_size < self._raw_idx.size:
            np.random.RandomState(random_seed % (1 << 31)).shuffle(self._raw_idx)
            self._raw_idx = np.sort(self._raw_idx[:max_size])

        # Flipped copies follow the originals.
        self._xflip = np.zeros(self._raw_idx.size, dtype=np.uint8)
        if xflip:
            self._raw_idx = np.tile(self._raw_idx, 2)
            self._xflip = np.concatenate([self._xflip, np.ones_like(self._xflip)])

        # Labels are read once, here, so that a dataset without them fails early.
        if self._use_labels:
            labels = self._load_raw_labels()
            if labels is None:
                raise UserError(f'{self._location()}: labels were requested, but the dataset has none (no "labels" in {METADATA_FNAME})')
        else:
            labels = np.zeros([self._raw_shape[0], 0], dtype=np.float32)
        self._raw_labels = labels
        self._label_shape = [int(labels.max()) + 1] if labels.dtype == np.int64 else list(labels.shape[1:])

    @abc.abstractmethod
    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        """Decode raw image `raw_idx` as a [C, H, W] uint8 or float32 array."""

    def _load_raw_labels(self) -> np.ndarray | None:
        """Raw labels in raw-image order (int64 [N] or float32 [N, D]), or None when there are none."""
        return None

    def _location(self) -> str:
        """Where the dataset lives, for messages."""
        return self._name

    def _raw_name(self, raw_idx: int) -> str:
        """Where raw image `raw_idx` lives, for messages."""
        return f'{self._location()}[{raw_idx}]'

    def close(self) -> None:
        pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __len__(self) -> int:
        return self._raw_idx.size

    # The image of item `idx`, flipped when it is a flipped copy.
    def _get_image(self, idx: int) -> np.ndarray:
        raw_idx = int(self._raw_idx[idx])
        image = self._cached_images.get(raw_idx)
        if image is None:
            image = self._load_raw_image(raw_idx)
            expected_dtype = np.float32 if self._is_float else np.uint8
            if list(image.shape) != self.image_shape or image.dtype != expected_dtype:
                raise UserError(f'{self._raw_name(raw_idx)}: image is {image.dtype} {list(image.shape)}, '
                    f'expected {np.dtype(expected_dtype)} {self.image_shape} like the rest of the dataset')
            if self._cache:
                self._cached_images[raw_idx] = image
        if self._xflip[idx]:
            image = image[:, :, ::-1]
        return image.copy()

    def __getitem__(self, idx: int) -> tuple[np.ndarray, np.ndarray]:
        return self._get_image(idx), self.get_label(idx)

    def get_label(self, idx: int) -> np.ndarray:
        label = self._raw_labels[self._raw_idx[idx]]
        if label.dtype == np.int64:
            onehot = np.zeros(self.label_shape, dtype=np.float32)
            onehot[label] = 1
            return onehot
        return label.copy()

    def get_details(self, idx: int) -> dnnlib.EasyDict:
        d = dnnlib.EasyDict()
        d.raw_idx = int(self._raw_idx[idx])
        d.xflip = bool(self._xflip[idx])
        d.raw_label = self._raw_labels[d.raw_idx].copy()
        return d

    def fingerprint(self) -> list[dict]:
        """What the data is, cheaply: per dataset its name, file count, bytes and the digest of its
        dataset.json. Training states record it, so that a run is not continued on other data by
        mistake. Empty when unknown."""
        return []

    @property
    def name(self) -> str:
        return self._name

    @property
    def image_shape(self) -> list[int]: # [C, H, W]
        return list(self._raw_shape[1:])

    @property
    def num_channels(self) -> int:
        return self.image_shape[0]

    @property
    def resolution(self) -> int:
        _c, h, w = self.image_shape
        if h != w:
            raise ValueError(f'{self._location()}: images are not square ({w}x{h})')
        return h

    @property
    def label_shape(self) -> list[int]:
        return list(self._label_shape)

    @property
    def label_dim(self) -> int:
        return self._label_shape[0]

    @property
    def has_labels(self) -> bool:
        return any(x != 0 for x in self._label_shape)

    @property
    def has_onehot_labels(self) -> bool:
        return self._raw_labels.dtype == np.int64

    @property
    def is_float(self) -> bool:
        """True when items are float32 images in [-1, 1] units (from .npy files), False for uint8 pixels."""
        return self._is_float

    @property
    def sigma(self) -> float | None:
        """Noise level of the observations, from "sigma" in dataset.json; None when not recorded or
        when it differs between images (see `sigmas`)."""
        return self._sigma

    @property
    def sigma_text(self) -> str | None:
        """The recorded noise level for messages ('0.59', 'per image, 0.2 to 0.8'); None when the
        dataset records none (or only zeros)."""
        sigmas = self.sigmas
        if sigmas is None or not np.any(sigmas > 0):
            return None
        return f'{self._sigma:g}' if self._sigma is not None else f'per image, {sigmas.min():g} to {sigmas.max():g}'

    @property
    def sigmas(self) -> np.ndarray | None:
        """Noise level of every raw image, in file order (float64 [raw N]); None when not recorded."""
        if self._sigmas is not None:
            return self._sigmas
        return None if self._sigma is None else np.full(self._raw_shape[0], self._sigma)

#----------------------------------------------------------------------------
# A directory or zip of image files, or of .npy arrays (one kind only), in the
# order of their relative paths. All headers are read up front, so that images
# of the wrong size or channel count are reported before training starts.

class ImageFolderDataset(Dataset):
    def __init__(self,
        path:           str,                # Directory or zip file.
        resolution:     int | None = None,  # Require this resolution; None = whatever the images have.
        name:           str | None = None,  # Name of the dataset; None = the file name of `path` without extension.
        use_pyspng:     bool = True,        # Decode PNG files with pyspng when it is installed?
        **super_kwargs,                     # Keywords for the Dataset base class.
    ):
        self._path = path
        self._use_pyspng = use_pyspng
        self._files = DatasetFiles(path)

        # Pick the image files; one kind per dataset.
        self._image_fnames = [fname for fname in self._files.names if is_dataset_file(fname)]
        if len(self._image_fnames) == 0:
            raise UserError(f'{path}: no image files (.png, .jpg, ... or .npy) found')
        arrays = [fname for fname in self._image_fnames if file_ext(fname) == NPY_EXT]
        if 0 < len(arrays) < len(self._image_fnames):
            raster = next(fname for fname in self._image_fnames if file_ext(fname) != NPY_EXT)
            raise UserError(f'{path}: mixes .npy arrays ({arrays[0]}) with image files ({raster}); '
                'a dataset must hold one kind only')
        self._is_float = len(arrays) > 0

        # Metadata: noise level now, labels when the base class asks for them.
        self._metadata = load_metadata(self._files)
        sigma = self._metadata.get('sigma')
        if isinstance(sigma, dict):
            self._sigmas = sigmas_in_order(sigma, self._image_fnames, self._files.where(METADATA_FNAME))
            self._sigma = float(self._sigmas[0]) if len(set(self._sigmas.tolist())) == 1 else None
        else:
            self._sigma = None if sigma is None else float(sigma)

        # Every image must have the shape of the first: square, same size, same channels.
        shapes = [self._probe(fname) for fname in self._image_fnames]
        c0, h0, w0 = shapes[0]
        first = self._files.where(self._image_fnames[0])
        for fname, (c, h, w) in zip(self._image_fnames, shapes):
            where = self._files.where(fname)
            if h != w:
                raise UserError(f'{where}: image is {w}x{h}; images must be square')
            if (h, w) != (h0, w0):
                raise UserError(f'{where}: image is {w}x{h}, but {first} is {w0}x{h0}; all images must have one size')
            if c != c0:
                raise UserError(f'{where}: image has {c} channels, but {first} has {c0}; all images must have the same channel count')
        if resolution is not None and h0 != resolution:
            raise UserError(f'{path}: images are {w0}x{h0}, expected resolution {resolution}')

        if name is None:
            name = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
        super().__init__(name=name, raw_shape=[len(self._image_fnames), c0, h0, w0], **super_kwargs)
        self._metadata = None # Labels are parsed by now; keep pickles small.

    def fingerprint(self) -> list[dict]:
        metadata = self._files.read(METADATA_FNAME) if METADATA_FNAME in self._files.names else None
        return [dict(path=os.path.abspath(self._path), name=os.path.basename(os.path.normpath(self._path)),
                     files=len(self._image_fnames), bytes=sum(self._files.size(f) for f in self._image_fnames),
                     metadata_sha256=None if metadata is None else hashlib.sha256(metadata).hexdigest())]

    def _probe(self, fname: str) -> tuple[int, int, int]:
        with self._files.open(fname) as f:
            if self._is_float:
                return probe_npy(f, self._files.where(fname))
            return probe_image(f, self._files.where(fname))

    def _location(self) -> str:
        return self._path

    def _raw_name(self, raw_idx: int) -> str:
        return self._files.where(self._image_fnames[raw_idx])

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        fname = self._image_fnames[raw_idx]
        with self._files.open(fname) as f:
            if self._is_float:
                return read_npy(f, self._files.where(fname))
            image = read_image(f, self._files.where(fname), use_pyspng=self._use_pyspng)
        return image.transpose(2, 0, 1) # HWC => CHW

    def _load_raw_labels(self) -> np.ndarray | None:
        entries = self._metadata.get('labels')
        if entries is None:
            return None
        return parse_labels(entries, self._image_fnames, self._files.where(METADATA_FNAME))

    def close(self) -> None:
        files = self.__dict__.get('_files')
        if files is not None:
            files.close()

#----------------------------------------------------------------------------
# Several datasets read as one: the items of each part (after the part's own
# max_size and xflip) follow each other, and the union applies its own
# max_size and xflip on top. Parts must agree on resolution and channels; with
# use_labels every part needs labels of one kind. Parts of uint8 and float
# images may be mixed: the union is then float and converts uint8 images to
# [-1, 1] units (x/127.5 - 1), as images_to_float() would.

class UnionDataset(Dataset):
    def __init__(self,
        datasets:       Sequence[Dataset | dict | str], # Parts: Dataset objects, keyword dicts (optional class_name, default ImageFolderDataset) or paths.
        name:           str | None = None,  # Name of the union; None = the part names joined by '+'.
        **super_kwargs,                     # Keywords for the Dataset base class.
    ):
        use_labels = bool(super_kwargs.get('use_labels', False))
        self._parts = [self._make_part(part, use_labels) for part in datasets]
        if len(self._parts) == 0:
            raise UserError('UnionDataset: no datasets given')

        # Parts must agree on image size and channels.
        first = self._parts[0]
        for part in self._parts[1:]:
            if part.image_shape[1:] != first.image_shape[1:]:
                raise UserError(f'{part._location()}: images are {part.image_shape[2]}x{part.image_shape[1]}, '
                    f'but {first._location()} has {first.image_shape[2]}x{first.image_shape[1]}; a union needs one resolution')
            if part.num_channels != first.num_channels:
                raise UserError(f'{part._location()}: images have {part.num_channels} channels, '
                    f'but {first._location()} has {first.num_channels}; a union needs one channel count')

        # Element types and noise level.
        self._is_float = any(part.is_float for part in self._parts)
        sigmas = {part.sigma for part in self._parts}
        self._sigma = sigmas.pop() if len(sigmas) == 1 else None

        # Raw items of the union: the items of each part in turn.
        sizes = [len(part) for part in self._parts]
        self._part_start = np.cumsum([0] + sizes)
        if name is None:
            name = '+'.join(part.name for part in self._parts)
        super().__init__(name=name, raw_shape=[sum(sizes)] + first.image_shape, **super_kwargs)

    @staticmethod
    def _make_part(part: Dataset | dict | str, use_labels: bool) -> Dataset:
        if isinstance(part, Dataset):
            return part
        kwargs = dict(path=part) if isinstance(part, str) else dict(part)
        kwargs.setdefault('class_name', 'training.dataset.ImageFolderDataset')
        kwargs.setdefault('use_labels', use_labels)
        return construct_class_by_name(**kwargs)

    # Index of the part holding raw item `raw_idx`, and the item's index within that part.
    def _locate(self, raw_idx: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._part_start, raw_idx, side='right')) - 1
        return k, raw_idx - int(self._part_start[k])

    def _location(self) -> str:
        return self._name

    def _raw_name(self, raw_idx: int) -> str:
        k, idx = self._locate(raw_idx)
        return self._parts[k]._raw_name(int(self._parts[k]._raw_idx[idx]))

    def _load_raw_image(self, raw_idx: int) -> np.ndarray:
        k, idx = self._locate(raw_idx)
        part = self._parts[k]
        image = part._get_image(idx)
        if self._is_float and not part.is_float:
            image = image.astype(np.float32) / np.float32(127.5) - np.float32(1)
        return image

    def _load_raw_labels(self) -> np.ndarray | None:
        labels = []
        for part in self._parts:
            if not part.has_labels:
                raise UserError(f'{part._location()}: labels were requested, but this part of the union has none')
            labels.append(part._raw_labels[part._raw_idx])
        if len({x.dtype for x in labels}) != 1 or len({x.shape[1:] for x in labels}) != 1:
            raise UserError(f'{self._name}: the parts of the union have labels of different kinds or sizes')
        return np.concatenate(labels)

    def get_details(self, idx: int) -> dnnlib.EasyDict:
        d = super().get_details(idx)
        d.part, d.part_idx = self._locate(d.raw_idx)
        return d

    def fingerprint(self) -> list[dict]:
        parts = [part.fingerprint() for part in self._parts]
        return [] if any(not part for part in parts) else [entry for part in parts for entry in part]

    @property
    def parts(self) -> list[Dataset]:
        return list(self._parts)

    def close(self) -> None:
        for part in self.__dict__.get('_parts', []):
            part.close()

#----------------------------------------------------------------------------
# A batch from any of these datasets as float32 in [-1, 1] units: uint8 pixels
# map to x/127.5 - 1 (EDM's conversion), float images pass through unchanged.

def images_to_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.to(torch.float32) / 127.5 - 1
    if images.is_floating_point():
        return images.to(torch.float32)
    raise TypeError(f'images_to_float: expected uint8 or float images, got {images.dtype}')

#----------------------------------------------------------------------------
