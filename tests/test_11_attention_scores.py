"""Lesson 11: minillm.attention (stable softmax, scaled dot-product attention against torch)."""
import math

import pytest
import torch
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.attention import attention_weights, scaled_dot_product_attention, softmax
from numerics import assert_close64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ softmax

@pytest.mark.parametrize("transform", [lambda x: x, lambda x: x + 100, lambda x: x * 1000,
                                       lambda x: x - 1000, lambda x: x * 1e-6])
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_equals_torch_including_large_and_shifted_inputs(transform, dim):
    x = transform(torch.randn(3, 4, 5, generator=gen(0)) * 3)
    ours = softmax(x, dim)
    assert torch.isfinite(ours).all()
    assert torch.allclose(ours, torch.softmax(x, dim), atol=1e-6)
    assert torch.allclose(ours.sum(dim), torch.ones(()), atol=1e-6)


def test_softmax_of_the_hand_example():
    x = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.tensor([0.09003057, 0.24472847, 0.66524096])
    assert torch.allclose(softmax(x), expected, atol=1e-7)
    assert torch.allclose(softmax(x + 100), expected, atol=1e-6)        # a shift changes nothing
    assert torch.equal(softmax(x * 1000), torch.tensor([0.0, 0.0, 1.0]))


def test_the_naive_formula_really_overflows():
    """The reason for the max shift: exp(x) / sum exp(x) is nan on these inputs in float32."""
    x = torch.tensor([1.0, 2.0, 3.0])
    for bad in (x + 100, x * 1000):
        assert torch.isnan(torch.exp(bad) / torch.exp(bad).sum()).all()
        assert torch.isfinite(softmax(bad)).all()


def test_softmax_gradient_equals_torch():
    # float64: the gradient s * (u - sum s u) cancels, and float32 would leave the CPU's rounding
    x1 = (torch.randn(4, 7, generator=gen(1)) * 20).double().requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    upstream = torch.randn(4, 7, generator=gen(2)).double()
    (softmax(x1) * upstream).sum().backward()
    (torch.softmax(x2, -1) * upstream).sum().backward()
    assert_close64(x1.grad, x2.grad)
    assert torch.autograd.gradcheck(softmax, (torch.randn(3, 5, dtype=torch.float64, requires_grad=True),))


def test_softmax_minus_infinity_and_all_masked_rows_behave_like_torch():
    x = torch.tensor([[0.5, float("-inf"), 2.0], [float("-inf")] * 3])
    ours, theirs = softmax(x), torch.softmax(x, -1)
    assert ours[0, 1] == 0 and torch.allclose(ours[0], theirs[0])
    assert ours[1].isnan().all() and theirs[1].isnan().all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_softmax_keeps_the_dtype(dtype):
    x = torch.randn(5, 9, generator=gen(3)).to(dtype) * 10
    out = softmax(x)
    assert out.dtype == dtype
    assert torch.allclose(out.double(), torch.softmax(x.double(), -1), atol=1e-2 if dtype != torch.float64 else 1e-12)


def test_softmax_errors():
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        softmax(torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"dim=2 is out of range.*\(3, 4\)"):
        softmax(torch.randn(3, 4), dim=2)


# ------------------------------------------------------------------ scaled dot-product attention

def values_and_grads(fn, q, k, v, upstream, **kwargs):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = fn(q, k, v, **kwargs)
    (out * upstream).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def assert_like_torch(q, k, v, mask=None, is_causal=False):
    """Values and gradients, in float64: the same function, with no float32 summation order
    (the CPU's) in the way."""
    q, k, v = q.double(), k.double(), v.double()
    upstream = torch.randn(*q.shape[:-1], v.shape[-1], generator=gen(99)).double()
    ours = values_and_grads(scaled_dot_product_attention, q, k, v, upstream, mask=mask, is_causal=is_causal)
    theirs = values_and_grads(F.scaled_dot_product_attention, q, k, v, upstream, attn_mask=mask, is_causal=is_causal)
    for name, a, b in zip(("output", "dq", "dk", "dv"), ours, theirs):
        assert_close64(a, b, what=name)


