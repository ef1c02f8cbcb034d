"""SFBD's update rounds on one machine, the library of `python -m sfbd.rounds` (sfbd/rounds.py is its
command line): pretraining on the clean images, then K rounds of backward sampling (denoise.py) and
denoiser update (train.py --transfer), each step a run of the repository's own script.

    python -m sfbd.rounds --outdir=runs/sfbd --clean=clean.zip --noisy=noisy.zip --rounds=4 \\
        --pretrain-duration=200 --round-duration=20 --preset=cifar10

Every step has a directory of its own, so that no step can continue another by accident:

    <outdir>/round-000-pretrain/     train.py run: clean images only
    <outdir>/round-001/denoised/     denoise.py output: the noisy set denoised by round 0's snapshot
    <outdir>/round-001/train/        train.py run: --transfer=<round 0's final snapshot>,
                                     --data=<clean> --data=<round-001/denoised>
    <outdir>/round-002/...
    <outdir>/rounds.json             the options, and per round the snapshot it started from, the
                                     denoised set it made and the final snapshot it produced

Each step is a subprocess running the repository's own train.py or denoise.py (under torchrun
with --nproc > 1). A rerun of the same command continues where the last one stopped: finished
steps are skipped, an interrupted training run resumes from its newest training state, an
interrupted denoising run denoises the images it had not written. The recipe is in docs/sfbd.md.

By default each round is what the SFBD release does: a `--transfer` of the previous snapshot, which
restarts the kimg count, EDM's learning-rate warm-up and the optimizer. `--preset` adds the
release's (or EDM's) hyperparameters by name (sfbd/presets.py); anything else, such as a shorter
warm-up for the rounds, is an explicit option (docs/sfbd.md lists such deviations).

With --online, the same pretraining is followed by one Online SFBD run (sfbd/online.py) instead of
the rounds: `<outdir>/online/`, train.py --transfer=<pretraining snapshot> --data=<clean>
--noisy=<noisy>, recorded in `<outdir>/online.json`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from typing import IO, Any, Iterator, Sequence

from dnnlib.outputs import OutputClaim, OutputDir, ToolOutputs, read_record
from dnnlib.util import UserError, atomic_write
from sfbd.presets import PRESETS, preset_args
from training import run_files

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_FNAME = 'rounds.json'
ONLINE_RECORD_FNAME = 'online.json'
PREEMPTED_EXIT_CODE = 75  # train.py's status after a preemption signal: rerun to continue.

#----------------------------------------------------------------------------
# Directory layout of a run.

def pretrain_dir(outdir: str) -> str:
    return os.path.join(outdir, 'round-000-pretrain')

def round_dir(outdir: str, k: int) -> str:
    return os.path.join(outdir, f'round-{k:03d}')

def online_dir(outdir: str) -> str:
    return os.path.join(outdir, 'online')

def final_snapshot(run_dir: str) -> str | None:
    """The network snapshot furthest in training in a train.py run directory, or None."""
    return run_files.newest(run_dir, run_files.SNAPSHOT_PREFIX)

#----------------------------------------------------------------------------
# Running the repository's scripts: `python script.py ...`, or under torchrun
# for several processes. A failure stops the rounds with the script's status.

def script_command(script: str, args: Sequence[str], nproc: int = 1) -> list[str]:
    path = os.path.join(REPO_ROOT, script)
    if nproc > 1:
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', path, *args]
    return [sys.executable, path, *args]

# A stop signal (Ctrl-C, SIGTERM, a preemption's SIGUSR1) is passed on to the
# running script once, and the rounds wait for it: train.py saves a training
# state and exits 75. The script has a session of its own, so that a
# terminal's Ctrl-C reaches it only through this process (a second Ctrl-C,
# passed on too, aborts train.py as it would alone).
#
# Several processes (torchrun) are told as scripts/common.sh tells them: the
# launcher starts with SIGUSR1 ignored (its default action would kill it and
# leave the workers training unsupervised), and every signal goes to the
# workers themselves: train.py's get it as sent (Ctrl-C as SIGTERM, so a
# second Ctrl-C is one more stop request), other scripts' SIGTERM (denoise.py
# has no SIGUSR1 handler, and every image it finished is on disk). The
# launcher then reports the workers' status as its own failure (1), which
# counts as stopped for a rerun (75).
STOP_SIGNALS = tuple(sig for sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, 'SIGUSR1', None)) if sig is not None)

def _launcher_workers(launcher: subprocess.Popen) -> list[Any]:
    import psutil
    try:
        return psutil.Process(launcher.pid).children()
    except psutil.Error:
        return []

@contextlib.contextmanager
def passing_stop_signals(child: subprocess.Popen, launcher: bool = False,
                         as_sent: bool = True) -> Iterator[list[int]]:
    """Pass a stop signal on to `child` (a torchrun `launcher`: to its workers; SIGTERM unless
    `as_sent`); yields the list of the signals received."""
    received: list[int] = []
    def pass_on(signum: int, _frame: Any) -> None:
        received.append(signum)
        workers = _launcher_workers(child) if launcher else []
        if not workers:  # One process, or no worker yet (still in the rendezvous: nothing to save).
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(signum if not launcher else signal.SIGTERM)
            return
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.send_signal(signum if as_sent and signum != signal.SIGINT else signal.SIGTERM)
    in_main_thread = threading.current_thread() is threading.main_thread()  # Where handlers can be set.
    previous = {sig: signal.signal(sig, pass_on) for sig in STOP_SIGNALS} if in_main_thread else {}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

@contextlib.contextmanager
def _usr1_ignored(ignore: bool) -> Iterator[None]:
    # Children started meanwhile inherit the SIG_IGN (a handler is not inherited across exec);
    # this process ignores SIGUSR1 too until passing_stop_signals takes it over.
    usr1 = getattr(signal, 'SIGUSR1', None)
    if not ignore or usr1 is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(usr1, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(usr1, previous)

def run_script(script: str, args: Sequence[str], nproc: int = 1, log: IO[str] | None = None) -> None:
    """Run a script of the repository; its output goes to `log` if given, else to the terminal. A stop
    signal goes on to the script; the rounds then stop with status 75 once it has ended (128 + the
    signal's number for Ctrl-C and SIGTERM when the script did not save), to be rerun."""
    command = script_command(script, args, nproc)
    print('$ ' + shlex.join(command), file=log or sys.stdout, flush=True)
    with _usr1_ignored(nproc > 1):
        child = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT if log is not None else None,
                                 start_new_session=True)
        with child, passing_stop_signals(child, launcher=nproc > 1,
                                         as_sent=os.path.basename(script) == 'train.py') as received:
            status = child.wait()
    if received and nproc > 1 and status != 0:
        status = PREEMPTED_EXIT_CODE  # The launcher's 1 for workers that saved and stopped.
    if status == PREEMPTED_EXIT_CODE:
        print(f'{script} was preempted; rerun the same command to continue.', flush=True)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    if received:
        name = signal.Signals(received[0]).name
        print(f'Stopped by {name} ({script} ended with status {status}); rerun the same command to continue.', flush=True)
        preempted = hasattr(signal, 'SIGUSR1') and received[0] == signal.SIGUSR1
        raise SystemExit(PREEMPTED_EXIT_CODE if preempted else 128 + received[0])
    if status != 0 and log is None:  # Its own error is the line above: say how the rounds end, as no second error.
        print(f'sfbd.rounds stops: {script} ended with exit status {status}.', file=sys.stderr, flush=True)
        raise SystemExit(1)
    if status != 0:
        raise UserError(f'{script} failed with exit status {status} (its output is in {log.name})')

