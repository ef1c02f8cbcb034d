"""Generate images with a trained network, as EDM's generate.py does.

The same pickle, seeds and options give the same images as EDM's generate.py on the same kind of
device: each image has its own random generator seeded with its seed, which draws the latents
first and then the class label.
"""

from __future__ import annotations

import click

from dnnlib.cli import IntList
from dnnlib.outputs import OutputClaim, any_file, check_apart, check_output_dir
from dnnlib.util import UserError, file_sha256, report_user_errors
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils.persistence import load_network
from tools.options import sampler_options
from training.generation import generate_to_dir
from training.sampler import check_sampler_options

DEFAULT_BATCH = 64  # --batch, unless --fast sizes it to the device.

# The record of an output directory: images of one network and one set of
# sampler options only (seeds may vary between runs).
OPTIONS_FNAME = 'generate_options.json'

#----------------------------------------------------------------------------

@click.command()
@click.option('--network', 'network_pkl',  help='Network pickle', metavar='PATH|URL',                                   type=str, required=True)
@click.option('--outdir',                  help='Where to save the output images', metavar='DIR',                      type=str, required=True)
@click.option('--seeds',                   help='Random seeds (e.g. 1,2,5-10)', metavar='LIST',                        type=IntList(), default='0-63', show_default=True)
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
    if not seeds:
        raise UserError('--seeds names no seeds')
    check_apart([(outdir, '--outdir')], [(network_pkl, '--network')])
    check_output_dir(outdir, '--outdir', 'generate.py', [OPTIONS_FNAME])
    device = dist.resolve_device(device)
    dist.init(device)

    dist.print0(f'Loading network from "{network_pkl}"...')
    if dist.get_rank() != 0:
        dist.barrier()  # Rank 0 downloads first.
    net = load_network(network_pkl).to(device)
    if dist.get_rank() == 0:
        dist.barrier()
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
    claim = OutputClaim(outdir, '--outdir', OPTIONS_FNAME, record, command='generate.py', ignore=['network'],
                        has_outputs=lambda: any_file(outdir, ['.png']))
    dist.print0(f'Generating {len(seeds)} images to "{outdir}"' + (' (fast path)' if fast else '') + '...')
    with claim:
        generate_to_dir(net, seeds, outdir, subdirs=subdirs, class_idx=class_idx, max_batch_size=max_batch_size,
                        device=device, sampler_kwargs=sampler_kwargs, fast=settings, source=f'--network={network_pkl}')

    dist.barrier()
    dist.print0('Done.')
    dist.deinit()

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
