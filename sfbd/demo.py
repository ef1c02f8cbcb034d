"""SFBD end to end in about a quarter of an hour on a CPU, the command line: `python -m sfbd.demo`.

Synthetic data (no download), pretraining, SFBD rounds, Online SFBD and a naive baseline, each scored
against held-out images. What it runs and why is tools/demo.py's and docs/sfbd.md's; this module is
the click table and one call.
"""

from __future__ import annotations

import os

# Sleep rather than spin while waiting for other OpenMP threads (tools/demo.py says why); set before
# anything imports torch.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

import click

from dnnlib.cli import FiniteFloat
from dnnlib.util import report_user_errors
from tools.demo import DEMO, run_demo

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir',        help='Where the data, runs and results go', metavar='DIR',                      type=str, default='demo-out', show_default=True)
@click.option('--device',        help='Device  [default: cuda if available, else cpu]', metavar='STR',           type=str, default=None)
@click.option('--seed',          help='Seed of the data, the split and the training runs', metavar='INT',         type=click.IntRange(min=0), default=0, show_default=True)
@click.option('--long-baseline', help='Also train a clean-only model as long as SFBD in total (slower)',         is_flag=True)
@click.option('--sigma',         help='Noise level of the observations (a harder or easier problem)', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True), default=DEMO.sigma, show_default=True)
@click.option('--clean-count',   help='Images released clean', metavar='INT',                                    type=click.IntRange(min=2, max=DEMO.num_images - 2), default=DEMO.clean_count, show_default=True)
@report_user_errors
def main(outdir: str, device: str | None, seed: int, long_baseline: bool, sigma: float, clean_count: int) -> None:
    """SFBD end to end on a toy dataset, in about a quarter of an hour on two CPU cores.

    \b
    python -m sfbd.demo                 # results in demo-out/
    """
    run_demo(outdir, device, seed, long_baseline, settings=dict(sigma=sigma, clean_count=clean_count))

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
