"""Lesson 21: the families as GPTConfig options. family_param_count against the parameters of the
built model (and, for two published models, against their published counts), kv_cache_bytes_per_token
against the bytes the real KV caches hold, llama_steps / llama_style against the options lesson 17's
config_from_llama gives a Llama checkpoint, match_params against a search over every width."""
import dataclasses

import pytest
import torch

from exercise_tools import assert_checks_work
from minillm.causal_self_attention import KVCache
from minillm.families import (LLAMA_STEPS, family_param_count, kv_cache_bytes_per_token, llama_steps, llama_style,
                              match_params, mlp_width)
from minillm.model import GPT, GPTConfig, config_from_llama

TINY = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128)

OPTIONS = [
    {},
    dict(norm="rmsnorm"),
    dict(position="rope"),
    dict(mlp="swiglu"),
    dict(mlp="swiglu", mlp_hidden=100),
    dict(mlp="gelu_exact", mlp_hidden=70),
    dict(n_kv_head=1),
    dict(n_kv_head=2, bias=False),
    dict(bias=False, qkv_bias=True),
    dict(bias=True, qkv_bias=False),
    dict(tie_embeddings=False),
    dict(bias=False, norm="layernorm"),
    dict(bias=False, norm="rmsnorm", position="rope", mlp="swiglu", n_kv_head=2, tie_embeddings=False, qkv_bias=True),
]


@pytest.mark.parametrize("options", OPTIONS)
@pytest.mark.parametrize("sizes", [dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32),
                                   dict(vocab_size=11, block_size=9, n_layer=3, n_head=2, n_embd=12)])
def test_param_count_is_the_models(sizes, options):
    config = GPTConfig(**sizes, **options)
    model = GPT(config)
    parts = family_param_count(config)
    assert sum(parts.values()) == model.num_params(non_embedding=False) == sum(p.numel() for p in model.parameters())
    # part by part, against the parameters' names
    by_name = {"token embedding": "embedding.token.", "position embedding": "embedding.position.",
               "attention": ".attn.", "MLP": ".mlp.", "LM head": "lm_head."}
    named = dict(model.named_parameters())          # a tied head is listed once, as the token embedding
    for part, key in by_name.items():
        assert parts[part] == sum(p.numel() for n, p in named.items() if key in n or n.startswith(key)), part
    assert parts["norms"] == sum(p.numel() for n, p in named.items() if ".ln_" in n or n.startswith("ln_f."))


def test_param_count_of_published_models():
    """GPT-2 small (124,439,808) and Llama 3 8B (8,030,261,248), from their published sizes; no model built."""
    gpt2 = GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    assert sum(family_param_count(gpt2).values()) == 124_439_808
    llama3 = llama_style(GPTConfig(block_size=8192, vocab_size=128256, n_layer=32, n_head=32, n_embd=4096),
                         n_kv_head=8, mlp_hidden=14336)
    assert sum(family_param_count(llama3).values()) == 8_030_261_248


def test_mlp_width_defaults():
    assert mlp_width(TINY) == 512
    assert mlp_width(dataclasses.replace(TINY, mlp="swiglu")) == 341
    assert mlp_width(dataclasses.replace(TINY, mlp="swiglu", mlp_hidden=7)) == 7
    assert GPT(dataclasses.replace(TINY, mlp="swiglu")).stack.h[0].mlp.c_fc.out_features == 341


@pytest.mark.parametrize("n_kv_head", [None, 1, 2, 4])
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_kv_bytes_are_the_caches_bytes(n_kv_head, position):
    config = GPTConfig(vocab_size=29, block_size=24, n_layer=3, n_head=4, n_embd=32, n_kv_head=n_kv_head,
                       position=position)
    model = GPT(config).eval()
    caches = [KVCache() for _ in range(config.n_layer)]
    with torch.no_grad():
        model(torch.randint(0, 29, (2, 10), generator=torch.Generator().manual_seed(0)), kv_caches=caches)
        model(torch.randint(0, 29, (2, 1), generator=torch.Generator().manual_seed(1)), kv_caches=caches)
    total = sum(t.numel() * t.element_size() for c in caches for t in (c.k, c.v))
    assert total == 2 * 11 * kv_cache_bytes_per_token(config, 4)                    # 2 sequences of 11 tokens
    assert kv_cache_bytes_per_token(config, 2) * 2 == kv_cache_bytes_per_token(config, 4)
    with torch.no_grad():                                                          # the same in bfloat16
        caches = [KVCache() for _ in range(config.n_layer)]
        model.to(torch.bfloat16)(torch.zeros(1, 5, dtype=torch.long), kv_caches=caches)
    assert sum(t.numel() * t.element_size() for c in caches for t in (c.k, c.v)) == 5 * kv_cache_bytes_per_token(config, 2)


