"""Benchmarks of the stages of an SFBD run, timed on the code the tools run (bench.py is the CLI; this
module is its library, not a tool of the method).

Stages (`what`):

train     training_loop.training_step(): batches of a zip dataset of PNGs through the data loader
          (train.py's loader options), EDM's loss with train.py's augmentation (--augment, default
          0.12 as in train.py), backward, Adam, weight average.
denoise   sfbd.denoise_set.denoise_images(): denoise.py's backward sampling of an observation set
          (sigma 0.59 on EDM's 18-step grid: 8 steps, 15 network evaluations), PNGs written.
generate  training.generation.generate_to_dir(): generate.py's EDM sampler (18 steps, 35
          evaluations), PNGs written.
fid       fid.py's detector features of uint8 images in memory (torch_utils.detector) accumulated
          in FeatureStats; the final statistics and Frechet distance are timed once (frechet_s).
frechet   (asked for by name) the Frechet distance at the detector's width: EDM's sqrtm formula
          (path 'faithful') against the eigenvalue formula fid.py now uses (path 'fast').

Paths: 'faithful' is what the tools do by default; 'fast' is their --fast (torch_utils/fast.py).
With `compare`, both are set up side by side and measured in alternating blocks, so that both
see the same machine load.

A measurement first runs each path's warm-up (compilation, caches; timed as warmup_s), then
`seconds` of work per path in blocks of about seconds / 8, alternating between the paths, each
block at least one unit of work (a training step, or a call that denoises or generates two
batches), and at least two blocks per path when comparing. img_per_s = images / time over the
blocks; flop_per_img is counted with torch.utils.flop_counter on one forward (and backward) pass,
or one whole sampler run, of the same code; MFU = achieved TFLOP/s / the device's peak at the
record's dtype (a table of NVIDIA datasheet figures, dense, or `peak_tflops`; null when unknown).
peak_mem_gb is the peak CUDA allocation during the blocks, or on the CPU the peak resident set
of the process sampled every 20 ms (which includes everything the process holds); with
`compare` the other path's network, optimizer and data are resident as well.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import _thread
import datetime
import faulthandler
import functools
import io
import json
import os
import platform
import shutil
import signal
import tempfile
import threading
import time
import zipfile
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import PIL.Image
import psutil
import torch
from torch.utils.flop_counter import FlopCounterMode

from dnnlib.outputs import OutputFile, ToolOutputs, is_json_lines
from dnnlib.util import UserError, cached_path_for_url, construct_class_by_name, download, is_url
from sfbd.backward import backward_sample
from sfbd.denoise_set import denoise_images
from sfbd.observations import DatasetWriter, ObservationSet, dataset_fname, encode_npy
from torch_utils import distributed as dist
from torch_utils import fast as fast_lib
from torch_utils import frechet, misc, training_stats
from torch_utils.detector import DEFAULT_DETECTOR, Detector, load_detector
from torch_utils.fast import FastSettings
from training import training_loop
from training.augment import AUGMENT_DIM, AUGMENTATIONS, AugmentPipe
from metrics.fid import FeatureStats, append_json, calculate_fid_from_inception_stats
from training.generation import generate_to_dir
from training.loss import EDMLoss
from training.networks import EDMPrecond, compute_dtype
from training.sampler import generate_images

STAGES = ('train', 'denoise', 'generate', 'fid')   # The default list.
EXTRA_STAGES = ('frechet',)                       # Measured only when named.
PATHS = ('faithful', 'fast')
STANDIN_DETECTOR = 'standin'

DENOISE_SIGMA = 0.59        # CIFAR-10 observations of the paper.
NUM_STEPS = 18              # EDM's grid (generate.py's and denoise.py's default).
BATCHES_PER_CALL = 2        # A denoise or generate unit: one call over this many batches.

#----------------------------------------------------------------------------
# Configurations: EDM's networks, and the batch per stage on each device type.
#   tiny     DDPM++ 32x32 with 16 base channels, multipliers 1,1 and 2 blocks per resolution
#            (train.py's --cbase=16 --cres=1,1 has 4), small enough for CPUs.
#   cifar10  DDPM++ 32x32 with EDM's defaults (--arch=ddpmpp), 55.7 M parameters.
#   ffhq64   DDPM++ 64x64 with EDM's FFHQ recipe (--arch=ddpmpp --cres=1,2,2,2 --dropout=0.05).

_DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
               channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])

CONFIGS: dict[str, dict[str, Any]] = {
    'tiny':    dict(resolution=32, network=dict(_DDPMPP, model_channels=16, channel_mult=[1, 1], num_blocks=2, dropout=0.13),
                    lr=1e-3, batch=dict(cpu=dict(train=16, denoise=4, generate=2, fid=64),
                               cuda=dict(train=512, denoise=256, generate=256, fid=500))),
    'cifar10': dict(resolution=32, network=dict(_DDPMPP, dropout=0.13), lr=1e-3,
                    batch=dict(cpu=dict(train=4, denoise=2, generate=2, fid=64),
                               cuda=dict(train=256, denoise=256, generate=256, fid=500))),
    'ffhq64':  dict(resolution=64, network=dict(_DDPMPP, channel_mult=[1, 2, 2, 2], dropout=0.05), lr=2e-4,
                    batch=dict(cpu=dict(train=2, denoise=1, generate=1, fid=32),
                               cuda=dict(train=128, denoise=128, generate=128, fid=250))),
}

def default_batch(config: str, what: str, device: torch.device) -> int:
    table = CONFIGS[config]['batch']['cuda' if device.type == 'cuda' else 'cpu']
    return table.get(what, table['fid'])

#----------------------------------------------------------------------------
# Peak throughput for MFU: dense TFLOP/s from NVIDIA's datasheets (H100 SXM and
# H200: 989 bf16/fp16, 495 TF32, 67 fp32; H100 PCIe: 756, 378, 51; A100: 312,
# 156, 19.5). The first entry whose name is part of the device name is used.

PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ('H100 PCIe', dict(bfloat16=756, float16=756, tf32=378, float32=51)),
    ('H100',      dict(bfloat16=989, float16=989, tf32=495, float32=67)),
    ('H200',      dict(bfloat16=989, float16=989, tf32=495, float32=67)),
    ('A100',      dict(bfloat16=312, float16=312, tf32=156, float32=19.5)),
]

def peak_tflops(device_name: str, dtype: str, tf32: bool) -> float | None:
    key = 'tf32' if dtype == 'float32' and tf32 else dtype
    for name, peaks in PEAK_TFLOPS:
        if name in device_name:
            return peaks.get(key)
    return None

def device_name(device: torch.device) -> str:
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            model = next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')), model)
    return f'{model}, {os.cpu_count()} cores'

#----------------------------------------------------------------------------
# A stand-in for the FID detector where NVIDIA's Inception cannot be had
# (offline): Inception's call contract (uint8 [N, 3, H, W] in, [N, 2048]
# features out with return_features=True), a fixed random 4-layer CNN at the
# input resolution. Its FLOPs are not Inception's; records name it.

class StandInDetector(torch.nn.Module):
    def __init__(self, dim: int = 2048, width: int = 64, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.convs = torch.nn.ModuleList([torch.nn.Conv2d(c_in, c_out, 3, stride=2, padding=1)
                                              for c_in, c_out in ((3, width), (width, width * 2), (width * 2, width * 4),
                                                                  (width * 4, width * 4))])
            self.head = torch.nn.Linear(width * 4, dim)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = x.to(torch.float32) / 127.5 - 1
        for conv in self.convs:
            x = torch.nn.functional.relu(conv(x))
        features = torch.tanh(self.head(x.mean(dim=[2, 3])))
        return features if return_features else features.softmax(dim=1)

STANDIN_NAME = 'stand-in (random 4-layer CNN, 2048 features; not Inception)'

# The detector of --detector, as fid.py loads it. The default Inception falls
# back to the stand-in when it is neither cached nor downloadable.
def open_detector(detector: str, device: torch.device, fast: FastSettings | None) -> tuple[Detector, str]:
    if detector == DEFAULT_DETECTOR and not os.path.isfile(cached_path_for_url(detector)):
        try:
            download(detector, timeout=10, num_attempts=1)
        except UserError:
            detector = STANDIN_DETECTOR
    if detector == STANDIN_DETECTOR:
        net = StandInDetector().to(device).eval()
        if fast is not None:
            net = fast_lib.to_memory_format(net, fast)
        return Detector(net, STANDIN_DETECTOR, '', '', device, fast), STANDIN_NAME
    return load_detector(detector, device=device, verbose=False, fast=fast), detector

#----------------------------------------------------------------------------
# Inputs written once per benchmark: a zip of random PNGs (training data) and
# an observation set of random images at sigma 0.59 (denoising).

def write_image_zip(path: str, num_images: int, resolution: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, 'w', compression=zipfile.ZIP_STORED) as z:
        for i in range(num_images):
            buffer = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, [resolution, resolution, 3], dtype=np.uint8)).save(buffer, format='png')
            z.writestr(dataset_fname(i, '.png'), buffer.getvalue())
        z.writestr('dataset.json', json.dumps(dict(labels=None)))
    return path

def write_observations(path: str, num_images: int, resolution: int, sigma: float, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(path)
    for i in range(num_images):
        x = rng.integers(0, 256, [3, resolution, resolution]) / 127.5 - 1
        writer.add(dataset_fname(i, '.npy'), encode_npy((x + sigma * rng.standard_normal(x.shape)).astype(np.float32)))
    writer.commit(dict(labels=None, sigma=sigma))
    return path

#----------------------------------------------------------------------------
# One path of one stage, ready to be timed: `run()` does one unit of work and
# returns its number of images; `numerics` are the global switches it runs
# under (TF32, cuDNN autotuning), set before each of its blocks.

@dataclasses.dataclass
class Runner:
    what:       str
    path:       str
    batch:      int
    dtype:      str
    run:        Callable[[], int]
    numerics:   dict[str, bool]
    extra:      dict[str, Any] = dataclasses.field(default_factory=dict)
    finish:     Callable[[], dict[str, Any]] | None = None  # After the blocks: extra fields of the stage's records.
    close:      Callable[[], None] | None = None            # At the end of the stage: stop what the runner started.
    warmup_s:   float = 0
    images:     int = 0
    seconds:    float = 0
    peak_bytes: int = 0

def set_numerics(numerics: dict[str, Any]) -> None:
    torch.backends.cuda.matmul.allow_tf32 = numerics['matmul_tf32']
    torch.backends.cudnn.allow_tf32 = numerics['cudnn_tf32']
    torch.backends.cudnn.benchmark = numerics['cudnn_benchmark']
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark_limit = numerics['cudnn_benchmark_limit']

# The faithful tools' switches: training turns TF32 off (EDM), sampling and FID
# keep PyTorch's defaults; the fast path allows TF32 where its settings say,
# and times cuDNN's algorithms as many as its settings say (PyTorch's 10 else).
def numerics_for(what: str, fast: FastSettings | None) -> dict[str, Any]:
    limit = fast_lib.PYTORCH_CUDNN_BENCHMARK_LIMIT
    if fast is not None:
        if fast.cudnn_benchmark_limit is not None:
            limit = fast.cudnn_benchmark_limit
        return dict(matmul_tf32=fast.tf32, cudnn_tf32=fast.tf32, cudnn_benchmark=True, cudnn_benchmark_limit=limit)
    if what == 'train':
        return dict(matmul_tf32=False, cudnn_tf32=False, cudnn_benchmark=True, cudnn_benchmark_limit=limit)
    return dict(matmul_tf32=False, cudnn_tf32=True, cudnn_benchmark=False, cudnn_benchmark_limit=limit)

def uses_tf32(runner: Runner) -> bool:
    return runner.numerics['matmul_tf32'] or runner.numerics['cudnn_tf32']

def _network(config: str, device: torch.device, use_fp16: bool = False, seed: int = 0,
             augment_dim: int = 0) -> EDMPrecond:
    cfg = CONFIGS[config]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = EDMPrecond(img_resolution=cfg['resolution'], img_channels=3, use_fp16=use_fp16, augment_dim=augment_dim,
                         **cfg['network'])
    return net.to(device)

def _compute_dtype(net: torch.nn.Module, device: torch.device) -> str:
    # The name of the dtype the network computes in, for the records.
    return str(compute_dtype(net, device)).removeprefix('torch.')

#----------------------------------------------------------------------------
# train: the objects of training_loop() for one process, built the way it
# builds them, and its step. The faithful path on CUDA uses EDM's float16
# (--fp16=1), the reference the fast path is compared with.

def train_runner(config: str, path: str, device: torch.device, batch: int, data_zip: str,
                 fast: FastSettings | None, augment: float = 0) -> Runner:
    dataset_kwargs = dict(class_name='training.dataset.ImageFolderDataset', path=data_zip, use_labels=False,
                          xflip=False, cache=True)
    data_loader_kwargs = dict(pin_memory=(device.type == 'cuda'), num_workers=1, prefetch_factor=2,
                              multiprocessing_context='spawn')
    dataset_obj = construct_class_by_name(**dataset_kwargs)
    sampler = misc.InfiniteSampler(dataset=dataset_obj, seed=0)
    net = _network(config, device, use_fp16=(fast is None and device.type == 'cuda'),
                   augment_dim=AUGMENT_DIM if augment > 0 else 0).train().requires_grad_(True)
    augment_pipe = AugmentPipe(p=augment, **AUGMENTATIONS) if augment > 0 else None
    if fast is not None:
        net = fast_lib.to_memory_format(net, fast)
    optimizer = torch.optim.Adam(net.parameters(), lr=CONFIGS[config]['lr'], betas=[0.9, 0.999], eps=1e-8,
                                 **fast_lib.optimizer_flags(fast))
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    if fast is not None:
        fast_lib.set_compute_dtype(net, fast.dtype)
        fast_lib.set_pool_resample(net, fast.pool_resample)
    batches = training_loop.start_data_loader(dataset_obj, sampler, batch, data_loader_kwargs, fast=fast)
    step = functools.partial(
        training_loop.training_step, ddp=net, net=net, ema=ema, optimizer=optimizer, batches=batches,
        compute_loss=training_loop.loss_function(EDMLoss(), net, augment_pipe, fast), sampler=sampler,
        stats=training_stats.Collector(), device=device, batch_size=batch, batch_gpu=batch, num_accumulation_rounds=1,
        loss_scaling=1, lr=CONFIGS[config]['lr'], lr_rampup_kimg=10000, ema_halflife_kimg=500, ema_rampup_ratio=0.05,
        fast=fast)
    seen = [0]
    def run() -> int:
        step(seen[0])
        seen[0] += batch
        return batch
    return Runner('train', path, batch, _compute_dtype(net, device), run, numerics_for('train', fast),
                  extra=dict(augment=augment), close=lambda: training_loop.stop_data_loader(batches))

def train_flops(config: str, device: torch.device) -> float:
    """FLOPs per image of a training step: the loss's forward and backward pass."""
    net = _network(config, device).train().requires_grad_(True)
    images = torch.zeros([2, 3, net.img_resolution, net.img_resolution], device=device)
    with FlopCounterMode(display=False) as counter:
        EDMLoss()(net, images).sum().backward()
    return counter.get_total_flops() / 2

