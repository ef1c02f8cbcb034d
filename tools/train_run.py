"""One train.py run, from its parsed options to the training loop's return: the options turned into
the run's configuration (plain data, training_options.json), the seed, the resume and continue rules,
the run directory, the options shown, and the loop. Also the log copy (log.txt) and the preemption flag
of a run, and the in-process dry run that sfbd.rounds uses to check another step's options.

Not the option table (tools/train_options.py), not the rules themselves (tools/train_setup.py), not
the loop (training/training_loop.py); the command line is train.py.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import secrets
import signal
import sys
import traceback
from typing import Any, Callable, NamedTuple, Sequence, TextIO

import click
import torch

import dnnlib
from dnnlib.outputs import check_apart, check_distinct, check_output_dir, create_exclusive, path_relation
from dnnlib.util import (PEER_FAILURE_MESSAGE, UserError, atomic_write, construct_class_by_name, is_environment_error,
                         peer_failure, report_user_errors)
from torch_utils import distributed as dist
from training import resume, training_loop
from training.augment import AUGMENT_DIM, AUGMENTATIONS
from training.dataset import is_dataset_file
from tools.train_options import parse_train_command
from tools.train_setup import (ARCHITECTURES, PRECONDITIONINGS, RUN_MARKERS, RunClaim, check_network_options,
                               check_resume, from_rank0, holder_message, next_run_dir, online_options, plan_online, refresh_defaulted,
                               resume_seed, run_to_continue)

#----------------------------------------------------------------------------
# log.txt: a copy of stdout and stderr. Until the run directory exists the copy
# stays in memory, so that a run failing at start-up leaves no directory
# behind, yet the log begins with the first line printed. A log that can no
# longer be written (a full disk) stops with a warning on the terminal: the
# run goes on, and its snapshots and states report their own failures.

class LogTee:
    def __init__(self):
        self._pending: io.StringIO | None = io.StringIO()
        self._file: TextIO | None = None
        self._path: str | None = None
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = TeeStream(sys.stdout, self)
        sys.stderr = TeeStream(sys.stderr, self)

    def write(self, text: str) -> None:
        if self._file is not None:
            self._append(text)
        elif self._pending is not None:
            self._pending.write(text)

    def write_log_only(self, text: str) -> None:
        if self._file is not None:
            self._append(text)

    def open(self, path: str) -> None:
        try:
            self._file, self._path = open(path, 'a', encoding='utf-8'), path
        except OSError as e:
            if is_environment_error(e):
                raise UserError(f'{path}: cannot write ({e.strerror})') from None
            raise
        pending, self._pending = self._pending.getvalue(), None
        self._append(pending)

    def _append(self, text: str) -> None:
        try:
            self._file.write(text)
            self._file.flush()
        except OSError as e:
            if not is_environment_error(e):
                raise
            self.detach()
            self._saved[1].write(f'Warning: {self._path}: cannot write ({e.strerror}); the log copy stops here\n')

    def detach(self) -> None:
        """Stop copying into the log file (the terminal goes on as before)."""
        file, self._file, self._pending = self._file, None, None
        if file is not None:
            with contextlib.suppress(OSError):  # Closing flushes what a full disk refused once already.
                file.close()

    def close(self) -> None:
        sys.stdout, sys.stderr = self._saved
        self.detach()

class TeeStream:
    def __init__(self, stream: TextIO, tee: LogTee):
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
# a flag that the training loop polls after every step. So does a first
# Ctrl-C (SIGINT), so that stopping by hand keeps the progress since the last
# state; a second Ctrl-C aborts at once, saving nothing.

class StopRequest:
    """Context manager: while active, SIGTERM, SIGUSR1 and a first SIGINT set a flag (calling the object
    reads it); a second SIGINT raises KeyboardInterrupt."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> 'StopRequest':
        for sig in (signal.SIGTERM, getattr(signal, 'SIGUSR1', None), signal.SIGINT):
            if sig is not None:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *_exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, _frame: Any) -> None:
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> bool:
        return self.signum is not None

