"""EDM's samplers: discretisation, step counts and NFE, intermediate starts, the ablation options."""

import math

import pytest
import torch

from training.sampler import (StackedRandomGenerator, ablation_sampler, edm_sampler, edm_sigma_steps,
                              generate_images, heun_nfe, truncate_sigma_steps)

#----------------------------------------------------------------------------
# A stand-in network: the exact denoiser of Gaussian data N(0, s^2 I), which
# counts its evaluations. Its ODE maps sigma_max * z to about s * z.

class GaussianDenoiser(torch.nn.Module):
    def __init__(self, std=0.5, channels=3, resolution=4, label_dim=0, sigma_min=0.0, sigma_max=float('inf')):
        super().__init__()
        self.std, self.img_channels, self.img_resolution, self.label_dim = std, channels, resolution, label_dim
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.calls = []

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)

    def forward(self, x, sigma, class_labels=None):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1, 1, 1)
        self.calls.append(float(sigma.flatten()[0]))
        return x * self.std ** 2 / (self.std ** 2 + sigma ** 2)

#----------------------------------------------------------------------------

def test_edm_discretisation_matches_eq5():
    net = GaussianDenoiser()
    steps = edm_sigma_steps(net, num_steps=18)
    assert len(steps) == 19 and steps[-1] == 0
    for i in range(18):
        expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        assert math.isclose(float(steps[i]), expected, rel_tol=1e-12)

# Below rho = 0.29 EDM's range [0.002, 80] has no float64 grid: its lowest
# level rounds to 0. Such a rho is refused; a narrower range allows a smaller one,
# and the other discretisations do not use it.
def test_a_rho_whose_grid_rounds_to_zero_is_refused():
    from dnnlib.util import UserError
    from training.sampler import check_sampler_options
    net = GaussianDenoiser()
    for rho in (0.01, 0.2, 0.28):
        with pytest.raises(UserError, match=f'--rho={rho:g}: .* rounds to 0'):
            check_sampler_options(net, dict(rho=rho))
    for kwargs in (dict(rho=0.29), dict(rho=0.3, num_steps=2), dict(rho=0.01, sigma_min=1, sigma_max=1.2),
                   dict(rho=0.01, discretization='vp'), dict(rho=0.25, num_steps=1)):
        check_sampler_options(net, kwargs)
        if kwargs.get('discretization') is None:
            assert float(edm_sigma_steps(net, kwargs.get('num_steps', 18), kwargs.get('sigma_min', 0.002),
                                         kwargs.get('sigma_max', 80), kwargs['rho'])[-2]) > 0

def test_discretisation_is_clamped_to_the_network_range():
    net = GaussianDenoiser(sigma_min=0.01, sigma_max=20)
    steps = edm_sigma_steps(net, num_steps=10)
    assert math.isclose(float(steps[0]), 20) and math.isclose(float(steps[-2]), 0.01)

# EDM's ablation sampler picks each discretisation's range when --sigma_min/--sigma_max are not given;
# VP's comes from beta_d = 19.1, beta_min = 0.1 at t = 1e-3 and t = 1 (about 0.010467 and 124.58).
@pytest.mark.parametrize('discretization, schedule, first, last', [
    ('vp', 'vp', math.sqrt(math.exp(0.5 * 19.1 + 0.1) - 1), math.sqrt(math.exp(0.5 * 19.1 * 1e-6 + 0.1e-3) - 1)),
    ('ve', 've', 100, 0.02), ('edm', 'linear', 80, 0.002)])
def test_ablation_default_ranges_are_edms(discretization, schedule, first, last):
    net = GaussianDenoiser()
    ablation_sampler(net, torch.randn(1, 3, 4, 4), num_steps=5, solver='euler', discretization=discretization,
                     schedule=schedule, scaling='vp' if schedule == 'vp' else 'none')
    assert len(net.calls) == 5
    assert math.isclose(net.calls[0], first, rel_tol=1e-9) and math.isclose(net.calls[-1], last, rel_tol=1e-9)
    assert math.isclose(first, 124.5825, rel_tol=1e-6) or discretization != 'vp'

