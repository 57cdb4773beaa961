"""Lesson 10: minillm.causal_mask (the mask, CausalAttention against torch, and the proof of no future leakage)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.causal_mask import CausalAttention, causal_mask
from minillm.multi_head import MultiHeadAttention
from minillm.qkv import FusedQKVAttention, merge_heads
from numerics import assert_close64


def test_causal_mask_is_the_lower_triangle():
    assert causal_mask(3).tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    assert causal_mask(1).tolist() == [[True]]
    for T in (2, 5, 17):
        m = causal_mask(T)
        assert m.dtype == torch.bool and m.shape == (T, T)
        assert torch.equal(m, torch.tril(torch.ones(T, T)).bool())
        i, j = torch.meshgrid(torch.arange(T), torch.arange(T), indexing="ij")
        assert torch.equal(m, j <= i)
    assert causal_mask(4, device="cpu").device.type == "cpu"


def test_causal_mask_refuses_a_bad_length():
    for bad in (0, -3, 2.5, True, "4", None):
        with pytest.raises(ValueError, match=rf"causal_mask: T must be a positive integer \(the sequence length\), got {bad!r}"):
            causal_mask(bad)


CONFIGS = [(12, 3, False), (32, 4, True), (8, 1, False), (16, 16, True)]


@pytest.mark.parametrize("n_embd,n_head,bias", CONFIGS)
def test_equal_to_torch_causal_attention_in_values_and_gradients(n_embd, n_head, bias):
    """In float64: the same function, with no float32 summation order (the CPU's) in the way."""
    torch.manual_seed(n_embd + n_head)
    attn = CausalAttention(n_embd, n_head, bias=bias).double()
    x1 = torch.randn(3, 10, n_embd).double().requires_grad_()
    x2 = x1.detach().clone().requires_grad_()
    upstream = torch.randn(3, 10, n_embd).double()
    ours = attn(x1)
    q, k, v = attn.project(x2)
    theirs = merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert_close64(ours, theirs, what="output")
    (ours * upstream).sum().backward()
    g_ours = [p.grad.clone() for p in attn.parameters()]
    attn.zero_grad()
    (theirs * upstream).sum().backward()
    assert_close64(x1.grad, x2.grad, what="x.grad")
    for a, b in zip(g_ours, [p.grad for p in attn.parameters()], strict=True):
        assert_close64(a, b, what="parameter grad")


def test_equal_to_torch_multihead_attention_with_a_causal_mask():
    torch.manual_seed(3)
    C, nh = 24, 3
    ours = CausalAttention(C, nh)
    theirs = nn.MultiheadAttention(C, nh, bias=False, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        theirs.out_proj.weight.copy_(torch.eye(C))
    ours, theirs = ours.double(), theirs.double()                     # float64: see numerics.py
    x = torch.randn(2, 7, C).double()
    future = ~causal_mask(7)                                          # torch's attn_mask here: True = may NOT attend
    out, weights = theirs(x, x, x, attn_mask=future, need_weights=True, average_attn_weights=False)
    assert_close64(ours(x), out, what="output")
    assert_close64(ours.attention_weights(x), weights, what="attention weights")


def test_attention_weights_are_causal_distributions():
    attn = CausalAttention(16, 4, bias=True)
    w = attn.attention_weights(torch.randn(2, 9, 16))
    assert w.shape == (2, 4, 9, 9)
    assert (w.triu(diagonal=1) == 0).all() and (w[..., causal_mask(9)] > 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(2, 4, 9), atol=1e-6)
    assert torch.equal(w[..., 0, :], torch.tensor([1.0] + [0.0] * 8).expand(2, 4, 9))   # token 0 sees only itself


def test_the_first_token_outputs_its_own_value_and_the_last_sees_everything():
    torch.manual_seed(4)
    attn = CausalAttention(12, 3)
    plain = FusedQKVAttention(12, 3)
    plain.load_state_dict(attn.state_dict())
    x = torch.randn(2, 6, 12)
    v = merge_heads(attn.project(x)[2])                               # (B, T, C): every token's value
    assert torch.allclose(attn(x)[:, 0], v[:, 0], atol=1e-6)
    assert torch.allclose(attn(x)[:, -1], plain(x)[:, -1], atol=1e-6)
    assert not torch.allclose(attn(x)[:, :-1], plain(x)[:, :-1], atol=1e-3)


@pytest.mark.parametrize("n_embd,n_head,bias", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_no_future_leakage_changing_token_t_plus_1(n_embd, n_head, bias, dtype):
    """The lesson's claim, on the module: for every t, changing token t + 1 leaves every output
    at positions <= t bit-for-bit unchanged, while the output at t + 1 does change."""
    g = torch.Generator().manual_seed(n_embd)
    attn = CausalAttention(n_embd, n_head, bias=bias).to(dtype)
    x = torch.randn(3, 12, n_embd, generator=g, dtype=dtype)
    with torch.no_grad():
        before = attn(x)
        for t in range(x.shape[1] - 1):
            changed = x.clone()
            changed[:, t + 1] = torch.randn(3, n_embd, generator=g, dtype=dtype) * 5
            after = attn(changed)
            assert torch.equal(after[:, :t + 1], before[:, :t + 1]), f"position <= {t} changed"
            assert not torch.allclose(after[:, t + 1], before[:, t + 1]), "the change at t + 1 must be real"


def test_the_leakage_test_catches_a_module_without_the_mask():
    """The same test must fail for lesson 09's module, or it proves nothing."""
    torch.manual_seed(5)
    plain = FusedQKVAttention(16, 2)
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        for t in range(7):
            changed = x.clone()
            changed[:, t + 1] += 1.0
            assert (plain(changed)[:, :t + 1] - plain(x)[:, :t + 1]).abs().max() > 1e-4


def test_no_future_leakage_when_the_whole_future_changes_and_on_prefixes():
    torch.manual_seed(6)
    attn = CausalAttention(20, 4, bias=True)
    x = torch.randn(2, 10, 20)
    with torch.no_grad():
        full = attn(x)
        for t in range(10):
            future = x.clone()
            future[:, t + 1:] = torch.randn_like(x[:, t + 1:]) * 100
            assert torch.equal(attn(future)[:, :t + 1], full[:, :t + 1])
            assert torch.allclose(attn(x[:, :t + 1]), full[:, :t + 1], atol=1e-6)   # the prefix alone


def test_no_gradient_flows_from_the_future():
    """d output_t / d x_j is exactly zero for every j > t (the Jacobian is lower-triangular)."""
    torch.manual_seed(7)
    attn = CausalAttention(8, 2, bias=True).double()
    x = torch.randn(1, 7, 8, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(attn, x)[0, :, :, 0]      # (T, C, T, C)
    dependence = J.abs().sum(dim=(1, 3))                              # (T, T)
    assert (dependence.triu(diagonal=1) == 0).all()
    assert (dependence[causal_mask(7)] > 0).all()
    xg = x.clone().requires_grad_()
    attn(xg)[0, 3].sum().backward()                                   # a loss on position 3 alone
    assert (xg.grad[0, 4:] == 0).all() and (xg.grad[0, :4] != 0).any(dim=-1).all()


def test_gradcheck_in_double_precision():
    attn = CausalAttention(6, 3, bias=True).double()
    x = torch.randn(2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (x,))


def test_from_multi_head_gives_a_causal_module_with_lesson_08s_weights():
    torch.manual_seed(8)
    mha = MultiHeadAttention(12, 3, bias=True)
    attn = CausalAttention.from_multi_head(mha)
    assert type(attn) is CausalAttention
    x = torch.randn(2, 6, 12)
    by_hand = torch.cat([F.scaled_dot_product_attention(h.query(x), h.key(x), h.value(x), is_causal=True)
                         for h in mha.heads], dim=-1)                 # lesson 08's heads, each masked
    assert torch.allclose(attn(x), by_hand, atol=1e-6)


def test_errors_name_the_class_and_the_values():
    with pytest.raises(ValueError, match=r"CausalAttention: n_embd=10 is not divisible by n_head=4"):
        CausalAttention(10, 4)
    attn = CausalAttention(12, 3)
    with pytest.raises(ValueError, match=r"CausalAttention was built for n_embd=12, but the input's last dimension is 8"):
        attn(torch.randn(1, 4, 8))
    with pytest.raises(ValueError, match=r"CausalAttention expects a \(B, T, C\) tensor, got shape \(4, 12\)"):
        attn(torch.randn(4, 12))
    assert repr(attn).startswith("CausalAttention(\n  n_embd=12, n_head=3, head_size=4")


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("10_causal_mask", {
        0: "positions = torch.arange(T)\nreturn positions[None, :] < positions[:, None]",     # hides the diagonal too
        1: "return torch.softmax(scores, dim=-1) * mask",                                  # masked after the softmax
        2: "changed = x.clone()\nchanged[:, t + 1] = changed[:, t + 1] + 1.0\n"             # compares position t only
           "with torch.no_grad():\n    return not torch.equal(module(changed)[:, t], module(x)[:, t])",
        3: "scores = super().scores(q, k)\nT = scores.shape[-1]\n"                         # one token too many
           "i = torch.arange(T)[:, None]\nj = torch.arange(T)[None, :]\n"
           "return scores.masked_fill(i - j > self.window, float('-inf'))",
    })


def test_exercise_checks_reject_a_second_set_of_wrong_answers():
    """A fresh reader's wrong answers: the in-place tril_, and a detector off by one (it changes token t
    and compares the positions before t)."""
    assert_checks_work("10_causal_mask", {
        0: "return torch.ones(T, T, dtype=torch.bool).tril_()",                            # the in-place triangle
        1: "return torch.softmax(scores.masked_fill(~mask, 0.0), dim=-1)",                 # a zero score is not a zero weight
        2: "changed = x.clone()\nchanged[:, t] = changed[:, t] + 1.0\n"                   # off by one
           "with torch.no_grad():\n    return not torch.equal(module(changed)[:, :t], module(x)[:, :t])",
        3: "return super().scores(q, k)",                                                  # no window at all
    })
