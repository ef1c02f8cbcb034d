"""Tests for training/dataset.py: layouts, labels, float .npy data, unions, subsets, flips and errors."""

import io
import json
import os
import pickle
import warnings
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch

from dnnlib.util import UserError
from training.dataset import ImageFolderDataset, UnionDataset, images_to_float

#----------------------------------------------------------------------------
# Builders for small datasets on disk.

def random_images(n, res=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=[n, res, res, channels], dtype=np.uint8)

def save_png(path, img):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    PIL.Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img).save(path, compress_level=0)

def write_png_dataset(root, images, labels=None, sigma=None, names=None):
    names = names or [f'{i // 1000:05d}/img{i:08d}.png' for i in range(len(images))]
    for name, img in zip(names, images):
        save_png(os.path.join(root, name), img)
    write_json(root, names, labels, sigma)
    return names

def write_npy_dataset(root, arrays, labels=None, sigma=None):
    names = [f'00000/img{i:08d}.npy' for i in range(len(arrays))]
    for name, arr in zip(names, arrays):
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        np.save(os.path.join(root, name), arr)
    write_json(root, names, labels, sigma)
    return names

def write_json(root, names, labels, sigma):
    if labels is None and sigma is None:
        return
    meta = dict(labels=None if labels is None else [[n, l] for n, l in zip(names, labels)])
    if sigma is not None:
        meta['sigma'] = sigma
    with open(os.path.join(root, 'dataset.json'), 'w') as f:
        json.dump(meta, f)

def zip_dir(root, zip_path):
    with zipfile.ZipFile(zip_path, 'w', compression=zipfile.ZIP_STORED) as zf:
        for dirpath, _dirs, files in os.walk(root):
            for fname in files:
                full = os.path.join(dirpath, fname)
                zf.write(full, os.path.relpath(full, root).replace(os.sep, '/'))
    return zip_path

#----------------------------------------------------------------------------
# Layouts.

def test_directory_layout_in_sorted_order(tmp_path):
    images = random_images(4)
    names = ['b/x.png', 'a/z/q.png', 'a/y.png', 'c.png']
    write_png_dataset(tmp_path / 'ds', images, names=names)
    ds = ImageFolderDataset(str(tmp_path / 'ds'))
    order = sorted(range(4), key=lambda i: names[i])
    assert len(ds) == 4 and ds.name == 'ds'
    assert ds.image_shape == [3, 8, 8] and ds.resolution == 8 and ds.num_channels == 3
    assert not ds.has_labels and ds.label_shape == [0] and ds.label_dim == 0
    assert not ds.is_float and ds.sigma is None
    for idx, src in enumerate(order):
        image, label = ds[idx]
        assert image.dtype == np.uint8 and np.array_equal(image, images[src].transpose(2, 0, 1))
        assert label.dtype == np.float32 and label.shape == (0,)

def test_zip_matches_directory(tmp_path):
    images = random_images(5)
    write_png_dataset(tmp_path / 'ds', images, labels=[0, 1, 2, 1, 0])
    a = ImageFolderDataset(str(tmp_path / 'ds'), use_labels=True)
    b = ImageFolderDataset(zip_dir(tmp_path / 'ds', str(tmp_path / 'data.zip')), use_labels=True)
    assert b.name == 'data' and len(b) == len(a) == 5
    for idx in range(5):
        assert np.array_equal(a[idx][0], b[idx][0]) and np.array_equal(a[idx][1], b[idx][1])
    b.close()

def test_grayscale_and_jpeg(tmp_path):
    write_png_dataset(tmp_path / 'gray', random_images(2, channels=1))
    assert ImageFolderDataset(str(tmp_path / 'gray'))[0][0].shape == (1, 8, 8)
    os.makedirs(tmp_path / 'jpg')
    PIL.Image.fromarray(random_images(1)[0]).save(tmp_path / 'jpg' / 'a.jpg')
    assert ImageFolderDataset(str(tmp_path / 'jpg'))[0][0].shape == (3, 8, 8)

