"""Train a diffusion model (EDM's recipe) on one or several datasets.

The options, defaults and output files are those of EDM's train.py; see `python train.py --help`.
Beyond EDM: `--data` may be repeated (the union of the datasets), `--device`, `--bf16`,
`--lr-rampup`, `--ema-rampup`, `--fast`; `--noisy` and its options train Online SFBD
(sfbd/online.py); runs resume from self-contained training states, and from EDM's training states
read as data (training/resume.py); and a preemption signal stops a run cleanly with exit status
PREEMPTED_EXIT_CODE.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import sys
import traceback
import warnings
from typing import Any, TextIO

import click
import torch
from click.core import ParameterSource

import dnnlib
from dnnlib.cli import FiniteFloat, IntList
from dnnlib.outputs import check_apart, check_distinct, check_output_dir, create_exclusive, path_relation
from dnnlib.util import UserError, atomic_write, report_user_errors
from sfbd.backward import MODES
from sfbd.online import BUFFER_DTYPES, REFRESH_NETS
from torch_utils import distributed as dist
from torch_utils import misc
from training import resume, training_loop
from training.augment import AUGMENT_DIM, AUGMENTATIONS
from tools.train_setup import (ARCHITECTURES, CLAIM_FNAME, PRECONDITIONINGS, RUN_MARKERS, SCHEDULE_PARAMS, RunClaim,
                               check_network_options, check_resume, from_rank0, is_old_default_online, next_run_dir,
                               online_options, plan_online, refresh_defaulted, resume_seed, run_to_continue)

# train.py's rules live in tools/train_setup.py; the names above stay importable from train.py
# (CLAIM_FNAME, is_old_default_online, ARCHITECTURES, ...) for existing users.

# Exit status after SIGTERM or SIGUSR1: the run wrote a snapshot and a training
# state and stopped; rerunning the same command continues it (EX_TEMPFAIL of
# sysexits.h, "try again later"). A SLURM script can requeue on this status.
PREEMPTED_EXIT_CODE = 75

warnings.filterwarnings('ignore', 'Grad strides do not match bucket view strides')  # Harmless DDP notice.

#----------------------------------------------------------------------------
# log.txt: a copy of stdout and stderr. Until the run directory exists the copy
# stays in memory, so that a run failing at start-up leaves no directory
# behind, yet the log begins with the first line printed.

class _LogTee:
    def __init__(self):
        self._pending: io.StringIO | None = io.StringIO()
        self._file: TextIO | None = None
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _TeeStream(sys.stdout, self)
        sys.stderr = _TeeStream(sys.stderr, self)

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()
        elif self._pending is not None:
            self._pending.write(text)

    def write_log_only(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._file.flush()

    def open(self, path: str) -> None:
        self._file = open(path, 'a', encoding='utf-8')
        self._file.write(self._pending.getvalue())
        self._file.flush()
        self._pending = None

    def close(self) -> None:
        sys.stdout, sys.stderr = self._saved
        if self._file is not None:
            self._file.close()
            self._file = None

class _TeeStream:
    def __init__(self, stream: TextIO, tee: _LogTee):
        self._stream = stream
        self._tee = tee

    def write(self, text: str) -> int:
        self._stream.write(text)
        self._tee.write(text)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

#----------------------------------------------------------------------------
# Preemption: SIGTERM (SLURM, Kubernetes) or SIGUSR1 (`sbatch --signal`) sets
# a flag that the training loop polls after every step.

class _StopRequest:
    """Context manager: while active, SIGTERM and SIGUSR1 set a flag (calling the object reads it)."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> '_StopRequest':
        for sig in (signal.SIGTERM, getattr(signal, 'SIGUSR1', None)):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

#----------------------------------------------------------------------------

@click.command()

