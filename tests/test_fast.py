"""torch_utils/fast.py: the fast path's settings, background I/O, batch padding and optimizer
states, on the CPU."""

import dataclasses
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import torch

from torch_utils import fast as fast_lib

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Adam's fused kernel runs on the CPU from torch 2.4 on (on CUDA from 2.0): tests that use it on the CPU
# need it (CI also runs them with the oldest declared torch, 2.1).
def fused_adam_on_cpu() -> bool:
    try:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)
    except RuntimeError:
        return False
    return True

NEEDS_FUSED = pytest.mark.skipif(not fused_adam_on_cpu(), reason='this torch has no fused Adam on the CPU (torch < 2.4)')

#----------------------------------------------------------------------------
# Settings: chosen per device type, plain data, overridable.

def test_cpu_settings_and_overrides():
    cpu = fast_lib.fast_settings('cpu')
    assert cpu.dtype is None and not cpu.compile and not cpu.channels_last and cpu.optimizer == 'foreach'
    forced = fast_lib.fast_settings(torch.device('cpu'), dtype='bfloat16', compile=True)
    assert forced.dtype == 'bfloat16' and forced.compile and forced.optimizer == 'foreach'
    with pytest.raises(TypeError):
        fast_lib.fast_settings('cpu', no_such_field=1)
    for bad in (dict(dtype='float8'), dict(optimizer='sgd'), dict(stop_poll_steps=0), dict(cudnn_benchmark_limit=-1)):
        key, value = next(iter(bad.items()))
        with pytest.raises(ValueError, match=f'^{key}={value}: '):
            fast_lib.fast_settings('cpu', **bad)

