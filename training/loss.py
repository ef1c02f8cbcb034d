"""Denoising score-matching losses of EDM (Karras et al. 2022, Table 1).

Each loss draws one noise level per image, noises the (optionally augmented) clean images, asks
the network to denoise them and returns the weighted squared error per pixel, [N, C, H, W]. The
training loop sums it per image and averages over the batch. Random numbers are drawn in EDM's
order (the noise level, then the augmentation, then the noise), so that with the same seed the
loss equals EDM's.
"""

from __future__ import annotations

from typing import Callable

import torch

from torch_utils import persistence

#----------------------------------------------------------------------------
# Shared step: noise the clean images at `sigma` ([N, 1, 1, 1]), denoise,
# weight the squared error.

def _denoising_loss(net, images: torch.Tensor, labels, augment_pipe, sigma: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    clean, augment_labels = (images, None) if augment_pipe is None else augment_pipe(images)
    noise = torch.randn_like(clean) * sigma
    denoised = net(clean + noise, sigma, labels, augment_labels=augment_labels)
    return weight * (denoised - clean) ** 2

#----------------------------------------------------------------------------
# Variance preserving (VP) loss of "Score-Based Generative Modeling through
# Stochastic Differential Equations": t uniform in [epsilon_t, 1], weight 1/sigma^2.

@persistence.persistent_class
class VPLoss:
    def __init__(self,
        beta_d:    float = 19.9,  # Linear growth of beta(t) over t in [0, 1].
        beta_min:  float = 0.1,   # beta(0).
        epsilon_t: float = 1e-5,  # Smallest t drawn.
    ):
        self.beta_d = beta_d
        self.beta_min = beta_min
        self.epsilon_t = epsilon_t

    def __call__(self, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 augment_pipe: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        u = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma(1 + u * (self.epsilon_t - 1))
        return _denoising_loss(net, images, labels, augment_pipe, sigma, weight=1 / sigma ** 2)

    # Noise level at time t: sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1).
    def sigma(self, t) -> torch.Tensor:
        t = torch.as_tensor(t)
        return ((0.5 * self.beta_d * (t ** 2) + self.beta_min * t).exp() - 1).sqrt()

#----------------------------------------------------------------------------
# Variance exploding (VE) loss of the same paper: sigma log-uniform in
# [sigma_min, sigma_max], weight 1/sigma^2.

@persistence.persistent_class
class VELoss:
    def __init__(self,
        sigma_min: float = 0.02,  # Smallest noise level drawn.
        sigma_max: float = 100,   # Largest noise level drawn.
    ):
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max

    def __call__(self, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 augment_pipe: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        u = torch.rand([images.shape[0], 1, 1, 1], device=images.device)
        sigma = self.sigma_min * ((self.sigma_max / self.sigma_min) ** u)
        return _denoising_loss(net, images, labels, augment_pipe, sigma, weight=1 / sigma ** 2)

#----------------------------------------------------------------------------
# EDM's loss: ln(sigma) ~ N(P_mean, P_std^2), weight (sigma^2 + sigma_data^2) /
# (sigma * sigma_data)^2, which gives the network's output unit variance.

@persistence.persistent_class
class EDMLoss:
    def __init__(self,
        P_mean:     float = -1.2,  # Mean of ln(sigma).
        P_std:      float = 1.2,   # Standard deviation of ln(sigma).
        sigma_data: float = 0.5,   # Standard deviation of the data.
    ):
        self.P_mean = P_mean
        self.P_std = P_std
        self.sigma_data = sigma_data

    def __call__(self, net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None,
                 augment_pipe: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None) -> torch.Tensor:
        z = torch.randn([images.shape[0], 1, 1, 1], device=images.device)
        sigma = (z * self.P_std + self.P_mean).exp()
        weight = (sigma ** 2 + self.sigma_data ** 2) / (sigma * self.sigma_data) ** 2
        return _denoising_loss(net, images, labels, augment_pipe, sigma, weight)

#----------------------------------------------------------------------------
