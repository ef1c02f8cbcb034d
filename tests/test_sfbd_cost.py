"""sfbd/cost.py: a run's cost in network evaluations, counted by hand for small cases."""

import numpy as np
import pytest

from sfbd.cost import describe_cost, network_cost, observation_nfe, trained_images

def test_observation_nfe_follows_the_cut_grid():
    # EDM's 18-step grid: sigma 0.59 starts 8 steps from 0, 0.5853 7 (sfbd/backward.py); 80 all 18.
    assert observation_nfe([0.59, 0.5853, 80], 'ode').tolist() == [15, 13, 35]  # Heun: 2n - 1.
    assert observation_nfe([0.59, 0.5853, 80], 'sde').tolist() == [8, 7, 18]    # Euler-Maruyama: n.
    with pytest.raises(ValueError):
        observation_nfe([81], 'ode')

def test_network_cost_by_hand():
    nfe = np.array([15, 13, 13])  # Per-image sigmas 0.59, 0.5853, 0.5853.
    # 7 stream positions over 3 observations: two whole passes (2 x 41) and the first observation (15).
    cost = network_cost(trained=100, nfe=nfe, denoised=7)
    assert cost == dict(training_image_passes=100, training_forward_equivalents=300, denoised_observations=7,
                        denoising_evaluations=97, total_forward_equivalents=397)
    assert network_cost(trained=5) == dict(training_image_passes=5, training_forward_equivalents=15, denoised_observations=0,
                                           denoising_evaluations=0, total_forward_equivalents=15)
    assert describe_cost(cost) == ('100 training image passes (x3: 300 forward-evaluation equivalents) + 7 observations '
                                   'denoised with 97 network evaluations = 397 forward-evaluation equivalents')
    # Whole batches until the duration is reached: 36 kimg of 128 images are 282 steps.
    assert trained_images(36, 128) == 282 * 128 and trained_images(0.03, 16) == 32
