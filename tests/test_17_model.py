"""Lesson 17: minillm.model (GPTConfig, GPT, the tied LM head, the loss, GPT-2 loading).

References: the parts of lessons 05-16 composed by hand, F.cross_entropy, parameter counts
by formula (GPT-2 small's 124,439,808), and, when `transformers` is installed, Hugging
Face's GPT2LMHeadModel itself.
"""
import dataclasses
import json
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.causal_self_attention import KVCache
from minillm.model import (GPT, GPTConfig, config_from_gpt2, gpt2_key_to_minillm, parameter_breakdown,
                           state_dict_from_gpt2)
from numerics import assert_close, assert_close64, summands

TINY = GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=4, n_embd=32)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Values of order one everywhere (norm scales around 1), so that no weight hides behind 0 or 1
    and the logits are far from uniform."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm_scale = ("ln_" in name) and name.endswith("weight")
            p.copy_(torch.randn(p.shape, generator=g) * (0.1 if is_norm_scale else 0.3) + (1.0 if is_norm_scale else 0.0))
    return model


def ids(B, T, V, seed=1):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- GPTConfig

def test_config_defaults_are_the_course_model():
    c = GPTConfig()
    assert (c.block_size, c.vocab_size, c.n_layer, c.n_head, c.n_embd, c.dropout, c.bias) == (256, 65, 6, 6, 384, 0.0, True)
    assert [f.type for f in dataclasses.fields(GPTConfig)][:7] in (
        ["int", "int", "int", "int", "int", "float", "bool"], [int, int, int, int, int, float, bool])


@pytest.mark.parametrize("field, value", [("block_size", 0), ("vocab_size", -3), ("n_layer", 0), ("n_head", 0),
                                          ("n_embd", 2.5), ("n_layer", True), ("vocab_size", "65")])
def test_config_rejects_bad_sizes_naming_the_field_and_value(field, value):
    with pytest.raises(ValueError, match=f"GPTConfig: {field} must be a positive integer, got {value!r}"):
        GPTConfig(**{field: value})


def test_config_rejects_other_bad_values():
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=6"):
        GPTConfig(n_embd=100, n_head=6)
    for bad in (1.0, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match=f"dropout must be a probability in \\[0, 1\\), got {bad!r}"):
            GPTConfig(dropout=bad)
    with pytest.raises(ValueError, match="bias must be True or False, got 1"):
        GPTConfig(bias=1)


def test_config_is_frozen_and_replace_checks_again():
    c = GPTConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n_layer = 12
    assert dataclasses.replace(c, dropout=0.1).dropout == 0.1
    with pytest.raises(ValueError, match="n_layer must be a positive integer, got 0"):
        dataclasses.replace(c, n_layer=0)


# ----------------------------------------------------------------------------- GPT

def test_forward_equals_the_parts_composed_by_hand():
    torch.manual_seed(0)
    model = randomize(GPT(TINY)).eval()
    idx, targets = ids(3, 11, TINY.vocab_size), ids(3, 11, TINY.vocab_size, seed=2)
    x = model.embedding(idx)                                 # (B, T, C)
    for block in model.stack.h:
        x = block(x)
    x = model.ln_f(x)
    expected = x @ model.embedding.token.weight.T            # (B, T, V): the tied head
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 11, TINY.vocab_size)
    # the head's product may take another float32 kernel than lm_head's: equal to a few eps32 of sum|terms|
    assert_close(logits, expected, summands(x, model.embedding.token.weight.T))
    assert torch.allclose(loss, F.cross_entropy(expected.reshape(-1, TINY.vocab_size), targets.reshape(-1)), atol=1e-5)
    assert model(idx)[1] is None


def test_head_is_tied_to_the_token_embedding():
    model = GPT(TINY)
    assert model.lm_head.weight is model.embedding.token.weight
    assert model.lm_head.bias is None
    names = [n for n, _ in model.named_parameters()]
    assert "embedding.token.weight" in names and "lm_head.weight" not in names     # listed once
    # the gradient of the shared table is the sum of both uses
    idx, targets = ids(2, 8, TINY.vocab_size), ids(2, 8, TINY.vocab_size, seed=3)
    model(idx, targets)[1].backward()
    grad = model.embedding.token.weight.grad.clone()
    untied = GPT(TINY)
    untied.load_state_dict(model.state_dict())
    untied.lm_head.weight = nn.Parameter(model.embedding.token.weight.detach().clone())
    untied(idx, targets)[1].backward()
    assert torch.allclose(grad, untied.embedding.token.weight.grad + untied.lm_head.weight.grad, atol=1e-6)


