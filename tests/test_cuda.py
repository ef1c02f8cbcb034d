"""The fast path on a CUDA GPU: what the CPU tests cannot show (inductor's compiled training step,
bfloat16 on tensor cores, cuDNN's resampling). Skipped without a GPU; scripts/gpu_check.sh runs
them on a lent one (docs/performance.md)."""

from __future__ import annotations

import pytest
import torch

from torch_utils import fast as fast_lib
from tools import bench
from training.networks import EDMPrecond

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')

def small_ddpmpp(**kwargs) -> EDMPrecond:
    torch.manual_seed(0)
    return EDMPrecond(img_resolution=32, img_channels=3, **dict(bench.CONFIGS['tiny']['network'], **kwargs)).cuda()

#----------------------------------------------------------------------------
# The [1, 1] resampling as pooling and nearest upsampling: the same numbers
# as EDM's grouped convolutions, up to the order of the four-term sums.

@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_pool_resampling_matches_the_convolutions(dtype):
    net = small_ddpmpp().eval()
    x, sigma = torch.randn([16, 3, 32, 32], device='cuda'), torch.rand([16], device='cuda') * 5
    net.use_bf16, net.use_fp16 = dtype == torch.bfloat16, dtype == torch.float16
    with torch.no_grad():
        reference = net(x, sigma)
        fast_lib.set_pool_resample(net, True)
        pooled = net(x, sigma)
    scale = reference.abs().max().item()
    tolerance = dict([(torch.float32, 1e-5), (torch.bfloat16, 3e-2), (torch.float16, 3e-3)])[dtype]
    assert (pooled - reference).abs().max().item() <= tolerance * scale

#----------------------------------------------------------------------------
# The training step compiled by inductor, with augmentation: one graph, no
# break, no recompilation over many steps, and finite losses.

def test_compiled_training_step_on_the_gpu(tmp_path):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    data = bench.write_image_zip(str(tmp_path / 'data.zip'), 64, 32)
    runner = bench.train_runner('tiny', 'fast', torch.device('cuda'), 32, data, fast_lib.fast_settings('cuda'),
                                augment=0.12)
    for _ in range(12):
        runner.run()
    torch.cuda.synchronize()
    assert counters['stats']['unique_graphs'] == 1, dict(counters['stats'])
    assert not counters['graph_break'], dict(counters['graph_break'])

# The same step with each block compiled on its own (compile_regions): one
# graph per distinct block shape, none after the first step, no break.
def test_regionally_compiled_training_step_on_the_gpu(tmp_path):
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    data = bench.write_image_zip(str(tmp_path / 'data.zip'), 64, 32)
    runner = bench.train_runner('tiny', 'fast', torch.device('cuda'), 32, data,
                                fast_lib.fast_settings('cuda', compile_regions=True), augment=0.12)
    runner.run()
    graphs = counters['stats']['unique_graphs']
    for _ in range(6):
        runner.run()
    torch.cuda.synchronize()
    assert 1 < graphs == counters['stats']['unique_graphs'], dict(counters['stats'])
    assert not counters['graph_break'], dict(counters['graph_break'])

#----------------------------------------------------------------------------
# Sampling on the fast path stays close to the faithful path.

def test_fast_sampling_network_stays_close():
    net = small_ddpmpp().eval().requires_grad_(False)
    x, sigma = torch.randn([8, 3, 32, 32], device='cuda') * 0.6, torch.full([8], 0.6, device='cuda')
    with torch.no_grad():
        reference = net(x, sigma)
        fast = fast_lib.prepare_sampling_network(small_ddpmpp(), fast_lib.fast_settings('cuda'))
        result = fast(x, sigma)
    assert result.dtype == torch.float32 and torch.isfinite(result).all()
    assert (result - reference).abs().max().item() < 0.05

# The fast sampling network times cuDNN's algorithms, as many as its settings say.
def test_fast_sampling_sets_cudnn_search(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark_limit', fast_lib.PYTORCH_CUDNN_BENCHMARK_LIMIT)
    settings = fast_lib.fast_settings('cuda', compile=False, cudnn_benchmark_limit=0)
    fast_lib.prepare_sampling_network(small_ddpmpp(), settings)
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.benchmark_limit == 0
