"""Samplers of "Elucidating the Design Space of Diffusion-Based Generative Models" (EDM).

`edm_sampler` is Algorithm 2 of the paper (Heun's method with optional churn); `ablation_sampler`
covers the design choices of its Table 1. Both run in float64 as EDM does, and both can start at
an intermediate noise level (`sigma_start`) from a given noisy image instead of pure noise, which
is SFBD's backward sampling from an observation. `generate_images` draws latents and labels with
EDM's per-seed protocol so that the same seeds give the same images on the same kind of device.
"""

from __future__ import annotations

import inspect

from typing import Callable, Sequence

import numpy as np
import torch

from dnnlib.util import UserError

#----------------------------------------------------------------------------
# Noise levels of EDM's time discretisation (Eq. 5): N levels from sigma_max
# down to sigma_min, evenly spaced in sigma^(1/rho), rounded to what the
# network supports, followed by sigma_N = 0.

def edm_sigma_steps(net: torch.nn.Module, num_steps: int = 18, sigma_min: float = 0.002,
                    sigma_max: float = 80, rho: float = 7, device: torch.device | str = 'cpu') -> torch.Tensor:
    if num_steps < 1:
        raise ValueError('num_steps must be at least 1')
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)
    ramp = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([net.round_sigma(sigmas), sigmas.new_zeros(1)])

#----------------------------------------------------------------------------
# Start a discretisation at an intermediate noise level: keep the largest node
# at or above `sigma_start` and every node below it, and replace that node by
# sigma_start itself, so that the first step leaves exactly from sigma_start
# (SFBD's release builds its backward-sampling grid this way).
#
# `sigma_start` may also be one level per image ([N]), as long as every level
# cuts the grid at the same node: the result is then [n+1, N], column i the
# grid of image i (only row 0 differs between images).

def truncate_sigma_steps(t_steps: torch.Tensor, sigma_start: float | torch.Tensor) -> torch.Tensor:
    starts = torch.as_tensor(sigma_start, dtype=t_steps.dtype, device=t_steps.device)
    lo, hi = float(starts.min()), float(starts.max())
    if not 0 < lo <= hi <= float(t_steps[0]):
        raise ValueError(f'sigma_start={lo if lo <= 0 else hi:g} is outside the discretisation (0, {float(t_steps[0]):g}]')
    first = int(torch.nonzero(t_steps >= hi).max())
    if starts.ndim == 0:
        steps = t_steps[first:].clone()
        steps[0] = starts
        return steps
    if int(torch.nonzero(t_steps >= lo).max()) != first:
        raise ValueError('per-image sigma_start levels cut the discretisation at different nodes; '
                         'denoise each group of equal step count separately')
    steps = t_steps[first:, None].repeat(1, starts.numel())
    steps[0] = starts.flatten()
    return steps

# The noise level of step i in a form that broadcasts against a batch
# [N, C, H, W]: a scalar for a shared grid, [N, 1, 1, 1] for per-image grids.
def step_level(t_steps: torch.Tensor, i: int) -> torch.Tensor:
    level = t_steps[i]
    return level.reshape(-1, 1, 1, 1) if level.ndim else level

# Churn factor gamma_i of each image: gamma_max where S_min <= t <= S_max, else 0.
def churn_gamma(t: torch.Tensor, gamma_max: float, S_min: float, S_max: float) -> torch.Tensor:
    return ((S_min <= t) & (t <= S_max)).to(t.dtype) * gamma_max

#----------------------------------------------------------------------------
# Algorithm 2: deterministic Heun steps, with optional stochastic churn
# (S_churn > 0). The last step, towards sigma = 0, is a plain Euler step.
# Without `sigma_start`, x starts as latents * sigma_max; with it, `latents`
# is a noisy image at noise level sigma_start and is used as it is.

