"""Lesson 05: minillm.input_embedding (token + position + dropout)."""
import math

import pytest
import torch
import torch.nn as nn

from exercise_tools import assert_checks_work
from minillm.input_embedding import InputEmbedding
from minillm.position_embedding import LearnedPositionEmbedding, SinusoidalPositionEmbedding
from minillm.token_embedding import TokenEmbedding


def ids(B, T, V, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("positions, cls", [("learned", LearnedPositionEmbedding),
                                            ("sinusoidal", SinusoidalPositionEmbedding)])
def test_parts_and_shapes(positions, cls):
    emb = InputEmbedding(50, block_size=16, n_embd=12, dropout=0.25, positions=positions)
    assert isinstance(emb.token, TokenEmbedding) and isinstance(emb.position, cls)
    assert isinstance(emb.dropout, nn.Dropout) and emb.dropout.p == 0.25
    for B, T in [(1, 1), (3, 7), (2, 16)]:
        assert emb(ids(B, T, 50)).shape == (B, T, 12)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_eval_mode_is_token_plus_position(positions):
    emb = InputEmbedding(40, block_size=20, n_embd=8, dropout=0.5, positions=positions).eval()
    x = ids(4, 11, 40)
    out = emb(x)
    assert torch.equal(out, emb(x))                                    # deterministic
    pos = emb.position(11)
    for b, t in [(0, 0), (3, 10), (2, 5)]:
        assert torch.allclose(out[b, t], emb.token.weight[x[b, t]] + pos[t])


def test_the_hand_worked_example():
    emb = InputEmbedding(2, block_size=3, n_embd=4).eval()
    with torch.no_grad():
        emb.token.weight.copy_(torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 2.0]]))
    pos = emb.position(3)
    out = emb(torch.tensor([[0, 1, 0]]))
    assert torch.allclose(out - pos, torch.tensor([[[1.0, 0.0, 1.0, 0.0], [0.0, 2.0, 0.0, 2.0], [1.0, 0.0, 1.0, 0.0]]]))
    assert not torch.equal(out[0, 0], out[0, 2])                       # the two a's differ by position


def test_sinusoidal_positions_are_the_formula():
    emb = InputEmbedding(5, block_size=10, n_embd=6, positions="sinusoidal").eval()
    with torch.no_grad():
        emb.token.weight.zero_()
    out = emb(torch.zeros(1, 10, dtype=torch.long))[0]                 # only the position part is left
    for pos in range(10):
        for i in range(3):
            angle = pos / 10000 ** (2 * i / 6)
            assert out[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert out[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_start_places_a_piece_at_its_positions(positions):
    emb = InputEmbedding(30, block_size=12, n_embd=8, positions=positions).eval()
    x = ids(2, 12, 30)
    whole = emb(x)
    for start in (0, 1, 5, 11):
        assert torch.allclose(emb(x[:, start:], start=start), whole[:, start:])
    pieces = torch.cat([emb(x[:, s:s + 5], start=s) for s in range(0, 12, 5)], dim=1)
    assert torch.allclose(pieces, whole)


def test_dropout_in_train_and_eval_mode():
    torch.manual_seed(0)
    emb = InputEmbedding(10, block_size=64, n_embd=128, dropout=0.2)
    x = ids(8, 64, 10)
    assert emb.training                                              # modules start in train mode
    a, b = emb(x), emb(x)
    assert not torch.equal(a, b)
    assert abs((a == 0).float().mean().item() - 0.2) < 0.01
    emb.eval()
    clean = emb(x)
    kept = a != 0
    assert torch.allclose(a[kept], clean[kept] / 0.8, atol=1e-6)     # survivors scaled by 1/(1-p)
    assert not (clean == 0).any()
    no_dropout = InputEmbedding(10, block_size=64, n_embd=128, dropout=0.0)
    assert no_dropout.training and torch.equal(no_dropout(x), no_dropout(x))


def test_parameters_and_gradients():
    learned = InputEmbedding(50, block_size=16, n_embd=12)
    assert sum(p.numel() for p in learned.parameters()) == 50 * 12 + 16 * 12
    sinusoidal = InputEmbedding(50, block_size=16, n_embd=12, positions="sinusoidal")
    assert sum(p.numel() for p in sinusoidal.parameters()) == 50 * 12
    x = torch.tensor([[3, 3, 7]])
    learned(x).sum().backward()
    grad = learned.token.weight.grad
    assert torch.allclose(grad[3], torch.full((12,), 2.0)) and torch.allclose(grad[7], torch.ones(12))
    assert grad[[i for i in range(50) if i not in (3, 7)]].abs().sum() == 0  # rows not used get no gradient
    assert all(p.grad is not None for p in learned.position.parameters())


def test_gpt2_small_parameter_count():
    emb = InputEmbedding(50257, block_size=1024, n_embd=768)
    assert sum(p.numel() for p in emb.parameters()) == 39_383_808


def test_bad_positions_name_the_value():
    for bad in ("rotary", "Learned", "", None):
        with pytest.raises(ValueError, match=rf"positions must be one of \('learned', 'sinusoidal'\), got {bad!r}"):
            InputEmbedding(10, 8, 4, positions=bad)


def test_bad_dropout_names_the_value():
    for bad in (-0.1, 1.0, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match=rf"dropout must be a probability in \[0, 1\), got {bad!r}"):
            InputEmbedding(10, 8, 4, dropout=bad)


def test_bad_input_is_refused_where_it_enters():
    emb = InputEmbedding(10, block_size=8, n_embd=4)
    with pytest.raises(ValueError, match=r"idx must be a tensor of token ids of shape \(B, T\), got \(5,\)"):
        emb(torch.arange(5))
    with pytest.raises(ValueError, match=r"shape \(B, T\), got \(1, 2, 3\)"):
        emb(torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"shape \(B, T\), got list"):
        emb([[1, 2]])
    with pytest.raises(ValueError, match="10"):                        # an id out of range names the id
        emb(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="8"):                         # too long names the block size
        emb(torch.zeros(1, 9, dtype=torch.long))
    with pytest.raises(ValueError):
        emb(torch.zeros(1, 4, dtype=torch.long), start=5)              # 5 + 4 > 8


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("05_input_embedding", {
        0: "return token_table[idx] + position_table[idx]",                          # positions looked up by token id
        1: "return x * (u >= p)",                                                     # forgets to scale the survivors
        2: "return torch.cat([emb(idx[:, s:s + piece]) for s in range(0, idx.shape[1], piece)], dim=1)",  # no start
        3: "T = idx.shape[1]\n"                                                        # scales the positions too
           "return self.dropout((self.token(idx) + self.position(T, start)) * math.sqrt(self.n_embd))",
    })
