"""Create and inspect datasets in EDM's layout.

Examples:

\b
    python dataset_tool.py convert --source=downloads/cifar-10-python.tar.gz --dest=datasets/cifar10-32x32.zip
    python dataset_tool.py convert --source=downloads/mnist --dest=datasets/mnist-32x32.zip
    python dataset_tool.py convert --source=photos/ --dest=datasets/photos-64x64 --transform=center-crop --resolution=64x64
    python dataset_tool.py info --source=datasets/cifar10-32x32.zip

EDM's form without a command, `python dataset_tool.py --source=... --dest=...`, means convert.

A dataset is a directory or an uncompressed zip of images `00000/img00000000.png`, ... (1000 per
folder, uncompressed PNG), with labels in `dataset.json`. Outputs are written to a temporary file
or folder beside the destination and renamed into place at the end, so a failed or interrupted
run leaves nothing behind; an existing destination is never overwritten.
"""

# The command line only: the work is tools/datasets.py's (convert, info) and sfbd/dataset_commands.py's
# (split, merge).

from __future__ import annotations

import json
import re
from typing import Any

import click

from dnnlib.util import report_user_errors
from tools.datasets import convert_dataset, describe_dataset

#----------------------------------------------------------------------------
# Command line. A UserError prints `Error: <message>` and exits with status 1.

MAX_RESOLUTION = 8192  # Per side; far beyond what diffusion datasets use, far below what fills the memory.

class ResolutionType(click.ParamType):
    name = 'WxH'

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        m = re.fullmatch(r'([0-9]+)[x,]([0-9]+)', str(value))
        if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
            self.fail(f'{value!r} is not a resolution like 64x64', param, ctx)
        if max(int(m.group(1)), int(m.group(2))) > MAX_RESOLUTION:
            self.fail(f'{value!r}: at most {MAX_RESOLUTION} pixels a side', param, ctx)
        return int(m.group(1)), int(m.group(2))

# EDM's dataset_tool.py has no subcommands: `python dataset_tool.py --source=...
# --dest=...` converts. The same line works here and means `convert`.

class Commands(click.Group):
    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0].startswith('--') and args[0] not in self.get_help_option_names(ctx):
            args = ['convert', *args]
        return super().parse_args(ctx, args)

@click.group(cls=Commands, help=__doc__)
def cli() -> None:
    pass

@cli.command()
@click.option('--source',     help='Input: directory, zip, cifar-10-python.tar.gz or train-images-idx3-ubyte.gz (or its directory)', metavar='PATH', type=str, required=True)
@click.option('--dest',       help='Output: a new directory or .zip file', metavar='PATH', type=str, required=True)
@click.option('--max-images', help='Convert at most this many images', metavar='INT', type=click.IntRange(min=1))
@click.option('--transform',  help='Crop before resizing (needs --resolution); the result is RGB, as in EDM', type=click.Choice(['center-crop', 'center-crop-wide']))
@click.option('--resolution', help='Output size, e.g. 64x64', metavar='WxH', type=ResolutionType())
@report_user_errors
def convert(source: str, dest: str, max_images: int | None, transform: str | None, resolution: tuple[int, int] | None) -> None:
    """Convert images into a dataset (PNG files and dataset.json).

    \b
    --source path/                      every image below path/, labels from path/dataset.json
                                        or else from the top-level folder names
                                        (with several, every image must be in one;
                                        numbered folders such as 00000/ are not classes)
    --source dataset.zip                likewise inside a zip; in either, where everything
                                        lies in one folder (as zip -r makes it), that folder
    --source cifar-10-python.tar.gz     CIFAR-10 training set with labels
    --source train-images-idx3-ubyte.gz MNIST training set with labels, padded to 32x32

    \b
    --dest path/                        a new directory
    --dest dataset.zip                  a new uncompressed zip (better on network file systems)

    \b
    Images must be 8-bit grayscale or RGB (palette, bilevel and CMYK images are
    converted; alpha channels and 16-bit PNGs are refused). Hidden files and
    folders and __MACOSX/ are skipped. As in EDM, the pixels are taken as stored:
    an EXIF orientation tag is not applied, so rotate such photos first.
    """
    count = convert_dataset(source, dest, max_images=max_images, transform=transform, resolution=resolution)
    print(f'Wrote {count} images to {dest}')

@cli.command()
@click.option('--source', help='Dataset directory or zip', metavar='PATH', type=str, required=True)
@click.option('--json', 'as_json', help='Print the summary as JSON', is_flag=True)
@report_user_errors
def info(source: str, as_json: bool) -> None:
    """Summarise a dataset: images, resolution, channels, labels, value range, noise level
    (one number, or the range of the per-image levels)."""
    summary = describe_dataset(source)
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for key in ['path', 'images', 'resolution', 'channels', 'labels', 'type']:
        print(f'{key + ":":12s}{summary[key]}')
    print(f'{"range:":12s}[{summary["min"]:g}, {summary["max"]:g}]')
    if summary['sigma'] is not None:
        sigma = summary['sigma']
    elif summary['sigma_min'] is not None:
        sigma = f'per image, {summary["sigma_min"]:g} to {summary["sigma_max"]:g}'
    else:
        sigma = 'not recorded'
    print(f'{"sigma:":12s}{sigma}')

#----------------------------------------------------------------------------
# SFBD's subcommands live with the rest of SFBD: `split` (clean part and noisy
# observation set) and `merge` (several datasets into one).

from sfbd.dataset_commands import merge, split  # noqa: E402

cli.add_command(split)
cli.add_command(merge)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    cli()

#----------------------------------------------------------------------------