#----------------------------------------------------------------------------
# The record: the options of the run and one entry per finished step. A rerun
# must use the same options, except that it may ask for more rounds. It is
# written only once every input has been checked (a mistyped option leaves
# nothing behind), create-exclusively (dnnlib/outputs.py).

def load_record(outdir: str) -> dict | None:
    return read_record(os.path.join(outdir, RECORD_FNAME))

def save_record(outdir: str, record: dict, fname: str = RECORD_FNAME) -> None:
    with atomic_write(os.path.join(outdir, fname), 'w') as f:
        json.dump(record, f, indent=2)

def rounds_outputs(outdir: str, online: bool = False, clean: str | None = None, noisy: str | None = None) -> ToolOutputs:
    # --outdir, apart from the data, holding the record of the rounds or of the online run.
    return ToolOutputs('sfbd.rounds --online' if online else 'sfbd.rounds',
                       [OutputDir(outdir, '--outdir', ONLINE_RECORD_FNAME if online else RECORD_FNAME)],
                       [(clean, '--clean'), (noisy, '--noisy')])

def claim_outdir(outdir: str, options: dict) -> OutputClaim:
    # The steps' directories are the outputs that depend on the record.
    def has_outputs() -> bool:
        return any(name.startswith('round-') for name in os.listdir(outdir)) if os.path.isdir(outdir) else False
    return rounds_outputs(outdir).claim(dict(options=options, rounds=[]), ignore=['rounds', 'cost'], has_outputs=has_outputs)

