"""fid.py: reference statistics, scores of image folders and of networks, run directories, repeats,
detector loading and its checks, all on the CPU with a small TorchScript stand-in for Inception."""

import contextlib
import gc
import http.server
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import warnings
import zipfile

import numpy as np
import PIL.Image
import pytest
import torch
from click.testing import CliRunner

import fid
from dnnlib.util import cached_path_for_url, file_sha256
from torch_utils.detector import DEFAULT_DETECTOR, DEFAULT_DETECTOR_SHA256
from metrics import fid as fid_stats
from training.sampler import generate_images, to_uint8

FEATURES = 16  # Width of the stand-in's features: small, so that covariances of a few dozen images are full rank.

#----------------------------------------------------------------------------
# A stand-in detector with Inception's call contract: uint8 [N, 3, H, W] in,
# [N, D] features out with return_features=True. It pools the image to a 4x4
# grid and applies a fixed random map and a tanh, so features are nonlinear
# in the pixels. It refuses anything but uint8 RGB, as the real one expects.

class StandInDetector(torch.nn.Module):
    def __init__(self, dim: int = FEATURES, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer('weight', torch.randn([3 * 4 * 4, dim], generator=g) / 4)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.shape[1] != 3:
            raise RuntimeError('expected uint8 RGB images')
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 127.5 - 1, 4).flatten(1)
        features = torch.tanh(pooled @ self.weight * 3)
        return features if return_features else features.softmax(1)

def standin_features(images_u8: np.ndarray) -> np.ndarray:
    """What the stand-in gives for uint8 [N, C, H, W] images, grayscale repeated: the direct route."""
    x = torch.as_tensor(images_u8)
    if x.shape[1] == 1:
        x = x.repeat([1, 3, 1, 1])
    with torch.no_grad():
        return StandInDetector()(x, return_features=True).to(torch.float64).numpy()