def test_initialisation_is_gpt2s():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=64, vocab_size=500, n_layer=4, n_head=4, n_embd=128))
    std = lambda t: t.std().item()
    assert abs(std(model.embedding.token.weight) - 0.02) < 1e-3
    assert abs(std(model.stack.h[0].attn.c_attn.weight) - 0.02) < 1e-3
    assert abs(std(model.stack.h[0].mlp.c_proj.weight) - 0.02 / math.sqrt(8)) < 5e-4
    assert torch.all(model.stack.h[1].mlp.c_fc.bias == 0) and torch.all(model.ln_f.weight == 1)


def test_untrained_loss_is_about_ln_vocab_size():
    torch.manual_seed(0)
    for V in (65, 1000):
        model = GPT(GPTConfig(block_size=32, vocab_size=V, n_layer=2, n_head=2, n_embd=64)).eval()
        _, loss = model(ids(8, 32, V), ids(8, 32, V, seed=5))
        assert abs(loss.item() - math.log(V)) < 0.1


def test_uniform_logits_give_exactly_ln_v():
    model = GPT(TINY)
    with torch.no_grad():
        model.ln_f.weight.zero_()                           # ln_f outputs 0, so every logit is 0
        model.ln_f.bias.zero_()
    _, loss = model(ids(2, 5, TINY.vocab_size), ids(2, 5, TINY.vocab_size, seed=9))
    assert loss.item() == pytest.approx(math.log(TINY.vocab_size), abs=1e-6)


def test_targets_of_minus_one_are_ignored():
    model = randomize(GPT(TINY)).eval()
    idx, targets = ids(2, 10, TINY.vocab_size), ids(2, 10, TINY.vocab_size, seed=4)
    masked = targets.clone()
    masked[:, 6:] = -1
    _, loss = model(idx, masked)
    logits, _ = model(idx)
    assert torch.allclose(loss, F.cross_entropy(logits[:, :6].reshape(-1, TINY.vocab_size), targets[:, :6].reshape(-1)), atol=1e-6)


def test_targets_that_are_all_ignored_raise_instead_of_a_nan_loss():
    model = GPT(TINY)
    idx = ids(2, 10, TINY.vocab_size)
    with pytest.raises(ValueError, match="targets: every target is -1"):
        model(idx, torch.full_like(idx, -1))
    one = torch.full_like(idx, -1)
    one[1, 3] = 5                                            # a single real target is enough
    assert torch.isfinite(model(idx, one)[1])


def test_sequence_longer_than_block_size_names_both_numbers():
    model = GPT(GPTConfig(block_size=256, vocab_size=10, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="^Cannot forward sequence of length 300, block size is only 256$"):
        model(torch.zeros(1, 300, dtype=torch.long))
    model(torch.zeros(1, 256, dtype=torch.long))             # exactly the block size is fine
    caches = [KVCache()]
    model(torch.zeros(1, 250, dtype=torch.long), kv_caches=caches)
    with pytest.raises(ValueError, match="length 7 starting at position 250 .*block size is only 256"):
        model(torch.zeros(1, 7, dtype=torch.long), kv_caches=caches)


def test_bad_inputs_give_clear_errors():
    model = GPT(TINY)
    with pytest.raises(ValueError, match=r"idx, a tensor of token ids of shape \(B, T\).*got shape \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(2, 0\)"):
        model(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="got a list"):
        model([[1, 2, 3]])
    with pytest.raises(ValueError, match="token id 37 is out of range for a vocabulary of 37 ids"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match=r"targets must have the shape of idx, \(1, 3\).*got shape \(1, 2\)"):
        model(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="targets must hold integer token ids, got a tensor of dtype torch.float32"):
        model(torch.tensor([[1, 2, 3]]), torch.tensor([[1.0, 2.0, 3.0]]))
    with pytest.raises(ValueError, match=r"target id 40 at index \(0, 2\) is out of range for a vocabulary of 37 ids"):
        model(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 2, 40]]))
    with pytest.raises(ValueError, match="target id -2"):
        model(torch.tensor([[1, 2, 3]]), torch.tensor([[-2, 2, 3]]))
    with pytest.raises(TypeError, match="GPT needs a GPTConfig, got dict"):
        GPT({"n_layer": 2})


