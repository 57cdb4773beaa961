"""Lesson 18: minillm.generation (softmax, greedy, temperature, top-k, top-p, sampling,
generate with and without a KV cache, text prompts, errors)."""
import itertools
import math
import runpy

import pytest
import torch

from exercise_tools import assert_checks_work
from minillm.generation import (TOP_P_TOLERANCE, apply_temperature, check_sampling_args, encode_prompt,
                                filter_logits, generate, generate_text, greedy, logits_to_probs, sample_next,
                                top_k_filter, top_p_filter)
from minillm.model import GPT, GPTConfig
from minillm.tokenizer import CharTokenizer

from course import ROOT


def kept(logits):
    return torch.isfinite(logits)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16))


# ----------------------------------------------------------------------------- softmax, greedy, temperature

def test_probs_are_softmax_over_the_vocabulary():
    logits = torch.randn(3, 7, 50) * 4
    assert torch.allclose(logits_to_probs(logits), torch.softmax(logits, dim=-1), atol=1e-6)
    assert torch.allclose(logits_to_probs(logits + 100), torch.softmax(logits, dim=-1), atol=1e-6)   # no overflow
    assert torch.allclose(logits_to_probs(logits).sum(-1), torch.ones(3, 7), atol=1e-6)


def test_greedy_is_the_argmax_and_takes_the_first_on_a_tie():
    logits = torch.randn(5, 13)
    assert torch.equal(greedy(logits), logits.argmax(-1, keepdim=True))
    assert greedy(torch.tensor([1.0, 4.0, 4.0, 0.0])).tolist() == [1]
    assert greedy(torch.randn(2, 3, 9)).shape == (2, 3, 1)


def test_temperature():
    z = torch.tensor([3.0, 1.5, 1.0, 0.5, -1.0])
    assert torch.equal(apply_temperature(z, 0.5), z * 2)
    assert torch.allclose(torch.softmax(apply_temperature(z, 0.5), -1),
                          torch.tensor([0.93008, 0.046306, 0.017035, 0.0062668, 0.00031201]), atol=1e-5)
    assert torch.equal(logits_to_probs(z, temperature=0), torch.tensor([1.0, 0, 0, 0, 0]))   # temperature 0 = greedy
    tie = logits_to_probs(torch.tensor([0.0, 2.0, 2.0]), temperature=0)
    assert tie.tolist() == [0.0, 1.0, 0.0]                               # the same token greedy picks
    assert torch.allclose(logits_to_probs(z, temperature=1e5), torch.full((5,), 0.2), atol=1e-4)
    entropies = [-(p * p.log()).sum().item() for p in (logits_to_probs(z, temperature=t) for t in (0.3, 0.7, 1, 2, 5))]
    assert entropies == sorted(entropies)                                # hotter is flatter
    logits = torch.randn(20, 30)
    assert torch.equal(sample_next(logits, temperature=0), greedy(logits))


@pytest.mark.parametrize("tiny", [1e-39, 1e-30, 5e-6, 9.99e-6])
def test_tiny_temperatures_are_greedy_not_nan(tiny):
    """logits / 1e-39 overflows float32 to inf (softmax: nan, multinomial: an error); any
    temperature below GREEDY_BELOW is greedy decoding instead."""
    from minillm.generation import GREEDY_BELOW
    assert tiny < GREEDY_BELOW
    logits = torch.randn(20, 30, generator=torch.Generator().manual_seed(0)) * 5
    assert torch.equal(logits_to_probs(logits, temperature=tiny), logits_to_probs(logits, temperature=0))
    assert torch.equal(sample_next(logits, temperature=tiny), greedy(logits))
    model = GPT(GPTConfig(block_size=16, vocab_size=30, n_layer=1, n_head=2, n_embd=16))
    start = torch.zeros(1, 1, dtype=torch.long)
    assert torch.equal(generate(model, start, 8, temperature=tiny), generate(model, start, 8, temperature=0))


# ----------------------------------------------------------------------------- top-k