#----------------------------------------------------------------------------
# train.py's work: the run of the parsed options, with its log copy and its
# claim released whatever happens. Returns training_loop.PREEMPTED when the
# run stopped on a preemption signal.

def train_command(opts: dict, explicit: set[str]) -> str | None:
    tee = LogTee() if dist.get_rank() == 0 else None
    claim = RunClaim()
    try:
        return run_training(dnnlib.EasyDict(opts), tee, explicit, claim)
    except BaseException as e:
        # Errors go to log.txt too (when it exists); the terminal gets them from click or Python.
        if tee is not None and not isinstance(e, SystemExit):
            if isinstance(e, UserError):
                tee.write_log_only(f'Error: {e}\n')
            elif peer_failure(e):
                tee.write_log_only(f'Error: {PEER_FAILURE_MESSAGE}\n')
            else:
                tee.write_log_only(traceback.format_exc())
        raise
    finally:
        claim.release()
        if tee is not None:
            tee.close()

#----------------------------------------------------------------------------
# Options that can be checked before anything is loaded.

def check_option_combinations(opts: dnnlib.EasyDict) -> None:
    if opts.fp16 and opts.bf16:
        raise UserError('--fp16 and --bf16 cannot be used together')
    if opts.new_run and opts.nosubdir:
        raise UserError('--new-run and --nosubdir cannot be used together: --nosubdir continues the run in --outdir')
    if opts.transfer is not None and opts.resume is not None:
        raise UserError('--transfer and --resume cannot be used together')
    if opts.batch % dist.get_world_size() != 0:
        raise UserError(f'--batch={opts.batch} does not divide evenly between {dist.get_world_size()} processes')
    check_distinct([(path, '--data') for path in opts.data] + [(path, '--noisy') for path in opts.noisy])

#----------------------------------------------------------------------------
# Options -> configuration (plain data, written to training_options.json):
# data, network, optimizer and schedule. The dataset is opened once to check
# it (files, sizes, labels for --cond) and to record its name, size and
# resolution.

class DataShape(NamedTuple):
    name:       str     # The dataset's name (the run directory's name begins with it).
    resolution: int
    channels:   int
    label_dim:  int

def training_config(opts: dnnlib.EasyDict, device: torch.device) -> tuple[dnnlib.EasyDict, DataShape]:
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

    # Dataset.
    dataset_obj = construct_class_by_name(**c.dataset_kwargs)
    parts = dataset_obj.parts if len(opts.data) > 1 else [dataset_obj]
    for path, part in zip(opts.data, parts):
        if part.sigma_text and not opts.allow_noisy:
            raise UserError(f'--data={path}: is an observation set (noisy images, sigma {part.sigma_text} in dataset.json), '
                            'not clean or denoised images; give it as --noisy for Online SFBD, or add --allow-noisy to train '
                            'on the observations as they are')
    c.dataset_kwargs.max_size = len(dataset_obj) // (2 if opts.xflip else 1)
    shape = DataShape(dataset_obj.name, dataset_obj.resolution, dataset_obj.num_channels, dataset_obj.label_dim)
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
    return c, shape

#----------------------------------------------------------------------------
# The seed: --seed, or one that rank 0 draws and every process shares.

def run_seed(given: int | None, device: torch.device) -> int:
    if given is not None:
        return given
    seed = torch.tensor(secrets.randbelow(1 << 31) if dist.get_rank() == 0 else 0, device=device)
    return int(dist.broadcast(seed, src=0))

#----------------------------------------------------------------------------
# Transfer learning and resuming. A rerun into a run directory holding
# training states continues from the newest: --nosubdir's, or the newest
# unfinished run of these options in --outdir (rank 0 chooses and claims it).
# Sets c's resume entries; returns the directory continued (None: a new run)
# and the line announcing the resume.

