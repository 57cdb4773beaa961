"""Lesson 16: minillm.stack (TransformerStack, init_gpt2_)."""
import math

import pytest
import torch
import torch.nn as nn

from exercise_tools import assert_checks_work
from minillm.block import Block
from minillm.causal_self_attention import KVCache
from minillm.layer_norm import LayerNorm, RMSNorm
from minillm.stack import TransformerStack, init_gpt2_


def test_equals_the_blocks_applied_in_order():
    torch.manual_seed(0)
    stack = TransformerStack(n_layer=3, n_embd=24, n_head=3, block_size=16)
    blocks = [Block(24, 3, block_size=16) for _ in range(3)]
    for block, original in zip(blocks, stack.h):
        block.load_state_dict(original.state_dict())
    x = torch.randn(2, 11, 24)
    expected = blocks[2](blocks[1](blocks[0](x)))
    assert torch.allclose(stack(x), expected, atol=1e-6)
    reversed_order = blocks[0](blocks[1](blocks[2](x)))
    assert not torch.allclose(stack(x), reversed_order, atol=1e-3)


def test_gpt2_names_and_parameter_count():
    stack = TransformerStack(n_layer=2, n_embd=16, n_head=4, block_size=8)
    names = [name for name, _ in stack.named_parameters()]
    assert names[:2] == ["h.0.ln_1.weight", "h.0.ln_1.bias"] and names[-1] == "h.1.mlp.c_proj.bias"
    assert sum(p.numel() for p in stack.parameters()) == 2 * (12 * 16 ** 2 + 13 * 16)
    small = TransformerStack(n_layer=3, n_embd=16, n_head=4, block_size=8, bias=False)
    assert sum(p.numel() for p in small.parameters()) == 3 * (12 * 16 ** 2 + 2 * 16)


def test_dropout_reaches_every_block():
    stack = TransformerStack(n_layer=2, n_embd=16, n_head=4, block_size=8, dropout=0.25)
    assert all(b.attn.attn_dropout.p == 0.25 and b.mlp.dropout.p == 0.25 for b in stack.h)
    x = torch.randn(2, 8, 16)
    assert not torch.allclose(stack(x), stack(x))
    stack.eval()
    assert torch.equal(stack(x), stack(x))


def test_kv_caches_step_by_step_equal_all_at_once():
    torch.manual_seed(1)
    stack = TransformerStack(n_layer=3, n_embd=32, n_head=4, block_size=16).eval()
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        full = stack(x)
        caches = [KVCache() for _ in range(3)]
        chunks = [stack(x[:, a:b], kv_caches=caches) for a, b in [(0, 4), (4, 5), (5, 12), (12, 13)]]
    assert torch.allclose(torch.cat(chunks, dim=1), full, atol=1e-5)
    assert [len(c) for c in caches] == [13, 13, 13]


def test_init_gpt2_statistics():
    torch.manual_seed(2)
    n_layer = 6
    stack = TransformerStack(n_layer=n_layer, n_embd=256, n_head=4, block_size=8)
    with torch.no_grad():
        for p in stack.parameters():                      # garbage first, so that every value must be set
            p.normal_(3.0, 2.0)
    assert init_gpt2_(stack, n_layer) is None
    by_kind = {}
    for name, p in stack.named_parameters():
        by_kind.setdefault(name.split(".", 2)[2], []).append(p.detach().flatten())
    kinds = {k: torch.cat(v) for k, v in by_kind.items()}
    for k in ("attn.c_attn.weight", "mlp.c_fc.weight"):
        assert abs(kinds[k].mean()) < 1e-4 and abs(kinds[k].std() - 0.02) < 2e-4
    for k in ("attn.c_proj.weight", "mlp.c_proj.weight"):
        assert abs(kinds[k].std() - 0.02 / math.sqrt(2 * n_layer)) < 1e-4
    for k in ("attn.c_attn.bias", "attn.c_proj.bias", "mlp.c_fc.bias", "mlp.c_proj.bias", "ln_1.bias", "ln_2.bias"):
        assert torch.all(kinds[k] == 0), k
    assert torch.all(kinds["ln_1.weight"] == 1) and torch.all(kinds["ln_2.weight"] == 1)


