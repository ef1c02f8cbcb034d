"""Denoiser networks of "Elucidating the Design Space of Diffusion-Based Generative
Models" (Karras et al., NeurIPS 2022): the U-Net backbones (DDPM++ / NCSN++ as
`SongUNet`, ADM as `DhariwalUNet`) and the four preconditioning wrappers that turn
a backbone F into a denoiser D(x; sigma) = c_skip x + c_out F(c_in x; c_noise).

Class names, constructor keywords, defaults and state-dict layout follow EDM's
`training/networks.py`, so EDM checkpoints load here and compute the same function.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from torch_utils import persistence

#----------------------------------------------------------------------------
# Weight initialisation. `fan_in` / `fan_out` count the inputs and outputs that
# feed one unit; the four modes are the usual Glorot (xavier) and He (kaiming)
# rules. EDM's scaling of kaiming_normal (std = 1/sqrt(fan_in)) is kept so that
# the same seed gives the same initial network.

def weight_init(shape: Sequence[int], mode: str, fan_in: int, fan_out: int) -> torch.Tensor:
    if mode == 'xavier_uniform':
        return math.sqrt(6 / (fan_in + fan_out)) * (torch.rand(*shape) * 2 - 1)
    if mode == 'xavier_normal':
        return math.sqrt(2 / (fan_in + fan_out)) * torch.randn(*shape)
    if mode == 'kaiming_uniform':
        return math.sqrt(3 / fan_in) * (torch.rand(*shape) * 2 - 1)
    if mode == 'kaiming_normal':
        return math.sqrt(1 / fan_in) * torch.randn(*shape)
    raise ValueError(f'weight_init: unknown mode {mode!r}; expected xavier_uniform, xavier_normal, '
                     f'kaiming_uniform or kaiming_normal')

#----------------------------------------------------------------------------
# Dense layer y = x W^T + b. Weights are stored in float32 and cast to the
# dtype of the input, which is how the whole network switches precision.

@persistence.persistent_class
class Linear(torch.nn.Module):
    def __init__(self,
        in_features:  int,                     # Size of each input vector.
        out_features: int,                     # Size of each output vector.
        bias:         bool = True,             # Add a learned offset?
        init_mode:    str = 'kaiming_normal',  # Initialisation rule, see weight_init().
        init_weight:  float = 1,               # Gain applied to the initial weight.
        init_bias:    float = 0,               # Gain applied to the initial bias.
    ):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        fans = dict(mode=init_mode, fan_in=in_features, fan_out=out_features)
        self.weight = torch.nn.Parameter(init_weight * weight_init([out_features, in_features], **fans))
        self.bias = torch.nn.Parameter(init_bias * weight_init([out_features], **fans)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ self.weight.to(x.dtype).t()
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

#----------------------------------------------------------------------------
# 2-D convolution with optional 2x resampling by a separable FIR filter.
# The 1-D taps `resample_filter` are turned into their normalised outer
# product (sum 1). Upsampling is a stride-2 transposed depthwise convolution
# with the filter times 4 (so that the mean is preserved), downsampling a
# stride-2 depthwise convolution. `kernel=0` gives a pure resampler without
# weights. `fused_resample` folds the resampling into the convolution's
# padding/stride; NCSN++'s residual encoder path uses it for downsampling.

@persistence.persistent_class
class Conv2d(torch.nn.Module):
    pool_resample = False  # Set on live networks by the fast path (torch_utils/fast.py); not a constructor option.

    def __init__(self,
        in_channels:     int,                     # Channels of the input.
        out_channels:    int,                     # Channels of the output.
        kernel:          int,                     # Square kernel size; 0 = no convolution.
        bias:            bool = True,             # Add a learned per-channel offset?
        up:              bool = False,            # Upsample by 2 (before the convolution)?
        down:            bool = False,            # Downsample by 2?
        resample_filter: Sequence[int] = (1,1),   # 1-D taps of the resampling filter.
        fused_resample:  bool = False,            # Merge resampling and convolution?
        init_mode:       str = 'kaiming_normal',  # Initialisation rule, see weight_init().
        init_weight:     float = 1,               # Gain applied to the initial weight.
        init_bias:       float = 0,               # Gain applied to the initial bias.
    ):
        if up and down:
            raise ValueError('Conv2d: up and down cannot both be set')
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.up = up
        self.down = down
        self.fused_resample = fused_resample
        area = kernel * kernel
        fans = dict(mode=init_mode, fan_in=in_channels * area, fan_out=out_channels * area)
        self.weight = torch.nn.Parameter(init_weight * weight_init([out_channels, in_channels, kernel, kernel], **fans)) if kernel else None
        self.bias = torch.nn.Parameter(init_bias * weight_init([out_channels], **fans)) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        fir = torch.outer(taps, taps) / taps.sum().square()
        self.register_buffer('resample_filter', fir[None, None] if (up or down) else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        b = None if self.bias is None else self.bias.to(x.dtype)
        fir = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        pad_w = 0 if w is None else w.shape[-1] // 2
        pad_f = 0 if fir is None else (fir.shape[-1] - 1) // 2
        fused = self.fused_resample and w is not None

        if self.up and self.pool_resample and not fused:
            # The [1, 1] filter on the fast path: each pixel repeated 2x2 (the same numbers).
            x = F.interpolate(x, scale_factor=2, mode='nearest')
            if w is not None:
                x = F.conv2d(x, w, padding=pad_w)
        elif self.up:
            # Zero-stuff and filter each channel, then convolve. The fused variant
            # moves the convolution's padding into the transposed step, as EDM
            # does; that yields 2H-4 pixels for a 3x3 kernel, so no EDM network uses it.
            up_fir = fir.mul(4).tile([self.in_channels, 1, 1, 1])
            x = F.conv_transpose2d(x, up_fir, groups=self.in_channels, stride=2,
                                   padding=pad_f + (pad_w if fused else 0))
            if w is not None:
                x = F.conv2d(x, w, padding=0 if fused else pad_w)
        elif self.down and fused:
            # Convolve at full resolution with enlarged padding, then filter and decimate.
            x = F.conv2d(x, w, padding=pad_w + pad_f)
            x = F.conv2d(x, fir.tile([self.out_channels, 1, 1, 1]), groups=self.out_channels, stride=2)
        else:
            if self.down and self.pool_resample:
                x = F.avg_pool2d(x, 2)  # The [1, 1] filter on the fast path: the mean of each 2x2 block.
            elif self.down:
                x = F.conv2d(x, fir.tile([self.in_channels, 1, 1, 1]), groups=self.in_channels, stride=2, padding=pad_f)
            if w is not None:
                x = F.conv2d(x, w, padding=pad_w)

        if b is not None:
            x = x + b.reshape(1, -1, 1, 1)
        return x

#----------------------------------------------------------------------------
# Group normalisation whose group count shrinks for narrow layers so that every
# group holds at least `min_channels_per_group` channels.

@persistence.persistent_class
class GroupNorm(torch.nn.Module):
    def __init__(self,
        num_channels:           int,           # Channels to normalise.
        num_groups:             int = 32,      # Preferred number of groups.
        min_channels_per_group: int = 4,       # Lower bound on channels per group.
        eps:                    float = 1e-5,  # Added to the variance for stability.
    ):
        super().__init__()
        max_groups = num_channels // min_channels_per_group
        self.num_groups = min(num_groups, max_groups)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones([num_channels]))    # per-channel gain
        self.bias = torch.nn.Parameter(torch.zeros([num_channels]))     # per-channel offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = self.weight.to(x.dtype)
        beta = self.bias.to(x.dtype)
        return F.group_norm(x, num_groups=self.num_groups, weight=gamma, bias=beta, eps=self.eps)

#----------------------------------------------------------------------------
# Attention weights softmax(Q^T K / sqrt(C)) for q, k of shape [batch, C, tokens].
# The product and the softmax run in float32 whatever the input dtype; the
# weights come back in the dtype of q, and only inputs and output are kept for
# the backward pass to save memory under reduced precision.

class AttentionOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        k_scaled = k / math.sqrt(k.shape[1])
        logits = torch.einsum('bci,bcj->bij', q.to(torch.float32), k_scaled.to(torch.float32))
        weights = logits.softmax(dim=2).to(q.dtype)
        ctx.save_for_backward(q, k, weights)
        return weights

    @staticmethod
    def backward(ctx, grad_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, k, weights = ctx.saved_tensors
        p = weights.to(torch.float32)
        g = grad_w.to(torch.float32)
        # Jacobian of the row-wise softmax applied to g: p * (g - <g, p>).
        grad_logits = p * (g - (g * p).sum(dim=2, keepdim=True))
        inv_scale = 1 / math.sqrt(k.shape[1])
        grad_q = torch.einsum('bcj,bij->bci', k.to(torch.float32), grad_logits) * inv_scale
        grad_k = torch.einsum('bci,bij->bcj', q.to(torch.float32), grad_logits) * inv_scale
        return grad_q.to(q.dtype), grad_k.to(k.dtype)

#----------------------------------------------------------------------------
# Residual U-Net block shared by DDPM++, NCSN++ and ADM:
#   h = conv0(silu(norm0(x)))            (optionally resampled)
#   h = silu(norm1(h) * (1 + scale) + shift)   if adaptive_scale, else silu(norm1(h + shift))
#   x = (conv1(dropout(h)) + skip(x)) * skip_scale
# followed, if requested, by multi-head self-attention with its own residual.

@persistence.persistent_class
class UNetBlock(torch.nn.Module):
    def __init__(self,
        in_channels:       int,                    # Channels of the input.
        out_channels:      int,                    # Channels of the output.
        emb_channels:      int,                    # Size of the conditioning embedding.
        up:                bool = False,           # Upsample by 2?
        down:              bool = False,           # Downsample by 2?
        attention:         bool = False,           # Append a self-attention layer?
        num_heads:         int | None = None,      # Attention heads; None = out_channels // channels_per_head.
        channels_per_head: int = 64,               # Channels per head when num_heads is None.
        dropout:           float = 0,              # Dropout probability before conv1.
        skip_scale:        float = 1,              # Factor applied after each residual sum.
        eps:               float = 1e-5,           # GroupNorm epsilon.
        resample_filter:   Sequence[int] = (1,1),  # 1-D taps for up/downsampling.
        resample_proj:     bool = False,           # Use a 1x1 conv on the shortcut when resampling?
        adaptive_scale:    bool = True,            # Embedding gives scale and shift (True) or shift only?
        init:              dict | None = None,     # Init keywords for most layers; None = {}.
        init_zero:         dict | None = None,     # Init keywords for the last layer of each branch; None = dict(init_weight=0).
        init_attn:         dict | None = None,     # Init keywords for the qkv layer; None = same as init.
    ):
        super().__init__()
        init = {} if init is None else dict(init)
        init_zero = dict(init_weight=0) if init_zero is None else dict(init_zero)
        init_attn = init if init_attn is None else dict(init_attn)

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.emb_channels = emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = out_channels // channels_per_head if num_heads is None else num_heads
        self.dropout = dropout
        self.skip_scale = skip_scale
        self.adaptive_scale = adaptive_scale

        # Main branch (construction order fixes the random stream and the state-dict order).
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(num_channels=in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=3, **resample, **init)
        affine_width = out_channels * 2 if adaptive_scale else out_channels
        self.affine = Linear(in_features=emb_channels, out_features=affine_width, **init)
        self.norm1 = GroupNorm(num_channels=out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=3, **init_zero)

        # Shortcut: identity when shapes agree, otherwise a resampler and/or 1x1 projection.
        reshapes = out_channels != in_channels
        if reshapes or up or down:
            skip_kernel = 1 if (resample_proj or reshapes) else 0
            self.skip = Conv2d(in_channels=in_channels, out_channels=out_channels, kernel=skip_kernel, **resample, **init)
        else:
            self.skip = None

        # Self-attention: one 1x1 conv gives q, k, v; another projects back.
        if self.num_heads:
            self.norm2 = GroupNorm(num_channels=out_channels, eps=eps)
            self.qkv = Conv2d(in_channels=out_channels, out_channels=3 * out_channels, kernel=1, **init_attn)
            self.proj = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=1, **init_zero)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shortcut = x
        h = self.conv0(F.silu(self.norm0(x)))

        cond = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = cond.chunk(chunks=2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + cond))

        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = h + (shortcut if self.skip is None else self.skip(shortcut))
        x = h * self.skip_scale

        if self.num_heads:
            n, c, height, width = x.shape
            # The qkv channels are laid out per head as [c_head, 3] pairs.
            qkv = self.qkv(self.norm2(x)).reshape(n * self.num_heads, c // self.num_heads, 3, height * width)
            q, k, v = qkv.unbind(2)
            attn = AttentionOp.apply(q, k)
            mixed = torch.einsum('bij,bcj->bci', attn, v)
            x = (self.proj(mixed.reshape(n, c, height, width)) + x) * self.skip_scale
        return x

#----------------------------------------------------------------------------
# Sinusoidal embedding of a scalar per sample (DDPM++ and ADM): frequencies
# max_positions^(-i/D) for i < D = num_channels/2 (D-1 in the denominator when
# `endpoint`), output [cos(x f), sin(x f)].

@persistence.persistent_class
class PositionalEmbedding(torch.nn.Module):
    def __init__(self,
        num_channels:  int,           # Output width (cos and sin halves).
        max_positions: int = 10000,   # Base of the geometric frequency ladder.
        endpoint:      bool = False,  # Make the last frequency exactly 1/max_positions?
    ):
        super().__init__()
        self.num_channels = num_channels
        self.max_positions = max_positions
        self.endpoint = endpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(bool(self.endpoint)))
        freqs = (1 / self.max_positions) ** exponent
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)

#----------------------------------------------------------------------------
# Random Fourier feature embedding (NCSN++): fixed Gaussian frequencies with
# standard deviation `scale`, output [cos(2 pi x f), sin(2 pi x f)].

@persistence.persistent_class
class FourierEmbedding(torch.nn.Module):
    def __init__(self,
        num_channels: int,         # Output width (cos and sin halves).
        scale:        float = 16,  # Standard deviation of the frequencies.
    ):
        super().__init__()
        self.register_buffer('freqs', scale * torch.randn(num_channels // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)

#----------------------------------------------------------------------------
# Label dropout for classifier-free guidance: each sample's label vector is
# zeroed with probability p (one uniform draw per sample, on the labels' device).

def _drop_labels(labels: torch.Tensor, p: float, batch_size: int) -> torch.Tensor:
    if not p:
        return labels
    keep = torch.rand([batch_size, 1], device=labels.device) >= p
    return labels * keep.to(labels.dtype)

#----------------------------------------------------------------------------
# DDPM++ / NCSN++ backbone of Song et al., "Score-Based Generative Modeling
# through Stochastic Differential Equations" (2021), as EDM reimplements it.
#
# Mapping: noise embedding (sin half first), plus scaled class labels and
# augmentation labels, then two SiLU layers. Encoder: one block list per
# resolution; the optional auxiliary path feeds a downsampled copy of the input
# ('skip') or a running residual ('residual') into each level. Decoder: mirror
# image with skip concatenation; the output is taken at the finest level
# ('standard') or summed over upsampled per-level outputs ('skip').

@persistence.persistent_class
class SongUNet(torch.nn.Module):
    def __init__(self,
        img_resolution:     int,                        # Height = width of input and output.
        in_channels:        int,                        # Image channels in.
        out_channels:       int,                        # Image channels out.
        label_dim:          int = 0,                    # Class-label width; 0 = unconditional.
        augment_dim:        int = 0,                    # Augmentation-label width; 0 = none.

        model_channels:     int = 128,                  # Channel count of the first level.
        channel_mult:       Sequence[int] = (1,2,2,2),  # Channel multiplier per resolution level.
        channel_mult_emb:   int = 4,                    # Embedding width = model_channels * this.
        num_blocks:         int = 4,                    # Residual blocks per level.
        attn_resolutions:   Sequence[int] = (16,),      # Resolutions whose blocks get self-attention.
        dropout:            float = 0.10,               # Dropout inside the residual blocks.
        label_dropout:      float = 0,                  # Probability of zeroing a sample's label in training (for guidance).

        embedding_type:     str = 'positional',         # Noise embedding: 'positional' (DDPM++) or 'fourier' (NCSN++).
        channel_mult_noise: int = 1,                    # Noise embedding width = model_channels * this (1 DDPM++, 2 NCSN++).
        encoder_type:       str = 'standard',           # 'standard' (DDPM++), 'skip' or 'residual' (NCSN++).
        decoder_type:       str = 'standard',           # 'standard' or 'skip'.
        resample_filter:    Sequence[int] = (1,1),      # Resampling taps: (1,1) DDPM++, (1,3,3,1) NCSN++.
    ):
        if embedding_type not in ('positional', 'fourier'):
            raise ValueError(f"SongUNet: embedding_type must be 'positional' or 'fourier', got {embedding_type!r}")
        if encoder_type not in ('standard', 'skip', 'residual'):
            raise ValueError(f"SongUNet: encoder_type must be 'standard', 'skip' or 'residual', got {encoder_type!r}")
        if decoder_type not in ('standard', 'skip'):
            raise ValueError(f"SongUNet: decoder_type must be 'standard' or 'skip', got {decoder_type!r}")
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = channel_mult_emb * model_channels
        noise_channels = channel_mult_noise * model_channels
        # Glorot-uniform everywhere; the last layer of each residual branch starts
        # almost at zero and the qkv projection is scaled down.
        init = {'init_mode': 'xavier_uniform'}
        init_zero = {'init_mode': 'xavier_uniform', 'init_weight': 1e-5}
        init_attn = {'init_mode': 'xavier_uniform', 'init_weight': math.sqrt(0.2)}
        block_kwargs = dict(emb_channels=emb_channels, num_heads=1, dropout=dropout, skip_scale=math.sqrt(0.5),
                            eps=1e-6, resample_filter=resample_filter, resample_proj=True, adaptive_scale=False,
                            init=init, init_zero=init_zero, init_attn=init_attn)
        last_level = len(channel_mult) - 1

        # Mapping network.
        if embedding_type == 'positional':
            self.map_noise = PositionalEmbedding(num_channels=noise_channels, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(num_channels=noise_channels)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(in_features=label_dim, out_features=noise_channels, **init)
        self.map_augment = None
        if augment_dim:
            self.map_augment = Linear(in_features=augment_dim, out_features=noise_channels, bias=False, **init)
        self.map_layer0 = Linear(in_features=noise_channels, out_features=emb_channels, bias=True, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, bias=True, **init)

        # Encoder. `ch` tracks the main path, `aux_ch` the auxiliary input path.
        self.enc = torch.nn.ModuleDict()
        ch = in_channels
        aux_ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=ch, out_channels=model_channels, kernel=3, **init)
                ch = model_channels
            else:
                self.enc[f'{tag}_down'] = UNetBlock(in_channels=ch, out_channels=ch, down=True, **block_kwargs)
                if encoder_type == 'skip':
                    self.enc[f'{tag}_aux_down'] = Conv2d(in_channels=aux_ch, out_channels=aux_ch, kernel=0,
                                                         down=True, resample_filter=resample_filter)
                    self.enc[f'{tag}_aux_skip'] = Conv2d(in_channels=aux_ch, out_channels=ch, kernel=1, **init)
                elif encoder_type == 'residual':
                    self.enc[f'{tag}_aux_residual'] = Conv2d(in_channels=aux_ch, out_channels=ch, kernel=3, down=True,
                                                             resample_filter=resample_filter, fused_resample=True, **init)
                    aux_ch = ch
            for idx in range(num_blocks):
                width = model_channels * mult
                self.enc[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch, out_channels=width,
                                                          attention=(res in attn_resolutions), **block_kwargs)
                ch = width
        skip_widths = [module.out_channels for name, module in self.enc.items() if 'aux' not in name]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level in range(last_level, -1, -1):
            mult = channel_mult[level]
            res = img_resolution >> level
            tag = f'{res}x{res}'
            if level == last_level:
                self.dec[f'{tag}_in0'] = UNetBlock(in_channels=ch, out_channels=ch, attention=True, **block_kwargs)
                self.dec[f'{tag}_in1'] = UNetBlock(in_channels=ch, out_channels=ch, **block_kwargs)
            else:
                self.dec[f'{tag}_up'] = UNetBlock(in_channels=ch, out_channels=ch, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                width = model_channels * mult
                with_attn = idx == num_blocks and res in attn_resolutions
                self.dec[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch + skip_widths.pop(), out_channels=width,
                                                          attention=with_attn, **block_kwargs)
                ch = width
            if decoder_type == 'skip' or level == 0:
                if decoder_type == 'skip' and level < last_level:
                    self.dec[f'{tag}_aux_up'] = Conv2d(in_channels=out_channels, out_channels=out_channels, kernel=0,
                                                       up=True, resample_filter=resample_filter)
                self.dec[f'{tag}_aux_norm'] = GroupNorm(num_channels=ch, eps=1e-6)
                self.dec[f'{tag}_aux_conv'] = Conv2d(in_channels=ch, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self,
        x:              torch.Tensor,               # Input images [N, C, H, W].
        noise_labels:   torch.Tensor,               # Noise conditioning c_noise [N].
        class_labels:   torch.Tensor | None,        # Class labels [N, label_dim] or None.
        augment_labels: torch.Tensor | None = None, # Augmentation labels [N, augment_dim] or None.
    ) -> torch.Tensor:
        # Mapping: the embedding modules give [cos, sin]; this backbone wants [sin, cos].
        cos_half, sin_half = self.map_noise(noise_labels).chunk(2, dim=1)
        emb = torch.cat([sin_half, cos_half], dim=1)
        if self.map_label is not None:
            labels = _drop_labels(class_labels, self.label_dropout if self.training else 0, x.shape[0])
            emb = emb + self.map_label(labels * math.sqrt(self.map_label.in_features))
        if augment_labels is not None and self.map_augment is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = F.silu(self.map_layer0(emb))
        emb = F.silu(self.map_layer1(emb))

        # Encoder; every main-path output is remembered for the decoder.
        skip_stack = []
        aux_in = x
        for name, module in self.enc.items():
            if name.endswith('_aux_down'):
                aux_in = module(aux_in)
            elif name.endswith('_aux_skip'):
                x = x + module(aux_in)
                skip_stack[-1] = x
            elif name.endswith('_aux_residual'):
                x = (x + module(aux_in)) / math.sqrt(2)
                skip_stack[-1] = x
                aux_in = x
            elif isinstance(module, UNetBlock):
                x = module(x, emb)
                skip_stack.append(x)
            else:
                x = module(x)
                skip_stack.append(x)

        # Decoder; blocks whose width differs from the running tensor take a skip.
        out = None
        normed = None
        for name, module in self.dec.items():
            if name.endswith('_aux_up'):
                out = module(out)
            elif name.endswith('_aux_norm'):
                normed = module(x)
            elif name.endswith('_aux_conv'):
                level_out = module(F.silu(normed))
                out = level_out if out is None else level_out + out
            else:
                if module.in_channels != x.shape[1]:
                    x = torch.cat([x, skip_stack.pop()], dim=1)
                x = module(x, emb)
        return out

#----------------------------------------------------------------------------
# ADM backbone of Dhariwal & Nichol, "Diffusion Models Beat GANs on Image
# Synthesis" (2021), as EDM reimplements it: adaptive scale/shift blocks with
# multi-head attention at several resolutions and a single output head.

@persistence.persistent_class
class DhariwalUNet(torch.nn.Module):
    def __init__(self,
        img_resolution:   int,                        # Height = width of input and output.
        in_channels:      int,                        # Image channels in.
        out_channels:     int,                        # Image channels out.
        label_dim:        int = 0,                    # Class-label width; 0 = unconditional.
        augment_dim:      int = 0,                    # Augmentation-label width; 0 = none.

        model_channels:   int = 192,                  # Channel count of the base level.
        channel_mult:     Sequence[int] = (1,2,3,4),  # Channel multiplier per resolution level.
        channel_mult_emb: int = 4,                    # Embedding width = model_channels * this.
        num_blocks:       int = 3,                    # Residual blocks per level.
        attn_resolutions: Sequence[int] = (32,16,8),  # Resolutions whose blocks get self-attention.
        dropout:          float = 0.10,               # Dropout inside the residual blocks.
        label_dropout:    float = 0,                  # Probability of zeroing a sample's label in training (for guidance).
    ):
        super().__init__()
        self.label_dropout = label_dropout
        emb_channels = channel_mult_emb * model_channels
        # He-uniform scaled by 1/sqrt(3) (PyTorch's default layer init); zero init
        # for the last layer of each residual branch and for the output.
        gain = math.sqrt(1 / 3)
        init = {'init_mode': 'kaiming_uniform', 'init_weight': gain, 'init_bias': gain}
        init_zero = {'init_mode': 'kaiming_uniform', 'init_weight': 0, 'init_bias': 0}
        block_kwargs = dict(emb_channels=emb_channels, channels_per_head=64, dropout=dropout,
                            init=init, init_zero=init_zero)
        last_level = len(channel_mult) - 1

        # Mapping network.
        self.map_noise = PositionalEmbedding(num_channels=model_channels)
        self.map_augment = None
        if augment_dim:
            self.map_augment = Linear(in_features=augment_dim, out_features=model_channels, bias=False, **init_zero)
        self.map_layer0 = Linear(in_features=model_channels, out_features=emb_channels, bias=True, **init)
        self.map_layer1 = Linear(in_features=emb_channels, out_features=emb_channels, bias=True, **init)
        self.map_label = None
        if label_dim:
            self.map_label = Linear(in_features=label_dim, out_features=emb_channels, bias=False,
                                    init_mode='kaiming_normal', init_weight=math.sqrt(label_dim))

        # Encoder.
        self.enc = torch.nn.ModuleDict()
        ch = in_channels
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            width = model_channels * mult
            if level == 0:
                self.enc[f'{tag}_conv'] = Conv2d(in_channels=ch, out_channels=width, kernel=3, **init)
                ch = width
            else:
                self.enc[f'{tag}_down'] = UNetBlock(in_channels=ch, out_channels=ch, down=True, **block_kwargs)
            for idx in range(num_blocks):
                self.enc[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch, out_channels=width,
                                                          attention=(res in attn_resolutions), **block_kwargs)
                ch = width
        skip_widths = [module.out_channels for module in self.enc.values()]

        # Decoder.
        self.dec = torch.nn.ModuleDict()
        for level in range(last_level, -1, -1):
            res = img_resolution >> level
            tag = f'{res}x{res}'
            width = model_channels * channel_mult[level]
            if level == last_level:
                self.dec[f'{tag}_in0'] = UNetBlock(in_channels=ch, out_channels=ch, attention=True, **block_kwargs)
                self.dec[f'{tag}_in1'] = UNetBlock(in_channels=ch, out_channels=ch, **block_kwargs)
            else:
                self.dec[f'{tag}_up'] = UNetBlock(in_channels=ch, out_channels=ch, up=True, **block_kwargs)
            for idx in range(num_blocks + 1):
                self.dec[f'{tag}_block{idx}'] = UNetBlock(in_channels=ch + skip_widths.pop(), out_channels=width,
                                                          attention=(res in attn_resolutions), **block_kwargs)
                ch = width
        self.out_norm = GroupNorm(num_channels=ch)
        self.out_conv = Conv2d(in_channels=ch, out_channels=out_channels, kernel=3, **init_zero)

    def forward(self,
        x:              torch.Tensor,               # Input images [N, C, H, W].
        noise_labels:   torch.Tensor,               # Noise conditioning c_noise [N].
        class_labels:   torch.Tensor | None,        # Class labels [N, label_dim] or None.
        augment_labels: torch.Tensor | None = None, # Augmentation labels [N, augment_dim] or None.
    ) -> torch.Tensor:
        # Mapping: labels join after the first two layers, without rescaling.
        emb = self.map_noise(noise_labels)  # [cos, sin] order, unlike SongUNet
        if augment_labels is not None and self.map_augment is not None:
            emb = emb + self.map_augment(augment_labels)
        emb = self.map_layer1(F.silu(self.map_layer0(emb)))
        if self.map_label is not None:
            labels = _drop_labels(class_labels, self.label_dropout if self.training else 0, x.shape[0])
            emb = emb + self.map_label(labels)
        emb = F.silu(emb)

        # Encoder; every output is kept for the decoder.
        skip_stack = []
        for module in self.enc.values():
            x = module(x, emb) if isinstance(module, UNetBlock) else module(x)
            skip_stack.append(x)

        # Decoder; a block wider than the running tensor consumes the newest skip.
        for module in self.dec.values():
            if module.in_channels != x.shape[1]:
                x = torch.cat([x, skip_stack.pop()], dim=1)
            x = module(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))

#----------------------------------------------------------------------------
# Helpers shared by the preconditioners: backbone lookup by class name, the
# compute dtype, and canonical input shapes/dtypes.

_BACKBONES = {'SongUNet': SongUNet, 'DhariwalUNet': DhariwalUNet}

def _build_backbone(model_type: str, **kwargs: Any) -> torch.nn.Module:
    if model_type not in _BACKBONES:
        raise ValueError(f'unknown model_type {model_type!r}; expected one of {sorted(_BACKBONES)}')
    return _BACKBONES[model_type](**kwargs)

def _check_precision(use_fp16: bool, use_bf16: bool) -> None:
    if use_fp16 and use_bf16:
        raise ValueError('use_fp16 and use_bf16 are mutually exclusive')

def compute_dtype(net: torch.nn.Module, device: torch.device, force_fp32: bool = False) -> torch.dtype:
    """The dtype a preconditioner runs its backbone in on `device`. EDM's rule: float16 only on CUDA;
    bfloat16 (an extension) runs on any device."""
    if force_fp32:
        return torch.float32
    if net.use_fp16 and device.type == 'cuda':
        return torch.float16
    if getattr(net, 'use_bf16', False):
        return torch.bfloat16
    return torch.float32

def _canonical_inputs(net: torch.nn.Module, x: torch.Tensor, sigma: Any, class_labels: torch.Tensor | None):
    # Returns x as float32, sigma as float32 [N,1,1,1] (or [1,1,1,1]), and the class
    # labels as float32 [N, label_dim]; a missing label becomes a zero vector.
    x = x.to(torch.float32)
    sigma = torch.as_tensor(sigma).to(device=x.device, dtype=torch.float32).reshape(-1, 1, 1, 1)
    if net.label_dim == 0:
        labels = None
    elif class_labels is None:
        labels = torch.zeros([1, net.label_dim], device=x.device)
    else:
        labels = class_labels.to(torch.float32).reshape(-1, net.label_dim)
    return x, sigma, labels

def _evaluate_backbone(model: torch.nn.Module, x_in: torch.Tensor, c_noise: torch.Tensor,
                       labels: torch.Tensor | None, dtype: torch.dtype, model_kwargs: dict) -> torch.Tensor:
    F_x = model(x_in.to(dtype), c_noise.flatten(), class_labels=labels, **model_kwargs)
    if F_x.dtype != dtype:
        raise RuntimeError(f'backbone returned {F_x.dtype}, expected {dtype}')
    return F_x.to(torch.float32)

#----------------------------------------------------------------------------
# VP preconditioning (Song et al. 2021, variance preserving SDE):
#   sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1),
#   c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2 + 1), c_noise = (M-1) t(sigma).

@persistence.persistent_class
class VPPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution: int,               # Image height = width.
        img_channels:   int,               # Image channels.
        label_dim:      int = 0,           # Class-label width; 0 = unconditional.
        use_fp16:       bool = False,      # Run the backbone in float16 on CUDA?
        beta_d:         float = 19.9,      # beta_max - beta_min of the linear beta(t) schedule.
        beta_min:       float = 0.1,       # Initial slope of the noise schedule.
        M:              int = 1000,        # Number of discrete DDPM timesteps.
        epsilon_t:      float = 1e-5,      # Smallest t used in training.
        model_type:     str = 'SongUNet',  # Backbone class name.
        use_bf16:       bool = False,      # Run the backbone in bfloat16 (any device)?
        **model_kwargs: Any,               # Passed on to the backbone.
    ):
        _check_precision(use_fp16, use_bf16)
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.M = M
        self.epsilon_t = epsilon_t
        # Noise range covered by t in [epsilon_t, 1], evaluated in float32 on the
        # CPU (so that building under a 'meta' default device works too).
        with torch.device('cpu'):
            self.sigma_min, self.sigma_max = (float(self.sigma(t)) for t in (epsilon_t, 1))
        self.model = _build_backbone(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                     out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs: Any) -> torch.Tensor:
        x, sigma, labels = _canonical_inputs(self, x, sigma, class_labels)
        dtype = compute_dtype(self, x.device, force_fp32)
        c_out = -sigma
        c_in = 1 / (sigma.square() + 1).sqrt()
        c_noise = self.sigma_inv(sigma) * (self.M - 1)
        F_x = _evaluate_backbone(self.model, c_in * x, c_noise, labels, dtype, model_kwargs)
        return x + c_out * F_x  # c_skip = 1

    def sigma(self, t: Any) -> torch.Tensor:
        t = torch.as_tensor(t)
        exponent = 0.5 * self.beta_d * (t ** 2) + self.beta_min * t
        return (exponent.exp() - 1).sqrt()

    def sigma_inv(self, sigma: Any) -> torch.Tensor:
        sigma = torch.as_tensor(sigma)
        root = (self.beta_min ** 2 + 2 * self.beta_d * (1 + sigma ** 2).log()).sqrt()
        return (root - self.beta_min) / self.beta_d

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
# VE preconditioning (Song et al. 2021, variance exploding SDE):
#   c_skip = 1, c_out = sigma, c_in = 1, c_noise = log(sigma / 2).

@persistence.persistent_class
class VEPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution: int,               # Image height = width.
        img_channels:   int,               # Image channels.
        label_dim:      int = 0,           # Class-label width; 0 = unconditional.
        use_fp16:       bool = False,      # Run the backbone in float16 on CUDA?
        sigma_min:      float = 0.02,      # Lowest noise level supported.
        sigma_max:      float = 100,       # Highest noise level supported.
        model_type:     str = 'SongUNet',  # Backbone class name.
        use_bf16:       bool = False,      # Run the backbone in bfloat16 (any device)?
        **model_kwargs: Any,               # Passed on to the backbone.
    ):
        _check_precision(use_fp16, use_bf16)
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.model = _build_backbone(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                     out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs: Any) -> torch.Tensor:
        x, sigma, labels = _canonical_inputs(self, x, sigma, class_labels)
        dtype = compute_dtype(self, x.device, force_fp32)
        c_noise = torch.log(0.5 * sigma)
        F_x = _evaluate_backbone(self.model, x, c_noise, labels, dtype, model_kwargs)  # c_in = 1
        return x + sigma * F_x  # c_skip = 1, c_out = sigma

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
# iDDPM preconditioning (Nichol & Dhariwal 2021, cosine schedule). The M+1
# noise levels u_M = 0 < ... < u_0 follow from alpha_bar(j) = sin^2(pi j /
# (2 M (1 + C_2))) by u_{j-1} = sqrt((u_j^2 + 1) / max(alpha_bar(j-1) /
# alpha_bar(j), C_1) - 1); sigma is snapped to the nearest u_j and the backbone
# sees c_noise = M - 1 - j. c_skip = 1, c_out = -sigma, c_in = 1/sqrt(sigma^2+1).
# The backbone predicts 2*img_channels (mean and variance terms); only the
# first img_channels are used.

@persistence.persistent_class
class iDDPMPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution: int,                   # Image height = width.
        img_channels:   int,                   # Image channels.
        label_dim:      int = 0,               # Class-label width; 0 = unconditional.
        use_fp16:       bool = False,          # Run the backbone in float16 on CUDA?
        C_1:            float = 0.001,         # Clamp on the alpha_bar ratio (low-noise end).
        C_2:            float = 0.008,         # Offset of the cosine schedule (high-noise end).
        M:              int = 1000,            # Number of discrete DDPM timesteps.
        model_type:     str = 'DhariwalUNet',  # Backbone class name.
        use_bf16:       bool = False,          # Run the backbone in bfloat16 (any device)?
        **model_kwargs: Any,                   # Passed on to the backbone.
    ):
        _check_precision(use_fp16, use_bf16)
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.C_1 = C_1
        self.C_2 = C_2
        self.M = M
        self.model = _build_backbone(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                     out_channels=img_channels * 2, label_dim=label_dim, **model_kwargs)

        # The table is computed on the CPU in float32 so that it is the same
        # whatever default device (e.g. 'meta') the network is built under.
        with torch.device('cpu'):
            levels = torch.zeros(M + 1)
            for j in range(M, 0, -1):
                ratio = (self.alpha_bar(j - 1) / self.alpha_bar(j)).clip(min=C_1)
                levels[j - 1] = ((levels[j] ** 2 + 1) / ratio - 1).sqrt()
        self.register_buffer('u', levels)
        self.sigma_min = float(levels[M - 1])
        self.sigma_max = float(levels[0])

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs: Any) -> torch.Tensor:
        x, sigma, labels = _canonical_inputs(self, x, sigma, class_labels)
        dtype = compute_dtype(self, x.device, force_fp32)
        c_out = -sigma
        c_in = 1 / (sigma.square() + 1).sqrt()
        step = self.round_sigma(sigma, return_index=True)
        c_noise = (self.M - 1) - step.to(torch.float32)
        F_x = _evaluate_backbone(self.model, c_in * x, c_noise, labels, dtype, model_kwargs)
        return x + c_out * F_x[:, :self.img_channels]  # c_skip = 1

    def alpha_bar(self, j: Any) -> torch.Tensor:
        j = torch.as_tensor(j)
        return (0.5 * math.pi * j / self.M / (self.C_2 + 1)).sin() ** 2

    def round_sigma(self, sigma: Any, return_index: bool = False) -> torch.Tensor:
        # Nearest entry of `u` (first one on ties), measured as torch.cdist does.
        sigma = torch.as_tensor(sigma)
        query = sigma.to(device=self.u.device, dtype=torch.float32).reshape(1, -1, 1)
        index = torch.cdist(query, self.u.reshape(1, -1, 1)).argmin(2)
        if return_index:
            snapped = index
        else:
            snapped = self.u[index.flatten()].to(sigma.dtype)
        return snapped.reshape(sigma.shape).to(sigma.device)

#----------------------------------------------------------------------------
# EDM preconditioning (Karras et al. 2022, Table 1):
#   c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
#   c_out  = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
#   c_in   = 1 / sqrt(sigma^2 + sigma_data^2),
#   c_noise = ln(sigma) / 4.

@persistence.persistent_class
class EDMPrecond(torch.nn.Module):
    def __init__(self,
        img_resolution: int,                   # Image height = width.
        img_channels:   int,                   # Image channels.
        label_dim:      int = 0,               # Class-label width; 0 = unconditional.
        use_fp16:       bool = False,          # Run the backbone in float16 on CUDA?
        sigma_min:      float = 0,             # Lowest noise level supported.
        sigma_max:      float = float('inf'),  # Highest noise level supported.
        sigma_data:     float = 0.5,           # Standard deviation of the data.
        model_type:     str = 'DhariwalUNet',  # Backbone class name.
        use_bf16:       bool = False,          # Run the backbone in bfloat16 (any device)?
        **model_kwargs: Any,                   # Passed on to the backbone.
    ):
        _check_precision(use_fp16, use_bf16)
        super().__init__()
        self.img_resolution = img_resolution
        self.img_channels = img_channels
        self.label_dim = label_dim
        self.use_fp16 = use_fp16
        self.use_bf16 = use_bf16
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.sigma_data = sigma_data
        self.model = _build_backbone(model_type, img_resolution=img_resolution, in_channels=img_channels,
                                     out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None,
                force_fp32: bool = False, **model_kwargs: Any) -> torch.Tensor:
        x, sigma, labels = _canonical_inputs(self, x, sigma, class_labels)
        dtype = compute_dtype(self, x.device, force_fp32)
        sd2 = self.sigma_data ** 2
        total_var = sigma ** 2 + sd2
        c_skip = sd2 / total_var
        c_out = sigma * self.sigma_data / total_var.sqrt()
        c_in = 1 / total_var.sqrt()
        c_noise = torch.log(sigma) / 4
        F_x = _evaluate_backbone(self.model, c_in * x, c_noise, labels, dtype, model_kwargs)
        return c_skip * x + c_out * F_x

    def round_sigma(self, sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