#----------------------------------------------------------------------------
# denoise and generate: denoise.py's and generate.py's loops, each call over
# two batches of the path's batch size, writing into the path's own folder.

def sampling_runner(what: str, config: str, path: str, device: torch.device, batch: int | None, workdir: str,
                    fast: FastSettings | None) -> Runner:
    net = _network(config, device)
    batch = fast_lib.sampling_batch_size(net, device, fast, batch, default_batch(config, what, device))
    if fast is not None:
        net = fast_lib.prepare_sampling_network(net, fast)
    outdir = os.path.join(workdir, f'{what}-{path}')
    count = BATCHES_PER_CALL * batch
    if what == 'denoise':
        opened: list[ObservationSet] = []  # Written once the batches of both paths are known.
        def run() -> int:
            if not opened:
                opened.append(ObservationSet(observations_path(workdir)))
            return denoise_images(net, opened[0], outdir, list(range(count)), sigma=DENOISE_SIGMA, mode='ode',
                                  seed=0, max_batch_size=batch, device=device,
                                  sampler_kwargs=dict(num_steps=NUM_STEPS), fast=fast, progress=False)
    else:
        def run() -> int:
            return generate_to_dir(net, list(range(count)), outdir, max_batch_size=batch, device=device,
                                   sampler_kwargs=dict(num_steps=NUM_STEPS), fast=fast, progress=False)
    dtype = _compute_dtype(getattr(net, '_orig_mod', net), device)
    return Runner(what, path, batch, dtype, run, numerics_for(what, fast), extra=dict(outdir=outdir))