# cuDNN's algorithm search: set only where the settings name a limit and cuDNN is there.
def test_cudnn_benchmark_limit(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark_limit', 7)
    monkeypatch.setattr(torch.backends.cudnn, 'is_available', lambda: True)
    fast_lib.set_cudnn_benchmark_limit(None)
    fast_lib.set_cudnn_benchmark_limit(fast_lib.fast_settings('cpu'))
    assert torch.backends.cudnn.benchmark_limit == 7
    fast_lib.set_cudnn_benchmark_limit(fast_lib.fast_settings('cpu', cudnn_benchmark_limit=0))
    assert torch.backends.cudnn.benchmark_limit == 0
    monkeypatch.setattr(torch.backends.cudnn, 'is_available', lambda: False)
    fast_lib.set_cudnn_benchmark_limit(fast_lib.fast_settings('cpu', cudnn_benchmark_limit=3))
    assert torch.backends.cudnn.benchmark_limit == 0

def test_compute_dtype_is_set_on_the_live_network_only(tmp_path):
    from torch_utils import persistence
    from training.networks import EDMPrecond
    net = EDMPrecond(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=16, channel_mult=[1],
                     num_blocks=1, attn_resolutions=[])
    fast_lib.set_compute_dtype(net, 'bfloat16')
    assert net.use_bf16 and not net.use_fp16
    assert net(torch.zeros(2, 3, 8, 8), torch.ones(2)).dtype == torch.float32  # The output stays float32.
    persistence.save_network_pickle(str(tmp_path / 'net.pkl'), dict(ema=net))
    assert not persistence.load_network(str(tmp_path / 'net.pkl')).use_bf16  # Pickles keep the constructor's.
    fp16 = EDMPrecond(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=16, channel_mult=[1],
                      num_blocks=1, attn_resolutions=[], use_fp16=True)
    fast_lib.set_compute_dtype(fp16, 'bfloat16')
    assert fp16.use_fp16 and not fp16.use_bf16  # A float16 network keeps float16.

#----------------------------------------------------------------------------
# Background writing and reading ahead.

def test_background_writer_runs_every_job_and_bounds_the_queue():
    done, lock = [], threading.Lock()
    def job(i):
        time.sleep(0.01)
        with lock:
            done.append(i)
    with fast_lib.BackgroundWriter(num_threads=3, max_pending=2) as writer:
        for i in range(9):
            writer.submit(job, i)
            assert len(writer._pending) <= 2
    assert sorted(done) == list(range(9))

def test_background_writer_errors_surface_in_the_caller():
    def fail():
        raise OSError('disk full')
    writer = fast_lib.BackgroundWriter(num_threads=1, max_pending=1)
    writer.submit(fail)
    with pytest.raises(OSError, match='disk full'):
        writer.submit(lambda: None)  # Waits for the failed job, which raises here.
    writer.close()

    with pytest.raises(OSError, match='disk full'):
        with fast_lib.BackgroundWriter() as writer:
            writer.submit(fail)  # Raised by close() at the end of the block.

    # An error in the caller's block wins; pending jobs are dropped.
    ran = []
    with pytest.raises(KeyError):
        with fast_lib.BackgroundWriter(num_threads=1, max_pending=8) as writer:
            writer.submit(time.sleep, 0.05)
            writer.submit(ran.append, 1)
            raise KeyError('caller')
    assert len(ran) <= 1

def test_prefetch_keeps_order_and_surfaces_errors():
    assert list(fast_lib.prefetch(lambda x: x * x, range(7), depth=2)) == [x * x for x in range(7)]
    assert list(fast_lib.prefetch(lambda x: x, [])) == []
    def load(x):
        if x == 3:
            raise ValueError('broken item 3')
        return x
    got = []
    with pytest.raises(ValueError, match='broken item 3'):
        for x in fast_lib.prefetch(load, range(6)):
            got.append(x)
    assert got == [0, 1, 2]

def test_pad_batch():
    assert fast_lib.pad_batch([4, 5], 4) == [4, 5, 5, 5]
    assert fast_lib.pad_batch([4, 5], 0) == [4, 5]
    assert fast_lib.pad_batch([4, 5, 6], 2) == [4, 5, 6]
    assert fast_lib.pad_batch([], 3) == []

def test_host_copy_and_batch_size_on_the_cpu():
    x = torch.arange(6, dtype=torch.uint8).reshape(2, 3)
    assert fast_lib.host_copy(x)().tolist() == x.tolist()
    settings = fast_lib.fast_settings('cpu')
    net = torch.nn.Identity()
    assert fast_lib.sampling_batch_size(net, torch.device('cpu'), settings, None, 64) == 64
    assert fast_lib.sampling_batch_size(net, torch.device('cpu'), settings, 7, 64) == 7
    assert fast_lib.sampling_batch_size(net, torch.device('cpu'), None, None, 64) == 64

#----------------------------------------------------------------------------
# Optimizer states: a state keeps loading into either implementation, and
# the loading optimizer keeps its own.

@pytest.mark.parametrize('writer, reader', [({}, dict(foreach=True)), (dict(foreach=True), {}),
                                            pytest.param(dict(fused=True), {}, marks=NEEDS_FUSED),
                                            pytest.param({}, dict(fused=True), marks=NEEDS_FUSED)])
def test_optimizer_states_cross_implementations(writer, reader):
    def make(flags):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
        return params, torch.optim.Adam(params, lr=1e-2, **flags)
    def steps(params, opt, ks):
        for k in ks:
            opt.zero_grad()
            sum((p * (k + 1)).square().sum() for p in params).backward()
            opt.step()
    ref_params, ref_opt = make(writer)
    steps(ref_params, ref_opt, range(3))
    params, opt = make(writer)
    steps(params, opt, range(2))
    new_params, new_opt = make(reader)
    with torch.no_grad():
        for p, q in zip(new_params, params):
            p.copy_(q)
    fast_lib.load_optimizer_state(new_opt, opt.state_dict())
    group = new_opt.param_groups[0]
    assert group['foreach'] == reader.get('foreach') and group['fused'] == reader.get('fused')
    steps(new_params, new_opt, [2])
    for p, q in zip(new_params, ref_params):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# One compile per run: train.py --fast with every default that touches the
# step (augmentation on, x-flips, class labels, the Online SFBD buffer)
# compiles the network once, with no graph break, and never again. The CPU's
# fast path does not compile, so the test turns compiling on with a backend
# that needs no C compiler; graph breaks and recompilations are decided by
# dynamo before any backend, so they are the GPU's.

def test_train_fast_compiles_once_per_run(tmp_path, monkeypatch):
    from click.testing import CliRunner
    from torch._dynamo.utils import counters

    import train
    from sfbd_helpers import make_image_dataset, make_observation_set, random_observations
    make_image_dataset(str(tmp_path / 'clean'), 8, num_classes=2)
    make_observation_set(str(tmp_path / 'noisy'), random_observations(8, sigma=0.5), labels=[0, 1] * 4)
    settings = fast_lib.fast_settings
    monkeypatch.setattr(fast_lib, 'fast_settings', lambda device, **kw: settings(
        device, **dict(dict(compile=True, compile_backend='aot_eager'), **kw)))
    monkeypatch.setattr(torch, 'get_num_threads', torch.get_num_threads)
    torch.set_num_threads(1)
    torch._dynamo.reset()
    counters.clear()
    args = ['--outdir', tmp_path / 'out', '--data', tmp_path / 'clean', '--noisy', tmp_path / 'noisy', '--cond=1',
            '--xflip=1', '--augment=0.5', '--arch=ddpmpp', '--cbase=16', '--cres=1', '--batch=8', '--duration=0.00008',
            '--tick=1', '--refresh-every=2', '--refresh-batch=4', '--seed=1', '--workers=1', '--fast', '--nosubdir']
    result = CliRunner().invoke(train.main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    assert 'Compiling the network' in result.output and 'The first step, with compiling, took' in result.output
    assert len(re.findall(r'^tick ', result.output, flags=re.M)) == 2  # 10 steps, refreshes among them.
    assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])
    assert not counters['graph_break'], dict(counters['graph_break'])

#----------------------------------------------------------------------------
# Regional compilation (compile_regions, a lever of bench.py --set): the
# network's blocks compiled one by one in place, the state-dict names kept,
# the loss and gradients those of the eager network, no graph break, and no
# compiling after the first step.

