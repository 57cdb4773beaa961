"""Lesson 12: minillm.causal_self_attention (CausalSelfAttention against nn.MultiheadAttention,
fused against from scratch, no future leakage, dropout, errors, the key/value cache)."""
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.causal_mask import CausalAttention, causal_mask
from minillm.causal_self_attention import CausalSelfAttention, KVCache
from numerics import assert_close, assert_close64, summands

ROOT = Path(__file__).resolve().parent.parent


def module(n_embd=32, n_head=4, block_size=64, seed=0, **kwargs):
    torch.manual_seed(seed)
    return CausalSelfAttention(n_embd, n_head, block_size, **kwargs).eval()


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def torch_reference(attn: CausalSelfAttention) -> nn.MultiheadAttention:
    """nn.MultiheadAttention with attn's weights: in_proj = c_attn (q, k, v stacked), out_proj = c_proj."""
    bias = attn.c_attn.bias is not None
    ref = nn.MultiheadAttention(attn.n_embd, attn.n_head, bias=bias, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.c_attn.weight)
        ref.out_proj.weight.copy_(attn.c_proj.weight)
        if bias:
            ref.in_proj_bias.copy_(attn.c_attn.bias)
            ref.out_proj.bias.copy_(attn.c_proj.bias)
    return ref


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("n_embd, n_head, T", [(32, 4, 20), (24, 1, 7), (48, 12, 1), (64, 8, 33)])
def test_equals_torch_multihead_attention_in_values_and_gradients(fused, bias, n_embd, n_head, T):
    """In float64: the same function, with no float32 summation order (the CPU's) in the way."""
    attn = module(n_embd, n_head, bias=bias, fused=fused).double()
    ref = torch_reference(attn).double()
    x = randn(3, T, n_embd).double()
    upstream = randn(3, T, n_embd, seed=2).double()
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = attn(x1)
    expected, _ = ref(x2, x2, x2, attn_mask=~causal_mask(T), need_weights=False)
    (out * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert_close64(out, expected, what="output")
    assert_close64(x1.grad, x2.grad, what="x.grad")
    assert_close64(attn.c_attn.weight.grad, ref.in_proj_weight.grad, what="c_attn.weight.grad")
    assert_close64(attn.c_proj.weight.grad, ref.out_proj.weight.grad, what="c_proj.weight.grad")
    if bias:
        assert_close64(attn.c_attn.bias.grad, ref.in_proj_bias.grad, what="c_attn.bias.grad")
        assert_close64(attn.c_proj.bias.grad, ref.out_proj.bias.grad, what="c_proj.bias.grad")


def test_before_the_projection_it_is_lesson_10s_causal_attention():
    attn = module(32, 4)
    lesson10 = CausalAttention(32, 4, bias=True)
    lesson10.qkv.load_state_dict(attn.c_attn.state_dict())
    identity = module(32, 4)
    with torch.no_grad():                          # c_proj = identity: the output is the heads' concatenation
        identity.c_attn.load_state_dict(attn.c_attn.state_dict())
        identity.c_proj.weight.copy_(torch.eye(32))
        identity.c_proj.bias.zero_()
    attn, lesson10, identity = attn.double(), lesson10.double(), identity.double()   # float64: see numerics.py
    x = randn(2, 9, 32).double()
    assert_close64(identity(x), lesson10(x))
    with torch.no_grad():
        assert_close64(attn(x), attn.c_proj(lesson10(x)))


def test_fused_and_from_scratch_give_the_same_result():
    attn = module(64, 8)
    x = randn(4, 40, 64)
    attn.fused = True
    fused = attn(x)
    attn.fused = False
    scratch = attn(x)
    # float32 is the point: torch's fused kernel against our three steps. They differ only inside
    # the attention, where each output sums weight * value over up to 40 keys, so by a few eps32
    # of sum |w| |v|, which c_proj carries on as |c_proj.weight| does
    with torch.no_grad():
        q, k, v = (t.view(4, 40, 8, 8).transpose(1, 2) for t in attn.c_attn(x).split(64, dim=2))   # (B, nh, T, hs)
        w = torch.softmax((q @ k.transpose(-2, -1) / 8).masked_fill(~causal_mask(40), float("-inf")), dim=-1)
        per_head = summands(w, v).transpose(1, 2).reshape(4, 40, 64)                                 # (B, T, C)
        scale = summands(per_head, attn.c_proj.weight.T)
    assert_close(fused, scratch, scale)
    assert attn.fused is False and "fused=False" in repr(attn)


@pytest.mark.parametrize("fused", [True, False])
def test_no_future_leakage(fused):
    """Changing the token at t + 1 leaves every output at positions <= t unchanged."""
    attn = module(fused=fused)
    x = randn(2, 16, 32)
    base = attn(x)
    for t in range(15):
        changed = x.clone()
        changed[:, t + 1:] = randn(2, 15 - t, 32, seed=t + 10) * 10
        after = attn(changed)
        assert torch.equal(after[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(after[:, t + 1], base[:, t + 1])


def test_gradient_does_not_flow_from_the_past_to_the_future():
    attn = module()
    x = randn(1, 10, 32).requires_grad_()
    attn(x)[0, 4].sum().backward()                 # the output at position 4
    assert torch.equal(x.grad[0, 5:], torch.zeros(5, 32))
    assert (x.grad[0, :5].abs().sum(-1) > 0).all()


def test_parameters_and_names_follow_gpt2():
    attn = CausalSelfAttention(768, 12, 1024)
    assert sum(p.numel() for p in attn.parameters()) == 2_362_368 == 4 * 768 ** 2 + 4 * 768
    assert set(attn.state_dict()) == {"c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"}
    assert attn.c_attn.weight.shape == (3 * 768, 768) and attn.c_proj.weight.shape == (768, 768)
    no_bias = CausalSelfAttention(768, 12, 1024, bias=False)
    assert set(no_bias.state_dict()) == {"c_attn.weight", "c_proj.weight"}
    assert attn.head_size == 64 and attn.fused is True


def test_dropout_acts_in_training_only():
    noisy = module(dropout=0.3)
    clean = module(dropout=0.0)
    clean.load_state_dict(noisy.state_dict())
    x = randn(2, 12, 32)
    for fused in (True, False):
        noisy.fused = clean.fused = fused                    # the same path: the same float32 sums
        noisy.eval()
        assert torch.equal(noisy(x), noisy(x)) and torch.allclose(noisy(x), clean(x), atol=1e-6)
        noisy.train()
        torch.manual_seed(0)
        a = noisy(x)
        b = noisy(x)
        assert not torch.allclose(a, b)
        assert 0.2 < (a == 0).float().mean().item() < 0.4     # the output dropout zeroes about 30%
    clean.train()
    assert torch.equal(clean(x), clean(x))                    # p = 0: training mode changes nothing


def test_attention_dropout_probability_reaches_the_attention_function():
    """attn_dropout.p is used inside the attention: with the output dropout off, outputs still vary."""
    attn = module(dropout=0.0).train()
    attn.attn_dropout.p = 0.5
    x = randn(2, 12, 32)
    for fused in (True, False):
        attn.fused = fused
        assert not torch.allclose(attn(x), attn(x))
    attn.eval()
    assert torch.equal(attn(x), attn(x))


def test_constructor_errors_name_the_values():
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        CausalSelfAttention(30, 4, 64)
    for name, args in [("n_embd", (0, 4, 64)), ("n_head", (32, 0, 64)), ("block_size", (32, 4, -1)),
                       ("n_head", (32, 2.0, 64))]:
        with pytest.raises(ValueError, match=f"{name} must be a positive integer"):
            CausalSelfAttention(*args)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\), got 1.0"):
        CausalSelfAttention(32, 4, 64, dropout=1.0)


def test_input_errors_name_the_values():
    attn = module()
    with pytest.raises(ValueError, match=r"built for n_embd=32, but the input's last dimension is 48 \(shape \(2, 5, 48\)\)"):
        attn(torch.randn(2, 5, 48))
    with pytest.raises(ValueError, match=r"shape \(B, T, n_embd\).*\(5, 32\)"):
        attn(torch.randn(5, 32))
    with pytest.raises(ValueError, match=r"T >= 1.*\(2, 0, 32\)"):
        attn(torch.randn(2, 0, 32))
    with pytest.raises(ValueError, match="Cannot forward a sequence of length 65, block size is only 64"):
        attn(torch.randn(1, 65, 32))
    with pytest.raises(TypeError, match="floating-point.*torch.int64"):
        attn(torch.ones(1, 4, 32, dtype=torch.long))
    assert attn(torch.randn(1, 64, 32)).shape == (1, 64, 32)        # exactly block_size is fine


# ------------------------------------------------------------------ the key/value cache

@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("chunks", [[8] + [1] * 12, [1] * 20, [5, 1, 7, 7], [20]])
def test_cached_path_equals_the_uncached_one(fused, chunks):
    attn = module(fused=fused)
    x = randn(3, 20, 32)
    full = attn(x)
    cache = KVCache()
    outs, start = [], 0
    for n in chunks:
        outs.append(attn(x[:, start:start + n], kv_cache=cache))
        start += n
        assert len(cache) == start
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-5)
    assert cache.k.shape == cache.v.shape == (3, 4, 20, 8)


def test_a_cache_filled_by_one_path_continues_on_the_other():
    attn = module()
    x = randn(2, 12, 32)
    full = attn(x)
    cache = KVCache()
    attn.fused = True
    first = attn(x[:, :7], kv_cache=cache)
    attn.fused = False
    rest = [attn(x[:, t:t + 1], kv_cache=cache) for t in range(7, 12)]
    assert torch.allclose(torch.cat([first, *rest], dim=1), full, atol=1e-5)


def test_cache_holds_the_keys_and_values_of_c_attn():
    attn = module()
    x = randn(2, 6, 32)
    cache = KVCache()
    attn(x, kv_cache=cache)
    _, k, v = attn.c_attn(x).split(32, dim=2)
    assert torch.allclose(cache.k, k.view(2, 6, 4, 8).transpose(1, 2))
    assert torch.allclose(cache.v, v.view(2, 6, 4, 8).transpose(1, 2))


def test_cache_with_dropout_in_evaluation_and_reset():
    attn = module(dropout=0.2)                   # eval(): dropout off, so the cache must agree
    x = randn(1, 10, 32)
    cache = KVCache()
    steps = torch.cat([attn(x[:, t:t + 1], kv_cache=cache) for t in range(10)], dim=1)
    assert torch.allclose(steps, attn(x), atol=1e-5)
    cache.reset()
    assert len(cache) == 0 and cache.k is None
    assert torch.allclose(attn(x[:, :4], kv_cache=cache), attn(x[:, :4]), atol=1e-6)


def test_cache_respects_block_size_and_is_left_alone_on_error():
    attn = module(block_size=16)
    cache = KVCache()
    attn(randn(1, 10, 32), kv_cache=cache)
    with pytest.raises(ValueError, match=r"length 7 after 10 cached positions \(17 in all\), block size is only 16"):
        attn(randn(1, 7, 32), kv_cache=cache)
    assert len(cache) == 10
    attn(randn(1, 6, 32), kv_cache=cache)          # 16 in all: fine
    assert len(cache) == 16


def test_kv_cache_errors():
    cache = KVCache()
    cache.append(torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8))
    with pytest.raises(ValueError, match=r"holds keys of shape \(2, 4, 3, 8\).*\(1, 4, 1, 8\).*B, n_head and head_size must match"):
        cache.append(torch.zeros(1, 4, 1, 8), torch.zeros(1, 4, 1, 8))
    with pytest.raises(ValueError, match=r"one shape \(B, n_head, T, head_size\).*\(2, 4, 1, 8\).*\(2, 4, 2, 8\)"):
        cache.append(torch.zeros(2, 4, 1, 8), torch.zeros(2, 4, 2, 8))
    assert len(cache) == 3
    attn = module()
    with pytest.raises(ValueError, match="B, n_head and head_size must match"):        # a batch of 3 after a batch of 2
        filled = KVCache()
        attn(randn(2, 3, 32), kv_cache=filled)
        attn(randn(3, 1, 32), kv_cache=filled)


