"""memorization.py and sfbd/memorization.py: exact nearest neighbours, the copy criterion, its
outputs, generated samples, Inception features (a TorchScript stand-in) and bad input."""

import json
import os
import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import memorization
from dnnlib.util import UserError
from sfbd import memorization as mem
from sfbd.observations import DatasetWriter, dataset_fname, encode_png
from torch_utils.persistence import load_network

from sfbd_helpers import make_image_dataset, make_observation_set, random_observations, save_tiny_network
from test_fid import StandInDetector

#----------------------------------------------------------------------------
# A reference set of random images and samples of which a known subset are
# copies: exact ones, and ones off by up to three levels per pixel; the rest
# are new random images.

NUM_REFS, NUM_SAMPLES = 60, 40
EXACT, NEAR = [3, 17, 25], [5, 11, 30, 38]

def write_images(path, images):
    writer = DatasetWriter(path)
    for i, image in enumerate(images):
        writer.add(dataset_fname(i, '.png'), encode_png(image))
    writer.commit(dict(labels=None))
    return path

@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('mem')
    refs = make_image_dataset(str(root / 'refs'), NUM_REFS, seed=1)
    rng = np.random.default_rng(2)
    samples = rng.integers(0, 256, size=[NUM_SAMPLES, 3, 8, 8], dtype=np.uint8)
    source = {}
    for i in EXACT + NEAR:
        source[i] = int(rng.integers(NUM_REFS))
        samples[i] = refs[source[i]]
        if i in NEAR:
            samples[i] = np.clip(samples[i].astype(int) + rng.integers(-3, 4, size=samples[i].shape), 0, 255)
    write_images(str(root / 'samples'), samples)
    other = make_image_dataset(str(root / 'other.zip'), 30, seed=3)
    return dict(root=root, refs=str(root / 'refs'), samples=str(root / 'samples'), other=str(root / 'other.zip'),
                source=source, ref_images=refs, sample_images=samples, other_images=other)

def run(*args):
    return CliRunner().invoke(memorization.main, [str(a) for a in args])

def test_pixel_features_flag_exactly_the_copies(sets, tmp_path):
    for _rerun in range(2):  # A rerun into the same --outdir replaces the outputs.
        result = run('--images', sets['samples'], '--train', sets['refs'], '--train', sets['other'], '--features=pixel',
                     '--outdir', tmp_path / 'out', '--json', tmp_path / 'out' / 'images.json', '--device=cpu')
        assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / 'out' / 'images.json').read_text())
    copies = sorted(i for i in range(NUM_SAMPLES) if record['images'][2 * i]['copy'])
    assert copies == sorted(EXACT + NEAR)
    assert record['num_images'] == NUM_SAMPLES and record['num_copies'] == len(EXACT + NEAR)
    assert not any(entry['copy'] for entry in record['images'][1::2])  # Nothing copies the other set.

    # The record: names relative to their sets, the nearest reference of each copy, exact zeros.
    for i in EXACT + NEAR:
        entry = record['images'][2 * i]
        assert entry['image'] == f'00000/img{i:08d}.png' and entry['reference_set'] == sets['refs']
        assert entry['nearest'] == f'00000/img{sets["source"][i]:08d}.png'
        assert (entry['distance'] == 0) == (i in EXACT) and entry['ratio'] < 0.05
    assert all(record['images'][2 * i]['ratio'] > 0.6 for i in range(NUM_SAMPLES) if i not in EXACT + NEAR)
    summary = record['reference_sets'][0]
    assert (summary['references'], summary['images'], summary['copies']) == (NUM_REFS, NUM_SAMPLES, 7)

    # The table, and the figures.
    lines = result.stdout.splitlines()
    table = lines[lines.index(next(line for line in lines if line.startswith('reference set'))):][:3]
    assert table[1].split()[:4] == [sets['refs'], str(NUM_REFS), str(NUM_SAMPLES), '7'] and '17.50%' in table[1]
    assert table[2].split()[3] == '0'
    for name in ('pairs.png', 'distances.png'):
        with PIL.Image.open(tmp_path / 'out' / name) as img:
            assert img.size[0] > 500 and img.size[1] > 200