def edm_sampler(
    net: torch.nn.Module,
    latents: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    num_steps: int = 18,            # Number of noise levels of the full discretisation.
    sigma_min: float = 0.002,       # Lowest noise level.
    sigma_max: float = 80,          # Highest noise level.
    rho: float = 7,                 # Exponent of the discretisation.
    S_churn: float = 0,             # Overall amount of stochasticity.
    S_min: float = 0,               # Churn only at noise levels in [S_min, S_max].
    S_max: float = float('inf'),
    S_noise: float = 1,             # Scale of the noise added by churn.
    sigma_start: float | torch.Tensor | None = None,  # Start from `latents` at this noise level (or one per image, [N]) instead of from pure noise.
) -> torch.Tensor:
    t_steps = edm_sigma_steps(net, num_steps, sigma_min, sigma_max, rho, device=latents.device)
    if sigma_start is None:
        x_next = latents.to(torch.float64) * t_steps[0]
    else:
        t_steps = truncate_sigma_steps(t_steps, sigma_start)
        x_next = latents.to(torch.float64)
    n_steps = len(t_steps) - 1
    gamma_max = min(S_churn / n_steps, np.sqrt(2) - 1)

    for i in range(n_steps):
        t_cur, t_next = step_level(t_steps, i), step_level(t_steps, i + 1)
        x_cur = x_next

        # Churn: raise the noise level from t_cur to t_hat by adding fresh noise.
        # A start level between the levels of a network that knows only some
        # (iDDPM) may round down; nothing is added then (EDM's own grids are
        # the network's levels, where t_hat >= t_cur always holds).
        gamma = churn_gamma(t_cur, gamma_max, S_min, S_max)
        t_hat = net.round_sigma(t_cur + gamma * t_cur)
        x_hat = x_cur + (t_hat ** 2 - t_cur ** 2).clip(min=0).sqrt() * S_noise * randn_like(x_cur)

        # Euler step along dx/dt = (x - D(x; t)) / t.
        slope = (x_hat - net(x_hat, t_hat, class_labels).to(torch.float64)) / t_hat
        x_next = x_hat + (t_next - t_hat) * slope

        # Heun's correction, except on the last step where t_next = 0.
        if i < n_steps - 1:
            slope_next = (x_next - net(x_next, t_next, class_labels).to(torch.float64)) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * slope + 0.5 * slope_next)

    return x_next

#----------------------------------------------------------------------------
# Noise schedules sigma(t) with their derivatives and inverses (Table 1).

def _vp_schedule(beta_d: float, beta_min: float):
    def sigma(t):
        return (np.e ** (0.5 * beta_d * (t ** 2) + beta_min * t) - 1) ** 0.5
    def sigma_deriv(t):
        return 0.5 * (beta_min + beta_d * t) * (sigma(t) + 1 / sigma(t))
    def sigma_inv(s):
        return ((beta_min ** 2 + 2 * beta_d * (s ** 2 + 1).log()).sqrt() - beta_min) / beta_d
    return sigma, sigma_deriv, sigma_inv

def _ve_schedule():
    return (lambda t: t.sqrt()), (lambda t: 0.5 / t.sqrt()), (lambda s: s ** 2)

def _linear_schedule():
    return (lambda t: t), (lambda t: 1), (lambda s: s)

#----------------------------------------------------------------------------
# Noise levels of the four time discretisations compared in the paper.

def _ablation_sigma_steps(discretization: str, num_steps: int, sigma_min: float, sigma_max: float,
                          rho: float, epsilon_s: float, C_1: float, C_2: float, M: int,
                          vp_sigma: Callable, device: torch.device) -> torch.Tensor:
    ramp = torch.arange(num_steps, dtype=torch.float64, device=device) / max(num_steps - 1, 1)
    if discretization == 'vp':
        return vp_sigma(1 + ramp * (epsilon_s - 1))
    if discretization == 've':
        return ((sigma_max ** 2) * ((sigma_min ** 2 / sigma_max ** 2) ** ramp)).sqrt()
    if discretization == 'iddpm':
        # The M+1 noise levels of improved DDPM's cosine schedule, thinned to num_steps.
        def alpha_bar(j):
            return (0.5 * np.pi * j / M / (C_2 + 1)).sin() ** 2
        u = torch.zeros(M + 1, dtype=torch.float64, device=device)
        for j in torch.arange(M, 0, -1, device=device):
            u[j - 1] = ((u[j] ** 2 + 1) / (alpha_bar(j - 1) / alpha_bar(j)).clip(min=C_1) - 1).sqrt()
        kept = u[(u >= sigma_min) & (u <= sigma_max)]
        return kept[((len(kept) - 1) * ramp).round().to(torch.int64)]
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho

#----------------------------------------------------------------------------
# The generalised sampler of the paper's ablations: solver (euler|heun),
# discretisation (vp|ve|iddpm|edm), noise schedule sigma(t) (vp|ve|linear) and
# signal scaling s(t) (vp|none). The ODE is dx/dt = (sigma'/sigma + s'/s) x
# - sigma' s / sigma D(x/s; sigma).