#----------------------------------------------------------------------------
# Every input is checked before the first step: the datasets (clean images;
# an observation set of the same image size), and the options passed on to
# train.py and denoise.py (parsed by their own option tables, then train.py's
# dry run, in this process, with the round's data checks what needs the data).

TRAIN_OPTIONS_SET_HERE = ('outdir', 'nosubdir', 'data', 'noisy', 'duration', 'transfer', 'resume', 'dry_run', 'allow_noisy')

def _check_train_args(option: str, args: Sequence[str], nproc: int) -> None:
    from tools.train_options import parse_train_args  # Here, so that the rounds' --help need not import torch.
    if any(arg == '--noisy' or arg.startswith('--noisy=') for arg in args):  # Not the generic message: the rounds set it only with --online.
        raise UserError(f'{option}: --noisy is an option of sfbd.rounds itself (the observations; with --online it '
                        'trains Online SFBD on them); leave it out here')
    params = parse_train_args(args, option, TRAIN_OPTIONS_SET_HERE)
    if params['batch'] % nproc != 0:
        raise UserError(f'{option}: --batch={params["batch"]} does not divide evenly between --nproc={nproc} processes')

def _dry_run(option: str, run_dir: str, data: Sequence[str], args: Sequence[str]) -> None:
    from tools.train_run import dry_run_train
    dry_run_train(option, run_dir, data, args)

def check_datasets(clean: str, noisy: str, clean_option: str = '--clean', noisy_option: str = '--noisy') -> None:
    """Clean images and an observation set of the same image size (the options name them in messages)."""
    from sfbd.observations import ObservationSet
    from training.dataset import ImageFolderDataset
    for path, option in ((clean, clean_option), (noisy, noisy_option)):
        if not os.path.exists(path):
            raise UserError(f'{option}={path}: no such dataset')
    clean_set = ImageFolderDataset(clean)
    clean_set.close()
    if clean_set.sigma_text:
        raise UserError(f'{clean_option}={clean}: is an observation set (sigma {clean_set.sigma_text} in dataset.json); '
                        'give the clean images')
    obs = ObservationSet(noisy, noisy_option)
    obs.close()
    if obs.image_shape != clean_set.image_shape:
        raise UserError(f'{noisy_option}={noisy}: observations are {obs.image_shape} (C, H, W), but the clean images '
                        f'of {clean} are {clean_set.image_shape}')

def check_inputs(outdir: str, clean: str, noisy: str, train_args: Sequence[str], round_args: Sequence[str],
                 denoise_args: Sequence[str], nproc: int) -> None:
    from sfbd.denoise_set import check_denoise_params
    from tools.denoise_setup import parse_denoise_args
    check_datasets(clean, noisy)

    # The options of each step, as the step will see them.
    for option, args in (('--train-args', train_args), ('--round-args', [*train_args, *round_args])):
        _check_train_args(option, args, nproc)
    try:  # What denoise.py would refuse of the observations, before any step runs.
        check_denoise_params(noisy, parse_denoise_args(denoise_args))
    except UserError as e:
        raise UserError(str(e) if str(e).startswith('--denoise-args') else f'--denoise-args: {e}') from None
    _dry_run('--train-args', pretrain_dir(outdir), [clean], train_args)
    # The round's second dataset is the denoised set, here stood in for by the observations.
    _dry_run('--round-args' if round_args else '--train-args (update rounds)',
             os.path.join(round_dir(outdir, 1), 'train'), [clean, noisy], [*train_args, *round_args, '--allow-noisy'])

