"""denoise.py and sfbd/backward.py: the release's denoising grid, sharding, resuming, the SDE's
per-image randomness, and the refusal of bad input."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import denoise
from sfbd.backward import backward_sample, denoising_sigmas, image_seeds
from sfbd.observations import ObservationSet
from training.dataset import ImageFolderDataset
from training.sampler import StackedRandomGenerator, edm_sampler, to_uint8

from sfbd_helpers import (make_image_dataset, make_observation_set, random_observations, read_json, read_png_dataset,
                          save_tiny_network)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIGMA = 0.5
NUM_OBS = 23

#----------------------------------------------------------------------------
# The release's grid, computed directly: EDM's rho = 7 grid over num_steps
# (sigma_max 80, sigma_min 0.002), 0 appended; start at the largest node
# >= sigma, replaced by sigma.

def reference_grid(sigma, num_steps):
    i = np.arange(num_steps)
    grid = (80 ** (1 / 7) + i / (num_steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    grid = np.append(grid, 0.0)
    first = max(j for j in range(num_steps + 1) if grid[j] >= sigma)
    grid = grid[first:].copy()
    grid[0] = sigma
    return grid

class CountingDenoiser(torch.nn.Module):
    """Exact denoiser of N(0, s^2 I) data that records the noise level of every call."""
    img_channels, img_resolution, label_dim, sigma_min, sigma_max = 3, 4, 0, 0, float('inf')

    def __init__(self, std=0.5):
        super().__init__()
        self.std, self.calls = std, []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        sigma = float(torch.as_tensor(sigma).flatten()[0])
        self.calls.append(sigma)
        return x * self.std ** 2 / (self.std ** 2 + sigma ** 2)

@pytest.mark.parametrize('sigma, num_steps, steps, nfe', [(0.59, 18, 8, 15), (0.5853, 18, 7, 13), (1.3824, 40, 19, 37)])
def test_ode_follows_the_release_grid(sigma, num_steps, steps, nfe):
    grid = reference_grid(sigma, num_steps)
    assert len(grid) - 1 == steps
    assert np.allclose(denoising_sigmas(CountingDenoiser(), sigma, num_steps).numpy(), grid, rtol=1e-12, atol=0)

    # Heun from y at sigma, Euler on the last step, written out directly.
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    x, expected_calls = y.clone(), []
    def d(x, t):
        expected_calls.append(t)
        return x * 0.25 / (0.25 + t ** 2)
    for i in range(steps):
        t_cur, t_next = grid[i], grid[i + 1]
        slope = (x - d(x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * slope
        if i < steps - 1:
            x_next = x + (t_next - t_cur) * 0.5 * (slope + (x_next - d(x_next, t_next)) / t_next)
        x = x_next

    net = CountingDenoiser()
    out = backward_sample(net, y, sigma, mode='ode', num_steps=num_steps)
    assert len(net.calls) == nfe == len(expected_calls)
    assert np.allclose(net.calls, expected_calls, rtol=1e-12, atol=0)
    assert torch.allclose(out, x, rtol=1e-10, atol=1e-12)

    # The SDE steps over the same levels, one evaluation each.
    net = CountingDenoiser()
    backward_sample(net, y, sigma, mode='sde', num_steps=num_steps)
    assert np.allclose(net.calls, grid[:-1], rtol=1e-12, atol=0)

#----------------------------------------------------------------------------
# Shared inputs: a labelled observation set of 23 images and tiny networks.

@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp('denoise')
    arrays = random_observations(NUM_OBS, sigma=SIGMA)
    make_observation_set(str(root / 'obs'), arrays, sigma=SIGMA, labels=[i % 3 for i in range(NUM_OBS)])
    return dict(root=root, arrays=arrays, obs=str(root / 'obs'),
                net=save_tiny_network(str(root / 'net.pkl')),
                cond=save_tiny_network(str(root / 'cond.pkl'), label_dim=3))

def run(*args):
    return CliRunner().invoke(denoise.main, [str(a) for a in args])

def run_ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result.output

def test_outputs_equal_the_ode_sampler_and_form_a_training_set(inputs, tmp_path):
    from torch_utils.persistence import load_network
    for net_key, use_labels in (('net', False), ('cond', True)):
        outdir = tmp_path / net_key
        run_ok('--network', inputs[net_key], '--data', inputs['obs'], '--outdir', outdir, '--batch=8',
               '--grid', tmp_path / f'{net_key}.png')
        net = load_network(inputs[net_key])
        labels = torch.eye(3)[torch.arange(NUM_OBS) % 3] if use_labels else None
        expected = to_uint8(edm_sampler(net, torch.from_numpy(inputs['arrays']), labels, num_steps=18, sigma_start=SIGMA))
        images = read_png_dataset(str(outdir))
        assert len(images) == NUM_OBS
        for i in range(NUM_OBS):
            got = images[f'00000/img{i:08d}.png'].transpose(2, 0, 1).astype(int)
            assert np.abs(got - expected[i].numpy().astype(int)).max() <= 1
        dataset = ImageFolderDataset(str(outdir), use_labels=True)
        assert len(dataset) == NUM_OBS and [int(dataset.get_label(i).argmax()) for i in range(4)] == [0, 1, 2, 0]
        assert os.path.isfile(tmp_path / f'{net_key}.png')

def test_shards_cover_the_set_once():
    for n in [0, 1, 5, 23, 1000, 1001]:
        for count in [1, 2, 3, 7, 64]:
            parts = [list(denoise.shard_indices(n, (i, count))) for i in range(count)]
            assert sorted(sum(parts, [])) == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1

def test_shards_into_one_outdir_equal_one_run_and_reruns_resume(inputs, tmp_path):
    single, sharded = tmp_path / 'single', tmp_path / 'sharded'
    run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', single)
    for i in range(3):
        out = run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', sharded, f'--shard={i}/3', '--batch=3')
        assert os.path.isfile(sharded / 'dataset.json') == (i == 2), out
    a, b = read_png_dataset(str(single)), read_png_dataset(str(sharded))
    assert sorted(a) == sorted(b) and len(a) == NUM_OBS
    assert all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)
    assert read_json(str(single / 'dataset.json')) == read_json(str(sharded / 'dataset.json'))

    # Delete some outputs: a rerun redoes exactly those and leaves the rest alone.
    deleted = ['00000/img00000002.png', '00000/img00000011.png', '00000/img00000022.png']
    mtimes = {k: os.stat(sharded / k).st_mtime_ns for k in b if k not in deleted}
    for k in deleted:
        os.remove(sharded / k)
    result = run('--network', inputs['net'], '--data', inputs['obs'], '--outdir', sharded, '--finalize')
    assert result.exit_code == 1 and '3 of 23 images are still missing' in result.output
    out = run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', sharded)
    assert 'Denoising 3 of 23' in out
    c = read_png_dataset(str(sharded))
    assert all(np.array_equal(b[k], c[k]) for k in b)
    assert all(os.stat(sharded / k).st_mtime_ns == t for k, t in mtimes.items())
    assert os.path.isfile(sharded / 'dataset.json')

def test_sde_is_reproducible_across_shards_and_batch_sizes(inputs, tmp_path):
    common = ['--network', inputs['net'], '--data', inputs['obs'], '--mode=sde', '--seed=5']
    run_ok(*common, '--outdir', tmp_path / 'a', '--batch=4')
    for i in range(2):
        run_ok(*common, '--outdir', tmp_path / 'b', '--batch=7', f'--shard={i}/2')
    run_ok('--network', inputs['net'], '--data', inputs['obs'], '--mode=sde', '--seed=6', '--outdir', tmp_path / 'c')
    run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', tmp_path / 'ode')
    a, b, c, ode = (read_png_dataset(str(tmp_path / k)) for k in ('a', 'b', 'c', 'ode'))
    assert all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)
    assert sum(not np.array_equal(a[k], c[k]) for k in a) > NUM_OBS // 2
    assert sum(not np.array_equal(a[k], ode[k]) for k in a) > NUM_OBS // 2

    # The same at the level of the sampler, in float.
    obs = ObservationSet(inputs['obs'])
    from torch_utils.persistence import load_network
    net = load_network(inputs['net'])
    y, _labels = obs.load(list(range(NUM_OBS)))
    def sde(indices):
        rnd = StackedRandomGenerator('cpu', image_seeds(5, indices))
        return backward_sample(net, y[indices], SIGMA, mode='sde', randn_like=rnd.randn_like)
    whole = sde(list(range(NUM_OBS)))
    pieces = torch.cat([sde(list(range(s, min(s + 5, NUM_OBS)))) for s in range(0, NUM_OBS, 5)])
    assert torch.allclose(whole, pieces, atol=1e-6)

def test_an_outdir_of_other_options_is_refused(inputs, tmp_path):
    run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', tmp_path / 'o', '--shard=0/4')
    result = run('--network', inputs['net'], '--data', inputs['obs'], '--outdir', tmp_path / 'o', '--shard=1/4', '--steps=40')
    assert result.exit_code == 1 and 'other options' in result.output and 'sampler' in result.output

def test_torchrun_processes_split_the_work(inputs, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', 'denoise.py',
           f'--network={inputs["net"]}', f'--data={inputs["obs"]}', f'--outdir={tmp_path / "ddp"}', '--batch=4', '--device=cpu']
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f'Denoised {NUM_OBS} images' in proc.stdout
    run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', tmp_path / 'one')
    a, b = read_png_dataset(str(tmp_path / 'ddp')), read_png_dataset(str(tmp_path / 'one'))
    assert sorted(a) == sorted(b) and all(np.abs(a[k].astype(int) - b[k].astype(int)).max() <= 1 for k in a)

#----------------------------------------------------------------------------
# Bad input: one line naming the culprit, no traceback, nothing denoised.

def _bad_set(root, kind):
    path = str(root / kind)
    good = random_observations(4)
    if kind == 'no-sigma':
        make_observation_set(path, good, sigma=None)
    elif kind == 'flat':
        make_observation_set(path, [a[0] for a in good])
    elif kind == 'integer':
        make_observation_set(path, [(a * 100).astype(np.int32) for a in good])
    elif kind == 'ragged':
        make_observation_set(path, [good[0], good[1][:, :4, :4], good[2]])
    elif kind == 'nan':
        good[2][1, 3, 3] = np.nan
        make_observation_set(path, good)
    elif kind == 'pngs':
        make_image_dataset(path, 4)
    return path

@pytest.mark.parametrize('kind, extra, message', [
    ('no-sigma', [], 'records no "sigma"'),
    ('flat', [], 'expected [C, H, W]'),
    ('integer', [], 'dtype int32'),
    ('ragged', [], 'img00000001.npy'),
    ('nan', [], 'NaN'),
    ('pngs', [], 'not observations'),
    ('good', ['--net16'], 'expects 3x16x16'),
    ('good', ['--net1ch'], 'expects 1x8x8'),
    ('good', ['--cond'], 'has no labels'),
    ('good', ['--sigma=0.4'], '--force-sigma'),
    ('good', ['--mode=sde', '--S_churn=10'], 'S_churn'),
    ('good', ['--mode=sde', '--solver=euler'], '--solver'),
    ('good', ['--shard=4/4'], '"4/4" needs 0 <= I < N'),
    ('good', ['--shard=1-4'], 'of the form I/N'),
])
def test_bad_input_is_one_clear_error(inputs, tmp_path, kind, extra, message):
    root = inputs['root']
    data = inputs['obs'] if kind == 'good' and '--cond' not in extra else _bad_set(tmp_path, kind)
    if '--cond' in extra:
        make_observation_set(str(tmp_path / 'unlabelled'), random_observations(4))
        data = str(tmp_path / 'unlabelled')
    network = inputs['net']
    if '--net16' in extra:
        network = save_tiny_network(str(root / 'net16.pkl'), resolution=16)
    if '--net1ch' in extra:
        network = save_tiny_network(str(root / 'net1ch.pkl'), channels=1)
    if '--cond' in extra:
        network = inputs['cond']
    options = [e for e in extra if e not in ('--net16', '--net1ch', '--cond')]
    result = run('--network', network, '--data', data, '--outdir', tmp_path / 'out', *options)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output and 'Traceback' not in result.output
    assert not read_png_dataset(str(tmp_path / 'out')) if os.path.isdir(tmp_path / 'out') else True

def test_a_forced_sigma_is_used(inputs, tmp_path):
    run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', tmp_path / 'f', '--sigma=0.4', '--force-sigma')
    assert read_json(str(tmp_path / 'f' / 'denoise_options.json'))['sigma'] == 0.4

#----------------------------------------------------------------------------
# --fast. On the CPU its settings change no arithmetic: the same images, ODE
# and SDE, with reading and writing on threads. With the GPU's settings (the
# network in bfloat16, channels-last; batches padded as for a compiled
# network, which is not compiled here), measured on the CPU for EDM's fixture
# network: mean 0.22, max 2 levels from the faithful images. The tolerance is
# mean 1, max 8 levels.

def test_fast_path_gives_the_same_images_on_the_cpu(inputs, tmp_path):
    for mode in ('ode', 'sde'):
        outdirs = [tmp_path / f'{mode}-{name}' for name in ('faithful', 'fast')]
        for outdir, extra in zip(outdirs, ([], ['--fast'])):
            run_ok('--network', inputs['cond'], '--data', inputs['obs'], '--outdir', outdir, f'--mode={mode}',
                   '--batch=5', *extra)
        a, b = (read_png_dataset(str(outdir)) for outdir in outdirs)
        assert len(a) == NUM_OBS and sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
        assert read_json(str(outdirs[0] / 'dataset.json')) == read_json(str(outdirs[1] / 'dataset.json'))

def test_fast_path_with_gpu_settings_stays_within_tolerance(tmp_path, fixtures_dir):
    import dataclasses
    from sfbd.denoising import denoise_images
    from torch_utils import fast as fast_lib
    from torch_utils.persistence import load_network
    torch.set_num_threads(1)
    pkl = str(fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl')  # EDM's DDPM++, 16x16, 10 classes.
    count = 11  # Batches of 4, 4 and 3: the last is padded to 4.
    make_observation_set(str(tmp_path / 'obs'), random_observations(count, resolution=16, sigma=SIGMA),
                         sigma=SIGMA, labels=[i % 10 for i in range(count)])
    obs = ObservationSet(str(tmp_path / 'obs'))
    common = dict(sigma=SIGMA, mode='ode', seed=0, max_batch_size=4, device=torch.device('cpu'), sampler_kwargs={})
    assert denoise_images(load_network(pkl), obs, str(tmp_path / 'faithful'), list(range(count)), **common) == count
    settings = fast_lib.fast_settings('cpu', dtype='bfloat16', channels_last=True, compile=True)
    net = fast_lib.prepare_sampling_network(load_network(pkl), dataclasses.replace(settings, compile=False))
    assert denoise_images(net, obs, str(tmp_path / 'fast'), list(range(count)), **common, fast=settings) == count
    a, b = read_png_dataset(str(tmp_path / 'faithful')), read_png_dataset(str(tmp_path / 'fast'))
    diffs = np.stack([np.abs(a[k].astype(int) - b[k].astype(int)) for k in sorted(a)])
    print(f'bfloat16 network: mean {diffs.mean():.3f}, max {diffs.max()} levels')
    assert sorted(a) == sorted(b) and 0 < diffs.mean() <= 1 and diffs.max() <= 8
    obs.close()

#----------------------------------------------------------------------------
