"""SFBD's update rounds on one machine: pretraining on the clean images, then K rounds of
backward sampling (denoise.py) and denoiser update (train.py --transfer).

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
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from typing import IO, Sequence

import click

from dnnlib.cli import FiniteFloat, ShellWords
from dnnlib.outputs import OutputClaim, check_apart, check_output_dir, read_record
from dnnlib.util import UserError, atomic_write, report_user_errors
from sfbd.presets import PRESETS, preset_args

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_FNAME = 'rounds.json'
PREEMPTED_EXIT_CODE = 75  # train.py's status after a preemption signal: rerun to continue.
_SNAPSHOT_PATTERN = re.compile(r'^network-snapshot-(\d+)\.pkl$')

#----------------------------------------------------------------------------
# Directory layout of a run.

def pretrain_dir(outdir: str) -> str:
    return os.path.join(outdir, 'round-000-pretrain')

def round_dir(outdir: str, k: int) -> str:
    return os.path.join(outdir, f'round-{k:03d}')

def final_snapshot(run_dir: str) -> str | None:
    """The network snapshot with the most kimg in a train.py run directory, or None."""
    if not os.path.isdir(run_dir):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(run_dir) if (m := _SNAPSHOT_PATTERN.match(name))]
    return os.path.join(run_dir, max(found)[1]) if found else None

#----------------------------------------------------------------------------
# Running the repository's scripts: `python script.py ...`, or under torchrun
# for several processes. A failure stops the rounds with the script's status.

def script_command(script: str, args: Sequence[str], nproc: int = 1) -> list[str]:
    path = os.path.join(REPO_ROOT, script)
    if nproc > 1:
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={nproc}', path, *args]
    return [sys.executable, path, *args]

def run_script(script: str, args: Sequence[str], nproc: int = 1, log: IO[str] | None = None) -> None:
    """Run a script of the repository; its output goes to `log` if given, else to the terminal."""
    command = script_command(script, args, nproc)
    print('$ ' + shlex.join(command), file=log or sys.stdout, flush=True)
    status = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT if log is not None else None)
    if status == PREEMPTED_EXIT_CODE:
        print(f'{script} was preempted; rerun the same command to continue.', flush=True)
        raise SystemExit(PREEMPTED_EXIT_CODE)
    if status != 0:
        raise UserError(f'{script} failed with exit status {status}' + (f' (its output is in {log.name})' if log is not None else ''))

#----------------------------------------------------------------------------
# The record: the options of the run and one entry per finished step. A rerun
# must use the same options, except that it may ask for more rounds. It is
# written only once every input has been checked (a mistyped option leaves
# nothing behind), create-exclusively (dnnlib/outputs.py).

def load_record(outdir: str) -> dict | None:
    return read_record(os.path.join(outdir, RECORD_FNAME))

def save_record(outdir: str, record: dict) -> None:
    with atomic_write(os.path.join(outdir, RECORD_FNAME), 'w') as f:
        json.dump(record, f, indent=2)

def claim_outdir(outdir: str, options: dict) -> OutputClaim:
    # The steps' directories are the outputs that depend on the record.
    def has_outputs() -> bool:
        return any(name.startswith('round-') for name in os.listdir(outdir)) if os.path.isdir(outdir) else False
    return OutputClaim(outdir, '--outdir', RECORD_FNAME, dict(options=options, rounds=[]), command='sfbd.rounds',
                       has_outputs=has_outputs, ignore=['rounds'])

#----------------------------------------------------------------------------
# Every input is checked before the first step: the datasets (clean images;
# an observation set of the same image size), and the options passed on to
# train.py and denoise.py (parsed by their own option tables, then train.py's
# dry run, in this process, with the round's data checks what needs the data).

TRAIN_OPTIONS_SET_HERE = ('outdir', 'nosubdir', 'data', 'duration', 'transfer', 'resume', 'dry_run', 'allow_noisy')
DENOISE_OPTIONS_SET_HERE = ('network_pkl', 'data', 'outdir', 'shard', 'finalize')

def _parse_options(command: click.Command, name: str, option: str, args: Sequence[str], required: Sequence[str],
                   set_here: Sequence[str]) -> dict:
    try:
        ctx = command.make_context(name, [*required, *args], resilient_parsing=False)
    except click.ClickException as e:
        raise UserError(f'{option}: {e.format_message()}') from None
    given = [param for param in command.params if param.name in set_here
             and any(arg.split('=')[0] in param.opts for arg in args)]
    if given:
        raise UserError(f'{option}: {given[0].opts[-1]} is set by sfbd.rounds itself; leave it out')
    return ctx.params

def check_inputs(outdir: str, clean: str, noisy: str, train_args: Sequence[str], round_args: Sequence[str],
                 denoise_args: Sequence[str], nproc: int) -> None:
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    import denoise  # The option tables of the steps.
    import train
    from sfbd.observations import ObservationSet
    from training.dataset import ImageFolderDataset

    # The datasets.
    for path, option in ((clean, '--clean'), (noisy, '--noisy')):
        if not os.path.exists(path):
            raise UserError(f'{option}={path}: no such dataset')
    clean_set = ImageFolderDataset(clean)
    clean_set.close()
    if clean_set.sigma_text:
        raise UserError(f'--clean={clean}: is an observation set (sigma {clean_set.sigma_text} in dataset.json); '
                        'give the clean images')
    obs = ObservationSet(noisy, '--noisy')
    obs.close()
    if obs.image_shape != clean_set.image_shape:
        raise UserError(f'--noisy={noisy}: observations are {obs.image_shape} (C, H, W), but the clean images of '
                        f'{clean} are {clean_set.image_shape}')

    # The options of each step, as the step will see them.
    required = ['--outdir=.', '--data=.']
    for option, args in (('--train-args', train_args), ('--round-args', [*train_args, *round_args])):
        params = _parse_options(train.main, 'train.py', option, args, required, TRAIN_OPTIONS_SET_HERE)
        if params['batch'] % nproc != 0:
            raise UserError(f'{option}: --batch={params["batch"]} does not divide evenly between --nproc={nproc} processes')
    _parse_options(denoise.main, 'denoise.py', '--denoise-args', denoise_args, ['--network=.', *required],
                   DENOISE_OPTIONS_SET_HERE)
    steps = (('--train-args', pretrain_dir(outdir), [clean], train_args),
             ('--round-args' if round_args else '--train-args (update rounds)', os.path.join(round_dir(outdir, 1), 'train'),
              [clean, noisy], [*train_args, *round_args]))
    for option, run_dir, data, args in steps:
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                # The round's second dataset is the denoised set, here stood in for by the observations.
                train.main.main([f'--outdir={run_dir}', '--nosubdir', *[f'--data={d}' for d in data], *args,
                                 '--allow-noisy', '--dry-run'],
                                prog_name='train.py', standalone_mode=False)
        except click.ClickException as e:
            raise UserError(f'{option}: train.py refuses them: {e.format_message()}') from None

def _relative(outdir: str, path: str) -> str:
    return os.path.relpath(path, outdir).replace(os.sep, '/')

#----------------------------------------------------------------------------
# The rounds. The preset's options come first; `train_args` go to every
# train.py run, `round_args` only to the update rounds (e.g. a shorter
# learning-rate warm-up), `denoise_args` to every denoise.py run. Durations are
# in millions of images, as train.py's.

def run_rounds(outdir: str, clean: str, noisy: str, num_rounds: int, pretrain_duration: float, round_duration: float,
               train_args: Sequence[str] = (), round_args: Sequence[str] = (), denoise_args: Sequence[str] = (),
               nproc: int = 1, log: IO[str] | None = None, preset: str | None = None) -> dict:
    """Run (or continue) pretraining and `num_rounds` SFBD rounds; returns the record."""
    if preset not in (None, 'none') and preset not in PRESETS:
        raise UserError(f'--preset={preset}: unknown; known: {", ".join(PRESETS)}, none')
    check_apart([(outdir, '--outdir')], [(clean, '--clean'), (noisy, '--noisy')])
    outdir = os.path.abspath(outdir)
    options = dict(clean=os.path.abspath(clean), noisy=os.path.abspath(noisy), pretrain_duration=pretrain_duration,
                   round_duration=round_duration, train_args=list(train_args), round_args=list(round_args),
                   denoise_args=list(denoise_args))
    if preset not in (None, 'none'):
        options['preset'] = preset  # Recorded only when given, so that records of earlier versions still match.
    train_args = [*preset_args(preset, 'train'), *train_args]
    denoise_args = [*preset_args(preset, 'denoise'), *denoise_args]
    check_output_dir(outdir, '--outdir', 'sfbd.rounds', [RECORD_FNAME])
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

    def train(run_dir: str, data: list[str], duration: float, extra: Sequence[str], transfer: str | None) -> str:
        args = [f'--outdir={run_dir}', '--nosubdir', *[f'--data={d}' for d in data], f'--duration={duration:g}']
        if transfer is not None:
            args.append(f'--transfer={transfer}')
        run_script('train.py', [*args, *train_args, *extra], nproc, log)
        snapshot = final_snapshot(run_dir)
        if snapshot is None:
            raise UserError(f'{run_dir}: train.py finished without a network snapshot')
        return snapshot

    # Round 0: pretraining on the clean images.
    if finished(0) is None:
        print(f'Round 0: pretraining on {clean}', flush=True)
        snapshot = train(pretrain_dir(outdir), [options['clean']], pretrain_duration, (), None)
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
        snapshot = train(os.path.join(outdir, entry['train_dir']), [options['clean'], denoised], round_duration,
                         round_args, previous)
        entry['snapshot'] = _relative(outdir, snapshot)
        save_record(outdir, record)

    print(f'Done: {num_rounds} rounds in {outdir}; the last snapshot is {entries[num_rounds]["snapshot"]}.', flush=True)
    return record

#----------------------------------------------------------------------------

@click.command()
@click.option('--outdir',             help='Where the rounds live (created; reruns continue)', metavar='DIR',      type=str, required=True)
@click.option('--clean',              help='Clean images (an EDM dataset)', metavar='ZIP|DIR',                    type=str, required=True)
@click.option('--noisy',              help='Noisy observations (docs/observations.md)', metavar='ZIP|DIR',        type=str, required=True)
@click.option('--rounds', 'num_rounds', help='Number of SFBD rounds after pretraining', metavar='INT',             type=click.IntRange(min=0), required=True)
@click.option('--pretrain-duration',  help='Pretraining length in millions of images', metavar='MIMG',            type=FiniteFloat(min=0, min_open=True), required=True)
@click.option('--round-duration',     help='Length of each update round in millions of images', metavar='MIMG',   type=FiniteFloat(min=0, min_open=True), required=True)
@click.option('--preset',             help='Hyperparameters of a published run for every step (python -m sfbd.presets)', type=click.Choice([*PRESETS, 'none']), default='none', show_default=True)
@click.option('--train-args',         help='More train.py options for every run, e.g. "--arch=ncsnpp --batch=256"', metavar='STR', type=ShellWords(), default='', show_default=True)
@click.option('--round-args',         help='More train.py options for the update rounds only', metavar='STR',     type=ShellWords(), default='', show_default=True)
@click.option('--denoise-args',       help='More denoise.py options, e.g. "--steps=40 --batch=256"', metavar='STR', type=ShellWords(), default='', show_default=True)
@click.option('--nproc',              help='Processes per step (torchrun); 1 = plain python', metavar='INT',      type=click.IntRange(min=1), default=1, show_default=True)
@report_user_errors
def main(outdir: str, clean: str, noisy: str, num_rounds: int, pretrain_duration: float, round_duration: float,
         preset: str, train_args: list[str], round_args: list[str], denoise_args: list[str], nproc: int) -> None:
    """Run SFBD: pretrain on clean images, then alternate denoising the noisy
    observations and fine-tuning on clean + denoised images.

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
    Rerunning the same command continues an interrupted run; a larger --rounds
    adds rounds to a finished one.
    """
    run_rounds(outdir, clean, noisy, num_rounds, pretrain_duration, round_duration, train_args, round_args,
               denoise_args, nproc, preset=preset)

#----------------------------------------------------------------------------

if __name__ == '__main__':
    main()

#----------------------------------------------------------------------------
