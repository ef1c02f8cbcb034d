"""Generating images to files: generate.py's work as library functions (bench.py times the loop).

`generate_to_dir` is the loop over seeds; `generate_command` is a whole run of generate.py (inputs
checked, the output folder claimed by its record, the images written). Not here: the sampler
itself (training/sampler.py) and the command line (generate.py, tools/options.py).

The seeds are split into batches and the batches between processes as EDM does; every image is
written atomically as `{seed:06d}.png`. On the fast path (torch_utils/fast.py) the network is
the prepared one, the PNGs are written on a background thread while the next batch is sampled,
and a compiled network gets batches of one size.
"""

from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np
import torch
import tqdm

from dnnlib.outputs import OutputDir, ToolOutputs, is_complete_png
from dnnlib.util import UserError, file_sha256, save_png
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.fast import FastSettings
from torch_utils.persistence import load_network
from training.sampler import check_finite, check_sampler_options, generate_images, to_uint8

DEFAULT_BATCH = 64  # generate.py's --batch, unless --fast sizes it to the device.

# The record of an output directory: images of one network and one set of
# sampler options only (seeds may vary between runs).
OPTIONS_FNAME = 'generate_options.json'

#----------------------------------------------------------------------------
# Split the seeds into batches, and the batches between processes, the way
# EDM does (every process gets the same number of batches, some may be empty).

