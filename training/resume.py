"""Resuming a training run: from this repository's training states or from EDM's.

This repository's states (format 'sfbd-training-state-v1', plain state dicts read with
`torch.load(weights_only=True)`) hold everything needed to continue to the step, the learning-rate
and EMA schedule included. EDM's `training-state-NNNNNN.pt` holds the network module and Adam's
state; the EMA is in the snapshot `network-snapshot-NNNNNN.pkl` beside it, the progress (NNNNNN
kimg) only in the file name, and the options in the run directory's `training_options.json`. EDM's
state is read as data (torch_utils/edm_state.py): nothing stored in it runs.

What a resumed run keeps, and what it may change:

- The network and the data it expects must be the run's: architecture, preconditioning, channel
  counts, resolution, labels, augmentation labels, optimizer. A difference is a one-line error.
- Dataset paths, duration, batch size, dropout, augmentation probability, x-flips and precision
  may change; each change is announced in the log.
- The schedule (`lr`, `lr_rampup_kimg`, `ema_halflife_kimg`, `ema_rampup_ratio`) is the run's own:
  the state records it (EDM's: its training_options.json, with EDM's fixed 10 Mimg warm-up and
  0.05 ramp-up ratio where it records none). A value given explicitly on the command line that
  differs replaces it from the first resumed step on, and the log says so; defaults never do.

Which run a plain rerun of a command continues (train.py without --nosubdir): the newest unfinished
one whose recorded options are the command's, less RERUN_FREE_OPTIONS (`rerun_differences`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Iterable

import torch

from dnnlib.outputs import differing_keys
from dnnlib.util import UserError
from torch_utils import edm_state, fast, misc, persistence

OPTIONS_FNAME = 'training_options.json'

#----------------------------------------------------------------------------
# The schedule: training_loop() arguments, the command-line option of each,
# and how the option's value maps to the argument (--ema is in Mimg, an
# --ema-rampup of 0 means no ramp-up).

SCHEDULE_OPTIONS: dict[str, str] = {
    'lr':                '--lr',
    'lr_rampup_kimg':    '--lr-rampup',
    'ema_halflife_kimg': '--ema',
    'ema_rampup_ratio':  '--ema-rampup',
}
EDM_LR_RAMPUP_KIMG = 10000  # EDM's warm-up, fixed in its code and absent from its training_options.json.
EDM_EMA_RAMPUP_RATIO = 0.05 # EDM's ramp-up ratio; its training_options.json records only the None of --transfer.

def schedule_of_options(options: dict) -> dict[str, Any] | None:
    """The schedule recorded in a training_options.json (EDM's or this repository's)."""
    try:
        return dict(lr=float(options['optimizer_kwargs']['lr']),
                    lr_rampup_kimg=options.get('lr_rampup_kimg', EDM_LR_RAMPUP_KIMG),
                    ema_halflife_kimg=options['ema_halflife_kimg'],
                    ema_rampup_ratio=options.get('ema_rampup_ratio', EDM_EMA_RAMPUP_RATIO))
    except (KeyError, TypeError, ValueError):
        return None

def _describe(key: str, value: Any) -> str:
    if value is None:
        return 'none'
    unit = {'lr_rampup_kimg': ' kimg', 'ema_halflife_kimg': ' kimg'}.get(key, '')
    return f'{value:g}{unit}' if isinstance(value, (int, float)) else f'{value}{unit}'

def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    return a == b

def resolve_schedule(given: dict[str, Any], recorded: dict[str, Any] | None,
                     explicit: set[str]) -> tuple[dict[str, Any], list[str]]:
    """The schedule a resumed run continues with, and the lines that announce it.

    `given` holds the values of these options (training_loop() units), `explicit` the keys whose
    option was given on the command line. Without a recorded schedule the given values stand."""
    if recorded is None:
        return dict(given), ['The training state records no learning-rate and EMA schedule: '
                             'using the command line\'s (or the defaults).']
    values, notes = {}, []
    for key, option in SCHEDULE_OPTIONS.items():
        old, new = recorded.get(key, given[key]), given[key]
        if key in explicit and not _same(old, new):
            values[key] = new
            notes.append(f'{option} given: {key} is {_describe(key, new)} from here on, instead of the '
                         f'{_describe(key, old)} the run was trained with.')
        else:
            values[key] = old
    summary = ', '.join(f'{key} {_describe(key, values[key])}' for key in SCHEDULE_OPTIONS)
    return values, [f'Schedule of the resumed run: {summary}.', *notes]

#----------------------------------------------------------------------------
# What the state records: the run directory's options (either kind), and the
# schedule (this repository's states carry it; read without loading tensors).

def run_options_beside(state_path: str) -> dict | None:
    """The training_options.json of the run directory holding `state_path`, or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(state_path)), OPTIONS_FNAME)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, 'r', encoding='utf-8') as f:
            options = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError(f'{path}: not readable JSON ({e})') from None
    if not isinstance(options, dict):
        raise UserError(f'{path}: expected a JSON object')
    for key in ('network_kwargs', 'dataset_kwargs', 'loss_kwargs', 'optimizer_kwargs', 'augment_kwargs'):
        if options.get(key) is not None and not isinstance(options[key], dict):
            raise UserError(f'{path}: "{key}" must be a JSON object or null, got {json.dumps(options[key])[:40]}')
    parts = (options.get('dataset_kwargs') or {}).get('datasets')
    if parts is not None and not (isinstance(parts, list) and all(isinstance(part, dict) for part in parts)):
        raise UserError(f'{path}: "dataset_kwargs" "datasets" must be a list of JSON objects')
    return options