def test_kv_caches_give_the_logits_of_one_pass():
    # in float64: steps of other lengths take other float32 kernels, which sum in their own order
    model = randomize(GPT(TINY), seed=3).eval().double()
    idx = ids(2, 12, TINY.vocab_size)
    caches = [KVCache() for _ in range(TINY.n_layer)]
    with torch.no_grad():
        full, _ = model(idx)
        steps = [model(idx[:, :5], kv_caches=caches)[0]] + [model(idx[:, t:t + 1], kv_caches=caches)[0] for t in range(5, 12)]
    assert_close64(torch.cat(steps, dim=1), full)
    with pytest.raises(ValueError, match="n_layer=2 blocks, but kv_caches holds 1"):
        model(idx, kv_caches=[KVCache()])


def test_dropout_acts_in_training_only():
    model = GPT(dataclasses.replace(TINY, dropout=0.5))
    idx = ids(2, 8, TINY.vocab_size)
    model.train()
    a, b = model(idx)[0], model(idx)[0]
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


def test_without_bias():
    model = GPT(dataclasses.replace(TINY, bias=False))
    assert all(not name.endswith("bias") for name, _ in model.named_parameters())
    C, L, V, T = 32, 2, 37, 16
    assert model.num_params(non_embedding=False) == L * (12 * C * C + 2 * C) + C + V * C + T * C


# ----------------------------------------------------------------------------- counting parameters

@pytest.mark.parametrize("cfg", [TINY, GPTConfig(), GPTConfig(block_size=8, vocab_size=10, n_layer=2, n_head=2, n_embd=16)])
def test_num_params_by_formula(cfg):
    C, L, V, T = cfg.n_embd, cfg.n_layer, cfg.vocab_size, cfg.block_size
    total = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    model = GPT(cfg)
    assert model.num_params(non_embedding=False) == total
    assert model.num_params() == total - T * C
    assert sum(parameter_breakdown(model).values()) == total


def test_gpt2_sizes_on_the_meta_device():
    sizes = {(12, 12, 768): 124_439_808, (24, 16, 1024): 354_823_168, (36, 20, 1280): 774_030_080,
             (48, 25, 1600): 1_557_611_200}
    for (L, H, C), total in sizes.items():
        with torch.device("meta"):
            model = GPT(GPTConfig(block_size=1024, vocab_size=50257, n_layer=L, n_head=H, n_embd=C))
        assert model.num_params(non_embedding=False) == total
    with torch.device("meta"):
        small = GPT(GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768))
    assert small.num_params() == 123_653_376                      # nanoGPT's "123.65M"
    assert parameter_breakdown(small) == {"token embedding (= LM head)": 38_597_376, "position embedding": 786_432,
                                          "attention": 28_348_416, "MLP": 56_669_184, "layer norms": 38_400}


def test_parameter_breakdown_finds_an_untied_head_and_refuses_strangers():
    model = GPT(TINY)
    model.lm_head.weight = nn.Parameter(torch.zeros(TINY.vocab_size, TINY.n_embd))
    assert parameter_breakdown(model)["LM head (untied)"] == TINY.vocab_size * TINY.n_embd
    model.extra = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="does not know where the parameter 'extra.weight' belongs"):
        parameter_breakdown(model)


# ----------------------------------------------------------------------------- GPT-2's names

