"""Online SFBD (sfbd/online.py): the buffer and its refreshes, the union batches and their loss
weights, train.py's options, resuming an interrupted run exactly, and two processes.

Networks are tiny, data 8x8, so that every test runs in seconds on a CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import train
from sfbd import denoise_set
from tools import train_setup
from dnnlib.util import UserError
from sfbd.observations import ObservationSet
from sfbd.online import DenoisedBuffer, Observations, OnlineSFBD, ramp_weight, refresh_batch_for_passes, refresh_plan, run_steps
from torch_utils.persistence import load_network
from training.dataset import ImageFolderDataset, images_to_float
from training.training_loop import FINISHED, PREEMPTED, find_latest_state, training_loop

from sfbd_helpers import make_image_dataset, make_observation_set, random_observations, read_png_dataset, save_tiny_network, tiny_network
from test_training import assert_same

REPO = Path(__file__).resolve().parents[1]
NUM_CLEAN, NUM_NOISY = 8, 24
TINY = ['--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=8', '--tick=1', '--snap=1', '--dump=1', '--seed=1',
        '--workers=1', '--augment=0']

@pytest.fixture(scope='module')
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp('online-data')
    make_image_dataset(str(root / 'clean'), NUM_CLEAN)
    make_observation_set(str(root / 'noisy'), random_observations(NUM_NOISY, sigma=0.5))
    make_observation_set(str(root / 'noisy2'), random_observations(6, sigma=0.3, seed=1), sigma=0.3)
    make_observation_set(str(root / 'noisy16'), random_observations(4, resolution=16))
    return {name: str(root / name) for name in ('clean', 'noisy', 'noisy2', 'noisy16')}

def run_cli(args: list, launcher: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    cmd = launcher + [str(REPO / 'train.py')] + [str(a) for a in args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

def load_state(path) -> dict:
    return torch.load(path, map_location='cpu', weights_only=True)

#----------------------------------------------------------------------------
# The loss-weight ramp.

def test_ramp_weight():
    assert [ramp_weight(n, 1000) for n in (-5, 0, 250, 1000, 5000)] == [0, 0, 0.25, 1, 1]
    assert ramp_weight(0, 0) == 1  # No ramp: full weight at once.

#----------------------------------------------------------------------------
# The buffer: a stream of refreshes in round-robin order, each image fixed by
# the network, the seed and its stream position, whatever the batching.

def test_refresh_is_round_robin_and_independent_of_batching(data):
    net = tiny_network()
    observations = Observations([data['noisy'], data['noisy2']])
    assert len(observations) == NUM_NOISY + 6
    assert list(observations.sigmas([0, NUM_NOISY - 1, NUM_NOISY])) == [0.5, 0.5, 0.3]
    buffers = [DenoisedBuffer(observations, mode='sde', num_steps=6, seed=3, max_batch=b) for b in (4, 64)]
    for buffer in buffers:
        buffer.fill(net)
        assert buffer.position == 30 and buffer.images.dtype == torch.uint8  # denoise.py's 8 bits.
        assert images_to_float(buffer.images).std() > 0.05
    # Other batches may round the network's arithmetic differently: at most one 8-bit level apart.
    assert (buffers[0].images.int() - buffers[1].images.int()).abs().max() <= 1

    # Refreshes continue the stream where it stands, wrapping around the set; other seeds, other noise.
    buffer = buffers[0]
    before = buffer.images.clone()
    buffer.refresh(net, 20)
    buffer.refresh(net, 20)
    assert buffer.position == 70
    changed = (buffer.images != before).flatten(1).any(dim=1).nonzero().flatten().tolist()
    assert changed == list(range(30))  # Positions 30..69: every observation, 0..9 twice.
    buffer.refresh(net, 100)
    assert buffer.position == 100  # At most the whole set per refresh.

def test_fill_is_what_denoise_py_writes(data, tmp_path):
    # The first pass uses denoise.py's sampler, per-image seeds and 8-bit rounding: with the same
    # batches the buffer is denoise.py's PNGs exactly, and the training batches read it as PNGs.
    pkl = save_tiny_network(str(tmp_path / 'net.pkl'))
    net = load_network(pkl)
    obs = ObservationSet(data['noisy'])
    denoise_set.denoise_images(net, obs, str(tmp_path / 'out'), list(range(NUM_NOISY)), sigma=obs.sigma, mode='sde', seed=7,
                           max_batch_size=10, device=torch.device('cpu'), sampler_kwargs=dict(num_steps=8))
    pngs = read_png_dataset(str(tmp_path / 'out'))
    expected = np.stack([pngs[f'00000/img{i:08d}.png'] for i in range(NUM_NOISY)]).transpose(0, 3, 1, 2).astype(int)
    buffer = DenoisedBuffer(Observations([data['noisy']]), mode='sde', num_steps=8, seed=7, max_batch=10)
    buffer.fill(net)
    assert np.array_equal(buffer.images.numpy().astype(int), expected)
    clean = ImageFolderDataset(data['clean'])
    online = OnlineSFBD([data['noisy']], clean=clean, batch_size=8)
    online.buffer.images.copy_(buffer.images)
    online.start_nimg = 0
    indices = torch.tensor([NUM_CLEAN + 5])
    image = online.compose(torch.zeros([1, 3, 8, 8]), indices, cur_nimg=0)[0][0]
    assert torch.equal(image, images_to_float(torch.from_numpy(pngs['00000/img00000005.png'].copy()).permute(2, 0, 1)))

#----------------------------------------------------------------------------
# Batches of clean ∪ buffer: buffer images fill their placeholders (mirrored
# for the xflip copies), and their loss weight follows the ramp.

def test_compose_batches_and_weights(data):
    clean = ImageFolderDataset(data['clean'], xflip=True)
    online = OnlineSFBD([data['noisy']], clean=clean, refresh_batch=4, rampup_kimg=0.1, xflip=True, batch_size=8)
    dataset = online.dataset
    assert len(dataset) == 2 * NUM_CLEAN + 2 * NUM_NOISY
    image, _label, index = dataset[2 * NUM_CLEAN + 3]
    assert index == 2 * NUM_CLEAN + 3 and image.dtype == np.uint8 and not image.any()
    online.buffer.images.copy_(torch.randint(0, 256, online.buffer.images.shape, dtype=torch.uint8))
    online.start_nimg = 0

    indices = torch.tensor([1, 2 * NUM_CLEAN + 3, 2 * NUM_CLEAN + NUM_NOISY + 3])
    batch = torch.utils.data.default_collate([dataset[int(i)] for i in indices])
    images, weights = online.compose(images_to_float(batch[0]), batch[2], cur_nimg=25)
    assert torch.equal(images[0], images_to_float(torch.from_numpy(clean[1][0])))
    expected = images_to_float(online.buffer.images[3])
    assert torch.equal(images[1], expected) and torch.equal(images[2], expected.flip(-1))
    assert weights.flatten().tolist() == [1, 0.25, 0.25]
    assert online.compose(images_to_float(batch[0]), batch[2], cur_nimg=1000)[1].flatten().tolist() == [1, 1, 1]

def test_labels_of_a_conditional_run(data, tmp_path):
    # Class labels of the observations become one-hot vectors over the clean set's classes.
    make_image_dataset(str(tmp_path / 'clean'), 6, num_classes=5)
    make_observation_set(str(tmp_path / 'noisy'), random_observations(4), labels=[0, 3, 2, 3])
    clean = ImageFolderDataset(str(tmp_path / 'clean'), use_labels=True)
    online = OnlineSFBD([str(tmp_path / 'noisy')], clean=clean)
    assert online.dataset.labels.shape == (4, 5) and online.dataset.labels.argmax(axis=1).tolist() == [0, 3, 2, 3]
    assert online.buffer.labels.shape == (4, 5)
    with pytest.raises(UserError, match='has no labels, but the run is class-conditional'):
        OnlineSFBD([data['noisy']], clean=clean)

def test_auto_rampup_is_one_refresh_pass(data):
    clean = ImageFolderDataset(data['clean'])
    online = OnlineSFBD([data['noisy']], clean=clean, refresh_every=3, refresh_batch=10, batch_size=8)
    assert online.rampup_nimg == 3 * 3 * 8  # ceil(24 / 10) refreshes of every 3 steps of 8 images.

#----------------------------------------------------------------------------
# Stopping an online run in the middle and continuing it ends in the very
# state of an uninterrupted run: weights, EMA, optimizer, buffer, position.

def _online_run(run_dir: Path, data: dict, stop_after: int | None = None, resume: str | None = None,
                fast: bool = False) -> str:
    polls = []
    def stop_requested() -> bool:
        polls.append(1)
        return stop_after is not None and len(polls) >= stop_after
    return training_loop(
        run_dir=str(run_dir), seed=0, batch_size=8, total_kimg=0.08, kimg_per_tick=0.024, device='cpu',
        ema_halflife_kimg=0.02, ema_rampup_ratio=None, lr_rampup_kimg=0,
        dataset_kwargs=dict(class_name='training.dataset.ImageFolderDataset', path=data['clean']),
        data_loader_kwargs=dict(num_workers=0),
        network_kwargs=dict(class_name='training.networks.EDMPrecond', model_type='SongUNet', model_channels=16,
                            channel_mult=[1], num_blocks=1, attn_resolutions=[], dropout=0.1),
        loss_kwargs=dict(class_name='training.loss.EDMLoss'),
        optimizer_kwargs=dict(class_name='torch.optim.Adam', lr=1e-3, betas=[0.9, 0.999], eps=1e-8),
        online_kwargs=dict(class_name='sfbd.online.OnlineSFBD', noisy=[data['noisy']], refresh_every=2, refresh_batch=5,
                           rampup_kimg=0.04, mode='sde', num_steps=5, refresh_net='raw', seed=0),
        resume_state_dump=resume, stop_requested=stop_requested, fast=fast)

def test_stopped_online_run_continues_exactly(data, tmp_path):
    torch.set_num_threads(1)
    assert _online_run(tmp_path / 'whole', data) == FINISHED
    reference = load_state(find_latest_state(str(tmp_path / 'whole')))
    assert reference['cur_nimg'] == 80 and reference['online']['position'] == NUM_NOISY + 5 * 5
    assert reference['online']['step'] == 10
    # The buffer is kept in 8 bits, one byte per value: N*C*H*W bytes of each state.
    assert reference['online']['images'].dtype == torch.uint8 and reference['online']['images'].nbytes == NUM_NOISY * 3 * 8 * 8

    # Stopped after step 3 (between refreshes, inside the ramp), then continued from its state.
    assert _online_run(tmp_path / 'part', data, stop_after=3) == PREEMPTED
    stopped = find_latest_state(str(tmp_path / 'part'))
    assert load_state(stopped)['online']['step'] == 3
    assert _online_run(tmp_path / 'part', data, resume=stopped) == FINISHED
    resumed = load_state(find_latest_state(str(tmp_path / 'part')))
    for key in ('net', 'ema', 'optimizer_state', 'online'):
        assert_same(resumed[key], reference[key], key)

    # The fast path (train.py --fast; on the CPU it changes no arithmetic) puts the buffer's images in the
    # same slots with the same weights: the same run, continued from the stopped state of the faithful one.
    assert _online_run(tmp_path / 'fast', data, stop_after=3, fast=True) == PREEMPTED
    assert _online_run(tmp_path / 'fast', data, resume=find_latest_state(str(tmp_path / 'fast')), fast=True) == FINISHED
    fast = load_state(find_latest_state(str(tmp_path / 'fast')))
    for key in ('net', 'ema', 'online'):
        assert_same(fast[key], reference[key], key)

#----------------------------------------------------------------------------
# train.py: the options, the log's cost line, and two processes that denoise
# disjoint slices and hold the same buffer.

def test_train_online_with_two_processes(data, tmp_path):
    args = ['--outdir', tmp_path, '--data', data['clean'], '--noisy', data['noisy'], *TINY, '--duration=0.00004',
            '--refresh-every=1', '--refresh-batch=5', '--steps=4']
    pair = run_cli(args, launcher=[sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2'])
    assert pair.returncode == 0, pair.stderr[-3000:]
    (run_dir,) = tmp_path.iterdir()
    assert run_dir.name.endswith('-online') and 'replicas differ' not in pair.stderr
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['online_kwargs'] == dict(class_name='sfbd.online.OnlineSFBD', noisy=[data['noisy']], refresh_every=1,
                                            refresh_batch=5, rampup_kimg=None, mode='ode', num_steps=4, refresh_net='ema',
                                            buffer_dtype='uint8', xflip=False, cache=True, seed=1)
    log = (run_dir / 'log.txt').read_text()
    assert 'Filled the buffer' in log and ' refresh ' in log and ' wbuf ' in log
    stats = [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]
    assert 0 < stats[-1]['Timing/refresh_share']['mean'] < 1
    # Denoised images counted over both processes: 5 per refresh in all, so the slices are disjoint.
    assert [s['Online/refreshed']['num'] for s in stats] == [5, 20]  # Step 1; steps 2..5.

    # The same options in one process: the same starting network fills the buffer alike (rows 0..4 were
    # refreshed after training began, by networks that differ with the processes' noise).
    single_dir = tmp_path / 'single'
    torch.set_num_threads(1)
    kwargs = {k: v for k, v in options.items() if k not in ('run_dir', 'data_loader_kwargs', 'online_plan')}
    assert training_loop(**kwargs, run_dir=str(single_dir), data_loader_kwargs=dict(num_workers=0)) == FINISHED
    a, b = (load_state(find_latest_state(str(d)))['online'] for d in (single_dir, run_dir))
    assert a['position'] == b['position'] == NUM_NOISY + 25
    assert (a['images'][5:].int() - b['images'][5:].int()).abs().max() <= 1  # Batches of other sizes: one level at most.

@pytest.mark.parametrize('case', ['without-noisy', 'missing', 'resolution', 'not-observations'])
def test_bad_online_input_is_one_line_and_leaves_nothing(case, data, tmp_path):
    args = ['--outdir', tmp_path / 'out', '--data', data['clean'], *TINY, '--duration=0.00004']
    args += {'without-noisy': ['--refresh-every=5', '--mode=sde'],
             'missing': ['--noisy', tmp_path / 'nothing'],
             'resolution': ['--noisy', data['noisy16']],
             'not-observations': ['--noisy', tmp_path / 'images']}[case]
    make_image_dataset(str(tmp_path / 'images'), 4)
    expected = {'without-noisy': r'--refresh-every, --mode: Online SFBD options; they need --noisy',
                'missing': r'--noisy=.*nothing: no such',
                'resolution': r'--noisy: observations are 3x16x16, but the clean data .* are 3x8x8',
                'not-observations': r'--noisy=.*images: holds 8-bit images'}[case]
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    (line,) = [l for l in result.output.splitlines() if l.startswith('Error:')]
    assert re.search(expected, line), line
    assert not (tmp_path / 'out').exists()

def test_online_state_needs_noisy_to_continue(data, tmp_path):
    run_dir = tmp_path / 'run'
    assert _online_run(run_dir, data, stop_after=1) == PREEMPTED
    args = ['--outdir', run_dir, '--nosubdir', '--data', data['clean'], *TINY, '--seed=0', '--duration=0.00008']  # The run's seed.
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == 1 and 'add --allow-data-change' in result.output  # The state records the observations too.
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--allow-data-change']])
    assert result.exit_code == 1 and 'an Online SFBD run; give the same --noisy' in result.output

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# A set given twice would count twice: refused, under any spelling.

@pytest.mark.parametrize('twice', ['data', 'data-spelled', 'noisy', 'noisy-link', 'data-and-noisy'])
def test_a_set_given_twice_is_refused(twice, data, tmp_path):
    (tmp_path / 'link').symlink_to(data['noisy'])
    extra = {'data': ['--data', data['clean']],
             'data-spelled': ['--data', data['clean'] + '/../clean/'],
             'noisy': ['--noisy', data['noisy'], '--noisy', data['noisy']],
             'noisy-link': ['--noisy', data['noisy'], '--noisy', tmp_path / 'link'],
             'data-and-noisy': ['--noisy', data['clean']]}[twice]
    args = ['--outdir', tmp_path / 'out', '--data', data['clean'], *extra, *TINY, '--duration=0.00004', '--dry-run']
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    (line,) = [l for l in result.output.splitlines() if l.startswith('Error:')]
    assert re.search(r'(is given twice|are the same set); give each set once', line), line
    assert not (tmp_path / 'out').exists()

#----------------------------------------------------------------------------
# A run too short to refresh its buffer or end its ramp says so; the log's
# Loss/loss is the denoising loss as in every run, the weighted one apart; a
# resumed run keeps its seed and refuses another.

def test_short_online_run_seed_and_losses(data, tmp_path):
    run_dir = tmp_path / 'run'
    tiny = [a for a in TINY if not a.startswith('--seed')]
    args = ['--outdir', run_dir, '--nosubdir', '--data', data['clean'], '--noisy', data['noisy'], *tiny,
            '--refresh-every=10', '--mode=sde', '--steps=3']
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--duration=0.00004', '--seed=4']])
    assert result.exit_code == 0, result.output
    log = (run_dir / 'log.txt').read_text()
    # 5 steps of 8 images: no refresh yet (every 10 steps), weight 40 / (3 refreshes x 10 steps x 8) = 0.167.
    assert 'ended before one whole refresh pass and the end of the weight ramp: 0.00 refresh passes' in log
    assert 'buffer loss weight 0.167 of 1' in log
    stats = [json.loads(line) for line in (run_dir / 'stats.jsonl').read_text().splitlines()]
    assert all(s['Loss/weighted']['mean'] < s['Loss/loss']['mean'] for s in stats)
    assert all(s['Loss/weighted']['num'] == s['Loss/loss']['num'] for s in stats)

    # Continuing: another explicit seed is refused; none given, the run's seed is kept and said.
    more = args + ['--duration=0.00008']
    result = CliRunner().invoke(train.main, [str(a) for a in more + ['--seed=5']])
    assert result.exit_code == 1 and 'continues a run of seed 4, and a resumed run keeps its seed' in result.output
    result = CliRunner().invoke(train.main, [str(a) for a in more + ['--dry-run']])
    assert result.exit_code == 0 and 'Seed: 4, the resumed run\'s own' in result.output, result.output
    assert '"seed": 4' in result.output and result.output.count('"seed": 4') == 2  # The run's and the refreshes'.

#----------------------------------------------------------------------------
# Refreshing in passes over the observations: --refresh-passes sets the
# refresh batch at the run's whole length; the log and training_options.json
# state the passes planned, the end of the run those made; a resumed run keeps
# its refresh batch.

def test_refresh_plan_numbers():
    # The demo's online run: 36 kimg of 128 images are 282 steps, 14 refreshes every 20 steps.
    assert run_steps(36, 128) == 282 and run_steps(0.04, 8) == 5
    assert refresh_batch_for_passes(2, 2016, 20, 282) == 288
    plan = refresh_plan(2016, 20, 288, 282)
    assert plan['refreshes'] == 14 and plan['refresh_passes'] == 2
    assert refresh_plan(24, 1, 100, 5)['refresh_batch'] == 24  # At most the whole set per refresh.
    assert refresh_batch_for_passes(1, 24, 1, 5) == 5 and refresh_batch_for_passes(0.01, 24, 1, 5) == 1
    with pytest.raises(UserError, match=r'--refresh-passes=6: .* make at most 5 passes'):
        refresh_batch_for_passes(6, 24, 1, 5)
    with pytest.raises(UserError, match=r'the run makes no refresh: its 5 steps are fewer than --refresh-every=10'):
        refresh_batch_for_passes(1, 24, 10, 5)

def test_refresh_passes_planned_made_and_resumed(data, tmp_path):
    torch.set_num_threads(1)
    run_dir = tmp_path / 'run'
    args = ['--outdir', run_dir, '--nosubdir', '--data', data['clean'], '--noisy', data['noisy'], *TINY,
            '--refresh-every=1', '--refresh-passes=1', '--steps=3']
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--duration=0.00004']])
    assert result.exit_code == 0, result.output
    # 5 steps, a refresh after each: ceil(24 / 5) = 5 observations each, 25 / 24 passes.
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['online_kwargs']['refresh_batch'] == 5 and options['online_kwargs']['refresh_passes'] == 1
    assert options['online_plan'] == dict(num_observations=NUM_NOISY, total_steps=5, refresh_every=1, refresh_batch=5,
                                          refreshes=5, refresh_passes=pytest.approx(25 / 24))
    log = (run_dir / 'log.txt').read_text()
    assert 'Online SFBD plan: 5 refreshes of 5 in the run\'s 5 steps, 1.04 refresh passes over the observations' in log
    assert 'Online SFBD: 1.04 refresh passes of the 1.04 planned over the 24 observations' in log

    # Continued to twice the length: the refresh batch of the run (not ceil(24 / 10) = 3), 50 / 24 passes.
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--duration=0.00008']])
    assert result.exit_code == 0, result.output
    assert 'the resumed run keeps its refresh batch 5' in result.output
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['online_kwargs']['refresh_batch'] == 5 and options['online_plan']['refresh_passes'] == pytest.approx(50 / 24)
    assert 'Online SFBD: 2.08 refresh passes of the 2.08 planned' in (run_dir / 'log.txt').read_text()

    # Without --refresh-passes the plan is stated too: --refresh-batch as given (or --batch).
    result = CliRunner().invoke(train.main, [str(a) for a in ['--outdir', tmp_path / 'dry', '--data', data['clean'], '--noisy',
                                             data['noisy'], *TINY, '--duration=0.00008', '--refresh-every=2', '--refresh-batch=3', '--dry-run']])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output[result.output.index('{'):result.output.index('\n}\n') + 2])['online_plan']
    assert plan['refreshes'] == 5 and plan['refresh_batch'] == 3 and plan['refresh_passes'] == pytest.approx(15 / 24)

# Without either refresh option a run makes sfbd.online.DEFAULT_REFRESH_PASSES
# (2) refresh passes; a run too short for them refreshes everything each time,
# one without a refresh keeps r = --batch; a run begun when the default was
# r = --batch is continued by a plain rerun and keeps its r.

def _dry_run_options(args: list) -> dict:
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--dry-run']])
    assert result.exit_code == 0, result.output
    return json.loads(result.output[result.output.index('{'):result.output.index('\n}\n') + 2]), result.output

def test_default_is_two_refresh_passes(data, tmp_path):
    torch.set_num_threads(1)
    base = ['--outdir', tmp_path / 'dry', '--data', data['clean'], '--noisy', data['noisy'], *TINY, '--duration=0.00008']
    # 10 steps, 5 refreshes: ceil(2 * 24 / 5) = 10 observations each.
    options, output = _dry_run_options(base + ['--refresh-every=2'])
    assert options['online_kwargs']['refresh_passes'] == 2 and options['online_kwargs']['refresh_batch'] == 10
    assert options['online_plan']['refresh_passes'] == pytest.approx(50 / 24)
    # One refresh cannot make two passes: it refreshes all 24, and says so.
    options, output = _dry_run_options(base + ['--refresh-every=6'])
    assert options['online_kwargs']['refresh_passes'] is None and options['online_kwargs']['refresh_batch'] == NUM_NOISY
    assert 'fall short of the default 2 refresh passes; each refreshes all 24 observations' in output
    # No refresh at all: r = --batch, which sets the ramp.
    options, output = _dry_run_options(base + ['--refresh-every=20'])
    assert options['online_kwargs']['refresh_passes'] is None and options['online_kwargs']['refresh_batch'] == 8

    # A run of the old default (r = --batch, no passes recorded), stopped halfway: a plain rerun continues it.
    outdir = tmp_path / 'runs'
    args = ['--outdir', outdir, '--data', data['clean'], '--noisy', data['noisy'], *TINY, '--refresh-every=1', '--steps=3']
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--duration=0.00004', '--refresh-batch=8']])
    assert result.exit_code == 0, result.output
    (run_dir,) = outdir.iterdir()
    recorded = json.loads((run_dir / 'training_options.json').read_text())
    assert train_setup.is_old_default_online(recorded) and 'refresh_passes' not in recorded['online_kwargs']
    recorded['total_kimg'] *= 2  # As if it had been started for twice the length.
    (run_dir / 'training_options.json').write_text(json.dumps(recorded, indent=2))
    result = CliRunner().invoke(train.main, [str(a) for a in args + ['--duration=0.00008']])
    assert result.exit_code == 0, result.output
    assert f'Continuing the unfinished run {run_dir}' in result.output
    assert 'the resumed run keeps its refresh batch 8 (--batch, the default when it began' in result.output
    assert [p.name for p in outdir.iterdir()] == [run_dir.name]
    options = json.loads((run_dir / 'training_options.json').read_text())
    assert options['online_kwargs']['refresh_batch'] == 8 and 'refresh_passes' not in options['online_kwargs']
    assert options['online_plan']['refresh_passes'] == pytest.approx(80 / 24)

def test_refresh_passes_with_refresh_batch_is_refused(data, tmp_path):
    args = ['--outdir', tmp_path / 'out', '--data', data['clean'], '--noisy', data['noisy'], *TINY, '--duration=0.00004',
            '--refresh-passes=1', '--refresh-batch=4']
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == 1, result.output
    (line,) = [l for l in result.output.splitlines() if l.startswith('Error:')]
    assert line == 'Error: --refresh-passes and --refresh-batch cannot be used together: --refresh-passes sets the refresh batch'
    assert not (tmp_path / 'out').exists()