def rank_batches(seeds: Sequence[int], max_batch_size: int, rank: int, world_size: int) -> list[list[int]]:
    num_batches = ((len(seeds) - 1) // (max_batch_size * world_size) + 1) * world_size
    batches = torch.as_tensor(list(seeds)).tensor_split(num_batches)
    return [b.tolist() for b in batches[rank::world_size]]

def image_path(outdir: str, seed: int, subdirs: bool) -> str:
    folder = os.path.join(outdir, f'{seed - seed % 1000:06d}') if subdirs else outdir
    return os.path.join(folder, f'{seed:06d}.png')

# PNGs of a batch: [N, H, W, C] uint8, the paths in the same order. The fast
# path hands them to a background writer in chunks, `images()` giving the
# array once the copy from the device is done.
def save_pngs(paths: Sequence[str], images: np.ndarray) -> None:
    for path, image in zip(paths, images):
        save_png(path, image)

def save_pngs_later(writer: fast_lib.BackgroundWriter, paths: Sequence[str], images: Callable[[], np.ndarray],
                    chunk: int = 16) -> None:
    for start in range(0, len(paths), chunk):
        writer.submit(lambda start=start: save_pngs(paths[start:start + chunk], images()[start:start + chunk]))

#----------------------------------------------------------------------------
# This process's share of the seeds, batch by batch, written as PNGs.

def generate_to_dir(net: torch.nn.Module, seeds: Sequence[int], outdir: str, *, subdirs: bool = False,
                    class_idx: int | None = None, max_batch_size: int = 64, device: torch.device | str = 'cpu',
                    sampler_kwargs: dict | None = None, fast: FastSettings | None = None, progress: bool = True,
                    source: str = 'the network') -> int:
    """Generate and save the images of this process's seeds; returns how many it wrote. A batch with
    NaN or infinite values is an error that names `source` and the batch's seeds."""
    device = torch.device(device)
    sampler_kwargs = dict(sampler_kwargs or {})
    batches = [b for b in rank_batches(seeds, max_batch_size, dist.get_rank(), dist.get_world_size()) if b]
    bar = tqdm.tqdm(batches, unit='batch', disable=(not progress or dist.get_rank() != 0))
    if fast is None:
        for batch_seeds in bar:
            images = generate_images(net, batch_seeds, class_idx=class_idx, device=device, **sampler_kwargs)
            check_finite(images, f'{source}, seeds {batch_seeds[0]}-{batch_seeds[-1]}')
            save_pngs([image_path(outdir, seed, subdirs) for seed in batch_seeds],
                      to_uint8(images).permute(0, 2, 3, 1).cpu().numpy())
        return sum(len(b) for b in batches)

    # Fast path: the next batch is sampled while a thread writes the last.
    size = len(batches[0]) if batches and fast.compile else 0
    with fast_lib.BackgroundWriter() as writer, torch.inference_mode():
        for batch_seeds in bar:
            padded = fast_lib.pad_batch(batch_seeds, size)
            images = generate_images(net, padded, class_idx=class_idx, device=device, **sampler_kwargs)[:len(batch_seeds)]
            check_finite(images, f'{source}, seeds {batch_seeds[0]}-{batch_seeds[-1]}')
            host = fast_lib.host_copy(to_uint8(images).permute(0, 2, 3, 1))
            save_pngs_later(writer, [image_path(outdir, seed, subdirs) for seed in batch_seeds], host)
    return sum(len(b) for b in batches)

#----------------------------------------------------------------------------
# A whole run of generate.py: the output folder checked before anything is
# read, the network and options checked, then the folder claimed by the
# record and this process's images written.

def generate_command(network_pkl: str, outdir: str, seeds: Sequence[int], *, subdirs: bool = False,
                     class_idx: int | None = None, max_batch_size: int | None = None, device: str | None = None,
                     fast: bool = False, sampler_kwargs: dict | None = None) -> None:
    """generate.py's work: the images of `seeds` from the network into `outdir`, by every process.
    Joins the process group; the caller leaves it."""
    sampler_kwargs = dict(sampler_kwargs or {})
    if not seeds:
        raise UserError('--seeds names no seeds')
    outputs = ToolOutputs('generate.py', [OutputDir(outdir, '--outdir', OPTIONS_FNAME)], [(network_pkl, '--network')])
    outputs.check()
    device = dist.resolve_device(device)
    dist.init(device)

    dist.print0(f'Loading network from "{network_pkl}"...')
    net = dist.rank0_first(lambda: load_network(network_pkl), f'the network {network_pkl}').to(device)
    if class_idx is not None:
        if not net.label_dim:
            raise UserError(f'--class={class_idx} was given, but the network is unconditional')
        if class_idx >= net.label_dim:
            raise UserError(f'--class={class_idx} is out of range: the network has {net.label_dim} classes')
    check_sampler_options(net, sampler_kwargs)

    # The fast path: batch size first (measured on the plain network), then the prepared network.
    settings = fast_lib.fast_settings(device) if fast else None
    max_batch_size = fast_lib.sampling_batch_size(net, device, settings, max_batch_size, DEFAULT_BATCH)
    if settings is not None:
        net = fast_lib.prepare_sampling_network(net, settings)

    record = dict(network=network_pkl, network_sha256=file_sha256(network_pkl), class_idx=class_idx, subdirs=subdirs,
                  sampler={k: v for k, v in sampler_kwargs.items() if v is not None})
    with outputs.claim(record, ignore=['network']):
        # A rerun of the same command resumes: images already whole are kept (the record guarantees
        # they were made with these options), and every process agrees on the rest before any writes.
        shape = [net.img_channels, net.img_resolution, net.img_resolution]
        todo = [seed for seed in seeds if not is_complete_png(image_path(outdir, seed, subdirs), shape)]
        dist.barrier()
        if len(todo) < len(seeds):
            dist.print0(f'{len(seeds) - len(todo)} of {len(seeds)} images are in "{outdir}" already.')
        dist.print0(f'Generating {len(todo)} images to "{outdir}"' + (' (fast path)' if fast else '') + '...')
        if todo:
            generate_to_dir(net, todo, outdir, subdirs=subdirs, class_idx=class_idx, max_batch_size=max_batch_size,
                            device=device, sampler_kwargs=sampler_kwargs, fast=settings, source=f'--network={network_pkl}')
    dist.barrier()

#----------------------------------------------------------------------------
