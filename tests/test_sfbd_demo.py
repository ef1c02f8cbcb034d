"""The demo's pieces, and the whole demo shrunk to seconds (the real one takes minutes)."""

import json
import math
import os

import numpy as np
import pytest
from click.testing import CliRunner

from dnnlib.util import EasyDict
from sfbd import report
from tools import demo, rounds

def test_blobs_are_deterministic_images():
    a, b = demo.draw_blobs(20, 8, seed=3), demo.draw_blobs(20, 8, seed=3)
    assert a.dtype == np.uint8 and a.shape == (20, 3, 8, 8) and np.array_equal(a, b)
    assert not np.array_equal(a, demo.draw_blobs(20, 8, seed=4))
    assert a.max() > 150 and np.median(a) < 30  # Bright blobs on a dark background.

def test_frechet_distance():
    rng = np.random.default_rng(0)
    x = rng.standard_normal([4000, 3])
    assert abs(demo.frechet_distance(x, x)) < 1e-9
    assert abs(demo.frechet_distance(x, x + [1, 0, 0]) - 1) < 1e-9  # A shift of the mean by 1.
    assert abs(demo.frechet_distance(x, 2 * x) - 3) < 0.1  # Unit variances against 4: 3 * (2 - 1)^2.

@pytest.mark.filterwarnings("ignore:Matrix is singular")  # 40 samples of 192 pixels.
def test_tiny_demo_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, 'DEMO', EasyDict(demo.DEMO, num_images=40, num_heldout=60, clean_count=8,
                                                    num_rounds=1, pretrain_mimg=0.00003, round_mimg=0.00003,
                                                    num_samples=40, sample_steps=3))
    monkeypatch.setattr(demo, 'TRAIN_ARGS', ['--arch=ddpmpp', '--cbase=8', '--cres=1', '--batch=16', '--augment=0',
                                             '--dropout=0', '--lr-rampup=0', '--tick=1', '--cache=0'])
    monkeypatch.setattr(demo, 'ONLINE_ARGS', ['--refresh-every=1', '--refresh-batch=4', '--steps=3'])
    results = demo.run_demo(str(tmp_path), device='cpu', verbose=False)
    assert [row['model'] for row in results['rows']] == ['(a) clean only (pretraining)', '(b) SFBD round 1',
                                                        "(b') Online SFBD, as long as the rounds",
                                                        '(c) naive: noisy as if clean']
    assert all(math.isfinite(row['fd']) and row['fd'] > 0 for row in results['rows'])
    assert all(row['seconds'] > 0 and row['cpu_seconds'] > 0 for row in results['rows'])
    # The cost columns: each run trains 2 steps of 16 images; round 1 denoises the 32 observations (sigma 0.4: 7 steps of
    # the 18-step grid, 13 evaluations), the online run 32 (the fill) + 2 x 4 of them (--steps=3: 2 steps left, 3 evaluations).
    assert [(row['training_image_passes'], row['denoising_evaluations']) for row in results['rows']] == \
        [(32, 0), (32, 32 * 13), (32, 40 * 3), (32, 0)]
    for name in ('demo.png', 'results.json', 'log.txt', 'sfbd/rounds.json', 'data/noisy/dataset.json', 'timings.json'):
        assert os.path.isfile(tmp_path / name)
    online = json.loads((tmp_path / 'online' / 'training_options.json').read_text())
    assert online['resume_pkl'] == str(tmp_path / results['rows'][0]['snapshot'])
    assert online['online_kwargs']['noisy'] == [str(tmp_path / 'data' / 'noisy')]

    # The demo's report of the SFBD run: its distances are the table's.
    report_files = ['report.html', 'fid.png', 'copies.png', 'loss.png', 'scores.json', 'samples-round-000.png',
                    'samples-round-001.png', 'pairs-round-000.png', 'pairs-round-001.png']
    assert all(os.path.isfile(tmp_path / 'report' / name) for name in report_files)
    scores = list(json.loads((tmp_path / 'report' / 'scores.json').read_text()).values())
    assert [s['fid'] for s in scores] == pytest.approx([row['fd'] for row in results['rows'][:2]], rel=1e-6)
    assert [[m['images'] for m in s['memorization']] for s in scores] == [[40, 40], [40, 40]]

    # A rerun trains nothing and measures the same models.
    calls = []
    monkeypatch.setattr(rounds, 'run_script', lambda *args, **kwargs: calls.append(args))
    again = demo.run_demo(str(tmp_path), device='cpu', verbose=False)
    assert calls == [] and [r['snapshot'] for r in again['rows']] == [r['snapshot'] for r in results['rows']]
    times = [(r['seconds'], r['cpu_seconds']) for r in results['rows']]
    assert [(r['seconds'], r['cpu_seconds']) for r in again['rows']] == times

    # python -m sfbd.report on the demo's output, as its help says: it writes the page and the
    # plots again and reuses every score (a new --outdir would score anew: tests/test_sfbd_report.py).
    for name in ('report.html', 'fid.png', 'copies.png', 'loss.png'):
        os.remove(tmp_path / 'report' / name)
    cli = ['--rounds', tmp_path / 'sfbd', '--ref', tmp_path / 'data' / 'heldout-pixels.npz', '--fid-features=pixel',
           '--train', tmp_path / 'data' / 'clean', '--train', tmp_path / 'data' / 'source', '--num=40', '--steps=3',
           '--device=cpu', '--outdir', tmp_path / 'report']
    result = CliRunner().invoke(report.main, [str(a) for a in cli])
    assert result.exit_code == 0, result.output
    assert result.stdout.count('reused') == 2 and 'scoring' not in result.stdout
    assert sorted(os.listdir(tmp_path / 'report')) == sorted(report_files)
    assert list(json.loads((tmp_path / 'report' / 'scores.json').read_text()).values()) == scores