def test_threshold_and_inception_features(sets, tmp_path):
    # A threshold above the near copies' ratios and below the new images' keeps the same verdicts;
    # with threshold 1 every image is a copy of something.
    record = _check(sets, tmp_path, '--threshold=0.5')
    assert sorted(i for i, e in enumerate(record['images']) if e['copy']) == sorted(EXACT + NEAR)
    assert all(e['copy'] for e in _check(sets, tmp_path, '--threshold=1')['images'] if e['ratio'] < 1)

    # The detector's features: exact copies are at distance 0.
    detector = str(tmp_path / 'standin.pt')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.jit.save(torch.jit.script(StandInDetector()), detector)
    record = _check(sets, tmp_path, '--features=inception', f'--detector={detector}')
    assert all(record['images'][i]['copy'] and record['images'][i]['distance'] < 1e-6 for i in EXACT)
    assert record['features'] == 'inception'

def _check(sets, tmp_path, *options):
    out = tmp_path / 'check.json'
    result = run('--images', sets['samples'], '--train', sets['refs'], '--json', out, *options)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())

#----------------------------------------------------------------------------
# The search: exact against brute force, across block boundaries, ties to the
# lower index; the criterion with duplicated references.

@pytest.mark.parametrize('block_bytes', [1 << 28, 2048])
def test_nearest_two_is_exact(block_bytes):
    rng = np.random.default_rng(0)
    refs = torch.from_numpy(rng.standard_normal([97, 13]).astype(np.float32))
    queries = torch.cat([refs[[5, 40]], torch.from_numpy(rng.standard_normal([30, 13]).astype(np.float32))])
    distances, indices = mem.nearest_two(queries, refs, block_bytes=block_bytes)
    brute = ((queries[:, None, :].double() - refs[None].double()) ** 2).sum(-1)
    order = brute.argsort(dim=1, stable=True)[:, :2]
    assert torch.equal(indices, order)
    assert torch.allclose(distances, (brute.gather(1, order) / 13).sqrt(), rtol=1e-12, atol=0)
    assert distances[0, 0] == 0 and distances[1, 0] == 0

def test_duplicated_references_and_the_ratio():
    refs = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    distances, indices = mem.nearest_two(torch.tensor([[1.0, 0.0], [0.1, 0.0], [3.0, 3.0]]), refs)
    assert indices[0].tolist() == [1, 2] and distances[0].tolist() == [0, 0]
    ratio = mem.distance_ratio(distances)
    assert ratio[0] == 0 and abs(ratio[1] - 0.1 / 0.9) < 1e-7 and ratio[2] > 0.5

#----------------------------------------------------------------------------
# Samples generated from a network: the same seeds as a reference set of the
# network's own images are all exact copies, named as generate.py names them.

def test_network_samples(tmp_path, monkeypatch):
    pkl = save_tiny_network(str(tmp_path / 'net.pkl'))
    images = mem.sample_images(load_network(pkl), list(range(4, 12)), num_steps=4)
    write_images(str(tmp_path / 'own'), images)
    result = run('--network', pkl, '--seeds=4-11', '--steps=4', '--train', tmp_path / 'own', '--json', tmp_path / 'n.json')
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / 'n.json').read_text())
    assert [e['image'] for e in record['images']] == [f'{s:06d}.png' for s in range(4, 12)]
    assert all(e['copy'] and e['distance'] == 0 for e in record['images'])
    assert [e['nearest'] for e in record['images']] == [f'00000/img{i:08d}.png' for i in range(8)]
    # References of another shape are refused before any image is generated.
    write_images(str(tmp_path / 'big'), np.zeros([2, 3, 16, 16], np.uint8))
    monkeypatch.setattr(mem, 'generated_image_set', lambda *args, **kwargs: pytest.fail('generated'))
    result = run('--network', pkl, '--seeds=4-11', '--train', tmp_path / 'big')
    assert result.exit_code == 1 and 'pixel features need one shape' in result.output, result.output

#----------------------------------------------------------------------------
# --json replaces only memorization.py's own earlier output; any other file
# already there (another JSON file, a dataset zip) is refused and kept.

def test_json_replaces_only_its_own_output(sets, tmp_path):
    other_json, other_zip = tmp_path / 'results.json', tmp_path / 'data.zip'
    other_json.write_text('{"fid": 2.0}')
    other_zip.write_bytes(b'PK\x05\x06' + bytes(18))
    for path in (other_json, other_zip):
        before = path.read_bytes()
        result = run('--images', sets['samples'], '--train', sets['refs'], '--json', path, '--device=cpu')
        assert result.exit_code == 1, result.output
        assert f'Error: --json={path}: exists and is not an output of memorization.py' in result.output
        assert path.read_bytes() == before
    own = tmp_path / 'own.json'
    for threshold in ('0.5', '1'):  # A rerun with other options replaces its own record.
        result = run('--images', sets['samples'], '--train', sets['refs'], '--json', own, f'--threshold={threshold}')
        assert result.exit_code == 0, result.output
        assert json.loads(own.read_text())['threshold'] == float(threshold)
    assert sorted(os.listdir(tmp_path)) == ['data.zip', 'own.json', 'results.json']  # No temporaries left.

