"""train.py's rules, as library functions: the network tables of --arch and --precond, the run
directory and the claim on it, which run a rerun continues, the checks and schedule of a resumed
run, and Online SFBD's options and refresh plan (options -> config).

What train.py and the tools that parse its options share. Not the click table
(tools/train_options.py), not the run itself (tools/train_run.py), not the training loop
(training/training_loop.py), not Online SFBD itself (sfbd/online.py).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import threading
import time
import uuid
from typing import Any

import torch

import dnnlib
from dnnlib.outputs import OWNER_KEY, create_exclusive, may_be_running, read_record
from dnnlib.util import UserError
from sfbd.online import (DEFAULT_REFRESH_PASSES, DEFAULTS as ONLINE_DEFAULTS, Observations, default_refresh_batch,
                         refresh_batch_for_passes, refresh_plan, run_steps)
from torch_utils import distributed as dist
from torch_utils import edm_state, misc
from training import resume, training_loop

#----------------------------------------------------------------------------
# Network configurations of --arch (EDM's) and the classes of --precond. The
# augmentations that --augment enables are training/augment.py's AUGMENTATIONS.

ARCHITECTURES = {
    'ddpmpp': dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
                   channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'ncsnpp': dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
                   channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2]),
    'adm':    dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4]),
}
PRECONDITIONINGS = {'vp': ('VPPrecond', 'VPLoss'), 've': ('VEPrecond', 'VELoss'), 'edm': ('EDMPrecond', 'EDMLoss')}

#----------------------------------------------------------------------------
# The network of the options, built on the 'meta' device (no memory, no
# arithmetic) and run once on a batch shaped like the data: options that
# cannot make a network for these images (more --cres levels than the
# resolution allows, channel counts the group norms cannot split) fail here,
# as one line, before anything is written.

def check_network_options(network_kwargs: dict, resolution: int, channels: int, label_dim: int, options: str) -> None:
    try:
        with torch.random.fork_rng(devices=[]), torch.device('meta'), torch.no_grad():
            net = dnnlib.util.construct_class_by_name(**network_kwargs, img_resolution=resolution, img_channels=channels,
                                               label_dim=label_dim)
            augment_dim = network_kwargs.get('augment_dim', 0)
            net(torch.zeros([1, channels, resolution, resolution]), torch.ones([1]), torch.zeros([1, label_dim]),
                augment_labels=torch.zeros([1, augment_dim]) if augment_dim else None)
    except (RuntimeError, ValueError, ZeroDivisionError, IndexError) as e:
        what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'{options}: no network of this shape fits {resolution}x{resolution} images with {channels} '
                        f'channels ({type(e).__name__}: {what})') from None

#----------------------------------------------------------------------------
# Run directory: `{id:05d}-{desc}` under --outdir, the id one more than the
# highest already there. A run directory is train.py's own when it holds one
# of these files; --nosubdir takes only a new or empty directory or its own.

RUN_MARKERS = ('training_options.json', 'training-state-*.pt')

def next_run_dir(outdir: str, desc: str) -> str:
    ids = []
    if os.path.isdir(outdir):
        for name in os.listdir(outdir):
            m = re.match(r'^(\d+)', name)
            if m and os.path.isdir(os.path.join(outdir, name)):
                ids.append(int(m.group(1)))
    return os.path.join(outdir, f'{max(ids, default=-1) + 1:05d}-{desc}')

#----------------------------------------------------------------------------
# Continuing a run: rerunning a command without --nosubdir continues the
# newest unfinished run of the same options in --outdir (highest id first),
# unless --new-run. "The same options": its training_options.json against
# this command's, less what may differ between reruns
# (resume.rerun_differences). "Unfinished": its newest training state is
# short of its duration, or it has none. The process that trains in a run
# directory holds a claim there (CLAIM_FNAME, created exclusively, naming
# host and process), so that two reruns started together never continue the
# same run (with --nosubdir, a second train.py in the directory is refused);
# a claim whose process is gone is set aside. Gone means: on this host, no
# such process; on another host, a claim not renewed for STALE_SECONDS (its
# holder touches it every HEARTBEAT_SECONDS). A claim of an earlier run of
# this very SLURM job (requeued after a hard kill) is waited for until it has
# not been renewed for REQUEUE_SECONDS: SLURM runs one instance of a job at a
# time, but a run on a node it lost may still write for a while. Only rank 0
# decides; the other processes take its decision.

CLAIM_FNAME = '.train-claim.json'
HEARTBEAT_SECONDS = 60
STALE_SECONDS = 600
REQUEUE_SECONDS = 150
RUN_ID = re.compile(r'^(\d+)-')

def _claim_owner() -> dict:
    owner: dict[str, Any] = dict(host=socket.gethostname(), pid=os.getpid())
    if os.environ.get('SLURM_JOB_ID'):
        restart = os.environ.get('SLURM_RESTART_COUNT', '')
        owner.update(slurm_job=os.environ['SLURM_JOB_ID'], slurm_restart=int(restart) if restart.isdigit() else 0)
    return owner

class RunClaim:
    """This process's claim on a run directory (rank 0)."""

    def __init__(self):
        self.path: str | None = None
        self.owner = _claim_owner()
        self._stop_heartbeat = threading.Event()

    def take(self, run_dir: str) -> dict | None:
        """Claim `run_dir`: None when claimed, else the record of the process that holds it."""
        path = os.path.join(run_dir, CLAIM_FNAME)
        for _attempt in range(3):
            if create_exclusive(path, {OWNER_KEY: self.owner}):
                self.path = path
                self._stop_heartbeat.clear()
                threading.Thread(target=self._heartbeat, args=(path,), daemon=True).start()
                return None
            try:
                holder = read_record(path)
            except UserError:
                holder = {}  # Unreadable: written by a run that died while writing it.
            if holder is not None and self._earlier_run_of_this_job(holder) and not self._gone_here(holder):
                if not self._wait_until_unrenewed(path, REQUEUE_SECONDS, limit=STALE_SECONDS):
                    return holder  # Renewed all along: that run still trains.
            elif holder is not None and self._alive(holder, path):
                return holder
            with contextlib.suppress(FileNotFoundError):  # Gone: set it aside (one process only can).
                aside = f'{path}.{uuid.uuid4().hex}.stale'
                os.rename(path, aside)
                os.remove(aside)
        raise UserError(f'{path}: keeps changing; is another train.py starting in {run_dir}?')

    def _earlier_run_of_this_job(self, holder: dict) -> bool:
        owner, mine = _owner_of(holder), self.owner
        return mine.get('slurm_job') is not None and owner.get('slurm_job') == mine['slurm_job'] \
            and isinstance(owner.get('slurm_restart'), int) and owner['slurm_restart'] < mine['slurm_restart']

    def _gone_here(self, holder: dict) -> bool:  # On this host, its process is known to be gone.
        return _owner_of(holder).get('host') == self.owner['host'] and not may_be_running(holder)

    def _alive(self, holder: dict, path: str) -> bool:
        owner = _owner_of(holder)
        if not owner:
            return False
        if owner.get('host') != self.owner['host']:
            return _seconds_unrenewed(path) < STALE_SECONDS
        return may_be_running(holder)

    @staticmethod
    def _wait_until_unrenewed(path: str, seconds: float, limit: float) -> bool:
        # True once the claim at `path` has gone `seconds` without renewal; False if it is renewed
        # for longer than `limit`.
        deadline, announced = time.monotonic() + limit, False
        while (age := _seconds_unrenewed(path)) < seconds:
            if time.monotonic() + seconds - age > deadline:
                return False
            if not announced:
                dist.print0(f'Waiting up to {seconds - age:.0f} s for the claim of this job\'s run before its '
                            f'requeue to lapse ({path})...')
                announced = True
            time.sleep(min(seconds - age, HEARTBEAT_SECONDS) + 0.1)
        return True

    # Renews the claim while it is this process's: one that another process set
    # aside and replaced (it found this one stale) is left alone.
    def _heartbeat(self, path: str) -> None:
        while not self._stop_heartbeat.wait(HEARTBEAT_SECONDS):
            try:
                if (read_record(path) or {}).get(OWNER_KEY) != self.owner:
                    return
                os.utime(path)
            except (OSError, UserError):
                pass

    def release(self) -> None:
        self._stop_heartbeat.set()
        if self.path is None:
            return
        with contextlib.suppress(OSError, UserError):
            if (read_record(self.path) or {}).get(OWNER_KEY) == self.owner:
                os.remove(self.path)
        self.path = None

