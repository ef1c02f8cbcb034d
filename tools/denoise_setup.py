"""denoise.py's option table, shared: the click options of denoise.py as one decorator, and the parsing of
denoise.py's arguments in-process (sfbd.rounds checks --denoise-args with it before any step runs).

Options only: what a run does with them is sfbd.denoise_set.denoise_command; the command line is
denoise.py.
"""

from __future__ import annotations

from typing import Callable, Sequence

import click

from dnnlib.cli import FiniteFloat, parse_tool_args
from dnnlib.util import UserError
from sfbd.backward import MODES
from sfbd.denoise_set import DEFAULT_BATCH, parse_shard
from tools.options import sampler_options

# Options that sfbd.rounds sets itself for each denoising step.
SET_BY_ROUNDS = ('network_pkl', 'data', 'outdir', 'shard', 'finalize')

#----------------------------------------------------------------------------
# --shard=I/N as (I, N).

def _shard_option(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    try:
        return parse_shard(value)
    except UserError as e:
        raise click.BadParameter(str(e)) from None

#----------------------------------------------------------------------------
# The options of denoise.py, the sampler's included, in --help's order.

def denoise_options(func: Callable) -> Callable:
    options = [
        click.option('--network', 'network_pkl',  help='Network pickle (this project\'s or EDM\'s)', metavar='PATH|URL',  type=str, required=True),
        click.option('--data',                    help='Observation set (docs/observations.md)', metavar='ZIP|DIR',      type=str, required=True),
        click.option('--outdir',                  help='Where to save the denoised images', metavar='DIR',              type=str, required=True),
        click.option('--sigma',                   help='Noise level of all observations  [default: the set\'s own, one or per image]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True)),
        click.option('--force-sigma',             help='Allow a --sigma that differs from the set\'s own level(s)',    is_flag=True),
        click.option('--mode',                    help='Backward sampler: probability-flow ODE or reverse SDE',         type=click.Choice(MODES), default='ode', show_default=True),
        click.option('--seed',                    help='Seed of the per-image noise (SDE, churn)', metavar='INT',       type=click.IntRange(min=0), default=0, show_default=True),
        click.option('--shard',                   help='Denoise only part I of N (0 <= I < N)', metavar='I/N',          type=str, callback=_shard_option, default='0/1', show_default=True),
        click.option('--batch', 'max_batch_size', help=f'Maximum batch size  [default: {DEFAULT_BATCH}; with --fast on a GPU, what fits]', metavar='INT', type=click.IntRange(min=1)),
        click.option('--device',                  help='Device  [default: cuda if available, else cpu]', metavar='STR', type=str, default=None),
        click.option('--fast',                    help='Fast path: the network in bf16, compiled, batches sized to the GPU, reading and writing overlapped (docs/performance.md)', is_flag=True),
        click.option('--grid',                    help='Also save a picture of [original |] observation | denoised for chosen images', metavar='PNG', type=str, default=None),
        click.option('--grid-count',              help='Images in the --grid picture, chosen anywhere in the set', metavar='INT', type=click.IntRange(min=1), default=32, show_default=True),
        click.option('--grid-seed',               help='Seed of the choice of --grid images', metavar='INT',            type=click.IntRange(min=0), default=0, show_default=True),
        click.option('--originals',               help='Source dataset of the split that made --data: adds the originals to --grid', metavar='ZIP|DIR', type=str, default=None),
        click.option('--finalize',                help='Denoise nothing; write dataset.json if all shards are done',    is_flag=True),
    ]
    func = sampler_options(func)
    for option in reversed(options):
        func = option(func)
    return func

#----------------------------------------------------------------------------
# denoise.py's arguments parsed as denoise.py parses them (the required paths
# stood in for), as keyword arguments by parameter name. An error, or an
# option that sfbd.rounds sets itself, is one line naming --denoise-args.

@click.command()
@denoise_options
def _parser(**_kwargs) -> None:
    pass

def parse_denoise_args(args: Sequence[str], option: str = '--denoise-args', setter: str = 'sfbd.rounds') -> dict:
    """The parameters denoise.py would get from `args`, with placeholders for --network, --outdir and --data."""
    return parse_tool_args(_parser, 'denoise.py', args, option, ['--network=.', '--outdir=.', '--data=.'],
                           SET_BY_ROUNDS, setter).params

#----------------------------------------------------------------------------
