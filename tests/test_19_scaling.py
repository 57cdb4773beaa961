"""Lesson 19: minillm.scaling (parameters, FLOPs, memory, Chinchilla, MFU, presets).

References: the real model's `sum(p.numel())` and lesson 17's parameter_breakdown, PyTorch's
FlopCounterMode, the tensors autograd saves for backward, AdamW's own state, and published
figures (GPT-2 124M/355M/774M/1558M, GPT-3 175B, Chinchilla 70B on 1.4T tokens).
"""
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from exercise_tools import assert_checks_work
from minillm.layer_norm import LayerNorm
from minillm.model import GPT, GPTConfig, parameter_breakdown
from minillm.scaling import (GPU_PEAK_FLOPS, PRESETS, PUBLISHED_PARAMS, activation_memory, compute_optimal,
                             forward_flops_per_token, mfu, param_count, params_by_part, training_flops,
                             training_flops_per_token, training_memory)

SMALL = GPTConfig(block_size=32, vocab_size=37, n_layer=2, n_head=4, n_embd=32)


def ids(B, T, V, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("sizes", [(1, 1, 8, 4, 3), (2, 4, 32, 16, 65), (3, 2, 48, 64, 257), (5, 3, 24, 7, 11)])
def test_param_count_equals_the_real_model(sizes, bias):
    L, H, C, T, V = sizes
    cfg = GPTConfig(block_size=T, vocab_size=V, n_layer=L, n_head=H, n_embd=C, bias=bias)
    model = GPT(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    assert param_count(cfg, non_embedding=True) == model.num_params(non_embedding=True)
    assert params_by_part(cfg) == parameter_breakdown(model)


@pytest.mark.parametrize("name", ["gpt-tiny-char", "gpt-small-char", "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-xl", "gpt3-175b"])
def test_presets_equal_the_model_built_on_the_meta_device(name):
    cfg = PRESETS[name]
    with torch.device("meta"):
        model = GPT(cfg)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())
    assert params_by_part(cfg) == parameter_breakdown(model)


def test_published_parameter_counts():
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt3-175b"):
        assert abs(param_count(PRESETS[name]) / PUBLISHED_PARAMS[name] - 1) < 0.01, name
    for name in PUBLISHED_PARAMS:                         # GPT-3's smaller sizes are rounded labels
        assert abs(param_count(PRESETS[name]) / PUBLISHED_PARAMS[name] - 1) < 0.02, name
    # the exact counts of Hugging Face's GPT-2 checkpoints
    assert [param_count(PRESETS[n]) for n in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")] == \
        [124_439_808, 354_823_168, 774_030_080, 1_557_611_200]
    assert param_count(GPTConfig()) == 10_770_816


def test_presets_are_the_published_shapes():
    shapes = {n: (c.n_layer, c.n_embd, c.block_size, c.vocab_size) for n, c in PRESETS.items()}
    assert shapes["gpt2"] == (12, 768, 1024, 50257) and shapes["gpt2-xl"] == (48, 1600, 1024, 50257)
    assert shapes["gpt3-175b"] == (96, 12288, 2048, 50257) and PRESETS["gpt3-175b"].n_head == 96
    assert PRESETS["gpt-small-char"] == GPTConfig()                 # lesson 20's GPU model, 10.8M
    tiny = PRESETS["gpt-tiny-char"]                                 # lesson 20's CPU model, 0.8M
    assert (tiny.n_layer, tiny.n_head, tiny.n_embd, tiny.block_size) == (4, 4, 128, 64)
    assert param_count(tiny) == 809_856
    assert all(isinstance(c, GPTConfig) for c in PRESETS.values())


def test_a_duck_typed_config_works():
    fake = SimpleNamespace(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257, bias=True)
    assert param_count(fake) == 124_439_808
    assert forward_flops_per_token(fake) == forward_flops_per_token(PRESETS["gpt2"])


# ----------------------------------------------------------------------------- FLOPs

def test_flops_by_hand():
    gpt2 = PRESETS["gpt2"]
    assert forward_flops_per_token(gpt2) == 2 * (84_934_656 + 38_597_376) + 37_748_736 == 284_812_800
    assert training_flops_per_token(gpt2) == 854_438_400
    assert forward_flops_per_token(gpt2, seq_len=1024) == forward_flops_per_token(gpt2)
    assert forward_flops_per_token(gpt2, seq_len=1) == 2 * (84_934_656 + 38_597_376) + 4 * 12 * 768
    # PaLM's / nanoGPT's 6N + 12LTC, N without the position table: within 0.2%
    palm = 6 * param_count(gpt2, non_embedding=True) + 12 * 12 * 1024 * 768
    assert abs(palm / training_flops_per_token(gpt2) - 1) < 0.002


@pytest.mark.parametrize("T", [1, 7, 32])
def test_flops_equal_pytorchs_flop_counter(T):
    torch.manual_seed(0)
    model = GPT(SMALL)
    for block in model.stack.h:
        block.attn.fused = False                          # the counter cannot see inside the fused CPU kernel
    x = ids(3, T, SMALL.vocab_size)
    with FlopCounterMode(display=False) as counter:
        model(x, x)
    assert counter.get_total_flops() == 3 * T * forward_flops_per_token(SMALL, T)
    with FlopCounterMode(display=False) as counter:
        _, loss = model(x, x)
        loss.backward()
    assert counter.get_total_flops() == 3 * T * training_flops_per_token(SMALL, T)


def test_gpt3_training_compute_is_the_papers():
    ours = training_flops_per_token(PRESETS["gpt3-175b"]) * 300e9
    assert abs(ours / 3.14e23 - 1) < 0.04                  # GPT-3 paper, Table D.1 (6ND, no attention term)
    assert training_flops(175e9, 300e9) == pytest.approx(3.15e23)


# ----------------------------------------------------------------------------- memory

def saved_bytes(model, x):
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        s = t.untyped_storage()
        if t.is_floating_point() and s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x, x)
    del out
    return sum(kept.values())


def fused_norms(model):
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LayerNorm):
                new = nn.LayerNorm(child.n_embd, eps=child.eps, bias=child.bias is not None)
                new.load_state_dict(child.state_dict())
                setattr(parent, name, new)
    return model