@pytest.mark.parametrize('num_steps, nfe', [(18, 35), (40, 79), (2, 3)])
def test_heun_step_count_and_nfe(num_steps, nfe):
    net = GaussianDenoiser()
    edm_sampler(net, torch.randn(2, 3, 4, 4), num_steps=num_steps)
    assert len(net.calls) == nfe == heun_nfe(num_steps)

@pytest.mark.parametrize('sigma, num_steps, steps, nfe', [(0.59, 18, 8, 15), (0.5853, 18, 7, 13), (1.3824, 40, 19, 37)])
def test_intermediate_start_uses_the_release_grid(sigma, num_steps, steps, nfe):
    net = GaussianDenoiser()
    grid = truncate_sigma_steps(edm_sigma_steps(net, num_steps), sigma)
    assert len(grid) - 1 == steps and float(grid[0]) == sigma
    full = edm_sigma_steps(net, num_steps)
    assert torch.equal(grid[1:], full[full < sigma])
    y = torch.randn(2, 3, 4, 4)
    edm_sampler(net, y, num_steps=num_steps, sigma_start=sigma)
    assert len(net.calls) == nfe
    assert net.calls[0] == sigma

def test_intermediate_start_denoises_gaussian_data():
    # For Gaussian data the probability-flow ODE from y ~ N(0, s^2 + sigma^2) lands on N(0, s^2).
    torch.manual_seed(0)
    net, s, sigma = GaussianDenoiser(std=0.5), 0.5, 1.0
    y = torch.randn(4000, 3, 4, 4) * math.sqrt(s ** 2 + sigma ** 2)
    x = edm_sampler(net, y, num_steps=40, sigma_start=sigma)
    assert abs(float(x.std()) - s) < 0.01
    assert torch.allclose(x, y.double() * s / math.sqrt(s ** 2 + sigma ** 2), rtol=1e-2, atol=1e-6)

def test_sigma_start_outside_the_grid_is_an_error():
    with pytest.raises(ValueError, match='sigma_start'):
        truncate_sigma_steps(edm_sigma_steps(GaussianDenoiser(), 18), 100.0)

def test_ablation_defaults_equal_the_edm_sampler():
    latents = torch.randn(3, 3, 4, 4)
    a = edm_sampler(GaussianDenoiser(), latents, num_steps=12)
    b = ablation_sampler(GaussianDenoiser(), latents, num_steps=12, sigma_min=0.002, sigma_max=80)
    assert torch.allclose(a, b, rtol=1e-9, atol=1e-9)

@pytest.mark.parametrize('solver', ['euler', 'heun'])
@pytest.mark.parametrize('discretization', ['vp', 've', 'iddpm', 'edm'])
@pytest.mark.parametrize('schedule, scaling', [('vp', 'vp'), ('ve', 'none'), ('linear', 'none'), ('linear', 'vp')])
def test_ablation_variants_converge_to_the_data_distribution(solver, discretization, schedule, scaling):
    # Gaussian data N(0, 0.5^2): the exact ODE solution scales each latent by 0.5 / sqrt(0.25 + sigma_max^2)
    # times sigma_max, i.e. by about 0.5. Every variant must converge to it as the steps grow.
    torch.manual_seed(1)
    latents = torch.randn(200, 1, 2, 2, dtype=torch.float64)

    def error(num_steps):
        x = ablation_sampler(GaussianDenoiser(std=0.5, sigma_max=100), latents, num_steps=num_steps,
                             solver=solver, discretization=discretization, schedule=schedule, scaling=scaling)
        assert torch.isfinite(x).all()
        return abs(float(x.std() / latents.std()) - 0.5)

    coarse, fine = error(16), error(128)
    assert fine < 0.6 * coarse + 2e-3
    assert fine < 0.35  # iDDPM levels under the VE schedule converge slowest.

