"""Backward sampling, step (a) of SFBD's Algorithm 1: from a noisy observation y = x + sigma * e
back to a clean image, with the current denoiser D(x; t).

An observation is a sample of the data blurred to noise level sigma, i.e. of p_sigma, the state of
EDM's forward process dx = sqrt(2t) dW at time t = sigma. Running the reverse process from t = sigma
down to 0, starting at y itself, draws an image from the model's posterior given y. Both samplers
step over the same noise levels: EDM's rho-grid for `num_steps`, cut at sigma (`denoising_sigmas`).

ode  The probability-flow ODE dx/dt = (x - D(x; t)) / t, integrated with EDM's Heun sampler
     (last step Euler): the reference release's backward sampler, image for image.
     n steps cost 2n - 1 network evaluations.

sde  The reverse-time SDE of Algorithm 1, dx = -2t grad log p_t(x) dt + sqrt(2t) dW, with the score
     (D(x; t) - x) / t^2, i.e. dx = 2 (x - D(x; t)) / t dt + sqrt(2t) dW. One Euler-Maruyama step
     from t_i to t_{i+1} < t_i is

         x <- x - 2 (t_i - t_{i+1}) / t_i * (x - D(x; t_i)) + sqrt(t_i^2 - t_{i+1}^2) * z,

     where the noise variance t_i^2 - t_{i+1}^2 is the integral of 2t over the step (plain
     Euler-Maruyama's 2 t_i (t_i - t_{i+1}) overshoots on EDM's coarse low-noise steps). The last
     step, to t = 0, returns the denoiser mean D(x; t_i) without noise. n steps cost n evaluations.

Randomness (the SDE's noise, or the ODE's optional churn) comes from one generator per image,
seeded from the run's seed and the image's index in its observation set, so an image does not
depend on batching, sharding or the number of processes.

Per-image noise levels: each observation y_i = x_i + sigma_i * e_i may have its own sigma_i. Image i
then goes down its own cut grid, exactly as a batch of images at sigma_i alone would. Grids that
start at the same node of the full grid share every level but the first, so such images are
denoised together (one batch, the first level per image); a batch spanning several start nodes is
denoised group by group, each image drawing from its own random stream. The result for each image
equals a run at its sigma alone (see docs/sfbd.md for when posterior sampling with per-image noise
levels is valid).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from training.sampler import (ABLATION_KEYS, StackedRandomGenerator, edm_sigma_steps, heun_nfe, select_sampler,
                              step_level, truncate_sigma_steps)

MODES = ('ode', 'sde')

#----------------------------------------------------------------------------
# The noise levels of a backward pass: EDM's grid (rounded to what the network
# supports, then 0), from its largest node >= sigma down, that node replaced
# by sigma. With 18 steps, sigma = 0.59 gives 8 steps and 0.5853 gives 7.
# Per-image levels [N] that start at the same node give per-image grids [n+1, N].

GRID_KEYS = ('num_steps', 'sigma_min', 'sigma_max', 'rho')

def denoising_sigmas(net: torch.nn.Module, sigma: float | torch.Tensor, num_steps: int = 18, sigma_min: float = 0.002,
                     sigma_max: float = 80, rho: float = 7, device: torch.device | str = 'cpu') -> torch.Tensor:
    full = edm_sigma_steps(net, num_steps, sigma_min, sigma_max, rho, device=device)
    return truncate_sigma_steps(full, sigma)

def backward_nfe(num_steps: int, mode: str) -> int:
    """Network evaluations of a backward pass over `num_steps` steps (of the cut grid)."""
    return heun_nfe(num_steps) if mode == 'ode' else num_steps

#----------------------------------------------------------------------------
# Per-image noise levels: which images of a batch can be denoised together.
# On EDM's grid, images whose grids start at the same node (the same number
# of steps); the ablation sampler's grids differ, so there only images of
# exactly the same sigma.

def grid_groups(net: torch.nn.Module, sigmas: torch.Tensor, mode: str = 'ode', **sampler_kwargs) -> list[torch.Tensor]:
    """Indices into `sigmas` ([N]), in groups that share one grid but for the first level."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    if mode == 'ode' and any(k in kwargs for k in ABLATION_KEYS):
        keys = sigmas
    else:
        full = edm_sigma_steps(net, **{k: kwargs[k] for k in GRID_KEYS if k in kwargs}, device=sigmas.device)
        keys = (full[None, :] >= sigmas[:, None]).sum(dim=1)  # Nodes at or above sigma: the start node.
    _values, group = torch.unique(keys, return_inverse=True)
    return [torch.nonzero(group == k).flatten() for k in range(len(_values))]