def observations_path(workdir: str) -> str:
    return os.path.join(workdir, 'observations')

def sampling_flops(what: str, config: str, device: torch.device, workdir: str) -> float:
    """FLOPs per image of one whole sampler run (every network evaluation), for one image."""
    net = _network(config, device).eval().requires_grad_(False)
    with FlopCounterMode(display=False) as counter:
        if what == 'denoise':
            y, _labels = ObservationSet(observations_path(workdir)).load([0])
            backward_sample(net, y.to(device), DENOISE_SIGMA, None, mode='ode', num_steps=NUM_STEPS)
        else:
            generate_images(net, [0], device=device, num_steps=NUM_STEPS)
    return counter.get_total_flops()

#----------------------------------------------------------------------------
# fid: features of a batch of uint8 images held in host memory, accumulated
# as fid.py accumulates them; then once the statistics and the distance to a
# reference, and the time that 50,000 images would take.

def fid_runner(config: str, path: str, device: torch.device, batch: int, detector: str,
               fast: FastSettings | None) -> Runner:
    det, name = open_detector(detector, device, fast)
    resolution = CONFIGS[config]['resolution']
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, [batch, 3, resolution, resolution], dtype=np.uint8))
    if fast is not None and fast.pin_memory and device.type == 'cuda':
        images = images.pin_memory()
    dim = det.feature_dim([3, resolution, resolution])
    stats = FeatureStats(dim, device)
    def run() -> int:
        stats.append(det.features(images))
        return batch
    def finish() -> dict[str, Any]:
        start = time.perf_counter()
        mu, sigma = stats.mean_cov()
        calculate_fid_from_inception_stats(mu, sigma, np.zeros(dim), np.eye(dim))
        return dict(frechet_s=round(time.perf_counter() - start, 3))
    return Runner('fid', path, batch, 'float32', run, numerics_for('fid', fast), extra=dict(detector=name),
                  finish=finish)

