"""SFBD's data: the observation format, `split` and `merge`."""

import json
import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from dnnlib.util import UserError
from sfbd.dataset_commands import merge, merge_datasets, split, split_dataset
from sfbd.observations import ObservationSet, dataset_fname
from training.dataset import ImageFolderDataset

from sfbd_helpers import make_image_dataset, make_observation_set, read_json, read_png_dataset

#----------------------------------------------------------------------------
# Split a labelled dataset of random images and match every output back to its
# source image: clean images by equality, observations by nearest neighbour
# (random images lie far apart compared with the noise).

def _split(tmp_path, seed=7, sigma=0.3, zip_noisy=False, **kwargs):
    run = len(os.listdir(tmp_path))  # A fresh pair of names for each call.
    clean, noisy = str(tmp_path / f'clean{run}'), str(tmp_path / (f'noisy{run}' + ('.zip' if zip_noisy else '')))
    counts = split_dataset(str(tmp_path / 'src'), clean, noisy, sigma, seed, verbose=False, **kwargs)
    return clean, noisy, counts

@pytest.fixture
def source(tmp_path):
    return make_image_dataset(str(tmp_path / 'src'), num_images=200, num_classes=5)

def test_split_partitions_the_source_and_adds_noise_of_the_given_level(tmp_path, source):
    sigma = 0.3
    clean, noisy, counts = _split(tmp_path, sigma=sigma, clean_fraction=0.1)
    assert counts == dict(clean=20, noisy=180)
    source_labels = np.arange(200) % 5

    # Clean part: PNGs equal to source images, labels carried along.
    clean_images = read_png_dataset(clean)
    clean_labels = dict(read_json(os.path.join(clean, 'dataset.json'))['labels'])
    flat_source = source.reshape(200, -1)
    clean_ids = []
    for name, image in sorted(clean_images.items()):
        match = np.nonzero((flat_source == image.transpose(2, 0, 1).reshape(-1)).all(axis=1))[0]
        assert len(match) == 1
        clean_ids.append(int(match[0]))
        assert clean_labels[name] == source_labels[match[0]]

    # Noisy part: float32 observations; nothing else is written.
    files = sorted(os.path.relpath(os.path.join(r, f), noisy) for r, _d, fs in os.walk(noisy) for f in fs)
    assert all(f.endswith('.npy') for f in files if f != 'dataset.json') and len(files) == 181
    obs = ObservationSet(noisy)
    assert obs.sigma == sigma and len(obs) == 180
    y, labels = obs.load(list(range(len(obs))))
    assert y.dtype == torch.float32
    y = y.numpy().reshape(180, -1).astype(np.float64)
    x = flat_source / 127.5 - 1
    nearest = ((y[:, None, :] - x[None, :, :]) ** 2).sum(-1).argmin(axis=1)
    assert len(set(nearest.tolist())) == 180
    assert sorted(nearest.tolist() + clean_ids) == list(range(200))
    assert (labels.numpy().argmax(axis=1) == source_labels[nearest]).all()

    # The noise: mean 0, standard deviation sigma, not clipped.
    residual = y - x[nearest]
    assert abs(residual.mean()) < 4 * sigma / np.sqrt(residual.size)
    assert abs(residual.std() / sigma - 1) < 0.02
    assert y.max() > 1 and y.min() < -1

    # Each part's dataset.json names the source file of every image (names only), matching the
    # source images found above.
    for part, ids in ((clean, clean_ids), (noisy, nearest.tolist())):
        record = read_json(os.path.join(part, 'dataset.json'))['split']
        assert record['source'] == os.path.abspath(tmp_path / 'src') and record['seed'] == 7
        assert record['part'] == ('clean' if part == clean else 'noisy')
        names = [name for name, _ in record['source_names']]
        assert names == sorted(read_png_dataset(clean)) if part == clean else names == obs.fnames
        assert [src for _, src in record['source_names']] == [dataset_fname(i, '.png') for i in ids]
    assert obs.source_names([0, 5]) == [dataset_fname(nearest[0], '.png'), dataset_fname(nearest[5], '.png')]