def test_integer_labels_are_one_hot(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(3), labels=[2, 0, 4])
    ds = ImageFolderDataset(str(tmp_path / 'ds'), use_labels=True)
    assert ds.has_labels and ds.has_onehot_labels and ds.label_shape == [5] and ds.label_dim == 5
    assert np.array_equal(ds.get_label(0), np.eye(5, dtype=np.float32)[2])
    assert ds[2][1].dtype == np.float32 and ds[2][1].argmax() == 4
    assert ds.get_details(0).raw_label == 2
    assert ImageFolderDataset(str(tmp_path / 'ds')).label_dim == 0 # use_labels=False ignores them.

def test_vector_labels(tmp_path):
    labels = [[0.5, -1.0], [1.5, 2.0]]
    write_png_dataset(tmp_path / 'ds', random_images(2), labels=labels)
    ds = ImageFolderDataset(str(tmp_path / 'ds'), use_labels=True)
    assert not ds.has_onehot_labels and ds.label_shape == [2]
    assert np.array_equal(ds[1][1], np.float32([1.5, 2.0]))

def test_npy_float_dataset(tmp_path):
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal([3, 8, 8]).astype(np.float32) * 1.5 for _ in range(3)]
    arrays[2] = arrays[2].astype(np.float64)
    write_npy_dataset(tmp_path / 'ds', arrays, sigma=0.59)
    ds = ImageFolderDataset(str(tmp_path / 'ds'))
    assert ds.is_float and ds.sigma == 0.59 and ds.image_shape == [3, 8, 8]
    for idx in range(3):
        image, _label = ds[idx]
        assert image.dtype == np.float32 and np.allclose(image, arrays[idx])
    batch = torch.utils.data.default_collate([ds[0], ds[1]])[0]
    assert torch.equal(images_to_float(batch), batch)

def test_sigma_without_labels(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(2), sigma=0.2)
    ds = ImageFolderDataset(str(tmp_path / 'ds'))
    assert ds.sigma == 0.2 and not ds.has_labels

def test_max_size_is_a_seeded_sorted_subset(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(20))
    ds = ImageFolderDataset(str(tmp_path / 'ds'), max_size=7, random_seed=3)
    raw = [ds.get_details(i).raw_idx for i in range(len(ds))]
    expected = np.arange(20)
    np.random.RandomState(3).shuffle(expected) # EDM's subset for the same seed.
    assert raw == sorted(expected[:7].tolist())
    other = ImageFolderDataset(str(tmp_path / 'ds'), max_size=7, random_seed=4)
    assert raw != [other.get_details(i).raw_idx for i in range(7)]
    assert len(ImageFolderDataset(str(tmp_path / 'ds'), max_size=100)) == 20

def test_xflip_doubles_the_dataset(tmp_path):
    images = random_images(3)
    write_png_dataset(tmp_path / 'ds', images)
    ds = ImageFolderDataset(str(tmp_path / 'ds'), xflip=True, max_size=2)
    assert len(ds) == 4
    assert [ds.get_details(i).xflip for i in range(4)] == [False, False, True, True]
    for idx in range(2):
        assert np.array_equal(ds[idx + 2][0], ds[idx][0][:, :, ::-1])

def test_cache_keeps_decoded_images(tmp_path):
    names = write_png_dataset(tmp_path / 'ds', random_images(2))
    ds = ImageFolderDataset(str(tmp_path / 'ds'), cache=True)
    first = ds[0][0]
    os.remove(tmp_path / 'ds' / names[0])
    assert np.array_equal(ds[0][0], first)

def test_pickle_and_data_loader(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(4), labels=[0, 1, 0, 1])
    ds = ImageFolderDataset(zip_dir(tmp_path / 'ds', str(tmp_path / 'ds.zip')), use_labels=True)
    ds[0] # Opens the zip.
    copy = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(copy[3][0], ds[3][0])
    images, labels = next(iter(torch.utils.data.DataLoader(copy, batch_size=4)))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 8, 8) and labels.shape == (4, 2)

