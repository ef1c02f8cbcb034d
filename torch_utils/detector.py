"""Feature detectors for image metrics: NVIDIA's Inception-v3 (FID's detector) or any network with
its call contract, loaded from a TorchScript file without running Python code from it (or, when
named explicitly, from a pickle, which does run code). Used by fid.py and by the memorisation
check (sfbd/memorization.py).
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import Any, Sequence

import torch

from dnnlib.util import UserError, download, file_sha256, is_url
from torch_utils import fast as fast_lib
from torch_utils.fast import FastSettings
from torch_utils.persistence import load_pickle_running_code

#----------------------------------------------------------------------------
# Detector files. The TorchScript Inception is the default; EDM's own pickle
# of the same network is accepted when named explicitly.

DEFAULT_DETECTOR = 'https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt'
DEFAULT_DETECTOR_SHA256 = 'f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4'
EDM_PICKLE_DETECTOR = 'https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/inception-2015-12-05.pkl'

# The gist of an exception in one line (TorchScript errors span many).
def _last_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f'{type(e).__name__}: {lines[-1]}' if lines else type(e).__name__

#----------------------------------------------------------------------------
# A feature extractor with the call contract of NVIDIA's Inception:
# `net(images, return_features=True)` takes uint8 [N, 3, H, W] images at any
# resolution (the network resizes them itself) and returns [N, D] features.

class Detector:
    def __init__(self, net: Any, source: str, path: str, sha256: str, device: torch.device,
                 fast: FastSettings | None = None):
        self.net = net              # The callable module.
        self.source = source        # Path or URL as the user gave it.
        self.path = path            # Local file it was loaded from.
        self.sha256 = sha256        # Digest of that file.
        self.device = device
        self.fast = fast            # Fast-path settings (inference mode, non-blocking copies); None = faithful.

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of uint8 [N, C, H, W] images (C = 1 or 3), as float64 [N, D]."""
        if images.dtype != torch.uint8:
            raise TypeError(f'the detector takes uint8 images, not {images.dtype}')
        images = torch.cat([images] * 3, dim=1) if images.shape[1] == 1 else images  # Gray to RGB.
        try:
            if self.fast is None:
                out = self.net(images.to(self.device), return_features=True)
            else:
                with torch.inference_mode():
                    out = self.net(fast_lib.to_device(images, self.device, self.fast), return_features=True)
        except Exception as e:  # TorchScript raises its own error types.
            raise UserError(f'{self.source}: the detector failed on images of shape {list(images.shape)} '
                            f'({_last_line(e)})') from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
            shape = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f'{self.source}: the detector returned {shape} for {images.shape[0]} images; '
                            'expected [N, features]')
        return out.to(torch.float64)

    def feature_dim(self, image_shape: Sequence[int]) -> int:
        """Width of the features, found by running the detector on one blank image."""
        return int(self.features(torch.zeros([1, *image_shape], dtype=torch.uint8)).shape[1])

#----------------------------------------------------------------------------
# Load a detector from a path or URL. TorchScript archives (zip files) are
# loaded with torch.jit.load, which runs no Python code from the file; a
# `.pkl` file is unpickled, which runs whatever the pickle holds.

def load_detector(detector: str = DEFAULT_DETECTOR, sha256: str | None = None,
                  device: torch.device | str = 'cpu', verbose: bool = True,
                  fast: FastSettings | None = None) -> Detector:
    device = torch.device(device)
    path = download(detector, verbose=verbose) if is_url(detector) else detector
    if not os.path.isfile(path):
        raise UserError(f'{detector}: no such file')

    # The default detector is always checked; any other one when a digest is given.
    expected = sha256 if sha256 is not None else (DEFAULT_DETECTOR_SHA256 if detector == DEFAULT_DETECTOR else None)
    actual = file_sha256(path)
    if expected is not None and actual != expected.lower():
        downloaded = detector.startswith(('http://', 'https://'))
        where = f'{detector} (downloaded to {path}; delete it to download again)' if downloaded else detector
        raise UserError(f'{where}: sha256 is {actual}, expected {expected.lower()}')

    if zipfile.is_zipfile(path):
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the published format.
                warnings.simplefilter('ignore', DeprecationWarning)
                net = torch.jit.load(path, map_location=device)
        except Exception as e:
            raise UserError(f'{detector}: not a TorchScript detector ({_last_line(e)})') from None
    elif path.endswith('.pkl') or detector.endswith('.pkl'):
        if verbose:
            print(f'Unpickling the detector "{detector}": this runs code stored in the file.', flush=True)
        try:
            with open(path, 'rb') as f:
                net = load_pickle_running_code(f)
        except Exception as e:
            raise UserError(f'{detector}: cannot unpickle the detector ({_last_line(e)}); a pickled detector '
                            'needs the modules it was pickled with; the default TorchScript '
                            'detector is the same network and needs none') from None
        if not callable(net):
            raise UserError(f'{detector}: the pickle holds a {type(net).__name__}, not a detector network')
        if isinstance(net, torch.nn.Module):
            net = net.to(device)
    else:
        raise UserError(f'{detector}: not a TorchScript archive (and not a .pkl detector)')
    if isinstance(net, torch.nn.Module):
        net.eval()
        if fast is not None:
            net = fast_lib.to_memory_format(net, fast)
    return Detector(net, detector, path, actual, device, fast)

#----------------------------------------------------------------------------
