"""denoise.py and sfbd/backward.py: the release's denoising grid, sharding, resuming, the SDE's
per-image randomness, and the refusal of bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import denoise

from sfbd import denoise_set
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
            parts = [list(denoise_set.shard_indices(n, (i, count))) for i in range(count)]
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

# A set made again at the same path (another seed, other labels) is another
# input: its shards do not finish the first set's outputs.
def test_a_set_remade_at_the_same_path_is_refused(inputs, tmp_path):
    data = tmp_path / 'obs'
    make_observation_set(str(data), random_observations(8, seed=1), sigma=SIGMA)
    run_ok('--network', inputs['net'], '--data', data, '--outdir', tmp_path / 'o', '--shard=0/2', '--steps=2')
    shutil.rmtree(data)
    make_observation_set(str(data), random_observations(8, seed=2), sigma=SIGMA, labels=[i % 3 for i in range(8)])
    result = run('--network', inputs['net'], '--data', data, '--outdir', tmp_path / 'o', '--shard=1/2', '--steps=2')
    assert result.exit_code == 1 and 'other options (data_digest differ' in result.output, result.output
    # The same split made again (secret noise: same names, sizes, labels and seed, other pixels).
    from sfbd.dataset_commands import split_dataset
    make_image_dataset(str(tmp_path / 'src'), 6)
    for attempt in range(2):
        shutil.rmtree(tmp_path / 'split', ignore_errors=True)
        split_dataset(str(tmp_path / 'src'), str(tmp_path / 'split' / 'c'), str(tmp_path / 'split' / 'n'), SIGMA,
                      seed=1, clean_count=2, verbose=False)
        result = run('--network', inputs['net'], '--data', tmp_path / 'split' / 'n', '--outdir', tmp_path / 'o2',
                     f'--shard={attempt}/2', '--steps=2')
        assert result.exit_code == attempt, result.output
    assert 'other options (data_digest differ' in result.output

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
    elif kind == 'case':  # a.npy and a.NPY would both be denoised to a.png.
        make_observation_set(path, good[:2])
        os.rename(os.path.join(path, '00000', 'img00000001.npy'), os.path.join(path, '00000', 'img00000000.NPY'))
        with open(os.path.join(path, 'dataset.json'), 'w') as f:
            json.dump(dict(sigma=0.5, labels=None), f)
    elif kind == 'escape':  # A zip member that would be written two folders above --outdir.
        import zipfile
        make_observation_set(path, good[:1])
        with zipfile.ZipFile(path + '.zip', 'w') as zf:
            zf.write(os.path.join(path, '00000', 'img00000000.npy'), '00000/img00000000.npy')
            zf.write(os.path.join(path, '00000', 'img00000000.npy'), '../../escaped.npy')
            zf.writestr('dataset.json', json.dumps(dict(sigma=0.5, labels=None)))
        path += '.zip'
    return path

@pytest.mark.parametrize('kind, extra, message', [
    ('no-sigma', [], 'records no "sigma"'),
    ('flat', [], 'expected [C, H, W]'),
    ('integer', [], 'dtype int32'),
    ('ragged', [], 'img00000001.npy'),
    ('nan', [], 'NaN'),
    ('pngs', [], 'not observations'),
    ('case', [], 'img00000000.npy would both be denoised to 00000/img00000000.png'),
    ('escape', [], "the member '../../escaped.npy' points outside the archive"),
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
    assert not any(name.endswith('.png') for name in os.listdir(tmp_path.parent))  # Nothing escaped.

# Observations below the network's lowest noise level (a VE network's 0.02, say) are denoised, as the
# release does, and the log says that the network never trained there.
def test_levels_below_the_network_are_noted(inputs, tmp_path):
    from torch_utils.persistence import save_network_pickle
    from training.networks import EDMPrecond
    net = EDMPrecond(img_resolution=8, img_channels=3, sigma_min=0.2, model_type='SongUNet', model_channels=16,
                     channel_mult=[1, 1], num_blocks=1, attn_resolutions=[]).eval()
    save_network_pickle(str(tmp_path / 'net.pkl'), dict(ema=net))
    make_observation_set(str(tmp_path / 'obs'), random_observations(2, sigma=0.1), sigma=0.1)
    out = run_ok('--network', tmp_path / 'net.pkl', '--data', tmp_path / 'obs', '--outdir', tmp_path / 'o', '--steps=4')
    assert 'Note: noise level 0.1 is below the lowest the network knows (0.2)' in out
    assert 'Note:' not in run_ok('--network', inputs['net'], '--data', inputs['obs'], '--outdir', tmp_path / 'o2',
                                 '--steps=2')

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
    from sfbd.denoise_set import denoise_images
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
# Per-image noise levels. Levels 0.3 and 0.45 start at the same node of the
# 18-step grid (0.585), 0.59 and 0.8 at the next one (1.088), 0.2 at 0.296:
# a batch holds groups of one and of several levels.

LEVELS = [0.2, 0.3, 0.45, 0.59, 0.8]

@pytest.fixture(scope='module')
def mixed(tmp_path_factory):
    root = tmp_path_factory.mktemp('mixed')
    levels = [LEVELS[(3 * i) % len(LEVELS)] for i in range(NUM_OBS)]
    arrays = random_observations(NUM_OBS, sigma=0.5)
    names = [f'00000/img{i:08d}.npy' for i in range(NUM_OBS)]
    make_observation_set(str(root / 'obs'), arrays, metadata=dict(sigma=dict(zip(names, levels)), labels=None))
    return dict(root=root, obs=str(root / 'obs'), levels=levels, arrays=arrays)

class ExactDenoiser(torch.nn.Module):
    """Exact denoiser of N(0, 0.25 I) data, one noise level per image: every image is computed on
    its own, so any difference between a batch and single runs is the sampler's."""
    img_channels, img_resolution, label_dim, sigma_min, sigma_max = 3, 8, 0, 0, float('inf')

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        t = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        return x.to(torch.float64) * 0.25 / (0.25 + t ** 2)

