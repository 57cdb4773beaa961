"""Lesson 09: minillm.qkv (split/merge heads, the fused QKV projection, equality with lesson 08 and torch)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.multi_head import MultiHeadAttention
from minillm.qkv import FusedQKVAttention, merge_heads, split_heads
from numerics import assert_close, assert_close64, summands


def test_split_heads_on_the_worked_example():
    x = torch.arange(12.0).view(1, 2, 6)
    heads = split_heads(x, 2)
    assert heads.shape == (1, 2, 2, 3)
    assert heads[0, 0].tolist() == [[0, 1, 2], [6, 7, 8]] and heads[0, 1].tolist() == [[3, 4, 5], [9, 10, 11]]
    assert split_heads(torch.arange(6.0).view(1, 1, 6), n_head=2).tolist() == [[[[0, 1, 2]], [[3, 4, 5]]]]   # the docstring


@pytest.mark.parametrize("n_head", [1, 2, 3, 4, 6, 12])
def test_split_and_merge_match_view_transpose_and_invert(n_head):
    x = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(n_head))
    nano = x.view(3, 5, n_head, 12 // n_head).transpose(1, 2)          # nanoGPT's way
    assert torch.equal(split_heads(x, n_head), nano)
    assert torch.equal(merge_heads(nano), nano.transpose(1, 2).reshape(3, 5, 12))
    assert torch.equal(merge_heads(split_heads(x, n_head)), x)
    assert torch.equal(split_heads(x.transpose(0, 1).transpose(0, 1), n_head), nano)   # views are fine


def test_split_and_merge_refuse_bad_input():
    with pytest.raises(ValueError, match=r"split_heads: the last dimension, 10, is not divisible by n_head=4"):
        split_heads(torch.randn(2, 3, 10), 4)
    with pytest.raises(ValueError, match=r"split_heads expects a \(B, T, C\) tensor, got shape \(3, 10\)"):
        split_heads(torch.randn(3, 10), 2)
    with pytest.raises(ValueError, match=r"split_heads expects a \(B, T, C\) tensor, got list"):
        split_heads([[1.0, 2.0]], 1)
    for bad in (0, -2, 2.0, True):
        with pytest.raises(ValueError, match=rf"split_heads: n_head must be a positive integer, got {bad!r}"):
            split_heads(torch.randn(1, 2, 4), bad)
    with pytest.raises(ValueError, match=r"merge_heads expects a \(B, n_head, T, head_size\) tensor, got shape \(2, 3, 4\)"):
        merge_heads(torch.randn(2, 3, 4))


def test_the_fused_layout_is_q_k_v_with_head_0_first():
    """The docstring's example: n_embd=4, n_head=2, 12 features per token."""
    attn = FusedQKVAttention(4, 2)
    with torch.no_grad():                                   # output feature i of qkv is (i + 1) * x[0]
        attn.qkv.weight.zero_()
        attn.qkv.weight[:, 0] = torch.arange(1.0, 13.0)
    q, k, v = attn.project(torch.tensor([[[1.0, 0.0, 0.0, 0.0]]]))
    assert q[0, :, 0].tolist() == [[1, 2], [3, 4]]         # q of head 0 = features 0-1, head 1 = 2-3
    assert k[0, :, 0].tolist() == [[5, 6], [7, 8]]
    assert v[0, :, 0].tolist() == [[9, 10], [11, 12]]


CONFIGS = [(12, 3, False), (32, 4, True), (16, 1, False), (8, 8, True), (24, 6, False)]


@pytest.mark.parametrize("n_embd,n_head,bias", CONFIGS)
def test_equal_to_lesson_08_in_values_weights_and_gradients(n_embd, n_head, bias):
    """In float64: one big product and per-head products sum in different orders, and in float32
    that order (the CPU's choice) would show in the last digits."""
    torch.manual_seed(n_embd + n_head)
    mha = MultiHeadAttention(n_embd, n_head, bias=bias)
    fused = FusedQKVAttention.from_multi_head(mha)
    x = torch.randn(3, 7, n_embd)
    upstream = torch.randn(3, 7, n_embd)
    mha, fused, x, upstream = mha.double(), fused.double(), x.double(), upstream.double()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out1, out2 = fused(x1), mha(x2)
    assert_close64(out1, out2, what="output")
    assert_close64(fused.attention_weights(x), mha.attention_weights(x), what="attention weights")
    (out1 * upstream).sum().backward()
    (out2 * upstream).sum().backward()
    assert_close64(x1.grad, x2.grad, what="x.grad")
    # the fused weight's gradient is the heads' gradients stacked in the same layout
    for i, role in enumerate(("query", "key", "value")):
        rows = slice(i * n_embd, (i + 1) * n_embd)
        expected = torch.cat([getattr(h, role).weight.grad for h in mha.heads])
        assert_close64(fused.qkv.weight.grad[rows], expected, what=f"{role} weight grad")
        if bias:
            assert_close64(fused.qkv.bias.grad[rows], torch.cat([getattr(h, role).bias.grad for h in mha.heads]),
                           what=f"{role} bias grad")