def test_init_gpt2_on_torch_modules_embeddings_and_rmsnorm():
    torch.manual_seed(3)
    model = nn.ModuleDict({"wte": nn.Embedding(1000, 64), "ln": nn.LayerNorm(64), "rms": RMSNorm(64),
                           "plain": nn.LayerNorm(64, elementwise_affine=False), "mine": LayerNorm(64, bias=False),
                           "c_proj": nn.Linear(256, 64)})
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(7.0)
    init_gpt2_(model, n_layer=2)
    assert abs(model["wte"].weight.std() - 0.02) < 1e-3
    assert torch.all(model["ln"].weight == 1) and torch.all(model["ln"].bias == 0)
    assert torch.all(model["rms"].weight == 1) and torch.all(model["mine"].weight == 1)
    assert abs(model["c_proj"].weight.std() - 0.01) < 5e-4 and torch.all(model["c_proj"].bias == 0)


def test_init_is_reproducible_from_the_seed():
    stacks = []
    for _ in range(2):
        stack = TransformerStack(n_layer=2, n_embd=16, n_head=2, block_size=8)
        torch.manual_seed(7)
        init_gpt2_(stack, 2)
        stacks.append(stack)
    assert all(torch.equal(a, b) for a, b in zip(stacks[0].parameters(), stacks[1].parameters()))


def final_rms(n_layer: int, scaled: bool, C: int = 64, seed: int = 0) -> float:
    torch.manual_seed(seed)
    stack = TransformerStack(n_layer=n_layer, n_embd=C, n_head=4, block_size=16).eval()
    init_gpt2_(stack, n_layer)
    if not scaled:
        with torch.no_grad():
            for name, p in stack.named_parameters():
                if name.endswith("c_proj.weight"):
                    p.mul_(math.sqrt(2 * n_layer))
    x = torch.randn(4, 16, C, generator=torch.Generator().manual_seed(seed)) * 0.028
    with torch.no_grad():
        return stack(x).pow(2).mean().sqrt().item()


def test_the_scaling_keeps_the_stream_at_one_scale_whatever_the_depth():
    plain = [final_rms(n, scaled=False) for n in (2, 8, 32)]
    scaled = [final_rms(n, scaled=True) for n in (2, 8, 32)]
    assert plain[0] < plain[1] < plain[2] and plain[2] / plain[0] > 2.5       # a random walk: about sqrt(16) = 4
    assert max(scaled) / min(scaled) < 1.25


def test_bad_arguments_give_clear_errors():
    stack = TransformerStack(n_layer=2, n_embd=16, n_head=4, block_size=8)
    with pytest.raises(ValueError, match=r"n_layer=2 blocks, but kv_caches holds 1 caches"):
        stack(torch.randn(1, 4, 16), kv_caches=[KVCache()])
    for bad in (0, -1, 2.0, True, "3"):
        with pytest.raises(ValueError, match=rf"TransformerStack: n_layer must be a positive integer, got {bad!r}"):
            TransformerStack(n_layer=bad, n_embd=16, n_head=4, block_size=8)
        with pytest.raises(ValueError, match=rf"init_gpt2_: n_layer must be a positive integer, got {bad!r}"):
            init_gpt2_(stack, n_layer=bad)
    with pytest.raises(ValueError, match=r"Block expects x of shape \(B, T, n_embd\) with n_embd=16"):
        stack(torch.randn(1, 4, 8))


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("16_stack", {
        0: "return std / math.sqrt(n_layer)",                                             # one residual layer per block
        1: "return math.sqrt(x0_rms ** 2 + n_updates * update_rms ** 2)",                 # ignores `scaled`
        2: "hidden = [x]\nfor block in self.h:\n    x = block(x)\n    hidden.append(x)\nreturn x, hidden",  # caches ignored
        3: "init_gpt2_(module, n_layer=1)",                                               # small, not zero
    })


def test_block_options_reach_every_block_and_the_initialisation_scales_swiglu():
    from minillm.layer_norm import RMSNorm
    from minillm.mlp import SwiGLU
    torch.manual_seed(0)
    stack = TransformerStack(6, 64, 4, 32, bias=False, norm="rmsnorm", n_kv_head=2, rope_theta=10000.0,
                             mlp="swiglu", mlp_hidden=192)
    init_gpt2_(stack, 6)
    for block in stack.h:
        assert isinstance(block.ln_1, RMSNorm) and isinstance(block.mlp, SwiGLU) and block.attn.n_kv_head == 2
    projections = torch.cat([b.mlp.c_proj.weight.flatten() for b in stack.h] + [b.attn.c_proj.weight.flatten() for b in stack.h])
    gates = torch.cat([b.mlp.c_gate.weight.flatten() for b in stack.h])
    assert abs(projections.std().item() - 0.02 / math.sqrt(12)) < 0.0005
    assert abs(gates.std().item() - 0.02) < 0.0005
    assert all(torch.equal(b.ln_1.weight, torch.ones(64)) for b in stack.h)
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_kv_heads'"):
        TransformerStack(2, 64, 4, 32, n_kv_heads=2)