@pytest.mark.parametrize('mode, options', [('ode', {}), ('ode', dict(S_churn=4)), ('sde', {})])
def test_mixed_levels_equal_per_level_runs_exactly(mixed, mode, options):
    # The sampler: a batch of mixed levels against each image at its level alone, same stream.
    net = ExactDenoiser()
    y = torch.from_numpy(mixed['arrays'])
    levels = torch.tensor(mixed['levels'], dtype=torch.float64)
    rnd = StackedRandomGenerator('cpu', image_seeds(1, range(NUM_OBS)))
    together = backward_sample(net, y, levels, mode=mode, randn_like=rnd.randn_like, **options)
    for i in range(NUM_OBS):
        one = StackedRandomGenerator('cpu', image_seeds(1, [i]))
        alone = backward_sample(net, y[i:i + 1], mixed['levels'][i], mode=mode, randn_like=one.randn_like, **options)
        assert torch.equal(together[i], alone[0]), i

def test_denoise_loop_on_a_mixed_set_equals_per_level_runs(mixed, tmp_path):
    # denoise.py's loop (grouping, sharding, batching) with the exact denoiser: the PNGs of the
    # mixed set equal those of the whole set denoised at each level, image for image.
    obs, net = ObservationSet(mixed['obs']), ExactDenoiser()
    common = dict(mode='sde', seed=3, device=torch.device('cpu'), sampler_kwargs={})
    for shard in range(2):
        todo = list(denoise_set.shard_indices(NUM_OBS, (shard, 2)))
        denoise_set.denoise_images(net, obs, str(tmp_path / 'mixed'), todo, sigma=obs.sigmas, max_batch_size=5, **common)
    for level in LEVELS:
        denoise_set.denoise_images(net, obs, str(tmp_path / f'{level}'), list(range(NUM_OBS)), sigma=level,
                               max_batch_size=64, **common)
    got = read_png_dataset(str(tmp_path / 'mixed'))
    assert len(got) == NUM_OBS
    for i, level in enumerate(mixed['levels']):
        name = f'00000/img{i:08d}.png'
        assert np.array_equal(got[name], read_png_dataset(str(tmp_path / f'{level}'))[name]), i

