"""Non-leaking data augmentation for diffusion training (EDM's AugmentPipe).

Each image of a batch is transformed at random and the network is told what was done through a
vector of augmentation labels; at sampling time the labels are zero, so the network produces
unaugmented images and the augmentations cannot leak into them. The transformations are those of
StyleGAN2-ADA ("Training Generative Adversarial Networks with Limited Data"): pixel blitting
(flips, quarter turns, integer shifts), geometric warps done at twice the resolution with a
Symlet-6 wavelet filter, and colour changes. Random numbers are drawn in EDM's order and the
label vector has EDM's layout, so a given seed augments a batch exactly as EDM does.
"""

from __future__ import annotations

import numpy as np
import torch

from torch_utils import persistence

#----------------------------------------------------------------------------
# Low-pass decomposition filter of the Symlet-6 wavelet (12 taps, orthonormal).

SYM6_FILTER = [
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
]

#----------------------------------------------------------------------------
# Homogeneous transformation matrices, one per image. Every entry is either a
# Python number or a tensor of the batch shape [N]; with no tensor among them
# the result is a single float32 matrix that broadcasts over the batch.

Entry = float | torch.Tensor

def _homogeneous(rows: list[list[Entry]], device: torch.device | None = None) -> torch.Tensor:
    tensors = [x for row in rows for x in row if isinstance(x, torch.Tensor)]
    if not tensors:
        return torch.tensor(rows, dtype=torch.float32, device=device)
    ref = tensors[0]
    entries = [x if isinstance(x, torch.Tensor) else torch.full_like(ref, x) for row in rows for x in row]
    return torch.stack(entries, dim=-1).reshape(*ref.shape, len(rows), len(rows[0]))

def translate2d(tx: Entry, ty: Entry, device: torch.device | None = None) -> torch.Tensor:
    return _homogeneous([[1, 0, tx], [0, 1, ty], [0, 0, 1]], device)

def scale2d(sx: Entry, sy: Entry, device: torch.device | None = None) -> torch.Tensor:
    return _homogeneous([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], device)

