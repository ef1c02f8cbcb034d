"""Generate images with a trained network, as EDM's generate.py does.

The same pickle, seeds and options give the same images as EDM's generate.py on the same kind of
device: each image has its own random generator seeded with its seed, which draws the latents
first and then the class label.

The command line only: its option table, one call of training.generation.generate_command (the
output rules, the network, the loop) and its last message. The names that scripts written for EDM
import from here (`edm_sampler`, `ablation_sampler`, `StackedRandomGenerator`, `parse_int_list`)
are the ones of training.sampler and dnnlib.util.
"""

from __future__ import annotations

import click

from dnnlib.cli import IntList
from dnnlib.util import parse_int_list, report_user_errors
from tools.options import sampler_options
from torch_utils import distributed as dist
from training.generation import DEFAULT_BATCH, generate_command
from training.sampler import StackedRandomGenerator, ablation_sampler, edm_sampler

__all__ = ['edm_sampler', 'ablation_sampler', 'StackedRandomGenerator', 'parse_int_list', 'main']

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network_pkl',  help='Network pickle', metavar='PATH|URL',                                   type=str, required=True)
@click.option('--outdir',                  help='Where to save the output images', metavar='DIR',                      type=str, required=True)
@click.option('--seeds',                   help='Random seeds (e.g. 1,2,5-10)', metavar='LIST',                        type=IntList(distinct=True), default='0-63', show_default=True)
@click.option('--subdirs',                 help='Put every 1000 seeds in a subdirectory',                              is_flag=True)
@click.option('--class', 'class_idx',      help='Class label  [default: random]', metavar='INT',                       type=click.IntRange(min=0), default=None)
@click.option('--batch', 'max_batch_size', help=f'Maximum batch size  [default: {DEFAULT_BATCH}; with --fast on a GPU, what fits]', metavar='INT', type=click.IntRange(min=1))
@click.option('--device',                  help='Device  [default: cuda if available, else cpu]', metavar='STR',      type=str, default=None)
@click.option('--fast',                    help='Fast path: the network in bf16, compiled, batches sized to the GPU, PNGs written meanwhile (docs/performance.md)', is_flag=True)
@sampler_options
@report_user_errors
def main(network_pkl: str, outdir: str, seeds: list[int], subdirs: bool, class_idx: int | None,
         max_batch_size: int | None, device: str | None, fast: bool, **sampler_kwargs) -> None:
    """Generate random images with the EDM sampler.

    \b
    Examples:
    # 64 images from a snapshot, saved as out/*.png
    python generate.py --outdir=out --seeds=0-63 --network=runs/00000-.../network-snapshot-000200.pkl
    \b
    # 1024 images on 2 GPUs
    torchrun --standalone --nproc_per_node=2 generate.py --outdir=out --seeds=0-1023 --network=...
    \b
    # The fast path: the network in bfloat16 (the sampler stays in float64)
    python generate.py --outdir=out --seeds=0-49999 --network=... --fast
    \b
    Network pickles are read as data: nothing stored in them is run. Without
    --fast the images are EDM's for the same pickle, seeds and options.
    """
    generate_command(network_pkl, outdir, seeds, subdirs=subdirs, class_idx=class_idx, max_batch_size=max_batch_size,
                     device=device, fast=fast, sampler_kwargs=sampler_kwargs)
    dist.print0('Done.')
    dist.deinit()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
