"""Lesson 06: minillm.layer_norm (LayerNorm and RMSNorm against torch, edge cases, errors)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.layer_norm import LayerNorm, RMSNorm
from numerics import assert_close64


def randomize(mine: nn.Module, theirs: nn.Module, seed: int = 0) -> None:
    """Give both modules the same random parameters, so that scale and shift are really tested."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
            p.copy_(torch.randn(p.shape, generator=g))
            q.copy_(p)


def values_and_grads(module: nn.Module, x: torch.Tensor, upstream: torch.Tensor):
    x = x.clone().requires_grad_()
    module.zero_grad()
    out = module(x)
    (out * upstream).sum().backward()
    return out.detach(), x.grad, [p.grad.clone() for p in module.parameters()]


def assert_same(mine, theirs, x):
    """Values and gradients, in float64: the weight's gradient sums a term per token, and in
    float32 the order of that sum (the CPU's choice) would show in the last digits."""
    mine, theirs, x = mine.double(), theirs.double(), x.double()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    out1, dx1, dp1 = values_and_grads(mine, x, upstream)
    out2, dx2, dp2 = values_and_grads(theirs, x, upstream)
    assert_close64(out1, out2, what="output")
    assert_close64(dx1, dx2, what="x.grad")
    assert len(dp1) == len(dp2)
    for a, b in zip(dp1, dp2):
        assert_close64(a, b, what="parameter grad")


SHAPES = [(7,), (3, 7), (2, 5, 7), (2, 3, 4, 7)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_equals_torch_in_values_and_gradients(shape, bias):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 2
    mine, theirs = LayerNorm(7, bias=bias), nn.LayerNorm(7, bias=bias)
    randomize(mine, theirs)
    assert_same(mine, theirs, x)


@pytest.mark.parametrize("shape", SHAPES)
def test_rms_norm_equals_torch_in_values_and_gradients(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)) * 3 + 2
    mine, theirs = RMSNorm(7), nn.RMSNorm(7, eps=1e-6)
    randomize(mine, theirs)
    assert_same(mine, theirs, x)


@pytest.mark.parametrize("eps", [1e-5, 1e-6])   # rms_norm_eps of Llama and Qwen2 checkpoints (GPTConfig.norm_eps)
def test_rms_norm_with_the_families_eps_equals_torch_where_eps_matters(eps):
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(11), dtype=torch.float64) * 3e-3  # mean(x^2) ~ 1e-5
    mine, theirs = RMSNorm(16, eps=eps).double(), nn.RMSNorm(16, eps=eps).double()
    randomize(mine, theirs)
    assert_close64(mine(x), theirs(x), scale=mine(x).abs().max())
    other = RMSNorm(16, eps=1e-6 if eps == 1e-5 else 1e-5).double()
    other.load_state_dict(mine.state_dict())
    assert (other(x) - mine(x)).abs().max() > 1e-3 * mine(x).abs().max()      # the eps is really used


def test_a_different_eps_is_used():
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(7)) * 1e-3   # variance near eps, so eps matters
    mine, theirs = LayerNorm(8, eps=1e-4), nn.LayerNorm(8, eps=1e-4)
    assert torch.allclose(mine(x), theirs(x), atol=1e-5)
    assert not torch.allclose(mine(x), nn.LayerNorm(8)(x), atol=1e-3)
    assert torch.allclose(RMSNorm(8, eps=1e-4)(x), nn.RMSNorm(8, eps=1e-4)(x), atol=1e-5)


def test_gradcheck_in_double_precision():
    ln, rms = LayerNorm(5).double(), RMSNorm(5).double()
    randomize(ln, nn.LayerNorm(5).double())
    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ln, (x,))
    assert torch.autograd.gradcheck(rms, (x,))


def test_parameters_start_at_one_and_zero():
    ln = LayerNorm(6)
    assert isinstance(ln.weight, nn.Parameter) and isinstance(ln.bias, nn.Parameter)
    assert torch.equal(ln.weight, torch.ones(6)) and torch.equal(ln.bias, torch.zeros(6))
    assert [n for n, _ in ln.named_parameters()] == ["weight", "bias"]
    no_bias = LayerNorm(6, bias=False)
    assert no_bias.bias is None and [n for n, _ in no_bias.named_parameters()] == ["weight"]
    rms = RMSNorm(6)
    assert torch.equal(rms.weight, torch.ones(6)) and rms.eps == 1e-6 and ln.eps == 1e-5
    assert [n for n, _ in rms.named_parameters()] == ["weight"]
    assert repr(ln) == "LayerNorm(6, eps=1e-05, bias=True)" and repr(rms) == "RMSNorm(6, eps=1e-06)"


