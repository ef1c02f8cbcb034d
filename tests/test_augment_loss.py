"""Tests for training/augment.py and training/loss.py."""


import numpy as np
import pytest
import torch

from training.augment import AugmentPipe
from training.loss import EDMLoss, VELoss, VPLoss

# The augmentations train.py enables (with p = --augment).
TRAIN_SETTINGS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
ALL_ON = dict(xflip=1, yflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1,
    brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)

def smooth_images(n=2, c=3, res=16):
    return torch.linspace(-1, 1, n * c * res * res).reshape(n, c, res, res).sin()

#----------------------------------------------------------------------------
# Augmentation.

@pytest.mark.parametrize('channels,res', [(3, 32), (1, 16)])
def test_train_settings_shapes_and_labels(channels, res):
    torch.manual_seed(0)
    images, labels = AugmentPipe(p=0.5, **TRAIN_SETTINGS)(torch.randn(4, channels, res, res))
    assert images.shape == (4, channels, res, res) and images.dtype == torch.float32
    assert labels.shape == (4, 9) and labels.dtype == torch.float32
    assert torch.isfinite(images).all()

def test_label_layout_with_everything_enabled():
    torch.manual_seed(0)
    images, labels = AugmentPipe(p=0.7, **ALL_ON)(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert images.shape == (3, 3, 16, 16) and labels.shape == (3, 19)
    assert AugmentPipe()(torch.zeros(2, 3, 8, 8))[1].shape == (2, 0) # Nothing enabled: no labels.

def test_p_zero_is_identity():
    x = torch.randn(4, 3, 16, 16)
    for settings in [TRAIN_SETTINGS, ALL_ON]:
        images, labels = AugmentPipe(p=0, **settings)(x)
        assert torch.allclose(images, x, atol=1e-5)
        assert torch.all(labels == 0)

def test_xflip_labels_say_which_images_flipped():
    x = torch.randn(16, 3, 8, 8)
    torch.manual_seed(1)
    images, labels = AugmentPipe(p=1, xflip=1e8)(x)
    assert labels.shape == (16, 1)
    for i in range(16):
        assert torch.equal(images[i], x[i].flip(2) if labels[i, 0] == 1 else x[i])
    assert 0 < labels.sum() < 16

def test_quarter_turns_and_integer_shifts_move_pixels_only():
    x = torch.arange(8 * 8, dtype=torch.float32).reshape(1, 1, 8, 8).repeat(8, 3, 1, 1)
    torch.manual_seed(2)
    images, labels = AugmentPipe(p=1, rotate_int=1)(x)
    for i in range(8):
        assert any(torch.equal(images[i], x[i].rot90(k, dims=(1, 2))) for k in range(4))
    images, labels = AugmentPipe(p=1, translate_int=1)(x)
    assert labels.shape == (8, 2) and labels.abs().max() <= 1
    assert set(images.unique().tolist()) <= set(x.unique().tolist())

def test_colour_needs_rgb_or_gray():
    with pytest.raises(ValueError, match='2 channels'):
        AugmentPipe(p=1, brightness=1)(torch.zeros(1, 2, 8, 8))
    images, _labels = AugmentPipe(p=1, brightness=1, saturation=1)(torch.zeros(2, 1, 8, 8))
    assert images.shape == (2, 1, 8, 8)

def test_matches_edm_reference_values():
    # Values from EDM's own AugmentPipe for this input, seed and train.py's settings.
    torch.manual_seed(123)
    images, labels = AugmentPipe(p=0.9, **TRAIN_SETTINGS)(smooth_images())
    expected_labels = [
        [0.0, 0.0, -1.1969243, -0.5947258, -0.9141952, 1.1496991, 1.3329328, 0.3528208, -0.0386162],
        [1.0, 0.0, 0.2092694, -0.1846049, -0.5789049, 0.6547479, 0.0, 0.9728211, -0.8861014]]
    assert np.allclose(labels.numpy(), expected_labels, atol=1e-6)
    assert abs(images.sum().item() - 32.494186) < 1e-3 and abs(images.abs().sum().item() - 725.37549) < 1e-3
    assert np.allclose(images[0, 1, 5, 3:7].numpy(), [-0.39844602, -0.41703680, -0.43559775, -0.45403969], atol=1e-5)
    assert np.allclose(images[1, 2, 10, 8:12].numpy(), [0.79789269, 0.79083794, 0.78366888, 0.77637541], atol=1e-5)

def test_same_seed_same_result():
    x = torch.randn(2, 3, 16, 16)
    outputs = []
    for _ in range(2):
        torch.manual_seed(7)
        outputs.append(AugmentPipe(p=0.5, **ALL_ON)(x))
    assert torch.equal(outputs[0][0], outputs[1][0]) and torch.equal(outputs[0][1], outputs[1][1])

#----------------------------------------------------------------------------
# Losses, with a network that records what it is given.

class RecordingNet:
    def __init__(self, gain=0.0):
        self.gain = gain
        self.calls = []

    def __call__(self, x, sigma, labels, augment_labels=None):
        self.calls.append(dict(x=x, sigma=sigma, labels=labels, augment_labels=augment_labels))
        return x * self.gain

def test_edm_loss_weighting_and_noise_levels():
    torch.manual_seed(0)
    net, images = RecordingNet(), torch.rand(4096, 1, 2, 2) * 0.5 + 0.5
    loss = EDMLoss()(net, images)
    sigma = net.calls[0]['sigma']
    assert loss.shape == images.shape and sigma.shape == (4096, 1, 1, 1)
    expected_weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
    assert torch.allclose(loss, expected_weight * images ** 2, rtol=1e-5) # The net outputs 0.
    assert abs(sigma.log().mean().item() + 1.2) < 0.06 and abs(sigma.log().std().item() - 1.2) < 0.06
    noise = (net.calls[0]['x'] - images) / sigma
    assert abs(noise.mean().item()) < 0.03 and abs(noise.std().item() - 1) < 0.03

def test_vp_and_ve_loss_weighting_and_ranges():
    torch.manual_seed(0)
    images = torch.rand(2048, 1, 2, 2) + 0.5
    vp, ve = VPLoss(), VELoss()
    for loss_fn, lo, hi in [(vp, vp.sigma(1e-5).item(), vp.sigma(1).item()), (ve, 0.02, 100)]:
        net = RecordingNet()
        loss = loss_fn(net, images)
        sigma = net.calls[0]['sigma']
        assert torch.allclose(loss, images ** 2 / sigma ** 2, rtol=1e-5)
        assert sigma.min() >= lo * 0.999 and sigma.max() <= hi * 1.001
    assert abs(vp.sigma(1).item() - np.sqrt(np.exp(0.5 * 19.9 + 0.1) - 1)) < 1e-3
    log_sigma = net.calls[0]['sigma'].log() # VE: log-uniform between the bounds.
    assert abs(log_sigma.mean().item() - (np.log(0.02) + np.log(100)) / 2) < 0.2

def test_edm_loss_draw_order_matches_edm():
    # EDM draws the noise level, then augments, then draws the noise.
    images, labels = torch.rand(3, 3, 8, 8) * 2 - 1, torch.eye(3)
    net = RecordingNet(gain=0.5)
    torch.manual_seed(5)
    loss = EDMLoss()(net, images, labels)
    torch.manual_seed(5)
    sigma = (torch.randn([3, 1, 1, 1]) * 1.2 - 1.2).exp()
    noisy = images + torch.randn_like(images) * sigma
    weight = (sigma ** 2 + 0.5 ** 2) / (sigma * 0.5) ** 2
    assert torch.equal(loss, weight * ((noisy * 0.5 - images) ** 2))
    assert net.calls[0]['labels'] is labels and net.calls[0]['augment_labels'] is None

def test_losses_train_on_augmented_images():
    def double(images):
        return images * 2, torch.ones(images.shape[0], 9)
    images = torch.rand(2, 3, 4, 4) + 0.5
    for loss_fn in [EDMLoss(), VPLoss(), VELoss()]:
        net = RecordingNet()
        torch.manual_seed(0)
        loss = loss_fn(net, images, None, augment_pipe=double)
        torch.manual_seed(0)
        plain = loss_fn(RecordingNet(), images * 2, None)
        assert torch.allclose(loss, plain) and net.calls[0]['augment_labels'].shape == (2, 9)
    torch.manual_seed(0)
    loss = EDMLoss()(RecordingNet(), torch.rand(2, 3, 16, 16), None, augment_pipe=AugmentPipe(p=0.5, **TRAIN_SETTINGS))
    assert loss.shape == (2, 3, 16, 16) and torch.isfinite(loss).all()

#----------------------------------------------------------------------------
