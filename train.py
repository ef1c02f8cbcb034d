"""Train a diffusion model (EDM's recipe) on one or several datasets.

The options, defaults and output files are those of EDM's train.py; see `python train.py --help`.
Beyond EDM: `--data` may be repeated (the union of the datasets), `--device`, `--bf16`,
`--lr-rampup`, `--ema-rampup`, `--fast`; `--noisy` and its options train Online SFBD
(sfbd/online.py); runs resume from self-contained training states, and from EDM's training states
read as data (training/resume.py); and a preemption signal stops a run cleanly with exit status
PREEMPTED_EXIT_CODE.

The command line only: its option table (tools/train_options.py) and one call of
tools.train_run.train_command, which runs the options to the end of the training loop.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import click

from dnnlib.util import report_user_errors
from tools.train_options import explicit_schedule, train_options
from tools.train_run import train_command
from torch_utils import distributed as dist
from training.training_loop import PREEMPTED

# Exit status after SIGTERM or SIGUSR1: the run wrote a snapshot and a training
# state and stopped; rerunning the same command continues it (EX_TEMPFAIL of
# sysexits.h, "try again later"). A SLURM script can requeue on this status.
PREEMPTED_EXIT_CODE = 75

warnings.filterwarnings('ignore', 'Grad strides do not match bucket view strides')  # Harmless DDP notice.

#----------------------------------------------------------------------------

@click.command()
@train_options
@report_user_errors
def main(**kwargs: Any) -> None:
    """Train a diffusion model with the recipe of "Elucidating the Design Space of
    Diffusion-Based Generative Models" (EDM).

    \b
    Examples:
    # DDPM++ on class-conditional CIFAR-10 with 8 GPUs
    torchrun --standalone --nproc_per_node=8 train.py --outdir=training-runs \\
        --data=datasets/cifar10-32x32.zip --cond=1 --arch=ddpmpp
    \b
    # Fine-tune a snapshot on clean plus denoised images (an SFBD round)
    python train.py --outdir=runs/round1 --data=clean.zip --data=denoised-round1 \\
        --transfer=runs/pretrain/network-snapshot-200000.pkl
    \b
    # Online SFBD: clean images plus observations, denoised again as training goes
    python train.py --outdir=runs/online --data=clean.zip --noisy=noisy.zip \\
        --transfer=runs/pretrain/network-snapshot-200000.pkl --lr-rampup=0
    \b
    A rerun of the same command continues the newest unfinished run of the same
    options in --outdir, and says so first (--new-run starts a new run instead);
    with --nosubdir it continues from the newest training state in --outdir. On
    SIGTERM, SIGUSR1 or a first Ctrl-C the run finishes its step, writes a snapshot
    and a training state, and exits with status 75 (a second Ctrl-C aborts at once).
    \b
    --resume also takes EDM's training-state-NNNNNN.pt (or its run directory): the
    weights and Adam's state come from it, the EMA from network-snapshot-NNNNNN.pkl
    beside it, the progress from its name; nothing stored in it runs. A resumed run
    needs the network of the run (architecture, preconditioning, sizes, labels,
    augmentation on/off; else an error) and announces other changed options. It
    keeps the run's --lr, --lr-rampup, --ema and --ema-rampup: one given explicitly
    with another value takes over from the first resumed step, and the log says so.
    It keeps the run's seed (data order, noise, Online SFBD's refreshes): a --seed
    of another value is refused.
    \b
    --transfer copies every tensor of the pickle that has the same name and shape
    (EDM copies by name and stops at a tensor of another shape; here, e.g., all
    but the label embedding of a network with another number of classes) and
    lists those left at their initial values. It restarts
    the kimg count, the learning-rate warm-up and the optimizer, and has no EMA
    ramp-up unless --ema-rampup is given.
    """
    status = train_command(kwargs, explicit_schedule(click.get_current_context()))
    dist.deinit()
    if status == PREEMPTED:
        sys.exit(PREEMPTED_EXIT_CODE)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