def qkv(*batch, Tq=6, Tk=6, hs=8, hv=None, seed=0):
    g = gen(seed)
    return (torch.randn(*batch, Tq, hs, generator=g), torch.randn(*batch, Tk, hs, generator=g),
            torch.randn(*batch, Tk, hv or hs, generator=g))


@pytest.mark.parametrize("batch", [(), (3,), (2, 4), (2, 3, 2)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_equals_torch_in_values_and_gradients(batch, is_causal):
    assert_like_torch(*qkv(*batch, Tq=7, Tk=7, hs=16), is_causal=is_causal)


@pytest.mark.parametrize("mask_shape", [(9, 9), (2, 1, 9, 9), (2, 4, 9, 9), (1, 4, 1, 9)])
def test_attention_with_a_boolean_mask_equals_torch(mask_shape):
    q, k, v = qkv(2, 4, Tq=9, Tk=9)
    mask = torch.rand(mask_shape, generator=gen(5)) > 0.4
    mask[..., 0] = True                           # every query sees at least the first key
    assert_like_torch(q, k, v, mask=mask)


def test_causal_mask_as_a_tensor_equals_is_causal():
    q, k, v = qkv(2, 3, Tq=8, Tk=8)
    tril = torch.ones(8, 8, dtype=torch.bool).tril()
    assert torch.allclose(scaled_dot_product_attention(q, k, v, mask=tril),
                          scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)
    assert_like_torch(q, k, v, mask=tril)


def test_fewer_queries_than_keys():
    """A cache's case: 3 new queries against 10 keys. is_causal counts from the top left, like torch;
    the mask a cache needs (the last rows of the big causal mask) is passed explicitly."""
    q, k, v = qkv(2, 2, Tq=3, Tk=10)
    assert_like_torch(q, k, v)
    assert_like_torch(q, k, v, is_causal=True)
    assert_like_torch(q, k, v, mask=torch.ones(10, 10, dtype=torch.bool).tril()[-3:])


def test_values_of_another_size():
    assert_like_torch(*qkv(2, Tq=5, Tk=5, hs=8, hv=3), is_causal=True)


def test_mask_and_is_causal_together_must_pass_both():
    q, k, v = qkv(2, Tq=6, Tk=6)
    mask = (torch.rand(6, 6, generator=gen(6)) > 0.5) | torch.eye(6, dtype=torch.bool)
    both = scaled_dot_product_attention(q, k, v, mask=mask, is_causal=True)
    anded = F.scaled_dot_product_attention(q, k, v, attn_mask=mask & torch.ones(6, 6, dtype=torch.bool).tril())
    assert torch.allclose(both, anded, atol=1e-6)


def test_a_query_that_sees_nothing_gets_zero_and_no_nan():
    q, k, v = (t.requires_grad_() for t in qkv(2, Tq=5, Tk=5))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    mask[3] = False
    out = scaled_dot_product_attention(q, k, v, mask=mask)
    out.sum().backward()
    assert torch.equal(out[:, 3], torch.zeros(2, 8))
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.equal(q.grad[:, 3], torch.zeros(2, 8))
    w = attention_weights(q, k, mask)
    assert torch.equal(w[:, 3], torch.zeros(2, 5)) and torch.allclose(w[:, [0, 1, 2, 4]].sum(-1), torch.ones(2, 4))


def test_the_worked_example_by_hand():
    q = torch.tensor([[1.0, 2.0, 0.0, -1.0]])
    k = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, -1.0], [-1.0, 0.0, 1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    e = torch.tensor([1.5, 0.5, 1.0, -0.5]).exp()
    assert torch.allclose(attention_weights(q, k), (e / e.sum())[None], atol=1e-6)
    assert torch.allclose(scaled_dot_product_attention(q, k, v), torch.tensor([[0.7615, 0.4619]]), atol=1e-4)
    assert torch.allclose(attention_weights(q, k[:2]), torch.tensor([[0.7311, 0.2689]]), atol=1e-4)


def test_causal_weights_hide_the_future():
    q, k, _ = qkv(2, 3, Tq=7, Tk=7)
    w = attention_weights(q, k, is_causal=True)
    assert torch.equal(w.triu(1), torch.zeros_like(w))
    assert torch.allclose(w.sum(-1), torch.ones(2, 3, 7))
    assert torch.equal(w[..., 0, 0], torch.ones(2, 3))            # the first token sees only itself


def test_no_future_leakage_through_attention():
    """Changing key/value t + 1 leaves the causal outputs at positions <= t unchanged."""
    q, k, v = qkv(2, Tq=8, Tk=8)
    out = scaled_dot_product_attention(q, k, v, is_causal=True)
    for t in range(7):
        k2, v2 = k.clone(), v.clone()
        k2[:, t + 1:] += 5.0
        v2[:, t + 1:] -= 3.0
        out2 = scaled_dot_product_attention(q, k2, v2, is_causal=True)
        assert torch.equal(out2[:, : t + 1], out[:, : t + 1])
        assert not torch.allclose(out2[:, t + 1], out[:, t + 1])


def test_large_scores_stay_finite():
    q, k, v = qkv(2, Tq=5, Tk=5)
    out = scaled_dot_product_attention(q * 1000, k * 1000, v, is_causal=True)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, F.scaled_dot_product_attention(q * 1000, k * 1000, v, is_causal=True), atol=1e-5)


def test_float64_gradcheck():
    q, k, v = (t.double().requires_grad_() for t in qkv(2, Tq=4, Tk=4, hs=3))
    mask = torch.ones(4, 4, dtype=torch.bool).tril()
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask=mask), (q, k, v))