def test_kv_bytes_by_hand_and_bad_input():
    assert kv_cache_bytes_per_token(GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768), 2) \
        == 2 * 12 * 768 * 2 == 36_864
    with pytest.raises(ValueError, match="dtype_bytes must be a positive integer.*got 0"):
        kv_cache_bytes_per_token(TINY, 0)
    with pytest.raises(TypeError, match="expected a GPTConfig, got dict"):
        kv_cache_bytes_per_token({"n_layer": 2})


def test_llama_steps_change_one_option_each():
    steps = llama_steps(TINY, n_kv_head=2)
    assert [f for f, _ in steps] == ["start"] + [f for f, _ in LLAMA_STEPS]
    assert steps[0][1] is TINY
    for (_, before), (field, after) in zip(steps, steps[1:]):
        changed = [f.name for f in dataclasses.fields(GPTConfig) if getattr(before, f.name) != getattr(after, f.name)]
        assert changed == [field]
    assert steps[-1][1] == llama_style(TINY, n_kv_head=2)


def test_llama_style_is_what_a_llama_checkpoint_loads_as():
    hf = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
          "num_hidden_layers": 3, "intermediate_size": 172, "vocab_size": 101, "max_position_embeddings": 128,
          "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False}
    gpt2_sizes = GPTConfig(vocab_size=101, block_size=128, n_layer=3, n_head=4, n_embd=64)
    assert llama_style(gpt2_sizes, n_kv_head=2, mlp_hidden=172) == config_from_llama(hf)
    assert llama_style(gpt2_sizes).n_kv_head == 4 and llama_style(gpt2_sizes).mlp_hidden is None
    with pytest.raises(ValueError, match="n_head=4 is not a multiple of n_kv_head=3"):
        llama_style(gpt2_sizes, n_kv_head=3)


@pytest.mark.parametrize("multiple_of", [1, 4, 64])
@pytest.mark.parametrize("target", [809_856, 1_000_000, 600_000])
def test_match_params_finds_the_closest_width(target, multiple_of):
    start = llama_style(TINY, n_kv_head=2)
    count = lambda h: sum(family_param_count(dataclasses.replace(start, mlp_hidden=h)).values())   # noqa: E731
    best = min(range(multiple_of, 4000, multiple_of), key=lambda h: (abs(count(h) - target), h))   # every width
    got = match_params(start, target, multiple_of=multiple_of, tolerance=1.0)
    assert abs(count(got.mlp_hidden) - target) == abs(count(best) - target)
    assert got.mlp_hidden % multiple_of == 0
    assert dataclasses.replace(got, mlp_hidden=None) == dataclasses.replace(start, mlp_hidden=None)


def test_match_params_lesson_figures_and_refusals():
    got = match_params(llama_style(TINY, n_kv_head=2), 809_856, multiple_of=4)
    assert got.mlp_hidden == 388 and GPT(got).num_params(non_embedding=False) == 810_368
    with pytest.raises(ValueError, match=r"within 1.00% of target=100,000.*mlp_hidden=1, gives"):
        match_params(llama_style(TINY, n_kv_head=2), 100_000)
    with pytest.raises(ValueError, match="within 0.01% of target=809,856"):
        match_params(llama_style(TINY, n_kv_head=2), 809_856, multiple_of=64, tolerance=1e-4)
    for bad in (dict(target=0), dict(target=1.5), dict(multiple_of=0), dict(tolerance=-1)):
        args = dict(target=800_000) | bad
        with pytest.raises(ValueError, match=f"match_params: {next(iter(bad))} must be"):
            match_params(TINY, **args)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("21_modern_families", {
        0: "k = budget // kv_cache_bytes_per_token(dataclasses.replace(config, n_kv_head=1), dtype_bytes)\n"   # ignores divisibility
           "return min(k, config.n_head)",
        1: "return multiple_of * (int(2 * 4 * n_embd / 3) // multiple_of)",                                  # rounds down
        2: "return dataclasses.replace(llama_style(config, n_kv_head, mlp_hidden), bias=True, rope_theta=1e6, norm_eps=1e-6)",
    })