def test_split_is_fixed_by_the_seed(tmp_path, source):
    a_clean, a_noisy, _ = _split(tmp_path, seed=3, clean_count=30, noise_seed=11)
    b_clean, b_noisy, _ = _split(tmp_path, seed=3, clean_count=30, zip_noisy=True, noise_seed=11)
    c_clean, _c_noisy, _ = _split(tmp_path, seed=4, clean_count=30, noise_seed=11)
    a_images, b_images, c_images = read_png_dataset(a_clean), read_png_dataset(b_clean), read_png_dataset(c_clean)
    assert len(a_images) == 30 and all(np.array_equal(a_images[k], b_images[k]) for k in a_images)
    assert not all(np.array_equal(a_images[k], c_images[k]) for k in a_images)
    a, b = ObservationSet(a_noisy), ObservationSet(b_noisy)
    assert np.array_equal(a.load(list(range(170)))[0].numpy(), b.load(list(range(170)))[0].numpy())
    assert read_json(os.path.join(a_noisy, 'dataset.json'))['split']['noise'] == 'seeded'
    assert a.split['id'] == b.split['id']  # The same pixels: the same set.

# The release's defect in another form: noise that follows from what the set records (the seed, the
# source names) can be regenerated and subtracted. Without --noise-seed the noise comes from secret
# randomness: two splits of one seed share their clean part, not their noise, and neither the recorded
# seed nor any small one regenerates it.
def test_published_observations_do_not_give_back_their_originals(tmp_path, source):
    from sfbd.dataset_commands import noise_rng
    a_clean, a_noisy, _ = _split(tmp_path, seed=3, clean_count=30)
    b_clean, b_noisy, _ = _split(tmp_path, seed=3, clean_count=30)
    assert read_png_dataset(a_clean).keys() == read_png_dataset(b_clean).keys()
    a, b = ObservationSet(a_noisy), ObservationSet(b_noisy)
    ya, yb = a.load([0])[0].numpy()[0].astype(np.float64), b.load([0])[0].numpy()[0].astype(np.float64)
    assert not np.allclose(ya, yb)
    metadata = read_json(os.path.join(a_noisy, 'dataset.json'))
    assert metadata['split']['noise'] == 'secret' and 'noise_seed' not in json.dumps(metadata)
    assert a.split['id'] != b.split['id']  # Other pixels: another set, though names, sizes and labels agree.
    source_index = int(metadata['split']['source_names'][0][1].split('img')[1].split('.')[0])
    original = source[source_index].astype(np.float64) / 127.5 - 1
    def undo(y, key):
        return y - 0.3 * noise_rng(key, source_index).standard_normal(y.shape)
    for key in range(20):  # The recorded seed and other small keys.
        assert np.abs(undo(ya, key) - original).max() > 0.5
    # What this guards against: a seeded set (an experiment's) gives its originals back to its seed.
    _clean, seeded, _ = _split(tmp_path, seed=3, clean_count=30, noise_seed=7)
    assert np.abs(undo(ObservationSet(seeded).load([0])[0].numpy()[0].astype(np.float64), 7) - original).max() < 1e-6

def test_split_without_labels_and_its_cli(tmp_path):
    make_image_dataset(str(tmp_path / 'plain'), num_images=10, channels=1)
    result = CliRunner().invoke(split, ['--source', str(tmp_path / 'plain'), '--clean', str(tmp_path / 'c.zip'),
                                        '--noisy', str(tmp_path / 'n'), '--clean-count=2', '--sigma=0.5'])
    assert result.exit_code == 0, result.output
    metadata = read_json(str(tmp_path / 'n' / 'dataset.json'))
    assert metadata['sigma'] == 0.5 and metadata['labels'] is None and len(metadata['split']['source_names']) == 8
    assert len(ImageFolderDataset(str(tmp_path / 'c.zip'))) == 2
    assert ObservationSet(str(tmp_path / 'n')).image_shape == [1, 8, 8]

