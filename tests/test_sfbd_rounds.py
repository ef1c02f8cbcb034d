"""sfbd.rounds (tools/rounds.py): the layout and record of the rounds and of Online SFBD, and reruns that continue,
extend or refuse."""

import os
import subprocess
import sys
import re

import pytest
from click.testing import CliRunner

from dnnlib.util import UserError
from sfbd import rounds as rounds_cli
from tools import rounds
from sfbd.dataset_commands import split_dataset

from sfbd_helpers import make_image_dataset, read_json

# A network and runs as small as train.py allows: a few optimizer steps each.
TRAIN_ARGS = ['--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=16', '--augment=0', '--dropout=0', '--lr-rampup=0',
              '--tick=1', '--seed=0', '--device=cpu', '--cache=0']
DURATION = 0.00003  # 30 images: two steps of 16.

@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('rounds')
    make_image_dataset(str(root / 'source'), num_images=24, resolution=8)
    split_dataset(str(root / 'source'), str(root / 'clean'), str(root / 'noisy'), 0.5, clean_count=6, verbose=False)
    return root

def _run(data, outdir, num_rounds, **kwargs):
    with open(os.path.join(str(data), 'log.txt'), 'a') as log:
        return rounds.run_rounds(str(outdir), str(data / 'clean'), str(data / 'noisy'), num_rounds, DURATION, DURATION,
                                 train_args=TRAIN_ARGS, denoise_args=['--device=cpu'], log=log, **kwargs)

def test_rounds_layout_record_and_reruns(data, tmp_path, monkeypatch, capsys):
    # The first run stops after the denoising of round 2 (as if killed there).
    outdir = tmp_path / 'sfbd'
    calls = []
    real_run_script = rounds.run_script
    def counting_run_script(script, args, nproc=1, log=None):
        calls.append(script)
        real_run_script(script, args, nproc, log)
        if len(calls) == interrupt_after:
            raise KeyboardInterrupt
    monkeypatch.setattr(rounds, 'run_script', counting_run_script)
    interrupt_after = 4
    with pytest.raises(KeyboardInterrupt):
        _run(data, outdir, 2)
    assert calls == ['train.py', 'denoise.py', 'train.py', 'denoise.py']
    entries = read_json(str(outdir / 'rounds.json'))['rounds']
    assert entries[1]['snapshot'] is not None and entries[2]['snapshot'] is None

    # The rerun finishes round 2, denoising nothing again.
    calls.clear()
    interrupt_after = None
    record = _run(data, outdir, 2)
    assert calls == ['denoise.py', 'train.py']
    with open(str(data / 'log.txt')) as f:
        assert 'Denoising 0 of 18' in f.read()

    # The record: which snapshot denoised which set, and what each round produced.
    assert record == read_json(str(outdir / 'rounds.json'))
    entries = record['rounds']
    assert [e['round'] for e in entries] == [0, 1, 2]
    assert entries[0]['train_dir'] == 'round-000-pretrain'
    for k in (1, 2):
        assert entries[k]['network'] == entries[k - 1]['snapshot']
        assert entries[k]['denoised'] == f'round-{k:03d}/denoised'
        assert entries[k]['train_dir'] == f'round-{k:03d}/train'
        assert os.path.isfile(outdir / entries[k]['snapshot'])
        assert os.path.isfile(outdir / entries[k]['denoised'] / 'dataset.json')
        assert read_json(str(outdir / entries[k]['denoised'] / 'denoise_options.json'))['network'] == \
            str(outdir / entries[k]['network'])
        options = read_json(str(outdir / entries[k]['train_dir'] / 'training_options.json'))
        assert options['resume_pkl'] == str(outdir / entries[k]['network'])
        assert [p['path'] for p in options['dataset_kwargs']['datasets']] == \
            [str(data / 'clean'), str(outdir / entries[k]['denoised'])]

    # Another rerun does nothing; a larger --rounds runs only the new round.
    calls.clear()
    assert _run(data, outdir, 2) == record
    assert calls == []
    extended = _run(data, outdir, 3)
    assert calls == ['denoise.py', 'train.py'] and extended['rounds'][:3] == entries

    # The cost in network evaluations, pretraining apart: each round trains 2 steps of 16 images and denoises
    # the 18 observations at sigma 0.5 with 13 evaluations each (7 steps of EDM's 18-step grid, Heun).
    cost = read_json(str(outdir / 'rounds.json'))['cost']
    assert cost['pretraining'] == dict(training_image_passes=32, training_forward_equivalents=96, denoised_observations=0,
                                       denoising_evaluations=0, total_forward_equivalents=96)
    assert cost['rounds'] == dict(training_image_passes=96, training_forward_equivalents=288, denoised_observations=54,
                                  denoising_evaluations=54 * 13, total_forward_equivalents=288 + 54 * 13)
    out = capsys.readouterr().out
    assert 'Cost in network evaluations' in out
    assert 'the rounds:     96 training image passes (x3: 288 forward-evaluation equivalents) + 54 observations ' \
           'denoised with 702 network evaluations = 990 forward-evaluation equivalents' in out

    # Other options are refused.
    with pytest.raises(UserError, match='other options'):
        rounds.run_rounds(str(outdir), str(data / 'clean'), str(data / 'noisy'), 3, DURATION, 2 * DURATION,
                          train_args=TRAIN_ARGS)

