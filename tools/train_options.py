"""train.py's option table, shared: its click options as one decorator, the options a rerun treats as
explicitly given, and the parsing of train.py's arguments in-process (sfbd.rounds checks --train-args
and friends with it before any step runs).

Options only: what a run does with them is tools/train_run.py; the rules they feed are
tools/train_setup.py; the command line is train.py.
"""

from __future__ import annotations

from typing import Callable, Sequence

import click
from click.core import ParameterSource

from dnnlib.cli import FiniteFloat, IntList, parse_tool_args
from sfbd.backward import MODES
from sfbd.online import BUFFER_DTYPES, REFRESH_NETS
from tools.train_setup import SCHEDULE_PARAMS

#----------------------------------------------------------------------------
# The options of train.py, in --help's order: EDM's, then ours.

def train_options(func: Callable) -> Callable:
    options = [
        # Main options.
        click.option('--outdir',        help='Parent directory of the run directories', metavar='DIR',                    type=str, required=True),
        click.option('--data',          help='Dataset zip or directory; repeat for the union of several', metavar='ZIP|DIR', type=str, required=True, multiple=True),
        click.option('--cond',          help='Condition the model on the dataset labels', metavar='BOOL',                 type=bool, default=False, show_default=True),
        click.option('--arch',          help='Network architecture', metavar='ddpmpp|ncsnpp|adm',                         type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True),
        click.option('--precond',       help='Preconditioning and loss', metavar='vp|ve|edm',                             type=click.Choice(['vp', 've', 'edm']), default='edm', show_default=True),

        # Hyperparameters.
        click.option('--duration',      help='Training length in millions of images', metavar='MIMG',                    type=FiniteFloat(min=0, min_open=True), default=200, show_default=True),
        click.option('--batch',         help='Images per optimizer step, all processes together', metavar='INT',         type=click.IntRange(min=1), default=512, show_default=True),
        click.option('--batch-gpu',     help='Most images per pass on one device (accumulate beyond)', metavar='INT',    type=click.IntRange(min=1)),
        click.option('--cbase',         help='Base channel count  [default: varies]', metavar='INT',                      type=click.IntRange(min=1)),
        click.option('--cres',          help='Channel multiplier per resolution  [default: varies]', metavar='LIST',      type=IntList()),
        click.option('--lr',            help='Adam learning rate', metavar='FLOAT',                                       type=FiniteFloat(min=0, min_open=True, max=1), default=10e-4, show_default=True),
        click.option('--lr-rampup',     help='Learning-rate warm-up length; 0 = none', metavar='KIMG',                   type=FiniteFloat(min=0), default=10000, show_default=True),
        click.option('--ema',           help='Half-life of the weight average', metavar='MIMG',                          type=FiniteFloat(min=0), default=0.5, show_default=True),
        click.option('--ema-rampup',    help='Cap the EMA half-life at this fraction of the images seen; 0 = no cap  [default: 0.05, none with --transfer]', metavar='RATIO', type=FiniteFloat(min=0)),
        click.option('--dropout',       help='Dropout rate', metavar='FLOAT',                                             type=FiniteFloat(min=0, max=1), default=0.13, show_default=True),
        click.option('--augment',       help='Augmentation probability; 0 = no augmentation', metavar='FLOAT',           type=FiniteFloat(min=0, max=1), default=0.12, show_default=True),
        click.option('--xflip',         help='Add mirrored copies of the images to the dataset', metavar='BOOL',         type=bool, default=False, show_default=True),

        # Performance-related.
        click.option('--fp16',          help='Run the network in float16 (CUDA)', metavar='BOOL',                        type=bool, default=False, show_default=True),
        click.option('--bf16',          help='Run the network in bfloat16', metavar='BOOL',                              type=bool, default=False, show_default=True),
        click.option('--ls',            help='Loss scale factor', metavar='FLOAT',                                        type=FiniteFloat(min=0, min_open=True), default=1, show_default=True),
        click.option('--bench',         help='Let cuDNN time and pick its kernels', metavar='BOOL',                      type=bool, default=True, show_default=True),
        click.option('--cache',         help='Keep decoded images in memory', metavar='BOOL',                            type=bool, default=True, show_default=True),
        click.option('--workers',       help='Data-loading processes per training process', metavar='INT',               type=click.IntRange(min=1), default=1, show_default=True),
        click.option('--device',        help='Training device  [default: cuda if available, else cpu]', metavar='STR',   type=str),
        click.option('--fast',          help='Fast path: bf16, channels-last, torch.compile, TF32, fused Adam where they help (docs/performance.md)', is_flag=True),

        # I/O-related.
        click.option('--desc',          help='Suffix of the run directory name', metavar='STR',                          type=str),
        click.option('--nosubdir',      help='Use --outdir itself as the run directory',                                 is_flag=True),
        click.option('--new-run',       help='Start a new run directory, even where --outdir holds an unfinished run of these options', is_flag=True),
        click.option('--tick',          help='Progress line interval', metavar='KIMG',                                   type=click.IntRange(min=1), default=50, show_default=True),
        click.option('--snap',          help='Network snapshot interval', metavar='TICKS',                               type=click.IntRange(min=1), default=50, show_default=True),
        click.option('--dump',          help='Training state interval', metavar='TICKS',                                 type=click.IntRange(min=1), default=500, show_default=True),
        click.option('--seed',          help='Random seed  [default: random]', metavar='INT',                            type=click.IntRange(min=0, max=2**64 - 1)),
        click.option('--transfer',      help='Initialise network and EMA from a network pickle (the tensors that fit)', metavar='PKL|URL', type=str),
        click.option('--resume',        help='Continue from a training state (this project\'s or EDM\'s), or the newest one in a run directory', metavar='PT|DIR', type=str),
        click.option('--allow-noisy',   help='Take observation sets (noisy images) as training data, as they are',        is_flag=True),
        click.option('--allow-data-change', help='Continue a run (--resume, --nosubdir rerun) on other data than it began with', is_flag=True),

        # Online SFBD (docs/sfbd.md): clean --data plus noisy observations, denoised as training goes.
        click.option('--noisy',         help='Observation set for Online SFBD; repeat for several', metavar='ZIP|DIR',  type=str, multiple=True),
        click.option('--refresh-every', help='Optimizer steps between refreshes of the denoised buffer  [default: 20]', metavar='INT', type=click.IntRange(min=1)),
        click.option('--refresh-batch', help='Observations denoised again per refresh  [default: set by --refresh-passes]', metavar='INT', type=click.IntRange(min=1)),
        click.option('--refresh-passes', help='Refresh passes over the observations in the whole run; sets --refresh-batch  [default: 2]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True)),
        click.option('--online-rampup', help='Loss weight of denoised images ramps 0 -> 1 over this  [default: one refresh pass]', metavar='KIMG', type=FiniteFloat(min=0)),
        click.option('--mode',          help='Backward sampler of the refreshes  [default: ode]',                      type=click.Choice(MODES)),
        click.option('--steps',         help='Steps of the denoising grid, as denoise.py --steps  [default: 18]', metavar='INT', type=click.IntRange(min=1)),
        click.option('--refresh-net',   help='Network that denoises: the weight average or the raw network  [default: ema]', type=click.Choice(REFRESH_NETS)),
        click.option('--buffer-dtype',  help='Precision of the denoised buffer: 8 bits as denoise.py\'s PNGs, or float  [default: uint8]', type=click.Choice(list(BUFFER_DTYPES))),
        click.option('-n', '--dry-run', help='Show the options and exit',                                                is_flag=True),
    ]
    for option in reversed(options):
        func = option(func)
    return func

#----------------------------------------------------------------------------
# The schedule options given on the command line (not defaulted): a resumed
# run keeps its recorded --lr, --lr-rampup, --ema and --ema-rampup unless one
# is given explicitly (tools/train_setup.check_resume).

def explicit_schedule(ctx: click.Context) -> set[str]:
    return {key for key, name in SCHEDULE_PARAMS.items()
            if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}

#----------------------------------------------------------------------------
# train.py's arguments parsed as train.py parses them (--outdir and --data
# stood in for where `args` lacks them), as keyword arguments by parameter
# name, with the explicitly given schedule options. An error, or an option
# in `set_here` (those the caller sets itself), is one line naming `option`.

@click.command()
@train_options
def _parser(**_kwargs) -> None:
    pass

def parse_train_command(args: Sequence[str]) -> tuple[dict, set[str]]:
    """train.py's parameters from a whole command line (click's error on bad input), and the schedule
    options given explicitly."""
    ctx = _parser.make_context('train.py', list(args), resilient_parsing=False)
    return ctx.params, explicit_schedule(ctx)

def parse_train_args(args: Sequence[str], option: str, set_here: Sequence[str] = (),
                     required: Sequence[str] = ('--outdir=.', '--data=.'), setter: str = 'sfbd.rounds') -> dict:
    """The parameters train.py would get from `required` + `args`; an error is one line naming `option`."""
    return parse_tool_args(_parser, 'train.py', args, option, required, set_here, setter).params

#----------------------------------------------------------------------------