def resume_point(opts: dnnlib.EasyDict, c: dnnlib.EasyDict, claim: RunClaim) -> tuple[str | None, str | None]:
    c.resume_pkl = opts.transfer
    if opts.allow_data_change:
        c.allow_data_change = True
    if opts.ema_rampup is not None:
        c.ema_rampup_ratio = opts.ema_rampup or None
    else:
        c.ema_rampup_ratio = None if opts.transfer is not None else 0.05
    resume_note = None
    continue_dir = opts.outdir if opts.nosubdir else None
    if opts.nosubdir and os.path.isdir(opts.outdir):  # Another train.py may be training in it: then not this one.
        held = None
        if dist.get_rank() == 0:
            try:
                holder = claim.take(opts.outdir)
                held = None if holder is None else UserError(f'--outdir: {holder_message(opts.outdir, holder)}')
            except UserError as e:
                held = e
        held = from_rank0(held)
        if held is not None:
            raise held
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
        # Rerunning a --nosubdir command that resumed from a state elsewhere (a job script
        # requeued after preemption) continues from its own newest state once that is further:
        # a state that records descending from that very state, or one written before states
        # recorded where their run began. A further state of another run is refused: resuming
        # from --resume there would put two runs' snapshots in one directory.
        if continue_dir is not None and path_relation(opts.resume, continue_dir) not in ('is', 'is inside'):
            own = training_loop.find_latest_state(continue_dir)
            own_nimg = training_loop.state_nimg(own) if own is not None else None
            given_nimg = training_loop.state_nimg(c.resume_state_dump)
            further = own_nimg is not None and given_nimg is not None and own_nimg > given_nimg
            recorded, origin = training_loop.state_origin(own) if own is not None else (False, None)
            if further and recorded and origin != os.path.abspath(c.resume_state_dump):
                began = f'from {origin}' if origin else 'afresh'
                raise UserError(f'--resume={opts.resume}: the run directory {continue_dir} holds {os.path.basename(own)} '
                                f'of a run that began {began}; give a state inside it to continue that run, or '
                                'use another --outdir')
            if further:
                c.resume_state_dump, c.resume_from_run_dir = own, True
                resume_note = (f'Resuming from the newest training state in the run directory, "{own}" '
                               f'({own_nimg / 1000:g} kimg), which is further than --resume={opts.resume} '
                               f'({given_nimg / 1000:g} kimg); give a state inside the run directory to go back.')
    elif continue_dir is not None and (latest := training_loop.find_latest_state(continue_dir)) is not None:
        c.resume_state_dump = latest
        c.resume_from_run_dir = True
        resume_note = f'Resuming from the newest training state in the run directory: "{latest}".'
    return continue_dir, resume_note

#----------------------------------------------------------------------------
# The run directory: the one continued, or a new one in --outdir named after
# the dataset and the options (EDM's names; rank 0 chooses).

def precision(opts: dnnlib.EasyDict) -> str:
    return 'fp16' if opts.fp16 else 'bf16' if opts.bf16 else 'fp32'

def run_description(opts: dnnlib.EasyDict, dataset_name: str) -> str:
    cond_str = 'cond' if opts.cond else 'uncond'
    desc = f'{dataset_name}-{cond_str}-{opts.arch}-{opts.precond}-gpus{dist.get_world_size()}-batch{opts.batch}-{precision(opts)}'
    if opts.noisy:
        desc += '-online'
    if opts.desc is not None:
        if not opts.desc or os.sep in opts.desc or (os.altsep and os.altsep in opts.desc) or opts.desc in ('.', '..'):
            raise UserError(f'--desc={opts.desc}: must be a plain name (it ends the run directory\'s name)')
        desc += f'-{opts.desc}'
    return desc

