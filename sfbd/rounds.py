"""SFBD's update rounds on one machine, the command line: `python -m sfbd.rounds`.

Pretraining on the clean images, then K rounds of backward sampling (denoise.py) and denoiser update
(train.py --transfer), or with --online one Online SFBD run. What the rounds do, their directories and
their record are tools/rounds.py's; the recipe is in docs/sfbd.md. This module is the click table
and one call.
"""

from __future__ import annotations

import click

from dnnlib.cli import FiniteFloat, ShellWords
from dnnlib.util import report_user_errors
from sfbd.presets import PRESETS
from tools.rounds import rounds_command

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir',             help='Where the rounds live (created; reruns continue)', metavar='DIR',      type=str, required=True)
@click.option('--clean',              help='Clean images (an EDM dataset)', metavar='ZIP|DIR',                    type=str, required=True)
@click.option('--noisy',              help='Noisy observations (docs/observations.md)', metavar='ZIP|DIR',        type=str, required=True)
@click.option('--rounds', 'num_rounds', help='Number of SFBD rounds after pretraining (not with --online)', metavar='INT', type=click.IntRange(min=0))
@click.option('--pretrain-duration',  help='Pretraining length in millions of images', metavar='MIMG',            type=FiniteFloat(min=0, min_open=True), required=True)
@click.option('--round-duration',     help='Length of each update round in millions of images', metavar='MIMG',   type=FiniteFloat(min=0, min_open=True))
@click.option('--online',             help='Online SFBD after pretraining: one run instead of the rounds',        is_flag=True)
@click.option('--online-duration',    help='Length of the online run in millions of images (with --online)', metavar='MIMG', type=FiniteFloat(min=0, min_open=True))
@click.option('--online-args',        help='More train.py options for the online run, e.g. "--refresh-passes=3"', metavar='STR', type=ShellWords(), default='', show_default=True)
@click.option('--preset',             help='Hyperparameters of a published run for every step (python -m sfbd.presets)', type=click.Choice([*PRESETS, 'none']), default='none', show_default=True)
@click.option('--train-args',         help='More train.py options for every run, e.g. "--arch=ncsnpp --batch=256"', metavar='STR', type=ShellWords(), default='', show_default=True)
@click.option('--round-args',         help='More train.py options for the update rounds only', metavar='STR',     type=ShellWords(), default='', show_default=True)
@click.option('--denoise-args',       help='More denoise.py options, e.g. "--steps=40 --batch=256"', metavar='STR', type=ShellWords(), default='', show_default=True)
@click.option('--nproc',              help='Processes per step (torchrun); 1 = plain python', metavar='INT',      type=click.IntRange(min=1), default=1, show_default=True)
@report_user_errors
def main(outdir: str, clean: str, noisy: str, num_rounds: int | None, pretrain_duration: float, round_duration: float | None,
         online: bool, online_duration: float | None, online_args: list[str], preset: str, train_args: list[str],
         round_args: list[str], denoise_args: list[str], nproc: int) -> None:
    """Run SFBD: pretrain on clean images, then alternate denoising the noisy
    observations and fine-tuning on clean + denoised images (or, with --online,
    one training run that denoises as it goes).

    \b
    Example (CIFAR-10, 4% clean, sigma 0.59, 8 GPUs):
    python -m sfbd.rounds --outdir=runs/sfbd-cifar10 --clean=clean.zip --noisy=noisy.zip \\
        --rounds=4 --pretrain-duration=200 --round-duration=20 --nproc=8 --preset=cifar10

    \b
    Each round is a --transfer of the previous snapshot, as in the SFBD release:
    the kimg count, EDM's 10 Mimg learning-rate warm-up and the optimizer start
    afresh. Options that deviate from the release go in --round-args, e.g.
    --round-args="--lr-rampup=0" (no warm-up; see docs/sfbd.md for why one might).
    The --preset options come before --train-args and --denoise-args, which win.

    \b
    Online SFBD after the same pretraining:
    python -m sfbd.rounds --online --outdir=runs/online-cifar10 --clean=clean.zip --noisy=noisy.zip \\
        --pretrain-duration=200 --online-duration=80 --nproc=8 --preset=cifar10

    \b
    Rerunning the same command continues an interrupted run; a larger --rounds
    adds rounds to a finished one.
    """
    rounds_command(outdir, clean, noisy, num_rounds, pretrain_duration, round_duration, online, online_duration,
                   online_args, preset, train_args, round_args, denoise_args, nproc)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