# The owner recorded in a claim ({} when the record has none, or a damaged one).
def _owner_of(holder: dict) -> dict:
    owner = holder.get(OWNER_KEY)
    return owner if isinstance(owner, dict) else {}

def _seconds_unrenewed(path: str) -> float:
    try:
        return time.time() - os.path.getmtime(path)
    except OSError:
        return math.inf

def holder_message(run_dir: str, holder: dict) -> str:
    owner = _owner_of(holder)
    return (f'process {owner.get("pid")} on {owner.get("host")} is training in {run_dir}; stop it, or wait for it to '
            f'end (a claim of another host counts until it has not been renewed for {STALE_SECONDS} s)')

def run_to_continue(outdir: str, c: dict, seed_given: bool, claim: RunClaim,
                    refresh_default: bool = False) -> tuple[str | None, str | None]:
    """The run directory to continue (claimed), or None; and the line that says what was chosen.
    With `refresh_default` (neither refresh option given) an Online SFBD run of the old default
    refresh batch counts as this command's (its resume keeps that batch)."""
    if not os.path.isdir(outdir):
        return None, None
    runs = sorted(((int(m.group(1)), name) for name in os.listdir(outdir)
                   if (m := RUN_ID.match(name)) and os.path.isdir(os.path.join(outdir, name))), reverse=True)
    skipped = None
    for _run_id, name in runs:
        run_dir = os.path.join(outdir, name)
        try:
            recorded = resume.run_options_beside(os.path.join(run_dir, resume.OPTIONS_FNAME))
        except UserError:
            continue  # Not readable: not a run of these options.
        also_free = OLD_DEFAULT_FREE if refresh_default and is_old_default_online(recorded) else ()
        if recorded is None or resume.rerun_differences(recorded, c, seed_given, also_free):
            continue
        latest = training_loop.find_latest_state(run_dir)
        nimg = training_loop.state_nimg(latest) if latest is not None else 0
        total_kimg = recorded.get('total_kimg', c['total_kimg'])
        progress = f'{(nimg or 0) / 1000:g} of {total_kimg:g} kimg'
        if nimg is not None and nimg >= total_kimg * 1000:
            skipped = skipped or f'{run_dir} of the same options is finished ({progress})'
            continue
        holder = claim.take(run_dir)
        if holder is not None:
            owner = holder.get(OWNER_KEY, {})
            skipped = skipped or f'{run_dir} of the same options is being trained by process {owner.get("pid")} on {owner.get("host")}'
            continue
        return run_dir, f'Continuing the unfinished run {run_dir} of the same options ({progress}); --new-run starts a new run instead.'
    return None, f'Starting a new run: {skipped}.' if skipped else None