SOLVERS = ('euler', 'heun')
DISCRETIZATIONS = ('vp', 've', 'iddpm', 'edm')
SCHEDULES = ('vp', 've', 'linear')
SCALINGS = ('vp', 'none')

def ablation_sampler(
    net: torch.nn.Module,
    latents: torch.Tensor,
    class_labels: torch.Tensor | None = None,
    randn_like: Callable[[torch.Tensor], torch.Tensor] = torch.randn_like,
    num_steps: int = 18,            # Number of noise levels of the full discretisation.
    sigma_min: float | None = None, # Lowest noise level; None: the discretisation's default.
    sigma_max: float | None = None, # Highest noise level; None: the discretisation's default.
    rho: float = 7,                 # Exponent of the EDM discretisation.
    solver: str = 'heun',           # euler | heun.
    discretization: str = 'edm',    # vp | ve | iddpm | edm.
    schedule: str = 'linear',       # Noise schedule sigma(t): vp | ve | linear.
    scaling: str = 'none',          # Signal scaling s(t): vp | none.
    epsilon_s: float = 1e-3,        # Last time step of the VP discretisation.
    C_1: float = 0.001,             # iDDPM: clipping of alpha_bar ratios.
    C_2: float = 0.008,             # iDDPM: offset of the cosine schedule.
    M: int = 1000,                  # iDDPM: number of original time steps.
    alpha: float = 1,               # Position of the second evaluation of a 2nd-order step.
    S_churn: float = 0,             # Overall amount of stochasticity.
    S_min: float = 0,               # Churn only at noise levels in [S_min, S_max].
    S_max: float = float('inf'),
    S_noise: float = 1,             # Scale of the noise added by churn.
    sigma_start: float | None = None,  # Start from `latents` at this noise level instead of from pure noise.
) -> torch.Tensor:
    for name, value, allowed in (('solver', solver, SOLVERS), ('discretization', discretization, DISCRETIZATIONS),
                                 ('schedule', schedule, SCHEDULES), ('scaling', scaling, SCALINGS)):
        if value not in allowed:
            raise ValueError(f'{name} must be one of {"|".join(allowed)}, not {value!r}')

    # Defaults of each discretisation, clamped to what the network supports. VP's range is EDM's:
    # sigma(t) of beta_d = 19.1 (not the 19.9 of VPPrecond), beta_min = 0.1 at t = epsilon_s and t = 1,
    # that is about [0.010467, 124.58]; EDM's VP baselines were sampled over this range.
    default_vp_sigma = _vp_schedule(19.1, 0.1)[0]
    if sigma_min is None:
        sigma_min = dict(vp=float(default_vp_sigma(torch.tensor(epsilon_s, dtype=torch.float64))),
                         ve=0.02, iddpm=0.002, edm=0.002)[discretization]
    if sigma_max is None:
        sigma_max = dict(vp=float(default_vp_sigma(torch.tensor(1.0, dtype=torch.float64))),
                         ve=100, iddpm=81, edm=80)[discretization]
    sigma_min = max(sigma_min, net.sigma_min)
    sigma_max = min(sigma_max, net.sigma_max)

    # The VP schedule whose ends match [sigma_min, sigma_max] over t in [epsilon_s, 1].
    vp_beta_d = 2 * (np.log(sigma_min ** 2 + 1) / epsilon_s - np.log(sigma_max ** 2 + 1)) / (epsilon_s - 1)
    vp_beta_min = np.log(sigma_max ** 2 + 1) - 0.5 * vp_beta_d
    vp = _vp_schedule(vp_beta_d, vp_beta_min)

    sigma_steps = _ablation_sigma_steps(discretization, num_steps, sigma_min, sigma_max, rho, epsilon_s,
                                        C_1, C_2, M, vp[0], latents.device)
    sigma, sigma_deriv, sigma_inv = dict(vp=vp, ve=_ve_schedule(), linear=_linear_schedule())[schedule]
    if scaling == 'vp':
        def s(t):
            return 1 / (1 + sigma(t) ** 2).sqrt()
        def s_deriv(t):
            return -sigma(t) * sigma_deriv(t) * (s(t) ** 3)
    else:
        def s(t):
            return 1
        def s_deriv(t):
            return 0

    # Time steps t_i = sigma^-1(round(sigma_i)), then t_N = 0.
    t_steps = sigma_inv(net.round_sigma(sigma_steps))
    t_steps = torch.cat([t_steps, t_steps.new_zeros(1)])
    if sigma_start is None:
        x_next = latents.to(torch.float64) * (sigma(t_steps[0]) * s(t_steps[0]))
    else:
        t_steps = sigma_inv(truncate_sigma_steps(sigma(t_steps), sigma_start))
        x_next = latents.to(torch.float64) * s(t_steps[0])
    n_steps = len(t_steps) - 1

    def slope(x, t):
        denoised = net(x / s(t), sigma(t), class_labels).to(torch.float64)
        return (sigma_deriv(t) / sigma(t) + s_deriv(t) / s(t)) * x - sigma_deriv(t) * s(t) / sigma(t) * denoised

    for i in range(n_steps):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        x_cur = x_next

        # Churn: raise the noise level, then rescale and add fresh noise.
        gamma = min(S_churn / n_steps, np.sqrt(2) - 1) if S_min <= sigma(t_cur) <= S_max else 0
        t_hat = sigma_inv(net.round_sigma(sigma(t_cur) + gamma * sigma(t_cur)))
        x_hat = s(t_hat) / s(t_cur) * x_cur \
            + (sigma(t_hat) ** 2 - sigma(t_cur) ** 2).clip(min=0).sqrt() * s(t_hat) * S_noise * randn_like(x_cur)

        # Euler step, or a 2nd-order step evaluated at t_hat + alpha * h.
        h = t_next - t_hat
        d_cur = slope(x_hat, t_hat)
        if solver == 'euler' or i == n_steps - 1:
            x_next = x_hat + h * d_cur
        else:
            x_prime, t_prime = x_hat + alpha * h * d_cur, t_hat + alpha * h
            d_prime = slope(x_prime, t_prime)
            x_next = x_hat + h * ((1 - 1 / (2 * alpha)) * d_cur + 1 / (2 * alpha) * d_prime)

    return x_next

