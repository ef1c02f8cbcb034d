"""What an SFBD run costs in network evaluations, training and denoising counted apart.

    training   images trained on, one forward and one backward pass of the network each: reported
               as "training image passes", and, so that they can be added to the denoising, as
               forward-evaluation equivalents at TRAINING_PASS_EVALUATIONS = 3 per image (a
               backward pass costs about two forward passes; a convention, not a measurement);
    denoising  observations denoised, each with the network evaluations of its backward pass: the
               NFE of the sampler over EDM's grid cut at the observation's own sigma
               (sfbd/backward.py), so that observations of different noise levels cost differently.

The rounds denoise every observation once per round; Online SFBD denoises the observations in
round-robin order (the fill, then the refreshes), so that observation i of N is denoised once
for every stream position p with p mod N = i (sfbd/online.py). `network_cost` counts both.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from sfbd.backward import MODES, backward_nfe
from training.sampler import edm_sigma_steps

TRAINING_PASS_EVALUATIONS = 3   # Forward-evaluation equivalents of one training image pass (forward + backward).

#----------------------------------------------------------------------------
# The noise levels a network supports, and its rounding: EDM's preconditioning
# (every level, none rounded) stands in where no network is at hand.

class EDMRange:
    sigma_min = 0.0
    sigma_max = float('inf')

    @staticmethod
    def round_sigma(sigma: Any) -> torch.Tensor:
        return torch.as_tensor(sigma)

#----------------------------------------------------------------------------
# Network evaluations of the backward pass of each observation: the steps of
# EDM's grid from its smallest node at or above sigma_i down to 0 (as
# sfbd.backward.denoising_sigmas cuts it), 2n - 1 for the ODE, n for the SDE.

def observation_nfe(sigmas: Sequence[float] | np.ndarray, mode: str = 'ode', num_steps: int = 18, net: Any = None,
                    sigma_min: float | None = None, sigma_max: float | None = None, rho: float = 7) -> np.ndarray:
    """Network evaluations of denoising each observation at its noise level, [N] int64."""
    if mode not in MODES:
        raise ValueError(f'mode must be one of {"|".join(MODES)}, not {mode!r}')
    grid = dict(sigma_min=sigma_min, sigma_max=sigma_max)
    full = edm_sigma_steps(net if net is not None else EDMRange(), num_steps, rho=rho,
                           **{k: v for k, v in grid.items() if v is not None}).numpy()
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if len(sigmas) and not (0 < sigmas.min() and sigmas.max() <= full[0]):
        raise ValueError(f'noise levels must lie in (0, {full[0]:g}]')
    steps = len(full) - (full[None, :] >= sigmas[:, None]).sum(axis=1)  # Nodes below the start node, 0 included.
    return np.array([backward_nfe(int(n), mode) for n in steps], dtype=np.int64)

#----------------------------------------------------------------------------
# Images a train.py run trains on: whole batches until the duration is
# reached (the training loop stops at the first step at or past it).

def trained_images(total_kimg: float, batch_size: int, start_kimg: float = 0) -> int:
    steps = max(math.ceil(round((total_kimg - start_kimg) * 1000, 6) / batch_size), 0)
    return steps * int(batch_size)

#----------------------------------------------------------------------------
# The cost of a run: `trained` images, and the first `denoised` positions of
# the round-robin denoising stream over observations of per-image NFE `nfe`
# (k whole passes: k * N).

def network_cost(trained: int, nfe: Sequence[int] | np.ndarray = (), denoised: int = 0) -> dict[str, int]:
    """Training image passes, and the network evaluations of denoising, apart and in
    forward-evaluation equivalents (training at TRAINING_PASS_EVALUATIONS per image pass)."""
    nfe = np.asarray(nfe, dtype=np.int64)
    if denoised and not len(nfe):
        raise ValueError('denoised observations need their NFE')
    passes, rest = divmod(int(denoised), len(nfe)) if len(nfe) else (0, 0)
    evaluations = passes * int(nfe.sum()) + int(nfe[:rest].sum())
    training = TRAINING_PASS_EVALUATIONS * int(trained)
    return dict(training_image_passes=int(trained), training_forward_equivalents=training,
                denoised_observations=int(denoised), denoising_evaluations=evaluations,
                total_forward_equivalents=training + evaluations)

def add_costs(costs: Sequence[dict[str, int]]) -> dict[str, int]:
    """The sum of several `network_cost`s."""
    keys = network_cost(0).keys()
    return {key: sum(int(cost[key]) for cost in costs) for key in keys}

def describe_cost(cost: dict[str, int]) -> str:
    """One line: training and denoising apart, then the total."""
    text = (f'{cost["training_image_passes"]:,} training image passes (x{TRAINING_PASS_EVALUATIONS}: '
            f'{cost["training_forward_equivalents"]:,} forward-evaluation equivalents)')
    if cost['denoised_observations']:
        text += (f' + {cost["denoised_observations"]:,} observations denoised with {cost["denoising_evaluations"]:,} '
                 f'network evaluations = {cost["total_forward_equivalents"]:,} forward-evaluation equivalents')
    return text

#----------------------------------------------------------------------------
