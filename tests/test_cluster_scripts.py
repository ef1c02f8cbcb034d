"""The cluster scripts (scripts/*.sh) without SLURM: stand-ins for sbatch, squeue, scontrol and scancel
on PATH record what the scripts ask of SLURM, and a stand-in interpreter skips the option checks that
import torch (tools.job_args), so that each case takes a fraction of a second. What only a real SLURM
shows (sbatch un-doubling a % in a log path, --wait on real jobs) is in tests/test_slurm.py.

Found by probing the scripts (2026-12-07; docs/reliability.md): sbatch options checked with `sbatch
--test-only` before anything is submitted, a chain that fails halfway cancelled again, multi-line *_ARGS,
--wait through an unanswering slurmctld, --array and --dependency in any spelling, % in log folders,
PYTHON and PRESET errors, the repository through links and paths with spaces, paths starting with -,
SLURM_* variables leaking into jobs, NGPUS and SFBD_REQUEUE checked, --help, local_slurm.sh env, and
torchrun out of reach of the terminal's Ctrl-C.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / 'scripts'

# sbatch: notes each call (one line of shell-quoted words) and the SLURM_* variables it was given; refuses
# (at --test-only too) a call with a word matching the glob SBATCH_REFUSE; fails the real submission of
# job name SBATCH_FAIL_JOB; else prints the next job id from 101.
SBATCH = r'''#!/bin/bash
{ printf '%q ' "$@"; echo; } >>"$STUB_DIR/sbatch-calls"
env | grep '^SLURM_' | sort >>"$STUB_DIR/sbatch-env" || true
for a in "$@"; do
    if [[ -n "${SBATCH_REFUSE:-}" && "$a" == $SBATCH_REFUSE ]]; then echo "sbatch: error: Invalid $a" >&2; exit 1; fi
done
if [[ "$1" == --test-only ]]; then echo "sbatch: Job 1 to start at 2026-12-07T00:00:00" >&2; exit 0; fi
if [[ -n "${SBATCH_FAIL_JOB:-}" && " $* " == *" --job-name=$SBATCH_FAIL_JOB "* ]]; then
    echo "sbatch: error: Batch job submission failed" >&2; exit 1
fi
n=$(( $(cat "$STUB_DIR/next-id" 2>/dev/null || echo 100) + 1 )); echo "$n" >"$STUB_DIR/next-id"
echo "$n"
'''
# scontrol: `show config` gives MaxArraySize; `-o show job` answers as SCONTROL_JOB says:
# timeout (slurmctld busy), gone (purged), or a state.
SCONTROL = r'''#!/bin/bash
echo "$*" >>"$STUB_DIR/scontrol-calls"
if [[ "$1 $2" == "show config" ]]; then echo "MaxArraySize            = 1001"; exit 0; fi
case "${SCONTROL_JOB:-timeout}" in
    timeout) echo "slurm_load_jobs error: Socket timed out on send/recv operation" >&2; exit 1 ;;
    gone) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
    *) echo "JobId=$4 JobName=x JobState=$SCONTROL_JOB Reason=None"; exit 0 ;;
esac
'''
# squeue: lists the job as PENDING SQUEUE_PENDING more times, then no more.
SQUEUE = r'''#!/bin/bash
n=$(( $(cat "$STUB_DIR/squeue-count" 2>/dev/null || echo 0) + 1 )); echo "$n" >"$STUB_DIR/squeue-count"
if ((n <= ${SQUEUE_PENDING:-0})); then echo PENDING; fi
'''
SCANCEL = '#!/bin/bash\necho "$*" >>"$STUB_DIR/scancel-calls"\n'
SACCT = '#!/bin/bash\necho "Slurm accounting storage is disabled" >&2; exit 1\n'
# The interpreter: skips `-m tools.job_args` (checked by tests/test_slurm.py), notes train.py's and
# denoise.py's command lines, runs everything else.
PYTHON = f'''#!/bin/bash
if [[ "$1 $2" == "-m tools.job_args" ]]; then exit 0; fi
if [[ "$1" == *train.py || "$1" == *denoise.py ]]; then echo "$*" >>"$STUB_DIR/python-calls"; exit 0; fi
exec {sys.executable} "$@"
'''

@pytest.fixture
def stub(tmp_path) -> dict:
    """An environment whose PATH starts with the stand-ins, and data folders (empty: their contents are
    checked by tools.job_args, skipped here)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in dict(sbatch=SBATCH, scontrol=SCONTROL, squeue=SQUEUE, scancel=SCANCEL, sacct=SACCT,
                           python=PYTHON).items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    for name in ('clean', 'noisy'):
        (tmp_path / name).mkdir()
    (tmp_path / 'net.pkl').write_bytes(b'not really a network')
    env = {k: v for k, v in os.environ.items() if not k.startswith('SLURM_') and k not in (
        'PRESET', 'STEPS', 'NUM_TASKS', 'NGPUS', 'SFBD_ROOT', 'LOG_DIR', 'RECORD', 'RECORD_TAG', 'OUTDIR', 'NETWORK')}
    env.update(PATH=f'{bin_dir}:{os.environ["PATH"]}', STUB_DIR=str(tmp_path), PYTHON=str(bin_dir / 'python'),
               CLEAN_DATA=str(tmp_path / 'clean'), NOISY_DATA=str(tmp_path / 'noisy'), WAIT_POLL='0.01',
               OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    return env

def run(script: str, env: dict, *args: str, cwd: Path | str = REPO, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', str(SCRIPTS / script), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)

def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []

def sbatch_calls(tmp_path: Path) -> list[list[str]]:
    return [shlex.split(line) for line in lines(tmp_path / 'sbatch-calls')]

def one_error(result: subprocess.CompletedProcess, *parts: str) -> str:
    errors = [line for line in result.stderr.splitlines() if 'error:' in line.lower()]
    assert result.returncode == 1 and len(errors) == 1 and all(p in errors[0] for p in parts), result.stderr
    return errors[0]

def bash_with_common(script: str, env: dict | None = None, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['bash', '-c', f'set -euo pipefail; source {shlex.quote(str(SCRIPTS / "common.sh"))}; {script}',
                           '_', *args], env=env, capture_output=True, text=True, timeout=60)

#----------------------------------------------------------------------------
# Finding 1: sbatch's refusals before anything is submitted; a failure halfway takes back what it queued.

OLD_JOBS = 'stage\tjob\tdirectory\nsfbd-pretrain\t7\t/old/pretrain\n'

@pytest.mark.parametrize('setting, args, refuse, message', [
    (dict(DENOISE_SBATCH_ARGS='--time=bogus'), [], '--time=bogus', 'DENOISE_SBATCH_ARGS: sbatch refuses them: Invalid --time=bogus'),
    (dict(TRAIN_SBATCH_ARGS='--time=bogus'), [], '--time=bogus', 'TRAIN_SBATCH_ARGS: sbatch refuses them'),
    ({}, ['--partiton=gpu'], '--partiton=*', 'the sbatch options given to sfbd_rounds.sh (--partiton=gpu): sbatch refuses them'),
    (dict(NUM_TASKS='5000'), [], '--array=0-4999', "NUM_TASKS=5000: sbatch refuses --array=0-4999: Invalid --array=0-4999 (this cluster's MaxArraySize is 1001"),
    (dict(NUM_TASKS='20', MAX_PARALLEL='4'), [], '--array=0-19%4', 'NUM_TASKS=20 MAX_PARALLEL=4: sbatch refuses --array=0-19%4'),
])
def test_sbatch_refusals_are_one_line_before_anything_is_submitted(stub, tmp_path, setting, args, refuse, message):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'jobs.tsv').write_text(OLD_JOBS)  # An earlier chain's, whose jobs are over.
    result = run('sfbd_rounds.sh', dict(stub, WORKDIR=str(work), SBATCH_REFUSE=refuse, **setting), *args)
    one_error(result, message)
    calls = sbatch_calls(tmp_path)
    assert calls and all(call[0] == '--test-only' for call in calls), calls  # Nothing queued.
    assert (work / 'jobs.tsv').read_text() == OLD_JOBS and sorted(os.listdir(work)) == ['jobs.tsv']

def test_denoise_submit_checks_its_array_with_sbatch_first(stub, tmp_path):
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'), LOG_DIR=str(tmp_path / 'logs'))
    one_error(run('denoise_submit.sh', dict(env, NUM_TASKS='5000', SBATCH_REFUSE='--array=0-4999'), '--ids'),
              'NUM_TASKS=5000: sbatch refuses --array=0-4999', 'MaxArraySize is 1001')
    one_error(run('denoise_submit.sh', dict(env, SBATCH_REFUSE='--time=bogus'), '--time=bogus'),
              'the sbatch options given to denoise_submit.sh: sbatch refuses them: Invalid --time=bogus')
    assert all(call[0] == '--test-only' for call in sbatch_calls(tmp_path))
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'logs').exists()

