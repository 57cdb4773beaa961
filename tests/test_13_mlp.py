"""Lesson 13: minillm.mlp (the position-wise MLP against the formula and torch, edge cases, errors)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.mlp import MLP
from numerics import assert_close, assert_close64, summands


def reference(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The formula with the module's weights: W2 gelu_tanh(W1 x + b1) + b2, GELU written out."""
    h = x @ mlp.c_fc.weight.T
    if mlp.c_fc.bias is not None:
        h = h + mlp.c_fc.bias
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    out = h @ mlp.c_proj.weight.T
    if mlp.c_proj.bias is not None:
        out = out + mlp.c_proj.bias
    return out


def randomize(module: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return module


def rounding_scale(mlp: MLP, x: torch.Tensor) -> torch.Tensor:
    """The MLP on absolute values, (|x| |W1|^T + |b1|) |W2|^T + |b2| (|gelu(h)| <= |h|, its slope at
    most 1.13): the sum|terms| behind each output, the scale of its float32 rounding."""
    size = lambda b: 0.0 if b is None else b.detach().double().abs()
    h = summands(x, mlp.c_fc.weight.T) + size(mlp.c_fc.bias)
    return summands(h, mlp.c_proj.weight.T) + size(mlp.c_proj.bias)


@pytest.mark.parametrize("shape", [(8,), (5, 8), (2, 5, 8), (2, 3, 4, 8)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("expansion", [1, 4])
def test_mlp_equals_the_formula_in_values_and_gradients(shape, bias, expansion):
    """In float64: the same function, with no float32 summation order (the CPU's) in the way."""
    mlp = randomize(MLP(8, bias=bias, expansion=expansion)).double()
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(shape, generator=g).double().requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    upstream = torch.randn(shape, generator=g).double()
    out = mlp(x1)
    (out * upstream).sum().backward()
    grads = [p.grad.clone() for p in mlp.parameters()]
    mlp.zero_grad()
    expected = reference(mlp, x2)
    (expected * upstream).sum().backward()
    assert out.shape == shape
    assert_close64(out, expected, what="output")
    assert_close64(x1.grad, x2.grad, what="x.grad")
    for a, p in zip(grads, mlp.parameters(), strict=True):
        assert_close64(a, p.grad, what="parameter grad")


def test_mlp_equals_torch_sequential_with_the_same_weights():
    mlp = MLP(16).eval()
    seq = nn.Sequential(nn.Linear(16, 64), nn.GELU(approximate="tanh"), nn.Linear(64, 16))
    seq.load_state_dict({"0.weight": mlp.c_fc.weight, "0.bias": mlp.c_fc.bias,
                         "2.weight": mlp.c_proj.weight, "2.bias": mlp.c_proj.bias})
    x = torch.randn(3, 11, 16)
    assert torch.allclose(mlp(x), seq(x), atol=1e-6)


def test_gradcheck_in_double_precision():
    mlp = MLP(4, expansion=2).double()
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mlp, (x,))


def test_the_hand_worked_example():
    tiny = MLP(2, expansion=2)
    with torch.no_grad():
        tiny.c_fc.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -1.0], [1.0, 1.0], [-1.0, 0.0]]))
        tiny.c_proj.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.5, 1.0, 2.0]]))
        tiny.c_fc.bias.zero_()
        tiny.c_proj.bias.zero_()
        hidden = tiny.gelu(tiny.c_fc(torch.tensor([1.0, -2.0])))
        assert torch.allclose(hidden, torch.tensor([0.8411920, 1.9545977, -0.1588080, -0.1588080]), atol=1e-6)
        assert torch.allclose(tiny(torch.tensor([1.0, -2.0])), torch.tensor([0.6823840, 0.5008749]), atol=1e-6)


def test_gpt2_names_shapes_and_parameter_count():
    mlp = MLP(768)
    assert [n for n, _ in mlp.named_parameters()] == ["c_fc.weight", "c_fc.bias", "c_proj.weight", "c_proj.bias"]
    assert mlp.c_fc.weight.shape == (3072, 768) and mlp.c_proj.weight.shape == (768, 3072)
    assert sum(p.numel() for p in mlp.parameters()) == 4_722_432 == 8 * 768 ** 2 + 5 * 768
    assert isinstance(mlp.gelu, nn.GELU) and mlp.gelu.approximate == "tanh"
    assert isinstance(mlp.dropout, nn.Dropout) and mlp.dropout.p == 0.0
    no_bias = MLP(10, bias=False, expansion=3)
    assert [n for n, _ in no_bias.named_parameters()] == ["c_fc.weight", "c_proj.weight"]
    assert sum(p.numel() for p in no_bias.parameters()) == 2 * 3 * 10 ** 2
    assert repr(MLP(8)).startswith("MLP(\n  n_embd=8, expansion=4")