def fid_flops(config: str, device: torch.device, detector: str) -> float:
    det, _name = open_detector(detector, device, None)
    resolution = CONFIGS[config]['resolution']
    images = torch.zeros([2, 3, resolution, resolution], dtype=torch.uint8)
    stats = FeatureStats(det.feature_dim([3, resolution, resolution]), device)
    with FlopCounterMode(display=False) as counter:
        stats.append(det.features(images))
    return counter.get_total_flops() / 2

#----------------------------------------------------------------------------
# Timing. CUDA work is waited for at the end of each block (not per unit);
# the CPU's resident memory is sampled on a thread.

@contextlib.contextmanager
def peak_memory(device: torch.device) -> Iterator[list[int]]:
    """Yields a one-element list that holds the peak (bytes) once the block is left."""
    result = [0]
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result[0] = torch.cuda.max_memory_allocated(device)
        return
    process, stop = psutil.Process(), threading.Event()
    def sample() -> None:
        while True:
            result[0] = max(result[0], process.memory_info().rss)
            if stop.wait(0.02):
                return
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join()

def synchronize(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)

class Stalled(Exception):
    """A measurement ran past its limit (raised in the main thread by watchdog())."""

@contextlib.contextmanager
def watchdog(limit: float, dump_path: str) -> Iterator[None]:
    """Raise Stalled in the calling (main) thread if the block runs longer than `limit` seconds, after
    writing the stack of every thread to `dump_path`: a compile that never ends, or a device that
    hangs, becomes one line and a file to read instead of a silent wait."""
    fired, stop, caught = threading.Event(), threading.Event(), threading.Event()
    def interrupted(_signum: int, _frame: Any) -> None:
        caught.set()  # No second signal once Python has seen one.
        raise KeyboardInterrupt
    def wait() -> None:
        if stop.wait(limit):
            return
        with open(dump_path, 'w', encoding='utf-8') as f:
            faulthandler.dump_traceback(file=f, all_threads=True)
        fired.set()
        while not caught.is_set():  # Again every few seconds, should one signal go unseen.
            if hasattr(signal, 'pthread_kill'):  # A signal also ends a blocking call such as a sleep.
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
            else:
                _thread.interrupt_main()
            if stop.wait(3):
                return
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupted) if in_main_thread else None
    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    try:
        yield
    except KeyboardInterrupt:
        caught.set()
        if fired.is_set():
            raise Stalled() from None
        raise
    finally:
        stop.set()
        thread.join()
        if in_main_thread:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

# torch.compile's own count of compiled graphs and graph breaks so far.
def compile_counts() -> tuple[int, int]:
    try:
        from torch._dynamo.utils import counters
    except ImportError:
        return 0, 0
    return int(counters['stats']['unique_graphs']), int(sum(counters['graph_break'].values()))