def test_any_object_with_len_and_append_is_a_cache():
    """Lesson 18 may bring its own cache (preallocated, say): the module only needs len() and append()."""
    class Preallocated:
        def __init__(self, B, nh, size, hs):
            self.k, self.v, self.n = torch.zeros(B, nh, size, hs), torch.zeros(B, nh, size, hs), 0

        def __len__(self):
            return self.n

        def append(self, k, v):
            T = k.size(2)
            self.k[:, :, self.n:self.n + T], self.v[:, :, self.n:self.n + T] = k, v
            self.n += T
            return self.k[:, :, :self.n], self.v[:, :, :self.n]

    attn = module()
    x = randn(2, 9, 32)
    cache = Preallocated(2, 4, 64, 8)
    outs = [attn(x[:, :4], kv_cache=cache)] + [attn(x[:, t:t + 1], kv_cache=cache) for t in range(4, 9)]
    assert torch.allclose(torch.cat(outs, dim=1), attn(x), atol=1e-5)


def test_module_moves_and_copies_cleanly():
    attn = module()
    twin = copy.deepcopy(attn).double()
    x = randn(2, 5, 32)
    assert torch.allclose(twin(x.double()).float(), attn(x), atol=1e-5)


def test_benchmark_runs_and_prints_a_ratio():
    """The benchmark prints figures (and asserts nothing about them); run it tiny."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "attention.py"), "--lengths", "16", "32",
                          "--batch", "1", "--n-embd", "32", "--n-head", "2", "--repeat", "1", "--threads", "1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().split("\n")
    assert "1 thread" in lines[0] and "ratio" in lines[1]
    assert lines[2].split()[0] == "16" and lines[3].split()[0] == "32" and lines[3].endswith("x")


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("12_causal_self_attention", {
        0: "return causal_mask(T_past + T_new)[T_past:]",                                # uses the function it must do without
        1: "return n_layer * batch * T * n_kv_head * head_size * bytes_per_number",       # keys only
        2: "q, k, v = attn.c_attn(x).split(C, dim=2)\n"                                   # forgets the mask
           "q, k, v = (t.view(B, T, n_head, head_size).transpose(1, 2) for t in (q, k, v))\n"
           "y = F.scaled_dot_product_attention(q, k, v)\n"
           "W = attn.c_proj.weight\n"
           "return torch.stack([y[:, h] @ W[:, h * head_size:(h + 1) * head_size].T for h in range(n_head)])",
        3: "p = torch.arange(T_past, T_past + T_new).unsqueeze(1)\n"                      # one key too many
           "j = torch.arange(T_past + T_new).unsqueeze(0)\n"
           "return (j <= p) & (j >= p - window)",
    })


# Section 8: grouped-query attention and rotary positions.

def gqa_reference(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """The definition: c_attn's rows cut into q (n_head heads), k and v (n_kv_head heads), each key/value
    head repeated for its group of n_head // n_kv_head query heads, F.scaled_dot_product_attention, c_proj."""
    B, T, C = x.shape
    nh, nkv, hs = attn.n_head, attn.n_kv_head, attn.head_size
    W = attn.c_attn.weight
    b = attn.c_attn.bias if attn.c_attn.bias is not None else torch.zeros(W.size(0), dtype=W.dtype)
    rows = [(0, C, nh), (C, C + nkv * hs, nkv), (C + nkv * hs, C + 2 * nkv * hs, nkv)]
    q, k, v = ((x @ W[a:z].T + b[a:z]).view(B, T, n, hs).transpose(1, 2) for a, z, n in rows)
    if attn.rotary is not None:
        q, k = attn.rotary(q), attn.rotary(k)
    k = k.unsqueeze(2).expand(B, nkv, nh // nkv, T, hs).reshape(B, nh, T, hs)      # head g repeated nh // nkv times
    v = v.unsqueeze(2).expand(B, nkv, nh // nkv, T, hs).reshape(B, nh, T, hs)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attn.c_proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_head, n_kv_head", [(8, 8), (8, 4), (8, 2), (8, 1), (6, 3)])
@pytest.mark.parametrize("rope_theta", [None, 10000.0])
def test_grouped_query_attention_equals_repeated_kv_heads(fused, n_head, n_kv_head, rope_theta):
    attn = module(48, n_head, fused=fused, n_kv_head=n_kv_head, rope_theta=rope_theta).double()
    x = randn(2, 13, 48).double()
    assert attn.c_attn.weight.shape == (48 + 2 * n_kv_head * (48 // n_head), 48)
    assert_close64(attn(x), gqa_reference(attn, x), scale=gqa_reference(attn, x).abs().max())


def test_gqa_with_torch_enable_gqa():
    attn = module(32, 8, n_kv_head=2).double()
    x = randn(2, 9, 32).double()
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split([32, 8, 8], dim=2)
    q, k, v = q.view(B, T, 8, 4).transpose(1, 2), k.view(B, T, 2, 4).transpose(1, 2), v.view(B, T, 2, 4).transpose(1, 2)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = attn.c_proj(y.transpose(1, 2).reshape(B, T, C))
    assert_close64(attn(x), expected, scale=expected.abs().max())


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("n_kv_head, rope_theta", [(2, 10000.0), (1, 500000.0), (4, None), (2, None)])
def test_cache_with_gqa_and_rope_equals_one_pass(fused, n_kv_head, rope_theta):
    attn = module(32, 4, fused=fused, n_kv_head=n_kv_head, rope_theta=rope_theta, bias=False, qkv_bias=True).double()
    x = randn(2, 20, 32).double()
    full = attn(x)
    cache = KVCache()
    parts = [attn(x[:, a:b], kv_cache=cache) for a, b in [(0, 7), (7, 8), (8, 13)] + [(t, t + 1) for t in range(13, 20)]]
    assert_close64(torch.cat(parts, dim=1), full, scale=full.abs().max())
    assert cache.k.shape == cache.v.shape == (2, n_kv_head, 20, 8)


def test_rope_positions_start_at_the_cache_length():
    attn = module(32, 4, rope_theta=10000.0)
    x = randn(1, 10, 32)
    cache = KVCache()
    attn(x[:, :6], kv_cache=cache)
    last = attn(x[:, 6:7], kv_cache=cache)
    assert torch.allclose(last, attn(x[:, :7])[:, 6:], atol=1e-5)
    assert not torch.allclose(attn(x[:, 6:7]), last, atol=1e-3)       # the same token at position 0 is not the same
    assert [n for n, _ in attn.named_parameters()] == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]
    assert list(attn.state_dict()) == ["c_attn.weight", "c_attn.bias", "c_proj.weight", "c_proj.bias"]


def test_bias_options_and_the_default_is_unchanged():
    torch.manual_seed(0)
    plain = CausalSelfAttention(32, 4, 16)
    torch.manual_seed(0)
    same = CausalSelfAttention(32, 4, 16, n_kv_head=4, rope_theta=None, qkv_bias=True)
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), same.state_dict().values()))
    assert repr(plain) == repr(same) and plain.rotary is None and "n_kv_head" not in repr(plain)
    qwen = CausalSelfAttention(32, 4, 16, bias=False, qkv_bias=True, n_kv_head=2)
    assert qwen.c_attn.bias is not None and qwen.c_proj.bias is None and qwen.c_attn.bias.shape == (32 + 2 * 16,)
    assert "n_kv_head=2" in repr(qwen)
    llama = CausalSelfAttention(32, 4, 16, bias=False)
    assert llama.c_attn.bias is None and llama.c_proj.bias is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_kv_head=3), "n_head=4 is not a multiple of n_kv_head=3"),
    (dict(n_kv_head=0), "n_kv_head must be a positive integer, got 0"),
    (dict(n_kv_head=8), "n_head=4 is not a multiple of n_kv_head=8"),
    (dict(rope_theta=0.0), "rope_theta must be a positive number or None, got 0.0"),
    (dict(rope_theta="10000"), "rope_theta must be a positive number or None, got '10000'"),
])
def test_gqa_and_rope_configuration_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CausalSelfAttention(32, 4, 16, **kwargs)
    with pytest.raises(ValueError, match="head_size = n_embd // n_head must be even, got 3"):
        CausalSelfAttention(12, 4, 16, rope_theta=10000.0)