# A failure while writing (a full disk at the second figure) takes back what
# the run wrote: no JSON, no first figure, no folder it made. Over an earlier
# run's outputs, those stay as they were, all of them.
def test_a_failed_write_leaves_no_outputs(sets, tmp_path, monkeypatch):
    def full_disk(path, *_args):
        raise UserError(f'{path}: cannot write (No space left on device)')
    args = ['--images', sets['samples'], '--train', sets['refs'], '--json', tmp_path / 'figs' / 'r.json',
            '--outdir', tmp_path / 'figs']
    with monkeypatch.context() as patch:
        patch.setattr(mem, 'save_distance_histograms', full_disk)
        result = run(*args)
        assert result.exit_code == 1 and 'No space left on device' in result.output, result.output
        assert os.listdir(tmp_path) == []
    assert run(*args, '--threshold=0.5').exit_code == 0
    before = {name: (tmp_path / 'figs' / name).read_bytes() for name in os.listdir(tmp_path / 'figs')}
    assert sorted(before) == ['distances.png', 'pairs.png', 'r.json']
    monkeypatch.setattr(mem, 'save_json', full_disk)
    result = run(*args, '--threshold=0.9')
    assert result.exit_code == 1 and 'No space left on device' in result.output, result.output
    assert {name: (tmp_path / 'figs' / name).read_bytes() for name in os.listdir(tmp_path / 'figs')} == before

#----------------------------------------------------------------------------
# Bad input: one line naming the culprit, nothing written.

@pytest.mark.parametrize('make, args, message', [
    (None, ['--train', '{refs}'], 'exactly one of --images and --network'),
    (None, ['--images', '{samples}', '--network', 'x.pkl', '--train', '{refs}'], 'exactly one'),
    (None, ['--images', '{samples}', '--seeds=0-3', '--train', '{refs}'], '--seeds needs --network'),
    (None, ['--images', '{samples}', '--steps=3', '--train', '{refs}'], '--steps needs --network'),
    ('one', ['--images', '{samples}', '--train', '{bad}'], 'at least 2'),
    ('big', ['--images', '{samples}', '--train', '{bad}'], 'pixel features need one shape'),
    ('npy', ['--images', '{samples}', '--train', '{bad}'], 'is an observation set (noisy images, sigma 0.5'),
    (None, ['--images', '{samples}', '--train', '{root}/missing'], 'no such directory'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--threshold=2'], 'threshold'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--threshold=1/0'], 'fraction'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--detector=x.pt'], 'inception only'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--json={refs}/x.json'], 'is inside the input --train'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--outdir={refs}'], 'kept apart'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--outdir={other}'], 'is a file'),
    (None, ['--images', '{refs}', '--train', '{refs}'], 'are the same set'),
    (None, ['--images', '{samples}', '--train', '{refs}', '--train', '{refs}'], 'is given twice'),
])
def test_bad_input_is_one_clear_error(sets, tmp_path, make, args, message):
    bad = str(tmp_path / 'bad')
    if make == 'one':
        make_image_dataset(bad, 1)
    elif make == 'big':
        make_image_dataset(bad, 3, resolution=16)
    elif make == 'npy':
        make_observation_set(bad, random_observations(3))
    args = [a.format(refs=sets['refs'], samples=sets['samples'], root=sets['root'], bad=bad, other=sets['other'])
            for a in args]
    outputs = [] if any(a.startswith(('--json', '--outdir')) for a in args) else ['--json', tmp_path / 'x.json',
                                                                                '--outdir', tmp_path / 'figs']
    result = run(*args, *outputs)
    assert result.exit_code in (1, 2), result.output
    assert message in result.output and 'Traceback' not in result.output
    assert not os.path.exists(tmp_path / 'x.json') and not os.path.exists(tmp_path / 'figs')
    assert not os.path.exists(os.path.join(sets['refs'], 'x.json'))

# Under torchrun every process would do the whole job and write the same files: refused.
def test_several_processes_are_refused(sets, tmp_path, monkeypatch):
    monkeypatch.setenv('WORLD_SIZE', '2')
    result = run('--images', sets['samples'], '--train', sets['refs'], '--json', tmp_path / 'x.json')
    assert result.exit_code == 1 and 'run it without torchrun' in result.output, result.output
    assert not os.path.exists(tmp_path / 'x.json')

#----------------------------------------------------------------------------