def _relative(outdir: str, path: str) -> str:
    return os.path.relpath(path, outdir).replace(os.sep, '/')

#----------------------------------------------------------------------------
# One train.py run in a directory of its own (--nosubdir, so that a rerun
# resumes it); returns its final snapshot.

def train_step(run_dir: str, data: Sequence[str], duration: float, args: Sequence[str], transfer: str | None = None,
               nproc: int = 1, log: IO[str] | None = None) -> str:
    command = [f'--outdir={run_dir}', '--nosubdir', *[f'--data={d}' for d in data], f'--duration={duration:g}']
    if transfer is not None:
        command.append(f'--transfer={transfer}')
    run_script('train.py', [*command, *args], nproc, log)
    snapshot = final_snapshot(run_dir)
    if snapshot is None:
        raise UserError(f'{run_dir}: train.py finished without a network snapshot')
    return snapshot

#----------------------------------------------------------------------------
# The cost of the steps in network evaluations (sfbd/cost.py): the images each
# train.py run trained on (from its training_options.json), and the network
# evaluations of each observation's backward pass at its own sigma on the
# sampler's grid (the pretrained network's noise levels). Recorded under
# 'cost' in rounds.json and online.json, and printed at the end.

def _trained(run_dir: str) -> int | None:
    # None for a run without its training_options.json (not a train.py run).
    from sfbd.cost import trained_images
    options = read_record(os.path.join(run_dir, 'training_options.json'))
    return None if options is None else trained_images(options['total_kimg'], options['batch_size'])

def _observation_nfe(noisy: str, network: str, mode: str, num_steps: int, **grid) -> list[int]:
    from sfbd.cost import observation_nfe
    from sfbd.observations import ObservationSet
    from torch_utils.persistence import load_network
    obs = ObservationSet(noisy, '--noisy')
    sigmas = obs.sigmas
    obs.close()
    return observation_nfe(sigmas, mode, num_steps, net=load_network(network), **grid).tolist()

def print_cost(cost: dict) -> None:
    from sfbd.cost import describe_cost
    print('Cost in network evaluations (sfbd/cost.py; a training image pass is one forward and one backward pass, '
          'counted as 3 forward evaluations):', flush=True)
    for key, label in (('pretraining', 'pretraining'), ('rounds', 'the rounds'), ('online', 'the online run')):
        if cost.get(key) is not None:
            print(f'  {label + ":":<16}{describe_cost(cost[key])}', flush=True)
    if cost.get('note'):
        print(f'  {cost["note"]}', flush=True)

def rounds_cost(outdir: str, record: dict, denoise_args: Sequence[str]) -> dict | None:
    """Pretraining apart; every round's denoising of all observations and its training, summed.
    None where a step left no training_options.json."""
    from sfbd.cost import add_costs, network_cost
    from training.sampler import ABLATION_KEYS
    from tools.denoise_setup import parse_denoise_args
    params = parse_denoise_args(denoise_args)
    entries = [e for e in record['rounds'] if e.get('snapshot') is not None]
    trained = [_trained(os.path.join(outdir, e['train_dir'])) for e in entries]
    if None in trained:
        return None
    cost = dict(pretraining=network_cost(trained[0]), rounds=None, note=None)
    if any(params.get(key) is not None for key in ABLATION_KEYS):
        cost['note'] = 'The rounds are not counted: --denoise-args changes the sampler (ablation options).'
        return cost
    nfe = _observation_nfe(record['options']['noisy'], os.path.join(outdir, entries[0]['snapshot']), params['mode'],
                           params['num_steps'], sigma_min=params['sigma_min'], sigma_max=params['sigma_max'], rho=params['rho'])
    per_round = [network_cost(images, nfe, len(nfe)) for images in trained[1:]]
    cost['rounds'] = add_costs(per_round)
    cost['per_round'] = per_round
    return cost