def rotate2d(theta: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    return _homogeneous([[c, -s, 0], [s, c, 0], [0, 0, 1]])

def translate3d(tx: Entry, ty: Entry, tz: Entry) -> torch.Tensor:
    return _homogeneous([[1, 0, 0, tx], [0, 1, 0, ty], [0, 0, 1, tz], [0, 0, 0, 1]])

def scale3d(sx: Entry, sy: Entry, sz: Entry) -> torch.Tensor:
    return _homogeneous([[sx, 0, 0, 0], [0, sy, 0, 0], [0, 0, sz, 0], [0, 0, 0, 1]])

# Rotation by `theta` about the unit axis `v` (Rodrigues' formula).
def rotate3d(v: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    c, s = theta.cos(), theta.sin()
    d = 1 - c
    return _homogeneous([
        [x * x * d + c,     x * y * d - z * s, x * z * d + y * s, 0],
        [y * x * d + z * s, y * y * d + c,     y * z * d - x * s, 0],
        [z * x * d - y * s, z * y * d + x * s, z * z * d + c,     0],
        [0,                 0,                 0,                 1]])

#----------------------------------------------------------------------------
# Random draws. `_gated` keeps each value with the given probability and
# zeroes it otherwise (zero = "not augmented").

def _gated(values: torch.Tensor, prob: float, shape: list[int]) -> torch.Tensor:
    keep = torch.rand(shape, device=values.device) < prob
    return torch.where(keep, values, torch.zeros_like(values))

#----------------------------------------------------------------------------
# Separable filtering along one axis of [N, C, H, W] images, each channel on
# its own. Upsampling by 2 is a transposed convolution (zeros between the
# samples, then the filter); downsampling filters, then keeps every other sample.

def _along(axis: int, value: int, other: int = 1) -> tuple[int, int]:
    return (other, value) if axis == 3 else (value, other)

def _depthwise_kernel(taps: torch.Tensor, channels: int, axis: int) -> torch.Tensor:
    return taps.reshape(1, 1, *_along(axis, -1)).repeat(channels, 1, 1, 1)

def _upsample2x(images: torch.Tensor, taps: torch.Tensor, axis: int) -> torch.Tensor:
    shape = list(images.shape)
    shape[axis] = 2 * shape[axis] - 1
    sparse = images.new_zeros(shape)
    every_other = [slice(None)] * 4
    every_other[axis] = slice(None, None, 2)
    sparse[tuple(every_other)] = images
    pad = len(taps) // 2 # Output length exactly twice the input's.
    return torch.nn.functional.conv2d(sparse, _depthwise_kernel(taps.flip(0), images.shape[1], axis),
        padding=_along(axis, pad, 0), groups=images.shape[1])

def _downsample2x(images: torch.Tensor, taps: torch.Tensor, axis: int) -> torch.Tensor:
    C = images.shape[1]
    pad = (len(taps) - 1) // 2
    return torch.nn.functional.conv2d(images, _depthwise_kernel(taps, C, axis),
        stride=_along(axis, 2), padding=_along(axis, pad, 0), groups=C)

#----------------------------------------------------------------------------
# The augmentation pipeline. Every augmentation is off by default; a positive
# multiplier enables it, applied with probability multiplier * p per image.
# EDM's train.py uses the multipliers of AUGMENTATIONS (train.py's --augment
# sets p), which give AUGMENT_DIM labels per image.

AUGMENTATIONS = dict(xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1, translate_frac=1)
AUGMENT_DIM = 9

@persistence.persistent_class
class AugmentPipe:
    def __init__(self,
        p:                  float = 1,      # Overall probability scale, multiplies each multiplier below.
        # Pixel blitting.
        xflip:              float = 0,      # Horizontal flip.
        yflip:              float = 0,      # Vertical flip.
        rotate_int:         float = 0,      # Rotation by a multiple of 90 degrees.
        translate_int:      float = 0,      # Shift by whole pixels, with mirrored borders.
        translate_int_max:  float = 0.125,  # Largest whole-pixel shift, as a fraction of the image size.
        # Geometric warps.
        scale:              float = 0,      # Isotropic scaling.
        rotate_frac:        float = 0,      # Rotation by an arbitrary angle.
        aniso:              float = 0,      # Anisotropic scaling.
        translate_frac:     float = 0,      # Shift by fractions of a pixel.
        scale_std:          float = 0.2,    # Standard deviation of log2 of the isotropic scale.
        rotate_frac_max:    float = 1,      # Largest rotation, as a fraction of half a turn either way.
        aniso_std:          float = 0.2,    # Standard deviation of log2 of the anisotropic scale.
        aniso_rotate_prob:  float = 0.5,    # Chance that the anisotropic scaling uses rotated axes.
        translate_frac_std: float = 0.125,  # Standard deviation of the fractional shift, as a fraction of the image size.
        # Colour changes.
        brightness:         float = 0,      # Brightness offset.
        contrast:           float = 0,      # Contrast scaling.
        lumaflip:           float = 0,      # Inversion of luma, keeping hue.
        hue:                float = 0,      # Rotation of hue about the luma axis.
        saturation:         float = 0,      # Saturation scaling.
        brightness_std:     float = 0.2,    # Standard deviation of the brightness offset.
        contrast_std:       float = 0.5,    # Standard deviation of log2 of the contrast scale.
        hue_max:            float = 1,      # Largest hue rotation, as a fraction of half a turn either way.
        saturation_std:     float = 1,      # Standard deviation of log2 of the saturation scale.
    ):
        super().__init__()
        self.p = float(p)
        self.xflip = float(xflip)
        self.yflip = float(yflip)
        self.rotate_int = float(rotate_int)
        self.translate_int = float(translate_int)
        self.translate_int_max = float(translate_int_max)
        self.scale = float(scale)
        self.rotate_frac = float(rotate_frac)
        self.aniso = float(aniso)
        self.translate_frac = float(translate_frac)
        self.scale_std = float(scale_std)
        self.rotate_frac_max = float(rotate_frac_max)
        self.aniso_std = float(aniso_std)
        self.aniso_rotate_prob = float(aniso_rotate_prob)
        self.translate_frac_std = float(translate_frac_std)
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.lumaflip = float(lumaflip)
        self.hue = float(hue)
        self.saturation = float(saturation)
        self.brightness_std = float(brightness_std)
        self.contrast_std = float(contrast_std)
        self.hue_max = float(hue_max)
        self.saturation_std = float(saturation_std)

    # Augment a float batch [N, C, H, W]; returns the images and the labels [N, augment_dim].
    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N, C, H, W = images.shape
        device = images.device
        labels = [torch.zeros([N, 0], device=device)]
        images, labels = self._blit(images, labels)
        images, labels = self._warp(images, labels)
        images, labels = self._recolor(images, labels)
        return images, torch.cat([x.to(torch.float32).reshape(N, -1) for x in labels], dim=1)

    # Flips, quarter turns and whole-pixel shifts: exact pixel moves.
    def _blit(self, images: torch.Tensor, labels: list) -> tuple[torch.Tensor, list]:
        N, C, H, W = images.shape
        device = images.device
        if self.xflip > 0:
            w = _gated(torch.randint(2, [N, 1, 1, 1], device=device), self.xflip * self.p, [N, 1, 1, 1])
            images = torch.where(w == 1, images.flip(3), images)
            labels.append(w)
        if self.yflip > 0:
            w = _gated(torch.randint(2, [N, 1, 1, 1], device=device), self.yflip * self.p, [N, 1, 1, 1])
            images = torch.where(w == 1, images.flip(2), images)
            labels.append(w)
        if self.rotate_int > 0:
            # Quarter turns k = 0..3 as flips and a transpose: 1 = x-flip + transpose, 2 = both flips, 3 = y-flip + transpose.
            w = _gated(torch.randint(4, [N, 1, 1, 1], device=device), self.rotate_int * self.p, [N, 1, 1, 1])
            flip_x, flip_y = (w == 1) | (w == 2), (w == 2) | (w == 3)
            images = torch.where(flip_x, images.flip(3), images)
            images = torch.where(flip_y, images.flip(2), images)
            images = torch.where((w == 1) | (w == 3), images.transpose(2, 3), images)
            labels += [flip_x, flip_y]
        if self.translate_int > 0:
            w = _gated(torch.rand([2, N, 1, 1, 1], device=device) * 2 - 1, self.translate_int * self.p, [1, N, 1, 1, 1])
            tx = (w[0] * (W * self.translate_int_max)).round().to(torch.int64)
            ty = (w[1] * (H * self.translate_int_max)).round().to(torch.int64)
            # Source pixel of every target pixel, mirrored at the borders (period 2W-2 and 2H-2).
            x = torch.arange(W, device=device).reshape(1, 1, 1, W)
            y = torch.arange(H, device=device).reshape(1, 1, H, 1)
            src_x = (W - 1) - ((W - 1) - (x - tx) % (2 * W - 2)).abs()
            src_y = (H - 1) - ((H - 1) - (y + ty) % (2 * H - 2)).abs()
            images = images.gather(2, src_y.expand(N, C, H, W))
            images = images.gather(3, src_x.expand(N, C, H, W))
            labels += [tx / (W * self.translate_int_max), ty / (H * self.translate_int_max)]
        return images, labels

    # Scaling, rotation, anisotropy and fractional shifts, combined into one
    # inverse map (output pixel => input pixel) and resampled once.
    def _warp(self, images: torch.Tensor, labels: list) -> tuple[torch.Tensor, list]:
        N, C, H, W = images.shape
        device = images.device
        if max(self.scale, self.rotate_frac, self.aniso, self.translate_frac) <= 0:
            return images, labels
        G_inv = torch.eye(3, device=device)
        if self.scale > 0:
            w = _gated(torch.randn([N], device=device), self.scale * self.p, [N])
            s = (w * self.scale_std).exp2()
            G_inv = G_inv @ scale2d(1 / s, 1 / s)
            labels.append(w)
        if self.rotate_frac > 0:
            w = _gated((torch.rand([N], device=device) * 2 - 1) * (np.pi * self.rotate_frac_max), self.rotate_frac * self.p, [N])
            G_inv = G_inv @ rotate2d(w)
            labels += [w.cos() - 1, w.sin()]
        if self.aniso > 0:
            w = torch.randn([N], device=device)
            r = (torch.rand([N], device=device) * 2 - 1) * np.pi
            w = _gated(w, self.aniso * self.p, [N])
            r = _gated(r, self.aniso_rotate_prob, [N])
            s = (w * self.aniso_std).exp2()
            inv_s = 1 / s
            G_inv = G_inv @ rotate2d(-r) @ scale2d(inv_s, 1 / inv_s) @ rotate2d(r)
            labels += [w * r.cos(), w * r.sin()]
        if self.translate_frac > 0:
            w = _gated(torch.randn([2, N], device=device), self.translate_frac * self.p, [1, N])
            G_inv = G_inv @ translate2d(-(w[0] * (W * self.translate_frac_std)), -(w[1] * (H * self.translate_frac_std)))
            labels += [w[0], w[1]]

        # Mirror-pad enough that the warped image samples no undefined pixels,
        # judging by where the corners land, plus room for the filter.
        taps = torch.tensor(SYM6_FILTER, dtype=images.dtype, device=device)
        filter_pad = len(SYM6_FILTER) // 4
        cx, cy = (W - 1) / 2, (H - 1) / 2
        corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float32, device=device)
        reach = (G_inv @ corners.t())[:, :2, :] # [N, xy, corner]
        margin = torch.cat([(-reach).amax(dim=(0, 2)), reach.amax(dim=(0, 2))]) # [x0, y0, x1, y1]
        margin = margin + torch.tensor([filter_pad * 2 - cx, filter_pad * 2 - cy] * 2, device=device)
        margin = margin.clamp(min=0).minimum(torch.tensor([W - 1, H - 1] * 2, dtype=torch.float32, device=device))
        mx0, my0, mx1, my1 = (int(x) for x in margin.ceil().tolist())
        images = torch.nn.functional.pad(images, [mx0, mx1, my0, my1], mode='reflect')
        G_inv = translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, device) @ G_inv

        # Upsample 2x; move the map to the upsampled grid.
        images = _upsample2x(_upsample2x(images, taps, axis=3), taps, axis=2)
        G_inv = scale2d(2, 2, device) @ G_inv @ scale2d(0.5, 0.5, device)
        G_inv = translate2d(-0.5, -0.5, device) @ G_inv @ translate2d(0.5, 0.5, device)

        # Resample into a canvas of the upsampled size plus the filter margin,
        # in the [-1, 1] coordinates of affine_grid.
        shape = [N, C, (H + filter_pad * 2) * 2, (W + filter_pad * 2) * 2]
        G_inv = scale2d(2 / images.shape[3], 2 / images.shape[2], device) @ G_inv @ scale2d(1 / (2 / shape[3]), 1 / (2 / shape[2]), device)
        grid = torch.nn.functional.affine_grid(theta=G_inv[:, :2, :], size=shape, align_corners=False)
        images = torch.nn.functional.grid_sample(images, grid, mode='bilinear', padding_mode='zeros', align_corners=False)

        # Downsample 2x and drop the margin.
        images = _downsample2x(images, taps, axis=3)[:, :, :, filter_pad : -filter_pad]
        images = _downsample2x(images, taps, axis=2)[:, :, filter_pad : -filter_pad, :]
        return images, labels

    # Brightness, contrast, luma flip, hue and saturation, combined into one
    # affine colour map [N, 4, 4] and applied per pixel.
    def _recolor(self, images: torch.Tensor, labels: list) -> tuple[torch.Tensor, list]:
        N, C, H, W = images.shape
        device = images.device
        if max(self.brightness, self.contrast, self.lumaflip, self.hue, self.saturation) <= 0:
            return images, labels
        I_4 = torch.eye(4, device=device)
        M = I_4
        luma_axis = torch.tensor([1, 1, 1, 0], dtype=torch.float32, device=device) / np.sqrt(3)
        luma_proj = torch.outer(luma_axis, luma_axis)
        if self.brightness > 0:
            w = _gated(torch.randn([N], device=device), self.brightness * self.p, [N])
            b = w * self.brightness_std
            M = translate3d(b, b, b) @ M
            labels.append(w)
        if self.contrast > 0:
            w = _gated(torch.randn([N], device=device), self.contrast * self.p, [N])
            c = (w * self.contrast_std).exp2()
            M = scale3d(c, c, c) @ M
            labels.append(w)
        if self.lumaflip > 0:
            w = _gated(torch.randint(2, [N, 1, 1], device=device), self.lumaflip * self.p, [N, 1, 1])
            M = (I_4 - 2 * luma_proj * w) @ M
            labels.append(w)
        if self.hue > 0:
            w = _gated((torch.rand([N], device=device) * 2 - 1) * (np.pi * self.hue_max), self.hue * self.p, [N])
            M = rotate3d(luma_axis, w) @ M
            labels += [w.cos() - 1, w.sin()]
        if self.saturation > 0:
            w = _gated(torch.randn([N, 1, 1], device=device), self.saturation * self.p, [N, 1, 1])
            M = (luma_proj + (I_4 - luma_proj) * (w * self.saturation_std).exp2()) @ M
            labels.append(w)

        # RGB: the full 3x3 map plus offset. Grayscale: the mean response of the three outputs.
        pixels = images.reshape(N, C, H * W)
        if C == 3:
            pixels = M[:, :3, :3] @ pixels + M[:, :3, 3:]
        elif C == 1:
            M = M[:, :3, :].mean(dim=1, keepdim=True)
            pixels = pixels * M[:, :, :3].sum(dim=2, keepdim=True) + M[:, :, 3:]
        else:
            raise ValueError(f'AugmentPipe: colour augmentations need RGB or grayscale images, got {C} channels')
        return pixels.reshape(N, C, H, W), labels

#----------------------------------------------------------------------------