@pytest.mark.parametrize("B, T", [(1, 32), (4, 16)])
def test_activation_memory_equals_what_autograd_keeps(B, T):
    torch.manual_seed(0)
    x = ids(B, T, SMALL.vocab_size)
    model = GPT(SMALL)
    predicted = activation_memory(SMALL, B, T)
    ours = saved_bytes(model, x)
    fused = saved_bytes(fused_norms(model), x)
    assert 0 <= fused / predicted - 1 < 0.03              # only per-position statistics are left out
    extra = (2 * SMALL.n_layer + 1) * 2 * B * T * SMALL.n_embd * 4   # lesson 06's LayerNorm keeps 3 tensors, not 1
    assert abs(ours - predicted - extra) / ours < 0.03


def test_activation_memory_by_hand():
    assert activation_memory(GPTConfig(), 64, 256) == 2_470_510_592
    one = activation_memory(SMALL, 1, 16)
    assert activation_memory(SMALL, 5, 16) == 5 * one                # linear in the batch
    assert activation_memory(SMALL, 1, 16, bytes_per_value=2) * 2 == one
    extra = activation_memory(SMALL, 2, 16, fused_attention=False) - activation_memory(SMALL, 2, 16)
    assert extra == SMALL.n_layer * SMALL.n_head * 2 * 16 * 16 * 4   # the T x T weights of every head


def test_training_memory_states_are_16_bytes_per_parameter():
    for cfg in (SMALL, PRESETS["gpt2"], PRESETS["gpt3-175b"]):
        n = param_count(cfg)
        for bpp in (4, 2):
            m = training_memory(cfg, 1, bytes_per_param=bpp)
            assert list(m) == ["weights", "gradients", "optimizer state", "activations"]
            assert m["weights"] + m["gradients"] + m["optimizer state"] == 16 * n
            assert m["weights"] == m["gradients"] == bpp * n
            assert m["activations"] == activation_memory(cfg, 1, bytes_per_value=bpp)
    assert abs(16 * param_count(PRESETS["gpt3-175b"]) / 2.8e12 - 1) < 0.01


def test_optimizer_state_equals_adamw():
    torch.manual_seed(0)
    model = GPT(SMALL)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = ids(2, 8, SMALL.vocab_size)
    model(x, x)[1].backward()
    opt.step()
    adam = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items()
               if k in ("exp_avg", "exp_avg_sq"))
    assert adam == training_memory(SMALL, 2, 8)["optimizer state"]


# ----------------------------------------------------------------------------- Chinchilla and MFU

def test_compute_optimal_is_chinchilla():
    n, d = compute_optimal(5.76e23)
    assert abs(n / 70e9 - 1) < 0.015 and abs(d / 1.4e12 - 1) < 0.015
    assert training_flops(n, d) == pytest.approx(5.76e23, rel=1e-12)
    n2, d2 = compute_optimal(4 * 5.76e23)
    assert n2 == pytest.approx(2 * n) and d2 == pytest.approx(2 * d)    # both grow as sqrt(C)
    n3, d3 = compute_optimal(1e20, tokens_per_param=100)
    assert d3 / n3 == pytest.approx(100) and 6 * n3 * d3 == pytest.approx(1e20)