def gpt2_checkpoint(model: GPT, prefix: str = "transformer.") -> tuple[dict, dict]:
    """(config.json, tensors) as Hugging Face stores them: GPT-2's names, Conv1D weights (in, out)."""
    c = model.config
    config = {"model_type": "gpt2", "n_positions": c.block_size, "n_ctx": c.block_size, "vocab_size": c.vocab_size,
              "n_layer": c.n_layer, "n_head": c.n_head, "n_embd": c.n_embd, "activation_function": "gelu_new",
              "layer_norm_epsilon": 1e-5, "n_inner": None}
    sd = model.state_dict()
    tensors = {prefix + "wte.weight": sd["embedding.token.weight"], prefix + "wpe.weight": sd["embedding.position.weight"],
               prefix + "ln_f.weight": sd["ln_f.weight"], prefix + "ln_f.bias": sd["ln_f.bias"]}
    for i in range(c.n_layer):
        for part in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            w, b = sd[f"stack.h.{i}.{part}.weight"], sd[f"stack.h.{i}.{part}.bias"]
            tensors[f"{prefix}h.{i}.{part}.weight"] = w if part.startswith("ln") else w.t().contiguous()
            tensors[f"{prefix}h.{i}.{part}.bias"] = b
        tensors[f"{prefix}h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, c.block_size, c.block_size))   # old files' mask
    return config, tensors


def test_gpt2_key_map():
    assert gpt2_key_to_minillm("transformer.h.3.attn.c_attn.weight") == ("stack.h.3.attn.c_attn.weight", True)
    assert gpt2_key_to_minillm("h.3.attn.c_attn.bias") == ("stack.h.3.attn.c_attn.bias", False)
    assert gpt2_key_to_minillm("h.10.mlp.c_proj.weight") == ("stack.h.10.mlp.c_proj.weight", True)
    assert gpt2_key_to_minillm("h.0.ln_2.weight") == ("stack.h.0.ln_2.weight", False)
    assert gpt2_key_to_minillm("wte.weight") == ("embedding.token.weight", False)
    assert gpt2_key_to_minillm("transformer.wpe.weight") == ("embedding.position.weight", False)
    assert gpt2_key_to_minillm("ln_f.bias") == ("ln_f.bias", False)
    for skipped in ("h.0.attn.bias", "transformer.h.5.attn.masked_bias", "lm_head.weight"):
        assert gpt2_key_to_minillm(skipped) is None
    for unknown in ("h.0.attn.q_proj.weight", "transformer.h.x.ln_1.weight", "model.embed_tokens.weight"):
        with pytest.raises(ValueError, match=f"unexpected tensor '{unknown}' in the GPT-2 checkpoint"):
            gpt2_key_to_minillm(unknown)


def test_config_from_gpt2():
    assert config_from_gpt2({"n_positions": 1024, "vocab_size": 50257, "n_layer": 12, "n_head": 12, "n_embd": 768}) == \
        GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    assert config_from_gpt2({}) == GPTConfig(block_size=1024, vocab_size=50257, n_layer=12, n_head=12, n_embd=768)
    assert config_from_gpt2({"n_ctx": 512, "n_embd": 64, "n_head": 4}).block_size == 512
    assert config_from_gpt2({}, dropout=0.1).dropout == 0.1
    assert config_from_gpt2({}).mlp == config_from_gpt2({"activation_function": "gelu_pytorch_tanh"}).mlp == "gelu"
    assert config_from_gpt2({"activation_function": "gelu"}).mlp == "gelu_exact"      # HF's "gelu" is the exact one
    for bad, match in [({"activation_function": "relu"}, "activation_function='relu'.*tanh approximation"),
                       ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon=1e-06"),
                       ({"n_inner": 1000}, "n_inner=1000.*expands by 4"),
                       ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx=True"),
                       ({"tie_word_embeddings": False}, "tie_word_embeddings=False"),
                       ({"model_type": "llama"}, "describes a 'llama' model, not GPT-2")]:
        with pytest.raises(ValueError, match=match):
            config_from_gpt2(bad)


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_state_dict_from_gpt2_round_trip(prefix):
    model = randomize(GPT(TINY), seed=7).eval()
    config, tensors = gpt2_checkpoint(model, prefix)
    state = state_dict_from_gpt2(tensors)
    assert state["stack.h.1.mlp.c_fc.weight"].shape == (4 * 32, 32)          # (out, in) after the transpose
    assert torch.equal(state["stack.h.1.mlp.c_fc.weight"], model.stack.h[1].mlp.c_fc.weight)
    fresh = GPT(config_from_gpt2(config))
    fresh.load_state_dict({**state, "lm_head.weight": state["embedding.token.weight"]})
    idx = ids(2, 9, TINY.vocab_size)
    assert torch.allclose(fresh.eval()(idx)[0], model(idx)[0], atol=1e-6)


def test_state_dict_from_gpt2_refuses_an_untied_head():
    _, tensors = gpt2_checkpoint(GPT(TINY))
    tensors["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    state_dict_from_gpt2(tensors)                                             # a tied copy is fine
    tensors["lm_head.weight"][0, 0] += 1.0
    with pytest.raises(ValueError, match="lm_head.weight differs from wte.weight"):
        state_dict_from_gpt2(tensors)


# ----------------------------------------------------------------------------- GPT.from_gpt2, with files

def write_checkpoint(folder, config: dict, tensors: dict) -> None:
    from safetensors.torch import save_file
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))