def from_rank0(value: Any) -> Any:
    # Rank 0's value on every process (collective).
    if not torch.distributed.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]

#----------------------------------------------------------------------------
# Resuming: the options must fit the run that wrote the state (EDM's or ours),
# and its learning-rate and EMA schedule carries over unless an option is given
# explicitly (training/resume.py). Returns the lines to announce.

SCHEDULE_PARAMS = dict(lr='lr', lr_rampup_kimg='lr_rampup', ema_halflife_kimg='ema', ema_rampup_ratio='ema_rampup')

def check_resume(c: dnnlib.EasyDict, explicit: set[str], where: str) -> list[str]:
    recorded = resume.run_options_beside(c.resume_state_dump)
    if recorded is not None:
        notes = resume.check_run_options(recorded, c, where)
    else:
        notes = [f'No {resume.OPTIONS_FNAME} beside the training state: only its tensors are checked against these options.']
    given = dict(lr=c.optimizer_kwargs.lr, lr_rampup_kimg=c.lr_rampup_kimg, ema_halflife_kimg=c.ema_halflife_kimg,
                 ema_rampup_ratio=c.ema_rampup_ratio)
    schedule, schedule_notes = resume.resolve_schedule(given, resume.recorded_schedule(c.resume_state_dump, recorded), explicit)
    c.optimizer_kwargs.lr = schedule['lr']
    c.update(lr_rampup_kimg=schedule['lr_rampup_kimg'], ema_halflife_kimg=schedule['ema_halflife_kimg'],
             ema_rampup_ratio=schedule['ema_rampup_ratio'])
    return notes + schedule_notes

#----------------------------------------------------------------------------
# The seed of a resumed run is the run's own: the training state's data order,
# random generators and (Online SFBD) refresh noise continue from it. An
# explicit --seed of another value is refused rather than silently dropped
# (a new seed needs a new run); without --seed the run's seed is announced.
# EDM's states record no seed: the given or drawn one is used.

def resume_seed(c: dnnlib.EasyDict, given: int | None, where: str) -> list[str]:
    if edm_state.is_edm_training_state(c.resume_state_dump):
        return []
    try:
        state = misc.load_plain(c.resume_state_dump, map_location='cpu', mmap=True)
        recorded = int(state['seed']) if isinstance(state, dict) else None
    except Exception:  # Unreadable states are reported when the training loop loads them.
        return []
    if recorded is None:  # Not a training state (a bare tensor, say): the same.
        return []
    if given is not None and given != recorded:
        raise UserError(f'--seed={given}: {where} continues a run of seed {recorded}, and a resumed run keeps its seed; '
                        f'leave --seed out (or give {recorded}), or start a new run for another seed')
    c.seed = recorded
    if c.online_kwargs is not None:
        c.online_kwargs.seed = recorded
    return [] if given is not None else [f'Seed: {recorded}, the resumed run\'s own (from its training state).']

#----------------------------------------------------------------------------
# Online SFBD's options (sfbd/online.py), as plain data; None without --noisy.