def test_top_k_keeps_exactly_k():
    logits = torch.randn(6, 40)
    for k in range(1, 41):
        out = top_k_filter(logits, k)
        assert (kept(out).sum(-1) == k).all()
        assert torch.equal(out[kept(out)], logits[kept(out)])           # kept logits are unchanged
        threshold = logits.topk(k, dim=-1).values[:, -1:]
        assert (logits[kept(out)].view(6, k) >= threshold).all()         # and they are the k largest
    assert torch.equal(top_k_filter(logits, 1000), logits)


def test_top_k_with_ties_keeps_exactly_k_in_id_order():
    out = top_k_filter(torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0]]), 2)
    assert kept(out).tolist() == [[False, True, True, False, False]]
    assert kept(top_k_filter(torch.zeros(10), 3)).sum() == 3


# ----------------------------------------------------------------------------- top-p

def smallest_nucleus_by_brute_force(probs: list[float], p: float) -> set[int]:
    """Over all subsets: the smallest size m for which some m tokens reach p; among the
    subsets of that size, the one with the largest mass (the top m)."""
    V = len(probs)
    for m in range(1, V + 1):
        best = max(itertools.combinations(range(V), m), key=lambda s: sum(probs[i] for i in s))
        if sum(probs[i] for i in best) >= p - TOP_P_TOLERANCE:
            return set(best)
    return set(range(V))


def test_top_p_keeps_the_smallest_set_reaching_p():
    g = torch.Generator().manual_seed(0)
    for trial in range(40):
        logits = torch.randn(7, generator=g, dtype=torch.float64) * (0.3 + trial / 8)
        probs = torch.softmax(logits, -1).tolist()
        for p in (0.05, 0.3, 0.5, 0.75, 0.9, 0.99):
            got = set(torch.nonzero(kept(top_p_filter(logits, p)))[:, 0].tolist())
            assert got == smallest_nucleus_by_brute_force(probs, p), (trial, p)


def test_top_p_boundaries():
    q = torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64).log()
    for p, n in [(1e-9, 1), (0.5, 1), (0.5000001, 1), (0.501, 2), (0.8, 2), (0.81, 3), (0.95, 3), (0.951, 4), (1.0, 4)]:
        assert kept(top_p_filter(q, p)).sum().item() == n, p
    q32 = q.float()                                                      # float32 logits: 0.5 + 0.3 still reaches 0.8
    assert kept(top_p_filter(q32, 0.8)).sum().item() == 2
    assert torch.equal(top_p_filter(q32, 1.0), q32)
    shuffled = q[[2, 0, 3, 1]]                                           # order in the vocabulary does not matter
    assert kept(top_p_filter(shuffled, 0.7)).tolist() == [False, True, False, True]
    batch = torch.stack([q, q.flip(0)])                                  # (2, V): every row on its own
    assert kept(top_p_filter(batch, 0.7)).tolist() == [[True, True, False, False], [False, False, True, True]]


def test_filters_compose_in_order():
    z = torch.tensor([3.0, 1.5, 1.0, 0.5, -1.0])
    # temperature 2 flattens: [0.442, 0.209, 0.163, 0.127, 0.060]; top-p 0.8 then needs three tokens
    assert kept(filter_logits(z, temperature=2.0, top_p=0.8)).sum() == 3
    assert kept(filter_logits(z, temperature=1.0, top_p=0.8)).sum() == 2
    # top-k 3 then top-p 0.9 over the renormalised three: 0.736, 0.164 -> 0.900 reaches 0.9
    assert kept(filter_logits(z, top_k=3, top_p=0.9)).sum() == 2
    assert torch.allclose(logits_to_probs(torch.tensor([0.5, 0.3, 0.2]).log(), top_k=2), torch.tensor([0.625, 0.375, 0.0]))


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("kwargs", [{}, {"temperature": 0.7}, {"top_k": 3}, {"top_p": 0.9},
                                    {"temperature": 1.5, "top_k": 4, "top_p": 0.95}])