def test_forked_workers_reopen_the_zip(tmp_path):
    # The parent has read from the zip; forked workers must not share its file handle.
    root = tmp_path / 'ds'
    images = random_images(64)
    write_png_dataset(root, images)
    zip_path = tmp_path / 'ds.zip'
    zip_dir(root, zip_path)
    dataset = ImageFolderDataset(str(zip_path))
    dataset[0]
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, multiprocessing_context='fork')
    for _epoch in range(2):
        got = torch.cat([x for x, _ in loader]).numpy()
        assert np.array_equal(got, np.stack([dataset[i][0] for i in range(len(dataset))]))

def test_images_to_float():
    u8 = torch.tensor([0, 255, 128], dtype=torch.uint8)
    assert torch.allclose(images_to_float(u8), torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]), atol=1e-7)
    f = torch.tensor([-2.5, 0.3], dtype=torch.float64)
    assert images_to_float(f).dtype == torch.float32 and torch.allclose(images_to_float(f), f.float())
    with pytest.raises(TypeError):
        images_to_float(torch.zeros(2, dtype=torch.int16))

#----------------------------------------------------------------------------
# Unions.

def test_union_reads_parts_in_turn(tmp_path):
    a, b = random_images(3, seed=1), random_images(2, seed=2)
    write_png_dataset(tmp_path / 'a', a, labels=[0, 1, 0])
    write_png_dataset(tmp_path / 'b', b, labels=[3, 3])
    parts = [dict(class_name='training.dataset.ImageFolderDataset', path=str(tmp_path / 'a'), resolution=8), str(tmp_path / 'b')]
    union = UnionDataset(parts, use_labels=True)
    assert len(union) == 5 and union.name == 'a+b' and not union.is_float
    assert union.label_shape == [4] # One-hot over the classes of all parts.
    for idx, img in enumerate(list(a) + list(b)):
        assert np.array_equal(union[idx][0], img.transpose(2, 0, 1))
    assert union[4][1].argmax() == 3 and union[0][1].shape == (4,)
    details = union.get_details(4)
    assert details.part == 1 and details.part_idx == 1
    copy = pickle.loads(pickle.dumps(union)) # As sent to data-loader workers.
    assert np.array_equal(copy[4][0], union[4][0]) and np.array_equal(copy[4][1], union[4][1])

def test_union_of_dataset_objects_with_own_options(tmp_path):
    write_png_dataset(tmp_path / 'a', random_images(3, seed=1))
    write_png_dataset(tmp_path / 'b', random_images(2, seed=2))
    part_a = ImageFolderDataset(str(tmp_path / 'a'), xflip=True)
    union = UnionDataset([part_a, ImageFolderDataset(str(tmp_path / 'b'))], xflip=True, max_size=6, random_seed=1)
    assert len(union) == 12
    assert np.array_equal(union[6][0], union[0][0][:, :, ::-1])

def test_union_mixing_uint8_and_float(tmp_path):
    clean = random_images(2)
    write_png_dataset(tmp_path / 'clean', clean)
    noisy = [np.full([3, 8, 8], 0.25, dtype=np.float32)]
    write_npy_dataset(tmp_path / 'noisy', noisy, sigma=0.5)
    union = UnionDataset([str(tmp_path / 'clean'), str(tmp_path / 'noisy')])
    assert union.is_float and union.sigma is None # The parts disagree on sigma.
    assert union[0][0].dtype == np.float32
    expected = images_to_float(torch.from_numpy(clean[0].transpose(2, 0, 1).copy())) # The training loop's conversion.
    assert np.array_equal(union[0][0], expected.numpy())
    assert np.array_equal(union[2][0], noisy[0])
    only_noisy = UnionDataset([str(tmp_path / 'noisy'), str(tmp_path / 'noisy')])
    assert only_noisy.sigma == 0.5

