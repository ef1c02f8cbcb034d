"""sfbd.report on a hand-made run (tiny random networks as the rounds' snapshots, written
stats.jsonl files): what is reused and what is scored again, the loss of the whole run, rounds not
finished, and bad input. The report on a real (tiny) SFBD run is tested with the demo."""

import json
import os

import numpy as np
import pytest
from click.testing import CliRunner

from metrics.fid import save_ref_stats
from sfbd import report
from tools import report as report_lib
from sfbd.memorization import sample_images
from torch_utils.persistence import load_network

from sfbd_helpers import make_image_dataset, make_observation_set, random_observations, save_tiny_network

#----------------------------------------------------------------------------
# A run directory as sfbd.rounds leaves it: round 0 and 1 finished, round 2
# training. Each run counts its images from 0.

@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('report')
    rounds = root / 'sfbd'
    entries = []
    for k, train_dir in enumerate(['round-000-pretrain', 'round-001/train', 'round-002/train']):
        os.makedirs(rounds / train_dir)
        with open(rounds / train_dir / 'stats.jsonl', 'w') as f:
            for tick in range(1, 4):
                f.write(json.dumps({'Loss/loss': {'mean': 1.0 / (k + tick)}, 'Progress/kimg': {'mean': 10.0 * tick}}) + '\n')
            f.write('{"Loss/loss": {"mean": 0.1}, "Progress/ki')  # A line being written.
        snapshot = f'{train_dir}/network-snapshot-{30 * (k + 1):06d}.pkl'
        if k < 2:
            save_tiny_network(str(rounds / snapshot), seed=k)
        entries.append(dict(round=k, train_dir=train_dir, snapshot=snapshot if k < 2 else None))
    (rounds / 'rounds.json').write_text(json.dumps(dict(options={}, rounds=entries)))
    clean = make_image_dataset(str(root / 'clean'), 12, seed=5)
    pixels = clean.reshape(12, -1) / 127.5 - 1
    save_ref_stats(str(root / 'ref.npz'), pixels.mean(0), np.cov(pixels, rowvar=False))
    return dict(root=root, rounds=str(rounds), clean=str(root / 'clean'), ref=str(root / 'ref.npz'))