# The run writes apart from its inputs (continuing a run in its own directory
# is not writing into an input), into a directory that is new, empty or
# train.py's own.
def check_outputs(opts: dnnlib.EasyDict, run_dir: str) -> None:
    inputs = [(path, '--data') for path in opts.data] + [(path, '--noisy') for path in opts.noisy]
    inputs.append((opts.transfer, '--transfer'))
    if opts.resume is not None and path_relation(opts.resume, run_dir) not in ('is', 'is inside'):
        inputs.append((opts.resume, '--resume'))
    check_apart([(run_dir, '--outdir')], inputs)  # Refuses an --outdir inside a dataset, or holding a dataset.json.
    check_output_dir(opts.outdir, '--outdir', 'train.py' if opts.nosubdir else None, RUN_MARKERS)
    if not opts.nosubdir:
        check_not_images(opts.outdir, '--outdir')

# The folder of run directories must not be a dataset without a dataset.json:
# image or .npy files at its top, or EDM's numbered folders of them (00000/).
def check_not_images(outdir: str, option: str) -> None:
    if not os.path.isdir(outdir):
        return
    found = sorted(name for name in os.listdir(outdir) if not name.startswith('.') and (
        name.isdigit() and os.path.isdir(os.path.join(outdir, name)) or
        is_dataset_file(name) and os.path.isfile(os.path.join(outdir, name))))
    if found:
        shown = ', '.join(found[:3]) + (', ...' if len(found) > 3 else '')
        raise UserError(f'{option}={outdir}: holds a dataset ({shown}); run directories go elsewhere')

#----------------------------------------------------------------------------
# The options shown before training: the configuration, a summary and the
# notes of the resume and the Online SFBD plan.

def show_options(opts: dnnlib.EasyDict, c: dnnlib.EasyDict, device: torch.device, notes: Sequence[str]) -> None:
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
               ('Mixed-precision', precision(opts) if opts.fp16 or opts.bf16 else False), ('Fast path', opts.fast)]
    for label, value in summary:
        dist.print0(f'{label + ":":<25}{value}')
    for note in notes:
        dist.print0(note)
    dist.print0()

#----------------------------------------------------------------------------
# The run directory is created only once the training loop has checked
# everything, so that a failed start leaves nothing behind: the loop calls
# this when it is about to write.

def run_starter(opts: dnnlib.EasyDict, c: dnnlib.EasyDict, continue_dir: str | None, claim: RunClaim,
                tee: LogTee | None) -> Callable[[], None]:
    written: list[str] = []  # What this start wrote, taken back if it fails.

    def options_path() -> str:
        return os.path.join(c.run_dir, 'training_options.json')

    def start_run() -> None:
        if dist.get_rank() != 0:
            return
        dist.print0('Creating output directory...')
        made = [d for d in dict.fromkeys([opts.outdir, c.run_dir]) if not os.path.isdir(d)]
        if continue_dir is not None:
            os.makedirs(c.run_dir, exist_ok=True)
        else:
            try:
                os.makedirs(opts.outdir, exist_ok=True)
                os.mkdir(c.run_dir)  # Atomic: of two runs starting at once, one gets the directory.
            except FileExistsError:
                raise UserError(f'{c.run_dir} already exists; is another run starting in --outdir?') from None
            except OSError as e:
                undo_start(made)  # A failed start leaves nothing behind.
                raise UserError(f'--outdir={opts.outdir}: cannot create {e.filename or c.run_dir} '
                                f'({e.strerror or e})') from None
        fresh = not os.path.exists(options_path()) and training_loop.find_latest_state(c.run_dir) is None
        try:
            if claim.path is None:  # Before its options: a run with options is always claimed while it trains.
                holder = claim.take(c.run_dir)
                if holder is not None:  # Another --nosubdir run that started in the same new directory.
                    raise UserError(f'--outdir: {holder_message(c.run_dir, holder)}')
            write_run_files(fresh)
        except BaseException:  # A full disk, say: a new run's directory goes again.
            if fresh:
                undo_start(made)
            raise

    # The options (a fresh run's written exclusively), then the log copy.
    def write_run_files(fresh: bool) -> None:
        if fresh:
            if not create_exclusive(options_path(), c):
                raise UserError(f'--outdir={c.run_dir}: another train.py started in this directory at the same time')
            written.append(options_path())
        else:
            with atomic_write(options_path(), 'wt') as f:
                json.dump(c, f, indent=2)
        if tee is not None:
            log_path = os.path.join(c.run_dir, 'log.txt')
            if not os.path.exists(log_path):
                written.append(log_path)
            tee.open(log_path)

    # What a failed start of a new run wrote goes again, with the directories it made.
    def undo_start(made: list[str]) -> None:
        if tee is not None:
            tee.detach()
        claim.release()
        for path in written:
            with contextlib.suppress(OSError):
                os.remove(path)
        for directory in reversed(made):
            with contextlib.suppress(OSError):  # Only if empty: anything else there is not this run's.
                os.rmdir(directory)
    return start_run

