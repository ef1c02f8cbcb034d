"""Tests for train.py, training/training_loop.py, torch_utils/training_stats.py and torch_utils/misc.py.

The command-line runs use tiny networks (`--arch=ddpmpp --cbase=16 --cres=1`) on 8x8 datasets
made here, with one intra-op thread each so that a busy machine does not slow them to a crawl.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner, Result

import train
from dnnlib.util import PEER_FAILURE_MESSAGE
from tools import train_setup
from test_fast import fused_adam_on_cpu
from torch_utils import misc, persistence, training_stats
from training import run_files

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = ['--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=32', '--tick=1', '--snap=1', '--dump=1',
        '--seed=1', '--workers=1']

# Runs in this process compute with one thread, as the subprocess runs do
# (OMP_NUM_THREADS=1), so that their results agree to the bit whichever tests
# ran before.
@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

#----------------------------------------------------------------------------
# Datasets in EDM's layout: a zip of PNGs with dataset.json, or .npy arrays.

def make_zip(path: Path, num_images: int, resolution: int = 8, num_classes: int = 0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    labels = []
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        for i in range(num_images):
            name = f'{i // 1000:05d}/img{i:08d}.png'
            image = rng.integers(0, 256, size=[resolution, resolution, 3], dtype=np.uint8)
            buffer = io.BytesIO()
            PIL.Image.fromarray(image).save(buffer, format='png')
            z.writestr(name, buffer.getvalue())
            labels.append([name, i % max(num_classes, 1)])
        z.writestr('dataset.json', json.dumps(dict(labels=labels if num_classes else None)))
    return path

def make_npy_dir(path: Path, arrays: np.ndarray) -> Path:
    (path / '00000').mkdir(parents=True)
    for i, array in enumerate(arrays):
        np.save(path / '00000' / f'img{i:08d}.npy', array.astype(np.float32))
    return path

@pytest.fixture(scope='module')
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('data')
    make_zip(root / 'ds8.zip', 32)
    make_zip(root / 'ds16c.zip', 16, resolution=16, num_classes=10)
    (root / 'empty').mkdir()
    return root

def run_train(args: list[str], timeout: float = 240, env: dict | None = None, launcher: list[str] | None = None,
              wait: bool = True, new_session: bool = False) -> subprocess.CompletedProcess | subprocess.Popen:
    full_env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT), **(env or {}))
    cmd = (launcher or [sys.executable]) + [str(REPO_ROOT / 'train.py')] + [str(a) for a in args]
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=new_session)
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    return result

def invoke_train(args: list) -> Result:
    # train.py in this process, for cases that stop before training.
    return CliRunner().invoke(train.main, [str(a) for a in args])

def error_lines(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith('Error:')]

def read_stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]

def load_state(path: Path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)

def assert_same(a, b, where: str = '') -> None:
    # Deep equality of nested state dicts, tensors compared exactly.
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for k in a:
            assert_same(a[k], b[k], f'{where}.{k}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    else:
        assert a == b, where

#----------------------------------------------------------------------------
# Unit tests: sampler and statistics.

def test_sampler_partitions_the_stream_between_ranks():
    dataset = list(range(10))
    ranks = [iter(misc.InfiniteSampler(dataset, rank=r, num_replicas=2, seed=3)) for r in range(2)]
    single = iter(misc.InfiniteSampler(dataset, seed=3))
    stream = [next(single) for _ in range(40)]
    for r in range(2):
        assert [next(ranks[r]) for _ in range(20)] == stream[r::2]
    counts = np.bincount([next(single) for _ in range(2000)], minlength=10)
    assert counts.min() > 150 and counts.max() < 250  # Every item about equally often.

def test_sampler_state_resumes_the_stream():
    dataset = list(range(13))
    sampler = misc.InfiniteSampler(dataset, seed=5, window_size=0.5)
    full = iter(sampler)
    expected = [next(full) for _ in range(60)]
    sampler.advance(25)  # The training loop consumed 25 indices; the loader may be further ahead.
    resumed = misc.InfiniteSampler(dataset, seed=0)
    resumed.load_state_dict(load_state_roundtrip(sampler.state_dict()))
    it = iter(resumed)
    assert [next(it) for _ in range(35)] == expected[25:]
    with pytest.raises(ValueError):
        misc.InfiniteSampler(list(range(12))).load_state_dict(sampler.state_dict())

def load_state_roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)

def test_collector_summaries():
    c = training_stats.Collector(regex='Loss/.*')
    c.report('Loss/loss', torch.tensor([1.0, 2.0, 3.0]))
    c.report('Loss/loss', 4)
    c.report('Other/x', 1.0)  # Not matched by the regex.
    c.report('Loss/empty', [])
    c.update()
    d = c.as_dict()
    assert set(d) == {'Loss/loss', 'Loss/empty'}
    assert d['Loss/loss'] == dict(num=4, mean=2.5, std=pytest.approx(np.std([1, 2, 3, 4])))
    assert d['Loss/empty']['num'] == 0 and np.isnan(d['Loss/empty']['mean'])
    c.update()  # Nothing new: the previous summaries stay (keep_previous).
    assert c.num('Loss/loss') == 4
    c.report('Loss/loss', float('nan'))
    c.update()
    assert c.num('Loss/loss') == 1 and np.isnan(c.mean('Loss/loss')) and np.isnan(c.std('Loss/loss'))

#----------------------------------------------------------------------------
# One uninterrupted run through the command line: EDM's files. Shared by the
# tests below as the reference for resuming.

@pytest.fixture(scope='module')
def reference_run(data, tmp_path_factory) -> Path:
    outdir = tmp_path_factory.mktemp('ref')
    result = run_train(['--outdir', outdir, '--data', data / 'ds8.zip', '--duration=0.001', *TINY])
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list(outdir.iterdir())
    assert len(run_dirs) == 1
    return run_dirs[0]

def test_run_writes_edm_files(reference_run):
    assert reference_run.name == '00000-ds8-uncond-ddpmpp-edm-gpus1-batch32-fp32'
    options = json.loads((reference_run / 'training_options.json').read_text())
    for key in ('dataset_kwargs', 'data_loader_kwargs', 'network_kwargs', 'loss_kwargs', 'optimizer_kwargs',
                'augment_kwargs', 'total_kimg', 'ema_halflife_kimg', 'batch_size', 'seed', 'run_dir'):
        assert key in options
    assert options['network_kwargs']['class_name'] == 'training.networks.EDMPrecond'
    assert options['network_kwargs']['augment_dim'] == 9
    assert options['optimizer_kwargs'] == dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8)

    log = (reference_run / 'log.txt').read_text()
    assert 'Training options:' in log and re.search(r'^tick 0 .* eta ', log, re.M)

    stats = read_stats(reference_run)
    assert [round(s['Progress/kimg']['mean'], 3) for s in stats] == [0.032, 1.024]
    for record in stats:
        assert isinstance(record['timestamp'], float)
        for name in ('Loss/loss', 'Loss/nonfinite', 'Progress/tick', 'Timing/sec_per_kimg', 'Resources/peak_gpu_mem_gb'):
            assert set(record[name]) == {'num', 'mean', 'std'}
        assert record['Loss/nonfinite']['mean'] == 0
    assert stats[1]['Loss/loss']['num'] == (1024 - 32) * 3 * 8 * 8  # Images x pixels.

    snapshots = sorted(p.name for p in reference_run.glob('network-snapshot-*.pkl'))
    assert snapshots == [f'network-snapshot-{k:06d}.pkl' for k in range(2)]
    data = persistence.load_network_pickle(str(reference_run / 'network-snapshot-000001.pkl'))
    assert set(data) >= {'ema', 'loss_fn', 'augment_pipe', 'dataset_kwargs'}
    assert type(data['ema']).__name__ == 'EDMPrecond' and not data['ema'].training
    assert type(data['augment_pipe']).__name__ == 'AugmentPipe'
    assert data['dataset_kwargs']['path'].endswith('ds8.zip')

    state = load_state(reference_run / 'training-state-000001.pt')
    assert state['cur_nimg'] == 1024 and state['cur_tick'] == 2
    assert {'net', 'ema', 'optimizer_state', 'sampler', 'rng'} <= set(state)
    torch.testing.assert_close(state['ema'], data['ema'].state_dict(), rtol=0, atol=0)

#----------------------------------------------------------------------------
# Stopping on a signal, then rerunning the same command: the run continues
# exactly, ending in the very state of the uninterrupted run.

# Start train.py and send SIGUSR1 during its first step (the loader's worker
# is still starting); it must stop with the preemption status. With
# `group_signal`, that signal goes to the whole process group, the worker
# included, as SLURM and Kubernetes send SIGTERM and a terminal sends Ctrl-C.
def stop_during_first_step(args: list, group_signal: int | None = None) -> None:
    proc = run_train(args, wait=False, new_session=group_signal is not None)
    try:
        for line in proc.stdout:
            if line.startswith('Training for'):
                if group_signal is not None:
                    os.killpg(proc.pid, group_signal)
                else:
                    proc.send_signal(signal.SIGUSR1)
                break
        stdout, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == train.PREEMPTED_EXIT_CODE, stdout[-3000:]

def test_preempt_and_rerun_continues_exactly(reference_run, data, tmp_path):
    outdir = tmp_path / 'run'
    args = ['--outdir', outdir, '--nosubdir', '--data', data / 'ds8.zip', '--duration=0.001', *TINY]
    stop_during_first_step(args)
    assert 'Stop requested' in (outdir / 'log.txt').read_text()
    first = load_state(training_loop_latest(outdir))
    assert first['cur_nimg'] == 32 and first['cur_tick'] == 1
    assert list(outdir.glob('network-snapshot-*.pkl'))

    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    log = (outdir / 'log.txt').read_text()
    assert 'Resuming from the newest training state in the run directory' in log
    resumed = load_state(outdir / 'training-state-000001.pt')
    reference = load_state(reference_run / 'training-state-000001.pt')
    assert resumed['cur_nimg'] == reference['cur_nimg'] == 1024
    for key in ('net', 'ema', 'optimizer_state', 'sampler', 'rng'):
        assert_same(resumed[key], reference[key], key)

    # The same losses, tick by tick (the run stopped after its first step, which is tick 0).
    ref_stats, run_stats = read_stats(reference_run), read_stats(outdir)
    assert len(run_stats) == len(ref_stats) == 2
    for run, ref in zip(run_stats, ref_stats):
        assert run['Loss/loss'] == ref['Loss/loss'] and run['Progress/kimg'] == ref['Progress/kimg']

    # Once more: the run is complete, nothing to do.
    again = invoke_train(args)
    assert again.exit_code == 0 and 'nothing to do' in again.output

# A run resumed from a state at or past its --duration has nothing to do and
# makes no run directory (a later rerun would take an empty one for unfinished).
def test_resume_past_the_duration_makes_no_run(reference_run, data, tmp_path):
    outdir = tmp_path / 'runs'
    result = invoke_train(['--outdir', outdir, '--data', data / 'ds8.zip', '--duration=0.0005', *TINY,
                           '--resume', reference_run])
    assert result.exit_code == 0 and 'Training already reached 1.024 kimg of 0.5; nothing to do.' in result.output, \
        result.output
    assert not outdir.exists() or not list(outdir.iterdir())

# Starts that fail late are one line and leave nothing: a run directory name
# too long for the file system, a hand-edited training_options.json beside the
# resumed state, a training state given to --transfer.
def test_late_start_failures_are_one_line(reference_run, data, tmp_path):
    import shutil
    common = ['--data', data / 'ds8.zip', '--duration=0.002', *TINY]
    result = invoke_train(['--outdir', tmp_path / 'long', *common, '--desc=' + 'a' * 300])
    assert result.exit_code == 1 and 'File name too long' in error_lines(result)[0] and not (tmp_path / 'long').exists()
    edited = tmp_path / 'edited'
    shutil.copytree(reference_run, edited)
    (edited / 'training_options.json').write_text(json.dumps(dict(network_kwargs=5)))
    result = invoke_train(['--outdir', tmp_path / 'runs', *common, '--resume', edited, '-n'])
    assert result.exit_code == 1 and '"network_kwargs" must be a JSON object' in error_lines(result)[0]
    result = invoke_train(['--outdir', tmp_path / 'runs', *common, '--transfer', reference_run / 'training-state-000001.pt'])
    assert result.exit_code == 1 and 'continue a run with --resume' in error_lines(result)[0]
    assert not (tmp_path / 'runs').exists()

# A full disk when the run starts writing: its options refused, the run
# directory and the --outdir it made go again; its log refused, the run goes
# on with a warning (its snapshots and states report their own failures).
def test_a_full_disk_at_the_start_of_a_run(data, tmp_path, monkeypatch):
    import errno
    from dnnlib.util import UserError
    from tools import train_run
    common = ['--data', data / 'ds8.zip', '--duration=0.001', *TINY]
    def full(path, *_args):
        raise UserError(f'{path}: cannot write (No space left on device)')
    monkeypatch.setattr(train_run, 'create_exclusive', full)
    for layout in ([], ['--nosubdir']):
        result = invoke_train(['--outdir', tmp_path / 'runs', *layout, *common])
        assert result.exit_code == 1 and 'training_options.json: cannot write' in error_lines(result)[0], result.output
        assert os.listdir(tmp_path) == []
    monkeypatch.undo()

    class FullLog(io.StringIO):
        def write(self, _text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(train_run, 'open', lambda path, *args, **kwargs: FullLog(), raising=False)
    result = invoke_train(['--outdir', tmp_path / 'run', '--nosubdir', *common])
    assert result.exit_code == 0, result.output
    assert 'run/log.txt: cannot write (No space left on device); the log copy stops here' in result.output
    assert (tmp_path / 'run' / 'network-snapshot-000001.pkl').is_file()

def test_a_seed_beyond_64_bits_is_an_option_error(data, tmp_path):
    result = invoke_train(['--outdir', tmp_path / 'runs', '--data', data / 'ds8.zip', *TINY, '--seed=18446744073709551616', '-n'])
    assert result.exit_code == 2 and "Invalid value for '--seed'" in result.output

# A first Ctrl-C asks the run to stop and save; a second aborts at once. The
# handlers are the caller's again afterwards.
def test_a_second_ctrl_c_aborts():
    import time
    from tools.train_run import StopRequest
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with StopRequest() as stop_requested:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert stop_requested() and stop_requested.signum == signal.SIGINT
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # Not reached: the second Ctrl-C raises here.
    assert signal.getsignal(signal.SIGINT) == before

# A SIGTERM, or a Ctrl-C, to the whole process group while the loader's
# worker is still starting (before it has shielded itself) stops the run like
# any other preemption, instead of killing the worker and failing the step.
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_stop_sent_to_the_process_group_while_the_worker_starts(data, tmp_path, sig):
    outdir = tmp_path / 'run'
    stop_during_first_step(['--outdir', outdir, '--nosubdir', '--data', data / 'ds8.zip', '--duration=0.001', *TINY],
                           group_signal=sig)
    assert 'Stop requested' in (outdir / 'log.txt').read_text()
    assert load_state(training_loop_latest(outdir))['cur_nimg'] == 32

# The data-loading workers of a library call of the training loop: spawned, as
# train.py's, unless the caller names a start method; workers that a fork server
# starts (Python 3.14's default) run too, and still end when their training
# process is gone (here: not the process that created them).
@pytest.mark.parametrize('method', [None, 'fork', 'forkserver'])
def test_data_loading_workers_under_each_start_method(method, monkeypatch):
    import functools
    from training import training_loop
    seen = {}
    def recording_loader(*args, **kwargs):
        seen.update(kwargs)
        return torch.utils.data.dataloader.DataLoader(*args, **kwargs)
    monkeypatch.setattr(torch.utils.data, 'DataLoader', recording_loader)
    dataset = torch.utils.data.TensorDataset(torch.arange(8))
    kwargs = dict(num_workers=1) if method is None else dict(num_workers=1, multiprocessing_context=method)
    def first_batch(parent_pid):
        init = functools.partial(training_loop._init_worker, parent_pid=parent_pid, shield=False)
        return next(training_loop.start_data_loader(dataset, misc.InfiniteSampler(dataset, shuffle=False), 4, kwargs, init))
    assert first_batch(os.getpid())[0].tolist() == [0, 1, 2, 3]
    assert seen['multiprocessing_context'] == (method or 'spawn')
    if method == 'forkserver':
        with pytest.raises(RuntimeError, match='exited unexpectedly'):
            first_batch(os.getpid() + 10**6)  # No such process: the worker ends at once.

# Without --nosubdir: rerunning the same command continues the newest unfinished run of the same
# options in --outdir, and says so first; other options, --new-run, a finished run or a run that
# another live process holds give a new run directory. A claim left by a process that is gone
# does not block the rerun.
def test_a_plain_rerun_continues_the_unfinished_run(reference_run, data, tmp_path):
    import socket
    outdir = tmp_path / 'runs'
    args = ['--outdir', outdir, '--data', data / 'ds8.zip', '--duration=0.001', *TINY]
    stop_during_first_step(args)
    (run_dir,) = outdir.iterdir()
    claim = run_dir / train_setup.CLAIM_FNAME
    assert not claim.exists()

    def output_dir(result) -> str:
        assert result.exit_code == 0, result.output
        return re.search(r'^Output directory: +(.*)$', result.output, re.M).group(1)
    new_run = str(outdir / run_dir.name.replace('00000-', '00001-'))
    for extra in (['--seed=2'], ['--lr=0.002'], ['--new-run']):
        assert output_dir(invoke_train(args + extra + ['-n'])) == new_run, extra
    for extra in (['--workers=2'], ['--batch-gpu=16']):  # How it computes is not what it trains.
        assert output_dir(invoke_train(args + extra + ['-n'])) == str(run_dir), extra

    # Two reruns started together: the other one holds the run, this one starts a new run.
    claim.write_text(json.dumps(dict(claimed_by=dict(host=socket.gethostname(), pid=os.getpid()))))
    result = invoke_train(args + ['-n'])
    assert output_dir(result) == new_run
    assert f'Starting a new run: {run_dir} of the same options is being trained by process {os.getpid()}' in result.output
    gone = subprocess.Popen(['true'])
    gone.wait()
    claim.write_text(json.dumps(dict(claimed_by=dict(host=socket.gethostname(), pid=gone.pid))))

    result = invoke_train(args)
    assert output_dir(result) == str(run_dir)
    lines = result.output.splitlines()
    assert lines[0] == (f'Continuing the unfinished run {run_dir} of the same options (0.032 of 1 kimg); '
                        '--new-run starts a new run instead.'), result.output[:2000]
    assert os.listdir(outdir) == [run_dir.name] and not claim.exists()
    for key in ('net', 'ema', 'optimizer_state', 'sampler', 'rng'):
        assert_same(load_state(training_loop_latest(run_dir))[key], load_state(reference_run / 'training-state-000001.pt')[key], key)

    # Finished: a rerun starts a new run, and says why.
    result = invoke_train(args + ['-n'])
    assert output_dir(result) == new_run
    assert f'Starting a new run: {run_dir} of the same options is finished (1.024 of 1 kimg).' in result.output
    assert os.listdir(outdir) == [run_dir.name]

    # --new-run and --nosubdir contradict each other.
    result = invoke_train(args + ['--new-run', '--nosubdir'])
    assert result.exit_code == 1 and error_lines(result)[0].startswith('Error: --new-run and --nosubdir')

# With --nosubdir, a second train.py in a directory that a live one trains in is refused before it
# reads anything (two would overwrite each other's states). A claim of another host counts until it is
# stale, one of an earlier run of the same requeued SLURM job never does, and a dead process's is set aside.
def test_a_second_train_py_in_a_nosubdir_run_is_refused(data, tmp_path, monkeypatch):
    import socket
    import time
    run_dir = tmp_path / 'run'
    args = ['--outdir', run_dir, '--nosubdir', '--data', data / 'ds8.zip', '--duration=0.001', *TINY]
    stop_during_first_step(args)
    claim = run_dir / train_setup.CLAIM_FNAME
    assert not claim.exists()
    def holds(**owner):
        claim.write_text(json.dumps(dict(claimed_by=owner)))
    holds(host=socket.gethostname(), pid=os.getpid())
    result = invoke_train(args + ['-n'])
    assert result.exit_code == 1
    (line,) = error_lines(result)
    assert line.startswith(f'Error: --outdir: process {os.getpid()} on {socket.gethostname()} is training in {run_dir}')
    holds(host='elsewhere', pid=1)
    assert invoke_train(args + ['-n']).exit_code == 1  # Renewed just now.
    stale = time.time() - train_setup.STALE_SECONDS - 5
    os.utime(claim, (stale, stale))
    assert invoke_train(args + ['-n']).exit_code == 0
    monkeypatch.setenv('SLURM_JOB_ID', '77')
    monkeypatch.setenv('SLURM_RESTART_COUNT', '1')
    holds(host='elsewhere', pid=1, slurm_job='78', slurm_restart=0)  # Another job, renewed just now.
    assert invoke_train(args + ['-n']).exit_code == 1
    # The job's run before its requeue: waited for until it has gone unrenewed a while, then set aside;
    # one renewed all along (its node lost to SLURM, still writing) is not.
    monkeypatch.setattr(train_setup, 'REQUEUE_SECONDS', 1.0)
    holds(host='elsewhere', pid=1, slurm_job='77', slurm_restart=0)
    result = invoke_train(args + ['-n'])
    assert result.exit_code == 0 and 'Waiting up to 1 s for the claim of this job' in result.output, result.output
    monkeypatch.setattr(train_setup, 'STALE_SECONDS', 3.0)
    holds(host='elsewhere', pid=1, slurm_job='77', slurm_restart=0)
    stop = threading.Event()
    def renew():
        while not stop.wait(0.2):
            os.utime(claim)
    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    try:
        assert invoke_train(args + ['-n']).exit_code == 1
    finally:
        stop.set()
        renewer.join()
    gone = subprocess.Popen(['true'])
    gone.wait()
    holds(host=socket.gethostname(), pid=gone.pid, slurm_job='77', slurm_restart=0)  # Known gone: no wait.
    result = invoke_train(args + ['-n'])
    assert result.exit_code == 0 and 'Waiting' not in result.output, result.output
    gone = subprocess.Popen(['true'])
    gone.wait()
    holds(host=socket.gethostname(), pid=gone.pid)
    result = invoke_train(args)
    assert result.exit_code == 0, result.output
    assert not claim.exists()

# The holder renews its claim while it trains, so that other hosts see it alive.
def test_a_claim_is_renewed_until_released(tmp_path, monkeypatch):
    import time
    monkeypatch.setattr(train_setup, 'HEARTBEAT_SECONDS', 0.05)
    claim = train_setup.RunClaim()
    assert claim.take(str(tmp_path)) is None
    path = tmp_path / train_setup.CLAIM_FNAME
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert os.path.getmtime(path) > time.time() - 5
    # Set aside and replaced by another process (which found it stale): no longer renewed here, nor removed.
    path.write_text(json.dumps(dict(claimed_by=dict(host='elsewhere', pid=1))))
    os.utime(path, (0, 0))
    time.sleep(0.5)
    assert os.path.getmtime(path) == 0
    claim.release()
    assert path.exists()
    path.unlink()
    assert claim.take(str(tmp_path)) is None
    claim.release()
    assert not path.exists()

# A --nosubdir command that resumed from a state elsewhere (a job script's --resume), rerun after a
# stop, continues from its own newest state once that is further, and says so.
def test_a_rerun_with_resume_elsewhere_continues_its_own_progress(reference_run, data, tmp_path):
    first = tmp_path / 'first'
    common = ['--data', data / 'ds8.zip', '--duration=0.001', *TINY]
    stop_during_first_step(['--outdir', first, '--nosubdir', *common])
    given = training_loop_latest(first)
    second = tmp_path / 'second'
    args = ['--outdir', second, '--nosubdir', '--resume', given, *common]
    stop_during_first_step(args)
    own = training_loop_latest(second)
    result = invoke_train(args + ['-n'])
    assert result.exit_code == 0, result.output
    assert f'Resuming from the newest training state in the run directory, "{own}" (0.064 kimg), which is further ' \
           f'than --resume={given} (0.032 kimg)' in result.output
    # Further states of a run that began elsewhere are refused (two runs would share the directory);
    # states written before they recorded their origin count as this command's.
    state = load_state(own)
    assert state['resumed_from'] == str(given.resolve())
    for name, origin in (('unrelated', None), ('legacy', 'absent')):
        folder = tmp_path / name
        shutil.copytree(second, folder)
        changed = dict(state, resumed_from=origin)
        if origin == 'absent':
            del changed['resumed_from']
        torch.save(changed, folder / own.name)
        result = invoke_train(['--outdir', folder, *args[2:], '-n'])
        if name == 'unrelated':
            assert result.exit_code == 1
            (line,) = error_lines(result)
            assert f'holds {own.name} of a run that began afresh; give a state inside it' in line
        else:
            assert result.exit_code == 0 and 'Resuming from the newest training state in the run directory' in result.output
    result = run_train(args)
    assert result.returncode == 0, result.stderr[-3000:]
    for key in ('net', 'ema', 'optimizer_state', 'sampler', 'rng'):
        assert_same(load_state(training_loop_latest(second))[key], load_state(reference_run / 'training-state-000001.pt')[key], key)

# Several processes continue one run: rank 0 chooses and claims it, the others take its choice
# (choosing for themselves, they would find it claimed by rank 0).
def test_processes_agree_on_the_run_they_continue(reference_run, data, tmp_path):
    import shutil
    run_dir = tmp_path / 'runs' / reference_run.name
    shutil.copytree(reference_run, run_dir)
    options = json.loads((run_dir / 'training_options.json').read_text())
    (run_dir / 'training_options.json').write_text(json.dumps(dict(options, total_kimg=1.1)))  # Unfinished at 1.024.
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    result = run_train(['--outdir', tmp_path / 'runs', '--data', data / 'ds8.zip', '--duration=0.0011', *TINY],
                       launcher=launcher, timeout=150)
    assert result.returncode == 0, result.stderr[-3000:]
    assert os.listdir(tmp_path / 'runs') == [run_dir.name]
    state = load_state(training_loop_latest(run_dir))
    assert state['cur_nimg'] == 1120 and state['world_size'] == 2
    assert 'replicas differ' not in result.stderr

# SIGKILL cannot be caught: the run stops wherever it is (possibly while writing a state, which is
# written atomically). The same command then resumes from the newest state on disk, or starts
# afresh when there is none, and ends in the very state of the uninterrupted run.
def test_sigkill_at_a_random_point_and_rerun_continues_exactly(reference_run, data, tmp_path):
    import random
    import time
    outdir = tmp_path / 'run'
    args = ['--outdir', outdir, '--nosubdir', '--data', data / 'ds8.zip', '--duration=0.001', *TINY]
    proc = run_train(args, wait=False)
    delay = random.uniform(0, 12)
    try:
        for line in proc.stdout:
            if line.startswith('Training for'):
                break
        deadline = time.time() + delay
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    result = run_train(args)
    assert result.returncode == 0, f'killed {delay:.1f} s into training: {result.stderr[-3000:]}'
    resumed = load_state(outdir / 'training-state-000001.pt')
    reference = load_state(reference_run / 'training-state-000001.pt')
    for key in ('net', 'ema', 'optimizer_state', 'sampler', 'rng'):
        assert_same(resumed[key], reference[key], f'{key} (killed {delay:.1f} s into training)')

# A damaged image that only rank 1 reads (seed 1) fails rank 1 with its one line; rank 0, whose collective then
# fails, says that another process failed, on the terminal and in log.txt, instead of gloo's traceback.
def test_a_failure_in_another_process_is_one_line_in_log_txt(data, tmp_path):
    bad = tmp_path / 'bad.zip'
    with zipfile.ZipFile(data / 'ds8.zip') as src, zipfile.ZipFile(bad, 'w') as z:
        for name in src.namelist():
            z.writestr(name, src.read(name)[:40] if name.endswith('img00000005.png') else src.read(name))
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    result = run_train(['--outdir', tmp_path / 'runs', '--data', bad, '--duration=0.002', *TINY], launcher=launcher)
    assert result.returncode != 0
    assert 'img00000005.png: cannot decode the image' in result.stderr, result.stderr[-3000:]
    assert '[rank0]' not in result.stderr and '[rank1]' not in result.stderr, result.stderr[-3000:]
    log = next((tmp_path / 'runs').iterdir()) / 'log.txt'
    assert log.read_text().splitlines()[-1] == 'Error: ' + PEER_FAILURE_MESSAGE

def training_loop_latest(run_dir: Path) -> Path:
    from training.training_loop import find_latest_state
    path = find_latest_state(str(run_dir))
    assert path is not None
    return Path(path)

#----------------------------------------------------------------------------
# Two processes (gloo): the replicas stay identical. The loop compares every
# EMA tensor with rank 0's at each snapshot and fails if one differs.

def test_two_processes_keep_replicas_identical(data, tmp_path):
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    result = run_train(['--outdir', tmp_path, '--data', data / 'ds8.zip', '--duration=0.0001', *TINY], launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    assert '-gpus2-batch32-' in run_dir.name
    state = load_state(run_dir / 'training-state-000000.pt')
    assert state['world_size'] == 2 and len(state['rng']) == 2
    assert not torch.equal(state['rng'][0]['torch'], state['rng'][1]['torch'])  # Each rank its own noise.
    stats = read_stats(run_dir)
    assert stats[-1]['Loss/loss']['num'] == (128 - 32) * 3 * 8 * 8  # Both ranks' images counted.
    assert 'replicas differ' not in result.stderr

#----------------------------------------------------------------------------
# --transfer from EDM's own pickle (data-only loading), and a clear error for
# a pickle of another resolution.

def test_transfer_from_edm_pickle(data, tmp_path, fixtures_dir, monkeypatch):
    # EDM's own snapshot (read as data) into the training loop, with a network of the same
    # architecture. One step at learning rate 0 (the warm-up starts at 0): the EMA of the
    # snapshot written after it is still exactly the pickle's network.
    from training.training_loop import training_loop
    monkeypatch.setattr(torch, 'get_num_threads', torch.get_num_threads)
    torch.set_num_threads(1)
    pickle_path = str(fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl')
    arch = torch.load(fixtures_dir / 'edm-ddpmpp-tiny-net.pt', weights_only=True)['kwargs']
    arch = {k: v for k, v in arch.items() if k not in ('img_resolution', 'img_channels', 'label_dim')}
    status = training_loop(
        run_dir=str(tmp_path), seed=0, batch_size=4, total_kimg=0.004, ema_rampup_ratio=None, device='cpu',
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=str(data / 'ds16c.zip'), use_labels=True),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', dropout=0.13, use_fp16=False, **arch),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        augment_kwargs=dict(class_name='training.augment.AugmentPipe', p=0.12, xflip=1e8, yflip=1, scale=1,
                            rotate_frac=1, aniso=1, translate_frac=1),
        resume_pkl=pickle_path)
    assert status == 'finished'
    source = persistence.load_network(pickle_path).state_dict()
    ema = persistence.load_network(str(tmp_path / 'network-snapshot-000000.pkl')).state_dict()
    assert set(ema) == set(source)
    for k in source:
        assert torch.equal(ema[k], source[k]), k
    assert load_state(tmp_path / 'training-state-000000.pt')['transfer'] == pickle_path

def test_transfer_through_the_command_line(reference_run, data, tmp_path):
    snapshot = reference_run / 'network-snapshot-000001.pkl'
    result = run_train(['--outdir', tmp_path, '--data', data / 'ds8.zip', *TINY, '--duration=0.00003', '--transfer', snapshot])
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['ema_rampup_ratio'] is None and options['resume_pkl'] == str(snapshot)
    source = persistence.load_network(str(snapshot)).state_dict()
    ema = persistence.load_network(str(run_dir / 'network-snapshot-000000.pkl')).state_dict()
    for k in source:
        assert torch.equal(ema[k], source[k]), k

def test_transfer_of_another_resolution_is_an_error(data, tmp_path, fixtures_dir):
    result = invoke_train(['--outdir', tmp_path / 'out', '--data', data / 'ds8.zip', *TINY, '--duration=0.001',
                           '--transfer', fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl'])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert re.search(r'^Error: --transfer: .*16x16 network.* needs 8x8', line)
    assert not (tmp_path / 'out').exists()

def test_transfer_into_a_run_of_another_origin_is_refused(reference_run, data, tmp_path):
    # A run directory holding a state from random weights; a --transfer run there must not resume it.
    outdir = tmp_path / 'run'
    outdir.mkdir()
    (outdir / 'training-state-000001.pt').write_bytes((reference_run / 'training-state-000001.pt').read_bytes())
    result = invoke_train(['--outdir', outdir, '--nosubdir', '--data', data / 'ds8.zip', *TINY, '--duration=0.003',
                           '--transfer', reference_run / 'network-snapshot-000001.pkl'])
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert re.search(r'^Error: --transfer=.*started from random weights', line)
    assert sorted(p.name for p in outdir.iterdir()) == ['training-state-000001.pt']

def test_resume_from_a_run_directory_picks_the_newest_state(reference_run, data, tmp_path):
    result = invoke_train(['--outdir', tmp_path, '--data', data / 'ds8.zip', *TINY, '--resume', reference_run, '-n'])
    assert result.exit_code == 0, result.output
    assert f'Resuming from "{reference_run / "training-state-000001.pt"}"' in result.output

# A run continues on the data it began with: a training state records what the data was (names,
# file counts, bytes, dataset.json), and another dataset is refused unless --allow-data-change.
# States written before the record existed still load.
def test_resume_on_other_data_is_refused_unless_asked(reference_run, data, tmp_path):
    make_zip(tmp_path / 'ds8.zip', 40, seed=5)  # Same name, other content.
    state = reference_run / 'training-state-000001.pt'
    assert load_state(state)['data'][0]['files'] == 32
    args = ['--outdir', tmp_path / 'out', '--data', tmp_path / 'ds8.zip', *TINY, '--duration=0.001', '--resume', state]
    result = invoke_train(args)
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert re.search(r'^Error: --data: .*ds8\.zip \(32 files, .*ds8\.zip \(40 files.*--allow-data-change', line), line
    assert not (tmp_path / 'out').exists()
    result = invoke_train(args + ['--allow-data-change'])
    assert result.exit_code == 0 and 'nothing to do' in result.output, result.output

    # The same data elsewhere is the same data; a state without the record loads.
    copy = tmp_path / 'moved' / 'ds8.zip'
    copy.parent.mkdir()
    copy.write_bytes((data / 'ds8.zip').read_bytes())
    old = load_state(state)
    del old['data']
    torch.save(old, tmp_path / 'old-state.pt')
    for resume in (state, tmp_path / 'old-state.pt'):
        result = invoke_train(['--outdir', tmp_path / 'out2', '--data', copy, *TINY, '--duration=0.001', '--resume', resume])
        assert result.exit_code == 0 and 'nothing to do' in result.output, result.output

#----------------------------------------------------------------------------
# Non-finite losses are counted, not hidden: half of this union of datasets
# holds values whose squares overflow float32.

def test_nonfinite_losses_are_counted(data, tmp_path, capsys):
    from training.training_loop import training_loop
    huge = make_npy_dir(tmp_path / 'huge', np.full([32, 3, 8, 8], 1e30))
    parts = [dict(path=str(data / 'ds8.zip')), dict(path=str(huge))]
    status = training_loop(
        run_dir=str(tmp_path), seed=0, batch_size=32, total_kimg=0.1, device='cpu',
        dataset_kwargs=dict(class_name='training.dataset.UnionDataset', datasets=parts),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=16,
                            channel_mult=[1], dropout=0.13),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8))
    assert status == 'finished'
    stats = read_stats(tmp_path)
    nonfinite = sum(s['Loss/nonfinite']['num'] * s['Loss/nonfinite']['mean'] for s in stats)
    assert 0 < nonfinite < sum(s['Loss/nonfinite']['num'] for s in stats)
    assert sum(s['Loss/nonfinite_grad']['mean'] for s in stats) > 0
    assert re.search(r'^tick .* nonfinite-loss [1-9]', capsys.readouterr().out, re.M)
    ema = persistence.load_network(str(tmp_path / 'network-snapshot-000000.pkl'))
    assert all(torch.isfinite(p).all() for p in ema.parameters())

#----------------------------------------------------------------------------
# Bad input: one line, exit status 1, no run directory.

@pytest.mark.parametrize('case', ['batch-vs-processes', 'batch-gpu', 'cond-without-labels', 'empty', 'missing', 'fp16-bf16'])
def test_bad_input_is_one_line_and_leaves_nothing(case, data, tmp_path, monkeypatch):
    args = ['--outdir', str(tmp_path / 'out'), '--data', str(data / 'ds8.zip'), *TINY, '--duration=0.001']
    expected = {
        'batch-vs-processes': r'--batch=32 does not divide evenly between 3 processes',
        'batch-gpu': r'--batch-gpu=5 does not divide',
        'cond-without-labels': r'labels',
        'empty': r'empty.*no image files',
        'missing': r'nonexistent',
        'fp16-bf16': r'--fp16 and --bf16',
    }[case]
    if case == 'batch-vs-processes':
        monkeypatch.setenv('WORLD_SIZE', '3')
    args += {'batch-gpu': ['--batch-gpu=5'], 'cond-without-labels': ['--cond=1'], 'fp16-bf16': ['--fp16=1', '--bf16=1'],
             'empty': ['--data', str(data / 'empty')], 'missing': ['--data', str(data / 'nonexistent')]}.get(case, [])
    if case in ('empty', 'missing'):
        args = args[:2] + args[4:]  # Only the bad --data.
    result = invoke_train(args)
    assert result.exit_code == 1, result.output
    (line,) = error_lines(result)
    assert re.search(expected, line), result.output
    assert not (tmp_path / 'out').exists()

def test_bad_input_from_the_shell(data, tmp_path):
    result = run_train(['--outdir', tmp_path / 'out', '--data', data / 'ds8.zip', '--cond=1', *TINY])
    assert result.returncode == 1
    assert result.stderr.strip().count('\n') == 0 and result.stderr.startswith('Error: ')
    assert not (tmp_path / 'out').exists()

# An image that cannot be decoded fails in a data-loading worker, whose error
# reaches the training process wrapped in the worker's traceback: the user
# reads one line that names the file.
def test_a_damaged_image_read_by_a_worker_is_one_line(data, tmp_path):
    damaged = tmp_path / 'damaged.zip'
    with zipfile.ZipFile(data / 'ds8.zip') as source, zipfile.ZipFile(damaged, 'w') as z:
        for name in source.namelist():
            content = source.read(name)
            z.writestr(name, content[:60] if name == '00000/img00000003.png' else content)
    result = run_train(['--outdir', tmp_path / 'out', '--data', damaged, *TINY, '--duration=0.001'])
    assert result.returncode == 1
    assert result.stderr.strip().count('\n') == 0, result.stderr
    assert result.stderr.startswith('Error: ') and 'img00000003.png: cannot decode the image' in result.stderr

# The folder of run directories is never a dataset: not one with a
# dataset.json (nor inside one), and not loose images or EDM's numbered
# folders without it.
def test_run_directories_do_not_go_into_a_dataset(data, tmp_path):
    (tmp_path / 'loose').mkdir()
    PIL.Image.new('RGB', (8, 8)).save(tmp_path / 'loose' / 'a.png')
    (tmp_path / 'edm' / '00000').mkdir(parents=True)
    (tmp_path / 'labelled').mkdir()
    (tmp_path / 'labelled' / 'dataset.json').write_text('{"labels": null}')
    for outdir, message in [(tmp_path / 'loose', 'holds a dataset (a.png)'), (tmp_path / 'edm', 'holds a dataset (00000)'),
                            (tmp_path / 'labelled', 'a set of images (dataset.json)'),
                            (tmp_path / 'labelled' / 'runs', 'a set of images (dataset.json)')]:
        before = sorted(p.name for p in outdir.parent.rglob('*'))
        result = invoke_train(['--outdir', outdir, '--data', data / 'ds8.zip', *TINY, '--duration=0.001'])
        assert result.exit_code == 1 and message in error_lines(result)[0], result.output
        assert sorted(p.name for p in outdir.parent.rglob('*')) == before

# Adam's first step is lr / (1 - beta1) in float32: a learning rate above 1
# is a typing slip that would overflow it (1e300 did, as a traceback).
def test_a_learning_rate_above_one_is_an_option_error(data, tmp_path):
    result = invoke_train(['--outdir', tmp_path / 'out', '--data', data / 'ds8.zip', *TINY, '--lr=1e300'])
    assert result.exit_code == 2 and "Invalid value for '--lr': 1e+300 is not in the range 0<x<=1" in result.output
    assert not (tmp_path / 'out').exists()

# The loop stops its data-loading workers on an error too, at once: the
# error's traceback (kept here by pytest.raises) holds the loader, and a
# worker left to the interpreter's exit got SIGTERM, which a shielded worker
# heeds only after 30 s.
def test_an_error_stops_the_data_loading_workers(data, tmp_path):
    import multiprocessing
    from dnnlib.util import UserError
    from training.training_loop import training_loop
    damaged = tmp_path / 'damaged.zip'
    with zipfile.ZipFile(data / 'ds8.zip') as source, zipfile.ZipFile(damaged, 'w') as z:
        for name in source.namelist():
            z.writestr(name, source.read(name)[:60] if name.endswith('.png') else source.read(name))
    with pytest.raises(UserError, match='cannot decode the image'):
        training_loop(
            run_dir=str(tmp_path / 'run'), seed=0, batch_size=8, total_kimg=0.1, device='cpu',
            dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=str(damaged)),
            network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=16,
                                channel_mult=[1]),
            loss_kwargs=dict(class_name='training.loss.EDMLoss'),
            optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
            data_loader_kwargs=dict(num_workers=1), stop_requested=lambda: False)
    assert multiprocessing.active_children() == []

def test_dry_run_prints_and_exits(data, tmp_path):
    (tmp_path / 'copy').mkdir()
    shutil.copy(data / 'ds8.zip', tmp_path / 'copy' / 'ds8.zip')  # Another set of the same name (one set twice is refused).
    result = invoke_train(['--outdir', tmp_path / 'out', '--data', data / 'ds8.zip', '--data', tmp_path / 'copy' / 'ds8.zip',
                           '--bf16=1', '-n'])
    assert result.exit_code == 0, result.output
    assert 'Dry run; exiting.' in result.output and 'training.dataset.UnionDataset' in result.output
    assert '-ds8+ds8-uncond-ddpmpp-edm-gpus1-batch512-bf16' in result.output
    assert not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
# The fast path (--fast). A run resumes bit-exactly from its own training
# states; on the CPU the fast path's settings change no arithmetic, so its
# losses are the faithful path's; and the GPU's settings (bfloat16,
# channels-last, fused Adam; torch.compile aside) run on the CPU too, with
# snapshots that record the network as built.

# The CUDA choices that the CPU can run (fused Adam where this torch has it on the CPU).
GPU_LIKE = dict(dtype='bfloat16', channels_last=True, optimizer='fused' if fused_adam_on_cpu() else 'foreach')

def short_run(data: Path, run_dir: Path, fast, total_kimg: float, resume: Path | None = None,
              stop_at_poll: int | None = None, **options) -> str:
    from training.training_loop import training_loop
    from torch_utils.fast import fast_settings
    if isinstance(fast, dict):
        fast = fast_settings('cpu', **fast)
    polls = []
    def stop_requested() -> bool:
        polls.append(1)
        return stop_at_poll is not None and len(polls) >= stop_at_poll
    return training_loop(
        run_dir=str(run_dir), seed=3, batch_size=16, batch_gpu=8, total_kimg=total_kimg, kimg_per_tick=0.032,
        lr_rampup_kimg=0.05, device='cpu', fast=fast, stop_requested=stop_requested,
        resume_state_dump=None if resume is None else str(resume),
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=str(data / 'ds8.zip')),
        data_loader_kwargs=dict(num_workers=1),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=16,
                            channel_mult=[1], num_blocks=1, dropout=0.13),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8), **options)

@pytest.mark.parametrize('fast', [True, GPU_LIKE], ids=['cpu-settings', 'gpu-settings'])
def test_fast_path_resumes_exactly(fast, data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, 'get_num_threads', torch.get_num_threads)
    torch.set_num_threads(1)
    assert short_run(data, tmp_path / 'ref', fast, 0.096) == 'finished'
    assert short_run(data, tmp_path / 'run', fast, 0.096, stop_at_poll=2) == 'preempted'
    stopped = load_state(training_loop_latest(tmp_path / 'run'))
    assert stopped['cur_nimg'] == 32
    assert short_run(data, tmp_path / 'run', fast, 0.096, resume=training_loop_latest(tmp_path / 'run')) == 'finished'
    resumed, reference = (load_state(training_loop_latest(tmp_path / d)) for d in ('run', 'ref'))
    assert resumed['cur_nimg'] == reference['cur_nimg'] == 96
    for key in ('net', 'ema', 'optimizer_state', 'sampler', 'rng'):
        assert_same(resumed[key], reference[key], key)
    ema = persistence.load_network(run_files.newest(str(tmp_path / 'ref'), run_files.SNAPSHOT_PREFIX))
    assert not ema.use_bf16 and all(torch.isfinite(p).all() for p in ema.parameters())

# A library caller that turns snapshots and states off (None) still gets both when it asks the run to stop.
def test_a_stop_request_saves_even_with_saving_turned_off(data, tmp_path):
    run = tmp_path / 'run'
    assert short_run(data, run, False, 0.096, stop_at_poll=2, snapshot_ticks=None, state_dump_ticks=None) == 'preempted'
    assert load_state(training_loop_latest(run))['cur_nimg'] == 32
    assert run_files.newest(str(run), run_files.SNAPSHOT_PREFIX) is not None

def test_fast_path_on_the_cpu_computes_the_faithful_losses(data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, 'get_num_threads', torch.get_num_threads)
    torch.set_num_threads(1)
    for name, fast in (('faithful', False), ('fast', True)):
        assert short_run(data, tmp_path / name, fast, 0.096) == 'finished'
    faithful, fast = read_stats(tmp_path / 'faithful'), read_stats(tmp_path / 'fast')
    assert len(faithful) == len(fast) == 4
    for a, b in zip(faithful, fast):
        assert b['Loss/loss']['mean'] == pytest.approx(a['Loss/loss']['mean'], rel=1e-5)
    # A faithful run's state continues on the fast path (one more tick).
    assert short_run(data, tmp_path / 'faithful', True, 0.128,
                     resume=training_loop_latest(tmp_path / 'faithful')) == 'finished'
    assert load_state(training_loop_latest(tmp_path / 'faithful'))['optimizer_state']['param_groups'][0]['foreach']

# Every tool that looks for the newest (or every) snapshot or state orders the names by position:
# the plain EDM name first in its kimg, then the exact ones (training/run_files.py).
def test_snapshots_and_states_are_found_in_training_order(tmp_path):
    from tools.rounds import final_snapshot
    from metrics.fid import list_snapshots, snapshot_kimg
    from training.training_loop import find_latest_state
    names = ['network-snapshot-000000.pkl', 'network-snapshot-000000.990.pkl', 'network-snapshot-000001.pkl',
             'network-snapshot-000001.520.pkl', 'training-state-000001.pt', 'training-state-000001.008.pt',
             'training-state-000000.pt']
    for name in names:
        (tmp_path / name).write_bytes(b'')
    newest_snapshot, newest_state = tmp_path / names[3], tmp_path / names[5]
    assert [Path(p).name for p in list_snapshots(str(tmp_path))] == names[:4]
    assert [snapshot_kimg(name) for name in names[:4]] == [0, 0.99, 1, 1.52]
    assert final_snapshot(str(tmp_path)) == str(newest_snapshot)
    assert find_latest_state(str(tmp_path)) == str(newest_state)
    script = f'source {REPO_ROOT / "scripts" / "common.sh"}; sfbd_newest_snapshot {tmp_path}; sfbd_newest_state {tmp_path}'
    out = subprocess.run(['bash', '-c', script], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(newest_snapshot), str(newest_state)]

# A stop in the middle of a tick, in the kimg of the tick before it (here every tick is in kimg 0):
# each position gets a file of its own, named by position (training/run_files.py), and no
# snapshot or state replaces one of another position. The rerun counts its ticks from the stop, so
# they fall at other kimg than an uninterrupted run's; step by step it trains the same, and it ends
# in the very state of the uninterrupted run (docs/reliability.md).
def test_a_stop_in_the_middle_of_a_tick_replaces_no_snapshot(data, tmp_path, monkeypatch):
    monkeypatch.setattr(torch, 'get_num_threads', torch.get_num_threads)
    torch.set_num_threads(1)
    every_tick = dict(snapshot_ticks=1, state_dump_ticks=1)
    ref, run = tmp_path / 'ref', tmp_path / 'run'
    assert short_run(data, ref, False, 0.096, **every_tick) == 'finished'
    assert short_run(data, run, False, 0.096, stop_at_poll=4, **every_tick) == 'preempted'  # Tick 1 ended at 48.
    assert load_state(training_loop_latest(run))['cur_nimg'] == 64
    assert short_run(data, run, False, 0.096, resume=training_loop_latest(run), **every_tick) == 'finished'

    def files(run_dir: Path, pattern: str) -> list[str]:
        return run_files.in_order([p.name for p in run_dir.glob(pattern)])
    assert files(run, 'network-snapshot-*.pkl') == ['network-snapshot-000000.pkl', 'network-snapshot-000000.048.pkl',
                                                    'network-snapshot-000000.064.pkl', 'network-snapshot-000000.096.pkl']
    assert files(ref, 'network-snapshot-*.pkl')[1:] == ['network-snapshot-000000.048.pkl', 'network-snapshot-000000.080.pkl',
                                                        'network-snapshot-000000.096.pkl']
    states = files(run, 'training-state-*.pt')
    assert [load_state(run / name)['cur_nimg'] for name in states] == [48, 64, 96]
    assert training_loop_latest(run).name == states[-1] == 'training-state-000000.096.pt'

    # The files of positions both runs reached hold the same networks: none was replaced.
    for name in ('network-snapshot-000000.pkl', 'network-snapshot-000000.048.pkl', 'network-snapshot-000000.096.pkl'):
        a, b = (persistence.load_network(str(d / name)).state_dict() for d in (run, ref))
        assert_same(a, b, name)
    assert_same(load_state(run / 'training-state-000000.pt')['net'], load_state(ref / 'training-state-000000.pt')['net'])
    for key in ('net', 'ema', 'optimizer_state', 'sampler', 'rng'):
        assert_same(load_state(training_loop_latest(run))[key], load_state(training_loop_latest(ref))[key], key)

    # Ticks: the stop ends tick 2 early, and the rerun's tick 3 ends at the end; the same
    # losses step by step, so the same loss summed over all images.
    run_stats, ref_stats = read_stats(run), read_stats(ref)
    assert [s['Progress/kimg']['mean'] for s in ref_stats] == [0.016, 0.048, 0.080, 0.096]
    assert [s['Progress/kimg']['mean'] for s in run_stats] == [0.016, 0.048, 0.064, 0.096]
    for a, b in zip(run_stats[:2], ref_stats[:2]):
        assert a['Loss/loss'] == b['Loss/loss']
    total = [sum(s['Loss/loss']['num'] * s['Loss/loss']['mean'] for s in stats) for stats in (run_stats, ref_stats)]
    assert total[0] == pytest.approx(total[1], rel=1e-6)

def test_two_processes_on_the_fast_path_with_a_union(data, tmp_path):
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2']
    (tmp_path / 'copy').mkdir()
    shutil.copy(data / 'ds8.zip', tmp_path / 'copy' / 'ds8.zip')  # Another set of the same name (one set twice is refused).
    result = run_train(['--outdir', tmp_path / 'runs', '--data', data / 'ds8.zip', '--data', tmp_path / 'copy' / 'ds8.zip',
                        '--duration=0.0001', *TINY, '--fast'], launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / 'runs').iterdir()
    assert '-ds8+ds8-uncond-ddpmpp-edm-gpus2-batch32-fp32' in run_dir.name
    assert json.loads((run_dir / 'training_options.json').read_text())['fast'] is True
    state = load_state(run_dir / 'training-state-000000.pt')
    assert state['format'] == 'sfbd-training-state-v1' and state['world_size'] == 2 and len(state['rng']) == 2
    assert read_stats(run_dir)[-1]['Loss/loss']['num'] == (128 - 32) * 3 * 8 * 8
    assert 'replicas differ' not in result.stderr

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# The weight average's step is EDM's to the bit, ema <- net.lerp(ema, beta), on both paths.

def test_the_weight_average_is_edms_to_the_bit():
    from torch_utils.fast import fast_settings
    from training.training_loop import update_ema
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 3))
    for fast in (None, fast_settings('cpu')):
        ema = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 3))
        expected = [p_net.detach().lerp(p_ema.detach(), 0.9993) for p_ema, p_net in zip(ema.parameters(), net.parameters())]
        update_ema(ema, net, 0.9993, fast)
        assert all(torch.equal(p, e) for p, e in zip(ema.parameters(), expected))