def online_cost(outdir: str, record: dict) -> dict | None:
    """Pretraining apart; the online run's training, its fill and its refreshes. None where a step
    left no training_options.json."""
    from sfbd.cost import network_cost
    options = read_record(os.path.join(outdir, record['online']['train_dir'], 'training_options.json'))
    pretrained = _trained(os.path.join(outdir, record['pretrain']['train_dir']))
    if options is None or pretrained is None:
        return None
    online = options['online_kwargs']
    nfe = _observation_nfe(record['options']['noisy'], os.path.join(outdir, record['pretrain']['snapshot']),
                           online['mode'], online['num_steps'])
    denoised = round((record['online'].get('refresh_passes', 0) + 1) * len(nfe))  # The fill, then the refreshes.
    return dict(pretraining=network_cost(pretrained),
                online=network_cost(_trained(os.path.join(outdir, record['online']['train_dir'])), nfe, denoised))

#----------------------------------------------------------------------------
# The rounds. The preset's options come first; `train_args` go to every
# train.py run, `round_args` only to the update rounds (e.g. a shorter
# learning-rate warm-up), `denoise_args` to every denoise.py run. Durations are
# in millions of images, as train.py's.

def _check_preset(preset: str | None) -> None:
    if preset not in (None, 'none') and preset not in PRESETS:
        raise UserError(f'--preset={preset}: unknown; known: {", ".join(PRESETS)}, none')

def run_rounds(outdir: str, clean: str, noisy: str, num_rounds: int, pretrain_duration: float, round_duration: float,
               train_args: Sequence[str] = (), round_args: Sequence[str] = (), denoise_args: Sequence[str] = (),
               nproc: int = 1, log: IO[str] | None = None, preset: str | None = None, announce: bool = True) -> dict:
    """Run (or continue) pretraining and `num_rounds` SFBD rounds; returns the record. `announce`:
    end with the "Done" line (off for a caller that runs the rounds as a step of its own)."""
    _check_preset(preset)
    rounds_outputs(outdir, clean=clean, noisy=noisy).check()
    outdir = os.path.abspath(outdir)
    options = dict(clean=os.path.abspath(clean), noisy=os.path.abspath(noisy), pretrain_duration=pretrain_duration,
                   round_duration=round_duration, train_args=list(train_args), round_args=list(round_args),
                   denoise_args=list(denoise_args))
    if preset not in (None, 'none'):
        options['preset'] = preset  # Recorded only when given, so that records of earlier versions still match.
    train_args = [*preset_args(preset, 'train'), *train_args]
    denoise_args = [*preset_args(preset, 'denoise'), *denoise_args]
    record, claim = load_record(outdir), claim_outdir(outdir, options)
    if record is None or record.get('options') != options:  # Checked when first recorded.
        if record is not None and claim.has_outputs():
            claim.claim()  # Refuses the other options at once.
        check_inputs(outdir, clean, noisy, train_args, round_args, denoise_args, nproc)
    record = claim.claim()
    entries = record['rounds']

    def finished(k: int) -> str | None:
        # The final snapshot of round k, if the record says it is done and the file is there.
        if k < len(entries) and entries[k].get('snapshot') is not None:
            path = os.path.join(outdir, entries[k]['snapshot'])
            if os.path.isfile(path):
                return path
        return None

    # Round 0: pretraining on the clean images.
    if finished(0) is None:
        print(f'Round 0: pretraining on {clean}', flush=True)
        snapshot = train_step(pretrain_dir(outdir), [options['clean']], pretrain_duration, train_args, None, nproc, log)
        entries[:] = [dict(round=0, train_dir=_relative(outdir, pretrain_dir(outdir)),
                           snapshot=_relative(outdir, snapshot))]
        save_record(outdir, record)

    # Rounds 1..K: denoise with the previous snapshot, fine-tune it on clean + denoised.
    for k in range(1, num_rounds + 1):
        if finished(k) is not None:
            continue
        previous = finished(k - 1)
        denoised = os.path.join(round_dir(outdir, k), 'denoised')
        entry = dict(round=k, network=entries[k - 1]['snapshot'], denoised=_relative(outdir, denoised),
                     train_dir=_relative(outdir, os.path.join(round_dir(outdir, k), 'train')), snapshot=None)
        del entries[k:]
        entries.append(entry)
        save_record(outdir, record)

        print(f'Round {k}: denoising {noisy} with {entry["network"]}', flush=True)
        run_script('denoise.py', [f'--network={previous}', f'--data={options["noisy"]}', f'--outdir={denoised}',
                                  *denoise_args], nproc, log)
        if not os.path.isfile(os.path.join(denoised, 'dataset.json')):
            raise UserError(f'{denoised}: denoise.py finished, but the denoised set is incomplete')

        print(f'Round {k}: fine-tuning on {clean} + {entry["denoised"]}', flush=True)
        snapshot = train_step(os.path.join(outdir, entry['train_dir']), [options['clean'], denoised], round_duration,
                              [*train_args, *round_args], previous, nproc, log)
        entry['snapshot'] = _relative(outdir, snapshot)
        save_record(outdir, record)

    record['cost'] = rounds_cost(outdir, record, denoise_args)
    save_record(outdir, record)
    if announce:
        print(f'Done: {num_rounds} rounds in {outdir}; the last snapshot is {entries[num_rounds]["snapshot"]}.', flush=True)
        if record['cost'] is not None:
            print_cost(record['cost'])
    return record

