"""Small datasets, observation sets and networks for the SFBD tests."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import torch

from sfbd.observations import DatasetWriter, dataset_fname, encode_png
from torch_utils.persistence import save_network_pickle
from training.networks import EDMPrecond

#----------------------------------------------------------------------------
# An 8-bit image dataset of random pictures, with class labels if asked.

def make_image_dataset(path: str, num_images: int, channels: int = 3, resolution: int = 8,
                       num_classes: int = 0, seed: int = 0) -> np.ndarray:
    """Write the dataset; returns the images [N, C, H, W] uint8."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=[num_images, channels, resolution, resolution], dtype=np.uint8)
    writer = DatasetWriter(path)
    labels = []
    for i, image in enumerate(images):
        name = dataset_fname(i, '.png')
        writer.add(name, encode_png(image))
        labels.append([name, i % num_classes if num_classes else None])
    writer.commit(dict(labels=labels if num_classes else None))
    return images

#----------------------------------------------------------------------------
# An observation set written directly (bypassing `split`), so that tests can
# plant defects: `metadata` replaces dataset.json, `arrays` the observations.

def make_observation_set(path: str, arrays: list[np.ndarray] | np.ndarray, sigma: float | None = 0.5,
                         labels: list | None = None, metadata: dict | None = None) -> None:
    writer = DatasetWriter(path)
    names = []
    for i, array in enumerate(arrays):
        name = dataset_fname(i, '.npy')
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        writer.add(name, buffer.getvalue())
        names.append(name)
    if metadata is None:
        metadata = dict(labels=None if labels is None else [[n, l] for n, l in zip(names, labels)])
        if sigma is not None:
            metadata['sigma'] = sigma
    writer.commit(metadata)

def random_observations(num: int, channels: int = 3, resolution: int = 8, sigma: float = 0.5, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=[num, channels, resolution, resolution]) / 127.5 - 1
    return (x + sigma * rng.standard_normal(x.shape)).astype(np.float32)

#----------------------------------------------------------------------------
# A tiny EDM network with random weights, saved as a snapshot pickle.

def tiny_network(resolution: int = 8, channels: int = 3, label_dim: int = 0, seed: int = 0) -> EDMPrecond:
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=resolution, img_channels=channels, label_dim=label_dim, model_type='SongUNet',
                     model_channels=16, channel_mult=[1, 1], num_blocks=1, attn_resolutions=[])
    return net.eval().requires_grad_(False)

def save_tiny_network(path: str, **kwargs) -> str:
    save_network_pickle(path, dict(ema=tiny_network(**kwargs), loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    return path

#----------------------------------------------------------------------------
# Reading outputs back.

def read_png_dataset(path: str) -> dict[str, np.ndarray]:
    """{relative name: [H, W, C] uint8} of every PNG under a directory."""
    import PIL.Image
    out = {}
    for root, _dirs, files in os.walk(path):
        for fname in files:
            if fname.endswith('.png'):
                rel = os.path.relpath(os.path.join(root, fname), path).replace(os.sep, '/')
                with PIL.Image.open(os.path.join(root, fname)) as img:
                    out[rel] = np.asarray(img).reshape(img.size[1], img.size[0], -1)
    return out

def read_json(path: str) -> dict:
    with open(path, 'r', encoding='utf-8') as f:
        return json.load(f)

def gaussian_w2(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Squared 2-Wasserstein distance between two Gaussians (the Frechet distance)."""
    import scipy.linalg
    root = scipy.linalg.sqrtm(scipy.linalg.sqrtm(cov1) @ cov2 @ scipy.linalg.sqrtm(cov1)).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * root))

#----------------------------------------------------------------------------