def test_from_gpt2_loads_a_hand_written_checkpoint(tmp_path):
    pytest.importorskip("safetensors")
    model = randomize(GPT(TINY), seed=11).eval()
    config, tensors = gpt2_checkpoint(model)
    write_checkpoint(tmp_path, config, tensors)
    loaded = GPT.from_gpt2(tmp_path)
    assert not loaded.training and loaded.config == TINY
    assert loaded.lm_head.weight is loaded.embedding.token.weight
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    # one weight by hand: the fused q, k, v projection of block 1 is the file's, transposed
    assert torch.equal(loaded.stack.h[1].attn.c_attn.weight, tensors["transformer.h.1.attn.c_attn.weight"].T)
    idx = ids(2, 16, TINY.vocab_size)
    assert torch.allclose(loaded(idx)[0], model(idx)[0], atol=1e-6)


def test_from_gpt2_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist.*hf download openai-community/gpt2"):
        GPT.from_gpt2(tmp_path)
    pytest.importorskip("safetensors")
    config, tensors = gpt2_checkpoint(GPT(TINY))
    del tensors["transformer.h.1.ln_2.bias"]
    write_checkpoint(tmp_path, config, tensors)
    with pytest.raises(ValueError, match=r"does not match its config.json: 1 of the model's tensors missing \['stack.h.1.ln_2.bias'\]"):
        GPT.from_gpt2(tmp_path)
    config, tensors = gpt2_checkpoint(GPT(TINY))
    write_checkpoint(tmp_path, {**config, "n_layer": 1}, tensors)
    with pytest.raises(ValueError, match="12 tensors without a place in the model"):
        GPT.from_gpt2(tmp_path)
    write_checkpoint(tmp_path, {**config, "n_positions": 8}, tensors)
    with pytest.raises(ValueError, match=r"embedding.position.weight: the checkpoint's tensor has shape \(16, 32\), the model's \(8, 32\)"):
        GPT.from_gpt2(tmp_path)


def test_from_gpt2_without_safetensors_says_what_to_install(tmp_path, monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_safetensors(name, *args, **kwargs):
        if name.startswith("safetensors"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr(builtins, "__import__", no_safetensors)
    with pytest.raises(ImportError, match="needs the safetensors package: pip install safetensors"):
        GPT.from_gpt2(tmp_path)


def test_safetensors_is_imported_only_inside_from_gpt2():
    import ast
    import minillm.model
    tree = ast.parse(open(minillm.model.__file__, encoding="utf-8").read())
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert top_level <= {"json", "math", "re", "dataclasses", "pathlib", "torch", "minillm"}, top_level
    lazy = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)} - {
        node.module for node in tree.body if isinstance(node, ast.ImportFrom)}
    assert lazy == {"safetensors.torch"}


# ----------------------------------------------------------------------------- against Hugging Face's GPT-2