#----------------------------------------------------------------------------
# Online SFBD: the same pretraining, then one train.py run on the clean images
# and the observations (--noisy), denoised again as it trains (sfbd/online.py).
# The preset's train.py options come first, then `train_args` (both runs),
# then `online_args` (the online run only, e.g. --refresh-every). The record
# is online.json; a folder of the rounds (rounds.json) is refused, and the
# rounds refuse this one, as the two would share the pretraining.

# How far the online run came, from the last tick of its stats.jsonl:
# refresh passes (the fill not counted) and the buffer's loss weight; None
# when it has no such tick.
def online_progress(run_dir: str) -> dict[str, float] | None:
    last = None
    path = os.path.join(run_dir, 'stats.jsonl')
    if os.path.isfile(path):
        with open(path, 'r', encoding='utf-8') as f:
            for line in f:
                try:
                    tick = json.loads(line)
                    last = dict(refresh_passes=float(tick['Online/passes']['mean']) - 1,
                                loss_weight=float(tick['Online/loss_weight']['mean']))
                except (ValueError, KeyError, TypeError):
                    continue  # A line being written.
    return last

def run_online(outdir: str, clean: str, noisy: str, pretrain_duration: float, online_duration: float,
               train_args: Sequence[str] = (), online_args: Sequence[str] = (), nproc: int = 1,
               log: IO[str] | None = None, preset: str | None = None) -> dict:
    """Run (or continue) pretraining and the online run; returns the record (online.json)."""
    _check_preset(preset)
    rounds_outputs(outdir, online=True, clean=clean, noisy=noisy).check()
    outdir = os.path.abspath(outdir)
    options = dict(clean=os.path.abspath(clean), noisy=os.path.abspath(noisy), pretrain_duration=pretrain_duration,
                   online_duration=online_duration, train_args=list(train_args), online_args=list(online_args),
                   preset=preset or 'none')
    train_args = [*preset_args(preset, 'train'), *train_args]
    online_args = [*preset_args(preset, 'online'), *online_args]  # The refreshes denoise as the preset's denoise.py.
    def has_outputs() -> bool:
        return any(os.path.isdir(path) for path in (pretrain_dir(outdir), online_dir(outdir)))
    claim = rounds_outputs(outdir, online=True).claim(dict(options=options), has_outputs=has_outputs,
                                                       ignore=['pretrain', 'online', 'cost'])
    record = read_record(os.path.join(outdir, ONLINE_RECORD_FNAME))
    if record is None or record.get('options') != options:  # Checked when first recorded.
        if record is not None and has_outputs():
            claim.claim()  # Refuses the other options at once.
        check_datasets(clean, noisy)
        _check_train_args('--train-args', train_args, nproc)
        _check_train_args('--online-args', [*train_args, *online_args], nproc)
        _dry_run('--train-args', pretrain_dir(outdir), [clean], train_args)
        # With the online run's duration, which its refresh plan depends on.
        _dry_run('--online-args', online_dir(outdir), [clean],
                 [f'--noisy={noisy}', f'--duration={online_duration:g}', *train_args, *online_args])
    record = claim.claim()

    def finished(key: str) -> str | None:
        snapshot = (record.get(key) or {}).get('snapshot')
        return os.path.join(outdir, snapshot) if snapshot and os.path.isfile(os.path.join(outdir, snapshot)) else None

    # Pretraining on the clean images, as for the rounds.
    if finished('pretrain') is None:
        print(f'Pretraining on {clean}', flush=True)
        snapshot = train_step(pretrain_dir(outdir), [options['clean']], pretrain_duration, train_args, None, nproc, log)
        record['pretrain'] = dict(train_dir=_relative(outdir, pretrain_dir(outdir)), snapshot=_relative(outdir, snapshot))
        record.pop('online', None)
        save_record(outdir, record, ONLINE_RECORD_FNAME)

    # The online run, from the pretraining's final snapshot.
    if finished('online') is None:
        print(f'Online SFBD: training on {clean} + {noisy} from {record["pretrain"]["snapshot"]}', flush=True)
        snapshot = train_step(online_dir(outdir), [options['clean']], online_duration,
                              [f'--noisy={options["noisy"]}', *train_args, *online_args], finished('pretrain'), nproc, log)
        plan = (read_record(os.path.join(online_dir(outdir), 'training_options.json')) or {}).get('online_plan') or {}
        record['online'] = dict(train_dir=_relative(outdir, online_dir(outdir)), network=record['pretrain']['snapshot'],
                                snapshot=_relative(outdir, snapshot), **(online_progress(online_dir(outdir)) or {}))
        if 'refresh_passes' in plan:
            record['online']['planned_refresh_passes'] = plan['refresh_passes']
        record['cost'] = online_cost(outdir, record)
        save_record(outdir, record, ONLINE_RECORD_FNAME)
    print(f'Done: Online SFBD in {outdir}; the final snapshot is {record["online"]["snapshot"]}.', flush=True)
    if 'refresh_passes' in record['online']:
        planned = record['online'].get('planned_refresh_passes')
        print(f'Refresh passes over the observations: {record["online"]["refresh_passes"]:.2f}'
              + (f' of the {planned:.2f} planned' if planned is not None else '') + ', the fill not counted.', flush=True)
    if record.get('cost') is not None:
        print_cost(record['cost'])
    if 'refresh_passes' in record['online']:
        from sfbd.online import shortfall_note  # Here, so that the rounds need not import torch.
        note = shortfall_note(record['online']['refresh_passes'], record['online']['loss_weight'])
        if note is not None:
            print(f'{note} (online/log.txt)', flush=True)
    return record