def test_fast_loop_on_a_mixed_set_equals_the_faithful_one(mixed, tmp_path):
    # The fast loop (reading and writing on threads, batches padded as for a compiled network)
    # groups the levels as the faithful one does: the same images.
    from torch_utils.fast import fast_settings
    obs, net = ObservationSet(mixed['obs']), ExactDenoiser()
    common = dict(sigma=obs.sigmas, mode='sde', seed=3, max_batch_size=5, device=torch.device('cpu'), sampler_kwargs={})
    denoise_set.denoise_images(net, obs, str(tmp_path / 'faithful'), list(range(NUM_OBS)), **common)
    denoise_set.denoise_images(net, obs, str(tmp_path / 'fast'), list(range(NUM_OBS)), **common,
                           fast=fast_settings('cpu', compile=True))
    a, b = read_png_dataset(str(tmp_path / 'faithful')), read_png_dataset(str(tmp_path / 'fast'))
    assert len(a) == NUM_OBS and sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)

def test_denoise_cli_on_a_mixed_set(mixed, inputs, tmp_path):
    # The real network: each image as in the run of the whole set at its level (a network may
    # round differently in another batch, so up to one level of 255, rarely).
    from torch_utils.persistence import load_network
    data = str(tmp_path / 'obs')
    shutil.copytree(mixed['obs'], data)
    base = ['--network', inputs['net'], '--data', data, '--outdir', tmp_path / 'mixed', '--mode=sde', '--batch=6']
    assert 'sigma 0.2 to 0.8 (per image)' in run_ok(*base)
    got = read_png_dataset(str(tmp_path / 'mixed'))
    obs, net, same = ObservationSet(data), load_network(inputs['net']), 0
    for level in LEVELS:
        denoise_set.denoise_images(net, obs, str(tmp_path / f'{level}'), list(range(NUM_OBS)), sigma=level, mode='sde',
                               seed=0, max_batch_size=64, device=torch.device('cpu'), sampler_kwargs={})
        alone = read_png_dataset(str(tmp_path / f'{level}'))
        for i in [i for i, l in enumerate(mixed['levels']) if l == level]:
            name = f'00000/img{i:08d}.png'
            assert np.abs(got[name].astype(int) - alone[name].astype(int)).max() <= 1
            same += np.array_equal(got[name], alone[name])
    assert same >= NUM_OBS - 2

    # The options record the levels; a rerun with other levels into the same directory is refused.
    record = read_json(str(tmp_path / 'mixed' / 'denoise_options.json'))['sigma']
    assert record['per_image'] and record['count'] == NUM_OBS and (record['min'], record['max']) == (0.2, 0.8)
    assert 'Denoising 0 of 23' in run_ok(*base)
    metadata = read_json(os.path.join(data, 'dataset.json'))
    metadata['sigma']['00000/img00000004.npy'] = 0.31
    with open(os.path.join(data, 'dataset.json'), 'w') as f:
        json.dump(metadata, f)
    result = run(*base)  # The set's dataset.json changed too, so its digest differs as well.
    assert result.exit_code == 1 and 'other options (data_digest, sigma.sha256 differ' in result.output

    # One --sigma for a set of per-image levels needs --force-sigma.
    result = run('--network', inputs['net'], '--data', data, '--outdir', tmp_path / 'forced', '--sigma=0.5')
    assert result.exit_code == 1 and 'per image (0.2 to 0.8)' in result.output and '--force-sigma' in result.output

#----------------------------------------------------------------------------
# The comparison picture: images chosen anywhere in the set (count and seed),
# original | observation | denoised with --originals, the originals read by
# the names `split` recorded. An experiment of 12 source images, 10 observations.

@pytest.fixture(scope='module')
def experiment(tmp_path_factory):
    from sfbd.dataset_commands import split_dataset
    root = tmp_path_factory.mktemp('experiment')
    source = make_image_dataset(str(root / 'source'), num_images=12, seed=4)
    split_dataset(str(root / 'source'), str(root / 'clean'), str(root / 'noisy'), sigma=0.5, seed=1, clean_count=2,
                  verbose=False)
    return dict(root=root, source=source, noisy=str(root / 'noisy'), net=save_tiny_network(str(root / 'net.pkl')))