def test_gpt2_gelu_is_the_tanh_form():
    mlp = randomize(MLP(8), seed=3).eval()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        exact = F.linear(F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias)), mlp.c_proj.weight, mlp.c_proj.bias)
        tanh = F.linear(F.gelu(F.linear(x, mlp.c_fc.weight, mlp.c_fc.bias), approximate="tanh"),
                        mlp.c_proj.weight, mlp.c_proj.bias)
        out = mlp(x)
    assert torch.allclose(out, tanh, atol=1e-6)
    assert (out - exact).abs().max() > 1e-5


def test_each_position_is_transformed_independently():
    mlp = randomize(MLP(12), seed=4)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 9, 12, generator=g)
    with torch.no_grad():
        full = mlp(x)
        # another batch shape may take another float32 kernel, which sums in its own order: the
        # outputs agree to a few eps32 of the sum|terms| behind them, not to a fixed 1e-6
        scale = rounding_scale(mlp, x)
        for seed in range(5):
            perm = torch.randperm(9, generator=torch.Generator().manual_seed(seed))
            assert_close(mlp(x[:, perm]), full[:, perm], scale[:, perm])
        alone = torch.stack([mlp(x[:, t]) for t in range(9)], dim=1)
        assert_close(alone, full, scale)
        changed = x.clone()
        changed[:, 4] = torch.randn(3, 12, generator=g) * 100
        after = mlp(changed)
        keep = [t for t in range(9) if t != 4]
        assert torch.equal(after[:, keep], full[:, keep])
        assert not torch.allclose(after[:, 4], full[:, 4])
    J = torch.autograd.functional.jacobian(mlp, x[0])              # (T, C, T, C)
    blocks = J.pow(2).sum(dim=(1, 3))                              # (T, T)
    assert (blocks[~torch.eye(9, dtype=torch.bool)] == 0).all() and (blocks.diagonal() > 0).all()


def test_dropout_acts_in_training_only():
    noisy, clean = MLP(16, dropout=0.5), MLP(16)
    clean.load_state_dict(noisy.state_dict())
    x = torch.randn(8, 20, 16)
    noisy.train()
    a, b = noisy(x), noisy(x)
    assert not torch.equal(a, b)
    assert 0.4 < (a == 0).float().mean() < 0.6
    survivors = a != 0
    assert torch.allclose(a[survivors], 2 * clean(x)[survivors], atol=1e-5)    # scaled by 1 / (1 - p)
    noisy.eval()
    assert torch.equal(noisy(x), noisy(x)) and torch.allclose(noisy(x), clean(x), atol=1e-6)