def run(run_dir, *extra):
    args = ['--rounds', run_dir['rounds'], '--ref', run_dir['ref'], '--fid-features=pixel', '--train', run_dir['clean'],
            '--num=16', '--steps=3', '--device=cpu', '--outdir', run_dir['root'] / 'report', *extra]
    result = CliRunner().invoke(report.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout

def test_scores_are_reused_until_something_changes(run_dir):
    out = run(run_dir)
    assert out.count('scoring') == 2 and 'not finished' in out
    out = run(run_dir)
    assert out.count('reused') == 2 and 'scoring' not in out
    assert 'scoring' not in run(run_dir, '--S_churn=0')  # generate.py's default, spelled out.
    assert run(run_dir, '--threshold=0.5').count('scoring') == 2  # Other settings: scored again.
    assert run(run_dir).count('scoring') == 2  # Their figures are not these settings': drawn again.

    # A changed reference set, or a changed snapshot, is scored again.
    make_image_dataset(str(run_dir['root'] / 'extra'), 3, seed=9)
    os.replace(run_dir['root'] / 'extra' / '00000' / 'img00000002.png', os.path.join(run_dir['clean'], '00000', 'img00000012.png'))
    assert run(run_dir).count('scoring') == 2
    save_tiny_network(os.path.join(run_dir['rounds'], 'round-001/train/network-snapshot-000060.pkl'), seed=7)
    assert run(run_dir).count('scoring') == 1

    # The report and its files; the samples are generate.py's for seeds 0-15.
    outdir = run_dir['root'] / 'report'
    for name in ('report.html', 'fid.png', 'copies.png', 'loss.png', 'samples-round-000.png', 'pairs-round-001.png'):
        assert os.path.getsize(outdir / name) > 1000
    page = (outdir / 'report.html').read_text()
    assert 'src="fid.png"' in page and 'not finished' in page and 'pretraining' in page
    # The header counts the rounds after pretraining, names paths relative to the page, and says what a column means.
    assert 'pretraining and 2 rounds (1 not finished);' in page and str(run_dir['root']) not in page
    assert report_lib.describe_runs([]) == 'no step finished yet (the pretraining has not ended)'
    assert '<code>../sfbd</code>' in page and '<b>copies of clean</b>: of the samples, those whose nearest image' in page
    scores = json.loads((outdir / 'scores.json').read_text())
    assert all(s['num'] == 16 and s['memorization'][0]['images'] == 16 for s in scores.values())

# A sample grid drawn for other settings (here 64 samples, without scores)
# is not shown under these: the scores are kept, the grid is drawn again.
def test_a_grid_of_other_settings_is_drawn_again(run_dir, tmp_path):
    def invoke(*args):
        result = CliRunner().invoke(report.main, [str(a) for a in ['--rounds', run_dir['rounds'], '--steps=3', '--device=cpu',
                                                                   '--outdir', tmp_path / 'r', *args]])
        assert result.exit_code == 0, result.output
        return result.stdout
    scored = ['--ref', run_dir['ref'], '--fid-features=pixel', '--num=8']
    assert invoke(*scored).count('scoring') == 2
    assert invoke().count('scoring') == 2  # The grids alone: 64 samples each.
    out = invoke(*scored)
    assert out.count('scoring') == 2 and 'reused' not in out
    assert report_lib.figure_key(str(tmp_path / 'r' / 'samples-round-000.png')) in json.loads((tmp_path / 'r' / 'scores.json').read_text())
    assert invoke(*scored).count('reused') == 2

def test_loss_of_the_whole_run_and_the_sample_grid(run_dir):
    curves = report_lib.loss_curves(run_dir['rounds'], json.loads(open(os.path.join(run_dir['rounds'], 'rounds.json')).read())['rounds'])
    assert [c.round for c in curves] == [0, 1, 2] and [c.start for c in curves] == [0, 30, 60]
    assert curves[2].kimg.tolist() == [70, 80, 90] and curves[1].loss.tolist() == [1 / 2, 1 / 3, 1 / 4]
    net = load_network(os.path.join(run_dir['rounds'], 'round-000-pretrain/network-snapshot-000030.pkl'))
    images = sample_images(net, list(range(64)), num_steps=3)
    grid = report_lib.grid_image(images)
    assert grid.shape[1] >= 512 and grid.shape[1] % (8 * 10 - 2) == 0  # 8 cells of 8 pixels and gaps, enlarged.

@pytest.mark.parametrize('args, message', [
    (['--rounds', '{root}'], 'no rounds.json'),
    (['--rounds', '{online}'], 'an Online SFBD run (online.json), which has no rounds to report'),
    (['--rounds', '{rounds}', '--train', '{root}/missing'], 'no such dataset'),
    (['--rounds', '{rounds}', '--ref', '{small}', '--fid-features=pixel'], 'statistics of 5 features, but --fid-features=pixel gives 192'),
    (['--rounds', '{rounds}', '--threshold=0'], 'threshold'),
    (['--rounds', '{rounds}', '--train', '{root}/clean', '--outdir', '{root}/clean/figures'], 'is inside the input --train'),
    (['--rounds', '{rounds}', '--outdir', '{root}/clean'], 'holds a dataset'),
    # Checked before round 0 is sampled: sets of another image size, observations, a set twice.
    (['--rounds', '{rounds}', '--train', '{big}'], 'images are [3, 16, 16] (C, H, W), the samples of round-000-pretrain/network-snapshot-000030.pkl [3, 8, 8]'),
    (['--rounds', '{rounds}', '--train', '{noisy}'], 'is an observation set'),
    (['--rounds', '{rounds}', '--train', '{root}/clean', '--train', '{root}/clean/'], 'are the same set; give each set once'),
])
def test_bad_input_is_one_clear_error(run_dir, tmp_path, args, message):
    save_ref_stats(str(tmp_path / 'small.npz'), np.zeros(5), np.eye(5))
    make_image_dataset(str(tmp_path / 'big'), 4, resolution=16)
    make_observation_set(str(tmp_path / 'noisy'), random_observations(4))
    (tmp_path / 'online').mkdir()
    (tmp_path / 'online' / 'online.json').write_text('{"options": {}}')
    args = [a.format(root=run_dir['root'], rounds=run_dir['rounds'], small=tmp_path / 'small.npz', big=tmp_path / 'big',
                     noisy=tmp_path / 'noisy', online=tmp_path / 'online') for a in args]
    if '--outdir' not in args:
        args += ['--outdir', str(tmp_path / 'out')]
    result = CliRunner().invoke(report.main, args + ['--device=cpu', '--num=4'])
    assert result.exit_code in (1, 2) and message in result.output and 'Traceback' not in result.output
    assert not os.path.exists(tmp_path / 'out')  # Refused before any sampling or output.

#----------------------------------------------------------------------------