def test_equals_hugging_face_gpt2(tmp_path):
    """A randomly initialised GPT2LMHeadModel from `transformers` (no download), saved with
    save_pretrained and loaded with GPT.from_gpt2: the same logits and the same greedy text."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    hf_config = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                        bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    hf = randomize(transformers.GPT2LMHeadModel(hf_config), seed=5).eval()
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    ours = GPT.from_gpt2(tmp_path)
    assert ours.num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())

    idx = ids(3, 32, 97, seed=8)
    # compared in float64: HF's Conv1D multiplies by W where we multiply by W^T, another float32
    # kernel with another summation order, and greedy decoding turns a near tie into another token
    hf, ours = hf.double(), ours.double()
    with torch.no_grad():
        theirs_logits, our_logits = hf(idx).logits, ours(idx)[0]
    assert theirs_logits.abs().max() > 1.0                       # far from uniform: the test can see a difference
    assert_close64(our_logits, theirs_logits)

    def greedy(next_logits, prompt, steps):
        for _ in range(steps):
            prompt = torch.cat([prompt, next_logits(prompt)[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
        return prompt

    prompt = idx[:, :4]
    with torch.no_grad():
        theirs_text = greedy(lambda x: hf(x).logits, prompt, 28)
        our_text = greedy(lambda x: ours(x)[0], prompt, 28)
    assert torch.equal(our_text, theirs_text)
    assert len(set(our_text[0, 4:].tolist())) > 3                # a real continuation, not one token repeated


# ----------------------------------------------------------------------------- exercises

def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("17_model", {
        0: "return (torch.logsumexp(logits, dim=0) - logits[torch.arange(len(targets)), targets]).mean()",  # wrong axis
        1: "C = n_embd\n"                                                                  # counts the tied head twice
           "return 2 * vocab_size * C + block_size * C + n_layer * (12 * C * C + 13 * C) + 2 * C",
        2: "name = key.removeprefix('transformer.')\n"                                     # forgets the projections
           "if name == 'wte.weight':\n    return 'embedding.token.weight', False\n"
           "if name == 'wpe.weight':\n    return 'embedding.position.weight', False\n"
           "if name.startswith('h.'):\n    return 'stack.' + name, name.endswith(('c_attn.weight', 'c_fc.weight'))\n"
           "return name, False",
        3: "return config_from_llama({**hf_config, 'model_type': 'llama'})",                    # ignores the window
    })


# ----------------------------------------------------------------------------- the families: config options

LLAMA_STYLE = dict(bias=False, norm="rmsnorm", norm_eps=1e-6, position="rope", rope_theta=500000.0, mlp="swiglu",
                   mlp_hidden=88, n_kv_head=2, tie_embeddings=False)


def test_default_config_builds_exactly_todays_gpt2_parameters():
    """Names, shapes and initialisation of a GPT-2 config are those of the model before the options
    existed (lesson 20's checkpoints load): the same seed gives the same tensors as the parts built by hand."""
    from minillm.input_embedding import InputEmbedding
    from minillm.layer_norm import LayerNorm
    from minillm.stack import TransformerStack, init_gpt2_
    torch.manual_seed(3)
    model = GPT(TINY)
    torch.manual_seed(3)
    emb = InputEmbedding(37, 16, 32)
    stack = TransformerStack(2, 32, 4, 16)
    ln_f = LayerNorm(32)
    head = nn.Linear(32, 37, bias=False)
    head.weight = emb.token.weight
    parts = nn.ModuleDict(dict(embedding=emb, stack=stack, ln_f=ln_f, lm_head=head))
    init_gpt2_(parts, 2)
    ours, theirs = model.state_dict(), parts.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert repr(TINY) == "GPTConfig(block_size=16, vocab_size=37, n_layer=2, n_head=4, n_embd=32, dropout=0.0, bias=True)"
    assert dataclasses.asdict(TINY)["norm"] == "layernorm" and GPTConfig(**dataclasses.asdict(TINY)) == TINY


def test_llama_style_config_builds_the_chosen_parts():
    from minillm.layer_norm import RMSNorm
    from minillm.mlp import SwiGLU
    config = dataclasses.replace(TINY, **LLAMA_STYLE)
    model = GPT(config)
    assert not hasattr(model.embedding, "position") and isinstance(model.ln_f, RMSNorm) and model.ln_f.eps == 1e-6
    assert model.lm_head.weight is not model.embedding.token.weight
    block = model.stack.h[0]
    assert isinstance(block.mlp, SwiGLU) and block.mlp.hidden == 88 and block.attn.n_kv_head == 2
    assert block.attn.rotary.base == 500000.0 and model.stack.h[1].attn.rotary is block.attn.rotary   # one table
    C, kv = 32, 2 * 8
    per_block = C * (C + 2 * kv) + C * C + 3 * C * 88 + 2 * C
    assert model.num_params() == model.num_params(non_embedding=False) == 2 * per_block + C + 2 * 37 * C
    assert "LM head (untied)" in parameter_breakdown(model)
    assert sum(parameter_breakdown(model).values()) == model.num_params(non_embedding=False)
    assert "position='rope'" in repr(config) and "n_kv_head=2" in repr(config) and "qkv_bias" not in repr(config)


@pytest.mark.parametrize("fused", [True, False])
def test_llama_style_model_cache_equals_one_pass(fused):
    model = randomize(GPT(dataclasses.replace(TINY, **LLAMA_STYLE))).double().eval()
    for block in model.stack.h:
        block.attn.fused = fused
    idx = ids(2, 16, 37, seed=4)
    caches = [KVCache() for _ in range(2)]
    with torch.no_grad():
        full = model(idx)[0]
        pieces = [model(idx[:, :5], kv_caches=caches)[0]] + [model(idx[:, t:t + 1], kv_caches=caches)[0] for t in range(5, 16)]
    assert_close64(torch.cat(pieces, dim=1), full, scale=full.abs().max())
    assert caches[0].k.shape == (2, 2, 16, 8)


@pytest.mark.parametrize("field, value, message", [
    ("norm", "batchnorm", "norm must be one of ('layernorm', 'rmsnorm'), got 'batchnorm'"),
    ("position", "sinusoidal", "position must be one of ('learned', 'rope'), got 'sinusoidal'"),
    ("mlp", "relu", "mlp must be one of ('gelu', 'gelu_exact', 'swiglu'), got 'relu'"),
    ("norm_eps", 0.0, "norm_eps must be a positive number, got 0.0"),
    ("rope_theta", -1.0, "rope_theta must be a positive number, got -1.0"),
    ("mlp_hidden", 0, "mlp_hidden must be a positive integer or None, got 0"),
    ("n_kv_head", 3, "n_head=4 is not a multiple of n_kv_head=3"),
    ("n_kv_head", 2.0, "n_kv_head must be a positive integer or None, got 2.0"),
    ("qkv_bias", 1, "qkv_bias must be True or False or None, got 1"),
    ("tie_embeddings", "yes", "tie_embeddings must be True or False, got 'yes'"),
])
def test_config_options_are_checked_naming_the_field_and_value(field, value, message):
    with pytest.raises(ValueError, match="^GPTConfig: " + re.escape(message)):
        dataclasses.replace(TINY, **{field: value})


def test_rope_needs_an_even_head_size():
    with pytest.raises(ValueError, match="head size n_embd // n_head must be even, got 3"):
        GPTConfig(n_embd=12, n_head=4, position="rope")


# ----------------------------------------------------------------------------- GPT.from_pretrained against transformers

FAMILY_VOCAB, FAMILY_POSITIONS = 101, 128


def hf_family(family: str, tie: bool, seed: int = 0):
    """A tiny random Hugging Face model of the family, built locally (no download), with weights of
    order 0.2 so that its logits are far from uniform and greedy decoding has clear favourites."""
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=FAMILY_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=172, max_position_embeddings=FAMILY_POSITIONS,
                  rms_norm_eps=1e-5, tie_word_embeddings=tie, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common, rope_theta=500000.0))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common, rope_theta=1000000.0))
    else:                                    # "gpt2" (the tanh GELU) or "gpt2-exact-gelu"
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=FAMILY_VOCAB, n_positions=FAMILY_POSITIONS, n_embd=64, n_layer=2, n_head=4,
            bos_token_id=None, eos_token_id=None,
            activation_function="gelu" if family == "gpt2-exact-gelu" else "gelu_new"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith(("transformer.ln", "transformer.h")) and ".ln_" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("weight") else 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def save(model, folder, as_bin: bool):
    """save_pretrained to folder; as_bin: the weights as pytorch_model.bin instead of model.safetensors."""
    model.save_pretrained(folder)
    if as_bin:
        from safetensors.torch import load_file
        weights = load_file(str(folder / "model.safetensors"))
        (folder / "model.safetensors").unlink()
        torch.save(weights, folder / "pytorch_model.bin")
    return folder


