"""Multi-node training on one machine: two torchrun "nodes" of one CPU process each meet through a
c10d rendezvous on loopback, as scripts/train.sh makes them meet across SLURM nodes.

- `test_two_nodes_rendezvous`: plain `torchrun --nnodes=2 --rdzv-backend=c10d` twice; train.py runs
  with a world of 2, and a small wrapper records a hash of every replica's network each time the
  training loop checks DDP consistency (at every snapshot), so the test sees both replicas identical.
- `test_train_sh_node_role`: scripts/train.sh's per-node launcher (what `srun` starts on each node)
  run twice with a SLURM-like environment (SLURM_JOB_NODELIST=localhost,otherhost: 2 nodes): it builds the
  rendezvous from that environment and the two launchers train as one job.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sfbd_helpers import make_image_dataset

REPO = Path(__file__).resolve().parents[1]
TIMEOUT = 240

TINY_TRAIN = ['--arch=ddpmpp', '--cbase=16', '--cres=1,1', '--batch=8', '--duration=0.0001', '--tick=1',
              '--snap=1', '--dump=1', '--seed=3', '--augment=0', '--workers=1']

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]

def cpu_env(**extra: str) -> dict:
    env = dict(os.environ)
    for key in list(env):
        if key.startswith(('SLURM_', 'TORCHELASTIC_')) or key in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT'):
            del env[key]
    env.update(OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='', GLOO_SOCKET_IFNAME='lo', PYTHONPATH=str(REPO))
    env.update(extra)
    return env

def run_pair(commands: list[list[str]], envs: list[dict], logs: list[Path]) -> list[int]:
    """Start both "nodes" at once, wait for both; on a timeout kill both (by their own pids)."""
    procs = []
    for cmd, env, log in zip(commands, envs, logs):
        with open(log, 'wb') as f:
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=TIMEOUT))
    except subprocess.TimeoutExpired:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 9)
        pytest.fail('the two nodes did not finish in time:\n' + '\n'.join(log.read_text()[-3000:] for log in logs))
    return codes

@pytest.fixture(scope='module')
def clean_data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('multinode') / 'clean'
    make_image_dataset(str(path), 16)
    return str(path)

#----------------------------------------------------------------------------

RECORDING_WRAPPER = textwrap.dedent('''
    # torchrun entry point: train.py, with torch_utils.misc.check_ddp_consistency also writing a
    # hash of the module it checked (one JSON line per check) to $REPLICA_LOG_DIR/rank<RANK>.jsonl.
    import hashlib, json, os, runpy, sys
    from torch_utils import misc
    original = misc.check_ddp_consistency
    def recording(module, *args, **kwargs):
        checked = original(module, *args, **kwargs)
        digest = hashlib.sha256()
        for name, tensor in misc.named_params_and_buffers(module):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        path = os.path.join(os.environ['REPLICA_LOG_DIR'], f"rank{os.environ['RANK']}.jsonl")
        with open(path, 'a') as f:
            f.write(json.dumps(dict(module=type(module).__name__, checked=checked, sha256=digest.hexdigest())) + '\\n')
        return checked
    misc.check_ddp_consistency = recording
    train_py = os.path.join(os.environ['PYTHONPATH'], 'train.py')
    sys.argv = [train_py] + sys.argv[1:]
    runpy.run_path(train_py, run_name='__main__')
''')

def test_two_nodes_rendezvous(tmp_path, clean_data):
    wrapper = tmp_path / 'recording_train.py'
    wrapper.write_text(RECORDING_WRAPPER)
    replicas = tmp_path / 'replicas'
    replicas.mkdir()
    run_dir = tmp_path / 'run'
    port = free_port()
    commands, envs, logs = [], [], []
    for node in range(2):
        commands.append([sys.executable, '-m', 'torch.distributed.run', '--nnodes=2', '--nproc_per_node=1',
                         '--rdzv-backend=c10d', f'--rdzv-endpoint=127.0.0.1:{port}', f'--rdzv-id=test-{port}',
                         '--max-restarts=0', str(wrapper), f'--outdir={run_dir}', '--nosubdir',
                         f'--data={clean_data}', *TINY_TRAIN])
        envs.append(cpu_env(REPLICA_LOG_DIR=str(replicas)))
        logs.append(tmp_path / f'node{node}.log')
    codes = run_pair(commands, envs, logs)
    output = '\n'.join(log.read_text() for log in logs)
    assert codes == [0, 0], output[-6000:]
    assert 'Number of processes:     2' in output

    # Both ranks checked the same modules at the same snapshots, against each other, and hold the
    # same weights each time.
    records = [[json.loads(line) for line in (replicas / f'rank{r}.jsonl').read_text().splitlines()] for r in range(2)]
    assert records[0] and len(records[0]) == len(records[1])
    for mine, theirs in zip(*records):
        assert mine['module'] == theirs['module']
        assert mine['checked'] > 0 and mine['checked'] == theirs['checked']
        assert mine['sha256'] == theirs['sha256']
    assert sorted(run_dir.glob('network-snapshot-*.pkl')) and sorted(run_dir.glob('training-state-*.pt'))

def test_train_sh_node_role(tmp_path, clean_data):
    port = free_port()
    run_dir = tmp_path / 'run'
    commands, envs, logs = [], [], []
    for node in range(2):
        commands.append(['bash', str(REPO / 'scripts' / 'train.sh'), f'--outdir={run_dir}', '--nosubdir',
                         f'--data={clean_data}', *TINY_TRAIN])
        envs.append(cpu_env(_SFBD_TRAIN_ROLE='node', SLURM_JOB_ID=str(port), SLURM_JOB_NUM_NODES='2',
                            SLURM_JOB_NODELIST='localhost,otherhost', SLURM_NODEID=str(node), RDZV_PORT=str(port),
                            NGPUS='0'))
        logs.append(tmp_path / f'node{node}.log')
    codes = run_pair(commands, envs, logs)
    output = '\n'.join(log.read_text() for log in logs)
    assert codes == [0, 0], output[-6000:]
    assert f'rendezvous localhost:{port}' in output
    assert 'Number of processes:     2' in output
    assert sorted(run_dir.glob('network-snapshot-*.pkl'))
