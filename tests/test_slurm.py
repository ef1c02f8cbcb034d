"""The cluster scripts under a real SLURM, on the CPU, with tiny networks and 8x8 datasets.

A SLURM of two virtual nodes on this machine is started with `LOCAL_SLURM_NODES=2
scripts/local_slurm.sh start` when `sinfo` is absent or not answering (it needs root; it installs
Debian's slurm and munge with apt-get if they are missing), and stopped again at the end if this module
started it. If that local SLURM already answers, it is reused (and reconfigured to two nodes if it has
one). Another answering SLURM is used only if SFBD_TEST_USE_SLURM=1 says so: the tests keep their files
in the local temporary folder, which the nodes of a real cluster would not see.

- the denoising job array (scripts/denoise_submit.sh, 3 tasks over 10 observations) writes exactly
  the images of one `denoise.py` run; deleting some and submitting again (with 4 tasks) redoes only
  those;
- scripts/sfbd_rounds.sh runs pretraining and 2 rounds as one chain of dependent jobs and leaves the
  expected runs, denoised sets and records; with ONLINE=1, pretraining and one Online SFBD run;
- a training job sent the warning signal (`scancel --signal=USR1 --batch`) saves its state, requeues
  itself and the requeued job resumes from that state and finishes; once as one process on one node
  (`python train.py`), and at the same time as a two-node job (srun + torchrun rendezvous per node).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from sfbd_helpers import make_image_dataset, make_observation_set, random_observations, read_json, read_png_dataset, save_tiny_network

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / 'scripts'
LOCAL_SLURM = SCRIPTS / 'local_slurm.sh'

TINY_NET = ['--arch=ddpmpp', '--cbase=16', '--cres=1,1', '--batch=8', '--tick=1', '--snap=1', '--dump=1',
            '--augment=0', '--workers=1']

#----------------------------------------------------------------------------
# SLURM for this module.

def _run(cmd: list[str], env: dict | None = None, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f'{" ".join(map(str, cmd))} exited {result.returncode}\n'
                             f'--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}')
    return result

def _sinfo_answers(env: dict) -> bool:
    if shutil.which('sinfo') is None:
        return False
    try:
        result = subprocess.run(['sinfo', '-h', '-o', '%T'], env=env, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return False
    return result.returncode == 0 and bool(result.stdout.strip())

def _cluster_name(env: dict) -> str:
    result = subprocess.run(['scontrol', 'show', 'config'], env=env, capture_output=True, text=True, timeout=15)
    m = re.search(r'^ClusterName\s*=\s*(\S+)', result.stdout, re.MULTILINE)
    return m.group(1) if m else ''

def _skip_loudly(reason: str) -> None:
    message = f'SLURM TESTS SKIPPED: {reason}'
    warnings.warn(message)
    print(f'\n*** {message} ***', file=sys.stderr)
    pytest.skip(message)

@pytest.fixture(scope='module')
def slurm_env():
    """An environment for sbatch & co. that reaches a working SLURM (two nodes if it is the local one)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_')}
    env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', PYTHON=sys.executable, SFBD_ROOT=str(REPO))
    local_conf = (shlex.split(_run(['bash', str(LOCAL_SLURM), 'env'], check=False).stdout) or [''])[-1].removeprefix('SLURM_CONF=')
    answers = _sinfo_answers(env)
    if answers and _cluster_name(env) != 'sfbdlocal':
        if os.environ.get('SFBD_TEST_USE_SLURM') != '1':
            _skip_loudly(f'a SLURM cluster "{_cluster_name(env)}" answers here; these tests run only on the local '
                         'one (scripts/local_slurm.sh) unless SFBD_TEST_USE_SLURM=1')
        yield env
        return
    if os.geteuid() != 0:
        _skip_loudly('no local SLURM answers and scripts/local_slurm.sh needs root to start one')
    if shutil.which('slurmctld') is None and shutil.which('apt-get') is None:
        _skip_loudly('SLURM is not installed and apt-get is not available to install it')
    # Idempotent: a no-op if the local SLURM already runs with two nodes.
    env['LOCAL_SLURM_NODES'] = '2'
    _run(['bash', str(LOCAL_SLURM), 'start'], env=env, timeout=600)
    env['SLURM_CONF'] = local_conf
    assert _sinfo_answers(env), 'scripts/local_slurm.sh start returned, but sinfo does not answer'
    yield env
    if not answers:
        _run(['bash', str(LOCAL_SLURM), 'stop'], check=False)

