"""Lesson 08: minillm.multi_head (MultiHeadAttention against torch's, the hand-set heads, errors)."""
import math

import pytest
import torch
import torch.nn as nn

from exercise_tools import assert_checks_work
from minillm.multi_head import MultiHeadAttention
from minillm.self_attention import AttentionHead
from numerics import assert_close64


def torch_reference(mha: MultiHeadAttention, bias: bool) -> nn.MultiheadAttention:
    """nn.MultiheadAttention with our heads' weights packed into in_proj and an identity output projection."""
    C = mha.n_embd
    ref = nn.MultiheadAttention(C, mha.n_head, bias=bias, batch_first=True)
    with torch.no_grad():
        for i, name in enumerate(("query", "key", "value")):
            ref.in_proj_weight[i * C:(i + 1) * C] = torch.cat([getattr(h, name).weight for h in mha.heads])
            if bias:
                ref.in_proj_bias[i * C:(i + 1) * C] = torch.cat([getattr(h, name).bias for h in mha.heads])
        ref.out_proj.weight.copy_(torch.eye(C))
        if bias:
            ref.out_proj.bias.zero_()
    return ref


def test_structure_and_defaults():
    mha = MultiHeadAttention(32, 4)
    assert isinstance(mha.heads, nn.ModuleList) and len(mha.heads) == 4
    assert all(type(h) is AttentionHead and h.n_embd == 32 and h.head_size == 8 for h in mha.heads)
    assert mha.head_size == 8 and mha.n_head == 4 and mha.n_embd == 32
    assert sum(p.numel() for p in mha.parameters()) == 3 * 32 * 32                 # as many as one head of size 32
    assert [n for n, _ in mha.named_parameters()][:3] == ["heads.0.query.weight", "heads.0.key.weight", "heads.0.value.weight"]
    assert all(h.query.bias is not None for h in MultiHeadAttention(32, 4, bias=True).heads)
    wide = MultiHeadAttention(10, 3, head_size=7)                                   # an explicit head size need not divide
    assert wide.head_size == 7 and wide(torch.randn(2, 5, 10)).shape == (2, 5, 21)
    assert "n_embd=32, n_head=4, head_size=8" in repr(mha)
    a, b = MultiHeadAttention(8, 2).heads                                            # heads start different
    assert not torch.equal(a.query.weight, b.query.weight)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("C, n_head, shape", [(32, 4, (3, 12)), (12, 3, (1, 1)), (16, 1, (2, 9)), (24, 6, (4, 5))])
def test_equals_torch_multihead_attention(bias, C, n_head, shape):
    """In float64: the same function, with no float32 summation order (the CPU's) in the way."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(C, n_head, bias=bias)
    if bias:
        with torch.no_grad():
            for p in mha.parameters():
                if p.dim() == 1:
                    p.normal_()
    mha = mha.double()
    ref = torch_reference(mha, bias).double()
    x = torch.randn(*shape, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    mine = mha(x1)
    theirs, their_weights = ref(x2, x2, x2, need_weights=True, average_attn_weights=False)
    assert mine.shape == (*shape, C)
    assert_close64(mine, theirs, what="output")
    assert_close64(mha.attention_weights(x), their_weights, what="attention weights")
    upstream = torch.randn(mine.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (mine * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    assert_close64(x1.grad, x2.grad, what="x.grad")
    ours = torch.cat([h.query.weight.grad for h in mha.heads])                      # the query gradients, packed
    assert_close64(ours, ref.in_proj_weight.grad[:C], what="query weight grad")


def test_output_is_the_heads_concatenated_and_weights_stacked():
    torch.manual_seed(3)
    mha = MultiHeadAttention(20, 5)
    x = torch.randn(2, 7, 20)
    y, w = mha(x), mha.attention_weights(x)
    assert w.shape == (2, 5, 7, 7) and torch.allclose(w.sum(dim=-1), torch.ones(2, 5, 7))
    for i, head in enumerate(mha.heads):
        assert torch.equal(y[..., 4 * i:4 * (i + 1)], head(x))
        assert torch.equal(w[:, i], head.attention_weights(x))
    single = torch.randn(7, 20)                                                     # a single sequence (T, C)
    assert mha(single).shape == (7, 20) and mha.attention_weights(single).shape == (5, 7, 7)
    mha64, single64 = mha.double(), single.double()      # float64: a 2-D input may take another float32 kernel
    assert_close64(mha64(single64), mha64(single64.unsqueeze(0))[0])


def test_hand_set_heads_look_where_they_should():
    """The lesson's one-word-back and one-word-ahead heads, on positions t and t^2."""
    a, T = 5.0, 10
    pos = torch.stack([torch.arange(T, dtype=torch.float), torch.arange(T, dtype=torch.float) ** 2], dim=1)   # (T, 2)
    mha = MultiHeadAttention(2, 2, head_size=2, bias=True)
    with torch.no_grad():
        for p in mha.parameters():
            p.zero_()
        for head, shift in zip(mha.heads, (-1, +1)):
            head.query.weight[0, 0] = 2 * a
            head.query.bias.copy_(torch.tensor([2 * a * shift, -a]))
            head.key.weight.copy_(torch.eye(2))
    w = mha.attention_weights(pos)                                                   # (2, T, T)
    back, ahead = w[0], w[1]
    assert back.argmax(dim=-1).tolist() == [0] + list(range(T - 1))
    assert ahead.argmax(dim=-1).tolist() == list(range(1, T)) + [T - 1]
    # the target's weight: neighbours score a = 5 lower, divided by sqrt(2)
    inner = 1 / (1 + 2 * math.exp(-a / math.sqrt(2)) + 2 * math.exp(-4 * a / math.sqrt(2)))
    assert back[5, 4].item() == pytest.approx(inner, abs=1e-3) and inner > 0.94
    above = torch.ones(T, T, dtype=torch.bool).triu(diagonal=1)
    assert ahead[above].sum() > 0.9 * (T - 1)                                       # no mask: it reads the future


