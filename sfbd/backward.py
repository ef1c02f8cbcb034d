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
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from training.sampler import edm_sigma_steps, select_sampler, truncate_sigma_steps

MODES = ('ode', 'sde')

#----------------------------------------------------------------------------
# The noise levels of a backward pass: EDM's grid (rounded to what the network
# supports, then 0), from its largest node >= sigma down, that node replaced
# by sigma. With 18 steps, sigma = 0.59 gives 8 steps and 0.5853 gives 7.

def denoising_sigmas(net: torch.nn.Module, sigma: float, num_steps: int = 18, sigma_min: float = 0.002,
                     sigma_max: float = 80, rho: float = 7, device: torch.device | str = 'cpu') -> torch.Tensor:
    full = edm_sigma_steps(net, num_steps, sigma_min, sigma_max, rho, device=device)
    return truncate_sigma_steps(full, sigma)

def backward_nfe(num_steps: int, mode: str) -> int:
    """Network evaluations of a backward pass over `num_steps` steps (of the cut grid)."""
    return 2 * num_steps - 1 if mode == 'ode' else num_steps

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
    sigma: float,                   # Their noise level.
    class_labels: torch.Tensor | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    num_steps: int = 18,            # Steps of the full EDM grid that is cut at sigma.
    sigma_min: float = 0.002,
    sigma_max: float = 80,
    rho: float = 7,
) -> torch.Tensor:
    t_steps = denoising_sigmas(net, sigma, num_steps, sigma_min, sigma_max, rho, device=y.device)
    x = y.to(torch.float64)
    for i in range(len(t_steps) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        denoised = net(x, t_cur, class_labels).to(torch.float64)
        if t_next == 0:
            return denoised
        x = x - 2 * (t_cur - t_next) / t_cur * (x - denoised) + (t_cur ** 2 - t_next ** 2).sqrt() * randn_like(x)
    return x

#----------------------------------------------------------------------------
# Both modes behind one call. `sampler_kwargs` are EDM's sampler options
# (num_steps, sigma_min, sigma_max, rho; for the ODE also the churn options
# and the ablation options); None values mean "the default".

def backward_sample(net: torch.nn.Module, y: torch.Tensor, sigma: float, class_labels: torch.Tensor | None = None,
                    mode: str = 'ode', randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
                    **sampler_kwargs) -> torch.Tensor:
    """Denoise observations `y` at noise level `sigma`; returns float64 images in [-1, 1] units."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {"|".join(MODES)}, not {mode!r}')
    sampler_kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    if mode == 'sde':
        return sde_backward(net, y, sigma, class_labels, randn_like=randn_like, **sampler_kwargs)
    sampler, kwargs = select_sampler(sampler_kwargs)
    return sampler(net, y, class_labels, randn_like=randn_like, sigma_start=sigma, **kwargs)

#----------------------------------------------------------------------------