def test_a_submission_failing_halfway_cancels_the_jobs_it_queued(stub, tmp_path):
    work = tmp_path / 'work'
    work.mkdir()
    (work / 'jobs.tsv').write_text(OLD_JOBS)
    result = run('sfbd_rounds.sh', dict(stub, WORKDIR=str(work), SBATCH_FAIL_JOB='sfbd-r1-update'))
    assert result.returncode == 1 and 'sbatch refused the job sfbd-r1-update' in result.stderr, result.stderr
    # Pretraining 101, the round's array 102 and finalize job 103 were queued, and are cancelled again.
    assert lines(tmp_path / 'scancel-calls') == ['101 102 103'], result.stderr
    assert (work / 'jobs.tsv').read_text() == OLD_JOBS and not list(work.glob('.jobs.tsv.*'))
    # denoise_submit.sh alone: a refused finalize job takes its array back.
    (tmp_path / 'scancel-calls').unlink()
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'), SBATCH_FAIL_JOB='sfbd-denoise-finalize')
    result = run('denoise_submit.sh', env)
    assert result.returncode == 1 and 'sbatch refused the finalize job' in result.stderr, result.stderr
    assert lines(tmp_path / 'scancel-calls') == ['104']

def test_a_killed_submission_still_counts_as_queued(stub, tmp_path):
    # The list of a submission killed halfway (.jobs.tsv.*) keeps its jobs from a second chain.
    work = tmp_path / 'work'
    work.mkdir()
    (work / '.jobs.tsv.abc123').write_text('stage\tjob\tdirectory\nsfbd-pretrain\t55\t/w/pretrain\n')
    result = run('sfbd_rounds.sh', dict(stub, WORKDIR=str(work), SQUEUE_PENDING='1'))
    one_error(result, 'jobs 55 of an earlier submission', 'still queued or running')
    assert not sbatch_calls(tmp_path)