def test_union_errors(tmp_path):
    write_png_dataset(tmp_path / 'small', random_images(1, res=8))
    write_png_dataset(tmp_path / 'large', random_images(1, res=16))
    write_png_dataset(tmp_path / 'gray', random_images(1, channels=1))
    write_png_dataset(tmp_path / 'labeled', random_images(1), labels=[1])
    with pytest.raises(UserError, match='large.*resolution'):
        UnionDataset([str(tmp_path / 'small'), str(tmp_path / 'large')])
    with pytest.raises(UserError, match='gray.*channel'):
        UnionDataset([str(tmp_path / 'small'), str(tmp_path / 'gray')])
    with pytest.raises(UserError, match='small'):
        UnionDataset([str(tmp_path / 'labeled'), str(tmp_path / 'small')], use_labels=True)
    with pytest.raises(UserError, match='small.*has none'):
        UnionDataset([ImageFolderDataset(str(tmp_path / 'labeled'), use_labels=True), ImageFolderDataset(str(tmp_path / 'small'))], use_labels=True)
    with pytest.raises(UserError, match='no datasets'):
        UnionDataset([])

#----------------------------------------------------------------------------
# Bad input: every error is a UserError that names the file at fault.

def test_error_non_square(tmp_path):
    save_png(str(tmp_path / 'ds' / 'a.png'), np.zeros([8, 6, 3], np.uint8))
    with pytest.raises(UserError, match='a.png.*square'):
        ImageFolderDataset(str(tmp_path / 'ds'))