def measure(runners: Sequence[Runner], device: torch.device, seconds: float, warmup: int,
            timeout: float = 900, stall_dir: str = '.') -> None:
    """Warm every runner up, then time them in alternating blocks of about seconds / 8 (at least one
    unit each) until each has run `seconds` and, when there are several, two blocks. A warm-up may
    take `timeout` seconds; the blocks together twice their planned time plus a margin of a minute
    and a few units. Past that, UserError names the stage, path and phase, with the stacks in a file."""
    def run_bounded(runner: Runner, phase: str, limit: float, body: Callable[[], None]) -> None:
        dump = os.path.join(stall_dir, f'bench-stalled-{runner.what}-{runner.path}.txt')
        try:
            with watchdog(limit, dump):
                body()
        except Stalled:
            raise UserError(f'bench: {runner.what} on the {runner.path} path did not finish its {phase} within '
                            f'{limit:.0f} s; the stack of every thread is in {dump}') from None
    unit_s = 0.0
    compile_counts()  # Imports dynamo now, outside any time limit.
    for runner in runners:
        def warm_up(runner: Runner = runner) -> None:
            nonlocal unit_s
            graphs, breaks = compile_counts()
            set_numerics(runner.numerics)
            start = time.perf_counter()
            for i in range(warmup):
                unit_start = time.perf_counter()
                runner.run()
                synchronize(device)
                if i == warmup - 1:
                    unit_s = max(unit_s, time.perf_counter() - unit_start)
            runner.warmup_s = time.perf_counter() - start
            after = compile_counts()
            runner.extra.update(compiled_graphs=after[0] - graphs, graph_breaks=after[1] - breaks)
        run_bounded(runner, 'warm-up', timeout, warm_up)
    def blocks() -> None:
        count = 0
        while any(r.seconds < seconds for r in runners) or (len(runners) > 1 and count < 2):
            for runner in runners:
                set_numerics(runner.numerics)
                graphs, breaks = compile_counts()
                with peak_memory(device) as peak:
                    start = time.perf_counter()
                    while True:
                        runner.images += runner.run()
                        if time.perf_counter() - start >= seconds / 8:
                            break
                    synchronize(device)
                    runner.seconds += time.perf_counter() - start
                runner.peak_bytes = max(runner.peak_bytes, peak[0])
                after = compile_counts()  # Compiling after the warm-up: a recompilation.
                runner.extra['recompiled_graphs'] = runner.extra.get('recompiled_graphs', 0) + after[0] - graphs
                runner.extra['graph_breaks'] = runner.extra.get('graph_breaks', 0) + after[1] - breaks
            count += 1
    limit = 2 * seconds * len(runners) + 60 + 4 * unit_s * len(runners)
    run_bounded(runners[-1], f'timed blocks ({", ".join(r.path for r in runners)})', limit, blocks)

#----------------------------------------------------------------------------
# Where a training step's time goes: torch.profiler over a few steps after
# the warm-up, device time summed per kind of work. Kernels are sorted into
# kinds by name (cuDNN's and cuBLAS's names say fprop, dgrad or wgrad;
# Triton's generated kernels carry the names of the operations they fuse);
# on the CPU the operators' own time is sorted the same way.

PROFILE_KINDS: list[tuple[str, tuple[str, ...]]] = [
    ('conv wgrad',        ('wgrad', 'convolution_backward_weight')),
    ('conv dgrad',        ('dgrad',)),
    ('conv backward',     ('convolution_backward',)),  # The CPU's operator: dgrad and wgrad together.
    ('conv forward',      ('fprop', 'convolve', 'conv2d', 'convolution', 'conv_transpose', 'depthwise', 'grouped_direct')),
    ('matmul',            ('gemm', 'nvjet', 'cutlass', 'mm', 'bmm', 'addmm', 'linear')),
    ('optimizer and EMA', ('adam', 'multi_tensor', 'foreach', 'lerp', 'nan_to_num')),
    ('normalisation',     ('group_norm', 'groupnorm', 'layer_norm', 'batch_norm', 'norm_')),
    ('copies and data',   ('memcpy', 'memset', 'copy_', 'to_copy', 'pin_memory')),
    ('layout changes',    ('nchwtonhwc', 'nhwctonchw', 'transpose', 'permute', 'contiguous')),
    ('resampling',        ('pool', 'upsample', 'interpolate', 'grid_sampler', 'reflection_pad')),
    ('elementwise and fused', ('elementwise', 'vectorized', 'triton', 'reduce', 'unrolled', 'silu', 'mul', 'add', 'where')),
]

def profile_kind(name: str) -> str:
    lower = name.lower()
    for kind, needles in PROFILE_KINDS:
        if any(needle in lower for needle in needles):
            return kind
    return 'other'