# Main options.
@click.option('--outdir',        help='Parent directory of the run directories', metavar='DIR',                    type=str, required=True)
@click.option('--data',          help='Dataset zip or directory; repeat for the union of several', metavar='ZIP|DIR', type=str, required=True, multiple=True)
@click.option('--cond',          help='Condition the model on the dataset labels', metavar='BOOL',                 type=bool, default=False, show_default=True)
@click.option('--arch',          help='Network architecture', metavar='ddpmpp|ncsnpp|adm',                         type=click.Choice(['ddpmpp', 'ncsnpp', 'adm']), default='ddpmpp', show_default=True)
@click.option('--precond',       help='Preconditioning and loss', metavar='vp|ve|edm',                             type=click.Choice(['vp', 've', 'edm']), default='edm', show_default=True)

# Hyperparameters.
@click.option('--duration',      help='Training length in millions of images', metavar='MIMG',                    type=FiniteFloat(min=0, min_open=True), default=200, show_default=True)
@click.option('--batch',         help='Images per optimizer step, all processes together', metavar='INT',         type=click.IntRange(min=1), default=512, show_default=True)
@click.option('--batch-gpu',     help='Most images per pass on one device (accumulate beyond)', metavar='INT',    type=click.IntRange(min=1))
@click.option('--cbase',         help='Base channel count  [default: varies]', metavar='INT',                      type=click.IntRange(min=1))
@click.option('--cres',          help='Channel multiplier per resolution  [default: varies]', metavar='LIST',      type=IntList())
@click.option('--lr',            help='Adam learning rate', metavar='FLOAT',                                       type=FiniteFloat(min=0, min_open=True), default=10e-4, show_default=True)
@click.option('--lr-rampup',     help='Learning-rate warm-up length; 0 = none', metavar='KIMG',                   type=FiniteFloat(min=0), default=10000, show_default=True)
@click.option('--ema',           help='Half-life of the weight average', metavar='MIMG',                          type=FiniteFloat(min=0), default=0.5, show_default=True)
@click.option('--ema-rampup',    help='Cap the EMA half-life at this fraction of the images seen; 0 = no cap  [default: 0.05, none with --transfer]', metavar='RATIO', type=FiniteFloat(min=0))
@click.option('--dropout',       help='Dropout rate', metavar='FLOAT',                                             type=FiniteFloat(min=0, max=1), default=0.13, show_default=True)
@click.option('--augment',       help='Augmentation probability; 0 = no augmentation', metavar='FLOAT',           type=FiniteFloat(min=0, max=1), default=0.12, show_default=True)
@click.option('--xflip',         help='Add mirrored copies of the images to the dataset', metavar='BOOL',         type=bool, default=False, show_default=True)

# Performance-related.
@click.option('--fp16',          help='Run the network in float16 (CUDA)', metavar='BOOL',                        type=bool, default=False, show_default=True)
@click.option('--bf16',          help='Run the network in bfloat16', metavar='BOOL',                              type=bool, default=False, show_default=True)
@click.option('--ls',            help='Loss scale factor', metavar='FLOAT',                                        type=FiniteFloat(min=0, min_open=True), default=1, show_default=True)
@click.option('--bench',         help='Let cuDNN time and pick its kernels', metavar='BOOL',                      type=bool, default=True, show_default=True)
@click.option('--cache',         help='Keep decoded images in memory', metavar='BOOL',                            type=bool, default=True, show_default=True)
@click.option('--workers',       help='Data-loading processes per training process', metavar='INT',               type=click.IntRange(min=1), default=1, show_default=True)
@click.option('--device',        help='Training device  [default: cuda if available, else cpu]', metavar='STR',   type=str)
@click.option('--fast',          help='Fast path: bf16, channels-last, torch.compile, TF32, fused Adam where they help (docs/performance.md)', is_flag=True)