def recorded_schedule(state_path: str, run_options: dict | None) -> dict[str, Any] | None:
    """The schedule of the run that wrote `state_path`: from the state, else its training_options.json."""
    if not edm_state.is_edm_training_state(state_path):
        try:
            state = misc.load_plain(state_path, map_location='cpu', mmap=True)
        except Exception:  # Unreadable states are reported when the training loop loads them.
            state = None
        if isinstance(state, dict) and isinstance(state.get('schedule'), dict):
            return dict(state['schedule'])
    return schedule_of_options(run_options) if run_options is not None else None

#----------------------------------------------------------------------------
# The options of the resumed run against the recorded ones. Both are
# training_options.json layouts (EDM's is a subset of this repository's).

def _resolution(options: dict) -> Any:
    kwargs = options.get('dataset_kwargs') or {}
    parts = kwargs.get('datasets')
    return parts[0].get('resolution') if parts else kwargs.get('resolution')

def _paths(options: dict) -> list:
    kwargs = options.get('dataset_kwargs') or {}
    return [part.get('path') for part in kwargs.get('datasets') or [kwargs]]

def _network(options: dict, keep: bool) -> dict:
    # The network options that decide its tensors (keep=False: the others).
    free = ('dropout', 'use_fp16', 'use_bf16')
    return {k: v for k, v in (options.get('network_kwargs') or {}).items() if (k in free) != keep}

_MUST_MATCH: list[tuple[str, Callable[[dict], Any]]] = [
    ('network (--arch, --precond, --cbase, --cres, --augment on/off)', lambda o: _network(o, keep=True)),
    ('loss (--precond)', lambda o: (o.get('loss_kwargs') or {}).get('class_name')),
    ('resolution', _resolution),
    ('labels (--cond)', lambda o: bool((o.get('dataset_kwargs') or {}).get('use_labels'))),
    ('optimizer', lambda o: (o.get('optimizer_kwargs') or {}).get('class_name')),
]
_MAY_CHANGE: list[tuple[str, Callable[[dict], Any]]] = [
    ('--data', _paths),
    ('--xflip', lambda o: bool((o.get('dataset_kwargs') or {}).get('xflip'))),
    ('--duration (kimg)', lambda o: o.get('total_kimg')),
    ('--batch', lambda o: o.get('batch_size')),
    ('--dropout, --fp16, --bf16', lambda o: _network(o, keep=False)),
    ('--augment', lambda o: (o.get('augment_kwargs') or {}).get('p', 0)),
]