def profile_runner(runner: Runner, device: torch.device, steps: int = 5, top: int = 12) -> dict[str, Any]:
    """Device time per step of `runner` (warmed up already) by kind, with the largest items, over
    `steps` units; on the CPU the operators' self time."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    set_numerics(runner.numerics)
    synchronize(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            runner.run()
        synchronize(device)
    wall_ms = (time.perf_counter() - start) / steps * 1e3
    items: dict[str, float] = {}
    for event in prof.key_averages():
        if device.type == 'cuda':
            if str(getattr(event, 'device_type', '')).endswith('CUDA'):
                us = getattr(event, 'self_device_time_total', None) or getattr(event, 'self_cuda_time_total', 0)
            else:
                continue
        elif event.key.startswith('aten::'):
            us = event.self_cpu_time_total
        else:
            continue
        items[event.key] = items.get(event.key, 0.0) + us / 1e3 / steps
    kinds: dict[str, float] = {}
    for name, ms in items.items():
        kind = profile_kind(name)
        kinds[kind] = kinds.get(kind, 0.0) + ms
    busy = sum(kinds.values())
    largest = sorted(items.items(), key=lambda kv: -kv[1])[:top]
    return dict(wall_ms_per_step=round(wall_ms, 3), busy_ms_per_step=round(busy, 3),
                idle_share=round(max(1 - busy / wall_ms, 0), 4) if device.type == 'cuda' else None,
                kinds={k: dict(ms=round(v, 3), share=round(v / busy, 4) if busy else 0)
                       for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
                largest=[dict(name=name[:120], kind=profile_kind(name), ms=round(ms, 3)) for name, ms in largest])

#----------------------------------------------------------------------------
# Image differences between the two paths: the PNGs both wrote for the same
# seeds or observations, in uint8 levels.

def png_difference(dir_a: str, dir_b: str) -> dict[str, float] | None:
    def pngs(root: str) -> dict[str, str]:
        return {os.path.relpath(os.path.join(d, f), root): os.path.join(d, f)
                for d, _dirs, files in os.walk(root) for f in files if f.endswith('.png')}
    a, b = pngs(dir_a), pngs(dir_b)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diffs = np.stack([np.abs(np.asarray(PIL.Image.open(a[k]), dtype=np.int16) - np.asarray(PIL.Image.open(b[k]), dtype=np.int16))
                      for k in common])
    return dict(diff_u8_mean=round(float(diffs.mean()), 4), diff_u8_max=int(diffs.max()), diff_images=len(common))

#----------------------------------------------------------------------------
# The Frechet distance alone: EDM's sqrtm formula against the eigenvalue
# formula, on covariances of random features of the detector's width.

def frechet_records(dim: int = 2048, samples: int = 4096) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    def covariance() -> np.ndarray:
        return np.cov(rng.standard_normal([samples, dim]) * rng.random(dim), rowvar=False)
    mu1, mu2, s1, s2 = rng.standard_normal(dim), rng.standard_normal(dim), covariance(), covariance()
    records = []
    for path, formula in (('faithful', frechet.frechet_distance_sqrtm), ('fast', frechet.frechet_distance)):
        start = time.perf_counter()
        value = formula(mu1, s1, mu2, s2)
        records.append(dict(what='frechet', path=path, dim=dim, seconds=round(time.perf_counter() - start, 3),
                            value=value, formula='scipy.linalg.sqrtm(S1 S2)' if path == 'faithful' else 'eigh'))
    records[1]['speedup'] = round(records[0]['seconds'] / records[1]['seconds'], 2)
    records[1]['rel_diff'] = abs(records[1]['value'] - records[0]['value']) / abs(records[0]['value'])
    return records

#----------------------------------------------------------------------------
# bench.py's inputs, every one checked before minutes of measuring: the
# device, --json (a file apart, bench.py's own records), --set, --detector.
# Returns the device and the fast-path overrides.

def check_inputs(what: Sequence[str], device: str | None, detector: str, overrides: Sequence[str],
                 json_path: str | None) -> tuple[torch.device, dict[str, Any]]:
    if dist.get_world_size() > 1:
        raise UserError('bench.py measures one process; run it without torchrun')
    try:
        device_obj = dist.resolve_device(device)
    except RuntimeError as e:
        raise UserError(str(e) if str(e).startswith('--device') else f'--device={device}: {e}') from None
    inputs = [(detector, '--detector')] if 'fid' in what and os.path.isfile(detector) else []
    ToolOutputs('bench.py', [OutputFile(json_path, '--json', is_json_lines)], inputs).check()
    fast_overrides = parse_overrides(overrides)
    try:
        fast_lib.fast_settings(device_obj, **fast_overrides)
    except ValueError as e:
        raise UserError(f'--set: {e}') from None
    if 'fid' in what and detector not in (DEFAULT_DETECTOR, STANDIN_DETECTOR) and not is_url(detector) \
            and not os.path.isfile(detector):
        raise UserError(f'--detector={detector}: no such file')
    return device_obj, fast_overrides

# Records from a JSON-lines file (bench.py --json's), for --markdown: each
# line must be a record of a stage (or of the Frechet distance) with the
# fields that the tables show.
RECORD_KEYS = ('what', 'device', 'device_name', 'date')
STAGE_KEYS = ('path', 'config', 'dtype', 'batch', 'img_per_s', 'flop_per_img', 'tflops', 'mfu', 'peak_mem_gb', 'warmup_s')
FRECHET_KEYS = ('dim', 'formula', 'seconds')

def read_records(path: str, option: str) -> list[dict]:
    try:
        with open(path, encoding='utf-8') as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f'{option}={path}: not JSON lines ({e})') from None
    except OSError as e:
        raise UserError(f'{option}={path}: {e.strerror or e}') from None
    if not records:
        raise UserError(f'{option}={path}: holds no records')
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UserError(f'{option}={path}: record {number} is not a JSON object; not bench.py records')
        keys = RECORD_KEYS + (FRECHET_KEYS if record.get('what') == 'frechet' else STAGE_KEYS)
        missing = [key for key in keys if key not in record]
        if missing:
            raise UserError(f'{option}={path}: record {number} has no "{missing[0]}"; not a bench.py record')
    return records

#----------------------------------------------------------------------------
# --set KEY=VALUE: one field of FastSettings, its value read as the field's type.

def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(FastSettings)}
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition('=')
        key = key.strip().replace('-', '_')
        if not sep or key not in fields:
            raise UserError(f'--set={item}: expected KEY=VALUE with KEY one of {", ".join(fields)}')
        kind = str(fields[key].type)
        lowered = text.strip().lower()
        if lowered in ('none', 'null', '') and 'None' in kind:
            value: Any = None
        elif kind.startswith('bool'):
            if lowered not in ('true', 'false', '1', '0', 'yes', 'no'):
                raise UserError(f'--set={item}: {key} is true or false')
            value = lowered in ('true', '1', 'yes')
        elif kind.startswith('int'):
            try:
                value = int(text)
            except ValueError:
                raise UserError(f'--set={item}: {key} is a whole number') from None
        else:
            value = text.strip()
        overrides[key] = value
    return overrides

#----------------------------------------------------------------------------
# The benchmark: every requested stage, on one or both paths; one record per
# stage and path.

def run_benchmark(
    what:         Sequence[str] = STAGES,   # Stages to measure (STAGES and EXTRA_STAGES).
    device:       str | torch.device | None = None, # None = CUDA if available, else CPU.
    config:       str = 'tiny',             # A key of CONFIGS.
    batch:        int | None = None,        # Images per batch; None = the configuration's, or what fits (fast, GPU).
    seconds:      float = 10,               # Time per path and stage after the warm-up.
    compare:      bool = False,             # Measure both paths, interleaved (otherwise `path` only).
    path:         str = 'fast',             # The path measured without `compare`.
    detector:     str = DEFAULT_DETECTOR,   # fid's detector (path, URL or STANDIN_DETECTOR).
    peak:         float | None = None,      # Peak TFLOP/s for MFU; None = from PEAK_TFLOPS.
    workdir:      str | None = None,        # Scratch folder; None = a temporary one, deleted after.
    fast_overrides: dict | None = None,     # Changes to the device's fast settings (tests, experiments).
    augment:      float = 0.12,             # train: augmentation probability (train.py's --augment); 0 = none.
    profile:      bool = False,             # train: add a profile of each path's step (profile_runner) to its record.
    timeout:      float = 900,              # Longest warm-up of one path (compiling included), in seconds.
    stall_dir:    str | None = None,        # Where the stacks of a stalled measurement go; None = the temp folder.
    log:          Callable[[str], None] = print,
    on_records:   Callable[[list[dict[str, Any]]], None] | None = None, # Called with each stage's records as it ends.
) -> list[dict[str, Any]]:
    device = torch.device(device) if device is not None else dist.default_device()
    unknown = [w for w in what if w not in STAGES + EXTRA_STAGES]
    if unknown:
        raise UserError(f'--what: unknown stage "{unknown[0]}"; choose from {", ".join(STAGES + EXTRA_STAGES)}')
    if config not in CONFIGS:
        raise UserError(f'--config: unknown configuration "{config}"; choose from {", ".join(CONFIGS)}')
    if not 0 <= augment <= 1:
        raise UserError(f'--augment={augment}: a probability between 0 and 1')
    paths = PATHS if compare else (path,)
    settings = fast_lib.fast_settings(device, **(fast_overrides or {}))
    common = dict(config=config, device=str(device), device_name=device_name(device),
                  date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                  torch=torch.__version__, threads=torch.get_num_threads(),
                  omp_num_threads=os.environ.get('OMP_NUM_THREADS'))
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix='bench-'))
        resolution = CONFIGS[config]['resolution']
        for stage in what:
            if stage == 'frechet':
                log('frechet: timing both formulas once at 2048 features...')
                stage_records = [dict(common, **r, load=list(os.getloadavg())) for r in frechet_records()]
                records += stage_records
                if on_records is not None:
                    on_records(stage_records)
                continue
            log(f'{stage}: setting up {" and ".join(paths)}...')
            load_before = os.getloadavg()
            runners = []
            for p in paths:
                fast = settings if p == 'fast' else None
                if stage == 'train':
                    data_zip = os.path.join(workdir, 'train.zip')
                    if not os.path.isfile(data_zip):
                        write_image_zip(data_zip, 256, resolution)
                    runners.append(train_runner(config, p, device, batch or default_batch(config, 'train', device),
                                                data_zip, fast, augment=augment))
                elif stage in ('denoise', 'generate'):
                    runners.append(sampling_runner(stage, config, p, device, batch, workdir, fast))
                else:
                    runners.append(fid_runner(config, p, device, batch or default_batch(config, 'fid', device),
                                              detector, fast))
            if stage == 'denoise':
                obs_path = observations_path(workdir)
                shutil.rmtree(obs_path, ignore_errors=True)
                write_observations(obs_path, BATCHES_PER_CALL * max(r.batch for r in runners), resolution, DENOISE_SIGMA)
            log(f'{stage}: counting FLOPs...')
            if stage == 'train':
                flop_per_img = train_flops(config, device)
            elif stage == 'fid':
                flop_per_img = fid_flops(config, device, detector)
            else:
                flop_per_img = sampling_flops(stage, config, device, workdir)
            log(f'{stage}: measuring {seconds:g} s per path after the warm-up...')
            measure(runners, device, seconds, warmup=2 if stage == 'train' else 1, timeout=timeout,
                    stall_dir=stall_dir or tempfile.gettempdir())
            if profile and stage == 'train':
                for runner in runners:
                    log(f'train: profiling the {runner.path} path...')
                    runner.extra['profile'] = profile_runner(runner, device)
            finished = runners[0].finish() if runners[0].finish is not None else {}  # The same code for both paths.
            for runner in runners:
                img_per_s = runner.images / runner.seconds
                tflops = flop_per_img * img_per_s / 1e12
                peak_value = peak if peak is not None else peak_tflops(common['device_name'], runner.dtype, uses_tf32(runner))
                record = dict(what=stage, path=runner.path, **common, dtype=runner.dtype, batch=runner.batch,
                              img_per_s=round(img_per_s, 3), flop_per_img=flop_per_img, tflops=round(tflops, 4),
                              mfu=None if not peak_value else round(tflops / peak_value, 4),
                              peak_tflops=peak_value, peak_mem_gb=round(runner.peak_bytes / 2**30, 3),
                              images=runner.images, seconds=round(runner.seconds, 3),
                              warmup_s=round(runner.warmup_s, 3), load=[round(x, 2) for x in load_before])
                record.update({k: v for k, v in runner.extra.items() if k != 'outdir'})
                if finished:
                    record.update(finished, fid_50k_s=round(50000 / img_per_s + finished['frechet_s'], 1))
                if runner.path == 'fast':
                    record['settings'] = dataclasses.asdict(settings)
                records.append(record)
            if compare:
                faithful, fast_record = records[-2], records[-1]
                fast_record['speedup'] = round(fast_record['img_per_s'] / faithful['img_per_s'], 3)
                if stage in ('denoise', 'generate'):
                    fast_record.update(png_difference(runners[0].extra['outdir'], runners[1].extra['outdir']) or {})
            if on_records is not None:
                on_records(records[-len(runners):])
            for runner in runners:
                if runner.close is not None:
                    runner.close()
            del runners
    return records

#----------------------------------------------------------------------------
# Output: records as JSON lines (appended), and a table.

def append_records(path: str, records: Sequence[dict[str, Any]], command: str | None = None) -> None:
    try:
        for record in records:
            append_json(path, dict(record, command=command) if command else record)
    except OSError as e:
        raise UserError(f'--json={path}: cannot write ({e.strerror or e})') from None

def format_table(records: Sequence[dict[str, Any]]) -> str:
    columns = [('what', 'what', '{}'), ('path', 'path', '{}'), ('config', 'config', '{}'), ('device', 'device', '{}'),
               ('dtype', 'dtype', '{}'), ('batch', 'batch', '{}'), ('img/s', 'img_per_s', '{:.2f}'),
               ('GFLOP/img', 'flop_per_img', '{:.3g}'), ('TFLOP/s', 'tflops', '{:.3g}'), ('MFU', 'mfu', '{:.1%}'),
               ('peak GB', 'peak_mem_gb', '{:.2f}'), ('speedup', 'speedup', '{:.2f}x')]
    rows = [[label for label, _key, _fmt in columns]]
    standin = False  # FID timed with the stand-in detector: marked, and said below the table.
    for record in records:
        if record['what'] == 'frechet':
            continue
        row = []
        for _label, key, fmt in columns:
            value = record.get(key)
            if key == 'flop_per_img' and value is not None:
                value = value / 1e9
            row.append('-' if value is None else fmt.format(value))
        if record['what'] == 'fid' and record.get('detector') == STANDIN_NAME:
            row[0] += '*'
            standin = True
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    lines = ['  '.join(cell.rjust(w) if i >= 5 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    if standin:
        lines.append(f'* fid: the detector was the {STANDIN_NAME}; Inception\'s timings differ')
    for record in records:
        if 'profile' in record:
            lines.append(format_profile(record))
    for record in records:
        if record['what'] == 'frechet':
            lines.append(f'frechet ({record["dim"]} features, {record["formula"]}): {record["seconds"]:.2f} s'
                         + (f', {record["speedup"]:.1f}x faster, relative difference {record["rel_diff"]:.1e}'
                            if 'speedup' in record else ''))
    return '\n'.join(lines)

def format_profile(record: dict[str, Any]) -> str:
    prof = record['profile']
    idle = f', device idle {prof["idle_share"]:.0%}' if prof.get('idle_share') is not None else ''
    lines = [f'{record["what"]} {record["path"]} profile: {prof["wall_ms_per_step"]:.1f} ms per step, '
             f'{prof["busy_ms_per_step"]:.1f} ms busy{idle}']
    lines += [f'  {kind:<24s} {v["ms"]:8.2f} ms  {v["share"]:6.1%}' for kind, v in prof['kinds'].items()]
    return '\n'.join(lines)

#----------------------------------------------------------------------------
# docs/performance.md: the records of a JSON-lines file as Markdown tables,
# one table per bench.py run (its device, date, command and machine load).

def markdown_tables(records: Sequence[dict[str, Any]]) -> str:
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        runs.setdefault((record.get('command') or '?', record.get('date') or '?'), []).append(record)
    parts = []
    for (command, _date), rows in runs.items():
        first = rows[0]
        load = first.get('load')
        parts.append(f'**{first["device_name"]}** ({first["device"]}, {first.get("threads")} threads, '
                     f'OMP_NUM_THREADS={first.get("omp_num_threads")}), {first["date"]}, torch {first.get("torch")}'
                     + (f', load average {load[0]:.1f}' if load else '') + f':\n`{command}`\n')
        stage_rows = [r for r in rows if r['what'] != 'frechet']
        if stage_rows:
            parts.append('| stage | path | config | dtype | batch | img/s | GFLOP/img | TFLOP/s | MFU | peak GB | '
                         'speedup | fast vs faithful (uint8 levels) | notes |')
            parts.append('| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |')
            for r in stage_rows:
                diff = (f'mean {r["diff_u8_mean"]:g}, max {r["diff_u8_max"]}' if 'diff_u8_max' in r else '')
                notes = []
                if r['what'] == 'fid':
                    notes.append(f'detector: {r.get("detector")}; statistics and distance {r.get("frechet_s")} s; '
                                 f'50,000 images: {r.get("fid_50k_s")} s')
                notes.append(f'warm-up {r["warmup_s"]:.1f} s')
                if r.get('compiled_graphs') or r.get('recompiled_graphs') or r.get('graph_breaks'):
                    notes.append(f'compiled graphs {r.get("compiled_graphs", 0)}, recompiled after the warm-up '
                                 f'{r.get("recompiled_graphs", 0)}, graph breaks {r.get("graph_breaks", 0)}')
                cells = [r['what'], r['path'], r['config'], r['dtype'], str(r['batch']), f'{r["img_per_s"]:.3g}',
                         f'{r["flop_per_img"] / 1e9:.3g}', f'{r["tflops"]:.3g}',
                         '-' if r['mfu'] is None else f'{r["mfu"]:.1%}', f'{r["peak_mem_gb"]:.2f}',
                         f'{r["speedup"]:.2f}x' if 'speedup' in r else '', diff, '; '.join(notes)]
                parts.append('| ' + ' | '.join(cells) + ' |')
        for r in rows:
            if r['what'] == 'frechet':
                parts.append(f'- Frechet distance, {r["dim"]} features, {r["formula"]}: {r["seconds"]:.2f} s'
                             + (f' ({r["speedup"]:.1f}x faster, relative difference {r["rel_diff"]:.1e})'
                                if 'speedup' in r else ''))
        parts.append('')
    return '\n'.join(parts)

#----------------------------------------------------------------------------