def test_regional_compile_computes_what_the_network_computes():
    import copy

    from torch._dynamo.utils import counters
    from training.loss import EDMLoss
    from training.networks import EDMPrecond, UNetBlock
    from training.training_loop import loss_function
    torch.manual_seed(0)
    net = EDMPrecond(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=8, channel_mult=[1, 2],
                     num_blocks=1, attn_resolutions=[4], dropout=0)
    regional = copy.deepcopy(net)
    keys = list(net.state_dict())
    settings = fast_lib.fast_settings('cpu', compile=True, compile_backend='aot_eager', compile_regions=True)
    torch._dynamo.reset()
    counters.clear()
    images, labels = torch.randn(4, 3, 8, 8), torch.zeros(4, 0)
    losses = []
    for model, fast in ((net, None), (regional, settings)):
        compute_loss = loss_function(EDMLoss(), model, None, fast)
        torch.manual_seed(1)
        graphs = []
        for _ in range(2):
            loss = compute_loss(images, labels).sum()
            loss.backward()
            graphs.append(counters['stats']['unique_graphs'])
        losses.append(loss.detach())
        assert graphs[1] == graphs[0]  # Nothing compiled after the first step.
    assert list(regional.state_dict()) == keys
    blocks = [m for m in regional.modules() if isinstance(m, UNetBlock)]
    assert 1 < counters['stats']['unique_graphs'] <= len(blocks), dict(counters['stats'])
    assert not counters['graph_break'], dict(counters['graph_break'])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for p, q in zip(net.parameters(), regional.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6)

#----------------------------------------------------------------------------
# The compile cache: inductor's code kept in the user's cache directory (a
# TORCHINDUCTOR_CACHE_DIR of the user's own wins), so that the next run, a
# new process as every SLURM job is, compiles from the cache.

def test_compile_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv('TORCHINDUCTOR_CACHE_DIR', raising=False)
    monkeypatch.setenv('DNNLIB_CACHE_DIR', str(tmp_path / 'dnnlib'))
    assert fast_lib.fast_settings('cpu').compile_cache == str(tmp_path / 'dnnlib' / 'torch-compile')
    monkeypatch.setenv('TORCHINDUCTOR_CACHE_DIR', str(tmp_path / 'own'))
    assert fast_lib.fast_settings('cpu').compile_cache == str(tmp_path / 'own')
    settings = fast_lib.fast_settings('cpu', compile=True, compile_cache=str(tmp_path / 'cache'))
    assert fast_lib.use_compile_cache(settings) == str(tmp_path / 'cache')
    assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(tmp_path / 'cache') and (tmp_path / 'cache').is_dir()
    other = dataclasses.replace(settings, compile_backend='aot_eager', compile_cache=str(tmp_path / 'unused'))
    assert fast_lib.use_compile_cache(other) is None and not (tmp_path / 'unused').exists()
    assert fast_lib.use_compile_cache(dataclasses.replace(settings, compile_cache=None)) is None
    (tmp_path / 'file').write_text('')
    unwritable = dataclasses.replace(settings, compile_cache=str(tmp_path / 'file' / 'cache'))
    with pytest.warns(UserWarning, match='torch.compile cache .*file'):
        assert fast_lib.use_compile_cache(unwritable) is None
    assert os.environ['TORCHINDUCTOR_CACHE_DIR'] == str(tmp_path / 'cache')  # PyTorch's choice left as it was.

COMPILE_TWICE = """
import json, sys, torch
from torch._dynamo.utils import counters
from torch_utils import fast as fast_lib
settings = fast_lib.fast_settings('cpu', compile=True, compile_cache=sys.argv[1])
net = fast_lib.compile_module(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.SiLU()), settings)
net(torch.randn(2, 4, requires_grad=True)).sum().backward()
print(json.dumps(dict(counters['inductor'])))
"""

# Inductor on the CPU needs a C compiler (CI's machine has one): two processes
# compile the same forward and backward; the second finds both in the cache.
# Skipped where this torch's inductor does not cache graphs by default, as
# with torch 2.1, which CI also runs this file with.
def inductor_caches_graphs() -> bool:
    from torch._inductor import config
    return bool(getattr(config, 'fx_graph_cache', False))

@pytest.mark.skipif(not inductor_caches_graphs(), reason="this torch's inductor does not cache graphs by default")
def test_a_second_process_compiles_from_the_cache(tmp_path):
    runs = []
    for _ in range(2):
        env = dict(os.environ, PYTHONPATH=REPO_ROOT, OMP_NUM_THREADS='1')
        env.pop('TORCHINDUCTOR_CACHE_DIR', None)
        out = subprocess.run([sys.executable, '-c', COMPILE_TWICE, str(tmp_path / 'cache')], env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert runs[0].get('fxgraph_cache_miss', 0) >= 2 and not runs[0].get('fxgraph_cache_hit'), runs
    assert runs[1].get('fxgraph_cache_hit', 0) >= 2 and not runs[1].get('fxgraph_cache_miss'), runs