#----------------------------------------------------------------------------
# Finding 4: --array and --dependency in any spelling, in the arguments and in *_SBATCH_ARGS.

@pytest.mark.parametrize('script, setting, args, message', [
    ('sfbd_rounds.sh', {}, ['-a', '0-1'], 'the sbatch options given to sfbd_rounds.sh: -a: the chain sets arrays'),
    ('sfbd_rounds.sh', {}, ['-a0-1'], '-a0-1: the chain sets arrays'),
    ('sfbd_rounds.sh', {}, ['--arr=0-1'], '--arr=0-1: the chain sets arrays'),
    ('sfbd_rounds.sh', {}, ['-dafterok:1'], '-dafterok:1: the chain sets arrays and dependencies'),
    ('sfbd_rounds.sh', {}, ['--dep=afterok:1'], '--dep=afterok:1: the chain sets'),
    ('sfbd_rounds.sh', dict(TRAIN_SBATCH_ARGS='--time=1:00 --array=0-1'), [], 'TRAIN_SBATCH_ARGS: --array=0-1: the chain sets'),
    ('sfbd_rounds.sh', dict(DENOISE_SBATCH_ARGS='--dependency=afterok:5'), [], 'DENOISE_SBATCH_ARGS: --dependency=afterok:5'),
    ('denoise_submit.sh', {}, ['--arr=0-1'], 'the sbatch options: --arr=0-1: NUM_TASKS decides the array'),
    ('denoise_submit.sh', {}, ['-a3'], '-a3: NUM_TASKS decides the array'),
])
def test_arrays_and_dependencies_in_any_spelling_are_refused(stub, tmp_path, script, setting, args, message):
    env = dict(stub, WORKDIR=str(tmp_path / 'work'), NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'), **setting)
    one_error(run(script, env, *args), message)
    assert not sbatch_calls(tmp_path) and not (tmp_path / 'work').exists() and not (tmp_path / 'out').exists()

def test_other_options_of_similar_spelling_pass(stub, tmp_path):
    # --account, --delay-boot, --deadline, -D and a dependency of denoise_submit.sh's own are sbatch's business.
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'))
    result = run('denoise_submit.sh', env, '--account=me', '--delay-boot=5', '--deadline=now+1hour', f'-D{tmp_path}',
                 '--dependency=afterok:9')
    assert result.returncode == 0 and result.stdout == '101\n', result.stderr

#----------------------------------------------------------------------------
# Findings 5 and 9: log folders with %, relative LOG_DIR; no SLURM_* variables leaking into the jobs.

def test_log_paths_keep_their_percent_signs_and_leaked_slurm_variables_are_dropped(stub, tmp_path):
    leaked = dict(SLURM_GPUS_ON_NODE='3', SLURM_ARRAY_JOB_ID='5', SLURM_ARRAY_TASK_ID='7', SLURM_RESTART_COUNT='2')
    work = tmp_path / 'w 100%x'
    result = run('sfbd_rounds.sh', dict(stub, WORKDIR=str(work), **leaked))
    assert result.returncode == 0, result.stderr
    outputs = [word for call in sbatch_calls(tmp_path) for word in call if word.startswith('--output=')]
    assert outputs == [f'--output={tmp_path}/w 100%%x/logs/%x-%j.out', f'--output={tmp_path}/w 100%%x/logs/%x-%A_%a.out',
                       f'--output={tmp_path}/w 100%%x/logs/%x-%j.out', f'--output={tmp_path}/w 100%%x/logs/%x-%j.out']
    # A relative LOG_DIR is made absolute (the jobs may start elsewhere: --chdir), and made only now.
    (tmp_path / 'sbatch-calls').unlink()
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR='out', LOG_DIR='logs 50%u', **leaked)
    result = run('denoise_submit.sh', env, f'--chdir={tmp_path / "elsewhere"}', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    outputs = [word for call in sbatch_calls(tmp_path) for word in call if word.startswith('--output=')]
    assert outputs == [f'--output={tmp_path}/logs 50%%u/%x-%A_%a.out', f'--output={tmp_path}/logs 50%%u/%x-%j.out']
    assert (tmp_path / 'logs 50%u').is_dir()
    assert lines(tmp_path / 'sbatch-env') == []  # No SLURM_* variable reached sbatch, the test runs' included.

#----------------------------------------------------------------------------
# Finding 3: --wait asks again when slurmctld does not answer, and trusts only the last job's own record.

def test_wait_through_an_unanswering_slurmctld(stub, tmp_path):
    work = tmp_path / "w é 'q' \"dq\" [x].*"
    work.mkdir()
    old = dict(stage='train', job='50', outdir=str(work / 'round-01' / 'train'))  # The previous chain's.
    (work / 'record.jsonl').write_text(json.dumps(old) + '\n')
    # scontrol times out throughout; squeue lists the last job (104) twice, then not: the old record
    # line does not count, and after 10 unanswered questions the wait gives up without "submit again".
    env = dict(stub, WORKDIR=str(work), SQUEUE_PENDING='2')
    result = run('sfbd_rounds.sh', env, '--wait')
    assert result.returncode == 1 and 'SLURM did not answer about the last job 104' in result.stderr, result.stderr
    assert result.stderr.count('asking again') == 9
    assert len([c for c in lines(tmp_path / 'scontrol-calls') if c.startswith('-o show job 104')]) == 12
    # The job's own line (matched by its id, however its path is written) says it completed.
    for name in ('next-id', 'squeue-count', 'scontrol-calls'):
        (tmp_path / name).unlink()
    (work / 'jobs.tsv').unlink()
    with open(work / 'record.jsonl', 'a') as f:
        f.write(json.dumps(dict(old, job='104')) + '\n')
    result = run('sfbd_rounds.sh', env, '--wait')
    assert result.returncode == 0 and 'done: ' in result.stderr and 'asking again' not in result.stderr, result.stderr
    assert int((tmp_path / 'squeue-count').read_text()) >= 3  # It waited while the job was queued.

@pytest.mark.parametrize('scontrol, record, state', [
    ('COMPLETED', False, 'COMPLETED'),
    ('FAILED', True, 'FAILED'),        # SLURM's word wins while it has one.
    ('gone', False, 'GONE'),           # Purged (MinJobAge), no accounting, no record: not "done".
    ('gone', True, 'COMPLETED'),
    ('timeout', False, 'UNKNOWN'),
])
def test_the_state_a_wait_ends_with(stub, tmp_path, scontrol, record, state):
    (tmp_path / 'record.jsonl').write_text(json.dumps(dict(stage='train', job='42' if record else '41')) + '\n')
    result = bash_with_common(f'sfbd_wait_job 42 0.01 sfbd_record_has_job {tmp_path}/record.jsonl 42 train; echo "$SFBD_JOB_STATE"',
                              dict(stub, SCONTROL_JOB=scontrol))
    assert result.returncode == 0 and result.stdout == f'{state}\n', result.stderr

#----------------------------------------------------------------------------
# Finding 2: multi-line *_ARGS are used whole.

def test_options_over_several_lines_are_all_used(stub, tmp_path):
    result = bash_with_common('sfbd_words words "$1" UPDATE_ARGS; printf "<%s>" "${words[@]}"', None,
                              '--duration=20\n  --lr-rampup=0\t--batch=8\n')
    assert result.returncode == 0 and result.stdout == '<--duration=20><--lr-rampup=0><--batch=8>', result.stderr
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'), DENOISE_ARGS='--steps=2\n--sigma=0.5')
    result = run('denoise.sh', env)
    assert result.returncode == 0, result.stderr
    assert lines(tmp_path / 'python-calls')[0].endswith('--steps=2 --sigma=0.5 --shard=0/1')

#----------------------------------------------------------------------------
# Findings 6, 8, 10, 11: PYTHON and PRESET, paths starting with -, NGPUS, SFBD_REQUEUE.

def test_python_is_taken_from_the_callers_folder_and_its_failures_are_its_own(stub, tmp_path):
    env = dict(stub, OUTDIR=str(tmp_path / 'run'), PRESET='cifar10', PYTHON='bin/python')  # Relative to tmp_path.
    result = run('train.sh', env, '--duration=1', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert lines(tmp_path / 'python-calls')[0].endswith('--augment=0.12 --duration=1')  # The preset was read.
    one_error(run('train.sh', dict(env, PYTHON='/nonexistent/python')), 'PYTHON=/nonexistent/python: no such interpreter')
    broken = tmp_path / 'broken-python'
    broken.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'click'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    error = one_error(run('train.sh', dict(env, PYTHON=str(broken))), 'PRESET=cifar10:', "No module named 'click'")
    assert 'unknown preset' not in error

def test_paths_starting_with_a_dash_are_recorded_whole(stub, tmp_path):
    (tmp_path / '-netdir').mkdir()
    snapshot = tmp_path / '-netdir' / 'network-snapshot-000001.pkl'
    snapshot.write_bytes(b'a snapshot')
    env = dict(stub, NETWORK='-netdir', OUTDIR='out', FINALIZE='1', RECORD='-recs/rec.jsonl')
    result = run('denoise.sh', env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = lines(tmp_path / '-recs' / 'rec.jsonl')
    record = json.loads(line)
    assert record['network'] == str(snapshot) and record['network_sha256'] == hashlib.sha256(b'a snapshot').hexdigest()
    # A RECORD under a file is refused when the script starts, before its work.
    (tmp_path / 'afile').write_text('')
    one_error(run('denoise.sh', dict(env, RECORD='afile/rec.jsonl'), cwd=tmp_path), 'RECORD=afile/rec.jsonl: afile is not a directory')
    assert len(lines(tmp_path / 'python-calls')) == 1

@pytest.mark.parametrize('script, setting, message', [
    ('train.sh', dict(NGPUS='08'), 'NGPUS=08 is not a number of GPUs'),
    ('train.sh', dict(NGPUS='99999999999999999999'), 'NGPUS=99999999999999999999 is not a number of GPUs'),
    ('train.sh', dict(SLURM_GPUS_ON_NODE='08'), 'SLURM_GPUS_ON_NODE=08 is not a number of GPUs'),
    ('denoise.sh', dict(NGPUS='08'), 'NGPUS=08 is not a number of GPUs'),
    ('sfbd_rounds.sh', dict(NGPUS='1e3'), 'NGPUS=1e3 is not a number of GPUs'),
    ('denoise_submit.sh', dict(NGPUS='-1'), 'NGPUS=-1 is not a number of GPUs'),
    ('train.sh', dict(SFBD_REQUEUE='yes'), 'SFBD_REQUEUE=yes: expected 0 or 1'),
    ('denoise.sh', dict(SFBD_REQUEUE='true'), 'SFBD_REQUEUE=true: expected 0 or 1'),
    ('denoise_submit.sh', dict(SFBD_REQUEUE='2'), 'SFBD_REQUEUE=2: expected 0 or 1'),
    ('sfbd_rounds.sh', dict(SFBD_REQUEUE='yes'), 'SFBD_REQUEUE=yes: expected 0 or 1'),
])
def test_gpu_counts_and_requeue_settings_are_checked_first(stub, tmp_path, script, setting, message):
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'), WORKDIR=str(tmp_path / 'work'), **setting)
    one_error(run(script, env), message)
    assert not sbatch_calls(tmp_path) and not (tmp_path / 'python-calls').exists()
    assert not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()

#----------------------------------------------------------------------------
# Findings 7 and 12: --help; the repository through a link, and from sbatch's spool with spaces in its path.

@pytest.mark.parametrize('script', ['train.sh', 'denoise.sh', 'denoise_submit.sh', 'sfbd_rounds.sh'])
def test_help_prints_the_header(stub, tmp_path, script):
    env = dict(stub, NETWORK=str(tmp_path / 'net.pkl'), OUTDIR=str(tmp_path / 'out'), WORKDIR=str(tmp_path / 'work'))
    for option in ('--help', '-h'):
        result = run(script, env, option)
        assert result.returncode == 0 and result.stdout.startswith(f'{script} -- ') and 'set -euo' not in result.stdout
        assert '#SBATCH --' not in result.stdout and 'NGPUS' in result.stdout, result.stdout
    assert not sbatch_calls(tmp_path) and not (tmp_path / 'out').exists() and not (tmp_path / 'work').exists()

def test_the_repository_is_found_through_links_and_in_paths_with_spaces(stub, tmp_path):
    env = {k: v for k, v in stub.items() if k not in ('CLEAN_DATA', 'NOISY_DATA')}
    (tmp_path / 'bin2').mkdir()
    for script, message in [('sfbd_rounds.sh', 'set CLEAN_DATA'), ('train.sh', 'set OUTDIR'),
                            ('denoise_submit.sh', 'set NETWORK'), ('denoise.sh', 'set NETWORK')]:
        link = tmp_path / 'bin2' / f'sfbd-{script}'
        link.symlink_to(SCRIPTS / script)
        result = subprocess.run(['bash', str(link)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        one_error(result, message)
    # sbatch runs a copy from its spool; the job record names the submitted file, its path with spaces.
    (tmp_path / 're po').symlink_to(REPO)
    spool = tmp_path / 'spool'
    spool.mkdir()
    for script, message in [('train.sh', 'set OUTDIR'), ('denoise.sh', 'set NETWORK')]:
        (spool / 'slurm_script').write_text((SCRIPTS / script).read_text())
        (tmp_path / 'bin' / 'scontrol').write_text(
            f'#!/bin/bash\necho "   Command={tmp_path}/re po/scripts/{script} --arch=ddpmpp --desc=a/scripts/x"\n')
        result = subprocess.run(['bash', str(spool / 'slurm_script')], env=dict(env, SLURM_JOB_ID='9'), cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
        one_error(result, message)

#----------------------------------------------------------------------------
# Finding 14: local_slurm.sh env, eval'd, with spaces in LOCAL_SLURM_DIR.

def test_local_slurm_env_survives_eval(tmp_path):
    folder = tmp_path / "my slurm 'x'"
    result = subprocess.run(['bash', '-c', f'eval "$(bash {shlex.quote(str(SCRIPTS / "local_slurm.sh"))} env)" && printf %s "$SLURM_CONF"'],
                            env=dict(os.environ, LOCAL_SLURM_DIR=str(folder)), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == f'{folder}/etc/slurm.conf', result.stderr

#----------------------------------------------------------------------------
# Finding 15: torchrun in a session of its own; a Ctrl-C reaches only the script, which stops the workers.

LAUNCHER = r'''
import os, signal, subprocess, sys, time
out = sys.argv[1]
def note(text):
    with open(out, 'a') as f:
        f.write(text + '\n')
signal.signal(signal.SIGINT, lambda *_: note('launcher got SIGINT'))
note(f'launcher session {os.getsid(0)}')
worker = subprocess.Popen([sys.executable, '-c', """
import signal, sys, time
def stop(*_):
    open(sys.argv[1], 'a').write('worker got SIGTERM\\n')
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, lambda *_: open(sys.argv[1], 'a').write('worker got SIGINT\\n'))
open(sys.argv[1], 'a').write('worker ready\\n')
time.sleep(60)
""", out])
sys.exit(1 if worker.wait() else 0)  # As torchrun: a failed worker is exit code 1.
'''

def test_a_ctrl_c_reaches_the_workers_through_the_script_only(tmp_path):
    (tmp_path / 'launcher.py').write_text(LAUNCHER)
    out = tmp_path / 'notes'
    script = (f'source {shlex.quote(str(SCRIPTS / "common.sh"))}; read -r -a stat </proc/$$/stat; echo "shell session ${{stat[5]}}" >>{out}; '
              f'sfbd_run_forwarding torchrun {sys.executable} {tmp_path / "launcher.py"} {out}; echo "rc $SFBD_RC" >>{out}')
    # As a terminal starts a foreground job: SIGINT at its default, a process group of its own.
    proc = subprocess.Popen(['bash', '-c', script], start_new_session=True, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 30
    while 'worker ready' not in (out.read_text() if out.exists() else ''):
        assert time.time() < deadline and proc.poll() is None, out.read_text() if out.exists() else 'no notes'
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # The terminal's Ctrl-C: to the foreground process group.
    _, stderr = proc.communicate(timeout=30)
    notes = out.read_text()
    sessions = {line.split()[0]: line.split()[-1] for line in notes.splitlines() if 'session' in line}
    assert sessions['launcher'] != sessions['shell'], notes
    assert 'worker got SIGTERM' in notes and 'SIGINT' not in notes and 'rc 75' in notes, notes + stderr