#----------------------------------------------------------------------------
# Per-image noise levels: --sigma=LO:HI draws each observation's level
# uniformly and independently of the image; the noise draw is the same as
# with one level, only scaled.

def test_split_with_a_range_gives_each_observation_its_own_level(tmp_path, source):
    _clean, fixed, _ = _split(tmp_path, seed=5, sigma=0.5, clean_count=20, noise_seed=6)
    _clean, ranged, _ = _split(tmp_path, seed=5, sigma=(0.2, 0.8), clean_count=20, noise_seed=6)
    _clean, again, _ = _split(tmp_path, seed=5, sigma=(0.2, 0.8), clean_count=40, zip_noisy=True, noise_seed=6)
    a, b, c = ObservationSet(fixed), ObservationSet(ranged), ObservationSet(again)
    assert b.sigma is None and len(b.sigmas) == 180
    assert 0.2 <= b.sigmas.min() and b.sigmas.max() < 0.8 and b.sigmas.std() > 0.1
    levels = read_json(os.path.join(ranged, 'dataset.json'))['sigma']
    assert list(levels) == b.fnames and np.array_equal(np.array(list(levels.values())), b.sigmas)

    # The same source image gets the same level and the same noise draw, whatever the clean count.
    x = source.reshape(200, -1) / 127.5 - 1
    def noise(obs):
        y = obs.load(list(range(len(obs))))[0].numpy().reshape(len(obs), -1).astype(np.float64)
        index = ((y[:, None, :] - x[None, :, :]) ** 2).sum(-1).argmin(axis=1)
        return dict(zip(index.tolist(), y - x[index])), dict(zip(index.tolist(), obs.sigmas))
    (ea, _), (eb, sb), (ec, sc) = noise(a), noise(b), noise(c)
    for i in eb:
        assert np.allclose(eb[i] / sb[i], ea[i] / 0.5, atol=1e-5)
        if i in ec:
            assert sc[i] == sb[i] and np.array_equal(ec[i], eb[i])

    # The levels carry no information about the image: here, none about its brightness.
    brightness = np.array([x[i].mean() for i in sorted(eb)])
    assert abs(np.corrcoef(brightness, [sb[i] for i in sorted(eb)])[0, 1]) < 0.25

def test_split_range_on_the_command_line(tmp_path, source):
    result = CliRunner().invoke(split, ['--source', str(tmp_path / 'src'), '--clean', str(tmp_path / 'c'),
                                        '--noisy', str(tmp_path / 'n'), '--clean-count=10', '--sigma=0.3:0.6'])
    assert result.exit_code == 0, result.output
    assert 'sigma 0.3 to 0.6, per image' in result.output
    assert ObservationSet(str(tmp_path / 'n')).sigma_range[0] >= 0.3
    for bad in ['0.6:0.3', '0.3:0.3', 'a:b', '0', '-1:2', '0.1:0.2:0.3', 'nan', '0.5:', ':0.5', ':']:
        result = CliRunner().invoke(split, ['--source', str(tmp_path / 'src'), '--clean', str(tmp_path / 'c2'),
                                            '--noisy', str(tmp_path / 'n2'), '--clean-count=10', f'--sigma={bad}'])
        assert result.exit_code == 2 and '--sigma' in result.output, (bad, result.output)
        if bad in ('0.5:', ':0.5', ':'):  # A range with an end missing is named as such.
            assert 'give one noise level or a range LO:HI' in result.output, (bad, result.output)
    assert not os.path.exists(tmp_path / 'c2') and not os.path.exists(tmp_path / 'n2')

    # info reports the range of the levels.
    import dataset_tool
    result = CliRunner().invoke(dataset_tool.cli, ['info', '--source', str(tmp_path / 'n')])
    lo, hi = ObservationSet(str(tmp_path / 'n')).sigma_range
    assert result.exit_code == 0 and f'per image, {lo:g} to {hi:g}' in result.output, result.output
    result = CliRunner().invoke(dataset_tool.cli, ['info', '--source', str(tmp_path / 'n'), '--json'])
    summary = json.loads(result.stdout)
    assert summary['sigma'] is None and (summary['sigma_min'], summary['sigma_max']) == (lo, hi)

