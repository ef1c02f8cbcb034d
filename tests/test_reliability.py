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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import dataset_tool
import denoise
import fid
import generate
import train
from dnnlib import outputs
from dnnlib.util import UserError
from sfbd import demo, rounds

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
        assert not os.path.exists(outdir / denoise.OPTIONS_FNAME) and not read_png_dataset(str(outdir))

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
    outputs.create_exclusive(str(outdir / denoise.OPTIONS_FNAME), record)
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', outdir, '--steps=2'])
    assert result.exit_code == 0, result.output
    assert read_json(str(outdir / denoise.OPTIONS_FNAME))['sampler']['num_steps'] == 2

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
    monkeypatch.setattr(rounds, 'run_script', first_step)
    result = invoke(rounds.main, common + ['--train-args=--arch=ddpmpp --batch=8'])
    assert started == ['train.py'] and result.exit_code == 1 and 'Aborted' in result.output
    assert read_json(str(tmp_path / 'r' / rounds.RECORD_FNAME))['options']['train_args'] == ['--arch=ddpmpp', '--batch=8']

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
    steps = read_json(str(outdir / denoise.OPTIONS_FNAME))['sampler']['num_steps']

    # Every image is the winner's.
    reference = tmp_path / 'reference'
    result = invoke(denoise.main, ['--network', inputs / 'net.pkl', '--data', inputs / 'obs', '--outdir', reference, f'--steps={steps}'])
    assert result.exit_code == 0, result.output
    a, b = read_png_dataset(str(outdir)), read_png_dataset(str(reference))
    assert sorted(a) == sorted(b) and all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)

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
    assert denoise.missing_outputs(str(outdir), denoise.ObservationSet(str(inputs / 'obs')), range(NUM_OBS)) == [1, 7]
    assert_one_error_line(invoke(denoise.main, args + ['--finalize']), '2 of 10 images are still missing')
    result = invoke(denoise.main, args)
    assert result.exit_code == 0 and 'Denoising 2 of 10' in result.output, result.output
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
    assert os.path.exists(outdir / denoise.OPTIONS_FNAME) == (after > 0) == bool(images)

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