def grid_cells(path, num_cells: int, num_columns: int, size: int = 8, per_row: int = 8) -> list[list[np.ndarray]]:
    # The [C, H, W] images of each cell of sfbd.grids.comparison_grid's layout.
    from sfbd.grids import load_png
    grid = load_png(str(path))
    cell_width = num_columns * size + num_columns - 1
    cells = []
    for i in range(num_cells):
        top, left = (i // per_row) * (size + 2), (i % per_row) * (cell_width + 2)
        cells.append([grid[:, top:top + size, left + j * (size + 1):left + j * (size + 1) + size] for j in range(num_columns)])
    return cells

def test_grid_of_chosen_images_with_their_originals(experiment, tmp_path):
    from sfbd.dataset_commands import choose_clean
    from sfbd.grids import choose_images, load_png
    noisy = experiment['noisy']
    before = {name: os.stat(os.path.join(noisy, name)).st_mtime_ns for name in os.listdir(noisy)}
    outdir, picture = tmp_path / 'out', tmp_path / 'grid.png'
    grid_args = ['--grid', picture, '--grid-count=4', '--grid-seed=7', '--originals', experiment['root'] / 'source']
    chosen = choose_images(10, 4, 7)
    assert chosen == [5, 6, 8, 9]  # All in the second of two shards: not the first images of a shard.

    # The first shard cannot show them yet; the second, which denoises them, writes the picture.
    out = run_ok('--network', experiment['net'], '--data', noisy, '--outdir', outdir, '--steps=4', '--shard=0/2', *grid_args)
    assert 'not written yet' in out and not picture.exists()
    out = run_ok('--network', experiment['net'], '--data', noisy, '--outdir', outdir, '--steps=4', '--shard=1/2', *grid_args)
    assert f'Wrote {picture}: 4 images chosen with --grid-seed=7, original | observation | denoised.' in out

    # Each cell: the source image of the observation (split's choice replayed: the sources of the
    # observations are the non-clean images in order), the observation, the denoised image.
    sources = np.setdiff1d(np.arange(12), choose_clean(12, 2, 1))
    obs = ObservationSet(noisy)
    observations = to_uint8(obs.load(chosen)[0]).numpy()
    for cell, i, observation in zip(grid_cells(picture, 4, 3), chosen, observations):
        assert np.array_equal(cell[0], experiment['source'][sources[i]])
        assert np.array_equal(cell[1], observation)
        assert np.array_equal(cell[2], load_png(str(outdir / f'00000/img{i:08d}.png')))

    # Without --originals: observation | denoised. The observation set is as it was.
    run_ok('--network', experiment['net'], '--data', noisy, '--outdir', outdir, '--steps=4', '--finalize',
           '--grid', picture, '--grid-count=4', '--grid-seed=7')
    for cell, observation in zip(grid_cells(picture, 4, 2), observations):
        assert np.array_equal(cell[0], observation)
    assert {name: os.stat(os.path.join(noisy, name)).st_mtime_ns for name in os.listdir(noisy)} == before

@pytest.mark.parametrize('case, message', [
    ('no-grid', '--originals adds the originals to the --grid picture'),
    ('grid-in-data', 'the input --data='),
    ('grid-in-outdir', 'contains the output --grid='),
    ('grid-in-originals', 'the input --originals='),
    ('unrecorded', 'records no source images'),
    ('wrong-source', 'has no 00000/img'),
])
def test_grid_options_are_checked_before_any_work(case, message, experiment, inputs, tmp_path):
    outdir = tmp_path / 'out'
    data = inputs['obs'] if case == 'unrecorded' else experiment['noisy']
    other = tmp_path / 'other'
    make_image_dataset(str(other), num_images=3)
    grid = {'grid-in-data': os.path.join(data, 'grid.png'), 'grid-in-outdir': outdir / 'grid.png',
            'grid-in-originals': experiment['root'] / 'source' / 'grid.png'}.get(case, tmp_path / 'grid.png')
    args = ['--network', experiment['net'], '--data', data, '--outdir', outdir, '--steps=4',
            '--originals', other if case == 'wrong-source' else experiment['root'] / 'source']
    if case != 'no-grid':
        args += ['--grid', grid]
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert message in result.output
    assert not os.path.exists(grid) and not outdir.exists()  # Refused before the output directory is claimed.