def test_mfu():
    gpt2 = PRESETS["gpt2"]
    assert mfu(150_000, gpt2, GPU_PEAK_FLOPS["A100 (bf16)"]) == pytest.approx(0.41078, abs=1e-4)
    assert mfu(0, gpt2, 1e12) == 0.0
    assert mfu(2000, gpt2, 1e12) == pytest.approx(2 * mfu(1000, gpt2, 1e12))
    assert mfu(1000, gpt2, 1e12, seq_len=256) < mfu(1000, gpt2, 1e12)   # a shorter context costs less per token
    assert GPU_PEAK_FLOPS["H100 SXM (bf16)"] == 989e12


# ----------------------------------------------------------------------------- bad input

def test_bad_configs_are_refused_naming_the_field():
    with pytest.raises(TypeError, match="expected a GPTConfig.*got a dict without n_layer"):
        param_count({"n_layer": 2})
    with pytest.raises(TypeError, match="without bias"):
        param_count(SimpleNamespace(n_layer=1, n_head=1, n_embd=4, block_size=4, vocab_size=4))
    for field, value in [("n_layer", 0), ("n_embd", 2.5), ("vocab_size", -1), ("block_size", True)]:
        fake = SimpleNamespace(n_layer=2, n_head=2, n_embd=8, block_size=8, vocab_size=10, bias=True)
        setattr(fake, field, value)
        with pytest.raises(ValueError, match=f"config.{field} must be a positive integer, got {value!r}"):
            forward_flops_per_token(fake)
    fake = SimpleNamespace(n_layer=2, n_head=3, n_embd=8, block_size=8, vocab_size=10, bias=True)
    with pytest.raises(ValueError, match="n_embd=8 is not divisible by config.n_head=3"):
        param_count(fake)


def test_bad_arguments_are_refused_naming_the_value():
    for bad in (0, 33, -1, 2.0):
        with pytest.raises(ValueError, match=f"seq_len must be an integer from 1 to the block size 32, got {bad!r}"):
            forward_flops_per_token(SMALL, bad)
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"batch_size must be a positive integer, got {bad!r}"):
            activation_memory(SMALL, bad)
    with pytest.raises(ValueError, match="bytes_per_param must be 4 .* or 2 .*got 3"):
        training_memory(SMALL, 1, bytes_per_param=3)
    with pytest.raises(ValueError, match="bytes_per_value must be a positive number, got 0"):
        activation_memory(SMALL, 1, bytes_per_value=0)
    for bad in (0, -1e20, math.nan, math.inf):
        with pytest.raises(ValueError, match=re.escape(f"compute must be a positive number, got {bad!r}")):
            compute_optimal(bad)
    with pytest.raises(ValueError, match="tokens_per_param must be a positive number, got 0"):
        compute_optimal(1e20, tokens_per_param=0)
    with pytest.raises(ValueError, match="n_tokens must be a positive number, got -5"):
        training_flops(1e6, -5)
    with pytest.raises(ValueError, match="peak_flops must be a positive number, got 0"):
        mfu(100, SMALL, 0)
    with pytest.raises(ValueError, match="tokens_per_second must be a non-negative number, got -1"):
        mfu(-1, SMALL, 1e12)


# ----------------------------------------------------------------------------- exercises

def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("19_scaling", {
        0: "return config.n_layer * batch_size * seq_len * config.n_embd * bytes_per_value",   # keys only, no values
        1: "return 6 * param_count(config) * n_tokens / (n_gpus * peak_flops * mfu) / 86_400",  # 6N: no attention term
        2: "one = training_memory(config, 1, seq_len, bytes_per_param)\n"                       # forgets the states
           "return int(memory_bytes // one['activations'])",
        3: "C = n_embd\n"                                                                        # ignores grouped-query attention
           "return n_layer * (4 * C * C + 3 * C * ffn_hidden + 2 * C) + 2 * vocab_size * C + C",
    })


def test_the_char_presets_are_lesson_20s_models():
    """scaling.PRESETS holds model sizes; training.PRESETS pairs each hardware with a model and its training
    settings. The two character models must be the same in both."""
    from minillm.training import PRESETS as TRAINING_PRESETS
    for size, hardware in (("gpt-tiny-char", "cpu"), ("gpt-small-char", "gpu")):
        fields = {k: v for k, v in TRAINING_PRESETS[hardware][0].items() if k != "dropout"}
        assert {k: getattr(PRESETS[size], k) for k in fields} == fields, size
