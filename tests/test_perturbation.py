"""Perturbation math: KL against numpy, exact HVP against full Hessians, FD agreement; PerturbationCallback."""
import numpy as np
import pytest
import torch
from torch import nn

from callbacks.perturbation import (
    check_eps_grid,
    hessian_quadratic_forms,
    kl_divergence,
    second_difference,
    split_like,
)


def test_eps_grid_must_contain_zero():
    assert check_eps_grid([-0.1, 0, 0.1]) == [-0.1, 0.0, 0.1]
    with pytest.raises(ValueError, match="must contain 0"):
        check_eps_grid([-0.1, 0.1])


def test_kl_matches_numpy_and_is_zero_on_equal_inputs():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((50, 7)), rng.standard_normal((50, 7))
    log_p = a - np.log(np.exp(a).sum(1, keepdims=True))
    log_q = b - np.log(np.exp(b).sum(1, keepdims=True))
    expected = np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1))
    assert kl_divergence(torch.from_numpy(log_p), torch.from_numpy(log_q)) == pytest.approx(expected, rel=1e-12)
    assert kl_divergence(torch.from_numpy(log_p), torch.from_numpy(log_p)) == 0.0


def test_hvp_of_quadratic_is_vAv():
    torch.manual_seed(0)
    M = torch.randn(6, 6, dtype=torch.float64)
    A = M @ M.T
    x = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = 0.5 * x.reshape(-1) @ A @ x.reshape(-1) + 3.0 * y.sum()  # y enters linearly: its Hessian block is 0
    v = torch.randn(10, dtype=torch.float64)
    forms = hessian_quadratic_forms(loss, [x, y], [split_like(v, [x, y]), split_like(2 * v, [x, y])])
    assert forms[0] == pytest.approx(float(v[:6] @ A @ v[:6]), rel=1e-12)
    assert forms[1] == pytest.approx(4 * forms[0], rel=1e-12)
    # a loss linear in every parameter has H = 0
    assert hessian_quadratic_forms(3.0 * y.sum(), [y], [[torch.ones(4, dtype=torch.float64)]]) == [0.0]


def test_hvp_matches_full_hessian_of_a_tiny_network():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, target = torch.randn(8, 3, dtype=torch.float64), torch.tensor([0, 1] * 4)
    params = [net[0].weight, net[2].weight]  # a selection: the other parameters are constants
    sizes = [p.numel() for p in params]

    def loss_of(flat):
        w0, w2 = flat.split(sizes)
        h = torch.tanh(x @ w0.view(4, 3).T + net[0].bias)
        return nn.functional.cross_entropy(h @ w2.view(2, 4).T + net[2].bias, target)

    flat = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(loss_of, flat)  # [P, P]
    v = torch.randn(flat.numel(), dtype=torch.float64)
    loss = nn.functional.cross_entropy(net(x), target)
    got = hessian_quadratic_forms(loss, params, [split_like(v, params)])[0]
    assert got == pytest.approx(float(v @ H @ v), rel=1e-10)


def test_finite_difference_agrees_with_hvp_to_second_order():
    torch.manual_seed(2)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    f = lambda p: torch.log1p(torch.exp(p)).pow(3).sum() + torch.sin(p).prod()
    v = torch.randn(5, dtype=torch.float64)
    v /= v.norm()
    exact = hessian_quadratic_forms(f(w), [w], [[v]])[0]
    with torch.no_grad():
        errors = [abs(second_difference(float(f(w + e * v)), float(f(w - e * v)), float(f(w)), e) - exact) for e in (1e-2, 5e-3)]
    assert errors[0] < 1e-3 * max(1.0, abs(exact))
    assert 3.0 < errors[0] / errors[1] < 5.0  # halving ε divides the error by ~4: O(ε²)


def test_split_like_checks_size():
    params = [torch.zeros(2, 3), torch.zeros(4)]
    pieces = split_like(torch.arange(10.0, dtype=torch.float64), params)
    assert pieces[0].dtype == torch.float32 and pieces[0].shape == (2, 3) and pieces[1].tolist() == [6, 7, 8, 9]
    with pytest.raises(ValueError, match="vector has 9 entries"):
        split_like(torch.zeros(9), params)
