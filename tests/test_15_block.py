"""Lesson 15: minillm.block (the transformer block), against PyTorch's nn.TransformerEncoderLayer."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.block import Block
from minillm.causal_mask import causal_mask
from minillm.causal_self_attention import KVCache
from minillm.residual import PreNormResidual
from numerics import assert_close64


def randomize(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Random values everywhere, norms included, so that no parameter can hide behind 1 or 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale_of_a_norm = name.startswith("ln_") and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * std + (1.0 if scale_of_a_norm else 0.0))
    return module


def torch_reference(block: Block, n_head: int, bias: bool = True) -> nn.TransformerEncoderLayer:
    C = block.n_embd
    ref = nn.TransformerEncoderLayer(C, n_head, dim_feedforward=4 * C, dropout=0.0, batch_first=True, norm_first=True,
                                     activation=lambda t: F.gelu(t, approximate="tanh"), bias=bias)
    with torch.no_grad():
        pairs = [(ref.norm1, block.ln_1), (ref.norm2, block.ln_2), (ref.self_attn.out_proj, block.attn.c_proj),
                 (ref.linear1, block.mlp.c_fc), (ref.linear2, block.mlp.c_proj)]
        for theirs, ours in pairs:
            theirs.weight.copy_(ours.weight)
            if bias:
                theirs.bias.copy_(ours.bias)
        ref.self_attn.in_proj_weight.copy_(block.attn.c_attn.weight)
        if bias:
            ref.self_attn.in_proj_bias.copy_(block.attn.c_attn.bias)
    return ref


@pytest.mark.parametrize("C, n_head, T, bias", [(16, 4, 5, True), (32, 2, 9, True), (24, 3, 1, True), (16, 4, 7, False)])
def test_equals_pytorch_transformer_layer_in_values_and_gradients(C, n_head, T, bias):
    # In float64: in float32 a gradient here adds terms of size 25 to reach 0.08, so it is known only
    # to ~1e-5, and where it lands depends on the CPU's summation order (atol=1e-5, rtol=1e-4 failed
    # on an Intel Xeon and on an AMD EPYC).
    block = randomize(Block(C, n_head, block_size=16, bias=bias), seed=C + T).double()
    ref = torch_reference(block, n_head, bias).double()
    x = torch.randn(3, T, C, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    upstream = torch.randn(3, T, C, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours, theirs = block(x1), ref(x2, src_mask=~causal_mask(T), is_causal=True)
    assert_close64(ours, theirs, what="output")
    (ours * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    assert_close64(x1.grad, x2.grad, what="x.grad")
    assert_close64(block.attn.c_attn.weight.grad, ref.self_attn.in_proj_weight.grad, what="c_attn.weight.grad")
    assert_close64(block.mlp.c_proj.weight.grad, ref.linear2.weight.grad, what="mlp.c_proj.weight.grad")
    assert_close64(block.ln_2.weight.grad, ref.norm2.weight.grad, what="ln_2.weight.grad")


def test_is_two_pre_norm_residuals_in_order():
    block = randomize(Block(16, 4, block_size=8))
    first, second = PreNormResidual(16, block.attn), PreNormResidual(16, block.mlp)
    first.ln.load_state_dict(block.ln_1.state_dict())
    second.ln.load_state_dict(block.ln_2.state_dict())
    x = torch.randn(2, 8, 16)
    with torch.no_grad():
        assert torch.allclose(block(x), second(first(x)), atol=1e-6)
        swapped = PreNormResidual(16, block.attn)(PreNormResidual(16, block.mlp)(x))   # MLP first: not the block
        assert not torch.allclose(block(x), swapped, atol=1e-3)


def test_gpt2_names_and_shapes():
    block = Block(768, 12, block_size=1024)
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {
        "ln_1.weight": (768,), "ln_1.bias": (768,),
        "attn.c_attn.weight": (2304, 768), "attn.c_attn.bias": (2304,),
        "attn.c_proj.weight": (768, 768), "attn.c_proj.bias": (768,),
        "ln_2.weight": (768,), "ln_2.bias": (768,),
        "mlp.c_fc.weight": (3072, 768), "mlp.c_fc.bias": (3072,),
        "mlp.c_proj.weight": (768, 3072), "mlp.c_proj.bias": (768,),
    }
    assert sum(p.numel() for p in block.parameters()) == 7_087_872


@pytest.mark.parametrize("C, n_head", [(4, 1), (16, 4), (48, 6), (64, 8)])
@pytest.mark.parametrize("bias", [True, False])
def test_parameter_count_by_hand(C, n_head, bias):
    block = Block(C, n_head, block_size=8, bias=bias)
    assert sum(p.numel() for p in block.parameters()) == 12 * C * C + (13 if bias else 2) * C
    assert all(not name.endswith("bias") for name, _ in block.named_parameters()) or bias


def test_shape_in_is_shape_out_and_the_past_does_not_see_the_future():
    block = randomize(Block(16, 4, block_size=12)).eval()
    x = torch.randn(2, 12, 16)
    base = block(x)
    assert base.shape == x.shape
    for t in range(11):
        changed = x.clone()
        changed[:, t + 1:] += torch.randn(2, 11 - t, 16) * 5
        after = block(changed)
        assert torch.equal(after[:, : t + 1], base[:, : t + 1])
        assert not torch.allclose(after[:, t + 1], base[:, t + 1])


def test_the_updates_do_not_depend_on_the_streams_scale():
    """Pre-norm: each sublayer reads a normalized copy, so scaling the stream by s (with
    zero norm biases) leaves the first update unchanged, and a huge stream stays finite."""
    block = randomize(Block(16, 4, block_size=8))
    with torch.no_grad():
        block.ln_1.bias.zero_()
        x = torch.randn(2, 8, 16)
        # in float64, so that only the norm's eps separates the two (it weighs ~1e-5 relative to a
        # token's variance, and only on the unscaled stream), not the CPU's float32 rounding
        block64, x64 = copy.deepcopy(block).double(), x.double()
        for s in (10.0, 1e3, 1e6):
            assert torch.allclose(block64.attn(block64.ln_1(s * x64)), block64.attn(block64.ln_1(x64)), atol=1e-4)
        big = block(1e6 * x)
        assert torch.isfinite(big).all() and torch.allclose(big / 1e6, x, atol=1e-4)


def test_kv_cache_step_by_step_equals_all_at_once():
    # in float64: chunks of other lengths take other float32 kernels, which sum in their own order
    block = randomize(Block(24, 3, block_size=16)).eval().double()
    x = torch.randn(2, 14, 24).double()
    with torch.no_grad():
        full = block(x)
        cache = KVCache()
        chunks = [block(x[:, a:b], kv_cache=cache) for a, b in [(0, 5), (5, 6), (6, 11), (11, 12), (12, 14)]]
    assert len(cache) == 14
    assert_close64(torch.cat(chunks, dim=1), full)


def test_dropout_only_in_training():
    block = Block(16, 4, block_size=8, dropout=0.3)
    clean = Block(16, 4, block_size=8)
    clean.load_state_dict(block.state_dict())
    x = torch.randn(2, 8, 16)
    block.train()
    assert not torch.allclose(block(x), block(x))
    block.eval()
    assert torch.equal(block(x), block(x)) and torch.allclose(block(x), clean(x), atol=1e-6)


def test_bad_inputs_give_clear_errors():
    block = Block(16, 4, block_size=8)
    with pytest.raises(ValueError, match=r"Block expects x of shape \(B, T, n_embd\) with n_embd=16, got shape \(5, 16\)"):
        block(torch.randn(5, 16))
    with pytest.raises(ValueError, match=r"n_embd=16, got shape \(2, 5, 12\)"):
        block(torch.randn(2, 5, 12))
    with pytest.raises(TypeError, match="Block expects a floating-point tensor, got list"):
        block([[1.0] * 16])
    with pytest.raises(TypeError, match="got dtype torch.int64"):
        block(torch.ones(1, 4, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="length 9.*block size is only 8"):
        block(torch.randn(1, 9, 16))
    with pytest.raises(ValueError, match="n_embd=30 is not divisible by n_head=4"):
        Block(30, 4, block_size=8)
    with pytest.raises(ValueError, match="dropout must be in"):
        Block(16, 4, block_size=8, dropout=1.5)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("15_block", {
        0: "return (4 + 2 * expansion) * n_embd ** 2 + (9 + expansion) * n_embd",     # forgets bias=False
        1: "a = block.attn(block.ln_1(x))\nreturn a, block.mlp(block.ln_2(x))",         # the MLP reads the old stream
        2: "return x + self.attn(self.ln_1(x)) + self.mlp(x)",                          # the MLP reads the raw stream
        3: "if not self.training or self.p_drop == 0.0:\n    return super().forward(x)\n"   # keeps the MLP with probability 0.5
           "keep = 1.0 - self.p_drop\n"
           "x = x + (torch.rand(x.size(0), 1, 1) < keep).to(x.dtype) / keep * self.attn(self.ln_1(x))\n"
           "return x + (torch.rand(x.size(0), 1, 1) < 0.5).to(x.dtype) / keep * self.mlp(self.ln_2(x))",
    })


# The options of newer models: RMSNorm, grouped-query attention, rotary positions, SwiGLU.

def test_default_block_is_gpt2s_parameter_for_parameter():
    from minillm.causal_self_attention import CausalSelfAttention
    from minillm.layer_norm import LayerNorm
    from minillm.mlp import MLP
    torch.manual_seed(0)
    block = Block(32, 4, block_size=16)
    torch.manual_seed(0)
    parts = [LayerNorm(32), CausalSelfAttention(32, 4, 16), LayerNorm(32), MLP(32)]
    expected = {f"{prefix}.{k}": v for prefix, part in zip(["ln_1", "attn", "ln_2", "mlp"], parts)
                for k, v in part.state_dict().items()}
    got = block.state_dict()
    assert list(got) == list(expected) and all(torch.equal(got[k], expected[k]) for k in got)


def test_llama_style_block_parts_and_count():
    from minillm.layer_norm import RMSNorm
    from minillm.mlp import SwiGLU
    block = Block(64, 8, block_size=32, bias=False, norm="rmsnorm", norm_eps=1e-6, n_kv_head=2,
                  rope_theta=500000.0, mlp="swiglu", mlp_hidden=160)
    assert isinstance(block.ln_1, RMSNorm) and block.ln_1.eps == 1e-6 and isinstance(block.mlp, SwiGLU)
    assert block.attn.n_kv_head == 2 and block.attn.rotary.base == 500000.0
    assert sum(p.numel() for p in block.parameters()) == 64 * (64 + 2 * 16) + 64 * 64 + 3 * 64 * 160 + 2 * 64
    assert Block(64, 8, 32, mlp="swiglu").mlp.hidden == 8 * 64 // 3
    qwen = Block(64, 8, 32, bias=False, qkv_bias=True, norm="rmsnorm")
    assert qwen.attn.c_attn.bias is not None and qwen.attn.c_proj.bias is None and qwen.mlp.c_fc.bias is None


@pytest.mark.parametrize("fused", [True, False])
def test_llama_style_block_cache_equals_one_pass_and_is_causal(fused):
    from minillm.causal_self_attention import KVCache
    torch.manual_seed(2)
    block = Block(32, 4, 16, norm="rmsnorm", n_kv_head=1, rope_theta=10000.0, mlp="swiglu").double().eval()
    block.attn.fused = fused
    x = torch.randn(2, 12, 32, dtype=torch.float64)
    full = block(x)
    cache = KVCache()
    steps = torch.cat([block(x[:, :5], kv_cache=cache)] + [block(x[:, t:t + 1], kv_cache=cache) for t in range(5, 12)], 1)
    assert torch.allclose(steps, full, atol=1e-10)
    changed = x.clone()
    changed[:, 7] += 1.0
    assert torch.equal(block(changed)[:, :7], full[:, :7])


def test_block_options_refuse_unknown_names():
    with pytest.raises(ValueError, match=r"norm must be one of \('layernorm', 'rmsnorm'\), got 'batchnorm'"):
        Block(32, 4, 16, norm="batchnorm")
    with pytest.raises(ValueError, match=r"mlp must be one of \('gelu', 'gelu_exact', 'swiglu'\), got 'relu'"):
        Block(32, 4, 16, mlp="relu")
    with pytest.raises(ValueError, match="n_head=4 is not a multiple of n_kv_head=3"):
        Block(32, 4, 16, n_kv_head=3)