def test_sampled_frequencies_match_the_filtered_distribution(kwargs):
    N = 40_000
    z = torch.tensor([2.0, 1.2, 1.0, 0.3, -0.5, -2.0])
    target = logits_to_probs(z, **kwargs)
    draws = sample_next(z.expand(N, 6), generator=torch.Generator().manual_seed(0), **kwargs)
    assert draws.shape == (N, 1)
    counts = torch.bincount(draws[:, 0], minlength=6).double()
    sigma = (N * target * (1 - target)).double().sqrt()
    assert ((counts - N * target).abs() <= 4 * sigma + 1e-9).all(), (counts / N, target)
    assert (counts[target == 0] == 0).all()                              # a removed token is never drawn
    # and a chi-squared test over the kept tokens: far below the 0.1% critical value for <= 5 degrees of freedom
    live = target > 0
    chi2 = (((counts[live] - N * target[live]) ** 2) / (N * target[live])).sum().item()
    assert chi2 < 20.5


def test_sampling_is_reproducible_with_a_generator_and_keeps_shapes():
    logits = torch.randn(4, 3, 20)
    a = sample_next(logits, top_k=5, generator=torch.Generator().manual_seed(1))
    b = sample_next(logits, top_k=5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 3, 1) and torch.equal(a, b)


def test_bad_knobs_raise_clear_errors():
    with pytest.raises(ValueError, match=r"temperature must be a number >= 0 .*got -0.5"):
        check_sampling_args(temperature=-0.5)
    with pytest.raises(ValueError, match="temperature.*got nan"):
        sample_next(torch.zeros(1, 3), temperature=float("nan"))
    with pytest.raises(ValueError, match=r"top_k must be None .* integer >= 1, got 0"):
        top_k_filter(torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"top_k.*got 2.5"):
        logits_to_probs(torch.zeros(3), top_k=2.5)
    for bad in (0, 0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"top_p must be None .*\(0, 1\], got"):
            top_p_filter(torch.zeros(3), bad)
    with pytest.raises(ValueError, match="logits must be a floating-point tensor"):
        greedy(torch.tensor([1, 2, 3]))


# ----------------------------------------------------------------------------- generate

def test_generate_crops_the_context_to_the_block_size(tiny):
    lengths = []
    hook = tiny.register_forward_hook(lambda module, args, output: lengths.append(args[0].size(1)))
    try:
        prompt = torch.randint(0, 11, (3, 40))
        for use_cache in (False, True):
            out = generate(tiny, prompt, 10, temperature=0, use_cache=use_cache)
            assert out.shape == (3, 50) and torch.equal(out[:, :40], prompt)
    finally:
        hook.remove()
    assert max(lengths) == 16


def test_cached_generation_gives_the_same_tokens(tiny):
    prompt = torch.randint(0, 11, (4, 3), generator=torch.Generator().manual_seed(2))
    for n in (1, 5, 13, 14, 30):                                         # 3 + 13 = 16 fills the block exactly
        assert torch.equal(generate(tiny, prompt, n, temperature=0, use_cache=True),
                           generate(tiny, prompt, n, temperature=0, use_cache=False)), n
    for kwargs in ({"top_k": 4}, {"top_p": 0.8, "temperature": 1.3}):
        a = generate(tiny, prompt, 25, generator=torch.Generator().manual_seed(9), use_cache=True, **kwargs)
        b = generate(tiny, prompt, 25, generator=torch.Generator().manual_seed(9), use_cache=False, **kwargs)
        assert torch.equal(a, b)


def test_a_full_window_recomputes_the_cache(tiny):
    """Past the block size every cached step is a prefill of the last block_size tokens."""
    lengths = []
    hook = tiny.register_forward_hook(lambda module, args, output: lengths.append(args[0].size(1)))
    try:
        generate(tiny, torch.zeros(1, 10, dtype=torch.long), 12, temperature=0, use_cache=True)
    finally:
        hook.remove()
    # prefill 10, then 6 single steps fill the 16 positions, then 5 recomputations of 16
    assert lengths == [10] + [1] * 6 + [16] * 5