ONLINE_OPTIONS = dict(refresh_every='--refresh-every', refresh_batch='--refresh-batch', refresh_passes='--refresh-passes',
                      online_rampup='--online-rampup',
                      mode='--mode', steps='--steps', refresh_net='--refresh-net', buffer_dtype='--buffer-dtype')

def online_options(opts: dnnlib.EasyDict) -> dnnlib.EasyDict | None:
    if not opts.noisy:
        given = [option for key, option in ONLINE_OPTIONS.items() if opts[key] is not None]
        if given:
            raise UserError(f'{", ".join(given)}: Online SFBD options; they need --noisy')
        return None
    if opts.refresh_passes is not None and opts.refresh_batch is not None:
        raise UserError('--refresh-passes and --refresh-batch cannot be used together: --refresh-passes sets the refresh batch')
    for path in opts.noisy:
        if not os.path.exists(path):
            raise UserError(f'--noisy={path}: no such directory or zip file')
    online = dnnlib.EasyDict(ONLINE_DEFAULTS, class_name='sfbd.online.OnlineSFBD', refresh_batch=opts.batch)
    given = dict(refresh_every=opts.refresh_every, refresh_batch=opts.refresh_batch, mode=opts.mode, num_steps=opts.steps,
                 refresh_net=opts.refresh_net, buffer_dtype=opts.buffer_dtype)
    online.update({key: value for key, value in given.items() if value is not None})
    online.update(noisy=[os.path.abspath(path) for path in opts.noisy], rampup_kimg=opts.online_rampup, xflip=opts.xflip,
                  cache=opts.cache)
    if opts.refresh_passes is not None:
        online.refresh_passes = opts.refresh_passes
    return online

# The refreshes of the whole run (sfbd.online.refresh_plan), recorded as
# c.online_plan. --refresh-passes sets the refresh batch at the run's whole
# length; without it or --refresh-batch the default passes do
# (sfbd.online.default_refresh_batch). A resumed run keeps the refresh batch
# its recorded options derived from the same passes (at the length it was
# started with), and a run begun before the default was in passes (r =
# --batch) keeps that batch; every process takes rank 0's. Returns the lines
# to announce.

def refresh_defaulted(opts: dnnlib.EasyDict) -> bool:
    return opts.refresh_passes is None and opts.refresh_batch is None

def is_old_default_online(recorded: dict | None) -> bool:
    """Whether `recorded` (training options) is an Online SFBD run of the refresh default before
    DEFAULT_REFRESH_PASSES: no passes recorded, one refresh batch per training batch."""
    old = (recorded or {}).get('online_kwargs')
    return isinstance(old, dict) and 'refresh_passes' not in old and old.get('refresh_batch') == recorded.get('batch_size')

# What a rerun of the default may find different in an old-default run (resume.rerun_differences).
OLD_DEFAULT_FREE = ('online_kwargs.refresh_batch', 'online_kwargs.refresh_passes', 'online_plan')

def plan_online(c: dnnlib.EasyDict, recorded: dict | None, defaulted: bool) -> list[str]:
    online, notes = c.online_kwargs, []
    observations = Observations(online.noisy, cache=False)
    num = len(observations)
    observations.close()
    steps = run_steps(c.total_kimg, c.batch_size)
    old, old_plan = (recorded or {}).get('online_kwargs') or {}, (recorded or {}).get('online_plan') or {}
    if defaulted and is_old_default_online(recorded):
        online.pop('refresh_passes', None)
        online.refresh_batch = old['refresh_batch']
        notes.append(f'Online SFBD: the resumed run keeps its refresh batch {online.refresh_batch} (--batch, the default '
                     f'when it began; the default is now {DEFAULT_REFRESH_PASSES:g} refresh passes).')
    elif defaulted:
        online.refresh_batch, note = default_refresh_batch(num, online.refresh_every, steps, c.batch_size)
        online.refresh_passes = DEFAULT_REFRESH_PASSES if note is None and steps >= online.refresh_every else None
        notes += [note] if note is not None else []
    elif online.get('refresh_passes') is not None:
        online.refresh_batch = refresh_batch_for_passes(online.refresh_passes, num, online.refresh_every, steps)
    passes = online.get('refresh_passes')
    if passes is not None and recorded is not None:
        same = (old.get('refresh_passes') == passes and old.get('refresh_every') == online.refresh_every
                and old_plan.get('num_observations') == num and isinstance(old.get('refresh_batch'), int))
        if same and old['refresh_batch'] != online.refresh_batch:
            online.refresh_batch = old['refresh_batch']
            notes.append(f'{passes:g} refresh passes: the resumed run keeps its refresh batch {online.refresh_batch}, '
                         f'derived at its recorded length ({recorded.get("total_kimg")} kimg).')
    online.refresh_batch = int(from_rank0(online.refresh_batch))
    c.online_plan = refresh_plan(num, online.refresh_every, online.refresh_batch, steps)
    return notes