#----------------------------------------------------------------------------
# One run, top to bottom: the steps above, then the loop (or, with --dry-run,
# nothing more). `explicit`: the schedule options given on the command line.

def run_training(opts: dnnlib.EasyDict, tee: LogTee | None, explicit: set[str] = frozenset(),
                 claim: RunClaim | None = None) -> str | None:
    claim = claim if claim is not None else RunClaim()
    check_option_combinations(opts)
    device = dist.resolve_device(opts.device)
    c, data = training_config(opts, device)

    # Processes and seed; Online SFBD's plan before a rerun is matched (the same command plans the same).
    dist.init(device)
    c.seed = run_seed(opts.seed, device)
    online_notes = []
    if c.online_kwargs is not None:
        c.online_kwargs.seed = c.seed
        online_notes = plan_online(c, None, refresh_defaulted(opts))

    # A resumed run keeps the network and schedule it was trained with.
    continue_dir, resume_note = resume_point(opts, c, claim)
    where = f'--resume={opts.resume}' if opts.resume is not None else f'--outdir={continue_dir} (its newest training state)'
    resume_notes = check_resume(c, explicit, where) if c.get('resume_state_dump') is not None else []
    if c.get('resume_state_dump') is not None:
        resume_notes += resume_seed(c, opts.seed, where)
        if c.online_kwargs is not None:
            online_notes = plan_online(c, resume.run_options_beside(c.resume_state_dump), refresh_defaulted(opts))

    # The run directory, and what it may be.
    desc = run_description(opts, data.name)
    if continue_dir is not None:
        c.run_dir = continue_dir
    else:
        c.run_dir = next_run_dir(opts.outdir, desc) if dist.get_rank() == 0 else None
    dist.rank0_only(lambda: check_outputs(opts, c.run_dir), 'to accept --outdir')
    check_network_options(c.network_kwargs, data.resolution, data.channels, data.label_dim,
                          f'--arch={opts.arch} --cbase={c.network_kwargs.model_channels} '
                          f'--cres={",".join(map(str, c.network_kwargs.channel_mult))}')

    show_options(opts, c, device, ([resume_note] if resume_note else []) + resume_notes + online_notes)
    if opts.dry_run:
        dist.print0('Dry run; exiting.')
        return None

    # Train.
    with StopRequest() as stop_requested:
        loop_kwargs = {key: value for key, value in c.items() if key != 'online_plan'}  # The loop plans for itself.
        return training_loop.training_loop(**loop_kwargs, stop_requested=stop_requested,
                                           start_run=run_starter(opts, c, continue_dir, claim, tee))

#----------------------------------------------------------------------------
# train.py's dry run in-process, quietly: another tool (sfbd.rounds) checks
# the options of a train.py run it will start, with everything train.py
# checks before it writes. A refusal is one line naming `option`.

def dry_run_train(option: str, run_dir: str, data: Sequence[str], args: Sequence[str]) -> None:
    command = [f'--outdir={run_dir}', '--nosubdir', *[f'--data={d}' for d in data], *args, '--dry-run']
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            params, explicit = parse_train_command(command)
            report_user_errors(train_command)(params, explicit)
            dist.deinit()
    except click.ClickException as e:
        raise UserError(f'{option}: train.py refuses them: {e.format_message()}') from None

#----------------------------------------------------------------------------