# ------------------------------------------------------------------ dropout

def test_dropout_zero_and_one():
    q, k, v = qkv(2, Tq=5, Tk=5)
    assert torch.equal(scaled_dot_product_attention(q, k, v, dropout_p=0.0), scaled_dot_product_attention(q, k, v))
    assert torch.equal(scaled_dot_product_attention(q, k, v, dropout_p=1.0), torch.zeros(2, 5, 8))


def test_dropout_keeps_the_output_unbiased():
    """Each weight is dropped with probability p and the rest scaled by 1/(1-p): averaged over
    many draws the output is the output without dropout."""
    q, k, v = qkv(Tq=4, Tk=4, seed=7)
    n = 20_000
    torch.manual_seed(0)
    dropped = scaled_dot_product_attention(q.expand(n, 4, 8), k.expand(n, 4, 8), v.expand(n, 4, 8),
                                           dropout_p=0.3, is_causal=True)
    clean = scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(dropped[0], clean)
    assert torch.allclose(dropped.mean(0), clean, atol=0.05)
    w = attention_weights(q, k, is_causal=True)
    torch.manual_seed(1)
    one = scaled_dot_product_attention(q, k, torch.eye(4), dropout_p=0.5, is_causal=True)  # v = I shows the weights
    kept = one != 0
    assert torch.allclose(one[kept], 2 * w[kept], atol=1e-6)     # survivors are scaled by 1 / (1 - 0.5)


# ------------------------------------------------------------------ bad input