def node_count(env: dict) -> int:
    result = subprocess.run(['sinfo', '-h', '-N', '-o', '%N'], env=env, capture_output=True, text=True, timeout=15)
    return len(set(result.stdout.split()))

def job_state(job: str, env: dict) -> dict:
    result = subprocess.run(['scontrol', '-o', 'show', 'job', job], env=env, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return {}
    return dict(re.findall(r'(\w+)=(\S*)', result.stdout.splitlines()[0]))

def wait_for_job(job: str, env: dict, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = job_state(job, env)
        if info.get('JobState') not in ('PENDING', 'RUNNING', 'CONFIGURING', 'COMPLETING', 'REQUEUED', None):
            return info
        time.sleep(1)
    subprocess.run(['scancel', job], env=env, timeout=30)
    raise AssertionError(f'job {job} did not end within {timeout} s: {job_state(job, env)}')

def wait_for_text(path: Path, pattern: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and re.search(pattern, path.read_text(errors='replace'), re.MULTILINE):
            return
        time.sleep(0.5)
    raise AssertionError(f'"{pattern}" did not appear in {path} within {timeout} s:\n'
                         + (path.read_text(errors='replace')[-4000:] if path.is_file() else '(no file)'))

def tails(folder: Path) -> str:
    return '\n'.join(f'--- {p.name}\n{p.read_text(errors="replace")[-2500:]}' for p in sorted(folder.glob('*.out')))

#----------------------------------------------------------------------------
# Data.

@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('slurm-data')
    clean = root / 'clean'
    noisy = root / 'noisy'
    make_image_dataset(str(clean), 16, seed=1)
    make_observation_set(str(noisy), random_observations(10, sigma=0.5, seed=2), sigma=0.5)
    network = save_tiny_network(str(root / 'tiny.pkl'))
    return dict(root=root, clean=str(clean), noisy=str(noisy), network=network)

#----------------------------------------------------------------------------
# Without SLURM: configuration errors are reported before anything runs.

def test_train_sh_reports_missing_configuration(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ('OUTDIR', 'CLEAN_DATA', 'PRESET', 'TRANSFER')}
    result = _run(['bash', str(SCRIPTS / 'train.sh')], env=env, check=False)
    assert result.returncode == 1 and 'set OUTDIR' in result.stderr
    env.update(OUTDIR=str(tmp_path / 'run'), CLEAN_DATA=str(tmp_path / 'nothing'))
    result = _run(['bash', str(SCRIPTS / 'train.sh')], env=env, check=False)
    assert result.returncode == 1 and 'does not exist' in result.stderr
    env.update(CLEAN_DATA=str(tmp_path), PRESET='imagenet')
    result = _run(['bash', str(SCRIPTS / 'train.sh')], env=env, check=False)
    assert result.returncode == 1 and 'PRESET=imagenet' in result.stderr
    env.update(PRESET='none', TRANSFER=str(tmp_path))  # A directory without snapshots.
    result = _run(['bash', str(SCRIPTS / 'train.sh')], env=env, check=False)
    assert result.returncode == 1 and 'network-snapshot' in result.stderr
    assert not (tmp_path / 'run').exists()

# Bad settings of the chain scripts are one error line before anything is
# submitted or made (sbatch here is a stand-in that notes each call), and a bad
# RECORD or RECORD_TAG stops train.sh and denoise.sh when they start, not after
# their work.
@pytest.mark.parametrize('script, setting, message', [
    ('sfbd_rounds.sh', dict(NUM_TASKS='abc'), 'NUM_TASKS=abc is not a positive integer'),
    ('sfbd_rounds.sh', dict(MAX_PARALLEL='0'), 'MAX_PARALLEL=0 is not a positive integer'),
    ('sfbd_rounds.sh', dict(STEPS='99999999999999999999'), 'STEPS=99999999999999999999 is not a positive integer'),
    ('sfbd_rounds.sh', dict(WAIT_POLL='soon'), 'WAIT_POLL=soon is not a positive number of seconds'),
    ('sfbd_rounds.sh', dict(WAIT_POLL='0.0'), 'WAIT_POLL=0.0 is not a positive number of seconds'),
    ('denoise_submit.sh', dict(WAIT_POLL='0'), 'WAIT_POLL=0 is not a positive number of seconds'),
    ('denoise.sh', dict(FINALIZE='yes'), 'FINALIZE=yes: 1 to finalize'),
    ('sfbd_rounds.sh', dict(WORKDIR='<clean>/runs'), 'lies inside the input CLEAN_DATA'),
    ('sfbd_rounds.sh', dict(WORKDIR='<noisy>'), 'lies inside the input NOISY_DATA'),
    ('sfbd_rounds.sh', dict(NOISY_DATA='<clean>/'), 'CLEAN_DATA and NOISY_DATA are the same'),
    ('sfbd_rounds.sh', dict(WORKDIR='<file>'), 'is a file, not a directory'),
    ('denoise_submit.sh', dict(NUM_TASKS='-1'), 'NUM_TASKS=-1 is not a positive integer'),
    ('denoise_submit.sh', dict(RECORD_TAG='{round: 2}'), 'RECORD_TAG={round: 2} is not a JSON object'),
    ('denoise.sh', dict(RECORD_TAG='[1]'), 'RECORD_TAG=[1] is not a JSON object'),
    ('denoise.sh', dict(RECORD='<root>'), 'is a directory; expected a JSON-lines file'),
    ('denoise.sh', dict(DENOISE_ARGS='--shard=1/2'), '--shard is set by the script itself'),
    ('train.sh', dict(RECORD_TAG='{"round": 2'), 'is not a JSON object'),
    ('sfbd_rounds.sh', dict(UPDATE_ARGS='--duration=abc'), "UPDATE_ARGS: Invalid value for '--duration'"),
    ('sfbd_rounds.sh', dict(PRETRAIN_ARGS='--outdir=elsewhere'), 'PRETRAIN_ARGS: --outdir is set by the script itself'),
    ('sfbd_rounds.sh', dict(PRESET='bogus'), 'PRESET=bogus: unknown preset'),
    ('denoise_submit.sh', dict(DENOISE_ARGS='--stepz=3'), "DENOISE_ARGS: No such option*--stepz"),  # click 8.2: `option: --stepz`.
    ('denoise_submit.sh', dict(DENOISE_ARGS='--shard=1/2'), 'DENOISE_ARGS: --shard is set by the script itself'),
    ('sfbd_rounds.sh', dict(WORKDIR='<set>/work'), 'WORKDIR=*: lies inside*a set of images (dataset.json)'),
    ('sfbd_rounds.sh', dict(), 'no image files'),  # The data are checked too (here empty folders).
    ('denoise_submit.sh', dict(OUTDIR='<noisy>/den'), 'OUTDIR=*: is inside the input NOISY_DATA'),
    ('denoise_submit.sh', dict(OUTDIR='<set>/den'), 'OUTDIR=*: lies inside*a set of images (dataset.json)'),
])
def test_chain_scripts_check_settings_before_anything_runs(tmp_path, script, setting, message):
    clean, noisy, stub = tmp_path / 'clean', tmp_path / 'noisy', tmp_path / 'bin'
    for folder in (clean, noisy, stub):
        folder.mkdir()
    (tmp_path / 'file').write_text('')
    (tmp_path / 'set').mkdir()
    (tmp_path / 'set' / 'dataset.json').write_text('{"labels": null}')
    calls = tmp_path / 'sbatch-calls'
    for name in ('sbatch', 'squeue'):
        (stub / name).write_text(f'#!/bin/bash\necho "$0 $*" >>{calls}\necho 123\n')
        (stub / name).chmod(0o755)
    places = dict(root=tmp_path, clean=clean, noisy=noisy, file=tmp_path / 'file', set=tmp_path / 'set')
    env = dict(os.environ, PATH=f'{stub}:{os.environ["PATH"]}', CLEAN_DATA=str(clean), NOISY_DATA=str(noisy),
               WORKDIR=str(tmp_path / 'work'), OUTDIR=str(tmp_path / 'out'), NETWORK=str(tmp_path / 'pretrain'))  # A run directory that a queued job would make.
    for key, value in setting.items():
        for name, place in places.items():
            value = value.replace(f'<{name}>', str(place))
        env[key] = value
    result = _run(['bash', str(SCRIPTS / script)], env=env, check=False)
    errors = [line for line in result.stderr.splitlines() if 'error:' in line.lower()]  # Python's 'Error:' too.
    assert result.returncode == 1 and len(errors) == 1 and all(part in errors[0] for part in message.split('*')), result.stderr
    assert not calls.exists() and not (tmp_path / 'work').exists() and not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------

def test_local_slurm_is_idempotent(slurm_env):
    if _cluster_name(slurm_env) != 'sfbdlocal':
        pytest.skip('not the local SLURM of scripts/local_slurm.sh')
    start = time.time()
    result = _run(['bash', str(LOCAL_SLURM), 'start'], env=slurm_env)
    assert 'already running' in result.stderr and time.time() - start < 15
    result = _run(['bash', str(LOCAL_SLURM), 'status'], env=slurm_env)
    assert re.search(r'^slurmctld: running', result.stdout, re.MULTILINE)
    assert re.search(r'\b(idle|mixed|allocated)\b', result.stdout)

def test_denoise_array_equals_single_run(slurm_env, data, tmp_path):
    # --batch=1 everywhere: each image then goes through the very same computation whichever task
    # does it, so the comparison is exact on any CPU (kernels may round differently per batch size).
    steps = '4'
    single = tmp_path / 'single'
    _run([sys.executable, str(REPO / 'denoise.py'), f'--network={data["network"]}', f'--data={data["noisy"]}',
          f'--outdir={single}', f'--steps={steps}', '--batch=1', '--device=cpu'], env=slurm_env, timeout=300)
    expected = read_png_dataset(str(single))
    assert len(expected) == 10

    # 3 tasks over 10 observations: shards of 3, 3 and 4 images.
    array_out = tmp_path / 'array'
    logs = tmp_path / 'logs 50%u'  # sbatch expands %u in a log path; the script doubles the folder's own %.
    env = dict(slurm_env, NETWORK=data['network'], NOISY_DATA=data['noisy'], OUTDIR=str(array_out), NUM_TASKS='3',
               STEPS=steps, DENOISE_ARGS='--batch=1', WAIT_POLL='1', LOG_DIR=str(logs), RECORD=str(tmp_path / 'record.jsonl'))
    result = _run(['bash', str(SCRIPTS / 'denoise_submit.sh'), '--wait'], env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + tails(logs)
    assert re.fullmatch(r'\d+\n', result.stdout), result.stdout  # The job id.
    got = read_png_dataset(str(array_out))
    assert sorted(got) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])
    assert (array_out / 'dataset.json').is_file()
    assert read_json(str(array_out / 'dataset.json')) == read_json(str(single / 'dataset.json'))
    record = [json.loads(line) for line in (tmp_path / 'record.jsonl').read_text().splitlines()]
    assert len(record) == 1 and record[0]['stage'] == 'denoise'
    assert record[0]['network'] == data['network'] and record[0]['denoised'] == str(array_out)
    assert len(list(logs.glob('sfbd-denoise-*_*.out'))) == 3 and len(list(logs.glob('sfbd-denoise-finalize-*.out'))) == 1

    # Lose two images; submitting again (now 4 tasks) writes those two and leaves the others alone.
    lost = sorted(got)[4:6]
    for name in lost:
        (array_out / name).unlink()
    (array_out / 'dataset.json').unlink()
    kept = {name: (array_out / name).stat().st_mtime_ns for name in got if name not in lost}
    env['NUM_TASKS'] = '4'
    result = _run(['bash', str(SCRIPTS / 'denoise_submit.sh'), '--wait'], env=env, timeout=300, check=False)
    assert result.returncode == 0, result.stderr + tails(logs)
    again = read_png_dataset(str(array_out))
    assert sorted(again) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(again[name], expected[name])
    assert {name: (array_out / name).stat().st_mtime_ns for name in kept} == kept
    assert (array_out / 'dataset.json').is_file()
    denoised_counts = [int(m) for m in re.findall(r'Denoised (\d+) images', tails(logs))]
    assert sum(denoised_counts) == 10 + len(lost)

def test_rounds_chain(slurm_env, data, tmp_path):
    workdir = tmp_path / 'sfbd 100%x'  # A % in the log folder's path (sbatch would expand %x).
    env = dict(slurm_env, CLEAN_DATA=data['clean'], NOISY_DATA=data['noisy'], WORKDIR=str(workdir), ROUNDS='2',
               NUM_TASKS='2', STEPS='4', WAIT_POLL='1',
               PRETRAIN_ARGS=' '.join(TINY_NET + ['--duration=0.00004', '--seed=0']),
               UPDATE_ARGS=' '.join(TINY_NET + ['--duration=0.00004', '--seed=1', '--lr-rampup=0']))
    start = time.time()
    result = _run(['bash', str(SCRIPTS / 'sfbd_rounds.sh'), '--wait'], env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr + tails(workdir / 'logs')
    print(f'2-round chain: {time.time() - start:.0f} s')

    # One chain of 7 jobs: pretrain, then (denoise array, finalize, update) twice.
    jobs = [line.split('\t') for line in (workdir / 'jobs.tsv').read_text().splitlines()[1:]]
    assert [j[0] for j in jobs] == ['sfbd-pretrain', 'sfbd-r1-denoise', 'sfbd-r1-denoise-finalize', 'sfbd-r1-update',
                                    'sfbd-r2-denoise', 'sfbd-r2-denoise-finalize', 'sfbd-r2-update']
    assert result.stdout.strip() == jobs[-1][1]
    assert len(list((workdir / 'logs').glob('*.out'))) == 9  # 7 jobs, the arrays of 2 tasks each.

    # Snapshots: each stage's network comes from the stage before.
    pretrain = workdir / 'pretrain'
    rounds = [workdir / 'round-01', workdir / 'round-02']
    for run in [pretrain] + [r / 'train' for r in rounds]:
        assert sorted(run.glob('network-snapshot-*.pkl')) and sorted(run.glob('training-state-*.pt')), run
    records = [json.loads(line) for line in (workdir / 'record.jsonl').read_text().splitlines()]
    assert [(r['stage'], r['round']) for r in records] == [('train', 0), ('denoise', 1), ('train', 1), ('denoise', 2), ('train', 2)]
    previous = records[0]['snapshot']
    assert Path(previous).parent == pretrain
    for k, round_dir in enumerate(rounds, start=1):
        denoise, update = records[2 * k - 1], records[2 * k]
        assert denoise['network'] == previous and denoise['denoised'] == str(round_dir / 'denoised')
        assert denoise['network_sha256'] == read_json(str(round_dir / 'denoised' / 'denoise_options.json'))['network_sha256']
        assert update['transfer'] == previous and update['outdir'] == str(round_dir / 'train')
        assert update['denoised_data'] == str(round_dir / 'denoised') and update['clean_data'] == data['clean']
        assert Path(update['snapshot']).parent == round_dir / 'train'
        # The denoised set is complete, and the update trained on clean + denoised.
        assert len(read_png_dataset(str(round_dir / 'denoised'))) == 10
        assert (round_dir / 'denoised' / 'dataset.json').is_file()
        options = read_json(str(round_dir / 'train' / 'training_options.json'))
        assert options['resume_pkl'] == previous
        assert [d['path'] for d in options['dataset_kwargs']['datasets']] == [data['clean'], str(round_dir / 'denoised')]
        previous = update['snapshot']

    # The same chain cannot be submitted twice at once, but can be resubmitted once it is over.
    assert 'still queued' not in result.stderr

def test_online_chain(slurm_env, data, tmp_path):
    workdir = tmp_path / 'online'
    env = dict(slurm_env, CLEAN_DATA=data['clean'], NOISY_DATA=data['noisy'], WORKDIR=str(workdir), ONLINE='1',
               WAIT_POLL='1', PRETRAIN_ARGS=' '.join(TINY_NET + ['--duration=0.00004', '--seed=0']),
               ONLINE_ARGS=' '.join(TINY_NET + ['--duration=0.00004', '--seed=1', '--refresh-every=2', '--steps=4']))
    refused = _run(['bash', str(SCRIPTS / 'sfbd_rounds.sh')], env=dict(env, ROUNDS='2'), check=False)
    assert refused.returncode == 1 and 'ROUNDS: a setting of the rounds' in refused.stderr and not workdir.exists()
    result = _run(['bash', str(SCRIPTS / 'sfbd_rounds.sh'), '--wait'], env=env, timeout=600, check=False)
    assert result.returncode == 0, result.stderr + tails(workdir / 'logs')

    # Two jobs: pretraining, then the online run from its snapshot, on clean data plus observations.
    jobs = [line.split('\t') for line in (workdir / 'jobs.tsv').read_text().splitlines()[1:]]
    assert [j[0] for j in jobs] == ['sfbd-pretrain', 'sfbd-online'] and result.stdout.strip() == jobs[-1][1]
    pretrain, online = [json.loads(line) for line in (workdir / 'record.jsonl').read_text().splitlines()]
    assert pretrain['round'] == 0 and pretrain['noisy_data'] is None
    assert online['online'] is True and online['noisy_data'] == data['noisy'] and online['transfer'] == pretrain['snapshot']
    assert Path(online['snapshot']).parent == workdir / 'online'
    options = read_json(str(workdir / 'online' / 'training_options.json'))
    assert options['resume_pkl'] == pretrain['snapshot'] and options['dataset_kwargs']['path'] == data['clean']
    assert options['online_kwargs']['noisy'] == [data['noisy']] and options['online_kwargs']['refresh_every'] == 2

def test_preempted_training_requeues_and_resumes(slurm_env, data, tmp_path):
    runs = {'one-node': []}
    if node_count(slurm_env) >= 2:
        runs['two-nodes'] = ['--nodes=2']
    else:
        warnings.warn('SLURM has one node: the two-node preemption case is skipped '
                      '(LOCAL_SLURM_NODES=2 scripts/local_slurm.sh start gives two)')
    jobs = {}
    try:
        # Both jobs at once (the virtual nodes share this machine's cores).
        for name, sbatch_opts in runs.items():
            env = dict(slurm_env, CLEAN_DATA=data['clean'], OUTDIR=str(tmp_path / name), RDZV_HOST='127.0.0.1')
            result = _run(['sbatch', '--parsable', f'--output={tmp_path / name}.out', *sbatch_opts,
                           str(SCRIPTS / 'train.sh'), *TINY_NET, '--duration=0.001', '--seed=0'], env=env)
            jobs[name] = result.stdout.strip().split(';')[0]
        for name, job in jobs.items():
            wait_for_text(tmp_path / f'{name}.out', r'^tick 0 ', timeout=180)  # Training has begun.
            _run(['scancel', '--signal=USR1', '--batch', job], env=slurm_env)
        infos = {name: wait_for_job(job, slurm_env, timeout=300) for name, job in jobs.items()}
    finally:
        for job in jobs.values():
            subprocess.run(['scancel', job], env=slurm_env, timeout=30)

    for name, job in jobs.items():
        info, outdir = infos[name], tmp_path / name
        text = (tmp_path / f'{name}.out').read_text(errors='replace')
        assert info.get('JobState') == 'COMPLETED', f'{name}: {info}\n{text[-5000:]}'
        assert info.get('Restarts') == '1', f'{name}: {info}'
        assert 'Stop requested: saving a snapshot and a training state' in text
        assert f'requeueing job {job}' in text
        assert 'Resuming from the newest training state in the run directory' in text, text[-5000:]
        m = re.search(r'Training for 1 kimg, from ([0-9.]+) kimg', text)
        assert m and float(m.group(1)) > 0, text[-5000:]
        assert (outdir / 'network-snapshot-000001.pkl').is_file()
        assert (outdir / 'training-state-000001.pt').is_file()
        assert 'training finished' in text
        if name == 'two-nodes':
            assert 'Number of processes:     2' in text
            assert 'sending SIGUSR1 to the training launcher on every node' in text
            assert 'could not reach every launcher' not in text
            assert len(re.findall(r'rendezvous 127\.0\.0\.1:\d+ id ' + job, text)) == 4  # 2 nodes x 2 starts.

# A plain `scancel` (SIGTERM) means stop: train.py saves its state, and the job is not requeued;
# rerunning it resumes from the state.
def test_scancel_saves_and_stops_the_job(slurm_env, data, tmp_path):
    env = dict(slurm_env, CLEAN_DATA=data['clean'], OUTDIR=str(tmp_path / 'run'))
    out = tmp_path / 'job.out'
    job = _run(['sbatch', '--parsable', f'--output={out}', str(SCRIPTS / 'train.sh'), *TINY_NET, '--duration=0.001',
                '--seed=0'], env=env).stdout.strip().split(';')[0]
    try:
        wait_for_text(out, r'^tick 0 ', timeout=180)
        _run(['scancel', '--signal=TERM', '--batch', job], env=slurm_env)
        info = wait_for_job(job, slurm_env, timeout=300)
    finally:
        subprocess.run(['scancel', job], env=slurm_env, timeout=30)
    text = out.read_text(errors='replace')
    assert info.get('Restarts') == '0', f'{info}\n{text[-4000:]}'
    assert 'Stop requested: saving a snapshot and a training state' in text
    assert 'stopped without the warning signal' in text and 'not requeueing' in text and 'requeueing job' not in text
    assert list((tmp_path / 'run').glob('training-state-*.pt'))
