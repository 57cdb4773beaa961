"""Lesson 07: minillm.self_attention (one attention head against torch, the worked example, errors)."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.self_attention import AttentionHead
from numerics import assert_close64

WORDS = "The animal didn't cross the street because it was tired".split()
X_SENTENCE = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.5, 0.0], [0.0, 0.0, 1.0, 0.0],
                           [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0],
                           [0.0, 0.0, 0.5, 0.0], [0.0, 0.5, 0.0, 0.0]])     # thing, alive, action, pointer
W_Q = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 4.0, 0.0], [3.0, 3.0, 0.0]])
W_K = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])


def hand_head() -> AttentionHead:
    head = AttentionHead(4, 3)
    with torch.no_grad():
        head.query.weight.copy_(W_Q.T)
        head.key.weight.copy_(W_K.T)
        head.value.weight.copy_(W_K.T)
    return head


def reference(head: AttentionHead, x: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(head.query(x), head.key(x), head.value(x))


def test_structure_and_parameters():
    head = AttentionHead(32, 8)
    assert [n for n, _ in head.named_parameters()] == ["query.weight", "key.weight", "value.weight"]
    for layer in (head.query, head.key, head.value):
        assert isinstance(layer, nn.Linear) and layer.in_features == 32 and layer.out_features == 8 and layer.bias is None
    assert sum(p.numel() for p in head.parameters()) == 3 * 32 * 8
    with_bias = AttentionHead(32, 8, bias=True)
    assert all(layer.bias is not None for layer in (with_bias.query, with_bias.key, with_bias.value))
    assert sum(p.numel() for p in with_bias.parameters()) == 3 * (32 * 8 + 8)
    assert head.n_embd == 32 and head.head_size == 8 and "n_embd=32, head_size=8" in repr(head)


@pytest.mark.parametrize("shape", [(2, 5, 16), (1, 1, 16), (3, 17, 16), (5, 16), (2, 3, 4, 16)])
@pytest.mark.parametrize("bias", [False, True])
def test_equals_torch_attention_in_values_and_gradients(shape, bias):
    """In float64: the same function, with no float32 summation order (the CPU's) in the way."""
    torch.manual_seed(0)
    head = AttentionHead(16, 4, bias=bias).double()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    mine, theirs = head(x1), reference(head, x2)
    assert mine.shape == (*shape[:-1], 4)
    assert_close64(mine, theirs, what="output")
    upstream = torch.randn(mine.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g1 = torch.autograd.grad((mine * upstream).sum(), [x1, *head.parameters()])
    g2 = torch.autograd.grad((theirs * upstream).sum(), [x2, *head.parameters()])
    for a, b in zip(g1, g2, strict=True):
        assert_close64(a, b, what="gradient")


def test_attention_weights_are_rows_of_probabilities():
    head = AttentionHead(8, 2)
    x = torch.randn(3, 7, 8)
    w = head.attention_weights(x)
    assert w.shape == (3, 7, 7)
    assert (w >= 0).all() and torch.allclose(w.sum(dim=-1), torch.ones(3, 7))
    q, k = head.query(x), head.key(x)
    assert torch.allclose(w, torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(2), dim=-1))
    assert torch.allclose(head(x), w @ head.value(x), atol=1e-6)


def test_the_worked_example_by_hand():
    head = hand_head()
    w = head.attention_weights(X_SENTENCE.unsqueeze(0))[0]
    it = w[WORDS.index("it")]
    # scores 6, 3, 1.5 and seven zeros, divided by sqrt(3)
    exps = torch.tensor([math.exp(s / math.sqrt(3)) for s in [0, 6, 0, 0, 0, 3, 0, 0, 0, 1.5]])
    assert torch.allclose(it, exps / exps.sum(), atol=1e-6)
    assert it[1].item() == pytest.approx(31.954 / 46.983, abs=1e-4) and it[1].item() == pytest.approx(0.680, abs=1e-3)
    out = head(X_SENTENCE.unsqueeze(0))[0, WORDS.index("it")]
    assert torch.allclose(out, torch.tensor([0.8001, 0.7054, 0.0426]), atol=1e-3)
    for silent in ("The", "the", "because", "street"):                   # a zero query: an even spread
        assert torch.allclose(w[WORDS.index(silent)], torch.full((10,), 0.1))


def test_the_last_word_does_not_change_the_ratio_for_it():
    """One head cannot tell "tired" from "wide": the query of "it" depends on "it" alone."""
    head = hand_head()
    wide = X_SENTENCE.clone()
    wide[-1] = 0
    for x in (X_SENTENCE, wide):
        it = head.attention_weights(x)[WORDS.index("it")]
        assert (it[1] / it[5]).item() == pytest.approx(math.exp(math.sqrt(3)), rel=1e-5)


def test_no_mask_yet_every_token_sees_the_future():
    torch.manual_seed(3)
    head = AttentionHead(8, 4)
    x = torch.randn(1, 6, 8)
    later = x.clone()
    later[0, -1] = torch.randn(8)                                        # change only the last token
    assert not torch.allclose(head(x)[0, 0], head(later)[0, 0])          # the first token's output moves
    above = torch.ones(6, 6, dtype=torch.bool).triu(diagonal=1)
    assert (head.attention_weights(x)[0][above] > 0).all()              # weight above the diagonal


def test_sequences_in_a_batch_do_not_mix_and_order_is_equivariant():
    torch.manual_seed(4)
    head = AttentionHead(12, 6)
    x = torch.randn(3, 9, 12)
    other = x.clone()
    other[1:] = torch.randn(2, 9, 12)
    assert torch.equal(head(other)[0], head(x)[0])
    perm = torch.randperm(9)
    assert torch.allclose(head(x[:, perm]), head(x)[:, perm], atol=1e-6)
    assert torch.allclose(head.attention_weights(x[:, perm]), head.attention_weights(x)[:, perm][:, :, perm], atol=1e-6)


def test_edge_cases():
    torch.manual_seed(5)
    head = AttentionHead(8, 4)
    one = torch.randn(2, 1, 8)                                           # one token attends to itself only
    assert torch.allclose(head(one), head.value(one)) and torch.equal(head.attention_weights(one), torch.ones(2, 1, 1))
    same = torch.randn(1, 1, 8).expand(1, 5, 8)                          # equal tokens: an even spread
    assert torch.allclose(head.attention_weights(same), torch.full((1, 5, 5), 0.2))
    huge = torch.randn(2, 6, 8) * 1e4                                    # scores of about 1e8: softmax stays finite
    assert torch.isfinite(head(huge)).all()
    assert torch.allclose(head(huge), reference(head, huge), atol=1e-2, rtol=1e-4)
    assert head(torch.randn(2, 4, 8, dtype=torch.float64).float()).dtype == torch.float32
    double = AttentionHead(5, 3).double()
    x = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(double, (x,))


def test_a_wrong_last_dimension_names_both_sizes():
    head = AttentionHead(32, 8)
    with pytest.raises(ValueError, match=r"built for n_embd=32, but the input's last dimension is 48 \(shape \(2, 5, 48\)\)"):
        head(torch.randn(2, 5, 48))
    with pytest.raises(ValueError, match=r"n_embd=32.*last dimension is 31"):
        head.attention_weights(torch.randn(4, 31))
    with pytest.raises(ValueError, match=r"shape \(B, T, n_embd\) or \(T, n_embd\), got shape \(32,\)"):
        head(torch.randn(32))


def test_bad_input_types_are_refused():
    head = AttentionHead(4, 2)
    with pytest.raises(TypeError, match="floating-point tensor, got dtype torch.int64"):
        head(torch.arange(8).view(1, 2, 4))
    with pytest.raises(TypeError, match="floating-point tensor, got list"):
        head([[1.0, 2.0, 3.0, 4.0]])


@pytest.mark.parametrize("name, args", [("n_embd", (0, 4)), ("n_embd", (-3, 4)), ("n_embd", (2.5, 4)),
                                        ("n_embd", (True, 4)), ("head_size", (8, 0)), ("head_size", (8, "4"))])
def test_bad_configuration_is_refused(name, args):
    bad = args[0] if name == "n_embd" else args[1]
    with pytest.raises(ValueError, match=rf"AttentionHead: {name} must be a positive integer, got {bad!r}"):
        AttentionHead(*args)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("07_self_attention", {
        0: "return q @ k.transpose(-2, -1)",                                             # forgets the 1/sqrt(h)
        1: "weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-2)\n"   # softmax over the queries
           "return weights @ v",
        2: "head.query.weight[2, :] = 10.0\nhead.key.weight[2, 2] = 1.0",             # no bias: zero vectors ask nothing
        3: "q = self.query(x)\nk = self.key(x)\nv = self.value(context)\n"               # keys from x, not the context
           "weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_size), dim=-1)\nreturn weights @ v",
    })
