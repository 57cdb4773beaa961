"""Lesson 14: minillm.residual (the pre-norm residual against the formula, gradients, errors)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.layer_norm import LayerNorm
from minillm.mlp import MLP
from minillm.residual import PreNormResidual
from numerics import assert_close64


class Scaled(nn.Module):
    """A sublayer with a keyword argument."""

    def forward(self, x, factor=1.0):
        return factor * x


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


@pytest.mark.parametrize("shape", [(16,), (5, 16), (2, 5, 16), (2, 3, 4, 16)])
@pytest.mark.parametrize("bias", [True, False])
def test_equals_the_formula_with_torch_layer_norm_in_values_and_gradients(shape, bias):
    """In float64: the same function, with no float32 summation order (the CPU's) in the way."""
    layer = randomize(PreNormResidual(16, MLP(16), bias=bias), seed=1).double()
    torch_ln = nn.LayerNorm(16, bias=bias).double()
    torch_ln.load_state_dict(layer.ln.state_dict())
    g = torch.Generator().manual_seed(2)
    x1 = torch.randn(shape, generator=g).double().requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    upstream = torch.randn(shape, generator=g).double()
    out = layer(x1)
    (out * upstream).sum().backward()
    ln_grads = [p.grad.clone() for p in layer.ln.parameters()]
    expected = x2 + layer.sublayer(torch_ln(x2))
    (expected * upstream).sum().backward()
    assert out.shape == shape
    assert_close64(out, expected, what="output")
    assert_close64(x1.grad, x2.grad, what="x.grad")
    for mine, theirs in zip(ln_grads, torch_ln.parameters(), strict=True):
        assert_close64(mine, theirs.grad, what="layer norm grad")


def test_the_docstring_example():
    out = PreNormResidual(4, nn.Identity())(torch.tensor([2.0, 4.0, 6.0, 8.0]))
    expected = torch.tensor([2.0, 4.0, 6.0, 8.0]) + torch.tensor([-3.0, -1.0, 1.0, 3.0]) / math.sqrt(5 + 1e-5)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out, torch.tensor([0.658, 3.553, 6.447, 9.342]), atol=1e-3)


def test_parts_names_and_parameters():
    mlp = MLP(32)
    layer = PreNormResidual(32, mlp)
    assert isinstance(layer.ln, LayerNorm) and layer.sublayer is mlp
    assert layer.ln.eps == 1e-5 and layer.ln.bias is not None
    assert [n for n, _ in layer.named_parameters()] == [
        "ln.weight", "ln.bias", "sublayer.c_fc.weight", "sublayer.c_fc.bias", "sublayer.c_proj.weight", "sublayer.c_proj.bias"]
    assert sum(p.numel() for p in layer.parameters()) == 2 * 32 + 8 * 32 ** 2 + 5 * 32
    no_bias = PreNormResidual(8, nn.Identity(), eps=1e-6, bias=False)
    assert no_bias.ln.bias is None and no_bias.ln.eps == 1e-6
    assert [n for n, _ in no_bias.named_parameters()] == ["ln.weight"]
    assert repr(no_bias).startswith("PreNormResidual(\n  n_embd=8")


def test_a_zero_branch_is_exactly_the_identity():
    mlp = MLP(16)
    with torch.no_grad():
        mlp.c_proj.weight.zero_()
        mlp.c_proj.bias.zero_()
    x = torch.randn(3, 7, 16) * 5 + 2
    assert torch.equal(PreNormResidual(16, mlp)(x), x)


def test_the_jacobian_is_the_identity_plus_the_branch():
    layer = randomize(PreNormResidual(6, MLP(6)), seed=3).double()
    token = torch.randn(6, dtype=torch.float64)
    J_layer = torch.autograd.functional.jacobian(layer, token)
    J_branch = torch.autograd.functional.jacobian(lambda v: layer.sublayer(layer.ln(v)), token)
    assert torch.allclose(J_layer, torch.eye(6, dtype=torch.float64) + J_branch, atol=1e-12)
    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


def test_keyword_arguments_reach_the_sublayer():
    layer = PreNormResidual(4, Scaled())
    x = torch.tensor([[2.0, 4.0, 6.0, 8.0], [1.0, 0.0, 0.0, -1.0]])
    assert torch.equal(layer(x, factor=0.0), x)
    assert torch.allclose(layer(x, factor=3.0), x + 3 * F.layer_norm(x, (4,)), atol=1e-6)
    assert torch.allclose(layer(x), x + F.layer_norm(x, (4,)), atol=1e-6)


