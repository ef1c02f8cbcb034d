"""Denoise noisy observations with a trained network: SFBD's backward sampling.

Each observation y of an observation set (docs/observations.md) is taken back from its noise level
sigma to 0 by the reverse process of the given network, starting at y itself (sfbd/backward.py), and
saved as an 8-bit PNG under the observation's own name. A set may give each observation its own
sigma: every image then starts from its own level, on the same grid rule. The output directory is an EDM dataset,
ready for `train.py --data`, once every image is there.

Work can be split between independent tasks (`--shard=I/N`, e.g. one per SLURM array task) and,
inside a task, between processes (`torchrun`). All of them may write into one --outdir:

- every image is written atomically, so an image file is either complete or absent;
- a rerun denoises only the images that are missing, which also resumes interrupted tasks;
- the options are recorded in `denoise_options.json` once the network and the data have been
  checked; a run with other options (another network, noise levels, mode, seed, grid) into the same
  --outdir is refused, so images of different models never mix (per-image noise levels are
  recorded by range, count and digest). The record is written
  create-exclusively, so that of several tasks starting at once with different options only one
  goes on (dnnlib/outputs.py); a run that fails before writing an image takes its record back;
- --outdir must be new, empty or made by denoise.py, and apart from --data and --network: a
  dataset is never written into;
- an image that exists but is empty or cut short counts as missing;
- `dataset.json` (labels) is built from the observation set, not from the shards: whichever task
  finishes and finds every image present writes it, and `--finalize` writes it on demand (e.g. on a
  file system where tasks may not see each other's files at once). Its presence marks a complete set.

The command line only: its option table (tools/denoise_setup.py) and one call of
sfbd.denoise_set.denoise_command, which applies the rules above.
"""

from __future__ import annotations

import click

from dnnlib.util import report_user_errors
from sfbd.denoise_set import denoise_command
from tools.denoise_setup import denoise_options
from torch_utils import distributed as dist

#----------------------------------------------------------------------------

@click.command()
@denoise_options
@report_user_errors
def main(network_pkl: str, data: str, outdir: str, sigma: float | None, force_sigma: bool, mode: str, seed: int,
         shard: tuple[int, int], max_batch_size: int | None, device: str | None, fast: bool, grid: str | None,
         grid_count: int, grid_seed: int, originals: str | None, finalize: bool, **sampler_kwargs) -> None:
    """Denoise an observation set with a trained network (SFBD's backward sampling).

    \b
    Examples:
    # Denoise CIFAR-10 observations (sigma from the set) with the release's ODE sampler
    python denoise.py --network=runs/sfbd/round-000-pretrain/network-snapshot-200000.pkl \\
        --data=noisy.zip --outdir=runs/sfbd/round-001/denoised
    \b
    # The same, as 4 independent tasks writing into one directory
    python denoise.py ... --shard=$SLURM_ARRAY_TASK_ID/4
    \b
    # On 2 GPUs
    torchrun --standalone --nproc_per_node=2 denoise.py ...
    \b
    # A picture of 16 images chosen with seed 3: original | observation | denoised
    # (--originals: the source dataset of `dataset_tool.py split`, read by name)
    python denoise.py ... --finalize --grid=grid.png --grid-count=16 --grid-seed=3 \\
        --originals=datasets/cifar10-32x32.zip
    \b
    # The fast path: the network in bfloat16 (the sampler stays in float64)
    python denoise.py ... --fast
    """
    denoise_command(network_pkl, data, outdir, sigma=sigma, force_sigma=force_sigma, mode=mode, seed=seed, shard=shard,
                    max_batch_size=max_batch_size, device=device, fast=fast, grid=grid, grid_count=grid_count,
                    grid_seed=grid_seed, originals=originals, finalize=finalize, sampler_kwargs=sampler_kwargs)
    dist.deinit()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