def test_generate_stops_at_a_stop_token(tiny):
    prompt = torch.randint(0, 11, (3, 4), generator=torch.Generator().manual_seed(3))
    free = generate(tiny, prompt, 20, generator=torch.Generator().manual_seed(4))[:, 4:]
    stop = sorted({free[0, 2].item(), free[1, 5].item()})
    out = generate(tiny, prompt, 20, stop=stop, generator=torch.Generator().manual_seed(4))[:, 4:]
    is_stop = torch.isin(free, torch.tensor(stop))
    ends = [int(r.nonzero()[0, 0]) if r.any() else None for r in is_stop]
    assert out.size(1) == (20 if None in ends else max(ends) + 1)
    for f, o, end in zip(free, out, ends):
        n = o.numel() if end is None else end + 1
        assert torch.equal(o[:n], f[:n]) and (o[n:] == f[n - 1]).all()
    alone = generate(tiny, prompt[:1], 20, generator=torch.Generator().manual_seed(4))[0, 4:]   # one row draws differently
    stop_id = alone[5].item()
    end = int((alone == stop_id).nonzero()[0, 0])
    single = generate(tiny, prompt[:1], 20, stop=stop_id, generator=torch.Generator().manual_seed(4))[0, 4:]
    assert torch.equal(single, alone[:end + 1])                          # one row: it ends at its stop token
    assert torch.equal(generate(tiny, prompt, 0), prompt)


def test_generate_restores_the_mode_and_needs_no_gradients(tiny):
    tiny.train()
    out = generate(tiny, torch.zeros(1, 1, dtype=torch.long), 3)
    assert tiny.training and not out.requires_grad
    tiny.eval()
    generate(tiny, torch.zeros(1, 1, dtype=torch.long), 3)
    assert not tiny.training


def test_dropout_is_off_while_generating():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=2, n_embd=16, dropout=0.5)).train()
    prompt = torch.zeros(1, 3, dtype=torch.long)
    assert torch.equal(generate(model, prompt, 10, temperature=0), generate(model, prompt, 10, temperature=0))