#----------------------------------------------------------------------------
# Number of network evaluations of a Heun run over `num_steps` intervals:
# two per step except the last (EDM: 18 steps -> 35).

def heun_nfe(num_steps: int) -> int:
    return 2 * num_steps - 1

#----------------------------------------------------------------------------
# EDM's per-seed random streams: one generator per image, seeded with the
# image's seed, so that an image depends only on its seed, not on batching.

class StackedRandomGenerator:
    def __init__(self, device: torch.device | str, seeds: Sequence[int]):
        self.generators = [torch.Generator(device).manual_seed(int(seed) % (1 << 32)) for seed in seeds]

    def randn(self, size: Sequence[int], **kwargs) -> torch.Tensor:
        if size[0] != len(self.generators):
            raise ValueError(f'batch of {size[0]} for {len(self.generators)} generators')
        return torch.stack([torch.randn(size[1:], generator=g, **kwargs) for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape, dtype=x.dtype, layout=x.layout, device=x.device)

    def randint(self, *args, size: Sequence[int], **kwargs) -> torch.Tensor:
        if size[0] != len(self.generators):
            raise ValueError(f'batch of {size[0]} for {len(self.generators)} generators')
        return torch.stack([torch.randint(*args, size=size[1:], generator=g, **kwargs) for g in self.generators])

    def subset(self, indices: Sequence[int]) -> StackedRandomGenerator:
        """The generators of some images of the batch, in the given order: drawing from the
        subset advances the same streams, so each image keeps its own sequence."""
        sub = StackedRandomGenerator.__new__(StackedRandomGenerator)
        sub.generators = [self.generators[int(i)] for i in indices]
        return sub

#----------------------------------------------------------------------------
# Sampler options: EDM's generate.py uses the ablation sampler as soon as any
# ablation option is given, and the plain EDM sampler otherwise.

ABLATION_KEYS = ('solver', 'discretization', 'schedule', 'scaling')

def select_sampler(sampler_kwargs: dict) -> tuple[Callable, dict]:
    kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    if any(k in kwargs for k in ABLATION_KEYS):
        return ablation_sampler, kwargs
    return edm_sampler, kwargs

#----------------------------------------------------------------------------
# Sampler options that would give wrong images without an error: a noise range
# that is empty or upside down (as given, or against the levels the network
# supports), churn limits the wrong way round. And images that come out
# non-finite (a diverged network) are refused rather than saved as black.

def check_sampler_options(net: torch.nn.Module, sampler_kwargs: dict) -> None:
    kwargs = {k: v for k, v in sampler_kwargs.items() if v is not None}
    lo, hi = kwargs.get('sigma_min'), kwargs.get('sigma_max')
    if lo is not None and hi is not None and not lo < hi:
        raise UserError(f'--sigma_min={lo:g} is not below --sigma_max={hi:g}')
    net_lo, net_hi = float(net.sigma_min), float(net.sigma_max)
    if lo is not None and not lo < net_hi:
        raise UserError(f'--sigma_min={lo:g} is not below the highest noise level of the network ({net_hi:g})')
    if hi is not None and not hi > net_lo:
        raise UserError(f'--sigma_max={hi:g} is not above the lowest noise level of the network ({net_lo:g})')
    if not any(k in kwargs for k in ABLATION_KEYS):  # EDM's sampler: one end given, the other its default.
        defaults = inspect.signature(edm_sampler).parameters
        if lo is not None and hi is None and not lo < min(defaults['sigma_max'].default, net_hi):
            raise UserError(f'--sigma_min={lo:g} is not below the default --sigma_max '
                            f'({min(defaults["sigma_max"].default, net_hi):g})')
        if hi is not None and lo is None and not hi > max(defaults['sigma_min'].default, net_lo):
            raise UserError(f'--sigma_max={hi:g} is not above the default --sigma_min '
                            f'({max(defaults["sigma_min"].default, net_lo):g})')
    if kwargs.get('S_churn', 0) > 0 and kwargs.get('S_min', 0) > kwargs.get('S_max', float('inf')):
        raise UserError(f'--S_min={kwargs["S_min"]:g} is above --S_max={kwargs["S_max"]:g}: the churn would never apply')
    if kwargs.get('discretization', 'edm') == 'edm':
        check_edm_levels(net, kwargs)

# EDM's levels are evenly spaced in sigma^(1/rho). For a small rho that spacing
# spans more orders of magnitude than float64 resolves: the lowest level rounds
# to 0 (or below), and the sampler would divide by it. With EDM's range
# [0.002, 80] this happens below rho = 0.29.
def check_edm_levels(net: torch.nn.Module, kwargs: dict) -> None:
    num_steps, rho = kwargs.get('num_steps', 18), kwargs.get('rho', 7)
    lo = max(kwargs.get('sigma_min', 0.002), float(net.sigma_min))
    hi = min(kwargs.get('sigma_max', 80), float(net.sigma_max))
    levels = edm_sigma_steps(net, num_steps, lo, hi, rho)[:-1]
    if not (bool(torch.isfinite(levels).all()) and float(levels.min()) > 0):
        raise UserError(f'--rho={rho:g}: with noise levels from {hi:g} down to {lo:g}, the lowest time step rounds to '
                        f'{float(levels[-1]):g}; use a larger --rho (EDM\'s is 7)')

def check_finite(images: torch.Tensor, what: str) -> None:
    if not bool(torch.isfinite(images).all()):
        raise UserError(f'{what}: the sampler produced NaN or infinite values (a diverged network, '
                        'or sampler options outside its range)')

#----------------------------------------------------------------------------
# Generate one batch of images for the given seeds with EDM's protocol:
# latents drawn first from each seed's generator, then the class label.
# Returns float64 images in [-1, 1] units (not clipped). The samplers themselves, like EDM's,
# record gradients when asked to (guidance, fine-tuning through the sampler); this does not.

@torch.no_grad()
def generate_images(net: torch.nn.Module, seeds: Sequence[int], *, class_idx: int | None = None,
                    device: torch.device | str = 'cpu', **sampler_kwargs) -> torch.Tensor:
    device = torch.device(device)
    rnd = StackedRandomGenerator(device, seeds)
    shape = [len(seeds), net.img_channels, net.img_resolution, net.img_resolution]
    latents = rnd.randn(shape, device=device)
    class_labels = None
    if net.label_dim:
        class_labels = torch.eye(net.label_dim, device=device)[rnd.randint(net.label_dim, size=[len(seeds)], device=device)]
        if class_idx is not None:
            class_labels = torch.zeros_like(class_labels)
            class_labels[:, class_idx] = 1
    elif class_idx is not None:
        raise ValueError('--class was given, but the network is unconditional')
    sampler, kwargs = select_sampler(sampler_kwargs)
    return sampler(net, latents, class_labels, randn_like=rnd.randn_like, **kwargs)

def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float images to uint8 as EDM saves them: (x * 127.5 + 128) clipped."""
    return (images * 127.5 + 128).clip(0, 255).to(torch.uint8)

#----------------------------------------------------------------------------
