"""Lesson 04: minillm.position_embedding (learned positions, sinusoidal encoding, the block-size error)."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn

from exercise_tools import assert_checks_work
from minillm.position_embedding import (LearnedPositionEmbedding, RotaryEmbedding, SinusoidalPositionEmbedding,
                                        apply_rope, check_positions, rope_cos_sin, rotate_half, sinusoidal_encoding)
from numerics import assert_close, assert_close64

KINDS = [LearnedPositionEmbedding, SinusoidalPositionEmbedding]


def direct_formula(block_size, d, base=10000.0):
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(...), one number at a time."""
    return torch.tensor([[math.sin(p / base ** (2 * (j // 2) / d)) if j % 2 == 0 else
                          math.cos(p / base ** (2 * (j // 2) / d)) for j in range(d)] for p in range(block_size)],
                        dtype=torch.float64)


@pytest.mark.parametrize("block_size, d", [(1, 2), (7, 4), (50, 6), (128, 64), (16, 384)])
def test_sinusoidal_matches_the_direct_formula(block_size, d):
    pe = sinusoidal_encoding(block_size, d)
    assert pe.shape == (block_size, d) and pe.dtype == torch.float32
    assert torch.allclose(pe.double(), direct_formula(block_size, d), atol=1e-6)


def test_sinusoidal_hand_worked_rows():
    pe = sinusoidal_encoding(3, 4)
    expected = [[0.0, 1.0, 0.0, 1.0], [0.8415, 0.5403, 0.0100, 0.99995], [0.9093, -0.4161, 0.0200, 0.9998]]
    assert torch.allclose(pe, torch.tensor(expected), atol=1e-4)
    assert torch.allclose(sinusoidal_encoding(2, 4, base=100.0)[1], torch.tensor([math.sin(1), math.cos(1),
                                                                                    math.sin(0.1), math.cos(0.1)]))


def test_sinusoidal_is_bounded_and_accurate_far_out():
    pe = sinusoidal_encoding(100_001, 16)
    assert pe.abs().max() <= 1.0 and torch.isfinite(pe).all()
    assert torch.allclose(pe.double().norm(dim=1), torch.full((100_001,), math.sqrt(8.0), dtype=torch.float64), atol=1e-5)
    far = torch.tensor([math.sin(100_000 / 10000 ** (2 * (j // 2) / 16)) if j % 2 == 0 else
                        math.cos(100_000 / 10000 ** (2 * (j // 2) / 16)) for j in range(16)], dtype=torch.float64)
    assert torch.allclose(pe[-1].double(), far, atol=1e-6)


def test_sinusoidal_dot_product_depends_only_on_distance():
    pe = sinusoidal_encoding(200, 32).double()
    dots = pe @ pe.T
    for k in (0, 1, 5, 50):
        diagonal = dots.diagonal(k)
        assert torch.allclose(diagonal, diagonal[0].expand_as(diagonal), atol=1e-5)
    omega = 10000.0 ** (-torch.arange(0, 32, 2, dtype=torch.float64) / 32)
    assert dots[10, 17].item() == pytest.approx(torch.cos(7 * omega).sum().item(), abs=1e-5)
    assert dots[0, 0] == pytest.approx(16.0) and (dots[0, 1:] < 16.0).all()


@pytest.mark.parametrize("n_embd", [1, 3, 385])
def test_sinusoidal_needs_an_even_size(n_embd):
    with pytest.raises(ValueError, match=rf"n_embd must be even .* got {n_embd}"):
        sinusoidal_encoding(8, n_embd)
    with pytest.raises(ValueError, match=rf"got {n_embd}"):
        SinusoidalPositionEmbedding(8, n_embd)


@pytest.mark.parametrize("cls", KINDS)
def test_forward_shapes_and_start(cls):
    emb = cls(block_size=16, n_embd=6)
    assert emb(16).shape == (16, 6) and emb(1).shape == (1, 6) and emb(0).shape == (0, 6)
    whole = emb(16)
    for start, T in [(0, 5), (3, 4), (15, 1), (10, 6), (16, 0)]:
        assert torch.equal(emb(T, start=start), whole[start:start + T])
    assert torch.equal(emb(4, 2), whole[2:6])                              # start given by position
    assert torch.equal(emb(np.int64(3)), whole[:3])                        # numpy integers are fine


def test_learned_is_a_parameter_table_like_gpt2():
    torch.manual_seed(0)
    emb = LearnedPositionEmbedding(1024, 768)
    assert isinstance(emb.weight, nn.Parameter) and emb.weight.shape == (1024, 768)
    assert [name for name, _ in emb.named_parameters()] == ["weight"]
    assert abs(emb.weight.std().item() - 0.02) < 2e-4 and abs(emb.weight.mean().item()) < 2e-4
    assert repr(emb) == "LearnedPositionEmbedding(block_size=1024, n_embd=768)"


def test_learned_equals_nn_embedding_at_arange_in_values_and_gradients():
    torch.manual_seed(1)
    mine, ref = LearnedPositionEmbedding(12, 5), nn.Embedding(12, 5)
    with torch.no_grad():
        ref.weight.copy_(mine.weight)
    target = torch.randn(7, 5)
    ((mine(7, start=3) - target) ** 2).sum().backward()
    ((ref(torch.arange(3, 10)) - target) ** 2).sum().backward()
    assert torch.equal(mine(7, start=3), ref(torch.arange(3, 10)))
    assert torch.allclose(mine.weight.grad, ref.weight.grad, atol=1e-7)
    assert mine.weight.grad[:3].abs().sum() == 0 and mine.weight.grad[10:].abs().sum() == 0   # unused positions


def test_sinusoidal_module_is_a_buffer_without_parameters():
    emb = SinusoidalPositionEmbedding(64, 8)
    assert list(emb.parameters()) == [] and "weight" in dict(emb.named_buffers())
    assert list(emb.state_dict()) == []                                    # recomputed, not saved
    assert torch.equal(emb(64), sinusoidal_encoding(64, 8))
    assert not emb(5).requires_grad
    assert emb.to(torch.float64)(3).dtype == torch.float64                 # a buffer moves with the module
    assert repr(emb) == "SinusoidalPositionEmbedding(block_size=64, n_embd=8)"


@pytest.mark.parametrize("cls", KINDS)
def test_too_long_names_both_numbers(cls):
    emb = cls(block_size=256, n_embd=8)
    with pytest.raises(ValueError, match=r"^Cannot forward sequence of length 300, block size is only 256$"):
        emb(300)
    with pytest.raises(ValueError, match=r"Cannot forward sequence of length 257, block size is only 256"):
        emb(257)                                                          # one past the end
    with pytest.raises(ValueError, match=r"length 10 starting at position 250 \(up to position 259\), "
                                         r"block size is only 256"):
        emb(10, start=250)
    with pytest.raises(ValueError, match=r"length 1 starting at position 256 .* block size is only 256"):
        emb(1, start=256)
    assert emb(256).shape == (256, 8) and emb(6, start=250).shape == (6, 8)   # exactly full is fine


@pytest.mark.parametrize("cls", KINDS)
def test_bad_arguments_name_the_value(cls):
    emb = cls(block_size=8, n_embd=4)
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 0, got -1"):
        emb(-1)
    with pytest.raises(ValueError, match=r"start must be an integer >= 0, got -2"):
        emb(3, start=-2)
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 0, got 2.5"):
        emb(2.5)
    with pytest.raises(ValueError, match=r"seq_len must be an integer >= 0, got True"):
        emb(True)
    with pytest.raises(ValueError, match=r"block_size must be a positive integer, got 0"):
        cls(0, 4)
    with pytest.raises(ValueError, match=r"n_embd must be a positive integer, got -4"):
        cls(8, -4)


def test_check_positions_on_its_own():
    assert check_positions(5, 3, 8) == (5, 3)
    assert check_positions(torch.tensor(4), 0, 4) == (4, 0)              # a 0-d integer tensor works like an int
    with pytest.raises(ValueError, match="Cannot forward sequence of length 9, block size is only 8"):
        check_positions(9, 0, 8)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("04_position_embeddings", {
        # forgets the factor 2 in the exponent
        0: "return base ** (-torch.arange(n_embd // 2, dtype=torch.float64) / n_embd)",
        # rotates the wrong way
        1: "omega = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)\n"
           "M = torch.zeros(n_embd, n_embd, dtype=torch.float64)\n"
           "for i, w in enumerate(omega.tolist()):\n"
           "    c, s = math.cos(k * w), math.sin(k * w)\n"
           "    M[2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)\n"
           "return M",
        # align_corners=False moves the end rows inwards
        2: "return F.interpolate(weight.T.unsqueeze(0), size=new_block_size, mode='linear')[0].T",
        # the inverse permutation: dimension i goes to 2i instead of coming from it
        3: "return torch.arange(head_size).view(2, -1).T.flatten()",
    })


# Rotary embeddings (section 7): Hugging Face's rotate-half layout, pair i = (x_i, x_{i + head_size/2}).

def complex_rotation(x, start=0, base=10000.0):
    """The reference: pair i of row t as the complex number x_i + i x_{i+h}, times e^(i (start + t) w_i), float64."""
    T, D = x.shape[-2], x.shape[-1]
    h = D // 2
    omega = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(start, start + T, dtype=torch.float64).unsqueeze(1) * omega          # (T, h)
    z = torch.complex(x[..., :h].double(), x[..., h:].double()) * torch.polar(torch.ones_like(angles), angles)
    return torch.cat([z.real, z.imag], dim=-1)


@pytest.mark.parametrize("D, T, start, base", [(2, 3, 0, 10000.0), (8, 10, 0, 10000.0), (16, 7, 5, 10000.0),
                                               (64, 40, 100, 500000.0), (6, 4, 3, 10.0)])
def test_apply_rope_is_the_complex_rotation_of_the_half_pairs(D, T, start, base):
    x = torch.randn(2, 3, T, D, dtype=torch.float64, generator=torch.Generator().manual_seed(D + T))
    cos, sin = rope_cos_sin(start + T, D, base, dtype=torch.float64)
    assert_close64(apply_rope(x, cos[start:], sin[start:]), complex_rotation(x, start, base), scale=x.abs())


def test_rotary_module_in_float32_against_the_reference():
    x = torch.randn(2, 4, 12, 16, generator=torch.Generator().manual_seed(1))
    rope = RotaryEmbedding(16, 32)
    for start in (0, 9, 20):
        got = rope(x, start=start)
        assert got.dtype == torch.float32 and got.shape == x.shape
        # each output adds two products of size |x_i| and |x_{i+h}| (cos and sin tables rounded to float32)
        assert_close(got, complex_rotation(x, start).float(), scale=x.abs() + rotate_half(x).abs(), what=f"start={start}")
    assert torch.equal(rope(x[:, :, 5:], start=5), rope(x)[:, :, 5:])


def test_rotary_hand_worked_cases_and_properties():
    rope = RotaryEmbedding(2, 4)
    got = rope(torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(got, torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)]]), atol=1e-7)
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]
    cos, sin = rope_cos_sin(2, 4, base=100.0)
    assert torch.allclose(cos[1], torch.tensor([math.cos(1), math.cos(0.1), math.cos(1), math.cos(0.1)]))
    x = torch.randn(5, 30, 8, dtype=torch.float64)
    rope8 = RotaryEmbedding(8, 64).double()
    assert torch.allclose(rope8(x).norm(dim=-1), x.norm(dim=-1), atol=1e-6)            # a rotation keeps lengths
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)

    def score(m, n):
        return (rope8(q.expand(64, 8))[m] @ rope8(k.expand(64, 8))[n]).item()
    assert score(7, 3) == pytest.approx(score(40, 36), abs=1e-5) == pytest.approx(score(4, 0), abs=1e-5)
    assert abs(score(7, 3) - score(7, 0)) > 1e-3


def test_rotary_keeps_nothing_in_the_state_dict_and_follows_the_device_dtype():
    rope = RotaryEmbedding(8, 16)
    assert list(rope.parameters()) == [] and list(rope.state_dict()) == []
    assert rope.cos.shape == rope.sin.shape == (16, 8) and rope.cos.dtype == torch.float32
    x = torch.randn(1, 4, 8, dtype=torch.bfloat16)
    assert rope(x).dtype == torch.bfloat16
    assert "head_size=8, block_size=16, base=10000" in repr(rope)


def test_rotary_refuses_bad_arguments():
    with pytest.raises(ValueError, match="head_size must be even .* got 7"):
        RotaryEmbedding(7, 16)
    with pytest.raises(ValueError, match="base must be a positive number .* got -1"):
        RotaryEmbedding(8, 16, base=-1)
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        RotaryEmbedding(8, 0)
    with pytest.raises(ValueError, match="Cannot forward sequence of length 5 starting at position 12"):
        RotaryEmbedding(8, 16)(torch.zeros(5, 8), start=12)
    with pytest.raises(ValueError, match=r"head_size=8\), got shape \(3, 6\)"):
        RotaryEmbedding(8, 16)(torch.zeros(3, 6))