def direct_fid(mu1, s1, mu2, s2) -> float:
    # tr((S1 S2)^(1/2)) as the sum of square roots of the eigenvalues of S1 S2 (real, >= 0 for PSD S1, S2).
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    return float(np.square(mu1 - mu2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum())

def stats_of(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False, ddof=1)

#----------------------------------------------------------------------------
# Datasets in EDM's layout: 00000/img00000000.png, ...

def write_dataset(path, images_u8: np.ndarray, as_zip: bool = False) -> str:
    files = []
    for i, image in enumerate(images_u8):
        hwc = image.transpose(1, 2, 0)
        pil = PIL.Image.fromarray(hwc[:, :, 0], 'L') if hwc.shape[2] == 1 else PIL.Image.fromarray(hwc, 'RGB')
        files.append((f'{i // 1000:05d}/img{i:08d}.png', pil))
    if as_zip:
        path = str(path) + '.zip'
        with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
            for name, pil in files:
                with z.open(name, 'w') as f:
                    pil.save(f, format='png')
    else:
        for name, pil in files:
            os.makedirs(os.path.join(path, os.path.dirname(name)), exist_ok=True)
            pil.save(os.path.join(path, name))
    return str(path)

def random_images(n: int, channels: int = 3, resolution: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=[n, channels, resolution, resolution]).astype(np.uint8)

def run(*args: str, ok: bool = True):
    result = CliRunner().invoke(fid.main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result

def last_float(result) -> float:
    return float(result.stdout.strip().splitlines()[-1])

#----------------------------------------------------------------------------
# One intra-op thread: the tiny networks and batches here gain nothing from
# more, and on a busy machine spinning thread pools make them many times slower.

@pytest.fixture(scope='module', autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

#----------------------------------------------------------------------------
# Shared files: the stand-in detector, two datasets, a reference file.

@pytest.fixture(scope='module')
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp('fid')
    detector = str(root / 'standin.pt')
    with warnings.catch_warnings():  # TorchScript is deprecated, but the published detector is in that format.
        warnings.simplefilter('ignore', DeprecationWarning)
        torch.jit.save(torch.jit.script(StandInDetector()), detector)
    a_images, b_images = random_images(40, seed=1), random_images(30, seed=2)
    b_images[:, 0] //= 2  # Make B differ from A in distribution, not only by chance.
    a = write_dataset(root / 'a', a_images)
    b = write_dataset(root / 'b', b_images, as_zip=True)
    ref_a = str(root / 'refs' / 'a.npz')
    run('ref', f'--data={a}', f'--dest={ref_a}', f'--detector={detector}', '--batch=16', '--workers=0', '--device=cpu')
    return dict(root=root, detector=detector, a=a, b=b, a_images=a_images, b_images=b_images, ref_a=ref_a)

def common(files) -> list[str]:
    return [f'--detector={files["detector"]}', '--workers=0', '--device=cpu']

#----------------------------------------------------------------------------
# The formula itself, against a closed form: for diagonal covariances the
# distance is |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.

def test_fid_formula_closed_form():
    rnd = np.random.RandomState(0)
    mu1, mu2, a, b = rnd.randn(5), rnd.randn(5), rnd.rand(5) + 0.1, rnd.rand(5) + 0.1
    expected = np.square(mu1 - mu2).sum() + np.square(np.sqrt(a) - np.sqrt(b)).sum()
    got = fid.calculate_fid_from_inception_stats(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-10)

# EDM's formula (scipy.linalg.sqrtm of the non-symmetric product) and the
# symmetric eigenvalue route agree to 1e-6 relative, also for covariances of
# fewer samples than features (singular) and with a tiny ridge (near-singular).
@pytest.mark.parametrize('dim, samples, ridge', [(48, 200, 0), (48, 20, 0), (48, 47, 1e-10), (160, 90, 1e-12), (160, 400, 0)])
def test_fid_formula_equals_edms_sqrtm(dim, samples, ridge):
    from torch_utils.frechet import frechet_distance_sqrtm
    rnd = np.random.RandomState(dim + samples)
    def covariance():
        x = rnd.randn(samples, dim) * rnd.rand(dim) * 3
        return np.cov(x, rowvar=False) + ridge * np.eye(dim)
    mu1, mu2, s1, s2 = rnd.randn(dim) * 0.1, rnd.randn(dim) * 0.1, covariance(), covariance()
    expected = frechet_distance_sqrtm(mu1, s1, mu2, s2)
    assert fid.calculate_fid_from_inception_stats(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-6)
    assert fid.calculate_fid_from_inception_stats(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-6 * np.trace(s1))

def test_feature_stats_are_unbiased():
    x = torch.randn(50, 6, dtype=torch.float64)
    stats = fid_stats.FeatureStats(6)
    stats.append(x[:17])
    stats.append(x[17:])
    mu, sigma = stats.mean_cov()
    np.testing.assert_allclose(mu, x.numpy().mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(sigma, np.cov(x.numpy(), rowvar=False, ddof=1), rtol=1e-10, atol=1e-13)

#----------------------------------------------------------------------------
# ref: EDM's .npz layout, the statistics of every image, written atomically.

def test_ref_matches_direct_statistics(files):
    with np.load(files['ref_a']) as data:
        assert sorted(data.files) == ['mu', 'sigma']
        mu, sigma = data['mu'], data['sigma']
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    assert mu.shape == (FEATURES,) and sigma.shape == (FEATURES, FEATURES)
    mu_d, sigma_d = stats_of(standin_features(files['a_images']))
    np.testing.assert_allclose(mu, mu_d, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(sigma, sigma_d, rtol=1e-8, atol=1e-12)
    assert os.listdir(os.path.dirname(files['ref_a'])) == ['a.npz']  # No temporary files left behind.

# A rerun replaces its own statistics; any other file at --dest (here a copy of
# a dataset's zip) is refused and kept.
def test_ref_replaces_only_reference_statistics(files, tmp_path):
    dest = tmp_path / 'a.npz'
    for _ in range(2):
        run('ref', f'--data={files["a"]}', f'--dest={dest}', *common(files))
    other = tmp_path / 'b.zip'
    other.write_bytes(open(files['b'], 'rb').read())
    result = run('ref', f'--data={files["a"]}', f'--dest={other}', *common(files), ok=False)
    assert_one_line_error(result, str(other), 'is not an output of fid.py ref')
    assert other.read_bytes() == open(files['b'], 'rb').read()

def test_grayscale_images_are_repeated_to_rgb(files, tmp_path):
    gray = random_images(12, channels=1, seed=5)
    gray_path = write_dataset(tmp_path / 'gray', gray)
    rgb_path = write_dataset(tmp_path / 'rgb', np.repeat(gray, 3, axis=1))
    for name, path in (('gray', gray_path), ('rgb', rgb_path)):
        run('ref', f'--data={path}', f'--dest={tmp_path / name}.npz', *common(files))
    with np.load(tmp_path / 'gray.npz') as g, np.load(tmp_path / 'rgb.npz') as c:
        np.testing.assert_array_equal(g['mu'], c['mu'])
        np.testing.assert_array_equal(g['sigma'], c['sigma'])

#----------------------------------------------------------------------------
# calc --images: against the direct computation; identical sets give 0.

def test_calc_images_matches_direct(files, tmp_path, monkeypatch):
    start_methods, init_fns = [], []
    real_loader = torch.utils.data.DataLoader
    def loader(*args, **kwargs):
        start_methods.append(kwargs.get('multiprocessing_context'))
        init_fns.append(kwargs.get('worker_init_fn'))
        return real_loader(*args, **kwargs)
    monkeypatch.setattr(torch.utils.data, 'DataLoader', loader)
    log = tmp_path / 'log.jsonl'
    result = run('calc', f'--images={files["b"]}', f'--ref={files["ref_a"]}', '--num=30', f'--json={log}',
                 f'--detector={files["detector"]}', '--workers=2', '--batch=7', '--device=cpu')  # Zip read by workers.
    assert start_methods == ['spawn']  # Not forked from a process with threads.
    from torch_utils import workers  # Workers end with this process, even when it is killed while they start.
    assert init_fns[0].func is workers.init_worker and init_fns[0].keywords == dict(parent_pid=os.getpid())
    mu_a, sigma_a = stats_of(standin_features(files['a_images']))
    mu_b, sigma_b = stats_of(standin_features(files['b_images']))
    expected = direct_fid(mu_b, sigma_b, mu_a, sigma_a)
    assert expected > 0.1
    assert last_float(result) == pytest.approx(expected, rel=1e-5)
    record = json.loads(log.read_text().strip())
    assert record['fid'] == pytest.approx(expected, rel=1e-8)
    assert record['images'] == files['b'] and record['num'] == 30 and record['ref'] == files['ref_a']
    assert record['detector_sha256'] == file_sha256(files['detector'])
    assert {'time', 'seconds', 'detector'} <= set(record)

# EDM's entry point keeps its arguments and their order (prefetch_factor before device); the device
# defaults to CUDA where there is one.
def test_calculate_inception_stats_keeps_edms_signature(files, monkeypatch):
    import inspect
    from torch_utils.detector import load_detector
    names = list(inspect.signature(fid.calculate_inception_stats).parameters)
    assert names[:7] == ['image_path', 'num_expected', 'seed', 'max_batch_size', 'num_workers', 'prefetch_factor', 'device']
    detector = load_detector(files['detector'], verbose=False)
    mu, sigma = fid.calculate_inception_stats(files['a'], None, 0, 16, 0, 2, 'cpu', detector=detector)
    expected_mu, expected_sigma = stats_of(standin_features(files['a_images']))
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma, expected_sigma, rtol=1e-4, atol=1e-6)
    devices = []
    monkeypatch.setattr(fid_stats, 'dataset_stats', lambda *args, device, **kwargs: devices.append(device))
    fid.calculate_inception_stats(files['a'], num_workers=0, detector=detector)
    assert devices == [torch.device('cuda' if torch.cuda.is_available() else 'cpu')]

def test_identical_images_give_zero(files):
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=40', *common(files))
    assert abs(last_float(result)) < 1e-6

def test_subset_is_edms_random_subset(files):
    # --num below the image count takes the subset EDM's dataset takes with max_size and the seed.
    from training.dataset import ImageFolderDataset
    chosen = ImageFolderDataset(path=files['a'], max_size=25, random_seed=7)._raw_idx
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=25', '--seed=7', *common(files))
    mu_a, sigma_a = stats_of(standin_features(files['a_images']))
    mu, sigma = stats_of(standin_features(files['a_images'][chosen]))
    assert last_float(result) == pytest.approx(direct_fid(mu, sigma, mu_a, sigma_a), rel=1e-5)

def test_image_repeats_use_disjoint_subsets(files):
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=20', '--repeats=2', *common(files))
    subsets = fid_stats.image_subsets(40, 20, 2, 0)
    assert not set(subsets[0]) & set(subsets[1])
    mu_a, sigma_a = stats_of(standin_features(files['a_images']))
    fids = [direct_fid(*stats_of(standin_features(files['a_images'][s])), mu_a, sigma_a) for s in subsets]
    assert last_float(result) == pytest.approx(min(fids), rel=1e-5)
    assert 'FID over 2 disjoint image subsets of the folder: min' in result.output  # Not "seed sets".

def test_help_says_what_repeats_means_for_each_input():
    text = ' '.join(run('calc', '--help').output.split())
    assert '--network K seed sets of --num seeds each' in text and "EDM's published protocol" in text
    assert '--images K disjoint random subsets of --num images of the one folder' in text
    assert "it is not EDM's protocol" in text

#----------------------------------------------------------------------------
# Bad input: one line naming the file or option, exit status 1.

def assert_one_line_error(result, *fragments: str):
    assert result.exit_code == 1, result.output
    progress = ('Features:', 'Generating:')  # Progress bars (on stderr) may precede the error.
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.lstrip('\r').startswith(progress)]
    assert len(lines) == 1 and lines[0].startswith('Error: '), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]

def test_too_few_images(files):
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=41', *common(files), ok=False)
    assert_one_line_error(result, files['a'], 'found 40 images', '--num=41')
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', *common(files), ok=False)
    assert_one_line_error(result, 'found 40 images', '--num=50000')

def test_broken_image_in_a_worker(files, tmp_path):
    # A file whose header reads but whose data is cut short fails inside a data-loading worker.
    path = write_dataset(tmp_path / 'broken', random_images(4, seed=9))
    victim = os.path.join(path, '00000', 'img00000002.png')
    data = open(victim, 'rb').read()
    open(victim, 'wb').write(data[:len(data) // 2])
    result = run('calc', f'--images={path}', f'--ref={files["ref_a"]}', '--num=4', f'--detector={files["detector"]}',
                 '--workers=1', '--device=cpu', ok=False)
    assert_one_line_error(result, 'img00000002.png')
    del result
    gc.collect()  # Shuts the failed loader's worker down here; torch takes about 5 s for that.

# fid.py killed while its data-loading workers start: the workers end with it (an orphan would keep
# the command's output pipes open, and whoever reads them would wait forever).
@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the kernel ends the workers on Linux')
def test_workers_end_with_a_killed_fid(files, tmp_path):
    import psutil
    path = write_dataset(tmp_path / 'many', random_images(400, seed=3))
    proc = subprocess.Popen([sys.executable, 'fid.py', 'ref', f'--data={path}', f'--dest={tmp_path / "r.npz"}',
                             f'--detector={files["detector"]}', '--workers=2', '--batch=4', '--device=cpu'],
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 120
    workers = []
    while not workers and time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            workers = [p for p in parent.children() if 'resource_tracker' not in ' '.join(p.cmdline())]
        time.sleep(0.05)
    assert workers, 'no worker process was seen'
    proc.kill()
    proc.wait()
    _gone, alive = psutil.wait_procs(workers, timeout=20)
    for p in alive:
        p.kill()
    assert not alive, [p.pid for p in alive]

def test_option_conflicts(files):
    ref = f'--ref={files["ref_a"]}'
    assert_one_line_error(run('calc', ref, ok=False), '--images', '--network')
    assert_one_line_error(run('calc', f'--images={files["a"]}', f'--network={files["a"]}', ref, ok=False), '--images')
    assert_one_line_error(run('calc', f'--images={files["a"]}', '--seeds=0-9', ref, ok=False), '--seeds')
    assert_one_line_error(run('calc', f'--images={files["a"]}', '--steps=3', ref, ok=False),
                          '--steps needs --network; the sampler options do not apply to --images')
    assert_one_line_error(run('calc', f'--images={files["a"]}', ref, '--S_churn=1', ok=False), '--S_churn needs --network')
    assert_one_line_error(run('calc', f'--network={files["detector"]}', '--snapshots=*', ref, ok=False), '--snapshots')
    assert_one_line_error(run('calc', f'--network={files["detector"]}', '--seed=1', '--seeds=0-9', ref, ok=False), '--seed')
    result = run('calc', f'--images={files["a"]}', ref, '--detector-sha256=abc', ok=False)
    assert result.exit_code == 2 and '64 hexadecimal' in result.stderr

def test_reference_without_mu(files, tmp_path):
    bad = str(tmp_path / 'bad.npz')
    np.savez(bad, sigma=np.eye(FEATURES))
    result = run('calc', f'--images={files["a"]}', f'--ref={bad}', '--num=40', *common(files), ok=False)
    assert_one_line_error(result, bad, '"mu"')

@pytest.mark.parametrize('mu, sigma, message', [(np.zeros(0), np.zeros([0, 0]), 'expected [D]'),
                                                 (np.zeros(FEATURES) + 1j, np.eye(FEATURES), 'expected real numbers')])
def test_reference_of_no_width_or_complex(files, tmp_path, mu, sigma, message):
    bad = str(tmp_path / 'bad.npz')
    np.savez(bad, mu=mu, sigma=sigma)
    result = run('calc', f'--images={files["a"]}', f'--ref={bad}', '--num=40', *common(files), ok=False)
    assert_one_line_error(result, bad, message)

def test_reference_of_other_width(files, tmp_path):
    other = str(tmp_path / 'other.npz')
    np.savez(other, mu=np.zeros(2048), sigma=np.eye(2048))
    result = run('calc', f'--images={files["a"]}', f'--ref={other}', '--num=40', *common(files), ok=False)
    assert_one_line_error(result, other, '2048', str(FEATURES))

def test_unreachable_url_fails_fast(files):
    url = 'http://127.0.0.1:9/x.pt'
    start = time.time()
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=40', f'--detector={url}',
                 '--workers=0', '--device=cpu', ok=False)
    assert_one_line_error(result, url)
    result = run('calc', f'--images={files["a"]}', '--ref=http://127.0.0.1:9/ref.npz', '--num=40', *common(files), ok=False)
    assert_one_line_error(result, 'http://127.0.0.1:9/ref.npz')
    assert time.time() - start < 20

def test_inputs_are_checked_before_the_detector(files, tmp_path):
    # Offline (the detector cannot be reached), a typo in --ref or --network is named as such.
    detector = '--detector=http://127.0.0.1:9/x.pt'
    typo = str(tmp_path / 'refs' / 'a.nzp')
    result = run('calc', f'--images={files["a"]}', f'--ref={typo}', '--num=40', detector, '--device=cpu', ok=False)
    assert_one_line_error(result, f'{typo}: no such file')
    pkl = str(tmp_path / 'network-snapshot-000001.pk')
    result = run('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--num=2', detector, '--device=cpu', ok=False)
    assert_one_line_error(result, f'--network={pkl}: no such file')
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=100', detector, '--device=cpu', ok=False)
    assert_one_line_error(result, 'found 40 images, but --num=100 asks for 100')

def test_sha256_mismatch(files, tmp_path, monkeypatch):
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=40', *common(files),
                 '--detector-sha256=' + '0' * 64, ok=False)
    assert_one_line_error(result, files['detector'], 'sha256')
    # The right digest passes.
    run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=40', *common(files),
        '--detector-sha256=' + file_sha256(files['detector']))
    # The default detector is always checked: put a wrong file where its download is cached.
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    cached = cached_path_for_url(DEFAULT_DETECTOR)
    os.makedirs(os.path.dirname(cached))
    shutil.copyfile(files['detector'], cached)
    result = run('calc', f'--images={files["a"]}', f'--ref={files["ref_a"]}', '--num=40', '--workers=0',
                 '--device=cpu', ok=False)
    assert_one_line_error(result, DEFAULT_DETECTOR, cached, DEFAULT_DETECTOR_SHA256)

def test_pickled_detector_when_named(files, tmp_path):
    # A .pkl detector is unpickled (running what it holds); anything else must be TorchScript.
    pkl = str(tmp_path / 'detector.pkl')
    with open(pkl, 'wb') as f:
        pickle.dump(StandInDetector(), f)
    result = run('calc', f'--images={files["b"]}', f'--ref={files["ref_a"]}', '--num=30', f'--detector={pkl}',
                 '--workers=0', '--device=cpu')
    reference = run('calc', f'--images={files["b"]}', f'--ref={files["ref_a"]}', '--num=30', *common(files))
    assert last_float(result) == last_float(reference)
    plain = str(tmp_path / 'detector.bin')
    shutil.copyfile(pkl, plain)
    result = run('calc', f'--images={files["b"]}', f'--ref={files["ref_a"]}', '--num=30', f'--detector={plain}',
                 '--workers=0', '--device=cpu', ok=False)
    assert_one_line_error(result, plain, 'TorchScript')

class PersistentDetector:
    # Pickles as EDM's persistence module pickles a class: its module source travels with it.
    # The source here wraps the stand-in TorchScript detector.
    SOURCE = (
        'import torch\n'
        'class InceptionV3:\n'
        '    def __call__(self, x, return_features=False):\n'
        '        return torch.jit.load(self.path)(x, return_features=return_features)\n'
    )

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        from torch_utils.persistence import _reconstruct_persistent_obj
        meta = dict(type='class', version=6, module_src=self.SOURCE, class_name='InceptionV3',
                    state=dict(path=self.path))
        return (_reconstruct_persistent_obj, (meta,))

def test_edm_style_pickle_detector_runs_its_source_when_named(files, tmp_path):
    pkl = str(tmp_path / 'inception-2015-12-05.pkl')
    with open(pkl, 'wb') as f:
        pickle.dump(PersistentDetector(files['detector']), f)
    result = run('calc', f'--images={files["b"]}', f'--ref={files["ref_a"]}', '--num=30', f'--detector={pkl}',
                 '--workers=0', '--device=cpu')
    assert 'runs code stored in the file' in result.stdout
    reference = run('calc', f'--images={files["b"]}', f'--ref={files["ref_a"]}', '--num=30', *common(files))
    assert last_float(result) == last_float(reference)

#----------------------------------------------------------------------------
# --network: a tiny EDM network, generated and scored in memory.

def tiny_network(seed: int):
    from training.networks import EDMPrecond
    torch.manual_seed(seed)
    net = EDMPrecond(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=16,
                     channel_mult=[1, 1], num_blocks=1, attn_resolutions=[])
    with torch.no_grad():
        for p in net.parameters():  # Some layers start at zero; make every layer matter.
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval().requires_grad_(False)

def save_snapshot(path, net) -> str:
    from torch_utils.persistence import save_network_pickle
    save_network_pickle(str(path), dict(ema=net, loss_fn=None, augment_pipe=None, dataset_kwargs={}))
    return str(path)

def direct_network_fid(net, seeds, ref_path, steps=2) -> float:
    images = to_uint8(generate_images(net, seeds, device='cpu', num_steps=steps)).numpy()
    with np.load(ref_path) as ref:
        return direct_fid(*stats_of(standin_features(images)), ref['mu'], ref['sigma'])

@pytest.fixture(scope='module')
def rundir(tmp_path_factory):
    root = tmp_path_factory.mktemp('run')
    nets = [tiny_network(seed) for seed in (1, 2)]
    for kimg, net in zip((0, 10), nets):
        save_snapshot(root / f'network-snapshot-{kimg:06d}.pkl', net)
    (root / 'log.txt').write_text('not a snapshot\n')
    return str(root), nets

def test_network_end_to_end(files, rundir, tmp_path):
    root, nets = rundir
    pkl = os.path.join(root, 'network-snapshot-000000.pkl')
    outdir = tmp_path / 'images'
    result = run('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--num=6', '--steps=2', '--batch=4',
                 f'--outdir={outdir}', *common(files))
    expected = direct_network_fid(nets[0], list(range(6)), files['ref_a'])
    assert last_float(result) == pytest.approx(expected, rel=1e-5)
    # --outdir keeps the images, 1000 per folder, and scoring them again gives the same FID.
    assert sorted(os.listdir(outdir / '000000')) == [f'{s:06d}.png' for s in range(6)]
    again = run('calc', f'--images={outdir}', f'--ref={files["ref_a"]}', '--num=6', *common(files))
    assert last_float(again) == last_float(result)
    # Another network at the same path: its images are not mixed into the folder.
    copy = tmp_path / 'net.pkl'
    shutil.copy(pkl, copy)
    args = ['calc', f'--network={copy}', f'--ref={files["ref_a"]}', '--num=6', '--steps=2', '--batch=4',
            f'--outdir={tmp_path / "images2"}', *common(files)]
    run(*args)
    shutil.copy(os.path.join(root, 'network-snapshot-000010.pkl'), copy)
    assert_one_line_error(run(*args, ok=False), 'network_sha256')
    missing = tmp_path / 'missing.pkl'  # Named as the option it is, with --outdir too.
    assert_one_line_error(run(*[a.replace(str(copy), str(missing)) for a in args], ok=False),
                          f'--network={missing}: no such file')

# --fast on the CPU changes no arithmetic (inference mode, the same network):
# the same scores for images and for a network's samples.
def test_fast_path_gives_the_same_scores_on_the_cpu(files, rundir):
    pkl = os.path.join(rundir[0], 'network-snapshot-000000.pkl')
    for args in ([f'--images={files["b"]}', '--num=30'], [f'--network={pkl}', '--num=6', '--steps=2', '--batch=4']):
        faithful = run('calc', *args, f'--ref={files["ref_a"]}', *common(files))
        fast = run('calc', *args, f'--ref={files["ref_a"]}', *common(files), '--fast')
        assert last_float(fast) == last_float(faithful)

def test_generated_images_are_edms(files, fixtures_dir, tmp_path):
    # EDM's generate.py output for its tiny class-conditional snapshot: fid.py must score the same images.
    reference = torch.load(fixtures_dir / 'edm-ddpmpp-tiny-generate.pt', weights_only=True)['edm-ddpmpp-tiny']
    outdir = tmp_path / 'images'
    log = tmp_path / 'log.jsonl'
    result = run('calc', f'--network={fixtures_dir / "edm-ddpmpp-tiny-snapshot.pkl"}', f'--ref={files["ref_a"]}',
                 f'--seeds={fid_stats.format_int_list(reference["seeds"])}', f'--steps={reference["steps"]}',
                 f'--outdir={outdir}', f'--json={log}', *common(files))
    ours = np.stack([np.asarray(PIL.Image.open(outdir / '000000' / f'{s:06d}.png')) for s in reference['seeds']])
    np.testing.assert_array_equal(ours.transpose(0, 3, 1, 2), reference['images_u8'].numpy())
    with np.load(files['ref_a']) as ref:
        expected = direct_fid(*stats_of(standin_features(reference['images_u8'].numpy())), ref['mu'], ref['sigma'])
    assert last_float(result) == pytest.approx(expected, rel=1e-5)
    record = json.loads(log.read_text())  # Strict JSON: S_max = inf is written as a string.
    assert record['sampler']['S_max'] == 'inf' and record['seeds'] == '0-7'

def test_network_seeds_and_seed(files, rundir):
    root, nets = rundir
    pkl = os.path.join(root, 'network-snapshot-000010.pkl')
    by_seed = run('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--num=4', '--seed=3', '--steps=2', *common(files))
    by_list = run('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--seeds=3-6', '--steps=2', *common(files))
    assert last_float(by_seed) == last_float(by_list)
    assert last_float(by_seed) == pytest.approx(direct_network_fid(nets[1], [3, 4, 5, 6], files['ref_a']), rel=1e-5)
    result = run('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--seeds=0-3', '--num=5', *common(files), ok=False)
    assert_one_line_error(result, '--seeds', '--num=5')

def test_network_repeats(files, rundir, tmp_path):
    root, nets = rundir
    pkl = os.path.join(root, 'network-snapshot-000000.pkl')
    log = tmp_path / 'log.jsonl'
    result = run('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--num=4', '--repeats=3', '--steps=2',
                 f'--json={log}', *common(files))
    fids = [direct_network_fid(nets[0], list(range(4 * k, 4 * k + 4)), files['ref_a']) for k in range(3)]
    assert last_float(result) == pytest.approx(min(fids), rel=1e-5)
    record = json.loads(log.read_text())
    assert record['fids'] == pytest.approx(fids, rel=1e-8)
    assert record['mean'] == pytest.approx(np.mean(fids), rel=1e-8)
    assert record['std'] == pytest.approx(np.std(fids, ddof=1), rel=1e-6)
    assert record['seeds'] == '0-11' and record['network'] == pkl and record['repeats'] == 3
    assert 'FID over 3 disjoint seed sets: min' in result.stdout and 'mean' in result.stdout and 'std' in result.stdout

def test_run_directory_table(files, rundir, tmp_path):
    root, nets = rundir
    log = tmp_path / 'log.jsonl'
    result = run('calc', f'--network={root}', f'--ref={files["ref_a"]}', '--num=4', '--steps=2', f'--json={log}',
                 *common(files))
    fids = [direct_network_fid(net, [0, 1, 2, 3], files['ref_a']) for net in nets]
    lines = result.stdout.strip().splitlines()
    assert last_float(result) == pytest.approx(min(fids), rel=1e-5)
    header = next(i for i, line in enumerate(lines) if line.split()[:3] == ['snapshot', 'kimg', 'FID'])
    rows = [line.split() for line in lines[header + 1:header + 3]]
    assert [row[:2] for row in rows] == [['network-snapshot-000000.pkl', '0'], ['network-snapshot-000010.pkl', '10']]
    assert [float(row[2]) for row in rows] == pytest.approx(fids, abs=1e-4)
    best = 'network-snapshot-000000.pkl' if fids[0] <= fids[1] else 'network-snapshot-000010.pkl'
    assert best in lines[-2]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r['kimg'] for r in records] == [0, 10]
    # --snapshots picks by glob.
    one = run('calc', f'--network={root}', '--snapshots=*000010*', f'--ref={files["ref_a"]}', '--num=4', '--steps=2',
              *common(files))
    assert last_float(one) == pytest.approx(fids[1], rel=1e-5)
    none = run('calc', f'--network={root}', '--snapshots=*999*', f'--ref={files["ref_a"]}', '--num=4', *common(files), ok=False)
    assert_one_line_error(none, '--snapshots=*999*')

#----------------------------------------------------------------------------
# Several processes (torchrun, gloo on the CPU): each rank takes its share of
# images or seeds, and the statistics summed across ranks match one process.

def torchrun(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '--',
           os.path.join(os.path.dirname(fid.__file__), 'fid.py'), *[str(a) for a in args]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert (proc.returncode == 0) == ok, proc.stdout + proc.stderr
    return proc

def test_torchrun_ref(files, tmp_path):
    dest = tmp_path / 'ref2.npz'
    torchrun('ref', f'--data={files["a"]}', f'--dest={dest}', '--batch=8', *common(files))
    with np.load(dest) as two, np.load(files['ref_a']) as one:
        np.testing.assert_allclose(two['mu'], one['mu'], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(two['sigma'], one['sigma'], rtol=1e-10, atol=1e-13)

def test_torchrun_network(files, rundir, tmp_path):
    root, nets = rundir
    log = tmp_path / 'log.jsonl'
    pkl = os.path.join(root, 'network-snapshot-000000.pkl')
    # 6 seeds in batches of at most 2 over 2 ranks: batches of 2, 2, 1, 1.
    proc = torchrun('calc', f'--network={pkl}', f'--ref={files["ref_a"]}', '--num=6', '--batch=2', '--steps=2',
                    f'--json={log}', *common(files))
    expected = direct_network_fid(nets[0], list(range(6)), files['ref_a'])
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)
    record = json.loads(log.read_text())  # Written once, by rank 0.
    # The ranks compute the detector's float32 features in other batches than the direct computation, which
    # moves the last digits on some CPUs (1.5e-8 relative on an Intel Xeon).
    assert record['world_size'] == 2 and record['fid'] == pytest.approx(expected, rel=1e-6)

# An input that rank 0 reads first and finds bad ends every rank with one line:
# the other ranks do not wait at a barrier and die there with a traceback.
# (torchrun's agent then reports the failed child with a traceback of its own.)
def test_torchrun_bad_ref_is_one_line_on_every_rank(files, tmp_path):
    bad = tmp_path / 'bad.npz'
    bad.write_text('<html>not statistics</html>')
    proc = torchrun('calc', f'--images={files["a"]}', f'--ref={bad}', '--num=4', *common(files), ok=False)
    assert f'Error: {bad}: not an .npz file' in proc.stderr
    assert '[rank1]' not in proc.stderr and '[rank0]' not in proc.stderr, proc.stderr

#----------------------------------------------------------------------------
# Downloads of --ref: a file that is not statistics (an error page) is not
# kept in the cache, so that the next run fetches it again; a server that
# accepts but never answers fails after the read timeout, once, not after
# several tries.

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

def test_a_bad_download_is_not_kept_and_a_silent_server_fails_once(files, tmp_path, monkeypatch):
    import functools
    import socket
    import threading
    from dnnlib.util import UserError, download
    served = tmp_path / 'served'
    served.mkdir()
    (served / 'r.npz').write_text('<html>not here</html>')
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(QuietHandler, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{server.server_address[1]}/r.npz'
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'cache'))
    try:
        with pytest.raises(UserError, match='removed from the cache'):
            fid_stats.load_ref_stats(url)
        assert not os.path.exists(cached_path_for_url(url))
        shutil.copy(files['ref_a'], served / 'r.npz')
        assert fid_stats.load_ref_stats(url)[0].shape == (FEATURES,)
    finally:
        server.shutdown()
        server.server_close()
    silent = socket.socket()
    silent.bind(('127.0.0.1', 0))
    silent.listen(4)
    try:
        start = time.monotonic()
        with pytest.raises(UserError, match='the server sent nothing for 1 s'):
            download(f'http://127.0.0.1:{silent.getsockname()[1]}/r.npz', timeout=1)
        assert time.monotonic() - start < 2.5
    finally:
        silent.close()