def test_numeric_edge_cases():
    mlp = randomize(MLP(8), seed=5)
    with torch.no_grad():
        for scale in (1e-8, 1.0, 1e4):
            x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(6)) * scale
            out = mlp(x)
            assert torch.isfinite(out).all()
            assert torch.allclose(out, reference(mlp, x), atol=1e-5 * max(1.0, scale), rtol=1e-4)
        zero = mlp(torch.zeros(4, 8))                              # GELU(b1) through c_proj: the same for every token
        assert torch.allclose(zero, reference(mlp, torch.zeros(1, 8)).expand(4, 8), atol=1e-6)
    assert MLP(8).double()(torch.randn(2, 8, dtype=torch.float64)).dtype == torch.float64
    half = MLP(8).to(torch.bfloat16)
    out = half(torch.randn(2, 8).to(torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert MLP(8)(torch.randn(0, 8)).shape == (0, 8)               # an empty batch is fine


def test_a_wrong_input_is_refused_where_it_enters():
    mlp = MLP(32)
    with pytest.raises(ValueError, match=r"MLP was built for n_embd=32, but the input's last dimension is 48 \(shape \(4, 16, 48\)\)"):
        mlp(torch.randn(4, 16, 48))
    with pytest.raises(ValueError, match=r"n_embd=32.*none \(a scalar\)"):
        mlp(torch.tensor(1.0))
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        mlp(torch.arange(32))
    with pytest.raises(TypeError, match="floating-point tensor, got list"):
        mlp([0.0] * 32)


def test_bad_configuration_is_refused():
    for value in (0, -3, 2.5, True, "8", None):
        with pytest.raises(ValueError, match=rf"MLP: n_embd must be a positive integer, got {value!r}"):
            MLP(value)
        with pytest.raises(ValueError, match=rf"MLP: expansion must be a positive integer, got {value!r}"):
            MLP(8, expansion=value)
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match=rf"MLP: dropout must be in \[0, 1\), got {p!r}"):
            MLP(8, dropout=p)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("13_mlp", {
        0: "return F.gelu(z, approximate=\"tanh\")",                                   # calls the function it must write
        1: "h = F.relu(x @ w_fc.T + b_fc)\nreturn h @ w_proj.T + b_proj",              # ReLU instead of GELU
        2: "hidden = int(2 * 4 * n_embd / 3)\nreturn hidden // multiple_of * multiple_of",   # rounds down
        3: "return self.dropout(self.c_proj(torch.relu(self.c_fc(x) ** 2)))",           # squares before the ReLU
    })


def test_exercise_4_check_rejects_a_forward_without_the_dropout():
    """The statement keeps the MLP's dropout: an answer that leaves it out fails exercise 4's check."""
    import course
    from exercise_tools import run_cells, statuses
    from minillm import checks
    path = course.ROOT / "solutions" / "13_mlp.ipynb"
    solution = course.read_nb(path)

    def replace(i, region):
        if i != 3:
            return course.source(solution["cells"][region.cell]).split("\n")[region.start: region.end + 1]
        return [region.indent + "return self.c_proj(torch.relu(self.c_fc(x)) ** 2)"]
    results = run_cells(course.replace_regions(solution, replace), path.parent)
    verdicts = dict(statuses(results))
    assert verdicts["Exercise 4 · a squared-ReLU MLP"] == checks.FAILED, verdicts
    assert all(v == checks.PASSED for title, v in verdicts.items() if not title.startswith("Exercise 4")), verdicts


# Section 9 and the MLP's options: SwiGLU, the exact GELU, a hidden size of its own.

def test_swiglu_equals_the_formula_in_float64_in_values_and_gradients():
    from minillm.mlp import SwiGLU
    torch.manual_seed(3)
    m = SwiGLU(24, hidden=64, bias=True).double()
    x = torch.randn(3, 11, 24, dtype=torch.float64, requires_grad=True)
    a = x @ m.c_gate.weight.T + m.c_gate.bias
    b = x @ m.c_fc.weight.T + m.c_fc.bias
    direct = (a / (1 + torch.exp(-a)) * b) @ m.c_proj.weight.T + m.c_proj.bias     # silu(a) = a * sigmoid(a)
    out = m(x)
    assert_close64(out, direct, scale=direct.abs().max())
    g1, = torch.autograd.grad(out.sum(), x)
    g2, = torch.autograd.grad(direct.sum(), x)
    assert_close64(g1, g2, scale=g2.abs().max())


def test_swiglu_hand_example_parameters_and_names():
    from minillm.mlp import SwiGLU
    m = SwiGLU(2, hidden=2)
    with torch.no_grad():
        m.c_gate.weight.copy_(torch.eye(2))
        m.c_fc.weight.copy_(torch.tensor([[1.0, 1.0], [1.0, -1.0]]))
        m.c_proj.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert torch.allclose(m(torch.tensor([1.0, -2.0])), torch.tensor([-0.7310586, -1.4462761]), atol=1e-6)
    assert [n for n, _ in SwiGLU(8, 20).named_parameters()] == ["c_gate.weight", "c_fc.weight", "c_proj.weight"]
    assert sum(p.numel() for p in SwiGLU(768, 2048).parameters()) == 3 * 768 * 2048
    assert repr(SwiGLU(8, 20)).startswith("SwiGLU(\n  n_embd=8, hidden=20")
    x = torch.randn(2, 6, 8)
    perm = torch.tensor([5, 3, 0, 1, 4, 2])
    s = SwiGLU(8, 20)
    assert torch.allclose(s(x[:, perm]), s(x)[:, perm], atol=1e-6)


def test_swiglu_and_mlp_options_refuse_bad_values():
    from minillm.mlp import SwiGLU
    with pytest.raises(ValueError, match="SwiGLU: hidden must be a positive integer, got 0"):
        SwiGLU(8, 0)
    with pytest.raises(ValueError, match="SwiGLU was built for n_embd=8"):
        SwiGLU(8, 16)(torch.randn(2, 7))
    with pytest.raises(ValueError, match=r"MLP: activation must be one of \['gelu', 'gelu_exact'\], got 'relu'"):
        MLP(8, activation="relu")
    with pytest.raises(ValueError, match="MLP: hidden must be a positive integer, got -3"):
        MLP(8, hidden=-3)


def test_mlp_exact_gelu_and_hidden_options():
    torch.manual_seed(0)
    m = MLP(16, activation="gelu_exact", hidden=40).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    h = x @ m.c_fc.weight.T + m.c_fc.bias
    direct = (0.5 * h * (1 + torch.erf(h / math.sqrt(2)))) @ m.c_proj.weight.T + m.c_proj.bias
    assert_close64(m(x), direct, scale=direct.abs().max())
    assert m.c_fc.weight.shape == (40, 16) and "hidden=40, activation='gelu_exact'" in repr(m)
    torch.manual_seed(1)
    default = MLP(16)
    torch.manual_seed(1)
    same = MLP(16, activation="gelu", hidden=64)
    assert repr(default) == repr(same) and all(torch.equal(a, b) for a, b in zip(default.parameters(), same.parameters()))
