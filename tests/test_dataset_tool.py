"""Tests for dataset_tool.py: convert from CIFAR-10, MNIST, folders and zips; info; errors."""

import gzip
import io
import json
import os
import pickle
import subprocess
import sys
import tarfile
import zipfile

import numpy as np
import PIL.Image
import pytest
from click.testing import CliRunner

import dataset_tool
from training.dataset import ImageFolderDataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#----------------------------------------------------------------------------
# Synthetic sources.

def make_cifar_tarball(path, per_batch=4, seed=0):
    """A tarball with the CIFAR-10 python layout; returns the training images [N, 32, 32, 3] and labels."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    with tarfile.open(path, 'w:gz') as tar:
        for name in [f'data_batch_{k}' for k in range(1, 6)] + ['test_batch']:
            data = rng.integers(0, 256, size=[per_batch, 3072], dtype=np.uint8)
            batch_labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
            # Named as numpy 1.x names them, like the published file.
            payload = pickle.dumps({'data': data, 'labels': batch_labels}, protocol=2).replace(b'numpy._core.', b'numpy.core.')
            info = tarfile.TarInfo(f'cifar-10-batches-py/{name}')
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
            if name != 'test_batch':
                images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
                labels += batch_labels
    return np.concatenate(images), labels

def make_mnist(folder, n=3):
    os.makedirs(folder, exist_ok=True)
    images = np.random.default_rng(0).integers(0, 256, size=[n, 28, 28], dtype=np.uint8)
    labels = np.arange(n, dtype=np.uint8) % 10
    with gzip.open(os.path.join(folder, 'train-images-idx3-ubyte.gz'), 'wb') as f:
        f.write((2051).to_bytes(4, 'big') + b''.join(x.to_bytes(4, 'big') for x in [n, 28, 28]) + images.tobytes())
    with gzip.open(os.path.join(folder, 'train-labels-idx1-ubyte.gz'), 'wb') as f:
        f.write((2049).to_bytes(4, 'big') + n.to_bytes(4, 'big') + labels.tobytes())
    return images, labels

def save_image(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(img).save(path)

def run(*args):
    return CliRunner().invoke(dataset_tool.cli, list(args))

def assert_fails(result, *fragments):
    assert result.exit_code == 1, result.output
    message = result.stderr.strip().splitlines()[-1] # After any progress bar.
    assert message.startswith('Error: ')
    for fragment in fragments:
        assert fragment in message

def leftovers(folder):
    return [name for name in os.listdir(folder) if name.endswith('.tmp')]

#----------------------------------------------------------------------------
# convert.

def test_convert_cifar10_to_zip(tmp_path):
    src = str(tmp_path / 'cifar-10-python.tar.gz')
    images, labels = make_cifar_tarball(src)
    dest = str(tmp_path / 'out' / 'cifar.zip')
    result = run('convert', f'--source={src}', f'--dest={dest}')
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(dest) as zf:
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        names = sorted(zf.namelist())
        meta = json.loads(zf.read('dataset.json'))
    assert names[:2] == ['00000/img00000000.png', '00000/img00000001.png'] and len(names) == 21
    assert meta['labels'][3] == ['00000/img00000003.png', labels[3]]
    ds = ImageFolderDataset(dest, use_labels=True)
    assert len(ds) == 20 and ds.image_shape == [3, 32, 32] and ds.label_dim == max(labels) + 1
    assert np.array_equal(ds[7][0], images[7].transpose(2, 0, 1))
    assert leftovers(tmp_path / 'out') == []

def test_edm_command_line_without_a_subcommand_converts(tmp_path):
    # EDM's own line, `dataset_tool.py --source=... --dest=...`, gives what convert gives, byte for byte.
    src = str(tmp_path / 'cifar-10-python.tar.gz')
    make_cifar_tarball(src)
    for args in [['--source', src], [f'--source={src}']]:
        dest = tmp_path / f'edm{len(args)}'
        assert run(*args, f'--dest={dest}', '--max-images=5').exit_code == 0
    assert run('convert', f'--source={src}', f'--dest={tmp_path / "convert"}', '--max-images=5').exit_code == 0
    def files(folder):
        return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob('*') if path.is_file()}
    assert files(tmp_path / 'edm2') == files(tmp_path / 'edm1') == files(tmp_path / 'convert') != {}
    assert_fails(run(f'--source={tmp_path / "nothing"}', f'--dest={tmp_path / "x"}'), 'nothing')
    assert 'Commands:' in run('--help').output  # --help is still the group's.

def test_convert_thousand_per_folder_and_max_images(tmp_path):
    src = str(tmp_path / 'cifar-10-python.tar.gz')
    make_cifar_tarball(src, per_batch=201)
    result = run('convert', f'--source={src}', f'--dest={tmp_path / "out"}', '--max-images=1002')
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(tmp_path / 'out')) == ['00000', '00001', 'dataset.json']
    assert sorted(os.listdir(tmp_path / 'out' / '00001')) == ['img00001000.png', 'img00001001.png']
    assert len(os.listdir(tmp_path / 'out' / '00000')) == 1000

def test_convert_mnist_file_or_folder(tmp_path):
    images, labels = make_mnist(str(tmp_path / 'mnist'))
    for source in [tmp_path / 'mnist', tmp_path / 'mnist' / 'train-images-idx3-ubyte.gz']:
        dest = tmp_path / f'out-{source.name}'
        assert run('convert', f'--source={source}', f'--dest={dest}').exit_code == 0
        ds = ImageFolderDataset(str(dest), use_labels=True)
        assert ds.image_shape == [1, 32, 32] and len(ds) == 3
        assert np.array_equal(ds[1][0][0, 2:30, 2:30], images[1]) and ds[1][0][0, :2].max() == 0
        assert ds[2][1].argmax() == labels[2]

def test_convert_folder_with_crop_and_folder_labels(tmp_path):
    rng = np.random.default_rng(0)
    for name in ['cat/a.png', 'cat/b.jpg', 'dog/c.png']:
        save_image(str(tmp_path / 'src' / name), rng.integers(0, 256, size=[30, 40, 3], dtype=np.uint8))
    result = run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out.zip"}',
        '--transform=center-crop', '--resolution=16x16')
    assert result.exit_code == 0, result.output
    ds = ImageFolderDataset(str(tmp_path / 'out.zip'), use_labels=True)
    assert ds.image_shape == [3, 16, 16]
    assert [int(ds[i][1].argmax()) for i in range(3)] == [0, 0, 1] # cat, cat, dog

    # Numbered folders (EDM's layout, generate.py --subdirs) hold chunks of images, not classes.
    for name in ['000000/a.png', '001000/b.png']:
        save_image(str(tmp_path / 'gen' / name), rng.integers(0, 256, size=[16, 16, 3], dtype=np.uint8))
    assert run('convert', f'--source={tmp_path / "gen"}', f'--dest={tmp_path / "gen.zip"}').exit_code == 0
    with zipfile.ZipFile(tmp_path / 'gen.zip') as z:
        assert json.loads(z.read('dataset.json')) == dict(labels=None)

    # An image beside the class folders has no class: refused, not every label dropped.
    save_image(str(tmp_path / 'src' / 'loose.png'), rng.integers(0, 256, size=[30, 40, 3], dtype=np.uint8))
    assert_fails(run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out2.zip"}'),
                 'loose.png: an image beside the class folders (cat, dog)')
    assert not (tmp_path / 'out2.zip').exists()

def test_convert_zip_keeps_dataset_json_labels(tmp_path):
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / 'src.zip', 'w') as zf:
        for i in range(3):
            buf = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, size=[8, 8], dtype=np.uint8)).save(buf, format='png')
            zf.writestr(f'x/{i}.png', buf.getvalue())
        zf.writestr('dataset.json', json.dumps({'labels': [[f'x/{i}.png', [i, 0.5]] for i in range(3)]}))
    assert run('convert', f'--source={tmp_path / "src.zip"}', f'--dest={tmp_path / "out"}').exit_code == 0
    ds = ImageFolderDataset(str(tmp_path / 'out'), use_labels=True)
    assert ds.image_shape == [1, 8, 8] and np.array_equal(ds[2][1], np.float32([2, 0.5]))

# A zip made of a folder (`zip -r photos.zip photos/`) keeps its labels: the one folder that holds
# everything is the top, with its dataset.json or its class folders.
@pytest.mark.parametrize('layout', ['dataset.json', 'class folders'])
def test_convert_a_zip_of_one_folder_keeps_its_labels(tmp_path, layout):
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(tmp_path / 'src.zip', 'w') as zf:
        for i, name in enumerate(['cat/a.png', 'dog/b.png', 'dog/c.png']):
            buf = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, size=[8, 8, 3], dtype=np.uint8)).save(buf, format='png')
            zf.writestr(f'photos/{name if layout == "class folders" else f"{i}.png"}', buf.getvalue())
        if layout == 'dataset.json':
            zf.writestr('photos/dataset.json', json.dumps({'labels': [[f'{i}.png', 2 - i] for i in range(3)]}))
    assert run('convert', f'--source={tmp_path / "src.zip"}', f'--dest={tmp_path / "out"}').exit_code == 0
    ds = ImageFolderDataset(str(tmp_path / 'out'), use_labels=True)
    expected = [2, 1, 0] if layout == 'dataset.json' else [0, 1, 1]
    assert [int(ds[i][1].argmax()) for i in range(3)] == expected

# "labels": [] names no label for any image: refused as training refuses it, not dropped to null.
def test_convert_refuses_an_empty_label_list(tmp_path):
    save_image(str(tmp_path / 'src' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    (tmp_path / 'src' / 'dataset.json').write_text('{"labels": []}')
    assert_fails(run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out"}'), 'no label for a.png')
    assert not (tmp_path / 'out').exists()

def test_convert_center_crop_wide_skips_small_images(tmp_path):
    save_image(str(tmp_path / 'src' / 'a.png'), np.full([40, 64, 3], 200, np.uint8))
    save_image(str(tmp_path / 'src' / 'b.png'), np.full([8, 8, 3], 100, np.uint8))
    result = run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out"}',
        '--transform=center-crop-wide', '--resolution=32x16')
    assert result.exit_code == 0, result.output
    ds = ImageFolderDataset(str(tmp_path / 'out'))
    assert len(ds) == 1 and ds.image_shape == [3, 32, 32]
    assert ds[0][0][:, 0].max() == 0 and ds[0][0][:, 16].min() > 150 # Black bars above and below.

# As in EDM, both crops write RGB, also for grayscale sources (three equal channels); without a
# transform, grayscale stays one channel.
@pytest.mark.parametrize('transform, size', [('center-crop', '16x16'), ('center-crop-wide', '16x8')])
def test_crops_of_grayscale_images_are_rgb(tmp_path, transform, size):
    gray = np.random.default_rng(0).integers(0, 256, size=[20, 24], dtype=np.uint8)
    PIL.Image.fromarray(gray).save(tmp_path / 'src.png')
    (tmp_path / 'src').mkdir()
    os.replace(tmp_path / 'src.png', tmp_path / 'src' / 'a.png')
    result = run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out"}', f'--transform={transform}',
                 f'--resolution={size}')
    assert result.exit_code == 0, result.output
    out = np.asarray(PIL.Image.open(tmp_path / 'out' / '00000' / 'img00000000.png'))
    assert out.shape == (16, 16, 3) and np.array_equal(out[..., 0], out[..., 2]) and out.max() > 0

#----------------------------------------------------------------------------
# convert: errors name the culprit, exit with status 1 and leave nothing behind.

def test_convert_errors(tmp_path):
    save_image(str(tmp_path / 'wide' / 'a.png'), np.zeros([8, 16, 3], np.uint8))
    assert_fails(run('convert', f'--source={tmp_path / "wide"}', f'--dest={tmp_path / "o1"}'), 'a.png', 'square')
    save_image(str(tmp_path / 'mixed' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_image(str(tmp_path / 'mixed' / 'b.png'), np.zeros([16, 16, 3], np.uint8))
    assert_fails(run('convert', f'--source={tmp_path / "mixed"}', f'--dest={tmp_path / "o2.zip"}'), 'b.png')
    save_image(str(tmp_path / 'odd' / 'a.png'), np.zeros([12, 12, 3], np.uint8))
    assert_fails(run('convert', f'--source={tmp_path / "odd"}', f'--dest={tmp_path / "o3"}'), 'a.png', 'power of two')
    save_image(str(tmp_path / 'corrupt' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    (tmp_path / 'corrupt' / 'b.png').write_bytes(b'garbage')
    assert_fails(run('convert', f'--source={tmp_path / "corrupt"}', f'--dest={tmp_path / "o4"}'), 'b.png')
    os.makedirs(tmp_path / 'empty')
    assert_fails(run('convert', f'--source={tmp_path / "empty"}', f'--dest={tmp_path / "o5"}'), 'empty', 'no image files')
    save_image(str(tmp_path / 'gray-rgb' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_image(str(tmp_path / 'gray-rgb' / 'b.png'), np.zeros([8, 8], np.uint8))
    assert_fails(run('convert', f'--source={tmp_path / "gray-rgb"}', f'--dest={tmp_path / "o6"}'),
                 'b.png: is grayscale, but ', 'a.png is RGB', '--transform=center-crop makes every image RGB')
    for name in ['o1', 'o2.zip', 'o3', 'o4', 'o5', 'o6']:
        assert not (tmp_path / name).exists()
    assert leftovers(tmp_path) == []

def test_convert_source_errors(tmp_path):
    assert_fails(run('convert', f'--source={tmp_path / "missing"}', f'--dest={tmp_path / "o"}'), 'missing')
    (tmp_path / 'notes.txt').write_text('x')
    assert_fails(run('convert', f'--source={tmp_path / "notes.txt"}', f'--dest={tmp_path / "o"}'), 'notes.txt', 'unknown source')
    with tarfile.open(tmp_path / 'cifar-10-python.tar.gz', 'w:gz'):
        pass
    assert_fails(run('convert', f'--source={tmp_path / "cifar-10-python.tar.gz"}', f'--dest={tmp_path / "o"}'), 'data_batch_1')
    make_mnist(str(tmp_path / 'mnist'))
    os.remove(tmp_path / 'mnist' / 'train-labels-idx1-ubyte.gz')
    assert_fails(run('convert', f'--source={tmp_path / "mnist"}', f'--dest={tmp_path / "o"}'), 'train-labels-idx1-ubyte.gz')
    os.makedirs(tmp_path / 'floats')
    np.save(tmp_path / 'floats' / 'a.npy', np.zeros([3, 8, 8], np.float32))
    assert_fails(run('convert', f'--source={tmp_path / "floats"}', f'--dest={tmp_path / "o"}'), '.npy')
    assert not (tmp_path / 'o').exists()

def test_cifar_pickles_may_only_hold_arrays(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ('echo pwned',))
    with tarfile.open(tmp_path / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        payload = pickle.dumps({'data': Evil(), 'labels': []}, protocol=2)
        info = tarfile.TarInfo('cifar-10-batches-py/data_batch_1')
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    result = run('convert', f'--source={tmp_path / "cifar-10-python.tar.gz"}', f'--dest={tmp_path / "o"}')
    assert_fails(result, 'cifar-10-python.tar.gz', 'refusing to load')
    assert 'pwned' not in result.output

# CIFAR-10's labels are class indices 0-9; anything else in a batch (text, NaN,
# a fraction, -1, 10^9) is refused before any image is written.
@pytest.mark.parametrize('bad', [['x', 'y'], [1.5, float('nan')], [-1, 3], [10**9, 1], [3, 10]])
def test_cifar_labels_must_be_classes(tmp_path, bad):
    with tarfile.open(tmp_path / 'cifar-10-python.tar.gz', 'w:gz') as tar:
        for k in range(1, 6):
            data = np.zeros([2, 3072], dtype=np.uint8)
            payload = pickle.dumps({'data': data, 'labels': bad if k == 3 else [0, 1]}, protocol=2)
            info = tarfile.TarInfo(f'cifar-10-batches-py/data_batch_{k}')
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    result = run('convert', f'--source={tmp_path / "cifar-10-python.tar.gz"}', f'--dest={tmp_path / "o.zip"}')
    assert_fails(result, 'data_batch_3 holds labels that are not CIFAR-10 classes (integers 0-9)')
    assert not (tmp_path / 'o.zip').exists()

def test_convert_option_and_destination_errors(tmp_path):
    src = str(tmp_path / 'cifar-10-python.tar.gz')
    make_cifar_tarball(src, per_batch=1)
    os.makedirs(tmp_path / 'full')
    (tmp_path / 'full' / 'keep.txt').write_text('x')
    assert_fails(run('convert', f'--source={src}', f'--dest={tmp_path / "full"}'), 'full', 'already exists')
    assert os.listdir(tmp_path / 'full') == ['keep.txt']
    (tmp_path / 'old.zip').write_bytes(b'old')
    assert_fails(run('convert', f'--source={src}', f'--dest={tmp_path / "old.zip"}'), 'old.zip', 'already exists')
    assert (tmp_path / 'old.zip').read_bytes() == b'old'
    assert_fails(run('convert', f'--source={src}', f'--dest={tmp_path / "o"}', '--transform=center-crop'), '--resolution')
    assert run('convert', f'--source={src}', f'--dest={tmp_path / "o"}', '--resolution=big').exit_code == 2
    assert run('convert', f'--source={src}', f'--dest={tmp_path / "o"}', '--max-images=0').exit_code == 2
    assert not (tmp_path / 'o').exists() and leftovers(tmp_path) == []

# Bad input found anywhere in a source is one line naming it, and nothing is
# written: labels that training would refuse (convert and split check them as
# training reads them, rather than dropping or copying them), a zip member
# whose CRC fails, a dataset.json nested too deeply to parse, an infinite
# noise level, an image that does not decode (merge copies bytes, but checks
# them), option values that cannot make a dataset.
def _bad_sources(root):
    names = [f'a{i}.png' for i in range(4)]
    for name in names:
        save_image(str(root / 'imgs' / name), np.full([8, 8, 3], 7, np.uint8))
    def with_json(folder, text):
        for name in names:
            save_image(str(root / folder / name), np.full([8, 8, 3], 7, np.uint8))
        (root / folder / 'dataset.json').write_text(text)
    with_json('strlabels', json.dumps({'labels': [[n, 'cat'] for n in names]}))
    with_json('nolabel', json.dumps({'labels': [[n, 0] for n in names[:3]]}))
    with_json('deep', '{"labels":' + '[' * 100000 + ']' * 100000 + '}')
    with_json('inf', '{"labels": null, "sigma": Infinity}')
    run('convert', f'--source={root / "imgs"}', f'--dest={root / "imgs.zip"}')
    data = bytearray((root / 'imgs.zip').read_bytes())
    member = zipfile.ZipFile(root / 'imgs.zip').getinfo('00000/img00000002.png')
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    data[start + 60:start + 70] = bytes(b ^ 0xff for b in data[start + 60:start + 70])
    (root / 'crc.zip').write_bytes(bytes(data))
    with_json('cut', json.dumps({'labels': None}))
    full = (root / 'cut' / 'a1.png').read_bytes()
    (root / 'cut' / 'a1.png').write_bytes(full[:len(full) // 2])

BAD_SOURCES = [
    (['convert', '--source=<strlabels>', '--dest=<out>'], 'each label must be an integer class'),
    (['convert', '--source=<nolabel>', '--dest=<out>'], 'no label for a3.png'),
    (['split', '--source=<strlabels>', '--clean=<out>', '--noisy=<out2>', '--clean-count=1', '--sigma=0.5'], 'each label must be'),
    (['info', '--source=<crc.zip>'], 'Bad CRC-32'),
    (['merge', '--source=<crc.zip>', '--dest=<out>'], 'Bad CRC-32'),
    (['info', '--source=<deep>'], 'not valid JSON'),
    (['info', '--source=<inf>'], 'must be a finite non-negative number'),
    (['merge', '--source=<cut>', '--dest=<out>'], 'a1.png: cannot decode the image'),
    (['convert', '--source=<imgs>', '--dest=<out>', '--transform=center-crop-wide', '--resolution=8x16'], 'W >= H'),
    (['split', '--source=<imgs.zip>', '--clean=<out>', '--noisy=<out2>', '--clean-count=1', '--sigma=1e39'], 'at most 1e+30'),
]

def test_bad_sources_are_one_line_and_write_nothing(tmp_path):
    _bad_sources(tmp_path)
    for args, message in BAD_SOURCES:
        args = [a.replace('<out>', str(tmp_path / 'out')).replace('<out2>', str(tmp_path / 'out2')) for a in args]
        args = [a.replace(a[a.index('<'):a.index('>') + 1], str(tmp_path / a[a.index('<') + 1:a.index('>')]))
                if '<' in a else a for a in args]
        assert_fails(run(*args), message)
        assert not (tmp_path / 'out').exists() and not (tmp_path / 'out2').exists() and leftovers(tmp_path) == []
    result = run('convert', f'--source={tmp_path / "imgs"}', f'--dest={tmp_path / "out"}', '--resolution=99999x8')
    assert result.exit_code == 2 and 'at most 8192 pixels a side' in result.output

#----------------------------------------------------------------------------
# info.

def test_info_on_converted_cifar(tmp_path):
    src = str(tmp_path / 'cifar-10-python.tar.gz')
    make_cifar_tarball(src)
    run('convert', f'--source={src}', f'--dest={tmp_path / "c.zip"}')
    result = run('info', f'--source={tmp_path / "c.zip"}')
    assert result.exit_code == 0, result.output
    lines = dict(line.split(':', 1) for line in result.stdout.splitlines())
    assert lines['images'].strip() == '20' and lines['resolution'].strip() == '32' and lines['channels'].strip() == '3'
    assert lines['labels'].strip().endswith('classes') and 'uint8' in lines['type']
    assert lines['range'].strip() == '[0, 255]' and lines['sigma'].strip() == 'not recorded'

def test_info_on_float_observations(tmp_path):
    os.makedirs(tmp_path / 'noisy' / '00000')
    arrays = [np.full([3, 4, 4], v, np.float32) for v in [-1.5, 0.25, 2.0]]
    for i, arr in enumerate(arrays):
        np.save(tmp_path / 'noisy' / '00000' / f'img{i:08d}.npy', arr)
    names = [f'00000/img{i:08d}.npy' for i in range(3)]
    (tmp_path / 'noisy' / 'dataset.json').write_text(json.dumps({'labels': [[n, [0.1, 0.2]] for n in names], 'sigma': 0.59}))
    result = run('info', f'--source={tmp_path / "noisy"}', '--json')
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary['images'] == 3 and summary['resolution'] == 4 and summary['sigma'] == 0.59
    assert summary['type'].startswith('float32') and summary['labels'] == 'vectors of 2'
    assert summary['min'] == -1.5 and summary['max'] == 2.0

def test_info_errors_name_the_file(tmp_path):
    save_image(str(tmp_path / 'ds' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_image(str(tmp_path / 'ds' / 'b.png'), np.zeros([8, 8], np.uint8))
    assert_fails(run('info', f'--source={tmp_path / "ds"}'), 'b.png', 'channels')

def test_command_line_process(tmp_path):
    # The real entry point: message on stderr, non-zero status.
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'dataset_tool.py'), 'info', f'--source={tmp_path / "nothing"}'],
        capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode != 0 and proc.stderr.startswith('Error: ') and 'nothing' in proc.stderr

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# A file name with a newline (or bytes that are not UTF-8) stays on the error's one line, escaped.

def test_a_file_name_with_a_newline_is_one_line(tmp_path):
    save_image(str(tmp_path / 'src' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    (tmp_path / 'src' / 'b\nc.png').write_bytes(b'garbage')
    result = run('convert', f'--source={tmp_path / "src"}', f'--dest={tmp_path / "out"}')
    assert_fails(result, 'b\\nc.png: cannot decode the image (not an image format that PIL can read)')
    assert result.stderr.endswith('(not an image format that PIL can read)\n')
    assert not (tmp_path / 'out').exists()
