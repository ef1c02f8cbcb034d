"""Denoising an observation set into PNG files: the loop of denoise.py, as a library function
(bench.py times it, and other SFBD code can call it).

Each process takes its share of the given observations batch by batch, runs the backward sampler
(sfbd/backward.py) from each observation and writes the result atomically as an 8-bit PNG under
the observation's own name. On the fast path (torch_utils/fast.py) the network is the prepared
one, the next batch is read and the last one written on background threads while a batch is
denoised, and a compiled network gets batches of one size.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import tqdm

from sfbd.backward import backward_sample, grid_groups, image_seeds
from sfbd.observations import ObservationSet, with_ext
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.fast import FastSettings
from training.generation import rank_batches, save_pngs, save_pngs_later
from training.sampler import StackedRandomGenerator, check_finite, to_uint8

#----------------------------------------------------------------------------
# Where an observation's denoised image goes, and the labels a network takes
# (class indices may cover fewer classes than a conditional network knows).

def output_path(outdir: str, fname: str) -> str:
    return os.path.join(outdir, *with_ext(fname, '.png').split('/'))

def network_labels(net: torch.nn.Module, labels: torch.Tensor | None) -> torch.Tensor | None:
    if not net.label_dim or labels is None:
        return None
    return torch.nn.functional.pad(labels, (0, net.label_dim - labels.shape[1]))

#----------------------------------------------------------------------------
# The denoising loop of one process: its share of `todo`, batch by batch.
# With per-image noise levels, batches never mix images whose grids start at
# different nodes.

def denoise_images(net: torch.nn.Module, obs: ObservationSet, outdir: str, todo: list[int], *,
                   sigma: float | np.ndarray, mode: str, seed: int, max_batch_size: int, device: torch.device,
                   sampler_kwargs: dict, fast: FastSettings | None = None, progress: bool = True) -> int:
    """Denoise this process's part of `todo`; returns the number of images written. `sigma` is one
    noise level for all, or the level of every image of the set ([len(obs)])."""
    parts = [todo]
    if np.ndim(sigma) > 0:
        groups = grid_groups(net, torch.as_tensor(np.asarray(sigma)[todo]), mode, **sampler_kwargs) if todo else []
        parts = [[todo[int(k)] for k in group] for group in groups]
    batches = [batch for part in parts if part
               for batch in rank_batches(part, max_batch_size, dist.get_rank(), dist.get_world_size()) if batch]
    total = sum(len(b) for b in batches)

    def denoise(y: torch.Tensor, labels: torch.Tensor | None, indices: list[int]) -> torch.Tensor:
        rnd = StackedRandomGenerator(device, image_seeds(seed, indices))
        level = sigma if np.ndim(sigma) == 0 else torch.as_tensor(np.asarray(sigma)[indices])
        x = backward_sample(net, y, level, labels, mode=mode, randn_like=rnd.randn_like, **sampler_kwargs)
        check_finite(x, f'{obs.path}: observations {obs.fnames[indices[0]]} to {obs.fnames[indices[-1]]}')
        return x

    with tqdm.tqdm(total=total, unit='img', disable=(not progress or dist.get_rank() != 0), desc='denoise') as bar:
        if fast is None:
            for batch in batches:
                y, labels = obs.load(batch)
                labels = network_labels(net, labels)
                x = denoise(y.to(device), None if labels is None else labels.to(device), batch)
                save_pngs([output_path(outdir, obs.fnames[i]) for i in batch],
                          to_uint8(x).permute(0, 2, 3, 1).cpu().numpy())
                bar.update(len(batch))
            return total

        # Fast path: reading, denoising and writing overlap.
        size = max((len(b) for b in batches), default=0) if fast.compile else 0
        def load(batch: list[int]) -> tuple[list[int], torch.Tensor, torch.Tensor | None]:
            padded = fast_lib.pad_batch(batch, size)
            y, labels = obs.load(padded)
            if fast.pin_memory and device.type == 'cuda':
                y, labels = y.pin_memory(), None if labels is None else labels.pin_memory()
            return padded, y, labels
        with fast_lib.BackgroundWriter() as writer, torch.inference_mode():
            for batch, (padded, y, labels) in zip(batches, fast_lib.prefetch(load, batches)):
                labels = network_labels(net, labels)
                x = denoise(fast_lib.to_device(y, device, fast),
                            None if labels is None else fast_lib.to_device(labels, device, fast), padded)
                host = fast_lib.host_copy(to_uint8(x[:len(batch)]).permute(0, 2, 3, 1))
                save_pngs_later(writer, [output_path(outdir, obs.fnames[i]) for i in batch], host)
                bar.update(len(batch))
    return total

#----------------------------------------------------------------------------
