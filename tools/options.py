"""The sampler option table of the command-line tools: EDM's sampler options (generate.py's) as click
options, shared by generate.py, denoise.py, fid.py, memorization.py and the report (python -m sfbd.report).

A click table, and the refusal of sampler options given where no images are generated: what the
options mean is training/sampler.py's; checking them against a network is
`training.sampler.check_sampler_options`.
"""

from __future__ import annotations

from typing import Callable

import click

from dnnlib.cli import FiniteFloat, given_options
from dnnlib.util import UserError
from training.sampler import DISCRETIZATIONS, SCALINGS, SCHEDULES, SOLVERS

#----------------------------------------------------------------------------
# EDM's sampler options as a click option table: generate.py's, shared by
# denoise.py, fid.py, memorization.py and sfbd.report.

def sampler_options(func: Callable) -> Callable:
    options = [
        click.option('--steps', 'num_steps', help='Number of sampling steps', metavar='INT', type=click.IntRange(min=1), default=18, show_default=True),
        click.option('--sigma_min', help='Lowest noise level  [default: varies]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True)),
        click.option('--sigma_max', help='Highest noise level  [default: varies]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True)),
        click.option('--rho', help='Time step exponent (one so small that the lowest step rounds to 0, below 0.29 for EDM\'s noise range, is refused)', metavar='FLOAT', type=FiniteFloat(min=0.01), default=7, show_default=True),
        click.option('--S_churn', 'S_churn', help='Stochasticity strength', metavar='FLOAT', type=FiniteFloat(min=0), default=0, show_default=True),
        click.option('--S_min', 'S_min', help='Stochasticity: lowest noise level', metavar='FLOAT', type=FiniteFloat(min=0), default=0, show_default=True),
        click.option('--S_max', 'S_max', help='Stochasticity: highest noise level', metavar='FLOAT', type=FiniteFloat(min=0, allow_inf=True), default='inf', show_default=True),
        click.option('--S_noise', 'S_noise', help='Stochasticity: noise inflation', metavar='FLOAT', type=FiniteFloat(), default=1, show_default=True),
        click.option('--solver', help='Ablation: ODE solver', type=click.Choice(SOLVERS)),
        click.option('--disc', 'discretization', help='Ablation: time step discretization', type=click.Choice(DISCRETIZATIONS)),
        click.option('--schedule', help='Ablation: noise schedule sigma(t)', type=click.Choice(SCHEDULES)),
        click.option('--scaling', help='Ablation: signal scaling s(t)', type=click.Choice(SCALINGS)),
    ]
    for option in reversed(options):
        func = option(func)
    return func

#----------------------------------------------------------------------------
# fid.py calc and memorization.py take images already made (--images) or make
# them (--network); the sampler options apply only to the latter, so one given
# with --images would be silently ignored.

def refuse_sampler_options_with_images(image_path: str | None, sampler_kwargs: dict) -> None:
    ignored = given_options(list(sampler_kwargs)) if image_path is not None else []
    if ignored:
        raise UserError(f'{ignored[0]} needs --network; the sampler options do not apply to --images')

#----------------------------------------------------------------------------