# I/O-related.
@click.option('--desc',          help='Suffix of the run directory name', metavar='STR',                          type=str)
@click.option('--nosubdir',      help='Use --outdir itself as the run directory',                                 is_flag=True)
@click.option('--new-run',       help='Start a new run directory, even where --outdir holds an unfinished run of these options', is_flag=True)
@click.option('--tick',          help='Progress line interval', metavar='KIMG',                                   type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--snap',          help='Network snapshot interval', metavar='TICKS',                               type=click.IntRange(min=1), default=50, show_default=True)
@click.option('--dump',          help='Training state interval', metavar='TICKS',                                 type=click.IntRange(min=1), default=500, show_default=True)
@click.option('--seed',          help='Random seed  [default: random]', metavar='INT',                            type=click.IntRange(min=0))
@click.option('--transfer',      help='Initialise network and EMA from a network pickle (the tensors that fit)', metavar='PKL|URL', type=str)
@click.option('--resume',        help='Continue from a training state (this project\'s or EDM\'s), or the newest one in a run directory', metavar='PT|DIR', type=str)
@click.option('--allow-noisy',   help='Take observation sets (noisy images) as training data, as they are',        is_flag=True)
@click.option('--allow-data-change', help='Continue a run (--resume, --nosubdir rerun) on other data than it began with', is_flag=True)

# Online SFBD (docs/sfbd.md): clean --data plus noisy observations, denoised as training goes.
@click.option('--noisy',         help='Observation set for Online SFBD; repeat for several', metavar='ZIP|DIR',  type=str, multiple=True)
@click.option('--refresh-every', help='Optimizer steps between refreshes of the denoised buffer  [default: 20]', metavar='INT', type=click.IntRange(min=1))
@click.option('--refresh-batch', help='Observations denoised again per refresh  [default: set by --refresh-passes]', metavar='INT', type=click.IntRange(min=1))
@click.option('--refresh-passes', help='Refresh passes over the observations in the whole run; sets --refresh-batch  [default: 2]', metavar='FLOAT', type=FiniteFloat(min=0, min_open=True))
@click.option('--online-rampup', help='Loss weight of denoised images ramps 0 -> 1 over this  [default: one refresh pass]', metavar='KIMG', type=click.FloatRange(min=0))
@click.option('--mode',          help='Backward sampler of the refreshes  [default: ode]',                      type=click.Choice(MODES))
@click.option('--steps',         help='Steps of the denoising grid, as denoise.py --steps  [default: 18]', metavar='INT', type=click.IntRange(min=1))
@click.option('--refresh-net',   help='Network that denoises: the weight average or the raw network  [default: ema]', type=click.Choice(REFRESH_NETS))
@click.option('--buffer-dtype',  help='Precision of the denoised buffer: 8 bits as denoise.py\'s PNGs, or float  [default: uint8]', type=click.Choice(list(BUFFER_DTYPES)))
@click.option('-n', '--dry-run', help='Show the options and exit',                                                is_flag=True)

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
    SIGTERM or SIGUSR1 the run finishes its step, writes a snapshot and a training
    state, and exits with status 75.
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
    (as EDM does, e.g. all but the label embedding of a network with another
    number of classes) and lists those left at their initial values. It restarts
    the kimg count, the learning-rate warm-up and the optimizer, and has no EMA
    ramp-up unless --ema-rampup is given.
    """
    tee = _LogTee() if dist.get_rank() == 0 else None
    ctx = click.get_current_context()
    explicit = {key for key, name in SCHEDULE_PARAMS.items()
                if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)}
    claim = RunClaim()
    try:
        status = _train(dnnlib.EasyDict(kwargs), tee, explicit, claim)
    except BaseException as e:
        # Errors go to log.txt too (when it exists); the terminal gets them from click or Python.
        if tee is not None and not isinstance(e, SystemExit):
            tee.write_log_only(f'Error: {e}\n' if isinstance(e, UserError) else traceback.format_exc())
        raise
    finally:
        claim.release()
        if tee is not None:
            tee.close()
    dist.deinit()
    if status == training_loop.PREEMPTED:
        sys.exit(PREEMPTED_EXIT_CODE)

def _train(opts: dnnlib.EasyDict, tee: _LogTee | None, explicit: set[str] = frozenset(),
           claim: RunClaim | None = None) -> str | None:
    # Options that can be checked before anything is loaded.
    claim = claim if claim is not None else RunClaim()
    if opts.fp16 and opts.bf16:
        raise UserError('--fp16 and --bf16 cannot be used together')
    if opts.new_run and opts.nosubdir:
        raise UserError('--new-run and --nosubdir cannot be used together: --nosubdir continues the run in --outdir')
    if opts.transfer is not None and opts.resume is not None:
        raise UserError('--transfer and --resume cannot be used together')
    if opts.batch % dist.get_world_size() != 0:
        raise UserError(f'--batch={opts.batch} does not divide evenly between {dist.get_world_size()} processes')
    check_distinct([(path, '--data') for path in opts.data] + [(path, '--noisy') for path in opts.noisy])
    device = dist.resolve_device(opts.device)

    # Configuration: plain data, written to training_options.json.
    c = dnnlib.EasyDict()
    if len(opts.data) == 1:
        c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.ImageFolderDataset', path=opts.data[0])
    else:
        parts = [dict(class_name='training.dataset.ImageFolderDataset', path=path) for path in opts.data]
        c.dataset_kwargs = dnnlib.EasyDict(class_name='training.dataset.UnionDataset', datasets=parts)
    c.dataset_kwargs.update(use_labels=opts.cond, xflip=opts.xflip, cache=opts.cache)
    c.data_loader_kwargs = dnnlib.EasyDict(pin_memory=(device.type == 'cuda'), num_workers=opts.workers,
                                           prefetch_factor=2, multiprocessing_context='spawn')
    c.optimizer_kwargs = dnnlib.EasyDict(class_name='torch.optim.Adam', lr=opts.lr, betas=[0.9, 0.999], eps=1e-8)
    c.online_kwargs = online_options(opts)

    # Dataset: open it once to check it (files, sizes, labels for --cond) and
    # to record its name, size and resolution.
    dataset_obj = misc.construct_class_by_name(**c.dataset_kwargs)
    dataset_name = dataset_obj.name
    parts = dataset_obj.parts if len(opts.data) > 1 else [dataset_obj]
    for path, part in zip(opts.data, parts):
        if part.sigma_text and not opts.allow_noisy:
            raise UserError(f'--data={path}: is an observation set (noisy images, sigma {part.sigma_text} in dataset.json), '
                            'not clean or denoised images; give it as --noisy for Online SFBD, or add --allow-noisy to train '
                            'on the observations as they are')
    c.dataset_kwargs.max_size = len(dataset_obj) // (2 if opts.xflip else 1)
    dataset_resolution, dataset_channels, dataset_label_dim = dataset_obj.resolution, dataset_obj.num_channels, dataset_obj.label_dim
    if len(opts.data) == 1:
        c.dataset_kwargs.resolution = dataset_obj.resolution
    else:
        for part in c.dataset_kwargs.datasets:
            part['resolution'] = dataset_obj.resolution
    del dataset_obj

    # Network: architecture, preconditioning and loss, size and augmentation.
    precond_class, loss_class = PRECONDITIONINGS[opts.precond]
    c.network_kwargs = dnnlib.EasyDict(ARCHITECTURES[opts.arch], class_name=f'training.networks.{precond_class}')
    c.loss_kwargs = dnnlib.EasyDict(class_name=f'training.loss.{loss_class}')
    if opts.cres is not None and (not opts.cres or min(opts.cres) < 1):
        raise UserError(f'--cres must list positive channel multipliers, got {opts.cres}')
    sizes = dict(model_channels=opts.cbase, channel_mult=opts.cres)
    c.network_kwargs.update({key: value for key, value in sizes.items() if value is not None})
    if opts.augment > 0:
        c.augment_kwargs = dnnlib.EasyDict(class_name='training.augment.AugmentPipe', p=opts.augment, **AUGMENTATIONS)
        c.network_kwargs.update(augment_dim=AUGMENT_DIM)  # The labels the pipe emits.
    c.network_kwargs.update(dropout=opts.dropout, use_fp16=opts.fp16)
    if opts.bf16:
        c.network_kwargs.use_bf16 = True
    if opts.fp16 and device.type != 'cuda':
        dist.print0('Note: --fp16 only takes effect on CUDA; this run computes in float32.')

    # Training options.
    def whole(x: float) -> float:
        return int(x) if float(x).is_integer() else x
    c.total_kimg = whole(opts.duration * 1000)
    c.ema_halflife_kimg = whole(opts.ema * 1000)
    c.lr_rampup_kimg = whole(opts.lr_rampup)
    c.update(batch_size=opts.batch, batch_gpu=opts.batch_gpu, loss_scaling=opts.ls, cudnn_benchmark=opts.bench)
    c.update(kimg_per_tick=opts.tick, snapshot_ticks=opts.snap, state_dump_ticks=opts.dump)
    c.device = str(device)
    c.fast = opts.fast

    # Processes and seed: rank 0 draws one when --seed is not given.
    dist.init(device)
    if opts.seed is not None:
        c.seed = opts.seed
    else:
        seed = torch.tensor(secrets.randbelow(1 << 31) if dist.get_rank() == 0 else 0, device=device)
        c.seed = int(dist.broadcast(seed, src=0))
    online_notes = []
    if c.online_kwargs is not None:
        c.online_kwargs.seed = c.seed
        online_notes = plan_online(c, None, refresh_defaulted(opts))  # Before a rerun is matched: the same command plans the same.

    # Transfer learning and resuming. A rerun into a run directory holding
    # training states continues from the newest: --nosubdir's, or the newest
    # unfinished run of these options in --outdir (rank 0 chooses and claims it).
    c.resume_pkl = opts.transfer
    if opts.allow_data_change:
        c.allow_data_change = True
    if opts.ema_rampup is not None:
        c.ema_rampup_ratio = opts.ema_rampup or None
    else:
        c.ema_rampup_ratio = None if opts.transfer is not None else 0.05
    resume_note = None
    continue_dir = opts.outdir if opts.nosubdir else None
    if not opts.nosubdir and opts.resume is None and not opts.new_run:
        chosen = (None, None)
        if dist.get_rank() == 0:
            try:
                chosen = run_to_continue(opts.outdir, c, opts.seed is not None, claim, refresh_defaulted(opts))
            except UserError as e:
                chosen = (None, e)
        continue_dir, line = from_rank0(chosen)
        if isinstance(line, UserError):
            raise line
        if line is not None:
            dist.print0(line)
    if opts.resume is not None:
        if os.path.isdir(opts.resume):
            c.resume_state_dump = training_loop.find_latest_state(opts.resume)
            if c.resume_state_dump is None:
                raise UserError(f'--resume: {opts.resume} holds no training-state-*.pt')
        elif os.path.isfile(opts.resume):
            training_loop.check_state_file(opts.resume)
            c.resume_state_dump = opts.resume
        else:
            raise UserError(f'--resume: {opts.resume}: no such file or directory')
        resume_note = f'Resuming from "{c.resume_state_dump}".'
    elif continue_dir is not None and (latest := training_loop.find_latest_state(continue_dir)) is not None:
        c.resume_state_dump = latest
        c.resume_from_run_dir = True
        resume_note = f'Resuming from the newest training state in the run directory: "{latest}".'

    # A resumed run keeps the network and schedule it was trained with.
    where = f'--resume={opts.resume}' if opts.resume is not None else f'--outdir={continue_dir} (its newest training state)'
    resume_notes = check_resume(c, explicit, where) if c.get('resume_state_dump') is not None else []
    if c.get('resume_state_dump') is not None:
        resume_notes += resume_seed(c, opts.seed, where)
        if c.online_kwargs is not None:
            online_notes = plan_online(c, resume.run_options_beside(c.resume_state_dump), refresh_defaulted(opts))

    # Run directory name.
    cond_str = 'cond' if opts.cond else 'uncond'
    dtype_str = 'fp16' if opts.fp16 else 'bf16' if opts.bf16 else 'fp32'
    desc = f'{dataset_name}-{cond_str}-{opts.arch}-{opts.precond}-gpus{dist.get_world_size()}-batch{opts.batch}-{dtype_str}'
    if opts.noisy:
        desc += '-online'
    if opts.desc is not None:
        if not opts.desc or os.sep in opts.desc or (os.altsep and os.altsep in opts.desc) or opts.desc in ('.', '..'):
            raise UserError(f'--desc={opts.desc}: must be a plain name (it ends the run directory\'s name)')
        desc += f'-{opts.desc}'
    if continue_dir is not None:
        c.run_dir = continue_dir
    else:
        c.run_dir = next_run_dir(opts.outdir, desc) if dist.get_rank() == 0 else None

    # The run writes apart from its inputs (continuing a run in its own directory is not writing
    # into an input), into a directory that is new, empty or train.py's own.
    if dist.get_rank() == 0:
        inputs = [(path, '--data') for path in opts.data] + [(path, '--noisy') for path in opts.noisy]
        inputs.append((opts.transfer, '--transfer'))
        if opts.resume is not None and path_relation(opts.resume, c.run_dir) not in ('is', 'is inside'):
            inputs.append((opts.resume, '--resume'))
        check_apart([(c.run_dir, '--outdir')], inputs)
        check_output_dir(opts.outdir, '--outdir', 'train.py' if opts.nosubdir else None, RUN_MARKERS)
        if not opts.nosubdir and os.path.isfile(os.path.join(opts.outdir, 'dataset.json')):
            raise UserError(f'--outdir={opts.outdir}: holds a dataset (dataset.json); run directories go elsewhere')

    check_network_options(c.network_kwargs, dataset_resolution, dataset_channels, dataset_label_dim,
                          f'--arch={opts.arch} --cbase={c.network_kwargs.model_channels} '
                          f'--cres={",".join(map(str, c.network_kwargs.channel_mult))}')

    # Show the options.
    dist.print0()
    dist.print0('Training options:')
    dist.print0(json.dumps(c, indent=2))
    dist.print0()
    summary = [('Output directory', c.run_dir), ('Dataset path', ', '.join(opts.data))]
    if opts.noisy:
        summary.append(('Observations (online)', ', '.join(opts.noisy)))
    summary += [('Class-conditional', opts.cond),
               ('Network architecture', opts.arch), ('Preconditioning & loss', opts.precond),
               ('Number of processes', dist.get_world_size()), ('Device', device), ('Batch size', opts.batch),
               ('Mixed-precision', dtype_str if dtype_str != 'fp32' else False), ('Fast path', opts.fast)]
    for label, value in summary:
        dist.print0(f'{label + ":":<25}{value}')
    if resume_note:
        dist.print0(resume_note)
    for note in resume_notes + online_notes:
        dist.print0(note)
    dist.print0()
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return None

    # The run directory is created only once the training loop has checked
    # everything, so that a failed start leaves nothing behind.
    def start_run() -> None:
        if dist.get_rank() != 0:
            return
        dist.print0('Creating output directory...')
        options_path = os.path.join(c.run_dir, 'training_options.json')
        if continue_dir is None:
            os.makedirs(opts.outdir, exist_ok=True)
            try:
                os.mkdir(c.run_dir)  # Atomic: of two runs starting at once, one gets the directory.
            except FileExistsError:
                raise UserError(f'{c.run_dir} already exists; is another run starting in --outdir?') from None
            claim.take(c.run_dir)  # Before its options: a run with options is always claimed while it trains.
        else:
            os.makedirs(c.run_dir, exist_ok=True)
        fresh = not os.path.exists(options_path) and training_loop.find_latest_state(c.run_dir) is None
        if fresh and not create_exclusive(options_path, c):
            raise UserError(f'--outdir={c.run_dir}: another train.py started in this directory at the same time')
        if not fresh:
            with atomic_write(options_path, 'wt') as f:
                json.dump(c, f, indent=2)
        if tee is not None:
            tee.open(os.path.join(c.run_dir, 'log.txt'))

    # Train.
    with _StopRequest() as stop_requested:
        loop_kwargs = {key: value for key, value in c.items() if key != 'online_plan'}  # The loop plans for itself.
        return training_loop.training_loop(**loop_kwargs, stop_requested=stop_requested, start_run=start_run)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