def test_gradient_reaches_the_first_layer_of_a_deep_stack():
    torch.manual_seed(0)
    mlps = [MLP(32) for _ in range(32)]
    data, target = torch.randn(64, 32), torch.randn(64, 32)
    grads = {}
    for name, model in [("plain", nn.Sequential(*mlps)), ("residual", nn.Sequential(*[PreNormResidual(32, m) for m in mlps]))]:
        for m in mlps:
            m.zero_grad()
        F.mse_loss(F.layer_norm(model(data), (32,)), target).backward()
        grads[name] = [m.c_fc.weight.grad.norm().item() for m in mlps]
    assert grads["plain"][0] < 1e-15 < grads["plain"][-1]                # vanished
    assert 1e-3 < grads["residual"][0] and grads["residual"][0] >= 0.5 * grads["residual"][-1]
    assert max(grads["residual"]) < 5 * min(grads["residual"])           # about the same at every layer


def test_output_keeps_dtype_and_handles_extremes():
    layer = PreNormResidual(8, MLP(8))
    assert layer.double()(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64
    half = PreNormResidual(8, MLP(8)).to(torch.bfloat16)
    out = half(torch.randn(3, 8).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    layer64 = PreNormResidual(8, MLP(8)).double()
    big = torch.randn(4, 8, dtype=torch.float64) * 1e6
    with torch.no_grad():
        branch = layer64(big) - big                                    # the branch sees a normalized input
        assert torch.allclose(branch, layer64.sublayer(F.layer_norm(big, (8,))), atol=1e-6)
        assert branch.abs().max() < 10                                 # bounded, however large the stream
        constant = torch.full((2, 8), 3.0, dtype=torch.float64)        # zero variance: eps keeps it finite
        assert torch.isfinite(layer64(constant)).all()


def test_a_wrong_input_is_refused_where_it_enters():
    layer = PreNormResidual(32, MLP(32))
    with pytest.raises(ValueError, match=r"PreNormResidual was built for n_embd=32, but the input's last dimension is 48 \(shape \(4, 16, 48\)\)"):
        layer(torch.randn(4, 16, 48))
    with pytest.raises(ValueError, match=r"n_embd=32.*none \(a scalar\)"):
        layer(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        layer(torch.arange(32))
    with pytest.raises(TypeError, match="floating-point tensor, got list"):
        layer([0.0] * 32)


def test_a_sublayer_that_changes_the_shape_is_refused():
    with pytest.raises(ValueError, match=r"the sublayer Linear returned shape \(4, 16, 1\) for an input of shape \(4, 16, 32\).*same shape"):
        PreNormResidual(32, nn.Linear(32, 1))(torch.randn(4, 16, 32))        # would broadcast silently
    with pytest.raises(ValueError, match=r"the sublayer Linear returned shape \(4, 16, 64\)"):
        PreNormResidual(32, nn.Linear(32, 64))(torch.randn(4, 16, 32))

    class Pair(nn.Module):
        def forward(self, x):
            return x, x
    with pytest.raises(ValueError, match="the sublayer Pair returned a tuple"):
        PreNormResidual(8, Pair())(torch.randn(2, 8))


def test_bad_configuration_is_refused():
    for value in (0, -3, 2.5, True, "8", None):
        with pytest.raises(ValueError, match=rf"PreNormResidual: n_embd must be a positive integer, got {value!r}"):
            PreNormResidual(value, nn.Identity())
    for sublayer in (lambda x: x, None, torch.relu):
        with pytest.raises(TypeError, match="PreNormResidual: sublayer must be an nn.Module"):
            PreNormResidual(8, sublayer)
    with pytest.raises(ValueError, match="eps must be > 0"):
        PreNormResidual(8, nn.Identity(), eps=0.0)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("14_residual", {
        0: "return float(math.prod(slopes))",                                           # forgets the identity path
        1: "for layer in layers:\n    x = layer(x)\nreturn x",                           # ignores residual=True
        2: "return x + self.sublayer(self.ln(x))",                                      # pre-norm, not post-norm
        3: "return self.scale * (x + self.sublayer(self.ln(x), **kwargs))",             # scales the stream too
    })