def test_ablation_rejects_unknown_choices():
    with pytest.raises(ValueError, match='solver'):
        ablation_sampler(GaussianDenoiser(), torch.randn(1, 3, 4, 4), solver='rk4')

def test_churn_uses_the_random_stream():
    latents = torch.randn(2, 3, 4, 4)
    a = edm_sampler(GaussianDenoiser(), latents, num_steps=8, S_churn=40, S_max=50,
                    randn_like=StackedRandomGenerator('cpu', [1, 2]).randn_like)
    b = edm_sampler(GaussianDenoiser(), latents, num_steps=8, S_churn=40, S_max=50,
                    randn_like=StackedRandomGenerator('cpu', [1, 2]).randn_like)
    c = edm_sampler(GaussianDenoiser(), latents, num_steps=8)
    assert torch.equal(a, b) and not torch.allclose(a, c)

#----------------------------------------------------------------------------
# EDM's per-seed protocol: an image depends on its seed only.

def test_per_seed_images_do_not_depend_on_batching():
    net = GaussianDenoiser(label_dim=5)
    together = generate_images(net, [3, 4, 5], num_steps=4)
    apart = torch.cat([generate_images(net, [s], num_steps=4) for s in (3, 4, 5)])
    assert torch.equal(together, apart)

def test_class_on_an_unconditional_network_is_an_error():
    with pytest.raises(ValueError, match='unconditional'):
        generate_images(GaussianDenoiser(), [0], class_idx=1, num_steps=2)

#----------------------------------------------------------------------------

#----------------------------------------------------------------------------
# The sampler options' help in the five tools that share them: an unbounded
# number shows its default and no range (click wrote "x<=None").

def test_sampler_option_help_in_every_tool():
    from click.testing import CliRunner

    import denoise, fid, generate, memorization
    from sfbd import report
    for command in (generate.main, denoise.main, fid.calc, memorization.main, report.main):
        result = CliRunner().invoke(command, ['--help'], terminal_width=200)
        assert result.exit_code == 0, result.output
        (line,) = [line for line in result.output.splitlines() if line.lstrip().startswith('--S_noise')]
        assert line.rstrip().endswith('[default: 1]') and 'None' not in line, (command.name, line)

#----------------------------------------------------------------------------
# As in EDM, the samplers are plain functions: gradients flow through them when the caller asks
# (guidance research); generate_images, which the tools call, records none.

def test_gradients_flow_through_the_samplers_as_in_edm():
    net = GaussianDenoiser()
    for sampler in (edm_sampler, ablation_sampler):
        latents = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
        sampler(net, latents, num_steps=3).square().sum().backward()
        assert latents.grad is not None and latents.grad.abs().sum() > 0
    from training.sampler import generate_images
    assert not generate_images(net, [0, 1], num_steps=3).requires_grad

# A network that knows only some noise levels (iDDPM) rounds a start level between two of them to the
# nearer one; rounding down must not take the square root of a negative number.
def test_a_start_level_that_rounds_down_stays_finite():
    class Discrete(GaussianDenoiser):
        levels = torch.tensor([0.002, 0.1, 0.3, 0.55, 0.7, 1.0, 5.0, 80.0], dtype=torch.float64)
        def round_sigma(self, sigma):
            sigma = torch.as_tensor(sigma, dtype=torch.float64)
            return self.levels[(sigma.reshape(-1, 1) - self.levels).abs().argmin(dim=1)].reshape(sigma.shape)
    net = Discrete()
    y = torch.randn(2, 3, 4, 4, dtype=torch.float64) * 0.59
    out = edm_sampler(net, y, num_steps=18, sigma_start=0.59)
    assert torch.isfinite(out).all() and net.calls[0] == 0.55