#----------------------------------------------------------------------------
# `python -m sfbd.rounds`: the rounds, or with `online` the online run, after
# the checks of the options that belong to one or the other.

def rounds_command(outdir: str, clean: str, noisy: str, num_rounds: int | None, pretrain_duration: float,
                   round_duration: float | None, online: bool, online_duration: float | None, online_args: list[str],
                   preset: str, train_args: list[str], round_args: list[str], denoise_args: list[str], nproc: int) -> None:
    """What `python -m sfbd.rounds` does with its options."""
    if online:
        given = [name for name, value in (('--rounds', num_rounds), ('--round-duration', round_duration),
                                          ('--round-args', round_args), ('--denoise-args', denoise_args))
                 if value is not None and value != [] and value != ()]  # --rounds=0 is given too.
        if given:
            raise UserError(f'{", ".join(given)}: options of the rounds; --online runs no rounds')
        if online_duration is None:
            raise UserError('--online needs --online-duration')
        run_online(outdir, clean, noisy, pretrain_duration, online_duration, train_args, online_args, nproc, preset=preset)
        return
    for name, value in (('--rounds', num_rounds), ('--round-duration', round_duration)):
        if value is None:
            raise UserError(f'{name} is required (or --online for Online SFBD)')
    if online_duration is not None or online_args:
        raise UserError('--online-duration, --online-args: options of --online')
    run_rounds(outdir, clean, noisy, num_rounds, pretrain_duration, round_duration, train_args, round_args,
               denoise_args, nproc, preset=preset)

#----------------------------------------------------------------------------
