"""Tests for training/networks.py: EDM's backbones and preconditioners."""

import math

import numpy as np
import pytest
import torch

from training.networks import (AttentionOp, Conv2d, DhariwalUNet, EDMPrecond, PositionalEmbedding,
                               SongUNet, UNetBlock, VEPrecond, VPPrecond, iDDPMPrecond, weight_init)

#----------------------------------------------------------------------------
# These networks are tiny; intra-op threads only add contention on a busy CI box.

@pytest.fixture(autouse=True, scope='module')
def _single_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)

#----------------------------------------------------------------------------
# Configurations of EDM's train.py (--arch ddpmpp / ncsnpp / adm).

DDPMPP = dict(model_type='SongUNet', embedding_type='positional', encoder_type='standard', decoder_type='standard',
              channel_mult_noise=1, resample_filter=[1, 1], model_channels=128, channel_mult=[2, 2, 2])
NCSNPP = dict(model_type='SongUNet', embedding_type='fourier', encoder_type='residual', decoder_type='standard',
              channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128, channel_mult=[2, 2, 2])
ADM = dict(model_type='DhariwalUNet', model_channels=192, channel_mult=[1, 2, 3, 4])

FULL_SIZE = {
    'ddpmpp-cifar10-uncond': (dict(img_resolution=32, img_channels=3, **DDPMPP), 55_732_739),
    'ddpmpp-cifar10-cond-aug': (dict(img_resolution=32, img_channels=3, label_dim=10, augment_dim=9, **DDPMPP), 55_735_299),
    'ncsnpp-cifar10-uncond': (dict(img_resolution=32, img_channels=3, **NCSNPP), 56_395_523),
    'ddpmpp-64-aug': (dict(img_resolution=64, img_channels=3, augment_dim=9, **dict(DDPMPP, channel_mult=[1, 2, 2, 2])), 61_805_571),
    'ncsnpp-64-aug': (dict(img_resolution=64, img_channels=3, augment_dim=9, **dict(NCSNPP, channel_mult=[1, 2, 2, 2])), 62_761_091),
    'adm-imagenet64-cond': (dict(img_resolution=64, img_channels=3, label_dim=1000, **ADM), 295_899_267),
}

def _build_meta(kwargs):
    with torch.device('meta'):
        return EDMPrecond(**kwargs)

@pytest.mark.parametrize('name', list(FULL_SIZE))
def test_full_size_parameter_counts(name):
    kwargs, expected = FULL_SIZE[name]
    net = _build_meta(kwargs)
    assert sum(p.numel() for p in net.parameters()) == expected

#----------------------------------------------------------------------------
# State-dict names and shapes, in EDM's naming (attention layers are the
# block's norm2 / qkv / proj; resampling filters are buffers).

def _shapes(net):
    return {name: tuple(t.shape) for name, t in net.state_dict().items()}