def greedy_with_cache(model: GPT, prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding through minillm's KV caches: the prompt once, then one token at a time."""
    caches = [KVCache() for _ in range(model.config.n_layer)]
    out, new = prompt, prompt
    with torch.no_grad():
        for _ in range(steps):
            logits = model(new, kv_caches=caches)[0]
            new = logits[:, -1].argmax(dim=-1, keepdim=True)
            out = torch.cat([out, new], dim=1)
    return out


# The tolerance of the logits, compared in float64: both sides compute the same function in float64 except
# the rotary tables, which both hold to float32 precision (transformers computes its angles in float32
# even in a float64 model; minillm rounds float64 angles to float32), so the logits agree to a few float32
# units of their scale. Measured: 2e-7 of max|logit| on this model; a wrong pairing of the rotary
# dimensions or of the grouped heads is off by 1e-1 or more.
ROPE_REL = 1e-5


@pytest.mark.parametrize("family, tie", [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True),
                                         ("gpt2", True), ("gpt2-exact-gelu", True)])
@pytest.mark.parametrize("as_bin", [False, True])
def test_from_pretrained_equals_transformers(tmp_path, family, tie, as_bin):
    pytest.importorskip("safetensors")
    hf = hf_family(family, tie)
    ours = GPT.from_pretrained(save(hf, tmp_path, as_bin))
    assert not ours.training
    assert ours.num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())
    assert (ours.lm_head.weight is ours.embedding.token.weight) == tie
    idx = ids(3, 40, FAMILY_VOCAB, seed=8)
    with torch.no_grad():
        theirs64, ours64 = hf.double()(idx).logits, ours.double()(idx)[0]
    assert theirs64.abs().max() > 1.0                                # far from uniform: a difference would show
    rel = 1e-10 if family.startswith("gpt2") else ROPE_REL
    assert_close64(ours64, theirs64, rel=rel, scale=theirs64.abs().max())

    hf.float(), ours.float()
    prompt = idx[:2, :6]
    with torch.no_grad():
        theirs_text = hf.generate(prompt, max_new_tokens=50, do_sample=False, min_new_tokens=50)
    our_text = greedy_with_cache(ours, prompt, 50)
    assert theirs_text.shape == our_text.shape == (2, 56)
    assert torch.equal(our_text, theirs_text)
    assert len(set(our_text[0, 6:].tolist())) > 5                     # a real continuation, not one token repeated