@pytest.mark.parametrize("bias", [False, True])
def test_equal_to_torch_multihead_attention_without_its_output_projection(bias):
    """nn.MultiheadAttention keeps its in-projection in the same [q | k | v] layout; with an
    identity output projection it computes exactly our module."""
    torch.manual_seed(5)
    C, nh = 32, 4
    ours = FusedQKVAttention(C, nh, bias=bias)
    theirs = nn.MultiheadAttention(C, nh, bias=bias, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(ours.qkv.weight)
        if bias:
            ours.qkv.bias.normal_()
            theirs.in_proj_bias.copy_(ours.qkv.bias)
            theirs.out_proj.bias.zero_()
        theirs.out_proj.weight.copy_(torch.eye(C))
    ours, theirs = ours.double(), theirs.double()                       # float64: see numerics.py
    x = torch.randn(2, 9, C).double()
    out, weights = theirs(x, x, x, need_weights=True, average_attn_weights=False)
    assert_close64(ours(x), out, what="output")
    assert_close64(ours.attention_weights(x), weights, what="attention weights")


def test_equal_to_torch_scaled_dot_product_attention():
    torch.manual_seed(6)
    attn = FusedQKVAttention(48, 6, bias=True)
    x = torch.randn(4, 11, 48)
    q, k, v = attn.project(x)
    assert q.shape == k.shape == v.shape == (4, 6, 11, 8)
    expected = F.scaled_dot_product_attention(q, k, v)                   # (B, n_head, T, head_size)
    # float32 against torch's float32 kernel: both sum weight * value over the 11 keys, so they
    # agree to a few eps32 of sum |w| |v| (the scores' rounding enters at the same scale)
    scale = merge_heads(summands(attn.attention_weights(x), v))
    assert_close(attn(x), merge_heads(expected), scale)


def test_attention_weights_are_distributions():
    attn = FusedQKVAttention(16, 4)
    w = attn.attention_weights(torch.randn(2, 5, 16))
    assert w.shape == (2, 4, 5, 5)
    assert (w > 0).all() and torch.allclose(w.sum(-1), torch.ones(2, 4, 5), atol=1e-6)


def test_without_a_mask_attention_sees_the_whole_sequence():
    """No mask and no positions: permuting the tokens permutes the outputs, and changing the last
    token changes the first one's output (lesson 10 takes this away)."""
    torch.manual_seed(7)
    attn = FusedQKVAttention(16, 2)
    x = torch.randn(1, 6, 16)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(attn(x[:, perm]), attn(x)[:, perm], atol=1e-6)
    changed = x.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(attn(changed)[:, 0], attn(x)[:, 0], atol=1e-4)


def test_gradcheck_in_double_precision():
    attn = FusedQKVAttention(6, 2, bias=True).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(attn, (x,))


def test_from_multi_head_copies_and_keeps_dtype():
    mha = MultiHeadAttention(8, 2).double()
    fused = FusedQKVAttention.from_multi_head(mha)
    assert fused.qkv.weight.dtype == torch.float64 and fused.qkv.bias is None
    x = torch.randn(1, 3, 8, dtype=torch.float64)
    assert torch.allclose(fused(x), mha(x), atol=1e-12)
    with torch.no_grad():
        fused.qkv.weight.zero_()                                         # a copy, not shared storage
    assert mha.heads[0].query.weight.abs().sum() > 0
    assert (fused.n_head, fused.head_size, fused.n_embd) == (2, 4, 8)


def test_from_multi_head_refuses_what_it_cannot_fuse():
    with pytest.raises(TypeError, match=r"FusedQKVAttention.from_multi_head expects a MultiHeadAttention, got Linear"):
        FusedQKVAttention.from_multi_head(nn.Linear(4, 4))
    narrow = MultiHeadAttention(12, 3, head_size=2)                      # 3 heads of 2: 6 features, not 12
    with pytest.raises(ValueError, match=r"3 heads of head_size=2 make 6, but n_embd=12"):
        FusedQKVAttention.from_multi_head(narrow)


def test_configuration_and_input_errors_name_the_values():
    with pytest.raises(ValueError, match=r"FusedQKVAttention: n_embd=10 is not divisible by n_head=3"):
        FusedQKVAttention(10, 3)
    for name, args in (("n_embd", (0, 1)), ("n_head", (8, 0)), ("n_embd", (8.0, 2)), ("n_head", (8, True))):
        with pytest.raises(ValueError, match=rf"FusedQKVAttention: {name} must be a positive integer"):
            FusedQKVAttention(*args)
    attn = FusedQKVAttention(12, 3)
    with pytest.raises(ValueError, match=r"built for n_embd=12, but the input's last dimension is 16 \(shape \(2, 5, 16\)\)"):
        attn(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"expects a \(B, T, C\) tensor, got shape \(5, 12\)"):
        attn(torch.randn(5, 12))
    with pytest.raises(ValueError, match=r"built for n_embd=12, but the input's last dimension is 16"):
        attn.attention_weights(torch.randn(1, 2, 16))
    with pytest.raises(TypeError, match=r"floating-point tensor, got dtype torch.int64"):
        attn(torch.zeros(1, 2, 12, dtype=torch.long))
    assert repr(attn).startswith("FusedQKVAttention(\n  n_embd=12, n_head=3, head_size=4")


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("09_qkv", {
        0: "return y.transpose(1, 2).view(B, T, n_head * head_size)",               # view on a transposed tensor: raises
        1: "return torch.cat([torch.cat([h.query.weight, h.key.weight, h.value.weight]) for h in mha.heads])",  # interleaved per head
        2: "C, head_size = attn.n_embd, attn.head_size\nW = attn.qkv.weight\n"        # the transpose: keys ask, queries answer
           "W_q = W[i * head_size:(i + 1) * head_size]\nW_k = W[C + i * head_size:C + (i + 1) * head_size]\n"
           "return W_k.T @ W_q",
        3: "q, k, v = self.project(x)\n"                                              # tiles the mask over the merged columns
           "weights = torch.softmax(self.scores(q, k), dim=-1)\n"
           "return merge_heads(weights @ v) * self.head_mask.repeat(self.head_size)",
    })