def test_state_dict_names_ddpmpp():
    shapes = _shapes(_build_meta(FULL_SIZE['ddpmpp-cifar10-cond-aug'][0]))
    expected = {
        'model.map_label.weight': (128, 10),
        'model.map_label.bias': (128,),
        'model.map_augment.weight': (128, 9),
        'model.map_layer0.weight': (512, 128),
        'model.map_layer1.bias': (512,),
        'model.enc.32x32_conv.weight': (128, 3, 3, 3),
        'model.enc.32x32_block0.conv0.weight': (256, 128, 3, 3),
        'model.enc.32x32_block0.affine.weight': (256, 512),
        'model.enc.32x32_block0.skip.weight': (256, 128, 1, 1),
        'model.enc.16x16_down.conv0.resample_filter': (1, 1, 2, 2),
        'model.enc.16x16_down.skip.weight': (256, 256, 1, 1),
        'model.enc.16x16_block0.norm2.weight': (256,),
        'model.enc.16x16_block0.qkv.weight': (768, 256, 1, 1),
        'model.enc.16x16_block0.proj.weight': (256, 256, 1, 1),
        'model.dec.8x8_in0.qkv.bias': (768,),
        'model.dec.8x8_block0.conv0.weight': (256, 512, 3, 3),
        'model.dec.16x16_block4.qkv.weight': (768, 256, 1, 1),
        'model.dec.32x32_up.conv0.resample_filter': (1, 1, 2, 2),
        'model.dec.32x32_aux_norm.weight': (256,),
        'model.dec.32x32_aux_conv.weight': (3, 256, 3, 3),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    assert 'model.map_noise.freqs' not in shapes            # positional embedding has no state
    assert 'model.enc.16x16_block1.qkv.weight' in shapes
    assert 'model.dec.16x16_block3.qkv.weight' not in shapes  # decoder: attention on the last block only
    assert not any('aux_up' in name or 'aux_skip' in name for name in shapes)

def test_state_dict_names_ncsnpp():
    shapes = _shapes(_build_meta(FULL_SIZE['ncsnpp-cifar10-uncond'][0]))
    assert shapes['model.map_noise.freqs'] == (128,)
    assert shapes['model.map_layer0.weight'] == (512, 256)
    assert shapes['model.enc.16x16_aux_residual.weight'] == (256, 3, 3, 3)
    assert shapes['model.enc.16x16_aux_residual.resample_filter'] == (1, 1, 4, 4)
    assert shapes['model.enc.8x8_aux_residual.weight'] == (256, 256, 3, 3)
    assert shapes['model.dec.32x32_aux_conv.weight'] == (3, 256, 3, 3)

def test_state_dict_names_adm():
    shapes = _shapes(_build_meta(FULL_SIZE['adm-imagenet64-cond'][0]))
    expected = {
        'model.map_label.weight': (768, 1000),
        'model.map_layer0.weight': (768, 192),
        'model.enc.64x64_conv.weight': (192, 3, 3, 3),
        'model.enc.32x32_down.affine.weight': (384, 768),   # adaptive scale: 2x channels
        'model.enc.32x32_block0.qkv.weight': (1152, 384, 1, 1),
        'model.dec.8x8_in0.proj.weight': (768, 768, 1, 1),
        'model.dec.64x64_block3.conv0.weight': (192, 384, 3, 3),
        'model.out_norm.weight': (192,),
        'model.out_conv.weight': (3, 192, 3, 3),
    }
    for name, shape in expected.items():
        assert shapes.get(name) == shape, name
    assert 'model.map_label.bias' not in shapes
    assert 'model.enc.64x64_block0.qkv.weight' not in shapes  # no attention at 64x64
    assert 'model.enc.32x32_down.skip.weight' not in shapes   # pure resampling shortcut

def test_attention_heads_adm():
    net = _build_meta(FULL_SIZE['adm-imagenet64-cond'][0])
    assert net.model.enc['32x32_block0'].num_heads == 6
    assert net.model.dec['8x8_in0'].num_heads == 12
    assert net.model.enc['64x64_block0'].num_heads == 0

#----------------------------------------------------------------------------
# EDM's own outputs on a small DDPM++ network (fixture made with NVlabs/edm).

def test_matches_edm_fixture(fixtures_dir):
    ref = torch.load(fixtures_dir / 'edm-ddpmpp-tiny-net.pt', weights_only=True)
    assert ref['class_name'] == 'EDMPrecond'
    net = EDMPrecond(**ref['kwargs']).eval()
    net.load_state_dict(ref['state_dict'], strict=True)
    with torch.no_grad():
        for i, s in enumerate(ref['sigmas']):
            sigma = net.round_sigma(torch.full([4], s, dtype=torch.float64))
            out = net(ref['x'] * s, sigma, ref['labels'])
            expected = ref['outputs'][i]
            assert out.dtype == torch.float32
            scale = expected.abs().max().item()
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5 * max(scale, 1e-3))

#----------------------------------------------------------------------------
# Preconditioning coefficients, checked through a stub backbone that records
# its inputs and returns a constant.

class _StubBackbone(torch.nn.Module):
    def __init__(self, out_channels, value):
        super().__init__()
        self.out_channels = out_channels
        self.value = value
        self.seen = None

    def forward(self, x, noise_labels, class_labels, augment_labels=None):
        self.seen = dict(x=x, noise=noise_labels, labels=class_labels)
        return torch.full([x.shape[0], self.out_channels, *x.shape[2:]], float(self.value), dtype=x.dtype)

