"""Lesson 03: minillm.token_embedding (the lookup table, one-hot equivalence, cosine similarity)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from exercise_tools import assert_checks_work
from minillm.token_embedding import TokenEmbedding, check_token_ids, cosine_similarity_matrix, one_hot_lookup


def ids(shape, V, seed=0):
    return torch.randint(0, V, shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_for_any_leading_shape():
    emb = TokenEmbedding(11, 5)
    assert emb.weight.shape == (11, 5) and isinstance(emb.weight, nn.Parameter)
    for shape in [(), (7,), (3, 4), (2, 3, 4)]:
        assert emb(ids(shape, 11)).shape == (*shape, 5)
    assert emb(torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0, 5)     # an empty batch is fine


def test_the_hand_worked_example_of_the_docstring():
    emb = TokenEmbedding(4, 2)
    with torch.no_grad():
        emb.weight.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    assert emb(torch.tensor([[2, 3, 2]])).tolist() == [[[0.0, 1.0], [1.0, 1.0], [0.0, 1.0]]]


def test_equal_to_nn_embedding_in_values_and_gradients():
    torch.manual_seed(0)
    mine, ref = TokenEmbedding(50, 16), nn.Embedding(50, 16)
    with torch.no_grad():
        ref.weight.copy_(mine.weight)
    x = ids((4, 32), 50)
    target = torch.randn(4, 32, 16)
    for layer in (mine, ref):
        F.mse_loss(layer(x), target).backward()
    assert torch.equal(mine(x), ref(x))
    assert torch.allclose(mine.weight.grad, ref.weight.grad, atol=1e-7)


def test_one_hot_lookup_equals_indexing_in_values_and_gradients():
    torch.manual_seed(1)
    table = torch.randn(9, 6, dtype=torch.float64)
    a, b = table.clone().requires_grad_(True), table.clone().requires_grad_(True)
    x = torch.tensor([[0, 8, 8, 3], [3, 3, 1, 0]])
    grad_out = torch.randn(2, 4, 6, dtype=torch.float64)
    one_hot_lookup(x, a).backward(grad_out)
    b[x].backward(grad_out)
    assert torch.allclose(one_hot_lookup(x, a), b[x], atol=1e-12)
    assert torch.allclose(a.grad, b.grad, atol=1e-12)
    assert torch.equal(a.grad[[2, 4, 5, 6, 7]], torch.zeros(5, 6, dtype=torch.float64))  # ids not used: no gradient
    assert torch.allclose(a.grad[3], grad_out[x == 3].sum(dim=0))                  # id 3, three times: summed


def test_gradient_of_repeated_ids_accumulates():
    emb = TokenEmbedding(5, 3)
    emb(torch.tensor([[4, 4, 4, 1]])).sum().backward()
    assert emb.weight.grad[4].tolist() == [3.0, 3.0, 3.0] and emb.weight.grad[1].tolist() == [1.0, 1.0, 1.0]
    assert emb.weight.grad[[0, 2, 3]].abs().sum() == 0


def test_gpt2_initialisation():
    torch.manual_seed(0)
    w = TokenEmbedding(5000, 256).weight
    assert abs(w.std().item() - 0.02) < 2e-4 and abs(w.mean().item()) < 2e-4
    assert w.abs().max().item() < 0.02 * 6                                       # normal, not uniform or heavy-tailed
    assert TokenEmbedding(3, 2).weight.dtype == torch.float32


def test_out_of_range_ids_name_the_id_and_the_vocabulary():
    emb = TokenEmbedding(65, 8)
    with pytest.raises(ValueError, match=r"token id 70 is out of range for a vocabulary of 65 ids"):
        emb(torch.tensor([[1, 2, 70]]))
    with pytest.raises(ValueError, match=r"token id 65 is out of range .*\(valid ids are 0 to 64\), at index \(1, 0\)"):
        emb(torch.tensor([[1, 2], [65, 3]]))                                      # one past the end
    with pytest.raises(ValueError, match=r"token id -1 is out of range"):
        emb(torch.tensor([0, -1]))                                                # negative ids do not wrap around
    with pytest.raises(ValueError, match=r"token id 100 .* at index 2 of idx"):
        emb(torch.tensor([0, 64, 100, 200]))                                      # the first bad one is named
    assert emb(torch.tensor([0, 64])).shape == (2, 8)                              # both ends of the range are fine


def test_bad_id_types_are_refused():
    emb = TokenEmbedding(10, 4)
    with pytest.raises(TypeError, match=r"idx must hold integer token ids, got a tensor of dtype torch.float32"):
        emb(torch.tensor([1.0, 2.0]))
    with pytest.raises(TypeError, match=r"dtype torch.bool"):
        emb(torch.tensor([True, False]))
    with pytest.raises(TypeError, match=r"idx must be a tensor of token ids, got list"):
        emb([1, 2])
    for dtype in (torch.int32, torch.int16, torch.uint8):                         # any integer type works
        assert torch.equal(emb(torch.tensor([[3, 1]], dtype=dtype)), emb(torch.tensor([[3, 1]])))


def test_check_token_ids_on_its_own():
    check_token_ids(torch.arange(10), 10)
    with pytest.raises(ValueError, match="token id 10"):
        check_token_ids(torch.arange(11), 10)
    with pytest.raises(ValueError, match="token id 0 is out of range for a vocabulary of 0 ids"):
        check_token_ids(torch.tensor([0]), 0)


@pytest.mark.parametrize("args, message", [
    ((0, 4), r"vocab_size must be a positive integer, got 0"),
    ((10, -3), r"n_embd must be a positive integer, got -3"),
    ((10.0, 4), r"vocab_size must be a positive integer, got 10.0"),
    ((10, True), r"n_embd must be a positive integer, got True"),
])
def test_bad_sizes_name_the_value(args, message):
    with pytest.raises(ValueError, match=message):
        TokenEmbedding(*args)


def test_numpy_sizes_are_fine():
    import numpy as np
    emb = TokenEmbedding(np.int64(12), np.int32(3))
    assert emb.weight.shape == (12, 3) and type(emb.vocab_size) is int


def test_module_repr_and_state_dict():
    emb = TokenEmbedding(65, 8)
    assert repr(emb) == "TokenEmbedding(vocab_size=65, n_embd=8)"
    assert list(emb.state_dict()) == ["weight"]


def test_cosine_similarity_matrix_against_torch():
    torch.manual_seed(2)
    a, b = torch.randn(7, 12), torch.randn(5, 12)
    ref = F.cosine_similarity(a.unsqueeze(1), b.unsqueeze(0), dim=-1)                # (7, 1, 12) vs (1, 5, 12)
    assert cosine_similarity_matrix(a, b).shape == (7, 5)
    assert torch.allclose(cosine_similarity_matrix(a, b), ref, atol=1e-6)
    assert torch.allclose(cosine_similarity_matrix(a).diagonal(), torch.ones(7), atol=1e-6)


def test_cosine_similarity_edge_cases():
    m = cosine_similarity_matrix(torch.tensor([[1.0, 2.0, 2.0], [2.0, 4.0, 4.0], [2.0, -1.0, 0.0], [-1.0, -2.0, -2.0]]))
    assert torch.allclose(m[0], torch.tensor([1.0, 1.0, 0.0, -1.0]), atol=1e-6)     # the worked example, and opposite
    zero = cosine_similarity_matrix(torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.isfinite(zero).all() and zero[0].tolist() == [0.0, 0.0]               # a zero row: cosine 0, not nan
    rows = torch.tensor([[3.0, 4.0], [4.0, 3.0]])
    for scale in (1e-3, 1.0, 1e15):                                                  # the length does not matter
        assert torch.allclose(cosine_similarity_matrix(rows * scale), torch.tensor([[1.0, 0.96], [0.96, 1.0]]), atol=1e-5)


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("03_token_embeddings", {
        0: "return (ids == torch.arange(vocab_size)).float()",                        # forgets the new last dimension
        1: "C = grad_out.shape[-1]\ngrad = torch.zeros(vocab_size, C)\n"               # overwrites repeated ids
           "grad[ids.reshape(-1)] = grad_out.reshape(-1, C)\nreturn grad",
        2: "query = table[b] - table[a] + table[c]\n"                                   # keeps the question's ids
           "return (F.normalize(table, dim=1) @ F.normalize(query, dim=0)).topk(k).indices.tolist()",
        3: "self.padding_idx = padding_idx",                                           # row not zeroed, no check
        4: "return super().forward(idx)",                                              # gradient still reaches the row
    })