# The random streams of some images of a batch: a StackedRandomGenerator is
# narrowed to their generators; any other `randn_like` is called as it is.
def restrict_randn_like(randn_like: Callable[[torch.Tensor], torch.Tensor],
                        indices: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    owner = getattr(randn_like, '__self__', None)
    if isinstance(owner, StackedRandomGenerator):
        return owner.subset(indices.tolist()).randn_like
    return randn_like

#----------------------------------------------------------------------------
# One random stream per image: the seed of image `index` under run seed `seed`.

def image_seeds(seed: int, indices: Sequence[int]) -> list[int]:
    return [int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0]) for index in indices]

#----------------------------------------------------------------------------
# The reverse SDE from sigma to 0 (see the module docstring).

@torch.no_grad()
def sde_backward(
    net: torch.nn.Module,
    y: torch.Tensor,                # Observations at noise level sigma, [N, C, H, W].
    sigma: float | torch.Tensor,    # Their noise level, or one per image [N] (all starting at one node).
    class_labels: torch.Tensor | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    num_steps: int = 18,            # Steps of the full EDM grid that is cut at sigma.
    sigma_min: float = 0.002,
    sigma_max: float = 80,
    rho: float = 7,
) -> torch.Tensor:
    t_steps = denoising_sigmas(net, sigma, num_steps, sigma_min, sigma_max, rho, device=y.device)
    n_steps = len(t_steps) - 1
    x = y.to(torch.float64)
    for i in range(n_steps):
        t_cur, t_next = step_level(t_steps, i), step_level(t_steps, i + 1)
        denoised = net(x, t_cur, class_labels).to(torch.float64)
        if i == n_steps - 1:  # t_next = 0: the denoiser mean.
            return denoised
        x = x - 2 * (t_cur - t_next) / t_cur * (x - denoised) + (t_cur ** 2 - t_next ** 2).sqrt() * randn_like(x)
    return x

#----------------------------------------------------------------------------
# Both modes behind one call. `sampler_kwargs` are EDM's sampler options
# (num_steps, sigma_min, sigma_max, rho; for the ODE also the churn options
# and the ablation options); None values mean "the default".

@torch.no_grad()
def backward_sample(net: torch.nn.Module, y: torch.Tensor, sigma: float | torch.Tensor,
                    class_labels: torch.Tensor | None = None, mode: str = 'ode',
                    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
                    **sampler_kwargs) -> torch.Tensor:
    """Denoise observations `y` at noise level `sigma`, one for all or one per image ([N]);
    returns float64 images in [-1, 1] units. With per-image levels a batch is denoised in groups
    that share a grid (`grid_groups`); a StackedRandomGenerator's `randn_like` is split with it."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {"|".join(MODES)}, not {mode!r}')
    sampler_kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    if torch.as_tensor(sigma).ndim == 0:
        return _backward_one_grid(net, y, sigma, class_labels, mode, randn_like, sampler_kwargs)

    sigmas = torch.as_tensor(sigma, dtype=torch.float64, device=y.device).flatten()
    if len(sigmas) != len(y):
        raise ValueError(f'{len(sigmas)} noise levels for {len(y)} observations')
    out = torch.empty(y.shape, dtype=torch.float64, device=y.device)
    for index in grid_groups(net, sigmas, mode, **sampler_kwargs):
        levels = sigmas[index]
        start = float(levels[0]) if bool((levels == levels[0]).all()) else levels  # One level: the plain path.
        labels = None if class_labels is None else class_labels[index]
        out[index] = _backward_one_grid(net, y[index], start, labels, mode, restrict_randn_like(randn_like, index),
                                        sampler_kwargs)
    return out

def _backward_one_grid(net: torch.nn.Module, y: torch.Tensor, sigma: float | torch.Tensor,
                       class_labels: torch.Tensor | None, mode: str,
                       randn_like: Callable[[torch.Tensor], torch.Tensor], sampler_kwargs: dict) -> torch.Tensor:
    if mode == 'sde':
        return sde_backward(net, y, sigma, class_labels, randn_like=randn_like, **sampler_kwargs)
    sampler, kwargs = select_sampler(sampler_kwargs)
    return sampler(net, y, class_labels, randn_like=randn_like, sigma_start=sigma, **kwargs)

#----------------------------------------------------------------------------