def _coefficients(net, sigma, out_channels=2):
    """Recover c_skip, c_out, c_in, c_noise of `net` at the given sigmas."""
    x = torch.ones(len(sigma), 2, 4, 4)
    net.model = _StubBackbone(out_channels, 0.0)
    d_zero = net(x, sigma)
    c_in = net.model.seen['x'][:, 0, 0, 0].double()
    c_noise = net.model.seen['noise'].double()
    net.model = _StubBackbone(out_channels, 1.0)
    d_one = net(x, sigma)
    c_skip = d_zero[:, 0, 0, 0].double()
    c_out = (d_one - d_zero)[:, 0, 0, 0].double()
    return c_skip, c_out, c_in, c_noise

def _close(a, b, rtol=2e-6):
    torch.testing.assert_close(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64),
                               rtol=rtol, atol=1e-7)

SIGMAS = torch.tensor([0.002, 0.05, 0.7, 3.0, 80.0], dtype=torch.float64)

def test_edm_coefficients():
    net = EDMPrecond(img_resolution=4, img_channels=2, model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1)
    assert (net.sigma_min, net.sigma_max, net.sigma_data) == (0, float('inf'), 0.5)
    c_skip, c_out, c_in, c_noise = _coefficients(net, SIGMAS)
    sd = 0.5
    _close(c_skip, sd ** 2 / (SIGMAS ** 2 + sd ** 2))
    _close(c_out, SIGMAS * sd / (SIGMAS ** 2 + sd ** 2).sqrt())
    _close(c_in, 1 / (SIGMAS ** 2 + sd ** 2).sqrt())
    _close(c_noise, SIGMAS.log() / 4, rtol=1e-5)
    assert torch.equal(net.round_sigma(SIGMAS), SIGMAS)

def test_vp_coefficients():
    net = VPPrecond(img_resolution=4, img_channels=2, model_channels=8, channel_mult=[1], num_blocks=1)
    beta_d, beta_min, M = 19.9, 0.1, 1000
    sigma_of_t = lambda t: math.sqrt(math.exp(0.5 * beta_d * t ** 2 + beta_min * t) - 1)
    # EDM evaluates sigma(epsilon_t) in float32, where exp(1e-6) - 1 loses digits:
    # the supported minimum is 2**-10 rather than 1.0005e-3. Kept for parity.
    assert net.sigma_min == 2.0 ** -10
    assert net.sigma_min == pytest.approx(sigma_of_t(1e-5), rel=0.03)
    assert net.sigma_max == pytest.approx(sigma_of_t(1.0), rel=1e-5)
    c_skip, c_out, c_in, c_noise = _coefficients(net, SIGMAS)
    t = ((beta_min ** 2 + 2 * beta_d * (1 + SIGMAS ** 2).log()).sqrt() - beta_min) / beta_d
    _close(c_skip, torch.ones_like(SIGMAS))
    _close(c_out, -SIGMAS)
    _close(c_in, 1 / (SIGMAS ** 2 + 1).sqrt())
    # Like EDM, sigma_inv runs in float32: log(1 + sigma^2) is coarse for tiny sigma.
    _close(c_noise[1:], (M - 1) * t[1:], rtol=1e-4)
    _close(c_noise, (M - 1) * t, rtol=0.02)
    _close(net.sigma(net.sigma_inv(SIGMAS[1:].float())), SIGMAS[1:], rtol=1e-4)

def test_ve_coefficients():
    net = VEPrecond(img_resolution=4, img_channels=2, model_channels=8, channel_mult=[1], num_blocks=1)
    assert (net.sigma_min, net.sigma_max) == (0.02, 100)
    c_skip, c_out, c_in, c_noise = _coefficients(net, SIGMAS)
    _close(c_skip, torch.ones_like(SIGMAS))
    _close(c_out, SIGMAS)
    _close(c_in, torch.ones_like(SIGMAS))
    _close(c_noise, (0.5 * SIGMAS).log(), rtol=1e-5)

