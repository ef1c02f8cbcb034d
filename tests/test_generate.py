"""generate.py end to end: EDM's images for EDM's pickle, layouts and errors."""

import os
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from training.generation import rank_batches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def run_generate(*args, cwd=REPO):
    return subprocess.run([sys.executable, os.path.join(REPO, 'generate.py'), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)

def read_png(path):
    image = np.asarray(PIL.Image.open(path))
    return image[:, :, None] if image.ndim == 2 else image

#----------------------------------------------------------------------------

def test_reproduces_edm_images(tmp_path, fixtures_dir):
    reference = torch.load(fixtures_dir / 'edm-ddpmpp-tiny-generate.pt', weights_only=True)['edm-ddpmpp-tiny']
    result = run_generate(f'--network={fixtures_dir / "edm-ddpmpp-tiny-snapshot.pkl"}', f'--outdir={tmp_path}',
                          '--seeds=0-7', f'--steps={reference["steps"]}', '--batch=3', '--device=cpu')
    assert result.returncode == 0, result.stderr
    for seed, expected in zip(reference['seeds'], reference['images_u8']):
        image = read_png(tmp_path / f'{seed:06d}.png').transpose(2, 0, 1).astype(np.int16)
        assert np.abs(image - expected.numpy().astype(np.int16)).max() <= 1, f'seed {seed}'

def test_subdirs_and_class(tmp_path, fixtures_dir):
    result = run_generate(f'--network={fixtures_dir / "edm-ddpmpp-tiny-snapshot.pkl"}', f'--outdir={tmp_path}',
                          '--seeds=999-1000', '--steps=2', '--subdirs', '--class=3')
    assert result.returncode == 0, result.stderr
    assert (tmp_path / '000000' / '000999.png').is_file() and (tmp_path / '001000' / '001000.png').is_file()

def test_class_on_unconditional_network_is_a_clear_error(tmp_path):
    from torch_utils import persistence
    from training import networks
    net = networks.EDMPrecond(img_resolution=8, img_channels=1, model_type='SongUNet', model_channels=16,
                              channel_mult=[1], num_blocks=1, attn_resolutions=[])
    pkl = tmp_path / 'uncond.pkl'
    persistence.save_network_pickle(str(pkl), dict(ema=net))
    result = run_generate(f'--network={pkl}', f'--outdir={tmp_path / "out"}', '--seeds=0', '--class=1', '--steps=2')
    assert result.returncode != 0
    assert 'unconditional' in result.stderr and 'Traceback' not in result.stderr
    assert not (tmp_path / 'out' / '000000.png').exists()

    # Grayscale networks write L-mode PNGs.
    result = run_generate(f'--network={pkl}', f'--outdir={tmp_path / "out"}', '--seeds=0-1', '--steps=2')
    assert result.returncode == 0, result.stderr
    assert PIL.Image.open(tmp_path / 'out' / '000001.png').mode == 'L'

# A rerun of the same command resumes: whole images stay as they are, a
# missing or cut-short one is generated again (the same image, up to the last
# level: its batch differs).
def test_a_rerun_resumes(tmp_path, fixtures_dir):
    args = [f'--network={fixtures_dir / "edm-ddpmpp-tiny-snapshot.pkl"}', f'--outdir={tmp_path / "out"}', '--seeds=0-5',
            '--steps=4']
    assert run_generate(*args).returncode == 0
    first = {p.name: np.asarray(PIL.Image.open(p)).astype(int) for p in (tmp_path / 'out').glob('*.png')}
    kept = {p.name: p.stat().st_mtime_ns for p in (tmp_path / 'out').glob('*.png')}
    (tmp_path / 'out' / '000002.png').unlink()
    cut = tmp_path / 'out' / '000004.png'
    cut.write_bytes(cut.read_bytes()[:-30])
    result = run_generate(*args)
    assert result.returncode == 0 and '4 of 6 images are in' in result.stdout and 'Generating 2 images' in result.stdout
    for p in (tmp_path / 'out').glob('*.png'):
        assert np.abs(np.asarray(PIL.Image.open(p)).astype(int) - first[p.name]).max() <= 1
        assert (p.stat().st_mtime_ns == kept[p.name]) == (p.name not in ('000002.png', '000004.png'))

# Each seed names one image: a list that repeats one is refused (fid.py's seed
# sets would not be disjoint, and the counts would not match the files), while
# other integer lists (--cres) may repeat values.
def test_seed_lists_name_each_seed_once():
    from dnnlib.util import UserError, parse_int_list
    assert parse_int_list('3,0-2,4-6') == [3, 0, 1, 2, 4, 5, 6]
    assert parse_int_list('2,2,2') == [2, 2, 2]
    for text in ('7,7', '0-5,5-9', '0-9,3', '10-20,0-100'):
        with pytest.raises(UserError, match='is given more than once'):
            parse_int_list(text, distinct=True)
    assert parse_int_list('5,-1,0-4', distinct=True) == [5, -1, 0, 1, 2, 3, 4]

# A pickle whose "ema" is a bare U-Net cannot sample: one line, nothing written.
def test_a_network_that_cannot_sample_is_a_clear_error(tmp_path):
    from torch_utils import persistence
    from training import networks
    unet = networks.SongUNet(img_resolution=8, in_channels=3, out_channels=3, model_channels=16, channel_mult=[1],
                             num_blocks=1, attn_resolutions=[])
    pkl = tmp_path / 'unet.pkl'
    persistence.save_network_pickle(str(pkl), dict(ema=unet))
    result = run_generate(f'--network={pkl}', f'--outdir={tmp_path / "out"}', '--seeds=0', '--steps=2')
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert lines[0].startswith(f'Error: {pkl}: "ema" is not a preconditioned network') and 'SongUNet' in lines[0]
    assert not (tmp_path / 'out').exists()

def test_missing_network_is_a_clear_error(tmp_path):
    result = run_generate(f'--network={tmp_path / "nope.pkl"}', f'--outdir={tmp_path}')
    assert result.returncode != 0 and 'nope.pkl: no such file' in result.stderr

# --seeds (generate.py, memorization.py, fid.py): 64-bit integers, a bounded
# count, ASCII digits; a bad list is a usage error naming the option.
@pytest.mark.parametrize('seeds, message', [('0-99999999999', 'more than 100,000,000 values'),
                                            ('99999999999999999999', '64-bit integers'),
                                            ('\u0663', 'is not an integer'), ('5-2', 'ends before it starts'),
                                            ('1,1,0-2', '1 is given more than once'),
                                            ('0-9,20-29,5-6', '5 is given more than once')])
def test_seed_lists_that_cannot_be_generated(tmp_path, seeds, message):
    from click.testing import CliRunner
    import generate
    import memorization
    for command, args in ((generate.main, [f'--outdir={tmp_path / "out"}']), (memorization.main, ['--train=x'])):
        result = CliRunner().invoke(command, ['--network=net.pkl', f'--seeds={seeds}', *args])
        assert result.exit_code == 2 and "Invalid value for '--seeds'" in result.output and message in result.output
    assert not (tmp_path / 'out').exists()

@pytest.mark.parametrize('num_seeds, batch, world', [(10, 3, 1), (10, 3, 2), (5, 64, 4)])
def test_batches_cover_every_seed_once(num_seeds, batch, world):
    seeds = list(range(100, 100 + num_seeds))
    per_rank = [rank_batches(seeds, batch, r, world) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1  # Same number of batches on every rank.
    flat = sorted(s for batches in per_rank for b in batches for s in b)
    assert flat == seeds
    assert all(len(b) <= batch for batches in per_rank for b in batches)

#----------------------------------------------------------------------------
# --fast. On the CPU its settings change no arithmetic: the same images. With
# the GPU's settings (the network in bfloat16, channels-last; batches padded
# as for a compiled network, which is not compiled here), measured on the CPU
# for EDM's fixture network: mean 0.50, max 4 levels from the faithful images
# (10 steps; 0.42 and 3 for 32 seeds at 18 steps). The tolerance is mean 1,
# max 8 levels.

def compare_pngs(dir_a, dir_b) -> tuple[float, int]:
    names = sorted(n for n in os.listdir(dir_a) if n.endswith('.png'))
    assert names and names == sorted(n for n in os.listdir(dir_b) if n.endswith('.png'))
    diffs = np.stack([np.abs(read_png(os.path.join(dir_a, n)).astype(int) - read_png(os.path.join(dir_b, n)).astype(int))
                      for n in names])
    return float(diffs.mean()), int(diffs.max())

def test_fast_path_gives_the_same_images_on_the_cpu(tmp_path, fixtures_dir):
    pkl = fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl'
    for name, extra in (('faithful', []), ('fast', ['--fast'])):
        result = run_generate(f'--network={pkl}', f'--outdir={tmp_path / name}', '--seeds=0-9', '--steps=6',
                              '--batch=4', '--device=cpu', *extra)
        assert result.returncode == 0, result.stderr
    assert compare_pngs(tmp_path / 'faithful', tmp_path / 'fast') == (0, 0)

def test_fast_path_with_gpu_settings_stays_within_tolerance(tmp_path, fixtures_dir):
    import dataclasses
    from torch_utils import fast as fast_lib
    from torch_utils.persistence import load_network
    from training.generation import generate_to_dir
    torch.set_num_threads(1)
    pkl = str(fixtures_dir / 'edm-ddpmpp-tiny-snapshot.pkl')
    seeds = list(range(7))  # Batches of 4 and 3: the second is padded to 4.
    assert generate_to_dir(load_network(pkl), seeds, str(tmp_path / 'faithful'), max_batch_size=4,
                           sampler_kwargs=dict(num_steps=10)) == 7
    settings = fast_lib.fast_settings('cpu', dtype='bfloat16', channels_last=True, compile=True)
    net = fast_lib.prepare_sampling_network(load_network(pkl), dataclasses.replace(settings, compile=False))
    assert generate_to_dir(net, seeds, str(tmp_path / 'fast'), max_batch_size=4, sampler_kwargs=dict(num_steps=10),
                           fast=settings) == 7
    mean, worst = compare_pngs(tmp_path / 'faithful', tmp_path / 'fast')
    print(f'bfloat16 network: mean {mean:.3f}, max {worst} levels')
    assert 0 < mean <= 1 and worst <= 8

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# Scripts written for EDM import its sampler and helpers from generate.py.

def test_edm_names_are_importable_from_generate():
    import generate
    from training import sampler
    assert generate.edm_sampler is sampler.edm_sampler and generate.ablation_sampler is sampler.ablation_sampler
    assert generate.StackedRandomGenerator is sampler.StackedRandomGenerator
    assert generate.parse_int_list('1,2,5-7') == [1, 2, 5, 6, 7]