def test_errors_name_the_shapes():
    with pytest.raises(ValueError, match=r"same head size.*\(2, 5, 16\).*\(2, 5, 8\)"):
        scaled_dot_product_attention(torch.randn(2, 5, 16), torch.randn(2, 5, 8), torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"one value per key.*\(2, 5, 8\).*\(2, 6, 8\)"):
        scaled_dot_product_attention(torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 6, 8))
    with pytest.raises(ValueError, match=r"batch dimensions.*\(2, 5, 8\).*\(3, 5, 8\)"):
        scaled_dot_product_attention(torch.randn(2, 5, 8), torch.randn(3, 5, 8), torch.randn(3, 5, 8))
    with pytest.raises(ValueError, match=r"q must have shape.*\(8,\)"):
        scaled_dot_product_attention(torch.randn(8), torch.randn(5, 8), torch.randn(5, 8))
    with pytest.raises(ValueError, match=r"mask of shape \(5, 4\) does not broadcast.*\(2, 5, 5\)"):
        scaled_dot_product_attention(torch.randn(2, 5, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8),
                                     mask=torch.ones(5, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask must be a boolean tensor.*torch.float32"):
        scaled_dot_product_attention(torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8), mask=torch.zeros(5, 5))
    with pytest.raises(TypeError, match="k must be a floating-point tensor.*torch.int64"):
        scaled_dot_product_attention(torch.randn(5, 8), torch.ones(5, 8, dtype=torch.long), torch.randn(5, 8))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=f"dropout_p must be between 0 and 1, got {bad}"):
            scaled_dot_product_attention(torch.randn(5, 8), torch.randn(5, 8), torch.randn(5, 8), dropout_p=bad)


# ------------------------------------------------------------------ why sqrt(d_k)

@pytest.mark.parametrize("d_k", [4, 64, 1024])
def test_scaling_by_sqrt_dk_keeps_the_variance_at_one(d_k):
    """The lesson's demonstration: Var[q.k] = d_k for unit-variance entries, Var[q.k / sqrt(d_k)] = 1."""
    g = gen(d_k)
    dots = (torch.randn(20_000, d_k, generator=g) * torch.randn(20_000, d_k, generator=g)).sum(-1)
    assert dots.var().item() == pytest.approx(d_k, rel=0.06)
    assert (dots / math.sqrt(d_k)).var().item() == pytest.approx(1.0, rel=0.06)


def test_unscaled_large_heads_saturate_and_scaled_ones_do_not():
    g = gen(11)
    q, k = torch.randn(500, 1, 1024, generator=g), torch.randn(500, 16, 1024, generator=g)
    unscaled = torch.softmax((q @ k.transpose(-2, -1)).squeeze(1), -1)
    scaled = attention_weights(q, k).squeeze(1)
    assert unscaled.max(-1).values.mean() > 0.9               # nearly one-hot
    assert scaled.max(-1).values.mean() < 0.4                 # spread out, as for a small head
    jacobian_norm = lambda p: (torch.diag_embed(p) - p[..., :, None] * p[..., None, :]).norm(dim=(-2, -1)).mean()
    assert jacobian_norm(scaled) > 3 * jacobian_norm(unscaled)  # and the gradient survives


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("11_attention_scores", {
        0: "return q @ k.transpose(-2, -1)",                                        # forgets the scale
        1: "return x - torch.special.logsumexp(x, dim=dim, keepdim=True)",             # calls a switched-off function
        2: "q, k = torch.randn(n, head_size, generator=g), torch.randn(n, head_size, generator=g)\n"
           "dots = (q * k).sum(dim=-1)\n"
           "return (dots / head_size if scaled else dots).var().item()",              # divides by head_size
        3: "m = torch.zeros(*q.shape[:-1], 1)\n"                                       # starts from m = 0, not -inf
           "l = torch.zeros(*q.shape[:-1], 1)\n"
           "a = torch.zeros(*q.shape[:-1], v.size(-1))\n"
           "for start in range(0, k.size(-2), chunk):\n"
           "    s = q @ k[..., start:start + chunk, :].transpose(-2, -1) / math.sqrt(q.size(-1))\n"
           "    m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))\n"
           "    e = torch.exp(s - m_new)\n"
           "    rescale = torch.exp(m - m_new)\n"
           "    l = l * rescale + e.sum(dim=-1, keepdim=True)\n"
           "    a = a * rescale + e @ v[..., start:start + chunk, :]\n"
           "    m = m_new\n"
           "return a / l",
    })
