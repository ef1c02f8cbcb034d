"""Nothing lost, nothing half-written, one clear line for every bad input (docs/reliability.md).

Each test tries one class of failure on every command where it can occur:

- data loss: no command writes into a dataset or observation set it did not make, or into one of
  its own inputs;
- a failed run does not block its corrected rerun;
- concurrent runs with different options into one output: exactly one wins;
- half-written outputs: an empty or cut-short image never counts as done, a failing command (a full
  or read-only disk included) leaves no temporary file, a refused command leaves nothing;
- SIGKILL at a random point, then the same command again: the result of an uninterrupted run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import dataset_tool
import denoise
from sfbd import denoise_set
import fid
import generate
import train
from tools import train_run
from dnnlib import outputs
from dnnlib.util import UserError
from sfbd import demo, rounds
from tools import rounds as rounds_lib
from metrics import fid as fid_stats

from sfbd_helpers import (make_image_dataset, make_observation_set, random_observations, read_json, read_png_dataset,
                          save_tiny_network)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_OBS = 10

#----------------------------------------------------------------------------
# Inputs shared by the tests: a labelled clean dataset, an observation set of
# the same size and a tiny network.

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp('reliability')
    make_image_dataset(str(root / 'clean'), 6, num_classes=3)
    make_observation_set(str(root / 'obs'), random_observations(NUM_OBS), sigma=0.5)
    save_tiny_network(str(root / 'net.pkl'))
    return root

def tree_digest(path) -> dict[str, str]:
    """{relative name: sha256} of every file below `path` (or of the file itself)."""
    path = str(path)
    if os.path.isfile(path):
        with open(path, 'rb') as f:
            return {'.': hashlib.sha256(f.read()).hexdigest()}
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, 'rb') as f:
                out[os.path.relpath(full, path)] = hashlib.sha256(f.read()).hexdigest()
    return out

def temporaries(path) -> list[str]:
    return [os.path.join(root, name) for root, _dirs, files in os.walk(str(path)) for name in files if name.endswith('.tmp')]

def invoke(command, args):
    return CliRunner().invoke(command, [str(a) for a in args])

def assert_one_error_line(result, *fragments, exit_code=1):
    assert result.exit_code == exit_code, result.output
    errors = [line for line in result.output.splitlines() if line.startswith('Error:')]
    assert len(errors) == 1 and 'Traceback' not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]

def run_script(*args, timeout=300):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=REPO_ROOT)
    return subprocess.run([sys.executable, *[str(a) for a in args]], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)

#----------------------------------------------------------------------------
# 1. Data lost. Every command refuses an output that is a dataset or an
# observation set it did not make, or that is, holds or lies in an input;
# the folder is left byte for byte as it was.

def _refusals(root):
    clean, obs, net = root / 'clean', root / 'obs', root / 'net.pkl'
    return {
        'denoise-into-a-clean-dataset':  (denoise.main, ['--network', net, '--data', obs, '--outdir', clean], clean, 'holds a dataset'),
        'denoise-into-its-data':         (denoise.main, ['--network', net, '--data', obs, '--outdir', obs], obs, 'is the input --data'),
        'denoise-inside-its-data':       (denoise.main, ['--network', net, '--data', obs, '--outdir', obs / 'x'], obs, 'is inside the input'),
        'denoise-grid-inside-its-data':  (denoise.main, ['--network', net, '--data', obs, '--outdir', root / 'd', '--grid', obs / 'g.png'], obs, '--grid'),
        'denoise-grid-over-its-network': (denoise.main, ['--network', net, '--data', obs, '--outdir', root / 'd', '--grid', net], net, 'is the input --network'),
        'generate-into-a-dataset':       (generate.main, ['--network', net, '--outdir', clean, '--seeds=0-1'], clean, 'holds a dataset'),
        'generate-into-observations':    (generate.main, ['--network', net, '--outdir', obs, '--seeds=0-1'], obs, 'holds a dataset'),
        'fid-calc-images-into-a-dataset': (fid.calc, ['--network', net, '--ref', root / 'r.npz', '--outdir', clean, '--num=2'], clean, 'holds a dataset'),
        'fid-calc-json-over-its-network': (fid.calc, ['--network', net, '--ref', root / 'r.npz', '--json', net], net, 'is the input --network'),
        'fid-ref-inside-its-data':       (fid.ref, ['--data', clean, '--dest', clean / 'ref.npz'], clean, 'is inside the input --data'),
        'fid-ref-over-another-file':     (fid.ref, ['--data', clean, '--dest', obs / 'img00000000.npy'], obs, 'lies inside'),
        'fid-ref-over-a-dataset-json':   (fid.ref, ['--data', clean, '--dest', obs / 'dataset.json'], obs, "dataset.json is the name of a dataset's own file"),
        'fid-calc-json-over-a-dataset':  (fid.calc, ['--network', net, '--ref', root / 'r.npz', '--json', clean / 'dataset.json'], clean, "dataset.json is the name"),
        'fid-calc-json-inside-a-dataset': (fid.calc, ['--network', net, '--ref', root / 'r.npz', '--json', clean / 'sub' / 'fid.jsonl'], clean, 'a set of images (dataset.json)'),
        'generate-inside-a-dataset':     (generate.main, ['--network', net, '--outdir', clean / 'sub', '--seeds=0-1'], clean, 'lies inside'),
        'denoise-inside-observations':   (denoise.main, ['--network', net, '--data', clean, '--outdir', obs / 'sub'], obs, 'a set of images (dataset.json)'),
        'denoise-grid-over-an-image':    (denoise.main, ['--network', net, '--data', obs, '--outdir', root / 'd', '--grid', clean / '00000' / 'img00000000.png'], clean, 'lies inside'),
        'denoise-grid-inside-a-dataset': (denoise.main, ['--network', net, '--data', obs, '--outdir', root / 'd', '--grid', clean / 'grid.png'], clean, 'lies inside'),
        'train-runs-inside-a-dataset':   (train.main, ['--outdir', obs / 'runs', '--data', clean, '-n'], obs, 'a set of images (dataset.json)'),
        'train-into-a-dataset':          (train.main, ['--outdir', obs, '--nosubdir', '--data', clean, '-n'], obs, 'holds a dataset'),
        'train-into-its-data':           (train.main, ['--outdir', clean, '--nosubdir', '--data', clean, '-n'], clean, 'is the input --data'),
        'train-runs-inside-its-data':    (train.main, ['--outdir', clean, '--data', clean, '-n'], clean, 'is inside the input --data'),
        'rounds-into-its-data':          (rounds.main, ['--outdir', clean, '--clean', clean, '--noisy', obs, '--rounds=1',
                                                        '--pretrain-duration=1', '--round-duration=1'], clean, 'is the input --clean'),
        'rounds-into-a-dataset':         (rounds.main, ['--outdir', obs / '..' / 'clean', '--clean', root / 'missing', '--noisy', obs, '--rounds=1',
                                                        '--pretrain-duration=1', '--round-duration=1'], clean, 'holds a dataset'),
        'demo-into-a-dataset':           (demo.main, ['--outdir', clean], clean, 'holds a dataset'),
        'convert-inside-its-source':     (dataset_tool.cli, ['convert', '--source', clean, '--dest', clean / 'new.zip'], clean, 'is inside the input --source'),
        'merge-over-its-source':         (dataset_tool.cli, ['merge', '--source', clean, '--dest', clean], clean, 'is the input --source'),
        'split-inside-its-source':       (dataset_tool.cli, ['split', '--source', clean, '--clean', root / 'c', '--noisy', clean / 'n',
                                                             '--clean-count=2', '--sigma=0.5'], clean, 'is inside the input --source'),
    }

REFUSALS = sorted(_refusals(Path('.')))

@pytest.mark.parametrize('case', REFUSALS)
def test_no_command_writes_into_a_dataset_or_an_input(inputs, case):
    command, args, protected, message = _refusals(inputs)[case]
    before = tree_digest(protected)
    result = invoke(command, args)
    assert_one_error_line(result, message)
    assert tree_digest(protected) == before
    assert not temporaries(inputs)

# Sets of images are known by their top file: a dataset's dataset.json, or the
# record of the tool that wrote the images. No output goes anywhere below one
# (a symbolic link to it included); a sibling folder is fine.
def test_no_output_lies_inside_a_set_of_images(tmp_path):
    from training import generation
    assert set(outputs.SET_MARKERS) == {'dataset.json', generation.OPTIONS_FNAME, denoise_set.OPTIONS_FNAME,
                                        fid_stats.OPTIONS_FNAME}
    for marker in outputs.SET_MARKERS:
        root = tmp_path / marker.split('.')[0]
        (root / 'set' / '00000').mkdir(parents=True)
        (root / 'set' / marker).write_text('{}')
        (root / 'link').symlink_to(root / 'set')
        for path in (root / 'set' / 'grid.png', root / 'set' / '00000' / 'out', root / 'link' / 'new' / 'x.jsonl'):
            with pytest.raises(UserError, match=f'--out={re.escape(str(path))}: lies inside .*set, a set of images '
                                                f'\\({re.escape(marker)}\\)'):
                outputs.check_apart([(str(path), '--out')])
        outputs.check_apart([(str(root / 'sibling' / 'x.png'), '--out')])
    with pytest.raises(UserError, match="dataset.json is the name of a dataset's own file"):
        outputs.check_apart([(str(tmp_path / 'images' / 'dataset.json'), '--json')])

# A symbolic link whose target is missing (an unmounted disk), as an output or
# on the way to one: one line that names the link, and nothing made.
def test_an_output_through_a_broken_link_is_refused(inputs, tmp_path):
    (tmp_path / 'mnt').symlink_to(tmp_path / 'not-mounted' / 'data')
    (tmp_path / 'gone.zip').symlink_to(tmp_path / 'nowhere.zip')
    for path in (tmp_path / 'mnt', tmp_path / 'mnt' / 'sub' / 'x.zip', tmp_path / 'gone.zip'):
        link = tmp_path / ('gone.zip' if path.name == 'gone.zip' else 'mnt')
        with pytest.raises(UserError, match=f'--dest={re.escape(str(path))}: {re.escape(str(link))} is a broken symbolic link'):
            outputs.check_apart([(str(path), '--dest')])
    result = invoke(dataset_tool.cli, ['convert', '--source', inputs / 'clean', '--dest', tmp_path / 'mnt' / 'x.zip'])
    assert_one_error_line(result, 'mnt is a broken symbolic link (to ')
    assert sorted(os.listdir(tmp_path)) == ['gone.zip', 'mnt']

def test_split_with_one_path_for_both_parts_writes_nothing(inputs, tmp_path):
    for clean, noisy in [(tmp_path / 'same', tmp_path / 'same'), (tmp_path / 'a', tmp_path / 'a' / 'b')]:
        result = invoke(dataset_tool.cli, ['split', '--source', inputs / 'clean', '--clean', clean, '--noisy', noisy,
                                           '--clean-count=2', '--sigma=0.5'])
        assert_one_error_line(result, '--clean=', 'output --noisy=')
        assert os.listdir(tmp_path) == []

#----------------------------------------------------------------------------
# 2. A failed run does not block its rerun: the options are recorded only
# once the inputs have been checked, a run that fails before its first output
# takes its record back, and a record left by a killed run with no output is
# replaced.

def test_denoise_that_fails_leaves_no_record(inputs, tmp_path):
    outdir = tmp_path / 'out'
    truncated = tmp_path / 'truncated.pkl'
    truncated.write_bytes((inputs / 'net.pkl').read_bytes()[:500])
    bad_channels = save_tiny_network(str(tmp_path / 'gray.pkl'), channels=1)
    nan_arrays = random_observations(NUM_OBS)
    nan_arrays[0][0, 0, 0] = np.nan
    make_observation_set(str(tmp_path / 'nan-obs'), nan_arrays, sigma=0.5)
    for network, data, message in [(truncated, inputs / 'obs', 'truncated.pkl'), (bad_channels, inputs / 'obs', 'expects 1x8x8'),
                                   (inputs / 'net.pkl', tmp_path / 'nan-obs', 'NaN')]:
        result = invoke(denoise.main, ['--network', network, '--data', data, '--outdir', outdir, '--steps=2'])
        assert_one_error_line(result, message)
        assert not os.path.exists(outdir)

    # The corrected command, with other options, runs.
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--steps=3'])
    assert result.exit_code == 0, result.output
    assert len(read_png_dataset(str(outdir))) == NUM_OBS

def test_a_record_without_outputs_from_a_dead_run_is_replaced(inputs, tmp_path):
    outdir = tmp_path / 'out'
    outdir.mkdir()
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    record = dict(network='x', network_sha256='0' * 64, claimed_by=dict(host=outputs.socket.gethostname(), pid=dead.pid))
    outputs.create_exclusive(str(outdir / denoise_set.OPTIONS_FNAME), record)
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--steps=2'])
    assert result.exit_code == 0, result.output
    assert read_json(str(outdir / denoise_set.OPTIONS_FNAME))['sampler']['num_steps'] == 2

    # Once images depend on the record, other options are refused.
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--steps=3'])
    assert_one_error_line(result, 'other options', 'sampler.num_steps differ')

def test_rounds_with_bad_step_options_leave_nothing(inputs, tmp_path, monkeypatch):
    common = ['--outdir', tmp_path / 'r', '--clean', inputs / 'clean', '--noisy', inputs / 'obs', '--rounds=1',
              '--pretrain-duration=0.00001', '--round-duration=0.00001']
    for extra, message, code in [(['--train-args=--arch=unet'], "'unet' is not one of", 1),
                                 (["--train-args=--desc='x"], 'No closing quotation', 2),
                                 (['--train-args=--duration=3'], '--duration is set by sfbd.rounds', 1),
                                 (['--denoise-args=--steps=0'], '--steps', 1),
                                 (['--train-args=--fp16=1 --bf16=1'], 'train.py refuses them', 1),
                                 (['--train-args=--cond=1'], 'labels', 1),
                                 (['--nproc=3', '--train-args=--batch=8'], 'does not divide', 1)]:
        result = invoke(rounds.main, common + extra)
        assert_one_error_line(result, message, exit_code=code)
        assert not os.path.exists(tmp_path / 'r')

    # The corrected command records its options and starts its first step.
    started = []
    def first_step(script, args, nproc=1, log=None):
        started.append(script)
        raise KeyboardInterrupt
    monkeypatch.setattr(rounds_lib, 'run_script', first_step)
    result = invoke(rounds.main, common + ['--train-args=--arch=ddpmpp --batch=8 --cbase=8 --cres=1'])
    assert started == ['train.py'] and result.exit_code == 1 and 'Aborted' in result.output
    assert read_json(str(tmp_path / 'r' / rounds_lib.RECORD_FNAME))['options']['train_args'] == \
        ['--arch=ddpmpp', '--batch=8', '--cbase=8', '--cres=1']

#----------------------------------------------------------------------------
# 3. Concurrent claims with different options: exactly one wins, the others
# stop with one line; with the same options they all go on.

def test_racing_claims_of_one_folder(tmp_path):
    for trial in range(10):
        outdir = str(tmp_path / f'out{trial}')
        barrier = threading.Barrier(4)
        results = [None] * 4
        def claim(k, options):
            barrier.wait()
            try:
                outputs.OutputClaim(outdir, '--outdir', 'opts.json', dict(steps=options), command='test',
                                    has_outputs=lambda: False).claim()
                results[k] = 'won'
            except UserError as e:
                results[k] = str(e)
        threads = [threading.Thread(target=claim, args=(k, k)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [k for k in range(4) if results[k] == 'won']
        assert len(winners) == 1, results
        assert read_json(os.path.join(outdir, 'opts.json'))['steps'] == winners[0]
        assert all('steps differ' in r for r in results if r != 'won')
        assert os.listdir(outdir) == ['opts.json']

        # The same options join.
        outputs.OutputClaim(outdir, '--outdir', 'opts.json', dict(steps=winners[0]), command='test',
                            has_outputs=lambda: False).claim()

def test_two_denoise_tasks_with_other_options_started_together(inputs, tmp_path):
    outdir = tmp_path / 'shared'
    common = ['denoise.py', '--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--device=cpu']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    procs = [subprocess.Popen([sys.executable, *map(str, common), f'--steps={steps}'], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for steps in (2, 3)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(err for code, err in results if code == 1)
    assert loser.strip().count('\n') == 0 and 'other options' in loser and 'Traceback' not in loser
    steps = read_json(str(outdir / denoise_set.OPTIONS_FNAME))['sampler']['num_steps']

    # Every image is the winner's.
    reference = tmp_path / 'reference'
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', reference, f'--steps={steps}'])
    assert result.exit_code == 0, result.output
    a, b = read_png_dataset(str(outdir)), read_png_dataset(str(reference))
    assert sorted(a) == sorted(b) and all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)

def test_two_training_runs_starting_in_one_outdir(inputs, tmp_path, monkeypatch):
    # Two train.py runs that start at the same moment pick the same run directory name (or, with
    # --nosubdir, the same directory): the one that claims it second stops with one line and
    # leaves the winner's directory as it was. The race is staged: the other run claims the
    # directory just before this one does.
    common = ['--data', inputs / 'clean', '--cbase=8', '--cres=1', '--batch=2', '--duration=0.00001', '--seed=0']
    winner = tmp_path / 'runs' / '00000-winner'
    monkeypatch.setattr(train_run, 'next_run_dir', lambda outdir, desc: str(winner))
    winner.mkdir(parents=True)
    (winner / 'log.txt').write_text('the other run\n')
    before = tree_digest(winner)
    assert_one_error_line(invoke(train.main, ['--outdir', tmp_path / 'runs', *common]), 'already exists', 'another run')
    assert tree_digest(winner) == before and os.listdir(tmp_path / 'runs') == ['00000-winner']

    shared = tmp_path / 'shared'
    real_create_exclusive = train_run.create_exclusive
    def other_run_first(path, record):
        real_create_exclusive(path, dict(record, seed=1))  # The other run's options land first.
        return real_create_exclusive(path, record)
    monkeypatch.setattr(train_run, 'create_exclusive', other_run_first)
    assert_one_error_line(invoke(train.main, ['--outdir', shared, '--nosubdir', *common]), 'another train.py started')
    assert read_json(str(shared / 'training_options.json'))['seed'] == 1
    assert not [name for name in os.listdir(shared) if name.startswith(('network-snapshot', 'training-state'))]

#----------------------------------------------------------------------------
# 4. Half-written outputs.

def test_empty_or_cut_short_images_count_as_missing(inputs, tmp_path):
    outdir = tmp_path / 'out'
    args = ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--steps=2']
    assert invoke(denoise.main, args).exit_code == 0
    complete = read_png_dataset(str(outdir))
    empty, cut = outdir / '00000' / 'img00000001.png', outdir / '00000' / 'img00000007.png'
    empty.write_bytes(b'')
    cut.write_bytes(cut.read_bytes()[:-20])
    # Whole PNGs that are not this set's images: another size, grayscale for RGB.
    small, gray = outdir / '00000' / 'img00000003.png', outdir / '00000' / 'img00000005.png'
    PIL.Image.new('RGB', (4, 4)).save(small)
    PIL.Image.new('L', (8, 8)).save(gray)
    assert denoise_set.missing_outputs(str(outdir), denoise_set.ObservationSet(str(inputs / 'obs')), range(NUM_OBS)) == [1, 3, 5, 7]
    assert_one_error_line(invoke(denoise.main, args + ['--finalize']), '4 of 10 images are still missing')
    result = invoke(denoise.main, args)
    assert result.exit_code == 0 and 'Denoising 4 of 10' in result.output, result.output
    assert read_png_dataset(str(outdir)).keys() == complete.keys()
    assert all(np.array_equal(read_png_dataset(str(outdir))[k], complete[k]) for k in complete)

def _full_disk(monkeypatch, after: int = 0):
    """Let `after` calls of os.fsync pass, then fail them as a full disk does."""
    real_fsync, calls = os.fsync, []
    def fsync(fd):
        calls.append(fd)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)
    monkeypatch.setattr(os, 'fsync', fsync)

@pytest.mark.parametrize('after', [0, 4])
def test_a_full_disk_while_denoising(inputs, tmp_path, monkeypatch, after):
    outdir = tmp_path / 'out'
    args = ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--steps=2', '--batch=2']
    _full_disk(monkeypatch, after)
    line = assert_one_error_line(invoke(denoise.main, args), 'No space left on device')
    assert str(outdir) in line and '.tmp' not in line
    assert not temporaries(tmp_path) and not os.path.exists(outdir / 'dataset.json')
    images = read_png_dataset(str(outdir))
    assert all(outputs.is_complete_png(str(outdir / name)) for name in images)
    # The first write failed: no image depends on the record, so it went. Later: the images stay.
    assert os.path.exists(outdir / denoise_set.OPTIONS_FNAME) == (after > 0) == bool(images) == os.path.isdir(outdir)

    monkeypatch.undo()
    result = invoke(denoise.main, args)
    assert result.exit_code == 0 and f'Denoising {NUM_OBS - len(images)} of {NUM_OBS}' in result.output, result.output

@pytest.mark.parametrize('kind', ['dir', 'zip'])
def test_a_full_disk_while_splitting_leaves_nothing(inputs, tmp_path, monkeypatch, kind):
    import zipfile
    from sfbd import observations
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    real_open = open
    if kind == 'dir':
        monkeypatch.setattr(observations, 'open', lambda path, mode='r', *a, **k: full() if 'w' in mode else real_open(path, mode, *a, **k),
                            raising=False)
    else:
        monkeypatch.setattr(zipfile.ZipFile, 'writestr', full)
    ext = '.zip' if kind == 'zip' else ''
    result = invoke(dataset_tool.cli, ['split', '--source', inputs / 'clean', '--clean', tmp_path / f'c{ext}',
                                       '--noisy', tmp_path / f'n{ext}', '--clean-count=2', '--sigma=0.5'])
    assert_one_error_line(result, 'cannot write (No space left on device)')
    assert os.listdir(tmp_path) == []

class _FillsUp:
    """A file that takes `room` bytes, then fails its writes as a full disk does."""
    def __init__(self, f, room: int):
        self.f, self.room = f, room
    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)
    def __getattr__(self, name):
        return getattr(self.f, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.f.__exit__(*exc)

# torch.save reports a failed write as a RuntimeError that no longer says why
# ("unexpected pos"); a training state on a full disk is still one line.
@pytest.mark.parametrize('room', [0, 5000])
def test_a_full_disk_while_saving_a_training_state(tmp_path, monkeypatch, room):
    from training import training_loop
    real_fdopen = os.fdopen
    monkeypatch.setattr(os, 'fdopen', lambda fd, *args, **kwargs: _FillsUp(real_fdopen(fd, *args, **kwargs), room))
    with pytest.raises(UserError, match=r'training-state-000001\.pt: cannot write \(No space left on device\)'):
        training_loop._save_state(str(tmp_path / 'training-state-000001.pt'), dict(net=torch.zeros(100_000)))
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    with open(tmp_path / 'other', 'wb') as f, pytest.raises(RuntimeError, match='not an OSError'):
        training_loop.save_to_file(dict(x=_Unpicklable()), f)  # Other failures keep their own error.

class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError('not an OSError')

def test_a_read_only_place_is_one_line(inputs, tmp_path, monkeypatch):
    # Refused up front where the folder says so...
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda path, mode: False if str(path).startswith(str(tmp_path)) else real_access(path, mode))
    assert_one_error_line(invoke(generate.main, ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'g', '--seeds=0']),
                          'is not writable')
    assert_one_error_line(invoke(fid.ref, ['--data', inputs / 'clean', '--dest', tmp_path / 'r.npz']), 'is not writable')
    monkeypatch.undo()

    # ...and, where only writing tells (a file system mounted read-only), when writing.
    def read_only(*_args, **_kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / 'g'))
    monkeypatch.setattr(tempfile, 'mkstemp', read_only)
    line = assert_one_error_line(invoke(generate.main, ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'g', '--seeds=0']),
                                 'Read-only file system')
    assert str(tmp_path / 'g') in line

def test_atomic_write_leaves_no_temporary(tmp_path, monkeypatch):
    from dnnlib.util import atomic_write
    target = tmp_path / 'f.json'
    target.write_text('old')
    _full_disk(monkeypatch)
    with pytest.raises(UserError, match=r'f\.json: cannot write \(No space left on device\)'):
        with atomic_write(str(target), 'w') as f:
            f.write('new')
    assert os.listdir(tmp_path) == ['f.json'] and target.read_text() == 'old'
    monkeypatch.undo()
    with pytest.raises(ZeroDivisionError):  # A bug in the body keeps its traceback, and the old file.
        with atomic_write(str(target), 'w') as f:
            f.write('new')
            _ = 1 / 0
    assert os.listdir(tmp_path) == ['f.json'] and target.read_text() == 'old'

# Running out of memory is one line that says how much was asked for and
# which option asks for less: train.py's --batch-gpu, the other tools' --batch.
CUDA_OOM = ('CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which '
            '1.25 GiB is free. Including non-PyTorch memory, this process has 77.84 GiB memory in use.')
CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
           'allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)')

@pytest.mark.parametrize('error, option, message', [
    (torch.cuda.OutOfMemoryError(CUDA_OOM), '--batch-gpu',
     'out of GPU memory (asked for 2.00 GiB; GPU 0: 1.25 GiB free of 79.10 GiB); a smaller --batch-gpu needs less '
     '(gradient accumulation keeps --batch)'),
    (RuntimeError(CPU_OOM), '--batch', 'out of memory (asked for 3.00 GiB); a smaller --batch needs less'),
    (MemoryError(), None, 'out of memory'),
])
def test_out_of_memory_is_one_line(error, option, message):
    import click
    from dnnlib.util import report_user_errors

    @click.command()
    @click.option(option or '--other', type=int)
    @report_user_errors
    def command(**_kwargs):
        raise error
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 1 and result.output == f'Error: {message}\n', result.output

def test_out_of_memory_figures_left_out_where_the_message_differs():
    from dnnlib.util import out_of_memory_message
    assert out_of_memory_message(torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 MiB.')) == \
        'out of GPU memory (asked for 20.00 MiB)'
    assert out_of_memory_message(torch.cuda.OutOfMemoryError('out of memory')) == 'out of GPU memory'
    assert out_of_memory_message(RuntimeError('shape mismatch')) is None

def test_other_runtime_errors_keep_their_traceback():
    import click
    from dnnlib.util import report_user_errors

    @click.command()
    @report_user_errors
    def command():
        raise RuntimeError('a bug')
    result = CliRunner().invoke(command, [])
    assert isinstance(result.exception, RuntimeError) and 'Error:' not in result.output

# SIGTERM (kill, timeout, a scheduler) ends a command like Ctrl-C: the file it
# was writing is taken back, one line says why, exit status 143; the handler
# is the default again afterwards.
def test_sigterm_leaves_no_temporary(tmp_path):
    from dnnlib.util import atomic_write, report_user_errors

    @report_user_errors
    def command() -> None:
        with atomic_write(str(tmp_path / 'out.json'), 'w') as f:
            f.write('partial')
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # Not reached: the signal is raised here.

    started = time.monotonic()
    with pytest.raises(SystemExit) as stopped:
        command()
    assert stopped.value.code == 143 and time.monotonic() - started < 5
    assert os.listdir(tmp_path) == []
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

#----------------------------------------------------------------------------
# 5. Silently wrong results. Numbers are finite and in range, sampler ranges
# are not upside down, labels are finite, reference statistics are
# statistics, a NaN score or NaN images are refused, observations are not
# taken for images nor images for observations.

NUMBERS = [
    (generate.main, ['--seeds=0', '--sigma_min=nan'], '--sigma_min'),
    (generate.main, ['--seeds=0', '--rho=inf'], '--rho'),
    (generate.main, ['--seeds=0', '--S_noise=nan'], '--S_noise'),
    (denoise.main, ['--data=x', '--sigma=nan', '--force-sigma'], '--sigma'),
    (train.main, ['--data=x', '--lr=nan'], '--lr'),
    (train.main, ['--data=x', '--duration=inf'], '--duration'),
    (train.main, ['--data=x', '--dropout=nan'], '--dropout'),
    (train.main, ['--data=x', '--noisy=y', '--online-rampup=nan'], '--online-rampup'),
    (train.main, ['--data=x', '--noisy=y', '--online-rampup=inf'], '--online-rampup'),
    (dataset_tool.cli, ['split', '--source=x', '--clean=a', '--noisy=b', '--sigma=inf', '--clean-count=1'], '--sigma'),
    (dataset_tool.cli, ['split', '--source=x', '--clean=a', '--noisy=b', '--sigma=1', '--clean-fraction=nan'], '--clean-fraction'),
    (rounds.main, ['--clean=x', '--noisy=y', '--rounds=1', '--pretrain-duration=1', '--round-duration=nan'], '--round-duration'),
]

@pytest.mark.parametrize('command, args, option', NUMBERS, ids=[f'{c.name}{o}' for c, _a, o in NUMBERS])
def test_numbers_must_be_finite(inputs, tmp_path, command, args, option):
    common = {generate.main: ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'o'],
              denoise.main: ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'o'],
              train.main: ['--outdir', tmp_path / 'o'], rounds.main: ['--outdir', tmp_path / 'o']}.get(command, [])
    result = invoke(command, [*common, *args])
    assert_one_error_line(result, f"Invalid value for '{option}'", 'not a finite number', exit_code=2)
    assert os.listdir(tmp_path) == []

@pytest.mark.parametrize('args, message', [
    (['--sigma_min=5', '--sigma_max=1'], '--sigma_min=5 is not below --sigma_max=1'),
    (['--S_churn=10', '--S_min=2', '--S_max=1'], 'the churn would never apply'),
    (['--sigma_min=100'], '--sigma_min=100 is not below the default --sigma_max (80)'),
    (['--sigma_max=0.001'], '--sigma_max=0.001 is not above the default --sigma_min (0.002)'),
    (['--rho=0.25'], '--rho=0.25: with noise levels from 80 down to 0.002, the lowest time step rounds to 0'),
])
def test_sampler_ranges_the_wrong_way_round(inputs, tmp_path, args, message):
    for command, common in [(generate.main, ['--seeds=0-1']), (denoise.main, ['--data', inputs / 'obs'])]:
        outdir = tmp_path / command.name
        assert_one_error_line(invoke(command, ['--network', inputs / 'net.pkl', '--outdir', outdir, *common, *args]), message)
        assert not os.path.exists(outdir) or os.listdir(outdir) == []

# Denoising runs from the observations' noise level down to --sigma_min: a
# --sigma_min at or above that level, or a level above the sampler's highest,
# has no grid to run on.
@pytest.mark.parametrize('args, message', [(['--sigma_min=0.6'], 'is not below the noise level of the observations (0.5)'),
                                           (['--sigma=100', '--force-sigma'], '--sigma: noise level 100 is above the highest')])
def test_denoise_levels_outside_the_grid(inputs, tmp_path, args, message):
    outdir = tmp_path / 'out'
    assert_one_error_line(invoke(denoise.main, ['--network', inputs / 'net.pkl', '--outdir', outdir, '--data', inputs / 'obs',
                                                *args]), message)
    assert not outdir.exists()

def test_a_network_that_makes_nan_is_refused(inputs, tmp_path):
    from torch_utils.persistence import save_network_pickle
    from sfbd_helpers import tiny_network
    net = tiny_network()
    for p in net.parameters():
        p.data.fill_(float('nan'))
    pkl = str(tmp_path / 'nan.pkl')
    save_network_pickle(pkl, dict(ema=net))
    assert_one_error_line(invoke(generate.main, ['--network', pkl, '--outdir', tmp_path / 'g', '--seeds=0-1', '--steps=2']),
                          'NaN or infinite values', 'seeds 0-1')
    assert_one_error_line(invoke(denoise.main, ['--network', pkl, '--data', inputs / 'obs', '--outdir', tmp_path / 'd', '--steps=2']),
                          'NaN or infinite values', 'img00000000.npy')
    assert not read_png_dataset(str(tmp_path)) and not os.path.exists(tmp_path / 'd' / denoise_set.OPTIONS_FNAME)

@pytest.mark.parametrize('labels, message', [([[0.5, float('nan')]] * 6, 'NaN or infinite'),
                                             ([0, 1, 2, 3, 4, 10**9], 'out of range'),
                                             ([0, 1, 2, 3, 4, -1], 'non-negative integers')])
def test_label_values_are_checked(tmp_path, labels, message):
    import json
    from sfbd.observations import dataset_fname
    make_image_dataset(str(tmp_path / 'ds'), 6)
    names = [dataset_fname(i, '.png') for i in range(6)]
    (tmp_path / 'ds' / 'dataset.json').write_text(json.dumps(dict(labels=[[n, l] for n, l in zip(names, labels)])))
    result = invoke(train.main, ['--outdir', tmp_path / 'o', '--data', tmp_path / 'ds', '--cond=1', '-n'])
    assert_one_error_line(result, 'dataset.json', message)

@pytest.mark.parametrize('case', ['nan', 'asymmetric', 'negative-variance', 'shapes'])
def test_reference_statistics_are_checked(tmp_path, case):
    mu, sigma = np.zeros(4), np.eye(4)
    if case == 'nan':
        mu[1] = np.nan
    elif case == 'asymmetric':
        sigma[0, 1] = 0.5
    elif case == 'negative-variance':
        sigma[2, 2] = -1
    elif case == 'shapes':
        sigma = np.eye(3)
    np.savez(str(tmp_path / 'ref.npz'), mu=mu, sigma=sigma)
    message = {'nan': 'NaN', 'asymmetric': 'not a covariance', 'negative-variance': 'not a covariance', 'shapes': 'expected [D]'}[case]
    with pytest.raises(UserError, match=re.escape(message)):
        fid_stats.load_ref_stats(str(tmp_path / 'ref.npz'))

def test_a_nan_score_is_an_error():
    mu, sigma = np.zeros(3), np.eye(3)
    assert fid.calculate_fid_from_inception_stats(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-9)
    with pytest.raises(UserError, match='the FID came out nan'):
        fid.calculate_fid_from_inception_stats(mu, sigma * np.nan, mu, sigma)

def test_observations_are_not_images_and_images_not_observations(inputs, tmp_path):
    obs, clean = inputs / 'obs', inputs / 'clean'
    assert_one_error_line(invoke(train.main, ['--outdir', tmp_path / 't', '--data', clean, '--data', obs, '-n']),
                          f'--data={obs}: is an observation set', '--allow-noisy')
    assert invoke(train.main, ['--outdir', tmp_path / 't', '--data', clean, '--data', obs, '--allow-noisy', '-n']).exit_code == 0
    assert_one_error_line(invoke(fid.ref, ['--data', obs, '--dest', tmp_path / 'r.npz']), 'is an observation set')
    assert_one_error_line(invoke(fid.calc, ['--images', obs, '--ref', tmp_path / 'r.npz']), 'is an observation set')
    assert_one_error_line(invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', clean, '--outdir', tmp_path / 'd']),
                          'not observations')
    for swapped in (['--clean', obs, '--noisy', clean], ['--clean', clean, '--noisy', clean]):
        result = invoke(rounds.main, ['--outdir', tmp_path / 'r', *swapped, '--rounds=1', '--pretrain-duration=1', '--round-duration=1'])
        assert_one_error_line(result, 'observation')
    assert os.listdir(tmp_path) == []

#----------------------------------------------------------------------------
# 6. No tracebacks for bad input: each is one line naming the option or the
# file, with a non-zero exit, before any work. A bug still shows its traceback.

def test_bad_values_inside_option_parsing(inputs, tmp_path):
    for command, args, option in [(generate.main, ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'o', '--seeds=abc'], '--seeds'),
                                  (generate.main, ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'o', '--seeds=5-2'], '--seeds'),
                                  (train.main, ['--outdir', tmp_path / 'o', '--data', inputs / 'clean', '--cres=a,b'], '--cres'),
                                  (fid.calc, ['--network', inputs / 'net.pkl', '--ref=r.npz', '--seeds=1-x'], '--seeds')]:
        assert_one_error_line(invoke(command, args), f"Invalid value for '{option}'", exit_code=2)
    assert os.listdir(tmp_path) == []

def test_an_output_of_the_wrong_kind(inputs, tmp_path):
    a_file = tmp_path / 'file'
    a_file.write_text('x')
    a_dir = tmp_path / 'dir'
    a_dir.mkdir()
    net, obs, clean = inputs / 'net.pkl', inputs / 'obs', inputs / 'clean'
    cases = [
        (generate.main, ['--network', net, '--outdir', a_file, '--seeds=0'], 'is a file, not a directory'),
        (denoise.main, ['--network', net, '--data', obs, '--outdir', a_file], 'is a file, not a directory'),
        (train.main, ['--outdir', a_file, '--nosubdir', '--data', clean, '-n'], 'is a file, not a directory'),
        (train.main, ['--outdir', a_file / 'sub', '--data', clean, '-n'], 'is a file, not a directory'),
        (rounds.main, ['--outdir', a_file, '--clean', clean, '--noisy', obs, '--rounds=1', '--pretrain-duration=1',
                       '--round-duration=1'], 'is a file, not a directory'),
        (fid.calc, ['--network', net, '--ref=r.npz', '--outdir', a_file, '--num=2'], 'is a file, not a directory'),
        (dataset_tool.cli, ['convert', '--source', clean, '--dest', a_file / 'x.zip'], 'is a file, not a directory'),
        (denoise.main, ['--network', net, '--data', obs, '--outdir', tmp_path / 'd', '--grid', a_dir], 'is a directory'),
        (fid.calc, ['--network', net, '--ref=r.npz', '--json', a_dir], 'is a directory'),
        (fid.ref, ['--data', clean, '--dest', a_dir], 'is a directory'),
        (fid.ref, ['--data', clean, '--dest', a_file / 'r.npz'], 'is a file, not a directory'),
        (train.main, ['--outdir', tmp_path / 'o', '--data', clean, '--desc=a/b', '-n'], '--desc=a/b'),
        (generate.main, ['--network', net, '--outdir', '', '--seeds=0'], '--outdir: an empty path'),
    ]
    for command, args, message in cases:
        assert_one_error_line(invoke(command, args), message)
    assert sorted(os.listdir(tmp_path)) == ['dir', 'file'] and os.listdir(a_dir) == []

@pytest.mark.parametrize('device, message', [('bogus', 'not a device'), ('cuda:99', 'cuda'), ('xla', 'not supported')])
def test_an_unknown_or_absent_device(inputs, tmp_path, device, message):
    net, obs, clean = inputs / 'net.pkl', inputs / 'obs', inputs / 'clean'
    for command, args in [(generate.main, ['--network', net, '--outdir', tmp_path / 'g', '--seeds=0']),
                          (denoise.main, ['--network', net, '--data', obs, '--outdir', tmp_path / 'd']),
                          (train.main, ['--outdir', tmp_path / 't', '--data', clean, '-n']),
                          (fid.ref, ['--data', clean, '--dest', tmp_path / 'r.npz']),
                          (demo.main, ['--outdir', tmp_path / 'demo'])]:
        assert_one_error_line(invoke(command, [*args, f'--device={device}']), f'--device={device}', message)
    assert os.listdir(tmp_path) == []

def test_cuda_without_a_gpu(inputs, tmp_path):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    result = invoke(generate.main, ['--network', inputs / 'net.pkl', '--outdir', tmp_path / 'g', '--seeds=0', '--device=cuda'])
    assert_one_error_line(result, '--device=cuda: CUDA is not available')

def test_resume_or_transfer_from_the_wrong_file(inputs, tmp_path):
    garbage = tmp_path / 'garbage.pt'
    garbage.write_bytes(b'not a state')
    for args, message in [(['--resume', inputs / 'net.pkl'], 'a network pickle is given to --transfer'),
                          (['--resume', garbage], 'not a training state'),
                          (['--resume', tmp_path / 'missing.pt'], 'no such file')]:
        assert_one_error_line(invoke(train.main, ['--outdir', tmp_path / 'o', '--data', inputs / 'clean', '-n', *args]), message)
    result = invoke(train.main, ['--outdir', tmp_path / 'o', '--data', inputs / 'clean', '--cbase=8', '--cres=1', '--batch=4',
                                 '--duration=0.00001', '--transfer', garbage])
    assert_one_error_line(result, 'garbage.pt: not a readable network pickle')
    assert sorted(os.listdir(tmp_path)) == ['garbage.pt']

def test_network_options_that_fit_no_network(inputs, tmp_path):
    for extra in (['--cres=1,1,1,1,1,1'], ['--cbase=3', '--cres=1']):
        result = invoke(train.main, ['--outdir', tmp_path / 'o', '--data', inputs / 'clean', *extra, '-n'])
        assert_one_error_line(result, 'no network of this shape fits 8x8 images')

def test_unbalanced_quotes_in_passed_on_options(tmp_path):
    script = f'source {REPO_ROOT}/scripts/common.sh; sfbd_words words "$1" TRAIN_ARGS; echo "${{#words[@]}}"'
    good = subprocess.run(['bash', '-c', script, '_', '--lr=1e-4  --desc=run'], capture_output=True, text=True)
    assert good.returncode == 0 and good.stdout.strip() == '2'
    bad = subprocess.run(['bash', '-c', script, '_', "--desc='my run"], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stdout == '' and bad.stderr.count('\n') == 1
    assert 'TRAIN_ARGS' in bad.stderr and 'quotes' in bad.stderr
    result = invoke(rounds.main, ['--outdir', tmp_path / 'r', '--clean=c', '--noisy=n', '--rounds=1', '--pretrain-duration=1',
                                  '--round-duration=1', '--denoise-args=--steps="4'])
    assert_one_error_line(result, "Invalid value for '--denoise-args'", 'No closing quotation', exit_code=2)

def test_a_bug_still_shows_its_traceback(inputs, tmp_path, monkeypatch):
    def broken(*_args, **_kwargs):
        raise KeyError('a bug')
    monkeypatch.setattr(denoise_set, 'check_network', broken)
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', tmp_path / 'o'])
    assert isinstance(result.exception, KeyError) and 'Error:' not in result.output
    def missing(*_args, **_kwargs):
        raise FileNotFoundError(errno.ENOENT, 'No such file or directory', 'x')  # Not an environment error.
    monkeypatch.setattr(denoise_set, 'check_network', missing)
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', tmp_path / 'o'])
    assert isinstance(result.exception, FileNotFoundError)

def test_an_appended_line_is_whole_or_absent(tmp_path, monkeypatch):
    # fid.py calc --json appends one line per score; a full disk halfway through a line takes it back.
    path = tmp_path / 'scores.jsonl'
    outputs.append_line(str(path), '{"fid": 1}')
    real_write, inode = os.write, os.stat(path).st_ino
    def half_then_full(fd, data):
        if os.fstat(fd).st_ino == inode:
            real_write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, 'write', half_then_full)
    with pytest.raises(UserError, match=r'scores\.jsonl: cannot write \(No space left on device\)'):
        outputs.append_line(str(path), '{"fid": 2}')
    # A file that the failed write created is taken back with its line: nothing is left.
    fresh = tmp_path / 'fresh.jsonl'
    def full(_fd, _data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, 'write', full)
    with pytest.raises(UserError, match=r'fresh\.jsonl: cannot write \(No space left on device\)'):
        outputs.append_line(str(fresh), '{"fid": 3}')
    monkeypatch.undo()
    assert path.read_text() == '{"fid": 1}\n' and not fresh.exists()
    # A place where no file can be made is named too (here: a path through a file).
    with pytest.raises(UserError, match=r'scores\.jsonl/x\.jsonl: cannot write'):
        outputs.append_line(str(path / 'x.jsonl'), '{"fid": 4}')

#----------------------------------------------------------------------------
# Kill and rerun: denoise.py killed with SIGKILL at a random point, then run
# again, gives the images of an uninterrupted run, none half-written.

def test_denoise_killed_at_a_random_point_and_rerun(inputs, tmp_path):
    args = ['denoise.py', '--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--steps=4', '--batch=1', '--device=cpu']
    assert run_script(*args, '--outdir', tmp_path / 'reference').returncode == 0
    reference = read_png_dataset(str(tmp_path / 'reference'))
    outdir = tmp_path / 'killed'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen([sys.executable, *map(str, args), '--outdir', str(outdir)], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    delay = random.uniform(0.5, 6)
    deadline = time.time() + delay
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = len(read_png_dataset(str(outdir))) if outdir.exists() else 0
    result = run_script(*args, '--outdir', outdir)
    assert result.returncode == 0, f'killed after {delay:.2f} s: {result.stderr}'
    assert f'Denoising {NUM_OBS - written} of {NUM_OBS}' in result.stdout or written == NUM_OBS, result.stdout
    again = read_png_dataset(str(outdir))
    assert sorted(again) == sorted(reference), f'killed after {delay:.2f} s'
    assert all(np.array_equal(again[k], reference[k]) for k in reference), f'killed after {delay:.2f} s'
    assert read_json(str(outdir / 'dataset.json')) == read_json(str(tmp_path / 'reference' / 'dataset.json'))

#----------------------------------------------------------------------------