def test_the_demo_says_done_only_at_the_end(tmp_path, monkeypatch, capsys):
    # The rounds are steps of the demo: their runs stood in for by empty snapshots, the demo stopped
    # at its next step (Online SFBD); nothing printed until then may say that it is done.
    monkeypatch.setattr(demo, 'DEMO', EasyDict(demo.DEMO, num_images=40, clean_count=8, num_rounds=2))
    class Stop(Exception):
        pass
    def fake_run_script(script, args, nproc=1, log=None):
        if any(a.startswith('--noisy=') for a in args) and script == 'train.py':
            raise Stop
        outdir = next(a.split('=', 1)[1] for a in args if a.startswith('--outdir='))
        os.makedirs(outdir, exist_ok=True)
        open(os.path.join(outdir, 'network-snapshot-000000.pkl' if script == 'train.py' else 'dataset.json'), 'w').close()
    monkeypatch.setattr(rounds, 'run_script', fake_run_script)
    with pytest.raises(Stop):
        demo.run_demo(str(tmp_path), device='cpu')
    out = capsys.readouterr().out
    assert 'Round 2: fine-tuning' in out and 'Online SFBD' in out and 'Done' not in out

# A harder problem (--sigma, --clean-count) is recorded with the seed: its folder is not continued
# with other settings, and an unknown setting is an error.
def test_settings_are_recorded_and_kept_apart(tmp_path, monkeypatch):
    from dnnlib.util import UserError
    monkeypatch.setattr(demo, 'DEMO', EasyDict(demo.DEMO, num_images=40, clean_count=8))
    class Stop(Exception):
        pass
    def stop(*_args, **_kwargs):
        raise Stop
    monkeypatch.setattr(rounds, 'run_script', stop)
    with pytest.raises(Stop):
        demo.run_demo(str(tmp_path), device='cpu', verbose=False, settings=dict(sigma=0.6, clean_count=4))
    recorded = json.loads((tmp_path / 'demo_options.json').read_text())
    assert (recorded['seed'], recorded['sigma'], recorded['clean_count']) == (0, 0.6, 4)
    with pytest.raises(UserError, match='--outdir'):
        demo.run_demo(str(tmp_path), device='cpu', verbose=False)
    with pytest.raises(ValueError, match='unknown settings'):
        demo.run_demo(str(tmp_path / 'other'), device='cpu', verbose=False, settings=dict(noise=1))