def test_generate_rejects_bad_input(tiny):
    one = torch.tensor([[1]])
    with pytest.raises(ValueError, match="temperature must be a number >= 0"):
        generate(tiny, one, 3, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k must be None"):
        generate(tiny, one, 3, top_k=0)
    with pytest.raises(ValueError, match=r"top_p .*\(0, 1\], got 1.5"):
        generate(tiny, one, 3, top_p=1.5)
    with pytest.raises(ValueError, match=r"the prompt is empty \(idx of shape \(1, 0\)\)"):
        generate(tiny, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="idx must be an integer tensor of token ids of shape"):
        generate(tiny, torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="idx must be an integer tensor"):
        generate(tiny, torch.tensor([[1.0]]), 3)
    with pytest.raises(ValueError, match="token id 11 in idx is out of range for a vocabulary of 11"):
        generate(tiny, torch.tensor([[1, 11]]), 3)
    with pytest.raises(ValueError, match="max_new_tokens must be an integer >= 0, got -1"):
        generate(tiny, one, -1)
    with pytest.raises(ValueError, match=r"stop must be a token id .*\[0, 11\), got 12"):
        generate(tiny, one, 3, stop=12)
    with pytest.raises(ValueError, match="stop is empty"):
        generate(tiny, one, 3, stop=[])


# ----------------------------------------------------------------------------- text prompts

def test_text_prompts_through_a_tokenizer(tiny):
    tok = CharTokenizer("abcdefghij\n")                                  # 11 characters, the tiny model's vocabulary
    assert encode_prompt(tok, "bad").tolist() == [[2, 1, 4]]   # "\n" sorts first
    text = generate_text(tiny, tok, "abc", 10, generator=torch.Generator().manual_seed(0))
    assert text.startswith("abc") and len(text) == 13 and set(text) <= set(tok.chars)
    ids = generate(tiny, torch.tensor([tok.encode("abc")]), 10, generator=torch.Generator().manual_seed(0))
    assert text == tok.decode(ids[0].tolist())
    line = generate_text(tiny, tok, "abc", 200, temperature=1.0, stop="\n", generator=torch.Generator().manual_seed(1))
    assert line.count("\n") <= 1 and (line.endswith("\n") or len(line) == 203)
    with pytest.raises(ValueError, match="the prompt is empty"):
        generate_text(tiny, tok, "", 5)
    with pytest.raises(ValueError, match="prompt must be a str"):
        encode_prompt(tok, [1, 2])
    with pytest.raises(ValueError, match=r"stop='ab' encodes to 2 tokens"):
        generate_text(tiny, tok, "abc", 5, stop="ab")
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        generate_text(tiny, tok, "xyz", 5)


# ----------------------------------------------------------------------------- the benchmark

def test_the_benchmark_runs_and_the_paths_agree():
    bench = runpy.run_path(str(ROOT / "benchmarks" / "generation.py"))
    rows = bench["compare"]((4, 12), n_layer=1, n_head=2, n_embd=16, block_size=32, prompt_len=4, threads=1)
    assert [r["new_tokens"] for r in rows] == [4, 12]
    assert all(r["same_tokens"] and r["cached_tok_s"] > 0 and r["uncached_tok_s"] > 0 for r in rows)
    with pytest.raises(ValueError, match="exceeds block_size"):
        bench["compare"]((40,), n_layer=1, n_head=2, n_embd=16, block_size=32)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("18_generation", {
        0: "return torch.softmax(logits * temperature, dim=-1)",                         # multiplies
        1: "running = probs.sort(descending=True).values.cumsum(dim=0)\n"                # no tolerance, no cap at V
           "return int((running < p).sum()) + 1",
        2: "if n_new == 0:\n    return 0\n"                                              # ignores the full window
           "if cached:\n    return min(prompt_len, block_size) + n_new - 1\n"
           "return sum(min(prompt_len + t, block_size) for t in range(n_new))",
        3: "score = torch.gather(logits, 1, previous) / penalty\n"                       # divides negatives too
           "return logits.scatter(1, previous, score)",
    })


# ----------------------------------------------------------------------------- the families: RoPE and GQA

@pytest.fixture(scope="module")
def llama_style():
    """A tiny Llama-style GPT (rotary positions, 1 key/value head for 4 query heads, RMSNorm, SwiGLU,
    untied head), with weights large enough that greedy decoding has clear favourites."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=11, n_layer=2, n_head=4, n_embd=32, bias=False, norm="rmsnorm",
                          position="rope", mlp="swiglu", n_kv_head=1, tie_embeddings=False))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.normal_(0.0, 0.3)
    return model.eval()


def test_cached_generation_with_rope_and_gqa_gives_the_same_tokens(llama_style):
    """Positions come from the caches' length: the cached path must equal the uncached one, within the
    block and after the window has slid (every step a recomputation on the last 16 tokens)."""
    prompt = torch.randint(0, 11, (3, 3), generator=torch.Generator().manual_seed(2))
    for n in (1, 5, 13, 30):
        a = generate(llama_style, prompt, n, temperature=0, use_cache=True)
        assert torch.equal(a, generate(llama_style, prompt, n, temperature=0, use_cache=False)), n
    sampled = [generate(llama_style, prompt, 25, top_k=5, generator=torch.Generator().manual_seed(9), use_cache=c)
               for c in (True, False)]
    assert torch.equal(*sampled)
    assert len(set(generate(llama_style, prompt, 13, temperature=0)[0, 3:].tolist())) > 2


def test_generate_equals_transformers_greedy_for_llama(tmp_path):
    """minillm's generate (KV cache) on a checkpoint from transformers: the same 50 greedy tokens."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=172, max_position_embeddings=64, rms_norm_eps=1e-5, bos_token_id=None,
        eos_token_id=None, pad_token_id=None)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    prompt = torch.randint(0, 97, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=50, do_sample=False, min_new_tokens=50)
    assert torch.equal(generate(ours, prompt, 50, temperature=0), theirs)