def test_one_big_head_answers_the_sum_of_the_questions():
    """Stacking heads into one head of the same size adds their scores."""
    torch.manual_seed(5)
    mha = MultiHeadAttention(12, 3)
    big = AttentionHead(12, 12)
    with torch.no_grad():
        for name in ("query", "key", "value"):
            getattr(big, name).weight.copy_(torch.cat([getattr(h, name).weight for h in mha.heads]))
    x = torch.randn(6, 12)
    summed = sum(h.query(x) @ h.key(x).T / math.sqrt(4) for h in mha.heads)
    assert torch.allclose(big.attention_weights(x), torch.softmax(summed / math.sqrt(3), dim=-1), atol=1e-6)
    assert sum(p.numel() for p in big.parameters()) == sum(p.numel() for p in mha.parameters())
    assert not torch.allclose(big(x), mha(x), atol=1e-3)


def test_no_mask_yet_and_no_mixing_across_the_batch():
    torch.manual_seed(6)
    mha = MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    later = x.clone()
    later[:, -1] = torch.randn(2, 16)
    assert not torch.allclose(mha(x)[:, 0], mha(later)[:, 0])                       # the future reaches position 0
    other = x.clone()
    other[1] = torch.randn(5, 16)
    assert torch.equal(mha(other)[0], mha(x)[0])
    perm = torch.tensor([4, 2, 0, 3, 1])
    assert torch.allclose(mha(x[:, perm]), mha(x)[:, perm], atol=1e-6)


def test_gradcheck_and_large_inputs():
    mha = MultiHeadAttention(6, 3).double()
    x = torch.randn(2, 4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(mha, (x,))
    big = MultiHeadAttention(8, 2)(torch.randn(2, 5, 8) * 1e4)
    assert torch.isfinite(big).all()


def test_d_model_not_divisible_by_n_head_names_both():
    with pytest.raises(ValueError, match=r"n_embd=30 is not divisible by n_head=4"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match=r"n_embd=7 is not divisible by n_head=2.*give head_size"):
        MultiHeadAttention(7, 2)
    assert MultiHeadAttention(7, 2, head_size=3).head_size == 3                     # with head_size it is allowed


@pytest.mark.parametrize("args, name, bad", [((0, 2), "n_embd", 0), ((8, 0), "n_head", 0), ((8, -2), "n_head", -2),
                                             ((8, 2.0), "n_head", 2.0), ((8, True), "n_head", True),
                                             ((8, 2, 0), "head_size", 0), ((8, 2, "4"), "head_size", "4")])
def test_bad_configuration_is_refused(args, name, bad):
    with pytest.raises(ValueError, match=rf"MultiHeadAttention: {name} must be a positive integer, got {bad!r}"):
        MultiHeadAttention(*args)


def test_bad_input_is_refused_where_it_enters():
    mha = MultiHeadAttention(32, 4)
    for call in (mha, mha.attention_weights):
        with pytest.raises(ValueError, match=r"MultiHeadAttention was built for n_embd=32, but the input's last dimension is 48 \(shape \(2, 5, 48\)\)"):
            call(torch.randn(2, 5, 48))
    with pytest.raises(ValueError, match=r"\(B, T, n_embd\) or \(T, n_embd\), got shape \(32,\)"):
        mha(torch.randn(32))
    with pytest.raises(TypeError, match="MultiHeadAttention expects a floating-point tensor, got dtype torch.int64"):
        mha(torch.zeros(1, 2, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="got list"):
        mha([[0.0] * 32])


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("08_multi_head", {
        0: "return y[..., h:h + head_size]",                                            # offsets by h, not h * head_size
        1: "return -(weights * weights.log()).sum(dim=-1).mean(dim=-1)",               # 0 * log 0 = nan
        2: "head.query.weight[0, T_POS] = 2 * a\nhead.query.bias.copy_(torch.tensor([-2 * a, -a]))\n"   # one word back
           "head.key.weight[0, T_POS] = 1.0\nhead.key.weight[1, T2_POS] = 1.0",
        3: "for i, h in enumerate(heads):\n"                                           # the layer's default head_size, not the heads'
           "    if (h.n_embd, h.head_size) != (heads[0].n_embd, heads[0].head_size):\n"
           "        raise ValueError(f'head {i} has n_embd={h.n_embd}, head_size={h.head_size}, '\n"
           "                         f'but head 0 has n_embd={heads[0].n_embd}, head_size={heads[0].head_size}')\n"
           "layer = MultiHeadAttention(heads[0].n_embd, len(heads))\nlayer.heads = nn.ModuleList(heads)\nreturn layer",
    })