def test_error_mixed_sizes(tmp_path):
    save_png(str(tmp_path / 'ds' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_png(str(tmp_path / 'ds' / 'b.png'), np.zeros([16, 16, 3], np.uint8))
    with pytest.raises(UserError, match='b.png.*16x16'):
        ImageFolderDataset(str(tmp_path / 'ds'))

def test_error_mixed_channels(tmp_path):
    save_png(str(tmp_path / 'ds' / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    save_png(str(tmp_path / 'ds' / 'b.png'), np.zeros([8, 8, 1], np.uint8))
    with pytest.raises(UserError, match='b.png.*channels'):
        ImageFolderDataset(str(tmp_path / 'ds'))

def test_error_corrupt_images(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(2))
    with open(tmp_path / 'ds' / '00000' / 'img00000001.png', 'wb') as f:
        f.write(b'not an image')
    with pytest.raises(UserError, match='img00000001.png'):
        ImageFolderDataset(str(tmp_path / 'ds'))

    # A truncated file passes the header check and fails when decoded.
    write_png_dataset(tmp_path / 'cut', random_images(2))
    path = tmp_path / 'cut' / '00000' / 'img00000000.png'
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    ds = ImageFolderDataset(str(tmp_path / 'cut'))
    with pytest.raises(UserError, match='img00000000.png'):
        ds[0]

# Members that cannot be opened at all: a dangling link, a loop of links, an
# encrypted zip member (its flag set by hand: zipfile writes none, and refuses
# to read one without a password).
def test_error_members_that_cannot_be_opened(tmp_path):
    write_png_dataset(tmp_path / 'links', random_images(2))
    os.symlink(tmp_path / 'nowhere.png', tmp_path / 'links' / '00000' / 'img00000002.png')
    with pytest.raises(UserError, match=r'img00000002.png: cannot read \(No such file or directory\)'):
        ImageFolderDataset(str(tmp_path / 'links'))
    os.remove(tmp_path / 'links' / '00000' / 'img00000002.png')
    os.symlink('loop.png', tmp_path / 'links' / '00000' / 'loop.png')
    with pytest.raises(UserError, match=r'loop.png: cannot read \(Too many levels of symbolic links\)'):
        ImageFolderDataset(str(tmp_path / 'links'))
    png = (tmp_path / 'links' / '00000' / 'img00000000.png').read_bytes()
    with zipfile.ZipFile(tmp_path / 'locked.zip', 'w') as z:
        z.writestr('00000/img00000000.png', png)
        z.writestr('00000/img00000001.png', png)
    data = bytearray((tmp_path / 'locked.zip').read_bytes())
    entry = data.rindex(b'PK\x01\x02')  # The second member's central directory entry:
    data[entry + 8] |= 0x1  # its "encrypted" flag set.
    (tmp_path / 'locked.zip').write_bytes(bytes(data))
    with pytest.raises(UserError, match=r'locked.zip/00000/img00000001.png: cannot read \(.*encrypted'):
        ImageFolderDataset(str(tmp_path / 'locked.zip'))

    # A compression method zipfile does not know (NotImplementedError), and a member whose local header is
    # damaged (BadZipFile).
    data[entry + 8] &= ~0x1  # Not encrypted again.
    original = bytes(data)
    data[entry + 10:entry + 12] = (99).to_bytes(2, 'little')  # The central directory's compression method.
    (tmp_path / 'unknown.zip').write_bytes(bytes(data))
    with pytest.raises(UserError, match=r'unknown.zip/00000/img00000001.png: cannot read \(.*compression method'):
        ImageFolderDataset(str(tmp_path / 'unknown.zip'))
    data = bytearray(original)
    header = data.rindex(b'PK\x03\x04')  # The second member's local header.
    data[header + 3] = 0x05
    (tmp_path / 'header.zip').write_bytes(bytes(data))
    with pytest.raises(UserError, match=r'header.zip/00000/img00000001.png: cannot read \(Bad magic number'):
        ImageFolderDataset(str(tmp_path / 'header.zip'))

def test_error_empty_and_missing(tmp_path):
    os.makedirs(tmp_path / 'empty')
    (tmp_path / 'empty' / 'notes.txt').write_text('no images here')
    with pytest.raises(UserError, match='empty.*no image files'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    with pytest.raises(UserError, match='nowhere'):
        ImageFolderDataset(str(tmp_path / 'nowhere'))
    (tmp_path / 'file.txt').write_text('x')
    with pytest.raises(UserError, match='file.txt'):
        ImageFolderDataset(str(tmp_path / 'file.txt'))
    write_png_dataset(tmp_path / 'ds', random_images(2))
    with pytest.raises(UserError, match='max_size'):
        ImageFolderDataset(str(tmp_path / 'ds'), max_size=0)

def test_error_labels(tmp_path):
    write_png_dataset(tmp_path / 'none', random_images(2))
    with pytest.raises(UserError, match='none.*labels'):
        ImageFolderDataset(str(tmp_path / 'none'), use_labels=True)
    names = write_png_dataset(tmp_path / 'partial', random_images(2), labels=[0, 1])
    with open(tmp_path / 'partial' / 'dataset.json', 'w') as f:
        json.dump(dict(labels=[[names[0], 0]]), f)
    with pytest.raises(UserError, match=f'dataset.json.*{names[1]}'):
        ImageFolderDataset(str(tmp_path / 'partial'), use_labels=True)
    write_png_dataset(tmp_path / 'negative', random_images(1), labels=[-1])
    with pytest.raises(UserError, match='dataset.json.*non-negative'):
        ImageFolderDataset(str(tmp_path / 'negative'), use_labels=True)
    write_png_dataset(tmp_path / 'no-width', random_images(2), labels=[[], []])
    with pytest.raises(UserError, match='dataset.json: label vectors are empty'):
        ImageFolderDataset(str(tmp_path / 'no-width'), use_labels=True)
    names = write_png_dataset(tmp_path / 'twice', random_images(2), labels=[0, 1])
    (tmp_path / 'twice' / 'dataset.json').write_text(json.dumps(dict(labels=[[names[0], 0], [names[1], 1], [names[0], 5]])))
    with pytest.raises(UserError, match=f'dataset.json: "labels" names {names[0]} more than once'):
        ImageFolderDataset(str(tmp_path / 'twice'), use_labels=True)
    write_png_dataset(tmp_path / 'bad', random_images(1))
    (tmp_path / 'bad' / 'dataset.json').write_text('{not json')
    with pytest.raises(UserError, match='dataset.json'):
        ImageFolderDataset(str(tmp_path / 'bad'))

def test_error_npy_contents(tmp_path):
    write_npy_dataset(tmp_path / 'int', [np.zeros([3, 8, 8], np.int32)])
    with pytest.raises(UserError, match='img00000000.npy.*dtype'):
        ImageFolderDataset(str(tmp_path / 'int'))
    write_npy_dataset(tmp_path / 'flat', [np.zeros([8, 8], np.float32)])
    with pytest.raises(UserError, match='img00000000.npy.*shape'):
        ImageFolderDataset(str(tmp_path / 'flat'))
    bad = np.zeros([3, 8, 8], np.float32)
    bad[1, 2, 3] = np.nan
    write_npy_dataset(tmp_path / 'nan', [np.zeros([3, 8, 8], np.float32), bad])
    ds = ImageFolderDataset(str(tmp_path / 'nan'))
    ds[0]
    with pytest.raises(UserError, match='img00000001.npy.*NaN'):
        ds[1]

def test_error_mixing_png_and_npy(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(1))
    np.save(tmp_path / 'ds' / 'extra.npy', np.zeros([3, 8, 8], np.float32))
    with pytest.raises(UserError, match='extra.npy'):
        ImageFolderDataset(str(tmp_path / 'ds'))

def test_error_wrong_resolution(tmp_path):
    write_png_dataset(tmp_path / 'ds', random_images(1))
    with pytest.raises(UserError, match='ds.*resolution 32'):
        ImageFolderDataset(str(tmp_path / 'ds'), resolution=32)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# What a dataset is made of: hidden files and folders (macOS's `._a.png` and
# `__MACOSX/`, `.ipynb_checkpoints/`) are not part of it; links to folders are
# followed, each folder once; zip members stay inside the archive and are unique.

def test_hidden_files_and_macos_leftovers_are_not_images(tmp_path):
    images = random_images(2)
    write_png_dataset(tmp_path / 'd', images, names=['cat/a.png', 'dog/b.png'])
    (tmp_path / 'd' / 'cat' / '._a.png').write_bytes(b'\x00\x05\x16\x07 AppleDouble')
    (tmp_path / 'd' / '__MACOSX' / 'cat').mkdir(parents=True)
    (tmp_path / 'd' / '__MACOSX' / 'cat' / '._a.png').write_bytes(b'\x00\x05\x16\x07')
    save_png(str(tmp_path / 'd' / '.ipynb_checkpoints' / 'a-checkpoint.png'), images[0])
    for path in (tmp_path / 'd', zip_dir(tmp_path / 'd', tmp_path / 'd.zip')):
        ds = ImageFolderDataset(str(path))
        assert ds._image_fnames == ['cat/a.png', 'dog/b.png']
        assert np.array_equal(ds[1][0], images[1].transpose(2, 0, 1))

def test_links_to_folders_are_followed_once(tmp_path):
    images = random_images(3)
    write_png_dataset(tmp_path / 'elsewhere', images[:2], names=['cat/x.png', 'cat/y.png'])
    write_png_dataset(tmp_path / 'd', images[2:], names=['dog/z.png'])
    os.symlink(tmp_path / 'elsewhere' / 'cat', tmp_path / 'd' / 'cat')
    os.symlink(tmp_path / 'd', tmp_path / 'd' / 'dog' / 'loop')  # A loop back to the top.
    ds = ImageFolderDataset(str(tmp_path / 'd'))
    assert ds._image_fnames == ['cat/x.png', 'cat/y.png', 'dog/z.png']

@pytest.mark.parametrize('member, message', [
    ('../../escaped.png', 'points outside the archive'), ('/etc/a.png', 'points outside the archive'),
    ('C:/a.png', 'points outside the archive'), ('cat\\a.png', 'points outside the archive'),
    ('00000/a.png', 'is in the zip more than once'), ('./00000/a.png', 'is in the zip more than once'),
    ('00000//a.png', 'is in the zip more than once')])
def test_zip_members_must_stay_inside_and_be_unique(tmp_path, member, message):
    save_png(str(tmp_path / 'a.png'), np.zeros([8, 8, 3], np.uint8))
    with zipfile.ZipFile(tmp_path / 'd.zip', 'w') as zf, warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)  # zipfile warns of the duplicate name.
        zf.write(tmp_path / 'a.png', '00000/a.png')
        info = zipfile.ZipInfo('a.png')
        info.filename = member  # ZipInfo() itself would strip a leading slash; other tools do not.
        zf.writestr(info, (tmp_path / 'a.png').read_bytes())
    with pytest.raises(UserError, match=f'd.zip: the member .* {message}'):
        ImageFolderDataset(str(tmp_path / 'd.zip'))

#----------------------------------------------------------------------------
# Pixel formats: one rule for every decoder. Alpha channels and 16-bit PNGs are
# refused, naming the file; JSON numbers beyond float's range are one line.

@pytest.mark.parametrize('mode, message', [('RGBA', 'the image has an alpha channel'), ('LA', 'the image has an alpha channel'),
                                           ('RGB16', 'a 16-bit PNG'), ('I;16', 'a 16-bit PNG')])
def test_alpha_and_16_bit_images_are_refused(tmp_path, mode, message):
    path = tmp_path / 'd' / 'a.png'
    path.parent.mkdir()
    if mode == 'RGB16':  # PIL writes no 16-bit RGB PNG: a minimal one by hand.
        import struct
        import zlib
        def chunk(kind, data):
            return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
        raw = b''.join(b'\x00' + bytes(8 * 6) for _ in range(8))
        path.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 8, 8, 16, 2, 0, 0, 0))
                         + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
    elif mode == 'I;16':
        PIL.Image.fromarray(np.zeros([8, 8], np.uint16)).save(path)
    else:
        PIL.Image.new(mode, (8, 8)).save(path)
    with pytest.raises(UserError, match=f'a.png: {message}.*8-bit grayscale or RGB'):
        ImageFolderDataset(str(tmp_path / 'd'))[0]

def test_a_file_that_is_no_image_is_named_plainly(tmp_path):
    (tmp_path / 'd').mkdir()
    (tmp_path / 'd' / 'a.png').write_bytes(b'not an image at all')
    with pytest.raises(UserError) as e:
        ImageFolderDataset(str(tmp_path / 'd'))
    assert str(e.value).endswith("a.png: not a readable image (not an image format that PIL can read)")

@pytest.mark.parametrize('meta, message', [
    ('{"sigma": 1%s}' % ('0' * 400), '"sigma" must be a finite'),
    ('{"labels": [["a.png", 1%s]]}' % ('0' * 400), 'class labels must be non-negative integers'),
    ('{"labels": [["a.png", [1e308]]]}', "beyond float32's range"),
    ('{"labels": [["a.png", [-1%s]]]}' % ('0' * 400), "beyond float32's range")])
def test_numbers_beyond_float_range_in_dataset_json(tmp_path, meta, message):
    write_png_dataset(tmp_path / 'd', random_images(1), names=['a.png'])
    (tmp_path / 'd' / 'dataset.json').write_text(meta)
    with pytest.raises(UserError, match=message):
        ImageFolderDataset(str(tmp_path / 'd'), use_labels=True).get_label(0)

# With pyspng installed (EDM's environment), it decodes only what has a PNG signature: a JPEG
# named .png is read by PIL, as it is without pyspng, and pyspng's RGBA is refused like PIL's.
def test_pyspng_decodes_only_pngs(tmp_path, monkeypatch):
    import training.dataset as dataset_module
    calls = []
    class FakePyspng:
        @staticmethod
        def load(data):
            calls.append(data[:8])
            return np.asarray(PIL.Image.open(io.BytesIO(data)))
    monkeypatch.setattr(dataset_module, 'pyspng', FakePyspng)
    image = random_images(1)[0]
    (tmp_path / 'd').mkdir()
    PIL.Image.fromarray(image).save(tmp_path / 'd' / 'a.png', format='jpeg', quality=100)
    save_png(str(tmp_path / 'd' / 'b.png'), image)
    ds = ImageFolderDataset(str(tmp_path / 'd'), use_pyspng=True)
    assert ds[0][0].shape == (3, 8, 8) and np.array_equal(ds[1][0], image.transpose(2, 0, 1))
    assert calls == [b'\x89PNG\r\n\x1a\n']
    PIL.Image.new('RGBA', (8, 8)).save(tmp_path / 'd' / 'c.png')
    with open(tmp_path / 'd' / 'c.png', 'rb') as f, pytest.raises(UserError, match='c.png: the image has an alpha channel'):
        dataset_module.read_image(f, str(tmp_path / 'd' / 'c.png'), use_pyspng=True)