@pytest.mark.parametrize('sigma, message', [
    (lambda names: {n: 0.3 for n in names[:-1]}, 'no noise level for 00000/img00000002.npy'),
    (lambda names: {**{n: 0.3 for n in names}, 'extra.npy': 0.3}, 'names extra.npy'),
    (lambda names: {**{n: 0.3 for n in names}, names[1]: -1}, 'of 00000/img00000001.npy must be'),
    (lambda names: {**{n: 0.3 for n in names}, names[1]: 'x'}, 'of 00000/img00000001.npy must be'),
    (lambda names: {**{n: 0.3 for n in names}, names[1]: 0}, 'of 00000/img00000001.npy'),
    (lambda names: [0.3, 0.3, 0.3], 'mapping from file names'),
])
def test_bad_per_image_levels_name_the_file(tmp_path, sigma, message):
    names = [f'00000/img{i:08d}.npy' for i in range(3)]
    make_observation_set(str(tmp_path / 'o'), np.zeros([3, 1, 4, 4], np.float32),
                         metadata=dict(sigma=sigma(names), labels=None))
    with pytest.raises(UserError, match=message):
        ObservationSet(str(tmp_path / 'o'))

@pytest.mark.parametrize('args, message', [
    (['--clean-count=5', '--clean-fraction=0.1'], 'exactly one'),
    ([], 'exactly one'),
    (['--clean-count=200'], 'non-empty'),
    (['--clean-fraction=0.001'], 'non-empty'),
])
def test_split_rejects_bad_counts(tmp_path, source, args, message):
    result = CliRunner().invoke(split, ['--source', str(tmp_path / 'src'), '--clean', str(tmp_path / 'c'),
                                        '--noisy', str(tmp_path / 'n'), '--sigma=0.5', *args])
    assert result.exit_code == 1 and message in result.output
    assert not os.path.exists(tmp_path / 'c') and not os.path.exists(tmp_path / 'n')

def test_split_never_overwrites(tmp_path, source):
    os.makedirs(tmp_path / 'n')
    with pytest.raises(UserError, match='already exists'):
        split_dataset(str(tmp_path / 'src'), str(tmp_path / 'c'), str(tmp_path / 'n'), 0.5, clean_count=3, verbose=False)
    assert not os.path.exists(tmp_path / 'c')
    assert [f for f in os.listdir(tmp_path) if f.startswith('.')] == []
    # A split stopped between its two renames left one part alone: the rerun says so.
    os.rmdir(tmp_path / 'n')
    clean, noisy, _ = _split(tmp_path, clean_count=3, zip_noisy=True)
    os.remove(noisy)
    with pytest.raises(UserError, match=r'--clean=.*: is the clean part of an earlier split, and --noisy=.* does not exist'):
        split_dataset(str(tmp_path / 'src'), clean, noisy, 0.5, clean_count=3, verbose=False)

#----------------------------------------------------------------------------
# Merge: images one after another, renamed uniquely, labels (and sigma) kept.

def test_merge_round_trip(tmp_path):
    a = make_image_dataset(str(tmp_path / 'a'), num_images=7, num_classes=3, seed=1)
    b = make_image_dataset(str(tmp_path / 'b.zip'), num_images=1005, num_classes=4, seed=2)
    result = CliRunner().invoke(merge, ['--source', str(tmp_path / 'a'), '--source', str(tmp_path / 'b.zip'),
                                        '--dest', str(tmp_path / 'm')])
    assert result.exit_code == 0, result.output
    merged = ImageFolderDataset(str(tmp_path / 'm'), use_labels=True)
    assert len(merged) == 1012 and merged.label_dim == 4
    images = np.concatenate([a, b])
    labels = np.concatenate([np.arange(7) % 3, np.arange(1005) % 4])
    for i in [0, 6, 7, 1006, 1011]:
        image, label = merged[i]
        assert np.array_equal(image, images[i]) and label.argmax() == labels[i]
    names = [name for name, _label in read_json(str(tmp_path / 'm' / 'dataset.json'))['labels']]
    assert len(set(names)) == 1012 and names[1011] == '00001/img00001011.png'