def test_the_hand_worked_example():
    x = torch.tensor([2.0, 4.0, 6.0, 8.0])
    expected = torch.tensor([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(5 + 1e-5)
    assert torch.allclose(LayerNorm(4)(x), expected, atol=1e-6)
    assert torch.allclose(LayerNorm(4)(10 * x), expected, atol=1e-6)          # scale invariant
    assert torch.allclose(LayerNorm(4)(x + 100), expected, atol=1e-5)         # shift invariant
    assert torch.allclose(RMSNorm(4)(x), x / math.sqrt(30), atol=1e-6)
    assert not torch.allclose(RMSNorm(4)(x + 100), RMSNorm(4)(x), atol=1e-2)  # RMSNorm is not


def test_output_is_standardized_per_token():
    g = torch.Generator().manual_seed(6)
    scales = 0.5 + torch.rand(6, 10, 1, generator=g) * 10           # every token its own scale and offset
    x = torch.randn(6, 10, 32, generator=g) * scales + torch.randn(6, 10, 1, generator=g) * 5
    y = LayerNorm(32)(x)
    assert torch.allclose(y.mean(-1), torch.zeros(6, 10), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(6, 10), atol=1e-3)
    r = RMSNorm(32)(x)
    assert torch.allclose(r.pow(2).mean(-1), torch.ones(6, 10), atol=1e-3)


def test_each_token_is_normalized_on_its_own():
    x = torch.randn(2, 6, 16)
    other = x.clone()
    other[:, 1:] = torch.randn(2, 5, 16) * 50
    for norm in (LayerNorm(16), RMSNorm(16)):
        assert torch.equal(norm(x)[:, 0], norm(other)[:, 0])


def test_constant_input_gives_a_finite_output():
    ln = LayerNorm(8)
    with torch.no_grad():
        ln.bias.copy_(torch.linspace(-1, 1, 8))
    for value in (0.0, 3.0, -1e6):
        x = torch.full((3, 8), value, requires_grad=True)
        out = ln(x)
        assert torch.isfinite(out).all() and torch.allclose(out, ln.bias.expand(3, 8))
        out.sum().backward()
        assert torch.isfinite(x.grad).all()
    assert torch.equal(RMSNorm(8)(torch.zeros(2, 8)), torch.zeros(2, 8))
    assert torch.isfinite(RMSNorm(8)(torch.full((2, 8), 5.0))).all()


def test_large_magnitude_input_matches_the_reference():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 64, generator=g)
    for scale in (1e4, 1e8):
        big = x * scale
        assert torch.allclose(LayerNorm(64)(big), F.layer_norm(big, (64,)), atol=1e-5)
        assert torch.allclose(RMSNorm(64)(big), nn.RMSNorm(64, eps=1e-6)(big), atol=1e-5)
    shifted = x + 1e4                                                   # the case a one-pass variance gets wrong
    exact = F.layer_norm(shifted.double(), (64,))
    assert torch.allclose(LayerNorm(64)(shifted).double(), exact, atol=5e-3)
    assert torch.allclose(LayerNorm(64)(shifted.double()), exact, atol=1e-10)


def test_half_precision_statistics_are_computed_in_float32():
    x = (torch.randn(4, 256, generator=torch.Generator().manual_seed(8)) * 3 + 50).to(torch.bfloat16)
    out = LayerNorm(256)(x)
    assert out.dtype == torch.bfloat16
    reference = F.layer_norm(x.float(), (256,))
    assert (out.float() - reference).abs().max() < 0.05             # bfloat16 rounding of the result only
    rms = RMSNorm(256)(x)
    assert rms.dtype == torch.bfloat16
    assert (rms.float() - nn.RMSNorm(256, eps=1e-6)(x.float())).abs().max() < 0.02
    assert LayerNorm(256)(x.double()).dtype == torch.float64


def test_a_wrong_last_dimension_names_both_sizes():
    for norm, name in ((LayerNorm(32), "LayerNorm"), (RMSNorm(32), "RMSNorm")):
        with pytest.raises(ValueError, match=rf"{name} was built for vectors of size n_embd=32, but the input's last dimension is 48"):
            norm(torch.randn(2, 5, 48))
        with pytest.raises(ValueError, match=r"n_embd=32.*none \(a scalar\)"):
            norm(torch.tensor(1.0))


def test_bad_input_types_are_refused():
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        LayerNorm(4)(torch.arange(8).view(2, 4))
    with pytest.raises(TypeError, match="floating-point tensor, got list"):
        RMSNorm(4)([1.0, 2.0, 3.0, 4.0])


@pytest.mark.parametrize("cls", [LayerNorm, RMSNorm])
def test_bad_configuration_is_refused(cls):
    for n_embd in (0, -3, 2.5, True, "8"):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: n_embd must be a positive integer, got {n_embd!r}"):
            cls(n_embd)
    for eps in (0.0, -1e-5, float("nan")):
        with pytest.raises(ValueError, match=rf"{cls.__name__}: eps must be > 0"):
            cls(8, eps=eps)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("06_layer_norm", {
        0: "return x.var(dim=-1, keepdim=True)",                                       # unbiased: divides by C - 1
        1: "mean = x.mean(dim=-1, keepdim=True)\n"                                      # layer norm: over the wrong dimension
           "var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)\nreturn (x - mean) / torch.sqrt(var + eps)",
        2: "C = x.shape[-1]\nmean = x.mean(dim=-1, keepdim=True)\n"                    # forgets the variance's term
           "s = torch.sqrt(((x - mean) ** 2).mean(dim=-1, keepdim=True) + eps)\nx_hat = (x - mean) / s\n"
           "g = grad_out * weight\ndx = (g - g.mean(dim=-1, keepdim=True)) / s\n"
           "return dx, (grad_out * x_hat).reshape(-1, C).sum(0), grad_out.reshape(-1, C).sum(0)",
        3: "rms = torch.sqrt(x.pow(2).mean(dim=-1, keepdim=True)) + self.eps\n"       # eps outside the square root
           "return x / rms * (1 + self.weight)",
    })