def test_missing_inputs_are_refused(data, tmp_path):
    with pytest.raises(UserError, match='--noisy'):
        rounds.run_rounds(str(tmp_path / 'x'), str(data / 'clean'), str(data / 'missing'), 1, DURATION, DURATION)
    assert not os.path.exists(tmp_path / 'x')

# What denoise.py would refuse of the observations, and a refresh plan that
# the online run's own duration cannot meet, are refused before the
# pretraining, not after it (when the corrected command would then be
# refused as other options).
@pytest.mark.parametrize('denoise_args, message', [
    (['--device=bogus'], '--denoise-args: --device=bogus: not a device'),
    (['--sigma=0.3'], '--denoise-args: --sigma=0.3 differs from the noise level 0.5'),
    (['--mode=sde', '--S_churn=1'], "--denoise-args: --S_churn: the ODE's churn does not apply to --mode=sde"),
    (['--rho=0.25'], '--denoise-args: --rho=0.25: with noise levels from 80 down to 0.002'),
    (['--sigma_min=0.6'], '--denoise-args: --sigma_min=0.6 is not below the noise level of the observations (0.5)'),
])
def test_denoise_args_are_checked_against_the_observations_first(data, tmp_path, denoise_args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        rounds.run_rounds(str(tmp_path / 'x'), str(data / 'clean'), str(data / 'noisy'), 1, DURATION, DURATION,
                          train_args=TRAIN_ARGS, denoise_args=denoise_args)
    assert not os.path.exists(tmp_path / 'x')

# --noisy in the train.py options: the rounds' own option, also without --online.
def test_noisy_in_the_train_args_is_named_as_the_rounds_option(data, tmp_path):
    with pytest.raises(UserError, match=r"--train-args: --noisy is an option of sfbd.rounds itself"):
        rounds.run_rounds(str(tmp_path / 'x'), str(data / 'clean'), str(data / 'noisy'), 1, DURATION, DURATION,
                          train_args=[*TRAIN_ARGS, f'--noisy={data / "noisy"}'])
    assert not os.path.exists(tmp_path / 'x')

def test_online_args_are_checked_with_the_online_duration_first(data, tmp_path):
    with pytest.raises(UserError, match=r'--online-args: train.py refuses them: --refresh-passes=5: .* at most 2 passes'):
        rounds.run_online(str(tmp_path / 'x'), str(data / 'clean'), str(data / 'noisy'), DURATION, DURATION,
                          train_args=TRAIN_ARGS, online_args=['--refresh-passes=5', '--refresh-every=1'])
    assert not os.path.exists(tmp_path / 'x')

#----------------------------------------------------------------------------
# The commands the rounds run: by default the release's recipe (each round a
# --transfer of the previous snapshot, EDM's warm-up untouched); a preset's
# options come first, the user's after them. The scripts are replaced by
# stand-ins that leave the files a finished step leaves.

def test_default_rounds_are_the_release_recipe_and_presets_come_first(data, tmp_path, monkeypatch):
    commands = []

    def fake_run_script(script, args, nproc=1, log=None):
        commands.append((script, list(args)))
        outdir = next(a.split('=', 1)[1] for a in args if a.startswith('--outdir='))
        os.makedirs(outdir, exist_ok=True)
        name = 'network-snapshot-000000.pkl' if script == 'train.py' else 'dataset.json'
        open(os.path.join(outdir, name), 'w').close()

    monkeypatch.setattr(rounds, 'run_script', fake_run_script)
    outdir = tmp_path / 'sfbd'
    record = rounds.run_rounds(str(outdir), str(data / 'clean'), str(data / 'noisy'), 2, 200, 20, preset='celeba64',
                               train_args=['--batch=64'], denoise_args=['--batch=8'])
    assert [script for script, _ in commands] == ['train.py', 'denoise.py', 'train.py', 'denoise.py', 'train.py']
    preset_train = ['--cond=0', '--arch=ncsnpp', '--batch=256', '--cres=1,2,2,2', '--lr=2e-4', '--dropout=0.05', '--augment=0.15']
    for script, args in commands:
        if script == 'train.py':
            tail = args[args.index(preset_train[0]):]
            assert tail == [*preset_train, '--batch=64']  # The user's --batch comes last and wins.
            assert not any(a.startswith('--lr-rampup') or a.startswith('--ema-rampup') for a in args)
        else:
            assert args[-2:] == ['--steps=40', '--batch=8']  # The release's 40 denoising steps for CelebA.
    pretrain, round1, round2 = (args for script, args in commands if script == 'train.py')
    assert not any(a.startswith('--transfer') for a in pretrain)
    assert f'--transfer={outdir / record["rounds"][0]["snapshot"]}' in round1
    assert f'--transfer={outdir / record["rounds"][1]["snapshot"]}' in round2
    assert record['options']['preset'] == 'celeba64'
    with pytest.raises(UserError, match='--preset=imagenet'):
        rounds.run_rounds(str(tmp_path / 'other'), str(data / 'clean'), str(data / 'noisy'), 1, 1, 1, preset='imagenet')

#----------------------------------------------------------------------------
# --online: the same pretraining, then one train.py run with --noisy.

def test_online_layout_record_and_reruns(data, tmp_path, monkeypatch, capsys):
    outdir = tmp_path / 'online'
    with open(os.path.join(str(data), 'log.txt'), 'a') as log:
        record = rounds.run_online(str(outdir), str(data / 'clean'), str(data / 'noisy'), DURATION, DURATION,
                                   train_args=TRAIN_ARGS, online_args=['--refresh-every=1', '--steps=4'], log=log)
    assert record == read_json(str(outdir / 'online.json'))
    assert record['pretrain']['train_dir'] == 'round-000-pretrain' and record['online']['train_dir'] == 'online'
    assert record['online']['network'] == record['pretrain']['snapshot']
    assert os.path.isfile(outdir / record['online']['snapshot'])
    options = read_json(str(outdir / 'online' / 'training_options.json'))
    assert options['resume_pkl'] == str(outdir / record['pretrain']['snapshot'])
    assert options['dataset_kwargs']['path'] == str(data / 'clean')
    assert options['online_kwargs']['noisy'] == [str(data / 'noisy')] and options['online_kwargs']['refresh_every'] == 1
    # The default 2 refresh passes: two refreshes of all 18 observations, and the ramp (one pass: 2 steps) ended.
    assert record['online']['refresh_passes'] == pytest.approx(2) and record['online']['loss_weight'] == 1
    assert record['online']['planned_refresh_passes'] == pytest.approx(2)
    assert options['online_kwargs']['refresh_batch'] == 18
    # Its cost: 32 training images, the fill and the refreshes denoise 18 + 36 observations, 5 evaluations each (3 steps).
    assert record['cost']['online'] == dict(training_image_passes=32, training_forward_equivalents=96, denoised_observations=54,
                                            denoising_evaluations=270, total_forward_equivalents=366)
    assert record['cost']['pretraining']['training_image_passes'] == 32
    out = capsys.readouterr().out
    assert 'Refresh passes over the observations: 2.00 of the 2.00 planned, the fill not counted.' in out
    assert 'the online run: 32 training image passes (x3: 96 forward-evaluation equivalents) + 54 observations' in out

    # A rerun does nothing; the rounds, or other options, are refused in this --outdir.
    calls = []
    monkeypatch.setattr(rounds, 'run_script', lambda script, *args, **kwargs: calls.append(script))
    assert rounds.run_online(str(outdir), str(data / 'clean'), str(data / 'noisy'), DURATION, DURATION,
                             train_args=TRAIN_ARGS, online_args=['--refresh-every=1', '--steps=4']) == record
    assert calls == []
    with pytest.raises(UserError, match='other options'):
        rounds.run_online(str(outdir), str(data / 'clean'), str(data / 'noisy'), DURATION, 2 * DURATION, train_args=TRAIN_ARGS)
    with pytest.raises(UserError, match='that sfbd.rounds did not make'):
        rounds.run_rounds(str(outdir), str(data / 'clean'), str(data / 'noisy'), 1, DURATION, DURATION)

def test_online_run_too_short_says_so(data, tmp_path, capsys):
    # 2 steps, a refresh every 5: no refresh, and the ramp (ceil(18/16) x 5 steps x 16 images) at 32/160.
    outdir = tmp_path / 'online'
    with open(os.path.join(str(data), 'log.txt'), 'a') as log:
        record = rounds.run_online(str(outdir), str(data / 'clean'), str(data / 'noisy'), DURATION, DURATION,
                                   train_args=TRAIN_ARGS, online_args=['--refresh-every=5', '--steps=4'], log=log)
    assert record['online']['refresh_passes'] == 0 and record['online']['loss_weight'] == pytest.approx(0.2)
    out = capsys.readouterr().out
    assert 'Done: Online SFBD' in out and 'ended before one whole refresh pass and the end of the weight ramp' in out
    assert 'buffer loss weight 0.200 of 1' in (outdir / 'online' / 'log.txt').read_text()

def test_online_commands_with_a_preset(data, tmp_path, monkeypatch):
    commands = []
    def fake_run_script(script, args, nproc=1, log=None):
        commands.append(list(args))
        outdir = next(a.split('=', 1)[1] for a in args if a.startswith('--outdir='))
        os.makedirs(outdir, exist_ok=True)
        open(os.path.join(outdir, 'network-snapshot-000000.pkl'), 'w').close()
    monkeypatch.setattr(rounds, 'run_script', fake_run_script)
    outdir = tmp_path / 'online'
    record = rounds.run_online(str(outdir), str(data / 'clean'), str(data / 'noisy'), 200, 80, preset='celeba64',
                               train_args=['--batch=64'], online_args=['--refresh-every=10'])
    pretrain, online = commands
    preset_train = ['--cond=0', '--arch=ncsnpp', '--batch=256', '--cres=1,2,2,2', '--lr=2e-4', '--dropout=0.05', '--augment=0.15']
    assert pretrain[pretrain.index('--cond=0'):] == [*preset_train, '--batch=64']
    # The preset's denoising steps (40 for CelebA) apply to the refreshes too, before the user's online options.
    assert online[online.index('--cond=0') - 1:] == [f'--noisy={data / "noisy"}', *preset_train, '--batch=64', '--steps=40',
                                                     '--refresh-every=10']
    assert f'--transfer={outdir / record["pretrain"]["snapshot"]}' in online and '--duration=80' in online
    assert record['options']['preset'] == 'celeba64'

@pytest.mark.parametrize('args, message', [
    (['--online', '--rounds=2'], '--rounds: options of the rounds'),
    (['--online', '--rounds=0', '--online-duration=1'], '--rounds: options of the rounds'),
    (['--online'], '--online needs --online-duration'),
    (['--rounds=2'], '--round-duration is required'),
    (['--rounds=2', '--round-duration=1', '--online-duration=1'], 'options of --online'),
])
def test_online_and_rounds_options_do_not_mix(args, message, data, tmp_path):
    result = CliRunner().invoke(rounds_cli.main, [f'--outdir={tmp_path / "x"}', f'--clean={data / "clean"}',
                                              f'--noisy={data / "noisy"}', '--pretrain-duration=1', *args])
    assert result.exit_code == 1 and message in result.output, result.output
    assert not os.path.exists(tmp_path / 'x')

#----------------------------------------------------------------------------
# A stop signal sent to the rounds (only to them, as `timeout` or SLURM sends
# it) reaches the running script once; the rounds wait for it to save and
# exit with its status 75, or with 128 + the signal's number if it did not
# save. A stand-in script records what it received.

CHILD = '''
import os, signal, sys, time
out = sys.argv[1] + os.environ.get('RANK', '')  # One file per process under torchrun.
def stop(signum, _frame):
    with open(out, 'a') as f:
        f.write(signal.Signals(signum).name + '\\n')
    sys.exit(75 if signum != signal.SIGTERM else 0)
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
    signal.signal(sig, stop)
open(out + '.ready', 'w').close()
time.sleep(60)
'''

@pytest.mark.parametrize('sig, status', [('SIGINT', 75), ('SIGUSR1', 75), ('SIGTERM', 143)])
def test_a_stop_signal_reaches_the_script_and_the_rounds_wait(tmp_path, sig, status):
    import signal
    import subprocess
    import sys
    import time
    child = tmp_path / 'child.py'
    child.write_text(CHILD)
    received = tmp_path / 'received.txt'
    parent = subprocess.Popen([sys.executable, '-c', 'import sys; from tools.rounds import run_script; '
                               'run_script(sys.argv[1], [sys.argv[2]])', str(child), str(received)],
                              cwd=rounds.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 60
    while not os.path.exists(str(received) + '.ready') and time.time() < deadline:
        time.sleep(0.05)
    parent.send_signal(getattr(signal, sig))
    output, _ = parent.communicate(timeout=60)
    assert received.read_text() == sig + '\n'  # Once, though the script is not in the rounds' process group.
    assert parent.returncode == status, output
    assert 'rerun the same command to continue' in output

# Under torchrun (--nproc=2) the workers themselves get the signal: the launcher ignores SIGUSR1, which
# would otherwise kill it and leave the workers running on their own. train.py's workers get it as sent
# (Ctrl-C as SIGTERM), another script's SIGTERM (denoise.py has no SIGUSR1 handler).
@pytest.mark.parametrize('script, sig, got', [('train.py', 'SIGUSR1', 'SIGUSR1'), ('train.py', 'SIGINT', 'SIGTERM'),
                                              ('denoise.py', 'SIGUSR1', 'SIGTERM')])
def test_a_stop_signal_reaches_every_torchrun_worker(tmp_path, script, sig, got):
    import signal
    import time
    child = tmp_path / script  # A stand-in under the script's name.
    child.write_text(CHILD.replace("sys.exit(75 if signum != signal.SIGTERM else 0)", "sys.exit(75)"))
    received = tmp_path / 'received'
    parent = subprocess.Popen([sys.executable, '-c', 'import sys; from tools.rounds import run_script; '
                               'run_script(sys.argv[1], [sys.argv[2]], nproc=2)', str(child), str(received)],
                              cwd=rounds.REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=dict(os.environ, OMP_NUM_THREADS='1'))
    deadline = time.time() + 120
    while not all(os.path.exists(f'{received}{rank}.ready') for rank in '01') and time.time() < deadline:
        time.sleep(0.05)
    parent.send_signal(getattr(signal, sig))
    output, _ = parent.communicate(timeout=120)
    assert [(tmp_path / f'received{rank}').read_text() for rank in '01'] == [got + '\n'] * 2, output
    assert parent.returncode == 75, output

# A step that fails with its own one-line error (on the terminal) is not followed by a second error line.
def test_a_failing_step_gives_one_error_line(tmp_path):
    code = ('import sys; sys.path.insert(0, "."); from tools import rounds; '
            'rounds.run_script("train.py", ["--outdir=x", "--data=/no/such/data", "-n"])')
    result = subprocess.run([sys.executable, '-c', code], cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith('Error:')]
    assert len(errors) == 1 and '/no/such/data' in errors[0], result.stdout + result.stderr
    assert 'sfbd.rounds stops: train.py ended with exit status 1.' in result.stderr