def test_merge_refuses_a_set_given_twice(tmp_path):
    make_image_dataset(str(tmp_path / 'a'), num_images=3)
    result = CliRunner().invoke(merge, ['--source', str(tmp_path / 'a'), '--source', f'{tmp_path}/./a/',
                                        '--dest', str(tmp_path / 'm')])
    assert result.exit_code == 1 and 'are the same set; give each set once' in result.output, result.output
    assert not (tmp_path / 'm').exists()

def test_merge_keeps_the_noise_level_of_observation_sets(tmp_path):
    arrays = np.zeros([3, 1, 4, 4], np.float32)
    make_observation_set(str(tmp_path / 'o1'), arrays, sigma=0.2)
    make_observation_set(str(tmp_path / 'o2'), arrays, sigma=0.2)
    make_observation_set(str(tmp_path / 'o3'), arrays, sigma=0.3)
    assert merge_datasets([str(tmp_path / 'o1'), str(tmp_path / 'o2')], str(tmp_path / 'm.zip'), verbose=False) == 6
    assert ObservationSet(str(tmp_path / 'm.zip')).sigma == 0.2

    # Sets of different levels merge into one with a level per image, under the new names.
    merge_datasets([str(tmp_path / 'o1'), str(tmp_path / 'o3'), str(tmp_path / 'm.zip')], str(tmp_path / 'x'), verbose=False)
    merged = ObservationSet(str(tmp_path / 'x'))
    assert merged.sigma is None and merged.sigmas.tolist() == [0.2] * 3 + [0.3] * 3 + [0.2] * 6
    assert sorted(read_json(str(tmp_path / 'x' / 'dataset.json'))['sigma']) == merged.fnames

    # ... and a merge of per-image sets keeps each image's level.
    merge_datasets([str(tmp_path / 'x'), str(tmp_path / 'o3')], str(tmp_path / 'y'), verbose=False)
    assert ObservationSet(str(tmp_path / 'y')).sigmas.tolist() == merged.sigmas.tolist() + [0.3] * 3

    # A float set without a noise level does not mix with observation sets.
    make_observation_set(str(tmp_path / 'plain'), arrays, sigma=None)
    with pytest.raises(UserError, match='noise level'):
        merge_datasets([str(tmp_path / 'o1'), str(tmp_path / 'plain')], str(tmp_path / 'z'), verbose=False)
    assert not os.path.exists(tmp_path / 'z')

@pytest.mark.parametrize('second, message', [
    (dict(resolution=16), 'images are'),
    (dict(num_classes=0), 'labels'),
])
def test_merge_rejects_mismatched_parts(tmp_path, second, message):
    make_image_dataset(str(tmp_path / 'a'), num_images=3, num_classes=2)
    make_image_dataset(str(tmp_path / 'b'), num_images=3, **{'num_classes': 2, **second})
    with pytest.raises(UserError, match=message):
        merge_datasets([str(tmp_path / 'a'), str(tmp_path / 'b')], str(tmp_path / 'm'), verbose=False)
    assert not os.path.exists(tmp_path / 'm')

#----------------------------------------------------------------------------

def test_a_set_of_per_image_levels_is_no_image_dataset(tmp_path):
    # The checks that keep observations out of FID and out of the clean data see per-image levels too.
    from metrics import fid as fid_stats
    names = [f'00000/img{i:08d}.npy' for i in range(3)]
    make_observation_set(str(tmp_path / 'o'), np.zeros([3, 3, 4, 4], np.float32),
                         metadata=dict(sigma=dict(zip(names, [0.2, 0.5, 0.3])), labels=None))
    assert ImageFolderDataset(str(tmp_path / 'o')).sigma_text == 'per image, 0.2 to 0.5'
    with pytest.raises(UserError, match='is an observation set .noisy, sigma per image, 0.2 to 0.5'):
        fid_stats.open_image_dataset(str(tmp_path / 'o'))