def test_iddpm_coefficients_and_rounding():
    net = iDDPMPrecond(img_resolution=4, img_channels=2, model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1)
    M = 1000
    u = net.u.double()
    assert u.shape == (M + 1,) and u[M] == 0
    assert bool((u[:-1] > u[1:]).all())
    assert net.sigma_min == float(net.u[M - 1]) and net.sigma_max == float(net.u[0])
    # u_0 is huge (the clamp C_1 acts at j = 1); samplers clamp to 80 themselves.
    assert net.sigma_max > 1e4 and net.sigma_min < 0.01

    # The recurrence of Nichol & Dhariwal, evaluated independently in float64.
    alpha_bar = lambda j: math.sin(0.5 * math.pi * j / M / 1.008) ** 2
    ref = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        ref[j - 1] = math.sqrt((ref[j] ** 2 + 1) / max(alpha_bar(j - 1) / alpha_bar(j), 0.001) - 1)
    _close(u, torch.tensor(ref), rtol=2e-3)  # float32 recurrence, as in EDM

    # round_sigma snaps to the nearest u and keeps dtype and shape.
    index = torch.tensor([999, 900, 500, 100, 3, 0])
    query = (u[index] * 1.001).reshape(2, 3)
    snapped = net.round_sigma(query)
    assert snapped.dtype == torch.float64 and snapped.shape == (2, 3)
    _close(snapped.flatten(), u[index], rtol=1e-7)
    assert torch.equal(net.round_sigma(query, return_index=True).flatten(), index)

    # The backbone sees the raw sigma in c_in / c_out and M-1-index as c_noise.
    sigma = u[index] * 1.001
    c_skip, c_out, c_in, c_noise = _coefficients(net, sigma, out_channels=4)
    _close(c_skip, torch.ones_like(sigma))
    _close(c_out, -sigma)
    _close(c_in, 1 / (sigma ** 2 + 1).sqrt())
    _close(c_noise, (M - 1 - index).double())

def test_class_labels_defaults():
    net = EDMPrecond(img_resolution=4, img_channels=2, label_dim=3, model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1)
    net.model = _StubBackbone(2, 0.0)
    net(torch.zeros(2, 2, 4, 4), torch.ones(2))
    assert torch.equal(net.model.seen['labels'], torch.zeros(1, 3))
    net(torch.zeros(2, 2, 4, 4), torch.ones(2), torch.eye(3, dtype=torch.float64)[:2])
    assert net.model.seen['labels'].dtype == torch.float32 and net.model.seen['labels'].shape == (2, 3)

#----------------------------------------------------------------------------
# Every backbone variant under every preconditioner on a tiny configuration.