def _difference(old: Any, new: Any) -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
        return ', '.join(f'{k} {old.get(k)} there, {new.get(k)} now' for k in keys)
    return f'{old} there, {new} now'

def check_run_options(recorded: dict, current: dict, where: str) -> list[str]:
    """Refuse options that do not fit the recorded run (one-line error starting with `where`, the
    option that chose the state); returns the lines that announce the allowed changes."""
    current = json.loads(json.dumps(current))  # The recorded side went through JSON too.
    for what, get in _MUST_MATCH:
        if get(recorded) != get(current):
            raise UserError(f'{where}: the run was trained with another {what} ({_difference(get(recorded), get(current))}); '
                            'a resumed run needs the same')
    return [f'{what} differs from the resumed run: {_difference(get(recorded), get(current))}.'
            for what, get in _MAY_CHANGE if get(recorded) != get(current)]

#----------------------------------------------------------------------------
# A rerun of one command: train.py without --nosubdir continues the newest
# unfinished run in --outdir whose recorded options are this command's. What
# may differ between two runs of one command: where the run is and which
# state a continued run resumed from; how it computes (device, fast path,
# data loading, images per device pass: a rerun may land on another
# machine, and the training state does not depend on them, as for any
# resume); and the seed when none was given (each run draws one; a
# continued run's generators come from its state).

RERUN_FREE_OPTIONS = ('run_dir', 'resume_state_dump', 'resume_from_run_dir', 'device', 'fast', 'data_loader_kwargs',
                      'batch_gpu', 'cudnn_benchmark')

def rerun_differences(recorded: dict, current: dict, seed_given: bool, also_free: Iterable[str] = ()) -> list[str]:
    """The options (training_options.json keys, nested as 'key.subkey') in which a command differs
    from the run that recorded `recorded`, less `also_free`; empty when the command is a rerun of that run's."""
    current = json.loads(json.dumps(current))  # The recorded side went through JSON too.
    free = ({'seed', 'online_kwargs.seed'} if not seed_given else set()) | set(also_free)
    return [key for key in differing_keys(recorded, current, RERUN_FREE_OPTIONS)
            if not any(key == f or key.startswith(f + '.') for f in free)]

#----------------------------------------------------------------------------
# Continuing from EDM's state: weights and Adam's state from the state, the
# EMA from the snapshot beside it. Every tensor must fit the network built
# from the current options, as EDM requires.

def _copy_exactly(tensors: dict[str, torch.Tensor], module: torch.nn.Module, source: str) -> None:
    expected = module.state_dict()
    problem = misc.tensor_mismatch(tensors, expected)
    if problem is not None:
        raise UserError(f'{source}: does not fit the network of these options: it {problem}')
    with torch.no_grad():
        module.load_state_dict({k: tensors[k] for k in expected}, strict=True)

def restore_edm_state(path: str, net: torch.nn.Module, ema: torch.nn.Module,
                      optimizer: torch.optim.Optimizer) -> int:
    """Load EDM's training state `path` into `net` and `optimizer`, its snapshot's EMA into `ema`;
    returns the number of images trained so far (EDM's kimg of the file name, times 1000)."""
    state = edm_state.load_edm_training_state(path)
    snapshot = state.snapshot_path
    if not os.path.isfile(snapshot):
        raise UserError(f'{path}: EDM keeps the EMA of this state in {os.path.basename(snapshot)}, which is not '
                        'beside it; copy it there')
    _copy_exactly(state.tensors, net, path)
    try:
        fast.load_optimizer_state(optimizer, edm_state.optimizer_state_for(state, net))  # Keeps this run's Adam.
    except (ValueError, KeyError) as e:
        raise UserError(f'{path}: the optimizer state does not fit ({e})') from None
    source = persistence.load_network_pickle(snapshot, keys=['ema'])['ema']
    _copy_exactly(source.state_dict(), ema, snapshot)
    return state.kimg * 1000

#----------------------------------------------------------------------------
