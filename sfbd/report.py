"""A report of an SFBD run, the command line: `python -m sfbd.report --rounds=OUTDIR`.

FID and copies of the clean and of the protected images per round, the training loss and samples, in
one HTML page. What the report holds and how its scores are reused is tools/report.py's; this module
is the click table and one call.
"""

from __future__ import annotations

from typing import Any

import click

from dnnlib.util import report_user_errors
from sfbd import memorization as mem
from tools.options import sampler_options
from tools.report import DEFAULT_NUM, write_report
from torch_utils import distributed as dist
from torch_utils.detector import DEFAULT_DETECTOR

#----------------------------------------------------------------------------

@click.command()
@click.option('--rounds', 'rounds_dir',    help='The --outdir of sfbd.rounds (holds rounds.json)', metavar='DIR', type=str, required=True)
@click.option('--outdir',                  help='Where the report goes  [default: <rounds>/report]', metavar='DIR', type=str)
@click.option('--ref',                     help='FID reference statistics (fid.py ref)', metavar='NPZ|URL', type=str)
@click.option('--fid-features',            help='Features of the FID: Inception, or pixels for tiny images', type=click.Choice(mem.FEATURES), default='inception', show_default=True)
@click.option('--train', 'train_paths',    help='Reference set for the memorisation check (repeat for several)', metavar='ZIP|DIR', type=str, multiple=True)
@click.option('--features',                help='Features of the memorisation check', type=click.Choice(mem.FEATURES), default='pixel', show_default=True)
@click.option('--threshold',               help='A copy: nearest < threshold x second-nearest distance; a fraction in (0, 1], e.g. 0.3 or 1/3  [default: 1/3]', metavar='FLOAT', type=mem.ThresholdType(), default='1/3')
@click.option('--num',                     help='Samples per snapshot, seeds 0 to num-1 (FID\'s protocol: 50000)', metavar='INT', type=click.IntRange(min=2), default=DEFAULT_NUM, show_default=True)
@click.option('--batch', 'max_batch_size', help='Maximum batch size', metavar='INT', type=click.IntRange(min=1), default=256, show_default=True)
@click.option('--device',                  help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str)
@click.option('--detector',                help='Feature detector for Inception features  [default: NVIDIA\'s Inception-v3, TorchScript]', metavar='PT|PKL|URL', type=str, default=DEFAULT_DETECTOR)
@click.option('--detector-sha256',         help='Expected sha256 of the detector file', metavar='HEX', type=str)
@sampler_options
@report_user_errors
def main(rounds_dir: str, outdir: str | None, ref: str | None, fid_features: str, train_paths: tuple[str, ...],
         features: str, threshold: float, num: int, max_batch_size: int, device: str | None, detector: str,
         detector_sha256: str | None, **sampler_kwargs: Any) -> None:
    """Report on an SFBD run: FID and copies per round, the training loss, samples.

    \b
    Examples:
    # CIFAR-10: FID of every round, and copies of the clean set and of the source
    python -m sfbd.report --rounds=runs/sfbd-cifar10 \\
        --ref=https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz \\
        --train=datasets/clean.zip --train=datasets/cifar10-32x32.zip
    \b
    # The demo's run (8x8 images: distances on pixels)
    python -m sfbd.report --rounds=demo-out/sfbd --outdir=demo-out/report --ref=demo-out/data/heldout-pixels.npz \\
        --fid-features=pixel --train=demo-out/data/clean --train=demo-out/data/source --num=1000 --steps=12
    """
    write_report(rounds_dir, outdir, ref, fid_features, train_paths, features, threshold, num, max_batch_size,
                 dist.resolve_device(device), detector, detector_sha256, **sampler_kwargs)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