SONG_VARIANTS = {
    'ddpmpp': dict(embedding_type='positional', encoder_type='standard', decoder_type='standard', channel_mult_noise=1, resample_filter=[1, 1]),
    'ncsnpp': dict(embedding_type='fourier', encoder_type='residual', decoder_type='standard', channel_mult_noise=2, resample_filter=[1, 3, 3, 1]),
    'skip-skip': dict(embedding_type='positional', encoder_type='skip', decoder_type='skip', resample_filter=[1, 3, 3, 1]),
    'fourier-standard-skip': dict(embedding_type='fourier', encoder_type='standard', decoder_type='skip', resample_filter=[1, 1]),
    'residual-skip': dict(embedding_type='positional', encoder_type='residual', decoder_type='skip', channel_mult_noise=2, resample_filter=[1, 1]),
}
TINY_SONG = dict(model_type='SongUNet', model_channels=16, channel_mult=[1, 2, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
TINY_ADM = dict(model_type='DhariwalUNet', model_channels=64, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4], dropout=0)
BACKBONES = {**{name: dict(TINY_SONG, **kw) for name, kw in SONG_VARIANTS.items()}, 'adm': TINY_ADM}
PRECONDS = {'vp': VPPrecond, 've': VEPrecond, 'iddpm': iDDPMPrecond, 'edm': EDMPrecond}

def _randomize(net, seed=0):
    """Replace all parameters by random values so that every layer matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif 'norm' in name and name.endswith('.weight'):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return net

def _tiny_net(precond, backbone, **extra):
    torch.manual_seed(0)
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=5, augment_dim=4, **BACKBONES[backbone], **extra)
    return _randomize(PRECONDS[precond](**kwargs)).eval()

def _tiny_inputs(net, batch=2):
    gen = torch.Generator().manual_seed(1)
    sigma = torch.tensor([0.3, 5.0][:batch], dtype=torch.float64)
    x = torch.randn(batch, 3, 8, 8, generator=gen) * sigma.float().reshape(-1, 1, 1, 1)
    labels = torch.nn.functional.one_hot(torch.arange(batch) % 5, 5).float()
    augment = torch.randn(batch, 4, generator=gen)
    return x, net.round_sigma(sigma), labels, augment

@pytest.mark.parametrize('backbone', list(BACKBONES))
@pytest.mark.parametrize('precond', list(PRECONDS))
def test_variants_forward(precond, backbone):
    net = _tiny_net(precond, backbone)
    x, sigma, labels, augment = _tiny_inputs(net)
    with torch.no_grad():
        out = net(x, sigma, labels, augment_labels=augment)
        out_plain = net(x, sigma, labels)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert not torch.equal(out, out_plain)  # augmentation labels reach the network

@pytest.mark.parametrize('backbone', ['ncsnpp', 'skip-skip', 'adm'])
def test_backward_and_label_dropout(backbone):
    net = _tiny_net('edm', backbone, label_dropout=0.5).train()
    x, sigma, labels, augment = _tiny_inputs(net)
    out = net(x, sigma, labels, augment_labels=augment)
    out.square().sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)

def test_unet_block_shapes():
    block = UNetBlock(in_channels=16, out_channels=32, emb_channels=8, down=True, attention=True, channels_per_head=8)
    assert block.num_heads == 4
    y = block(torch.randn(2, 16, 8, 8), torch.randn(2, 8))
    assert y.shape == (2, 32, 4, 4)
    up = UNetBlock(in_channels=16, out_channels=16, emb_channels=8, up=True, adaptive_scale=False)
    assert up.skip is not None and up.skip.weight is None  # resample-only shortcut
    assert up(torch.randn(2, 16, 4, 4), torch.randn(2, 8)).shape == (2, 16, 8, 8)

#----------------------------------------------------------------------------
# Building blocks.

def test_conv2d_resampling():
    x = torch.randn(2, 3, 8, 8)
    down = Conv2d(3, 3, kernel=0, down=True)                  # box filter: 2x2 average pooling
    torch.testing.assert_close(down(x), torch.nn.functional.avg_pool2d(x, 2))
    up = Conv2d(3, 3, kernel=0, up=True)                      # box filter: nearest-neighbour upsampling
    torch.testing.assert_close(up(x), torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest'))
    smooth = Conv2d(3, 3, kernel=0, down=True, resample_filter=(1, 3, 3, 1))
    assert torch.isclose(smooth.resample_filter.sum(), torch.tensor(1.0))
    assert smooth(x).shape == (2, 3, 4, 4)
    assert Conv2d(3, 5, kernel=3).resample_filter is None

def test_conv2d_fused_down_matches_unfused_in_interior():
    torch.manual_seed(0)
    fused = Conv2d(3, 4, kernel=3, down=True, resample_filter=(1, 3, 3, 1), fused_resample=True)
    x = torch.randn(1, 3, 16, 16)
    y = fused(x)
    assert y.shape == (1, 4, 8, 8)
    # Reference: full-resolution convolution followed by the filtered decimation.
    full = torch.nn.functional.conv2d(x, fused.weight, fused.bias, padding=2)
    f = fused.resample_filter.tile([4, 1, 1, 1])
    torch.testing.assert_close(y, torch.nn.functional.conv2d(full, f, groups=4, stride=2), rtol=1e-5, atol=1e-5)

def test_attention_op_gradients():
    torch.manual_seed(0)
    q = torch.randn(3, 8, 5, requires_grad=True)
    k = torch.randn(3, 8, 6, requires_grad=True)
    grad = torch.randn(3, 5, 6)
    w = AttentionOp.apply(q, k)
    dq, dk = torch.autograd.grad(w, [q, k], grad)
    w_ref = torch.einsum('nci,ncj->nij', q, k / math.sqrt(8)).softmax(dim=2)
    dq_ref, dk_ref = torch.autograd.grad(w_ref, [q, k], grad)
    torch.testing.assert_close(w, w_ref)
    torch.testing.assert_close(dq, dq_ref)
    torch.testing.assert_close(dk, dk_ref)

def test_positional_embedding():
    emb = PositionalEmbedding(num_channels=8, endpoint=True)
    x = torch.tensor([0.0, 1.0])
    y = emb(x)
    freqs = 10000.0 ** -(np.arange(4) / 3)
    expected = np.concatenate([np.cos(np.outer([0, 1], freqs)), np.sin(np.outer([0, 1], freqs))], axis=1)
    torch.testing.assert_close(y, torch.tensor(expected, dtype=torch.float32))

def test_weight_init_modes():
    torch.manual_seed(0)
    fan_in, fan_out = 400, 100
    for mode, std in [('xavier_uniform', math.sqrt(2 / 500)), ('xavier_normal', math.sqrt(2 / 500)),
                      ('kaiming_uniform', math.sqrt(1 / 400)), ('kaiming_normal', math.sqrt(1 / 400))]:
        w = weight_init([fan_out, fan_in], mode=mode, fan_in=fan_in, fan_out=fan_out)
        assert w.std().item() == pytest.approx(std, rel=0.05), mode
    with pytest.raises(ValueError):
        weight_init([2], mode='orthogonal', fan_in=1, fan_out=1)

def test_constructor_errors():
    with pytest.raises(ValueError):
        Conv2d(3, 3, kernel=3, up=True, down=True)
    with pytest.raises(ValueError):
        SongUNet(img_resolution=8, in_channels=3, out_channels=3, embedding_type='learned')
    with pytest.raises(ValueError):
        SongUNet(img_resolution=8, in_channels=3, out_channels=3, encoder_type='dense')
    with pytest.raises(ValueError):
        SongUNet(img_resolution=8, in_channels=3, out_channels=3, decoder_type='residual')
    with pytest.raises(ValueError):
        EDMPrecond(img_resolution=8, img_channels=3, model_type='NoSuchNet')
    with pytest.raises(ValueError):
        EDMPrecond(img_resolution=8, img_channels=3, use_fp16=True, use_bf16=True)

def test_backbone_lookup_is_by_name():
    net = _build_meta(dict(img_resolution=8, img_channels=3, model_type='SongUNet', model_channels=8, channel_mult=[1], num_blocks=1))
    assert isinstance(net.model, SongUNet)
    net = iDDPMPrecond(img_resolution=8, img_channels=3, model_channels=64, channel_mult=[1], num_blocks=1)
    assert isinstance(net.model, DhariwalUNet)
    assert net.model.out_conv.out_channels == 6  # iDDPM predicts 2x channels
    with torch.device('meta'):
        meta = iDDPMPrecond(img_resolution=8, img_channels=3, model_channels=64, channel_mult=[1], num_blocks=1)
    assert torch.equal(meta.u, net.u) and meta.sigma_max == net.sigma_max

#----------------------------------------------------------------------------
# Mixed precision. float16 follows EDM (CUDA only, so a no-op on the CPU);
# bfloat16 runs wherever it is requested.

def test_fp16_is_fp32_on_cpu():
    ref = _tiny_net('edm', 'ddpmpp')
    half = _tiny_net('edm', 'ddpmpp', use_fp16=True)
    half.load_state_dict(ref.state_dict())
    x, sigma, labels, augment = _tiny_inputs(ref)
    with torch.no_grad():
        assert torch.equal(half(x, sigma, labels), ref(x, sigma, labels))

@pytest.mark.parametrize('precond,backbone', [('edm', 'ddpmpp'), ('vp', 'ncsnpp'), ('iddpm', 'adm'), ('ve', 'skip-skip')])
def test_bf16_forward(precond, backbone):
    ref = _tiny_net(precond, backbone)
    low = _tiny_net(precond, backbone, use_bf16=True)
    low.load_state_dict(ref.state_dict())
    x, sigma, labels, augment = _tiny_inputs(ref)
    seen = []
    ref_out = []
    low.model.register_forward_hook(lambda module, args, output: seen.append((args[0].dtype, output)))
    ref.model.register_forward_hook(lambda module, args, output: ref_out.append(output))
    with torch.no_grad():
        expected = ref(x, sigma, labels, augment_labels=augment)
        out = low(x, sigma, labels, augment_labels=augment)
        forced = low(x, sigma, labels, augment_labels=augment, force_fp32=True)
    assert [(dtype, o.dtype) for dtype, o in seen] == [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32)]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.equal(forced, expected)
    # The backbone's output in bfloat16 is close to its float32 output, but not equal.
    F_low, F_ref = seen[0][1].float(), ref_out[0]
    rel = ((F_low - F_ref).norm() / F_ref.norm()).item()
    assert 0 < rel < 0.05
    torch.testing.assert_close(out, expected, rtol=0.05, atol=0.05 * expected.abs().max().item())

#----------------------------------------------------------------------------
