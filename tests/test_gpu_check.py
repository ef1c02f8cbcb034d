"""scripts/gpu_check.sh, the prepared GPU check, run on the CPU at toy sizes (--smoke): every step
runs and the summary says what issue 17 asks; the budget bounds the whole call; and the summary's
library functions (tools/gpu_check.py) on their own."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tools import gpu_check

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'scripts' / 'gpu_check.sh'

def run_script(*args: str, env: dict | None = None, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHON': sys.executable, **(env or {})}
    env.pop('OUT', None)
    return subprocess.run(['bash', str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=env)

def test_the_script_explains_itself_and_refuses_bad_options(tmp_path):
    assert subprocess.run(['bash', '-n', str(SCRIPT)]).returncode == 0
    result = run_script('--help')
    assert result.returncode == 0 and 'OUTDIR/summary.md' in result.stdout and '--budget' in result.stdout
    assert 'nine minutes' in result.stdout
    for args, message in (['--bogus'], 'unknown option --bogus'), (['--budget=9'], '--budget=9: a whole number'), \
                         (['--budget=ten'], '--budget=ten: a whole number'):
        result = run_script(str(tmp_path / 'out'), *args)
        assert result.returncode == 2 and message in result.stderr and not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
# The whole check at toy sizes (about a minute and a half on one core).

def test_smoke_run_of_every_step(tmp_path):
    out = tmp_path / 'check'
    result = run_script(str(out), '--smoke')
    assert result.returncode == 0, result.stderr
    summary = (out / 'summary.md').read_text()
    steps = [line for line in summary.splitlines() if line.startswith('- ')]
    assert len(steps) == 6 and all(': exit 0, ' in line for line in steps), summary
    assert 'smoke run' in summary.splitlines()[0]
    records = [json.loads(line) for line in (out / 'check.jsonl').read_text().splitlines()]
    assert [(r['what'], r['path'], r['batch']) for r in records[:4]] == \
        [('train', 'faithful', 16), ('train', 'fast', 16), ('train', 'faithful', 32), ('train', 'fast', 32)]
    assert 'profile' in records[0] and 'profile' in records[1] and 'profile' not in records[2]
    assert [r['what'] for r in records[4:]] == ['denoise', 'denoise', 'generate', 'generate', 'fid', 'fid']
    # train.py's tick lines, its speed against bench.py's, and the tables and profiles.
    assert '\ntick 1 ' in summary and '\ntick 2 ' in summary
    assert "train.py --fast: " in summary and "% of bench.py's fast training step at batch 16" in summary
    assert '| train | fast | tiny |' in summary and 'train fast profile:' in summary
    assert 'denoise.py --fast' in (out / 'check.log').read_text()

#----------------------------------------------------------------------------
# The budget: a step that would outlast it is stopped at what is left, and
# the steps after it are skipped, the summary still written.

def test_the_budget_bounds_the_call(tmp_path):
    slow_python = tmp_path / 'python'
    slow_python.write_text(f'#!/bin/sh\ncase "$*" in *bench.py*) sleep 50 ;; esac\nexec "{sys.executable}" "$@"\n')
    slow_python.chmod(0o755)
    out = tmp_path / 'check'
    start = time.monotonic()
    result = run_script(str(out), '--smoke', '--levers', '--budget=60', env=dict(PYTHON=str(slow_python)))
    elapsed = time.monotonic() - start
    assert result.returncode == 0 and elapsed < 60, (elapsed, result.stderr)
    steps = [line for line in (out / 'summary.md').read_text().splitlines() if line.startswith('- ')]
    assert len(steps) == 4 and re.match(r'- lever: cuDNN times every algorithm: stopped at its 2\d+s limit', steps[0])
    assert all(': skipped, ' in line for line in steps[1:]), steps
    assert 'No records: no bench.py step finished.' in (out / 'summary.md').read_text()

#----------------------------------------------------------------------------
# Ctrl-C (SIGINT to the process group, as a terminal sends it) or SIGTERM to the
# script stops the running step, every process of it, skips the rest and
# writes the summary; a relative OUTDIR is the caller's, not the repository's.

@pytest.mark.parametrize('signal_name', ['SIGINT', 'SIGTERM'])
def test_a_stop_signal_stops_the_step(tmp_path, signal_name):
    slow_python = tmp_path / 'python'
    slow_python.write_text(f'#!/bin/sh\ncase "$*" in *bench.py*) echo $$ >{tmp_path}/step.pid; exec sleep 50 ;;\n'
                           f'  *"import sys, torch"*) echo "python and torch: not imported here"; exit 0 ;; esac\n'
                           f'exec "{sys.executable}" "$@"\n')
    slow_python.chmod(0o755)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHON': str(slow_python)}
    env.pop('OUT', None)
    proc = subprocess.Popen(['bash', str(SCRIPT), 'check', '--smoke', '--levers', '--budget=120'], env=env, cwd=tmp_path,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pid_file = tmp_path / 'step.pid'
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    start = time.monotonic()
    if signal_name == 'SIGINT':
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == (130 if signal_name == 'SIGINT' else 143) and time.monotonic() - start < 20, stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)  # The step's processes are gone, none orphaned.
    steps = [line for line in (tmp_path / 'check' / 'summary.md').read_text().splitlines() if line.startswith('- ')]
    assert len(steps) == 4 and steps[0].startswith(f'- lever: cuDNN times every algorithm: stopped by {signal_name}'), steps
    assert all(line.endswith(f'skipped, stopped by {signal_name}') for line in steps[1:]), steps
    assert not (ROOT / 'check').exists()

#----------------------------------------------------------------------------
# The summary's parts.

LOG = '''Compiling the network (torch.compile, inductor) at the first step, once per run: DDPM++ took 135 s on an H200 with an empty cache; compiled code is cached in /home/u/.cache/dnnlib/torch-compile.
The first step, with compiling, took 95.0 s.
tick 0     kimg 0.256     time 1m 36s       sec/tick 95.8    sec/kimg 374.22  maintenance 0.5
tick 1     kimg 30.208    time 1m 50s       sec/tick 12.0    sec/kimg 0.40    maintenance 0.1
tick 2     kimg 60.416    time 2m 02s       sec/tick 11.9    sec/kimg 0.3125  maintenance 0.0
Exiting...
'''

def test_tick_speeds_and_the_verdict():
    assert gpu_check.tick_speeds(LOG) == [(1, 2500.0), (2, 3200.0)]
    assert gpu_check.run_lines(LOG)[:2] == LOG.splitlines()[:2] and len(gpu_check.run_lines(LOG)) == 5
    records = [dict(what='train', path='faithful', batch=256, img_per_s=1600.0),
               dict(what='train', path='fast', batch=512, img_per_s=9999.0),
               dict(what='train', path='fast', batch=256, img_per_s=3400.0)]
    verdict = gpu_check.train_py_verdict(LOG, records, 256)
    assert verdict.startswith('train.py --fast: 3,200 img/s at tick 2, 94% of') and 'reaches the 90%' in verdict
    assert 'falls short of the 90%' in gpu_check.train_py_verdict(LOG, [dict(records[2], img_per_s=4000.0)], 256)
    assert 'no fast training step at batch 128' in gpu_check.train_py_verdict(LOG, records, 128)
    assert 'no tick after the first' in gpu_check.train_py_verdict(LOG.split('tick 1')[0], records, 256)

def test_the_summary_of_missing_files(tmp_path):
    text = gpu_check.check_summary(str(tmp_path / 'none.jsonl'), str(tmp_path / 'no-log.txt'), 256)
    assert 'train.py wrote no log.' in text and 'No records: no bench.py step finished.' in text
    assert '## train.py' not in gpu_check.check_summary(str(tmp_path / 'none.jsonl'), '', 256)