def test_from_pretrained_refuses_what_it_cannot_compute(tmp_path):
    pytest.importorskip("safetensors")
    hf = hf_family("llama", tie=False)
    save(hf, tmp_path, as_bin=False)
    config = json.loads((tmp_path / "config.json").read_text())

    def with_config(**changes):
        (tmp_path / "config.json").write_text(json.dumps({**config, **changes}))
        return tmp_path

    for changes, message in [
            (dict(model_type="mistral"), "model_type='mistral', which GPT.from_pretrained cannot load: it knows 'gpt2', 'llama', 'qwen2'"),
            (dict(rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}), "config.json sets rope_parameters="),
            (dict(rope_scaling={"type": "linear", "factor": 2.0}), "config.json sets rope_scaling="),
            (dict(hidden_act="gelu"), "config.json sets hidden_act='gelu', which minillm cannot load"),
            (dict(head_dim=32), "config.json sets head_dim=32"),
            (dict(attention_bias=True), "config.json sets attention_bias=True"),
            (dict(use_sliding_window=True), "config.json sets use_sliding_window=True"),
            (dict(layer_types=["full_attention", "sliding_attention"]), "config.json sets layer_types=")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            GPT.from_pretrained(with_config(**changes))
    with_config()
    GPT.from_pretrained(tmp_path)                                     # the unchanged folder loads
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="holds no weights: GPT.from_pretrained reads model.safetensors"):
        GPT.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        GPT.from_pretrained(tmp_path / "nowhere")


def test_from_pretrained_names_a_missing_or_unknown_tensor(tmp_path):
    from safetensors.torch import load_file, save_file
    hf = hf_family("qwen2", tie=False)
    save(hf, tmp_path, as_bin=False)
    weights = load_file(str(tmp_path / "model.safetensors"))
    partial = {k: v for k, v in weights.items() if k != "model.layers.1.self_attn.v_proj.bias"}
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model.layers.1.self_attn.v_proj.bias is missing"):
        GPT.from_pretrained(tmp_path)
    no_norm = {k: v for k, v in weights.items() if k != "model.norm.weight"}
    save_file(no_norm, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"1 of the model's tensors missing \['ln_f.weight'\]"):
        GPT.from_pretrained(tmp_path)
    save_file({**weights, "model.layers.0.mlp.extra.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="unexpected tensor 'model.layers.0.mlp.extra.weight'"):
        GPT.from_pretrained(tmp_path)


def test_from_pretrained_reads_shards(tmp_path):
    from safetensors.torch import load_file, save_file
    hf = hf_family("llama", tie=True)
    save(hf, tmp_path, as_bin=False)
    weights = load_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "model.safetensors").unlink()
    names = sorted(weights)
    halves = {"model-00001-of-00002.safetensors": names[:len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in halves.items():
        save_file({k: weights[k] for k in keys}, str(tmp_path / shard))
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}))
    ours = GPT.from_pretrained(tmp_path)
    idx = ids(1, 12, FAMILY_VOCAB)
    with torch.no_grad():
        assert torch.allclose(ours(idx)[0], hf(idx).logits, atol=1e-4)
